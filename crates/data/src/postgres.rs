//! The Postgres store: the app's own database, e.g. a Supabase project's
//! (`DATABASE_URL`, direct or through the session pooler). The service reads it
//! through a bounded pool of read-only sessions; every call has a deadline, and a
//! connection that missed one is thrown away rather than reused, so a stalled
//! network never poisons the pool. Connections are made on demand: a database
//! that went away is reconnected to by the next call after it returns.
//!
//! Training reads a consistent snapshot (one repeatable-read transaction) in
//! batches through portals, so neither side buffers a whole table. Tools write
//! with binary `COPY`, all tables in one transaction.

use crate::sample::{DatasetBuilder, TrainingSample};
use crate::{DataError, DataSource};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use futures::future::BoxFuture;
use ml_core::types::*;
use std::time::Duration;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{IsolationLevel, NoTls, Row};
use uuid::Uuid;

/// Migrations, in order. Each runs once, in its own transaction, under an
/// advisory lock (replicas starting together migrate one at a time).
pub const MIGRATIONS: [(u32, &str); 5] = [
    (
        1,
        include_str!("../../../migrations/postgres/0001_app_data.sql"),
    ),
    (
        2,
        include_str!("../../../migrations/postgres/0002_supabase_access.sql"),
    ),
    (
        3,
        include_str!("../../../migrations/postgres/0003_channel_consent.sql"),
    ),
    (
        4,
        include_str!("../../../migrations/postgres/0004_prediction_log.sql"),
    ),
    (
        5,
        include_str!("../../../migrations/postgres/0005_outcomes.sql"),
    ),
];

/// Rows fetched per round trip when reading a table for training.
const BATCH_ROWS: i32 = 10_000;

/// An arbitrary constant: the advisory lock migrations hold.
const MIGRATION_LOCK: i64 = 0x6d6c_7376_6331;

/// How the store connects.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Connections in the pool.
    pub pool_size: usize,
    /// Deadline of one call (waiting for a connection included), and the
    /// server-side `statement_timeout`. `None`: no deadline (tools, training).
    pub timeout: Option<Duration>,
    /// Sessions refuse writes (`default_transaction_read_only`): the service's reads.
    pub read_only: bool,
}

/// The Postgres store.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    timeout: Option<Duration>,
    describe: String,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("at", &self.describe)
            .finish()
    }
}

fn unavailable(e: impl std::fmt::Display) -> DataError {
    DataError::Unavailable(e.to_string())
}

pub(crate) fn pg(e: tokio_postgres::Error) -> DataError {
    // A database error's own message (no SQL text, no credentials), else the
    // connection-level description.
    match e.as_db_error() {
        Some(db) => DataError::Unavailable(format!("postgres: {}", db.message())),
        None => DataError::Unavailable(format!("postgres: {e}")),
    }
}

fn corrupt(table: &'static str, e: impl std::fmt::Display) -> DataError {
    DataError::Corrupt {
        table,
        reason: e.to_string(),
    }
}

fn parse<T: std::str::FromStr>(table: &'static str, s: &str) -> Result<T, DataError>
where
    T::Err: std::fmt::Display,
{
    s.parse::<T>().map_err(|e| corrupt(table, e))
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    table: &'static str,
    r: &'a Row,
    i: usize,
) -> Result<T, DataError> {
    r.try_get(i).map_err(|e| corrupt(table, e))
}

impl PgStore {
    /// A pool for `url` (`postgres://user:password@host:port/db?…`). Nothing is
    /// connected yet: the first call connects.
    pub fn connect(url: &str, opts: &PgOptions) -> Result<Self, DataError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| DataError::Unavailable(format!("DATABASE_URL does not parse: {e}")))?;
        // This build speaks plain TCP to Postgres: refuse a URL that demands
        // TLS at start-up, clearly, rather than failing on every connection.
        if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Err(DataError::Unavailable(
                "DATABASE_URL asks for sslmode=require, and this build connects without TLS: reach Postgres over a private network or a local TLS-terminating proxy, and drop sslmode=require".into(),
            ));
        }
        let mut options = config.get_options().unwrap_or_default().to_string();
        if opts.read_only {
            options.push_str(" -c default_transaction_read_only=on");
        }
        if let Some(t) = opts.timeout {
            options.push_str(&format!(" -c statement_timeout={}", t.as_millis().max(1)));
            if config.get_connect_timeout().is_none() {
                config.connect_timeout(t);
            }
        }
        config.options(options.trim());
        if config.get_application_name().is_none() {
            config.application_name("ml-service");
        }
        let describe = describe(&config);
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                // A connection whose socket closed is replaced; one that
                // stalled is detached by the call that saw it stall.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(opts.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(opts.timeout)
            .create_timeout(opts.timeout)
            .recycle_timeout(opts.timeout)
            .build()
            .map_err(unavailable)?;
        Ok(Self {
            pool,
            timeout: opts.timeout,
            describe,
        })
    }

    /// Run `f` on a pooled connection within the deadline. A connection whose
    /// call missed the deadline is detached from the pool (and so closed).
    pub(crate) async fn call<T>(
        &self,
        f: impl for<'c> FnOnce(&'c Object) -> BoxFuture<'c, Result<T, DataError>>,
    ) -> Result<T, DataError> {
        let Some(timeout) = self.timeout else {
            let client = self.pool.get().await.map_err(unavailable)?;
            return f(&client).await;
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let client = match tokio::time::timeout_at(deadline, self.pool.get()).await {
            Ok(c) => c.map_err(unavailable)?,
            Err(_) => return Err(DataError::Unavailable("postgres: timed out".into())),
        };
        let result = tokio::time::timeout_at(deadline, f(&client)).await;
        match result {
            Ok(r) => r,
            Err(_) => {
                drop(Object::take(client));
                Err(DataError::Unavailable("postgres: timed out".into()))
            }
        }
    }

    /// Apply pending migrations (idempotent).
    pub async fn migrate(&self) -> Result<Vec<u32>, DataError> {
        let mut client = self.pool.get().await.map_err(unavailable)?;
        let mut applied = vec![];
        for (version, sql) in MIGRATIONS {
            let tx = client.transaction().await.map_err(pg)?;
            let migration = |e: tokio_postgres::Error| DataError::Migration {
                version,
                reason: e
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string()),
            };
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await
                .map_err(migration)?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .await
            .map_err(migration)?;
            let done = tx
                .query_opt(
                    "SELECT 1 FROM schema_migrations WHERE version = $1",
                    &[&(version as i32)],
                )
                .await
                .map_err(migration)?;
            if done.is_none() {
                tx.batch_execute(sql).await.map_err(migration)?;
                tx.execute(
                    "INSERT INTO schema_migrations (version) VALUES ($1)",
                    &[&(version as i32)],
                )
                .await
                .map_err(migration)?;
                applied.push(version);
            }
            tx.commit().await.map_err(migration)?;
        }
        Ok(applied)
    }

    /// Number of user profiles stored.
    pub async fn count_profiles(&self) -> Result<u64, DataError> {
        self.call(|c| {
            Box::pin(async move {
                let r = c
                    .query_one("SELECT count(*) FROM profiles", &[])
                    .await
                    .map_err(pg)?;
                Ok(r.get::<_, i64>(0) as u64)
            })
        })
        .await
    }

    /// Up to `limit` user ids, in id order.
    pub async fn user_ids(&self, limit: usize) -> Result<Vec<String>, DataError> {
        let limit = limit.min(i64::MAX as usize) as i64;
        self.call(move |c| {
            Box::pin(async move {
                let rows = c
                    .query("SELECT id FROM profiles ORDER BY id LIMIT $1", &[&limit])
                    .await
                    .map_err(pg)?;
                Ok(rows
                    .iter()
                    .map(|r| r.get::<_, Uuid>(0).to_string())
                    .collect())
            })
        })
        .await
    }

    /// Ids of every profile and destination (import checks references).
    pub async fn ids(&self) -> Result<(Vec<Uuid>, Vec<Uuid>), DataError> {
        self.call(|c| {
            Box::pin(async move {
                let p = c.query("SELECT id FROM profiles", &[]).await.map_err(pg)?;
                let d = c
                    .query("SELECT id FROM destinations", &[])
                    .await
                    .map_err(pg)?;
                Ok((
                    p.iter().map(|r| r.get(0)).collect(),
                    d.iter().map(|r| r.get(0)).collect(),
                ))
            })
        })
        .await
    }

    /// Write a dataset in one transaction (all or nothing), with binary COPY;
    /// `replace` empties every table first, in the same transaction.
    pub async fn write_dataset(&self, d: &Dataset, replace: bool) -> Result<(), DataError> {
        let mut client = self.pool.get().await.map_err(unavailable)?;
        let tx = client.transaction().await.map_err(pg)?;
        if replace {
            tx.batch_execute(
                "TRUNCATE channel_consent, notification_log, activity_events, match_outcomes, interactions, profiles, destinations RESTART IDENTITY",
            )
            .await
            .map_err(pg)?;
        }
        use Type as T;
        let to_s = |v: &[String]| v.to_vec();
        copy(
            &tx,
            "destinations (id, name, country, tags, cost_level, trip_lengths, latitude, longitude)",
            &[
                T::UUID,
                T::TEXT,
                T::TEXT,
                T::TEXT_ARRAY,
                T::TEXT,
                T::TEXT_ARRAY,
                T::FLOAT8,
                T::FLOAT8,
            ],
            d.destinations.iter().map(|x| {
                let lengths: Vec<&str> = x.trip_lengths.iter().map(|t| t.as_str()).collect();
                vec![
                    Box::new(x.id) as Box<dyn ToSql + Sync + Send>,
                    Box::new(x.name.clone()),
                    Box::new(x.country.clone()),
                    Box::new(to_s(&x.tags)),
                    Box::new(x.cost_level.as_str()),
                    Box::new(lengths),
                    Box::new(x.latitude),
                    Box::new(x.longitude),
                ]
            }),
        )
        .await?;
        copy(
            &tx,
            "profiles (id, display_name, age, interests, travel_style, style_pace, style_comfort,
              style_spontaneity, openness, conscientiousness, extraversion, agreeableness, neuroticism,
              languages, timezone, budget, preferred_duration, created_at)",
            &[
                T::UUID, T::TEXT, T::INT2, T::TEXT_ARRAY, T::TEXT, T::FLOAT4, T::FLOAT4, T::FLOAT4,
                T::FLOAT4, T::FLOAT4, T::FLOAT4, T::FLOAT4, T::FLOAT4, T::TEXT_ARRAY, T::TEXT, T::TEXT,
                T::TEXT, T::TIMESTAMPTZ,
            ],
            d.profiles.iter().map(|p| {
                vec![
                    Box::new(p.id) as Box<dyn ToSql + Sync + Send>,
                    Box::new(p.display_name.clone()),
                    Box::new(p.age as i16),
                    Box::new(to_s(&p.interests)),
                    Box::new(p.travel_style.as_str()),
                    Box::new(p.style_vector[0]),
                    Box::new(p.style_vector[1]),
                    Box::new(p.style_vector[2]),
                    Box::new(p.personality[0]),
                    Box::new(p.personality[1]),
                    Box::new(p.personality[2]),
                    Box::new(p.personality[3]),
                    Box::new(p.personality[4]),
                    Box::new(to_s(&p.languages)),
                    Box::new(p.timezone.clone()),
                    Box::new(p.budget.as_str()),
                    Box::new(p.preferred_duration.as_str()),
                    Box::new(p.created_at),
                ]
            }),
        )
        .await?;
        copy(
            &tx,
            "interactions (user_id, destination_id, kind, rating, occurred_at)",
            &[T::UUID, T::UUID, T::TEXT, T::FLOAT4, T::TIMESTAMPTZ],
            d.interactions.iter().map(|i| {
                vec![
                    Box::new(i.user_id) as Box<dyn ToSql + Sync + Send>,
                    Box::new(i.destination_id),
                    Box::new(i.kind.as_str()),
                    Box::new(i.rating),
                    Box::new(i.occurred_at),
                ]
            }),
        )
        .await?;
        copy(
            &tx,
            "match_outcomes (user_a, user_b, destination_id, trip_start, trip_interests, matched, decided_at, true_probability)",
            &[T::UUID, T::UUID, T::UUID, T::DATE, T::TEXT_ARRAY, T::BOOL, T::TIMESTAMPTZ, T::FLOAT4],
            d.matches.iter().map(|m| {
                vec![
                    Box::new(m.user_a) as Box<dyn ToSql + Sync + Send>,
                    Box::new(m.user_b),
                    Box::new(m.destination_id),
                    Box::new(m.trip_start),
                    Box::new(to_s(&m.trip_interests)),
                    Box::new(m.matched),
                    Box::new(m.decided_at),
                    Box::new(m.true_probability),
                ]
            }),
        )
        .await?;
        copy(
            &tx,
            "activity_events (user_id, occurred_at)",
            &[T::UUID, T::TIMESTAMPTZ],
            d.activity.iter().map(|a| {
                vec![
                    Box::new(a.user_id) as Box<dyn ToSql + Sync + Send>,
                    Box::new(a.occurred_at),
                ]
            }),
        )
        .await?;
        copy(
            &tx,
            "notification_log (user_id, notification_type, channel, sent_at, opened_at)",
            &[T::UUID, T::TEXT, T::TEXT, T::TIMESTAMPTZ, T::TIMESTAMPTZ],
            d.notifications.iter().map(|n| {
                vec![
                    Box::new(n.user_id) as Box<dyn ToSql + Sync + Send>,
                    Box::new(n.notification_type.as_str()),
                    Box::new(n.channel.as_str()),
                    Box::new(n.sent_at),
                    Box::new(n.opened_at),
                ]
            }),
        )
        .await?;
        // Consent is a state, not an event: a later answer replaces an
        // earlier one, so it is upserted (one statement) rather than copied.
        let users: Vec<Uuid> = d.consents.iter().map(|c| c.user_id).collect();
        let channels: Vec<&str> = d.consents.iter().map(|c| c.channel.as_str()).collect();
        let granted: Vec<bool> = d.consents.iter().map(|c| c.granted).collect();
        tx.execute(
            "INSERT INTO channel_consent (user_id, channel, granted)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::bool[])
             ON CONFLICT (user_id, channel) DO UPDATE SET granted = excluded.granted, updated_at = now()",
            &[&users, &channels, &granted],
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)
    }

    /// What training reads: at most `sample`'s users (see [`crate::sample`]),
    /// from one consistent snapshot, `BATCH_ROWS` rows per round trip.
    pub async fn load_sample(&self, sample: TrainingSample) -> Result<Dataset, DataError> {
        let mut client = self.pool.get().await.map_err(unavailable)?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg)?;
        // Reading a whole table may take longer than a request's deadline.
        tx.batch_execute("SET LOCAL statement_timeout = 0")
            .await
            .map_err(pg)?;
        let count = |table: &'static str| {
            let tx = &tx;
            async move {
                let r = tx
                    .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                    .await
                    .map_err(pg)?;
                Ok::<_, DataError>(r.get::<_, i64>(0) as u64)
            }
        };
        let mut b = DatasetBuilder::new(
            sample,
            count("profiles").await?,
            count("match_outcomes").await?,
        );
        for d in destinations(&*tx).await? {
            b.destination(d);
        }
        scan(
            &tx,
            "SELECT user_a, user_b, destination_id, trip_start, trip_interests, matched, decided_at, true_probability
             FROM match_outcomes ORDER BY id",
            match_row,
            |m| b.match_outcome(m),
        )
        .await?;
        scan(&tx, PROFILES_SQL, profile_row, |p| b.profile(p)).await?;
        scan(&tx, INTERACTIONS_SQL, interaction_row, |i| b.interaction(i)).await?;
        scan(
            &tx,
            "SELECT user_id, occurred_at FROM activity_events ORDER BY id",
            |r| {
                Ok(ActivityEvent {
                    user_id: get("activity_events", r, 0)?,
                    occurred_at: get("activity_events", r, 1)?,
                })
            },
            |a| b.activity(a),
        )
        .await?;
        scan(&tx, NOTIFICATIONS_SQL, notification_row, |n| {
            b.notification(n)
        })
        .await?;
        scan(&tx, CONSENTS_SQL, consent_row, |c| b.consent(c)).await?;
        tx.commit().await.map_err(pg)?;
        Ok(b.finish())
    }
}

/// Feed `sql`'s rows to `f`, `BATCH_ROWS` at a time through a portal, so
/// neither side holds more than one batch.
async fn scan<T>(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &str,
    parse: impl Fn(&Row) -> Result<T, DataError>,
    mut sink: impl FnMut(T),
) -> Result<(), DataError> {
    let portal = tx.bind(sql, &[]).await.map_err(pg)?;
    loop {
        let rows = tx.query_portal(&portal, BATCH_ROWS).await.map_err(pg)?;
        if rows.is_empty() {
            return Ok(());
        }
        for r in &rows {
            sink(parse(r)?);
        }
    }
}

/// `host:port/db` without user or password, for logs.
fn describe(c: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match c.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = c.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres {host}:{port}/{}",
        c.get_dbname().unwrap_or("postgres")
    )
}

/// Copy rows into `target` (`table (columns)`) with binary COPY.
async fn copy(
    tx: &tokio_postgres::Transaction<'_>,
    target: &str,
    types: &[Type],
    rows: impl Iterator<Item = Vec<Box<dyn ToSql + Sync + Send>>>,
) -> Result<(), DataError> {
    let sink = tx
        .copy_in(&format!("COPY {target} FROM STDIN (FORMAT binary)"))
        .await
        .map_err(pg)?;
    let writer = BinaryCopyInWriter::new(sink, types);
    futures::pin_mut!(writer);
    for row in rows {
        let refs: Vec<&(dyn ToSql + Sync)> = row.iter().map(|b| b.as_ref() as _).collect();
        writer.as_mut().write(&refs).await.map_err(pg)?;
    }
    writer.finish().await.map_err(pg)?;
    Ok(())
}

/// The profile columns in the order `profile_row` reads them.
macro_rules! select_profiles {
    () => {
        "SELECT id, display_name, age, interests, travel_style, style_pace, style_comfort,
         style_spontaneity, openness, conscientiousness, extraversion, agreeableness, neuroticism,
         languages, timezone, budget, preferred_duration, created_at FROM profiles"
    };
}
const PROFILES_SQL: &str = concat!(select_profiles!(), " ORDER BY id");
const PROFILE_BY_ID_SQL: &str = concat!(select_profiles!(), " WHERE id = $1");
const INTERACTIONS_SQL: &str =
    "SELECT user_id, destination_id, kind, rating, occurred_at FROM interactions ORDER BY id";
const NOTIFICATIONS_SQL: &str =
    "SELECT user_id, notification_type, channel, sent_at, opened_at FROM notification_log ORDER BY id";

fn profile_row(r: &Row) -> Result<Profile, DataError> {
    const T: &str = "profiles";
    let f = |i| get::<f32>(T, r, i);
    Ok(Profile {
        id: get(T, r, 0)?,
        display_name: get(T, r, 1)?,
        age: get::<i16>(T, r, 2)?.clamp(0, 255) as u8,
        interests: get(T, r, 3)?,
        travel_style: parse(T, get::<&str>(T, r, 4)?)?,
        style_vector: [f(5)?, f(6)?, f(7)?],
        personality: [f(8)?, f(9)?, f(10)?, f(11)?, f(12)?],
        languages: get(T, r, 13)?,
        timezone: get(T, r, 14)?,
        budget: parse(T, get::<&str>(T, r, 15)?)?,
        preferred_duration: parse(T, get::<&str>(T, r, 16)?)?,
        created_at: get(T, r, 17)?,
    })
}

fn interaction_row(r: &Row) -> Result<Interaction, DataError> {
    const T: &str = "interactions";
    Ok(Interaction {
        user_id: get(T, r, 0)?,
        destination_id: get(T, r, 1)?,
        kind: parse(T, get::<&str>(T, r, 2)?)?,
        rating: get(T, r, 3)?,
        occurred_at: get(T, r, 4)?,
    })
}

fn notification_row(r: &Row) -> Result<NotificationRecord, DataError> {
    const T: &str = "notification_log";
    Ok(NotificationRecord {
        user_id: get(T, r, 0)?,
        notification_type: parse(T, get::<&str>(T, r, 1)?)?,
        channel: parse(T, get::<&str>(T, r, 2)?)?,
        sent_at: get(T, r, 3)?,
        opened_at: get(T, r, 4)?,
    })
}

const CONSENTS_SQL: &str =
    "SELECT user_id, channel, granted FROM channel_consent ORDER BY user_id, channel";

fn consent_row(r: &Row) -> Result<ChannelConsent, DataError> {
    const T: &str = "channel_consent";
    Ok(ChannelConsent {
        user_id: get(T, r, 0)?,
        channel: parse(T, get::<&str>(T, r, 1)?)?,
        granted: get(T, r, 2)?,
    })
}

fn match_row(r: &Row) -> Result<MatchOutcome, DataError> {
    const T: &str = "match_outcomes";
    Ok(MatchOutcome {
        user_a: get(T, r, 0)?,
        user_b: get(T, r, 1)?,
        destination_id: get(T, r, 2)?,
        trip_start: get(T, r, 3)?,
        trip_interests: get(T, r, 4)?,
        matched: get(T, r, 5)?,
        decided_at: get(T, r, 6)?,
        true_probability: get(T, r, 7)?,
    })
}

async fn destinations(
    c: &impl tokio_postgres::GenericClient,
) -> Result<Vec<Destination>, DataError> {
    const T: &str = "destinations";
    let rows = c
        .query(
            "SELECT id, name, country, tags, cost_level, trip_lengths, latitude, longitude FROM destinations ORDER BY name",
            &[],
        )
        .await
        .map_err(pg)?;
    rows.iter()
        .map(|r| {
            Ok(Destination {
                id: get(T, r, 0)?,
                name: get(T, r, 1)?,
                country: get(T, r, 2)?,
                tags: get(T, r, 3)?,
                cost_level: parse(T, get::<&str>(T, r, 4)?)?,
                trip_lengths: get::<Vec<&str>>(T, r, 5)?
                    .into_iter()
                    .map(|s| parse(T, s))
                    .collect::<Result<_, _>>()?,
                latitude: get(T, r, 6)?,
                longitude: get(T, r, 7)?,
            })
        })
        .collect()
}

/// A user's profile and history in one round trip (five pipelined queries).
async fn user_history(c: &Object, id: Uuid) -> Result<Option<UserHistory>, DataError> {
    let params: [&(dyn ToSql + Sync); 1] = [&id];
    let (s_profile, s_inter, s_act, s_notif, s_consent) = futures::try_join!(
        c.prepare_cached(PROFILE_BY_ID_SQL),
        c.prepare_cached(
            "SELECT user_id, destination_id, kind, rating, occurred_at FROM interactions
             WHERE user_id = $1 ORDER BY occurred_at"
        ),
        c.prepare_cached(
            "SELECT occurred_at FROM activity_events WHERE user_id = $1 ORDER BY occurred_at"
        ),
        c.prepare_cached(
            "SELECT user_id, notification_type, channel, sent_at, opened_at FROM notification_log
             WHERE user_id = $1 ORDER BY sent_at"
        ),
        c.prepare_cached(
            "SELECT user_id, channel, granted FROM channel_consent WHERE user_id = $1 ORDER BY channel"
        ),
    )
    .map_err(pg)?;
    let (profile, inter, act, notif, consent) = futures::try_join!(
        c.query_opt(&s_profile, &params),
        c.query(&s_inter, &params),
        c.query(&s_act, &params),
        c.query(&s_notif, &params),
        c.query(&s_consent, &params),
    )
    .map_err(pg)?;
    let Some(profile) = profile else {
        return Ok(None);
    };
    Ok(Some(UserHistory {
        profile: Some(profile_row(&profile)?),
        interactions: inter
            .iter()
            .map(interaction_row)
            .collect::<Result<_, _>>()?,
        activity: act
            .iter()
            .map(|r| get("activity_events", r, 0))
            .collect::<Result<_, _>>()?,
        notifications: notif
            .iter()
            .map(notification_row)
            .collect::<Result<_, _>>()?,
        consents: consent.iter().map(consent_row).collect::<Result<_, _>>()?,
    }))
}

#[async_trait::async_trait]
impl DataSource for PgStore {
    async fn user_history(&self, id: Uuid) -> Result<Option<UserHistory>, DataError> {
        self.call(move |c| Box::pin(user_history(c, id))).await
    }

    async fn destinations(&self) -> Result<Vec<Destination>, DataError> {
        self.call(|c| Box::pin(destinations(&***c))).await
    }

    async fn dataset(&self, sample: TrainingSample) -> Result<Dataset, DataError> {
        self.load_sample(sample).await
    }

    async fn ping(&self) -> Result<(), DataError> {
        self.call(|c| {
            Box::pin(async move {
                c.simple_query("SELECT 1").await.map_err(pg)?;
                Ok(())
            })
        })
        .await
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> PgOptions {
        PgOptions {
            pool_size: 1,
            timeout: Some(Duration::from_millis(100)),
            read_only: true,
        }
    }

    #[test]
    fn descriptions_never_carry_credentials() {
        let s = PgStore::connect(
            "postgres://svc:hunter2-secret@db.example.com:6543/app",
            &opts(),
        )
        .unwrap();
        assert_eq!(s.describe(), "postgres db.example.com:6543/app");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn a_url_that_demands_tls_is_refused_with_the_reason() {
        let e = PgStore::connect("postgres://u@h/db?sslmode=require", &opts()).unwrap_err();
        assert!(e.to_string().contains("sslmode=require"), "{e}");
        let e = PgStore::connect("mysql://nope", &opts()).unwrap_err();
        assert!(e.to_string().contains("DATABASE_URL"), "{e}");
    }
}
