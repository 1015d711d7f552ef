//! Trace export end to end in one process: `telemetry::start` with an OTLP
//! endpoint (a receiver inside the test) exports our crates' spans, children
//! of the `traceparent` they continue, and `Telemetry::shutdown` flushes what
//! is still buffered (the batch processor would otherwise wait 5 s).
//!
//! Its own test binary: `start` installs the process's global subscriber.

use clap::Parser;
use si_runtime::ServiceArgs;
use si_runtime::trace;
use si_testkit::OtlpReceiver;
use tracing::field::Empty;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    service: ServiceArgs,
}

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_spans_are_exported_in_the_received_trace_and_flushed_on_shutdown() -> anyhow::Result<()>
{
    let receiver = OtlpReceiver::start().await?;
    let cli = Cli::parse_from([
        "test",
        "--otel-exporter-otlp-endpoint",
        receiver.endpoint(),
        "--log-level",
        "warn",
    ]);
    let telemetry = si_runtime::telemetry::start("si-telemetry-test", &cli.service);
    assert!(telemetry.exporting() && trace::exporting());

    let sent = {
        let span = tracing::info_span!(target: "si_runtime::test", "process", trace_id = Empty);
        trace::continue_from(&span, Some(PARENT));
        let _entered = span.enter();
        let sent = trace::traceparent_of(&span, Some(PARENT)).expect("a context");
        trace::record_trace_id(&span, Some(&sent));
        sent
    };
    assert_eq!(&sent[3..35], &PARENT[3..35], "the same trace");
    assert_ne!(&sent[36..52], &PARENT[36..52], "the span's own id");
    assert!(sent.ends_with("-01"), "sampled, as its parent: {sent}");
    // Spans of other crates (an HTTP client's, say) are not exported.
    drop(tracing::info_span!(target: "hyper::client", "noise").entered());

    telemetry.shutdown().await;
    // No waiting: only the flush on shutdown can have sent the span by now.
    let spans = receiver.spans();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let span = &spans[0];
    assert_eq!(
        (span.service.as_str(), span.name.as_str()),
        ("si-telemetry-test", "process")
    );
    assert_eq!(span.trace_id, PARENT[3..35]);
    assert_eq!(span.parent_span_id, PARENT[36..52]);
    assert_eq!(span.span_id, sent[36..52]);
    assert_eq!(span.attribute("trace_id"), Some(&PARENT[3..35]));
    Ok(())
}
