//! Sync with the server: a pure protocol machine ([`machine`]), reconnect
//! delays ([`backoff`]), the async driver ([`engine`]), and the deletions
//! the server has still to hear of ([`deletions`]).

pub(crate) mod backoff;
pub(crate) mod deletions;
pub(crate) mod engine;
pub(crate) mod machine;
