//! OpenTelemetry traces over OTLP/HTTP (protobuf), with the `otel` feature.
//!
//! A proposal is one trace across nodes: `propose` on the node that took the call, `append` on
//! the leader, `persist` (a group commit, linked to every proposal it makes durable) and
//! `apply` on every node that applies it, with W3C trace context carried in the forward and in
//! the log entry (see `iroh_raft::actors::trace`).
//!
//! Two ways in:
//! - [`otlp_layer`]: a `tracing-subscriber` layer (and the guard that flushes it) for an
//!   application that composes its own subscriber;
//! - [`init_otlp`], or the builder's `.otlp_endpoint(url)` / `iroh-raft node --otlp-endpoint`:
//!   installs a global subscriber (log lines to stderr filtered by `RUST_LOG`, plus the traces)
//!   once per process; the exporter then lives until the process ends ([`flush`] sends what
//!   is buffered).

use std::{sync::OnceLock, time::Duration};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    trace::{BatchSpanProcessor, Sampler, SdkTracerProvider},
};
use tracing::subscriber::Interest;
use tracing_subscriber::{
    EnvFilter, Layer,
    layer::{self, SubscriberExt},
    registry::LookupSpan,
};

/// The spans a proposal's trace is made of.
pub const PROPOSAL_SPANS: &[&str] = &[
    "propose",
    "serve",
    "append",
    "persist",
    "replicate",
    "apply",
];

/// The layer's filter: only the proposal's spans (not log events, not the actors' long-lived
/// spans, not iroh's). Decided once per callsite, so every other span and event in the process
/// costs nothing more than without the layer.
struct ProposalSpans;

impl ProposalSpans {
    fn wants(meta: &tracing::Metadata<'_>) -> bool {
        meta.is_span()
            && meta.target().starts_with("iroh_raft")
            && PROPOSAL_SPANS.contains(&meta.name())
    }
}

impl<S> layer::Filter<S> for ProposalSpans {
    fn enabled(&self, meta: &tracing::Metadata<'_>, _: &layer::Context<'_, S>) -> bool {
        Self::wants(meta)
    }

    fn callsite_enabled(&self, meta: &'static tracing::Metadata<'static>) -> Interest {
        if Self::wants(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }
}

/// Where traces go and how many are kept.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpOptions {
    /// The collector's OTLP/HTTP endpoint: a base URL (`http://collector:4318`, to which
    /// `/v1/traces` is added) or the full traces URL.
    pub endpoint: String,
    /// The share of new traces recorded (0.0 to 1.0; a proposal continues the decision of the
    /// trace it was made in).
    pub sampling_ratio: f64,
    /// The `service.name` resource attribute.
    pub service_name: String,
}

impl OtlpOptions {
    /// All traces to `endpoint`, as service `iroh-raft`.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            sampling_ratio: 1.0,
            service_name: "iroh-raft".into(),
        }
    }

    /// Keeps this share of new traces.
    pub fn sampling_ratio(mut self, ratio: f64) -> Self {
        self.sampling_ratio = ratio;
        self
    }

    fn traces_url(&self) -> String {
        let base = self.endpoint.trim_end_matches('/');
        if base.ends_with("/v1/traces") {
            base.to_owned()
        } else {
            format!("{base}/v1/traces")
        }
    }
}

/// Why the exporter could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The options are not usable (an endpoint that is not an http(s) URL, a ratio outside
    /// 0..=1).
    #[error("invalid OTLP options: {0}")]
    Invalid(String),
    /// The exporter refused to build.
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    /// The process already has a global tracing subscriber that is not ours: compose
    /// [`otlp_layer`] into it instead.
    #[error(
        "a global tracing subscriber is already installed; add iroh_raft::telemetry::otlp_layer to it"
    )]
    SubscriberTaken,
    /// Traces already go to another endpoint in this process.
    #[error("traces already go to {0}")]
    OtherEndpoint(String),
}

/// Flushes and shuts the exporter down when dropped.
#[derive(Debug)]
pub struct OtlpGuard {
    provider: SdkTracerProvider,
}

impl OtlpGuard {
    /// Sends every finished span buffered so far (blocks up to the exporter's timeout).
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }
}

impl Drop for OtlpGuard {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// A layer that records `tracing` spans as OpenTelemetry spans and exports them, and the guard
/// that keeps the exporter running.
pub fn otlp_layer<S>(
    options: &OtlpOptions,
) -> Result<(impl Layer<S> + Send + Sync + 'static, OtlpGuard), TelemetryError>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
{
    if !(0.0..=1.0).contains(&options.sampling_ratio) {
        return Err(TelemetryError::Invalid(format!(
            "sampling ratio {} is not between 0 and 1",
            options.sampling_ratio
        )));
    }
    if !options.endpoint.starts_with("http://") && !options.endpoint.starts_with("https://") {
        return Err(TelemetryError::Invalid(format!(
            "endpoint {:?} is not an http(s) URL",
            options.endpoint
        )));
    }
    // The exporter's client takes the process's default TLS provider: ring, which iroh uses
    // (an application that installed another keeps it).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(options.traces_url())
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    // New proposal traces are sampled before their first span exists (an unsampled proposal
    // then costs nothing); what reaches the SDK is recorded, and its children follow it.
    iroh_raft_actors::set_sampling(options.sampling_ratio);
    let sampler = Sampler::ParentBased(Box::new(Sampler::AlwaysOn));
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter).build())
        .with_sampler(sampler)
        .with_resource(
            Resource::builder()
                .with_service_name(options.service_name.clone())
                .build(),
        )
        .build();
    let tracer = provider.tracer("iroh-raft");
    // No busy/idle timing, thread or source location per span: every proposal opens a span,
    // sampled or not, and these cost on each.
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_filter(ProposalSpans);
    Ok((layer, OtlpGuard { provider }))
}

/// The exporter this process installed, and where it sends.
static INSTALLED: OnceLock<(String, OtlpGuard)> = OnceLock::new();

/// Installs a global subscriber that writes log lines to stderr (filtered by `RUST_LOG`,
/// default `warn`) and exports traces as `options` say. Once per process: asking again with
/// the same endpoint is a no-op, with another one an error.
pub fn init_otlp(options: &OtlpOptions) -> Result<(), TelemetryError> {
    if let Some((endpoint, _)) = INSTALLED.get() {
        return match *endpoint == options.endpoint {
            true => Ok(()),
            false => Err(TelemetryError::OtherEndpoint(endpoint.clone())),
        };
    }
    let (layer, guard) = otlp_layer(options)?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let subscriber = tracing_subscriber::registry().with(logs).with(layer);
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|_| TelemetryError::SubscriberTaken)?;
    let _ = INSTALLED.set((options.endpoint.clone(), guard));
    Ok(())
}

/// Sends every finished span the exporter [`init_otlp`] installed holds (no-op without one).
pub fn flush() {
    if let Some((_, guard)) = INSTALLED.get() {
        guard.flush();
    }
}
