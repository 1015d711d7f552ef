//! `sictl tail <topic>`: print a topic's records as JSON lines, values decoded
//! through the schema registry.

use std::io::Write;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::TopicPartitionList;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::topic_partition_list::Offset;
use serde_json::json;
use si_schemas::Codec;
use si_schemas::codec::value_to_json;

/// What to read and when to stop.
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// Full topic name.
    pub topic: String,
    /// Start at the end instead of the beginning.
    pub from_end: bool,
    /// Stop after this many records.
    pub max: Option<u64>,
    /// Stop when nothing arrives for this long (None: follow forever).
    pub idle_timeout: Option<Duration>,
    /// Also show records of open or aborted transactions.
    pub read_uncommitted: bool,
}

/// Reads the topic and writes one JSON object per record to `out`.
/// Returns how many records were printed.
///
/// # Errors
/// When the consumer cannot be created or the topic does not exist.
pub async fn run(
    kafka: &si_runtime::KafkaArgs,
    codec: &Codec,
    options: &TailOptions,
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    let mut config = si_runtime::kafka::client_config(kafka, "sictl-tail");
    config
        .set("group.id", format!("sictl-tail-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set(
            "isolation.level",
            if options.read_uncommitted {
                "read_uncommitted"
            } else {
                "read_committed"
            },
        )
        .set_log_level(RDKafkaLogLevel::Warning);
    let consumer: StreamConsumer = config.create()?;
    let topic = options.topic.clone();
    let metadata_consumer_config = config.clone();
    let partitions = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<i32>> {
        let probe: rdkafka::consumer::BaseConsumer = metadata_consumer_config.create()?;
        let metadata = probe.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let topic_meta = metadata
            .topics()
            .first()
            .ok_or_else(|| anyhow::anyhow!("no metadata for {topic}"))?;
        if let Some(error) = topic_meta.error() {
            anyhow::bail!("topic {topic}: {error:?}");
        }
        Ok(topic_meta.partitions().iter().map(|p| p.id()).collect())
    })
    .await??;
    let mut assignment = TopicPartitionList::new();
    let start = if options.from_end {
        Offset::End
    } else {
        Offset::Beginning
    };
    for partition in partitions {
        assignment.add_partition_offset(&options.topic, partition, start)?;
    }
    consumer.assign(&assignment)?;

    let mut printed = 0;
    loop {
        if options.max.is_some_and(|max| printed >= max) {
            break;
        }
        let message = match options.idle_timeout {
            Some(idle) => match tokio::time::timeout(idle, consumer.recv()).await {
                Ok(message) => message?,
                Err(_) => break,
            },
            None => consumer.recv().await?,
        };
        let value = match message.payload() {
            None => serde_json::Value::Null,
            Some(bytes) => match codec.decode_value(bytes).await {
                Ok((value, _)) => value_to_json(value),
                Err(error) => json!({ "undecodable": error.to_string() }),
            },
        };
        let headers: serde_json::Map<String, serde_json::Value> = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| {
                        let v = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                        (h.key.to_owned(), json!(v))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let line = json!({
            "topic": message.topic(),
            "partition": message.partition(),
            "offset": message.offset(),
            "timestamp": message.timestamp().to_millis(),
            "key": message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            "headers": headers,
            "value": value,
        });
        writeln!(out, "{line}")?;
        out.flush()?;
        printed += 1;
    }
    Ok(printed)
}
