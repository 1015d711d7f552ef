//! Egress metrics, registered on the stage's registry (label values are
//! outcomes, codes, kinds and sender types; never an address or a SID).

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use si_runtime::metrics::StageMetrics;

/// Egress's own metrics.
#[derive(Clone, Debug)]
pub struct EgressMetrics {
    /// Terminal outcomes: `si_egress_operations_total{outcome, error_code}`.
    pub operations: IntCounterVec,
    /// Twilio requests: `si_egress_twilio_requests_total{kind, result, error_code}`.
    pub requests: IntCounterVec,
    /// Retries scheduled: `si_egress_retries_total{reason}`.
    pub retries: IntCounterVec,
    /// Time waiting for a sender's rate limiter: `si_egress_limiter_wait_seconds{sender_type}`.
    pub limiter_wait: HistogramVec,
    /// Twilio request latency: `si_egress_twilio_request_seconds{kind}`.
    pub latency: HistogramVec,
    /// Operations held in memory (queued, waiting, in flight, uncommitted).
    pub queue_depth: IntGauge,
    /// Twilio requests in flight.
    pub in_flight: IntGauge,
    /// Sender tasks alive (one per sender with recent work).
    pub senders: IntGauge,
    /// Paused input partitions (backpressure).
    pub paused_partitions: IntGauge,
    /// Operations ended from the ledger instead of calling Twilio again.
    pub ledger_hits: prometheus::IntCounter,
    /// Breakers not closed: `si_egress_circuits_open{scope, channel}` (scope
    /// `sender` or `channel`).
    pub circuits_open: IntGaugeVec,
    /// Breaker state changes: `si_egress_circuit_transitions_total{scope, channel, to}`.
    pub circuit_transitions: IntCounterVec,
    /// Requests Twilio refused for their credentials (401 / 20003):
    /// `si_egress_twilio_auth_failures_total`.
    pub auth_failures: prometheus::IntCounter,
    /// 1 while Twilio refuses the current credentials (operations held), else 0:
    /// `si_egress_twilio_credentials_rejected`.
    pub credentials_rejected: IntGauge,
    /// Credential reloads by result (`changed`, `unchanged`, `error`):
    /// `si_egress_twilio_credential_reloads_total{result}`.
    pub credential_reloads: IntCounterVec,
}

impl EgressMetrics {
    /// Registers the metrics on the stage registry.
    ///
    /// # Errors
    /// When a metric is registered twice.
    pub fn new(stage: &StageMetrics) -> anyhow::Result<Self> {
        let registry = stage.registry();
        let counter_vec =
            |name: &str, help: &str, labels: &[&str]| -> anyhow::Result<IntCounterVec> {
                let metric = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(metric.clone()))?;
                Ok(metric)
            };
        let histogram_vec = |name: &str,
                             help: &str,
                             labels: &[&str],
                             buckets: Vec<f64>|
         -> anyhow::Result<HistogramVec> {
            let metric =
                HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let gauge = |name: &str, help: &str| -> anyhow::Result<IntGauge> {
            let metric = IntGauge::new(name, help)?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let ledger_hits = prometheus::IntCounter::new(
            "si_egress_ledger_hits_total",
            "Operations ended with the ledger's recorded Twilio answer instead of a new request",
        )?;
        registry.register(Box::new(ledger_hits.clone()))?;
        let auth_failures = prometheus::IntCounter::new(
            "si_egress_twilio_auth_failures_total",
            "Twilio requests refused for their credentials (HTTP 401 / error 20003)",
        )?;
        registry.register(Box::new(auth_failures.clone()))?;
        Ok(Self {
            operations: counter_vec(
                "si_egress_operations_total",
                "Operations ended, by outcome and Twilio error code",
                &["outcome", "error_code"],
            )?,
            requests: counter_vec(
                "si_egress_twilio_requests_total",
                "Twilio requests, by operation kind, result and Twilio error code",
                &["kind", "result", "error_code"],
            )?,
            retries: counter_vec(
                "si_egress_retries_total",
                "Retries scheduled, by reason",
                &["reason"],
            )?,
            limiter_wait: histogram_vec(
                "si_egress_limiter_wait_seconds",
                "Time an attempt waited for its sender's rate limiter",
                &["sender_type"],
                vec![
                    0.0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ],
            )?,
            latency: histogram_vec(
                "si_egress_twilio_request_seconds",
                "Twilio request latency, by operation kind",
                &["kind"],
                vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0],
            )?,
            queue_depth: gauge(
                "si_egress_queue_depth",
                "Operations held in memory: queued, waiting for a retry, in flight or not yet committed",
            )?,
            in_flight: gauge("si_egress_in_flight", "Twilio requests in flight")?,
            senders: gauge(
                "si_egress_senders",
                "Sender tasks alive (senders with work in the last EGRESS_SENDER_IDLE_TIMEOUT)",
            )?,
            paused_partitions: gauge(
                "si_egress_paused_partitions",
                "Input partitions paused because their operations fill the queue",
            )?,
            ledger_hits,
            circuits_open: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "si_egress_circuits_open",
                        "Circuit breakers open or half-open, by scope (sender, channel) and channel",
                    ),
                    &["scope", "channel"],
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            circuit_transitions: counter_vec(
                "si_egress_circuit_transitions_total",
                "Circuit breaker state changes, by scope, channel and new state (open, half_open, closed)",
                &["scope", "channel", "to"],
            )?,
            auth_failures,
            credentials_rejected: gauge(
                "si_egress_twilio_credentials_rejected",
                "1 while Twilio refuses egress's current credentials and operations are held, else 0",
            )?,
            credential_reloads: counter_vec(
                "si_egress_twilio_credential_reloads_total",
                "Reloads of the Twilio credentials (TWILIO_CREDENTIALS_DIR), by result: changed, unchanged, error",
                &["result"],
            )?,
        })
    }
}
