//! `POST /recommend/destinations`: destinations for a user. The model scores
//! every catalogue column from the user's history and profile; rows without
//! each signal measure its share of every score, which names the reason
//! (`ml_core::recommend`). For an affine model (the trained one) its effects
//! table gives the empty row's answer and each history place's share, so
//! three rows run instead of four plus one per history destination.

use super::endpoint::{Call, Endpoint};
use super::Predictor;
use crate::api::{round4, RecommendRequest, RecommendResponse, Recommendation};
use crate::error::ServiceError;
use crate::lifecycle::ServedModel;
use ml_core::features::UserFeatures;
use ml_core::inputs::rec_attribution_rows;
use ml_core::model::ModelKind;
use ml_core::post;
use ml_core::recommend::{candidates, reason, SignalShares};
use ml_core::topk::top_k_of;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

pub(super) struct Recommend;

/// The user and the model columns of the history places measured.
pub(super) struct Rows {
    user: Arc<UserFeatures>,
    history: Vec<usize>,
}

impl Endpoint<1> for Recommend {
    type Request = RecommendRequest;
    type Response = RecommendResponse;
    type Prepared = Rows;
    const NAME: &'static str = "recommend";
    const MODEL: ModelKind = ModelKind::Recommendation;

    fn validate(req: &RecommendRequest) -> Result<(), ServiceError> {
        Ok(req.validate()?)
    }

    fn users(req: &RecommendRequest) -> [(&'static str, Uuid); 1] {
        [("user_id", req.user_id)]
    }

    /// The most popular destinations within the filters (the user's history
    /// unknown).
    fn without_data(p: &Predictor, call: &Call<RecommendRequest>) -> RecommendResponse {
        popular(p, &call.m, call.req, None)
    }

    async fn prepare(
        p: &Predictor,
        call: &Call<'_, RecommendRequest>,
        [user]: [Arc<UserFeatures>; 1],
    ) -> Result<(Rows, Vec<f32>, usize), ServiceError> {
        let m = &call.m;
        let affine = effects(p, m).is_some();
        let (rows, history) = rec_attribution_rows(
            &user,
            &m.rec_columns,
            m.meta.params.interest_space(),
            !affine,
        );
        let n_rows = if affine { 3 } else { 4 + history.len() };
        Ok((Rows { user, history }, rows, n_rows))
    }

    /// The most popular destinations the user has not been to, within the
    /// filters.
    fn without_model(
        p: &Predictor,
        call: &Call<RecommendRequest>,
        rows: &Rows,
    ) -> RecommendResponse {
        popular(p, &call.m, call.req, Some(&rows.user))
    }

    /// The destinations in order, each with its score: `{"items": [[id, score], …]}`.
    fn decision(body: &RecommendResponse) -> (Option<f32>, String) {
        let items: Vec<(&str, f32)> = body
            .recommendations
            .iter()
            .map(|r| (r.destination.as_str(), r.score))
            .collect();
        #[derive(serde::Serialize)]
        struct D<'a> {
            items: Vec<(&'a str, f32)>,
        }
        (
            body.recommendations.first().map(|r| r.score),
            serde_json::to_string(&D { items }).unwrap_or_default(),
        )
    }

    fn answer(
        p: &Predictor,
        call: &Call<RecommendRequest>,
        Rows { user: u, history }: Rows,
        mut out: Vec<Vec<f32>>,
    ) -> (RecommendResponse, Duration) {
        let (m, req) = (&call.m, call.req);
        let rec_columns = &m.rec_columns;
        let cols = rec_columns.len();
        let effects = effects(p, m);
        let out = out.swap_remove(0);
        let row = |r: usize| &out[r * cols..(r + 1) * cols];
        let scores = row(0);
        let top = top_k_of(scores, allowed(p, m, req, Some(&u)), req.limit as usize);
        let recommendations = top
            .into_iter()
            .map(|c| {
                let c = c as usize;
                let d = rec_columns[c].unwrap_or_default();
                let shares = SignalShares {
                    interests: row(0)[c] - row(1)[c],
                    history: row(0)[c] - row(2)[c],
                    // An affine model's answer on the empty row is known
                    // from load (its effects' base), so that row is not run.
                    popularity: match effects {
                        Some(e) => e.base[c],
                        None => row(3)[c],
                    },
                };
                // Each history place's share: its effect, else the score
                // less the score without it.
                let on_c = effects.map(|e| e.on(c));
                let history_shares = history.iter().enumerate().map(|(k, &h)| {
                    let share = match on_c {
                        Some(e) => e[h],
                        None => row(0)[c] - row(4 + k)[c],
                    };
                    (share, h)
                });
                Recommendation {
                    destination: p.catalogue.destinations[d].name.clone(),
                    score: round4(scores[c]),
                    reason: reason(&p.catalogue, &u, rec_columns, d, shares, history_shares),
                }
            })
            .collect();
        let body = RecommendResponse {
            recommendations,
            fallback: false,
        };
        (body, p.caches.ttl())
    }
}

/// The effects table the reasons read, when the model is affine and
/// REC_LINEAR_ATTRIBUTION allows it (else each share has its own row).
fn effects<'a>(p: &Predictor, m: &'a ServedModel) -> Option<&'a ml_backend::linear::Effects> {
    m.effects.as_ref().filter(|_| p.linear_attribution)
}

/// The model columns `req` may get (`ml_core::recommend::candidates`).
fn allowed<'a>(
    p: &'a Predictor,
    m: &'a ServedModel,
    req: &RecommendRequest,
    user: Option<&UserFeatures>,
) -> impl Iterator<Item = u32> + 'a {
    let (budget, duration) = req
        .filters
        .as_ref()
        .map_or((None, None), |f| (f.budget, f.duration));
    candidates(
        &p.catalogue,
        &m.rec_columns,
        user.map(|u| u.consumed.as_slice()),
        budget,
        duration,
    )
}

/// The documented recommendation fallback: the most popular candidates
/// (`params.destination_popularity` of the version), marked.
fn popular(
    p: &Predictor,
    m: &ServedModel,
    req: &RecommendRequest,
    user: Option<&UserFeatures>,
) -> RecommendResponse {
    let popularity = m.meta.params.destination_popularity.as_deref();
    let scores: Vec<f32> = (0..m.rec_columns.len())
        .map(|c| popularity.and_then(|p| p.get(c).copied()).unwrap_or(0.0))
        .collect();
    let top = top_k_of(&scores, allowed(p, m, req, user), req.limit as usize);
    RecommendResponse {
        recommendations: top
            .into_iter()
            .filter_map(|c| m.rec_columns[c as usize])
            .map(|d| Recommendation {
                destination: p.catalogue.destinations[d].name.clone(),
                score: 0.0,
                reason: post::recommendation_reason(&post::RecDriver::Popularity),
            })
            .collect(),
        fallback: true,
    }
}
