//! The voice-link stage: a conversation's calls and its one transcript,
//! exactly once, on the shared stream runner ([`si_runtime::stream`]) with
//! the runtime's state timers.
//!
//! Inputs (co-partitioned, keyed by conversation id):
//! `si.conversation.events.v1` (messages, call status, the caller's
//! recording answer, recordings, transcribed utterances, Twilio or
//! lifecycle closing the conversation), `si.commands.v1` (`ESCALATE_TO_VOICE`, `END_CALL`, and
//! lifecycle's `CLOSE_CONVERSATION`) and
//! `twilio.delivery.v1` (egress's outcomes: the Call SID of a placed call,
//! the text of every message Twilio accepted). Outputs: `CREATE_CALL` and
//! `END_CALL` on `twilio.outbound.v1`; texts to the user on
//! `si.responses.v1` (through segment, so the consent gate, channel limits
//! and the WhatsApp window apply as for any reply); `RECORDING_DISCLOSED`,
//! `RECORDING_ACCEPTED`, `RECORDING_DECLINED` and `BLOCKED_OUTBOUND` on
//! `si.compliance.v1`; the answer to each command on `twilio.delivery.v1`
//! (`operation_id` `voice-command-<command_id>`); and `si.transcript.v1`.
//!
//! **Escalation.** `ESCALATE_TO_VOICE` for a conversation voice-link knows
//! (it has seen an event of it) and a user who may be reached (the consent
//! gate of segment, on the conversation's channel and number) places a call:
//! `CREATE_CALL` from `params["from"]`, else `VOICE_FROM`, else the
//! conversation's number, to the command's `address` or the user's number,
//! with the answer URL and status callback on ingress carrying the
//! conversation and the locale, and the text "Si is calling you now". A
//! command with `params["at"]` in the future, or one that falls in the quiet
//! window (`VOICE_QUIET_HOURS` in the user's time zone: the identity
//! record's `attributes["time_zone"]`, else the number's country, else
//! `VOICE_DEFAULT_TIME_ZONE`), is held in the state with a timer and placed
//! at its time, exactly once (consent is checked again then); the user is
//! told by text when Si will call. A refusal (unknown conversation, no
//! number, a call in progress, consent) is a status record, and for consent
//! a `BLOCKED_OUTBOUND` compliance event, never silence. `END_CALL` hangs up
//! the live call (`END_CALL` operation) or cancels a scheduled one. The
//! answer to a scheduled call carries its time (`scheduled_at`, which keeps
//! lifecycle from closing the conversation before it), a timer put off
//! again says the new time, and a closure (`CLOSE_CONVERSATION`, Twilio
//! closing the conversation, or lifecycle's `CLOSED` event of a Programmable
//! Messaging one) cancels it; a scheduled call that will not take place is a
//! FAILED status `voice-scheduled-<command_id>` with the time it had. After
//! a closure (the conversation's CLOSED event: Twilio's, or lifecycle's for
//! Programmable Messaging) an escalation is refused; a Programmable
//! Messaging conversation is open again when lifecycle says so
//! ([`si_schemas::records::ConversationEvent::reopens`]). A call may be asked for at most [`processor::LONGEST_AHEAD`] ahead.
//!
//! **Recording consent.** The disclosure played (the answer webhook), the
//! caller's answer (normalize reads it as ingress does) and the outcome
//! become compliance events, once per call. A "no", or silence, sends the
//! user a text saying the conversation continues by text. A placed call
//! that is not answered, busy, failed or answered by a machine ends with a
//! text offering to continue by text or to ask for another call.
//!
//! **One transcript.** voice-link is the only writer of `si.transcript.v1`,
//! so each conversation's sequence (kept in the state) never repeats or goes
//! back: every inbound message; every outbound message Twilio accepted, one
//! entry per response with its parts' texts as sent (from egress's status
//! records, once every part has its outcome); call start and end (outcome,
//! duration); the recording reference; each final transcribed utterance
//! with its speaker. Entry ids come from the source (event id, response id,
//! Call SID, Recording SID), so a reader can de-duplicate across versions.

mod nanp_zones;
pub mod processor;
pub mod schedule;

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser};
use jiff::tz::TimeZone;
use si_consent_gate::ConsentGate;
use si_runtime::metrics::StageMetrics;
use si_runtime::stream::{self, StreamArgs, StreamEnv, StreamSpec};
use si_runtime::table::GlobalTable;
use si_runtime::{CommonConfig, Readiness, with_admin};
use si_schemas::records::IdentityRecord;
use si_schemas::{Codec, Registry, topics};
use tokio_util::sync::CancellationToken;

pub use processor::{Settings, VoiceLinkInput, VoiceLinkMetrics, VoiceLinkProcessor};
pub use schedule::QuietWindow;

/// The stage name: consumer group `si-voice-link`, transactional ids
/// `si-voice-link-<POD_NAME>`.
pub const STAGE: &str = "voice-link";

/// The input topics, co-partitioned with the changelog.
pub const INPUTS: &[&str] = &[
    topics::CONVERSATION_EVENTS,
    topics::COMMANDS,
    topics::DELIVERY,
];

/// Settings of voice-link itself.
#[derive(Debug, Clone, Args)]
pub struct VoiceLinkArgs {
    /// Public base URL of ingress, as Twilio reaches it (the answer URL and
    /// status callback of placed calls).
    #[arg(long, env = "PUBLIC_BASE_URL")]
    pub public_base_url: String,

    /// Our number (E.164) calls are placed from, unless the command's
    /// `params["from"]` names one; empty: the conversation's number.
    #[arg(long, env = "VOICE_FROM", default_value = "")]
    pub voice_from: String,

    /// Seconds to let the phone ring before the call counts as not answered.
    #[arg(long, env = "VOICE_RING_TIMEOUT", default_value_t = 25)]
    pub ring_timeout_secs: i32,

    /// Twilio answering-machine detection for placed calls: `Enable` or
    /// `DetectMessageEnd`; `off` (or empty): none. On by default: a machine gets a
    /// hang-up from ingress instead of the disclosure and the consent
    /// prompt, and the user a text.
    #[arg(long, env = "VOICE_MACHINE_DETECTION", default_value = "Enable")]
    pub machine_detection: String,

    /// No calls in this local-time window (`HH:MM-HH:MM`, may span
    /// midnight; `off` for none): a call due inside moves to its end.
    #[arg(long, env = "VOICE_QUIET_HOURS", default_value = "21:00-08:00")]
    pub quiet_hours: String,

    /// IANA time zone of users whose zone neither the identity record nor
    /// the phone number tells.
    #[arg(long, env = "VOICE_DEFAULT_TIME_ZONE", default_value = "UTC")]
    pub default_time_zone: String,

    /// The explicit consent policy, as for segment.
    #[arg(long, env = "CONSENT_REQUIRE_OPT_IN", default_value_t = false, action = clap::ArgAction::Set)]
    pub consent_require_opt_in: bool,

    /// Messaging Service SID: the consent scope of conversations whose
    /// number of ours is not known (as segment's MESSAGING_SERVICE_SID).
    #[arg(long, env = "MESSAGING_SERVICE_SID")]
    pub messaging_service_sid: Option<String>,

    /// How long a conversation's state is kept after its last input.
    #[arg(long, env = "VOICE_LINK_STATE_TTL", default_value = "30days", value_parser = humantime::parse_duration)]
    pub state_ttl: Duration,
}

/// Everything `si-voice-link` reads from flags and the environment.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "si-voice-link",
    about = "Voice linkage: escalation to a call, recording consent on the record, one transcript for text and voice, exactly once"
)]
pub struct Config {
    /// Kafka, registry, admin listener, logs.
    #[command(flatten)]
    pub common: CommonConfig,
    /// The stream runner (TIMER_INTERVAL bounds how late a scheduled call is placed).
    #[command(flatten)]
    pub stream: StreamArgs,
    /// Voice-link.
    #[command(flatten)]
    pub voice: VoiceLinkArgs,
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
        let args = &self.voice;
        let base = args.public_base_url.trim().trim_end_matches('/');
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            anyhow::bail!("PUBLIC_BASE_URL must be an http(s) URL, got {base:?}");
        }
        let default_zone = TimeZone::get(args.default_time_zone.trim()).map_err(|e| {
            anyhow::anyhow!(
                "VOICE_DEFAULT_TIME_ZONE {:?} is not an IANA time zone: {e}",
                args.default_time_zone
            )
        })?;
        let quiet_window = QuietWindow::parse(&args.quiet_hours)
            .map_err(|e| anyhow::anyhow!("VOICE_QUIET_HOURS: {e}"))?;
        if !(5..=600).contains(&args.ring_timeout_secs) {
            anyhow::bail!("VOICE_RING_TIMEOUT must be 5 to 600 seconds (Twilio's range)");
        }
        // `off` (or nothing): no detection; `off` passes a Helm chart, which
        // drops empty values.
        let machine_detection = Some(args.machine_detection.trim().to_owned())
            .filter(|m| !m.is_empty() && !m.eq_ignore_ascii_case("off"));
        if let Some(m) = &machine_detection
            && !matches!(m.as_str(), "Enable" | "DetectMessageEnd")
        {
            anyhow::bail!("VOICE_MACHINE_DETECTION must be Enable, DetectMessageEnd or off");
        }
        let voice_from = Some(args.voice_from.trim().to_owned()).filter(|f| !f.is_empty());
        Ok(Settings {
            public_base_url: base.to_owned(),
            voice_from,
            ring_timeout_secs: args.ring_timeout_secs,
            machine_detection,
            quiet_window,
            default_zone,
            require_opt_in: args.consent_require_opt_in,
            messaging_service_sid: args
                .messaging_service_sid
                .clone()
                .filter(|s| !s.trim().is_empty()),
            state_ttl: args.state_ttl,
        })
    }
}

/// Runs voice-link until `shutdown`: admin listener, then the stream.
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
    let voice_metrics = VoiceLinkMetrics::new(metrics.registry())?;
    let processor = VoiceLinkProcessor::new(settings, gate, identity, voice_metrics);
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
        outputs: topics::written_by("voice-link").to_vec(),
        inputs: INPUTS.to_vec(),
        changelog: topics::VOICE_LINK_STATE,
        state_ttl,
        batch_linger: Duration::from_millis(50),
    };
    stream::run(env, spec, processor, shutdown).await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn env_names_and_cross_checks() {
        let ok = Config::try_parse_from([
            "si-voice-link",
            "--public-base-url",
            "https://si.example.com/",
            "--quiet-hours",
            "22:00-07:30",
        ])
        .unwrap();
        let settings = ok.settings().unwrap();
        assert_eq!(settings.public_base_url, "https://si.example.com");
        assert!(settings.quiet_window.is_some());
        assert_eq!(settings.default_zone.iana_name(), Some("UTC"));
        assert_eq!(settings.machine_detection.as_deref(), Some("Enable"));
        let off = Config::try_parse_from([
            "si-voice-link",
            "--public-base-url",
            "https://si.example.com/",
            "--machine-detection",
            "off",
        ])
        .unwrap();
        assert_eq!(off.settings().unwrap().machine_detection, None);
        for (flag, value, names) in [
            ("--public-base-url", "si.example.com", "PUBLIC_BASE_URL"),
            (
                "--default-time-zone",
                "Mars/Olympus",
                "VOICE_DEFAULT_TIME_ZONE",
            ),
            ("--quiet-hours", "late", "VOICE_QUIET_HOURS"),
            ("--machine-detection", "Maybe", "VOICE_MACHINE_DETECTION"),
            ("--ring-timeout-secs", "1", "VOICE_RING_TIMEOUT"),
        ] {
            let mut args = vec!["si-voice-link", flag, value];
            if flag != "--public-base-url" {
                args.extend(["--public-base-url", "https://si.example.com"]);
            }
            let error = Config::try_parse_from(args)
                .unwrap()
                .settings()
                .unwrap_err();
            assert!(error.to_string().contains(names), "{flag}: {error}");
        }
    }
}
