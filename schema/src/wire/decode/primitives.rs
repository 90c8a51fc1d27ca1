//! The CBOR reading under the message decoder: typed reads that name the
//! wire field in their errors, skipping values with the nesting depth
//! bounded, and the items left in a map or array. Nothing here knows the
//! protocol's messages; `decode.rs` does.

use std::borrow::Cow;

use minicbor::Decoder;
use minicbor::data::Type;

use super::DecodeError;
use crate::wire::MAX_NESTING_DEPTH;

/// Records that a key of a nested map was seen, failing on the second time.
pub(super) fn mark_seen(seen: &mut bool, key: &'static str) -> Result<(), DecodeError> {
    if std::mem::replace(seen, true) {
        return Err(DecodeError::DuplicateKey { key });
    }
    Ok(())
}

/// Reads a map key: `Some` text, or `None` after skipping a key of another
/// type (whose value the caller then skips).
pub(super) fn read_key<'b>(
    d: &mut Decoder<'b>,
    depth: usize,
) -> Result<Option<Cow<'b, str>>, DecodeError> {
    if is_text(d.datatype().map_err(cbor)?) {
        read_text_raw(d).map(Some)
    } else {
        skip_value(d, depth)?;
        Ok(None)
    }
}

/// Reads an array of text strings (definite or indefinite).
pub(super) fn read_text_list(
    d: &mut Decoder<'_>,
    field: &'static str,
) -> Result<Vec<String>, DecodeError> {
    let found = d.datatype().map_err(cbor)?;
    if !matches!(found, Type::Array | Type::ArrayIndef) {
        return Err(DecodeError::WrongType {
            field,
            expected: "an array of text strings",
            found: describe(found),
        });
    }
    // No capacity from the header: a hostile length must not allocate.
    let mut items = Vec::new();
    let mut remaining = Remaining::new(d.array().map_err(cbor)?);
    while remaining.next(d)? {
        let found = d.datatype().map_err(cbor)?;
        if !is_text(found) {
            return Err(DecodeError::WrongElementType {
                field,
                expected: "text strings only",
                found: describe(found),
            });
        }
        items.push(read_text_raw(d)?.into_owned());
    }
    Ok(items)
}

/// Reads a text string (definite or indefinite) into an owned `String`.
pub(super) fn read_text(d: &mut Decoder<'_>, field: &'static str) -> Result<String, DecodeError> {
    let found = d.datatype().map_err(cbor)?;
    if !is_text(found) {
        return Err(DecodeError::WrongType {
            field,
            expected: "a text string",
            found: describe(found),
        });
    }
    read_text_raw(d).map(Cow::into_owned)
}

/// Reads a text string the caller has checked is there; borrows from the
/// frame unless it is split into chunks.
pub(super) fn read_text_raw<'b>(d: &mut Decoder<'b>) -> Result<Cow<'b, str>, DecodeError> {
    if d.datatype().map_err(cbor)? == Type::String {
        return d.str().map(Cow::Borrowed).map_err(cbor);
    }
    let mut text = String::new();
    for chunk in d.str_iter().map_err(cbor)? {
        text.push_str(chunk.map_err(cbor)?);
    }
    Ok(Cow::Owned(text))
}

/// Reads a byte string (definite or indefinite).
pub(super) fn read_bytes(d: &mut Decoder<'_>, field: &'static str) -> Result<Vec<u8>, DecodeError> {
    let found = d.datatype().map_err(cbor)?;
    if !matches!(found, Type::Bytes | Type::BytesIndef) {
        return Err(DecodeError::WrongType {
            field,
            expected: "a byte string",
            found: describe(found),
        });
    }
    let mut bytes = Vec::new();
    for chunk in d.bytes_iter().map_err(cbor)? {
        bytes.extend_from_slice(chunk.map_err(cbor)?);
    }
    Ok(bytes)
}

/// Reads a boolean.
pub(super) fn read_bool(d: &mut Decoder<'_>, field: &'static str) -> Result<bool, DecodeError> {
    match d.datatype().map_err(cbor)? {
        Type::Bool => d.bool().map_err(cbor),
        found => Err(DecodeError::WrongType {
            field,
            expected: "a boolean",
            found: describe(found),
        }),
    }
}

/// Reads an unsigned integer, also from a float that holds one exactly (the
/// JS client encodes some integers as float64).
pub(super) fn read_u64(d: &mut Decoder<'_>, field: &'static str) -> Result<u64, DecodeError> {
    let invalid = |reason| DecodeError::InvalidInteger { field, reason };
    match d.datatype().map_err(cbor)? {
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => d.u64().map_err(cbor),
        Type::I8 | Type::I16 | Type::I32 | Type::I64 | Type::Int => Err(invalid("is negative")),
        Type::F16 | Type::F32 | Type::F64 => {
            let value = integral_float(read_float(d)?, field)?;
            if value < 0.0 {
                Err(invalid("is negative"))
            } else if value >= TWO_POW_64 {
                Err(invalid("does not fit 64 bits"))
            } else {
                // In [0, 2^64) and integral: the conversion is exact.
                Ok(value as u64)
            }
        }
        found => Err(DecodeError::WrongType {
            field,
            expected: "an unsigned integer",
            found: describe(found),
        }),
    }
}

/// Reads a signed integer, also from a float that holds one exactly.
pub(super) fn read_i64(d: &mut Decoder<'_>, field: &'static str) -> Result<i64, DecodeError> {
    let invalid = |reason| DecodeError::InvalidInteger { field, reason };
    match d.datatype().map_err(cbor)? {
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => {
            let value = d.u64().map_err(cbor)?;
            i64::try_from(value).map_err(|_| invalid("does not fit 64 bits"))
        }
        Type::I8 | Type::I16 | Type::I32 | Type::I64 | Type::Int => {
            let value = d.int().map_err(cbor)?;
            i64::try_from(value).map_err(|_| invalid("does not fit 64 bits"))
        }
        Type::F16 | Type::F32 | Type::F64 => {
            let value = integral_float(read_float(d)?, field)?;
            if (-TWO_POW_63..TWO_POW_63).contains(&value) {
                // In [-2^63, 2^63) and integral: the conversion is exact.
                Ok(value as i64)
            } else {
                Err(invalid("does not fit 64 bits"))
            }
        }
        found => Err(DecodeError::WrongType {
            field,
            expected: "an integer",
            found: describe(found),
        }),
    }
}

/// 2^64 as a float, the first value above `u64::MAX`.
const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;
/// 2^63 as a float, the first value above `i64::MAX`.
const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;

/// Checks that a float holds an integer.
fn integral_float(value: f64, field: &'static str) -> Result<f64, DecodeError> {
    let reason = if !value.is_finite() {
        "is not finite"
    } else if value.fract() != 0.0 {
        "has a fractional part"
    } else {
        return Ok(value);
    };
    Err(DecodeError::InvalidInteger { field, reason })
}

/// Reads a half, single or double precision float the caller has checked is
/// there. minicbor reads half floats only with its `half` feature, so they
/// are converted here.
fn read_float(d: &mut Decoder<'_>) -> Result<f64, DecodeError> {
    match d.datatype().map_err(cbor)? {
        Type::F16 => {
            let at = d.position();
            let bits: [u8; 2] = d
                .input()
                .get(at + 1..at + 3)
                .and_then(|bits| bits.try_into().ok())
                .ok_or(DecodeError::Truncated)?;
            d.set_position(at + 3);
            Ok(f16_to_f64(u16::from_be_bytes(bits)))
        }
        Type::F32 => d.f32().map(f64::from).map_err(cbor),
        _ => d.f64().map_err(cbor),
    }
}

/// Converts IEEE 754 half precision bits to a double (exactly: every half
/// value is a double value).
fn f16_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 == 0 { 1.0 } else { -1.0 };
    let exponent = i32::from((bits >> 10) & 0x1f);
    let mantissa = f64::from(bits & 0x3ff);
    match exponent {
        0 => sign * mantissa * 2f64.powi(-24),
        31 if bits & 0x3ff == 0 => sign * f64::INFINITY,
        31 => f64::NAN,
        _ => sign * (1024.0 + mantissa) * 2f64.powi(exponent - 25),
    }
}

/// Consumes a `null` or `undefined` (which mean "absent" in optional fields)
/// and says whether there was one.
pub(super) fn take_absent(d: &mut Decoder<'_>) -> Result<bool, DecodeError> {
    match d.datatype().map_err(cbor)? {
        Type::Null | Type::Undefined => {
            d.set_position(d.position() + 1);
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Skips one CBOR value of any shape held by a container at nesting level
/// `depth`, failing with [`DecodeError::TooDeep`] rather than recursing past
/// [`MAX_NESTING_DEPTH`]. Text is checked to be UTF-8 on the way.
pub(super) fn skip_value(d: &mut Decoder<'_>, depth: usize) -> Result<(), DecodeError> {
    loop {
        match d.datatype().map_err(cbor)? {
            // A tag annotates the value after it; it does not nest. Loop
            // rather than recurse so a long chain of tags costs no stack.
            Type::Tag => {
                d.tag().map_err(cbor)?;
            }
            Type::Array | Type::ArrayIndef => {
                check_depth(depth + 1)?;
                let mut remaining = Remaining::new(d.array().map_err(cbor)?);
                while remaining.next(d)? {
                    skip_value(d, depth + 1)?;
                }
                return Ok(());
            }
            Type::Map | Type::MapIndef => {
                check_depth(depth + 1)?;
                let mut remaining = Remaining::new(d.map().map_err(cbor)?);
                while remaining.next(d)? {
                    skip_value(d, depth + 1)?;
                    skip_value(d, depth + 1)?;
                }
                return Ok(());
            }
            Type::Bytes | Type::BytesIndef => {
                for chunk in d.bytes_iter().map_err(cbor)? {
                    chunk.map_err(cbor)?;
                }
                return Ok(());
            }
            Type::String | Type::StringIndef => {
                for chunk in d.str_iter().map_err(cbor)? {
                    chunk.map_err(cbor)?;
                }
                return Ok(());
            }
            Type::Break => {
                return Err(DecodeError::Malformed(format!(
                    "unexpected break at position {}",
                    d.position()
                )));
            }
            Type::Unknown(byte) => {
                return Err(DecodeError::Malformed(format!(
                    "reserved initial byte {byte:#04x} at position {}",
                    d.position()
                )));
            }
            // Integers, floats, simple values, booleans, null, undefined:
            // minicbor skips these without recursion.
            _ => {
                d.skip().map_err(cbor)?;
                return Ok(());
            }
        }
    }
}

/// Fails if a container would sit at nesting level `level`.
fn check_depth(level: usize) -> Result<(), DecodeError> {
    if level > MAX_NESTING_DEPTH {
        return Err(DecodeError::TooDeep {
            limit: MAX_NESTING_DEPTH,
        });
    }
    Ok(())
}

/// The items left in a map or array being read: a count for a definite
/// length, or "until the break byte" for an indefinite one.
pub(super) enum Remaining {
    /// Items (for maps: entries) still to read.
    Definite(u64),
    /// Read until a break byte.
    Indefinite,
}

impl Remaining {
    /// From the length minicbor returns for a map or array header.
    pub(super) fn new(len: Option<u64>) -> Self {
        len.map_or(Remaining::Indefinite, Remaining::Definite)
    }

    /// Whether another item (for maps: another entry) follows. Consumes the
    /// break byte that ends an indefinite container. Each item takes at least
    /// one byte, so a hostile length runs out of input, not out of time.
    pub(super) fn next(&mut self, d: &mut Decoder<'_>) -> Result<bool, DecodeError> {
        match self {
            Remaining::Definite(0) => Ok(false),
            Remaining::Definite(left) => {
                *left -= 1;
                Ok(true)
            }
            Remaining::Indefinite => {
                if d.datatype().map_err(cbor)? == Type::Break {
                    d.set_position(d.position() + 1);
                    Ok(false)
                } else {
                    Ok(true)
                }
            }
        }
    }
}

/// Whether a CBOR type is a text string.
pub(super) fn is_text(found: Type) -> bool {
    matches!(found, Type::String | Type::StringIndef)
}

/// A CBOR type as error messages name it.
pub(super) fn describe(found: Type) -> &'static str {
    match found {
        Type::Bool => "a boolean",
        Type::Null => "null",
        Type::Undefined => "undefined",
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => "an unsigned integer",
        Type::I8 | Type::I16 | Type::I32 | Type::I64 | Type::Int => "a negative integer",
        Type::F16 | Type::F32 | Type::F64 => "a float",
        Type::Simple => "a simple value",
        Type::Bytes | Type::BytesIndef => "a byte string",
        Type::String | Type::StringIndef => "a text string",
        Type::Array | Type::ArrayIndef => "an array",
        Type::Map | Type::MapIndef => "a map",
        Type::Tag => "a tagged value",
        Type::Break => "a break byte",
        Type::Unknown(_) => "a reserved initial byte",
    }
}

/// Maps minicbor's errors: running out of input is [`DecodeError::Truncated`],
/// anything else is malformed CBOR (type mismatches never reach here: the
/// type is checked before each read).
pub(super) fn cbor(error: minicbor::decode::Error) -> DecodeError {
    if error.is_end_of_input() {
        DecodeError::Truncated
    } else {
        DecodeError::Malformed(error.to_string())
    }
}
