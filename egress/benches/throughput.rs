//! Operations per second through egress against the in-process Twilio
//! sandbox, on the real local broker (`dev/stack up`). Prints numbers; asserts
//! nothing about time.
//!
//! `cargo bench -p si-egress --bench throughput` (env: `BENCH_OPS`, `BENCH_SENDERS`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_precision_loss)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Parser;
use si_schemas::records::{Channel, DeliveryStatus, OperationKind, OutboundOperation};
use si_schemas::topics;
use si_testkit::TestEnv;
use tokio_util::sync::CancellationToken;
use twilio_sandbox::{Sandbox, SandboxConfig};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let ops_count = env_usize("BENCH_OPS", 2_000);
    let senders = env_usize("BENCH_SENDERS", 8);
    let env = TestEnv::start().await?;
    let sandbox = Sandbox::start(SandboxConfig {
        callbacks: false,
        ..SandboxConfig::default()
    })
    .await?;
    let numbers: Vec<String> = (0..senders)
        .map(|i| format!("+1415555{:04}", 2_000 + i))
        .collect();
    let started = Instant::now();
    for i in 0..ops_count {
        let from = &numbers[i % senders];
        let op = OutboundOperation {
            operation_id: format!("bench-{i}"),
            conversation_id: format!("CH{:032}", i % 100),
            kind: OperationKind::SendMessage,
            channel: Channel::Sms,
            sender_key: format!("sms:{from}"),
            to: Some(format!("+1415556{:04}", i % 100)),
            from: Some(from.clone()),
            messaging_service_sid: None,
            body: Some(format!("benchmark message {i}")),
            media_urls: vec![],
            content_sid: None,
            content_variables_json: None,
            response_id: None,
            part_index: 0,
            part_count: 1,
            segments: Some(1),
            encoding: None,
            template_reason: None,
            call: None,
            params: BTreeMap::new(),
            created_at: 0,
            not_after: None,
            traceparent: None,
        };
        env.produce(topics::OUTBOUND, &op.sender_key, &op).await?;
    }
    eprintln!("produced {ops_count} operations in {:?}", started.elapsed());

    let rates: Vec<String> = numbers.iter().map(|n| format!("sms:{n}=10000")).collect();
    let base = sandbox.base_url();
    let config = si_egress::Config::try_parse_from([
        "si-egress".to_owned(),
        format!("--kafka-bootstrap-servers={}", env.kafka.bootstrap_servers),
        format!("--topic-prefix={}", env.kafka.topic_prefix),
        format!("--schema-registry-url={}", env.registry.url),
        "--admin-addr=127.0.0.1:0".to_owned(),
        format!("--account-sid={}", sandbox.account_sid()),
        format!("--auth-token={}", sandbox.auth_token()),
        format!("--api-base-url={base}"),
        format!("--conversations-base-url={base}"),
        format!("--sender-rates={}", rates.join(",")),
        "--max-concurrency=64".to_owned(),
    ])?;
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let egress = tokio::spawn(si_egress::run(config, shutdown.clone()));
    let statuses = env
        .read::<DeliveryStatus>(topics::DELIVERY, ops_count, Duration::from_secs(600))
        .await?;
    let took = started.elapsed();
    shutdown.cancel();
    egress.await??;
    let requests = sandbox.requests();
    let first = requests.iter().map(|r| r.at_ms).min().unwrap_or(0);
    let last = requests.iter().map(|r| r.at_ms).max().unwrap_or(0);
    println!(
        "egress throughput: {} operations, {senders} senders, in {took:.2?} from start (incl. ~start-up): {:.0} ops/s end to end; {} requests at the sandbox over {} ms: {:.0} requests/s",
        statuses.len(),
        statuses.len() as f64 / took.as_secs_f64(),
        requests.len(),
        last - first,
        requests.len() as f64 / ((last - first).max(1) as f64 / 1_000.0),
    );
    sandbox.shutdown().await;
    Ok(())
}
