//! Circuit breakers on the real broker against the Twilio sandbox: while
//! every request fails, egress stops hammering Twilio (one probe per open
//! period instead of a retry per operation), hands an urgent WhatsApp message
//! to delivery remediation at once, keeps the rest queued, and sends them all
//! once Twilio answers again: each operation with exactly one status.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Egress, op, produce_ops, statuses, wait_for};
use si_schemas::records::{Channel, DeliveryOutcome, OutboundOperation, PRIORITY_PARAM};
use si_testkit::TestEnv;
use twilio_sandbox::{Faults, Sandbox, SandboxConfig};

const WHATSAPP_SENDER: &str = "+14155550177";

fn whatsapp(id: &str, conversation: &str) -> OutboundOperation {
    let mut o = op(id, conversation, WHATSAPP_SENDER);
    o.channel = Channel::Whatsapp;
    o.sender_key = format!("whatsapp:{WHATSAPP_SENDER}");
    o
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_circuit_holds_sends_probes_and_releases_them() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let sandbox = Sandbox::start(SandboxConfig {
        faults: Faults {
            error_5xx_rate: 1.0,
            ..Faults::default()
        },
        callbacks: false,
        ..SandboxConfig::default()
    })
    .await?;
    let held: Vec<OutboundOperation> = (0..10)
        .map(|i| whatsapp(&format!("held-{i}"), &format!("CH{i:032}")))
        .collect();
    produce_ops(&env, &held).await?;
    let extra = [
        ("EGRESS_CIRCUIT_MIN_REQUESTS", "4"),
        ("EGRESS_CIRCUIT_OPEN_FOR", "1s"),
        // Without the breakers each operation would retry every ≤ 1 s.
        ("EGRESS_RETRY_BASE", "50ms"),
        ("EGRESS_RETRY_MAX", "1s"),
        ("EGRESS_MAX_ATTEMPTS", "1000"),
    ];
    let egress = Egress::spawn(&env, &sandbox, "circuit", &extra)?;
    let long = Duration::from_secs(60);
    wait_for("a breaker to open", long, || {
        egress.log_lines("circuit opened") >= 1
    })
    .await?;

    // An urgent WhatsApp message does not wait: delivery remediation gets it.
    let mut urgent = whatsapp("urgent-1", &format!("CH{:032}", 99));
    urgent.params = BTreeMap::from([(PRIORITY_PARAM.to_owned(), "HIGH".to_owned())]);
    produce_ops(&env, std::slice::from_ref(&urgent)).await?;

    // Two probe periods (1 s, then 2 s after the first failed probe; sender
    // and channel breakers each log their half-open).
    wait_for("two probes", long, || {
        egress.log_lines("circuit half-open") >= 4
    })
    .await?;
    let during = sandbox.requests().len();
    eprintln!(
        "[circuit] {during} requests to a failing Twilio over two probe periods (10 held operations)"
    );
    // Before opening: at most a few requests (4 failures open it, plus those
    // already in flight); then one probe per period. Retrying each of the 10
    // operations every ≤ 1 s for those ≥ 3 s would be 30 or more.
    assert!(
        during <= 20,
        "{during} requests while Twilio failed: the breaker did not hold them"
    );

    // Twilio recovers: the next probe closes the breakers and the queue goes.
    sandbox.set_faults(Faults::default())?;
    let by_id = statuses(&env, held.len() + 1, long).await?;
    for o in &held {
        assert_eq!(
            by_id[&o.operation_id].outcome,
            DeliveryOutcome::Accepted,
            "{:?}",
            by_id[&o.operation_id]
        );
    }
    let handed = &by_id["urgent-1"];
    assert_eq!(handed.outcome, DeliveryOutcome::DeadLettered);
    assert!(
        handed
            .error_message
            .as_deref()
            .is_some_and(|m| m.contains("circuit open")),
        "{handed:?}"
    );
    assert_eq!(handed.attempts, 0, "never sent to a failing Twilio");
    assert!(egress.log_lines("circuit closed") >= 1);
    egress.stop().await?;
    sandbox.shutdown().await;
    Ok(())
}
