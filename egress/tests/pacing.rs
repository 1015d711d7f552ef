//! Pacing under load, against the real broker and registry and the in-process
//! Twilio sandbox: a busy long code keeps its rate while operations keep
//! arriving, and busy long codes never take a short code's permits.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_precision_loss)]

mod common;

use std::time::{Duration, Instant};

use common::{Egress, duplicates, max_per_second, op, produce_ops, sender_key, statuses, wait_for};
use si_schemas::records::{DeliveryOutcome, OutboundOperation};
use si_testkit::TestEnv;
use twilio_sandbox::{Faults, RequestRecord, Sandbox, SandboxConfig};

const LONG_CODE: &str = "+14155550140";
const SHORT_CODE: &str = "12345";

async fn sandbox() -> anyhow::Result<twilio_sandbox::SandboxHandle> {
    Sandbox::start(SandboxConfig {
        faults: Faults::default(),
        callbacks: false,
        ..SandboxConfig::default()
    })
    .await
}

fn with_segments(mut o: OutboundOperation, segments: i32) -> OutboundOperation {
    o.segments = Some(segments);
    o
}

fn sent_at(requests: &[RequestRecord], operation_id: &str) -> i64 {
    requests
        .iter()
        .find(|r| r.operation_id.as_deref() == Some(operation_id) && r.status == 201)
        .map(|r| r.at_ms)
        .unwrap_or_else(|| panic!("{operation_id} was not sent"))
}

/// A 1-per-second long code gets a mixed single- and multi-segment backlog
/// while new operations keep arriving (each arrival wakes its sender task).
/// Every operation leaves as soon as its queue position allows: after the
/// later of its arrival and the cells owed by the message before it.
#[tokio::test(flavor = "multi_thread")]
async fn a_busy_long_code_keeps_its_rate_while_operations_keep_arriving() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let sandbox = sandbox().await?;
    let rates = format!("{}=1", sender_key(LONG_CODE));
    let egress = Egress::spawn(
        &env,
        &sandbox,
        "long-code",
        &[
            ("EGRESS_SENDER_RATES", rates.as_str()),
            ("EGRESS_RATE_HEADROOM", "0.97"),
        ],
    )?;
    // A warm-up operation of another sender: egress is consuming once it is sent.
    produce_ops(&env, &[op("warm-up", "CHW", "+14155550141")]).await?;
    common::wait_for("egress to consume", Duration::from_secs(60), || {
        !sandbox.requests().is_empty()
    })
    .await?;
    let segments = [3, 1, 2, 1, 3, 2, 1, 2, 3, 1];
    let period_ms = 1_000.0 / 0.97;
    let mut arrivals = Vec::new();
    for (i, s) in segments.iter().enumerate() {
        let o = with_segments(op(&format!("lc-{i}"), &format!("CH{i:032}"), LONG_CODE), *s);
        arrivals.push(si_egress::sender::now_ms());
        produce_ops(&env, std::slice::from_ref(&o)).await?;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let by_id = statuses(&env, segments.len() + 1, Duration::from_secs(60)).await?;
    assert!(
        by_id
            .values()
            .all(|s| s.outcome == DeliveryOutcome::Accepted)
    );
    egress.stop().await?;
    let requests = sandbox.requests();
    assert_eq!(
        requests.len(),
        segments.len() + 1,
        "one request per operation"
    );
    let at: Vec<i64> = (0..segments.len())
        .map(|i| sent_at(&requests, &format!("lc-{i}")))
        .collect();
    let mut report = Vec::new();
    for i in 0..segments.len() {
        let owed = if i == 0 {
            0.0
        } else {
            at[i - 1] as f64 + f64::from(segments[i - 1]) * period_ms
        };
        let explained = owed.max(arrivals[i] as f64);
        let late = at[i] as f64 - explained;
        report.push(format!("lc-{i}: {late:+.0} ms"));
        assert!(
            late < 400.0,
            "lc-{i} left {late:.0} ms later than its queue position explains ({report:?})"
        );
        assert!(
            late > -150.0,
            "lc-{i} left {late:.0} ms before the cells owed allow ({report:?})"
        );
    }
    let paid: i32 = segments[..segments.len() - 1].iter().sum();
    let took = (at[segments.len() - 1] - at[0]) as f64 / 1_000.0;
    let rate = f64::from(paid) / took;
    eprintln!(
        "[long code] {paid} segments in {took:.2} s = {rate:.3}/s ({:.1}% of 1/s); lateness {report:?}",
        rate * 100.0
    );
    assert!(rate >= 0.9, "{rate:.3} segments/s on a 1/s long code");
    sandbox.shutdown().await;
    Ok(())
}

/// 32 long codes with multi-segment backlogs beside one short code, under a
/// concurrency cap of 4: long codes waiting for their cells hold no permit,
/// so the short code still sends at its own rate.
#[tokio::test(flavor = "multi_thread")]
async fn busy_long_codes_do_not_delay_a_short_code() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let sandbox = sandbox().await?;
    let long_codes: Vec<String> = (0..32)
        .map(|i| format!("+1415555{:04}", 3_000 + i))
        .collect();
    let mut ops = Vec::new();
    for (n, number) in long_codes.iter().enumerate() {
        for i in 0..3 {
            ops.push(with_segments(
                op(&format!("lc-{n}-{i}"), &format!("CHL{n:02}{i:029}"), number),
                3,
            ));
        }
    }
    let short: Vec<OutboundOperation> = (0..60)
        .map(|i| op(&format!("sc-{i}"), &format!("CHS{i:031}"), SHORT_CODE))
        .collect();
    produce_ops(&env, &ops).await?;
    produce_ops(&env, &short).await?;
    let egress = Egress::spawn(
        &env,
        &sandbox,
        "short-code",
        &[
            ("EGRESS_MAX_CONCURRENCY", "4"),
            ("EGRESS_RATE_SHORT_CODE", "100"),
            ("EGRESS_RATE_LONG_CODE", "1"),
        ],
    )?;
    let started = Instant::now();
    common::wait_for(
        "the short code's operations",
        Duration::from_secs(60),
        || {
            sandbox
                .requests()
                .iter()
                .filter(|r| {
                    r.operation_id
                        .as_deref()
                        .is_some_and(|id| id.starts_with("sc-"))
                })
                .count()
                == short.len()
        },
    )
    .await?;
    let requests = sandbox.requests();
    let short_requests: Vec<RequestRecord> = requests
        .iter()
        .filter(|r| {
            r.operation_id
                .as_deref()
                .is_some_and(|id| id.starts_with("sc-"))
        })
        .cloned()
        .collect();
    let rate = common::throughput(&short_requests);
    eprintln!(
        "[short code] 60 requests at {rate:.1}/s beside 32 busy long codes (cap 4), all within {:.2} s of egress starting",
        started.elapsed().as_secs_f64()
    );
    // 100/s × 0.97 headroom; a permit starved short code managed a few per second.
    assert!(rate >= 50.0, "the short code sent at {rate:.1}/s");
    let _ = statuses(&env, ops.len() + short.len(), Duration::from_secs(60)).await?;
    egress.stop().await?;
    sandbox.shutdown().await;
    Ok(())
}

async fn senders_gauge(admin: &str) -> anyhow::Result<i64> {
    let body = reqwest::get(format!("http://{admin}/metrics"))
        .await?
        .text()
        .await?;
    body.lines()
        .find(|l| l.starts_with("si_egress_senders"))
        .and_then(|l| l.rsplit(' ').next())
        .ok_or_else(|| anyhow::anyhow!("no si_egress_senders in /metrics"))?
        .parse()
        .map_err(Into::into)
}

async fn wait_for_senders(admin: &str, expected: i64) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let now = senders_gauge(admin).await;
        if now.as_ref().is_ok_and(|n| *n == expected) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < until,
            "si_egress_senders stayed at {now:?}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sender tasks end once idle, and a sender that comes back gets a new one:
/// memory does not grow with the number of distinct senders, and no job is
/// lost to a task that is ending.
#[tokio::test(flavor = "multi_thread")]
async fn idle_senders_are_reclaimed_and_come_back() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let sandbox = sandbox().await?;
    let admin = format!("127.0.0.1:{}", si_testkit::free_port()?);
    let egress = Egress::spawn(
        &env,
        &sandbox,
        "idle",
        &[
            ("ADMIN_ADDR", admin.as_str()),
            ("EGRESS_SENDER_IDLE_TIMEOUT", "1s"),
            ("EGRESS_RATE_LONG_CODE", "20"),
        ],
    )?;
    let numbers: Vec<String> = (0..40)
        .map(|i| format!("+1415555{:04}", 4_000 + i))
        .collect();
    let first: Vec<OutboundOperation> = numbers
        .iter()
        .enumerate()
        .map(|(i, n)| op(&format!("idle-a-{i}"), &format!("CHI{i:031}"), n))
        .collect();
    produce_ops(&env, &first).await?;
    let _ = statuses(&env, first.len(), Duration::from_secs(60)).await?;
    wait_for_senders(&admin, 0).await?;
    // The same senders again: new tasks, every operation sent.
    let again: Vec<OutboundOperation> = numbers
        .iter()
        .enumerate()
        .map(|(i, n)| op(&format!("idle-b-{i}"), &format!("CHI{i:031}"), n))
        .collect();
    produce_ops(&env, &again).await?;
    let by_id = statuses(&env, first.len() + again.len(), Duration::from_secs(60)).await?;
    assert!(
        again
            .iter()
            .all(|o| by_id[&o.operation_id].outcome == DeliveryOutcome::Accepted)
    );
    wait_for_senders(&admin, 0).await?;
    assert_eq!(sandbox.requests().len(), first.len() + again.len());
    egress.stop().await?;
    sandbox.shutdown().await;
    Ok(())
}

/// A concurrency permit covers the Twilio request, not what follows it: with
/// a cap of one and every ledger write held back for seconds (`linger.ms`,
/// which the ledger producer takes from the `KAFKA_*` pass-through), a short
/// code's operations still leave one after another at its rate. Held until
/// the ledger write is acknowledged, each would wait a whole linger for the
/// one before it.
#[tokio::test(flavor = "multi_thread")]
async fn a_permit_is_given_back_when_twilio_answers_not_after_the_ledger_write()
-> anyhow::Result<()> {
    const LINGER_MS: i64 = 3_000;
    let env = TestEnv::start().await?;
    let sandbox = sandbox().await?;
    let ops: Vec<OutboundOperation> = (0..10)
        .map(|i| op(&format!("pm-{i}"), &format!("CHP{i:031}"), SHORT_CODE))
        .collect();
    // All queued before egress starts, so they arrive in its first fetches.
    produce_ops(&env, &ops).await?;
    let linger = LINGER_MS.to_string();
    let egress = Egress::spawn(
        &env,
        &sandbox,
        "permit",
        &[
            ("EGRESS_MAX_CONCURRENCY", "1"),
            ("EGRESS_RATE_SHORT_CODE", "100"),
            ("KAFKA_LINGER_MS", linger.as_str()),
        ],
    )?;
    let sent = |requests: &[RequestRecord]| {
        requests
            .iter()
            .filter(|r| r.status == 201)
            .filter(|r| {
                r.operation_id
                    .as_deref()
                    .is_some_and(|id| id.starts_with("pm-"))
            })
            .count()
    };
    common::wait_for("every operation's request", Duration::from_secs(90), || {
        sent(&sandbox.requests()) == ops.len()
    })
    .await?;
    let requests = sandbox.requests();
    let at: Vec<i64> = (0..ops.len())
        .map(|i| sent_at(&requests, &format!("pm-{i}")))
        .collect();
    let span = at.iter().max().expect("ten") - at.iter().min().expect("ten");
    eprintln!(
        "[permit] {} requests in {span} ms under a cap of 1",
        ops.len()
    );
    assert!(
        span < LINGER_MS,
        "{} requests took {span} ms under a cap of 1: each waited for the ledger write \
         before it ({LINGER_MS} ms linger)",
        ops.len()
    );
    egress.stop().await?;
    sandbox.shutdown().await;
    Ok(())
}

/// Twilio refuses every request of a sender as too many (429 / 20429) for a
/// while: the sender's whole queue waits (its Retry-After, else the first
/// backoff step) instead of sending every queued operation into the same
/// refusal. Once Twilio takes requests again every operation is sent once.
#[tokio::test(flavor = "multi_thread")]
async fn a_sender_told_to_slow_down_holds_its_whole_queue() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let sandbox = sandbox().await?;
    sandbox.set_faults(Faults {
        rate_429: 1.0,
        ..Faults::default()
    })?;
    let rates = format!("{}=10", sender_key(LONG_CODE));
    let egress = Egress::spawn(
        &env,
        &sandbox,
        "slow-down",
        &[
            ("EGRESS_SENDER_RATES", rates.as_str()),
            ("EGRESS_RETRY_BASE", "1s"),
            ("EGRESS_RETRY_MAX", "1s"),
            ("EGRESS_MAX_ATTEMPTS", "40"),
        ],
    )?;
    let ops: Vec<OutboundOperation> = (0..20)
        .map(|i| op(&format!("slow-{i}"), &format!("CHS{i}"), LONG_CODE))
        .collect();
    produce_ops(&env, &ops).await?;
    let refused = || -> Vec<RequestRecord> {
        sandbox
            .requests()
            .into_iter()
            .filter(|r| r.injected)
            .collect()
    };
    // Three seconds of refusals.
    wait_for("3 s of refused requests", Duration::from_secs(60), || {
        let r = refused();
        let span = r.iter().map(|r| r.at_ms).max().unwrap_or(0)
            - r.iter().map(|r| r.at_ms).min().unwrap_or(0);
        span >= 3_000
    })
    .await?;
    // Unheld, the queue would go at 10 a second into the refusals.
    let worst = max_per_second(&refused());
    assert!(worst <= 3, "{worst} refused requests in one second");

    sandbox.set_faults(Faults::default())?;
    let by_id = statuses(&env, ops.len(), Duration::from_secs(90)).await?;
    for o in &ops {
        assert_eq!(by_id[&o.operation_id].outcome, DeliveryOutcome::Accepted);
    }
    assert_eq!(duplicates(&sandbox.requests()), 0);
    egress.stop().await?;
    sandbox.shutdown().await;
    Ok(())
}
