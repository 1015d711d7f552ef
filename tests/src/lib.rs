//! Support for integration tests against the real local stack (`dev/stack up`).
//!
//! Each test gets its own topic prefix, so tests never share topics, schema
//! subjects or consumer groups, and can run in parallel against one broker.
//! Waiting is always on a condition with a deadline, never a sleep.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use std::collections::HashSet;

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, Message};
use si_runtime::{KafkaArgs, RegistryArgs};
use si_schemas::{AvroRecord, Codec, Registry};
use sictl::topics_file::{Overrides, TopicsFile};

pub mod broker;
pub mod leaks;
pub mod openapi;
pub mod otlp;
pub mod process;
pub mod procfs;
pub mod throughput;

pub use broker::PrivateBroker;
pub use leaks::{Leak, LeakDetector};
pub use otlp::{OtlpReceiver, ReceivedSpan};
pub use process::{StageProcess, sictl, spawn_ready, stage_binary, wait_for};

/// The repository root (where `topics.yaml` is).
#[must_use]
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The Python of the oracle venv (`dev/pyenv`), or `SI_PYTHON`.
///
/// # Errors
/// When neither exists: run `dev/pyenv` (the README's test command does).
pub fn python() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("SI_PYTHON")
        .map_or_else(|| repo_root().join(".cache/venv/bin/python"), PathBuf::from);
    if path.exists() {
        Ok(path)
    } else {
        bail!("no Python oracle venv at {}: run dev/pyenv", path.display())
    }
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// A record read back, with its partition and offset.
#[derive(Debug, Clone)]
pub struct Located<T> {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub value: T,
}

/// An isolated slice of the local stack: its own topic prefix, with every topic of
/// `topics.yaml` created (replication 1) and every value schema registered.
pub struct TestEnv {
    /// Kafka settings with this test's prefix.
    pub kafka: KafkaArgs,
    /// Registry settings.
    pub registry: RegistryArgs,
    /// A codec over the registry.
    pub codec: Codec,
    /// A durable producer (idempotent, acks=all).
    pub producer: FutureProducer,
}

/// Deletes this test's topics when it ends (passed or failed), so a long test
/// run does not pile up thousands of partitions on the one local broker
/// (which then stalls every produce). `SI_KEEP_TEST_TOPICS=1` keeps them for
/// a post-mortem.
impl Drop for TestEnv {
    fn drop(&mut self) {
        if std::env::var_os("SI_KEEP_TEST_TOPICS").is_some() {
            return;
        }
        let kafka = self.kafka.clone();
        // A thread of its own (drop may run inside a runtime, and block_on
        // cannot nest there), waited for at most 20 s: a test never hangs
        // on its clean-up.
        let (done, outcome) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| runtime.block_on(delete_topics_with_prefix(&kafka)));
            let _ = done.send(result);
        });
        match outcome.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!(
                "test topics {}* not deleted: {e:#}",
                self.kafka.topic_prefix
            ),
            Err(_) => eprintln!(
                "test topics {}* not deleted within 20 s",
                self.kafka.topic_prefix
            ),
        }
    }
}

async fn delete_topics_with_prefix(kafka: &KafkaArgs) -> anyhow::Result<()> {
    use rdkafka::admin::AdminOptions;
    let admin = sictl::topics::admin(kafka)?;
    let metadata = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(5))
        .context("listing topics")?;
    let names: Vec<&str> = metadata
        .topics()
        .iter()
        .map(rdkafka::metadata::MetadataTopic::name)
        .filter(|name| name.starts_with(&kafka.topic_prefix))
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    admin.delete_topics(&names, &options).await?;
    Ok(())
}

impl TestEnv {
    /// Creates the topics and registers the schemas under a fresh prefix, on the
    /// broker of `KAFKA_BOOTSTRAP_SERVERS` (default `localhost:9092`).
    ///
    /// # Errors
    /// When the stack is not running (`dev/stack up`) or refuses.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on(&env_or("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092")).await
    }

    /// Like [`TestEnv::start`], against another broker (for example a private
    /// `dev/stack` instance a test may stop).
    ///
    /// # Errors
    /// When the broker or the registry is not reachable.
    pub async fn start_on(bootstrap_servers: &str) -> anyhow::Result<Self> {
        Self::start_named(bootstrap_servers, "t").await
    }

    /// Like [`TestEnv::start_on`], with a prefix that starts with `stem`
    /// (`bench` gives `bench3f2a…` topics), so a tool's topics are told apart
    /// from a test's.
    ///
    /// # Errors
    /// When the broker or the registry is not reachable.
    pub async fn start_named(bootstrap_servers: &str, stem: &str) -> anyhow::Result<Self> {
        let prefix = format!(
            "{stem}{}.",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        );
        let kafka = KafkaArgs {
            bootstrap_servers: bootstrap_servers.to_owned(),
            topic_prefix: prefix,
            pod_name: "test".to_owned(),
        };
        let registry = RegistryArgs {
            url: env_or(
                "SCHEMA_REGISTRY_URL",
                "http://localhost:8081/apis/ccompat/v7",
            ),
            username: None,
            password: None,
        };
        announce_stack(&kafka, &registry).await;
        let root = repo_root();
        let topics = TopicsFile::load(&root.join("topics.yaml"))?.resolve(&Overrides {
            prefix: kafka.topic_prefix.clone(),
            replication_factor: Some(1),
            // As `sictl topics apply` takes it: a benchmark or a test run
            // can try the partition count a small cluster would use.
            max_partitions: std::env::var("SI_MAX_PARTITIONS")
                .ok()
                .map(|n| n.parse())
                .transpose()
                .context("SI_MAX_PARTITIONS")?,
        })?;
        let admin = sictl::topics::admin(&kafka)?;
        let plan = sictl::topics::plan(&admin, &topics, Duration::from_secs(15))
            .await
            .context("is the local stack running? (dev/stack up)")?;
        sictl::topics::apply(&admin, &plan, Duration::from_secs(60)).await?;
        let registry_client = Registry::new(registry.config())?;
        let locals = sictl::schemas::load(&topics, &root.join("schemas/avro"))?;
        sictl::schemas::register(&registry_client, &locals).await?;
        let producer = si_runtime::kafka::durable_producer_config(&kafka, "test").create()?;
        Ok(Self {
            codec: Codec::new(registry_client),
            kafka,
            registry,
            producer,
        })
    }

    /// The full name of a topic of `topics.yaml`.
    #[must_use]
    pub fn topic(&self, name: &str) -> String {
        self.kafka.topic(name)
    }

    /// Encodes and produces a record, waiting for the broker's acknowledgement.
    ///
    /// # Errors
    /// When encoding or producing fails.
    pub async fn produce<T: AvroRecord>(
        &self,
        topic: &str,
        key: &str,
        record: &T,
    ) -> anyhow::Result<()> {
        let topic = self.topic(topic);
        let payload = self.codec.encode(&topic, record).await?;
        self.producer
            .send(
                FutureRecord::to(&topic).key(key).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))?;
        Ok(())
    }

    /// Encodes and produces many records at once (keys with their records),
    /// then waits for every acknowledgement: a backlog for a benchmark or a
    /// test, written at the producer's pace rather than one round trip each.
    ///
    /// # Errors
    /// When a record does not encode or is not acknowledged within 30 s.
    pub async fn produce_all<K: AsRef<str>, T: AvroRecord>(
        &self,
        topic: &str,
        records: &[(K, T)],
    ) -> anyhow::Result<()> {
        let full = self.topic(topic);
        let mut acks = Vec::with_capacity(records.len());
        for (key, record) in records {
            let payload = self.codec.encode(&full, record).await?;
            let mut next = FutureRecord::to(&full).key(key.as_ref()).payload(&payload);
            let ack = loop {
                match self.producer.send_result(next) {
                    Ok(ack) => break ack,
                    Err((
                        KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                        back,
                    )) => {
                        next = back;
                        tokio::task::yield_now().await;
                    }
                    Err((e, _)) => bail!("producing to {full}: {e}"),
                }
            };
            acks.push(ack);
        }
        for ack in acks {
            tokio::time::timeout(Duration::from_secs(30), ack)
                .await
                .with_context(|| format!("producing to {full}: no acknowledgement within 30 s"))?
                .context("producer dropped")?
                .map_err(|(e, _)| anyhow::anyhow!("producing to {full}: {e}"))?;
        }
        Ok(())
    }

    /// Like [`Self::produce`], with a W3C `traceparent` header.
    ///
    /// # Errors
    /// When encoding or producing fails.
    pub async fn produce_traced<T: AvroRecord>(
        &self,
        topic: &str,
        key: &str,
        record: &T,
        traceparent: &str,
    ) -> anyhow::Result<()> {
        let topic = self.topic(topic);
        let payload = self.codec.encode(&topic, record).await?;
        let headers = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
            key: si_runtime::trace::TRACEPARENT,
            value: Some(traceparent),
        });
        self.producer
            .send(
                FutureRecord::to(&topic)
                    .key(key)
                    .payload(&payload)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))?;
        Ok(())
    }

    /// A read_committed consumer over every partition of `topic`, from the beginning.
    ///
    /// # Errors
    /// When the consumer cannot be created.
    pub async fn consumer(&self, topic: &str) -> anyhow::Result<StreamConsumer> {
        let topic = self.topic(topic);
        let mut config: ClientConfig = si_runtime::kafka::consumer_config(
            &self.kafka,
            "test",
            &format!(
                "{}reader-{}",
                self.kafka.topic_prefix,
                uuid::Uuid::new_v4().simple()
            ),
        );
        config.set("auto.offset.reset", "earliest");
        let consumer: StreamConsumer = config.create()?;
        consumer.subscribe(&[&topic])?;
        Ok(consumer)
    }

    /// Reads `topic` from the beginning until a record matches `predicate`
    /// (called on every record in order, tombstones skipped) and returns it.
    ///
    /// # Errors
    /// When no record matches within `deadline`, or one does not decode.
    pub async fn find<T: AvroRecord>(
        &self,
        topic: &str,
        deadline: Duration,
        mut predicate: impl FnMut(&T) -> bool,
    ) -> anyhow::Result<T> {
        let consumer = self.consumer(topic).await?;
        let until = Instant::now() + deadline;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let Ok(received) = tokio::time::timeout(left, consumer.recv()).await else {
                bail!("no matching record on {topic} within {deadline:?}");
            };
            let message = received?;
            if let Some(payload) = message.payload() {
                let record = self.codec.decode::<T>(payload).await?;
                if predicate(&record) {
                    return Ok(record);
                }
            }
        }
    }

    /// Reads `topic` from the beginning, keeping the records `keep` accepts,
    /// until `done` holds for the kept ones; returns them in topic order.
    ///
    /// # Errors
    /// When `done` does not hold within `deadline` (with how many were kept),
    /// or a record does not decode.
    pub async fn collect<T: AvroRecord>(
        &self,
        topic: &str,
        deadline: Duration,
        mut keep: impl FnMut(&T) -> bool,
        mut done: impl FnMut(&[T]) -> bool,
    ) -> anyhow::Result<Vec<T>> {
        let consumer = self.consumer(topic).await?;
        let until = Instant::now() + deadline;
        let mut kept = Vec::new();
        while !done(&kept) {
            let left = until.saturating_duration_since(Instant::now());
            let Ok(received) = tokio::time::timeout(left, consumer.recv()).await else {
                bail!(
                    "{topic}: the {} records kept within {deadline:?} are not all that was expected",
                    kept.len()
                );
            };
            if let Some(payload) = received?.payload() {
                let record = self.codec.decode::<T>(payload).await?;
                if keep(&record) {
                    kept.push(record);
                }
            }
        }
        Ok(kept)
    }

    /// Every committed record of `topic` (read_committed, from the beginning
    /// to the end of every partition as it is now), with its key.
    ///
    /// # Errors
    /// When the topic cannot be read within 60 s or a record does not decode.
    pub async fn read_all<T: AvroRecord>(&self, topic: &str) -> anyhow::Result<Vec<(String, T)>> {
        Ok(self
            .read_all_located::<T>(topic)
            .await?
            .into_iter()
            .map(|r| (r.key, r.value))
            .collect())
    }

    /// [`TestEnv::read_all`], with where each record is: what a failure
    /// message needs to tell two copies of a record apart.
    ///
    /// # Errors
    /// Those of [`TestEnv::read_all`].
    pub async fn read_all_located<T: AvroRecord>(
        &self,
        topic: &str,
    ) -> anyhow::Result<Vec<Located<T>>> {
        self.read_located(topic, "read_committed").await
    }

    /// Every record of `topic` with a value, committed or not (read_uncommitted):
    /// beside [`TestEnv::read_all_located`], the records of transactions that
    /// were aborted or never got their marker.
    ///
    /// # Errors
    /// Those of [`TestEnv::read_all`].
    pub async fn read_uncommitted_located<T: AvroRecord>(
        &self,
        topic: &str,
    ) -> anyhow::Result<Vec<Located<T>>> {
        self.read_located(topic, "read_uncommitted").await
    }

    async fn read_located<T: AvroRecord>(
        &self,
        topic: &str,
        isolation: &str,
    ) -> anyhow::Result<Vec<Located<T>>> {
        let full = self.topic(topic);
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.kafka.bootstrap_servers)
            .set("group.id", format!("{}reader-all", self.kafka.topic_prefix))
            .set("enable.auto.commit", "false")
            .set("isolation.level", isolation)
            .set("enable.partition.eof", "true");
        let consumer: BaseConsumer = config.create()?;
        let metadata = consumer.fetch_metadata(Some(&full), Duration::from_secs(10))?;
        let partitions = metadata
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len());
        let mut assignment = TopicPartitionList::new();
        let mut pending = HashSet::new();
        for p in 0..partitions {
            let p = i32::try_from(p)?;
            assignment.add_partition_offset(&full, p, Offset::Beginning)?;
            pending.insert(p);
        }
        consumer.assign(&assignment)?;
        let mut raw = Vec::new();
        let until = Instant::now() + Duration::from_secs(60);
        while !pending.is_empty() {
            anyhow::ensure!(Instant::now() < until, "reading {full} took over 60 s");
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    pending.remove(&p);
                }
                Some(Err(e)) => bail!("reading {full}: {e}"),
                Some(Ok(m)) => {
                    if let Some(payload) = m.payload() {
                        raw.push((
                            m.partition(),
                            m.offset(),
                            String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                            payload.to_vec(),
                        ));
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(raw.len());
        for (partition, offset, key, bytes) in raw {
            out.push(Located {
                partition,
                offset,
                key,
                value: self.codec.decode::<T>(&bytes).await?,
            });
        }
        Ok(out)
    }

    /// Reads raw records from `topic` until `count` have arrived or `deadline` passes.
    ///
    /// # Errors
    /// When fewer than `count` arrive in time.
    pub async fn read_raw(
        &self,
        topic: &str,
        count: usize,
        deadline: Duration,
    ) -> anyhow::Result<Vec<(Option<String>, Vec<u8>)>> {
        let consumer = self.consumer(topic).await?;
        let until = Instant::now() + deadline;
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{} of {count} records on {topic} within {deadline:?}",
                    out.len()
                );
            }
            if let Ok(message) = tokio::time::timeout(left, consumer.recv()).await {
                let message = message?;
                out.push((
                    message
                        .key()
                        .map(|k| String::from_utf8_lossy(k).into_owned()),
                    message.payload().unwrap_or_default().to_vec(),
                ));
            }
        }
        Ok(out)
    }

    /// Reads and decodes `count` records of `topic`.
    ///
    /// # Errors
    /// When fewer arrive in time or one does not decode.
    pub async fn read<T: AvroRecord>(
        &self,
        topic: &str,
        count: usize,
        deadline: Duration,
    ) -> anyhow::Result<Vec<(Option<String>, T)>> {
        let mut out = Vec::with_capacity(count);
        for (key, payload) in self.read_raw(topic, count, deadline).await? {
            out.push((key, self.codec.decode::<T>(&payload).await?));
        }
        Ok(out)
    }
}

/// A free TCP port on 127.0.0.1 (for a service a test starts).
///
/// The port is free when chosen, and the service binds it a moment later. A
/// port from the kernel's ephemeral range (what binding port 0 gives) can be
/// taken in between as the local port of any outgoing connection (a Kafka
/// client's, for one), and the service then fails with "Address already in
/// use". So the port is drawn at random from below that range
/// (`/proc/sys/net/ipv4/ip_local_port_range`), where only listeners bind,
/// never twice in one test process; port 0's answer is the fallback.
///
/// # Errors
/// When no port can be bound.
pub fn free_port() -> anyhow::Result<u16> {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    const LOWEST: u16 = 20_000;
    let ephemeral_start = ephemeral_port_start();
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if ephemeral_start > LOWEST + 1_000 {
        for _ in 0..100 {
            let bytes = uuid::Uuid::new_v4().into_bytes();
            let port =
                LOWEST + u16::from_le_bytes([bytes[0], bytes[1]]) % (ephemeral_start - LOWEST);
            if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.insert(port);
                return Ok(port);
            }
        }
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    given.insert(port);
    Ok(port)
}

/// The first port of the kernel's ephemeral range (Linux's default when it
/// cannot be read).
fn ephemeral_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Logs, once per test process, what the tests talk to: the broker's cluster id and
/// brokers, and the registry's name and version.
async fn announce_stack(kafka: &KafkaArgs, registry: &RegistryArgs) {
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if DONE.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    match si_runtime::kafka::cluster_info(kafka, Duration::from_secs(10)).await {
        Ok(info) => eprintln!(
            "[testkit] Kafka: cluster {} brokers {:?}",
            info.cluster_id.as_deref().unwrap_or("?"),
            info.brokers
        ),
        Err(e) => eprintln!(
            "[testkit] Kafka not reachable at {}: {e:#}",
            kafka.bootstrap_servers
        ),
    }
    let info_url = registry
        .url
        .split("/apis/")
        .next()
        .map(|base| format!("{base}/apis/registry/v3/system/info"));
    if let Some(url) = info_url {
        match reqwest::get(&url).await {
            Ok(response) => match response.json::<serde_json::Value>().await {
                Ok(info) => eprintln!(
                    "[testkit] schema registry: {} {} at {}",
                    info["name"].as_str().unwrap_or("?"),
                    info["version"].as_str().unwrap_or("?"),
                    registry.url
                ),
                Err(e) => eprintln!("[testkit] schema registry at {}: {e}", registry.url),
            },
            Err(e) => eprintln!("[testkit] schema registry not reachable at {url}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ephemeral_port_start, free_port};

    #[test]
    fn free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() -> anyhow::Result<()> {
        let ephemeral_start = ephemeral_port_start();
        let ports = (0..50)
            .map(|_| free_port())
            .collect::<anyhow::Result<Vec<u16>>>()?;
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        for port in ports {
            assert!(port < ephemeral_start, "{port} is in the ephemeral range");
            std::net::TcpListener::bind(("127.0.0.1", port))?;
        }
        Ok(())
    }
}
