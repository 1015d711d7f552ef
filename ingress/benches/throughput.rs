//! Accepted webhooks per second into the local broker, each acknowledged by Kafka
//! with acks=all before the 200, and ingress's CPU time per accepted webhook.
//! Ingress runs in-process on an isolated topic prefix, on a runtime of its
//! own (threads named `ingress`); the load, signed inbound-SMS webhooks at a
//! fixed concurrency, runs on another (threads named `bench-client`). CPU is
//! read per thread from `/proc/self/task/*/stat` before and after the run:
//! every thread but the load's counts as ingress (its runtime, librdkafka's
//! threads), and is also printed by thread name. Ingress logs as deployed:
//! JSON lines at `LOG_LEVEL` (default info). Needs the local stack
//! (`dev/stack up`).
//!
//! `cargo bench -p si-ingress --bench throughput` (`WEBHOOKS=20000 CONCURRENCY=128` to vary)

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{Ingress, form_params};

// The allocator of the si-ingress binary, so ingress is measured as it runs.
si_runtime::global_allocator!();

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Name of the load generator's threads: their CPU is not ingress's.
const CLIENT_THREADS: &str = "bench-client";

fn main() -> anyhow::Result<()> {
    // Ingress's logging as deployed (`LOG_LEVEL` info, JSON lines): its
    // spans are enabled, so they cost what they cost there.
    si_runtime::telemetry::init(
        si_runtime::config::LogFormat::Json,
        &std::env::var("LOG_LEVEL").unwrap_or_else(|_| "info".to_owned()),
    );
    let server = tokio::runtime::Builder::new_multi_thread()
        .thread_name("ingress")
        .enable_all()
        .build()?;
    let client = tokio::runtime::Builder::new_multi_thread()
        .thread_name(CLIENT_THREADS)
        .enable_all()
        .build()?;
    let ingress = server.block_on(async {
        let ingress =
            Ingress::start(&["--max-in-flight", "4096", "--max-connections", "4096"]).await?;
        anyhow::Ok(Arc::new(ingress))
    })?;
    let result = client.block_on(run(Arc::clone(&ingress)));
    // Dropped where it was started: stopping it may need its runtime.
    server.block_on(async move { drop(ingress) });
    server.shutdown_timeout(Duration::from_secs(5));
    result
}

/// CPU ticks (user + system, `USER_HZ`) of this process's threads, summed
/// by thread name.
fn cpu_ticks_by_thread() -> anyhow::Result<BTreeMap<String, u64>> {
    let mut by_name = BTreeMap::new();
    for (name, ticks) in si_testkit::procfs::own_threads()? {
        *by_name.entry(name).or_default() += ticks;
    }
    Ok(by_name)
}

/// CPU seconds per thread name spent between `before` and `after`, busiest
/// first, and the total of those that are not the load generator's.
fn cpu_spent(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> (Vec<(String, f64)>, f64, f64) {
    // stat(5) counts in clock ticks, sysconf(_SC_CLK_TCK): USER_HZ, 100 on Linux.
    const TICKS_PER_SECOND: f64 = 100.0;
    let mut spent: Vec<(String, f64)> = after
        .iter()
        .map(|(name, ticks)| {
            let earlier = before.get(name).copied().unwrap_or(0);
            #[allow(clippy::cast_precision_loss)]
            let seconds = ticks.saturating_sub(earlier) as f64 / TICKS_PER_SECOND;
            (name.clone(), seconds)
        })
        .filter(|(_, seconds)| *seconds > 0.0)
        .collect();
    spent.sort_by(|a, b| b.1.total_cmp(&a.1));
    let (load, ingress): (Vec<_>, Vec<_>) = spent
        .iter()
        .partition(|(name, _)| name.starts_with(CLIENT_THREADS));
    let sum = |threads: Vec<&(String, f64)>| threads.iter().map(|(_, s)| s).sum::<f64>();
    (spent.clone(), sum(ingress), sum(load))
}

async fn run(ingress: Arc<Ingress>) -> anyhow::Result<()> {
    let total = env_usize("WEBHOOKS", 10_000);
    let concurrency = env_usize("CONCURRENCY", 64);
    support::wait_for(Duration::from_secs(30), || {
        let ingress = Arc::clone(&ingress);
        async move { Ok(ingress.readyz().await? == 200) }
    })
    .await?;

    let cpu_before = cpu_ticks_by_thread()?;
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
    let (by_thread, ingress_cpu, load_cpu) = cpu_spent(&cpu_before, &cpu_ticks_by_thread()?);
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
    #[allow(clippy::cast_precision_loss)]
    let accepted = latencies.len().max(1) as f64;
    println!(
        "ingress CPU: {:.1} µs per accepted webhook ({ingress_cpu:.2} s of CPU, {:.0} % of one core); \
         the load generator: {:.1} µs per webhook",
        ingress_cpu / accepted * 1e6,
        ingress_cpu / elapsed.as_secs_f64() * 100.0,
        load_cpu / accepted * 1e6,
    );
    let threads: Vec<String> = by_thread
        .iter()
        .map(|(name, seconds)| format!("{name} {:.1}", seconds / accepted * 1e6))
        .collect();
    println!("CPU by thread, µs per webhook: {}", threads.join(", "));
    Ok(())
}
