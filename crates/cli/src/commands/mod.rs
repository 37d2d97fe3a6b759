//! The offline commands, one file each: `train`, `eval`, `data …`,
//! `models …`, `features refresh`, `experiments …` and `healthcheck`.

pub mod data;
pub mod eval;
pub mod experiments;
pub mod features;
pub mod healthcheck;
pub mod models;
pub mod train;

use crate::args::{Command, FeaturesCommand};

/// Run a command other than `serve` (on the runtime `run` entered).
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(s) => crate::serve::serve(*s),
        Command::Healthcheck(h) => healthcheck::healthcheck(&h),
        Command::Train(t) => train::train(t),
        Command::Eval(e) => eval::eval(e),
        Command::Data { command } => data::data(command),
        Command::Models { command } => models::models(command),
        Command::Features {
            command: FeaturesCommand::Refresh(r),
        } => features::refresh_features(r),
        Command::Experiments { command } => experiments::experiments(command),
    }
}
