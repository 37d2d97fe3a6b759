//! The `ml-service` command.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = ml_server::settings::Cli::parse();
    match ml_server::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
