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

    /// Sets `si_consumer_lag` for every input partition this member holds
    /// and is fetching ([`partition_lag`]), and removes it for those it no
    /// longer holds.
    fn record_lag(&self, statistics: &Statistics) {
        for name in &self.inputs {
            let Some(topic) = statistics.topics.get(name) else {
                continue;
            };
            let declared = crate::config::declared(&self.prefix, name);
            for (partition, stats) in &topic.partitions {
                if *partition < 0 {
                    continue;
                }
                let labels = [declared, &partition.to_string()];
                if !stats.desired {
                    let _ = self.metrics.consumer_lag.remove_label_values(&labels);
                } else if let Some(lag) = partition_lag(stats) {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&labels)
                        .set(lag);
                }
            }
        }
    }
}

/// How many offsets of a fetching partition a `read_committed` consumer has
/// yet to read: the last stable offset minus the consumer's position, both
/// from one statistics report.
///
/// The position is librdkafka's `app_offset`: one past the last record
/// polled, or past the transaction marker after it (librdkafka moves it
/// over the markers it hides). Upstream stages write in transactions, so a
/// caught-up input partition ends in a commit marker, one offset past the
/// offset a transaction commits for the group. librdkafka's own
/// `consumer_lag` counts from the committed offset as librdkafka knows it,
/// which for these consumers (their transactions commit, never they) is at
/// best the one fetched when the partition was assigned. Right after an
/// assignment, a seek or a rewind nothing has been polled (`app_offset` is
/// -1), and the position is where fetching starts (`next_offset`). None
/// while the partition is not fetching or its end is not known yet.
fn partition_lag(stats: &rdkafka::statistics::Partition) -> Option<i64> {
    if stats.fetch_state != "active" || stats.ls_offset < 0 {
        return None;
    }
    let position = if stats.app_offset >= 0 {
        stats.app_offset
    } else {
        stats.next_offset
    };
    (position >= 0).then(|| (stats.ls_offset - position).max(0))
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

    fn offsets(
        fetch_state: &str,
        app: i64,
        next: i64,
        stable: i64,
    ) -> rdkafka::statistics::Partition {
        rdkafka::statistics::Partition {
            app_offset: app,
            next_offset: next,
            ls_offset: stable,
            ..partition(0, true, fetch_state)
        }
    }

    #[test]
    fn lag_runs_from_the_position_to_the_last_stable_offset() {
        // 7 records and a marker behind (the committed offset, 42, is not used).
        assert_eq!(partition_lag(&offsets("active", 43, 51, 51)), Some(8));
        // Caught up: the position is past the last commit marker.
        assert_eq!(partition_lag(&offsets("active", 51, 51, 51)), Some(0));
        // Nothing polled since a seek: where fetching starts.
        assert_eq!(partition_lag(&offsets("active", -1, 45, 51)), Some(6));
        // A stale end is not negative lag.
        assert_eq!(partition_lag(&offsets("active", 52, 52, 51)), Some(0));
        // Not fetching, or nothing known.
        assert_eq!(partition_lag(&offsets("offset-query", 43, 51, 51)), None);
        assert_eq!(partition_lag(&offsets("active", 43, 51, -1001)), None);
        assert_eq!(partition_lag(&offsets("active", -1, -1001, 51)), None);
    }

    #[test]
    fn the_watch_exports_lag_of_held_input_partitions_only() {
        let metrics = StageMetrics::new("t");
        let watch = FetchWatch::new(vec!["p.in".to_owned()], "p.", metrics.clone());
        // Read from what is exported: asking the gauge would create it.
        let lag = |partition: &str| {
            metrics
                .registry()
                .gather()
                .iter()
                .filter(|family| family.name() == "si_consumer_lag")
                .flat_map(|family| family.get_metric())
                .find(|m| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == "partition" && l.value() == partition)
                })
                .map(|m| m.get_gauge().get_value())
        };
        let held = |id, app| rdkafka::statistics::Partition {
            partition: id,
            ..offsets("active", app, 51, 51)
        };
        watch.observe(&statistics(vec![held(0, 40), held(1, 51)]), false);
        assert_eq!((lag("0"), lag("1")), (Some(11.0), Some(0.0)));
        // Partition 0 moved to another member.
        let gone = rdkafka::statistics::Partition {
            desired: false,
            ..held(0, 40)
        };
        watch.observe(&statistics(vec![gone, held(1, 49)]), false);
        assert_eq!((lag("0"), lag("1")), (None, Some(2.0)));
    }
}
