//! The pipeline's topics as the benchmark reads them: for each hop's topic,
//! the record timestamp (the producing stage's create time) of every record
//! of a run, by the message's seq.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, Message as _};
use si_schemas::records::{
    CognitionResponse, ConversationEvent, DeliveryStatus, InboundMessage, OutboundOperation,
    TwilioWebhook,
};
use si_schemas::{AvroRecord, Codec, topics};
use si_testkit::TestEnv;

use crate::accounting::seq_in;

/// A topic a message passes, with the stage that writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// `twilio.webhooks.v1` (ingress).
    Webhooks,
    /// `si.conversation.events.v1` (normalize).
    Events,
    /// `si.inbound.v1` (consent).
    Inbound,
    /// `si.responses.v1` (the echo responder).
    Responses,
    /// `twilio.outbound.v1` (segment).
    Outbound,
    /// `twilio.delivery.v1` (egress, after Twilio's answer).
    Delivery,
}

impl Hop {
    /// Every hop, in the order a message passes them.
    pub const ALL: [Hop; 6] = [
        Hop::Webhooks,
        Hop::Events,
        Hop::Inbound,
        Hop::Responses,
        Hop::Outbound,
        Hop::Delivery,
    ];

    /// The topic (without prefix).
    #[must_use]
    pub fn topic(self) -> &'static str {
        match self {
            Hop::Webhooks => topics::WEBHOOKS,
            Hop::Events => topics::CONVERSATION_EVENTS,
            Hop::Inbound => topics::INBOUND,
            Hop::Responses => topics::RESPONSES,
            Hop::Outbound => topics::OUTBOUND,
            Hop::Delivery => topics::DELIVERY,
        }
    }

    /// The stage writing it.
    #[must_use]
    pub fn stage(self) -> &'static str {
        match self {
            Hop::Webhooks => "si-ingress",
            Hop::Events => "si-normalize",
            Hop::Inbound => "si-consent",
            Hop::Responses => "si-echo-responder",
            Hop::Outbound => "si-segment",
            Hop::Delivery => "si-egress",
        }
    }
}

/// seq → the timestamps (ms) of the run's records on one topic, in read order.
pub type Stamps = BTreeMap<u64, Vec<i64>>;

/// Every committed record of the topic `full` (prefixed name) as (create
/// timestamp ms, value bytes), read to the end of each partition as it is now.
///
/// # Errors
/// When the topic cannot be read within `deadline`.
pub fn read_raw(
    bootstrap_servers: &str,
    group_prefix: &str,
    full: &str,
    deadline: Duration,
) -> anyhow::Result<Vec<(i64, Vec<u8>)>> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap_servers)
        .set(
            "group.id",
            format!(
                "{group_prefix}bench-reader-{}",
                uuid::Uuid::new_v4().simple()
            ),
        )
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true");
    let consumer: BaseConsumer = config.create()?;
    let metadata = consumer.fetch_metadata(Some(full), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len());
    let mut assignment = TopicPartitionList::new();
    let mut pending = HashSet::new();
    for p in 0..i32::try_from(partitions)? {
        assignment.add_partition_offset(full, p, Offset::Beginning)?;
        pending.insert(p);
    }
    consumer.assign(&assignment)?;
    let until = Instant::now() + deadline;
    let mut out = Vec::new();
    while !pending.is_empty() {
        if Instant::now() > until {
            bail!("reading {full} took over {deadline:?}");
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                pending.remove(&p);
            }
            Some(Err(e)) => bail!("reading {full}: {e}"),
            Some(Ok(m)) => {
                if let (Some(payload), Some(ts)) = (m.payload(), m.timestamp().to_millis()) {
                    out.push((ts, payload.to_vec()));
                }
            }
        }
    }
    Ok(out)
}

async fn stamps_of<T: AvroRecord>(
    codec: &Codec,
    raw: &[(i64, Vec<u8>)],
    run: &str,
    text: impl Fn(&T) -> Option<&str>,
) -> anyhow::Result<Stamps> {
    let mut stamps = Stamps::new();
    for (ts, payload) in raw {
        let record: T = codec.decode(payload).await.context("decoding")?;
        if let Some(seq) = text(&record).and_then(|t| seq_in(t, run)) {
            stamps.entry(seq).or_default().push(*ts);
        }
    }
    Ok(stamps)
}

/// The run's records on `hop`'s topic: the inbound text on the way in, the
/// reply on the way out (the welcome and other texts carry no token).
///
/// # Errors
/// When the topic cannot be read or a record does not decode.
pub async fn stamps(env: &TestEnv, hop: Hop, run: &str) -> anyhow::Result<Stamps> {
    let full = env.topic(hop.topic());
    let bootstrap = env.kafka.bootstrap_servers.clone();
    let prefix = env.kafka.topic_prefix.clone();
    let raw = tokio::task::spawn_blocking(move || {
        read_raw(&bootstrap, &prefix, &full, Duration::from_secs(120))
    })
    .await??;
    let codec = &env.codec;
    match hop {
        Hop::Webhooks => {
            stamps_of::<TwilioWebhook>(codec, &raw, run, |w| {
                w.params
                    .iter()
                    .find(|p| p.name == "Body")
                    .map(|p| p.value.as_str())
            })
            .await
        }
        Hop::Events => {
            stamps_of::<ConversationEvent>(codec, &raw, run, |e| {
                e.message.as_ref().and_then(|m| m.body.as_deref())
            })
            .await
        }
        Hop::Inbound => stamps_of::<InboundMessage>(codec, &raw, run, |m| Some(&m.text)).await,
        Hop::Responses => stamps_of::<CognitionResponse>(codec, &raw, run, |r| Some(&r.text)).await,
        Hop::Outbound => {
            stamps_of::<OutboundOperation>(codec, &raw, run, |o| o.body.as_deref()).await
        }
        Hop::Delivery => {
            stamps_of::<DeliveryStatus>(codec, &raw, run, |d| {
                d.remediation.is_none().then_some(()).and(d.body.as_deref())
            })
            .await
        }
    }
}
