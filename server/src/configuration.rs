//! Settings: built-in defaults, then an optional TOML file, then environment
//! variables and command-line flags (which clap merges, flags winning).
//!
//! Every setting has one name used in three places: `--otp-ttl-secs` on the
//! command line, `CODEEDEX_OTP_TTL_SECS` in the environment and `otp_ttl_secs`
//! in the file. Secrets are held in [`SecretString`], which never prints.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::NaiveDate;
use clap::{Parser, ValueEnum};
use codeedex_schema::contact::Contact;
use secrecy::SecretString;

use codeedex_schema::admission::InputLimits;
use serde::{Deserialize, Serialize};

pub mod limits;

use limits::{GateLimits, HubLimits, MailboxLimits, Quota, SyncLimits};

/// Development prints codes to the log; production refuses anything unsafe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Profile {
    /// Local use: the log sender and test codes are allowed.
    Development,
    /// Refuses to start with the log sender or fixed test codes.
    Production,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where codes for email addresses go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum EmailSenderKind {
    /// Print the address and the code to the log (development only).
    Log,
    /// Send mail over SMTP.
    Smtp,
}

/// Where codes for phone numbers go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PhoneSenderKind {
    /// Print the number and the code to the log (development only).
    Log,
    /// Send SMS through a Twilio-style HTTPS API.
    Sms,
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SmtpTls {
    /// Plain text. Only for a relay on the same host or in tests.
    None,
    /// Upgrade with STARTTLS, and refuse to send if the server does not offer it.
    Starttls,
    /// TLS from the first byte (usually port 465).
    Tls,
}

/// The command line. Every field is optional here so that a value given
/// nowhere falls through to the file and then to the default.
#[derive(Debug, Default, Parser, Deserialize)]
#[command(name = "codeedex-server", version, about = "CodeeDex Task Sync server", long_about = None, args_override_self = true)]
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
    /// MiB of database pages the store keeps in memory, 1 to 65536; the
    /// operating system's page cache holds the rest [default: 64].
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

/// The settings the server runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where to listen.
    pub(crate) listen: SocketAddr,
    /// Where the store and keys live.
    pub(crate) data_dir: PathBuf,
    /// Bytes of database pages the store keeps in memory.
    pub(crate) store_cache_bytes: u64,
    /// Development or production.
    pub(crate) profile: Profile,
    /// Log line format.
    pub(crate) log_format: LogFormat,
    /// Log filter.
    pub(crate) log: String,
    /// HTTP worker threads; `None` for one per core.
    pub(crate) workers: Option<usize>,
    /// Code delivery.
    pub delivery: DeliverySettings,
    /// Which peers may set X-Forwarded-For.
    pub(crate) trusted_proxies: Vec<IpAddr>,
    /// One-time code rules.
    pub(crate) otp: OtpPolicy,
    /// Per-IP limits.
    pub(crate) ip_limits: IpLimits,
    /// Token and session rules.
    pub(crate) tokens: TokenPolicy,
    /// Fixed codes for named identifiers, if configured and not expired.
    pub(crate) test_codes: Vec<(Contact, SecretString)>,
    /// Origins allowed to open sync sockets; empty allows any.
    pub(crate) allowed_origins: Vec<String>,
    /// Per-connection sync limits.
    pub(crate) sync_limits: SyncLimits,
    /// Quotas and per-document limits of the hub.
    pub(crate) hub_limits: HubLimits,
    /// How fast the node opens new sync connections, and how many it holds.
    pub(crate) gate_limits: GateLimits,
    /// How long a clean shutdown may take.
    pub(crate) shutdown_timeout: Duration,
    /// How long an unused document stays in memory.
    pub(crate) document_idle: Duration,
    /// Things worth a warning that do not stop the server, logged once
    /// logging is set up.
    pub(crate) warnings: Vec<String>,
}

/// Delivery settings for both kinds of identifier.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Email codes go here.
    pub(crate) email: EmailSenderKind,
    /// Phone codes go here.
    pub(crate) phone: PhoneSenderKind,
    /// SMTP settings, used when `email` is smtp.
    pub(crate) smtp: SmtpSettings,
    /// SMS settings, used when `phone` is sms.
    pub(crate) sms: SmsSettings,
}

/// How to reach the SMTP server.
#[derive(Debug, Clone)]
pub(crate) struct SmtpSettings {
    /// Host name.
    pub(crate) host: String,
    /// Port.
    pub(crate) port: u16,
    /// Transport security.
    pub(crate) tls: SmtpTls,
    /// Credentials, if the server wants them.
    pub(crate) credentials: Option<(String, SecretString)>,
    /// The From header.
    pub(crate) from: String,
}

/// How to reach the SMS provider.
#[derive(Debug, Clone)]
pub(crate) struct SmsSettings {
    /// The API's base URL.
    pub(crate) api_base: String,
    /// Account id.
    pub(crate) account_sid: String,
    /// API token.
    pub(crate) auth_token: SecretString,
    /// Sender number.
    pub(crate) from: String,
}

/// The rules for one-time codes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OtpPolicy {
    /// Digits per code.
    pub(crate) digits: u32,
    /// Lifetime.
    pub(crate) ttl: Duration,
    /// Wrong attempts that kill one code.
    pub(crate) max_attempts: u32,
    /// Minimum time between two sends to one identifier.
    pub(crate) resend_cooldown: Duration,
    /// Sends per identifier per hour.
    pub(crate) hourly_cap: u32,
    /// Sends per identifier per day.
    pub(crate) daily_cap: u32,
    /// Wrong codes per identifier per 24 hours.
    pub(crate) failure_cap: u32,
}

/// Per-client-IP token buckets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IpLimits {
    /// Code requests per window.
    pub(crate) send: u32,
    /// Verifications per window.
    pub(crate) verify: u32,
    /// Refreshes per window.
    pub(crate) refresh: u32,
    /// The window over which a bucket refills completely.
    pub(crate) window: Duration,
}

/// Access-token and session rules.
#[derive(Debug, Clone)]
pub(crate) struct TokenPolicy {
    /// Access token lifetime.
    pub(crate) access_ttl: Duration,
    /// The `iss` claim.
    pub(crate) issuer: String,
    /// The `aud` claim.
    pub(crate) audience: String,
    /// How long the previous refresh token still returns the current pair.
    pub(crate) refresh_grace: Duration,
    /// Inactivity limit of a session.
    pub(crate) session_idle: Duration,
    /// Absolute limit of a session.
    pub(crate) session_max: Duration,
}

/// A setting in whole seconds and the range it must be in.
///
/// Every duration setting has an upper bound, checked at start-up, because
/// each one is added to a date or an instant somewhere, and a value beyond
/// the calendar (`session_max_secs = 18446744073709551615`) would make that
/// addition fail on every request. The bounds sit well above the defaults,
/// where a longer value would only weaken a rule; `--help` states them next
/// to each flag.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SecondsSetting {
    /// The setting's name, as in the file.
    pub(crate) name: &'static str,
    /// The smallest accepted value.
    pub(crate) min: u64,
    /// The largest accepted value.
    pub(crate) max: u64,
    /// Why the bound is where it is.
    pub(crate) why: &'static str,
}

/// The longest any session may live, idle or not: 400 days, the longest
/// lifetime browsers give a cookie (RFC 6265bis).
const SESSION_SECS_MAX: u64 = 400 * 24 * 3600;

impl SecondsSetting {
    /// `otp_ttl_secs`.
    pub(crate) const OTP_TTL: Self = Self {
        name: "otp_ttl_secs",
        min: 1,
        max: 600,
        why: "NIST SP 800-63B allows at most 10 minutes",
    };
    /// `otp_resend_cooldown_secs`.
    pub(crate) const OTP_RESEND_COOLDOWN: Self = Self {
        name: "otp_resend_cooldown_secs",
        min: 0,
        max: 24 * 3600,
        why: "a day, the longest window of the send caps",
    };
    /// `ip_limit_window_secs`.
    pub(crate) const IP_LIMIT_WINDOW: Self = Self {
        name: "ip_limit_window_secs",
        min: 1,
        max: 24 * 3600,
        why: "a day",
    };
    /// `access_token_ttl_secs`.
    pub(crate) const ACCESS_TOKEN_TTL: Self = Self {
        name: "access_token_ttl_secs",
        min: 1,
        max: 24 * 3600,
        why: "a day; access tokens are meant to be short-lived",
    };
    /// `refresh_grace_secs`.
    pub(crate) const REFRESH_GRACE: Self = Self {
        name: "refresh_grace_secs",
        min: 0,
        max: 300,
        why: "five minutes; a longer grace lets an old refresh token through",
    };
    /// `session_idle_secs`.
    pub(crate) const SESSION_IDLE: Self = Self {
        name: "session_idle_secs",
        min: 1,
        max: SESSION_SECS_MAX,
        why: "400 days",
    };
    /// `session_max_secs`.
    pub(crate) const SESSION_MAX: Self = Self {
        name: "session_max_secs",
        min: 1,
        max: SESSION_SECS_MAX,
        why: "400 days",
    };
    /// `sync_handshake_timeout_secs`.
    pub(crate) const SYNC_HANDSHAKE_TIMEOUT: Self = Self {
        name: "sync_handshake_timeout_secs",
        min: 1,
        max: 300,
        why: "five minutes",
    };
    /// `sync_write_timeout_secs`.
    pub(crate) const SYNC_WRITE_TIMEOUT: Self = Self {
        name: "sync_write_timeout_secs",
        min: 1,
        max: 300,
        why: "five minutes; longer keeps a peer that stopped reading, and what it holds, alive",
    };
    /// `shutdown_timeout_secs`.
    pub(crate) const SHUTDOWN_TIMEOUT: Self = Self {
        name: "shutdown_timeout_secs",
        min: 1,
        max: 300,
        why: "five minutes; service managers kill a process that takes longer",
    };
    /// `document_idle_secs`.
    pub(crate) const DOCUMENT_IDLE: Self = Self {
        name: "document_idle_secs",
        min: 0,
        max: 24 * 3600,
        why: "a day",
    };

    /// Every duration setting, for the tests that keep the bounds and the
    /// help text together.
    #[cfg(test)]
    const ALL: [Self; 11] = [
        Self::OTP_TTL,
        Self::OTP_RESEND_COOLDOWN,
        Self::IP_LIMIT_WINDOW,
        Self::ACCESS_TOKEN_TTL,
        Self::REFRESH_GRACE,
        Self::SESSION_IDLE,
        Self::SESSION_MAX,
        Self::SYNC_HANDSHAKE_TIMEOUT,
        Self::SYNC_WRITE_TIMEOUT,
        Self::SHUTDOWN_TIMEOUT,
        Self::DOCUMENT_IDLE,
    ];

    /// The accepted values.
    pub(crate) fn range(&self) -> RangeInclusive<u64> {
        self.min..=self.max
    }

    /// The value as a duration, or why it is refused.
    pub(crate) fn check(&self, secs: u64) -> anyhow::Result<Duration> {
        if !self.range().contains(&secs) {
            bail!(
                "{} must be at least {} and at most {} seconds ({}), not {secs}",
                self.name,
                self.min,
                self.max,
                self.why
            );
        }
        Ok(Duration::from_secs(secs))
    }
}

impl Settings {
    /// Reads flags and environment, then the file they name, and validates
    /// the result. `today` decides whether fixed test codes have expired.
    pub(crate) fn load(
        args: impl IntoIterator<Item = String>,
        today: NaiveDate,
    ) -> anyhow::Result<Self> {
        let cli = Overrides::try_parse_from(args)?;
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => Overrides::default(),
        };
        Self::from_layers(cli, file, today)
    }

    /// Merges command-line (winning) and file layers over the defaults.
    pub fn from_layers(cli: Overrides, file: Overrides, today: NaiveDate) -> anyhow::Result<Self> {
        macro_rules! pick {
            ($field:ident, $default:expr) => {
                cli.$field
                    .clone()
                    .or(file.$field.clone())
                    .unwrap_or_else(|| $default)
            };
        }
        let profile = pick!(profile, Profile::Development);
        let email = pick!(email_sender, EmailSenderKind::Log);
        let phone = pick!(phone_sender, PhoneSenderKind::Log);
        let smtp_username: Option<String> =
            cli.smtp_username.clone().or(file.smtp_username.clone());
        let smtp_password: Option<SecretString> =
            cli.smtp_password.clone().or(file.smtp_password.clone());
        let credentials = match (smtp_username, smtp_password) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            _ => bail!("smtp_username and smtp_password must be given together"),
        };
        let smtp = SmtpSettings {
            host: pick!(smtp_host, String::new()),
            port: pick!(smtp_port, 587),
            tls: pick!(smtp_tls, SmtpTls::Starttls),
            credentials,
            from: pick!(smtp_from, "CodeeDex <no-reply@codeedex.invalid>".to_owned()),
        };
        if email == EmailSenderKind::Smtp && smtp.host.is_empty() {
            bail!("email_sender is smtp but smtp_host is not set");
        }
        if email == EmailSenderKind::Smtp {
            smtp.from
                .parse::<lettre::message::Mailbox>()
                .with_context(|| format!("smtp_from {:?} is not a mailbox", smtp.from))?;
        }
        let sms = SmsSettings {
            api_base: pick!(sms_api_base, "https://api.twilio.com".to_owned()),
            account_sid: pick!(sms_account_sid, String::new()),
            auth_token: pick!(sms_auth_token, SecretString::from(String::new())),
            from: pick!(sms_from, String::new()),
        };
        if phone == PhoneSenderKind::Sms && (sms.account_sid.is_empty() || sms.from.is_empty()) {
            bail!("phone_sender is sms but sms_account_sid or sms_from is not set");
        }
        let otp = OtpPolicy {
            digits: pick!(otp_digits, 6),
            ttl: SecondsSetting::OTP_TTL.check(pick!(otp_ttl_secs, 600))?,
            max_attempts: pick!(otp_max_attempts, 5),
            resend_cooldown: SecondsSetting::OTP_RESEND_COOLDOWN
                .check(pick!(otp_resend_cooldown_secs, 60))?,
            hourly_cap: pick!(otp_hourly_cap, 5),
            daily_cap: pick!(otp_daily_cap, 10),
            failure_cap: pick!(otp_failure_cap, 20),
        };
        if !(6..=10).contains(&otp.digits) {
            bail!("otp_digits must be between 6 and 10");
        }
        if otp.max_attempts == 0 || otp.max_attempts > 10 {
            bail!("otp_max_attempts must be between 1 and 10");
        }
        if otp.hourly_cap == 0 || otp.daily_cap < otp.hourly_cap || otp.failure_cap == 0 {
            bail!("otp caps must be positive and the daily cap at least the hourly cap");
        }
        if otp.failure_cap > 100 {
            bail!("otp_failure_cap must be at most 100 (NIST SP 800-63B §5.2.2)");
        }
        let ip_limits = IpLimits {
            send: pick!(ip_send_limit, 30),
            verify: pick!(ip_verify_limit, 30),
            refresh: pick!(ip_refresh_limit, 150),
            window: SecondsSetting::IP_LIMIT_WINDOW.check(pick!(ip_limit_window_secs, 300))?,
        };
        if ip_limits.send == 0 || ip_limits.verify == 0 || ip_limits.refresh == 0 {
            bail!("per-IP limits and their window must be positive");
        }
        let tokens = TokenPolicy {
            access_ttl: SecondsSetting::ACCESS_TOKEN_TTL
                .check(pick!(access_token_ttl_secs, 900))?,
            issuer: pick!(jwt_issuer, "codeedex".to_owned()),
            audience: pick!(jwt_audience, "codeedex-api".to_owned()),
            refresh_grace: SecondsSetting::REFRESH_GRACE.check(pick!(refresh_grace_secs, 10))?,
            session_idle: SecondsSetting::SESSION_IDLE
                .check(pick!(session_idle_secs, 30 * 24 * 3600))?,
            session_max: SecondsSetting::SESSION_MAX
                .check(pick!(session_max_secs, 90 * 24 * 3600))?,
        };
        if tokens.session_max < tokens.session_idle {
            bail!("session_idle_secs must be at most session_max_secs");
        }
        let mut warnings = Vec::new();
        let test_codes = parse_test_codes(
            cli.test_codes.as_deref().or(file.test_codes.as_deref()),
            cli.allow_test_codes
                .or(file.allow_test_codes)
                .unwrap_or(false),
            cli.test_codes_expire.or(file.test_codes_expire),
            today,
            otp.digits,
            &mut warnings,
        )?;
        if profile == Profile::Production {
            if email == EmailSenderKind::Log || phone == PhoneSenderKind::Log {
                bail!(
                    "the production profile refuses the log sender: set email_sender=smtp and phone_sender=sms"
                );
            }
            if !test_codes.is_empty() {
                bail!("the production profile refuses fixed test codes");
            }
            if email == EmailSenderKind::Smtp && smtp.tls == SmtpTls::None {
                bail!("the production profile refuses SMTP without TLS");
            }
        }
        let defaults = SyncLimits::default();
        let sync_limits = SyncLimits {
            max_frame_bytes: pick!(sync_max_frame_bytes, defaults.max_frame_bytes),
            messages_per_second: pick!(sync_messages_per_second, defaults.messages_per_second),
            message_burst: pick!(sync_message_burst, defaults.message_burst),
            max_documents: pick!(sync_max_documents, defaults.max_documents),
            max_connections_per_user: pick!(
                sync_max_connections_per_user,
                defaults.max_connections_per_user
            ),
            handshake_timeout: SecondsSetting::SYNC_HANDSHAKE_TIMEOUT.check(pick!(
                sync_handshake_timeout_secs,
                defaults.handshake_timeout.as_secs()
            ))?,
            input: InputLimits {
                max_message_bytes: pick!(sync_max_frame_bytes, defaults.max_frame_bytes),
                max_change_bytes: pick!(sync_max_change_bytes, defaults.input.max_change_bytes),
                max_ops_per_change: pick!(
                    sync_max_ops_per_change,
                    defaults.input.max_ops_per_change
                ),
                max_changes: pick!(sync_max_changes_per_message, defaults.input.max_changes),
                ..defaults.input
            },
            mailbox: MailboxLimits {
                max_ephemeral: pick!(sync_max_ephemeral_queued, defaults.mailbox.max_ephemeral),
                ..defaults.mailbox
            },
            write_timeout: SecondsSetting::SYNC_WRITE_TIMEOUT.check(pick!(
                sync_write_timeout_secs,
                defaults.write_timeout.as_secs()
            ))?,
        };
        if sync_limits.max_frame_bytes < 1024
            || sync_limits.messages_per_second == 0
            || sync_limits.message_burst == 0
            || sync_limits.max_documents == 0
            || sync_limits.max_connections_per_user == 0
            || sync_limits.input.max_change_bytes == 0
            || sync_limits.input.max_ops_per_change == 0
            || sync_limits.input.max_changes == 0
            || sync_limits.mailbox.max_ephemeral == 0
        {
            bail!("sync limits must be positive (and frames at least 1024 bytes)");
        }
        let gate_defaults = GateLimits::default();
        let gate_limits = GateLimits {
            connections_per_second: pick!(
                sync_connections_per_second,
                gate_defaults.connections_per_second
            ),
            burst: pick!(sync_connection_burst, gate_defaults.burst),
            max_connections: pick!(sync_max_connections, gate_defaults.max_connections),
        };
        if gate_limits.connections_per_second == 0
            || gate_limits.burst == 0
            || gate_limits.max_connections == 0
        {
            bail!("sync connection limits must be positive");
        }
        let hub_defaults = HubLimits::default();
        let hub_limits = HubLimits {
            quota: Quota {
                documents_per_user: pick!(
                    quota_documents_per_user,
                    hub_defaults.quota.documents_per_user
                ),
                bytes_per_user: pick!(quota_bytes_per_user, hub_defaults.quota.bytes_per_user),
                bytes_per_document: pick!(
                    quota_bytes_per_document,
                    hub_defaults.quota.bytes_per_document
                ),
            },
            max_queued_changes: pick!(sync_max_queued_changes, hub_defaults.max_queued_changes),
            max_queued_bytes: pick!(sync_max_queued_bytes, hub_defaults.max_queued_bytes),
        };
        if hub_limits.quota.documents_per_user == 0
            || hub_limits.quota.bytes_per_user == 0
            || hub_limits.quota.bytes_per_document == 0
        {
            bail!("quotas must be positive");
        }
        Ok(Settings {
            allowed_origins: pick!(allowed_origins, Vec::new()),
            sync_limits,
            hub_limits,
            gate_limits,
            shutdown_timeout: SecondsSetting::SHUTDOWN_TIMEOUT
                .check(pick!(shutdown_timeout_secs, 10))?,
            document_idle: SecondsSetting::DOCUMENT_IDLE.check(pick!(document_idle_secs, 60))?,
            warnings,
            listen: pick!(
                listen,
                "127.0.0.1:8080".parse().expect("a valid literal address")
            ),
            data_dir: pick!(data_dir, PathBuf::from("./data")),
            store_cache_bytes: {
                let mib = pick!(store_cache_mib, 64);
                if !(1..=65_536).contains(&mib) {
                    bail!("store_cache_mib must be between 1 and 65536, not {mib}");
                }
                mib * 1024 * 1024
            },
            profile,
            log_format: pick!(log_format, LogFormat::Text),
            log: pick!(log, "info".to_owned()),
            workers: cli.workers.or(file.workers),
            delivery: DeliverySettings {
                email,
                phone,
                smtp,
                sms,
            },
            trusted_proxies: pick!(trusted_proxies, Vec::new()),
            otp,
            ip_limits,
            tokens,
            test_codes,
        })
    }
}

fn read_file(path: &Path) -> anyhow::Result<Overrides> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {} is not valid", path.display()))
}

/// Fixed test codes need their list, the explicit opt-in `allowed` and an
/// expiry date. A list without the opt-in is refused rather than ignored: it
/// most likely comes from a stray environment variable, and a server that
/// starts anyway would hide that from its operator.
fn parse_test_codes(
    spec: Option<&str>,
    allowed: bool,
    expire: Option<NaiveDate>,
    today: NaiveDate,
    digits: u32,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Vec<(Contact, SecretString)>> {
    let Some(spec) = spec.filter(|s| !s.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    if !allowed {
        bail!(
            "test_codes is set but allow_test_codes is not: fixed test codes need the explicit opt-in \
             --allow-test-codes (CODEEDEX_ALLOW_TEST_CODES=true); unset CODEEDEX_TEST_CODES if they are not meant"
        );
    }
    let Some(expire) = expire else {
        bail!(
            "test_codes needs test_codes_expire (YYYY-MM-DD), so that fixed codes cannot outlive their purpose"
        );
    };
    if expire < today {
        // Expired test codes are dropped rather than refused, so an old
        // staging config does not stop the server; they simply stop working.
        warnings.push(format!(
            "fixed test codes expired on {expire} and are ignored"
        ));
        return Ok(Vec::new());
    }
    let mut codes = Vec::new();
    for entry in spec.split(',') {
        let (identifier, code) = entry
            .split_once('=')
            .with_context(|| "each test code must look like identifier=code".to_owned())?;
        let identifier = identifier.trim();
        let contact = if identifier.starts_with('+') {
            codeedex_schema::contact::PhoneNumber::parse(identifier).map(Contact::Phone)
        } else {
            codeedex_schema::contact::EmailAddress::parse(identifier).map(Contact::Email)
        }
        .with_context(|| "a test code names an invalid identifier".to_owned())?;
        let code = code.trim();
        if code.len() != digits as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
            bail!("each test code must be exactly {digits} digits");
        }
        codes.push((contact, SecretString::from(code.to_owned())));
    }
    warnings.push(format!(
        "FIXED TEST CODES ARE ACTIVE for {} identifiers until the end of {expire} (UTC): \
         anyone who knows them signs in as those accounts; never allow them on a server with real users",
        codes.len()
    ));
    Ok(codes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 24).unwrap()
    }

    fn load(args: &[&str]) -> anyhow::Result<Settings> {
        let mut all = vec!["codeedex-server".to_owned()];
        all.extend(args.iter().map(|s| s.to_string()));
        Settings::from_layers(
            Overrides::try_parse_from(all)?,
            Overrides::default(),
            today(),
        )
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let s = Settings::from_layers(Overrides::default(), Overrides::default(), today()).unwrap();
        assert_eq!(s.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.data_dir, PathBuf::from("./data"));
        assert_eq!(s.otp.ttl, Duration::from_secs(600));
        assert_eq!(s.tokens.access_ttl, Duration::from_secs(900));
        assert_eq!(s.delivery.email, EmailSenderKind::Log);
        assert_eq!(s.store_cache_bytes, 64 * 1024 * 1024);
    }

    #[test]
    fn the_store_cache_is_bounded_and_given_in_mib() {
        assert_eq!(
            load(&["--store-cache-mib", "8"]).unwrap().store_cache_bytes,
            8 * 1024 * 1024
        );
        assert!(load(&["--store-cache-mib", "0"]).is_err());
        assert!(load(&["--store-cache-mib", "65537"]).is_err());
    }

    #[test]
    fn the_command_line_wins_over_the_file() {
        let file: Overrides =
            toml::from_str("otp_ttl_secs = 300\nlisten = \"0.0.0.0:9000\"").unwrap();
        let cli = Overrides::try_parse_from(["x", "--otp-ttl-secs", "120"]).unwrap();
        let s = Settings::from_layers(cli, file, today()).unwrap();
        assert_eq!(s.otp.ttl, Duration::from_secs(120));
        assert_eq!(s.listen, "0.0.0.0:9000".parse().unwrap());
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        assert!(toml::from_str::<Overrides>("otp_tll_secs = 300").is_err());
    }

    #[test]
    fn production_refuses_the_log_sender_and_test_codes() {
        let err = load(&["--profile", "production"]).unwrap_err().to_string();
        assert!(err.contains("log sender"), "{err}");
        let err = load(&[
            "--profile",
            "production",
            "--email-sender",
            "smtp",
            "--smtp-host",
            "mail.example.com",
            "--phone-sender",
            "sms",
            "--sms-account-sid",
            "AC1",
            "--sms-from",
            "+15005550006",
            "--allow-test-codes",
            "--test-codes",
            "a@example.com=123456",
            "--test-codes-expire",
            "2026-12-01",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("test codes"), "{err}");
    }

    #[test]
    fn test_codes_need_an_expiry_and_expire() {
        assert!(load(&["--allow-test-codes", "--test-codes", "a@example.com=123456"]).is_err());
        let live = load(&[
            "--allow-test-codes",
            "--test-codes",
            "a@example.com=123456",
            "--test-codes-expire",
            "2026-11-24",
        ])
        .unwrap();
        assert_eq!(live.test_codes.len(), 1);
        let dead = load(&[
            "--allow-test-codes",
            "--test-codes",
            "a@example.com=123456",
            "--test-codes-expire",
            "2026-11-23",
        ])
        .unwrap();
        assert!(dead.test_codes.is_empty());
        assert!(
            load(&[
                "--allow-test-codes",
                "--test-codes",
                "a@example.com=12345",
                "--test-codes-expire",
                "2026-12-01"
            ])
            .is_err()
        );
    }

    #[test]
    fn test_codes_without_the_opt_in_are_refused() {
        let list = [
            "--test-codes",
            "a@example.com=123456,b@example.com=654321",
            "--test-codes-expire",
            "2026-12-01",
        ];
        let err = load(&list).unwrap_err().to_string();
        assert!(err.contains("allow_test_codes"), "{err}");
        assert!(!err.contains("123456"), "the refusal prints a code: {err}");
        let off = [&["--allow-test-codes", "false"][..], &list].concat();
        assert!(load(&off).is_err());
        // The list from the config file is no different.
        let file: Overrides = toml::from_str(
            "test_codes = \"a@example.com=123456\"\ntest_codes_expire = \"2026-12-01\"",
        )
        .unwrap();
        assert!(Settings::from_layers(Overrides::default(), file, today()).is_err());
        // The opt-in alone changes nothing.
        assert!(load(&["--allow-test-codes"]).unwrap().test_codes.is_empty());
    }

    #[test]
    fn test_codes_with_the_opt_in_work_and_warn_naming_how_many() {
        for opt_in in [&["--allow-test-codes"][..], &["--allow-test-codes", "true"]] {
            let args = [
                opt_in,
                &[
                    "--test-codes",
                    "a@example.com=123456,+15005550006=654321",
                    "--test-codes-expire",
                    "2026-12-01",
                ],
            ]
            .concat();
            let s = load(&args).unwrap();
            assert_eq!(s.test_codes.len(), 2);
            assert!(
                s.warnings
                    .iter()
                    .any(|w| w.contains("TEST CODES ARE ACTIVE for 2 identifiers")),
                "{:?}",
                s.warnings
            );
        }
        let file: Overrides = toml::from_str(
            "allow_test_codes = true\ntest_codes = \"a@example.com=123456\"\ntest_codes_expire = \"2026-12-01\"",
        )
        .unwrap();
        let s = Settings::from_layers(Overrides::default(), file, today()).unwrap();
        assert_eq!(s.test_codes.len(), 1);
    }

    #[test]
    fn otp_lifetime_is_capped_at_ten_minutes() {
        assert!(load(&["--otp-ttl-secs", "601"]).is_err());
        assert!(load(&["--otp-digits", "5"]).is_err());
    }

    /// The flag of a setting, as on the command line.
    fn flag(setting: &SecondsSetting) -> String {
        format!("--{}", setting.name.replace('_', "-"))
    }

    /// Loads with one setting at `secs`. The session limits must also keep
    /// idle at most max, so the other one is put at the end of its range
    /// that lets this one reach both of its bounds.
    fn load_with(setting: &SecondsSetting, secs: u64) -> anyhow::Result<Settings> {
        let other = if setting.name == SecondsSetting::SESSION_MAX.name {
            ("--session-idle-secs", SecondsSetting::SESSION_IDLE.min)
        } else {
            ("--session-max-secs", SecondsSetting::SESSION_MAX.max)
        };
        let args = [
            other.0.to_owned(),
            other.1.to_string(),
            flag(setting),
            secs.to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        load(&args)
    }

    #[test]
    fn every_duration_setting_accepts_its_bounds_and_refuses_one_past_them() {
        for setting in SecondsSetting::ALL {
            for secs in [setting.min, setting.max] {
                if let Err(e) = load_with(&setting, secs) {
                    panic!("{} = {secs} refused: {e:#}", setting.name);
                }
            }
            let err = load_with(&setting, setting.max + 1)
                .map(|_| ())
                .expect_err(setting.name);
            let message = format!("{err:#}");
            assert!(
                message.contains(setting.name) && message.contains("at most"),
                "{message}"
            );
            if setting.min > 0 {
                assert!(
                    load_with(&setting, setting.min - 1).is_err(),
                    "{}",
                    setting.name
                );
            }
        }
    }

    #[test]
    fn the_largest_number_of_seconds_is_refused_for_every_duration_setting() {
        for setting in SecondsSetting::ALL {
            let err = load_with(&setting, u64::MAX)
                .map(|_| ())
                .expect_err(setting.name);
            assert!(format!("{err:#}").contains(setting.name), "{err:#}");
        }
    }

    #[test]
    fn the_bounds_keep_date_arithmetic_in_range() {
        // Each bounded duration converts to a chrono delta and can be added
        // to any time of this millennium and the next.
        let far = chrono::DateTime::parse_from_rfc3339("2999-12-31T23:59:59Z")
            .unwrap()
            .to_utc();
        for setting in SecondsSetting::ALL {
            let delta = chrono::TimeDelta::from_std(Duration::from_secs(setting.max)).unwrap();
            assert!(far.checked_add_signed(delta).is_some(), "{}", setting.name);
        }
    }

    #[test]
    fn help_states_every_duration_bound() {
        let command = <Overrides as clap::CommandFactory>::command();
        for setting in SecondsSetting::ALL {
            let long = setting.name.replace('_', "-");
            let help = command
                .get_arguments()
                .find(|arg| arg.get_long() == Some(long.as_str()))
                .and_then(|arg| arg.get_help())
                .unwrap_or_else(|| panic!("--{long} has no help"))
                .to_string();
            let bound = format!("at most {}", setting.max);
            let range = format!("{} to {}", setting.min, setting.max);
            assert!(
                help.contains(&bound) || help.contains(&range),
                "--help does not state the bound of {}: {help}",
                setting.name
            );
        }
    }

    #[test]
    fn session_idle_may_not_exceed_session_max() {
        let err = load(&["--session-idle-secs", "100", "--session-max-secs", "99"])
            .map(|_| ())
            .unwrap_err();
        assert!(format!("{err:#}").contains("session_idle_secs"), "{err:#}");
    }

    #[test]
    fn secrets_do_not_print() {
        let s = load(&["--sms-auth-token", "hunter2-secret"]).unwrap();
        assert!(!format!("{s:?}").contains("hunter2-secret"));
    }
}
