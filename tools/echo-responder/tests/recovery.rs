//! How fast a stream stage (the echo responder on `si_runtime::stream::run`)
//! processes again after a SIGKILL and a restart under the same POD_NAME, at
//! the production session timeout (`SESSION_TIMEOUT`, 10 s): with static
//! membership the restarted process takes its partitions back without
//! waiting for the dead member's session to expire; without it the group
//! waits for that expiry. Each test prints its figures.

use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::StreamConsumer;
use si_schemas::records::{Channel, CognitionResponse, InboundMessage, InboundPurpose};
use si_schemas::topics;
use si_testkit::TestEnv;
use si_testkit::process::StageProcess;

fn inbound(id: &str, conversation: usize) -> InboundMessage {
    InboundMessage {
        message_id: id.to_owned(),
        conversation_id: format!("pm-conv-{conversation}"),
        session_id: format!("s-{conversation}"),
        user_id: None,
        visitor_id: Some("v-1".into()),
        registered: false,
        channel: Channel::Sms,
        locale: "en".into(),
        text: format!("hello {id}"),
        media: Vec::new(),
        received_at: 1_700_000_000_000,
        event_id: format!("e-{id}"),
        first_contact: false,
        possible_revocation: false,
        traceparent: None,
        purpose: InboundPurpose::UserMessage,
        stored_media: Vec::new(),
        location: None,
        profile_name: None,
        button_payload: None,
    }
}

async fn send(env: &TestEnv, id: &str, conversation: usize) -> anyhow::Result<()> {
    let message = inbound(id, conversation);
    env.produce(topics::INBOUND, &message.conversation_id.clone(), &message)
        .await
}

/// Reads responses until the one answering `id` arrives.
async fn answered(
    env: &TestEnv,
    responses: &StreamConsumer,
    id: &str,
    deadline: Duration,
) -> anyhow::Result<()> {
    let until = Instant::now() + deadline;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let Ok(received) = tokio::time::timeout(left, responses.recv()).await else {
            anyhow::bail!("no answer to {id} within {deadline:?}");
        };
        if let Some(payload) = received?.payload() {
            let response = env.codec.decode::<CognitionResponse>(payload).await?;
            if response.in_reply_to.as_deref() == Some(id) {
                return Ok(());
            }
        }
    }
}

/// Kills the stage `kills` times with a burst of messages in flight,
/// restarts it at once under the same pod name, and returns how long after
/// each restart a message sent at the restart was answered.
async fn kill_and_restart(static_membership: bool, kills: usize) -> anyhow::Result<Vec<Duration>> {
    let env = TestEnv::start().await?;
    // The production session timeout, not the test kit's shorter one.
    let vars = [
        (
            "STATIC_MEMBERSHIP",
            if static_membership { "true" } else { "false" },
        ),
        ("KAFKA_SESSION_TIMEOUT_MS", "10000"),
        ("KAFKA_HEARTBEAT_INTERVAL_MS", "2000"),
    ];
    let responses = env.consumer(topics::RESPONSES).await?;
    let mut echo = StageProcess::spawn(&env, "si-echo-responder", "pod-0", &vars)?;
    echo.ready(Duration::from_secs(60)).await?;
    send(&env, "warm-up", 0).await?;
    answered(&env, &responses, "warm-up", Duration::from_secs(30)).await?;
    let mut figures = Vec::new();
    for kill in 0..kills {
        // A burst across the partitions, so the kill lands with work (and
        // likely an open transaction) in flight.
        for i in 0..30 {
            send(&env, &format!("burst-{kill}-{i}"), i).await?;
        }
        echo.kill()?;
        let restarted = Instant::now();
        echo = StageProcess::spawn(&env, "si-echo-responder", "pod-0", &vars)?;
        let probe = format!("probe-{kill}");
        send(&env, &probe, kill).await?;
        answered(&env, &responses, &probe, Duration::from_secs(60))
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", echo.log_tail(30)))?;
        figures.push(restarted.elapsed());
    }
    echo.terminate(Duration::from_secs(30))?;
    Ok(figures)
}

fn report(what: &str, figures: &[Duration]) -> Duration {
    let worst = figures.iter().max().copied().unwrap_or_default();
    let shown: Vec<String> = figures
        .iter()
        .map(|d| format!("{:.1}s", d.as_secs_f64()))
        .collect();
    println!(
        "[recovery] {what}: processing again after restart: {} (worst {:.1}s)",
        shown.join(", "),
        worst.as_secs_f64()
    );
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_member_restarted_under_its_name_processes_again_within_10s() -> anyhow::Result<()> {
    let figures = kill_and_restart(true, 3).await?;
    let worst = report("static membership, SESSION_TIMEOUT 10s, 3 kills", &figures);
    assert!(worst < Duration::from_secs(10), "{figures:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_member_processes_again_after_the_session_timeout() -> anyhow::Result<()> {
    let figures = kill_and_restart(false, 1).await?;
    let worst = report("dynamic membership, SESSION_TIMEOUT 10s, 1 kill", &figures);
    // The dead member's session (10 s) expires, then one rebalance.
    assert!(worst < Duration::from_secs(20), "{figures:?}");
    Ok(())
}
