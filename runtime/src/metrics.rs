//! Prometheus metrics of a stream stage, registered in one [`Registry`] that
//! the [`crate::AdminServer`] serves on `/metrics`.
//!
//! Every metric carries the constant label `stage`. Other labels take few
//! values: topic names as declared in `topics.yaml` (without the environment
//! prefix), partition numbers, outcome and error-kind symbols. Never an
//! address, SID or key.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// The metrics every stream stage exports.
#[derive(Clone, Debug)]
pub struct StageMetrics {
    registry: Registry,
    /// Input records read, by topic.
    pub records_in: IntCounterVec,
    /// Records written (outputs, not changelog), by topic.
    pub records_out: IntCounterVec,
    /// Records dead-lettered, by error kind (`UNDECODABLE`, `INVALID`, …).
    pub dead_letters: IntCounterVec,
    /// Transactions by outcome (`committed`, `aborted`).
    pub transactions: IntCounterVec,
    /// Time to commit a transaction (offsets + commit), seconds.
    pub commit_seconds: Histogram,
    /// Records per committed transaction.
    pub batch_records: Histogram,
    /// Time to restore the state of newly assigned partitions, seconds.
    pub restore_seconds: Histogram,
    /// Changelog records read while restoring.
    pub restored_records: IntCounter,
    /// Entries held in the state stores of the assigned partitions.
    pub state_entries: IntGauge,
    /// State entries deleted by the TTL sweep.
    pub state_expired: IntCounter,
    /// Changelog records written (puts and tombstones).
    pub changelog_writes: IntCounter,
    /// Consumer lag (last stable offset minus position), by topic and partition.
    pub consumer_lag: IntGaugeVec,
    /// Assigned input partitions.
    pub assigned_partitions: IntGauge,
    /// Entries of each global table.
    pub table_entries: IntGaugeVec,
    /// Retriable failures that rolled a batch back (`registry`, `transaction`, …).
    pub retries: IntCounterVec,
    /// State timers handled, by outcome (`fired`, `failed`); counted per
    /// attempt, so a firing whose transaction aborted counts again when it is retried.
    pub timers: IntCounterVec,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl StageMetrics {
    /// Creates the metrics of `stage` in a fresh registry.
    ///
    /// # Panics
    /// Never in practice: the metric definitions are static and valid.
    #[must_use]
    #[allow(clippy::missing_panics_doc, clippy::expect_used)]
    pub fn new(stage: &str) -> Self {
        let labels = std::collections::HashMap::from([("stage".to_owned(), stage.to_owned())]);
        let registry =
            Registry::new_custom(None, Some(labels)).expect("a constant label set is valid");
        let counter_vec = |name: &str, help: &str, label: &[&str]| {
            let metric = IntCounterVec::new(opts(name, help), label).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("metric registered once");
            metric
        };
        let records_in = counter_vec("si_records_in_total", "Input records read", &["topic"]);
        let records_out = counter_vec(
            "si_records_out_total",
            "Records written, by topic",
            &["topic"],
        );
        let dead_letters = counter_vec(
            "si_dead_letters_total",
            "Records dead-lettered, by error kind",
            &["kind"],
        );
        let transactions = counter_vec(
            "si_transactions_total",
            "Transactions by outcome",
            &["outcome"],
        );
        let retries = counter_vec(
            "si_retries_total",
            "Retriable failures that rolled a batch back",
            &["reason"],
        );
        let timers = counter_vec(
            "si_state_timers_total",
            "State timers handled, by outcome",
            &["outcome"],
        );
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let metric = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid histogram");
            registry
                .register(Box::new(metric.clone()))
                .expect("metric registered once");
            metric
        };
        let commit_seconds = histogram(
            "si_transaction_commit_seconds",
            "Time to send offsets and commit a transaction",
            vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ],
        );
        let batch_records = histogram(
            "si_transaction_records",
            "Input records per committed transaction",
            vec![1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0],
        );
        let restore_seconds = histogram(
            "si_state_restore_seconds",
            "Time to restore the state of newly assigned partitions",
            vec![0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0],
        );
        let counter = |name: &str, help: &str| {
            let metric = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("metric registered once");
            metric
        };
        let restored_records = counter(
            "si_state_restored_records_total",
            "Changelog records read while restoring",
        );
        let state_expired = counter(
            "si_state_expired_total",
            "State entries deleted by the TTL sweep",
        );
        let changelog_writes = counter(
            "si_state_changelog_writes_total",
            "Changelog records written (puts and tombstones)",
        );
        let gauge = |name: &str, help: &str| {
            let metric = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("metric registered once");
            metric
        };
        let state_entries = gauge(
            "si_state_entries",
            "Entries in the state stores of the assigned partitions",
        );
        let assigned_partitions = gauge("si_assigned_partitions", "Assigned input partitions");
        let gauge_vec = |name: &str, help: &str, label: &[&str]| {
            let metric = IntGaugeVec::new(opts(name, help), label).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("metric registered once");
            metric
        };
        let consumer_lag = gauge_vec(
            "si_consumer_lag",
            "Records between the consumer position and the last stable offset",
            &["topic", "partition"],
        );
        let table_entries = gauge_vec("si_table_entries", "Entries of a global table", &["table"]);
        Self {
            registry,
            records_in,
            records_out,
            dead_letters,
            transactions,
            commit_seconds,
            batch_records,
            restore_seconds,
            restored_records,
            state_entries,
            state_expired,
            changelog_writes,
            consumer_lag,
            assigned_partitions,
            table_entries,
            retries,
            timers,
        }
    }

    /// The registry to serve (and to register a stage's own metrics in).
    #[must_use]
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, TextEncoder};

    #[test]
    fn metrics_carry_the_stage_label() -> anyhow::Result<()> {
        let metrics = StageMetrics::new("normalize");
        metrics
            .records_in
            .with_label_values(&["twilio.webhooks.v1"])
            .inc();
        let mut out = Vec::new();
        TextEncoder::new().encode(&metrics.registry().gather(), &mut out)?;
        let text = String::from_utf8(out)?;
        assert!(
            text.contains(r#"si_records_in_total{topic="twilio.webhooks.v1",stage="normalize"} 1"#),
            "{text}"
        );
        Ok(())
    }
}
