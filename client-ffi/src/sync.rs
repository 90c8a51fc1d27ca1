//! Sync: live sync on and off, one sync now, and where the device stands.

use std::ffi::c_char;
use std::time::Duration;

use chrono::{DateTime, Utc};
use codeedex_client_core::SyncStatus;
use serde::Serialize;

use crate::client::{CdxClient, handle};
use crate::status::{CdxStatus, call};
use crate::strings::OutString;

/// Starts live sync (no-op if it runs): the library connects whenever
/// someone is signed in and the server is reachable, reconnects with
/// backoff, and reports changes through the event callback until
/// `cdx_sync_stop` or `cdx_client_close`. Returns at once.
///
/// # Safety
/// `client` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cdx_sync_start(client: *const CdxClient) -> CdxStatus {
    call(|| {
        // SAFETY: the caller's promise.
        let open = unsafe { handle(client) }?;
        open.block_on(open.client.start_sync());
        Ok(())
    })
}

/// Stops live sync and waits for the connection to close. Local changes
/// keep waiting for the next sync.
///
/// # Safety
/// `client` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cdx_sync_stop(client: *const CdxClient) -> CdxStatus {
    call(|| {
        // SAFETY: the caller's promise.
        let open = unsafe { handle(client) }?;
        open.block_on(open.client.stop_sync());
        Ok(())
    })
}

#[derive(Debug, Serialize)]
struct Synced {
    last_sync: DateTime<Utc>,
}

/// Syncs until this device and the server have each other's changes, for
/// at most `timeout_ms` milliseconds (live sync keeps running if it was
/// on). `*out_json`: `{"last_sync": "<RFC 3339 time>"}`. Fails with
/// `CDX_STATUS_OFFLINE`, `CDX_STATUS_TIMEOUT` or `CDX_STATUS_NOT_SIGNED_IN`.
///
/// # Safety
/// `client` is NULL or a live handle; `out_json` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cdx_sync_once(
    client: *const CdxClient,
    timeout_ms: u32,
    out_json: *mut *mut c_char,
) -> CdxStatus {
    call(|| {
        // SAFETY: the caller's promises.
        let (out, open) = unsafe { (OutString::new(out_json, "out_json")?, handle(client)?) };
        let timeout = Duration::from_millis(timeout_ms.into());
        let last_sync = open.block_on(open.client.sync_once(timeout))?;
        out.put_json(&Synced { last_sync })
    })
}

/// Where the device stands, for a status line.
#[derive(Debug, Serialize)]
struct Standing {
    /// `signed_out`, `offline`, `connecting`, `syncing` or `up_to_date`.
    state: &'static str,
    /// Documents still being exchanged (`syncing` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pending: Option<usize>,
    /// When the device was last up to date with the server, if ever.
    last_sync: Option<DateTime<Utc>>,
    /// Documents with changes the server is not known to have.
    unsynced_documents: usize,
    /// Why the last connection attempt failed, if it did.
    last_error: Option<String>,
}

/// The sync status now, without the network. `*out_json`: `{"state":
/// "signed_out" | "offline" | "connecting" | "syncing" | "up_to_date",
/// "pending": n (syncing only), "last_sync": time | null,
/// "unsynced_documents": n, "last_error": text | null}`. `signed_out`
/// means nobody is signed in: never, after a sign-out, or because the
/// server refused the refresh token (the session ended elsewhere).
///
/// # Safety
/// `client` is NULL or a live handle; `out_json` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cdx_sync_status(
    client: *const CdxClient,
    out_json: *mut *mut c_char,
) -> CdxStatus {
    call(|| {
        // SAFETY: the caller's promises.
        let (out, open) = unsafe { (OutString::new(out_json, "out_json")?, handle(client)?) };
        let status = open.client.status();
        let (state, pending) = match (status.logged_in, status.sync) {
            (false, _) => ("signed_out", None),
            (true, SyncStatus::Offline) => ("offline", None),
            (true, SyncStatus::Connecting) => ("connecting", None),
            (true, SyncStatus::Syncing { pending }) => ("syncing", Some(pending)),
            (true, SyncStatus::UpToDate { .. }) => ("up_to_date", None),
        };
        out.put_json(&Standing {
            state,
            pending,
            last_sync: status.last_sync,
            unsynced_documents: status.unsynced_documents,
            last_error: open.client.last_sync_error(),
        })
    })
}
