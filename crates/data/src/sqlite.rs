//! The embedded SQLite store. Connections live in a small bounded pool; every
//! query runs on the blocking thread pool, never on the async runtime's threads.

use crate::sample::{DatasetBuilder, TrainingSample};
use crate::{DataError, DataSource};
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use crossbeam_channel::{bounded, Receiver, Sender};
use ml_core::types::*;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use uuid::Uuid;

/// Migrations, in order. Each runs once; the applied versions are recorded.
pub const MIGRATIONS: [(u32, &str); 4] = [
    (
        1,
        include_str!("../../../migrations/sqlite/0001_app_data.sql"),
    ),
    (
        2,
        include_str!("../../../migrations/sqlite/0002_channel_consent.sql"),
    ),
    (
        3,
        include_str!("../../../migrations/sqlite/0003_prediction_log.sql"),
    ),
    (
        4,
        include_str!("../../../migrations/sqlite/0004_outcomes.sql"),
    ),
];

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    path: PathBuf,
    pool: Arc<Pool>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

struct Pool {
    tx: Sender<Connection>,
    rx: Receiver<Connection>,
}

pub(crate) fn open(path: &Path) -> Result<Connection, DataError> {
    let c = Connection::open(path)?;
    c.busy_timeout(std::time::Duration::from_secs(5))?;
    c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;")?;
    Ok(c)
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn at(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

fn json_list<T: serde::Serialize>(v: &[T]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

fn corrupt(table: &'static str) -> impl Fn(String) -> DataError {
    move |reason| DataError::Corrupt { table, reason }
}

fn parse<T: std::str::FromStr>(table: &'static str, s: &str) -> Result<T, DataError>
where
    T::Err: std::fmt::Display,
{
    s.parse::<T>().map_err(|e| corrupt(table)(e.to_string()))
}

fn uuid(table: &'static str, s: &str) -> Result<Uuid, DataError> {
    Uuid::parse_str(s).map_err(|e| corrupt(table)(format!("bad uuid {s:?}: {e}")))
}

fn list<T: serde::de::DeserializeOwned>(table: &'static str, s: &str) -> Result<Vec<T>, DataError> {
    serde_json::from_str(s).map_err(|e| corrupt(table)(e.to_string()))
}

impl SqliteStore {
    /// Open (creating if needed) the database file and apply pending migrations.
    pub fn open(path: impl Into<PathBuf>, connections: usize) -> Result<Self, DataError> {
        let path = path.into();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| DataError::Unavailable(format!("{}: {e}", dir.display())))?;
        }
        let first = open(&path)?;
        migrate(&first)?;
        let (tx, rx) = bounded(connections.max(1));
        tx.send(first).ok();
        for _ in 1..connections.max(1) {
            tx.send(open(&path)?).ok();
        }
        Ok(Self {
            path,
            pool: Arc::new(Pool { tx, rx }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `f` with a pooled connection on the blocking thread pool.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, DataError> + Send + 'static,
    ) -> Result<T, DataError> {
        let pool = Arc::clone(&self.pool);
        tokio::task::spawn_blocking(move || {
            let mut c = pool
                .rx
                .recv()
                .map_err(|e| DataError::Unavailable(e.to_string()))?;
            let r = f(&mut c);
            pool.tx.send(c).ok();
            r
        })
        .await
        .map_err(|e| DataError::Unavailable(e.to_string()))?
    }

    /// Run `f` with a pooled connection on the current thread (CLI and start-up).
    pub fn with_blocking<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, DataError>,
    ) -> Result<T, DataError> {
        let mut c = self
            .pool
            .rx
            .recv()
            .map_err(|e| DataError::Unavailable(e.to_string()))?;
        let r = f(&mut c);
        self.pool.tx.send(c).ok();
        r
    }

    /// Number of user profiles stored.
    pub fn count_profiles(&self) -> Result<u64, DataError> {
        self.with_blocking(|c| {
            Ok(c.query_row("SELECT count(*) FROM profiles", [], |r| r.get::<_, i64>(0))? as u64)
        })
    }

    /// Up to `limit` user ids, in id order (tools and load tests).
    pub fn user_ids(&self, limit: usize) -> Result<Vec<String>, DataError> {
        self.with_blocking(|c| {
            let mut s = c.prepare("SELECT id FROM profiles ORDER BY id LIMIT ?1")?;
            let ids = s
                .query_map([limit as i64], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ids)
        })
    }

    /// Write a whole dataset in one transaction (all or nothing); `replace`
    /// empties every table first, in the same transaction.
    pub fn write_dataset(&self, d: &Dataset, replace: bool) -> Result<(), DataError> {
        self.with_blocking(|c| write_dataset(c, d, replace))
    }

    /// The destination catalogue (start-up).
    pub fn load_destinations(&self) -> Result<Vec<Destination>, DataError> {
        self.with_blocking(|c| destinations(c))
    }

    /// Load everything (tests and tools).
    pub fn load_dataset(&self) -> Result<Dataset, DataError> {
        self.with_blocking(|c| load_dataset(c, TrainingSample::ALL))
    }

    /// Load what training reads: at most `sample`'s users (see [`crate::sample`]).
    pub fn load_sample(&self, sample: TrainingSample) -> Result<Dataset, DataError> {
        self.with_blocking(move |c| load_dataset(c, sample))
    }

    /// Ids of every profile and destination (import checks references).
    pub fn ids(&self) -> Result<(Vec<Uuid>, Vec<Uuid>), DataError> {
        self.with_blocking(|c| {
            let mut out = (vec![], vec![]);
            for (table, v) in [("profiles", &mut out.0), ("destinations", &mut out.1)] {
                let mut s = c.prepare(&format!("SELECT id FROM {table}"))?;
                for id in s.query_map([], |r| r.get::<_, String>(0))? {
                    v.push(uuid(table, &id?)?);
                }
            }
            Ok(out)
        })
    }
}

/// Apply pending migrations.
pub fn migrate(c: &Connection) -> Result<(), DataError> {
    c.execute_batch("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)")?;
    for (version, sql) in MIGRATIONS {
        let done: Option<i64> = c
            .query_row(
                "SELECT version FROM schema_migrations WHERE version = ?1",
                [version],
                |r| r.get(0),
            )
            .optional()?;
        if done.is_some() {
            continue;
        }
        c.execute_batch(&format!(
            "BEGIN; {sql}; INSERT INTO schema_migrations VALUES ({version}, {}); COMMIT;",
            ms(Utc::now())
        ))
        .map_err(|e| {
            let _ = c.execute_batch("ROLLBACK");
            DataError::Migration {
                version,
                reason: e.to_string(),
            }
        })?;
    }
    Ok(())
}

fn write_dataset(c: &mut Connection, d: &Dataset, replace: bool) -> Result<(), DataError> {
    let tx = c.transaction()?;
    if replace {
        // Children before parents, for the foreign keys.
        tx.execute_batch(
            "DELETE FROM channel_consent; DELETE FROM notification_log; DELETE FROM activity_events; DELETE FROM match_outcomes;
             DELETE FROM interactions; DELETE FROM profiles; DELETE FROM destinations;",
        )?;
    }
    {
        let mut s = tx.prepare(
            "INSERT INTO destinations (id, name, country, tags, cost_level, trip_lengths, latitude, longitude)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (id) DO NOTHING",
        )?;
        for x in &d.destinations {
            s.execute(params![
                x.id.to_string(),
                x.name,
                x.country,
                json_list(&x.tags),
                x.cost_level.as_str(),
                json_list(&x.trip_lengths),
                x.latitude,
                x.longitude
            ])?;
        }
        let mut s = tx.prepare(
            "INSERT INTO profiles (id, display_name, age, interests, travel_style, style_pace, style_comfort,
              style_spontaneity, openness, conscientiousness, extraversion, agreeableness, neuroticism,
              languages, timezone, budget, preferred_duration, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
        )?;
        for p in &d.profiles {
            s.execute(params![
                p.id.to_string(),
                p.display_name,
                p.age,
                json_list(&p.interests),
                p.travel_style.as_str(),
                p.style_vector[0],
                p.style_vector[1],
                p.style_vector[2],
                p.personality[0],
                p.personality[1],
                p.personality[2],
                p.personality[3],
                p.personality[4],
                json_list(&p.languages),
                p.timezone,
                p.budget.as_str(),
                p.preferred_duration.as_str(),
                ms(p.created_at)
            ])?;
        }
        let mut s = tx.prepare(
            "INSERT INTO interactions (user_id, destination_id, kind, rating, occurred_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for i in &d.interactions {
            s.execute(params![
                i.user_id.to_string(),
                i.destination_id.to_string(),
                i.kind.as_str(),
                i.rating,
                ms(i.occurred_at)
            ])?;
        }
        let mut s = tx.prepare(
            "INSERT INTO match_outcomes (user_a, user_b, destination_id, trip_start, trip_interests, matched,
               decided_at, true_probability)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for m in &d.matches {
            s.execute(params![
                m.user_a.to_string(),
                m.user_b.to_string(),
                m.destination_id.map(|d| d.to_string()),
                m.trip_start.map(|d| d.to_string()),
                json_list(&m.trip_interests),
                m.matched,
                ms(m.decided_at),
                m.true_probability
            ])?;
        }
        let mut s =
            tx.prepare("INSERT INTO activity_events (user_id, occurred_at) VALUES (?1, ?2)")?;
        for a in &d.activity {
            s.execute(params![a.user_id.to_string(), ms(a.occurred_at)])?;
        }
        let mut s = tx.prepare(
            "INSERT INTO notification_log (user_id, notification_type, channel, sent_at, opened_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for n in &d.notifications {
            s.execute(params![
                n.user_id.to_string(),
                n.notification_type.as_str(),
                n.channel.as_str(),
                ms(n.sent_at),
                n.opened_at.map(ms)
            ])?;
        }
        // Consent is a state, not an event: a later answer replaces an
        // earlier one.
        let mut s = tx.prepare(
            "INSERT INTO channel_consent (user_id, channel, granted, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (user_id, channel) DO UPDATE SET granted = excluded.granted, updated_at = excluded.updated_at",
        )?;
        let now = ms(Utc::now());
        for c in &d.consents {
            s.execute(params![
                c.user_id.to_string(),
                c.channel.as_str(),
                c.granted,
                now
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

const PROFILE_COLUMNS: &str = "id, display_name, age, interests, travel_style, style_pace, style_comfort,
    style_spontaneity, openness, conscientiousness, extraversion, agreeableness, neuroticism, languages,
    timezone, budget, preferred_duration, created_at";

fn profile_row(r: &rusqlite::Row) -> rusqlite::Result<Result<Profile, DataError>> {
    const T: &str = "profiles";
    let id: String = r.get(0)?;
    let interests: String = r.get(3)?;
    let style: String = r.get(4)?;
    let languages: String = r.get(13)?;
    let budget: String = r.get(15)?;
    let duration: String = r.get(16)?;
    let f = |i| r.get::<_, f64>(i).map(|v| v as f32);
    let style_vector = [f(5)?, f(6)?, f(7)?];
    let personality = [f(8)?, f(9)?, f(10)?, f(11)?, f(12)?];
    let display_name: String = r.get(1)?;
    let age: i64 = r.get(2)?;
    let timezone: String = r.get(14)?;
    let created: i64 = r.get(17)?;
    Ok((|| {
        Ok(Profile {
            id: uuid(T, &id)?,
            display_name,
            age: age.clamp(0, 255) as u8,
            interests: list(T, &interests)?,
            travel_style: parse(T, &style)?,
            style_vector,
            personality,
            languages: list(T, &languages)?,
            timezone,
            budget: parse(T, &budget)?,
            preferred_duration: parse(T, &duration)?,
            created_at: at(created),
        })
    })())
}

fn destinations(c: &Connection) -> Result<Vec<Destination>, DataError> {
    const T: &str = "destinations";
    let mut s = c.prepare_cached(
        "SELECT id, name, country, tags, cost_level, trip_lengths, latitude, longitude FROM destinations ORDER BY name",
    )?;
    let rows = s.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, f64>(6)?,
            r.get::<_, f64>(7)?,
        ))
    })?;
    let mut out = vec![];
    for row in rows {
        let (id, name, country, tags, cost, lengths, lat, lon) = row?;
        out.push(Destination {
            id: uuid(T, &id)?,
            name,
            country,
            tags: list(T, &tags)?,
            cost_level: parse(T, &cost)?,
            trip_lengths: list(T, &lengths)?,
            latitude: lat,
            longitude: lon,
        });
    }
    Ok(out)
}

fn interaction_row(
    r: &rusqlite::Row,
) -> rusqlite::Result<(String, String, String, Option<f64>, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn to_interaction(
    row: (String, String, String, Option<f64>, i64),
) -> Result<Interaction, DataError> {
    const T: &str = "interactions";
    Ok(Interaction {
        user_id: uuid(T, &row.0)?,
        destination_id: uuid(T, &row.1)?,
        kind: parse(T, &row.2)?,
        rating: row.3.map(|v| v as f32),
        occurred_at: at(row.4),
    })
}

fn notification_row(
    r: &rusqlite::Row,
) -> rusqlite::Result<(String, String, String, i64, Option<i64>)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn to_notification(
    row: (String, String, String, i64, Option<i64>),
) -> Result<NotificationRecord, DataError> {
    const T: &str = "notification_log";
    Ok(NotificationRecord {
        user_id: uuid(T, &row.0)?,
        notification_type: parse(T, &row.1)?,
        channel: parse(T, &row.2)?,
        sent_at: at(row.3),
        opened_at: row.4.map(at),
    })
}

fn consent_row(r: &rusqlite::Row) -> rusqlite::Result<(String, String, bool)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}

fn to_consent(row: (String, String, bool)) -> Result<ChannelConsent, DataError> {
    const T: &str = "channel_consent";
    Ok(ChannelConsent {
        user_id: uuid(T, &row.0)?,
        channel: parse(T, &row.1)?,
        granted: row.2,
    })
}

fn user_history(c: &Connection, id: Uuid) -> Result<Option<UserHistory>, DataError> {
    let key = id.to_string();
    let mut s = c.prepare_cached(&format!(
        "SELECT {PROFILE_COLUMNS} FROM profiles WHERE id = ?1"
    ))?;
    let Some(profile) = s.query_row([&key], profile_row).optional()? else {
        return Ok(None);
    };
    let profile = profile?;
    let mut s = c.prepare_cached(
        "SELECT user_id, destination_id, kind, rating, occurred_at FROM interactions WHERE user_id = ?1 ORDER BY occurred_at",
    )?;
    let interactions = s
        .query_map([&key], interaction_row)?
        .map(|r| to_interaction(r?))
        .collect::<Result<Vec<_>, _>>()?;
    let mut s = c.prepare_cached(
        "SELECT occurred_at FROM activity_events WHERE user_id = ?1 ORDER BY occurred_at",
    )?;
    let activity = s
        .query_map([&key], |r| r.get::<_, i64>(0))?
        .map(|r| r.map(at))
        .collect::<Result<Vec<_>, _>>()?;
    let mut s = c.prepare_cached(
        "SELECT user_id, notification_type, channel, sent_at, opened_at FROM notification_log WHERE user_id = ?1 ORDER BY sent_at",
    )?;
    let notifications = s
        .query_map([&key], notification_row)?
        .map(|r| to_notification(r?))
        .collect::<Result<Vec<_>, _>>()?;
    let mut s = c.prepare_cached(
        "SELECT user_id, channel, granted FROM channel_consent WHERE user_id = ?1 ORDER BY channel",
    )?;
    let consents = s
        .query_map([&key], consent_row)?
        .map(|r| to_consent(r?))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(UserHistory {
        profile: Some(profile),
        interactions,
        activity,
        notifications,
        consents,
    }))
}

fn load_dataset(c: &Connection, sample: TrainingSample) -> Result<Dataset, DataError> {
    let count = |table: &str| -> Result<u64, DataError> {
        Ok(
            c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
                r.get::<_, i64>(0)
            })? as u64,
        )
    };
    let mut b = DatasetBuilder::new(sample, count("profiles")?, count("match_outcomes")?);
    for d in destinations(c)? {
        b.destination(d);
    }
    // rusqlite steps through rows one at a time: the builder, not the query,
    // decides what stays in memory.
    let mut s = c.prepare(
        "SELECT user_a, user_b, destination_id, trip_start, matched, decided_at, true_probability, trip_interests
         FROM match_outcomes ORDER BY id",
    )?;
    const M: &str = "match_outcomes";
    let rows = s.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, Option<String>>(3)?,
            r.get::<_, bool>(4)?,
            r.get::<_, i64>(5)?,
            r.get::<_, Option<f64>>(6)?,
            r.get::<_, String>(7)?,
        ))
    })?;
    for r in rows {
        let (a, bb, dest, start, matched, decided, p, trip) = r?;
        b.match_outcome(MatchOutcome {
            user_a: uuid(M, &a)?,
            user_b: uuid(M, &bb)?,
            destination_id: dest.map(|x| uuid(M, &x)).transpose()?,
            trip_start: start.map(|x| parse::<NaiveDate>(M, &x)).transpose()?,
            trip_interests: list(M, &trip)?,
            matched,
            decided_at: at(decided),
            true_probability: p.map(|v| v as f32),
        });
    }
    let mut s = c.prepare(&format!(
        "SELECT {PROFILE_COLUMNS} FROM profiles ORDER BY id"
    ))?;
    for p in s.query_map([], profile_row)? {
        b.profile(p??);
    }
    let mut s = c.prepare(
        "SELECT user_id, destination_id, kind, rating, occurred_at FROM interactions ORDER BY id",
    )?;
    for r in s.query_map([], interaction_row)? {
        b.interaction(to_interaction(r?)?);
    }
    let mut s = c.prepare("SELECT user_id, occurred_at FROM activity_events ORDER BY id")?;
    for r in s.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (u, t) = r?;
        b.activity(ActivityEvent {
            user_id: uuid("activity_events", &u)?,
            occurred_at: at(t),
        });
    }
    let mut s = c.prepare("SELECT user_id, notification_type, channel, sent_at, opened_at FROM notification_log ORDER BY id")?;
    for r in s.query_map([], notification_row)? {
        b.notification(to_notification(r?)?);
    }
    let mut s = c.prepare(
        "SELECT user_id, channel, granted FROM channel_consent ORDER BY user_id, channel",
    )?;
    for r in s.query_map([], consent_row)? {
        b.consent(to_consent(r?)?);
    }
    Ok(b.finish())
}

#[async_trait::async_trait]
impl DataSource for SqliteStore {
    async fn user_history(&self, id: Uuid) -> Result<Option<UserHistory>, DataError> {
        self.with(move |c| user_history(c, id)).await
    }

    async fn destinations(&self) -> Result<Vec<Destination>, DataError> {
        self.with(|c| destinations(c)).await
    }

    async fn dataset(&self, sample: TrainingSample) -> Result<Dataset, DataError> {
        self.with(move |c| load_dataset(c, sample)).await
    }

    async fn ping(&self) -> Result<(), DataError> {
        self.with(|c| {
            Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                .map(|_| ())?)
        })
        .await
    }

    fn describe(&self) -> String {
        format!("sqlite {}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ml_train::generator::{generate, GeneratorConfig};

    #[tokio::test]
    async fn a_dataset_round_trips_through_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("app.db"), 2).unwrap();
        let d = generate(&GeneratorConfig {
            users: 50,
            ..Default::default()
        });
        store.write_dataset(&d, false).unwrap();
        assert_eq!(store.count_profiles().unwrap(), 50);
        let back = store.dataset(TrainingSample::ALL).await.unwrap();
        let mut profiles = d.profiles.clone();
        profiles.sort_by_key(|p| p.id.to_string());
        // Floats go through REAL (f64) and back: equal at f32 precision.
        assert_eq!(back.profiles, profiles);
        assert_eq!(back.interactions.len(), d.interactions.len());
        assert_eq!(back.matches, d.matches);
        assert_eq!(back.activity, d.activity);
        assert_eq!(back.notifications, d.notifications);
        let mut consents = d.consents.clone();
        consents.sort_by_key(|c| (c.user_id.to_string(), c.channel.as_str()));
        assert_eq!(back.consents, consents);
        assert_eq!(back.destinations.len(), d.destinations.len());

        let u = &d.profiles[0];
        let h = store.user_history(u.id).await.unwrap().unwrap();
        assert_eq!(h.profile.as_ref(), Some(u));
        assert_eq!(h.consents, d.consents_of(u.id));
        assert_eq!(
            h.activity.len(),
            d.activity.iter().filter(|a| a.user_id == u.id).count()
        );
        assert!(store.user_history(Uuid::nil()).await.unwrap().is_none());
    }

    #[test]
    fn migrations_are_idempotent_and_a_bad_row_rolls_back_the_whole_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let store = SqliteStore::open(&path, 1).unwrap();
        drop(store);
        let store = SqliteStore::open(&path, 1).unwrap();
        let mut d = generate(&GeneratorConfig {
            users: 5,
            ..Default::default()
        });
        d.profiles[4].age = 7; // violates the age CHECK
        assert!(store.write_dataset(&d, false).is_err());
        assert_eq!(
            store.count_profiles().unwrap(),
            0,
            "nothing is half-written"
        );
    }
}
