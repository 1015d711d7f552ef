//! The echo responder: a development stand-in for the cognition layer.
//!
//! Reads `si.inbound.v1` and answers every message on `si.responses.v1`, on the
//! exactly-once stream runner (one response per inbound message, committed with
//! the input offset):
//!
//! - key: the conversation id (as the topic contract asks);
//! - `response_id`: `echo-<message_id>`, deterministic, so a re-processed
//!   message yields the same id and segment drops the repeat;
//! - `in_reply_to`: the `message_id`; `text`: `ECHO_PREFIX` + the user's text
//!   (or `(media)` when the message had only media); `locale` and `session_id`
//!   copied; `created_at` the input record's timestamp;
//! - a message flagged `possible_revocation` (it may revoke consent) gets the
//!   catalog's `messaging.revocation_clarification` after the echo, in its
//!   locale ("If you want no more messages from Si, reply STOP."), as the
//!   cognition layer is asked to do.
//! - a lifecycle summary request (`purpose` `SUMMARY_REQUEST`) gets a
//!   response of `purpose` `SUMMARY` (`summary-<message_id>`) whose text is
//!   `ECHO_SUMMARY` (a stand-in for a real summary), so closure with a
//!   summary runs locally; `ECHO_SUMMARY` empty leaves them unanswered (to
//!   see the summary timeout). Purposes newer than this build get no answer.
//!
//! The runner needs a state type and a changelog co-partitioned with the input.
//! The echo responder keeps no state: it names its output type as the state
//! type and never writes an entry, and at start it creates its dev-only
//! changelog `si.echo-responder.state.v1` (compacted, as many partitions as
//! `si.inbound.v1`, the broker's default replication) when missing. The topic is
//! not in `topics.yaml`: nothing but this dev tool uses it.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser};
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::types::RDKafkaErrorCode;
use si_runtime::metrics::StageMetrics;
use si_runtime::processor::{Output, ProcessError, Processor, RecordContext};
use si_runtime::state::StateStore;
use si_runtime::stream::{self, StreamArgs, StreamEnv, StreamSpec};
use si_runtime::{AdminServer, CommonConfig, KafkaArgs, Readiness};
use si_schemas::records::{CognitionResponse, InboundMessage, InboundPurpose, ResponsePurpose};
use si_schemas::{Codec, Registry, topics};
use tokio_util::sync::CancellationToken;

/// Stage name: consumer group `si-echo-responder`.
pub const STAGE: &str = "echo-responder";
/// The dev-only changelog the runner requires (never written).
pub const CHANGELOG: &str = "si.echo-responder.state.v1";

/// Echo settings.
#[derive(Debug, Clone, Args)]
pub struct EchoArgs {
    /// Put before the user's text in every answer.
    #[arg(long, env = "ECHO_PREFIX", default_value = "Echo: ")]
    pub echo_prefix: String,

    /// The answer to every lifecycle summary request; empty: leave them unanswered.
    #[arg(
        long,
        env = "ECHO_SUMMARY",
        default_value = "Summary from the echo responder (a stand-in for the one Si writes of the conversation)."
    )]
    pub echo_summary: String,
}

/// Configuration of `si-echo-responder`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "si-echo-responder",
    about = "Development stand-in for the cognition layer: answers every si.inbound.v1 message on si.responses.v1"
)]
pub struct Config {
    /// Kafka, registry, admin listener, logs.
    #[command(flatten)]
    pub common: CommonConfig,
    /// The stream runner.
    #[command(flatten)]
    pub stream: StreamArgs,
    /// Echo.
    #[command(flatten)]
    pub echo: EchoArgs,
}

/// The processor: one response per inbound message.
#[derive(Debug, Clone)]
pub struct Echo {
    prefix: String,
    summary: Option<String>,
}

impl Echo {
    /// An echo answering `prefix` + text.
    #[must_use]
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            summary: None,
        }
    }

    /// Also answers summary requests with `summary` (none when empty).
    #[must_use]
    pub fn with_summary(mut self, summary: &str) -> Self {
        self.summary = Some(summary.to_owned()).filter(|s| !s.trim().is_empty());
        self
    }

    /// The summary answering a summary request, when configured.
    #[must_use]
    pub fn summarize(&self, request: &InboundMessage, now_ms: i64) -> Option<CognitionResponse> {
        let text = self.summary.clone()?;
        Some(CognitionResponse {
            response_id: format!("summary-{}", request.message_id),
            text,
            purpose: ResponsePurpose::Summary,
            ..self.answer(request, now_ms)
        })
    }

    /// The answer to `message`, at `now_ms`.
    #[must_use]
    pub fn answer(&self, message: &InboundMessage, now_ms: i64) -> CognitionResponse {
        let said = if message.text.trim().is_empty() && !message.media.is_empty() {
            "(media)"
        } else {
            message.text.as_str()
        };
        let mut text = format!("{}{said}", self.prefix);
        if message.possible_revocation {
            let clarification = si_catalog::Catalog::builtin()
                .text(si_catalog::keys::REVOCATION_CLARIFICATION, &message.locale);
            text.push_str("\n\n");
            text.push_str(clarification.text);
        }
        CognitionResponse {
            response_id: format!("echo-{}", message.message_id),
            conversation_id: message.conversation_id.clone(),
            session_id: message.session_id.clone(),
            in_reply_to: Some(message.message_id.clone()),
            text,
            media: Vec::new(),
            locale: Some(message.locale.clone()).filter(|l| !l.is_empty()),
            hints: None,
            created_at: now_ms,
            traceparent: message.traceparent.clone(),
            purpose: ResponsePurpose::Reply,
        }
    }
}

impl Processor for Echo {
    type Input = InboundMessage;
    /// Never written (see the crate docs).
    type State = CognitionResponse;

    fn process(
        &mut self,
        ctx: &RecordContext<'_>,
        input: InboundMessage,
        _state: &mut StateStore<CognitionResponse>,
    ) -> Result<Vec<Output>, ProcessError> {
        if input.message_id.is_empty() || input.conversation_id.is_empty() {
            return Err(ProcessError::Invalid(
                "message_id and conversation_id are required".into(),
            ));
        }
        let mut response = match input.purpose {
            InboundPurpose::UserMessage => self.answer(&input, ctx.timestamp_ms),
            InboundPurpose::SummaryRequest => match self.summarize(&input, ctx.timestamp_ms) {
                Some(summary) => summary,
                None => return Ok(Vec::new()),
            },
            // Media copies complete an earlier message: nothing to answer.
            InboundPurpose::MediaStored | InboundPurpose::Unknown => return Ok(Vec::new()),
        };
        // The response names this stage's work as its trace's parent.
        if let Some(traceparent) = ctx.traceparent {
            response.traceparent = Some(traceparent.to_owned());
        }
        let key = response.conversation_id.clone();
        Ok(vec![Output::new(topics::RESPONSES, key, response)])
    }
}

/// Creates the changelog with the input's partition count when it is missing.
///
/// # Errors
/// When the input topic is missing or the topic cannot be created.
pub async fn ensure_changelog(kafka: &KafkaArgs) -> anyhow::Result<()> {
    let input = kafka.topic(topics::INBOUND);
    let changelog = kafka.topic(CHANGELOG);
    let config = si_runtime::kafka::client_config(kafka, STAGE);
    let probe_input = input.clone();
    let partitions = tokio::task::spawn_blocking(move || {
        si_runtime::kafka::topic_partitions(&config, &[probe_input])
    })
    .await?
    .map_err(anyhow::Error::msg)?[0];
    let admin = si_runtime::kafka::create_admin(kafka, STAGE)?;
    let topic = NewTopic::new(
        &changelog,
        i32::try_from(partitions)?,
        TopicReplication::Fixed(-1),
    )
    .set("cleanup.policy", "compact");
    let results = admin
        .create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .context("creating the changelog")?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = name, partitions, "changelog created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("creating {name}: {code}"),
        }
    }
    Ok(())
}

/// Runs the echo responder until `shutdown`.
///
/// # Errors
/// When start-up fails or the runner stops with an error.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    config
        .stream
        .validate(config.common.service.drain_timeout)
        .map_err(anyhow::Error::msg)?;
    let metrics = StageMetrics::new(STAGE);
    let readiness = Readiness::default();
    let admin_stop = shutdown.child_token();
    let admin = AdminServer::start(
        config.common.service.admin_addr,
        metrics.registry().clone(),
        readiness.clone(),
        admin_stop.clone(),
    )
    .await
    .context("binding the admin listener")?;
    tracing::info!(addr = %admin.local_addr, "admin listening");
    let result = async {
        let kafka = &config.common.kafka;
        ensure_changelog(kafka).await?;
        let codec = Codec::new(Registry::new(config.common.registry.config())?);
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
            outputs: topics::written_by("dev echo responder").to_vec(),
            inputs: vec![topics::INBOUND],
            changelog: CHANGELOG,
            state_ttl: Duration::from_secs(3600),
            batch_linger: Duration::ZERO,
        };
        let echo = Echo::new(&config.echo.echo_prefix).with_summary(&config.echo.echo_summary);
        stream::run(env, spec, echo, shutdown).await?;
        anyhow::Ok(())
    }
    .await;
    admin_stop.cancel();
    admin.stopped().await;
    result
}

#[cfg(test)]
mod tests {
    use si_schemas::records::{Channel, MediaRef};

    use super::*;

    fn inbound(text: &str) -> InboundMessage {
        InboundMessage {
            message_id: "msg-1".into(),
            conversation_id: "pm-abc".into(),
            session_id: "s-1".into(),
            user_id: None,
            visitor_id: Some("v-1".into()),
            registered: false,
            channel: Channel::Sms,
            locale: "es".into(),
            text: text.into(),
            media: Vec::new(),
            received_at: 1,
            event_id: "e-1".into(),
            first_contact: true,
            possible_revocation: false,
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            purpose: InboundPurpose::UserMessage,
            stored_media: Vec::new(),
            location: None,
            profile_name: None,
            button_payload: None,
        }
    }

    #[test]
    fn summary_requests_get_a_summary_or_nothing() {
        let request = InboundMessage {
            message_id: "lifecycle-summary-1".into(),
            text: String::new(),
            purpose: InboundPurpose::SummaryRequest,
            ..inbound("")
        };
        let ctx = RecordContext::for_test(topics::INBOUND, 42);
        let mut state = StateStore::new(Duration::from_secs(60));
        let mut echo = Echo::new("Echo: ").with_summary("We chatted.");
        let outputs = echo.process(&ctx, request.clone(), &mut state).expect("ok");
        let summary = outputs[0].record::<CognitionResponse>().expect("response");
        assert_eq!(summary.purpose, ResponsePurpose::Summary);
        assert_eq!(summary.in_reply_to.as_deref(), Some("lifecycle-summary-1"));
        assert_eq!(summary.text, "We chatted.");
        assert_eq!(outputs[0].key(), "pm-abc");
        let mut silent = Echo::new("Echo: ").with_summary("");
        assert!(
            silent
                .process(&ctx, request, &mut state)
                .expect("ok")
                .is_empty()
        );
        let newer = InboundMessage {
            purpose: InboundPurpose::Unknown,
            ..inbound("?")
        };
        assert!(
            echo.process(&ctx, newer, &mut state)
                .expect("ok")
                .is_empty()
        );
    }

    #[test]
    fn answers_with_the_text_keyed_by_conversation() {
        let mut echo = Echo::new("Echo: ");
        let mut state = StateStore::new(Duration::from_secs(60));
        let ctx = RecordContext::for_test(topics::INBOUND, 42);
        let outputs = echo
            .process(&ctx, inbound("¿Hola? 👋"), &mut state)
            .expect("processed");
        assert_eq!(outputs.len(), 1);
        assert_eq!(outputs[0].topic(), topics::RESPONSES);
        assert_eq!(outputs[0].key(), "pm-abc");
        let response = outputs[0]
            .record::<CognitionResponse>()
            .expect("a response");
        assert_eq!(response.response_id, "echo-msg-1");
        assert_eq!(response.in_reply_to.as_deref(), Some("msg-1"));
        assert_eq!(response.text, "Echo: ¿Hola? 👋");
        assert_eq!(response.locale.as_deref(), Some("es"));
        assert_eq!(response.session_id, "s-1");
        assert_eq!(response.created_at, 42);
        assert!(response.traceparent.is_some());
        // The same message again: the same response id.
        let again = echo
            .process(&ctx, inbound("¿Hola? 👋"), &mut state)
            .expect("processed");
        assert_eq!(
            again[0]
                .record::<CognitionResponse>()
                .map(|r| &r.response_id),
            Some(&response.response_id)
        );
    }

    #[test]
    fn a_possible_revocation_gets_the_clarification_in_the_message_locale() {
        let echo = Echo::new("Echo: ");
        let mut message = inbound("¿Pueden dejar de mandarme recordatorios cada mañana?");
        assert!(!echo.answer(&message, 0).text.contains("STOP"));
        message.possible_revocation = true;
        let text = echo.answer(&message, 0).text;
        let clarification = si_catalog::Catalog::builtin()
            .text(si_catalog::keys::REVOCATION_CLARIFICATION, "es")
            .text;
        assert_eq!(
            text,
            format!(
                "Echo: ¿Pueden dejar de mandarme recordatorios cada mañana?\n\n{clarification}"
            )
        );
        assert!(clarification.contains("STOP"), "{clarification}");
    }

    #[test]
    fn media_only_messages_get_an_answer_and_bad_ones_are_refused() {
        let echo = Echo::new("> ");
        let mut message = inbound("");
        message.media.push(MediaRef {
            url: Some("https://m/1".into()),
            content_type: Some("image/jpeg".into()),
            size_bytes: None,
            sid: None,
            filename: None,
        });
        assert_eq!(echo.answer(&message, 0).text, "> (media)");
        let mut echo = echo;
        let mut state = StateStore::new(Duration::from_secs(60));
        let ctx = RecordContext::for_test(topics::INBOUND, 0);
        let mut bad = inbound("x");
        bad.message_id.clear();
        assert!(matches!(
            echo.process(&ctx, bad, &mut state),
            Err(ProcessError::Invalid(_))
        ));
    }
}
