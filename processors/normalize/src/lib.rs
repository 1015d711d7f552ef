//! The normalize stage: `twilio.webhooks.v1` → `si.conversation.events.v1`,
//! exactly once, on the shared stream runner ([`si_runtime::stream`]).
//!
//! Every Twilio webhook ingress stored becomes at most one canonical
//! [`ConversationEvent`](si_schemas::records::ConversationEvent), keyed by its
//! conversation id; participants joining, leaving, or first seen on
//! Programmable Messaging also update the participant directory
//! `si.participants.v1`. The logic is [`transform::Normalizer`], a pure
//! function over (webhook, partition state, global tables).
//!
//! # Events
//!
//! | webhook (route / EventType) | event |
//! |---|---|
//! | Conversations `onMessageAdded` | `MESSAGE_RECEIVED` (Source SMS/WHATSAPP, or an author that is not Si), else `MESSAGE_SENT` |
//! | `onDeliveryUpdated` | `DELIVERY_UPDATED` |
//! | `onParticipantAdded` / `onParticipantRemoved` | `PARTICIPANT_JOINED` / `PARTICIPANT_LEFT` (+ directory entry, active / inactive) |
//! | `onConversationAdded` | `CONVERSATION_STARTED` (state when Twilio sends `State`) |
//! | `onConversationStateUpdated` | `CONVERSATION_STATE_CHANGED` (closed: directory entries inactive) |
//! | Messaging inbound | `MESSAGE_RECEIVED` (media as `MediaUrl{N}` references) |
//! | Messaging status callback | `DELIVERY_UPDATED` |
//! | Voice status callback | `CALL_STATUS_CHANGED` (`disclosure` null) |
//! | Voice answer | `CALL_STATUS_CHANGED`, `disclosure` DISCLOSED (ingress served the disclosure and consent prompt on it) |
//! | `<Gather>` of the consent prompt | `CALL_STATUS_CHANGED` (status `CallStatus`, else IN_PROGRESS), `disclosure` ACCEPTED / DECLINED / NO_INPUT and `disclosure_accepted` true / false / false |
//! | Recording status | `RECORDING_AVAILABLE` |
//! | Recording transcription callback (`TranscriptionText`) | `TRANSCRIPTION` (speaker UNKNOWN) |
//! | Real-time transcription `transcription-content`, `Final=true` | `TRANSCRIPTION`: `TranscriptionData.transcript` as text, speaker USER (`inbound_track`) or AGENT (`outbound_track`), `SequenceId` as sequence, confidence, `Timestamp` as `occurred_at` |
//!
//! The gather's answer is read by [`si_catalog::voice::choice`], the function
//! ingress chose the TwiML with, over the same `Digits`, `SpeechResult` and
//! `locale` of our gather URL: the event says ACCEPTED exactly when ingress
//! started the recording. Silence (neither `Digits` nor `SpeechResult`) is
//! NO_INPUT.
//!
//! Pre-event webhooks (ingress answers them; the post-event follows), other
//! Conversations event types, transcription callbacks without text, and
//! real-time transcription callbacks other than final content (started,
//! stopped, error, partial results) yield no event (counted in
//! `si_normalize_dropped_total` by reason, e.g. `transcription_started`,
//! `transcription_partial`). The dedup key of a real-time transcription
//! callback without idempotency token is its TranscriptionSid, event and
//! `SequenceId` (one TranscriptionSid covers a whole call).
//! Media are references (SID, URL, content type, size), never bytes.
//!
//! # Conversation of a webhook
//!
//! - Conversations webhooks: `ConversationSid`.
//! - Programmable Messaging (no ConversationSid): the conversation id our own
//!   callback URL carried (`conversation_hint`), else the active entry of the
//!   participant directory for (user address, our address), else a derived id
//!   `pm-<32 hex>` = HMAC-SHA256(`VISITOR_ID_SECRET`, channel, user, our
//!   address): one deterministic conversation per pair, the same on every
//!   instance and after every restart, without the number in it. The user is
//!   `From` for inbound messages and `To` for status callbacks. The first
//!   webhook of such a pair publishes the directory entry, so other stages
//!   (and egress replies) find the conversation. Once lifecycle has closed
//!   the pair's conversation (its directory entry is inactive), the derived id
//!   also covers the closure time (`updated_at` of that entry): the next
//!   message opens a new conversation, and so a new session.
//! - Voice (answers, gathers, status, recordings, transcriptions): one
//!   conversation and session per call, bound on the call's first webhook in
//!   state (`call|<CallSid>`): our URL's `conversation_hint` (calls voice-link
//!   placed), else the call's binding, else the caller's active SMS/WhatsApp
//!   conversation with the called number from the participant directory (an
//!   inbound call joins the text conversation and its session), else
//!   `call-<CallSid>` with a new session. Ingress keys voice webhooks without
//!   a conversation by CallSid, so a call's later callbacks (which may name
//!   neither caller nor conversation) reach the partition holding its binding.
//!   See `transform/voice.rs` for why this lives in state, not in the TwiML.
//!
//! # Sessions
//!
//! The Si session id is a UUID derived from the conversation id, so the
//! binding is 1:1 by construction and identical in every partition that sees
//! the conversation. It is kept in state (`conv|<id>`) with the conversation's
//! participants, their attribute locales and Twilio state, for `SESSION_TTL`
//! after the last event (a closed conversation: `DEDUP_WINDOW`).
//!
//! # Identity and locale
//!
//! Addresses become E.164 with the `phonenumber` crate; the prefix
//! (`whatsapp:`, `sms:`, `client:`) becomes the channel. The user id is looked up in
//! the `si.identity.v1` global table under `<channel>:<E.164>`, then
//! `sms:<E.164>`, then `whatsapp:<E.164>`; unknown addresses get `visitor_id` = `v-` + HMAC-SHA256(
//! `VISITOR_ID_SECRET`, E.164) and `registered = false`. Locale: the
//! participant's Conversations attributes (`locale`), then the identity's
//! locale, then the number's country, then `DEFAULT_LOCALE`.
//!
//! # Compliance tags
//!
//! Each event of a participant on SMS or WhatsApp carries the consent known
//! when it was normalized (`compliance.consent_status`): the decision in
//! force in `si.consent.v1` and `si.consent.registry.v1` (read as global
//! tables; the newest decision wins, OPTED_OUT on a tie) for the
//! participant's number toward the sender it talks to (the Messaging
//! Service `MESSAGING_SERVICE_SID` for Programmable Messaging when set, else
//! our number it wrote to; decisions for every sender count too, and alone
//! when neither is known), UNKNOWN when neither table has one. consent
//! decides on the message after normalize, so a STOP's own event still
//! carries the status before it. A call's events carry `recording_disclosed`
//! true from its first disclosure step, recording or transcription on
//! (remembered in the partition's state under the call for a day, so its
//! later status changes, such as `completed`, carry it too). Other events:
//! null.
//!
//! # De-duplication
//!
//! The dedup key is the `I-Twilio-Idempotency-Token`, else resource SID + event
//! type (+ the status of status callbacks). It is remembered in state
//! (`s|<128-bit digest of the key>`) for `DEDUP_WINDOW` (record time), so a retry within the
//! window yields nothing, also after a restart or rebalance (the state is
//! restored from the changelog). `event_id` is a UUID derived from the dedup
//! key: a replay yields the same id. The same kind of entry, under the digest
//! of `<CallSid>:Disclosed`, remembers for 24 h after its first disclosure
//! step, recording or transcription that a call's recording disclosure was
//! played, and under `<CallSid>:CallEnded`, for the window, that it ended.

pub mod address;
pub mod ids;
pub mod params;
pub mod transform;

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

pub use transform::{NormalizeMetrics, Normalizer, Settings};

/// The stage name: consumer group `si-normalize`, transactional ids
/// `si-normalize-<POD_NAME>`.
pub const STAGE: &str = "normalize";

/// Settings of normalize itself.
#[derive(Debug, Clone, Args)]
pub struct NormalizeArgs {
    /// How long a Twilio event is remembered to drop its retries (record
    /// time). Twilio ends all retries of one webhook within 15 s (its total
    /// time `tt` is at most 15,000 ms); the default leaves a wide margin for
    /// redeliveries Twilio does not document.
    #[arg(long, env = "DEDUP_WINDOW", default_value = "1h", value_parser = humantime::parse_duration)]
    pub dedup_window: Duration,

    /// How long a conversation's session binding is kept after its last event.
    #[arg(long, env = "SESSION_TTL", default_value = "30days", value_parser = humantime::parse_duration)]
    pub session_ttl: Duration,

    /// Locale (BCP 47) when neither the participant, the identity nor the phone
    /// number's country gives one.
    #[arg(long, env = "DEFAULT_LOCALE", default_value = "en")]
    pub default_locale: String,

    /// Key of the HMAC that turns addresses into visitor ids and messaging
    /// conversation ids. Every instance needs the same value, and it must never
    /// change (a new key gives every visitor a new id). Unset: an unkeyed hash,
    /// which anyone can reverse by trying phone numbers (development only).
    #[arg(long, env = "VISITOR_ID_SECRET", hide_env_values = true)]
    pub visitor_id_secret: Option<String>,

    /// Conversations authors that are Si: their messages are MESSAGE_SENT
    /// (comma separated, case-insensitive).
    #[arg(
        long,
        env = "SI_AUTHORS",
        default_value = "si,system",
        value_delimiter = ','
    )]
    pub si_authors: Vec<String>,

    /// The Messaging Service Programmable Messaging replies go through, set
    /// as for segment: the sender scope of the consent in each event's
    /// compliance tags. Unset: our number the user wrote to.
    #[arg(long, env = "MESSAGING_SERVICE_SID")]
    pub messaging_service_sid: Option<String>,
}

/// Everything `si-normalize` reads from flags and the environment.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "si-normalize",
    about = "Twilio webhooks to canonical Si conversation events, exactly once"
)]
pub struct Config {
    /// Kafka, registry, admin listener, logs.
    #[command(flatten)]
    pub common: CommonConfig,
    /// The stream runner.
    #[command(flatten)]
    pub stream: StreamArgs,
    /// Normalize.
    #[command(flatten)]
    pub normalize: NormalizeArgs,
}

impl Config {
    /// Cross-field checks.
    ///
    /// # Errors
    /// With a message naming the variables that contradict each other.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.stream
            .validate(self.common.service.drain_timeout)
            .map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            !self.normalize.default_locale.trim().is_empty(),
            "DEFAULT_LOCALE must not be empty"
        );
        anyhow::ensure!(
            self.normalize.dedup_window > Duration::ZERO,
            "DEDUP_WINDOW must be positive"
        );
        anyhow::ensure!(
            self.normalize.session_ttl >= self.normalize.dedup_window,
            "SESSION_TTL ({:?}) must be at least DEDUP_WINDOW ({:?})",
            self.normalize.session_ttl,
            self.normalize.dedup_window
        );
        Ok(())
    }

    /// The transform's settings.
    #[must_use]
    pub fn settings(&self) -> Settings {
        let n = &self.normalize;
        Settings {
            dedup_window: n.dedup_window,
            session_ttl: n.session_ttl,
            default_locale: n.default_locale.trim().to_owned(),
            si_authors: n
                .si_authors
                .iter()
                .map(|a| a.trim().to_owned())
                .filter(|a| !a.is_empty())
                .collect(),
            hasher: ids::AddressHasher::new(
                n.visitor_id_secret
                    .as_deref()
                    .unwrap_or_default()
                    .as_bytes(),
            ),
            messaging_service_sid: n
                .messaging_service_sid
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        }
    }
}

/// Runs normalize until `shutdown`: admin listener, global tables, then the stream.
///
/// # Errors
/// On invalid configuration, when Kafka or the registry cannot be set up, and on
/// fatal stream errors (the process should exit non-zero and be restarted).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    config.validate()?;
    if config.normalize.visitor_id_secret.is_none() {
        tracing::warn!(
            "VISITOR_ID_SECRET is not set: visitor ids are an unkeyed hash of the number (set it in production)"
        );
    }
    let metrics = StageMetrics::new(STAGE);
    let readiness = Readiness::default();
    with_admin(
        config.common.service.admin_addr,
        metrics.registry().clone(),
        readiness.clone(),
        &shutdown.clone(),
        run_stream(&config, metrics, readiness, shutdown),
    )
    .await
}

async fn run_stream(
    config: &Config,
    metrics: StageMetrics,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let kafka = &config.common.kafka;
    let registry = Registry::new(config.common.registry.config())?;
    let codec = Codec::new(registry);
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
    let consent = ConsentGate::start(
        kafka,
        STAGE,
        codec.clone(),
        &readiness,
        &metrics,
        shutdown.clone(),
    )
    .await
    .context("starting the consent tables")?;
    // Processing waits for the tables: an event normalized against a half-loaded
    // identity table would carry a wrong user id forever.
    tokio::select! {
        () = async {
            identity.loaded().await;
            directory.loaded().await;
            consent.loaded().await;
        } => {}
        () = shutdown.cancelled() => return Ok(()),
    }
    let normalize_metrics = NormalizeMetrics::new(metrics.registry())?;
    let normalizer = Normalizer::new(config.settings(), identity, directory, normalize_metrics)
        .with_consent(consent);
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
        outputs: topics::written_by("normalize").to_vec(),
        inputs: vec![topics::WEBHOOKS],
        changelog: topics::NORMALIZE_STATE,
        state_ttl: config.normalize.session_ttl,
        batch_linger: Duration::ZERO,
    };
    stream::run(env, spec, normalizer, shutdown).await?;
    Ok(())
}
