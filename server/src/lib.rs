//! The CodeeDex Task Sync server.
//!
//! `main` calls [`startup::main_with_args`]; the end-to-end tests run the
//! binary. The layers, outside in: `api` (HTTP, the only module that knows
//! actix-web) → [`auth`] (the rules) → [`store`] (the only module that knows
//! sled). [`delivery`] sends codes; [`configuration`] and `telemetry` set the
//! server up.
//!
//! The public surface is what the binary, the end-to-end tests (`tests/`)
//! and the fuzz targets (`fuzz/`) use: `main_with_args`, opening and checking
//! a `Store`, the pieces the `sync_frame` fuzz target assembles a sync
//! `Connection` from, and the pure session machine the simulation drives. Everything else is `pub(crate)`, so that the
//! compiler reports what nothing uses.

// The hub contains Automerge panics on peer input with `catch_unwind`; with
// `panic = "abort"` any peer could end the process with one message. (Fuzz
// builds abort on purpose: there every panic, contained or not, is a find.)
#[cfg(all(panic = "abort", not(fuzzing)))]
compile_error!("codeedex-server must be built with panic = \"unwind\" (see sync::hub)");

pub(crate) mod api;
pub mod auth;
pub mod configuration;
pub mod delivery;
pub mod durability;
pub mod metrics;
pub mod startup;
pub mod store;
pub mod sync;
pub(crate) mod tasks;
pub(crate) mod telemetry;
