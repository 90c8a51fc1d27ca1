//! The grammar of the settings: every setting as an optional flag,
//! environment variable and file key, so that a value given nowhere falls
//! through to the next layer and then to the default (`layers.rs`).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::NaiveDate;
use clap::Parser;
use secrecy::SecretString;
use serde::Deserialize;

use super::{EmailSenderKind, LogFormat, PhoneSenderKind, Profile, SmtpTls};

/// The command line. Every field is optional here so that a value given
/// nowhere falls through to the file and then to the default.
#[derive(Debug, Default, Parser, Deserialize)]
#[command(name = "codeedex-server", version, about = "CodeeDex Task Sync server", long_about = None, args_override_self = true,
    after_help = "To move a data directory's store to PostgreSQL: codeedex-server migrate --help")]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// A TOML file with settings (same names as the flags, with underscores).
    #[arg(long, env = "CODEEDEX_CONFIG")]
    #[serde(skip)]
    pub(crate) config: Option<PathBuf>,
    /// Address and port to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "CODEEDEX_LISTEN")]
    pub(crate) listen: Option<SocketAddr>,
    /// Directory for the store and the generated keys [default: ./data].
    #[arg(long, env = "CODEEDEX_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// A PostgreSQL URL (postgres://user:password@host:port/database) to keep
    /// everything in instead of the data directory, so that several nodes
    /// can serve one user base [default: none, the embedded store].
    #[arg(long, env = "CODEEDEX_DATABASE_URL", hide_env_values = true)]
    pub(crate) database_url: Option<SecretString>,
    /// Connections each node keeps open to PostgreSQL, 1 to 1000 [default: 16].
    #[arg(long, env = "CODEEDEX_DATABASE_POOL_SIZE")]
    pub(crate) database_pool_size: Option<usize>,
    /// MiB of database pages the store keeps in memory, 1 to 65536; the
    /// operating system's page cache holds the rest [default: 16].
    #[arg(long, env = "CODEEDEX_STORE_CACHE_MIB")]
    pub(crate) store_cache_mib: Option<u64>,
    /// development or production [default: development].
    #[arg(long, env = "CODEEDEX_PROFILE")]
    pub(crate) profile: Option<Profile>,
    /// text or json [default: text].
    #[arg(long, env = "CODEEDEX_LOG_FORMAT")]
    pub(crate) log_format: Option<LogFormat>,
    /// A tracing filter, such as "info" or "codeedex_server=debug" [default: info].
    #[arg(long, env = "CODEEDEX_LOG")]
    pub(crate) log: Option<String>,
    /// HTTP worker threads [default: one per core].
    #[arg(long, env = "CODEEDEX_WORKERS")]
    pub(crate) workers: Option<usize>,
    /// Where email codes go: log or smtp [default: log].
    #[arg(long, env = "CODEEDEX_EMAIL_SENDER")]
    pub(crate) email_sender: Option<EmailSenderKind>,
    /// Where phone codes go: log or sms [default: log].
    #[arg(long, env = "CODEEDEX_PHONE_SENDER")]
    pub(crate) phone_sender: Option<PhoneSenderKind>,
    /// SMTP server host name.
    #[arg(long, env = "CODEEDEX_SMTP_HOST")]
    pub(crate) smtp_host: Option<String>,
    /// SMTP server port [default: 587].
    #[arg(long, env = "CODEEDEX_SMTP_PORT")]
    pub(crate) smtp_port: Option<u16>,
    /// SMTP security: none, starttls or tls [default: starttls].
    #[arg(long, env = "CODEEDEX_SMTP_TLS")]
    pub(crate) smtp_tls: Option<SmtpTls>,
    /// A PEM file of certificate authorities to trust for the SMTP server,
    /// besides the system's (a private relay's own authority) [default: none].
    #[arg(long, env = "CODEEDEX_SMTP_CA_FILE")]
    pub(crate) smtp_ca_file: Option<PathBuf>,
    /// SMTP user name (omit for no authentication).
    #[arg(long, env = "CODEEDEX_SMTP_USERNAME")]
    pub(crate) smtp_username: Option<String>,
    /// SMTP password.
    #[arg(long, env = "CODEEDEX_SMTP_PASSWORD", hide_env_values = true)]
    pub(crate) smtp_password: Option<SecretString>,
    /// The From header of code mails [default: CodeeDex <no-reply@codeedex.invalid>].
    #[arg(long, env = "CODEEDEX_SMTP_FROM")]
    pub(crate) smtp_from: Option<String>,
    /// Base URL of the Twilio-style SMS API [default: https://api.twilio.com].
    #[arg(long, env = "CODEEDEX_SMS_API_BASE")]
    pub(crate) sms_api_base: Option<String>,
    /// SMS account id (user name for the API).
    #[arg(long, env = "CODEEDEX_SMS_ACCOUNT_SID")]
    pub(crate) sms_account_sid: Option<String>,
    /// SMS API token.
    #[arg(long, env = "CODEEDEX_SMS_AUTH_TOKEN", hide_env_values = true)]
    pub(crate) sms_auth_token: Option<SecretString>,
    /// The sender number or id of code messages.
    #[arg(long, env = "CODEEDEX_SMS_FROM")]
    pub(crate) sms_from: Option<String>,
    /// Proxies whose X-Forwarded-For is believed, comma-separated IPs [default: none].
    #[arg(long, env = "CODEEDEX_TRUSTED_PROXIES", value_delimiter = ',')]
    pub(crate) trusted_proxies: Option<Vec<IpAddr>>,
    /// Digits in a code, 6 to 10 [default: 6].
    #[arg(long, env = "CODEEDEX_OTP_DIGITS")]
    pub(crate) otp_digits: Option<u32>,
    /// How long a code is valid, 1 to 600 [default: 600].
    #[arg(long, env = "CODEEDEX_OTP_TTL_SECS")]
    pub(crate) otp_ttl_secs: Option<u64>,
    /// Wrong attempts that kill a code [default: 5].
    #[arg(long, env = "CODEEDEX_OTP_MAX_ATTEMPTS")]
    pub(crate) otp_max_attempts: Option<u32>,
    /// Seconds before another code may be sent to the same identifier, at most 86400 [default: 60].
    #[arg(long, env = "CODEEDEX_OTP_RESEND_COOLDOWN_SECS")]
    pub(crate) otp_resend_cooldown_secs: Option<u64>,
    /// Codes per identifier per hour [default: 5].
    #[arg(long, env = "CODEEDEX_OTP_HOURLY_CAP")]
    pub(crate) otp_hourly_cap: Option<u32>,
    /// Codes per identifier per day [default: 10].
    #[arg(long, env = "CODEEDEX_OTP_DAILY_CAP")]
    pub(crate) otp_daily_cap: Option<u32>,
    /// Wrong codes per identifier per 24 hours before it is locked, across resends [default: 20].
    #[arg(long, env = "CODEEDEX_OTP_FAILURE_CAP")]
    pub(crate) otp_failure_cap: Option<u32>,
    /// Code requests per client IP per window [default: 30].
    #[arg(long, env = "CODEEDEX_IP_SEND_LIMIT")]
    pub(crate) ip_send_limit: Option<u32>,
    /// Code verifications per client IP per window [default: 30].
    #[arg(long, env = "CODEEDEX_IP_VERIFY_LIMIT")]
    pub(crate) ip_verify_limit: Option<u32>,
    /// Token refreshes per client IP per window [default: 150].
    #[arg(long, env = "CODEEDEX_IP_REFRESH_LIMIT")]
    pub(crate) ip_refresh_limit: Option<u32>,
    /// The per-IP window in seconds, 1 to 86400 [default: 300].
    #[arg(long, env = "CODEEDEX_IP_LIMIT_WINDOW_SECS")]
    pub(crate) ip_limit_window_secs: Option<u64>,
    /// Access token lifetime in seconds, 1 to 86400 [default: 900].
    #[arg(long, env = "CODEEDEX_ACCESS_TOKEN_TTL_SECS")]
    pub(crate) access_token_ttl_secs: Option<u64>,
    /// The `iss` of access tokens [default: codeedex].
    #[arg(long, env = "CODEEDEX_JWT_ISSUER")]
    pub(crate) jwt_issuer: Option<String>,
    /// The `aud` of access tokens [default: codeedex-api].
    #[arg(long, env = "CODEEDEX_JWT_AUDIENCE")]
    pub(crate) jwt_audience: Option<String>,
    /// Seconds in which the previous refresh token returns the current pair, at most 300 [default: 10].
    #[arg(long, env = "CODEEDEX_REFRESH_GRACE_SECS")]
    pub(crate) refresh_grace_secs: Option<u64>,
    /// A session unused this long ends, 1 to 34560000 (400 days) [default: 2592000, 30 days].
    #[arg(long, env = "CODEEDEX_SESSION_IDLE_SECS")]
    pub(crate) session_idle_secs: Option<u64>,
    /// A session ends this long after sign-in, however used, at most 34560000 (400 days) [default: 7776000, 90 days].
    #[arg(long, env = "CODEEDEX_SESSION_MAX_SECS")]
    pub(crate) session_max_secs: Option<u64>,
    /// Origins allowed to open sync WebSockets, comma-separated [default: any].
    #[arg(long, env = "CODEEDEX_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub(crate) allowed_origins: Option<Vec<String>>,
    /// Largest sync frame in bytes [default: 16777216].
    #[arg(long, env = "CODEEDEX_SYNC_MAX_FRAME_BYTES")]
    pub(crate) sync_max_frame_bytes: Option<usize>,
    /// Sustained sync messages per second per connection [default: 500].
    #[arg(long, env = "CODEEDEX_SYNC_MESSAGES_PER_SECOND")]
    pub(crate) sync_messages_per_second: Option<u32>,
    /// Sync messages accepted in a burst per connection [default: 5000].
    #[arg(long, env = "CODEEDEX_SYNC_MESSAGE_BURST")]
    pub(crate) sync_message_burst: Option<u32>,
    /// Documents one sync connection may sync [default: 20000].
    #[arg(long, env = "CODEEDEX_SYNC_MAX_DOCUMENTS")]
    pub(crate) sync_max_documents: Option<usize>,
    /// Sync connections per user [default: 32].
    #[arg(long, env = "CODEEDEX_SYNC_MAX_CONNECTIONS_PER_USER")]
    pub(crate) sync_max_connections_per_user: Option<usize>,
    /// Seconds a client has to send its join after connecting, 1 to 300 [default: 10].
    #[arg(long, env = "CODEEDEX_SYNC_HANDSHAKE_TIMEOUT_SECS")]
    pub(crate) sync_handshake_timeout_secs: Option<u64>,
    /// Seconds an unused document stays in memory, at most 86400 [default: 60].
    #[arg(long, env = "CODEEDEX_DOCUMENT_IDLE_SECS")]
    pub(crate) document_idle_secs: Option<u64>,
    /// Largest Automerge change a peer may send, in bytes; beyond it the
    /// connection closes with 4008 [default: 1048576].
    #[arg(long, env = "CODEEDEX_SYNC_MAX_CHANGE_BYTES")]
    pub(crate) sync_max_change_bytes: Option<usize>,
    /// Most operations in one change; beyond it the connection closes with 4008 [default: 100000].
    #[arg(long, env = "CODEEDEX_SYNC_MAX_OPS_PER_CHANGE")]
    pub(crate) sync_max_ops_per_change: Option<u64>,
    /// Most changes in one sync message; beyond it the connection closes with 4008 [default: 10000].
    #[arg(long, env = "CODEEDEX_SYNC_MAX_CHANGES_PER_MESSAGE")]
    pub(crate) sync_max_changes_per_message: Option<usize>,
    /// Changes a document may hold while their dependencies are missing;
    /// beyond it the connection closes with 4008 [default: 1000].
    #[arg(long, env = "CODEEDEX_SYNC_MAX_QUEUED_CHANGES")]
    pub(crate) sync_max_queued_changes: Option<usize>,
    /// Bytes of such changes per document [default: 8388608].
    #[arg(long, env = "CODEEDEX_SYNC_MAX_QUEUED_BYTES")]
    pub(crate) sync_max_queued_bytes: Option<usize>,
    /// Seconds a clean shutdown may take: sync peers told to go away
    /// (close 1001), requests in flight finished, 1 to 300 [default: 10].
    #[arg(long, env = "CODEEDEX_SHUTDOWN_TIMEOUT_SECS")]
    pub(crate) shutdown_timeout_secs: Option<u64>,
    /// Relayed ephemeral messages waiting per connection; older ones are dropped [default: 256].
    #[arg(long, env = "CODEEDEX_SYNC_MAX_EPHEMERAL_QUEUED")]
    pub(crate) sync_max_ephemeral_queued: Option<usize>,
    /// Seconds one outgoing frame may wait for a peer that does not read,
    /// before the connection closes with 4008, 1 to 300 [default: 30].
    #[arg(long, env = "CODEEDEX_SYNC_WRITE_TIMEOUT_SECS")]
    pub(crate) sync_write_timeout_secs: Option<u64>,
    /// Seconds between the server's pings on a sync connection, 1 to 300; a
    /// peer silent for three of them is closed, and changes a peer that
    /// still answers has left unacknowledged for one are sent again
    /// [default: 15].
    #[arg(long, env = "CODEEDEX_SYNC_PING_INTERVAL_SECS")]
    pub(crate) sync_ping_interval_secs: Option<u64>,
    /// The pace of a document's sync messages to a peer, in milliseconds:
    /// three go out at once, then one per this many, each with the changes
    /// that arrived meanwhile (a peer whose changes are being acknowledged
    /// does not wait, and no message waits longer than this after the
    /// last); 0 sends each at once, at most 1000
    /// [default: 50].
    #[arg(long, env = "CODEEDEX_SYNC_COALESCE_MS")]
    pub(crate) sync_coalesce_ms: Option<u64>,
    /// New sync connections the node opens per second; beyond the rate (and
    /// the burst) an upgrade answers 503 with a Retry-After [default: 2000].
    #[arg(long, env = "CODEEDEX_SYNC_CONNECTIONS_PER_SECOND")]
    pub(crate) sync_connections_per_second: Option<u32>,
    /// New sync connections opened at once above the sustained rate [default: 5000].
    #[arg(long, env = "CODEEDEX_SYNC_CONNECTION_BURST")]
    pub(crate) sync_connection_burst: Option<u32>,
    /// Sync connections open on this node; beyond it an upgrade answers 503
    /// with a Retry-After [default: 20000].
    #[arg(long, env = "CODEEDEX_SYNC_MAX_CONNECTIONS")]
    pub(crate) sync_max_connections: Option<usize>,
    /// Live documents per user; beyond it uploads close with 4011 and REST
    /// creation answers 403 quota_exceeded [default: 100000].
    #[arg(long, env = "CODEEDEX_QUOTA_DOCUMENTS_PER_USER")]
    pub(crate) quota_documents_per_user: Option<u64>,
    /// Bytes of change log per user [default: 1073741824].
    #[arg(long, env = "CODEEDEX_QUOTA_BYTES_PER_USER")]
    pub(crate) quota_bytes_per_user: Option<u64>,
    /// Bytes of change log per document [default: 67108864].
    #[arg(long, env = "CODEEDEX_QUOTA_BYTES_PER_DOCUMENT")]
    pub(crate) quota_bytes_per_document: Option<u64>,
    /// Fixed codes for test accounts, "identifier=code" comma-separated.
    /// Needs --test-codes-expire and --allow-test-codes.
    #[arg(long, env = "CODEEDEX_TEST_CODES", hide_env_values = true)]
    pub(crate) test_codes: Option<String>,
    /// The explicit opt-in that fixed test codes need besides their list, so
    /// that a stray CODEEDEX_TEST_CODES cannot turn them on by accident.
    #[arg(
        long,
        env = "CODEEDEX_ALLOW_TEST_CODES",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub(crate) allow_test_codes: Option<bool>,
    /// The last day (UTC, YYYY-MM-DD) on which the fixed test codes work.
    #[arg(long, env = "CODEEDEX_TEST_CODES_EXPIRE")]
    pub(crate) test_codes_expire: Option<NaiveDate>,
}

/// The settings file at `path`, parsed (unknown keys are refused).
pub(super) fn read_file(path: &Path) -> anyhow::Result<Overrides> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {} is not valid", path.display()))
}
