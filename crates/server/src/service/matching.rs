//! `POST /match/score`: two users' compatibility. One model row of the pair's
//! features in the request's context; the answer is the calibrated score,
//! its confidence (discounted by how complete both users' data is) and the
//! three factor heads.

use super::endpoint::{Call, Endpoint};
use super::Predictor;
use crate::api::{round4, MatchFactors, MatchRequest, MatchResponse};
use crate::error::ServiceError;
use ml_core::features::{self, InterestSpace, UserFeatures};
use ml_core::model::ModelKind;
use ml_core::post;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

pub(super) struct Match;

/// The pair as the model read them, and their feature row.
pub(super) struct Pair {
    a: Arc<UserFeatures>,
    b: Arc<UserFeatures>,
    x: [f32; features::MATCH_ROW],
}

impl Endpoint<2> for Match {
    type Request = MatchRequest;
    type Response = MatchResponse;
    type Prepared = Pair;
    const NAME: &'static str = "match";
    const MODEL: ModelKind = ModelKind::TravelMatch;

    fn validate(req: &MatchRequest) -> Result<(), ServiceError> {
        Ok(req.validate()?)
    }

    fn users(req: &MatchRequest) -> [(&'static str, Uuid); 2] {
        [("user_a_id", req.user_a_id), ("user_b_id", req.user_b_id)]
    }

    /// "No information": 0.5, confidence 0.
    fn without_data(_: &Predictor, _: &Call<MatchRequest>) -> MatchResponse {
        MatchResponse {
            score: 0.5,
            confidence: 0.0,
            factors: MatchFactors {
                interest_overlap: 0.5,
                travel_style: 0.5,
                personality: 0.5,
            },
            latency_ms: 0.0,
            fallback: true,
        }
    }

    async fn prepare(
        p: &Predictor,
        call: &Call<'_, MatchRequest>,
        [a, b]: [Arc<UserFeatures>; 2],
    ) -> Result<(Pair, Vec<f32>, usize), ServiceError> {
        let ctx = call.req.context.clone().unwrap_or_default();
        let interests = ctx.interests.as_deref().unwrap_or(&[]);
        let mut ctx = post::match_context(&p.catalogue, ctx.destination.as_deref(), interests);
        let (a, b) = if call.m.meta.params.interest_space() == InterestSpace::Semantic {
            ctx.semantic_interests = p.interests.profile(interests).await.unwrap_or(None);
            (a, b)
        } else {
            // A model trained on exact names reads exact names, even where
            // the cached features carry the interests' meaning.
            (Predictor::exact_names(a), Predictor::exact_names(b))
        };
        // A model with the free-text view weighs shared interests by its
        // own rarity table.
        ctx.rarity = call.m.meta.params.interest_rarity.clone();
        let x = features::match_features(&a, &b, &ctx);
        let row = call.m.meta.params.match_layout().select(&x);
        Ok((Pair { a, b, x }, row, 1))
    }

    /// The documented default: the features' own similarity as the score.
    fn without_model(_: &Predictor, _: &Call<MatchRequest>, pair: &Pair) -> MatchResponse {
        let f = post::match_fallback(&pair.x);
        MatchResponse {
            score: round4(f.score),
            confidence: 0.0,
            factors: MatchFactors {
                interest_overlap: round4(f.interest_overlap),
                travel_style: round4(f.travel_style),
                personality: round4(f.personality),
            },
            latency_ms: 0.0,
            fallback: true,
        }
    }

    fn answer(
        p: &Predictor,
        _: &Call<MatchRequest>,
        pair: Pair,
        out: Vec<Vec<f32>>,
    ) -> (MatchResponse, Duration) {
        let score = out[0][0];
        let f = &out[1];
        let confidence = post::match_confidence(score, post::match_completeness(&pair.a, &pair.b));
        let body = MatchResponse {
            score: round4(score),
            confidence: round4(confidence),
            factors: MatchFactors {
                interest_overlap: round4(f[0]),
                travel_style: round4(f[1]),
                personality: round4(f[2]),
            },
            latency_ms: 0.0,
            fallback: false,
        };
        (body, p.caches.ttl())
    }

    /// The request's own latency, on cached answers too.
    fn finish(body: &mut MatchResponse, t0: Instant) {
        body.latency_ms = (t0.elapsed().as_secs_f64() * 1e6).round() / 1e3;
    }

    /// The score, the confidence and the factors.
    fn decision(body: &MatchResponse) -> (Option<f32>, String) {
        // Serialised from the f32s themselves, so the log keeps the numbers
        // exactly as the answer wrote them.
        #[derive(serde::Serialize)]
        struct D<'a> {
            score: f32,
            confidence: f32,
            factors: &'a MatchFactors,
        }
        let d = D {
            score: body.score,
            confidence: body.confidence,
            factors: &body.factors,
        };
        (
            Some(body.score),
            serde_json::to_string(&d).unwrap_or_default(),
        )
    }
}
