//! A throwaway PostgreSQL cluster for tests: started once per test process,
//! on a free loopback port in a temporary directory, with a fresh database
//! per test.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the
//! cluster's directory is handed to the `postgres` user and `initdb` and
//! `postgres` run as that user through `runuser`. Clients (`createdb`,
//! `psql`, the code under test) connect over TCP to 127.0.0.1 with trust
//! authentication, as any user may.
//!
//! The server must not outlive the test process, even when the test binary
//! is killed: `postgres` runs under a small shell watchdog whose standard
//! input is a pipe from this process. The kernel closes that pipe when this
//! process ends, however it ends; the watchdog then reads end-of-file,
//! stops `postgres` (SIGQUIT, then SIGKILL) and removes the directory.
//!
//! The harness needs nothing but the standard library and `tempfile`: it
//! drives PostgreSQL's own command-line tools, so that it carries no async
//! runtime or client library of its own into the crates that use it.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Where PostgreSQL's binaries are unless `CODEEDEX_PG_BIN` says otherwise.
const DEFAULT_BIN: &str = "/usr/lib/postgresql/15/bin";

/// How long the cluster may take to accept connections after `postgres`
/// started (`initdb` has already run by then).
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// How many free ports are tried when `postgres` cannot bind the one picked
/// (another process took it between our probe and its bind).
const PORT_ATTEMPTS: usize = 5;

/// The watchdog `postgres` runs under. `$1` is the cluster's directory, the
/// rest is the `postgres` command line. A non-interactive shell gives an
/// asynchronous list `/dev/null` as standard input, so the pipe is kept on
/// descriptor 3 for the background half. When the pipe ends (the test
/// process is gone) it stops the server and removes the directory; when the
/// server exits by itself (it could not bind its port) the shell exits with
/// it, which the harness sees.
const WATCHDOG: &str = r#"
root=$1
shift
exec 3<&0
"$@" </dev/null 3<&- >>"$root/postgres.log" 2>&1 &
pg=$!
{
    cat <&3 >/dev/null
    kill -QUIT "$pg" 2>/dev/null
    tries=0
    while kill -0 "$pg" 2>/dev/null; do
        tries=$((tries + 1))
        if [ "$tries" -gt 50 ]; then kill -KILL "$pg" 2>/dev/null; fi
        sleep 0.1
    done
    rm -rf "$root"
} &
wait "$pg"
"#;

/// A PostgreSQL cluster owned by this test process.
#[derive(Debug)]
pub struct Cluster {
    bin: PathBuf,
    port: u16,
    /// The cluster's directory (data, socket, log); the watchdog removes it.
    root: PathBuf,
    /// Numbers the databases handed out, for unique names.
    databases: AtomicU64,
    /// The watchdog process, and the pipe whose end stops it. Neither is
    /// ever dropped: the cluster lives in a static until the process ends,
    /// and the kernel closes the pipe then.
    _watchdog: Mutex<(Child, ChildStdin)>,
}

/// A fresh database in the shared cluster.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    name: String,
    port: u16,
}

impl TestDatabase {
    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A connection URL for the superuser, over TCP on the loopback.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, self.name)
    }
}

/// Who runs the server's processes: ourselves, or (when we are root) the
/// `postgres` user through `runuser`.
#[derive(Debug, Clone, Copy)]
enum RunAs {
    Myself,
    Postgres { uid: u32, gid: u32 },
}

impl RunAs {
    fn detect() -> Self {
        if id(&["-u"]) != 0 {
            return RunAs::Myself;
        }
        RunAs::Postgres {
            uid: id(&["-u", "postgres"]),
            gid: id(&["-g", "postgres"]),
        }
    }

    /// A command running `program` as the chosen user in `dir` (the
    /// cluster's own directory: the `postgres` user may not be allowed into
    /// the test's working directory).
    fn command(self, program: &Path, dir: &Path) -> Command {
        let mut command = match self {
            RunAs::Myself => Command::new(program),
            RunAs::Postgres { .. } => {
                let mut command = Command::new("runuser");
                command.args(["-u", "postgres", "--"]).arg(program);
                command
            }
        };
        command.current_dir(dir);
        command
    }
}

/// A number printed by `id ARGS`.
fn id(args: &[&str]) -> u32 {
    let output = Command::new("id")
        .args(args)
        .output()
        .expect("the `id` command runs");
    assert!(
        output.status.success(),
        "`id {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("`id` prints a number")
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("binding a free loopback port")
        .port()
}

/// Runs `command`, panicking with its output if it fails; returns stdout.
fn run(mut command: Command, what: &str) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

impl Cluster {
    /// The cluster of this test process, started on first use.
    pub fn shared() -> &'static Cluster {
        static CLUSTER: OnceLock<Cluster> = OnceLock::new();
        CLUSTER.get_or_init(Cluster::start)
    }

    fn start() -> Cluster {
        let bin = std::env::var_os("CODEEDEX_PG_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BIN));
        let run_as = RunAs::detect();
        // The watchdog removes the directory when the process ends, so it
        // is not removed on drop here (the cluster is never dropped anyway).
        let root = tempfile::Builder::new()
            .prefix("codeedex-pg-")
            .tempdir()
            .expect("a temporary directory")
            .keep();
        let data = root.join("data");
        let sockets = root.join("sockets");
        std::fs::create_dir(&sockets).expect("the socket directory");
        if let RunAs::Postgres { uid, gid } = run_as {
            for path in [&root, &sockets] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .expect("handing the cluster's directory to postgres");
            }
        }
        let mut initdb = run_as.command(&bin.join("initdb"), &root);
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "--auth=trust",
                "-U",
                "postgres",
                "--no-sync",
                "--no-instructions",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .stdin(Stdio::null());
        run(initdb, "initdb");

        let mut last_log = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            match Self::launch(&bin, run_as, &root, &data, &sockets, port) {
                Ok(watchdog) => {
                    return Cluster {
                        bin,
                        port,
                        root,
                        databases: AtomicU64::new(0),
                        _watchdog: Mutex::new(watchdog),
                    };
                }
                Err(log) => last_log = log,
            }
        }
        panic!("PostgreSQL did not start in {PORT_ATTEMPTS} attempts; its log:\n{last_log}");
    }

    /// Starts `postgres` on `port` under the watchdog and waits until it
    /// accepts connections. Fails with the server's log when it exits
    /// first (it could not bind the port, say).
    fn launch(
        bin: &Path,
        run_as: RunAs,
        root: &Path,
        data: &Path,
        sockets: &Path,
        port: u16,
    ) -> Result<(Child, ChildStdin), String> {
        let mut watchdog = run_as.command(Path::new("sh"), root);
        watchdog
            .args(["-c", WATCHDOG, "sh"])
            .arg(root)
            .arg(bin.join("postgres"))
            .arg("-D")
            .arg(data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(sockets)
            // A throwaway cluster that never outlives a crash of its host
            // needs no fsync: skipping it keeps the tests' commits cheap.
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "max_connections=300"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = watchdog
            .spawn()
            .unwrap_or_else(|e| panic!("starting the PostgreSQL watchdog: {e}"));
        let stdin = child.stdin.take().expect("stdin was piped");
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("polling the watchdog") {
                let log = std::fs::read_to_string(root.join("postgres.log")).unwrap_or_default();
                return Err(format!("postgres exited ({status}):\n{log}"));
            }
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-p"])
                .arg(port.to_string())
                .stdin(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            if ready {
                return Ok((child, stdin));
            }
            if Instant::now() > deadline {
                let mut log = String::new();
                let _ = std::fs::File::open(root.join("postgres.log"))
                    .and_then(|mut f| f.read_to_string(&mut log));
                panic!("PostgreSQL did not accept connections within {READY_DEADLINE:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port the cluster listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's directory (its data is in `data`, its log in
    /// `postgres.log`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A fresh, empty database with a name no other test of this process
    /// gets.
    pub fn database(&self) -> TestDatabase {
        let n = self.databases.fetch_add(1, Ordering::SeqCst);
        let name = format!("test_{n}");
        let mut createdb = Command::new(self.bin.join("createdb"));
        createdb
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(self.port.to_string())
            .arg(&name)
            .stdin(Stdio::null());
        run(createdb, "createdb");
        TestDatabase {
            name,
            port: self.port,
        }
    }

    /// Runs `sql` as the superuser in database `database` and returns what
    /// it printed (unaligned, tuples only: one row a line, columns joined
    /// by `|`), or psql's error output.
    pub fn try_psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let output = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(self.port.to_string())
            .args(["-d", database, "-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot start psql: {e}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// [`Cluster::try_psql`], panicking when the statement fails.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        self.try_psql(database, sql)
            .unwrap_or_else(|e| panic!("psql in {database} failed on {sql:?}: {e}"))
    }
}
