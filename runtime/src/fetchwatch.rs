//! Whether a consumer that holds input partitions is reading any of them,
//! from librdkafka's statistics, for both drivers ([`crate::stream`] and
//! [`crate::deferred`]); and their lag, for the metrics.
//!
//! After a broker restart the chaos test saw a restarted stage assigned its
//! partitions and then read nothing for minutes while its loop kept turning
//! (so the stuck-loop watchdog never fired) and its upstream wrote.
//! librdkafka's statistics say whether a partition is fetching (`fetch_state`
//! `active`) or still waiting for its start offset; the watch logs what they
//! say, and a process that fetches nothing for [`NOT_FETCHING_LIMIT`] is
//! restarted like a crashed one. A stage whose upstream is quiet, or whose
//! input waits on an open transaction, is fetching: neither trips it.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::statistics::Statistics;

use crate::metrics::StageMetrics;

/// How long a stage may hold input partitions of which none is fetching
/// before it exits to be restarted.
pub const NOT_FETCHING_LIMIT: Duration = Duration::from_secs(30);

/// When the watch first logs the partitions' states.
pub const NOT_FETCHING_WARN: Duration = Duration::from_secs(10);

/// The statistics interval the drivers' consumers use (`statistics.interval.ms`).
pub const STATISTICS_INTERVAL_MS: &str = "10000";

/// The watch over one consumer's input partitions.
#[derive(Debug)]
pub struct FetchWatch {
    /// Full names of the input topics.
    inputs: Vec<String>,
    /// The topic prefix, left out of logs and metric labels.
    prefix: String,
    metrics: StageMetrics,
    /// Since when the held input partitions have none fetching.
    since: Mutex<Option<Instant>>,
}

impl FetchWatch {
    /// A watch over `inputs` (full topic names).
    #[must_use]
    pub fn new(inputs: Vec<String>, prefix: &str, metrics: StageMetrics) -> Self {
        Self {
            inputs,
            prefix: prefix.to_owned(),
            metrics,
            since: Mutex::new(None),
        }
    }

    /// Looks at one statistics report: sets the lag of every fetching
    /// partition, and returns the reason to exit once the held input
    /// partitions have had none fetching for [`NOT_FETCHING_LIMIT`].
    /// `restoring`: partitions paused for a restore may not have started
    /// fetching, however long it takes, so the time is not counted.
    pub fn observe(&self, statistics: &Statistics, restoring: bool) -> Option<String> {
        self.record_lag(statistics);
        let mut since = self.since.lock().unwrap_or_else(PoisonError::into_inner);
        if restoring {
            *since = None;
            return None;
        }
        let (held, fetching, states) = fetching_partitions(statistics, &self.inputs, &self.prefix);
        if held == 0 || fetching > 0 {
            if since.take().is_some() {
                tracing::info!(
                    partitions = held,
                    fetching,
                    "input partitions fetching again"
                );
            }
            return None;
        }
        let stalled = since.get_or_insert_with(Instant::now).elapsed();
        if stalled >= NOT_FETCHING_LIMIT {
            return Some(format!(
                "none of the {held} input partitions this member holds has fetched for {}s ({}): exiting to be restarted",
                stalled.as_secs(),
                states.join("; ")
            ));
        }
        if stalled >= NOT_FETCHING_WARN {
            tracing::warn!(
                partitions = held,
                seconds = stalled.as_secs(),
                states = %states.join("; "),
                "none of the input partitions is fetching"
            );
        }
        None
    }

    fn record_lag(&self, statistics: &Statistics) {
        for (name, topic) in &statistics.topics {
            let declared = crate::config::declared(&self.prefix, name);
            for (partition, stats) in &topic.partitions {
                if *partition >= 0 && stats.consumer_lag >= 0 && stats.fetch_state == "active" {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[declared, &partition.to_string()])
                        .set(stats.consumer_lag);
                }
            }
        }
    }
}

/// Of the partitions of `inputs` this member holds (librdkafka's `desired`):
/// how many, how many are fetching (`fetch_state` `active`), and the state
/// and offsets of up to six that are not.
fn fetching_partitions(
    statistics: &Statistics,
    inputs: &[String],
    prefix: &str,
) -> (usize, usize, Vec<String>) {
    let mut held = 0;
    let mut fetching = 0;
    let mut states = Vec::new();
    for name in inputs {
        let Some(topic) = statistics.topics.get(name) else {
            continue;
        };
        for (partition, stats) in &topic.partitions {
            if *partition < 0 || !stats.desired {
                continue;
            }
            held += 1;
            if stats.fetch_state == "active" {
                fetching += 1;
            } else if states.len() < 6 {
                states.push(format!(
                    "{} [{partition}] {} (committed {}, next {}, stable {}, high {})",
                    crate::config::declared(prefix, name),
                    stats.fetch_state,
                    stats.committed_offset,
                    stats.next_offset,
                    stats.ls_offset,
                    stats.hi_offset
                ));
            }
        }
    }
    (held, fetching, states)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(id: i32, desired: bool, fetch_state: &str) -> rdkafka::statistics::Partition {
        rdkafka::statistics::Partition {
            partition: id,
            desired,
            fetch_state: fetch_state.to_owned(),
            committed_offset: 42,
            ..Default::default()
        }
    }

    fn statistics(input: Vec<rdkafka::statistics::Partition>) -> Statistics {
        let topic = |parts: Vec<rdkafka::statistics::Partition>| rdkafka::statistics::Topic {
            partitions: parts.into_iter().map(|p| (p.partition, p)).collect(),
            ..Default::default()
        };
        let mut statistics = Statistics::default();
        statistics.topics.insert("p.in".into(), topic(input));
        // Not an input of the stage.
        statistics
            .topics
            .insert("p.other".into(), topic(vec![partition(0, true, "none")]));
        statistics
    }

    #[test]
    fn the_fetch_watch_counts_held_input_partitions_and_names_the_idle_ones() {
        let statistics = statistics(vec![
            partition(0, true, "none"),
            partition(1, true, "active"),
            // Not held by this member, and librdkafka's internal -1.
            partition(2, false, "none"),
            partition(-1, true, "none"),
        ]);
        let inputs = vec!["p.in".to_owned()];
        let (held, fetching, states) = fetching_partitions(&statistics, &inputs, "p.");
        assert_eq!((held, fetching), (2, 1));
        assert_eq!(states.len(), 1);
        assert!(
            states[0].starts_with("in [0] none (committed 42"),
            "{states:?}"
        );
    }

    /// As if the partitions had not fetched since the limit.
    fn backdate(watch: &FetchWatch) {
        *watch.since.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(Instant::now() - NOT_FETCHING_LIMIT);
    }

    #[test]
    fn the_watch_trips_only_after_the_limit_and_a_fetching_partition_resets_it() {
        let watch = FetchWatch::new(vec!["p.in".to_owned()], "p.", StageMetrics::new("t"));
        let idle = statistics(vec![partition(0, true, "offset-query")]);
        let busy = statistics(vec![partition(0, true, "active")]);
        assert_eq!(
            watch.observe(&idle, false),
            None,
            "the first idle report starts the clock"
        );
        backdate(&watch);
        assert_eq!(watch.observe(&idle, true), None, "a restore is not counted");
        assert_eq!(
            watch.observe(&idle, false),
            None,
            "the restore restarted the clock"
        );
        backdate(&watch);
        let fatal = watch.observe(&idle, false).expect("30 s idle trips it");
        assert!(fatal.contains("in [0] offset-query"), "{fatal}");
        backdate(&watch);
        assert_eq!(watch.observe(&busy, false), None);
        assert_eq!(
            *watch.since.lock().unwrap_or_else(PoisonError::into_inner),
            None,
            "fetching resets the clock"
        );
    }
}
