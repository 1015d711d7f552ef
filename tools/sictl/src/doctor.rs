//! `sictl doctor`: what a deployment needs, checked from an operator's shell.
//! Kafka and the registry answer, the topics and schemas are as declared, Twilio
//! takes the credentials, and the webhook URLs Twilio has for our numbers,
//! Messaging Services and Conversations point at `PUBLIC_BASE_URL` plus
//! ingress's routes. Every finding says what is wrong and the fix.
//!
//! Twilio is only read (`GET`); the fixes that change Twilio's configuration
//! are printed as commands for the operator to run.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use reqwest::Url;
use serde::Serialize;
use serde_json::Value;
use si_runtime::{KafkaArgs, RegistryArgs};
use si_schemas::Registry;

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
    /// API key SID (SK…), used with TWILIO_API_KEY_SECRET; wins over the Auth Token.
    #[arg(long, env = "TWILIO_API_KEY_SID")]
    pub api_key_sid: Option<String>,
    /// API key secret.
    #[arg(long, env = "TWILIO_API_KEY_SECRET", hide_env_values = true)]
    pub api_key_secret: Option<String>,
    /// A directory with the credentials as files (`auth-token`, or
    /// `api-key-sid` and `api-key-secret`), as egress reads them; wins over the
    /// environment's.
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
    /// Twilio.
    pub twilio: &'a DoctorArgs,
}

/// Runs every check.
pub async fn run(deployment: Deployment<'_>) -> Report {
    let mut report = Report::default();
    let timeout = deployment.twilio.timeout;
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
    check_twilio(&mut report, deployment.twilio).await;
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
                format!("has {from} partitions, topics.yaml declares {to}"),
                APPLY,
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

// ---------------------------------------------------------------- Twilio

/// The credentials in use, and how to name them in a message.
struct Credentials {
    user: String,
    secret: String,
    kind: String,
    /// `-u` of the printed fixes: the variables, not the values.
    curl_auth: &'static str,
}

fn read_secret(dir: &std::path::Path, name: &str) -> anyhow::Result<Option<String>> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().to_owned()).filter(|t| !t.is_empty())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

/// As egress chooses: the files of TWILIO_CREDENTIALS_DIR win over the
/// environment's; the API key pair wins over the Auth Token.
fn credentials(args: &DoctorArgs, account: &str) -> anyhow::Result<Option<Credentials>> {
    let mut token = args.auth_token.clone().filter(|t| !t.is_empty());
    let mut key = args.api_key_sid.clone().filter(|k| !k.is_empty());
    let mut secret = args.api_key_secret.clone().filter(|s| !s.is_empty());
    let mut source = "the environment";
    if let Some(dir) = args
        .credentials_dir
        .as_deref()
        .filter(|d| !d.as_os_str().is_empty())
    {
        let file_token = read_secret(dir, "auth-token")?;
        let file_key = read_secret(dir, "api-key-sid")?;
        let file_secret = read_secret(dir, "api-key-secret")?;
        if file_token.is_some() || file_key.is_some() {
            (token, key, secret) = (file_token, file_key, file_secret);
            source = "TWILIO_CREDENTIALS_DIR";
        }
    }
    Ok(match (key, secret, token) {
        (Some(key), Some(secret), _) => Some(Credentials {
            kind: format!("API key {key} from {source}"),
            curl_auth: "$TWILIO_API_KEY_SID:$TWILIO_API_KEY_SECRET",
            user: key,
            secret,
        }),
        (Some(_), None, _) | (None, Some(_), _) => {
            anyhow::bail!("only half of the API key pair is set (in {source})")
        }
        (None, None, Some(token)) => Some(Credentials {
            user: account.to_owned(),
            secret: token,
            kind: format!("the Auth Token from {source}"),
            curl_auth: "$TWILIO_ACCOUNT_SID:$TWILIO_AUTH_TOKEN",
        }),
        (None, None, None) => None,
    })
}

/// A read-only Twilio client.
struct Twilio {
    http: reqwest::Client,
    credentials: Credentials,
    page_size: u32,
}

/// Why a Twilio GET gave no resource.
enum Refusal {
    /// Twilio answered with an error.
    Status {
        status: u16,
        code: Option<u64>,
        message: String,
    },
    /// No answer.
    Unreachable(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status {
                status,
                code,
                message,
            } => {
                write!(f, "HTTP {status}")?;
                if let Some(code) = code {
                    write!(f, ", code {code}")?;
                }
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                Ok(())
            }
            Self::Unreachable(error) => write!(f, "no answer: {error}"),
        }
    }
}

impl Twilio {
    async fn get(&self, url: &str) -> Result<Value, Refusal> {
        let response = self
            .http
            .get(url)
            .basic_auth(&self.credentials.user, Some(&self.credentials.secret))
            .send()
            .await
            .map_err(|e| Refusal::Unreachable(format!("{e:#}")))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(body)
        } else {
            Err(Refusal::Status {
                status: status.as_u16(),
                code: body["code"].as_u64(),
                message: body["message"].as_str().unwrap_or_default().to_owned(),
            })
        }
    }

    /// Every item of a list, following its pages on `base` (never on another
    /// host a page link names: the credentials go only where configured).
    async fn list(&self, base: &str, path: &str, key: &str) -> Result<Vec<Value>, Refusal> {
        let base = base.trim_end_matches('/');
        let mut next = Some(format!("{path}?PageSize={}", self.page_size));
        let mut items = Vec::new();
        // A broken server linking pages in a circle would loop forever.
        for _ in 0..10_000 {
            let Some(path_and_query) = next.take() else {
                return Ok(items);
            };
            let page = self.get(&format!("{base}{path_and_query}")).await?;
            items.extend(page[key].as_array().cloned().unwrap_or_default());
            let link = page["next_page_uri"]
                .as_str()
                .or_else(|| page["meta"]["next_page_url"].as_str())
                .filter(|l| !l.is_empty());
            next = link.map(path_and_query_of);
        }
        Ok(items)
    }
}

/// `/path?query` of a relative or absolute link.
fn path_and_query_of(link: &str) -> String {
    match Url::parse(link) {
        Ok(url) => match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        },
        Err(_) => link.to_owned(),
    }
}

/// How a webhook URL Twilio has compares with the one it should be.
#[derive(Debug, PartialEq, Eq)]
enum Match {
    /// The same URL (scheme, host, port, path; query and fragment aside).
    Ours,
    /// Not set.
    Empty,
    /// Somewhere else.
    Elsewhere,
}

fn compare(configured: Option<&str>, expected: &Url) -> Match {
    let Some(configured) = configured.map(str::trim).filter(|c| !c.is_empty()) else {
        return Match::Empty;
    };
    let Ok(url) = Url::parse(configured) else {
        return Match::Elsewhere;
    };
    let same = url.scheme() == expected.scheme()
        && url.host_str().map(str::to_ascii_lowercase)
            == expected.host_str().map(str::to_ascii_lowercase)
        && url.port_or_known_default() == expected.port_or_known_default()
        && url.path().trim_end_matches('/') == expected.path().trim_end_matches('/');
    if same { Match::Ours } else { Match::Elsewhere }
}

fn shown(value: Option<&str>) -> String {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        Some(v) => v.to_owned(),
        None => "(empty)".to_owned(),
    }
}

fn text<'a>(item: &'a Value, field: &str) -> Option<&'a str> {
    item[field]
        .as_str()
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Ingress's URLs under PUBLIC_BASE_URL.
struct Expected {
    base: Url,
}

impl Expected {
    fn new(public_base_url: &str) -> anyhow::Result<Self> {
        let base = Url::parse(public_base_url.trim()).context("not a URL")?;
        anyhow::ensure!(
            matches!(base.scheme(), "http" | "https") && base.host_str().is_some(),
            "must be an http(s) URL with a host"
        );
        Ok(Self { base })
    }

    /// The base URL with `route` after its path (a proxy's prefix kept).
    fn url(&self, route: &str) -> Url {
        let mut url = self.base.clone();
        let path = format!("{}{route}", self.base.path().trim_end_matches('/'));
        url.set_path(&path);
        url.set_query(None);
        url.set_fragment(None);
        url
    }
}

/// A `curl` that sets `params` on a Twilio resource (the operator runs it;
/// the doctor never writes to Twilio). `auth` names the credentials by their
/// variables, never their values.
fn curl_update(url: &str, auth: &str, params: &[(&str, String)]) -> String {
    let mut command = format!("curl -X POST '{url}' -u \"{auth}\"");
    for (name, value) in params {
        command.push_str(&format!(" --data-urlencode '{name}={value}'"));
    }
    command
}

async fn check_twilio(report: &mut Report, args: &DoctorArgs) {
    const CREDENTIALS: &str = "twilio.credentials";
    let Some(account) = args.account_sid.as_deref().filter(|a| !a.is_empty()) else {
        report.fail(
            CREDENTIALS,
            None,
            "TWILIO_ACCOUNT_SID is not set: Twilio is not checked",
            "set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN (or TWILIO_API_KEY_SID/TWILIO_API_KEY_SECRET, or TWILIO_CREDENTIALS_DIR) as egress has them",
        );
        return;
    };
    let credentials = match credentials(args, account) {
        Ok(Some(credentials)) => credentials,
        Ok(None) => {
            report.fail(
                CREDENTIALS,
                Some(account),
                "no credentials: neither TWILIO_AUTH_TOKEN nor TWILIO_API_KEY_SID/TWILIO_API_KEY_SECRET nor TWILIO_CREDENTIALS_DIR is set",
                "set them as egress has them (kubectl get secret of the release; docs/runbooks/credential-compromise.md)",
            );
            return;
        }
        Err(error) => {
            report.fail(
                CREDENTIALS,
                Some(account),
                format!("{error:#}"),
                "set both TWILIO_API_KEY_SID and TWILIO_API_KEY_SECRET (or api-key-sid and api-key-secret in TWILIO_CREDENTIALS_DIR), or only the Auth Token",
            );
            return;
        }
    };
    let http = match reqwest::Client::builder().timeout(args.timeout).build() {
        Ok(http) => http,
        Err(error) => {
            report.fail(
                CREDENTIALS,
                None,
                format!("no HTTP client: {error}"),
                "check the TLS setup of this machine",
            );
            return;
        }
    };
    let twilio = Twilio {
        http,
        credentials,
        page_size: args.page_size,
    };
    let api = args.api_base_url.trim_end_matches('/');
    let account_url = format!("{api}/2010-04-01/Accounts/{account}.json");
    match twilio.get(&account_url).await {
        Ok(resource) => {
            let status = resource["status"].as_str().unwrap_or("?");
            let name = resource["friendly_name"].as_str().unwrap_or("");
            if status == "active" {
                report.ok(
                    CREDENTIALS,
                    Some(account),
                    format!(
                        "{api} accepts {} (account \"{name}\" is active)",
                        twilio.credentials.kind
                    ),
                );
            } else {
                report.fail(
                    CREDENTIALS,
                    Some(account),
                    format!("the account is {status}: Twilio sends nothing for it"),
                    "reactivate the account in the Twilio Console (Admin > Account management) or point TWILIO_ACCOUNT_SID at the right one",
                );
            }
        }
        Err(Refusal::Status {
            status: 401 | 403,
            code,
            message,
        }) => {
            report.fail(
                CREDENTIALS,
                Some(account),
                format!(
                    "{api} refuses {} (HTTP 401{}{}): webhook URLs are not checked",
                    twilio.credentials.kind,
                    code.map(|c| format!(", code {c}")).unwrap_or_default(),
                    if message.is_empty() { String::new() } else { format!(": {message}") }
                ),
                "put the account's current Auth Token (or a Main API key pair) into the deployment's Secret and TWILIO_* settings; if they may have leaked, follow docs/runbooks/credential-compromise.md. A Standard API key cannot read the Account resource: use a Main key here",
            );
            return;
        }
        Err(refusal) => {
            report.fail(
                CREDENTIALS,
                Some(account),
                format!("{account_url}: {refusal}: webhook URLs are not checked"),
                "check TWILIO_API_BASE_URL and that this machine reaches Twilio on 443 (docs/runbooks/twilio-outage.md; status.twilio.com)",
            );
            return;
        }
    }
    let Some(base) = args
        .public_base_url
        .as_deref()
        .filter(|b| !b.trim().is_empty())
    else {
        report.fail(
            "twilio.numbers",
            None,
            "PUBLIC_BASE_URL is not set: the webhook URLs cannot be compared",
            "set PUBLIC_BASE_URL (or --public-base-url) to ingress's, e.g. from `helm get values $REL -n $NS -a | grep PUBLIC_BASE_URL`",
        );
        return;
    };
    let expected = match Expected::new(base) {
        Ok(expected) => expected,
        Err(error) => {
            report.fail(
                "twilio.numbers",
                None,
                format!("PUBLIC_BASE_URL {base:?}: {error:#}"),
                "set PUBLIC_BASE_URL to ingress's public https URL (scheme, host, any path prefix)",
            );
            return;
        }
    };
    let services = check_services(report, &twilio, args, account, &expected).await;
    check_numbers(report, &twilio, args, account, &expected, &services).await;
    if !args.skip_conversations {
        check_conversations(report, &twilio, args, account, &expected).await;
    }
}

/// Which numbers a service routes itself: number → service SID, for the
/// services that do not use the numbers' own webhook.
type ServiceRouted = BTreeMap<String, String>;

async fn check_services(
    report: &mut Report,
    twilio: &Twilio,
    args: &DoctorArgs,
    account: &str,
    expected: &Expected,
) -> ServiceRouted {
    const CHECK: &str = "twilio.messaging-services";
    let mut routed = ServiceRouted::new();
    let base = args.messaging_base_url.trim_end_matches('/');
    let services = match twilio.list(base, "/v1/Services", "services").await {
        Ok(services) => services,
        Err(refusal) => {
            report.fail(
                CHECK,
                None,
                format!("{base}/v1/Services: {refusal}"),
                "check TWILIO_MESSAGING_BASE_URL; the credentials need read access to Messaging Services",
            );
            return routed;
        }
    };
    for wanted in &args.messaging_services {
        if !services
            .iter()
            .any(|s| text(s, "sid") == Some(wanted.as_str()))
        {
            report.fail(
                CHECK,
                Some(wanted),
                format!("not a Messaging Service of account {account}"),
                "check --messaging-service, or the account (TWILIO_ACCOUNT_SID)",
            );
        }
    }
    let inbound = expected.url(routes::MESSAGING_INBOUND);
    let status = expected.url(routes::MESSAGING_STATUS);
    for service in &services {
        let sid = text(service, "sid").unwrap_or("MG?");
        if !args.messaging_services.is_empty() && !args.messaging_services.iter().any(|s| s == sid)
        {
            continue;
        }
        let url = format!("{base}/v1/Services/{sid}");
        let subject = match text(service, "friendly_name") {
            Some(name) => format!("{sid} ({name})"),
            None => sid.to_owned(),
        };
        let mut problems = 0;
        let on_number = service["use_inbound_webhook_on_number"].as_bool() == Some(true);
        if on_number {
            // The numbers' own sms_url applies: checked with the numbers.
        } else {
            match twilio
                .list(
                    base,
                    &format!("/v1/Services/{sid}/PhoneNumbers"),
                    "phone_numbers",
                )
                .await
            {
                Ok(numbers) => {
                    for number in numbers {
                        if let Some(n) = text(&number, "phone_number") {
                            routed.insert(n.to_owned(), sid.to_owned());
                        }
                    }
                }
                Err(refusal) => {
                    problems += 1;
                    report.warn(
                        CHECK,
                        Some(&subject),
                        format!("its phone numbers cannot be listed ({refusal}): numbers may be judged by their own sms_url"),
                        "give the credentials read access to the service's senders",
                    );
                }
            }
            let configured = text(service, "inbound_request_url");
            let fix = curl_update(
                &url,
                twilio.credentials.curl_auth,
                &[
                    ("InboundRequestUrl", inbound.to_string()),
                    ("InboundMethod", "POST".to_owned()),
                ],
            );
            match compare(configured, &inbound) {
                Match::Ours => {}
                Match::Empty => {
                    problems += 1;
                    report.fail(
                        CHECK,
                        Some(&subject),
                        format!("inbound_request_url is empty: messages to its senders are dropped, expected {inbound}"),
                        fix.clone(),
                    );
                }
                Match::Elsewhere => {
                    problems += 1;
                    report.fail(
                        CHECK,
                        Some(&subject),
                        format!(
                            "inbound_request_url is {}, expected {inbound}",
                            shown(configured)
                        ),
                        fix.clone(),
                    );
                }
            }
            if text(service, "inbound_method").is_some_and(|m| m != "POST") {
                problems += 1;
                report.fail(
                    CHECK,
                    Some(&subject),
                    "inbound_method is GET: ingress takes POST only",
                    fix,
                );
            }
        }
        let configured = text(service, "status_callback");
        let fix = curl_update(
            &url,
            twilio.credentials.curl_auth,
            &[("StatusCallback", status.to_string())],
        );
        match compare(configured, &status) {
            Match::Ours => {}
            Match::Empty => {
                problems += 1;
                report.warn(
                    CHECK,
                    Some(&subject),
                    format!("status_callback is empty: statuses arrive only for messages sent with their own StatusCallback (egress's STATUS_CALLBACK_BASE_URL); expected {status}"),
                    fix,
                );
            }
            Match::Elsewhere => {
                problems += 1;
                report.fail(
                    CHECK,
                    Some(&subject),
                    format!(
                        "status_callback is {}, expected {status}",
                        shown(configured)
                    ),
                    fix,
                );
            }
        }
        if problems == 0 {
            report.ok(
                CHECK,
                Some(&subject),
                if on_number {
                    format!("inbound through the numbers' sms_url (use_inbound_webhook_on_number), status_callback {status}")
                } else {
                    format!("inbound_request_url {inbound}, status_callback {status}")
                },
            );
        }
    }
    routed
}

async fn check_numbers(
    report: &mut Report,
    twilio: &Twilio,
    args: &DoctorArgs,
    account: &str,
    expected: &Expected,
    routed: &ServiceRouted,
) {
    const CHECK: &str = "twilio.numbers";
    let api = args.api_base_url.trim_end_matches('/');
    let path = format!("/2010-04-01/Accounts/{account}/IncomingPhoneNumbers.json");
    let numbers = match twilio.list(api, &path, "incoming_phone_numbers").await {
        Ok(numbers) => numbers,
        Err(refusal) => {
            report.fail(
                CHECK,
                None,
                format!("{api}{path}: {refusal}"),
                "the credentials need read access to the account's phone numbers",
            );
            return;
        }
    };
    for wanted in &args.numbers {
        if !numbers
            .iter()
            .any(|n| text(n, "phone_number") == Some(wanted.as_str()))
        {
            report.fail(
                CHECK,
                Some(wanted),
                format!("not a phone number of account {account}"),
                "check --number, or the account (TWILIO_ACCOUNT_SID)",
            );
        }
    }
    if numbers.is_empty() && args.numbers.is_empty() {
        report.warn(
            CHECK,
            None,
            format!("account {account} has no phone numbers"),
            "buy or port the numbers Si uses into this account, or point TWILIO_ACCOUNT_SID at the right one",
        );
    }
    for number in &numbers {
        let phone = text(number, "phone_number").unwrap_or("?");
        if !args.numbers.is_empty() && !args.numbers.iter().any(|n| n == phone) {
            continue;
        }
        check_number(
            report, twilio, api, account, expected, routed, number, phone,
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn check_number(
    report: &mut Report,
    twilio: &Twilio,
    api: &str,
    account: &str,
    expected: &Expected,
    routed: &ServiceRouted,
    number: &Value,
    phone: &str,
) {
    const CHECK: &str = "twilio.numbers";
    let sid = text(number, "sid").unwrap_or("PN?");
    let subject = format!("{phone} ({sid})");
    let url = format!("{api}/2010-04-01/Accounts/{account}/IncomingPhoneNumbers/{sid}.json");
    let fix = |params: &[(&str, String)]| curl_update(&url, twilio.credentials.curl_auth, params);
    let mut problems = 0;
    let mut notes = Vec::new();

    // Messages.
    let inbound = expected.url(routes::MESSAGING_INBOUND);
    if let Some(service) = routed.get(phone) {
        notes.push(format!("messages through Messaging Service {service}"));
    } else if let Some(app) = text(number, "sms_application_sid") {
        problems += 1;
        report.warn(
            CHECK,
            Some(&subject),
            format!("messages go to TwiML App {app} (its SmsUrl is not checked), expected sms_url {inbound}"),
            fix(&[("SmsApplicationSid", String::new()), ("SmsUrl", inbound.to_string()), ("SmsMethod", "POST".to_owned())]),
        );
    } else {
        let configured = text(number, "sms_url");
        let sms_fix = fix(&[
            ("SmsUrl", inbound.to_string()),
            ("SmsMethod", "POST".to_owned()),
        ]);
        match compare(configured, &inbound) {
            Match::Ours => notes.push(format!("sms_url {inbound}")),
            Match::Empty => {
                problems += 1;
                report.fail(
                    CHECK,
                    Some(&subject),
                    format!("sms_url is empty: incoming messages reach nobody, expected {inbound}"),
                    sms_fix.clone(),
                );
            }
            Match::Elsewhere => {
                problems += 1;
                report.fail(
                    CHECK,
                    Some(&subject),
                    format!("sms_url is {}, expected {inbound}", shown(configured)),
                    sms_fix.clone(),
                );
            }
        }
        if text(number, "sms_method").is_some_and(|m| m != "POST") {
            problems += 1;
            report.fail(
                CHECK,
                Some(&subject),
                "sms_method is GET: ingress takes POST only",
                sms_fix,
            );
        }
    }

    // Calls.
    let takes_calls = number["capabilities"]["voice"].as_bool() != Some(false);
    let answer = expected.url(routes::VOICE_ANSWER);
    if !takes_calls {
        notes.push("no voice".to_owned());
    } else if let Some(other) =
        text(number, "trunk_sid").or_else(|| text(number, "voice_application_sid"))
    {
        problems += 1;
        report.warn(
            CHECK,
            Some(&subject),
            format!("calls go to {other} (not checked), expected voice_url {answer}"),
            fix(&[
                ("VoiceApplicationSid", String::new()),
                ("VoiceUrl", answer.to_string()),
                ("VoiceMethod", "POST".to_owned()),
            ]),
        );
    } else {
        let configured = text(number, "voice_url");
        let voice_fix = fix(&[
            ("VoiceUrl", answer.to_string()),
            ("VoiceMethod", "POST".to_owned()),
        ]);
        match compare(configured, &answer) {
            Match::Ours => notes.push(format!("voice_url {answer}")),
            Match::Empty => {
                problems += 1;
                report.warn(
                    CHECK,
                    Some(&subject),
                    format!("voice_url is empty: calls to the number are not answered by Si, expected {answer}"),
                    voice_fix.clone(),
                );
            }
            Match::Elsewhere => {
                problems += 1;
                report.fail(
                    CHECK,
                    Some(&subject),
                    format!("voice_url is {}, expected {answer}", shown(configured)),
                    voice_fix.clone(),
                );
            }
        }
        if text(number, "voice_method").is_some_and(|m| m != "POST") {
            problems += 1;
            report.fail(
                CHECK,
                Some(&subject),
                "voice_method is GET: ingress takes POST only",
                voice_fix,
            );
        }
        let status = expected.url(routes::VOICE_STATUS);
        let configured = text(number, "status_callback");
        if compare(configured, &status) == Match::Elsewhere {
            problems += 1;
            report.fail(
                CHECK,
                Some(&subject),
                format!(
                    "status_callback is {}, expected {status} (or empty)",
                    shown(configured)
                ),
                fix(&[
                    ("StatusCallback", status.to_string()),
                    ("StatusCallbackMethod", "POST".to_owned()),
                ]),
            );
        } else if configured.is_some() {
            notes.push(format!("status_callback {status}"));
        }
    }
    if problems == 0 {
        report.ok(CHECK, Some(&subject), notes.join(", "));
    }
}

async fn check_conversations(
    report: &mut Report,
    twilio: &Twilio,
    args: &DoctorArgs,
    account: &str,
    expected: &Expected,
) {
    const CHECK: &str = "twilio.conversations";
    let base = args.conversations_base_url.trim_end_matches('/');
    let url = format!("{base}/v1/Configuration/Webhooks");
    let webhooks = match twilio.get(&url).await {
        Ok(webhooks) => webhooks,
        Err(refusal) => {
            report.fail(
                CHECK,
                None,
                format!("{url}: {refusal}"),
                "check TWILIO_CONVERSATIONS_BASE_URL; with no Conversations in this deployment, run with --skip-conversations",
            );
            return;
        }
    };
    let events = expected.url(routes::CONVERSATIONS_EVENTS);
    let pre = expected.url(routes::CONVERSATIONS_PRE_EVENT);
    let mut params = vec![
        ("PostWebhookUrl", events.to_string()),
        ("Method", "POST".to_owned()),
    ];
    params.extend(
        CONVERSATIONS_FILTERS
            .iter()
            .map(|f| ("Filters", (*f).to_owned())),
    );
    let fix = curl_update(&url, twilio.credentials.curl_auth, &params);
    let subject = Some(account);
    let mut problems = 0;
    let configured = text(&webhooks, "post_webhook_url");
    match compare(configured, &events) {
        Match::Ours => {}
        Match::Empty => {
            problems += 1;
            report.warn(
                CHECK,
                subject,
                format!("post_webhook_url is empty: Conversations events reach nobody, expected {events} (nothing to do if Si uses no Conversations: --skip-conversations)"),
                fix.clone(),
            );
        }
        Match::Elsewhere => {
            problems += 1;
            report.fail(
                CHECK,
                subject,
                format!(
                    "post_webhook_url is {}, expected {events}",
                    shown(configured)
                ),
                fix.clone(),
            );
        }
    }
    if text(&webhooks, "method").is_some_and(|m| !m.eq_ignore_ascii_case("POST")) {
        problems += 1;
        report.fail(
            CHECK,
            subject,
            "method is GET: ingress takes POST only",
            fix.clone(),
        );
    }
    if configured.is_some() {
        let filters: Vec<&str> = webhooks["filters"]
            .as_array()
            .map(|f| f.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let missing: Vec<&str> = CONVERSATIONS_FILTERS
            .iter()
            .copied()
            .filter(|f| !filters.contains(f))
            .collect();
        if !missing.is_empty() {
            problems += 1;
            report.warn(
                CHECK,
                subject,
                format!(
                    "filters lack {}: those events are never sent",
                    missing.join(", ")
                ),
                fix.clone(),
            );
        }
    }
    let configured_pre = text(&webhooks, "pre_webhook_url");
    if compare(configured_pre, &pre) == Match::Elsewhere {
        problems += 1;
        report.warn(
            CHECK,
            subject,
            format!("pre_webhook_url is {}: that service can block or change messages before Si sees them; ingress's is {pre}", shown(configured_pre)),
            "leave PreWebhookUrl empty or point it at ingress, unless that service is intended",
        );
    }
    if problems == 0 {
        report.ok(
            CHECK,
            subject,
            format!("post_webhook_url {events} with the events normalize reads"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_compare_by_scheme_host_port_and_path() -> anyhow::Result<()> {
        let inbound = Expected::new("https://si.example.com/")?.url(routes::MESSAGING_INBOUND);
        assert_eq!(
            inbound.as_str(),
            "https://si.example.com/twilio/messaging/inbound"
        );
        for same in [
            "https://si.example.com/twilio/messaging/inbound",
            "https://SI.example.com:443/twilio/messaging/inbound/",
            "https://si.example.com/twilio/messaging/inbound?locale=es#rc=3&ct=2000",
        ] {
            assert_eq!(compare(Some(same), &inbound), Match::Ours, "{same}");
        }
        for other in [
            "http://si.example.com/twilio/messaging/inbound",
            "https://si.example.com:8443/twilio/messaging/inbound",
            "https://old.example.com/twilio/messaging/inbound",
            "https://si.example.com/sms",
            "not a url",
        ] {
            assert_eq!(compare(Some(other), &inbound), Match::Elsewhere, "{other}");
        }
        assert_eq!(compare(None, &inbound), Match::Empty);
        assert_eq!(compare(Some("  "), &inbound), Match::Empty);
        Ok(())
    }

    #[test]
    fn a_path_prefix_of_the_public_url_is_kept() -> anyhow::Result<()> {
        let prefixed = Expected::new("https://example.com/si/")?;
        assert_eq!(
            prefixed.url(routes::VOICE_ANSWER).as_str(),
            "https://example.com/si/twilio/voice/answer"
        );
        assert!(Expected::new("si.example.com").is_err());
        assert!(Expected::new("ftp://si.example.com").is_err());
        Ok(())
    }

    #[test]
    fn page_links_keep_only_path_and_query() {
        assert_eq!(
            path_and_query_of(
                "https://messaging.twilio.com/v1/Services?PageSize=50&Page=1&PageToken=PT1"
            ),
            "/v1/Services?PageSize=50&Page=1&PageToken=PT1"
        );
        assert_eq!(
            path_and_query_of("/2010-04-01/Accounts/AC1/IncomingPhoneNumbers.json?Page=1"),
            "/2010-04-01/Accounts/AC1/IncomingPhoneNumbers.json?Page=1"
        );
    }

    fn args() -> DoctorArgs {
        DoctorArgs {
            public_base_url: None,
            account_sid: Some("AC1".into()),
            auth_token: Some("token".into()),
            api_key_sid: None,
            api_key_secret: None,
            credentials_dir: None,
            api_base_url: String::new(),
            messaging_base_url: String::new(),
            conversations_base_url: String::new(),
            numbers: Vec::new(),
            messaging_services: Vec::new(),
            skip_conversations: false,
            timeout: Duration::from_secs(1),
            page_size: 50,
            json: false,
        }
    }

    #[test]
    fn credentials_are_chosen_as_egress_chooses() -> anyhow::Result<()> {
        let token = credentials(&args(), "AC1")?.context("credentials")?;
        assert_eq!(
            (token.user.as_str(), token.secret.as_str()),
            ("AC1", "token")
        );
        let key = credentials(
            &DoctorArgs {
                api_key_sid: Some("SK1".into()),
                api_key_secret: Some("secret".into()),
                ..args()
            },
            "AC1",
        )?
        .context("credentials")?;
        assert_eq!((key.user.as_str(), key.secret.as_str()), ("SK1", "secret"));
        let half = DoctorArgs {
            api_key_sid: Some("SK1".into()),
            ..args()
        };
        assert!(credentials(&half, "AC1").is_err());

        let dir = std::env::temp_dir().join(format!("doctor-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("auth-token"), "from-file\n")?;
        let files = credentials(
            &DoctorArgs {
                credentials_dir: Some(dir.clone()),
                ..args()
            },
            "AC1",
        )?
        .context("credentials")?;
        assert_eq!(files.secret, "from-file");
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

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
}
