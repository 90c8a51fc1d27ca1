//! Admission of Automerge sync messages from untrusted peers.
//!
//! The automerge crate was written for trusted input. It allocates whatever
//! sizes the bytes announce (a bloom filter carries its own probe count,
//! run-length encoded columns can claim millions of operations in a few
//! bytes) and it panics on some well-formed but inconsistent changes (an
//! operation naming an actor the change does not list, a sequence number of
//! zero). A server that hands a peer's bytes straight to it can be crashed or
//! exhausted by one message. This module stands in front of it: it reads the
//! `data` of an automerge-repo `sync` or `request` message with its own
//! checked parser, compares everything the peer claims against explicit
//! [`InputLimits`], and only then lets automerge decode the bytes.
//!
//! # What is admitted
//!
//! A sync message (version byte `0x42` or `0x43`) whose heads, need, have
//! entries, bloom filters and change chunks are all within the limits, and
//! whose every change chunk is an *uncompressed change chunk* (chunk type 1)
//! with a valid checksum, consistent lengths, in-range sequence and operation
//! counters, uncompressed columns in the order automerge requires, and actor
//! indices that name actors the change lists. An optional trailing flags
//! section of at most [`MAX_FLAGS_BYTES`] bytes is allowed.
//!
//! Whole-document chunks, compressed change chunks and deflated columns are
//! refused even though automerge could read them: inflating them costs
//! memory we cannot bound before doing it, and a peer talking sync protocol
//! version 1 (the only version this server advertises, the stock JavaScript
//! client included) sends none of them.
//!
//! # What is not checked here
//!
//! Everything that needs the document: whether a change's sequence number
//! follows the last one held for its actor, whether its dependencies are
//! known. [`ChangeHeader`] exposes actor, sequence number and dependencies so
//! that the layer that holds the document can check them before applying.
//!
//! Nothing here does IO, and no input, however crafted, makes it panic: every
//! read is checked, every count is compared with its limit before anything is
//! read for it, and no allocation is sized by a number the peer sent.

mod change;
mod reader;
#[cfg(test)]
mod tests;

use automerge::{ActorId, ChangeHash};

use reader::Reader;

/// The first byte of a version 1 sync message.
const MESSAGE_V1: u8 = 0x42;
/// The first byte of a version 2 sync message.
const MESSAGE_V2: u8 = 0x43;
/// Bytes in a change hash.
const HASH_BYTES: u64 = 32;

/// The longest flags section admitted at the end of a sync message.
///
/// Automerge 0.12 writes two bytes (a legacy version marker and one bitfield
/// byte); the format lets later versions append more. 64 bytes leave room
/// for that without letting a peer pad messages with junk automerge ignores.
pub const MAX_FLAGS_BYTES: usize = 64;

/// Automerge computes bloom filter probes modulo `8 * bits.len()` in a `u32`,
/// which overflows from 2^29 bytes on. No configured limit may reach it.
const AUTOMERGE_BLOOM_BYTES_CEILING: usize = (1 << 29) - 1;

/// How much a single sync message may claim.
///
/// Every limit bounds either memory automerge allocates or work it does
/// because of what a peer wrote. The defaults fit a task sync server: they
/// are far above what real documents need (a task list edited by a handful
/// of devices) and far below what would hurt a server with many peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    /// The whole sync message, in bytes. Default 8 MiB: a peer uploading a
    /// document created offline sends its whole history at once, and years of
    /// task edits stay well below this; the WebSocket frame limit should
    /// match it.
    pub max_message_bytes: usize,
    /// Hashes in the heads, the need list and every have entry's last-sync
    /// list, counted together. Default 4096: heads are as many as concurrent
    /// branches (a few), need lists as many as missing dependencies.
    pub max_hashes: usize,
    /// Have entries. Default 16: automerge sends at most one.
    pub max_haves: usize,
    /// The bits of one bloom filter, in bytes. Default 1 MiB: automerge uses
    /// 10 bits per change, so this covers a filter over 800 000 changes.
    pub max_bloom_bytes: usize,
    /// Probes per bloom filter lookup. Default 32: automerge uses 7, and every
    /// probe is work (and memory) for every change the server considers.
    pub max_bloom_probes: u32,
    /// Bloom filter bits per entry. Default 64: automerge uses 10.
    pub max_bloom_bits_per_entry: u32,
    /// Change chunks in one message. Default 10 000: enough for the initial
    /// upload of a busy document; larger histories arrive over several
    /// messages.
    pub max_changes: usize,
    /// One change chunk, in bytes. Default 1 MiB: a change is one local
    /// transaction, usually a few hundred bytes; pasting a long text into a
    /// task description is still far below this.
    pub max_change_bytes: usize,
    /// Operations in one change. Default 100 000. Operations are run-length
    /// encoded, so a few bytes can claim millions of them; automerge does work
    /// for each.
    pub max_ops_per_change: u64,
    /// Predecessor references in one change, summed over its operations.
    /// Default 1 000 000. They are run-length encoded like operations, and
    /// automerge builds a list of them for each operation in memory, so a few
    /// bytes could otherwise claim gigabytes.
    pub max_preds_per_change: u64,
    /// Actors of one change: its own actor plus the other actors its
    /// operations refer to. Default 1024: that many devices editing one task
    /// list concurrently is far beyond any real use.
    pub max_actors_per_change: usize,
    /// The length of one actor id, in bytes. Default 128: automerge and
    /// automerge-repo generate 16-byte actor ids.
    pub max_actor_id_bytes: usize,
    /// Dependencies of one change. Default 1024: a change depends on the
    /// heads its author saw, as many as concurrent branches.
    pub max_deps_per_change: usize,
}

impl Default for InputLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: 8 * 1024 * 1024,
            max_hashes: 4096,
            max_haves: 16,
            max_bloom_bytes: 1024 * 1024,
            max_bloom_probes: 32,
            max_bloom_bits_per_entry: 64,
            max_changes: 10_000,
            max_change_bytes: 1024 * 1024,
            max_ops_per_change: 100_000,
            max_preds_per_change: 1_000_000,
            max_actors_per_change: 1024,
            max_actor_id_bytes: 128,
            max_deps_per_change: 1024,
        }
    }
}

/// Why a sync message was refused.
///
/// Every message is fit to send back to the peer: it names what was wrong,
/// not where in the server it was noticed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Something is larger, or more numerous, than its limit allows.
    #[error("{what} exceeds the limit of {limit}")]
    TooLarge {
        /// What was counted.
        what: &'static str,
        /// The limit in force.
        limit: u64,
    },
    /// A change claims more operations than [`InputLimits::max_ops_per_change`].
    #[error("a change claims more operations than the limit of {limit}")]
    TooManyOps {
        /// The limit in force.
        limit: u64,
    },
    /// The input ends in the middle of a field.
    #[error("the sync message ends in the middle of {0}")]
    Truncated(&'static str),
    /// An integer is not a valid LEB128 encoding (overlong, or wider than
    /// its field).
    #[error("{0} is not a valid LEB128 integer")]
    BadInteger(&'static str),
    /// The bytes do not follow the sync message or change format.
    #[error("malformed sync message: {0}")]
    Malformed(&'static str),
    /// The first byte is not a known sync message version.
    #[error("unknown sync message version byte {0:#04x}")]
    UnknownVersion(u8),
    /// A bloom filter's parameters are out of range or inconsistent.
    #[error("bloom filter refused: {0}")]
    BloomParameters(&'static str),
    /// A change chunk does not start with the Automerge magic bytes.
    #[error("a change chunk does not start with the Automerge magic bytes")]
    BadMagic,
    /// A whole-document chunk was sent where changes are expected.
    #[error("whole-document chunks are not accepted: send changes (sync protocol version 1)")]
    DocumentChunk,
    /// A compressed change chunk was sent.
    #[error("compressed change chunks are not accepted: send uncompressed changes")]
    CompressedChunk,
    /// A chunk of another type (3 is a bundle) was sent.
    #[error("chunk type {0} is not accepted: only change chunks (type 1) are")]
    UnknownChunkType(u8),
    /// A change column is marked as compressed with deflate.
    #[error("deflate-compressed change columns are not accepted")]
    CompressedColumn,
    /// A change chunk's checksum does not match its contents.
    #[error("a change chunk's checksum does not match its contents")]
    Checksum,
    /// A value is outside the range automerge can hold.
    #[error("{0} is out of range")]
    OutOfRange(&'static str),
    /// An operation refers to an actor the change does not list.
    #[error(
        "an operation refers to actor index {index}, but its change lists only {actors} actors"
    )]
    ActorIndex {
        /// The index the operation names.
        index: u64,
        /// How many actors the change lists (its own and the others).
        actors: u64,
    },
}

impl Refusal {
    /// Whether the message was refused for passing a limit (rather than for
    /// being malformed): the server closes such connections with its
    /// limit code, so that a client can tell "too much" from "broken".
    pub fn is_limit(&self) -> bool {
        matches!(self, Refusal::TooLarge { .. } | Refusal::TooManyOps { .. })
    }
}

/// What the admission layer read from one change chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeHeader {
    /// The change's hash: SHA-256 over the chunk from its type byte on.
    pub hash: ChangeHash,
    /// The actor that made the change.
    pub actor: ActorId,
    /// The change's sequence number for its actor, from 1.
    pub seq: u64,
    /// The counter of the change's first operation.
    pub start_op: u64,
    /// How many operations the change holds.
    pub ops: u64,
    /// The hashes of the changes it depends on.
    pub deps: Vec<ChangeHash>,
    /// The size of the chunk, in bytes.
    pub bytes: usize,
}

/// A sync message that passed every check, decoded by automerge.
#[derive(Debug, Clone)]
pub struct AdmittedSyncMessage {
    /// The headers of the change chunks, in message order.
    changes: Vec<ChangeHeader>,
    /// The sum of the change chunks' sizes.
    change_bytes: usize,
    /// Automerge's own decoding of the admitted bytes.
    message: automerge::sync::Message,
}

impl AdmittedSyncMessage {
    /// The headers of the message's change chunks, in message order.
    pub fn changes(&self) -> &[ChangeHeader] {
        &self.changes
    }

    /// The total size of the message's change chunks, in bytes.
    pub fn change_bytes(&self) -> usize {
        self.change_bytes
    }

    /// The message as automerge decoded it, for `receive_sync_message`.
    pub fn into_message(self) -> automerge::sync::Message {
        self.message
    }
}

/// Checks `bytes`, one Automerge sync message from a peer, against `limits`,
/// and decodes it with automerge only if every check passes.
///
/// # Errors
///
/// A [`Refusal`] naming the first problem found.
pub fn admit_sync_message(
    bytes: &[u8],
    limits: &InputLimits,
) -> Result<AdmittedSyncMessage, Refusal> {
    if bytes.len() > limits.max_message_bytes {
        return Err(too_large(
            "the size of a sync message in bytes",
            limits.max_message_bytes,
        ));
    }
    let mut input = Reader::new(bytes);
    let version = input.byte("the version byte")?;
    if version != MESSAGE_V1 && version != MESSAGE_V2 {
        return Err(Refusal::UnknownVersion(version));
    }

    let mut hashes = HashBudget {
        used: 0,
        limit: limits.max_hashes,
    };
    let heads = hashes.skip_list(&mut input, "the heads")?;
    let need = hashes.skip_list(&mut input, "the need list")?;

    let have_count = input.uleb("the number of have entries")?;
    if have_count > as_u64(limits.max_haves) {
        return Err(too_large("the number of have entries", limits.max_haves));
    }
    for _ in 0..have_count {
        hashes.skip_list(&mut input, "a have entry's last-sync hashes")?;
        let bloom = input.length_prefixed("a bloom filter")?;
        check_bloom(bloom, limits)?;
    }

    let change_count = input.uleb("the number of changes")?;
    if change_count > as_u64(limits.max_changes) {
        return Err(too_large("the number of change chunks", limits.max_changes));
    }
    let mut changes = Vec::new();
    let mut change_bytes: usize = 0;
    for _ in 0..change_count {
        let len = input.uleb("the length of a change chunk")?;
        if len > as_u64(limits.max_change_bytes) {
            return Err(too_large(
                "the size of a change chunk in bytes",
                limits.max_change_bytes,
            ));
        }
        let chunk = input.take(len, "a change chunk")?;
        changes.push(change::admit_change_chunk(chunk, limits)?);
        change_bytes = change_bytes.saturating_add(chunk.len());
    }

    if !input.is_empty() {
        let flags_len = input.uleb("the flags section")?;
        if flags_len > as_u64(MAX_FLAGS_BYTES) {
            return Err(too_large(
                "the size of the flags section in bytes",
                MAX_FLAGS_BYTES,
            ));
        }
        input.take(flags_len, "the flags section")?;
        if !input.is_empty() {
            return Err(Refusal::Malformed("bytes follow the flags section"));
        }
    }

    let message = automerge::sync::Message::decode(bytes)
        .map_err(|_| Refusal::Malformed("automerge could not decode the message"))?;
    let agrees = as_u64(message.heads.len()) == heads
        && as_u64(message.need.len()) == need
        && as_u64(message.have.len()) == have_count
        && message.changes.len() == changes.len();
    if !agrees {
        return Err(Refusal::Malformed("automerge read the message differently"));
    }
    Ok(AdmittedSyncMessage {
        changes,
        change_bytes,
        message,
    })
}

/// The hashes a message may still hold, across all its hash lists.
struct HashBudget {
    used: u64,
    limit: usize,
}

impl HashBudget {
    /// Reads a count-prefixed list of hashes, checking the count against what
    /// is left of the budget before reading any of them, and returns the count.
    fn skip_list(&mut self, input: &mut Reader<'_>, what: &'static str) -> Result<u64, Refusal> {
        let count = input.uleb(what)?;
        let used = self.used.saturating_add(count);
        if used > as_u64(self.limit) {
            return Err(too_large(
                "the number of hashes (heads, need and last-sync, together)",
                self.limit,
            ));
        }
        self.used = used;
        let len = count
            .checked_mul(HASH_BYTES)
            .ok_or(Refusal::Truncated(what))?;
        input.take(len, what)?;
        Ok(count)
    }
}

/// Checks one bloom filter's bytes, as automerge's `BloomFilter::parse` will
/// read them: empty, or entry count, bits per entry and probe count (each a
/// LEB128 `u32`) followed by exactly the bits those announce.
fn check_bloom(bloom: &[u8], limits: &InputLimits) -> Result<(), Refusal> {
    if bloom.is_empty() {
        return Ok(());
    }
    let mut input = Reader::new(bloom);
    let entries = input.uleb_u32("a bloom filter's entry count")?;
    let bits_per_entry = input.uleb_u32("a bloom filter's bits per entry")?;
    let probes = input.uleb_u32("a bloom filter's probe count")?;
    if probes == 0 || probes > limits.max_bloom_probes {
        return Err(Refusal::BloomParameters(
            "the probe count is zero or above the limit",
        ));
    }
    if bits_per_entry == 0 || bits_per_entry > limits.max_bloom_bits_per_entry {
        return Err(Refusal::BloomParameters(
            "the bits per entry are zero or above the limit",
        ));
    }
    // Both factors are u32, so the product fits in a u64.
    let bits = u64::from(entries) * u64::from(bits_per_entry);
    let bytes = bits.div_ceil(8);
    let max_bytes = limits.max_bloom_bytes.min(AUTOMERGE_BLOOM_BYTES_CEILING);
    if bytes > as_u64(max_bytes) {
        return Err(too_large("the size of a bloom filter in bytes", max_bytes));
    }
    // Automerge computes the size in floating point; below 2^53 bits (and
    // the ceiling keeps us far below) that is exact, but say so in code.
    let automerge_bytes = ((f64::from(entries) * f64::from(bits_per_entry)) / 8.0).ceil();
    if automerge_bytes != bytes as f64 {
        return Err(Refusal::BloomParameters(
            "its size cannot be computed exactly",
        ));
    }
    let rest = as_u64(input.remaining());
    if entries == 0 && rest != 0 {
        return Err(Refusal::BloomParameters(
            "a filter with no entries carries bits",
        ));
    }
    if rest != bytes {
        return Err(Refusal::BloomParameters(
            "its bits do not match its entry count and bits per entry",
        ));
    }
    Ok(())
}

fn too_large(what: &'static str, limit: usize) -> Refusal {
    Refusal::TooLarge {
        what,
        limit: as_u64(limit),
    }
}

/// `usize` is at most 64 bits on every platform Rust supports.
fn as_u64(value: usize) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}
