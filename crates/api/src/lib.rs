//! The API's request and response bodies (exactly the spec's shapes), their
//! parsing with errors that name the field at fault, their validation, and
//! their OpenAPI schemas. No transport and no I/O: the server's HTTP and gRPC
//! layers, and the fuzz target `request_bodies`, use the same code.

use ml_core::types::{Budget, Channel, NotificationType, TripDuration, Urgency};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Why a request body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON at all (or not UTF-8).
    #[error("malformed JSON: {reason}")]
    MalformedJson { reason: String },
    /// A field has the wrong type, is missing, unknown, or out of range;
    /// `field` is its JSON path (`filters.budget`), or `body`.
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Most characters of a field path quoted back in an error.
pub const MAX_ECHO: usize = 200;

/// `s` cut to `n` characters, marked with `…` when cut.
fn clip(s: String, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// Parse a JSON body, naming the field at fault.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // Most bodies are valid: parse them without tracking the path, which
    // costs as much again, and only a body that fails is parsed once more to
    // name the field at fault. (The strict parse also refuses trailing
    // characters, which the second one accepts, as it always has.)
    if let Ok(v) = serde_json::from_slice(body) {
        return Ok(v);
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data if !body.trim_ascii_start().starts_with(b"{") => {
                ApiError::invalid("body", "expected a JSON object")
            }
            serde_json::error::Category::Data => {
                let msg = inner.to_string();
                // serde reports a missing field at its parent; name the field itself.
                let field = match msg
                    .strip_prefix("missing field `")
                    .and_then(|r| r.split('`').next())
                {
                    Some(f) if path == "." => f.to_string(),
                    Some(f) => format!("{path}.{f}"),
                    None if path == "." => "body".to_string(),
                    None => path,
                };
                // A key that is the empty string has an empty path: the
                // body is at fault (found by the `request_bodies` fuzz target).
                let field = if field.is_empty() {
                    "body".into()
                } else {
                    field
                };
                let reason = msg.split(" at line ").next().unwrap_or(&msg).to_string();
                // Unknown keys are named in the path and the message: never
                // echo more than a short prefix of the caller's input (found
                // by the `request_bodies` fuzz target).
                ApiError::invalid(clip(field, MAX_ECHO), clip(reason, 2 * MAX_ECHO))
            }
            _ => ApiError::MalformedJson {
                reason: inner.to_string(),
            },
        }
    })
}

/// Longest accepted string field (destination names, interests, dates).
pub const MAX_STRING: usize = 200;
/// Most interests accepted in a match context.
pub const MAX_INTERESTS: usize = 50;
/// Allowed range of `limit`.
pub const LIMIT_RANGE: std::ops::RangeInclusive<u32> = 1..=100;

/// `POST /match/score` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchRequest {
    pub user_a_id: Uuid,
    pub user_b_id: Uuid,
    #[serde(default)]
    pub context: Option<MatchContextBody>,
}

/// Optional context of a match request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchContextBody {
    /// A destination name, e.g. "Paris" (matched case-insensitively against the catalogue).
    pub destination: Option<String>,
    /// A date `YYYY-MM-DD`, or a range `YYYY-MM-DD/YYYY-MM-DD`.
    pub dates: Option<String>,
    /// Interests the trip is about, e.g. ["art", "food"].
    pub interests: Option<Vec<String>>,
}

fn check_len(field: &str, s: &str) -> Result<(), ApiError> {
    if s.chars().count() > MAX_STRING {
        return Err(ApiError::invalid(
            field,
            format!("longer than {MAX_STRING} characters"),
        ));
    }
    Ok(())
}

fn parse_date(field: &str, s: &str) -> Result<chrono::NaiveDate, ApiError> {
    chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").map_err(|_| {
        ApiError::invalid(
            field,
            format!("{:?} is not a date YYYY-MM-DD", clip(s.to_string(), 40)),
        )
    })
}

impl MatchRequest {
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.user_a_id == self.user_b_id {
            return Err(ApiError::invalid("user_b_id", "must differ from user_a_id"));
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
                        return Err(ApiError::invalid(
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
                return Err(ApiError::invalid(
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecommendFilters {
    pub budget: Option<Budget>,
    pub duration: Option<TripDuration>,
}

impl RecommendRequest {
    pub fn validate(&self) -> Result<(), ApiError> {
        if !LIMIT_RANGE.contains(&self.limit) {
            return Err(ApiError::invalid(
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
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

/// `POST /feedback` request: what happened after an answer, reported by
/// the app (the alternative to the service joining outcomes from the app's
/// tables).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    /// The answer's `x-prediction-id`.
    pub prediction_id: Uuid,
    /// A match: `matched` or `not_matched`; a recommendation: `saved`,
    /// `booked` or `visited` (with `destination`); a notification: `opened`
    /// or `not_opened`.
    pub outcome: ml_core::experiment::OutcomeKind,
    /// The recommended destination the outcome is about (recommendations
    /// only): one of the answer's destinations, by name.
    #[serde(default)]
    #[schema(max_length = 200)]
    pub destination: Option<String>,
    /// When it happened (RFC 3339); default now. Not before the prediction,
    /// not in the future.
    #[serde(default)]
    pub occurred_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl FeedbackRequest {
    pub fn validate(&self) -> Result<(), ApiError> {
        if let Some(d) = &self.destination {
            check_len("destination", d)?;
        }
        Ok(())
    }
}

/// `POST /feedback` response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FeedbackResponse {
    pub prediction_id: Uuid,
    pub outcome: ml_core::experiment::OutcomeKind,
    /// False when this exact outcome was already recorded (a repeat changes
    /// nothing).
    pub recorded: bool,
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Req {
        user_id: uuid::Uuid,
        inner: Option<Inner>,
    }
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        limit: u32,
    }

    fn field_of(body: &str) -> String {
        match parse_json::<Req>(body.as_bytes()).unwrap_err() {
            ApiError::Invalid { field, .. } => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(field_of("{}"), "user_id");
        assert_eq!(field_of(r#"{"user_id":"nope"}"#), "user_id");
        let u = uuid::Uuid::nil();
        assert_eq!(
            field_of(&format!(r#"{{"user_id":"{u}","inner":{{"limit":-1}}}}"#)),
            "inner.limit"
        );
        assert_eq!(
            field_of(&format!(r#"{{"user_id":"{u}","inner":{{}}}}"#)),
            "inner.limit"
        );
        assert_eq!(field_of("[1]"), "body");
        assert_eq!(field_of(r#"{"":1}"#), "body");
        let long = "k".repeat(5000);
        let e = parse_json::<Req>(format!(r#"{{"{long}":1}}"#).as_bytes()).unwrap_err();
        let ApiError::Invalid { field, reason } = e else {
            panic!()
        };
        assert_eq!(field.chars().count(), MAX_ECHO + 1);
        assert!(reason.chars().count() <= 2 * MAX_ECHO + 1, "{reason}");
        assert!(matches!(
            parse_json::<Req>(b"{not json"),
            Err(ApiError::MalformedJson { .. })
        ));
    }

    fn word() -> impl Strategy<Value = String> {
        "[a-zA-Z ]{0,20}"
    }

    proptest! {
        /// A request that parses and validates survives a JSON round trip
        /// unchanged, and validates again.
        #[test]
        fn valid_match_requests_round_trip(
            a in any::<u128>(), b in any::<u128>(),
            dest in proptest::option::of(word()),
            interests in proptest::option::of(proptest::collection::vec(word(), 0..60)),
            day in 1u32..28,
        ) {
            let body = serde_json::json!({
                "user_a_id": uuid::Uuid::from_u128(a), "user_b_id": uuid::Uuid::from_u128(b),
                "context": {"destination": dest, "interests": interests, "dates": format!("2026-03-{day:02}")},
            });
            let text = serde_json::to_vec(&body).unwrap();
            let r: MatchRequest = parse_json(&text).unwrap();
            if r.validate().is_ok() {
                let again: MatchRequest = parse_json(&serde_json::to_vec(&r).unwrap()).unwrap();
                prop_assert_eq!(&again, &r);
                prop_assert!(again.validate().is_ok());
            } else {
                // Only the documented refusals: the same user twice, too many interests.
                let e = r.validate().unwrap_err();
                prop_assert!(a == b || interests.as_ref().is_some_and(|i| i.len() > MAX_INTERESTS), "{e}");
            }
        }

        /// The fast parse of valid bodies changes nothing: on bodies made of
        /// the requests' own keys and values, cut, appended to, or as they
        /// are, `parse_json` accepts exactly what the path-tracking parse
        /// alone accepts, with the same value.
        #[test]
        fn the_fast_parse_agrees_with_the_path_tracking_one(
            limit in proptest::option::of(-3i64..150),
            key in proptest::sample::select(vec!["user_id", "limit", "filters", "", "user"]),
            cut in 0usize..120,
            tail in proptest::sample::select(vec!["", " ", "}", "x", "{}", "\n\t"]),
        ) {
            let mut body = serde_json::json!({"user_id": uuid::Uuid::nil()});
            if let Some(l) = limit { body[key] = serde_json::json!(l); }
            let mut text = serde_json::to_vec(&body).unwrap();
            if cut < text.len() && cut % 3 == 0 { text.truncate(cut); }
            text.extend_from_slice(tail.as_bytes());
            let de = &mut serde_json::Deserializer::from_slice(&text);
            let slow: Result<RecommendRequest, _> = serde_path_to_error::deserialize(de);
            let fast = parse_json::<RecommendRequest>(&text);
            prop_assert_eq!(fast.as_ref().ok(), slow.as_ref().ok(), "{}", String::from_utf8_lossy(&text));
        }

        /// `limit` as any JSON number: accepted exactly when it is a whole
        /// number in 1..=100, else refused naming `limit`.
        #[test]
        fn limit_is_checked_whatever_the_number(n in any::<f64>()) {
            let Some(num) = serde_json::Number::from_f64(n) else { return Ok(()); };
            let body = serde_json::json!({"user_id": uuid::Uuid::nil(), "limit": num});
            let parsed = parse_json::<RecommendRequest>(&serde_json::to_vec(&body).unwrap())
                .and_then(|r| r.validate().map(|()| r));
            let whole = n.fract() == 0.0 && (1.0..=100.0).contains(&n);
            match parsed {
                Ok(r) => { prop_assert!(whole, "{n}"); prop_assert_eq!(f64::from(r.limit), n); }
                Err(ApiError::Invalid { field, .. }) => { prop_assert!(!whole, "{n}"); prop_assert_eq!(field, "limit"); }
                Err(e) => prop_assert!(false, "{e}"),
            }
        }
    }
}
