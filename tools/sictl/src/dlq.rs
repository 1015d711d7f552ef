//! `sictl dlq replay`: sends dead-lettered outbound operations back to egress.
//!
//! Reads `twilio.outbound.dlq.v1` from the beginning up to its end at start
//! (read_committed: only what egress committed), picks the chosen operations
//! (by `operation_id`, or all), and produces each operation unchanged to
//! `twilio.outbound.v1`, keyed by its `sender_key` (the same partition as
//! before), with an idempotent producer. The `operation_id` is kept, so egress's
//! ledger still recognises an operation Twilio already accepted. An operation
//! dead-lettered more than once is replayed once (its latest entry).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::Message as _;
use rdkafka::TopicPartitionList;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer as _, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::Offset;
use serde::Serialize;
use si_runtime::KafkaArgs;
use si_runtime::table::EndOfPartitionIsFine;
use si_schemas::records::OutboundDeadLetter;
use si_schemas::{Codec, topics};

/// Which dead letters to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every operation on the DLQ.
    All,
    /// These operation ids.
    Ids(BTreeSet<String>),
}

/// How to replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub selection: Selection,
    /// Only report what would be replayed.
    pub dry_run: bool,
    /// Longest time to read the DLQ to its end.
    pub timeout: Duration,
}

/// One operation chosen for replay.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Replayed {
    pub operation_id: String,
    pub sender_key: String,
    pub conversation_id: String,
    /// Why egress dead-lettered it.
    pub reason: String,
    pub error_code: Option<i32>,
    /// DLQ partition and offset of the entry replayed.
    pub dlq_partition: i32,
    pub dlq_offset: i64,
    /// Where it was produced (`None` on a dry run).
    pub outbound_partition: Option<i32>,
    pub outbound_offset: Option<i64>,
}

/// What a replay did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayReport {
    /// Dead letters read.
    pub read: usize,
    /// Operations replayed (or, on a dry run, that would be).
    pub replayed: Vec<Replayed>,
    /// Requested ids not on the DLQ.
    pub missing: Vec<String>,
    pub dry_run: bool,
}

struct Entry {
    partition: i32,
    offset: i64,
    letter: OutboundDeadLetter,
    traceparent: Option<String>,
}

/// Reads the DLQ and replays the chosen operations.
///
/// # Errors
/// When the DLQ cannot be read to its end in time, a record does not decode, or
/// producing fails.
pub async fn replay(
    kafka: &KafkaArgs,
    codec: &Codec,
    options: &ReplayOptions,
) -> anyhow::Result<ReplayReport> {
    let entries = read_dlq(kafka, codec, options.timeout).await?;
    let read = entries.len();
    // The latest entry of each chosen operation, in DLQ order.
    let mut latest: BTreeMap<String, Entry> = BTreeMap::new();
    for entry in entries {
        let id = &entry.letter.operation.operation_id;
        let wanted = match &options.selection {
            Selection::All => true,
            Selection::Ids(ids) => ids.contains(id),
        };
        if wanted {
            latest.insert(id.clone(), entry);
        }
    }
    let missing = match &options.selection {
        Selection::All => Vec::new(),
        Selection::Ids(ids) => ids
            .iter()
            .filter(|id| !latest.contains_key(*id))
            .cloned()
            .collect(),
    };
    let mut chosen: Vec<Entry> = latest.into_values().collect();
    chosen.sort_by_key(|e| (e.partition, e.offset));

    let mut report = ReplayReport {
        read,
        missing,
        dry_run: options.dry_run,
        ..ReplayReport::default()
    };
    let producer: Option<FutureProducer> = if options.dry_run || chosen.is_empty() {
        None
    } else {
        Some(
            si_runtime::kafka::durable_producer_config(kafka, "sictl-dlq-replay")
                .create()
                .context("creating the producer")?,
        )
    };
    let outbound = kafka.topic(topics::OUTBOUND);
    for entry in chosen {
        let operation = &entry.letter.operation;
        let mut replayed = Replayed {
            operation_id: operation.operation_id.clone(),
            sender_key: operation.sender_key.clone(),
            conversation_id: operation.conversation_id.clone(),
            reason: entry.letter.reason.clone(),
            error_code: entry.letter.error_code,
            dlq_partition: entry.partition,
            dlq_offset: entry.offset,
            outbound_partition: None,
            outbound_offset: None,
        };
        if let Some(producer) = &producer {
            let payload = codec
                .encode(&outbound, operation)
                .await
                .context("encoding the operation")?;
            let mut record = FutureRecord::to(&outbound)
                .key(operation.sender_key.as_str())
                .payload(&payload);
            if let Some(traceparent) = &entry.traceparent {
                record = record.headers(OwnedHeaders::new().insert(Header {
                    key: "traceparent",
                    value: Some(traceparent.as_str()),
                }));
            }
            let delivery = producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(error, _)| error)
                .with_context(|| format!("producing {}", operation.operation_id))?;
            replayed.outbound_partition = Some(delivery.partition);
            replayed.outbound_offset = Some(delivery.offset);
        }
        report.replayed.push(replayed);
    }
    Ok(report)
}

/// Each partition of `topic` with its low and high watermark.
fn partition_ends(probe: &BaseConsumer, topic: &str) -> anyhow::Result<Vec<(i32, i64, i64)>> {
    let metadata = probe.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let meta = metadata
        .topics()
        .first()
        .ok_or_else(|| anyhow::anyhow!("no metadata for {topic}"))?;
    if let Some(error) = meta.error() {
        anyhow::bail!("topic {topic}: {error:?}");
    }
    meta.partitions()
        .iter()
        .map(|p| {
            let (low, high) = probe.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
            Ok((p.id(), low, high))
        })
        .collect()
}

/// Every committed DLQ record up to the end of each partition at start.
async fn read_dlq(
    kafka: &KafkaArgs,
    codec: &Codec,
    timeout: Duration,
) -> anyhow::Result<Vec<Entry>> {
    let topic = kafka.topic(topics::OUTBOUND_DLQ);
    let mut config = si_runtime::kafka::client_config(kafka, "sictl-dlq-replay");
    config
        .set(
            "group.id",
            format!(
                "{}sictl-dlq-replay-{}",
                kafka.topic_prefix,
                std::process::id()
            ),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set_log_level(RDKafkaLogLevel::Warning);
    let probe_config = config.clone();
    let probe_topic = topic.clone();
    // Partitions and where each ends now; records arriving later are not replayed.
    let ends = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(i32, i64, i64)>> {
        let probe: BaseConsumer = probe_config.create()?;
        // Leaders moving or a broker restarting fail a call for a moment: retry
        // for up to 10 s.
        let until = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match partition_ends(&probe, &probe_topic) {
                Err(error) if std::time::Instant::now() < until => {
                    tracing::debug!(error = format!("{error:#}"), "DLQ metadata; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                result => return result,
            }
        }
    })
    .await??;
    let mut assignment = TopicPartitionList::new();
    let mut open: BTreeSet<i32> = BTreeSet::new();
    for (partition, low, high) in &ends {
        if high > low {
            assignment.add_partition_offset(&topic, *partition, Offset::Beginning)?;
            open.insert(*partition);
        }
    }
    let mut out = Vec::new();
    if open.is_empty() {
        return Ok(out);
    }
    let consumer: StreamConsumer<EndOfPartitionIsFine> =
        config.create_with_context(EndOfPartitionIsFine)?;
    consumer.assign(&assignment)?;
    let end_of: BTreeMap<i32, i64> = ends.iter().map(|(p, _, high)| (*p, *high)).collect();
    let deadline = tokio::time::Instant::now() + timeout;
    while !open.is_empty() {
        let received = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "the DLQ was not read to its end within {timeout:?} (partitions {open:?} left)"
                )
            })?;
        let message = match received {
            Ok(message) => message,
            Err(KafkaError::PartitionEOF(partition)) => {
                open.remove(&partition);
                continue;
            }
            Err(error) => return Err(error).context("reading the DLQ"),
        };
        let partition = message.partition();
        let offset = message.offset();
        if offset + 1 >= end_of.get(&partition).copied().unwrap_or(0) {
            open.remove(&partition);
        }
        if offset >= end_of.get(&partition).copied().unwrap_or(0) {
            continue;
        }
        let Some(payload) = message.payload() else {
            continue;
        };
        let letter = codec
            .decode::<OutboundDeadLetter>(payload)
            .await
            .with_context(|| format!("decoding DLQ record {partition}@{offset}"))?;
        let traceparent = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key == "traceparent")
                .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
        });
        out.push(Entry {
            partition,
            offset,
            letter,
            traceparent,
        });
    }
    Ok(out)
}
