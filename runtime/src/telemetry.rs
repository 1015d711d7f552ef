//! Logs and traces, set up with one call per binary.
//!
//! Logs: readable lines locally, JSON in production (`LOG_FORMAT`), filtered
//! by `LOG_LEVEL`. The spans of a unit of work (a webhook, a record, an
//! outbound operation) carry a `trace_id` field, so every JSON log line
//! written inside one names its trace, with tracing on or off.
//!
//! Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, the spans of our crates are
//! exported with OpenTelemetry over OTLP/HTTP (protobuf), in batches from a
//! background thread, sampled by `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG` (the standard OpenTelemetry variables). Without
//! an endpoint no OpenTelemetry layer is installed at all: no span is built
//! for export, nothing is sent, and the W3C `traceparent` of each record is
//! passed on unchanged (see [`crate::trace`]). [`Telemetry::shutdown`]
//! exports what is still buffered; call it when the stage has stopped.

use std::time::Duration;

use clap::{Args, ValueEnum};
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchSpanProcessor, Sampler, SdkTracerProvider};
use tracing::Metadata;
use tracing::subscriber::Interest;
use tracing_subscriber::filter::{DynFilterFn, EnvFilter};
use tracing_subscriber::layer::Context;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::{LogFormat, ServiceArgs};

/// How root spans are sampled (`OTEL_TRACES_SAMPLER`, the OpenTelemetry
/// names). A span with a parent (a record whose `traceparent` came from the
/// previous stage) follows its parent's decision under the `parentbased_*`
/// samplers, so a trace is kept or dropped whole: sample at ingress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SamplerKind {
    /// Every span.
    #[value(name = "always_on")]
    AlwaysOn,
    /// No span.
    #[value(name = "always_off")]
    AlwaysOff,
    /// A share of traces (`OTEL_TRACES_SAMPLER_ARG`), by trace id.
    #[value(name = "traceidratio")]
    TraceIdRatio,
    /// The parent's decision; every root.
    #[value(name = "parentbased_always_on")]
    ParentBasedAlwaysOn,
    /// The parent's decision; no root.
    #[value(name = "parentbased_always_off")]
    ParentBasedAlwaysOff,
    /// The parent's decision; a share of roots (`OTEL_TRACES_SAMPLER_ARG`).
    #[value(name = "parentbased_traceidratio")]
    ParentBasedTraceIdRatio,
}

/// Trace export settings (the standard OpenTelemetry variables).
#[derive(Debug, Clone, Args)]
pub struct TraceArgs {
    /// OTLP/HTTP base URL of a collector (e.g. `http://otel-collector:4318`):
    /// spans go to `<endpoint>/v1/traces` as protobuf. Unset or empty: no
    /// traces are exported (and tracing costs nothing).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otel_exporter_otlp_endpoint: Option<String>,

    /// Full OTLP/HTTP URL for traces, used as is; overrides
    /// OTEL_EXPORTER_OTLP_ENDPOINT.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")]
    pub otel_exporter_otlp_traces_endpoint: Option<String>,

    /// Sampler: always_on, always_off, traceidratio, parentbased_always_on,
    /// parentbased_always_off or parentbased_traceidratio.
    #[arg(
        long,
        env = "OTEL_TRACES_SAMPLER",
        value_enum,
        default_value = "parentbased_always_on"
    )]
    pub otel_traces_sampler: SamplerKind,

    /// The share of traces kept by the `*traceidratio` samplers, 0.0 to 1.0.
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG", default_value_t = 1.0, value_parser = parse_ratio)]
    pub otel_traces_sampler_arg: f64,

    /// `service.name` of the exported spans. Default: the binary's name
    /// (`si-ingress`, `si-normalize`, …).
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    pub otel_service_name: Option<String>,
}

fn parse_ratio(value: &str) -> Result<f64, String> {
    let ratio: f64 = value
        .trim()
        .parse()
        .map_err(|_| format!("{value:?} is not a number"))?;
    if (0.0..=1.0).contains(&ratio) {
        Ok(ratio)
    } else {
        Err(format!("{ratio} is not within 0.0..=1.0"))
    }
}

impl Default for TraceArgs {
    fn default() -> Self {
        Self {
            otel_exporter_otlp_endpoint: None,
            otel_exporter_otlp_traces_endpoint: None,
            otel_traces_sampler: SamplerKind::ParentBasedAlwaysOn,
            otel_traces_sampler_arg: 1.0,
            otel_service_name: None,
        }
    }
}

impl TraceArgs {
    /// Where spans are sent, when export is on.
    #[must_use]
    pub fn traces_url(&self) -> Option<String> {
        fn nonempty(v: Option<&String>) -> Option<&str> {
            v.map(|v| v.trim()).filter(|v| !v.is_empty())
        }
        if let Some(url) = nonempty(self.otel_exporter_otlp_traces_endpoint.as_ref()) {
            return Some(url.to_owned());
        }
        nonempty(self.otel_exporter_otlp_endpoint.as_ref())
            .map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
    }

    /// The sampler.
    ///
    /// # Errors
    /// When the ratio is not within 0.0..=1.0.
    pub fn sampler(&self) -> Result<Sampler, String> {
        let ratio = self.otel_traces_sampler_arg;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(format!(
                "OTEL_TRACES_SAMPLER_ARG ({ratio}) must be within 0.0..=1.0"
            ));
        }
        Ok(match self.otel_traces_sampler {
            SamplerKind::AlwaysOn => Sampler::AlwaysOn,
            SamplerKind::AlwaysOff => Sampler::AlwaysOff,
            SamplerKind::TraceIdRatio => Sampler::TraceIdRatioBased(ratio),
            SamplerKind::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            SamplerKind::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            SamplerKind::ParentBasedTraceIdRatio => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
            }
        })
    }
}

/// The telemetry of a running binary; [`Telemetry::shutdown`] flushes the
/// spans still buffered.
#[derive(Debug)]
#[must_use = "call shutdown() when the stage has stopped, or buffered spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    #[must_use]
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still buffered (within a few seconds) and stops the
    /// exporter.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        let flushed = tokio::task::spawn_blocking(move || {
            provider.shutdown_with_timeout(Duration::from_secs(5))
        })
        .await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "the last spans were not exported"),
            Err(error) => tracing::warn!(%error, "the span exporter did not shut down"),
        }
    }
}

/// Spans of our own crates (never the exporter's HTTP client, which would
/// trace its own exports), and their warnings and errors as span events.
fn ours(metadata: &Metadata<'_>) -> bool {
    let target = metadata.target();
    let own = target.starts_with("si_") || target.starts_with("twilio_sandbox");
    own && (metadata.is_span() || *metadata.level() <= tracing::Level::WARN)
}

/// The trace layer's filter: [`ours`], with our callsites' interest at
/// "sometimes", never "always".
///
/// Why: a per-layer filter hands its decision for a span to the layer
/// through a thread-local that the last `enabled` call wrote. A callsite
/// every filter calls "always" is never asked, so it reads whatever an
/// earlier `enabled` left there, for other metadata: librdkafka's level
/// check, or `log` records through `tracing-log`. When that said "not
/// ours", the span was dropped from the trace layer alone. Its children
/// then started traces of their own: the e2e trace test saw the first
/// inbound webhook's `produce` span without its `webhook` parent (tracing
/// issue 2519). "Sometimes" has every filter asked at every span and event.
fn exported_filter<S>() -> DynFilterFn<
    S,
    impl Fn(&Metadata<'_>, &Context<'_, S>) -> bool,
    impl Fn(&'static Metadata<'static>) -> Interest,
> {
    DynFilterFn::new(|metadata: &Metadata<'_>, _: &Context<'_, S>| ours(metadata))
        .with_callsite_filter(|metadata: &'static Metadata<'static>| {
            if ours(metadata) {
                Interest::sometimes()
            } else {
                Interest::never()
            }
        })
}

fn fmt_layer(format: LogFormat) -> Box<dyn Layer<Registry> + Send + Sync> {
    // Colours only on a terminal: log files and collectors get plain text,
    // and no escape codes are formatted for every span.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    fmt_layer_to(format, ansi, std::io::stdout)
}

fn fmt_layer_to<W>(
    format: LogFormat,
    ansi: bool,
    writer: W,
) -> Box<dyn Layer<Registry> + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_target(true)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
        LogFormat::Text => layer.boxed(),
    }
}

/// The log lines' layer, filtered by `LOG_LEVEL`, on its own.
///
/// Not with an `Option` layer that is `None` when traces are off: a `None`
/// layer wants every callsite, so each one `LOG_LEVEL` filters out became
/// "sometimes" instead of "never", was asked about at every call, and its
/// "no" stayed behind on the thread: the next line written there, an
/// "always" callsite that is not asked, was dropped (tracing issue 2519).
/// Under `LOG_LEVEL=info,librdkafka=warn` that cost "transactional producer
/// ready" and "consumer group" every time (rdkafka asks `enabled!` for
/// target `librdkafka` when it builds a client config) and "partitions
/// assigned" now and then.
fn log_lines(
    layer: Box<dyn Layer<Registry> + Send + Sync>,
    filter: EnvFilter,
) -> impl tracing::Subscriber + Send + Sync + for<'a> tracing_subscriber::registry::LookupSpan<'a> {
    tracing_subscriber::registry().with(layer.with_filter(filter))
}

/// Logs only (tools without trace settings). Later calls (tests) are no-ops.
pub fn init(format: LogFormat, filter: &str) {
    let env = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = log_lines(fmt_layer(format), env).try_init();
    log_panics();
}

/// Makes every panic an error line of the log too (JSON in a cluster, so a
/// log collector sees which thread panicked, where and with what message),
/// then lets the default hook print it to stderr as before. Once per
/// process.
fn log_panics() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            log_panic(info);
            default(info);
        }));
    });
}

fn log_panic(info: &std::panic::PanicHookInfo<'_>) {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    let thread = std::thread::current();
    tracing::error!(
        thread = thread.name().unwrap_or("(unnamed)"),
        location = info.location().map(ToString::to_string).unwrap_or_default(),
        panic = message,
        "a thread panicked"
    );
}

/// Logs, and traces when an OTLP endpoint is configured. `service_name` is
/// the binary's name (`OTEL_SERVICE_NAME` overrides it). A second call (tests)
/// installs nothing and exports nothing.
pub fn start(service_name: &str, service: &ServiceArgs) -> Telemetry {
    let filter = EnvFilter::try_new(&service.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let traces = &service.traces;
    let (provider, problem) = match (traces.traces_url(), traces.sampler()) {
        (None, _) => (None, None),
        (Some(_), Err(problem)) => (None, Some(problem)),
        (Some(url), Ok(sampler)) => {
            let name = traces
                .otel_service_name
                .clone()
                .unwrap_or_else(|| service_name.to_owned());
            match provider(&url, sampler, name) {
                Ok(provider) => (Some(provider), None),
                Err(problem) => (None, Some(problem)),
            }
        }
    };
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("si-twilio-channel"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(exported_filter())
    });
    let lines = log_lines(fmt_layer(service.log_format), filter);
    let installed = match otel {
        Some(otel) => lines.with(otel).try_init().is_ok(),
        None => lines.try_init().is_ok(),
    };
    log_panics();
    if let Some(problem) = problem {
        tracing::error!(%problem, "traces are not exported");
    }
    let provider = provider.filter(|_| installed);
    crate::trace::set_exporting(provider.is_some());
    if let Some(url) = traces.traces_url().filter(|_| provider.is_some()) {
        tracing::info!(
            endpoint = %url,
            sampler = ?traces.otel_traces_sampler,
            ratio = traces.otel_traces_sampler_arg,
            "exporting traces over OTLP/HTTP"
        );
    }
    Telemetry { provider }
}

fn provider(
    url: &str,
    sampler: Sampler,
    service_name: String,
) -> Result<SdkTracerProvider, String> {
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|_| "trace export needs a Tokio runtime".to_owned())?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("OTLP HTTP client: {e}"))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(OtlpHttp { http, handle })
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("OTLP exporter: {e}"))?;
    let resource = Resource::builder()
        .with_service_name(service_name)
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter).build())
        .with_sampler(sampler)
        .with_max_links_per_span(crate::trace::MAX_LINKS)
        .with_resource(resource)
        .build())
}

/// The exporter's HTTP client: the batch processor exports from its own
/// thread, outside the Tokio runtime, so each request runs as a task on the
/// runtime the telemetry was started in.
#[derive(Debug)]
struct OtlpHttp {
    http: reqwest::Client,
    handle: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpHttp {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let mut builder = self.http.request(parts.method, parts.uri.to_string());
        for (name, value) in &parts.headers {
            builder = builder.header(name, value);
        }
        let request = builder.body(body);
        let answered = self
            .handle
            .spawn(async move {
                let response = request.send().await?;
                let status = response.status();
                let body = response.bytes().await?;
                Ok::<_, reqwest::Error>((status, body))
            })
            .await??;
        let (status, body) = answered;
        Ok(http::Response::builder().status(status).body(body)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A callsite of its own for each test metadata.
    macro_rules! metadata {
        ($name:ident, $target:literal, $level:expr) => {
            mod $name {
                use tracing::callsite::{Callsite, Identifier};
                use tracing::field::FieldSet;
                use tracing::metadata::Kind;
                use tracing::subscriber::Interest;
                use tracing::{Level, Metadata};

                pub struct Site;
                pub static SITE: Site = Site;
                pub static META: Metadata<'static> = Metadata::new(
                    stringify!($name),
                    $target,
                    $level,
                    None,
                    None,
                    None,
                    FieldSet::new(&["message"], Identifier(&SITE)),
                    Kind::EVENT,
                );
                impl Callsite for Site {
                    fn set_interest(&self, _: Interest) {}
                    fn metadata(&self) -> &Metadata<'_> {
                        &META
                    }
                }
            }
        };
    }
    metadata!(rdkafka_hint, "librdkafka", Level::INFO);
    metadata!(our_line, "si_runtime::stream", Level::INFO);

    fn lines(level: &str) -> impl tracing::Subscriber + Send + Sync {
        log_lines(
            fmt_layer_to(LogFormat::Text, false, std::io::sink),
            EnvFilter::new(level),
        )
    }

    #[test]
    fn a_panic_is_an_error_line_of_the_log() {
        log_panics();
        let captured = crate::test_log::Lines::default();
        let writer = captured.clone();
        let subscriber = log_lines(
            fmt_layer_to(LogFormat::Json, false, move || writer.clone()),
            EnvFilter::new("info"),
        );
        let caught = tracing::subscriber::with_default(subscriber, || {
            std::panic::catch_unwind(|| panic!("an injected panic, {}", 42))
        });
        assert!(caught.is_err(), "it panicked");
        let log = captured.text();
        let line = log
            .lines()
            .find(|line| line.contains("a thread panicked"))
            .unwrap_or_else(|| panic!("no line for the panic in {log:?}"));
        assert!(line.contains(r#""level":"ERROR""#), "{line}");
        assert!(
            line.contains(r#""panic":"an injected panic, 42""#),
            "a formatted message: {line}"
        );
        assert!(line.contains("runtime/src/telemetry.rs:"), "{line}");
        assert!(line.contains(r#""thread":""#), "{line}");
    }

    #[test]
    fn a_callsite_log_level_filters_out_is_never_asked_about_again() {
        use tracing::Subscriber as _;
        let subscriber = lines("info,librdkafka=warn");
        assert!(
            subscriber.register_callsite(&rdkafka_hint::META).is_never(),
            "filtered out: never, not sometimes"
        );
        assert!(subscriber.register_callsite(&our_line::META).is_always());
    }

    #[test]
    fn the_traces_url_follows_the_opentelemetry_variables() {
        let mut args = TraceArgs::default();
        assert_eq!(args.traces_url(), None);
        args.otel_exporter_otlp_endpoint = Some(String::new());
        assert_eq!(args.traces_url(), None, "empty means off");
        args.otel_exporter_otlp_endpoint = Some("http://collector:4318/".into());
        assert_eq!(
            args.traces_url().as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        args.otel_exporter_otlp_traces_endpoint = Some("http://other:4318/custom".into());
        assert_eq!(
            args.traces_url().as_deref(),
            Some("http://other:4318/custom")
        );
    }

    #[test]
    fn the_sampler_ratio_is_checked() {
        let mut args = TraceArgs {
            otel_traces_sampler: SamplerKind::ParentBasedTraceIdRatio,
            otel_traces_sampler_arg: 0.25,
            ..TraceArgs::default()
        };
        assert!(matches!(args.sampler(), Ok(Sampler::ParentBased(_))));
        args.otel_traces_sampler_arg = 1.5;
        assert!(args.sampler().is_err());
        args.otel_traces_sampler_arg = -0.1;
        assert!(args.sampler().is_err());
    }

    #[test]
    fn sampler_names_are_the_opentelemetry_ones() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            traces: TraceArgs,
        }
        let cli = Cli::parse_from(["x", "--otel-traces-sampler", "parentbased_traceidratio"]);
        assert_eq!(
            cli.traces.otel_traces_sampler,
            SamplerKind::ParentBasedTraceIdRatio
        );
        assert!(Cli::try_parse_from(["x", "--otel-traces-sampler", "sometimes"]).is_err());
        assert!(Cli::try_parse_from(["x", "--otel-traces-sampler-arg", "1.5"]).is_err());
        assert!(Cli::try_parse_from(["x", "--otel-traces-sampler-arg", "half"]).is_err());
        let cli = Cli::parse_from(["x", "--otel-traces-sampler-arg", "0.25"]);
        assert!((cli.traces.otel_traces_sampler_arg - 0.25).abs() < f64::EPSILON);
    }
}
