//! A C ABI over [`codeedex_client_core::Client`]: the offline-first
//! client (local store, sync engine, token storage and refresh) for apps
//! written in Dart (Flutter, through `dart:ffi`), Swift or Kotlin.
//!
//! The header, `include/codeedex.h`, is generated from this crate by
//! cbindgen and committed; its opening comment states the conventions
//! (handles, strings, JSON, statuses, threads) and `tests/header.rs` fails
//! when it differs from a fresh one.
//!
//! # Modules
//! `client` (the handle: open, close, the event callback, the ABI version,
//! the last error, freeing strings), `account` (sign-in, sign-out, the
//! session on start-up, sessions), `tasks`, `sync`, `events` (the event
//! thread), `status` (statuses, the per-thread last error, the panic
//! boundary), `strings` (arguments in, strings out).

mod account;
mod client;
mod events;
mod status;
mod strings;
mod sync;
mod tasks;

pub use account::{
    CDX_SIGN_OUT_ALL, CDX_SIGN_OUT_OTHERS, CDX_SIGN_OUT_THIS_DEVICE, cdx_auth_check,
    cdx_auth_status, cdx_request_code, cdx_revoke_session, cdx_sessions, cdx_sign_out,
    cdx_verify_code,
};
pub use client::{
    CDX_ABI_VERSION, CdxClient, cdx_abi_version, cdx_client_close, cdx_client_open, cdx_last_error,
    cdx_set_event_callback, cdx_string_free,
};
pub use events::CdxEventCallback;
pub use status::CdxStatus;
pub use sync::{cdx_sync_once, cdx_sync_start, cdx_sync_status, cdx_sync_stop};
pub use tasks::{
    cdx_task_complete, cdx_task_create, cdx_task_delete, cdx_task_get, cdx_task_history,
    cdx_task_reopen, cdx_task_update, cdx_tasks_list,
};
