//! The `ml-service` command.

use clap::Parser;

/// mimalloc in place of the system allocator: a request allocates and frees
/// a few dozen small blocks on one thread and some on another (the model
/// call's rows and outputs), and glibc's malloc and free took about a tenth
/// of a match request's CPU under load (issue 16, session 9 profile).
/// Built without transparent huge pages (`no_thp`): with them mimalloc
/// advised 2 MiB pages for its arenas and peak RSS under load went from
/// 55 to about 180 MiB; without, about 70.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
