//! The grammar of `codeedex-server migrate`: where the embedded store is
//! and which PostgreSQL database to copy it into.

use std::path::PathBuf;

use anyhow::bail;
use clap::Parser;
use secrecy::{ExposeSecret, SecretString};

/// `codeedex-server migrate --from-data-dir DIR --to-database-url URL`.
#[derive(Debug, Parser)]
#[command(
    name = "codeedex-server migrate",
    version,
    about = "Copies the embedded store of a data directory (users, sessions, documents, \
             sync states, keys) into an empty PostgreSQL database, then checks the copy. \
             Stop the server first.",
    long_about = None
)]
pub struct MigrateCommand {
    /// The data directory of the server whose store is copied.
    #[arg(long, value_name = "DIR")]
    pub(crate) from_data_dir: PathBuf,
    /// The PostgreSQL database to copy into (postgres://user:password@host:port/database);
    /// it must be empty.
    #[arg(
        long,
        value_name = "URL",
        env = "CODEEDEX_DATABASE_URL",
        hide_env_values = true
    )]
    pub(crate) to_database_url: SecretString,
}

impl MigrateCommand {
    /// Parses the arguments after `migrate` (the first is the program's
    /// name) and the environment.
    pub(crate) fn parse_from_args(args: impl IntoIterator<Item = String>) -> anyhow::Result<Self> {
        let command = Self::try_parse_from(args)?;
        // As for `--database-url`: only the store parses the URL.
        let scheme = command
            .to_database_url
            .expose_secret()
            .split_once("://")
            .map(|(s, _)| s);
        if !matches!(scheme, Some("postgres" | "postgresql")) {
            bail!("--to-database-url must start with postgres:// or postgresql://");
        }
        Ok(command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<MigrateCommand> {
        MigrateCommand::parse_from_args(
            std::iter::once("codeedex-server")
                .chain(args.iter().copied())
                .map(str::to_owned),
        )
    }

    #[test]
    fn the_command_takes_a_directory_and_a_postgres_url_that_never_prints() {
        let command = parse(&[
            "--from-data-dir",
            "/srv/codeedex",
            "--to-database-url",
            "postgres://app:hunter2@db/codeedex",
        ])
        .unwrap();
        assert_eq!(command.from_data_dir, PathBuf::from("/srv/codeedex"));
        assert_eq!(
            command.to_database_url.expose_secret(),
            "postgres://app:hunter2@db/codeedex"
        );
        assert!(!format!("{command:?}").contains("hunter2"));
    }

    #[test]
    fn another_engine_or_a_missing_directory_is_refused() {
        let error = parse(&[
            "--from-data-dir",
            "/srv/codeedex",
            "--to-database-url",
            "mysql://db/codeedex",
        ])
        .unwrap_err();
        assert!(error.to_string().contains("postgres://"), "{error}");
        assert!(parse(&["--to-database-url", "postgres://db/codeedex"]).is_err());
    }
}
