//! The `ml-service` command.

use clap::Parser;

/// jemalloc rather than glibc's allocator: a request allocates and frees
/// many small buffers across threads (hyper's, the JSON, features, a model
/// call's tensors on an inference thread, freed on a runtime thread), and
/// glibc's `malloc`/`free` (consolidating its fast bins whenever a larger
/// block is asked for) took ~18 % of a match's samples. Service CPU per
/// request fell 15–20 % for match and notify (`bench/ab.sh`;
/// docs/performance-history.md, "Session 13"); peak RSS under load
/// 61 → ~80 MiB. Only this binary and the bench's bare server (to compare
/// like with like) use it; the library's tests keep the system allocator.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let cli = ml_cli::args::Cli::parse();
    match ml_cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
