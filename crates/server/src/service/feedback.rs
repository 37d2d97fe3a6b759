//! `POST /feedback`: an outcome the app reports for one of its answers,
//! checked against what the prediction log holds for that id (the
//! endpoint it came from, the destinations it recommended) and recorded
//! beside it. A repeat changes nothing; a report wins over an outcome the
//! join found in the app's tables.

use super::Predictor;
use crate::api::{FeedbackRequest, FeedbackResponse};
use crate::error::ServiceError;
use chrono::{DateTime, Utc};
use ml_core::experiment::OutcomeKind;
use ml_data::Outcome;
use std::time::Duration;

/// A prediction answered this recently may still wait in the log's queue:
/// its lookup is retried for up to [`FRESH_WAIT`].
const FRESH: chrono::Duration = chrono::Duration::seconds(5);
const FRESH_WAIT: Duration = Duration::from_secs(1);
/// Clocks differ: an outcome this far in the future is still accepted.
const CLOCK_SKEW: chrono::Duration = chrono::Duration::minutes(5);

impl Predictor {
    /// Record an outcome the app reports for one of its answers.
    pub async fn feedback(&self, req: &FeedbackRequest) -> Result<FeedbackResponse, ServiceError> {
        req.validate()?;
        let (Some(log), Some(outcomes)) = (self.log.store(), self.log.experiments()) else {
            return Err(ServiceError::LogOff);
        };
        let id = req.prediction_id;
        let minted = id
            .get_timestamp()
            .map(|t| t.to_unix())
            .and_then(|(s, n)| DateTime::<Utc>::from_timestamp(s as i64, n));
        let now = Utc::now();
        let mut waited = Duration::ZERO;
        let p = loop {
            if let Some(p) = log.get(id).await? {
                break p;
            }
            let fresh = minted.is_some_and(|t| now - t < FRESH);
            if !fresh || waited >= FRESH_WAIT {
                return Err(ServiceError::UnknownPrediction { id });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            waited += Duration::from_millis(100);
        };
        let kind = req.outcome;
        if kind.endpoint() != p.endpoint {
            let expected: Vec<&str> = OutcomeKind::of_endpoint(&p.endpoint)
                .into_iter()
                .map(OutcomeKind::as_str)
                .collect();
            return Err(ServiceError::invalid(
                "outcome",
                format!(
                    "{} is not an outcome of a {} prediction: expected one of {}",
                    kind.as_str(),
                    p.endpoint,
                    expected.join(", ")
                ),
            ));
        }
        let at = req.occurred_at.unwrap_or(now);
        if at < p.at - chrono::Duration::seconds(1) {
            return Err(ServiceError::invalid(
                "occurred_at",
                format!("{at} is before the prediction ({})", p.at),
            ));
        }
        if at > now + CLOCK_SKEW {
            return Err(ServiceError::invalid(
                "occurred_at",
                format!("{at} is in the future"),
            ));
        }
        let (item, position) = match (&req.destination, p.endpoint.as_ref()) {
            (Some(name), "recommend") => {
                let items = recommended(&p.decision);
                match items
                    .iter()
                    .position(|d| d.eq_ignore_ascii_case(name.trim()))
                {
                    Some(i) => (items[i].clone(), Some(i as u32 + 1)),
                    None => {
                        return Err(ServiceError::invalid(
                            "destination",
                            format!(
                                "{name:?} is not among this prediction's recommendations ({})",
                                items.join(", ")
                            ),
                        ))
                    }
                }
            }
            (None, "recommend") => {
                return Err(ServiceError::invalid(
                    "destination",
                    "required for a recommendation's outcome: which recommended destination",
                ))
            }
            (Some(_), endpoint) => {
                return Err(ServiceError::invalid(
                    "destination",
                    format!("only a recommendation's outcome names a destination, not a {endpoint} prediction's"),
                ))
            }
            (None, _) => (String::new(), None),
        };
        let recorded = outcomes
            .feedback(Outcome {
                prediction_id: id,
                item,
                source: "feedback".into(),
                kind,
                value: kind.value(),
                position,
                delay_ms: Some((at - p.at).num_milliseconds().max(0)),
                at,
            })
            .await?;
        crate::telemetry::outcome_feedback(if recorded { "recorded" } else { "repeat" });
        Ok(FeedbackResponse {
            prediction_id: id,
            outcome: kind,
            recorded,
        })
    }
}

/// The destinations a logged recommendation named, in order.
fn recommended(decision: &str) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct D {
        items: Vec<(String, f32)>,
    }
    serde_json::from_str::<D>(decision)
        .map(|d| d.items.into_iter().map(|(n, _)| n).collect())
        .unwrap_or_default()
}
