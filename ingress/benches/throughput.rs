//! Accepted webhooks per second into the local broker, each acknowledged by Kafka
//! with acks=all before the 200: ingress runs in-process on an isolated topic
//! prefix; a client in the same process sends signed inbound-SMS webhooks at a
//! fixed concurrency. Needs the local stack (`dev/stack up`).
//!
//! `cargo bench -p si-ingress --bench throughput` (`WEBHOOKS=20000 CONCURRENCY=128` to vary)

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{Ingress, form_params};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let total = env_usize("WEBHOOKS", 10_000);
    let concurrency = env_usize("CONCURRENCY", 64);
    let ingress =
        Arc::new(Ingress::start(&["--max-in-flight", "4096", "--max-connections", "4096"]).await?);
    support::wait_for(Duration::from_secs(30), || {
        let ingress = Arc::clone(&ingress);
        async move { Ok(ingress.readyz().await? == 200) }
    })
    .await?;

    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let ingress = Arc::clone(&ingress);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0usize;
            let mut i = worker;
            while i < total {
                let params = form_params(&[
                    ("MessageSid", &format!("SM{i:032}")),
                    ("AccountSid", "AC00000000000000000000000000000001"),
                    ("From", &format!("+1415555{:04}", i % 10_000)),
                    ("To", "+14155550199"),
                    (
                        "Body",
                        "Hi Si, can you call me about my appointment tomorrow at 10?",
                    ),
                    ("NumMedia", "0"),
                    ("NumSegments", "1"),
                ]);
                let sent = Instant::now();
                match ingress
                    .post_form("/twilio/messaging/inbound", &params, support::TOKEN)
                    .await
                {
                    Ok(r) if r.status() == 200 => latencies.push(sent.elapsed()),
                    _ => failures += 1,
                }
                i += concurrency;
            }
            (latencies, failures)
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    let mut failures = 0;
    for task in tasks {
        let (l, f) = task.await?;
        latencies.extend(l);
        failures += f;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| {
        let index = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies
            .get(index)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "ingress throughput: {} webhooks accepted ({failures} failed) in {:.2} s = {:.0} webhooks/s \
         (concurrency {concurrency}, acks=all); latency ms p50 {:.1} p99 {:.1} max {:.1}",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        pct(1.0),
    );
    Ok(())
}
