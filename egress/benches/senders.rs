//! Egress memory over many distinct senders: `BENCH_SENDERS` operations (default
//! 100,000), each from its own sender, through an egress child process against
//! the in-process Twilio sandbox on the real local broker (`dev/stack up`).
//! Prints the egress process's RSS and live sender tasks as the operations
//! go through; asserts nothing about time or memory.
//!
//! `cargo bench -p si-egress --bench senders` (env: `BENCH_SENDERS`,
//! `BENCH_IDLE_TIMEOUT`, default `5s`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_precision_loss)]

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use si_schemas::records::{Channel, DeliveryStatus, OperationKind, OutboundOperation};
use si_schemas::topics;
use si_testkit::TestEnv;
use twilio_sandbox::{Sandbox, SandboxConfig};

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

async fn gauge(admin: &str, name: &str) -> Option<f64> {
    let body = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn op(i: usize) -> OutboundOperation {
    let from = format!("+1415{:07}", 1_000_000 + i);
    OutboundOperation {
        operation_id: format!("senders-{i}"),
        conversation_id: format!("CH{i:032}"),
        kind: OperationKind::SendMessage,
        channel: Channel::Sms,
        sender_key: format!("sms:{from}"),
        to: Some(format!("+1628{:07}", 1_000_000 + i)),
        from: Some(from),
        messaging_service_sid: None,
        body: Some(format!("sender memory benchmark {i}")),
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
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let count: usize = std::env::var("BENCH_SENDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let idle = std::env::var("BENCH_IDLE_TIMEOUT").unwrap_or_else(|_| "5s".into());
    let env = std::sync::Arc::new(TestEnv::start().await?);
    let sandbox = Sandbox::start(SandboxConfig {
        callbacks: false,
        ..SandboxConfig::default()
    })
    .await?;
    let admin = format!("127.0.0.1:{}", si_testkit::free_port()?);
    let log = std::env::temp_dir().join(format!("{}egress-senders.log", env.kafka.topic_prefix));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_si-egress"))
        .env("KAFKA_BOOTSTRAP_SERVERS", &env.kafka.bootstrap_servers)
        .env("SI_TOPIC_PREFIX", &env.kafka.topic_prefix)
        .env("POD_NAME", "senders")
        .env("SCHEMA_REGISTRY_URL", &env.registry.url)
        .env("ADMIN_ADDR", &admin)
        .env("TWILIO_ACCOUNT_SID", sandbox.account_sid())
        .env("TWILIO_AUTH_TOKEN", sandbox.auth_token())
        .env("TWILIO_API_BASE_URL", sandbox.base_url())
        .env("TWILIO_CONVERSATIONS_BASE_URL", sandbox.base_url())
        .env("EGRESS_SENDER_IDLE_TIMEOUT", &idle)
        .env("EGRESS_MAX_CONCURRENCY", "64")
        .env("LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log)?))
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().expect("egress is running");
    eprintln!("egress log: {}", log.display());

    let producing = {
        let env = std::sync::Arc::clone(&env);
        tokio::spawn(async move {
            for chunk in (0..count).collect::<Vec<_>>().chunks(500) {
                let sends = chunk.iter().map(|i| {
                    let o = op(*i);
                    let env = &*env;
                    async move { env.produce(topics::OUTBOUND, &o.sender_key, &o).await }
                });
                for result in futures::future::join_all(sends).await {
                    result?;
                }
            }
            anyhow::Ok(())
        })
    };

    println!("| seconds | operations sent | live sender tasks | egress RSS (MiB) |");
    println!("|---|---|---|---|");
    let started = Instant::now();
    let mut peak = 0.0f64;
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let sent = sandbox.requests().len();
        let senders = gauge(&admin, "si_egress_senders").await.unwrap_or(f64::NAN);
        let rss = rss_mib(pid);
        peak = peak.max(rss);
        println!(
            "| {:.0} | {sent} | {senders} | {rss:.1} |",
            started.elapsed().as_secs_f64()
        );
        if sent >= count && senders == 0.0 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1_800),
            "the benchmark took over 30 minutes"
        );
    }
    producing.await??;
    let statuses = env
        .read::<DeliveryStatus>(topics::DELIVERY, count, Duration::from_secs(120))
        .await?;
    println!(
        "{count} distinct senders: {} statuses, peak RSS {peak:.1} MiB, RSS at the end {:.1} MiB (idle timeout {idle})",
        statuses.len(),
        rss_mib(pid)
    );
    child.kill().await?;
    sandbox.shutdown().await;
    Ok(())
}
