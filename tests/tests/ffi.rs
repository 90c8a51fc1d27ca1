//! The C ABI (`client-ffi`) end to end: `client-ffi/tests/abi_test.c`,
//! compiled here with the system C compiler and linked against the built
//! `libcodeedex_ffi`, runs under valgrind against a real server process.
//!
//! The C program does the checking; this harness does what a C program
//! cannot do alone, when it asks (one line `REQ ...` on its standard
//! output, one line of answer on its standard input): read a sign-in code
//! from the server's mail, stop and start the server, run the `codeedex`
//! command line on the same account, and list the tasks over REST.
//!
//! Valgrind must find no error and no byte definitely lost.
//! `CDX_TEST_VALGRIND=0` runs the program without it (to debug; CI never
//! sets it).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use codeedex_schema::api::auth::TokenPair;
use codeedex_tests::app::{AppConfig, TestApp, spawn_app_with};
use codeedex_tests::command_line::cli_command;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// The access token lifetime: short, so that the program sees tokens expire.
const ACCESS_TOKEN_TTL_SECS: u64 = 3;
/// The longest the whole program may run (valgrind is slow).
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(600);
/// The longest one `codeedex` command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const EMAIL: &str = "flutter@example.com";

/// `target/<profile>`, where Cargo leaves the C libraries and the binaries.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps")
        .to_path_buf()
}

fn client_ffi_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../client-ffi")
}

/// How the C program is linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Linking {
    /// Against `libcodeedex_ffi.so`, found through the program's rpath.
    Shared,
    /// Against `libcodeedex_ffi.a` (as an iOS app links it), with the
    /// system libraries `rustc --print native-static-libs` names.
    Static,
}

/// Compiles the C program against the header and the library.
fn compile(out_dir: &Path, linking: Linking) -> PathBuf {
    // Built as this package's dependency, the C libraries stay in deps/
    // (only a build of client-ffi itself copies them one level up).
    let lib_dir = target_dir().join("deps");
    let library = lib_dir.join(match linking {
        Linking::Shared => format!(
            "{}codeedex_ffi{}",
            std::env::consts::DLL_PREFIX,
            std::env::consts::DLL_SUFFIX
        ),
        Linking::Static => "libcodeedex_ffi.a".to_owned(),
    });
    assert!(
        library.exists(),
        "{} is missing (Cargo builds it for this package's tests)",
        library.display()
    );
    let program = out_dir.join(match linking {
        Linking::Shared => "abi_test",
        Linking::Static => "abi_test_static",
    });
    let mut cc = std::process::Command::new("cc");
    cc.args([
        "-std=c11",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-pedantic",
        "-g",
        "-O1",
    ])
    .arg("-I")
    .arg(client_ffi_dir().join("include"))
    .arg(client_ffi_dir().join("tests/abi_test.c"))
    .arg("-o")
    .arg(&program);
    match linking {
        Linking::Shared => {
            cc.arg("-L")
                .arg(&lib_dir)
                .arg("-lcodeedex_ffi")
                .arg(format!("-Wl,-rpath,{}", lib_dir.display()));
        }
        Linking::Static => {
            cc.arg(&library).args([
                "-lgcc_s",
                "-lutil",
                "-lrt",
                "-lpthread",
                "-lm",
                "-ldl",
                "-lc",
            ]);
        }
    }
    let output = cc
        .arg("-pthread")
        .output()
        .expect("the system C compiler (cc) runs");
    assert!(
        output.status.success(),
        "the C program does not compile and link ({linking:?}):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    program
}

#[test]
fn the_static_library_links_into_a_c_program() {
    let work = tempfile::tempdir().expect("a temporary directory");
    let program = compile(work.path(), Linking::Static);
    let output = std::process::Command::new(&program)
        .arg("--abi-version")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("the statically linked program runs");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        codeedex_ffi::CDX_ABI_VERSION.to_string()
    );
    // Nothing of the library is loaded at run time.
    let ldd = std::process::Command::new("ldd")
        .arg(&program)
        .output()
        .expect("ldd runs");
    assert!(
        !String::from_utf8_lossy(&ldd.stdout).contains("codeedex_ffi"),
        "the static build still loads the shared library"
    );
}

/// A `codeedex` command on its own data directory, signed in as [`EMAIL`].
struct CommandLine {
    home: tempfile::TempDir,
    server: String,
}

impl CommandLine {
    fn command(&self, args: &[&str]) -> Command {
        cli_command(self.home.path(), &self.server, args)
    }

    async fn finish(child: tokio::process::Child) -> Result<Value, String> {
        let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| "the command did not finish in time".to_owned())?
            .map_err(|e| e.to_string())?;
        if !output.status.success() {
            return Err(format!(
                "the command failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        serde_json::from_slice(&output.stdout).map_err(|e| format!("not JSON: {e}"))
    }

    async fn login(&self, app: &TestApp) -> Result<Value, String> {
        let mut child = self
            .command(&["login", "--email", EMAIL, "--json"])
            .spawn()
            .map_err(|e| e.to_string())?;
        let code = app.next_email_code(EMAIL).await;
        let mut stdin = child.stdin.take().expect("piped");
        stdin
            .write_all(format!("{code}\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        drop(stdin);
        Self::finish(child).await
    }

    async fn run(&self, args: &[&str]) -> Result<Value, String> {
        let mut child = self.command(args).spawn().map_err(|e| e.to_string())?;
        drop(child.stdin.take());
        Self::finish(child).await
    }
}

/// Answers one request of the C program.
async fn answer(
    app: &mut TestApp,
    cli: &CommandLine,
    rest: &mut Option<TokenPair>,
    request: &str,
) -> Result<String, String> {
    let words: Vec<&str> = request.split('\t').collect();
    match words.as_slice() {
        ["code", email] => Ok(app.next_email_code(email).await),
        ["server-stop"] => {
            app.terminate();
            Ok("ok".into())
        }
        ["server-start"] => {
            app.start_again();
            Ok("ok".into())
        }
        ["cli-login"] => cli.login(app).await.map(|_| "ok".into()),
        ["cli", args @ ..] => cli.run(args).await.map(|v| v.to_string()),
        ["rest-list"] => {
            // One REST session, its tokens refreshed on each use (they
            // expire within seconds here).
            let tokens = match rest.take() {
                None => app.sign_in_email(EMAIL).await.tokens,
                Some(old) => {
                    let response = app.refresh(&old.refresh_token).await;
                    response
                        .json::<TokenPair>()
                        .await
                        .map_err(|e| e.to_string())?
                }
            };
            let token = tokens.access_token.clone();
            *rest = Some(tokens);
            let response = app.get_as(&token, "/v1/tasks?limit=500").await;
            let page: Value = response.json().await.map_err(|e| e.to_string())?;
            Ok(page["tasks"].to_string())
        }
        _ => Err(format!("unknown request {request:?}")),
    }
}

fn valgrind_wanted() -> bool {
    std::env::var("CDX_TEST_VALGRIND").map_or(true, |v| v != "0")
}

#[tokio::test]
async fn a_c_program_signs_in_syncs_converges_and_agrees_with_the_cli_under_valgrind() {
    let work = tempfile::tempdir().expect("a temporary directory");
    let program = compile(work.path(), Linking::Shared);
    let mut app =
        spawn_app_with(AppConfig::default().with("--access-token-ttl-secs", ACCESS_TOKEN_TTL_SECS))
            .await;
    let cli = CommandLine {
        home: tempfile::tempdir().expect("a temporary directory"),
        server: app.address.clone(),
    };
    let valgrind_log = work.path().join("valgrind.log");
    let data = work.path().join("devices");
    let program_args = [
        app.address.clone(),
        data.display().to_string(),
        EMAIL.to_owned(),
        ACCESS_TOKEN_TTL_SECS.to_string(),
    ];
    let mut command = if valgrind_wanted() {
        let mut c = Command::new("valgrind");
        c.arg("--error-exitcode=97")
            .arg("--leak-check=full")
            .arg("--show-leak-kinds=definite")
            .arg("--errors-for-leak-kinds=definite")
            .arg("--fair-sched=try")
            .arg(format!("--log-file={}", valgrind_log.display()))
            .arg(&program);
        c
    } else {
        Command::new(&program)
    };
    std::fs::create_dir_all(&data).expect("the data directory is made");
    let mut child = command
        .args(&program_args)
        // Cargo points this at target/<profile>, which may hold an older
        // copy of the library (from a build of client-ffi itself): the
        // program loads the one it was linked with (its rpath).
        .env_remove("LD_LIBRARY_PATH")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start the C program (is valgrind installed? .ci/run installs it): {e}")
        });
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut stderr = child.stderr.take().expect("piped");
    let stderr_text = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });

    let conversation = tokio::time::timeout(PROGRAM_TIMEOUT, async {
        let mut done = false;
        let mut rest = None;
        // Sign-ins that needed a code: the program's, the CLI's, REST's.
        let mut codes_wanted = 0;
        while let Some(line) = stdout
            .next_line()
            .await
            .expect("the program's output reads")
        {
            if line == "DONE" {
                done = true;
            } else if let Some(request) = line.strip_prefix("REQ ") {
                if request.starts_with("code\t")
                    || request == "cli-login"
                    || (request == "rest-list" && rest.is_none())
                {
                    codes_wanted += 1;
                }
                let reply = match answer(&mut app, &cli, &mut rest, request).await {
                    Ok(reply) => reply,
                    Err(e) => format!("ERR {e}"),
                };
                stdin
                    .write_all(format!("{reply}\n").as_bytes())
                    .await
                    .expect("the program reads its answers");
            } else {
                eprintln!("[abi_test] {line}");
            }
        }
        (done, codes_wanted)
    })
    .await;
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
    let stderr_text = stderr_text.await.unwrap_or_default();
    let valgrind_text = std::fs::read_to_string(&valgrind_log).unwrap_or_default();
    let report =
        format!("the program's standard error:\n{stderr_text}\nvalgrind's log:\n{valgrind_text}");
    let (finished, codes_wanted) =
        conversation.unwrap_or_else(|_| panic!("the program ran too long\n{report}"));
    let status = status
        .unwrap_or_else(|_| panic!("the program did not exit\n{report}"))
        .expect("the program's status");
    assert!(finished, "the program stopped before its end\n{report}");
    assert!(status.success(), "the program failed: {status}\n{report}");
    eprintln!("{stderr_text}");
    // Reopening a client, refreshing tokens, syncing: none of it sent a code.
    assert_eq!(
        app.mail.messages().len(),
        codes_wanted,
        "codes were sent that no sign-in asked for"
    );
    if valgrind_wanted() {
        // The exit code (97) would have said so too; the summary proves that
        // valgrind ran and looked.
        assert!(
            valgrind_text.contains("ERROR SUMMARY: 0 errors from 0 contexts"),
            "valgrind found errors\n{report}"
        );
        assert!(
            valgrind_text.contains("definitely lost: 0 bytes in 0 blocks")
                || valgrind_text.contains("All heap blocks were freed"),
            "valgrind found bytes definitely lost\n{report}"
        );
        let summary: Vec<&str> = valgrind_text
            .lines()
            .skip_while(|line| !line.contains("HEAP SUMMARY"))
            .collect();
        eprintln!("valgrind:\n{}", summary.join("\n"));
    }
}
