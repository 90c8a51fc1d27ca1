//! The server binary, built inside the test package so that end-to-end tests
//! can find it through `CARGO_BIN_EXE_server-under-test` and run it as a real
//! process, exactly as `codeedex-server` runs.

fn main() -> std::process::ExitCode {
    codeedex_server::startup::main_with_args(std::env::args())
}
