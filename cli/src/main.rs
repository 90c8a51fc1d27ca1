//! The `codeedex` command: a thin binary over the command-line library.

fn main() -> std::process::ExitCode {
    codeedex_cli::main_with_args(std::env::args())
}
