//! What the sandbox remembers: the request and callback logs, faults, the
//! per-sender windows and the conversations it created.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::SandboxConfig;
use crate::account::{self, ConversationsWebhooks, MessagingService, PhoneNumber};
use crate::calls::Calls;
use crate::tokens::AuthTokens;
use crate::twilio::now_ms;
use crate::webhook::{InboundConversationMessage, InboundSms, Webhooks};

/// Injected faults. Rates are probabilities per request (0 to 1, together at most 1).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Share of requests answered 500 with code 20500 (not processed).
    pub error_5xx_rate: f64,
    /// Share of requests answered 429 with code 20429 (not processed).
    pub rate_429: f64,
    /// Delay before every answer, in milliseconds.
    pub latency_ms: u64,
    /// Share of requests processed and then left without an answer (the
    /// connection is closed).
    pub drop_rate: f64,
}

/// A delivery that fails after the message was accepted, as a carrier or
/// WhatsApp reports it: the status callbacks say `sent`, then `status` with
/// `ErrorCode` instead of `delivered`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryFailure {
    /// The `To` it applies to, as sent (`+14155550100`, `whatsapp:+14155550100`).
    pub to: String,
    /// Twilio's error code (e.g. 63016 outside the WhatsApp window, 30003
    /// unreachable handset, 63024 invalid recipient).
    pub error_code: u32,
    /// `undelivered` (the default) or `failed`.
    #[serde(default = "DeliveryFailure::undelivered")]
    pub status: String,
    /// Only messages with a `Body` or media fail; a template (`ContentSid`)
    /// is delivered (how 63016 behaves).
    #[serde(default)]
    pub free_text_only: bool,
}

impl DeliveryFailure {
    fn undelivered() -> String {
        "undelivered".to_owned()
    }

    /// Checks the status.
    ///
    /// # Errors
    /// A status other than `undelivered` or `failed`.
    pub fn validate(&self) -> Result<(), String> {
        match self.status.as_str() {
            "undelivered" | "failed" => Ok(()),
            other => Err(format!(
                "delivery failure status must be undelivered or failed, got {other:?}"
            )),
        }
    }
}

impl Faults {
    /// Checks the rates.
    ///
    /// # Errors
    /// A rate outside 0..=1, or rates adding up to more than 1.
    pub fn validate(&self) -> Result<(), String> {
        for (name, rate) in [
            ("error_5xx_rate", self.error_5xx_rate),
            ("rate_429", self.rate_429),
            ("drop_rate", self.drop_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0 and 1, got {rate}"));
            }
        }
        if self.error_5xx_rate + self.rate_429 + self.drop_rate > 1.0 + f64::EPSILON {
            return Err("error_5xx_rate + rate_429 + drop_rate must be at most 1".to_owned());
        }
        Ok(())
    }
}

/// What the fault draw decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    Drop,
    ServerError,
    TooMany,
}

/// One Twilio request as the sandbox saw and answered it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestRecord {
    /// 1, 2, 3, … in arrival order (not reset by a clear).
    pub seq: u64,
    /// Milliseconds since the Unix epoch: for a request that passed the rate
    /// check, the time it was counted in its sender's window; otherwise its
    /// arrival.
    pub at_ms: i64,
    pub method: String,
    pub path: String,
    /// Form parameters by name (the first value of a repeated name).
    pub params: BTreeMap<String, String>,
    /// Every form parameter in arrival order (repeated names kept).
    pub all_params: Vec<(String, String)>,
    /// The `X-Si-Operation-Id` header.
    pub operation_id: Option<String>,
    /// The W3C `traceparent` header, if the caller sent one.
    #[serde(default)]
    pub traceparent: Option<String>,
    /// The sender the rate applies to, if the request names one.
    pub sender: Option<String>,
    /// HTTP status answered; 0 when the connection was dropped instead.
    pub status: u16,
    /// Twilio error code answered, if any.
    pub error_code: Option<u32>,
    /// SID of the resource created or updated, if any (also for dropped answers).
    pub sid: Option<String>,
    /// Whether the answer was an injected fault (5xx, 429 or drop).
    pub injected: bool,
}

/// One callback the sandbox posted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallbackRecord {
    pub seq: u64,
    pub at_ms: i64,
    /// Where it was posted.
    pub url: String,
    /// The URL it was signed for.
    pub signed_url: String,
    pub params: Vec<(String, String)>,
    /// The answer's status (after retries), or `None` when it never got one.
    pub status: Option<u16>,
    pub error: Option<String>,
}

/// A participant the sandbox added.
#[derive(Debug, Clone)]
pub struct Participant {
    pub sid: String,
    pub identity: Option<String>,
    pub address: Option<String>,
    pub proxy_address: Option<String>,
}

/// A conversation the sandbox created.
#[derive(Debug, Clone)]
pub struct Conversation {
    pub sid: String,
    pub chat_service_sid: String,
    pub messaging_service_sid: Option<String>,
    pub friendly_name: Option<String>,
    pub unique_name: Option<String>,
    pub attributes: String,
    pub state: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub participants: Vec<Participant>,
    pub next_index: u64,
}

impl Conversation {
    /// The sender the rate limit applies to.
    pub fn sender(&self) -> String {
        self.participants
            .iter()
            .find_map(|p| p.proxy_address.clone())
            .or_else(|| self.messaging_service_sid.clone())
            .unwrap_or_else(|| self.sid.clone())
    }
}

struct Inner {
    log: VecDeque<RequestRecord>,
    reads: VecDeque<RequestRecord>,
    callbacks: Vec<CallbackRecord>,
    seq: u64,
    callback_seq: u64,
    rng: StdRng,
    faults: Faults,
    rate: Option<u32>,
    windows: HashMap<String, VecDeque<i64>>,
    conversations: HashMap<String, Conversation>,
    delivery_failures: Vec<DeliveryFailure>,
    phone_numbers: Vec<PhoneNumber>,
    messaging_services: Vec<MessagingService>,
    conversations_webhooks: ConversationsWebhooks,
}

/// State shared by the handlers and the handle.
pub struct Shared {
    pub config: SandboxConfig,
    /// The account's Auth Tokens (Basic auth, and what webhooks are signed with).
    pub tokens: AuthTokens,
    pub webhooks: Option<Webhooks>,
    /// Posts callbacks: `webhooks`, or straight to each `StatusCallback`.
    pub poster: Webhooks,
    pub invalid: HashSet<String>,
    pub opted_out: HashSet<String>,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
    /// The calls created or placed, and the inboxes of those playing.
    pub calls: Calls,
    /// `http://<addr>`: where the sandbox itself is reached (media URLs).
    pub base_url: String,
    media: Mutex<crate::media::MediaLibrary>,
    inner: Mutex<Inner>,
}

impl Shared {
    pub fn new(
        config: SandboxConfig,
        base_url: String,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let normal = |n: &String| n.trim().to_owned();
        let mut invalid: HashSet<String> = config.invalid_numbers.iter().map(normal).collect();
        invalid.insert(crate::MAGIC_INVALID.to_owned());
        let mut opted_out: HashSet<String> = config.opted_out_numbers.iter().map(normal).collect();
        opted_out.insert(crate::MAGIC_OPTED_OUT.to_owned());
        let tokens = AuthTokens::new(&config.auth_token);
        let webhooks = config.webhooks().map(|w| w.signing_with(tokens.clone()));
        let poster = webhooks
            .clone()
            .unwrap_or_else(|| Webhooks::direct(&config.auth_token, &config.account_sid))
            .signing_with(tokens.clone());
        let inner = Inner {
            log: VecDeque::new(),
            reads: VecDeque::new(),
            callbacks: Vec::new(),
            seq: 0,
            callback_seq: 0,
            rng: StdRng::seed_from_u64(config.seed),
            faults: config.faults.clone(),
            rate: config.rate_per_sender,
            windows: HashMap::new(),
            conversations: HashMap::new(),
            delivery_failures: config.delivery_failures.clone(),
            phone_numbers: account::normalize_numbers(config.phone_numbers.clone())
                .map_err(|e| anyhow::anyhow!("phone_numbers: {e}"))?,
            messaging_services: account::normalize_services(config.messaging_services.clone())
                .map_err(|e| anyhow::anyhow!("messaging_services: {e}"))?,
            conversations_webhooks: {
                account::validate_conversations(&config.conversations_webhooks)
                    .map_err(|e| anyhow::anyhow!("conversations_webhooks: {e}"))?;
                config.conversations_webhooks.clone()
            },
        };
        Ok(Self {
            tokens,
            calls: Calls::new(config.call_outcomes.clone()),
            webhooks,
            poster,
            invalid,
            opted_out,
            tasks,
            shutdown,
            config,
            base_url,
            media: Mutex::default(),
            inner: Mutex::new(inner),
        })
    }

    fn media_library(&self) -> MutexGuard<'_, crate::media::MediaLibrary> {
        self.media
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `sms` with its `media` served by the sandbox: a message SID chosen when
    /// it has none, each item's URL appended to `media_urls` and its type to
    /// `media_content_types`.
    ///
    /// # Errors
    /// When an item's content is not base64.
    pub fn add_inbound_media(&self, sms: &InboundSms) -> Result<InboundSms, String> {
        let mut out = sms.clone();
        if sms.media.is_empty() {
            return Ok(out);
        }
        let message_sid = out
            .message_sid
            .get_or_insert_with(|| crate::twilio::sid("MM"))
            .clone();
        let added = self
            .media_library()
            .add(&self.config.account_sid, &message_sid, &sms.media)?;
        // Types of URLs given directly keep the default.
        while out.media_content_types.len() < out.media_urls.len() {
            out.media_content_types.push("image/jpeg".to_owned());
        }
        for (path, content_type) in added {
            out.media_urls.push(format!("{}{path}", self.base_url));
            out.media_content_types.push(content_type);
        }
        out.media.clear();
        Ok(out)
    }

    /// A fetch of a media item; `None` when there is no such item.
    pub fn fetch_media(
        &self,
        message_sid: &str,
        sid: &str,
        authorized: bool,
    ) -> Option<crate::media::Served> {
        self.media_library().fetch(message_sid, sid, authorized)
    }

    /// A delete of a media item; `None` when there is no such item.
    pub fn delete_media(&self, message_sid: &str, sid: &str, authorized: bool) -> Option<u16> {
        self.media_library().delete(message_sid, sid, authorized)
    }

    /// Serves the recording `sid`; returns its URL (the `RecordingUrl`).
    pub fn add_recording(&self, account_sid: &str, sid: &str) -> String {
        let path = self.media_library().add_recording(account_sid, sid);
        format!("{}{path}", self.base_url)
    }

    /// Serves Conversations media; see [`crate::media::MediaLibrary::add_conversation`].
    ///
    /// # Errors
    /// When an item's content is not base64.
    pub fn add_conversation_media(
        &self,
        service: &str,
        message_sid: &str,
        media: &[crate::media::InboundMedia],
    ) -> Result<(String, Vec<String>), String> {
        self.media_library()
            .add_conversation(service, message_sid, media)
    }

    /// An upload to the Media Content Service; its JSON.
    pub fn upload_media(
        &self,
        service: &str,
        content_type: &str,
        content: Vec<u8>,
    ) -> Option<serde_json::Value> {
        let mut library = self.media_library();
        let sid = library.upload(service, content_type, content);
        library.mcs_resource(&self.base_url, service, &sid)
    }

    /// The Media Content Service's JSON of a media SID.
    pub fn mcs_resource(&self, service: &str, sid: &str) -> Option<serde_json::Value> {
        self.media_library()
            .mcs_resource(&self.base_url, service, sid)
    }

    /// Conversations media content by SID.
    pub fn fetch_mcs_content(&self, sid: &str) -> Option<crate::media::Served> {
        self.media_library().fetch_mcs_content(sid)
    }

    /// Every media item served.
    pub fn media(&self) -> Vec<crate::media::MediaRecord> {
        self.media_library().list()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind: keep going.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The configured delivery failures.
    pub fn delivery_failures(&self) -> Vec<DeliveryFailure> {
        self.lock().delivery_failures.clone()
    }

    /// Replaces the delivery failures.
    pub fn set_delivery_failures(&self, failures: Vec<DeliveryFailure>) {
        self.lock().delivery_failures = failures;
    }

    /// How a message to `to` ends: `None` delivered, else the failure.
    pub fn delivery_failure(&self, to: &str, template: bool) -> Option<DeliveryFailure> {
        self.lock()
            .delivery_failures
            .iter()
            .find(|f| f.to == to && !(f.free_text_only && template))
            .cloned()
    }

    /// The account's phone numbers (SIDs filled in).
    pub fn phone_numbers(&self) -> Vec<PhoneNumber> {
        self.lock().phone_numbers.clone()
    }

    /// Replaces the phone numbers.
    pub fn set_phone_numbers(&self, numbers: Vec<PhoneNumber>) -> Result<(), String> {
        self.lock().phone_numbers = account::normalize_numbers(numbers)?;
        Ok(())
    }

    /// The account's Messaging Services (SIDs filled in).
    pub fn messaging_services(&self) -> Vec<MessagingService> {
        self.lock().messaging_services.clone()
    }

    /// Replaces the Messaging Services.
    pub fn set_messaging_services(&self, services: Vec<MessagingService>) -> Result<(), String> {
        self.lock().messaging_services = account::normalize_services(services)?;
        Ok(())
    }

    /// The account's Conversations webhooks.
    pub fn conversations_webhooks(&self) -> ConversationsWebhooks {
        self.lock().conversations_webhooks.clone()
    }

    /// Replaces the Conversations webhooks.
    pub fn set_conversations_webhooks(
        &self,
        webhooks: ConversationsWebhooks,
    ) -> Result<(), String> {
        account::validate_conversations(&webhooks)?;
        self.lock().conversations_webhooks = webhooks;
        Ok(())
    }

    pub fn next_seq(&self) -> u64 {
        let mut inner = self.lock();
        inner.seq += 1;
        inner.seq
    }

    pub fn record(&self, record: RequestRecord) {
        let capacity = self.config.log_capacity.max(1);
        let mut inner = self.lock();
        while inner.log.len() >= capacity {
            inner.log.pop_front();
        }
        inner.log.push_back(record);
    }

    /// Records a read (a GET that changes nothing, such as the Account fetch).
    pub fn record_read(&self, record: RequestRecord) {
        let capacity = self.config.log_capacity.max(1);
        let mut inner = self.lock();
        while inner.reads.len() >= capacity {
            inner.reads.pop_front();
        }
        inner.reads.push_back(record);
    }

    pub fn reads(&self) -> Vec<RequestRecord> {
        self.lock().reads.iter().cloned().collect()
    }

    pub fn requests(&self, since: Option<u64>) -> Vec<RequestRecord> {
        let inner = self.lock();
        let mut out: Vec<RequestRecord> = inner
            .log
            .iter()
            .filter(|r| since.is_none_or(|s| r.seq > s))
            .cloned()
            .collect();
        out.sort_by_key(|r| r.seq);
        out
    }

    pub fn record_callback(&self, mut record: CallbackRecord) {
        let mut inner = self.lock();
        inner.callback_seq += 1;
        record.seq = inner.callback_seq;
        inner.callbacks.push(record);
    }

    pub fn callbacks(&self) -> Vec<CallbackRecord> {
        self.lock().callbacks.clone()
    }

    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.log.clear();
        inner.reads.clear();
        inner.callbacks.clear();
    }

    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    pub fn set_faults(&self, faults: Faults) -> Result<(), String> {
        faults.validate()?;
        self.lock().faults = faults;
        Ok(())
    }

    pub fn rate(&self) -> Option<u32> {
        self.lock().rate
    }

    pub fn set_rate(&self, per_sender: Option<u32>) -> Result<(), String> {
        if per_sender == Some(0) {
            return Err("per_sender must be at least 1 (or null for no limit)".to_owned());
        }
        let mut inner = self.lock();
        inner.rate = per_sender;
        inner.windows.clear();
        Ok(())
    }

    /// Draws the fault for one request, and returns the latency to apply.
    pub fn draw_fault(&self) -> (Fault, Duration) {
        let mut inner = self.lock();
        let faults = inner.faults.clone();
        let roll: f64 = inner.rng.random();
        let fault = if roll < faults.drop_rate {
            Fault::Drop
        } else if roll < faults.drop_rate + faults.error_5xx_rate {
            Fault::ServerError
        } else if roll < faults.drop_rate + faults.error_5xx_rate + faults.rate_429 {
            Fault::TooMany
        } else {
            Fault::None
        };
        (fault, Duration::from_millis(faults.latency_ms))
    }

    /// Lets one request of `sender` through the sliding one-second window:
    /// `Some(at_ms)` with the time it was counted at (the request's `at_ms`), or
    /// `None` past the rate. The window and the log use the same clock, so the
    /// log never shows more than the rate within any 1000 ms.
    pub fn admit(&self, sender: &str) -> Option<i64> {
        let mut inner = self.lock();
        let now = now_ms();
        let Some(limit) = inner.rate else {
            return Some(now);
        };
        let window = inner.windows.entry(sender.to_owned()).or_default();
        while window.front().is_some_and(|t| now - *t >= 1000) {
            window.pop_front();
        }
        if window.len() >= limit as usize {
            return None;
        }
        window.push_back(now);
        Some(now)
    }

    /// The conversation of `sid`, which may also be its UniqueName (as
    /// Twilio accepts in every `/v1/Conversations/{sid}` path).
    pub fn conversation(&self, sid: &str) -> Option<Conversation> {
        let inner = self.lock();
        let sid = resolve_conversation(&inner.conversations, sid)?;
        inner.conversations.get(&sid).cloned()
    }

    pub fn insert_conversation(&self, conversation: Conversation) {
        self.lock()
            .conversations
            .insert(conversation.sid.clone(), conversation);
    }

    /// Applies `change` to a conversation, returning the updated copy.
    pub fn update_conversation<T>(
        &self,
        sid: &str,
        change: impl FnOnce(&mut Conversation) -> T,
    ) -> Option<(Conversation, T)> {
        let mut inner = self.lock();
        let sid = resolve_conversation(&inner.conversations, sid)?;
        let conversation = inner.conversations.get_mut(&sid)?;
        let out = change(conversation);
        Some((conversation.clone(), out))
    }

    /// Whether an active conversation already binds `address` with `proxy`.
    pub fn binding_in_use(&self, address: &str, proxy: &str) -> Option<String> {
        let inner = self.lock();
        inner
            .conversations
            .values()
            .filter(|c| c.state != "closed")
            .find(|c| {
                c.participants.iter().any(|p| {
                    p.address.as_deref() == Some(address)
                        && p.proxy_address.as_deref() == Some(proxy)
                })
            })
            .map(|c| c.sid.clone())
    }

    /// Fills what an inbound conversation message leaves open from the
    /// conversation, when the sandbox knows it.
    pub fn complete_inbound(
        &self,
        message: &InboundConversationMessage,
    ) -> InboundConversationMessage {
        let mut out = message.clone();
        let Some(conversation) = self.conversation(&message.conversation_sid) else {
            return out;
        };
        let participant = conversation
            .participants
            .iter()
            .find(|p| {
                let author = Some(message.author.as_str());
                p.address.as_deref() == author || p.identity.as_deref() == author
            })
            .or_else(|| conversation.participants.first());
        if out.participant_sid.is_none() {
            out.participant_sid = participant.map(|p| p.sid.clone());
        }
        if out.messaging_service_sid.is_none() {
            out.messaging_service_sid = conversation.messaging_service_sid.clone();
        }
        out.chat_service_sid = Some(conversation.chat_service_sid.clone());
        out
    }
}

/// The SID of the conversation `sid_or_name` names: its SID, or its UniqueName.
fn resolve_conversation(
    conversations: &HashMap<String, Conversation>,
    sid_or_name: &str,
) -> Option<String> {
    if conversations.contains_key(sid_or_name) {
        return Some(sid_or_name.to_owned());
    }
    conversations
        .values()
        .find(|c| c.unique_name.as_deref() == Some(sid_or_name))
        .map(|c| c.sid.clone())
}
