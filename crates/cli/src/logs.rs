//! Logs and traces of every command: human-readable on a terminal, JSON
//! lines otherwise, plus OpenTelemetry spans over OTLP for `serve`.

/// Logs at `level`: human-readable on a terminal, JSON lines otherwise.
pub fn init_tracing(level: &str) {
    init_tracing_with_traces(level, None);
}

/// Logs, plus OpenTelemetry spans exported over OTLP when `otlp` names an
/// endpoint. Returns the tracer provider, to flush at exit.
pub fn init_tracing_with_traces(
    level: &str,
    otlp: Option<&str>,
) -> Option<opentelemetry_sdk::trace::SdkTracerProvider> {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (otel, provider) = match otlp.map(ml_server::telemetry::otlp_layer) {
        Some(Ok((layer, provider))) => (Some(layer), Some(provider)),
        Some(Err(e)) => {
            eprintln!("OpenTelemetry export is off: {e:#}");
            (None, None)
        }
        None => (None, None),
    };
    let registry = tracing_subscriber::registry().with(otel).with(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_writer(std::io::stderr);
    let _ = if std::io::stderr().is_terminal() {
        registry.with(fmt).try_init()
    } else {
        registry.with(fmt.json().flatten_event(true)).try_init()
    };
    provider
}
