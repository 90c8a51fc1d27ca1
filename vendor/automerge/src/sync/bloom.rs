use std::borrow::Borrow;

use crate::storage::parse;
use crate::ChangeHash;

// These constants correspond to a 1% false positive rate. The values can be changed without
// breaking compatibility of the network protocol, since the parameters used for a particular
// Bloom filter are encoded in the wire format.
const BITS_PER_ENTRY: u32 = 10;
const NUM_PROBES: u32 = 7;

// Patched: the parameters of a filter received from a peer are bounded. A filter's parameters
// only change its false positive rate, so nothing legitimate needs more than a few times
// upstream's values; wider bounds would only let a peer make every probe loop (one per change
// we might send) or the filter's size arbitrarily large.
pub(crate) const MAX_BITS_PER_ENTRY: u32 = 64;
pub(crate) const MAX_PROBES: u32 = 32;

#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct BloomFilter {
    num_entries: u32,
    num_bits_per_entry: u32,
    num_probes: u32,
    bits: Vec<u8>,
}

impl Default for BloomFilter {
    fn default() -> Self {
        BloomFilter {
            num_entries: 0,
            num_bits_per_entry: BITS_PER_ENTRY,
            num_probes: NUM_PROBES,
            bits: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ParseError {
    #[error(transparent)]
    Leb128(#[from] parse::leb128::Error),
    #[error("bloom filter bits per entry {0} not in 1..={MAX_BITS_PER_ENTRY}")]
    BitsPerEntry(u32),
    #[error("bloom filter probes {0} not in 1..={MAX_PROBES}")]
    Probes(u32),
    #[error("bloom filter too large")]
    TooLarge,
}

impl BloomFilter {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        if self.num_entries != 0 {
            leb128::write::unsigned(&mut buf, self.num_entries as u64).unwrap();
            leb128::write::unsigned(&mut buf, self.num_bits_per_entry as u64).unwrap();
            leb128::write::unsigned(&mut buf, self.num_probes as u64).unwrap();
            buf.extend(&self.bits);
        }
        buf
    }

    pub(crate) fn parse(input: parse::Input<'_>) -> parse::ParseResult<'_, Self, ParseError> {
        if input.is_empty() {
            Ok((input, Self::default()))
        } else {
            let (i, num_entries) = parse::leb128_u32(input)?;
            let (i, num_bits_per_entry) = parse::leb128_u32(i)?;
            let (i, num_probes) = parse::leb128_u32(i)?;
            // Patched: refuse parameters outside sane bounds, before using them.
            if !(1..=MAX_BITS_PER_ENTRY).contains(&num_bits_per_entry) {
                return Err(parse::ParseError::Error(ParseError::BitsPerEntry(
                    num_bits_per_entry,
                )));
            }
            if !(1..=MAX_PROBES).contains(&num_probes) {
                return Err(parse::ParseError::Error(ParseError::Probes(num_probes)));
            }
            let len = bits_capacity(num_entries, num_bits_per_entry)
                .ok_or(parse::ParseError::Error(ParseError::TooLarge))?;
            let (i, bits) = parse::take_n(len, i)?;
            Ok((
                i,
                Self {
                    num_entries,
                    num_bits_per_entry,
                    num_probes,
                    bits: bits.to_vec(),
                },
            ))
        }
    }

    /// Patched: the probe positions are produced lazily (no allocation per lookup) and in 64 bit
    /// arithmetic, and a filter without bits yields no probes instead of dividing by zero.
    fn get_probes(&self, hash: &ChangeHash) -> impl Iterator<Item = usize> {
        let hash_bytes = hash.0;
        let modulo = 8 * self.bits.len() as u64;
        let word = |i: usize| {
            u64::from(u32::from_le_bytes([
                hash_bytes[i],
                hash_bytes[i + 1],
                hash_bytes[i + 2],
                hash_bytes[i + 3],
            ]))
        };
        let num_probes = if modulo == 0 { 0 } else { self.num_probes };
        let modulo = modulo.max(1);
        let mut x = word(0) % modulo;
        let mut y = word(4) % modulo;
        let z = word(8) % modulo;
        (0..num_probes).map(move |i| {
            if i > 0 {
                x = (x + y) % modulo;
                y = (y + z) % modulo;
            }
            x as usize
        })
    }

    fn add_hash(&mut self, hash: &ChangeHash) {
        for probe in self.get_probes(hash) {
            self.set_bit(probe);
        }
    }

    fn set_bit(&mut self, probe: usize) {
        if let Some(byte) = self.bits.get_mut(probe >> 3) {
            *byte |= 1 << (probe & 7);
        }
    }

    fn get_bit(&self, probe: usize) -> Option<u8> {
        self.bits
            .get(probe >> 3)
            .map(|byte| byte & (1 << (probe & 7)))
    }

    pub fn contains_hash(&self, hash: &ChangeHash) -> bool {
        if self.num_entries == 0 {
            false
        } else {
            for probe in self.get_probes(hash) {
                if let Some(bit) = self.get_bit(probe) {
                    if bit == 0 {
                        return false;
                    }
                }
            }
            true
        }
    }

    pub fn from_hashes<H: Borrow<ChangeHash>>(hashes: impl ExactSizeIterator<Item = H>) -> Self {
        let num_entries = hashes.len() as u32;
        let num_bits_per_entry = BITS_PER_ENTRY;
        let num_probes = NUM_PROBES;
        let bits = vec![
            0;
            bits_capacity(num_entries, num_bits_per_entry)
                .expect("our own filter's size fits in a usize")
        ];
        let mut filter = Self {
            num_entries,
            num_bits_per_entry,
            num_probes,
            bits,
        };
        for hash in hashes {
            filter.add_hash(hash.borrow());
        }
        filter
    }
}

/// Patched: integer arithmetic, `None` when the size does not fit in a `usize` (upstream's float
/// computation saturated silently).
fn bits_capacity(num_entries: u32, num_bits_per_entry: u32) -> Option<usize> {
    let bits = u64::from(num_entries) * u64::from(num_bits_per_entry);
    usize::try_from(bits.div_ceil(8)).ok()
}

#[derive(thiserror::Error, Debug)]
#[error("{0}")]
pub struct DecodeError(String);

impl TryFrom<&[u8]> for BloomFilter {
    type Error = DecodeError;

    fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
        Self::parse(parse::Input::new(bytes))
            .map(|(_, b)| b)
            .map_err(|e| DecodeError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(num_entries: u64, bits_per_entry: u64, probes: u64, bits: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        leb128::write::unsigned(&mut buf, num_entries).unwrap();
        leb128::write::unsigned(&mut buf, bits_per_entry).unwrap();
        leb128::write::unsigned(&mut buf, probes).unwrap();
        buf.extend(bits);
        buf
    }

    #[test]
    fn refuses_parameters_out_of_bounds() {
        for (bits_per_entry, probes) in [(0, 7), (65, 7), (10, 0), (10, 33), (10, 1 << 31)] {
            let bytes = encode(1, bits_per_entry, probes, &[0xff; 9]);
            assert!(
                BloomFilter::try_from(bytes.as_slice()).is_err(),
                "{bits_per_entry} bits per entry, {probes} probes accepted"
            );
        }
    }

    #[test]
    fn accepts_parameters_within_bounds() {
        let hash = ChangeHash([7; 32]);
        for (bits_per_entry, probes) in [(1, 1), (10, 7), (64, 32)] {
            let len = bits_capacity(3, bits_per_entry).unwrap();
            let bytes = encode(3, bits_per_entry.into(), probes, &vec![0xff; len]);
            let filter = BloomFilter::try_from(bytes.as_slice()).unwrap();
            assert!(filter.contains_hash(&hash));
        }
    }

    #[test]
    fn filter_without_bits_does_not_divide_by_zero() {
        let filter = BloomFilter {
            num_entries: 1,
            num_bits_per_entry: 10,
            num_probes: 7,
            bits: Vec::new(),
        };
        assert_eq!(filter.get_probes(&ChangeHash([1; 32])).count(), 0);
        assert!(filter.contains_hash(&ChangeHash([1; 32])));
    }

    #[test]
    fn probes_match_upstream() {
        let hashes = (0..20u8).map(|i| ChangeHash([i.wrapping_mul(37); 32]));
        let filter = BloomFilter::from_hashes(hashes.clone().collect::<Vec<_>>().into_iter());
        assert_eq!(filter.bits.len(), 25);
        for h in hashes {
            // upstream's u32 computation, for a filter this small
            let modulo = 8 * filter.bits.len() as u32;
            let w = |i: usize| u32::from_le_bytes(h.0[i..i + 4].try_into().unwrap()) % modulo;
            let (mut x, mut y, z) = (w(0), w(4), w(8));
            let mut expected = vec![x as usize];
            for _ in 1..NUM_PROBES {
                x = (x + y) % modulo;
                y = (y + z) % modulo;
                expected.push(x as usize);
            }
            assert_eq!(filter.get_probes(&h).collect::<Vec<_>>(), expected);
            assert!(filter.contains_hash(&h));
        }
    }

    #[test]
    fn capacity_is_exact() {
        assert_eq!(bits_capacity(0, 10), Some(0));
        assert_eq!(bits_capacity(1, 10), Some(2));
        assert_eq!(bits_capacity(4, 10), Some(5));
        assert_eq!(
            bits_capacity(u32::MAX, 64),
            usize::try_from(u64::from(u32::MAX) * 8).ok()
        );
    }
}
