//! The `ml-service` binary's library: the command line ([`args`]), the
//! offline commands ([`commands`]), and `serve` ([`serve`]), which fills an
//! empty embedded store, trains what the repository lacks ([`training`]),
//! then hands over to the server library (`ml-server`).
//!
//! This is the only crate that links serving and training: `ml-server`
//! never depends on `ml-train`, so a change to a trainer rebuilds this
//! crate and the training crate, never the server.

pub mod args;
pub mod commands;
pub mod logs;
pub mod serve;
pub mod store;
pub mod training;

use args::{Cli, Command};

/// Run one command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(s) => return serve::serve(*s),
        Command::Healthcheck(h) => return commands::healthcheck::healthcheck(&h),
        _ => {}
    }
    // The other commands are synchronous, around a few async store calls
    // that run on this runtime (`block_on`).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let _entered = rt.enter();
    commands::run(cli.command)
}
