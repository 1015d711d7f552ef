//! `sictl doctor`: what a deployment needs, checked from an operator's shell.
//! Kafka and the registry answer, the topics and schemas are as declared, Twilio
//! takes the credentials, and the webhook URLs Twilio has for our numbers,
//! Messaging Services and Conversations point at `PUBLIC_BASE_URL` plus
//! ingress's routes. Every finding says what is wrong and the fix.
//!
//! Twilio is only read (`GET`); the fixes that change Twilio's configuration
//! are printed as commands for the operator to run.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use si_runtime::{KafkaArgs, RegistryArgs};
use si_schemas::Registry;

mod twilio;

use crate::schemas::{LocalSchema, Verdict};
use crate::topics::Change;
use crate::topics_file::ResolvedTopic;

/// Ingress's routes Twilio is configured with (`ingress/src/app.rs`).
pub mod routes {
    /// Programmable Messaging inbound messages.
    pub const MESSAGING_INBOUND: &str = "/twilio/messaging/inbound";
    /// Programmable Messaging status callbacks.
    pub const MESSAGING_STATUS: &str = "/twilio/messaging/status";
    /// A call is answered: TwiML.
    pub const VOICE_ANSWER: &str = "/twilio/voice/answer";
    /// Call status callbacks.
    pub const VOICE_STATUS: &str = "/twilio/voice/status";
    /// Conversations post-event webhooks.
    pub const CONVERSATIONS_EVENTS: &str = "/twilio/conversations/events";
    /// Conversations pre-event webhooks.
    pub const CONVERSATIONS_PRE_EVENT: &str = "/twilio/conversations/pre-event";
}

/// The Conversations events the pipeline reads (normalize).
pub const CONVERSATIONS_FILTERS: &[&str] = &[
    "onMessageAdded",
    "onDeliveryUpdated",
    "onConversationStateUpdated",
    "onParticipantAdded",
];

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// As it should be.
    Ok,
    /// Works, but probably not as intended.
    Warn,
    /// Broken: the deployment does not work as it is.
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "FAIL",
        })
    }
}

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Which check: `kafka`, `topics`, `registry`, `schemas`,
    /// `twilio.credentials`, `twilio.numbers`, `twilio.messaging-services`,
    /// `twilio.conversations`.
    pub check: &'static str,
    /// The outcome.
    pub status: Status,
    /// What it is about (a topic, a subject, a number, a service), if one thing.
    pub subject: Option<String>,
    /// What was found.
    pub message: String,
    /// What to do about it (a command or a setting), for `warn` and `FAIL`.
    pub fix: Option<String>,
}

/// Every finding, in the order checked.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// The findings.
    pub checks: Vec<Finding>,
}

impl Report {
    fn push(
        &mut self,
        check: &'static str,
        status: Status,
        subject: Option<&str>,
        message: impl Into<String>,
        fix: Option<String>,
    ) {
        self.checks.push(Finding {
            check,
            status,
            subject: subject.map(str::to_owned),
            message: message.into(),
            fix,
        });
    }

    fn ok(&mut self, check: &'static str, subject: Option<&str>, message: impl Into<String>) {
        self.push(check, Status::Ok, subject, message, None);
    }

    fn warn(
        &mut self,
        check: &'static str,
        subject: Option<&str>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(check, Status::Warn, subject, message, Some(fix.into()));
    }

    fn fail(
        &mut self,
        check: &'static str,
        subject: Option<&str>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(check, Status::Fail, subject, message, Some(fix.into()));
    }

    /// Whether any check failed.
    #[must_use]
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }

    /// The report as text: one line per finding (`ok`/`warn`/`FAIL`, the
    /// check, the subject, what was found), the fix indented below it, and a
    /// summary line.
    ///
    /// # Errors
    /// When writing fails.
    pub fn write_text(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        for finding in &self.checks {
            let subject = finding
                .subject
                .as_deref()
                .map(|s| format!("{s}: "))
                .unwrap_or_default();
            writeln!(
                out,
                "{:<4}  {:<26} {subject}{}",
                finding.status.to_string(),
                finding.check,
                finding.message
            )?;
            if let Some(fix) = &finding.fix {
                writeln!(out, "      fix: {fix}")?;
            }
        }
        let count = |status| self.checks.iter().filter(|c| c.status == status).count();
        writeln!(
            out,
            "{} ok, {} warn, {} FAIL",
            count(Status::Ok),
            count(Status::Warn),
            count(Status::Fail)
        )
    }
}

/// Twilio's side of the deployment: where to reach it, with which credentials,
/// which of its numbers and services are ours.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// Ingress's public base URL, as Twilio calls it (ingress's PUBLIC_BASE_URL).
    #[arg(long, env = "PUBLIC_BASE_URL")]
    pub public_base_url: Option<String>,
    /// Twilio Account SID (AC…).
    #[arg(long, env = "TWILIO_ACCOUNT_SID")]
    pub account_sid: Option<String>,
    /// Auth Token of the account.
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// The secondary Auth Token, during a rotation; wins over the primary,
    /// as egress chooses.
    #[arg(long, env = "TWILIO_AUTH_TOKEN_SECONDARY", hide_env_values = true)]
    pub auth_token_secondary: Option<String>,
    /// API key SID (SK…), used with TWILIO_API_KEY_SECRET; wins over the Auth Token.
    #[arg(long, env = "TWILIO_API_KEY_SID")]
    pub api_key_sid: Option<String>,
    /// API key secret.
    #[arg(long, env = "TWILIO_API_KEY_SECRET", hide_env_values = true)]
    pub api_key_secret: Option<String>,
    /// A directory with the credentials as files (`auth-token`,
    /// `auth-token-secondary`, or `api-key-sid` and `api-key-secret`), as
    /// egress reads them; wins over the environment's.
    #[arg(long, env = "TWILIO_CREDENTIALS_DIR")]
    pub credentials_dir: Option<PathBuf>,
    /// Base URL of the 2010 API (Accounts, IncomingPhoneNumbers).
    #[arg(
        long,
        env = "TWILIO_API_BASE_URL",
        default_value = "https://api.twilio.com"
    )]
    pub api_base_url: String,
    /// Base URL of the Messaging API (Messaging Services).
    #[arg(
        long,
        env = "TWILIO_MESSAGING_BASE_URL",
        default_value = "https://messaging.twilio.com"
    )]
    pub messaging_base_url: String,
    /// Base URL of the Conversations API.
    #[arg(
        long,
        env = "TWILIO_CONVERSATIONS_BASE_URL",
        default_value = "https://conversations.twilio.com"
    )]
    pub conversations_base_url: String,
    /// Only this number of the account is ours (E.164; repeatable). Default: every number.
    #[arg(long = "number")]
    pub numbers: Vec<String>,
    /// Only this Messaging Service is ours (MG…; repeatable). Default: every service.
    #[arg(long = "messaging-service")]
    pub messaging_services: Vec<String>,
    /// Do not check the Conversations webhooks (a deployment without Conversations).
    #[arg(long)]
    pub skip_conversations: bool,
    /// Deadline of each check (Kafka metadata, one registry or Twilio request).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Page size of Twilio lists (1 to 1000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub page_size: u32,
    /// Prints the report as one JSON object (`{"ok": …, "checks": […]}`).
    #[arg(long)]
    pub json: bool,
}

/// What the doctor checks against.
pub struct Deployment<'a> {
    /// Kafka.
    pub kafka: &'a KafkaArgs,
    /// The registry.
    pub registry: &'a RegistryArgs,
    /// The declared topics (or why they could not be read).
    pub topics: anyhow::Result<Vec<ResolvedTopic>>,
    /// The committed schemas directory.
    pub schemas_dir: PathBuf,
    /// The doctor's own settings (Twilio, deadlines).
    pub args: &'a DoctorArgs,
}

/// Runs every check.
pub async fn run(deployment: Deployment<'_>) -> Report {
    let mut report = Report::default();
    let timeout = deployment.args.timeout;
    let kafka_ok = check_kafka(&mut report, deployment.kafka, timeout).await;
    let topics = match deployment.topics {
        Ok(topics) => Some(topics),
        Err(error) => {
            report.fail(
                "topics",
                None,
                format!("topics.yaml cannot be read: {error:#}"),
                "point --topics-file (SI_TOPICS_FILE) at the deployment's topics.yaml",
            );
            None
        }
    };
    if kafka_ok && let Some(topics) = &topics {
        check_topics(&mut report, deployment.kafka, topics, timeout).await;
    }
    let registry = check_registry(&mut report, deployment.registry, timeout).await;
    if let (Some(registry), Some(topics)) = (registry, &topics) {
        check_schemas(
            &mut report,
            &registry,
            topics,
            &deployment.schemas_dir,
            timeout,
        )
        .await;
    }
    twilio::check(&mut report, deployment.args).await;
    report
}

// ---------------------------------------------------------------- Kafka

async fn check_kafka(report: &mut Report, kafka: &KafkaArgs, timeout: Duration) -> bool {
    let started = Instant::now();
    match si_runtime::kafka::cluster_info(kafka, timeout).await {
        Ok(info) => {
            report.ok(
                "kafka",
                None,
                format!(
                    "{} answered metadata in {} ms: cluster {}, {} broker(s)",
                    kafka.bootstrap_servers,
                    started.elapsed().as_millis(),
                    info.cluster_id.as_deref().unwrap_or("?"),
                    info.brokers.len()
                ),
            );
            true
        }
        Err(error) => {
            report.fail(
                "kafka",
                None,
                format!(
                    "no metadata from {} within {}: {error:#}",
                    kafka.bootstrap_servers,
                    humantime::format_duration(timeout)
                ),
                "check KAFKA_BOOTSTRAP_SERVERS, that the brokers are up and reachable from here, and the KAFKA_* TLS/SASL settings (docs/runbooks/stuck-stage-or-lag.md); topics are not checked",
            );
            false
        }
    }
}

async fn check_topics(
    report: &mut Report,
    kafka: &KafkaArgs,
    topics: &[ResolvedTopic],
    timeout: Duration,
) {
    let plan = match crate::topics::admin(kafka) {
        Ok(admin) => {
            tokio::time::timeout(timeout * 3, crate::topics::plan(&admin, topics, timeout))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {:?}", timeout * 3)))
        }
        Err(error) => Err(error),
    };
    let plan = match plan {
        Ok(plan) => plan,
        Err(error) => {
            report.fail(
                "topics",
                None,
                format!("the topics cannot be compared: {error:#}"),
                "check the admin rights (Describe, DescribeConfigs) of these Kafka credentials",
            );
            return;
        }
    };
    const APPLY: &str = "sictl topics apply (add --dry-run to see the plan first)";
    for change in &plan.changes {
        match change {
            Change::Create(topic) => report.fail(
                "topics",
                Some(&topic.name),
                format!(
                    "missing (declared: {} partitions, replication {})",
                    topic.partitions, topic.replication_factor
                ),
                APPLY,
            ),
            Change::AddPartitions { topic, from, to } => report.fail(
                "topics",
                Some(topic),
                format!(
                    "has {from} partitions, {to} are declared (topics.yaml, SI_MAX_PARTITIONS)"
                ),
                "if the topics were created with SI_MAX_PARTITIONS, give sictl the same; adding \
                 partitions sends a key to another partition than its state's, so only then: \
                 sictl topics apply",
            ),
            Change::AlterConfigs { topic, drift, .. } => report.fail(
                "topics",
                Some(topic),
                format!(
                    "configs differ from topics.yaml: {}",
                    drift
                        .iter()
                        .map(|(k, (now, declared))| format!(
                            "{k} is {}, declared {declared}",
                            now.as_deref().unwrap_or("(unset)")
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                APPLY,
            ),
        }
    }
    for warning in &plan.warnings {
        report.warn(
            "topics",
            None,
            warning.clone(),
            "see docs/runbooks/stuck-stage-or-lag.md; `sictl topics apply` never lowers partitions or changes replication",
        );
    }
    if !plan.unchanged.is_empty() || plan.changes.is_empty() {
        report.ok(
            "topics",
            None,
            format!(
                "{} of {} topics exist with the declared partitions and configs",
                plan.unchanged.len(),
                topics.len()
            ),
        );
    }
}

// ---------------------------------------------------------------- registry

async fn check_registry(
    report: &mut Report,
    args: &RegistryArgs,
    timeout: Duration,
) -> Option<Registry> {
    let url = args.url.trim_end_matches('/');
    let answered = async {
        let http = reqwest::Client::builder().timeout(timeout).build()?;
        let mut request = http.get(format!("{url}/config"));
        if let Some(user) = &args.username {
            request = request.basic_auth(user, args.password.as_deref());
        }
        let response = request.send().await?;
        let status = response.status();
        anyhow::ensure!(status.is_success(), "HTTP {status}");
        let config: Value = response.json().await?;
        anyhow::Ok(config)
    }
    .await;
    match answered {
        Ok(config) => {
            report.ok(
                "registry",
                None,
                format!(
                    "{url} answered (global compatibility {})",
                    config["compatibilityLevel"].as_str().unwrap_or("?")
                ),
            );
            let mut config = args.config();
            config.timeout = timeout;
            match Registry::new(config) {
                Ok(registry) => Some(registry),
                Err(error) => {
                    report.fail(
                        "registry",
                        None,
                        format!("no client: {error}"),
                        "check SCHEMA_REGISTRY_URL",
                    );
                    None
                }
            }
        }
        Err(error) => {
            report.fail(
                "registry",
                None,
                format!("{url} does not answer GET /config: {error:#}"),
                "check SCHEMA_REGISTRY_URL (the Confluent-compatible API, e.g. …/apis/ccompat/v7), SCHEMA_REGISTRY_USERNAME/PASSWORD and that the registry is up; schemas are not checked",
            );
            None
        }
    }
}

async fn check_schemas(
    report: &mut Report,
    registry: &Registry,
    topics: &[ResolvedTopic],
    dir: &std::path::Path,
    timeout: Duration,
) {
    let locals: Vec<LocalSchema> = match crate::schemas::load(topics, dir) {
        Ok(locals) => locals,
        Err(error) => {
            report.fail(
                "schemas",
                None,
                format!("the local schemas cannot be read: {error:#}"),
                "point --schemas-dir (SI_SCHEMAS_DIR) at the deployment's schemas",
            );
            return;
        }
    };
    let deadline = timeout * u32::try_from(locals.len().max(1) * 3).unwrap_or(u32::MAX);
    let verdicts = tokio::time::timeout(deadline, crate::schemas::check(registry, &locals))
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {deadline:?}")));
    let verdicts = match verdicts {
        Ok(verdicts) => verdicts,
        Err(error) => {
            report.fail(
                "schemas",
                None,
                format!("the registry cannot be asked: {error:#}"),
                "check the registry (docs/runbooks/schema-change.md)",
            );
            return;
        }
    };
    let mut unchanged = 0;
    for ((subject, verdict), local) in verdicts.iter().zip(&locals) {
        match verdict {
            Verdict::Unchanged => unchanged += 1,
            Verdict::New => report.fail(
                "schemas",
                Some(subject),
                format!("not registered ({}): producers cannot encode", local.file),
                "sictl schemas register",
            ),
            Verdict::Compatible => report.fail(
                "schemas",
                Some(subject),
                format!(
                    "{} is not registered yet (compatible with the registered versions): stages of this version cannot encode",
                    local.file
                ),
                "sictl schemas register",
            ),
            Verdict::Incompatible(reasons) => report.fail(
                "schemas",
                Some(subject),
                format!("incompatible with the registered versions: {}", reasons.join(" ")),
                "do not register it: make the change compatible (docs/runbooks/schema-change.md, `sictl schemas check`)",
            ),
        }
    }
    if unchanged > 0 || locals.is_empty() {
        report.ok(
            "schemas",
            None,
            format!(
                "{unchanged} of {} subjects registered as committed",
                locals.len()
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fail_makes_the_report_fail_and_text_shows_the_fix() -> anyhow::Result<()> {
        let mut report = Report::default();
        report.ok("kafka", None, "fine");
        assert!(!report.failed());
        report.fail("topics", Some("t.a.v1"), "missing", "sictl topics apply");
        assert!(report.failed());
        let mut out = Vec::new();
        report.write_text(&mut out)?;
        let text = String::from_utf8(out)?;
        assert!(
            text.contains(
                "FAIL  topics                     t.a.v1: missing\n      fix: sictl topics apply\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("1 ok, 0 warn, 1 FAIL\n"), "{text}");
        Ok(())
    }

    #[test]
    fn every_runbook_a_fix_names_exists() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let sources = [include_str!("mod.rs"), include_str!("twilio.rs")];
        let mut named = 0;
        for source in sources {
            for (at, _) in source.match_indices("docs/runbooks/") {
                let name: String = source[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || "/-._".contains(*c))
                    .collect();
                let name = name.trim_end_matches('.');
                if name.ends_with(".md") {
                    named += 1;
                    assert!(root.join(name).is_file(), "{name} does not exist");
                }
            }
        }
        assert!(named >= 4, "the fixes name the runbooks ({named} found)");
    }
}
