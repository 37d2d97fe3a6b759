//! App-data sources: the [`DataSource`] trait the service and the trainers read
//! through; its embedded implementation on SQLite (`./data/ml-service.db`),
//! created and filled with the demo dataset on first start; its production
//! implementation on Postgres (a Supabase project's database); the bounded
//! sample training reads (`sample`); and validated import of CSV and JSON
//! Lines files (`import`).

pub mod import;
pub mod outcomes;
pub mod postgres;
pub mod predlog;
pub mod sample;
pub mod sqlite;
#[cfg(feature = "test-util")]
pub mod testing;

pub use outcomes::{ArmQuery, ArmSums, ExperimentStore, JoinWindows, Joined, Outcome};
pub use postgres::{PgOptions, PgStore};
pub use predlog::{PgPredictions, PredictionRecord, PredictionStore, SqlitePredictions};
pub use sample::TrainingSample;
pub use sqlite::SqliteStore;
use std::sync::Arc;

use ml_core::types::{Dataset, Destination, UserHistory};
use uuid::Uuid;

/// What can go wrong reading or writing app data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The store could not be reached or answered with an error.
    #[error("data store unavailable: {0}")]
    Unavailable(String),
    /// Stored data that does not parse (the table, the row and why).
    #[error("corrupt row in {table}: {reason}")]
    Corrupt { table: &'static str, reason: String },
    /// A migration failed.
    #[error("migration {version} failed: {reason}")]
    Migration { version: u32, reason: String },
}

impl From<rusqlite::Error> for DataError {
    fn from(e: rusqlite::Error) -> Self {
        DataError::Unavailable(e.to_string())
    }
}

/// Read access to the app's data. Implementations are cheap to share.
#[async_trait::async_trait]
pub trait DataSource: Send + Sync {
    /// A user's profile and history; `None` for an unknown user.
    async fn user_history(&self, id: Uuid) -> Result<Option<UserHistory>, DataError>;
    /// The destination catalogue.
    async fn destinations(&self) -> Result<Vec<Destination>, DataError>;
    /// What training reads: everything, or a bounded sample of users.
    async fn dataset(&self, sample: TrainingSample) -> Result<Dataset, DataError>;
    /// Whether the store answers.
    async fn ping(&self) -> Result<(), DataError>;
    /// Where the data lives, for logs (never with credentials).
    fn describe(&self) -> String;
}

/// The store the tools and start-up write and read in bulk: the embedded
/// SQLite file or Postgres. (Its SQLite calls block the calling thread; the
/// request path reads through [`DataSource`] instead.)
#[derive(Debug, Clone)]
pub enum AppStore {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl AppStore {
    /// Number of user profiles stored.
    pub async fn count_profiles(&self) -> Result<u64, DataError> {
        match self {
            AppStore::Sqlite(s) => s.count_profiles(),
            AppStore::Postgres(p) => p.count_profiles().await,
        }
    }

    /// Up to `limit` user ids, in id order.
    pub async fn user_ids(&self, limit: usize) -> Result<Vec<String>, DataError> {
        match self {
            AppStore::Sqlite(s) => s.user_ids(limit),
            AppStore::Postgres(p) => p.user_ids(limit).await,
        }
    }

    /// Ids of every profile and of every destination.
    pub async fn ids(&self) -> Result<(Vec<Uuid>, Vec<Uuid>), DataError> {
        match self {
            AppStore::Sqlite(s) => s.ids(),
            AppStore::Postgres(p) => p.ids().await,
        }
    }

    /// Write a dataset in one transaction; `replace` empties the store first.
    pub async fn write_dataset(&self, d: &Dataset, replace: bool) -> Result<(), DataError> {
        match self {
            AppStore::Sqlite(s) => s.write_dataset(d, replace),
            AppStore::Postgres(p) => p.write_dataset(d, replace).await,
        }
    }

    /// What training reads (see [`sample`]).
    pub async fn load_sample(&self, sample: TrainingSample) -> Result<Dataset, DataError> {
        match self {
            AppStore::Sqlite(s) => s.load_sample(sample),
            AppStore::Postgres(p) => p.load_sample(sample).await,
        }
    }

    /// The destination catalogue.
    pub async fn destinations(&self) -> Result<Vec<Destination>, DataError> {
        match self {
            AppStore::Sqlite(s) => s.load_destinations(),
            AppStore::Postgres(p) => p.destinations().await,
        }
    }

    /// Where the data lives, for messages (never with credentials).
    pub fn describe(&self) -> String {
        match self {
            AppStore::Sqlite(s) => s.describe(),
            AppStore::Postgres(p) => p.describe(),
        }
    }

    /// The store as the request path's data source.
    pub fn source(&self) -> Arc<dyn DataSource> {
        match self {
            AppStore::Sqlite(s) => Arc::new(s.clone()),
            AppStore::Postgres(p) => Arc::new(p.clone()),
        }
    }
}
