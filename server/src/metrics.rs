//! Counters exported at `/metrics` in the Prometheus text format, with the
//! gauges the caller reads at that moment.
//!
//! A handful of monotonic counters do not justify a metrics framework: each is
//! an atomic, and rendering is one `writeln!` per counter.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident => $help:literal,)*) => {
        /// The server's counters.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $(#[doc = $help] pub $name: AtomicU64,)*
        }

        impl Metrics {
            /// Renders every counter, then the gauges, in the Prometheus
            /// text exposition format.
            pub(crate) fn render(&self, gauges: &[Gauge]) -> String {
                let mut out = String::new();
                $(
                    let name = concat!("codeedex_", stringify!($name), "_total");
                    // Writing to a String cannot fail.
                    let _ = writeln!(out, "# HELP {name} {}", $help);
                    let _ = writeln!(out, "# TYPE {name} counter");
                    let _ = writeln!(out, "{name} {}", self.$name.load(Ordering::Relaxed));
                )*
                for gauge in gauges {
                    let name = gauge.name;
                    let _ = writeln!(out, "# HELP {name} {}", gauge.help);
                    let _ = writeln!(out, "# TYPE {name} gauge");
                    let _ = writeln!(out, "{name} {}", gauge.value);
                }
                out
            }
        }
    };
}

/// A value read when `/metrics` is rendered.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gauge {
    /// Its full name.
    pub(crate) name: &'static str,
    /// What it measures.
    pub(crate) help: &'static str,
    /// Its value now.
    pub(crate) value: u64,
}

counters! {
    otp_requested => "Code requests accepted.",
    otp_delivered => "Codes handed to a transport.",
    otp_delivery_failed => "Codes a transport did not accept.",
    otp_verified => "Codes verified successfully.",
    otp_rejected => "Verifications that failed.",
    sessions_created => "Sessions created by sign-in.",
    refreshes => "Refresh-token rotations.",
    refresh_reuse_detected => "Sessions revoked because an old refresh token was reused.",
    rate_limited => "Requests refused by a rate limit or cap.",
    http_requests => "HTTP requests answered.",
    http_server_errors => "HTTP requests answered with a 5xx status.",
    sync_messages_refused => "Sync messages refused by the admission check before Automerge saw them.",
    sync_panics_contained => "Automerge panics caught while handling a peer's message.",
    sync_messages_shared => "Sync messages taken from another peer's identical generation instead of generated again.",
    sync_documents_reloaded => "Documents put back to what the log holds after a failed message.",
    sync_ephemeral_dropped => "Ephemeral messages dropped because a connection's mailbox was full.",
    sync_resets_requested => "Peers asked to send again changes they named but did not send (a message lost on its way in).",
    sync_messages_resent => "Times changes a peer never acknowledged, though it answered pings, were sent again (a message lost on its way out).",
    sync_slow_readers_closed => "Sync connections closed because the peer stopped reading.",
    sync_connections_shed => "Sync upgrades refused with 503 because the node opened connections at its rate or holds its maximum.",
    quota_refusals => "Writes refused because a user or document quota was exhausted.",
    store_failures => "Times the store failed (a disk error) and began refusing writes.",
    store_recoveries => "Times the store reopened itself after a failure and took writes again.",
}

impl Metrics {
    /// Adds one to a counter.
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_in_prometheus_format() {
        let m = Metrics::default();
        Metrics::bump(&m.otp_verified);
        let text = m.render(&[Gauge {
            name: "codeedex_sync_connections",
            help: "Sync connections open now.",
            value: 3,
        }]);
        assert!(text.contains(
            "# TYPE codeedex_otp_verified_total counter\ncodeedex_otp_verified_total 1\n"
        ));
        assert!(
            text.contains("# TYPE codeedex_sync_connections gauge\ncodeedex_sync_connections 3\n")
        );
    }
}
