//! Settings: built-in defaults, then an optional TOML file, then environment
//! variables and command-line flags (which clap merges, flags winning).
//!
//! Every setting has one name used in three places: `--otp-ttl-secs` on the
//! command line, `CODEEDEX_OTP_TTL_SECS` in the environment and `otp_ttl_secs`
//! in the file. Secrets are held in [`SecretString`], which never prints.
//!
//! This file holds the validated settings the server runs with. How they
//! are written is `overrides` (the flags, variables and file keys), how they
//! are built and checked is `layers`, the bounds of every duration setting
//! are `seconds`, and the plain limit types the other modules enforce are
//! `limits` (which imports nothing from the crate: settings are the ground
//! floor).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::ValueEnum;
use codeedex_schema::contact::Contact;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

mod layers;
pub mod limits;
mod migrate;
mod overrides;
mod seconds;

pub use migrate::MigrateCommand;
pub use overrides::Overrides;
pub(crate) use seconds::{Period, SecondsSetting};

use limits::{GateLimits, HubLimits, SyncLimits};

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

/// Where a PostgreSQL store is and how many connections a node keeps.
#[derive(Debug, Clone)]
pub(crate) struct DatabaseSettings {
    /// The connection URL; it may hold a password, so it never prints.
    pub(crate) url: SecretString,
    /// The most connections this node keeps open.
    pub(crate) pool_size: usize,
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
    /// PostgreSQL instead of the embedded store, when set.
    pub(crate) database: Option<DatabaseSettings>,
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
    pub(crate) shutdown_timeout: Period,
    /// How long an unused document stays in memory.
    pub(crate) document_idle: Period,
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
    /// Certificate authorities (PEM) trusted besides the system's, checked
    /// to hold at least one certificate.
    pub(crate) extra_roots: Option<Vec<u8>>,
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
    pub(crate) ttl: Period,
    /// Wrong attempts that kill one code.
    pub(crate) max_attempts: u32,
    /// Minimum time between two sends to one identifier.
    pub(crate) resend_cooldown: Period,
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
    pub(crate) window: Period,
}

/// Access-token and session rules.
#[derive(Debug, Clone)]
pub(crate) struct TokenPolicy {
    /// Access token lifetime.
    pub(crate) access_ttl: Period,
    /// The `iss` claim.
    pub(crate) issuer: String,
    /// The `aud` claim.
    pub(crate) audience: String,
    /// How long the previous refresh token still returns the current pair.
    pub(crate) refresh_grace: Period,
    /// Inactivity limit of a session.
    pub(crate) session_idle: Period,
    /// Absolute limit of a session.
    pub(crate) session_max: Period,
}

#[cfg(test)]
mod tests;
