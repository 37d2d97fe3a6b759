//! Offline evaluation of notification timing: does the model's best slot catch
//! the user's held-out sessions, and how likely are those sessions under its
//! weekly pattern — against the population's busiest hour and the user's raw
//! histogram, and (on generated data) the true rhythm; plus, on the demo
//! notification log, the true open probability of the policy's choice against
//! sending immediately and at a fixed daily time.

use crate::generator::Truth;
use crate::TrainError;
use chrono::{DateTime, Duration, TimeZone, Timelike, Utc};
use ml_core::features::{
    hour_of_week, parse_tz, timing_features, PopulationActivity, UserFeatures, HOURS_PER_WEEK,
};
use ml_core::post::{plan_notification, NotificationPolicy, NotificationRequest};
use ml_core::types::{NotificationType, Urgency};
use serde::Serialize;
use std::collections::HashMap;
use uuid::Uuid;

/// How one predictor of the weekly pattern does on held-out sessions.
#[derive(Debug, Clone, Serialize)]
pub struct SlotScores {
    pub name: String,
    /// Mean over users of the share of their held-out sessions within ±1 h of
    /// the predicted best hour of the week (the hour whose ±1 h window holds the
    /// most predicted mass).
    pub share_within_1h: f64,
    /// Mean over users of the mean log-probability of their held-out sessions'
    /// hours of the week.
    pub log_likelihood: f64,
}

/// True open probabilities of three ways to time the same notifications.
#[derive(Debug, Clone, Serialize)]
pub struct OpenRates {
    pub notifications: usize,
    /// At the policy's time, on the policy's channel.
    pub policy: f64,
    /// Right away, on the policy's channel.
    pub immediately: f64,
    /// At the next 10:00 local, on the policy's channel.
    pub fixed_daily: f64,
    /// What the log did (random times and channels).
    pub as_logged: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimingEvaluation {
    pub dataset: String,
    pub users: usize,
    pub held_out_sessions: usize,
    pub model: SlotScores,
    pub population: SlotScores,
    pub raw_histogram: SlotScores,
    pub ceiling: Option<SlotScores>,
    pub open_rates: Option<OpenRates>,
}

/// A user's past (as features) and held-out sessions (local hours of week).
#[derive(Debug, Clone)]
pub struct HeldOut {
    pub user: UserFeatures,
    pub sessions: Vec<usize>,
    /// The true weekly distribution, when known.
    pub truth: Option<Vec<f32>>,
}

/// The model under test: timing-feature rows in, `[scores]` out.
pub type TimingPredictor<'a> = dyn FnMut(&[f32], usize) -> Result<Vec<Vec<f32>>, TrainError> + 'a;

/// Pseudo-count that keeps the raw histogram's log-likelihood finite.
const RAW_EPSILON: f32 = 0.01;

fn argmax(v: &[f32]) -> usize {
    (0..v.len())
        .max_by(|&a, &b| v[a].total_cmp(&v[b]).then(b.cmp(&a)))
        .unwrap_or(0)
}

#[derive(Default)]
struct Acc {
    within: f64,
    ll: f64,
}

impl Acc {
    fn add(&mut self, dist: &[f32], sessions: &[usize]) {
        // Every predictor's best slot is the hour whose ±1 h window holds the
        // most of its predicted mass: the decision the metric rewards.
        let window: Vec<f32> = (0..HOURS_PER_WEEK)
            .map(|h| {
                dist[(h + HOURS_PER_WEEK - 1) % HOURS_PER_WEEK]
                    + dist[h]
                    + dist[(h + 1) % HOURS_PER_WEEK]
            })
            .collect();
        let best = argmax(&window);
        let near = |h: usize| {
            let d = (h + HOURS_PER_WEEK - best) % HOURS_PER_WEEK;
            d <= 1 || d == HOURS_PER_WEEK - 1
        };
        let n = sessions.len() as f64;
        self.within += sessions.iter().filter(|h| near(**h)).count() as f64 / n;
        self.ll += sessions
            .iter()
            .map(|h| (dist[*h].max(1e-9) as f64).ln())
            .sum::<f64>()
            / n;
    }
    fn scores(&self, name: &str, users: usize) -> SlotScores {
        SlotScores {
            name: name.into(),
            share_within_1h: self.within / users as f64,
            log_likelihood: self.ll / users as f64,
        }
    }
}

fn normalised(v: &[f32]) -> Vec<f32> {
    let s: f32 = v.iter().sum::<f32>().max(1e-12);
    v.iter().map(|x| x / s).collect()
}

/// Score the model and the baselines on held-out sessions; also returns the
/// model's 168 scores per user, for the notification policy.
pub fn evaluate_slots(
    dataset: &str,
    held: &[HeldOut],
    pop: &PopulationActivity,
    predict: &mut TimingPredictor,
) -> Result<(TimingEvaluation, HashMap<Uuid, Vec<f32>>), TrainError> {
    let held: Vec<&HeldOut> = held.iter().filter(|h| !h.sessions.is_empty()).collect();
    if held.is_empty() {
        return Err(TrainError::Training("no held-out sessions".into()));
    }
    let (mut model, mut popu, mut raw, mut ceil) = (
        Acc::default(),
        Acc::default(),
        Acc::default(),
        Acc::default(),
    );
    let pop_dist = normalised(&pop.hour_of_week);
    let mut scores_by_user = HashMap::new();
    for chunk in held.chunks(256) {
        let x: Vec<f32> = chunk
            .iter()
            .flat_map(|h| timing_features(&h.user, pop))
            .collect();
        let out = predict(&x, chunk.len() * HOURS_PER_WEEK)?;
        for (k, h) in chunk.iter().enumerate() {
            let s = &out[0][k * HOURS_PER_WEEK..(k + 1) * HOURS_PER_WEEK];
            model.add(&normalised(s), &h.sessions);
            popu.add(&pop_dist, &h.sessions);
            let r: Vec<f32> = h.user.activity.iter().map(|c| c + RAW_EPSILON).collect();
            raw.add(&normalised(&r), &h.sessions);
            if let Some(t) = &h.truth {
                ceil.add(t, &h.sessions);
            }
            scores_by_user.insert(h.user.user_id, s.to_vec());
        }
    }
    let n = held.len();
    let has_truth = held.iter().all(|h| h.truth.is_some());
    Ok((
        TimingEvaluation {
            dataset: dataset.into(),
            users: n,
            held_out_sessions: held.iter().map(|h| h.sessions.len()).sum(),
            model: model.scores("served model", n),
            population: popu.scores("population's busiest hour / pattern", n),
            raw_histogram: raw.scores("user's raw histogram", n),
            ceiling: has_truth.then(|| ceil.scores("true rhythm (ceiling)", n)),
            open_rates: None,
        },
        scores_by_user,
    ))
}

/// Held-out sessions of the demo data: features as of `split`, sessions after it.
pub fn demo_holdout(
    data: &ml_core::types::Dataset,
    feats: &HashMap<Uuid, UserFeatures>,
    split: DateTime<Utc>,
    truth: Option<&Truth>,
) -> Vec<HeldOut> {
    let mut sessions: HashMap<Uuid, Vec<usize>> = HashMap::new();
    for a in data.activity.iter().filter(|a| a.occurred_at >= split) {
        if let Some(u) = feats.get(&a.user_id) {
            sessions
                .entry(a.user_id)
                .or_default()
                .push(hour_of_week(a.occurred_at, &parse_tz(&u.timezone)));
        }
    }
    let mut ids: Vec<&Uuid> = sessions.keys().collect();
    ids.sort();
    ids.into_iter()
        .map(|id| HeldOut {
            user: feats[id].clone(),
            sessions: sessions[id].clone(),
            truth: truth
                .and_then(|t| t.rhythms.get(id))
                .map(|r| r.activity_distribution()),
        })
        .collect()
}

/// The next `hour`:00 local at or after `now`.
fn next_local_hour(now: DateTime<Utc>, tz: &chrono_tz::Tz, hour: u32) -> DateTime<Utc> {
    let mut t = now;
    for _ in 0..48 {
        t += Duration::hours(1);
        let l = t.with_timezone(tz);
        if l.hour() == hour {
            return tz
                .with_ymd_and_hms(
                    l.year_ce().1 as i32,
                    l.month0() + 1,
                    l.day0() + 1,
                    hour,
                    0,
                    0,
                )
                .earliest()
                .map(|x| x.with_timezone(&Utc))
                .unwrap_or(t);
        }
    }
    t
}

use chrono::Datelike;

/// True open probability of the policy's choice vs. sending immediately vs. a
/// fixed daily time, over the notifications sent after `split`.
pub fn open_rates(
    data: &ml_core::types::Dataset,
    feats: &HashMap<Uuid, UserFeatures>,
    scores: &HashMap<Uuid, Vec<f32>>,
    pop: &PopulationActivity,
    channel_prior: [f32; 3],
    truth: &Truth,
    split: DateTime<Utc>,
) -> OpenRates {
    let (mut n, mut pol, mut now_, mut fixed, mut logged) = (0usize, 0.0, 0.0, 0.0, 0.0);
    for rec in data.notifications.iter().filter(|r| r.sent_at >= split) {
        let (Some(u), Some(s), Some(r)) = (
            feats.get(&rec.user_id),
            scores.get(&rec.user_id),
            truth.rhythms.get(&rec.user_id),
        ) else {
            continue;
        };
        // The service's default policy; a user who agreed to no channel
        // would get no plan, and is left out.
        let Some(plan) = plan_notification(&NotificationRequest {
            user: u,
            scores: s,
            population: pop,
            channel_prior,
            kind: NotificationType::MatchFound,
            urgency: Urgency::Medium,
            now: rec.sent_at,
            policy: NotificationPolicy::default(),
        }) else {
            continue;
        };
        pol += r.open_probability(plan.channel, plan.send_at) as f64;
        now_ += r.open_probability(plan.channel, rec.sent_at) as f64;
        fixed +=
            r.open_probability(plan.channel, next_local_hour(rec.sent_at, &r.timezone, 10)) as f64;
        logged += r.open_probability(rec.channel, rec.sent_at) as f64;
        n += 1;
    }
    let d = n.max(1) as f64;
    OpenRates {
        notifications: n,
        policy: pol / d,
        immediately: now_ / d,
        fixed_daily: fixed / d,
        as_logged: logged / d,
    }
}

/// One user's sessions from an activity log, split in time order.
#[derive(Debug, Clone)]
pub struct SessionLog {
    pub id: Uuid,
    pub timezone: String,
    pub past: Vec<DateTime<Utc>>,
    pub held_out: Vec<DateTime<Utc>>,
}

/// MovieLens ratings as app sessions: at most one session per user and hour,
/// users active on at least `min_days` distinct days, each user's sessions
/// split in time order (the first `train_share` for features, the rest held out).
pub fn movielens_sessions(
    ratings: &[crate::movielens::Rating],
    zips: &HashMap<String, String>,
    min_days: usize,
    train_share: f64,
) -> Vec<SessionLog> {
    let mut by_user: HashMap<&str, Vec<i64>> = HashMap::new();
    for r in ratings {
        by_user
            .entry(r.user.as_str())
            .or_default()
            .push(r.timestamp / 3600);
    }
    let mut users: Vec<&str> = by_user.keys().copied().collect();
    users.sort();
    let mut out = vec![];
    for u in users {
        let mut hours = by_user[u].clone();
        hours.sort_unstable();
        hours.dedup();
        let mut days: Vec<i64> = hours.iter().map(|h| h / 24).collect();
        days.dedup();
        if days.len() < min_days {
            continue;
        }
        let tz = zip_tz(zips.get(u).map(String::as_str).unwrap_or(""));
        let times: Vec<DateTime<Utc>> = hours
            .iter()
            .filter_map(|h| Utc.timestamp_opt(h * 3600 + 1800, 0).single())
            .collect();
        let cut = ((times.len() as f64) * train_share).round() as usize;
        let cut = cut.clamp(1, times.len() - 1);
        let id = Uuid::new_v5(&Uuid::NAMESPACE_OID, u.as_bytes());
        out.push(SessionLog {
            id,
            timezone: tz.to_string(),
            past: times[..cut].to_vec(),
            held_out: times[cut..].to_vec(),
        });
    }
    out
}

/// Train a timing network on activity logs alone (`train_logs`: each user's
/// past split again in time order, features from the first three quarters,
/// labels from the rest; held-out sessions are never used) and build the
/// held-out set of `logs` (features from the whole past).
pub fn fit_on_logs(
    train_logs: &[SessionLog],
    logs: &[SessionLog],
    seed: u64,
) -> (crate::nn::Mlp, Vec<HeldOut>, PopulationActivity) {
    let mut train_users = vec![];
    let mut labels = vec![];
    for l in train_logs {
        let cut = (l.past.len() * 3 / 4).clamp(1, l.past.len());
        let tz = parse_tz(&l.timezone);
        let mut next = vec![0f32; HOURS_PER_WEEK];
        for t in &l.past[cut..] {
            next[hour_of_week(*t, &tz)] += 1.0;
        }
        train_users.push(UserFeatures::from_activity(
            l.id,
            &l.timezone,
            &l.past[..cut],
        ));
        labels.push(next);
    }
    let pop_train = PopulationActivity::from_users(train_users.iter());
    let net = crate::train::fit_timing(
        train_users.iter().zip(labels.iter().map(Vec::as_slice)),
        &pop_train,
        seed,
    );
    let held: Vec<HeldOut> = logs
        .iter()
        .map(|l| {
            let tz = parse_tz(&l.timezone);
            HeldOut {
                user: UserFeatures::from_activity(l.id, &l.timezone, &l.past),
                sessions: l.held_out.iter().map(|t| hour_of_week(*t, &tz)).collect(),
                truth: None,
            }
        })
        .collect();
    let pop = PopulationActivity::from_users(held.iter().map(|h| &h.user));
    (net, held, pop)
}

fn zip_tz(zip: &str) -> &'static str {
    crate::movielens::zip_timezone(zip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::{generate_with_truth, GeneratorConfig};
    use crate::train::{train_timing, TrainingData};

    #[test]
    fn on_demo_data_the_model_beats_both_baselines_and_stays_below_the_ceiling() {
        let (d, truth) = generate_with_truth(&GeneratorConfig {
            users: 3000,
            seed: 42,
            ..Default::default()
        });
        let td = TrainingData::new(&d);
        let art = train_timing(&td, 1).unwrap();
        let split = art.window.holdout_from;
        let feats = td.user_features(split);
        let pop = PopulationActivity::from_users(feats.values());
        let held = demo_holdout(&d, &feats, split, Some(&truth));
        let mut predict = |x: &[f32], _n: usize| Ok(vec![art.heads[0].predict(x)]);
        let (e, scores) = evaluate_slots("demo", &held, &pop, &mut predict).unwrap();
        let c = e.ceiling.as_ref().unwrap();
        assert!(
            e.model.share_within_1h > e.population.share_within_1h * 1.3,
            "{e:?}"
        );
        assert!(
            e.model.share_within_1h > e.raw_histogram.share_within_1h,
            "{e:?}"
        );
        assert!(
            e.model.log_likelihood > e.population.log_likelihood,
            "{e:?}"
        );
        assert!(
            e.model.log_likelihood > e.raw_histogram.log_likelihood,
            "{e:?}"
        );
        assert!(
            c.log_likelihood > e.model.log_likelihood,
            "the truth is the ceiling: {e:?}"
        );
        let o = open_rates(&d, &feats, &scores, &pop, [0.4, 0.2, 0.4], &truth, split);
        assert!(o.notifications > 1000);
        assert!(
            o.policy > o.immediately * 1.1 && o.policy > o.fixed_daily * 1.1,
            "{o:?}"
        );
    }

    #[test]
    fn next_local_hour_is_ahead_and_local() {
        let tz: chrono_tz::Tz = "Europe/Paris".parse().unwrap();
        let now = Utc.with_ymd_and_hms(2026, 3, 28, 20, 0, 0).unwrap(); // 21:00 CET, DST starts that night
        let t = next_local_hour(now, &tz, 10);
        assert!(t > now);
        assert_eq!(t.with_timezone(&tz).hour(), 10);
        assert_eq!(t, Utc.with_ymd_and_hms(2026, 3, 29, 8, 0, 0).unwrap()); // 10:00 CEST
    }
}
