//! Outcomes tied to predictions, and the per-arm sums experiments are judged
//! on, computed in the store. Beside the prediction log (same file or
//! schema): SQLite `ml_outcomes`, Postgres `ml_service.outcomes` (migrations
//! 4 and 5).
//!
//! Outcomes arrive two ways. The **join** pulls them from the app's own
//! tables, the way the app already records what happened: a match decided
//! for the predicted pair within a window; a recommended destination saved,
//! booked or visited within a window (its position in the answer kept); a
//! notification sent on the chosen channel near the chosen time, opened or
//! not within a window. It is one `INSERT … SELECT` per endpoint over a key
//! range of the log, run again as often as wanted: a re-run rewrites what
//! changed and nothing else. **Feedback** is what an app reports itself
//! (`POST /feedback`); it wins over a joined row for the same prediction.
//!
//! Reports never load the log: [`ExperimentStore::arms`] aggregates each
//! user's predictions, then each arm's users, in SQL, and returns a few rows
//! of sums that `ml_core::experiment` turns into intervals and a verdict.

use crate::postgres::pg;
use crate::predlog::{first_id_at, PgPredictions, SqlitePredictions};
use crate::DataError;
use chrono::{DateTime, Duration, TimeZone, Utc};
use ml_core::experiment::OutcomeKind;
use rusqlite::OptionalExtension;
use uuid::Uuid;

/// The attribution rules: how long after a prediction an outcome counts as
/// its own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JoinWindows {
    /// A match outcome for the same pair decided within this after a match
    /// prediction.
    pub matched: Duration,
    /// A save, booking or visit of a recommended destination within this
    /// after the recommendation.
    pub recommended: Duration,
    /// A notification sent on the chosen channel within this of the chosen
    /// send time.
    pub send_tolerance: Duration,
    /// …and opened within this after it was sent (a notification not
    /// opened is recorded once this has passed).
    pub open: Duration,
}

impl JoinWindows {
    /// How far back a join must look: predictions older than this can no
    /// longer gain an outcome.
    pub fn longest(&self) -> Duration {
        self.matched
            .max(self.recommended)
            .max(self.send_tolerance * 2 + self.open)
    }
}

/// Outcome rows a join wrote or changed, per endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Joined {
    pub matches: u64,
    pub recommendations: u64,
    pub notifications: u64,
}

impl Joined {
    pub fn total(&self) -> u64 {
        self.matches + self.recommendations + self.notifications
    }
}

/// One outcome row.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Outcome {
    pub prediction_id: Uuid,
    /// A recommendation's destination name; empty otherwise.
    pub item: String,
    /// `joined` or `feedback`.
    pub source: String,
    pub kind: OutcomeKind,
    pub value: f64,
    /// A recommended destination's 1-based rank in the answer.
    pub position: Option<u32>,
    /// From the prediction (a notification: from its send) to the outcome.
    pub delay_ms: Option<i64>,
    pub at: DateTime<Utc>,
}

/// Which predictions an experiment report covers: one model's, answered
/// under one A/B split, since a time.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmQuery {
    pub model: String,
    /// `match`, `recommend` or `notify`.
    pub endpoint: String,
    /// The split as the log records it (`3=90,4=10`).
    pub route: String,
    pub since: DateTime<Utc>,
}

/// One arm's sums, the user being the unit (the A/B route is a function of
/// the user, so one user's predictions are not independent).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ArmSums {
    pub version: u64,
    pub users: u64,
    pub predictions: u64,
    /// Predictions with at least one outcome.
    pub outcomes: u64,
    pub fallbacks: u64,
    /// The primary metric per user (match: log-loss of the score against
    /// decided outcomes; recommendation: converted places per
    /// recommendation; notification: open rate of the sent ones): users
    /// with a value, its sum, the sum of its squares.
    pub n: u64,
    pub sum: f64,
    pub sum_sq: f64,
    /// The secondary metric per user (match: realised match rate;
    /// recommendation: hit rate, any converted place; notification: none).
    pub secondary_n: u64,
    pub secondary_sum: f64,
    /// The 99th percentile of the answers' latency, microseconds.
    pub latency_p99_us: Option<f64>,
    /// Notifications: the median time from send to open, milliseconds.
    pub median_delay_ms: Option<f64>,
}

/// The store the learning loop reads and writes besides the log itself.
#[async_trait::async_trait]
pub trait ExperimentStore: Send + Sync {
    /// Join outcomes from the app's tables for predictions logged in
    /// `[from, to)`, as of `now`: in chunks of [`JOIN_CHUNK`] from the first
    /// logged row, so an empty stretch of the log costs nothing.
    async fn join(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        now: DateTime<Utc>,
        windows: &JoinWindows,
    ) -> Result<Joined, DataError> {
        let mut joined = Joined::default();
        for (lo, hi) in chunks(self.first_logged(from).await?, to) {
            let j = self.join_range(lo, hi, now, windows).await?;
            joined.matches += j.matches;
            joined.recommendations += j.recommendations;
            joined.notifications += j.notifications;
        }
        Ok(joined)
    }
    /// The id of the first prediction logged at or after `from`.
    async fn first_logged(&self, from: DateTime<Utc>) -> Result<Option<Uuid>, DataError>;
    /// Join outcomes for the predictions whose ids are in `[lo, hi)`.
    async fn join_range(
        &self,
        lo: Uuid,
        hi: Uuid,
        now: DateTime<Utc>,
        windows: &JoinWindows,
    ) -> Result<Joined, DataError>;
    /// Record an outcome the app reported; false when it was already
    /// recorded as it is (a repeat).
    async fn feedback(&self, outcome: Outcome) -> Result<bool, DataError>;
    /// A prediction's outcomes.
    async fn outcomes(&self, prediction_id: Uuid) -> Result<Vec<Outcome>, DataError>;
    /// Each arm's sums, by version.
    async fn arms(&self, q: &ArmQuery) -> Result<Vec<ArmSums>, DataError>;
    /// Take or renew the lease `name` for `holder` until `now + ttl`; false
    /// when another holder's lease is still running.
    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, DataError>;
}

/// The join's statements cover this much of the log each, so one statement
/// never holds the store (and the log writer sharing it) for long.
pub const JOIN_CHUNK: Duration = Duration::minutes(15);

/// The key ranges up to `to`, from the first logged row (`first`: its id,
/// if any).
fn chunks(first: Option<Uuid>, to: DateTime<Utc>) -> Vec<(Uuid, Uuid)> {
    let Some(first) = first else {
        return vec![];
    };
    let from = first
        .get_timestamp()
        .map(|t| t.to_unix())
        .and_then(|(s, n)| DateTime::<Utc>::from_timestamp(s as i64, n))
        .unwrap_or(to);
    let mut out = vec![];
    let mut t = from;
    while t < to {
        let next = (t + JOIN_CHUNK).min(to);
        out.push((first_id_at(t), first_id_at(next)));
        t = next;
    }
    out
}

fn millis(d: Duration) -> i64 {
    d.num_milliseconds()
}

// ---------------------------------------------------------------- SQLite

/// Joined rows replace joined rows that differ; feedback is never
/// overwritten by the join.
const SQLITE_JOIN_UPSERT: &str = "ON CONFLICT (prediction_id, item) DO UPDATE SET
       kind = excluded.kind, value = excluded.value, position = excluded.position,
       delay_ms = excluded.delay_ms, at_ms = excluded.at_ms
     WHERE ml_outcomes.source = 'joined'
       AND (ml_outcomes.kind <> excluded.kind OR ml_outcomes.value <> excluded.value
            OR ml_outcomes.position IS NOT excluded.position)";

fn sqlite_join_match() -> String {
    format!(
        "INSERT INTO ml_outcomes (prediction_id, item, source, kind, value, position, delay_ms, at_ms)
         SELECT p.id, '', 'joined', CASE o.matched WHEN 1 THEN 'matched' ELSE 'not_matched' END,
                o.matched, NULL, o.decided_at - p.at_ms, o.decided_at
         FROM ml_predictions p
         JOIN match_outcomes o ON o.id = (
             SELECT m.id FROM match_outcomes m
             WHERE ((m.user_a = p.user_id AND m.user_b = p.other_user_id)
                 OR (m.user_a = p.other_user_id AND m.user_b = p.user_id))
               AND m.decided_at >= p.at_ms AND m.decided_at < p.at_ms + ?3
             ORDER BY m.decided_at LIMIT 1)
         WHERE p.id >= ?1 AND p.id < ?2 AND p.endpoint = 'match'
         {SQLITE_JOIN_UPSERT}"
    )
}

fn sqlite_join_recommend() -> String {
    format!(
        "INSERT INTO ml_outcomes (prediction_id, item, source, kind, value, position, delay_ms, at_ms)
         SELECT p.id, d.name, 'joined',
                CASE max(CASE i.kind WHEN 'saved' THEN 1 WHEN 'booked' THEN 2 ELSE 3 END)
                  WHEN 1 THEN 'saved' WHEN 2 THEN 'booked' ELSE 'visited' END,
                1.0, j.key + 1, min(i.occurred_at) - p.at_ms, min(i.occurred_at)
         FROM ml_predictions p
         JOIN json_each(p.decision, '$.items') j
         JOIN destinations d ON d.name = json_extract(j.value, '$[0]')
         JOIN interactions i ON i.user_id = p.user_id AND i.destination_id = d.id
              AND i.kind IN ('saved', 'booked', 'visited')
              AND i.occurred_at >= p.at_ms AND i.occurred_at < p.at_ms + ?3
         WHERE p.id >= ?1 AND p.id < ?2 AND p.endpoint = 'recommend'
         GROUP BY p.id, d.name
         {SQLITE_JOIN_UPSERT}"
    )
}

/// ?3: the send tolerance, ?4: the open window, ?5: now (all ms). The
/// plan's notification is the first the app sent on the chosen channel
/// within the tolerance of the chosen time (SQLite cannot order a
/// correlated subquery by an outer column, so not the nearest). A sent
/// notification not opened is recorded only once its open window is over.
fn sqlite_join_notify() -> String {
    format!(
        "INSERT INTO ml_outcomes (prediction_id, item, source, kind, value, position, delay_ms, at_ms)
         SELECT p.id, '', 'joined',
                CASE WHEN n.opened_at IS NOT NULL AND n.opened_at - n.sent_at <= ?4 THEN 'opened' ELSE 'not_opened' END,
                CASE WHEN n.opened_at IS NOT NULL AND n.opened_at - n.sent_at <= ?4 THEN 1.0 ELSE 0.0 END,
                NULL,
                CASE WHEN n.opened_at IS NOT NULL AND n.opened_at - n.sent_at <= ?4 THEN n.opened_at - n.sent_at END,
                coalesce(n.opened_at, n.sent_at)
         FROM ml_predictions p
         JOIN notification_log n ON n.id = (
             SELECT m.id FROM notification_log m
             WHERE m.user_id = p.user_id
               AND m.channel = json_extract(p.decision, '$.channel')
               AND m.sent_at >= p.at_ms
               AND abs(m.sent_at - unixepoch(json_extract(p.decision, '$.send_at')) * 1000) <= ?3
             ORDER BY m.sent_at
             LIMIT 1)
         WHERE p.id >= ?1 AND p.id < ?2 AND p.endpoint = 'notify'
           AND ((n.opened_at IS NOT NULL AND n.opened_at - n.sent_at <= ?4) OR n.sent_at + ?4 <= ?5)
         {SQLITE_JOIN_UPSERT}"
    )
}

/// The per-prediction metric expressions (primary, secondary) over `p` (the
/// log) and `o` (a prediction's outcomes summed: `v`).
fn metric_sql(endpoint: &str, postgres: bool) -> (String, &'static str) {
    let (max, min) = if postgres {
        ("greatest", "least")
    } else {
        ("max", "min")
    };
    let ln = if postgres { "ln" } else { "ml_ln" };
    match endpoint {
        "match" => (
            format!(
                "CASE WHEN o.v IS NULL OR p.score IS NULL THEN NULL ELSE
                   -({min}(o.v, 1) * {ln}({max}(p.score, 1e-6)) + (1 - {min}(o.v, 1)) * {ln}({max}(1 - p.score, 1e-6))) END"
            ),
            "o.v",
        ),
        "recommend" => (
            "coalesce(o.v, 0)".into(),
            "CASE WHEN o.v > 0 THEN 1.0 ELSE 0.0 END",
        ),
        _ => ("o.v".into(), "CAST(NULL AS REAL)"),
    }
}

fn sqlite_arms_sql(endpoint: &str) -> String {
    let (x, y) = metric_sql(endpoint, false);
    format!(
        "SELECT version, count(*), sum(np), sum(no), sum(fb), count(x), total(x), total(x * x), count(y), total(y)
         FROM (
           SELECT p.version AS version, count(*) AS np, count(o.v) AS no, sum(p.fallback) AS fb,
                  avg({x}) AS x, avg({y}) AS y
           FROM ml_predictions p
           LEFT JOIN (SELECT prediction_id, sum(value) AS v FROM ml_outcomes GROUP BY prediction_id) o
             ON o.prediction_id = p.id
           WHERE p.id >= ?1 AND p.model = ?2 AND p.route = ?3 AND p.endpoint = ?4
           GROUP BY p.version, p.user_id)
         GROUP BY version ORDER BY version"
    )
}

fn sqlite_outcome(r: &rusqlite::Row) -> Result<Outcome, rusqlite::Error> {
    let key: Vec<u8> = r.get(0)?;
    let bad = |i: usize, e: String| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            Box::<dyn std::error::Error + Send + Sync>::from(e),
        )
    };
    let kind: String = r.get(3)?;
    Ok(Outcome {
        prediction_id: Uuid::from_slice(&key).map_err(|e| bad(0, e.to_string()))?,
        item: r.get(1)?,
        source: r.get(2)?,
        kind: OutcomeKind::parse(&kind).ok_or_else(|| bad(3, format!("unknown kind {kind}")))?,
        value: r.get(4)?,
        position: r.get::<_, Option<i64>>(5)?.map(|p| p.max(0) as u32),
        delay_ms: r.get(6)?,
        at: Utc
            .timestamp_millis_opt(r.get(7)?)
            .single()
            .unwrap_or_default(),
    })
}

/// The `k`-quantile (nearest rank) of `expr` over `from_where` (whose
/// parameters are ?1..?n of `params`), in SQLite without a percentile
/// function: count, then one ordered read at that offset.
fn sqlite_quantile(
    c: &rusqlite::Connection,
    expr: &str,
    from_where: &str,
    params: &[&dyn rusqlite::ToSql],
    k: f64,
) -> Result<Option<f64>, DataError> {
    let n: i64 = c.query_row(&format!("SELECT count({expr}) {from_where}"), params, |r| {
        r.get(0)
    })?;
    if n == 0 {
        return Ok(None);
    }
    let offset = ((k * n as f64).ceil() as i64 - 1).clamp(0, n - 1);
    Ok(c.query_row(
        &format!(
            "SELECT {expr} AS q {from_where} AND {expr} IS NOT NULL ORDER BY q LIMIT 1 OFFSET {offset}"
        ),
        params,
        |r| r.get::<_, f64>(0),
    )
    .optional()?)
}

#[async_trait::async_trait]
impl ExperimentStore for SqlitePredictions {
    async fn first_logged(&self, from: DateTime<Utc>) -> Result<Option<Uuid>, DataError> {
        let start = first_id_at(from);
        self.with(move |c| {
            Ok(c.query_row(
                "SELECT id FROM ml_predictions WHERE id >= ?1 ORDER BY id LIMIT 1",
                [&start.as_bytes()[..]],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .optional()?
            .and_then(|k| Uuid::from_slice(&k).ok()))
        })
        .await
    }

    async fn join_range(
        &self,
        lo: Uuid,
        hi: Uuid,
        now: DateTime<Utc>,
        w: &JoinWindows,
    ) -> Result<Joined, DataError> {
        let w = *w;
        self.with(move |c| {
            let tx = c.transaction()?;
            let (lo, hi) = (&lo.as_bytes()[..], &hi.as_bytes()[..]);
            let matches =
                tx.prepare_cached(&sqlite_join_match())?
                    .execute(rusqlite::params![lo, hi, millis(w.matched)])? as u64;
            let recommendations = tx
                .prepare_cached(&sqlite_join_recommend())?
                .execute(rusqlite::params![lo, hi, millis(w.recommended)])?
                as u64;
            let notifications =
                tx.prepare_cached(&sqlite_join_notify())?
                    .execute(rusqlite::params![
                        lo,
                        hi,
                        millis(w.send_tolerance),
                        millis(w.open),
                        now.timestamp_millis()
                    ])? as u64;
            tx.commit()?;
            Ok(Joined {
                matches,
                recommendations,
                notifications,
            })
        })
        .await
    }

    async fn feedback(&self, o: Outcome) -> Result<bool, DataError> {
        self.with(move |c| {
            Ok(c.execute(
                "INSERT INTO ml_outcomes (prediction_id, item, source, kind, value, position, delay_ms, at_ms)
                 VALUES (?1, ?2, 'feedback', ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (prediction_id, item) DO UPDATE SET
                   source = 'feedback', kind = excluded.kind, value = excluded.value,
                   position = excluded.position, delay_ms = excluded.delay_ms, at_ms = excluded.at_ms
                 WHERE ml_outcomes.source <> 'feedback' OR ml_outcomes.kind <> excluded.kind
                   OR ml_outcomes.value <> excluded.value",
                rusqlite::params![
                    &o.prediction_id.as_bytes()[..],
                    o.item,
                    o.kind.as_str(),
                    o.value,
                    o.position.map(i64::from),
                    o.delay_ms,
                    o.at.timestamp_millis()
                ],
            )? > 0)
        })
        .await
    }

    async fn outcomes(&self, id: Uuid) -> Result<Vec<Outcome>, DataError> {
        self.with(move |c| {
            let mut s = c.prepare_cached(
                "SELECT prediction_id, item, source, kind, value, position, delay_ms, at_ms
                 FROM ml_outcomes WHERE prediction_id = ?1 ORDER BY item",
            )?;
            let rows = s.query_map([&id.as_bytes()[..]], sqlite_outcome)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn arms(&self, q: &ArmQuery) -> Result<Vec<ArmSums>, DataError> {
        let q = q.clone();
        self.with(move |c| {
            let since = first_id_at(q.since);
            let since = &since.as_bytes()[..];
            let params: [&dyn rusqlite::ToSql; 4] = [&since, &q.model, &q.route, &q.endpoint];
            let mut arms = {
                let mut s = c.prepare(&sqlite_arms_sql(&q.endpoint))?;
                let rows = s.query_map(&params[..], |r| {
                    Ok(ArmSums {
                        version: r.get::<_, i64>(0)?.max(0) as u64,
                        users: r.get::<_, i64>(1)? as u64,
                        predictions: r.get::<_, i64>(2)? as u64,
                        outcomes: r.get::<_, i64>(3)? as u64,
                        fallbacks: r.get::<_, i64>(4)? as u64,
                        n: r.get::<_, i64>(5)? as u64,
                        sum: r.get(6)?,
                        sum_sq: r.get(7)?,
                        secondary_n: r.get::<_, i64>(8)? as u64,
                        secondary_sum: r.get(9)?,
                        latency_p99_us: None,
                        median_delay_ms: None,
                    })
                })?;
                rows.collect::<Result<Vec<_>, _>>()?
            };
            for a in &mut arms {
                let v = a.version as i64;
                let mut p: Vec<&dyn rusqlite::ToSql> = params.to_vec();
                p.push(&v);
                a.latency_p99_us = sqlite_quantile(
                    c,
                    "p.latency_us",
                    "FROM ml_predictions p WHERE p.id >= ?1 AND p.model = ?2 AND p.route = ?3
                     AND p.endpoint = ?4 AND p.version = ?5",
                    &p,
                    0.99,
                )?;
                if q.endpoint == "notify" {
                    a.median_delay_ms = sqlite_quantile(
                        c,
                        "o.delay_ms",
                        "FROM ml_predictions p JOIN ml_outcomes o ON o.prediction_id = p.id
                         WHERE p.id >= ?1 AND p.model = ?2 AND p.route = ?3 AND p.endpoint = ?4
                         AND p.version = ?5 AND o.kind = 'opened'",
                        &p,
                        0.5,
                    )?;
                }
            }
            Ok(arms)
        })
        .await
    }

    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, DataError> {
        let (name, holder) = (name.to_string(), holder.to_string());
        self.with(move |c| {
            let now = Utc::now().timestamp_millis();
            Ok(c.execute(
                "INSERT INTO ml_leases (name, holder, until_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms
                 WHERE ml_leases.holder = excluded.holder OR ml_leases.until_ms < ?4",
                rusqlite::params![name, holder, now + millis(ttl), now],
            )? > 0)
        })
        .await
    }
}

// ---------------------------------------------------------------- Postgres

const PG_JOIN_UPSERT: &str = "ON CONFLICT (prediction_id, item) DO UPDATE SET
       kind = excluded.kind, value = excluded.value, position = excluded.position,
       delay_ms = excluded.delay_ms, at = excluded.at
     WHERE ml_service.outcomes.source = 'joined'
       AND (ml_service.outcomes.kind, ml_service.outcomes.value, ml_service.outcomes.position)
           IS DISTINCT FROM (excluded.kind, excluded.value, excluded.position)";

/// Milliseconds between two timestamptz expressions.
fn pg_ms(later: &str, earlier: &str) -> String {
    format!("(extract(epoch FROM {later} - {earlier}) * 1000)::bigint")
}

fn pg_join_match() -> String {
    format!(
        "INSERT INTO ml_service.outcomes (prediction_id, item, source, kind, value, position, delay_ms, at)
         SELECT p.id, '', 'joined', CASE WHEN o.matched THEN 'matched' ELSE 'not_matched' END,
                CASE WHEN o.matched THEN 1 ELSE 0 END, NULL, {delay}, o.decided_at
         FROM ml_service.predictions p
         CROSS JOIN LATERAL (
             SELECT m.matched, m.decided_at FROM match_outcomes m
             WHERE ((m.user_a = p.user_id AND m.user_b = p.other_user_id)
                 OR (m.user_a = p.other_user_id AND m.user_b = p.user_id))
               AND m.decided_at >= p.at AND m.decided_at < p.at + $3::bigint * interval '1 millisecond'
             ORDER BY m.decided_at LIMIT 1) o
         WHERE p.id >= $1 AND p.id < $2 AND p.endpoint = 'match'
         {PG_JOIN_UPSERT}",
        delay = pg_ms("o.decided_at", "p.at")
    )
}

fn pg_join_recommend() -> String {
    format!(
        "INSERT INTO ml_service.outcomes (prediction_id, item, source, kind, value, position, delay_ms, at)
         SELECT p.id, d.name, 'joined',
                (ARRAY['saved', 'booked', 'visited'])[max(CASE i.kind WHEN 'saved' THEN 1 WHEN 'booked' THEN 2 ELSE 3 END)],
                1.0, j.pos::int, {delay}, min(i.occurred_at)
         FROM ml_service.predictions p
         CROSS JOIN LATERAL jsonb_array_elements(p.decision -> 'items') WITH ORDINALITY AS j(item, pos)
         JOIN destinations d ON d.name = j.item ->> 0
         JOIN interactions i ON i.user_id = p.user_id AND i.destination_id = d.id
              AND i.kind IN ('saved', 'booked', 'visited')
              AND i.occurred_at >= p.at AND i.occurred_at < p.at + $3::bigint * interval '1 millisecond'
         WHERE p.id >= $1 AND p.id < $2 AND p.endpoint = 'recommend'
         GROUP BY p.id, p.at, d.name, j.pos
         {PG_JOIN_UPSERT}",
        delay = pg_ms("min(i.occurred_at)", "p.at")
    )
}

fn pg_join_notify() -> String {
    let opened = "(n.opened_at IS NOT NULL AND n.opened_at - n.sent_at <= $4::bigint * interval '1 millisecond')";
    format!(
        "INSERT INTO ml_service.outcomes (prediction_id, item, source, kind, value, position, delay_ms, at)
         SELECT p.id, '', 'joined',
                CASE WHEN {opened} THEN 'opened' ELSE 'not_opened' END,
                CASE WHEN {opened} THEN 1.0 ELSE 0.0 END,
                NULL,
                CASE WHEN {opened} THEN {delay} END,
                coalesce(n.opened_at, n.sent_at)
         FROM ml_service.predictions p
         CROSS JOIN LATERAL (
             SELECT m.sent_at, m.opened_at FROM notification_log m
             WHERE m.user_id = p.user_id
               AND m.channel = p.decision ->> 'channel'
               AND m.sent_at >= p.at
               AND abs(extract(epoch FROM m.sent_at - (p.decision ->> 'send_at')::timestamptz)) * 1000 <= $3::float8
             ORDER BY m.sent_at
             LIMIT 1) n
         WHERE p.id >= $1 AND p.id < $2 AND p.endpoint = 'notify'
           AND ({opened} OR n.sent_at + $4::bigint * interval '1 millisecond' <= $5)
         {PG_JOIN_UPSERT}",
        delay = pg_ms("n.opened_at", "n.sent_at")
    )
}

fn pg_arms_sql(endpoint: &str) -> String {
    let (x, y) = metric_sql(endpoint, true);
    format!(
        "SELECT version, count(*), sum(np)::bigint, sum(no)::bigint, sum(fb)::bigint,
                count(x), coalesce(sum(x), 0)::float8, coalesce(sum(x * x), 0)::float8,
                count(y), coalesce(sum(y), 0)::float8,
                (SELECT percentile_disc(0.99) WITHIN GROUP (ORDER BY q.latency_us)::float8
                 FROM ml_service.predictions q
                 WHERE q.id >= $1 AND q.model = $2 AND q.route = $3 AND q.endpoint = $4 AND q.version = u.version),
                (SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY r.delay_ms)::float8
                 FROM ml_service.predictions q JOIN ml_service.outcomes r ON r.prediction_id = q.id
                 WHERE q.id >= $1 AND q.model = $2 AND q.route = $3 AND q.endpoint = $4 AND q.version = u.version
                   AND r.kind = 'opened')
         FROM (
           SELECT p.version AS version, count(*) AS np, count(o.v) AS no, sum(p.fallback::int) AS fb,
                  avg({x})::float8 AS x, avg({y})::float8 AS y
           FROM ml_service.predictions p
           LEFT JOIN (SELECT prediction_id, sum(value) AS v FROM ml_service.outcomes GROUP BY prediction_id) o
             ON o.prediction_id = p.id
           WHERE p.id >= $1 AND p.model = $2 AND p.route = $3 AND p.endpoint = $4
           GROUP BY p.version, p.user_id) u
         GROUP BY version ORDER BY version"
    )
}

#[async_trait::async_trait]
impl ExperimentStore for PgPredictions {
    async fn first_logged(&self, from: DateTime<Utc>) -> Result<Option<Uuid>, DataError> {
        let start = first_id_at(from);
        self.store()
            .call(move |c| {
                Box::pin(async move {
                    Ok(c.query_opt(
                        "SELECT id FROM ml_service.predictions WHERE id >= $1 ORDER BY id LIMIT 1",
                        &[&start],
                    )
                    .await
                    .map_err(pg)?
                    .map(|r| r.get::<_, Uuid>(0)))
                })
            })
            .await
    }

    async fn join_range(
        &self,
        lo: Uuid,
        hi: Uuid,
        now: DateTime<Utc>,
        w: &JoinWindows,
    ) -> Result<Joined, DataError> {
        let w = *w;
        self.store()
            .call(move |c| {
                Box::pin(async move {
                    let matches = c
                        .execute(&pg_join_match(), &[&lo, &hi, &millis(w.matched)])
                        .await
                        .map_err(pg)?;
                    let recommendations = c
                        .execute(&pg_join_recommend(), &[&lo, &hi, &millis(w.recommended)])
                        .await
                        .map_err(pg)?;
                    let notifications = c
                        .execute(
                            &pg_join_notify(),
                            &[
                                &lo,
                                &hi,
                                &(millis(w.send_tolerance) as f64),
                                &millis(w.open),
                                &now,
                            ],
                        )
                        .await
                        .map_err(pg)?;
                    Ok(Joined {
                        matches,
                        recommendations,
                        notifications,
                    })
                })
            })
            .await
    }

    async fn feedback(&self, o: Outcome) -> Result<bool, DataError> {
        self.store()
            .call(move |c| {
                Box::pin(async move {
                    let n = c
                        .execute(
                            "INSERT INTO ml_service.outcomes
                               (prediction_id, item, source, kind, value, position, delay_ms, at)
                             VALUES ($1, $2, 'feedback', $3, $4, $5, $6, $7)
                             ON CONFLICT (prediction_id, item) DO UPDATE SET
                               source = 'feedback', kind = excluded.kind, value = excluded.value,
                               position = excluded.position, delay_ms = excluded.delay_ms, at = excluded.at
                             WHERE ml_service.outcomes.source <> 'feedback'
                               OR (ml_service.outcomes.kind, ml_service.outcomes.value)
                                  IS DISTINCT FROM (excluded.kind, excluded.value)",
                            &[
                                &o.prediction_id,
                                &o.item,
                                &o.kind.as_str(),
                                &o.value,
                                &o.position.map(|p| p as i32),
                                &o.delay_ms,
                                &o.at,
                            ],
                        )
                        .await
                        .map_err(pg)?;
                    Ok(n > 0)
                })
            })
            .await
    }

    async fn outcomes(&self, id: Uuid) -> Result<Vec<Outcome>, DataError> {
        self.store()
            .call(move |c| {
                Box::pin(async move {
                    let rows = c
                        .query(
                            "SELECT prediction_id, item, source, kind, value, position, delay_ms, at
                             FROM ml_service.outcomes WHERE prediction_id = $1 ORDER BY item",
                            &[&id],
                        )
                        .await
                        .map_err(pg)?;
                    rows.iter()
                        .map(|r| {
                            let kind: String = r.get(3);
                            Ok(Outcome {
                                prediction_id: r.get(0),
                                item: r.get(1),
                                source: r.get(2),
                                kind: OutcomeKind::parse(&kind).ok_or_else(|| {
                                    DataError::Corrupt {
                                        table: "ml_service.outcomes",
                                        reason: format!("unknown kind {kind}"),
                                    }
                                })?,
                                value: r.get(4),
                                position: r.get::<_, Option<i32>>(5).map(|p| p.max(0) as u32),
                                delay_ms: r.get(6),
                                at: r.get(7),
                            })
                        })
                        .collect()
                })
            })
            .await
    }

    async fn arms(&self, q: &ArmQuery) -> Result<Vec<ArmSums>, DataError> {
        let q = q.clone();
        self.store()
            .call(move |c| {
                Box::pin(async move {
                    let since = first_id_at(q.since);
                    let rows = c
                        .query(
                            &pg_arms_sql(&q.endpoint),
                            &[&since, &q.model, &q.route, &q.endpoint],
                        )
                        .await
                        .map_err(pg)?;
                    Ok(rows
                        .iter()
                        .map(|r| ArmSums {
                            version: r.get::<_, i64>(0).max(0) as u64,
                            users: r.get::<_, i64>(1) as u64,
                            predictions: r.get::<_, i64>(2) as u64,
                            outcomes: r.get::<_, i64>(3) as u64,
                            fallbacks: r.get::<_, i64>(4) as u64,
                            n: r.get::<_, i64>(5) as u64,
                            sum: r.get(6),
                            sum_sq: r.get(7),
                            secondary_n: r.get::<_, i64>(8) as u64,
                            secondary_sum: r.get(9),
                            latency_p99_us: r.get(10),
                            median_delay_ms: if q.endpoint == "notify" {
                                r.get(11)
                            } else {
                                None
                            },
                        })
                        .collect())
                })
            })
            .await
    }

    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, DataError> {
        let (name, holder) = (name.to_string(), holder.to_string());
        self.store()
            .call(move |c| {
                Box::pin(async move {
                    let n = c
                        .execute(
                            "INSERT INTO ml_service.leases (name, holder, until)
                             VALUES ($1, $2, now() + $3::bigint * interval '1 millisecond')
                             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
                             WHERE ml_service.leases.holder = excluded.holder OR ml_service.leases.until < now()",
                            &[&name, &holder, &millis(ttl)],
                        )
                        .await
                        .map_err(pg)?;
                    Ok(n > 0)
                })
            })
            .await
    }
}

#[cfg(test)]
mod tests;
