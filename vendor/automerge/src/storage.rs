use std::ops::Range;

pub(crate) mod bundle;
pub(crate) mod change;
mod chunk;
pub(crate) mod columns;
pub(crate) mod document;
pub(crate) mod load;
pub(crate) mod parse;

pub use bundle::{Bundle, BundleChange, BundleChangeIter};
pub use load::VerificationMode;

pub(crate) use {
    bundle::{BundleMetadata, BundleStorage},
    change::{AsChangeOp, Change, ChangeOp, Compressed, ReadChangeOpError},
    chunk::{CheckSum, Chunk, ChunkType, Header},
    columns::{ColumnSpec, Columns, RawColumn, RawColumns},
    document::{CompressConfig, Document},
};

fn shift_range(range: Range<usize>, by: usize) -> Range<usize> {
    range.start + by..range.end + by
}

pub(crate) const MAGIC_BYTES: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];

/// Patched: the most bytes that the DEFLATE data of one chunk may inflate to (a compressed change
/// chunk, or all the compressed columns of one document or bundle chunk together). Compressed
/// data comes from peers, and DEFLATE inflates about a thousand times at most per pass, so without
/// a bound a small chunk could make us allocate gigabytes before any checksum is checked.
pub(crate) const MAX_INFLATED_LEN: usize = 64 * 1024 * 1024;

/// Inflate `compressed` onto the end of `out`, reading at most `limit` inflated bytes: returns the
/// number of bytes appended, or an error of kind `InvalidData` if the data inflates to more than
/// `limit` bytes (reading stops one byte past the limit).
pub(crate) fn inflate_bounded(
    compressed: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<usize> {
    use std::io::Read;
    let start = out.len();
    let decoder = flate2::bufread::DeflateDecoder::new(compressed);
    let read = decoder
        .take(limit as u64 + 1)
        .read_to_end(out)
        .inspect_err(|_| out.truncate(start))?;
    if read > limit {
        out.truncate(start);
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("compressed data inflates to more than {limit} bytes"),
        ));
    }
    Ok(read)
}

#[cfg(test)]
mod inflate_tests {
    use super::*;
    use std::io::Read;

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::bufread::DeflateEncoder::new(data, flate2::Compression::default())
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn inflates_up_to_the_limit() {
        let compressed = deflate(&[7; 1000]);
        let mut out = vec![1];
        assert_eq!(inflate_bounded(&compressed, &mut out, 1000).unwrap(), 1000);
        assert_eq!(out.len(), 1001);
    }

    #[test]
    fn refuses_beyond_the_limit() {
        let compressed = deflate(&[7; 1001]);
        let mut out = vec![1];
        let err = inflate_bounded(&compressed, &mut out, 1000).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert_eq!(out, vec![1]);
    }
}
