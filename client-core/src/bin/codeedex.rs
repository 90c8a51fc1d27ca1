//! The `codeedex` command: a thin binary over the library.

fn main() -> std::process::ExitCode {
    codeedex_client_core::cli::main_with_args(std::env::args())
}
