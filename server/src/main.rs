//! `codeedex-server`: see `codeedex-server --help`.

fn main() -> std::process::ExitCode {
    codeedex_server::startup::main_with_args(std::env::args())
}
