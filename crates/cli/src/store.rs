//! The app-data store as the commands open it: the server's store, and on
//! first use of an empty embedded SQLite file the demo dataset generated
//! into it (the first `serve` on a fresh machine has data to answer from).

use crate::args::{DemoSettings, TrainingSettings};
use anyhow::Context;
use ml_data::{AppStore, TrainingSample};
use ml_server::app::{self, Access};
use ml_server::settings::{DataSettings, ModelStoreSettings};
use ml_train::generator::{generate, GeneratorConfig};
use std::time::Instant;

/// Open the app-data store (`ml_server::app::open_store`); an embedded
/// SQLite file without users is filled with the demo dataset first.
pub fn open(data: &DataSettings, demo: &DemoSettings, access: Access) -> anyhow::Result<AppStore> {
    let store = app::open_store(data, access)?;
    if let AppStore::Sqlite(sqlite) = &store {
        if sqlite.count_profiles()? == 0 {
            let t0 = Instant::now();
            let d = generate(&GeneratorConfig {
                users: demo.demo_users,
                seed: demo.demo_seed,
                synonym_rate: demo.demo_synonym_rate,
                ..Default::default()
            });
            sqlite
                .write_dataset(&d, false)
                .context("writing the demo dataset")?;
            tracing::info!(
                users = d.profiles.len(),
                interactions = d.interactions.len(),
                matches = d.matches.len(),
                activity = d.activity.len(),
                notifications = d.notifications.len(),
                seconds = format!("{:.2}", t0.elapsed().as_secs_f64()),
                path = %data.sqlite_path.display(),
                "created the app-data store with the demo dataset"
            );
        }
    }
    Ok(store)
}

/// What training reads, as the settings bound it.
pub fn training_sample(training: &TrainingSettings) -> TrainingSample {
    TrainingSample {
        max_users: training.train_max_users.max(1),
    }
}

/// The configured store for writing, its schema migrated.
pub fn writable_store(data: &DataSettings) -> anyhow::Result<AppStore> {
    if data.database_url().is_some() {
        let store = app::open_store(data, Access::Write)?;
        if let AppStore::Postgres(pg) = &store {
            let applied = block_on(pg.migrate())
                .with_context(|| format!("migrating {}", store.describe()))?;
            if !applied.is_empty() {
                tracing::info!(versions = ?applied, data = %store.describe(), "migrations applied");
            }
        }
        return Ok(store);
    }
    // Not `open`: that would fill an empty file with the demo data.
    Ok(AppStore::Sqlite(ml_data::SqliteStore::open(
        &data.sqlite_path,
        1,
    )?))
}

/// The store to write a whole dataset into: refused when it holds data,
/// unless `replace` (the write then empties it in the same transaction).
pub fn empty_store(data: &DataSettings, replace: bool) -> anyhow::Result<AppStore> {
    let store = writable_store(data)?;
    let n = block_on(store.count_profiles())?;
    anyhow::ensure!(
        n == 0 || replace,
        "{} already holds data ({n} profiles); pass --replace to overwrite it",
        store.describe()
    );
    Ok(store)
}

/// What training and the reports read, from the configured store: at most
/// TRAIN_MAX_USERS users.
pub fn load_app_data(
    data: &DataSettings,
    demo: &DemoSettings,
    training: &TrainingSettings,
) -> anyhow::Result<ml_core::types::Dataset> {
    let store = open(data, demo, Access::Read)?;
    block_on(store.load_sample(training_sample(training)))
        .with_context(|| format!("reading {}", store.describe()))
}

/// Run a future on the command's runtime (the commands other than `serve`
/// are synchronous code around a few async store calls).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Handle::current().block_on(f)
}

/// The model repository the settings name.
pub fn repository(models: &ModelStoreSettings) -> anyhow::Result<ml_backend::ModelRepository> {
    models
        .repository()
        .context("opening the model repository (MODEL_STORAGE)")
}
