//! Who may call and how many at once, shared by every transport: API keys
//! (compared in constant time), the admin keys, admission (a bound on
//! requests in flight, a short wait for a turn, a deadline per request), and
//! the [`Guard`] layer that applies them in front of the HTTP prediction
//! routes (the domain API's and the Open Inference Protocol's). gRPC checks
//! the same keys and passes the same `Admission`.

use crate::error::ServiceError;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// Middleware: admin endpoints need one of the admin keys; without any
/// configured they are off (403).
pub(crate) async fn authenticate_admin(
    State(keys): State<ApiKeys>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if keys.0.is_empty() {
        return ServiceError::AdminDisabled.into_response();
    }
    authenticate(State(keys), req, next).await
}

/// API keys, compared in constant time.
#[derive(Clone)]
pub struct ApiKeys(Arc<Vec<secrecy::SecretString>>);

impl ApiKeys {
    pub fn new(keys: Vec<secrecy::SecretString>) -> Self {
        Self(Arc::new(keys))
    }

    /// Whether no keys are configured (no authentication).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `Authorization: Bearer <key>` in `headers` names a key.
    pub fn accepts_header(&self, headers: &axum::http::HeaderMap) -> bool {
        self.accepts_authorization(
            headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        )
    }

    /// Whether an `authorization` value (an HTTP header or gRPC metadata)
    /// is `Bearer <one of the keys>`.
    pub fn accepts_authorization(&self, value: Option<&str>) -> bool {
        value
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .is_some_and(|k| self.accepts(k))
    }

    /// Whether `presented` is one of the keys. Every key is compared, each in
    /// time independent of where the bytes differ.
    pub fn accepts(&self, presented: &str) -> bool {
        use secrecy::ExposeSecret as _;
        use subtle::ConstantTimeEq as _;
        self.0.iter().fold(false, |ok, k| {
            ok | bool::from(k.expose_secret().as_bytes().ct_eq(presented.as_bytes()))
        })
    }
}

/// Middleware: the prediction endpoints need `Authorization: Bearer <key>`
/// when keys are configured.
pub(crate) async fn authenticate(
    State(keys): State<ApiKeys>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if keys.is_empty() || keys.accepts_header(req.headers()) {
        next.run(req).await
    } else {
        ServiceError::Unauthorized.into_response()
    }
}

/// Admission of prediction requests: at most `permits` at once, a short wait
/// for a turn, then shedding; and a deadline on each admitted request.
#[derive(Clone)]
pub struct Admission {
    permits: Arc<tokio::sync::Semaphore>,
    queue_wait: std::time::Duration,
    deadline: std::time::Duration,
}

impl Admission {
    pub fn new(settings: &crate::settings::HttpSettings) -> Self {
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(
                settings.max_in_flight.max(1) as usize
            )),
            queue_wait: std::time::Duration::from_millis(settings.queue_timeout_ms),
            deadline: std::time::Duration::from_millis(settings.request_timeout_ms.max(1)),
        }
    }
}

impl Admission {
    /// Wait briefly for a turn (else `Overloaded`), then run `work` within
    /// the request deadline (else `DeadlineExceeded`). Work that runs out of
    /// time is dropped, and its pending parts (a queued model call, a
    /// database read) with it. HTTP and gRPC share one `Admission`, so the
    /// bound on requests in flight holds for both together.
    pub async fn run<T>(
        &self,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, ServiceError> {
        // A free permit is taken at once; only a wait for one needs a timer.
        let permit = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::Closed) => return Err(ServiceError::Overloaded),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                match tokio::time::timeout(
                    self.queue_wait,
                    Arc::clone(&self.permits).acquire_owned(),
                )
                .await
                {
                    Ok(Ok(p)) => p,
                    _ => return Err(ServiceError::Overloaded),
                }
            }
        };
        let out = tokio::time::timeout(self.deadline, work).await;
        drop(permit);
        out.map_err(|_| ServiceError::DeadlineExceeded {
            ms: self.deadline.as_millis() as u64,
        })
    }
}

/// The layer in front of the prediction endpoints (domain and Open
/// Inference Protocol): the API key when keys are configured, then (when
/// given) admission; a refusal in the caller's error form. A request whose
/// caller hangs up is dropped with its work. Written out rather than
/// `middleware::from_fn`, which clones the boxed inner service and its state
/// for every request (issue 16: the request layer's rewrite in session 8 cut a
/// fifth of a match's CPU).
#[derive(Clone)]
pub(crate) struct Guard {
    keys: ApiKeys,
    admission: Option<Admission>,
    refuse: fn(ServiceError) -> Response,
}

impl Guard {
    /// Key check, then admission.
    pub(crate) fn new(
        keys: ApiKeys,
        admission: Option<Admission>,
        refuse: fn(ServiceError) -> Response,
    ) -> Self {
        Self {
            keys,
            admission,
            refuse,
        }
    }
}

impl<S> tower::Layer<S> for Guard {
    type Service = Guarded<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Guarded {
            inner,
            guard: self.clone(),
        }
    }
}

/// A service behind a [`Guard`].
#[derive(Clone)]
pub(crate) struct Guarded<S> {
    inner: S,
    guard: Guard,
}

impl<S> tower::Service<axum::extract::Request> for Guarded<S>
where
    S: tower::Service<
            axum::extract::Request,
            Response = Response,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::extract::Request) -> Self::Future {
        let refuse = self.guard.refuse;
        let keys = &self.guard.keys;
        if !keys.is_empty() && !keys.accepts_header(req.headers()) {
            return Box::pin(std::future::ready(Ok(refuse(ServiceError::Unauthorized))));
        }
        // The inner future does nothing until polled, so the work (reading
        // the body included) starts only once admitted.
        let work = self.inner.call(req);
        match self.guard.admission.clone() {
            None => Box::pin(work),
            Some(admission) => Box::pin(async move {
                Ok(match admission.run(work).await {
                    Ok(Ok(resp)) => resp,
                    Err(e) => refuse(e),
                })
            }),
        }
    }
}
