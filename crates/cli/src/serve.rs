//! `serve`: fill an empty embedded store with the demo dataset, train every
//! model the repository lacks, then hand over to the server library, which
//! loads what the repository holds and serves until the shutdown signal.

use crate::args::ServeArgs;
use crate::logs::init_tracing_with_traces;
use crate::training::train_missing;
use anyhow::Context;
use ml_backend::InferenceBackend;
use ml_server::app::{self, Access};
use ml_server::interests::Interests;
use ml_server::service::Predictor;
use std::sync::Arc;

/// Everything `serve` needs before the port opens: the store (filled with
/// the demo dataset when it is an empty embedded file), every missing model
/// trained, then the server's own start-up on the same store and repository. Runs off the runtime's threads
/// (it blocks on the store, the repository and training).
pub fn prepare(args: &ServeArgs) -> anyhow::Result<Arc<Predictor>> {
    // A missing inference library is the cheapest thing to find out first.
    prepare_with(args, app::backend(&args.server.backend)?)
}

/// `prepare` with a given inference backend (tests wrap the real one).
pub fn prepare_with(
    args: &ServeArgs,
    backend: Arc<dyn InferenceBackend>,
) -> anyhow::Result<Arc<Predictor>> {
    let s = &args.server;
    let handle = tokio::runtime::Handle::try_current()
        .context("start-up runs on the tokio runtime (the caches and Postgres need it)")?;
    let store = crate::store::open(&s.data, &args.demo, Access::Serve)?;
    handle.block_on(app::wait_for_store(&store))?;
    let repo = app::repository(s)?;
    let interests = Interests::load(&s.interests, s.backend.enable_gpu)?;
    train_missing(
        &s.data,
        &args.demo,
        &args.training,
        &repo,
        backend.as_ref(),
        &interests,
    )?;
    // The store and the repository as they are now, handed over.
    app::start(s, store, repo, backend, interests)
}

/// `ml-service serve`: start as above, bind the listeners, serve until
/// SIGTERM or Ctrl-C, then shut down gracefully (`app::serve_until`).
pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let settings = args.server.clone();
    let traces =
        init_tracing_with_traces(&settings.log.log_level, settings.otlp_endpoint.as_deref());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let http = &settings.http;
        http.check_exposure().map_err(anyhow::Error::msg)?;
        if http.api_keys.is_empty() {
            tracing::warn!(host = %http.host, "no ML_SERVICE_API_KEY: the prediction endpoints accept any caller");
        }
        let predictor = tokio::task::spawn_blocking(move || prepare(&args)).await??;
        let addr = std::net::SocketAddr::new(http.host, http.port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let maddr = std::net::SocketAddr::new(http.host, http.prometheus_port);
        let mlistener = tokio::net::TcpListener::bind(maddr)
            .await
            .with_context(|| format!("binding {maddr}"))?;
        let glistener = if http.enable_grpc {
            let gaddr = std::net::SocketAddr::new(http.host, http.grpc_port);
            Some(
                tokio::net::TcpListener::bind(gaddr)
                    .await
                    .with_context(|| format!("binding {gaddr} (GRPC_PORT)"))?,
            )
        } else {
            None
        };
        // The bound addresses, so that port 0 (the OS picks) can be found in the log.
        let addr = listener.local_addr().unwrap_or(addr);
        let maddr = mlistener.local_addr().unwrap_or(maddr);
        let gaddr = glistener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.to_string())
            .unwrap_or_else(|| "off".into());
        tracing::info!(%addr, grpc = %gaddr, metrics = %maddr, "listening");
        let listeners = app::Listeners {
            http: listener,
            grpc: glistener,
            metrics: mlistener,
        };
        app::serve_until(listeners, predictor, &settings, app::shutdown_signal()).await?;
        Ok::<_, anyhow::Error>(())
    })?;
    // Send the spans still buffered.
    if let Some(p) = traces {
        let _ = p.shutdown();
    }
    Ok(())
}
