//! The scenarios, one per module.

pub mod auth;
pub mod automerge_floor;
pub mod catchup;
pub mod coldstart;
pub mod crash;
pub mod echo;
pub mod fanout;
pub mod fsync;
pub mod idle;
pub mod ingest;
pub mod soak;
pub mod storm;
