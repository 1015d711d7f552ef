//! The consent stage: `si.conversation.events.v1` + `twilio.delivery.v1` →
//! `si.inbound.v1`, `si.consent.v1`, `si.compliance.v1` and its own replies on
//! `twilio.outbound.v1`, exactly once, on the shared stream runner
//! ([`si_runtime::stream`]). The rules are in the crate's README.md; the logic
//! is [`processor::ConsentProcessor`], the keywords [`keywords::Keywords`],
//! revocation by other words [`revocation::RevocationRules`].

pub mod fold;
pub mod keywords;
pub mod processor;
pub mod rate;
pub mod revocation;

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser};
use si_consent_gate::ConsentGate;
use si_runtime::metrics::StageMetrics;
use si_runtime::stream::{self, StreamArgs, StreamEnv, StreamSpec};
use si_runtime::{CommonConfig, Readiness, with_admin};
use si_schemas::{Codec, Registry, topics};
use tokio_util::sync::CancellationToken;

pub use keywords::{KeywordKind, Keywords};
pub use processor::{ConsentInput, ConsentMetrics, ConsentProcessor, Policy, ScopeMode, Settings};
pub use rate::RateLimit;
pub use revocation::{Action, Revocation, RevocationRules, Rule};

/// The stage name: consumer group `si-consent`, transactional ids
/// `si-consent-<POD_NAME>`.
pub const STAGE: &str = "consent";

/// Settings of consent itself.
#[derive(Debug, Clone, Args)]
pub struct ConsentArgs {
    /// `implied`: texting first is consent (the first message is forwarded and
    /// answered with the welcome). `explicit`: an address is PENDING until it
    /// sends an opt-in keyword (YES, START); its messages are not forwarded.
    #[arg(long, env = "CONSENT_POLICY", value_enum, default_value = "implied")]
    pub policy: Policy,

    /// Sender scope of the decisions this stage records: `global` (`*`, a STOP
    /// stops every Si sender) or `sender` (the Si address the user wrote to).
    #[arg(long, env = "CONSENT_SCOPE", value_enum, default_value = "global")]
    pub scope: ScopeMode,

    /// Send the localized STOP confirmation. Turn off when Twilio's Advanced
    /// Opt-Out already answers STOP for the sender.
    #[arg(long, env = "CONSENT_STOP_REPLY", default_value_t = true, action = clap::ArgAction::Set)]
    pub stop_reply: bool,

    /// Extra keywords per locale, `;`-separated entries
    /// `<locale>:<opt_out|opt_in|help>=<WORD>|<WORD>`, locale `*` for all
    /// (e.g. `es:opt_out=BAJA|ALTO;de:help=HILFE`).
    #[arg(long, env = "CONSENT_EXTRA_KEYWORDS", default_value = "")]
    pub extra_keywords: String,

    /// How long the stage keeps a decision or a conversation's user in its
    /// state after the last update (decisions stay in si.consent.v1 forever).
    #[arg(long, env = "CONSENT_STATE_TTL", default_value = "30days", value_parser = humantime::parse_duration)]
    pub state_ttl: Duration,

    /// Messaging Service SID Programmable Messaging replies go out through,
    /// as segment's responses (set it as for segment): one sender per number.
    #[arg(long, env = "MESSAGING_SERVICE_SID")]
    pub messaging_service_sid: Option<String>,

    /// The inbound rate limit: how many messages the user of a conversation
    /// may send per period (`<messages>/<period>`, e.g. `10/1m`) before their
    /// messages are held back from the cognition layer (each stays on
    /// si.conversation.events.v1; the first held back is recorded as
    /// BLOCKED_INBOUND and the user is told), or `off`. Consent keywords
    /// (STOP, START, HELP) are never held back.
    #[arg(long, env = "CONSENT_RATE_LIMIT", default_value = "10/1m")]
    pub rate_limit: String,

    /// How many messages at once the rate limit lets through before it holds
    /// to the sustained rate.
    #[arg(long, env = "CONSENT_RATE_BURST", default_value_t = 10)]
    pub rate_burst: u32,
}

/// Everything `si-consent` reads from flags and the environment.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "si-consent",
    about = "Consent keywords, consent state, the inbound gate and the compliance audit trail, exactly once"
)]
pub struct Config {
    /// Kafka, registry, admin listener, logs.
    #[command(flatten)]
    pub common: CommonConfig,
    /// The stream runner.
    #[command(flatten)]
    pub stream: StreamArgs,
    /// Consent.
    #[command(flatten)]
    pub consent: ConsentArgs,
}

impl Config {
    /// Cross-field checks and the processor's settings.
    ///
    /// # Errors
    /// With a message naming the variable that is wrong.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        self.stream
            .validate(self.common.service.drain_timeout)
            .map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            self.consent.state_ttl > Duration::ZERO,
            "CONSENT_STATE_TTL must be positive"
        );
        Ok(Settings {
            policy: self.consent.policy,
            scope: self.consent.scope,
            stop_reply: self.consent.stop_reply,
            keywords: Keywords::parse_extra(&self.consent.extra_keywords)?,
            revocation: RevocationRules::default(),
            segment: si_segment::SegmentConfig::default(),
            state_ttl: self.consent.state_ttl,
            messaging_service_sid: self
                .consent
                .messaging_service_sid
                .clone()
                .filter(|s| !s.trim().is_empty()),
            rate_limit: RateLimit::parse(&self.consent.rate_limit, self.consent.rate_burst)
                .map_err(|e| anyhow::anyhow!("CONSENT_RATE_LIMIT / CONSENT_RATE_BURST: {e}"))?,
        })
    }
}

/// Runs consent until `shutdown`: admin listener, consent tables, then the stream.
///
/// # Errors
/// On invalid configuration, when Kafka or the registry cannot be set up, and on
/// fatal stream errors (the process should exit non-zero and be restarted).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let settings = config.settings()?;
    let metrics = StageMetrics::new(STAGE);
    let readiness = Readiness::default();
    with_admin(
        config.common.service.admin_addr,
        metrics.registry().clone(),
        readiness.clone(),
        &shutdown.clone(),
        run_stream(&config, settings, metrics, readiness, shutdown),
    )
    .await
}

async fn run_stream(
    config: &Config,
    settings: Settings,
    metrics: StageMetrics,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let kafka = &config.common.kafka;
    let registry = Registry::new(config.common.registry.config())?;
    let codec = Codec::new(registry);
    let gate = ConsentGate::start(
        kafka,
        STAGE,
        codec.clone(),
        &readiness,
        &metrics,
        shutdown.clone(),
    )
    .await
    .context("starting the consent tables")?;
    // Decisions made against half-loaded tables would send welcomes to known
    // users and forward messages of users who opted out elsewhere.
    tokio::select! {
        () = gate.loaded() => {}
        () = shutdown.cancelled() => return Ok(()),
    }
    let state_ttl = settings.state_ttl;
    let consent_metrics = ConsentMetrics::new(metrics.registry())?;
    let processor = ConsentProcessor::new(settings, gate, consent_metrics);
    let env = StreamEnv {
        kafka: kafka.clone(),
        args: config.stream.clone(),
        drain_timeout: config.common.service.drain_timeout,
        codec,
        metrics,
        readiness,
    };
    let spec = StreamSpec {
        stage: STAGE,
        outputs: topics::written_by("consent").to_vec(),
        inputs: vec![topics::CONVERSATION_EVENTS, topics::DELIVERY],
        changelog: topics::CONSENT_STATE,
        state_ttl,
        batch_linger: Duration::ZERO,
    };
    stream::run(env, spec, processor, shutdown).await?;
    Ok(())
}
