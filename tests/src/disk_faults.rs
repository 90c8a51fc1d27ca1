//! A disk that fails on command, under a real server process.
//!
//! The server runs with libfiu's POSIX wrappers preloaded (Debian's
//! `fiu-utils` and `libfiu0`, what `fiu-run -x` sets up), and the test
//! switches failure points in the running process with `fiu-ctrl`. sled
//! writes its log with `pwrite64` and makes it durable with
//! `sync_file_range` (`fsync`/`fdatasync` elsewhere), so failing those four
//! fails every write the store makes to disk, with `EIO`, while the sockets
//! (plain `write`, `send`) keep working.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::app::AppConfig;

/// Where Debian installs libfiu's preload libraries.
const PRELOAD_DIR: &str = "/usr/lib/fiu";

/// The failure points that cover every write and sync sled makes.
pub const WRITE_AND_SYNC_FAILURE_POINTS: [&str; 4] = [
    "posix/io/rw/pwrite",
    "linux/io/sync_file_range",
    "posix/io/sync/fsync",
    "posix/io/sync/fdatasync",
];

/// The failure points of making writes durable alone: with these failing,
/// writes still reach the page cache and only the flush fails.
pub const SYNC_FAILURE_POINTS: [&str; 3] = [
    "linux/io/sync_file_range",
    "posix/io/sync/fsync",
    "posix/io/sync/fdatasync",
];

/// `EIO`, what a failing disk answers.
const EIO: i32 = 5;

/// The remote control of one server's failure points.
#[derive(Debug)]
pub struct DiskFaults {
    /// Holds the control FIFOs (`<prefix>-<pid>.in`/`.out`) that libfiu
    /// creates in the server process.
    dir: tempfile::TempDir,
}

impl Default for DiskFaults {
    fn default() -> Self {
        Self::new()
    }
}

impl DiskFaults {
    /// Checks that libfiu is installed; the tests need it (`.ci/run`
    /// installs it), so its absence is a failure, not a skip.
    pub fn new() -> Self {
        for library in ["fiu_run_preload.so", "fiu_posix_preload.so"] {
            let path = Path::new(PRELOAD_DIR).join(library);
            assert!(
                path.exists(),
                "{} is missing: install libfiu (`apt-get install fiu-utils`)",
                path.display()
            );
        }
        let found = Command::new("fiu-ctrl").arg("-h").output();
        assert!(
            found.is_ok(),
            "fiu-ctrl is missing: install libfiu (`apt-get install fiu-utils`)"
        );
        Self {
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    fn prefix(&self) -> PathBuf {
        self.dir.path().join("fiu-ctrl")
    }

    /// `config` with libfiu preloaded into the server, every failure point
    /// off, and remote control through this handle.
    pub fn preload(&self, config: AppConfig) -> AppConfig {
        config
            .with_env(
                "LD_PRELOAD",
                format!("{PRELOAD_DIR}/fiu_run_preload.so {PRELOAD_DIR}/fiu_posix_preload.so"),
            )
            .with_env("FIU_CTRL_FIFO", self.prefix().display())
            .with_env("FIU_ENABLE", "")
    }

    /// From now on every write and sync to disk in process `pid` fails with
    /// `EIO`.
    pub fn fail_writes(&self, pid: u32) {
        for point in WRITE_AND_SYNC_FAILURE_POINTS {
            self.control(pid, &format!("enable name={point},failinfo={EIO}"));
        }
    }

    /// From now on every sync to disk in process `pid` fails with `EIO`,
    /// while writes still succeed: the flush fails, nothing else.
    pub fn fail_syncs(&self, pid: u32) {
        for point in SYNC_FAILURE_POINTS {
            self.control(pid, &format!("enable name={point},failinfo={EIO}"));
        }
    }

    /// The disk of process `pid` works again.
    pub fn heal(&self, pid: u32) {
        for point in WRITE_AND_SYNC_FAILURE_POINTS {
            self.control(pid, &format!("disable name={point}"));
        }
    }

    fn control(&self, pid: u32, command: &str) {
        let output = Command::new("fiu-ctrl")
            .arg("-f")
            .arg(self.prefix())
            .arg("-c")
            .arg(command)
            .arg(pid.to_string())
            .output()
            .expect("fiu-ctrl runs");
        assert!(
            output.status.success(),
            "fiu-ctrl -c '{command}' {pid} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
