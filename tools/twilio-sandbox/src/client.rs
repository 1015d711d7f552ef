//! A client for the control API of a sandbox running elsewhere (`dev/run`,
//! another process): the same call controls as [`crate::SandboxHandle`] has
//! in-process.

use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::account::{ConversationsWebhooks, MessagingService, PhoneNumber};
use crate::calls::{CallOutcomes, CallRecord, GatherAnswer, Outcome, Speaker};
use crate::player::InboundCall;
use crate::state::{DeliveryFailure, RequestRecord};

/// The control API of a sandbox at `base_url`.
#[derive(Debug, Clone)]
pub struct SandboxClient {
    http: reqwest::Client,
    base: String,
}

impl SandboxClient {
    /// A client for the sandbox at `base_url` (e.g. `http://127.0.0.1:8090`).
    #[must_use]
    pub fn new(base_url: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap_or_default(),
            base: base_url.trim_end_matches('/').to_owned(),
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> anyhow::Result<T> {
        let response = request.send().await.with_context(|| what.to_owned())?;
        let status = response.status();
        let text = response.text().await.with_context(|| what.to_owned())?;
        anyhow::ensure!(
            status.is_success(),
            "{what}: the sandbox answered {status}: {text}"
        );
        serde_json::from_str(&text).with_context(|| format!("{what}: reading {text}"))
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
        what: &str,
    ) -> anyhow::Result<T> {
        let request = self.http.post(format!("{}{path}", self.base)).json(body);
        self.send(request, what).await
    }

    /// Every call the sandbox keeps, oldest first.
    ///
    /// # Errors
    /// When the sandbox does not answer.
    pub async fn calls(&self) -> anyhow::Result<Vec<CallRecord>> {
        let request = self.http.get(format!("{}/_sandbox/calls", self.base));
        self.send(request, "listing calls").await
    }

    /// One call, `None` when the sandbox does not know it.
    ///
    /// # Errors
    /// When the sandbox does not answer.
    pub async fn call(&self, sid: &str) -> anyhow::Result<Option<CallRecord>> {
        let response = self
            .http
            .get(format!("{}/_sandbox/calls/{sid}", self.base))
            .send()
            .await
            .context("getting a call")?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        anyhow::ensure!(
            response.status().is_success(),
            "getting a call: {}",
            response.status()
        );
        Ok(Some(response.json().await?))
    }

    /// How a ringing call ends.
    ///
    /// # Errors
    /// When the call is unknown or over.
    pub async fn ring(&self, sid: &str, outcome: Outcome) -> anyhow::Result<()> {
        let body = serde_json::json!({ "outcome": outcome });
        self.post::<serde_json::Value>(&format!("/_sandbox/calls/{sid}/ring"), &body, "ring")
            .await
            .map(drop)
    }

    /// Answers the call's current (or next) gather: digits, a phrase or silence.
    ///
    /// # Errors
    /// When the call is unknown or over.
    pub async fn answer_gather(&self, sid: &str, answer: &GatherAnswer) -> anyhow::Result<()> {
        self.post::<serde_json::Value>(
            &format!("/_sandbox/calls/{sid}/gather"),
            answer,
            "answering a gather",
        )
        .await
        .map(drop)
    }

    /// Someone speaks on the call (transcribed when a transcription runs).
    ///
    /// # Errors
    /// When the call is unknown or over.
    pub async fn say(&self, sid: &str, speaker: Speaker, text: &str) -> anyhow::Result<()> {
        let body = serde_json::json!({ "speaker": speaker, "text": text });
        self.post::<serde_json::Value>(&format!("/_sandbox/calls/{sid}/say"), &body, "say")
            .await
            .map(drop)
    }

    /// The callee hangs up.
    ///
    /// # Errors
    /// When the call is unknown or over.
    pub async fn hang_up(&self, sid: &str) -> anyhow::Result<()> {
        self.post::<serde_json::Value>(
            &format!("/_sandbox/calls/{sid}/hangup"),
            &serde_json::json!({}),
            "hang up",
        )
        .await
        .map(drop)
    }

    /// The Twilio requests recorded after sequence number `since` (all with
    /// `None`), in seq order. A request is numbered when it arrives but
    /// logged when it is answered, so a slow one can show up after a higher
    /// seq was listed: to poll, pass a seq below which every request was
    /// seen, not simply the highest one (si-bench's `Cursor` does).
    ///
    /// # Errors
    /// When the sandbox does not answer.
    pub async fn requests(&self, since: Option<u64>) -> anyhow::Result<Vec<RequestRecord>> {
        let mut request = self.http.get(format!("{}/_sandbox/requests", self.base));
        if let Some(since) = since {
            request = request.query(&[("since", since)]);
        }
        self.send(request, "listing requests").await
    }

    /// Replaces the delivery failures.
    ///
    /// # Errors
    /// When the sandbox does not answer or refuses them.
    pub async fn set_delivery_failures(&self, failures: &[DeliveryFailure]) -> anyhow::Result<()> {
        let request = self
            .http
            .put(format!("{}/_sandbox/delivery-failures", self.base))
            .json(failures);
        self.send::<Vec<DeliveryFailure>>(request, "setting delivery failures")
            .await
            .map(drop)
    }

    async fn put<T: Serialize + DeserializeOwned>(
        &self,
        path: &str,
        body: &T,
        what: &str,
    ) -> anyhow::Result<T> {
        let request = self.http.put(format!("{}{path}", self.base)).json(body);
        self.send(request, what).await
    }

    /// Replaces the account's phone numbers; returns them with their SIDs.
    ///
    /// # Errors
    /// When the sandbox does not answer or refuses them (not E.164, twice).
    pub async fn set_phone_numbers(
        &self,
        numbers: &Vec<PhoneNumber>,
    ) -> anyhow::Result<Vec<PhoneNumber>> {
        self.put("/_sandbox/phone-numbers", numbers, "setting phone numbers")
            .await
    }

    /// Replaces the account's Messaging Services; returns them with their SIDs.
    ///
    /// # Errors
    /// When the sandbox does not answer or refuses them.
    pub async fn set_messaging_services(
        &self,
        services: &Vec<MessagingService>,
    ) -> anyhow::Result<Vec<MessagingService>> {
        self.put(
            "/_sandbox/messaging-services",
            services,
            "setting messaging services",
        )
        .await
    }

    /// Replaces the account's Conversations webhooks.
    ///
    /// # Errors
    /// When the sandbox does not answer or refuses them.
    pub async fn set_conversations_webhooks(
        &self,
        webhooks: &ConversationsWebhooks,
    ) -> anyhow::Result<ConversationsWebhooks> {
        self.put(
            "/_sandbox/conversations-webhooks",
            webhooks,
            "setting conversations webhooks",
        )
        .await
    }

    /// How new calls ring.
    ///
    /// # Errors
    /// When the sandbox does not answer.
    pub async fn call_outcomes(&self) -> anyhow::Result<CallOutcomes> {
        let request = self
            .http
            .get(format!("{}/_sandbox/call-outcomes", self.base));
        self.send(request, "getting call outcomes").await
    }

    /// Sets how new calls ring.
    ///
    /// # Errors
    /// When the sandbox does not answer.
    pub async fn set_call_outcomes(&self, outcomes: &CallOutcomes) -> anyhow::Result<()> {
        let request = self
            .http
            .put(format!("{}/_sandbox/call-outcomes", self.base))
            .json(outcomes);
        self.send::<CallOutcomes>(request, "setting call outcomes")
            .await
            .map(drop)
    }

    /// Places an inbound call; returns its Call SID.
    ///
    /// # Errors
    /// When the sandbox refuses it (no URL to call).
    pub async fn place_inbound_call(&self, call: &InboundCall) -> anyhow::Result<String> {
        let placed: serde_json::Value = self
            .post("/_sandbox/inbound/call", call, "placing an inbound call")
            .await?;
        placed["call_sid"]
            .as_str()
            .map(str::to_owned)
            .context("no call_sid in the answer")
    }

    /// Waits (polling every 50 ms) until `condition` holds for the call.
    ///
    /// # Errors
    /// When `timeout` passes first, with the call's last state.
    pub async fn wait_for_call(
        &self,
        sid: &str,
        timeout: Duration,
        mut condition: impl FnMut(&CallRecord) -> bool,
    ) -> anyhow::Result<CallRecord> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let call = self.call(sid).await?;
            if let Some(call) = call.as_ref().filter(|c| condition(c)) {
                return Ok(call.clone());
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("timed out after {timeout:?} waiting for call {sid}: {call:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
