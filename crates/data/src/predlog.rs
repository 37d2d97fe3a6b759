//! The prediction log's store: one row per answer the service gave, in the
//! service's own tables, apart from the app's. On the embedded defaults they
//! live in the SQLite file beside the app data (table `ml_predictions`); with
//! Postgres, in a schema of the service's own (`ml_service.predictions`,
//! migration 4), written as the `ml_service_writer` role while the app data
//! stays read-only. Writes come in batches (one transaction, one statement)
//! and are idempotent by prediction id, so a batch retried after a timeout
//! that had in fact committed writes nothing twice. The table's only index is
//! its key, the time-ordered id: rows append, and time ranges (retention) are
//! key ranges.
//!
//! Nothing here decides what is logged or when: the server's log writer
//! (bounded queue, sampling, dropping) calls [`PredictionStore::write`].

use crate::postgres::PgStore;
use crate::DataError;
use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{Connection, OptionalExtension};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use uuid::Uuid;

/// One answer, as the log keeps it. The request itself is never stored: only
/// its digest (the same one the prediction cache keys on).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PredictionRecord {
    /// Time-ordered (UUID v7): also the `x-prediction-id` the caller got.
    pub id: Uuid,
    pub at: DateTime<Utc>,
    /// `match`, `recommend` or `notify`. (Borrowed names and a shared route
    /// keep a row from allocating what every row repeats.)
    pub endpoint: Cow<'static, str>,
    pub model: Cow<'static, str>,
    pub version: u64,
    /// The A/B split that chose the version, as `version=weight` pairs
    /// (`3=90,4=10`; a lone version when there is no split).
    pub route: Arc<str>,
    pub user_id: Uuid,
    /// The second user of a match.
    pub other_user_id: Option<Uuid>,
    /// Hex SHA-256 prefix of the request as the service parsed it.
    pub request_digest: String,
    /// The answer's headline number: a match's score, a recommendation's
    /// first score, a notification's confidence.
    pub score: Option<f32>,
    /// What was decided, as JSON (see the README's "Prediction log").
    pub decision: String,
    /// The prediction cache answered.
    pub cached: bool,
    /// The model could not answer and a fallback did.
    pub fallback: bool,
    /// How long the answer took, in microseconds (the experiments' latency
    /// guardrail).
    pub latency_us: Option<u32>,
}

/// The smallest UUID v7 of the millisecond `t`: every prediction id made at
/// or after `t` sorts at or above it, every one made before sorts below.
pub fn first_id_at(t: DateTime<Utc>) -> Uuid {
    uuid::Builder::from_unix_timestamp_millis(t.timestamp_millis().max(0) as u64, &[0; 10])
        .into_uuid()
}

/// Where prediction rows are written.
#[async_trait::async_trait]
pub trait PredictionStore: Send + Sync {
    /// Write a batch in one transaction; rows whose id is already stored
    /// are skipped. Returns how many rows were new.
    async fn write(&self, rows: Vec<PredictionRecord>) -> Result<u64, DataError>;
    /// Delete rows logged before `before` (the retention period); returns how many.
    async fn purge(&self, before: DateTime<Utc>) -> Result<u64, DataError>;
    /// One row by its id.
    async fn get(&self, id: Uuid) -> Result<Option<PredictionRecord>, DataError>;
    /// Rows stored.
    async fn count(&self) -> Result<u64, DataError>;
    /// Where the rows go, for logs (never with credentials).
    fn describe(&self) -> String;
}

/// The log in the embedded SQLite file: one connection of its own, owned by
/// a thread of its own (`ml-log-sqlite`) that runs the store's statements
/// one after another as they arrive on a bounded channel. Writes to a SQLite
/// file are serialised anyway; the named thread keeps the log's work off
/// the runtime's blocking pool and lets a profile or `bench/cpu.sh` tell
/// the writer's CPU from the request path's.
#[derive(Clone)]
pub struct SqlitePredictions {
    path: PathBuf,
    jobs: tokio::sync::mpsc::Sender<Job>,
}

/// A statement (or several) for the store's thread to run.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Statements waiting for the store's thread; a caller past this waits.
const SQLITE_JOBS: usize = 64;

impl SqlitePredictions {
    /// Open the file (applying pending migrations, which create the table)
    /// and start the thread that owns the connection; it ends when the last
    /// clone of the store is dropped.
    pub fn open(path: &Path) -> Result<Self, DataError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| DataError::Unavailable(format!("{}: {e}", dir.display())))?;
        }
        let mut c = crate::sqlite::open(path)?;
        crate::sqlite::migrate(&c)?;
        // The experiment reports' log-loss needs a logarithm, which SQLite
        // builds without unless compiled with its math functions.
        c.create_scalar_function(
            "ml_ln",
            1,
            rusqlite::functions::FunctionFlags::SQLITE_UTF8
                | rusqlite::functions::FunctionFlags::SQLITE_DETERMINISTIC,
            |ctx| Ok(ctx.get::<f64>(0)?.ln()),
        )?;
        let (jobs, mut rx) = tokio::sync::mpsc::channel::<Job>(SQLITE_JOBS);
        std::thread::Builder::new()
            .name("ml-log-sqlite".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    // A panicking statement fails its own call (its answer
                    // channel is dropped), not the thread: every statement
                    // here is its own transaction, so the connection stays
                    // usable.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut c)));
                }
            })
            .map_err(|e| DataError::Unavailable(format!("starting the log's thread: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            jobs,
        })
    }

    pub(crate) async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, DataError> + Send + 'static,
    ) -> Result<T, DataError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |c| {
            let _ = tx.send(f(c));
        });
        self.jobs.send(job).await.map_err(|_| {
            DataError::Unavailable("the prediction log's SQLite thread stopped".into())
        })?;
        rx.await.map_err(|_| {
            DataError::Unavailable("a statement on the prediction log panicked".into())
        })?
    }
}

/// A user id as the app's tables write it (lower-case, hyphenated).
fn hyphenated(id: Uuid) -> [u8; 36] {
    let mut b = [0; 36];
    id.hyphenated().encode_lower(&mut b);
    b
}

const SQLITE_COLUMNS: &str = "id, at_ms, endpoint, model, version, route, user_id, other_user_id, request_digest, score, decision, cached, fallback, latency_us";

/// Rows per insert statement: one statement's overhead over many rows
/// (14 parameters each, far under SQLite's limit).
const SQLITE_ROWS_PER_STATEMENT: usize = 64;

fn sqlite_row(r: &rusqlite::Row) -> Result<PredictionRecord, rusqlite::Error> {
    let uuid = |i: usize| -> Result<Uuid, rusqlite::Error> {
        let s: String = r.get(i)?;
        Uuid::parse_str(&s).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
        })
    };
    let key: Vec<u8> = r.get(0)?;
    let id = Uuid::from_slice(&key).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, Box::new(e))
    })?;
    let other: Option<String> = r.get(7)?;
    Ok(PredictionRecord {
        id,
        at: Utc
            .timestamp_millis_opt(r.get(1)?)
            .single()
            .unwrap_or_default(),
        endpoint: Cow::Owned(r.get(2)?),
        model: Cow::Owned(r.get(3)?),
        version: r.get::<_, i64>(4)?.max(0) as u64,
        route: r.get::<_, String>(5)?.into(),
        user_id: uuid(6)?,
        other_user_id: other.and_then(|s| Uuid::parse_str(&s).ok()),
        request_digest: r.get(8)?,
        score: r.get::<_, Option<f64>>(9)?.map(|s| s as f32),
        decision: r.get(10)?,
        cached: r.get(11)?,
        fallback: r.get(12)?,
        latency_us: r
            .get::<_, Option<i64>>(13)?
            .map(|l| l.clamp(0, i64::from(u32::MAX)) as u32),
    })
}

#[async_trait::async_trait]
impl PredictionStore for SqlitePredictions {
    async fn write(&self, rows: Vec<PredictionRecord>) -> Result<u64, DataError> {
        self.with(move |c| {
            let tx = c.transaction()?;
            let mut new = 0;
            for chunk in rows.chunks(SQLITE_ROWS_PER_STATEMENT) {
                let values =
                    vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
                let mut s = tx.prepare_cached(&format!(
                    "INSERT INTO ml_predictions ({SQLITE_COLUMNS}) VALUES {values}
                     ON CONFLICT (id) DO NOTHING"
                ))?;
                // Values the parameters borrow; the users' ids as text, the
                // way the app's tables hold them, formatted without
                // allocating.
                let owned: Vec<_> = chunk
                    .iter()
                    .map(|r| {
                        (
                            hyphenated(r.user_id),
                            r.other_user_id.map(hyphenated),
                            r.at.timestamp_millis(),
                            r.version as i64,
                            r.score.map(f64::from),
                            r.latency_us.map(i64::from),
                        )
                    })
                    .collect();
                let mut p: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(chunk.len() * 14);
                fn text(b: &[u8; 36]) -> &str {
                    std::str::from_utf8(b).unwrap_or_default()
                }
                let users: Vec<_> = owned
                    .iter()
                    .map(|(u, o, ..)| (text(u), o.as_ref().map(text)))
                    .collect();
                for ((r, (_, _, at, version, score, latency)), (user, other)) in
                    chunk.iter().zip(&owned).zip(&users)
                {
                    p.extend_from_slice(&[
                        r.id.as_bytes() as &dyn rusqlite::ToSql,
                        at,
                        &r.endpoint,
                        &r.model,
                        version,
                        &r.route,
                        user,
                        other,
                        &r.request_digest,
                        score,
                        &r.decision,
                        &r.cached,
                        &r.fallback,
                        latency,
                    ]);
                }
                new += s.execute(&p[..])? as u64;
            }
            tx.commit()?;
            Ok(new)
        })
        .await
    }

    async fn purge(&self, before: DateTime<Utc>) -> Result<u64, DataError> {
        let bound = first_id_at(before);
        self.with(move |c| {
            Ok(c.execute(
                "DELETE FROM ml_predictions WHERE id < ?1",
                [&bound.as_bytes()[..]],
            )? as u64)
        })
        .await
    }

    async fn get(&self, id: Uuid) -> Result<Option<PredictionRecord>, DataError> {
        self.with(move |c| {
            Ok(c.query_row(
                &format!("SELECT {SQLITE_COLUMNS} FROM ml_predictions WHERE id = ?1"),
                [&id.as_bytes()[..]],
                sqlite_row,
            )
            .optional()?)
        })
        .await
    }

    async fn count(&self) -> Result<u64, DataError> {
        self.with(|c| {
            Ok(c.query_row("SELECT count(*) FROM ml_predictions", [], |r| {
                r.get::<_, i64>(0)
            })? as u64)
        })
        .await
    }

    fn describe(&self) -> String {
        format!("sqlite {} (ml_predictions)", self.path.display())
    }
}

/// The log in Postgres (`ml_service.predictions`), through a pool of
/// read-write sessions of its own.
#[derive(Clone, Debug)]
pub struct PgPredictions {
    store: PgStore,
}

impl PgPredictions {
    /// Write through `store` (read-write sessions; connect as a role granted
    /// `ml_service_writer`).
    pub fn new(store: PgStore) -> Self {
        Self { store }
    }

    pub(crate) fn store(&self) -> &PgStore {
        &self.store
    }
}

const PG_COLUMNS: &str = "id, at, endpoint, model, version, route, user_id, other_user_id, request_digest, score, decision::text, cached, fallback, latency_us";

fn pg_row(r: &tokio_postgres::Row) -> Result<PredictionRecord, DataError> {
    let bad = |e: tokio_postgres::Error| DataError::Corrupt {
        table: "ml_service.predictions",
        reason: e.to_string(),
    };
    Ok(PredictionRecord {
        id: r.try_get(0).map_err(bad)?,
        at: r.try_get(1).map_err(bad)?,
        endpoint: Cow::Owned(r.try_get(2).map_err(bad)?),
        model: Cow::Owned(r.try_get(3).map_err(bad)?),
        version: r.try_get::<_, i64>(4).map_err(bad)?.max(0) as u64,
        route: r.try_get::<_, String>(5).map_err(bad)?.into(),
        user_id: r.try_get(6).map_err(bad)?,
        other_user_id: r.try_get(7).map_err(bad)?,
        request_digest: r.try_get(8).map_err(bad)?,
        score: r.try_get(9).map_err(bad)?,
        decision: r.try_get(10).map_err(bad)?,
        cached: r.try_get(11).map_err(bad)?,
        fallback: r.try_get(12).map_err(bad)?,
        latency_us: r
            .try_get::<_, Option<i32>>(13)
            .map_err(bad)?
            .map(|l| l.max(0) as u32),
    })
}

#[async_trait::async_trait]
impl PredictionStore for PgPredictions {
    async fn write(&self, rows: Vec<PredictionRecord>) -> Result<u64, DataError> {
        // One statement per batch: each column as an array, unnested
        // server-side (a multi-row insert with thirteen parameters, whatever
        // the batch's size).
        self.store
            .call(move |c| {
                Box::pin(async move {
                    let id: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
                    let at: Vec<DateTime<Utc>> = rows.iter().map(|r| r.at).collect();
                    let endpoint: Vec<&str> = rows.iter().map(|r| r.endpoint.as_ref()).collect();
                    let model: Vec<&str> = rows.iter().map(|r| r.model.as_ref()).collect();
                    let version: Vec<i64> = rows.iter().map(|r| r.version as i64).collect();
                    let route: Vec<&str> = rows.iter().map(|r| r.route.as_ref()).collect();
                    let user: Vec<Uuid> = rows.iter().map(|r| r.user_id).collect();
                    let other: Vec<Option<Uuid>> = rows.iter().map(|r| r.other_user_id).collect();
                    let digest: Vec<&str> =
                        rows.iter().map(|r| r.request_digest.as_str()).collect();
                    let score: Vec<Option<f32>> = rows.iter().map(|r| r.score).collect();
                    let decision: Vec<&str> = rows.iter().map(|r| r.decision.as_str()).collect();
                    let cached: Vec<bool> = rows.iter().map(|r| r.cached).collect();
                    let fallback: Vec<bool> = rows.iter().map(|r| r.fallback).collect();
                    let latency: Vec<Option<i32>> = rows
                        .iter()
                        .map(|r| r.latency_us.map(|l| l.min(i32::MAX as u32) as i32))
                        .collect();
                    let n = c
                        .execute(
                            "INSERT INTO ml_service.predictions
                               (id, at, endpoint, model, version, route, user_id, other_user_id,
                                request_digest, score, decision, cached, fallback, latency_us)
                             SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[],
                               $5::int8[], $6::text[], $7::uuid[], $8::uuid[], $9::text[], $10::float4[],
                               $11::text[]::jsonb[], $12::bool[], $13::bool[], $14::int4[])
                             ON CONFLICT (id) DO NOTHING",
                            &[
                                &id, &at, &endpoint, &model, &version, &route, &user, &other,
                                &digest, &score, &decision, &cached, &fallback, &latency,
                            ],
                        )
                        .await
                        .map_err(crate::postgres::pg)?;
                    Ok(n)
                })
            })
            .await
    }

    async fn purge(&self, before: DateTime<Utc>) -> Result<u64, DataError> {
        self.store
            .call(move |c| {
                Box::pin(async move {
                    c.execute(
                        "DELETE FROM ml_service.predictions WHERE id < $1",
                        &[&first_id_at(before)],
                    )
                    .await
                    .map_err(crate::postgres::pg)
                })
            })
            .await
    }

    async fn get(&self, id: Uuid) -> Result<Option<PredictionRecord>, DataError> {
        self.store
            .call(move |c| {
                Box::pin(async move {
                    let row = c
                        .query_opt(
                            &format!(
                                "SELECT {PG_COLUMNS} FROM ml_service.predictions WHERE id = $1"
                            ),
                            &[&id],
                        )
                        .await
                        .map_err(crate::postgres::pg)?;
                    row.as_ref().map(pg_row).transpose()
                })
            })
            .await
    }

    async fn count(&self) -> Result<u64, DataError> {
        self.store
            .call(|c| {
                Box::pin(async move {
                    let r = c
                        .query_one("SELECT count(*) FROM ml_service.predictions", &[])
                        .await
                        .map_err(crate::postgres::pg)?;
                    Ok(r.get::<_, i64>(0) as u64)
                })
            })
            .await
    }

    fn describe(&self) -> String {
        format!(
            "{} (ml_service.predictions)",
            crate::DataSource::describe(&self.store)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v7 id of the millisecond `at` whose random part is `i`.
    fn id(i: u128, at: DateTime<Utc>) -> Uuid {
        let mut rand = [0u8; 10];
        rand[..8].copy_from_slice(&(i as u64).to_be_bytes());
        uuid::Builder::from_unix_timestamp_millis(at.timestamp_millis() as u64, &rand).into_uuid()
    }

    fn record(i: u128, at: DateTime<Utc>) -> PredictionRecord {
        PredictionRecord {
            id: id(i, at),
            at,
            endpoint: "match".into(),
            model: "travel_match".into(),
            version: 3,
            route: "3=90,4=10".into(),
            user_id: Uuid::from_u128(1_000 + i),
            other_user_id: Some(Uuid::from_u128(2_000 + i)),
            request_digest: "ab12".into(),
            score: Some(0.25),
            decision: r#"{"score":0.25}"#.into(),
            cached: i.is_multiple_of(2),
            fallback: false,
            latency_us: Some(1_500 + i as u32),
        }
    }

    fn at_ms(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(ms).single().unwrap()
    }

    async fn round_trip(store: &dyn PredictionStore) {
        // More rows than one insert statement takes, over five seconds.
        let rows: Vec<_> = (1..=5)
            .flat_map(|s| (0..30).map(move |i| record(i, at_ms(s * 1_000 + i as i64))))
            .collect();
        assert_eq!(store.write(rows.clone()).await.unwrap(), 150);
        // The same batch again (a retry after a timeout): nothing new.
        assert_eq!(store.write(rows.clone()).await.unwrap(), 0);
        assert_eq!(store.count().await.unwrap(), 150);
        let mut got = store.get(rows[62].id).await.unwrap().unwrap();
        // Postgres keeps the decision as jsonb (its own spacing): compare values.
        let json = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        assert_eq!(json(&got.decision), json(&rows[62].decision));
        got.decision = rows[62].decision.clone();
        assert_eq!(got, rows[62]);
        assert!(store.get(Uuid::now_v7()).await.unwrap().is_none());
        // Retention: rows logged before the cut go, the rest stay.
        assert_eq!(store.purge(at_ms(3_000)).await.unwrap(), 60);
        assert_eq!(store.count().await.unwrap(), 90);
        assert!(store.get(rows[59].id).await.unwrap().is_none());
        assert!(store.get(rows[60].id).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn sqlite_writes_reads_skips_repeats_and_purges() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqlitePredictions::open(&dir.path().join("app.db")).unwrap();
        round_trip(&store).await;
    }

    #[tokio::test]
    async fn postgres_writes_reads_skips_repeats_and_purges() {
        let Some(mut db) = crate::testing::TestDb::new().await else {
            return;
        };
        db.store(false).migrate().await.unwrap();
        // The service's two roles: the log is written as the writer, while
        // the reader (the app data's) cannot touch it, nor the writer the app's data.
        let writer = db.login_in("ml_service_writer").await;
        let reader = db.login_in("ml_service_reader").await;
        let as_writer = db.store_as(&writer);
        round_trip(&PgPredictions::new(as_writer)).await;

        let connect = |user: String| {
            let url = db.url_as(&user);
            async move {
                let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                c
            }
        };
        let w = connect(writer).await;
        assert!(w.batch_execute("DELETE FROM profiles").await.is_err());
        let r = connect(reader).await;
        assert!(r
            .batch_execute("DELETE FROM ml_service.predictions")
            .await
            .is_err());
        assert!(r
            .query_one("SELECT count(*) FROM ml_service.predictions", &[])
            .await
            .is_err());
        drop((w, r));
    }
}
