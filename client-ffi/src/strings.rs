//! Strings across the boundary: UTF-8 and JSON arguments in, library-owned
//! strings out (freed by `cdx_string_free`).

use std::ffi::{CStr, CString, c_char};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::status::{CdxStatus, Failure};

/// A required string argument, checked for NULL and UTF-8.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that stays valid and
/// unchanged for `'a` (the length of the call).
pub(crate) unsafe fn text<'a>(ptr: *const c_char, argument: &str) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(Failure::null(argument));
    }
    // SAFETY: not NULL, and the caller promises a NUL-terminated string
    // that outlives the call.
    let bytes = unsafe { CStr::from_ptr(ptr) };
    bytes.to_str().map_err(|e| {
        Failure::new(
            CdxStatus::InvalidUtf8,
            format!(
                "{argument} is not UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            ),
        )
    })
}

/// A required JSON argument: text, then JSON, then the expected shape.
/// Text that is not JSON is [`CdxStatus::InvalidJson`]; JSON of the wrong
/// shape (unknown or missing fields, wrong types) is
/// [`CdxStatus::InvalidInput`].
///
/// # Safety
/// As for [`text`].
pub(crate) unsafe fn json<T: DeserializeOwned>(
    ptr: *const c_char,
    argument: &str,
) -> Result<T, Failure> {
    // SAFETY: passed on from our caller's promise.
    let text = unsafe { text(ptr, argument) }?;
    serde_json::from_str(text).map_err(|e| {
        let status = match e.classify() {
            serde_json::error::Category::Data => CdxStatus::InvalidInput,
            _ => CdxStatus::InvalidJson,
        };
        Failure::new(status, format!("{argument}: {e}"))
    })
}

/// A string the library hands over: the caller owns it and frees it with
/// `cdx_string_free`. Interior NUL bytes (which JSON never contains: it
/// escapes them) are dropped rather than cutting the string short.
pub(crate) fn owned(text: String) -> *mut c_char {
    let c = CString::new(text).unwrap_or_else(|e| {
        let mut bytes = e.into_vec();
        bytes.retain(|b| *b != 0);
        // No NUL byte is left.
        CString::new(bytes).unwrap_or_default()
    });
    c.into_raw()
}

/// An out-parameter for a string (`char **out`): checked for NULL and set to
/// NULL at once, so that it is NULL whenever the call fails.
#[derive(Debug)]
pub(crate) struct OutString(*mut *mut c_char);

impl OutString {
    /// # Safety
    /// `ptr` is NULL or points to writable storage for one `char *`.
    pub unsafe fn new(ptr: *mut *mut c_char, argument: &str) -> Result<Self, Failure> {
        if ptr.is_null() {
            return Err(Failure::null(argument));
        }
        // SAFETY: not NULL, and the caller promises it is writable.
        unsafe { ptr.write(std::ptr::null_mut()) };
        Ok(Self(ptr))
    }

    /// Hands `value`, as JSON, to the caller.
    pub fn put_json(self, value: &impl Serialize) -> Result<(), Failure> {
        let text = serde_json::to_string(value)
            .map_err(|e| Failure::new(CdxStatus::Internal, format!("cannot write JSON: {e}")))?;
        // SAFETY: checked and promised writable in `new`.
        unsafe { self.0.write(owned(text)) };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_checked() {
        // SAFETY: NULL and a literal C string.
        unsafe {
            assert_eq!(
                text(std::ptr::null(), "x").unwrap_err().status,
                CdxStatus::NullArgument
            );
            let bad = c"\xff\xfe";
            assert_eq!(
                text(bad.as_ptr(), "x").unwrap_err().status,
                CdxStatus::InvalidUtf8
            );
            let not_json = c"{";
            assert_eq!(
                json::<serde_json::Value>(not_json.as_ptr(), "x")
                    .unwrap_err()
                    .status,
                CdxStatus::InvalidJson
            );
            let wrong_shape = c"[1]";
            assert_eq!(
                json::<std::collections::BTreeMap<String, u8>>(wrong_shape.as_ptr(), "x")
                    .unwrap_err()
                    .status,
                CdxStatus::InvalidInput
            );
        }
    }

    #[test]
    fn owned_strings_lose_interior_nuls_only() {
        let p = owned("a\0b".to_owned());
        // SAFETY: `owned` returns a CString's raw pointer, taken back once.
        let back = unsafe { CString::from_raw(p) };
        assert_eq!(back.to_str().unwrap(), "ab");
    }
}
