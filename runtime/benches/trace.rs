//! What tracing costs per record when no trace is exported: the runner's
//! `process` span (created, parented, its trace id recorded, entered) under
//! the production log layer (JSON at `info`), the same span naming its
//! trace id as it is created, and handing the `traceparent` on alone.
//!
//! cargo bench -p si-runtime --bench trace

use criterion::{Criterion, criterion_group, criterion_main};
use si_runtime::trace;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Layer};

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn record_span(c: &mut Criterion) {
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_writer(std::io::sink)
            .with_filter(EnvFilter::new("info")),
    );
    tracing::subscriber::with_default(subscriber, || {
        let mut group = c.benchmark_group("per record, traces off");
        group.bench_function("traceparent handed on only", |b| {
            b.iter(|| std::hint::black_box(Some(std::hint::black_box(TP).to_owned())));
        });
        // The runner's span, naming the trace id it is given, if any.
        let process_span = |trace_id: Option<&str>| {
            tracing::info_span!(
                "process",
                si.stage = "bench",
                messaging.destination.name = "si.conversation.events.v1",
                messaging.kafka.partition = 3,
                messaging.kafka.offset = 12_345_i64,
                trace_id = trace_id,
            )
        };
        group.bench_function("process span + traceparent", |b| {
            b.iter(|| {
                let span = process_span(None);
                trace::continue_from(&span, Some(TP));
                let _entered = span.enter();
                let traceparent = trace::traceparent_of(&span, Some(TP));
                trace::record_trace_id(&span, traceparent.as_deref());
                std::hint::black_box(traceparent)
            });
        });
        group.bench_function("process span naming its trace id + traceparent", |b| {
            b.iter(|| {
                let received = Some(TP);
                let span = process_span(trace::known_trace_id(received));
                trace::continue_from(&span, received);
                let _entered = span.enter();
                std::hint::black_box(trace::traceparent_of(&span, received))
            });
        });
        group.finish();
    });
}

criterion_group!(benches, record_span);
criterion_main!(benches);
