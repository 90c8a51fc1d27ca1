//! The settings' layers, bounds and refusals.

use std::time::Duration;

use chrono::NaiveDate;
use clap::Parser;

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
    assert_eq!(s.otp.ttl.as_std(), Duration::from_secs(600));
    assert_eq!(s.tokens.access_ttl.as_std(), Duration::from_secs(900));
    assert_eq!(s.delivery.email, EmailSenderKind::Log);
    assert_eq!(s.store_cache_bytes, 16 * 1024 * 1024);
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
fn a_database_url_selects_postgres_and_never_prints() {
    assert!(load(&[]).unwrap().database.is_none());
    let s = load(&["--database-url", "postgres://app:hunter2@db:5432/codeedex"]).unwrap();
    let database = s.database.as_ref().expect("PostgreSQL selected");
    assert_eq!(database.pool_size, 16);
    assert!(!format!("{s:?}").contains("hunter2"));
    let sized = load(&[
        "--database-url",
        "postgresql://db/codeedex",
        "--database-pool-size",
        "4",
    ])
    .unwrap();
    assert_eq!(sized.database.unwrap().pool_size, 4);
    assert!(load(&["--database-url", "./data"]).is_err());
    assert!(load(&["--database-url", "mysql://db/x"]).is_err());
    assert!(
        load(&[
            "--database-url",
            "postgres://db/x",
            "--database-pool-size",
            "0"
        ])
        .is_err()
    );
}

#[test]
fn the_command_line_wins_over_the_file() {
    let file: Overrides = toml::from_str("otp_ttl_secs = 300\nlisten = \"0.0.0.0:9000\"").unwrap();
    let cli = Overrides::try_parse_from(["x", "--otp-ttl-secs", "120"]).unwrap();
    let s = Settings::from_layers(cli, file, today()).unwrap();
    assert_eq!(s.otp.ttl.as_std(), Duration::from_secs(120));
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
    let file: Overrides =
        toml::from_str("test_codes = \"a@example.com=123456\"\ntest_codes_expire = \"2026-12-01\"")
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

#[test]
fn an_smtp_ca_file_must_hold_a_certificate_and_needs_tls() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("key.txt");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    let smtp = ["--email-sender", "smtp", "--smtp-host", "mail.example.com"];
    let with = |file: &std::path::Path, tls: &str| {
        let mut args = smtp.to_vec();
        let file = file.display().to_string();
        args.extend(["--smtp-tls", tls, "--smtp-ca-file"]);
        args.push(&file);
        load(&args).map(|s| s.delivery.smtp.extra_roots.is_some())
    };
    let err = with(&not_pem, "starttls").unwrap_err().to_string();
    assert!(err.contains("smtp_ca_file"), "{err}");
    let missing = dir.path().join("missing.pem");
    let err = format!("{:#}", with(&missing, "tls").unwrap_err());
    assert!(err.contains("cannot read smtp_ca_file"), "{err}");
    let err = with(&not_pem, "none").unwrap_err().to_string();
    assert!(err.contains("smtp_tls is none"), "{err}");
}
