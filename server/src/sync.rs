//! Live sync of task documents over the automerge-repo protocol.
//!
//! [`hub::DocumentHub`] owns the documents in memory: it loads them lazily
//! from the event log, applies changes durably, and fans changes out to the
//! connections that sync them. [`session::Session`] is one connection's
//! protocol logic as a pure state machine: handshake, authorisation of every
//! message, limits, and what is owed to the peer. [`connection::Connection`]
//! performs what the machine asks of the hub, the registry, the store and
//! `Auth`; the transport (in `api`) only moves bytes and runs timers.

pub mod connection;
pub mod doorbell;
pub(crate) mod gate;
pub mod hub;
pub(crate) mod mailbox;
pub mod registry;
pub mod session;

#[cfg(test)]
mod simulation;
