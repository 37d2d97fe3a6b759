//! The one skeleton every prediction endpoint runs, and what an endpoint
//! supplies to it ([`Endpoint`]). The skeleton validates the request, picks
//! the model version that answers the user (the A/B route), answers from the
//! prediction cache when it can, reads the users' features, runs the model
//! within INFERENCE_TIMEOUT_MS, and writes the answer to the cache. Where the
//! users' data cannot be read or the model cannot answer, it answers with
//! another version's cached answer, else the endpoint's own fallback,
//! marked and never cached.

use super::{Marked, Predictor, Versioned};
use crate::cache::request_digest;
use crate::error::ServiceError;
use crate::lifecycle::{ServedModel, Variants};
use chrono::{DateTime, Utc};
use ml_core::features::UserFeatures;
use ml_core::model::ModelKind;
use ml_data::PredictionRecord;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// One request on its way through the skeleton: the versions serving its
/// model, the one answering it, the request, and the wall clock.
pub(super) struct Call<'a, R> {
    pub vs: Arc<Variants>,
    pub m: Arc<ServedModel>,
    pub req: &'a R,
    /// The wall clock as of the cache miss (a notification plans from it).
    pub now: DateTime<Utc>,
}

/// What an endpoint adds to the skeleton. `N` is how many users a request
/// names (a match two, the others one).
pub(super) trait Endpoint<const N: usize> {
    type Request: serde::Serialize + Sync;
    type Response: serde::Serialize + serde::de::DeserializeOwned + Marked + Send;
    /// What the endpoint keeps from making its rows to make its answer.
    type Prepared: Send + Sync;
    /// The endpoint's name in prediction-cache keys.
    const NAME: &'static str;
    const MODEL: ModelKind;

    fn validate(req: &Self::Request) -> Result<(), ServiceError>;

    /// The users the request names, each with the field that names it; the
    /// first one's id routes the request (A/B) and keys its cache entry.
    fn users(req: &Self::Request) -> [(&'static str, Uuid); N];

    /// The answer when the users' data cannot be read now.
    fn without_data(p: &Predictor, call: &Call<Self::Request>) -> Self::Response;

    /// The model's input rows (and how many) from the users' features, or
    /// why the users' data rules the request out (a notification to a user
    /// who agreed to no channel).
    fn prepare(
        p: &Predictor,
        call: &Call<Self::Request>,
        users: [Arc<UserFeatures>; N],
    ) -> impl Future<Output = Result<(Self::Prepared, Vec<f32>, usize), ServiceError>> + Send;

    /// The answer when the model failed or ran out of time.
    fn without_model(
        p: &Predictor,
        call: &Call<Self::Request>,
        prepared: &Self::Prepared,
    ) -> Self::Response;

    /// The answer from the model's outputs, and how long it may be cached.
    fn answer(
        p: &Predictor,
        call: &Call<Self::Request>,
        prepared: Self::Prepared,
        outputs: Vec<Vec<f32>>,
    ) -> (Self::Response, Duration);

    /// The last touch on every answer, cached or not (a match's latency).
    fn finish(_body: &mut Self::Response, _t0: Instant) {}

    /// What was decided, for the prediction log: the answer's headline
    /// number and the decision as JSON.
    fn decision(body: &Self::Response) -> (Option<f32>, String);
}

impl Predictor {
    /// Answer `req` with endpoint `E`: the answer gets a prediction id and,
    /// when its user is sampled, a row in the prediction log.
    pub(super) async fn predict<E: Endpoint<N>, const N: usize>(
        &self,
        req: &E::Request,
    ) -> Result<Versioned<E::Response>, ServiceError> {
        let t0 = Instant::now();
        E::validate(req)?;
        let ids = E::users(req);
        let user = ids[0].1;
        let (vs, m) = self.model(E::MODEL, user)?;
        let logged = self.log.sampled(user);
        // One digest of the request serves the cache key and the log row.
        let digest = (logged || self.caches.predictions_on()).then(|| request_digest(req));
        let split = Arc::clone(&vs.split);
        let mut v = self
            .answer::<E, N>(req, ids, vs, m, digest.as_deref(), t0)
            .await?;
        let id = Uuid::now_v7();
        v.prediction_id = Some(id);
        if logged {
            let (score, decision) = E::decision(&v.body);
            self.log.record(PredictionRecord {
                id,
                at: Utc::now(),
                endpoint: E::NAME.into(),
                model: v.model.as_str().into(),
                version: v.version,
                route: split,
                user_id: user,
                other_user_id: (N > 1).then(|| ids[N - 1].1),
                request_digest: digest.unwrap_or_default(),
                score,
                decision,
                cached: v.cached,
                fallback: v.fallback,
                latency_us: Some(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32),
            });
        }
        Ok(v)
    }

    /// The skeleton after validation and the A/B route.
    async fn answer<E: Endpoint<N>, const N: usize>(
        &self,
        req: &E::Request,
        ids: [(&'static str, Uuid); N],
        vs: Arc<Variants>,
        m: Arc<ServedModel>,
        digest: Option<&str>,
        t0: Instant,
    ) -> Result<Versioned<E::Response>, ServiceError> {
        let user = ids[0].1;
        let key = digest.and_then(|d| {
            self.caches
                .prediction_key(E::NAME, m.meta.model.as_str(), m.meta.version, user, d)
        });
        if let Some(mut body) = self.caches.prediction::<E::Response>(&key).await {
            E::finish(&mut body, t0);
            return Ok(Versioned::new(body, &m, true));
        }
        let call = Call {
            vs,
            m,
            req,
            now: Utc::now(),
        };
        let users = match self.users(ids).await {
            Ok(users) => users,
            Err(ServiceError::Data(e)) => {
                self.data_fallback(&call.m, &e);
                let mut v = self
                    .fallback(E::NAME, (&call.vs, &call.m), user, digest, || {
                        E::without_data(self, &call)
                    })
                    .await;
                E::finish(&mut v.body, t0);
                return Ok(v);
            }
            Err(e) => return Err(e),
        };
        let (prepared, rows, n_rows) = E::prepare(self, &call, users).await?;
        let Some(outputs) = self.infer(&call.vs, &call.m, rows, n_rows).await? else {
            let mut v = self
                .fallback(E::NAME, (&call.vs, &call.m), user, digest, || {
                    E::without_model(self, &call, &prepared)
                })
                .await;
            E::finish(&mut v.body, t0);
            return Ok(v);
        };
        let (mut body, ttl) = E::answer(self, &call, prepared, outputs);
        E::finish(&mut body, t0);
        self.caches.put_prediction(key, &body, ttl);
        Ok(Versioned::new(body, &call.m, false))
    }
}
