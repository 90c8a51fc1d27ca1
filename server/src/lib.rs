//! The CodeeDex Task Sync server.
//!
//! `main` calls [`startup::main_with_args`]; tests build an
//! [`startup::Application`] on port 0 with a temporary data directory, or run
//! the binary. The layers, outside in: [`api`] (HTTP, the only module that
//! knows actix-web) → [`auth`] (the rules) → [`store`] (the only module that
//! knows sled). [`delivery`] sends codes; [`configuration`] and
//! [`telemetry`] set the server up.

// The hub contains Automerge panics on peer input with `catch_unwind`; with
// `panic = "abort"` any peer could end the process with one message. (Fuzz
// builds abort on purpose: there every panic, contained or not, is a find.)
#[cfg(all(panic = "abort", not(fuzzing)))]
compile_error!("codeedex-server must be built with panic = \"unwind\" (see sync::hub)");

pub(crate) mod api;
pub mod auth;
pub mod configuration;
pub mod delivery;
pub mod metrics;
pub mod startup;
pub mod store;
pub mod sync;
pub(crate) mod telemetry;
