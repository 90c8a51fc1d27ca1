//! The `codeedex` command line, built inside the test package so that the
//! end-to-end tests find it next to their executables (as the server is),
//! and run it as a real process, exactly as `codeedex` runs.

fn main() -> std::process::ExitCode {
    codeedex_cli::main_with_args(std::env::args())
}
