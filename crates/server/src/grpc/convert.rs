//! Conversions between the gRPC messages and the API's own types: each
//! domain request becomes the HTTP API's request struct (so the same
//! validation follows, with the same field names in errors), and the Open
//! Inference Protocol's tensors become the transport-free `v2` ones.

use super::pb::inference as oip;
use super::pb::mlservice as ml;
use crate::api::{
    FeedbackRequest, MatchContextBody, MatchRequest, NotifyRequest, RecommendFilters,
    RecommendRequest,
};
use crate::error::ServiceError;
use crate::v2;
use ml_core::types::{Budget, NotificationType, TripDuration, Urgency};

fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

fn uuid(field: &str, s: &str) -> Result<uuid::Uuid, ServiceError> {
    s.parse()
        .map_err(|_| ServiceError::invalid(field, format!("{:?} is not a UUID", short(s))))
}

fn one_of<T: std::str::FromStr + std::fmt::Display>(
    field: &str,
    s: &str,
    all: &[T],
) -> Result<T, ServiceError> {
    s.parse().map_err(|_| {
        let names: Vec<String> = all.iter().map(ToString::to_string).collect();
        ServiceError::invalid(
            field,
            format!(
                "unknown value {:?}, expected one of {}",
                short(s),
                names.join(", ")
            ),
        )
    })
}

/// The HTTP API's request from the gRPC one: the same struct, so the same
/// validation follows.
pub(super) fn match_request(r: ml::MatchRequest) -> Result<MatchRequest, ServiceError> {
    Ok(MatchRequest {
        user_a_id: uuid("user_a_id", &r.user_a_id)?,
        user_b_id: uuid("user_b_id", &r.user_b_id)?,
        context: r.context.map(|c| MatchContextBody {
            destination: c.destination,
            dates: c.dates,
            interests: (!c.interests.is_empty()).then_some(c.interests),
        }),
    })
}

pub(super) fn recommend_request(r: ml::RecommendRequest) -> Result<RecommendRequest, ServiceError> {
    let filters = match r.filters {
        None => None,
        Some(f) => Some(RecommendFilters {
            budget: f
                .budget
                .map(|b| one_of("filters.budget", &b, Budget::ALL))
                .transpose()?,
            duration: f
                .duration
                .map(|d| one_of("filters.duration", &d, TripDuration::ALL))
                .transpose()?,
        }),
    };
    Ok(RecommendRequest {
        user_id: uuid("user_id", &r.user_id)?,
        limit: r.limit.unwrap_or(10),
        filters,
    })
}

pub(super) fn notify_request(r: ml::NotifyRequest) -> Result<NotifyRequest, ServiceError> {
    Ok(NotifyRequest {
        user_id: uuid("user_id", &r.user_id)?,
        notification_type: one_of(
            "notification_type",
            &r.notification_type,
            NotificationType::ALL,
        )?,
        urgency: match r.urgency {
            None => Urgency::Medium,
            Some(u) => one_of("urgency", &u, Urgency::ALL)?,
        },
    })
}

pub(super) fn feedback_request(r: ml::FeedbackRequest) -> Result<FeedbackRequest, ServiceError> {
    use ml_core::experiment::OutcomeKind;
    Ok(FeedbackRequest {
        prediction_id: uuid("prediction_id", &r.prediction_id)?,
        outcome: OutcomeKind::parse(&r.outcome).ok_or_else(|| {
            let names: Vec<&str> = OutcomeKind::ALL.iter().map(|k| k.as_str()).collect();
            ServiceError::invalid(
                "outcome",
                format!(
                    "unknown value {:?}, expected one of {}",
                    short(&r.outcome),
                    names.join(", ")
                ),
            )
        })?,
        destination: r.destination,
        occurred_at: r
            .occurred_at
            .map(|t| {
                chrono::DateTime::parse_from_rfc3339(&t)
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .map_err(|_| {
                        ServiceError::invalid(
                            "occurred_at",
                            format!("{:?} is not an RFC 3339 time", short(&t)),
                        )
                    })
            })
            .transpose()?,
    })
}

pub(super) fn tensors(
    ts: Vec<v2::TensorMeta>,
) -> Vec<oip::model_metadata_response::TensorMetadata> {
    ts.into_iter()
        .map(|t| oip::model_metadata_response::TensorMetadata {
            name: t.name,
            datatype: t.datatype.into(),
            shape: t.shape,
        })
        .collect()
}

/// The inputs of a `ModelInfer` request: raw little-endian bytes (one entry
/// of `raw_input_contents` per input) or typed `fp32_contents`.
pub(super) fn infer_inputs(
    r: &mut oip::ModelInferRequest,
) -> Result<(Vec<v2::InputTensor>, bool), ServiceError> {
    let raw = !r.raw_input_contents.is_empty();
    if raw && r.raw_input_contents.len() != r.inputs.len() {
        return Err(ServiceError::invalid(
            "raw_input_contents",
            format!(
                "has {} entries for {} inputs",
                r.raw_input_contents.len(),
                r.inputs.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(r.inputs.len());
    for (i, t) in r.inputs.iter_mut().enumerate() {
        v2::check_datatype(i, &t.datatype)?;
        let data = if raw {
            let bytes = &r.raw_input_contents[i];
            if !bytes.len().is_multiple_of(4) {
                return Err(ServiceError::invalid(
                    format!("raw_input_contents[{i}]"),
                    format!(
                        "has {} bytes, not a whole number of FP32 values",
                        bytes.len()
                    ),
                ));
            }
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        } else {
            t.contents
                .take()
                .map(|c| c.fp32_contents)
                .unwrap_or_default()
        };
        out.push(v2::InputTensor {
            name: std::mem::take(&mut t.name),
            shape: std::mem::take(&mut t.shape),
            data,
        });
    }
    Ok((out, raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_convert_with_the_http_field_names() {
        let e = match_request(ml::MatchRequest {
            user_a_id: "nope".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.field().as_deref(), Some("user_a_id"));
        let e = recommend_request(ml::RecommendRequest {
            user_id: uuid::Uuid::nil().to_string(),
            limit: None,
            filters: Some(ml::RecommendFilters {
                budget: Some("cheap".into()),
                duration: None,
            }),
        })
        .unwrap_err();
        assert_eq!(e.field().as_deref(), Some("filters.budget"));
        assert!(e.to_string().contains("low, medium, high"), "{e}");
        let r = recommend_request(ml::RecommendRequest {
            user_id: uuid::Uuid::nil().to_string(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.limit, 10, "an unset limit is the HTTP API's default");
        let n = notify_request(ml::NotifyRequest {
            user_id: uuid::Uuid::nil().to_string(),
            notification_type: "reminder".into(),
            urgency: None,
        })
        .unwrap();
        assert_eq!(n.urgency, Urgency::Medium);
    }

    #[test]
    fn raw_inputs_decode_little_endian_and_check_counts() {
        let mut r = oip::ModelInferRequest {
            inputs: vec![oip::model_infer_request::InferInputTensor {
                name: "features".into(),
                datatype: "FP32".into(),
                shape: vec![1, 2],
                ..Default::default()
            }],
            raw_input_contents: vec![[1.0f32.to_le_bytes(), 2.5f32.to_le_bytes()].concat()],
            ..Default::default()
        };
        let (t, raw) = infer_inputs(&mut r.clone()).unwrap();
        assert!(raw);
        assert_eq!(t[0].data, vec![1.0, 2.5]);
        r.raw_input_contents[0].pop();
        assert!(infer_inputs(&mut r.clone()).is_err());
        r.raw_input_contents.push(vec![]);
        assert!(infer_inputs(&mut r).is_err());
    }
}
