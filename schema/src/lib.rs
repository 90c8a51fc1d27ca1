//! The shared language of the CodeeDex server and its clients.
//!
//! Everything here is pure data and pure functions: identifiers ([`id`]),
//! sign-in identifiers ([`contact`]), the task model ([`task`]), the REST
//! API's bodies ([`api`]), errors as problem details ([`problem`]), the
//! automerge-repo wire protocol ([`wire`]), and the checks that Automerge sync
//! messages from peers pass before automerge reads them ([`admission`]). No
//! module in this crate performs IO, reads the clock or draws randomness:
//! callers pass those in.

#![warn(missing_docs)]

pub mod admission;
pub mod api;
pub mod contact;
pub mod id;
pub mod problem;
pub mod task;
pub mod task_document;
pub mod wire;
