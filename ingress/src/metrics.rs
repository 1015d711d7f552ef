//! Prometheus metrics of ingress. Labels are routes, outcomes and reasons only:
//! never an address or a SID.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use si_schemas::records::WebhookRoute;

use crate::app::{ROUTES, route_label};

/// The ingress metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Requests by route and outcome.
    pub requests: IntCounterVec,
    /// `requests{outcome="accepted"}` of each of [`ROUTES`], in its order:
    /// resolved once, not hashed and looked up for every webhook.
    accepted: Vec<IntCounter>,
    /// Signature failures by reason.
    pub signature_failures: IntCounterVec,
    /// Time until Kafka acknowledged a webhook.
    pub produce_seconds: Histogram,
    /// Requests being handled.
    pub in_flight: IntGauge,
    /// Webhook connections open.
    pub connections_open: IntGauge,
    /// Webhook connections accepted.
    pub connections_accepted: IntCounter,
    /// Times the accept loop waited for a free slot (`MAX_CONNECTIONS` open).
    pub connections_waited: IntCounter,
    /// Connections closed by a timeout, by timeout (`header_read`, `idle`).
    pub connection_timeouts: IntCounterVec,
    /// Reloads of the webhook secrets (`TWILIO_CREDENTIALS_DIR`), by result:
    /// `changed`, `unchanged`, `error`.
    pub secret_reloads: IntCounterVec,
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
        let connections_open = IntGauge::new(
            "si_ingress_connections_open",
            "Webhook connections open (at most MAX_CONNECTIONS)",
        )?;
        let connections_accepted = IntCounter::new(
            "si_ingress_connections_accepted_total",
            "Webhook connections accepted",
        )?;
        let connections_waited = IntCounter::new(
            "si_ingress_connections_waited_total",
            "Times MAX_CONNECTIONS connections were open and further ones waited in the accept backlog",
        )?;
        let connection_timeouts = IntCounterVec::new(
            Opts::new(
                "si_ingress_connection_timeouts_total",
                "Connections closed for a slow request head (header_read) or idling past IDLE_TIMEOUT (idle)",
            ),
            &["timeout"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(connections_open.clone()))?;
        registry.register(Box::new(connections_accepted.clone()))?;
        registry.register(Box::new(connections_waited.clone()))?;
        registry.register(Box::new(connection_timeouts.clone()))?;
        let secret_reloads = IntCounterVec::new(
            Opts::new(
                "si_ingress_secret_reloads_total",
                "Reloads of the webhook secrets (TWILIO_CREDENTIALS_DIR), by result: changed, unchanged, error",
            ),
            &["result"],
        )?;
        registry.register(Box::new(secret_reloads.clone()))?;
        registry.register(Box::new(signature_failures.clone()))?;
        registry.register(Box::new(produce_seconds.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        let accepted = ROUTES
            .iter()
            .map(|(_, route)| requests.with_label_values(&[route_label(*route), "accepted"]))
            .collect();
        Ok(Self {
            requests,
            accepted,
            signature_failures,
            produce_seconds,
            in_flight,
            connections_open,
            connections_accepted,
            connections_waited,
            connection_timeouts,
            secret_reloads,
        })
    }

    /// Counts an accepted webhook of `route`.
    pub fn accepted(&self, route: WebhookRoute) {
        let resolved = ROUTES
            .iter()
            .position(|(_, r)| *r == route)
            .and_then(|i| self.accepted.get(i));
        match resolved {
            Some(counter) => counter.inc(),
            // Not a route of ours: counted all the same.
            None => self
                .requests
                .with_label_values(&[route_label(route), "accepted"])
                .inc(),
        }
    }

    /// Counts a request refused with `outcome`, by its route's label (or
    /// `none`, `any` when no route is known).
    pub fn refused(&self, route: &str, outcome: &str) {
        self.requests.with_label_values(&[route, outcome]).inc();
    }
}
