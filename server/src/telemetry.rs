//! One place that sets up logging.
//!
//! Logs go to standard output, as text or JSON lines. No log line carries a
//! code, token or URL query string; the development code sender is the one
//! deliberate exception, and production refuses it.

use tracing_subscriber::EnvFilter;

use crate::configuration::LogFormat;

/// Installs the global subscriber. Calling it twice keeps the first.
pub fn init(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(ansi);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    // A subscriber is already set when tests start several servers in one process.
    let _ = result;
    log_panics();
}

/// Sends panics to the log, where an operator looks, instead of a bare
/// line on standard error. The server catches panics from Automerge on
/// peer input (each costs only that peer's message); this says which code
/// panicked, where and why. The message is cut short: it may quote values a
/// peer chose.
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message: String = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("")
            .chars()
            .take(200)
            .collect();
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_else(|| "an unknown place".to_owned());
        let thread = std::thread::current();
        tracing::error!(
            location,
            message,
            thread = thread.name().unwrap_or("unnamed"),
            "panic; the server contains panics on peer input, but this is a bug"
        );
    }));
}
