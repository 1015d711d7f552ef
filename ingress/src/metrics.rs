//! Prometheus metrics of ingress. Labels are routes, outcomes and reasons only:
//! never an address or a SID.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

/// The ingress metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Requests by route and outcome.
    pub requests: IntCounterVec,
    /// Signature failures by reason.
    pub signature_failures: IntCounterVec,
    /// Time until Kafka acknowledged a webhook.
    pub produce_seconds: Histogram,
    /// Requests being handled.
    pub in_flight: IntGauge,
}

impl Metrics {
    /// Creates and registers the metrics.
    ///
    /// # Errors
    /// When a metric is registered twice in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "si_ingress_requests_total",
                "Webhook requests by route and outcome",
            ),
            &["route", "outcome"],
        )?;
        let signature_failures = IntCounterVec::new(
            Opts::new(
                "si_ingress_signature_failures_total",
                "Requests refused for their signature, by reason",
            ),
            &["reason"],
        )?;
        let produce_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "si_ingress_produce_seconds",
                "Time from produce to Kafka's acknowledgement (acks=all)",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        let in_flight = IntGauge::new("si_ingress_in_flight", "Webhook requests being handled")?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(signature_failures.clone()))?;
        registry.register(Box::new(produce_seconds.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        Ok(Self {
            requests,
            signature_failures,
            produce_seconds,
            in_flight,
        })
    }
}
