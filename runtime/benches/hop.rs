//! One exactly-once hop against the real broker, phase by phase: a load
//! producer writes timestamped records open loop at a fixed rate, one
//! read-committed consumer + transactional producer (the shape of
//! `stream::run`: commit as soon as the input is drained) copies them to a
//! second topic, and a read-committed sink measures from the due time to
//! the copy being readable. Prints the end-to-end percentiles and where a
//! batch's time goes (poll wait, produce, send offsets, commit).
//!
//! ```sh
//! eval "$(dev/stack env)"
//! cargo bench -p si-runtime --bench hop                      # 20, 100, 300 /s, 10 s each
//! HOP_RATES=100 HOP_SECONDS=20 KAFKA_RETRY_BACKOFF_MS=5 cargo bench -p si-runtime --bench hop
//! ```
//!
//! The hop's clients take the stages' `KAFKA_*` pass-through
//! (`KAFKA_RETRY_BACKOFF_MS=5`); `HOP_CONSUMER_CONFIG` (`key=value;key=value`)
//! is added to both consumers' settings.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use si_runtime::config::KafkaArgs;
use si_runtime::txn::Transactions;
use si_testkit::TestEnv;

si_runtime::global_allocator!();

fn now_us() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_micros(),
    )
    .expect("fits")
}

fn extra(config: &mut ClientConfig, var: &str) {
    if let Ok(list) = std::env::var(var) {
        for pair in list.split(';').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').expect("key=value");
            config.set(key, value);
        }
    }
}

fn consumer(brokers: &str, group: &str, topic: &str) -> BaseConsumer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    extra(&mut config, "HOP_CONSUMER_CONFIG");
    let consumer: BaseConsumer = config.create().expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

#[derive(Default)]
struct Phases {
    batches: u64,
    records: u64,
    commit: Vec<f64>,
}

/// The hop, as `stream::run` does it: read-committed in, transactional out
/// through the runtime's own [`Transactions`], commit when drained.
fn hop(kafka: &KafkaArgs, input: &str, output: &str, stop: &AtomicBool) -> Phases {
    let group = format!("{input}-hop");
    let mut config = si_runtime::kafka::consumer_config(kafka, "hop", &group);
    extra(&mut config, "HOP_CONSUMER_CONFIG");
    let consumer: BaseConsumer = config.create().expect("consumer");
    consumer.subscribe(&[input]).expect("subscribe");
    let txns = Transactions::init(kafka, "hop", Duration::from_secs(60)).expect("producer");
    let mut phases = Phases::default();
    let mut open: Option<TopicPartitionList> = None;
    while !stop.load(Ordering::Relaxed) {
        txns.beat();
        let wait = if open.is_some() {
            Duration::ZERO
        } else {
            Duration::from_millis(100)
        };
        match consumer.poll(wait) {
            Some(Ok(message)) => {
                if open.is_none() {
                    txns.begin().expect("begin");
                }
                let offsets = open.get_or_insert_with(TopicPartitionList::new);
                let payload = message.payload().unwrap_or_default().to_vec();
                txns.send(BaseRecord::<(), _>::to(output).payload(&payload))
                    .expect("send");
                offsets
                    .add_partition_offset(
                        message.topic(),
                        message.partition(),
                        Offset::Offset(message.offset() + 1),
                    )
                    .expect("offset");
                phases.records += 1;
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {
                if let Some(offsets) = open.take() {
                    let started = Instant::now();
                    let group = consumer.group_metadata().expect("group metadata");
                    txns.commit(&offsets, Some(&group)).expect("commit");
                    phases.commit.push(started.elapsed().as_secs_f64() * 1e3);
                    phases.batches += 1;
                }
            }
            Some(Err(error)) => panic!("hop consumer: {error}"),
        }
    }
    phases
}

fn percentiles(values: &mut [f64]) -> String {
    if values.is_empty() {
        return "-".into();
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((values.len() as f64 - 1.0) * q).round() as usize;
        values[i]
    };
    format!(
        "{:.1} / {:.1} / {:.1} / {:.1}",
        at(0.5),
        at(0.9),
        at(0.99),
        values[values.len() - 1]
    )
}

#[allow(clippy::cast_precision_loss)]
fn run(env: &TestEnv, rate: u32, seconds: u32) {
    // Two topics of the catalog (their partitions and settings); the
    // payloads are the bench's own.
    let input = env.topic("twilio.webhooks.v1");
    let output = env.topic("si.conversation.events.v1");
    let stop = Arc::new(AtomicBool::new(false));
    let stage = {
        let (kafka, input, output, stop) = (
            env.kafka.clone(),
            input.clone(),
            output.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || hop(&kafka, &input, &output, &stop))
    };
    let sink = consumer(
        &env.kafka.bootstrap_servers,
        &format!("{output}-sink"),
        &output,
    );
    // Wait until both groups are joined: a first record goes through.
    let mut load = ClientConfig::new();
    load.set("bootstrap.servers", &env.kafka.bootstrap_servers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "0");
    let load: ThreadedProducer<DefaultProducerContext> = load.create().expect("load producer");
    let total = rate * seconds;
    let mut latencies = Vec::with_capacity(total as usize);
    let warm = Instant::now();
    load.send(BaseRecord::<(), _>::to(&input).payload(&now_us().to_be_bytes()))
        .expect("warm up");
    loop {
        if let Some(Ok(_)) = sink.poll(Duration::from_millis(100)) {
            break;
        }
        assert!(
            warm.elapsed() < Duration::from_secs(60),
            "warm-up record never arrived"
        );
    }
    let start = Instant::now();
    let mut sent = 0u32;
    let deadline_extra = Duration::from_secs(30);
    while latencies.len() < total as usize {
        let due = start + Duration::from_secs_f64(f64::from(sent) / f64::from(rate));
        if sent < total && Instant::now() >= due {
            // The due time, not the send time: queueing in the client counts.
            let due_us = now_us() - u64::try_from(due.elapsed().as_micros()).expect("fits");
            load.send(BaseRecord::<(), _>::to(&input).payload(&due_us.to_be_bytes()))
                .expect("send");
            sent += 1;
            continue;
        }
        let wait = if sent < total {
            due.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(5))
        } else {
            Duration::from_millis(50)
        };
        if let Some(Ok(message)) = sink.poll(wait) {
            let bytes: [u8; 8] = message.payload().expect("payload").try_into().expect("u64");
            latencies.push((now_us() - u64::from_be_bytes(bytes)) as f64 / 1e3);
        }
        assert!(
            start.elapsed() < Duration::from_secs(u64::from(seconds)) + deadline_extra,
            "only {} of {total} copies arrived",
            latencies.len()
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut phases = stage.join().expect("hop thread");
    println!(
        "{rate:>5}/s  e2e ms p50/p90/p99/max {}  | batches {} ({:.1} records each), commit ms {}",
        percentiles(&mut latencies),
        phases.batches,
        phases.records as f64 / phases.batches.max(1) as f64,
        percentiles(&mut phases.commit),
    );
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    // librdkafka's own log (with `debug=...` in the extra settings).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let rates: Vec<u32> = std::env::var("HOP_RATES")
        .unwrap_or_else(|_| "20,100,300".into())
        .split(',')
        .map(|r| r.parse().expect("HOP_RATES: numbers"))
        .collect();
    let seconds = std::env::var("HOP_SECONDS").map_or(10, |s| s.parse().expect("HOP_SECONDS"));
    println!(
        "hop clients' KAFKA_* settings: {:?}; consumers' extra: {:?}",
        si_runtime::config::kafka_passthrough(std::env::vars()),
        std::env::var("HOP_CONSUMER_CONFIG").ok()
    );
    for rate in rates {
        let env = runtime
            .block_on(TestEnv::start_named(
                &std::env::var("KAFKA_BOOTSTRAP_SERVERS")
                    .unwrap_or_else(|_| "localhost:9092".into()),
                "hop",
            ))
            .expect("the local stack (dev/stack up)");
        run(&env, rate, seconds);
    }
}
