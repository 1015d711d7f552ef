//! Global tables: compacted topics that every instance reads in full (identity,
//! consent registry, participant directory), kept in memory and up to date in
//! the background.
//!
//! A table consumer joins no consumer group: it is assigned every partition of
//! the topic from the beginning and never commits. It reads with
//! `read_committed` (so a transactional writer's aborted records never show)
//! and applies each record in order: a value replaces the key's entry, a
//! tombstone removes it. The table is *loaded* once every partition has been
//! read to its end as it was when the table started (librdkafka's partition
//! EOF, which with `read_committed` means the last stable offset); until then
//! its readiness check (`table:<topic>`) keeps `/readyz` at 503 and the stream
//! runner does not start processing. A record that cannot be decoded is logged
//! and skipped (a table has no transaction to dead-letter in); a registry
//! that cannot be reached is retried.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use si_schemas::{AvroRecord, Codec};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::admin::Readiness;
use crate::config::KafkaArgs;
use crate::mask::mask_address;
use crate::metrics::StageMetrics;

/// Context of consumers that read to the end of partitions (tables, restores,
/// with `enable.partition.eof`): reaching the end is expected, not an error
/// worth logging. With the default context librdkafka's report of it is
/// logged as an error (`Global error: PartitionEOF`) at every restore.
pub struct EndOfPartitionIsFine;

impl ClientContext for EndOfPartitionIsFine {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_))
            && error.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        {
            tracing::error!(%error, reason, "librdkafka error");
        }
    }
}

impl ConsumerContext for EndOfPartitionIsFine {}

struct Inner<V> {
    topic: String,
    entries: RwLock<HashMap<String, Arc<V>>>,
    loaded: watch::Sender<bool>,
}

/// A compacted topic held in memory. Cheap to clone; clones share the table.
pub struct GlobalTable<V> {
    inner: Arc<Inner<V>>,
}

impl<V> Clone for GlobalTable<V> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<V> std::fmt::Debug for GlobalTable<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobalTable")
            .field("topic", &self.inner.topic)
            .field("entries", &self.len())
            .field("loaded", &self.is_loaded())
            .finish()
    }
}

impl<V> GlobalTable<V> {
    fn empty(topic: &str) -> Self {
        let (loaded, _) = watch::channel(false);
        Self {
            inner: Arc::new(Inner {
                topic: topic.to_owned(),
                entries: RwLock::default(),
                loaded,
            }),
        }
    }

    /// A loaded table holding `entries` (for unit tests and tools).
    #[must_use]
    pub fn from_entries(topic: &str, entries: impl IntoIterator<Item = (String, V)>) -> Self {
        let table = Self::empty(topic);
        for (key, value) in entries {
            table.apply(key, Some(value));
        }
        table.inner.loaded.send_replace(true);
        table
    }

    /// The entry of `key`.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<Arc<V>> {
        self.inner
            .entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    /// The entry with the smallest key among those `matches` accepts: a scan
    /// of the whole table, for rare lookups by a value (a user id in the
    /// identity table). The smallest key makes the answer the same on every
    /// replica and every replay.
    #[must_use]
    pub fn find_first(&self, mut matches: impl FnMut(&V) -> bool) -> Option<(String, Arc<V>)> {
        let entries = self
            .inner
            .entries
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        entries
            .iter()
            .filter(|(_, v)| matches(v))
            .min_by(|a, b| a.0.cmp(b.0))
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
    }

    /// Number of entries.
    #[must_use]
    pub fn len(&self) -> usize {
        self.inner
            .entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether the table has no entry.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The topic (full name).
    #[must_use]
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// Whether the initial load finished.
    #[must_use]
    pub fn is_loaded(&self) -> bool {
        *self.inner.loaded.borrow()
    }

    /// Waits for the initial load.
    pub async fn loaded(&self) {
        let mut rx = self.inner.loaded.subscribe();
        let _ = rx.wait_for(|loaded| *loaded).await;
    }

    /// Sets or removes an entry (what the background reader does per record).
    pub fn apply(&self, key: String, value: Option<V>) {
        let mut entries = self
            .inner
            .entries
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match value {
            Some(v) => {
                entries.insert(key, Arc::new(v));
            }
            None => {
                entries.remove(&key);
            }
        }
    }
}

impl<V: AvroRecord> GlobalTable<V> {
    /// Starts reading `topic` (as declared in `topics.yaml`) in the background
    /// until `shutdown`. Returns at once; see [`Self::loaded`].
    ///
    /// # Errors
    /// When the consumer cannot be created or the topic's metadata fetched.
    pub async fn start(
        kafka: &KafkaArgs,
        stage: &str,
        topic: &'static str,
        codec: Codec,
        readiness: &Readiness,
        metrics: &StageMetrics,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let full = kafka.topic(topic);
        let table = Self::empty(&full);
        let check_name: &'static str = Box::leak(format!("table:{topic}").into_boxed_str());
        let check = readiness.check(check_name);
        let mut config = crate::kafka::client_config(kafka, &format!("{stage}-table"));
        config
            .set(
                "group.id",
                format!("{}si-{stage}-tables", kafka.topic_prefix),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true");
        let consumer: StreamConsumer<EndOfPartitionIsFine> =
            config.create_with_context(EndOfPartitionIsFine)?;
        let partitions = {
            let full = full.clone();
            let consumer_metadata = tokio::task::spawn_blocking({
                let config = crate::kafka::client_config(kafka, &format!("{stage}-table"));
                move || -> anyhow::Result<i32> {
                    let counts = crate::kafka::topic_partitions(&config, &[full])
                        .map_err(anyhow::Error::msg)?;
                    Ok(i32::try_from(counts[0])?)
                }
            });
            consumer_metadata.await??
        };
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            assignment.add_partition_offset(&full, p, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        let gauge = metrics.table_entries.with_label_values(&[topic]);
        let reader = table.clone();
        tokio::spawn(async move {
            let mut at_end = vec![false; usize::try_from(partitions).unwrap_or(0)];
            loop {
                let received = tokio::select! {
                    () = shutdown.cancelled() => break,
                    received = consumer.recv() => received,
                };
                match received {
                    Ok(message) => {
                        let key = message
                            .key()
                            .map(|k| String::from_utf8_lossy(k).into_owned())
                            .unwrap_or_default();
                        let value = match message.payload() {
                            None => None,
                            Some(bytes) => {
                                match decode_with_retry::<V>(&codec, bytes, &shutdown).await {
                                    Some(Ok(v)) => Some(v),
                                    Some(Err(error)) => {
                                        tracing::error!(
                                            topic = %reader.topic(),
                                            partition = message.partition(),
                                            offset = message.offset(),
                                            key = %mask_address(&key),
                                            %error,
                                            "global table record does not decode; skipped"
                                        );
                                        continue;
                                    }
                                    None => break,
                                }
                            }
                        };
                        reader.apply(key, value);
                        gauge.set(i64::try_from(reader.len()).unwrap_or(i64::MAX));
                    }
                    Err(KafkaError::PartitionEOF(p)) => {
                        if let Some(done) = usize::try_from(p).ok().and_then(|p| at_end.get_mut(p))
                        {
                            *done = true;
                        }
                        if !reader.is_loaded() && at_end.iter().all(|d| *d) {
                            // Readiness first: whoever waits on `loaded` may look at it.
                            check.set(true);
                            reader.inner.loaded.send_replace(true);
                            tracing::info!(
                                topic = %reader.topic(),
                                entries = reader.len(),
                                "global table loaded"
                            );
                        }
                    }
                    Err(error) => {
                        tracing::warn!(topic = %reader.topic(), %error, "global table consumer error");
                    }
                }
            }
        });
        Ok(table)
    }
}

/// Decodes, retrying while the registry is unreachable; `None` on shutdown.
async fn decode_with_retry<V: AvroRecord>(
    codec: &Codec,
    bytes: &[u8],
    shutdown: &CancellationToken,
) -> Option<Result<V, si_schemas::CodecError>> {
    let mut backoff = crate::backoff::Backoff::brief();
    loop {
        match codec.decode::<V>(bytes).await {
            Err(error) if error.is_retriable() => {
                tracing::warn!(%error, "schema registry unavailable; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
            other => return Some(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_a_partition_is_not_logged_other_errors_are() {
        use rdkafka::types::RDKafkaErrorCode;
        use tracing_subscriber::layer::SubscriberExt;

        let lines = crate::test_log::Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_writer(move || writer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            EndOfPartitionIsFine.error(KafkaError::PartitionEOF(0), "end of partition");
            EndOfPartitionIsFine.error(
                KafkaError::Global(RDKafkaErrorCode::PartitionEOF),
                "Fetch from broker 1 reached end of partition",
            );
            EndOfPartitionIsFine.error(
                KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
                "1/1 brokers are down",
            );
        });
        let written = lines.text();
        assert!(
            !written.contains("end of partition"),
            "the end of a partition was logged: {written}"
        );
        assert!(
            written.contains("ERROR") && written.contains("1/1 brokers are down"),
            "another error is logged: {written}"
        );
    }

    #[test]
    fn from_entries_is_loaded_and_tombstones_remove() {
        let table = GlobalTable::from_entries("t", [("a".to_owned(), 1), ("b".to_owned(), 2)]);
        assert!(table.is_loaded());
        assert_eq!(table.get("a").as_deref(), Some(&1));
        table.apply("a".into(), None);
        assert_eq!(table.get("a"), None);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn find_first_takes_the_smallest_matching_key() {
        let table = GlobalTable::from_entries(
            "t",
            [
                ("c".to_owned(), 7),
                ("b".to_owned(), 7),
                ("a".to_owned(), 1),
            ],
        );
        let (key, value) = table.find_first(|v| *v == 7).expect("two match");
        assert_eq!((key.as_str(), *value), ("b", 7));
        assert_eq!(table.find_first(|v| *v == 9), None);
    }
}
