//! Responses per second through the real `si-segment` binary (release build)
//! against the real broker and registry, with transactions on and every
//! setting at its default (`COMMIT_INTERVAL`, `MAX_BATCH`). Needs the local
//! stack (`dev/stack up`).
//!
//! ```sh
//! eval "$(dev/stack env)"
//! cargo bench -p si-segment --bench throughput                 # 40,000 responses
//! SEGMENT_BENCH_RECORDS=100000 cargo bench -p si-segment --bench throughput
//! ```
//!
//! Segment learns 2,000 SMS conversations from their users' texts first
//! (a run of its own, stopped when done). Then the responses, one short text
//! each, round-robin over the conversations, are written, segment starts
//! again (restoring the conversations from its changelog) and the rate is
//! measured from its first commit to the commit of the last response
//! (`si_testkit::throughput`). Every response must become one operation on
//! `twilio.outbound.v1`.

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::time::Duration;

use si_schemas::records::{Channel, CognitionResponse, OutboundOperation, ResponsePurpose};
use si_schemas::topics;
use si_testkit::TestEnv;
use si_testkit::throughput::{
    end_offsets, now_ms, opt_in_all, records_from_env, run_stage, sms_text, spawn_stage, user,
    wait_committed,
};

const CONVERSATIONS: usize = 2_000;

fn conversation(n: usize) -> String {
    format!("sms-bench-{n}")
}

fn response(n: usize, at: i64) -> (String, CognitionResponse) {
    let c = n % CONVERSATIONS;
    let response = CognitionResponse {
        response_id: format!("r-{n}"),
        conversation_id: conversation(c),
        session_id: format!("s-{c}"),
        in_reply_to: None,
        text: format!("Thanks! This is Si's answer number {n}."),
        media: Vec::new(),
        locale: None,
        hints: None,
        created_at: at,
        traceparent: None,
        purpose: ResponsePurpose::Reply,
    };
    (conversation(c), response)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        // `cargo test --benches` lists benchmarks: this one needs the stack, so it lists nothing.
        return Ok(());
    }
    let n = records_from_env("SEGMENT_BENCH_RECORDS", 40_000);
    let env = TestEnv::start().await?;
    let now = now_ms();
    opt_in_all(&env, (0..CONVERSATIONS).map(user), Channel::Sms, now).await?;
    let binary = Path::new(env!("CARGO_BIN_EXE_si-segment"));
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join("segment-throughput.log");

    // Segment learns the conversations, and stops.
    let events: Vec<_> = (0..CONVERSATIONS)
        .map(|i| sms_text(i, CONVERSATIONS, now))
        .collect();
    env.produce_all(topics::CONVERSATION_EVENTS, &events)
        .await?;
    let ends = end_offsets(&env, topics::CONVERSATION_EVENTS)?;
    let mut stage = spawn_stage(&env, binary, &[], &log)?;
    let learned = wait_committed(
        &env,
        "si-segment",
        topics::CONVERSATION_EVENTS,
        &ends,
        Duration::from_secs(120),
    )
    .await;
    if let Err(e) = learned {
        anyhow::bail!("{e:#}\n{}", stage.log_tail(30));
    }
    stage.terminate(Duration::from_secs(30))?;

    let responses: Vec<_> = (0..n).map(|i| response(i, now)).collect();
    env.produce_all(topics::RESPONSES, &responses).await?;
    eprintln!("[throughput] {n} responses written");
    let drained = run_stage(&env, binary, "segment", topics::RESPONSES, &[], &log).await?;

    let operations = env.read_all::<OutboundOperation>(topics::OUTBOUND).await?;
    anyhow::ensure!(
        operations.len() == n,
        "{} operations on twilio.outbound.v1 for {n} one-part responses (log: {})",
        operations.len(),
        log.display()
    );
    println!(
        "segment throughput: {:.0} responses/s with transactions on: {} responses in {:.2?} after a start-up of {:.2?}; {} operations on twilio.outbound.v1",
        drained.per_second(),
        drained.records,
        drained.elapsed,
        drained.startup,
        operations.len(),
    );
    Ok(())
}
