//! Events per second through the real `si-lifecycle` binary (release build)
//! against the real broker and registry, with transactions on and every
//! setting at its default (`COMMIT_INTERVAL`, `MAX_BATCH`). Needs the local
//! stack (`dev/stack up`).
//!
//! ```sh
//! eval "$(dev/stack env)"
//! cargo bench -p si-lifecycle --bench throughput                 # 40,000 texts
//! LIFECYCLE_BENCH_RECORDS=100000 cargo bench -p si-lifecycle --bench throughput
//! ```
//!
//! The workload: 2,000 users write texts round-robin, one SMS conversation
//! each; lifecycle opens each conversation at its first text and moves its
//! inactivity timer at every one. The events are written first; the rate is
//! measured from lifecycle's first commit to the commit of the last event
//! (`si_testkit::throughput`), and every conversation's state is checked on
//! its changelog.

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;

use si_schemas::records::LifecycleState;
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
    let n = records_from_env("LIFECYCLE_BENCH_RECORDS", 40_000);
    let env = TestEnv::start().await?;
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lifecycle-throughput.log");
    let binary = Path::new(env!("CARGO_BIN_EXE_si-lifecycle"));
    let drained = texts_through(&env, (binary, "lifecycle", &[]), n, USERS, &log).await?;

    let kept: std::collections::BTreeSet<String> = env
        .read_all::<LifecycleState>(topics::LIFECYCLE_STATE)
        .await?
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    anyhow::ensure!(
        kept.len() == USERS.min(n),
        "{} conversations in lifecycle's state for {USERS} users (log: {})",
        kept.len(),
        log.display()
    );
    println!(
        "lifecycle throughput: {:.0} events/s with transactions on: {} events in {:.2?} after a start-up of {:.2?}; {} conversations in state",
        drained.per_second(),
        drained.records,
        drained.elapsed,
        drained.startup,
        kept.len(),
    );
    Ok(())
}
