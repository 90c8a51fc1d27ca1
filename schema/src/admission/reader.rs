//! A cursor over untrusted bytes whose every read is checked.
//!
//! Automerge reads integers in two ways, and the admission layer must read
//! them exactly as automerge will, or a message could mean one thing here and
//! another there:
//!
//! - The framing of sync messages and change headers goes through automerge's
//!   own strict LEB128 parser ([`Reader::uleb`], [`Reader::sleb`]): at most ten
//!   bytes, no value wider than 64 bits and no overlong encodings (a final
//!   byte of zero after a continuation byte).
//! - Column data goes through the `leb128` crate ([`Reader::column_uleb`],
//!   [`Reader::column_sleb`]), which refuses values wider than 64 bits but
//!   accepts overlong encodings.
//!
//! No read indexes or slices without checking the remaining length first, so
//! no input can make this module panic.

use super::Refusal;

/// Reads values front to back from a borrowed slice.
#[derive(Debug, Clone)]
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub(super) fn remaining(&self) -> usize {
        self.bytes.len()
    }

    /// Everything not yet read, without consuming it.
    pub(super) fn peek_rest(&self) -> &'a [u8] {
        self.bytes
    }

    pub(super) fn byte(&mut self, what: &'static str) -> Result<u8, Refusal> {
        let (&first, rest) = self.bytes.split_first().ok_or(Refusal::Truncated(what))?;
        self.bytes = rest;
        Ok(first)
    }

    /// Takes `len` bytes; `len` comes from the peer, so it is a `u64` that may
    /// exceed both the input and `usize`.
    pub(super) fn take(&mut self, len: u64, what: &'static str) -> Result<&'a [u8], Refusal> {
        let len = usize::try_from(len).map_err(|_| Refusal::Truncated(what))?;
        if len > self.bytes.len() {
            return Err(Refusal::Truncated(what));
        }
        let (taken, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(taken)
    }

    /// Takes a length-prefixed byte string, the prefix read by [`Self::uleb`].
    pub(super) fn length_prefixed(&mut self, what: &'static str) -> Result<&'a [u8], Refusal> {
        let len = self.uleb(what)?;
        self.take(len, what)
    }

    /// An unsigned LEB128 integer as automerge's storage parser reads it.
    pub(super) fn uleb(&mut self, what: &'static str) -> Result<u64, Refusal> {
        let mut result: u64 = 0;
        let mut shift: u32 = 0;
        loop {
            let byte = self.byte(what)?;
            // The tenth byte may only contribute bit 63, and may not continue.
            if shift == 63 && byte > 1 {
                return Err(Refusal::BadInteger(what));
            }
            result |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                if shift > 0 && byte == 0 {
                    return Err(Refusal::BadInteger(what));
                }
                return Ok(result);
            }
            shift += 7;
        }
    }

    /// An unsigned LEB128 integer that must fit in a `u32`, as automerge's
    /// `leb128_u32` reads it.
    pub(super) fn uleb_u32(&mut self, what: &'static str) -> Result<u32, Refusal> {
        u32::try_from(self.uleb(what)?).map_err(|_| Refusal::BadInteger(what))
    }

    /// A signed LEB128 integer as automerge's storage parser reads it.
    pub(super) fn sleb(&mut self, what: &'static str) -> Result<i64, Refusal> {
        let mut result: i64 = 0;
        let mut shift: u32 = 0;
        let mut previous: u8 = 0;
        loop {
            let byte = self.byte(what)?;
            result |= i64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                if shift > 64 && byte != 0 && byte != 0x7f {
                    return Err(Refusal::BadInteger(what));
                }
                let redundant_sign =
                    (byte == 0 && previous & 0x40 == 0) || (byte == 0x7f && previous & 0x40 != 0);
                if shift > 7 && redundant_sign {
                    return Err(Refusal::BadInteger(what));
                }
                if shift < 64 && byte & 0x40 != 0 {
                    result |= -1_i64 << shift;
                }
                return Ok(result);
            }
            if shift > 64 {
                return Err(Refusal::BadInteger(what));
            }
            previous = byte;
        }
    }

    /// An unsigned LEB128 integer as the `leb128` crate (automerge's column
    /// decoders) reads it: overlong encodings are accepted.
    pub(super) fn column_uleb(&mut self, what: &'static str) -> Result<u64, Refusal> {
        let mut result: u64 = 0;
        let mut shift: u32 = 0;
        loop {
            let byte = self.byte(what)?;
            if shift == 63 && byte != 0 && byte != 1 {
                return Err(Refusal::BadInteger(what));
            }
            result |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(result);
            }
            shift += 7;
        }
    }

    /// A signed LEB128 integer as the `leb128` crate reads it.
    pub(super) fn column_sleb(&mut self, what: &'static str) -> Result<i64, Refusal> {
        let mut result: i64 = 0;
        let mut shift: u32 = 0;
        loop {
            let byte = self.byte(what)?;
            if shift == 63 && byte != 0 && byte != 0x7f {
                return Err(Refusal::BadInteger(what));
            }
            result |= i64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                if shift < 64 && byte & 0x40 != 0 {
                    result |= -1_i64 << shift;
                }
                return Ok(result);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uleb(bytes: &[u8]) -> Result<u64, Refusal> {
        Reader::new(bytes).uleb("x")
    }

    fn sleb(bytes: &[u8]) -> Result<i64, Refusal> {
        Reader::new(bytes).sleb("x")
    }

    #[test]
    fn strict_unsigned_matches_automerge_rules() {
        assert_eq!(uleb(&[0]), Ok(0));
        assert_eq!(uleb(&[0x81, 0x01]), Ok(129));
        assert_eq!(uleb(&[0x80, 0x00]), Err(Refusal::BadInteger("x")));
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(uleb(&max), Ok(u64::MAX));
        let too_wide = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert_eq!(uleb(&too_wide), Err(Refusal::BadInteger("x")));
        let too_long = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x81, 0x00,
        ];
        assert_eq!(uleb(&too_long), Err(Refusal::BadInteger("x")));
        assert_eq!(uleb(&[0x80]), Err(Refusal::Truncated("x")));
    }

    #[test]
    fn strict_signed_round_trips_leb128_writer() {
        for value in [
            0,
            1,
            -1,
            63,
            64,
            -64,
            -65,
            i64::MAX,
            i64::MIN,
            1 << 40,
            -(1 << 40),
        ] {
            let mut buf = Vec::new();
            write_sleb(&mut buf, value);
            assert_eq!(sleb(&buf), Ok(value), "{value}");
            assert_eq!(Reader::new(&buf).column_sleb("x"), Ok(value), "{value}");
        }
        // 0 written with a redundant sign byte.
        assert_eq!(sleb(&[0x80, 0x00]), Err(Refusal::BadInteger("x")));
        assert_eq!(sleb(&[0xff, 0x7f]), Err(Refusal::BadInteger("x")));
        // The lenient column reader accepts the same bytes.
        assert_eq!(Reader::new(&[0x80, 0x00]).column_sleb("x"), Ok(0));
        assert_eq!(Reader::new(&[0x80, 0x00]).column_uleb("x"), Ok(0));
    }

    fn write_sleb(out: &mut Vec<u8>, mut value: i64) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            let done = (value == 0 && byte & 0x40 == 0) || (value == -1 && byte & 0x40 != 0);
            if done {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
}
