//! The opaque handle: open, close, the event callback, and the functions
//! every app needs first (the ABI version, the last error, freeing strings).

use std::ffi::{c_char, c_void};
use std::time::Duration;

use codeedex_client_core::{Client, ClientConfig, TokenStorage};
use serde::Deserialize;

use crate::events::{CdxEventCallback, EventPump};
use crate::status::{CdxStatus, Failure, call, last_error};
use crate::strings::{self, owned};

/// The version of this ABI. It changes whenever a function's signature or
/// meaning, a status value or a JSON shape changes incompatibly; an app
/// compares it with `cdx_abi_version()` before anything else.
pub const CDX_ABI_VERSION: u32 = 1;

/// How long closing waits for the runtime's threads.
const SHUTDOWN: Duration = Duration::from_secs(5);

/// One open client: a device's data directory and its connection to the
/// server. Opaque: only pointers to it cross the boundary.
#[derive(Debug)]
pub struct CdxClient {
    pub(crate) client: Client,
    pub(crate) runtime: tokio::runtime::Runtime,
    events: EventPump,
}

// The header promises that one handle may be used from many threads at
// once (the app's and the event thread): that holds only while the handle
// is Send and Sync, which this checks at compile time.
const _: fn() = || {
    fn shared_across_threads<T: Send + Sync>() {}
    shared_across_threads::<CdxClient>();
};

/// The settings of `cdx_client_open`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    data_dir: String,
    server_url: String,
    #[serde(default)]
    device_name: Option<String>,
    #[serde(default)]
    token_store: Option<String>,
}

impl Settings {
    fn config(self) -> Result<ClientConfig, Failure> {
        if self.data_dir.trim().is_empty() {
            return Err(Failure::invalid("data_dir must not be empty"));
        }
        let url = self.server_url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Failure::invalid(
                "server_url must start with http:// or https://",
            ));
        }
        let mut config = ClientConfig::new(self.data_dir, url);
        config.device_name = self.device_name;
        if let Some(name) = self.token_store {
            config.token_storage = TokenStorage::parse(&name).ok_or_else(|| {
                Failure::invalid(format!(
                    "token_store {name:?} is none of auto, keyring, file"
                ))
            })?;
        }
        Ok(config)
    }
}

impl CdxClient {
    fn open(config: ClientConfig) -> Result<Self, Failure> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("codeedex-runtime")
            .enable_all()
            .build()
            .map_err(|e| Failure::new(CdxStatus::Internal, format!("cannot start: {e}")))?;
        let client = {
            // reqwest and sled may look for a runtime while opening.
            let _context = runtime.enter();
            Client::open(config)?
        };
        let events =
            EventPump::start(client.subscribe(), runtime.handle().clone()).map_err(|e| {
                Failure::new(
                    CdxStatus::Internal,
                    format!("cannot start the event thread: {e}"),
                )
            })?;
        Ok(Self {
            client,
            runtime,
            events,
        })
    }

    /// Runs a future of the client on its runtime, from an app thread.
    pub(crate) fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    fn close(mut self) {
        self.events.stop();
        let Self {
            client, runtime, ..
        } = self;
        runtime.block_on(client.stop_sync());
        drop(client);
        runtime.shutdown_timeout(SHUTDOWN);
    }
}

/// The client behind a handle argument.
///
/// # Safety
/// `ptr` is NULL or a handle from `cdx_client_open` not yet closed.
pub(crate) unsafe fn handle<'a>(ptr: *const CdxClient) -> Result<&'a CdxClient, Failure> {
    // SAFETY: the caller's promise: NULL or a live handle, which is a
    // `Box<CdxClient>` turned into a pointer by `cdx_client_open`.
    unsafe { ptr.as_ref() }.ok_or_else(|| Failure::null("client"))
}

/// The ABI version of the library, to compare with `CDX_ABI_VERSION` from
/// the header the app was built with.
#[unsafe(no_mangle)]
pub extern "C" fn cdx_abi_version() -> u32 {
    CDX_ABI_VERSION
}

/// The message of the last failed call on the calling thread, or NULL if
/// the last call succeeded. Free it with `cdx_string_free`. Does not
/// change the last error.
#[unsafe(no_mangle)]
pub extern "C" fn cdx_last_error() -> *mut c_char {
    std::panic::catch_unwind(|| last_error().map(owned).unwrap_or(std::ptr::null_mut()))
        .unwrap_or(std::ptr::null_mut())
}

/// Frees a string the library returned (an out-parameter, an event, the
/// last error). NULL is ignored.
///
/// # Safety
/// `text` is NULL or a string from this library not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cdx_string_free(text: *mut c_char) {
    if text.is_null() {
        return;
    }
    // SAFETY: the caller's promise: a pointer from `CString::into_raw`
    // (every string this library hands out), freed once.
    drop(unsafe { std::ffi::CString::from_raw(text) });
}

/// Opens the client of a data directory (created if needed).
///
/// `settings_json`: `{"data_dir": "...", "server_url": "https://...",
/// "device_name": "Ann's phone" (optional), "token_store": "auto" |
/// "keyring" | "file" (optional, default "auto")}`. On success `*out_client`
/// is the handle; close it with `cdx_client_close`. A data directory can
/// be open in one process at a time (`CDX_STATUS_STORAGE` otherwise).
///
/// # Safety
/// `settings_json` is NULL or a NUL-terminated string; `out_client` is NULL
/// or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cdx_client_open(
    settings_json: *const c_char,
    out_client: *mut *mut CdxClient,
) -> CdxStatus {
    call(|| {
        if out_client.is_null() {
            return Err(Failure::null("out_client"));
        }
        // SAFETY: not NULL, and the caller promises it is writable.
        unsafe { out_client.write(std::ptr::null_mut()) };
        // SAFETY: the caller's promise about `settings_json`.
        let settings: Settings = unsafe { strings::json(settings_json, "settings_json") }?;
        let client = CdxClient::open(settings.config()?)?;
        // SAFETY: checked above.
        unsafe { out_client.write(Box::into_raw(Box::new(client))) };
        Ok(())
    })
}

/// Closes a client: stops sync, waits for the event thread (after its
/// current callback), flushes the store and frees the handle. The handle
/// must not be used afterwards, nor by any other thread during the call.
/// From inside the client's own callback it returns
/// `CDX_STATUS_WRONG_THREAD` and closes nothing.
///
/// # Safety
/// `client` is NULL or a handle from `cdx_client_open` not yet closed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cdx_client_close(client: *mut CdxClient) -> CdxStatus {
    call(|| {
        // SAFETY: the caller's promise.
        let open = unsafe { handle(client) }?;
        if open.events.is_event_thread() {
            return Err(Failure::new(
                CdxStatus::WrongThread,
                "a client cannot be closed from inside its own event callback",
            ));
        }
        // SAFETY: a live handle is a leaked Box; the caller hands it back
        // and promises no other use of it.
        let owned = unsafe { Box::from_raw(client) };
        owned.close();
        Ok(())
    })
}

/// Sets the event callback (or clears it: `callback` NULL). Events that
/// happen while no callback is set are dropped. Once this returns, the
/// previous callback is not running and is never called again. See
/// `CdxEventCallback` for the threading contract.
///
/// # Safety
/// `client` is NULL or a live handle; `callback` is NULL or a function of
/// that signature that stays callable until it is replaced or the client
/// is closed; `user_data` may be used on the library's event thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cdx_set_event_callback(
    client: *const CdxClient,
    callback: CdxEventCallback,
    user_data: *mut c_void,
) -> CdxStatus {
    call(|| {
        // SAFETY: the caller's promise.
        let open = unsafe { handle(client) }?;
        if open.events.is_event_thread() {
            return Err(Failure::new(
                CdxStatus::WrongThread,
                "the event callback cannot be replaced from inside itself",
            ));
        }
        open.events.set(callback, user_data);
        Ok(())
    })
}
