//! Shared helpers of the egress integration tests: the real broker and
//! registry through si-testkit, the Twilio sandbox in-process, egress as a
//! child process (so it can be SIGKILLed).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::time::Duration;

use si_schemas::records::{Channel, DeliveryStatus, OperationKind, OutboundOperation};
use si_schemas::topics;
use si_testkit::TestEnv;
use tokio::process::{Child, Command};
use twilio_sandbox::{RequestRecord, SandboxHandle};

pub const SENDER_NUMBER: &str = "+14155550100";

pub fn sender_key(number: &str) -> String {
    format!("sms:{number}")
}

/// A plain SMS send from `from` to a distinct recipient per conversation.
pub fn op(id: &str, conversation: &str, from: &str) -> OutboundOperation {
    let user = 1_000 + conversation.bytes().map(u32::from).sum::<u32>() % 8_000;
    OutboundOperation {
        operation_id: id.to_owned(),
        conversation_id: conversation.to_owned(),
        kind: OperationKind::SendMessage,
        channel: Channel::Sms,
        sender_key: sender_key(from),
        to: Some(format!("+1415556{user:04}")),
        from: Some(from.to_owned()),
        messaging_service_sid: None,
        body: Some(format!("part {id}")),
        media_urls: vec![],
        content_sid: None,
        content_variables_json: None,
        response_id: None,
        part_index: 0,
        part_count: 1,
        segments: Some(1),
        encoding: None,
        template_reason: None,
        call: None,
        params: BTreeMap::new(),
        created_at: si_egress::sender::now_ms(),
        not_after: None,
        traceparent: None,
    }
}

pub async fn produce_ops(env: &TestEnv, ops: &[OutboundOperation]) -> anyhow::Result<()> {
    for o in ops {
        env.produce(topics::OUTBOUND, &o.sender_key, o).await?;
    }
    Ok(())
}

/// An egress process; killed (SIGKILL) when dropped.
pub struct Egress {
    pub child: Child,
    pub pod: String,
    pub log: std::path::PathBuf,
}

impl Egress {
    pub fn spawn(
        env: &TestEnv,
        sandbox: &SandboxHandle,
        pod: &str,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let log = std::env::temp_dir().join(format!("{}egress-{pod}.log", env.kafka.topic_prefix));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        eprintln!("[egress {pod}] log: {}", log.display());
        let mut command = Command::new(env!("CARGO_BIN_EXE_si-egress"));
        command
            .env("KAFKA_BOOTSTRAP_SERVERS", &env.kafka.bootstrap_servers)
            .env("SI_TOPIC_PREFIX", &env.kafka.topic_prefix)
            .env("POD_NAME", pod)
            .env("SCHEMA_REGISTRY_URL", &env.registry.url)
            .env("ADMIN_ADDR", "127.0.0.1:0")
            .env("KAFKA_SESSION_TIMEOUT_MS", "6000")
            .env("KAFKA_HEARTBEAT_INTERVAL_MS", "1000")
            .env("TWILIO_ACCOUNT_SID", sandbox.account_sid())
            .env("TWILIO_AUTH_TOKEN", sandbox.auth_token())
            .env("TWILIO_API_BASE_URL", sandbox.base_url())
            .env("TWILIO_CONVERSATIONS_BASE_URL", sandbox.base_url())
            .env("EGRESS_RETRY_BASE", "50ms")
            .env("EGRESS_RETRY_MAX", "1s")
            .env("LOG_LEVEL", "info,si_egress=debug")
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        for (name, value) in extra {
            command.env(name, value);
        }
        Ok(Self {
            child: command.spawn()?,
            pod: pod.to_owned(),
            log,
        })
    }

    /// Lines of the log containing `needle` (all processes of this pod name).
    pub fn log_lines(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log).map_or(0, |text| {
            text.lines().filter(|l| l.contains(needle)).count()
        })
    }

    /// SIGTERM, then wait for a clean exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        let status = tokio::time::timeout(Duration::from_secs(40), self.child.wait()).await??;
        anyhow::ensure!(status.success(), "egress {} exited with {status}", self.pod);
        Ok(())
    }

    /// SIGKILL.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// Waits until `f` holds, polling every 50 ms, up to `deadline`.
pub async fn wait_for(
    what: &str,
    deadline: Duration,
    mut f: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    si_testkit::wait_for(what, deadline, || {
        let done = f();
        async move { Ok(done.then_some(())) }
    })
    .await
}

/// Reads `count` statuses and checks every operation has exactly one.
pub async fn statuses(
    env: &TestEnv,
    count: usize,
    deadline: Duration,
) -> anyhow::Result<HashMap<String, DeliveryStatus>> {
    let read = env
        .read::<DeliveryStatus>(topics::DELIVERY, count, deadline)
        .await?;
    let mut by_id = HashMap::new();
    for (key, status) in read {
        assert_eq!(
            key.as_deref(),
            Some(status.conversation_id.as_str()),
            "keyed by conversation"
        );
        let previous = by_id.insert(status.operation_id.clone(), status);
        assert!(
            previous.is_none(),
            "a second status for {:?}",
            previous.map(|p| p.operation_id)
        );
    }
    Ok(by_id)
}

/// Operations Twilio (the sandbox) processed more than once: answered 2xx, or
/// processed and then dropped without an answer.
pub fn duplicates(requests: &[RequestRecord]) -> usize {
    let mut processed: HashMap<&str, usize> = HashMap::new();
    for r in requests {
        let done = (200..300).contains(&r.status) || (r.status == 0 && r.sid.is_some());
        if done && let Some(id) = r.operation_id.as_deref() {
            *processed.entry(id).or_default() += 1;
        }
    }
    processed.values().filter(|n| **n > 1).map(|n| n - 1).sum()
}

/// The most requests of one sender in any window [t, t + 1 s).
pub fn max_per_second(requests: &[RequestRecord]) -> usize {
    let mut at: Vec<i64> = requests.iter().map(|r| r.at_ms).collect();
    at.sort_unstable();
    let mut best = 0;
    let mut start = 0;
    for end in 0..at.len() {
        while at[end] - at[start] >= 1_000 {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

/// Requests per second between the first and the last request.
pub fn throughput(requests: &[RequestRecord]) -> f64 {
    let first = requests.iter().map(|r| r.at_ms).min().unwrap_or(0);
    let last = requests.iter().map(|r| r.at_ms).max().unwrap_or(0);
    if last <= first {
        return 0.0;
    }
    #[allow(clippy::cast_precision_loss)]
    let rate = (requests.len() - 1) as f64 / ((last - first) as f64 / 1_000.0);
    rate
}
