//! W3C trace context across stages: how a unit of work (a webhook, a record,
//! an outbound operation) joins the trace of what caused it, and which
//! `traceparent` it hands on in Kafka record headers and HTTP requests.
//!
//! With export on (see [`crate::telemetry`]) a unit of work's span becomes a
//! child of the `traceparent` it received, and what it writes carries the
//! span's own context: the spans of ingress, every processor and egress form
//! one parent chain per webhook. With export off no span context exists;
//! the received `traceparent` is handed on unchanged (ingress makes a new,
//! unsampled one when it receives none), so records still name their trace
//! and log lines still carry its id.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The Kafka header and HTTP header carrying the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// At most this many links per span (a batch links to its records' traces).
pub const MAX_LINKS: u32 = 128;

static EXPORTING: AtomicBool = AtomicBool::new(false);

pub(crate) fn set_exporting(on: bool) {
    EXPORTING.store(on, Ordering::Relaxed);
}

/// Whether spans are exported (an OTLP endpoint is configured).
#[must_use]
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The span `make` builds when spans are exported, else a disabled one. For
/// a span only a trace shows: with log lines in JSON, every enabled span
/// costs a formatted copy of its fields, made again at each `record`.
pub fn exported(make: impl FnOnce() -> Span) -> Span {
    if exporting() { make() } else { Span::none() }
}

/// The span context a `traceparent` names (version `00`, or a later version
/// read as `00` as the W3C spec asks); `None` when it is malformed or names
/// the invalid all-zero ids.
#[must_use]
pub fn parse(traceparent: &str) -> Option<SpanContext> {
    let value = traceparent.trim();
    let mut parts = value.splitn(5, '-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let span_id = parts.next()?;
    let flags = parts.next()?;
    let rest = parts.next();
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    if !hex(version, 2)
        || version == "ff"
        || !hex(trace_id, 32)
        || !hex(span_id, 16)
        || !hex(flags, 2)
        || (version == "00" && rest.is_some())
    {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let context = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags & 0x01),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

/// The `traceparent` of a span context.
#[must_use]
pub fn format(context: &SpanContext) -> String {
    format!(
        "00-{:032x}-{:016x}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags().to_u8()
    )
}

/// A new trace: random ids, not sampled (for when nothing is exported).
#[must_use]
pub fn fresh() -> String {
    let ids = RandomIdGenerator::default();
    format(&SpanContext::new(
        ids.new_trace_id(),
        ids.new_span_id(),
        TraceFlags::NOT_SAMPLED,
        false,
        TraceState::default(),
    ))
}

/// The trace id of a `traceparent` (its second field), if well-formed.
#[must_use]
pub fn trace_id(traceparent: &str) -> Option<&str> {
    traceparent.get(3..35).filter(|id| {
        traceparent.get(2..3) == Some("-") && id.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// Makes `span` a child of `parent` (a received `traceparent`). Call it
/// right after creating the span, before entering it. A no-op when nothing
/// is exported or `parent` is missing or malformed (the span then starts a
/// trace of its own).
pub fn continue_from(span: &Span, parent: Option<&str>) {
    if !exporting() {
        return;
    }
    if let Some(context) = parent.and_then(parse) {
        let _ = span.set_parent(Context::new().with_remote_span_context(context));
    }
}

/// Links `span` to the work a `traceparent` names (a batch to its records,
/// a delivery report to the request it reports on). A no-op when nothing is
/// exported.
pub fn link(span: &Span, traceparent: &str) {
    if exporting()
        && let Some(context) = parse(traceparent)
    {
        span.add_link(context);
    }
}

/// Links `span` to another span's context (see [`context_of`]).
pub fn link_context(span: &Span, context: &SpanContext) {
    if exporting() {
        span.add_link(context.clone());
    }
}

/// The span context of `span`, when it is exported and valid.
#[must_use]
pub fn context_of(span: &Span) -> Option<SpanContext> {
    if !exporting() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

/// The `traceparent` what the work in `span` writes carries: the span's own
/// context when spans are exported, else `received` unchanged.
#[must_use]
pub fn traceparent_of(span: &Span, received: Option<&str>) -> Option<String> {
    context_of(span)
        .map(|context| format(&context))
        .or_else(|| received.map(str::to_owned))
}

/// The trace id a span can name from its creation (`trace_id =
/// trace::known_trace_id(received)`): without exported spans, the one of
/// the `traceparent` it hands on (`received`), so that no
/// [`record_trace_id`] is needed, which the JSON log layer pays for by
/// parsing and writing the span's fields again. `None` with exported spans
/// (the span's own context decides) or nothing received: record it then.
#[must_use]
pub fn known_trace_id(received: Option<&str>) -> Option<&str> {
    if exporting() {
        None
    } else {
        received.and_then(trace_id)
    }
}

/// Records the trace id of `traceparent` in the `trace_id` field of `span`
/// (declared with `trace_id = tracing::field::Empty`), so log lines written
/// inside it name the trace.
pub fn record_trace_id(span: &Span, traceparent: Option<&str>) {
    if let Some(id) = traceparent.and_then(trace_id) {
        span.record("trace_id", id);
    }
}

/// [`record_trace_id`] for a span declared with `trace_id = named`, where
/// `named` is what [`known_trace_id`] gave: records only when the span could
/// not name its trace at creation, without parsing the header again.
pub fn record_trace_id_unless_named(span: &Span, named: Option<&str>, traceparent: Option<&str>) {
    if named.is_none() {
        record_trace_id(span, traceparent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn without_exported_traces_a_span_names_the_received_trace_from_its_creation() {
        use tracing_subscriber::layer::SubscriberExt;

        assert!(!exporting());
        assert_eq!(
            known_trace_id(Some(TP)),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(known_trace_id(Some("not a traceparent")), None);
        assert_eq!(known_trace_id(None), None);

        let lines = crate::test_log::Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("process", trace_id = known_trace_id(Some(TP)));
            let _entered = span.enter();
            tracing::info!("inside");
        });
        let written = lines.text();
        assert!(
            written.contains(r#""trace_id":"4bf92f3577b34da6a3ce929d0e0e4736""#),
            "the log line names the trace: {written}"
        );
    }

    #[test]
    fn a_traceparent_round_trips() {
        let context = parse(TP).expect("valid");
        assert!(context.is_sampled());
        assert!(context.is_remote());
        assert_eq!(format(&context), TP);
        assert_eq!(trace_id(TP), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "00-abc-def-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
        // A later version is read as version 00, extra fields ignored.
        assert!(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x").is_some());
        assert_eq!(trace_id("nonsense"), None);
    }

    #[test]
    fn fresh_traces_are_valid_unsampled_and_distinct() {
        let a = fresh();
        let b = fresh();
        assert_ne!(a, b);
        let context = parse(&a).expect("valid");
        assert!(!context.is_sampled());
        assert_eq!(a.len(), 55);
    }

    #[test]
    fn without_export_the_received_context_is_handed_on() {
        let span = tracing::info_span!("work");
        continue_from(&span, Some(TP));
        assert_eq!(traceparent_of(&span, Some(TP)).as_deref(), Some(TP));
        assert_eq!(traceparent_of(&span, None), None);
        assert!(context_of(&span).is_none());
    }
}
