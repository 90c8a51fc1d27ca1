//! Admission of one change chunk, read the way automerge's
//! `Change::parse_following_header` and its column decoders will read it.
//!
//! A change chunk is a header (magic bytes, a 4-byte checksum, the chunk type
//! and the body length) and a body: dependencies, actor, sequence number,
//! first operation counter, timestamp, message, other actors, column
//! metadata, column data and extra bytes. The operations live in the column
//! data, run-length encoded; this module decodes only the columns whose
//! contents could make automerge misbehave: the action column (its length is
//! the operation count), the predecessor group column (the number of
//! predecessor references, each materialised in memory) and every actor
//! column (indices into the change's actor list).

use sha2::{Digest, Sha256};

use automerge::{ActorId, ChangeHash};

use super::reader::Reader;
use super::{ChangeHeader, InputLimits, Refusal, as_u64, too_large};

/// The first four bytes of every Automerge chunk.
const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];

const CHUNK_DOCUMENT: u8 = 0;
const CHUNK_CHANGE: u8 = 1;
const CHUNK_COMPRESSED_CHANGE: u8 = 2;

/// The bit of a column specification that marks deflated data.
const SPEC_DEFLATE: u32 = 0b1000;
/// The bits of a column specification that give its type.
const SPEC_TYPE: u32 = 0b0111;
/// Column type: a group (a count of values in the columns that follow).
const TYPE_GROUP: u32 = 0;
/// Column type: actor indices.
const TYPE_ACTOR: u32 = 1;
/// Column type: integers.
const TYPE_INTEGER: u32 = 2;

/// Column id of the operations' actions (`ACTION_COL_ID` in automerge).
const ACTION_COLUMN_ID: u32 = 4;
/// Column id of the operations' predecessors (`PRED_COL_ID` in automerge).
const PRED_COLUMN_ID: u32 = 7;
/// The action column's specification: id 4, integers, not deflated.
const ACTION_SPEC: u32 = (ACTION_COLUMN_ID << 4) | TYPE_INTEGER;
/// The predecessor group column's specification: id 7, group.
const PRED_GROUP_SPEC: u32 = (PRED_COLUMN_ID << 4) | TYPE_GROUP;

/// The extra-bytes footer id automerge uses for a change's author.
const FOOTER_AUTHOR: u64 = 1;

/// Checks one change chunk, exactly as long as `chunk`, and returns what it
/// says about itself.
pub(super) fn admit_change_chunk(
    chunk: &[u8],
    limits: &InputLimits,
) -> Result<ChangeHeader, Refusal> {
    let mut input = Reader::new(chunk);
    if input.take(4, "a chunk's magic bytes")? != MAGIC {
        return Err(Refusal::BadMagic);
    }
    let checksum = input.take(4, "a chunk's checksum")?;
    // The hash covers the chunk from its type byte on. Automerge hashes the
    // type byte, the body length re-encoded and the body; the length is read
    // with the strict parser below, which admits only the minimal encoding,
    // so hashing the bytes as received is the same.
    let hashed = input.peek_rest();
    match input.byte("a chunk's type")? {
        CHUNK_CHANGE => {}
        CHUNK_DOCUMENT => return Err(Refusal::DocumentChunk),
        CHUNK_COMPRESSED_CHANGE => return Err(Refusal::CompressedChunk),
        other => return Err(Refusal::UnknownChunkType(other)),
    }
    let body_len = input.uleb("a chunk's length")?;
    if body_len != as_u64(input.remaining()) {
        return Err(Refusal::Malformed(
            "a change chunk's length does not match the space the message gives it",
        ));
    }
    let digest: [u8; 32] = Sha256::digest(hashed).into();
    if digest.get(..4) != Some(checksum) {
        return Err(Refusal::Checksum);
    }

    let deps = read_deps(&mut input, limits)?;
    let actor = read_actor(&mut input, limits)?;
    let seq = input.uleb("a change's sequence number")?;
    if seq == 0 || seq > u64::from(u32::MAX) {
        return Err(Refusal::OutOfRange("a change's sequence number"));
    }
    let start_op = input.uleb("a change's first operation counter")?;
    if start_op == 0 || start_op > u64::from(u32::MAX) {
        return Err(Refusal::OutOfRange("a change's first operation counter"));
    }
    input.sleb("a change's timestamp")?;
    let message = input.length_prefixed("a change's message")?;
    if std::str::from_utf8(message).is_err() {
        return Err(Refusal::Malformed("a change's message is not valid UTF-8"));
    }
    let other_actors = read_other_actors(&mut input, limits)?;
    let columns = read_column_metadata(&mut input)?;
    let data_len = columns.iter().map(|column| column.len).sum::<u64>();
    let data = input.take(data_len, "a change's column data")?;
    let extra = input.peek_rest();

    let mut ops: u64 = 0;
    let actors = other_actors.saturating_add(1);
    let mut offset: u64 = 0;
    for column in &columns {
        let bytes = slice(data, offset, column.len)?;
        offset = offset.saturating_add(column.len);
        if column.spec == ACTION_SPEC {
            ops = count_actions(bytes, limits.max_ops_per_change)?;
        } else if column.spec == PRED_GROUP_SPEC {
            check_pred_count(bytes, limits.max_preds_per_change)?;
        } else if column.spec & SPEC_TYPE == TYPE_ACTOR {
            check_actor_indices(bytes, actors)?;
        }
    }
    if ops > 0 {
        let last_op = start_op.checked_add(ops - 1);
        if last_op.is_none_or(|last| last > u64::from(u32::MAX)) {
            return Err(Refusal::OutOfRange("a change's last operation counter"));
        }
    }
    if seq != 1 && has_author_footer(extra) {
        // Automerge asserts that only a first change names its author.
        return Err(Refusal::Malformed(
            "a change after its actor's first names an author",
        ));
    }

    Ok(ChangeHeader {
        hash: ChangeHash(digest),
        actor,
        seq,
        start_op,
        ops,
        deps,
        bytes: chunk.len(),
    })
}

fn read_deps(input: &mut Reader<'_>, limits: &InputLimits) -> Result<Vec<ChangeHash>, Refusal> {
    let count = input.uleb("a change's dependency count")?;
    if count > as_u64(limits.max_deps_per_change) {
        return Err(too_large(
            "the number of dependencies of a change",
            limits.max_deps_per_change,
        ));
    }
    let mut deps = Vec::new();
    for _ in 0..count {
        let bytes = input.take(32, "a change's dependencies")?;
        let hash: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Refusal::Truncated("a change's dependencies"))?;
        deps.push(ChangeHash(hash));
    }
    Ok(deps)
}

fn read_actor(input: &mut Reader<'_>, limits: &InputLimits) -> Result<ActorId, Refusal> {
    let len = input.uleb("an actor id")?;
    if len > as_u64(limits.max_actor_id_bytes) {
        return Err(too_large(
            "the length of an actor id in bytes",
            limits.max_actor_id_bytes,
        ));
    }
    Ok(ActorId::from(input.take(len, "an actor id")?))
}

/// Reads the other actors and returns how many there are.
fn read_other_actors(input: &mut Reader<'_>, limits: &InputLimits) -> Result<u64, Refusal> {
    let count = input.uleb("a change's other actor count")?;
    // The change's own actor counts too.
    if count >= as_u64(limits.max_actors_per_change) {
        return Err(too_large(
            "the number of actors of a change",
            limits.max_actors_per_change,
        ));
    }
    for _ in 0..count {
        read_actor(input, limits)?;
    }
    Ok(count)
}

/// One entry of a change's column metadata.
#[derive(Debug, Clone, Copy)]
struct ColumnMeta {
    spec: u32,
    len: u64,
}

/// Reads the column metadata: a count, then a specification and a data
/// length for each column. Automerge refuses specifications (compared
/// without the deflate bit) that are out of order or repeated; we also refuse
/// the deflate bit itself.
fn read_column_metadata(input: &mut Reader<'_>) -> Result<Vec<ColumnMeta>, Refusal> {
    let count = input.uleb("a change's column count")?;
    let mut columns: Vec<ColumnMeta> = Vec::new();
    let mut total: u64 = 0;
    for _ in 0..count {
        let spec = input.uleb_u32("a column specification")?;
        let len = input.uleb("a column's length")?;
        if spec & SPEC_DEFLATE != 0 {
            return Err(Refusal::CompressedColumn);
        }
        if columns.last().is_some_and(|last| last.spec >= spec) {
            return Err(Refusal::Malformed(
                "a change's columns are not in strictly ascending order",
            ));
        }
        total = total
            .checked_add(len)
            .filter(|&total| total <= as_u64(input.remaining()))
            .ok_or(Refusal::Truncated("a change's column data"))?;
        columns.push(ColumnMeta { spec, len });
    }
    Ok(columns)
}

fn slice(data: &[u8], offset: u64, len: u64) -> Result<&[u8], Refusal> {
    let start = usize::try_from(offset).ok();
    let end = offset
        .checked_add(len)
        .and_then(|end| usize::try_from(end).ok());
    match (start, end) {
        (Some(start), Some(end)) => data
            .get(start..end)
            .ok_or(Refusal::Truncated("a change's column data")),
        _ => Err(Refusal::Truncated("a change's column data")),
    }
}

/// One step of a run-length encoded column of unsigned integers.
enum Run {
    /// `count` copies of `value`.
    Values { count: u64, value: u64 },
    /// A run of nulls (its length does not matter to any check).
    Nulls,
}

/// Walks a run-length encoded column of unsigned integers, as automerge's
/// `RleDecoder<u64>` reads it: a signed run header; positive means that many
/// copies of the value that follows, negative means that many values follow
/// one by one, zero means a null run whose length follows. Literal values are
/// reported one by one, so the walk costs time in the bytes, never in the
/// counts they claim.
fn walk_rle(
    column: &[u8],
    what: &'static str,
    mut f: impl FnMut(Run) -> Result<(), Refusal>,
) -> Result<(), Refusal> {
    let mut input = Reader::new(column);
    while !input.is_empty() {
        let header = input.column_sleb(what)?;
        if header > 0 {
            let value = input.column_uleb(what)?;
            f(Run::Values {
                count: header.unsigned_abs(),
                value,
            })?;
        } else if header < 0 {
            for _ in 0..header.unsigned_abs() {
                let value = input.column_uleb(what)?;
                f(Run::Values { count: 1, value })?;
            }
        } else {
            input.column_uleb(what)?;
            f(Run::Nulls)?;
        }
    }
    Ok(())
}

/// Counts the operations of a change: one per entry of its action column.
/// Automerge iterates over operations until this column is exhausted, and a
/// null action is an error there, so it is refused here.
fn count_actions(column: &[u8], limit: u64) -> Result<u64, Refusal> {
    let mut ops: u64 = 0;
    walk_rle(column, "the action column", |run| match run {
        Run::Values { count, .. } => {
            ops = ops
                .checked_add(count)
                .filter(|&ops| ops <= limit)
                .ok_or(Refusal::TooManyOps { limit })?;
            Ok(())
        }
        Run::Nulls => Err(Refusal::Malformed("an operation has no action")),
    })?;
    Ok(ops)
}

/// Sums the predecessor group column (the number of predecessor references
/// of each operation) and checks the total against `limit`.
fn check_pred_count(column: &[u8], limit: u64) -> Result<(), Refusal> {
    let mut sum: u64 = 0;
    walk_rle(column, "the predecessor column", |run| {
        if let Run::Values { count, value } = run {
            sum = count
                .checked_mul(value)
                .and_then(|refs| sum.checked_add(refs))
                .filter(|&sum| sum <= limit)
                .ok_or(Refusal::TooLarge {
                    what: "the number of predecessor references in a change",
                    limit,
                })?;
        }
        Ok(())
    })
}

/// Checks that every index in an actor column names one of the change's
/// actors: 0 is the change's own actor, 1 and up its other actors in order.
fn check_actor_indices(column: &[u8], actors: u64) -> Result<(), Refusal> {
    walk_rle(column, "an actor column", |run| match run {
        Run::Values { value, .. } if value >= actors => Err(Refusal::ActorIndex {
            index: value,
            actors,
        }),
        _ => Ok(()),
    })
}

/// Whether automerge will read an author from a change's extra bytes: a
/// footer id of 1 and a length that fits in what follows, both read by the
/// `leb128` crate.
fn has_author_footer(extra: &[u8]) -> bool {
    let mut input = Reader::new(extra);
    let (Ok(id), Ok(len)) = (input.column_uleb("a footer"), input.column_uleb("a footer")) else {
        return false;
    };
    id == FOOTER_AUTHOR && len <= as_u64(input.remaining())
}
