//! Live sync of task documents over the automerge-repo protocol.
//!
//! [`hub::DocumentHub`] owns the documents in memory: it loads them lazily
//! from the event log, applies changes durably, and fans changes out to the
//! connections that sync them. [`peer::PeerConnection`] is one connection's
//! protocol logic: handshake, authorisation of every message, sync states and
//! limits. It consumes frames and produces frames; the transport (in `api`)
//! only moves bytes.

pub(crate) mod gate;
pub mod hub;
pub(crate) mod mailbox;
pub mod peer;
pub mod registry;

#[cfg(test)]
mod simulation;
