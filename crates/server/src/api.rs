//! The HTTP API's request and response bodies (exactly the spec's shapes), their
//! validation, and their OpenAPI schemas.

use crate::error::ServiceError;
use ml_core::types::{Budget, Channel, NotificationType, TripDuration, Urgency};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Longest accepted string field (destination names, interests, dates).
pub const MAX_STRING: usize = 200;
/// Most interests accepted in a match context.
pub const MAX_INTERESTS: usize = 50;
/// Allowed range of `limit`.
pub const LIMIT_RANGE: std::ops::RangeInclusive<u32> = 1..=100;

/// `POST /match/score` request.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchRequest {
    pub user_a_id: Uuid,
    pub user_b_id: Uuid,
    #[serde(default)]
    pub context: Option<MatchContextBody>,
}

/// Optional context of a match request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchContextBody {
    /// A destination name, e.g. "Paris" (matched case-insensitively against the catalogue).
    pub destination: Option<String>,
    /// A date `YYYY-MM-DD`, or a range `YYYY-MM-DD/YYYY-MM-DD`.
    pub dates: Option<String>,
    /// Interests the trip is about, e.g. ["art", "food"].
    pub interests: Option<Vec<String>>,
}

fn check_len(field: &str, s: &str) -> Result<(), ServiceError> {
    if s.chars().count() > MAX_STRING {
        return Err(ServiceError::invalid(
            field,
            format!("longer than {MAX_STRING} characters"),
        ));
    }
    Ok(())
}

fn parse_date(field: &str, s: &str) -> Result<chrono::NaiveDate, ServiceError> {
    chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .map_err(|_| ServiceError::invalid(field, format!("{s:?} is not a date YYYY-MM-DD")))
}

impl MatchRequest {
    pub fn validate(&self) -> Result<(), ServiceError> {
        if self.user_a_id == self.user_b_id {
            return Err(ServiceError::invalid(
                "user_b_id",
                "must differ from user_a_id",
            ));
        }
        let Some(c) = &self.context else {
            return Ok(());
        };
        if let Some(d) = &c.destination {
            check_len("context.destination", d)?;
        }
        if let Some(d) = &c.dates {
            check_len("context.dates", d)?;
            match d.split_once('/') {
                Some((a, b)) => {
                    let (a, b) = (
                        parse_date("context.dates", a)?,
                        parse_date("context.dates", b)?,
                    );
                    if b < a {
                        return Err(ServiceError::invalid(
                            "context.dates",
                            "range ends before it starts",
                        ));
                    }
                }
                None => {
                    parse_date("context.dates", d)?;
                }
            }
        }
        if let Some(i) = &c.interests {
            if i.len() > MAX_INTERESTS {
                return Err(ServiceError::invalid(
                    "context.interests",
                    format!("more than {MAX_INTERESTS} items"),
                ));
            }
            for (k, s) in i.iter().enumerate() {
                check_len(&format!("context.interests[{k}]"), s)?;
            }
        }
        Ok(())
    }
}

/// Per-group compatibility, each a calibrated probability from that group's features alone.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MatchFactors {
    pub interest_overlap: f32,
    pub travel_style: f32,
    pub personality: f32,
}

/// `POST /match/score` response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MatchResponse {
    /// Calibrated probability that the two travel well together.
    pub score: f32,
    /// Expected accuracy of the call, discounted for missing data.
    pub confidence: f32,
    pub factors: MatchFactors,
    /// Time spent in the server, in milliseconds.
    pub latency_ms: f64,
    /// Present (true) only when the model could not answer (error or
    /// timeout) and this answer is a cached one of another version or the
    /// documented default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fallback: bool,
}

/// `POST /recommend/destinations` request.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecommendRequest {
    pub user_id: Uuid,
    /// How many recommendations, 1..=100 (default 10).
    #[serde(default = "default_limit", deserialize_with = "whole_number")]
    #[schema(minimum = 1, maximum = 100, default = 10)]
    pub limit: u32,
    #[serde(default)]
    pub filters: Option<RecommendFilters>,
}

fn default_limit() -> u32 {
    10
}

/// A JSON integer, also when written with a zero fraction (`10.0`), as JSON
/// Schema's `integer` allows. Values beyond u32 saturate, so range checks
/// report them; negative and fractional numbers are refused.
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    use serde::de::Error as _;
    let n = serde_json::Number::deserialize(d)?;
    if let Some(u) = n.as_u64() {
        return Ok(u32::try_from(u).unwrap_or(u32::MAX));
    }
    match n.as_f64() {
        Some(f) if f >= 0.0 && f.fract() == 0.0 => Ok(if f > u32::MAX as f64 {
            u32::MAX
        } else {
            f as u32
        }),
        _ => Err(D::Error::custom(format!(
            "expected a whole number ≥ 1, got {n}"
        ))),
    }
}

/// Filters: a budget admits places at or below it; a duration admits places
/// with that typical trip length.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecommendFilters {
    pub budget: Option<Budget>,
    pub duration: Option<TripDuration>,
}

impl RecommendRequest {
    pub fn validate(&self) -> Result<(), ServiceError> {
        if !LIMIT_RANGE.contains(&self.limit) {
            return Err(ServiceError::invalid(
                "limit",
                format!(
                    "must be between {} and {}",
                    LIMIT_RANGE.start(),
                    LIMIT_RANGE.end()
                ),
            ));
        }
        Ok(())
    }
}

/// One recommended destination.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Recommendation {
    pub destination: String,
    /// Probability the user engages with the destination soon.
    pub score: f32,
    pub reason: String,
}

/// `POST /recommend/destinations` response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RecommendResponse {
    pub recommendations: Vec<Recommendation>,
    /// Present (true) only when the model could not answer (error or
    /// timeout) and this answer is a cached one of another version or the
    /// documented default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fallback: bool,
}

/// `POST /notifications/optimize` request.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyRequest {
    pub user_id: Uuid,
    pub notification_type: NotificationType,
    /// Defaults to `medium`.
    #[serde(default = "default_urgency")]
    pub urgency: Urgency,
}

fn default_urgency() -> Urgency {
    Urgency::Medium
}

/// `POST /notifications/optimize` response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NotifyResponse {
    /// RFC 3339 instant in UTC, always in the future.
    pub send_at: String,
    pub channel: Channel,
    pub confidence: f32,
    pub reason: String,
    /// Present (true) only when the model could not answer (error or
    /// timeout) and this answer is a cached one of another version or the
    /// documented default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fallback: bool,
}

/// `GET /health` response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthResponse {
    /// `healthy`, or `degraded` when a model, the data store or a configured
    /// Redis is unavailable.
    pub status: String,
    pub models_loaded: bool,
    /// The app-data store (SQLite or Postgres) answered a ping just now.
    pub database_connected: bool,
    pub redis_connected: bool,
    pub gpu_available: bool,
}

/// Round to four decimals for readable JSON.
pub fn round4(x: f32) -> f32 {
    (x * 10_000.0).round() / 10_000.0
}
