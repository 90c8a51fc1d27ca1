//! Building the settings: the command line (with the environment) over the
//! file over the defaults, each value checked, and the settings as a whole
//! checked against the profile.

use std::path::PathBuf;

use anyhow::{Context, bail};
use chrono::NaiveDate;
use clap::Parser;
use codeedex_schema::admission::InputLimits;
use codeedex_schema::contact::Contact;
use secrecy::{ExposeSecret, SecretString};

use super::limits::{GateLimits, HubLimits, MailboxLimits, Quota, SyncLimits};
use super::overrides::read_file;
use super::{
    DatabaseSettings, DeliverySettings, EmailSenderKind, IpLimits, LogFormat, OtpPolicy, Overrides,
    PhoneSenderKind, Profile, SecondsSetting, Settings, SmsSettings, SmtpSettings, SmtpTls,
    TokenPolicy,
};

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
        let tls = pick!(smtp_tls, SmtpTls::Starttls);
        let extra_roots = match cli.smtp_ca_file.clone().or(file.smtp_ca_file.clone()) {
            None => None,
            Some(_) if tls == SmtpTls::None => {
                bail!("smtp_ca_file is set but smtp_tls is none: nothing would check it")
            }
            Some(path) => Some(read_certificate_authorities(&path)?),
        };
        let smtp = SmtpSettings {
            host: pick!(smtp_host, String::new()),
            port: pick!(smtp_port, 587),
            tls,
            extra_roots,
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
            handshake_timeout: SecondsSetting::SYNC_HANDSHAKE_TIMEOUT
                .check(pick!(
                    sync_handshake_timeout_secs,
                    defaults.handshake_timeout.as_secs()
                ))?
                .as_std(),
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
            ping_interval: SecondsSetting::SYNC_PING_INTERVAL
                .check(pick!(
                    sync_ping_interval_secs,
                    defaults.ping_interval.as_secs()
                ))?
                .as_std(),
            write_timeout: SecondsSetting::SYNC_WRITE_TIMEOUT
                .check(pick!(
                    sync_write_timeout_secs,
                    defaults.write_timeout.as_secs()
                ))?
                .as_std(),
            coalesce: std::time::Duration::from_millis(pick!(
                sync_coalesce_ms,
                u64::try_from(defaults.coalesce.as_millis()).unwrap_or(u64::MAX)
            )),
        };
        if sync_limits.coalesce > std::time::Duration::from_secs(1) {
            bail!("sync_coalesce_ms must be at most 1000");
        }
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
                let mib = pick!(store_cache_mib, 16);
                if !(1..=65_536).contains(&mib) {
                    bail!("store_cache_mib must be between 1 and 65536, not {mib}");
                }
                mib * 1024 * 1024
            },
            database: match cli.database_url.clone().or(file.database_url.clone()) {
                None => None,
                Some(url) => {
                    // Only the store parses the URL; here it is only told
                    // apart from a path or a typo of another engine.
                    let scheme = url.expose_secret().split_once("://").map(|(s, _)| s);
                    if !matches!(scheme, Some("postgres" | "postgresql")) {
                        bail!("database_url must start with postgres:// or postgresql://");
                    }
                    let pool_size = pick!(database_pool_size, 16);
                    if !(1..=1000).contains(&pool_size) {
                        bail!("database_pool_size must be between 1 and 1000, not {pool_size}");
                    }
                    Some(DatabaseSettings { url, pool_size })
                }
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

/// Reads a PEM file of certificate authorities for SMTP, refusing one that
/// holds no certificate lettre can use: a typo in the path or a key file
/// given by mistake stops the server at start rather than every delivery.
fn read_certificate_authorities(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read smtp_ca_file {}", path.display()))?;
    // lettre takes a file without any certificate as an empty list.
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        bail!(
            "smtp_ca_file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    lettre::transport::smtp::client::Certificate::from_pem(&pem).map_err(|e| {
        anyhow::anyhow!(
            "smtp_ca_file {} holds no usable certificate: {e}",
            path.display()
        )
    })?;
    Ok(pem)
}
