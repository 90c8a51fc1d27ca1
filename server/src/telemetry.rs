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
}
