//! App-data sources: the [`DataSource`] trait the service and the trainers read
//! through, and its embedded implementation on SQLite (`./data/ml-service.db`),
//! created and filled with the demo dataset on first start.

pub mod sqlite;

pub use sqlite::SqliteStore;

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
    /// Everything, for training.
    async fn dataset(&self) -> Result<Dataset, DataError>;
    /// Whether the store answers.
    async fn ping(&self) -> Result<(), DataError>;
    /// Where the data lives, for logs (never with credentials).
    fn describe(&self) -> String;
}
