//! Events per second through the real `si-consent` binary (release build)
//! against the real broker and registry, with transactions on and every
//! setting at its default (`COMMIT_INTERVAL`, `MAX_BATCH`). Needs the local
//! stack (`dev/stack up`).
//!
//! ```sh
//! eval "$(dev/stack env)"
//! cargo bench -p si-consent --bench throughput                 # 40,000 messages
//! CONSENT_BENCH_RECORDS=100000 cargo bench -p si-consent --bench throughput
//! ```
//!
//! The workload is the path every message after the first takes: 2,000 users
//! opted in on `si.consent.v1`, each writing texts round-robin (one
//! conversation each), so every event is checked against the user's consent
//! and forwarded to `si.inbound.v1`. The events are written first; the rate is
//! measured from consent's first commit to the commit of the last event
//! (`si_testkit::throughput`), and every event's forward is checked.

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;

use si_schemas::records::InboundMessage;
use si_schemas::topics;
use si_testkit::TestEnv;
use si_testkit::throughput::{records_from_env, texts_through};

const USERS: usize = 2_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        // `cargo test --benches` lists benchmarks: this one needs the stack, so it lists nothing.
        return Ok(());
    }
    let n = records_from_env("CONSENT_BENCH_RECORDS", 40_000);
    let env = TestEnv::start().await?;
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join("consent-throughput.log");
    let binary = Path::new(env!("CARGO_BIN_EXE_si-consent"));
    let drained = texts_through(&env, (binary, "consent", &[]), n, USERS, &log).await?;

    let forwarded = env.read_all::<InboundMessage>(topics::INBOUND).await?;
    anyhow::ensure!(
        forwarded.len() == n,
        "{} records on si.inbound.v1 for {n} messages (log: {})",
        forwarded.len(),
        log.display()
    );
    println!(
        "consent throughput: {:.0} events/s with transactions on: {} events in {:.2?} after a start-up of {:.2?}; {} forwarded to si.inbound.v1",
        drained.per_second(),
        drained.records,
        drained.elapsed,
        drained.startup,
        forwarded.len(),
    );
    Ok(())
}
