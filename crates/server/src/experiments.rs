//! Experiments between model versions: the report on a model's current
//! split (per arm: users, predictions, outcomes, the online metric with its
//! interval, guardrails; the always-valid comparison with the control; the
//! sample-ratio check; a verdict in words), the periodic outcome join, and
//! the automatic decision of splits set with `models split --auto`.
//!
//! The sums come from the store in SQL ([`ExperimentStore::arms`]); the
//! statistics are `ml_core::experiment`'s; this module only assembles them
//! and decides. Only one replica joins or decides at a time: each holds a
//! lease in the log's store, which every replica shares.

use crate::settings::ExperimentSettings;
use chrono::{DateTime, Utc};
use ml_backend::repository::AutoDecision;
use ml_backend::{ModelRepository, Route, ServingPolicy};
use ml_core::experiment::{sample_ratio_p, ArmStats, Comparison, Decision, Msprt};
use ml_core::model::ModelKind;
use ml_data::{ArmQuery, ArmSums, DataError, ExperimentStore, Joined};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// Below this p-value the users per arm do not follow the weights.
const SRM_P: f64 = 0.001;
/// Predictions an arm needs before its guardrails are judged.
const GUARDRAIL_MIN_PREDICTIONS: u64 = 200;

/// The endpoint (as the log names it) whose predictions a model makes.
pub fn endpoint_of(model: ModelKind) -> &'static str {
    match model {
        ModelKind::TravelMatch => "match",
        ModelKind::Recommendation => "recommend",
        ModelKind::NotificationTiming => "notify",
    }
}

/// What an endpoint's experiments are judged on.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MetricInfo {
    pub name: &'static str,
    pub higher_is_better: bool,
    pub secondary: Option<&'static str>,
}

pub fn metric_of(model: ModelKind) -> MetricInfo {
    match model {
        ModelKind::TravelMatch => MetricInfo {
            name: "log_loss",
            higher_is_better: false,
            secondary: Some("match_rate"),
        },
        ModelKind::Recommendation => MetricInfo {
            name: "conversions_per_recommendation",
            higher_is_better: true,
            secondary: Some("hit_rate"),
        },
        ModelKind::NotificationTiming => MetricInfo {
            name: "open_rate",
            higher_is_better: true,
            secondary: None,
        },
    }
}

/// One arm of the report.
#[derive(Debug, Clone, Serialize)]
pub struct ArmReport {
    pub version: u64,
    pub weight: u32,
    pub control: bool,
    pub users: u64,
    pub predictions: u64,
    /// Predictions with an outcome.
    pub outcomes: u64,
    /// Users with a value of the metric (the test's units).
    pub units: u64,
    /// The metric's mean over users, with its 95 % interval.
    pub metric: Option<f64>,
    pub interval95: Option<(f64, f64)>,
    pub secondary: Option<f64>,
    pub fallback_share: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    /// Notifications: the median time from send to open.
    pub median_time_to_open_s: Option<f64>,
    /// Against the control (challengers only): the difference, its
    /// always-valid interval and p-value, and the decision so far.
    pub comparison: Option<Comparison>,
    /// Guardrails this arm trips, in words.
    pub guardrails: Vec<String>,
    #[serde(skip)]
    stats: ArmStats,
}

/// How an experiment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// One version serves: nothing to compare.
    NoExperiment,
    /// The users per arm do not follow the weights: no verdict is trusted.
    SampleRatioMismatch,
    /// A challenger trips a guardrail: roll it back.
    Guardrail,
    /// A challenger is significantly worse than the control: roll it back.
    ChallengerWorse,
    /// A challenger is significantly better: promote it.
    ChallengerWins,
    /// Not decided yet.
    Undecided,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub status: Status,
    /// The version that should serve alone, once decided.
    pub serve: Option<u64>,
    pub text: String,
}

/// The report on a model's current split.
#[derive(Debug, Clone, Serialize)]
pub struct ExperimentReport {
    pub model: &'static str,
    pub endpoint: &'static str,
    /// The split as the log labels it (`3=90,4=10`).
    pub split: String,
    pub since: Option<DateTime<Utc>>,
    pub auto: bool,
    pub metric: MetricInfo,
    pub alpha: f64,
    pub arms: Vec<ArmReport>,
    /// The sample-ratio check's p-value (users per arm against the weights).
    pub sample_ratio_p: Option<f64>,
    pub verdict: Verdict,
}

/// The report on `model`'s split as `policy` states it (None: one version
/// serves), from the sums the store computes.
pub async fn report(
    store: &dyn ExperimentStore,
    model: ModelKind,
    policy: Option<&ServingPolicy>,
    settings: &ExperimentSettings,
) -> Result<ExperimentReport, DataError> {
    let metric = metric_of(model);
    let endpoint = endpoint_of(model);
    let routes: Vec<Route> = policy.map(|p| p.routes.clone()).unwrap_or_default();
    let split = policy.map(|p| p.label()).unwrap_or_default();
    let since = policy.and_then(|p| p.since);
    let sums = if routes.len() > 1 {
        store
            .arms(&ArmQuery {
                model: model.as_str().to_string(),
                endpoint: endpoint.to_string(),
                route: split.clone(),
                since: since.unwrap_or(DateTime::<Utc>::UNIX_EPOCH),
            })
            .await?
    } else {
        vec![]
    };
    let arms = routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let s = sums
                .iter()
                .find(|s| s.version == r.version)
                .cloned()
                .unwrap_or(ArmSums {
                    version: r.version,
                    ..Default::default()
                });
            arm(r, i == 0, &s)
        })
        .collect();
    let mut report = ExperimentReport {
        model: model.as_str(),
        endpoint,
        split,
        since,
        auto: policy.is_some_and(|p| p.auto),
        metric,
        alpha: settings.experiment_alpha,
        arms,
        sample_ratio_p: None,
        verdict: Verdict {
            status: Status::NoExperiment,
            serve: None,
            text: String::new(),
        },
    };
    judge(&mut report, settings);
    for a in &report.arms {
        crate::telemetry::experiment_arm(report.model, a.version, a.metric, a.units);
    }
    Ok(report)
}

fn arm(r: &Route, control: bool, s: &ArmSums) -> ArmReport {
    let stats = ArmStats {
        n: s.n,
        sum: s.sum,
        sum_sq: s.sum_sq,
    };
    let share = |part: u64, of: u64| (of > 0).then(|| part as f64 / of as f64);
    ArmReport {
        version: r.version,
        weight: r.weight,
        control,
        users: s.users,
        predictions: s.predictions,
        outcomes: s.outcomes,
        units: s.n,
        metric: stats.mean(),
        interval95: stats.interval95(),
        secondary: (s.secondary_n > 0).then(|| s.secondary_sum / s.secondary_n as f64),
        fallback_share: share(s.fallbacks, s.predictions),
        latency_p99_ms: s.latency_p99_us.map(|us| us / 1e3),
        median_time_to_open_s: s.median_delay_ms.map(|ms| ms / 1e3),
        comparison: None,
        guardrails: vec![],
        stats,
    }
}

/// Compare, check and decide, in that order of precedence: no experiment,
/// a broken split, a guardrail, a significantly worse challenger, a winner,
/// undecided.
fn judge(r: &mut ExperimentReport, s: &ExperimentSettings) {
    let fmt = |x: f64| format!("{x:.4}");
    if r.arms.len() < 2 {
        r.verdict = Verdict {
            status: Status::NoExperiment,
            serve: r.arms.first().map(|a| a.version),
            text: match r.arms.first() {
                Some(a) => format!(
                    "no experiment: v{} serves alone (start one with `models split`)",
                    a.version
                ),
                None => "no experiment: no serving.json pins the model's versions".into(),
            },
        };
        return;
    }
    // The challengers share alpha (Bonferroni), so a split with several
    // keeps the overall false-positive rate.
    let alpha = s.experiment_alpha / (r.arms.len() - 1) as f64;
    let control = r.arms[0].clone();
    let test = Msprt::new(alpha, Msprt::tau_for(&control.stats));
    for a in r.arms.iter_mut().skip(1) {
        a.comparison = test.compare(&control.stats, &a.stats);
        if a.predictions >= GUARDRAIL_MIN_PREDICTIONS
            && control.predictions >= GUARDRAIL_MIN_PREDICTIONS
        {
            if let (Some(fa), Some(fc)) = (a.fallback_share, control.fallback_share) {
                if fa - fc > s.experiment_max_fallback_increase {
                    a.guardrails.push(format!(
                        "fallback share {:.1} % against the control's {:.1} % (at most +{:.1} points)",
                        fa * 100.0,
                        fc * 100.0,
                        s.experiment_max_fallback_increase * 100.0
                    ));
                }
            }
            if let (Some(la), Some(lc)) = (a.latency_p99_ms, control.latency_p99_ms) {
                if lc > 0.0 && la / lc > s.experiment_max_p99_ratio {
                    a.guardrails.push(format!(
                        "p99 latency {la:.2} ms against the control's {lc:.2} ms (at most {}×)",
                        s.experiment_max_p99_ratio
                    ));
                }
            }
        }
    }
    let users: Vec<u64> = r.arms.iter().map(|a| a.users).collect();
    let weights: Vec<f64> = r.arms.iter().map(|a| f64::from(a.weight)).collect();
    r.sample_ratio_p = sample_ratio_p(&users, &weights);
    let control_v = control.version;
    if let Some(p) = r.sample_ratio_p.filter(|p| *p < SRM_P) {
        r.verdict = Verdict {
            status: Status::SampleRatioMismatch,
            serve: None,
            text: format!(
                "sample ratio mismatch: users per arm {users:?} do not follow the weights {weights:?} (p = {p:.1e}); \
                 no verdict until the split or the log is fixed"
            ),
        };
        return;
    }
    if let Some(a) = r.arms.iter().find(|a| !a.guardrails.is_empty()) {
        r.verdict = Verdict {
            status: Status::Guardrail,
            serve: Some(control_v),
            text: format!(
                "v{} trips a guardrail ({}): roll back to v{control_v}",
                a.version,
                a.guardrails.join("; ")
            ),
        };
        return;
    }
    let higher = r.metric.higher_is_better;
    let better = |c: &Comparison| {
        matches!(
            (c.decision, higher),
            (Decision::Higher, true) | (Decision::Lower, false)
        )
    };
    let worse = |c: &Comparison| {
        matches!(
            (c.decision, higher),
            (Decision::Lower, true) | (Decision::Higher, false)
        )
    };
    let name = r.metric.name;
    let describe = |a: &ArmReport, c: &Comparison| {
        format!(
            "{name} {} against {} (difference {}, {:.0} % always-valid interval [{}, {}], p = {:.4})",
            a.metric.map(fmt).unwrap_or_default(),
            control.metric.map(fmt).unwrap_or_default(),
            fmt(c.difference),
            (1.0 - alpha) * 100.0,
            fmt(c.interval.0),
            fmt(c.interval.1),
            c.p_value
        )
    };
    if let Some((a, c)) = r
        .arms
        .iter()
        .filter_map(|a| a.comparison.map(|c| (a, c)))
        .find(|(_, c)| worse(c))
    {
        r.verdict = Verdict {
            status: Status::ChallengerWorse,
            serve: Some(control_v),
            text: format!(
                "v{} is worse than v{control_v}: {}; roll back to v{control_v}",
                a.version,
                describe(a, &c)
            ),
        };
        return;
    }
    let winner = r
        .arms
        .iter()
        .filter_map(|a| a.comparison.map(|c| (a, c)))
        .filter(|(_, c)| better(c))
        .max_by(|(_, x), (_, y)| {
            let (x, y) = if higher {
                (x.difference, y.difference)
            } else {
                (-x.difference, -y.difference)
            };
            x.total_cmp(&y)
        });
    if let Some((a, c)) = winner {
        let enough = a.units >= s.experiment_min_users && control.units >= s.experiment_min_users;
        r.verdict = Verdict {
            status: Status::ChallengerWins,
            serve: Some(a.version),
            text: format!(
                "v{} beats v{control_v}: {}; promote v{}{}",
                a.version,
                describe(a, &c),
                a.version,
                if enough {
                    String::new()
                } else {
                    format!(
                        " (automatic promotion waits for {} users with outcomes per arm)",
                        s.experiment_min_users
                    )
                }
            ),
        };
        return;
    }
    let needed = r
        .arms
        .iter()
        .filter_map(|a| a.comparison.and_then(|c| c.more_units_needed))
        .max();
    let units: u64 = r.arms.iter().map(|a| a.units).sum();
    r.verdict = Verdict {
        status: Status::Undecided,
        serve: None,
        text: match needed {
            _ if units == 0 => "undecided: no outcomes yet".to_string(),
            Some(n) => format!(
                "undecided after {units} users with outcomes: about {n} more are needed if the observed difference holds"
            ),
            None => format!(
                "undecided after {units} users with outcomes: no difference observed so far"
            ),
        },
    };
}

/// The report on `model` now: its serving.json from the repository.
pub async fn report_now(
    store: &dyn ExperimentStore,
    repo: &ModelRepository,
    model: ModelKind,
    settings: &ExperimentSettings,
) -> anyhow::Result<ExperimentReport> {
    use anyhow::Context;
    let policy = repo
        .serving(model)
        .await
        .with_context(|| format!("reading {model}/serving.json"))?;
    Ok(report(store, model, policy.as_ref(), settings).await?)
}

/// Join outcomes for every prediction that can still gain one, as of now.
pub async fn join_now(
    store: &dyn ExperimentStore,
    settings: &ExperimentSettings,
) -> Result<Joined, DataError> {
    let w = settings.windows();
    let now = Utc::now();
    // A day beyond the longest window, so predictions whose window closed
    // since the last run are settled (idempotent: nothing is counted twice).
    let from = now - w.longest() - chrono::Duration::days(1);
    let joined = store.join(from, now, now, &w).await?;
    crate::telemetry::outcomes_joined("match", joined.matches);
    crate::telemetry::outcomes_joined("recommend", joined.recommendations);
    crate::telemetry::outcomes_joined("notify", joined.notifications);
    Ok(joined)
}

/// This process, as a lease holder.
fn holder() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()))
}

/// Join outcomes every `interval`, on whichever replica holds the lease.
pub async fn join_periodically(
    store: Arc<dyn ExperimentStore>,
    settings: ExperimentSettings,
    interval: Duration,
) {
    let ttl = chrono::Duration::from_std(interval * 2).unwrap_or(chrono::Duration::hours(1));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match store.lease("outcome-join", holder(), ttl).await {
            Ok(true) => match join_now(&*store, &settings).await {
                Ok(j) if j.total() > 0 => {
                    tracing::info!(
                        matches = j.matches,
                        recommendations = j.recommendations,
                        notifications = j.notifications,
                        "outcomes joined"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "outcome join failed; retried next interval"),
            },
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "outcome join: the lease could not be read"),
        }
    }
}

/// Decide `model`'s experiment if its split asked for it (`--auto`) and the
/// report decides: promote a winner; roll back to the control on a loser or
/// a guardrail. Returns the decision taken.
pub async fn decide(
    store: &dyn ExperimentStore,
    repo: &ModelRepository,
    model: ModelKind,
    settings: &ExperimentSettings,
) -> anyhow::Result<Option<AutoDecision>> {
    let Some(mut policy) = repo.serving(model).await? else {
        return Ok(None);
    };
    if !policy.auto || policy.routes.len() < 2 {
        return Ok(None);
    }
    let r = report(store, model, Some(&policy), settings).await?;
    let action = match r.verdict.status {
        Status::ChallengerWins => {
            let units_ok = r
                .arms
                .iter()
                .all(|a| a.units >= settings.experiment_min_users);
            if !units_ok {
                return Ok(None);
            }
            "promoted"
        }
        Status::ChallengerWorse | Status::Guardrail => "rolled_back",
        _ => return Ok(None),
    };
    let Some(serve) = r.verdict.serve else {
        return Ok(None);
    };
    let decision = AutoDecision {
        at: Utc::now(),
        split: r.split.clone(),
        action: action.into(),
        serving: serve,
        reason: r.verdict.text.clone(),
        evidence: serde_json::to_value(&r)?,
    };
    policy.serve_routes(
        vec![Route {
            version: serve,
            weight: 100,
        }],
        decision.at,
    );
    policy.decisions.push(decision.clone());
    if policy.decisions.len() > ml_backend::repository::HISTORY {
        policy.decisions.remove(0);
    }
    repo.set_serving(model, &policy).await?;
    tracing::warn!(model = %model, action, serving = serve, reason = %decision.reason, "experiment decided automatically");
    Ok(Some(decision))
}

/// Decide `--auto` splits every `interval`, on whichever replica holds the
/// lease; a decision is picked up by every replica's model poll (and this
/// one's at once).
pub async fn decide_periodically(
    store: Arc<dyn ExperimentStore>,
    models: Arc<crate::lifecycle::Registry>,
    settings: ExperimentSettings,
    interval: Duration,
) {
    let ttl = chrono::Duration::from_std(interval * 3).unwrap_or(chrono::Duration::hours(1));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match store.lease("experiment-auto", holder(), ttl).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "automatic experiments: the lease could not be read");
                continue;
            }
        }
        let mut changed = false;
        for model in ModelKind::ALL {
            match decide(&*store, models.repository(), model, &settings).await {
                Ok(Some(_)) => changed = true,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(model = %model, error = %e, "automatic experiment decision failed")
                }
            }
        }
        if changed {
            models.reload(false).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn settings() -> ExperimentSettings {
        #[derive(Parser)]
        struct S {
            #[command(flatten)]
            e: ExperimentSettings,
        }
        S::parse_from(["test"]).e
    }

    /// An arm of `users` users whose per-user metric has mean `m` and
    /// standard deviation `sd`, `fallback` of its predictions fallbacks.
    fn sums(version: u64, users: u64, m: f64, sd: f64, fallback: f64) -> ArmSums {
        let n = users as f64;
        ArmSums {
            version,
            users,
            predictions: users * 2,
            outcomes: users * 2,
            fallbacks: (fallback * n * 2.0) as u64,
            n: users,
            sum: n * m,
            sum_sq: n * (sd * sd + m * m),
            latency_p99_us: Some(2_000.0),
            ..Default::default()
        }
    }

    /// The verdict on a 50/50 match split (log-loss: lower is better).
    fn verdict(arms: &[ArmSums]) -> Verdict {
        let routes: Vec<Route> = arms
            .iter()
            .map(|a| Route {
                version: a.version,
                weight: 50,
            })
            .collect();
        let mut r = ExperimentReport {
            model: "travel_match",
            endpoint: "match",
            split: String::new(),
            since: None,
            auto: true,
            metric: metric_of(ModelKind::TravelMatch),
            alpha: 0.05,
            arms: routes
                .iter()
                .zip(arms)
                .enumerate()
                .map(|(i, (r, s))| arm(r, i == 0, s))
                .collect(),
            sample_ratio_p: None,
            verdict: Verdict {
                status: Status::NoExperiment,
                serve: None,
                text: String::new(),
            },
        };
        judge(&mut r, &settings());
        r.verdict
    }

    #[test]
    fn the_verdict_follows_the_evidence_in_order_of_precedence() {
        let v = verdict(&[sums(1, 500, 0.6, 0.3, 0.0)]);
        assert_eq!((v.status, v.serve), (Status::NoExperiment, Some(1)));

        // A clearly lower log-loss wins; a clearly higher one loses.
        let v = verdict(&[sums(1, 1000, 0.60, 0.3, 0.0), sums(2, 1000, 0.50, 0.3, 0.0)]);
        assert_eq!(
            (v.status, v.serve),
            (Status::ChallengerWins, Some(2)),
            "{}",
            v.text
        );
        let v = verdict(&[sums(1, 1000, 0.60, 0.3, 0.0), sums(2, 1000, 0.70, 0.3, 0.0)]);
        assert_eq!(
            (v.status, v.serve),
            (Status::ChallengerWorse, Some(1)),
            "{}",
            v.text
        );
        assert!(v.text.contains("roll back to v1"), "{}", v.text);

        // A tiny difference: undecided, with the users still needed.
        let v = verdict(&[sums(1, 300, 0.600, 0.3, 0.0), sums(2, 300, 0.605, 0.3, 0.0)]);
        assert_eq!((v.status, v.serve), (Status::Undecided, None));
        assert!(v.text.contains("more are needed"), "{}", v.text);

        // A winner that trips a guardrail is rolled back all the same.
        let v = verdict(&[
            sums(1, 1000, 0.60, 0.3, 0.0),
            sums(2, 1000, 0.50, 0.3, 0.10),
        ]);
        assert_eq!(
            (v.status, v.serve),
            (Status::Guardrail, Some(1)),
            "{}",
            v.text
        );
        assert!(v.text.contains("fallback share"), "{}", v.text);

        // Users that do not follow the weights: no verdict at all, even a
        // guardrail's.
        let v = verdict(&[sums(1, 1000, 0.60, 0.3, 0.0), sums(2, 700, 0.50, 0.3, 0.10)]);
        assert_eq!(
            (v.status, v.serve),
            (Status::SampleRatioMismatch, None),
            "{}",
            v.text
        );
    }
}
