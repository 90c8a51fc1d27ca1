//! Sync with the server: a pure protocol machine ([`machine`]), reconnect
//! delays ([`backoff`]) and the async driver ([`engine`]).

pub(crate) mod backoff;
pub(crate) mod engine;
pub(crate) mod machine;
