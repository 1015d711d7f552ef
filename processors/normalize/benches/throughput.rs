//! Events per second through the real `si-normalize` binary against the real
//! broker and registry, with transactions on (exactly-once, default
//! COMMIT_INTERVAL=100ms, MAX_BATCH=2000). Needs the local stack (`dev/stack up`).
//!
//! ```sh
//! eval "$(dev/stack env)"
//! cargo bench -p si-normalize --bench throughput            # 20000 webhooks
//! NORMALIZE_BENCH_RECORDS=100000 cargo bench -p si-normalize --bench throughput
//! ```
//!
//! The backlog is written first; the rate is measured from the first committed
//! batch to the last (start-up, group join and state restore excluded, and
//! printed separately).

#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use si_schemas::records::ConversationEvent;
use si_schemas::topics;
use si_testkit::TestEnv;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        // `cargo test --benches` lists benchmarks: this one needs the stack, so it lists nothing.
        return Ok(());
    }
    let n: usize = std::env::var("NORMALIZE_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let env = TestEnv::start().await?;
    let identities: Vec<_> = common::identities()
        .into_iter()
        .map(|i| (i.key(), i))
        .collect();
    common::produce_all(&env, topics::IDENTITY, &identities).await?;
    let (records, unique) = common::workload(n, 42);
    let produced = Instant::now();
    common::produce_all(&env, topics::WEBHOOKS, &records).await?;
    eprintln!(
        "[throughput] {n} webhooks written in {:?}",
        produced.elapsed()
    );

    let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("normalize-throughput.log");
    let drained = si_testkit::throughput::run_stage(
        &env,
        std::path::Path::new(env!("CARGO_BIN_EXE_si-normalize")),
        "normalize",
        topics::WEBHOOKS,
        &[("VISITOR_ID_SECRET", "bench-secret")],
        &log,
    )
    .await?;

    let events = common::read_all::<ConversationEvent>(&env, topics::CONVERSATION_EVENTS).await?;
    anyhow::ensure!(
        events.len() == unique,
        "{} events for {unique} distinct webhooks",
        events.len()
    );
    #[allow(clippy::cast_precision_loss)]
    let events_per_webhook = unique as f64 / n as f64;
    println!(
        "normalize throughput: {:.0} webhooks/s ({:.0} events/s) with transactions on: {n} webhooks ({unique} distinct), {} of them in {:.2?} after a start-up of {:.2?}",
        drained.per_second(),
        drained.per_second() * events_per_webhook,
        drained.records,
        drained.elapsed,
        drained.startup,
    );
    Ok(())
}
