//! Signed webhooks to ingress, as Twilio sends them: form bodies signed with
//! `X-Twilio-Signature` (the signature code of the si-ingress crate), posted to
//! one base URL while signed for the public one.
//!
//! Used by the sandbox for its callbacks and by `sictl simulate` for inbound
//! user messages.

use std::time::Duration;

use anyhow::Context as _;
use si_twilio_signature::{self as signature, Algorithm};

use crate::tokens::AuthTokens;
use crate::twilio::{country_of, iso8601, now_ms, num_segments, sid};

/// Path of ingress's Programmable Messaging inbound webhook.
pub const MESSAGING_INBOUND_PATH: &str = "/twilio/messaging/inbound";
/// Path of ingress's Programmable Messaging status callback.
pub const MESSAGING_STATUS_PATH: &str = "/twilio/messaging/status";
/// Path of ingress's voice answer URL (a number's voice webhook).
pub const VOICE_ANSWER_PATH: &str = "/twilio/voice/answer";
/// Path of ingress's call status callback.
pub const VOICE_STATUS_PATH: &str = "/twilio/voice/status";
/// Path of ingress's Conversations post-event webhook.
pub const CONVERSATIONS_EVENTS_PATH: &str = "/twilio/conversations/events";

/// Attempts per webhook (Twilio retries failed deliveries too).
const ATTEMPTS: u32 = 3;

/// How a webhook is requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// `X-Twilio-Signature` for a form request to `url` with `params`.
#[must_use]
pub fn sign(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    signature::compute(
        Algorithm::HmacSha1,
        auth_token,
        &signature::signing_string(url, params),
    )
}

/// The outcome of one posted webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    /// Ingress's HTTP status.
    pub status: u16,
    /// The SID the webhook is about (message SID for inbound messages).
    pub sid: String,
    /// The parameters sent.
    pub params: Vec<(String, String)>,
}

/// Posts signed webhooks to one receiver.
#[derive(Debug, Clone)]
pub struct Webhooks {
    client: reqwest::Client,
    post_base: String,
    public_base: String,
    /// Signs with the primary token (the sandbox's own, which a promotion
    /// changes, or a fixed one).
    auth_token: AuthTokens,
    account_sid: String,
}

impl Webhooks {
    /// Posts to `post_base` (e.g. `http://127.0.0.1:8080`), signing for
    /// `public_base` (ingress's `PUBLIC_BASE_URL`; `None` = the same URL).
    #[must_use]
    pub fn new(
        post_base: &str,
        public_base: Option<&str>,
        auth_token: &str,
        account_sid: &str,
    ) -> Self {
        let post_base = post_base.trim_end_matches('/').to_owned();
        let public_base =
            public_base.map_or_else(|| post_base.clone(), |p| p.trim_end_matches('/').to_owned());
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap_or_default();
        Self {
            client,
            post_base,
            public_base,
            auth_token: AuthTokens::new(auth_token),
            account_sid: account_sid.to_owned(),
        }
    }

    /// The same poster, signing with the primary of `tokens` from now on.
    #[must_use]
    pub fn signing_with(self, tokens: AuthTokens) -> Self {
        Self {
            auth_token: tokens,
            ..self
        }
    }

    /// Posts every URL as it is (no public base to move from).
    #[must_use]
    pub fn direct(auth_token: &str, account_sid: &str) -> Self {
        Self {
            post_base: String::new(),
            public_base: String::new(),
            ..Self::new("", None, auth_token, account_sid)
        }
    }

    /// The base URL webhooks are posted to.
    #[must_use]
    pub fn post_base(&self) -> &str {
        &self.post_base
    }

    /// The base URL webhooks are signed for.
    #[must_use]
    pub fn public_base(&self) -> &str {
        &self.public_base
    }

    /// Where a URL Twilio would call is really posted: a URL under the public
    /// base is moved to the post base; any other URL is used as it is.
    #[must_use]
    pub fn post_url_for(&self, signed_url: &str) -> String {
        if self.public_base.is_empty() {
            return signed_url.to_owned();
        }
        match signed_url.strip_prefix(&self.public_base) {
            Some(rest) if rest.is_empty() || rest.starts_with(['/', '?']) => {
                format!("{}{rest}", self.post_base)
            }
            _ => signed_url.to_owned(),
        }
    }

    /// Posts `params` to `{post_base}{path_and_query}`, signed for
    /// `{public_base}{path_and_query}`. Returns ingress's status.
    ///
    /// # Errors
    /// When no answer came after the retries.
    pub async fn post_form(
        &self,
        path_and_query: &str,
        params: &[(String, String)],
    ) -> anyhow::Result<u16> {
        let signed = format!("{}{path_and_query}", self.public_base);
        self.post_signed(&signed, params).await
    }

    /// Posts `params` for the URL Twilio would call (`signed_url`, signed as it
    /// is), to [`Self::post_url_for`] it. Retries connection errors and 5xx
    /// answers (same `I-Twilio-Idempotency-Token`), as Twilio does.
    ///
    /// # Errors
    /// When no answer came after the retries.
    pub async fn post_signed(
        &self,
        signed_url: &str,
        params: &[(String, String)],
    ) -> anyhow::Result<u16> {
        self.request_signed(Method::Post, signed_url, params)
            .await
            .map(|(status, _)| status)
    }

    /// Requests the URL Twilio would call, signed as Twilio signs it: a POST
    /// carries `params` as its form body (signed with them); a GET carries them
    /// in the query string (the signature covers that full URL alone). Returns
    /// the status and the body (the TwiML, for a voice request). Retries as
    /// [`Self::post_signed`].
    ///
    /// # Errors
    /// When no answer came after the retries.
    pub async fn request_signed(
        &self,
        method: Method,
        signed_url: &str,
        params: &[(String, String)],
    ) -> anyhow::Result<(u16, String)> {
        self.request_signed_as(method, signed_url, params, None)
            .await
    }

    /// [`Self::request_signed`] with the `I-Twilio-Idempotency-Token` given
    /// (Twilio keeps one token for all retries of one webhook), a new one
    /// when `None`.
    ///
    /// # Errors
    /// When no answer came after the retries.
    pub async fn request_signed_as(
        &self,
        method: Method,
        signed_url: &str,
        params: &[(String, String)],
        token: Option<&str>,
    ) -> anyhow::Result<(u16, String)> {
        let encoded = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        let (signed_url, body, signed_params) = match method {
            Method::Post => (signed_url.to_owned(), encoded, params),
            Method::Get if encoded.is_empty() => (signed_url.to_owned(), String::new(), &[][..]),
            Method::Get => {
                let separator = if signed_url.contains('?') { '&' } else { '?' };
                (
                    format!("{signed_url}{separator}{encoded}"),
                    String::new(),
                    &[][..],
                )
            }
        };
        let url = self.post_url_for(&signed_url);
        let signature = sign(&self.auth_token.primary(), &signed_url, signed_params);
        let token = token.map_or_else(
            || format!("sandbox-{}", uuid::Uuid::new_v4().simple()),
            str::to_owned,
        );
        let mut last_error = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            let request = match method {
                Method::Post => self
                    .client
                    .post(&url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body.clone()),
                Method::Get => self.client.get(&url),
            };
            let sent = request
                .header("x-twilio-signature", &signature)
                .header("i-twilio-idempotency-token", &token)
                .header("user-agent", "TwilioProxy/1.1 (si-twilio-sandbox)")
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_server_error() => {
                    last_error = Some(anyhow::anyhow!("{url} answered {}", response.status()));
                    if attempt + 1 == ATTEMPTS {
                        let status = response.status().as_u16();
                        return Ok((status, response.text().await.unwrap_or_default()));
                    }
                }
                Ok(response) => {
                    let status = response.status().as_u16();
                    let text = response
                        .text()
                        .await
                        .with_context(|| format!("reading the answer of {url}"))?;
                    return Ok((status, text));
                }
                Err(error) => last_error = Some(anyhow::Error::new(error)),
            }
        }
        Err(last_error
            .unwrap_or_else(|| anyhow::anyhow!("no attempt made"))
            .context(format!("requesting {url}")))
    }

    /// Posts a user's Programmable Messaging message to
    /// `/twilio/messaging/inbound`.
    ///
    /// # Errors
    /// When no answer came.
    pub async fn post_inbound_sms(&self, sms: &InboundSms) -> anyhow::Result<Posted> {
        let (sid, params) = inbound_sms_params(&self.account_sid, sms);
        let signed = format!("{}{MESSAGING_INBOUND_PATH}", self.public_base);
        let (status, _) = self
            .request_signed_as(
                Method::Post,
                &signed,
                &params,
                sms.idempotency_token.as_deref(),
            )
            .await
            .context("posting an inbound SMS")?;
        Ok(Posted {
            status,
            sid,
            params,
        })
    }

    /// Posts a user's Conversations message (`onMessageAdded`) to
    /// `/twilio/conversations/events`.
    ///
    /// # Errors
    /// When no answer came.
    pub async fn post_inbound_conversation_message(
        &self,
        message: &InboundConversationMessage,
    ) -> anyhow::Result<Posted> {
        let (sid, params) = conversation_message_params(&self.account_sid, message);
        let status = self
            .post_form(CONVERSATIONS_EVENTS_PATH, &params)
            .await
            .context("posting a Conversations onMessageAdded")?;
        Ok(Posted {
            status,
            sid,
            params,
        })
    }
}

/// A user's SMS or WhatsApp message to one of our numbers.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundSms {
    /// The user (`+1…` or `whatsapp:+1…`).
    pub from: String,
    /// Our number (`+1…` or `whatsapp:+1…`).
    pub to: String,
    pub body: String,
    /// Our messaging service, when the number belongs to one.
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    /// Media URLs (`MediaUrl{N}`).
    #[serde(default)]
    pub media_urls: Vec<String>,
    /// Their `MediaContentType{N}`, in order; `image/jpeg` where missing.
    #[serde(default)]
    pub media_content_types: Vec<String>,
    /// Media the sandbox serves itself (see [`crate::media`]); their URLs are
    /// appended to `media_urls` when the message is posted.
    #[serde(default)]
    pub media: Vec<crate::media::InboundMedia>,
    /// The message SID; a new `SM…` when `None`.
    #[serde(default)]
    pub message_sid: Option<String>,
    /// WhatsApp profile name (WhatsApp only).
    #[serde(default)]
    pub profile_name: Option<String>,
    /// A shared location (WhatsApp only): `Latitude`, `Longitude`, `Address`,
    /// `Label`, with `MessageType` `location`.
    #[serde(default)]
    pub location: Option<SharedLocation>,
    /// The payload of a tapped quick-reply button (WhatsApp only):
    /// `ButtonPayload`, with the body as `ButtonText`.
    #[serde(default)]
    pub button_payload: Option<String>,
    /// The `I-Twilio-Idempotency-Token` to send: the same for every retry of
    /// one message, as Twilio sends it; a new one per post when `None`.
    #[serde(default)]
    pub idempotency_token: Option<String>,
}

/// A place a WhatsApp user shares.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedLocation {
    pub latitude: f64,
    pub longitude: f64,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
}

/// The parameters Twilio posts for an inbound message, and its SID.
#[must_use]
pub fn inbound_sms_params(account_sid: &str, sms: &InboundSms) -> (String, Vec<(String, String)>) {
    let message_sid = sms.message_sid.clone().unwrap_or_else(|| sid("SM"));
    let mut params: Vec<(String, String)> = Vec::new();
    let mut add = |name: &str, value: &str| params.push((name.to_owned(), value.to_owned()));
    if let Some(country) = country_of(&sms.to) {
        add("ToCountry", &country);
    }
    add("SmsMessageSid", &message_sid);
    add("NumMedia", &sms.media_urls.len().to_string());
    add("SmsSid", &message_sid);
    add("SmsStatus", "received");
    add("Body", &sms.body);
    if let Some(country) = country_of(&sms.from) {
        add("FromCountry", &country);
    }
    add("To", &sms.to);
    if let Some(service) = &sms.messaging_service_sid {
        add("MessagingServiceSid", service);
    }
    add("NumSegments", &num_segments(&sms.body).to_string());
    add("MessageSid", &message_sid);
    add("AccountSid", account_sid);
    add("From", &sms.from);
    add("ApiVersion", "2010-04-01");
    for (i, url) in sms.media_urls.iter().enumerate() {
        add(
            &format!("MediaContentType{i}"),
            sms.media_content_types
                .get(i)
                .map_or("image/jpeg", String::as_str),
        );
        add(&format!("MediaUrl{i}"), url);
    }
    if let Some(wa_id) = sms.from.strip_prefix("whatsapp:+") {
        add("WaId", wa_id);
        add(
            "ProfileName",
            sms.profile_name.as_deref().unwrap_or_default(),
        );
        if let Some(place) = &sms.location {
            add("MessageType", "location");
            add("Latitude", &place.latitude.to_string());
            add("Longitude", &place.longitude.to_string());
            if let Some(address) = &place.address {
                add("Address", address);
            }
            if let Some(label) = &place.label {
                add("Label", label);
            }
        } else if let Some(payload) = &sms.button_payload {
            add("MessageType", "button");
            add("ButtonText", &sms.body);
            add("ButtonPayload", payload);
        }
    }
    (message_sid, params)
}

/// A user's message in a Conversation (`onMessageAdded`).
#[derive(Debug, Clone, Default)]
pub struct InboundConversationMessage {
    /// `CH…`
    pub conversation_sid: String,
    /// The user's address (`+1…`, `whatsapp:+1…`) or chat identity.
    pub author: String,
    pub body: String,
    /// The user's participant (`MB…`).
    pub participant_sid: Option<String>,
    /// `MG…`
    pub messaging_service_sid: Option<String>,
    /// `IS…`; a fixed sandbox one when `None`.
    pub chat_service_sid: Option<String>,
    /// The message index in the conversation.
    pub index: Option<u64>,
    /// The message SID; a new `IM…` when `None`.
    pub message_sid: Option<String>,
    /// The `Media` parameter (JSON list of `{Sid, ContentType, Filename,
    /// Size}`), as [`crate::SandboxHandle::add_conversation_media`] gives it.
    pub media_json: Option<String>,
}

/// The `Source` Twilio reports for a message by `author`.
fn source_of(author: &str) -> &'static str {
    if author.starts_with("whatsapp:") {
        "WHATSAPP"
    } else if author.starts_with('+') {
        "SMS"
    } else {
        "SDK"
    }
}

/// The chat service SID used when a conversation names none.
pub const DEFAULT_CHAT_SERVICE: &str = "IS00000000000000000000000000000000";

/// The parameters Twilio posts for `onMessageAdded`, and the message SID.
#[must_use]
pub fn conversation_message_params(
    account_sid: &str,
    message: &InboundConversationMessage,
) -> (String, Vec<(String, String)>) {
    let message_sid = message.message_sid.clone().unwrap_or_else(|| sid("IM"));
    let now = iso8601(now_ms());
    let mut params: Vec<(String, String)> = Vec::new();
    let mut add = |name: &str, value: &str| params.push((name.to_owned(), value.to_owned()));
    if let Some(service) = &message.messaging_service_sid {
        add("MessagingServiceSid", service);
    }
    add("EventType", "onMessageAdded");
    add("Attributes", "{}");
    add("DateCreated", &now);
    add("Index", &message.index.unwrap_or(0).to_string());
    add(
        "ChatServiceSid",
        message
            .chat_service_sid
            .as_deref()
            .unwrap_or(DEFAULT_CHAT_SERVICE),
    );
    add("MessageSid", &message_sid);
    add("AccountSid", account_sid);
    add("Source", source_of(&message.author));
    add("RetryCount", "0");
    add("Author", &message.author);
    if let Some(participant) = &message.participant_sid {
        add("ParticipantSid", participant);
    }
    add("Body", &message.body);
    if let Some(media) = &message.media_json {
        add("Media", media);
    }
    add("ConversationSid", &message.conversation_sid);
    (message_sid, params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_urls_are_posted_to_the_post_base() {
        let hooks = Webhooks::new("http://127.0.0.1:9/", Some("https://si.example"), "t", "AC");
        assert_eq!(
            hooks.post_url_for("https://si.example/twilio/messaging/status?x=1"),
            "http://127.0.0.1:9/twilio/messaging/status?x=1"
        );
        assert_eq!(
            hooks.post_url_for("https://si.example.other/x"),
            "https://si.example.other/x"
        );
        assert_eq!(
            hooks.post_url_for("http://elsewhere/x"),
            "http://elsewhere/x"
        );
    }

    #[test]
    fn signature_matches_the_documented_test_vector() {
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(
            sign(
                "12345",
                "https://mycompany.com/myapp.php?foo=1&bar=2",
                &params
            ),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
    }

    #[test]
    fn inbound_params_carry_what_normalize_needs() {
        let (sid, params) = inbound_sms_params(
            "AC1",
            &InboundSms {
                from: "whatsapp:+14155550100".into(),
                to: "whatsapp:+14155550199".into(),
                body: "hi".into(),
                media_urls: vec!["https://m/1".into()],
                ..InboundSms::default()
            },
        );
        let get = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("MessageSid"), Some(sid.as_str()));
        assert!(sid.starts_with("SM") && sid.len() == 34);
        assert_eq!(get("From"), Some("whatsapp:+14155550100"));
        assert_eq!(get("NumMedia"), Some("1"));
        assert_eq!(get("MediaUrl0"), Some("https://m/1"));
        assert_eq!(get("WaId"), Some("14155550100"));
        assert_eq!(get("AccountSid"), Some("AC1"));
        assert_eq!(get("FromCountry"), Some("US"));

        // The countries are the numbers', as Twilio says them.
        let (_, params) = inbound_sms_params(
            "AC1",
            &InboundSms {
                from: "+5215512345678".into(),
                to: "+33612345678".into(),
                body: "hola".into(),
                ..InboundSms::default()
            },
        );
        let get = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(
            (get("FromCountry"), get("ToCountry")),
            (Some("MX"), Some("FR"))
        );
    }
}
