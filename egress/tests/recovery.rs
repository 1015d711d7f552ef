//! Egress killed 8 times in a row (SIGKILL as soon as each incarnation has
//! sent, restarted at once under the same POD_NAME, static membership, the
//! production session timeout of 10 s): sends resume within 15 s of the last
//! restart. Prints the figures.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Egress, SENDER_NUMBER, op, produce_ops, sender_key, wait_for};
use si_testkit::TestEnv;
use twilio_sandbox::{Sandbox, SandboxConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_kills_in_a_row_then_sends_resume_within_15s() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let sandbox = Sandbox::start(SandboxConfig {
        callbacks: false,
        ..SandboxConfig::default()
    })
    .await?;
    let ops: Vec<_> = (0..3_000)
        .map(|i| {
            op(
                &format!("op-{i}"),
                &format!("CH{:032}", i % 20),
                SENDER_NUMBER,
            )
        })
        .collect();
    produce_ops(&env, &ops).await?;
    let rates = format!("{}=50", sender_key(SENDER_NUMBER));
    let extra = [
        ("EGRESS_SENDER_RATES", rates.as_str()),
        ("STATIC_MEMBERSHIP", "true"),
        // The production session timeout, not the test helper's shorter one.
        ("KAFKA_SESSION_TIMEOUT_MS", "10000"),
        ("KAFKA_HEARTBEAT_INTERVAL_MS", "2000"),
    ];
    let mut lives = Vec::new();
    for kill in 0..8 {
        let before = sandbox.requests().len();
        let started = Instant::now();
        let egress = Egress::spawn(&env, &sandbox, "kills", &extra)?;
        wait_for(
            &format!("incarnation {kill} to send"),
            Duration::from_secs(60),
            || sandbox.requests().len() > before,
        )
        .await?;
        lives.push(started.elapsed());
        egress.kill().await?;
    }
    let before = sandbox.requests().len();
    let restarted = Instant::now();
    let last = Egress::spawn(&env, &sandbox, "kills", &extra)?;
    wait_for(
        "sends after the last restart",
        Duration::from_secs(60),
        || sandbox.requests().len() > before,
    )
    .await?;
    let resumed = restarted.elapsed();
    let shown: Vec<String> = lives
        .iter()
        .map(|d| format!("{:.1}s", d.as_secs_f64()))
        .collect();
    println!(
        "[recovery] egress, static membership, SESSION_TIMEOUT 10s: start to first send of each of 8 killed incarnations: {}; after the 8th kill, sends resumed {:.1}s after the restart",
        shown.join(", "),
        resumed.as_secs_f64()
    );
    assert!(
        resumed < Duration::from_secs(15),
        "resumed after {resumed:?}"
    );
    last.stop().await?;
    Ok(())
}
