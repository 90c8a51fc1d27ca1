//! Events to the app: one library thread per client calls the app's
//! callback with each event as JSON.
//!
//! The thread (named `codeedex-events`) waits on the client's event stream
//! through the runtime's handle, and calls the callback outside of any
//! runtime context, so that the callback may call back into the library.
//! The callback slot's lock is held while the callback runs, which is what
//! makes "after `cdx_set_event_callback` returns, the old callback is never
//! called again" true; for the same reason, replacing the callback or
//! closing the client from inside the callback is refused rather than
//! allowed to deadlock.

use std::ffi::{c_char, c_void};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, ThreadId};

use codeedex_client_core::EventStream;
use tokio::runtime::Handle;
use tokio::sync::Notify;

use crate::strings::owned;

/// The app's event callback.
///
/// Called on a library thread, one event at a time, never concurrently
/// for one client. `user_data` is the pointer given at registration.
/// `event_json` is one event as JSON and belongs to the app from then on:
/// free it with `cdx_string_free` (at any time, on any thread). The
/// callback may call any function of the library except `cdx_client_close`
/// and `cdx_set_event_callback` on the same client, which return
/// `CDX_STATUS_WRONG_THREAD` there. It should return quickly: the next
/// event waits for it.
pub type CdxEventCallback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, event_json: *mut c_char)>;

/// The app's pointer, passed back untouched.
#[derive(Debug, Clone, Copy)]
struct UserData(*mut c_void);

// SAFETY: the library never dereferences the pointer; it only hands it back
// to the app's callback, on the thread the header documents. Whether the
// data behind it may be used there is the app's promise at registration.
unsafe impl Send for UserData {}

#[derive(Debug, Clone, Copy)]
struct Registered {
    function: unsafe extern "C" fn(*mut c_void, *mut c_char),
    user_data: UserData,
}

/// One client's event thread and callback slot.
#[derive(Debug)]
pub(crate) struct EventPump {
    slot: Arc<Mutex<Option<Registered>>>,
    stop: Arc<Notify>,
    thread: Option<JoinHandle<()>>,
    thread_id: ThreadId,
}

impl EventPump {
    /// Starts the thread, reading `stream` (subscribed before the client is
    /// handed to the app, so no event is missed once a callback is set).
    pub fn start(mut stream: EventStream, runtime: Handle) -> std::io::Result<Self> {
        let slot: Arc<Mutex<Option<Registered>>> = Arc::new(Mutex::new(None));
        let stop = Arc::new(Notify::new());
        let thread = std::thread::Builder::new()
            .name("codeedex-events".into())
            .spawn({
                let slot = Arc::clone(&slot);
                let stop = Arc::clone(&stop);
                move || {
                    loop {
                        let next = runtime.block_on(async {
                            tokio::select! {
                                // Closing wins over events still waiting.
                                biased;
                                _ = stop.notified() => None,
                                event = stream.next() => event,
                            }
                        });
                        let Some(event) = next else { break };
                        // Nothing here should panic; if it does, the event
                        // is lost, not the thread (a panic must never
                        // unwind into the app's callback frames either).
                        let _ = panic::catch_unwind(AssertUnwindSafe(|| {
                            let Ok(json) = serde_json::to_string(&event) else {
                                return;
                            };
                            let slot = slot.lock().unwrap_or_else(|p| p.into_inner());
                            if let Some(registered) = *slot {
                                // SAFETY: the app registered this function
                                // for this signature and promised that
                                // `user_data` may be used on this thread;
                                // the string is a fresh CString whose
                                // ownership passes to the app.
                                unsafe {
                                    (registered.function)(registered.user_data.0, owned(json))
                                };
                            }
                        }));
                    }
                }
            })?;
        let thread_id = thread.thread().id();
        Ok(Self {
            slot,
            stop,
            thread: Some(thread),
            thread_id,
        })
    }

    /// Whether the caller is this client's event thread (inside its
    /// callback).
    pub fn is_event_thread(&self) -> bool {
        std::thread::current().id() == self.thread_id
    }

    /// Sets or clears the callback; waits for a running callback to return.
    pub fn set(&self, function: CdxEventCallback, user_data: *mut c_void) {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        *slot = function.map(|function| Registered {
            function,
            user_data: UserData(user_data),
        });
    }

    /// Stops the thread and waits for it (after its current callback).
    pub fn stop(&mut self) {
        self.stop.notify_one();
        if let Some(thread) = self.thread.take()
            && !self.is_event_thread()
        {
            let _ = thread.join();
        }
    }
}

impl Drop for EventPump {
    fn drop(&mut self) {
        self.stop();
    }
}
