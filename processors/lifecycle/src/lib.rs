//! The lifecycle stage: watches every conversation from its first message to
//! its archive, exactly once, on the shared stream runner
//! ([`si_runtime::stream`]) with the runtime's state timers.
//!
//! Inputs (co-partitioned, keyed by conversation id):
//! `si.conversation.events.v1` (user messages, Twilio closing a
//! conversation), `si.responses.v1` (Si's replies, summaries),
//! `si.commands.v1` (`CLOSE_CONVERSATION`, `START_CONVERSATION`),
//! `twilio.delivery.v1` (the closing message went out; voice-link's word on a
//! call scheduled for later) and `si.transcript.v1` (the sequence range to
//! archive).
//! Outputs: the warning and the closing message on `si.responses.v1` (so
//! segment applies the consent gate, channel limits and the WhatsApp window
//! as for any reply), summary requests on `si.inbound.v1`, the Twilio close on
//! `twilio.outbound.v1`, the directory entry deactivated on
//! `si.participants.v1`, a Programmable Messaging conversation's states
//! (ACTIVE when opened for a user's message, CLOSED) on
//! `si.conversation.events.v1`, and one archival request per closure on
//! `si.archival.v1`.
//!
//! One state entry per open conversation (`conv|<id>`, changelog
//! `si.lifecycle.state.v1`); its timer is the next thing due:
//!
//! | phase        | entered when                                   | timer fires                 | then                                     |
//! |--------------|------------------------------------------------|-----------------------------|------------------------------------------|
//! | OPEN         | a user message or a reply (any message resets) | idle start + WARN_AFTER     | warning sent → WARNED                    |
//! | WARNED       | the warning went out                           | idle start + CLOSE_AFTER    | summary requested → SUMMARIZING          |
//! | SUMMARIZING  | closure began without a summary                | + SUMMARY_TIMEOUT           | closing message without summary → CLOSING |
//! | CLOSING      | the closing message went out                   | + CLOSING_GRACE             | close, archive, drop the state           |
//!
//! A user message in OPEN or WARNED starts a new idle period (a second
//! warning only after another quiet `WARN_AFTER`); in SUMMARIZING for
//! inactivity it cancels the closure, and so does a call going live. The
//! idle period starts at the last
//! message; a live call is activity until it ends, and a call voice-link
//! scheduled for later (its answer's `scheduled_at`) moves the idle start to
//! the call's time (calling off a closure for inactivity still summarizing),
//! until voice-link says the call is off (then the idle start is that
//! moment). A `CLOSE_CONVERSATION` command (reason `USER_REQUEST` when the
//! user asked, else `COMMAND`) starts closure at once,
//! with `params["summary"]` as summary when given. A summary response
//! (`purpose` SUMMARY answering the request) sends the closing message at once.
//! The first delivery status of the closing message (or `CLOSING_GRACE`) ends
//! the conversation: `CLOSE_CONVERSATION` at Twilio for Conversations (with
//! segment's sender key, so it queues behind the closing message's parts),
//! the participant directory entry set inactive, for Programmable Messaging
//! a `CONVERSATION_STATE_CHANGED` to `CLOSED` on `si.conversation.events.v1`
//! (no Twilio state reports it), the archival request, the state deleted. Twilio closing a conversation itself archives it
//! (`TWILIO_CLOSED`) without a closing message. The first message of a
//! conversation whose user came back after a closure (the participant
//! directory, read as a global table, holds the closed conversation for the
//! pair, or the new one naming it) gets the localized welcome-back.
//!
//! `START_CONVERSATION` (Si reaches out) is in [`processor`]'s `start`
//! module: identity and consent tables read whole, the conversation opened
//! under the issuer's id (or the user's active one joined), the opening text
//! sent once lifecycle reads back its own `PARTICIPANT_JOINED` event.

pub mod processor;

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser};
use si_consent_gate::ConsentGate;
use si_runtime::metrics::StageMetrics;
use si_runtime::stream::{self, StreamArgs, StreamEnv, StreamSpec};
use si_runtime::table::GlobalTable;
use si_runtime::{CommonConfig, Readiness, with_admin};
use si_schemas::records::{IdentityRecord, ParticipantBinding};
use si_schemas::{Codec, Registry, topics};
use tokio_util::sync::CancellationToken;

pub use processor::{LifecycleInput, LifecycleMetrics, LifecycleProcessor, Settings, StartMode};

/// The stage name: consumer group `si-lifecycle`, transactional ids
/// `si-lifecycle-<POD_NAME>`.
pub const STAGE: &str = "lifecycle";

/// The input topics, co-partitioned with the changelog.
pub const INPUTS: &[&str] = &[
    topics::CONVERSATION_EVENTS,
    topics::RESPONSES,
    topics::COMMANDS,
    topics::DELIVERY,
    topics::TRANSCRIPT,
];

/// Settings of lifecycle itself.
#[derive(Debug, Clone, Args)]
pub struct LifecycleArgs {
    /// Quiet time after the last message (either direction) before the
    /// inactivity warning.
    #[arg(long, env = "LIFECYCLE_WARN_AFTER", default_value = "25m", value_parser = humantime::parse_duration)]
    pub warn_after: Duration,

    /// Quiet time after the last message before the conversation closes.
    #[arg(long, env = "LIFECYCLE_CLOSE_AFTER", default_value = "30m", value_parser = humantime::parse_duration)]
    pub close_after: Duration,

    /// How long to wait for the cognition layer's summary before closing
    /// with the catalog text alone.
    #[arg(long, env = "LIFECYCLE_SUMMARY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub summary_timeout: Duration,

    /// How long to wait for the closing message's delivery status before
    /// closing at Twilio and archiving anyway (e.g. when consent blocked it).
    #[arg(long, env = "LIFECYCLE_CLOSING_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub closing_grace: Duration,

    /// How long a conversation's state is kept after its last change (a
    /// safety net: closure deletes it).
    #[arg(long, env = "LIFECYCLE_STATE_TTL", default_value = "7days", value_parser = humantime::parse_duration)]
    pub state_ttl: Duration,

    /// Messaging Service SID naming the sender of a Conversations close when
    /// our own address is unknown (as segment's MESSAGING_SERVICE_SID).
    #[arg(long, env = "MESSAGING_SERVICE_SID")]
    pub messaging_service_sid: Option<String>,

    /// `retention_class` of the archival requests; empty: the archive's default.
    #[arg(long, env = "LIFECYCLE_RETENTION_CLASS", default_value = "")]
    pub retention_class: String,

    /// How a conversation Si starts (`START_CONVERSATION`) is opened:
    /// `messaging` (Programmable Messaging: just send) or `conversations`
    /// (create the Twilio conversation, add the participant, send into it).
    #[arg(long, env = "LIFECYCLE_START_MODE", value_enum, default_value_t = StartMode::Messaging)]
    pub start_mode: StartMode,

    /// Our number (E.164) a conversation Si starts sends from, unless the
    /// command's `params["from"]` names one; empty: every start must name it.
    #[arg(long, env = "LIFECYCLE_START_FROM", default_value = "")]
    pub start_from: String,

    /// The explicit consent policy, as for segment: Si starts a conversation
    /// only with a user who opted in (not merely one who never opted out).
    #[arg(long, env = "CONSENT_REQUIRE_OPT_IN", default_value_t = false, action = clap::ArgAction::Set)]
    pub consent_require_opt_in: bool,

    /// How long after a started conversation's participant event the
    /// opening goes out: segment reads that event from another topic than
    /// the opening, and must have handled it first.
    #[arg(long, env = "LIFECYCLE_OPENING_DELAY", default_value = "1s", value_parser = humantime::parse_duration)]
    pub opening_delay: Duration,
}

/// Everything `si-lifecycle` reads from flags and the environment.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "si-lifecycle",
    about = "Conversation lifecycle: inactivity warnings, closure with a summary, Twilio close and archival requests, exactly once"
)]
pub struct Config {
    /// Kafka, registry, admin listener, logs.
    #[command(flatten)]
    pub common: CommonConfig,
    /// The stream runner (TIMER_INTERVAL bounds how late a timer fires).
    #[command(flatten)]
    pub stream: StreamArgs,
    /// Lifecycle.
    #[command(flatten)]
    pub lifecycle: LifecycleArgs,
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
        let args = &self.lifecycle;
        let settings = Settings {
            warn_after: args.warn_after,
            close_after: args.close_after,
            summary_timeout: args.summary_timeout,
            closing_grace: args.closing_grace,
            state_ttl: args.state_ttl,
            messaging_service_sid: args
                .messaging_service_sid
                .clone()
                .filter(|s| !s.trim().is_empty()),
            retention_class: Some(args.retention_class.trim().to_owned()).filter(|s| !s.is_empty()),
            start_mode: args.start_mode,
            start_from: Some(args.start_from.trim().to_owned()).filter(|s| !s.is_empty()),
            require_opt_in: args.consent_require_opt_in,
            opening_delay: args.opening_delay,
        };
        settings.validate().map_err(anyhow::Error::msg)?;
        Ok(settings)
    }
}

/// Runs lifecycle until `shutdown`: admin listener, then the stream.
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
    let codec = Codec::new(Registry::new(config.common.registry.config())?);
    // The participant directory tells a re-entry (a user back after a closure)
    // from a first contact.
    let directory = GlobalTable::<ParticipantBinding>::start(
        kafka,
        STAGE,
        topics::PARTICIPANTS,
        codec.clone(),
        &readiness,
        &metrics,
        shutdown.clone(),
    )
    .await
    .context("starting the participant directory")?;
    tokio::select! {
        () = directory.loaded() => {}
        () = shutdown.cancelled() => return Ok(()),
    }
    // Si-started conversations: consent (both tables) and user ids to addresses.
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
    let identity = GlobalTable::<IdentityRecord>::start(
        kafka,
        STAGE,
        topics::IDENTITY,
        codec.clone(),
        &readiness,
        &metrics,
        shutdown.clone(),
    )
    .await
    .context("starting the identity table")?;
    let state_ttl = settings.state_ttl;
    let lifecycle_metrics = LifecycleMetrics::new(metrics.registry())?;
    let processor = LifecycleProcessor::new(settings, directory, lifecycle_metrics)
        .with_outreach(gate, identity);
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
        outputs: topics::written_by("lifecycle").to_vec(),
        inputs: INPUTS.to_vec(),
        changelog: topics::LIFECYCLE_STATE,
        state_ttl,
        batch_linger: Duration::from_millis(50),
    };
    stream::run(env, spec, processor, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_and_cross_checks() {
        let ok = Config::try_parse_from([
            "si-lifecycle",
            "--warn-after",
            "20s",
            "--close-after",
            "40s",
        ])
        .expect("parses");
        let settings = ok.settings().expect("valid");
        assert_eq!(settings.warn_after, Duration::from_secs(20));
        assert_eq!(settings.retention_class, None);
        let backwards = Config::try_parse_from([
            "si-lifecycle",
            "--warn-after",
            "40s",
            "--close-after",
            "20s",
        ])
        .expect("parses");
        let error = backwards.settings().expect_err("warn after close");
        assert!(
            error.to_string().contains("LIFECYCLE_WARN_AFTER"),
            "{error}"
        );
        let short_ttl =
            Config::try_parse_from(["si-lifecycle", "--state-ttl", "5m"]).expect("parses");
        assert!(short_ttl.settings().is_err(), "TTL below CLOSE_AFTER");
    }
}
