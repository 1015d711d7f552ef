//! A local stand-in for the Twilio REST endpoints egress calls.
//!
//! Served on one port (both `api.twilio.com` and `conversations.twilio.com`
//! paths):
//!
//! | request | answer |
//! |---|---|
//! | `POST /2010-04-01/Accounts/{AC}/Messages.json` | 201, a Message resource |
//! | `POST /2010-04-01/Accounts/{AC}/Calls.json` | 201, a Call resource; the call is then played (below) |
//! | `POST /2010-04-01/Accounts/{AC}/Calls/{CA}.json` | 200; `Status=completed` hangs up a playing call, `canceled` cancels a ringing one (21220 once it is over) |
//! | `POST /v1/Conversations` | 201, a Conversation |
//! | `POST /v1/Conversations/{CH}` | 200, the Conversation (e.g. `State=closed`) |
//! | `POST /v1/Conversations/{CH}/Messages` | 201, a Conversation Message |
//! | `POST /v1/Conversations/{CH}/Participants` | 201, a Participant |
//! | `GET /2010-04-01/Accounts/{AC}.json` | 200, the Account resource (a health check) |
//! | `GET /2010-04-01/Accounts/{AC}/IncomingPhoneNumbers.json` | 200, the account's numbers ([`PhoneNumber`]: `sms_url`, `voice_url`, `status_callback`, methods, app/trunk SIDs), paged |
//! | `GET /v1/Services` (Messaging) | 200, the Messaging Services ([`MessagingService`]: `inbound_request_url`, `status_callback`, `use_inbound_webhook_on_number`), paged |
//! | `GET /v1/Services/{MG}/PhoneNumbers` (Messaging) | 200, the service's numbers, paged (20404 for an unknown service) |
//! | `GET /v1/Configuration/Webhooks` (Conversations) | 200, the account's Conversations webhooks ([`ConversationsWebhooks`]: `post_webhook_url`, `pre_webhook_url`, `method`, `filters`, `target`) |
//! | `POST /v1/AuthTokens/Secondary` (Accounts) | 201, a new secondary Auth Token (`secondary_auth_token`), which authenticates requests at once |
//! | `DELETE /v1/AuthTokens/Secondary` | 204, the secondary revoked (20404 when there is none) |
//! | `POST /v1/AuthTokens/Promote` | 200, the secondary is the primary (`auth_token`): it signs webhooks from now on, and the old primary is refused at once ([`tokens::AuthTokens`]) |
//!
//! The `GET`s are reads: the auth check applies, no faults are drawn, and
//! they go to the reads log, not the request log (which holds what
//! operations did). Lists take `PageSize` (1 to 1000, default 50) and `Page`
//! and answer Twilio's envelopes: the 2010 API's `start`, `end`, `page`,
//! `page_size`, `uri`, `first_page_uri`, `next_page_uri`,
//! `previous_page_uri` (relative); the v1 APIs' `meta` with `page`,
//! `page_size`, `key`, `url`, `first_page_url`, `next_page_url`,
//! `previous_page_url` (absolute, on the sandbox's own address). Messaging's
//! `/v1/Services` and Conversations' share the path; the sandbox's is
//! Messaging's. What the reads report is set with
//! [`SandboxConfig::phone_numbers`], [`SandboxConfig::messaging_services`]
//! and [`SandboxConfig::conversations_webhooks`] (`SANDBOX_PHONE_NUMBERS`,
//! `SANDBOX_MESSAGING_SERVICES`, `SANDBOX_CONVERSATIONS_WEBHOOKS`, JSON) or
//! the control API below; `sictl doctor` compares them with `PUBLIC_BASE_URL`.
//!
//! Like Twilio it checks HTTP Basic auth (Account SID + Auth Token, primary or
//! secondary, or API key SID + secret; 401 with code 20003 otherwise) and the required parameters, and
//! answers errors with Twilio's JSON `{code, message, more_info, status}`:
//!
//! | code | status | when |
//! |---|---|---|
//! | 20003 | 401 | bad or missing credentials, or another account in the path |
//! | 20404 | 404 | unknown path or conversation |
//! | 20004 | 405 | a method other than POST on a known path (other than GET on a read) |
//! | 20001 | 400 | a list's `PageSize` outside 1..=1000, or `Page` not a number |
//! | 20429 | 429 | past the per-sender rate, or an injected 429 |
//! | 20500 | 500 | an injected server error |
//! | 21604 | 400 | Messages: `To` missing |
//! | 21603 | 400 | Messages: neither `From` nor `MessagingServiceSid` |
//! | 21602 | 400 | Messages: none of `Body`, `MediaUrl`, `ContentSid` |
//! | 21617 | 400 | Messages: `Body` over 1600 characters |
//! | 21211 | 400 | `To` is not a valid number (see below) |
//! | 21610 | 400 | `To` opted out (see below) |
//! | 21201 / 21213 / 21205 | 400 | Calls: `To` / `From` / `Url` or `Twiml` missing |
//! | 20001 | 400 | Conversations: a required parameter missing |
//! | 50416 | 409 | Participants: the address/proxy pair is already in an active conversation |
//!
//! **Invalid numbers (21211)**: a `To` that is not E.164 (`+` and 7 to 15
//! digits, after an optional `whatsapp:`/`sms:` prefix), Twilio's magic test
//! number `+15005550001`, and every number in [`SandboxConfig::invalid_numbers`]
//! (`SANDBOX_INVALID_NUMBERS`). **Opted out (21610)**: Twilio's magic number
//! `+15005550004` and [`SandboxConfig::opted_out_numbers`].
//!
//! **Rate**: at most `per_sender` requests are let through per sender (`From`,
//! else `MessagingServiceSid`; for Conversations the conversation's proxy
//! address, else its messaging service, else its SID) in any sliding one-second
//! window; past it 429 / 20429.
//!
//! **Faults** ([`Faults`]): each Twilio request after the auth check draws one
//! number from a seeded generator: below `drop_rate` the request is processed
//! (the message exists, callbacks follow) and then the connection is closed
//! without an answer, the case that makes a retry duplicate; then
//! `error_5xx_rate` answers 500 / 20500 and `rate_429` answers 429 / 20429
//! without processing. `latency_ms` delays every answer.
//!
//! **Callbacks**: after a Message is accepted the sandbox posts `MessageStatus`
//! `sent`, then `delivered` to the request's `StatusCallback` (or
//! `{callback_url}/twilio/messaging/status`), or `sent`, then `undelivered`
//! or `failed` with `ErrorCode` for a `To` named in the delivery failures
//! ([`DeliveryFailure`], [`SandboxConfig::delivery_failures`], `GET|PUT
//! /_sandbox/delivery-failures`; `free_text_only` lets a template through,
//! as WhatsApp's 63016 does); after a Conversation message,
//! `onDeliveryUpdated` (`sent`, `delivered`) per SMS/WhatsApp participant to
//! `{callback_url}/twilio/conversations/events`. They are signed with
//! `X-Twilio-Signature` exactly as Twilio signs (the signature code of the
//! si-ingress crate) for the public URL ([`SandboxConfig::public_url`]), while
//! posted to `callback_url`: ingress behind a proxy sees the same thing.
//!
//! **Calls** ([`CallRecord`], `src/player.rs`): a created call rings, then
//! ends as its outcome says ([`CallOutcomes`]: a default, per `To` number;
//! [`SandboxConfig::call_outcomes`], `SANDBOX_CALL_OUTCOME`, `PUT
//! /_sandbox/call-outcomes`; without one it rings until `POST
//! /_sandbox/calls/{CA}/ring` or its `Timeout`, then `no-answer`). Status
//! callbacks go to `StatusCallback` for the asked `StatusCallbackEvent`s
//! (`completed` always), in Twilio's order and parameters (`CallStatus`
//! `initiated`, `ringing`, `in-progress`, then `completed`/`busy`/`no-answer`/
//! `failed`/`canceled`; `SequenceNumber` from 0, `CallbackSource`,
//! `Timestamp`, `CallDuration` and `Duration` at the end, `AnsweredBy` with
//! `MachineDetection`). Answered, the call fetches `Url` signed (voice request
//! parameters) and executes the TwiML (parsed with roxmltree, `src/twiml.rs`):
//!
//! | verb | what the sandbox does |
//! |---|---|
//! | `<Say>` | noted in the call's `heard` |
//! | `<Gather>` (nested `<Say>`) | waits for an answer (`POST /_sandbox/calls/{CA}/gather`: digits, a phrase, silence; answers given early wait for it) or `timeout`; posts `Digits` or `SpeechResult`+`Confidence` to `action` (silence only with `actionOnEmptyResult`, else the next verb) and plays what comes back; a machine hears silence |
//! | `<Pause length>` | waits (hang-ups still heard) |
//! | `<Redirect>` | fetches the URL and plays it |
//! | `<Start><Recording>` | a recording `RE…`: `in-progress`/`completed` to `recordingStatusCallback` as asked (`Record=true` on create too) |
//! | `<Start><Transcription>` | `transcription-started`, one `transcription-content` per utterance of a covered track (`POST /_sandbox/calls/{CA}/say`; user = `inbound_track`, si = `outbound_track`; `TranscriptionData` `{"transcript","confidence"}`, `Final`, `SequenceId`), `transcription-stopped` at the end, to `statusCallbackUrl` |
//! | `<Connect><Stream>` | connected to the agent (url and parameters in the record) until hung up |
//! | `<Hangup/>`, end of document | hangs up |
//!
//! A document that does not parse (12100), a verb the sandbox does not play
//! (12200) or an answer URL that fails (11200) is an error in the call's record
//! and log; the callee hears "An application error has occurred" and the call
//! ends `completed`. At the end: transcription stopped, the `completed`
//! callback, the recording's; only then the record says `ended_ms`. Inbound
//! calls ([`InboundCall`], `POST /_sandbox/inbound/call`, `sictl simulate
//! call`) post the voice request (`Direction=inbound`, `CallStatus=ringing`) to
//! `{public_url}/twilio/voice/answer` and `completed` to `/twilio/voice/status`.
//! With `callbacks: false` calls are kept but not played.
//!
//! **Control API** (no auth): `GET /_sandbox/requests` (JSON array of
//! [`RequestRecord`]), `DELETE /_sandbox/requests` (clears requests, reads and
//! callbacks), `GET /_sandbox/reads` (the reads: Account fetches, lists), `GET /_sandbox/callbacks`, `GET|PUT /_sandbox/faults`,
//! `PUT /_sandbox/rate` `{"per_sender": 10}` (`null` = unlimited),
//! `POST /_sandbox/inbound/sms` `{"from","to","body"}` (a signed inbound SMS to
//! ingress); calls: `GET /_sandbox/calls` (array of [`CallRecord`]),
//! `GET /_sandbox/calls/{CA}`, `POST /_sandbox/calls/{CA}/ring`
//! `{"outcome":"answer|machine|busy|no-answer|failed"}`,
//! `POST /_sandbox/calls/{CA}/gather` `{"digits":"1"}` | `{"speech":"yes","confidence":0.9}` | `{}` (silence),
//! `POST /_sandbox/calls/{CA}/say` `{"speaker":"user|si","text":"..."}`,
//! `POST /_sandbox/calls/{CA}/hangup` (202 with the record; 404 unknown, 409
//! over), `GET|PUT /_sandbox/delivery-failures` (JSON array of
//! [`DeliveryFailure`] `{"to","error_code","status"?,"free_text_only"?}`),
//! `GET|PUT /_sandbox/call-outcomes` `{"default":"answer","by_number":{"+1…":"busy"}}`,
//! `POST /_sandbox/inbound/call` `{"from","to","url"?,"status_callback"?,"answers"?:[…]}`
//! (201 `{"call_sid"}`); the account's webhook setup, in Twilio's field
//! names (SIDs derived when left out: `PN` and the number's digits, `MG` and
//! the position, zero-padded): `GET|PUT /_sandbox/phone-numbers` (JSON array
//! of [`PhoneNumber`] `{"phone_number","sms_url"?,"sms_method"?,"voice_url"?,"voice_method"?,"status_callback"?,"sms_application_sid"?,"voice_application_sid"?,"trunk_sid"?,"voice_capable"?,"sid"?}`),
//! `GET|PUT /_sandbox/messaging-services` (JSON array of [`MessagingService`]
//! `{"sid"?,"friendly_name"?,"inbound_request_url"?,"inbound_method"?,"fallback_url"?,"status_callback"?,"use_inbound_webhook_on_number"?,"phone_numbers"?:["+1…"]}`),
//! `GET|PUT /_sandbox/conversations-webhooks` ([`ConversationsWebhooks`]
//! `{"post_webhook_url"?,"pre_webhook_url"?,"method"?,"filters"?,"target"?}`). [`SandboxClient`] calls it from Rust; the same
//! controls exist in-process on [`SandboxHandle`].

pub mod account;
mod api;
pub mod calls;
mod client;
pub mod media;
mod player;
mod state;
pub mod tokens;
mod twilio;
pub mod twiml;
pub mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

pub use account::{ConversationsWebhooks, MessagingService, PhoneNumber};
pub use calls::{
    CallError, CallOutcomes, CallRecord, CallStep, GatherAnswer, Outcome, Speaker, Utterance,
};
pub use client::SandboxClient;
pub use media::{InboundMedia, MediaRecord};
pub use player::{APPLICATION_ERROR, InboundCall};
pub use state::{CallbackRecord, DeliveryFailure, Faults, RequestRecord};
pub use twilio::{is_e164, num_segments};
pub use webhook::{InboundConversationMessage, InboundSms, Posted, SharedLocation, Webhooks};

use crate::calls::Control;
use crate::state::Shared;

/// Twilio's magic test number that is never valid (21211).
pub const MAGIC_INVALID: &str = "+15005550001";
/// Twilio's magic test number of a recipient that opted out (21610).
pub const MAGIC_OPTED_OUT: &str = "+15005550004";

/// How a sandbox is set up.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where to listen (`127.0.0.1:0` picks a free port).
    pub addr: SocketAddr,
    /// The one account the sandbox knows (in paths and as Basic auth user).
    pub account_sid: String,
    /// Its Auth Token: Basic auth password, and the key callbacks are signed with.
    pub auth_token: String,
    /// An API key (SID, secret) also accepted for Basic auth.
    pub api_key: Option<(String, String)>,
    /// Requests per sender per second; `None` = unlimited.
    pub rate_per_sender: Option<u32>,
    /// Where callbacks and simulated inbound webhooks are posted: ingress's base
    /// URL (e.g. `http://127.0.0.1:8080`). `None`: only requests that name a
    /// `StatusCallback` get callbacks.
    pub callback_url: Option<String>,
    /// The public base URL ingress validates signatures against (its
    /// `PUBLIC_BASE_URL`); defaults to `callback_url`. A `StatusCallback` under
    /// this URL is posted to `callback_url` instead, signed as given.
    pub public_url: Option<String>,
    /// Numbers refused with 21211 besides malformed ones and `+15005550001`.
    pub invalid_numbers: Vec<String>,
    /// Numbers refused with 21610 besides `+15005550004`.
    pub opted_out_numbers: Vec<String>,
    /// Faults from the start.
    pub faults: Faults,
    /// Seed of the fault generator (same seed and request order, same faults).
    pub seed: u64,
    /// Whether accepted messages get status callbacks.
    pub callbacks: bool,
    /// How many request records are kept (oldest dropped first).
    pub log_capacity: usize,
    /// What happens when a created call rings (default: a person answers).
    pub call_outcomes: CallOutcomes,
    /// Messages whose delivery fails after they were accepted.
    pub delivery_failures: Vec<DeliveryFailure>,
    /// The account's phone numbers and their webhook URLs
    /// (`IncomingPhoneNumbers.json`).
    pub phone_numbers: Vec<PhoneNumber>,
    /// The account's Messaging Services (`/v1/Services`).
    pub messaging_services: Vec<MessagingService>,
    /// The account's Conversations webhooks (`/v1/Configuration/Webhooks`).
    pub conversations_webhooks: ConversationsWebhooks,
    /// Whether media URLs need HTTP Basic auth (Twilio's "enforce HTTP auth
    /// on media URLs"; on by default, as Twilio now enforces it).
    pub media_auth: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            account_sid: "AC00000000000000000000000000000000".to_owned(),
            auth_token: "sandbox-auth-token".to_owned(),
            api_key: None,
            rate_per_sender: None,
            callback_url: None,
            public_url: None,
            invalid_numbers: Vec::new(),
            opted_out_numbers: Vec::new(),
            faults: Faults::default(),
            seed: 0x5EED,
            callbacks: true,
            log_capacity: 200_000,
            call_outcomes: CallOutcomes {
                default: Some(Outcome::Answer),
                ..CallOutcomes::default()
            },
            delivery_failures: Vec::new(),
            phone_numbers: Vec::new(),
            messaging_services: Vec::new(),
            conversations_webhooks: ConversationsWebhooks::default(),
            media_auth: true,
        }
    }
}

impl SandboxConfig {
    /// The webhook poster for `callback_url` (signed for `public_url`), if set.
    #[must_use]
    pub fn webhooks(&self) -> Option<Webhooks> {
        let post = self.callback_url.as_deref()?;
        Some(Webhooks::new(
            post,
            self.public_url.as_deref(),
            &self.auth_token,
            &self.account_sid,
        ))
    }
}

/// The sandbox server.
pub struct Sandbox;

impl Sandbox {
    /// Binds the listener and serves in the background until
    /// [`SandboxHandle::shutdown`] (or the handle is dropped).
    ///
    /// # Errors
    /// When the address cannot be bound or the configuration is invalid.
    pub async fn start(config: SandboxConfig) -> anyhow::Result<SandboxHandle> {
        config
            .faults
            .validate()
            .map_err(|e| anyhow::anyhow!("faults: {e}"))?;
        if config.rate_per_sender == Some(0) {
            anyhow::bail!("rate_per_sender must be at least 1 (or unset for no limit)");
        }
        let listener = TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("binding {}", config.addr))?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let shared = Arc::new(Shared::new(
            config,
            format!("http://{addr}"),
            tasks.clone(),
            shutdown.clone(),
        )?);
        let router = api::router(shared.clone());
        let stop = shutdown.clone();
        let server = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "sandbox server stopped");
            }
        });
        tracing::info!(%addr, "twilio sandbox listening");
        Ok(SandboxHandle {
            addr,
            shared,
            server: Some(server),
            tasks,
            _stop_on_drop: shutdown.clone().drop_guard(),
            shutdown,
        })
    }
}

/// A running sandbox. Dropping it stops the server.
pub struct SandboxHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Option<tokio::task::JoinHandle<()>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    _stop_on_drop: DropGuard,
}

impl SandboxHandle {
    /// `http://127.0.0.1:<port>`: the base URL for both the Messaging and the
    /// Conversations API.
    #[must_use]
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The account SID requests must use.
    #[must_use]
    pub fn account_sid(&self) -> &str {
        &self.shared.config.account_sid
    }

    /// The primary Auth Token: what requests may use and callbacks are
    /// signed with (a promotion, `POST /v1/AuthTokens/Promote`, changes it).
    #[must_use]
    pub fn auth_token(&self) -> String {
        self.shared.tokens.primary()
    }

    /// The secondary Auth Token, while there is one
    /// (`POST /v1/AuthTokens/Secondary`).
    #[must_use]
    pub fn secondary_auth_token(&self) -> Option<String> {
        self.shared.tokens.secondary()
    }

    /// Every Twilio request so far (oldest first), including refused ones.
    #[must_use]
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.requests(None)
    }

    /// The Programmable Messaging sends accepted for `to` (Twilio's `To`),
    /// oldest first.
    #[must_use]
    pub fn messages_to(&self, to: &str) -> Vec<RequestRecord> {
        self.requests()
            .into_iter()
            .filter(|r| {
                r.path.ends_with("/Messages.json")
                    && r.status < 300
                    && r.params.get("To").map(String::as_str) == Some(to)
            })
            .collect()
    }

    /// Operations Twilio would have performed more than once: for each
    /// `X-Si-Operation-Id` whose requests created or changed a resource (an
    /// answer with a SID, dropped answers included) more than once, how often.
    #[must_use]
    pub fn duplicates(&self) -> std::collections::BTreeMap<String, usize> {
        let mut performed: std::collections::BTreeMap<String, usize> =
            std::collections::BTreeMap::new();
        for record in self.shared.requests(None) {
            if let (Some(id), Some(_)) = (record.operation_id, record.sid) {
                *performed.entry(id).or_default() += 1;
            }
        }
        performed.retain(|_, n| *n > 1);
        performed
    }

    /// Reads so far (the `GET`s: the Account resource egress's health check
    /// fetches, the lists `sictl doctor` reads), kept apart from
    /// [`SandboxHandle::requests`].
    #[must_use]
    pub fn reads(&self) -> Vec<RequestRecord> {
        self.shared.reads()
    }

    /// Every callback posted so far, with ingress's answer.
    #[must_use]
    pub fn callbacks(&self) -> Vec<CallbackRecord> {
        self.shared.callbacks()
    }

    /// Forgets the recorded requests and callbacks (sequence numbers go on).
    pub fn clear(&self) {
        self.shared.clear();
    }

    /// Replaces the fault settings.
    ///
    /// # Errors
    /// When a rate is outside 0..=1 or the rates add up to more than 1.
    pub fn set_faults(&self, faults: Faults) -> anyhow::Result<()> {
        self.shared
            .set_faults(faults)
            .map_err(|e| anyhow::anyhow!(e))
    }

    /// The current fault settings.
    #[must_use]
    pub fn faults(&self) -> Faults {
        self.shared.faults()
    }

    /// Sets the per-sender rate (requests per sliding second); `None` = unlimited.
    ///
    /// # Errors
    /// For `Some(0)`.
    pub fn set_rate(&self, per_sender: Option<u32>) -> anyhow::Result<()> {
        self.shared
            .set_rate(per_sender)
            .map_err(|e| anyhow::anyhow!(e))
    }

    /// Posts a signed Programmable Messaging inbound webhook to
    /// `{callback_url}/twilio/messaging/inbound`.
    ///
    /// # Errors
    /// Without a `callback_url`, or when the request fails to be sent.
    pub async fn post_inbound_sms(&self, sms: &InboundSms) -> anyhow::Result<Posted> {
        let sms = self
            .shared
            .add_inbound_media(sms)
            .map_err(anyhow::Error::msg)?;
        self.webhooks()?.post_inbound_sms(&sms).await
    }

    /// `from` texts `to`: [`Self::post_inbound_sms`] of a plain message, which
    /// ingress must accept.
    ///
    /// # Errors
    /// As `post_inbound_sms`, and when ingress does not answer 200.
    pub async fn text(&self, from: &str, to: &str, body: &str) -> anyhow::Result<()> {
        let posted = self
            .post_inbound_sms(&InboundSms {
                from: from.into(),
                to: to.into(),
                body: body.into(),
                ..InboundSms::default()
            })
            .await?;
        anyhow::ensure!(posted.status == 200, "ingress answered {}", posted.status);
        Ok(())
    }

    /// Serves the `media` of `sms` without posting it: the message as it would
    /// be posted (a message SID chosen when it has none, the items' URLs in
    /// `media_urls` and their types in `media_content_types`), for tests that
    /// write the normalized event themselves.
    ///
    /// # Errors
    /// When an item's content is not base64.
    pub fn add_inbound_media(&self, sms: &InboundSms) -> anyhow::Result<InboundSms> {
        self.shared
            .add_inbound_media(sms)
            .map_err(anyhow::Error::msg)
    }

    /// Serves Conversations media of message `message_sid` (`IM…`) in chat
    /// service `service` (`IS…`) through the sandbox's Media Content Service
    /// (`/v1/Services/{IS}/Media/{ME}`); returns the `Media` parameter's JSON
    /// (for [`InboundConversationMessage::media_json`]) and the Media SIDs.
    ///
    /// # Errors
    /// When an item's content is not base64.
    pub fn add_conversation_media(
        &self,
        service: &str,
        message_sid: &str,
        media: &[InboundMedia],
    ) -> anyhow::Result<(String, Vec<String>)> {
        self.shared
            .add_conversation_media(service, message_sid, media)
            .map_err(anyhow::Error::msg)
    }

    /// Serves a call recording `sid` (`RE…`) as the sandbox does for the
    /// recordings of the calls it plays; returns its `RecordingUrl`.
    #[must_use]
    pub fn add_recording(&self, sid: &str) -> String {
        self.shared
            .add_recording(&self.shared.config.account_sid, sid)
    }

    /// The media of simulated inbound messages, with how often each was fetched.
    #[must_use]
    pub fn media(&self) -> Vec<MediaRecord> {
        self.shared.media()
    }

    /// Posts a signed Conversations `onMessageAdded` (a user's message) to
    /// `{callback_url}/twilio/conversations/events`. When the conversation is one
    /// the sandbox created, missing fields (participant, messaging service,
    /// source) are taken from it.
    ///
    /// # Errors
    /// Without a `callback_url`, or when the request fails to be sent.
    pub async fn post_inbound_conversation_message(
        &self,
        message: &InboundConversationMessage,
    ) -> anyhow::Result<Posted> {
        let message = self.shared.complete_inbound(message);
        self.webhooks()?
            .post_inbound_conversation_message(&message)
            .await
    }

    /// Every call created or placed (oldest first), with what it did so far.
    #[must_use]
    pub fn calls(&self) -> Vec<CallRecord> {
        self.shared.calls.list()
    }

    /// One call.
    #[must_use]
    pub fn call(&self, sid: &str) -> Option<CallRecord> {
        self.shared.calls.get(sid)
    }

    /// Waits (woken by every change of the call, no polling) until `condition`
    /// holds for it.
    ///
    /// # Errors
    /// When `timeout` passes first, with the call's last state.
    pub async fn wait_for_call(
        &self,
        sid: &str,
        timeout: Duration,
        condition: impl FnMut(&CallRecord) -> bool,
    ) -> anyhow::Result<CallRecord> {
        self.shared
            .calls
            .wait(sid, timeout, condition)
            .await
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "timed out after {timeout:?} waiting for call {sid}: {:?}",
                    self.call(sid)
                )
            })
    }

    /// How a ringing call ends (when no outcome is set for it).
    ///
    /// # Errors
    /// When the call is unknown or over.
    pub fn ring(&self, sid: &str, outcome: Outcome) -> anyhow::Result<()> {
        self.control(sid, Control::Ring(outcome))
    }

    /// Answers the call's current gather, or its next one if it is not
    /// gathering yet: digits, a phrase, or silence.
    ///
    /// # Errors
    /// When the call is unknown or over.
    pub fn answer_gather(&self, sid: &str, answer: GatherAnswer) -> anyhow::Result<()> {
        self.control(sid, Control::Gather(answer))
    }

    /// Someone speaks on the call: a `transcription-content` callback when a
    /// real-time transcription of that track runs.
    ///
    /// # Errors
    /// When the call is unknown or over.
    pub fn say(&self, sid: &str, speaker: Speaker, text: &str) -> anyhow::Result<()> {
        self.control(sid, Control::Say(speaker, text.to_owned()))
    }

    /// The callee hangs up.
    ///
    /// # Errors
    /// When the call is unknown or over.
    pub fn hang_up(&self, sid: &str) -> anyhow::Result<()> {
        self.control(sid, Control::HangUp)
    }

    fn control(&self, sid: &str, control: Control) -> anyhow::Result<()> {
        self.shared
            .calls
            .send(sid, control)
            .map_err(|e| anyhow::anyhow!("call {sid}: {e}"))
    }

    /// The delivery failures in force.
    #[must_use]
    pub fn delivery_failures(&self) -> Vec<DeliveryFailure> {
        self.shared.delivery_failures()
    }

    /// Replaces the delivery failures (for messages created from now on).
    pub fn set_delivery_failures(&self, failures: Vec<DeliveryFailure>) {
        self.shared.set_delivery_failures(failures);
    }

    /// The account's phone numbers (SIDs filled in).
    #[must_use]
    pub fn phone_numbers(&self) -> Vec<PhoneNumber> {
        self.shared.phone_numbers()
    }

    /// Replaces the account's phone numbers.
    ///
    /// # Errors
    /// A number that is not E.164 or listed twice, a method other than GET/POST.
    pub fn set_phone_numbers(&self, numbers: Vec<PhoneNumber>) -> anyhow::Result<()> {
        self.shared
            .set_phone_numbers(numbers)
            .map_err(|e| anyhow::anyhow!(e))
    }

    /// The account's Messaging Services (SIDs filled in).
    #[must_use]
    pub fn messaging_services(&self) -> Vec<MessagingService> {
        self.shared.messaging_services()
    }

    /// Replaces the account's Messaging Services.
    ///
    /// # Errors
    /// A method other than GET/POST, a number that is not E.164.
    pub fn set_messaging_services(&self, services: Vec<MessagingService>) -> anyhow::Result<()> {
        self.shared
            .set_messaging_services(services)
            .map_err(|e| anyhow::anyhow!(e))
    }

    /// The account's Conversations webhooks.
    #[must_use]
    pub fn conversations_webhooks(&self) -> ConversationsWebhooks {
        self.shared.conversations_webhooks()
    }

    /// Replaces the account's Conversations webhooks.
    ///
    /// # Errors
    /// A method other than GET/POST, a target other than webhook/flex.
    pub fn set_conversations_webhooks(
        &self,
        webhooks: ConversationsWebhooks,
    ) -> anyhow::Result<()> {
        self.shared
            .set_conversations_webhooks(webhooks)
            .map_err(|e| anyhow::anyhow!(e))
    }

    /// How new calls ring.
    #[must_use]
    pub fn call_outcomes(&self) -> CallOutcomes {
        self.shared.calls.outcomes()
    }

    /// Sets how new calls ring.
    pub fn set_call_outcomes(&self, outcomes: CallOutcomes) {
        self.shared.calls.set_outcomes(outcomes);
    }

    /// Places an inbound call to ingress's voice answer URL and plays it;
    /// returns its Call SID.
    ///
    /// # Errors
    /// Without a URL (no `callback_url` either), or past the live call limit.
    pub fn place_inbound_call(&self, call: &InboundCall) -> anyhow::Result<String> {
        player::place_inbound(&self.shared, call)
    }

    fn webhooks(&self) -> anyhow::Result<&Webhooks> {
        self.shared
            .webhooks
            .as_ref()
            .context("the sandbox has no callback_url (SANDBOX_CALLBACK_URL)")
    }

    /// Stops serving, cancels pending callbacks and waits for both.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        self.tasks.close();
        if let Some(mut server) = self.server.take() {
            // Pooled keep-alive connections of clients may hold the graceful
            // shutdown open; give them a moment, then stop regardless.
            if tokio::time::timeout(Duration::from_secs(5), &mut server)
                .await
                .is_err()
            {
                tracing::warn!("sandbox connections still open at shutdown: closing them");
                server.abort();
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await;
    }
}
