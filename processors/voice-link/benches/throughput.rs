//! Events per second through the real `si-voice-link` binary (release build)
//! against the real broker and registry, with transactions on and every
//! setting at its default (`COMMIT_INTERVAL`, `MAX_BATCH`). Needs the local
//! stack (`dev/stack up`).
//!
//! ```sh
//! eval "$(dev/stack env)"
//! cargo bench -p si-voice-link --bench throughput                 # 40,000 texts
//! VOICE_LINK_BENCH_RECORDS=100000 cargo bench -p si-voice-link --bench throughput
//! ```
//!
//! The workload: 2,000 users write texts round-robin, one SMS conversation
//! each; voice-link keeps each conversation (the channel and address a call
//! escalation needs) and writes every text to the one transcript of text and
//! voice, `si.transcript.v1`. The events are written first; the rate is
//! measured from voice-link's first commit to the commit of the last event
//! (`si_testkit::throughput`), and every text's transcript entry is checked.

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;

use si_schemas::records::TranscriptEntry;
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
    let n = records_from_env("VOICE_LINK_BENCH_RECORDS", 40_000);
    let env = TestEnv::start().await?;
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join("voice-link-throughput.log");
    let binary = Path::new(env!("CARGO_BIN_EXE_si-voice-link"));
    let drained = texts_through(
        &env,
        (
            binary,
            "voice-link",
            &[("PUBLIC_BASE_URL", "https://si.bench.test")],
        ),
        n,
        USERS,
        &log,
    )
    .await?;

    let entries = env.read_all::<TranscriptEntry>(topics::TRANSCRIPT).await?;
    anyhow::ensure!(
        entries.len() == n,
        "{} records on si.transcript.v1 for {n} texts (log: {})",
        entries.len(),
        log.display()
    );
    println!(
        "voice-link throughput: {:.0} events/s with transactions on: {} events in {:.2?} after a start-up of {:.2?}; {} transcript entries",
        drained.per_second(),
        drained.records,
        drained.elapsed,
        drained.startup,
        entries.len(),
    );
    Ok(())
}
