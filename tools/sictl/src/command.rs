//! `sictl command`: issues a command on `si.commands.v1` by hand, as session
//! orchestration or the cognition layer would (for operators and the demo).

use std::collections::BTreeMap;

use anyhow::Context;
use clap::Args;
use rdkafka::producer::{FutureProducer, FutureRecord};
use si_runtime::KafkaArgs;
use si_schemas::records::{Channel, Command, CommandKind};
use si_schemas::{Codec, topics};

/// `sictl command close`.
#[derive(Debug, Clone, Args)]
pub struct Close {
    /// The conversation to close (Twilio ConversationSid or pm-… id).
    #[arg(long)]
    pub conversation: String,
    /// `USER_REQUEST` when the user asked to end it (archived with that
    /// reason), else a free-text reason for the audit.
    #[arg(long)]
    pub reason: Option<String>,
    /// The final summary, when the issuer has one (no summary request is made then).
    #[arg(long)]
    pub summary: Option<String>,
    /// Who issues the command (kept for the audit).
    #[arg(long, default_value = "sictl")]
    pub issued_by: String,
    /// The command id (default: a new UUID; reuse one to retry idempotently).
    #[arg(long)]
    pub command_id: Option<String>,
}

impl Close {
    /// The command record.
    #[must_use]
    pub fn command(&self, now_ms: i64) -> Command {
        let mut params = BTreeMap::new();
        if let Some(summary) = self.summary.as_deref().filter(|s| !s.trim().is_empty()) {
            params.insert("summary".to_owned(), summary.to_owned());
        }
        Command {
            reason: self.reason.clone(),
            params,
            ..Command::new(
                CommandKind::CloseConversation,
                command_id(self.command_id.as_ref()),
                &self.conversation,
                &self.issued_by,
                now_ms,
            )
        }
    }
}

/// `sictl command escalate`.
#[derive(Debug, Clone, Args)]
pub struct Escalate {
    /// The conversation whose user Si calls (Twilio ConversationSid or pm-… id).
    #[arg(long)]
    pub conversation: String,
    /// When to call (RFC 3339, e.g. 2026-12-03T18:30:00Z); default: now.
    /// A time in the user's quiet hours moves to their end.
    #[arg(long)]
    pub at: Option<String>,
    /// Another number to call than the user's (E.164).
    #[arg(long)]
    pub address: Option<String>,
    /// Our number to call from (default: VOICE_FROM, else the conversation's).
    #[arg(long)]
    pub from: Option<String>,
    /// Locale of the call's prompts and texts (default: the conversation's).
    #[arg(long)]
    pub locale: Option<String>,
    /// Who issues the command (kept for the audit).
    #[arg(long, default_value = "sictl")]
    pub issued_by: String,
    /// The command id (default: a new UUID; reuse one to retry idempotently).
    #[arg(long)]
    pub command_id: Option<String>,
}

impl Escalate {
    /// The command record.
    ///
    /// # Errors
    /// When `--at` is not an RFC 3339 time.
    pub fn command(&self, now_ms: i64) -> anyhow::Result<Command> {
        let mut params = BTreeMap::new();
        if let Some(at) = self.at.as_deref() {
            let parsed: jiff::Timestamp = at
                .trim()
                .parse()
                .with_context(|| format!("--at {at:?}: expected an RFC 3339 time"))?;
            params.insert("at".to_owned(), parsed.to_string());
        }
        if let Some(from) = &self.from {
            params.insert("from".to_owned(), from.clone());
        }
        Ok(Command {
            address: self.address.clone(),
            locale: self.locale.clone(),
            params,
            ..Command::new(
                CommandKind::EscalateToVoice,
                command_id(self.command_id.as_ref()),
                &self.conversation,
                &self.issued_by,
                now_ms,
            )
        })
    }
}

/// `sictl command end-call`.
#[derive(Debug, Clone, Args)]
pub struct EndCall {
    /// The conversation whose call ends (or whose scheduled call is cancelled).
    #[arg(long)]
    pub conversation: String,
    /// Who issues the command (kept for the audit).
    #[arg(long, default_value = "sictl")]
    pub issued_by: String,
}

impl EndCall {
    /// The command record.
    #[must_use]
    pub fn command(&self, now_ms: i64) -> Command {
        Command::new(
            CommandKind::EndCall,
            command_id(None),
            &self.conversation,
            &self.issued_by,
            now_ms,
        )
    }
}

/// `sictl command start`.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("who").required(true).args(["user", "address"])))]
pub struct Start {
    /// The Si user to reach: lifecycle finds the user's address on the
    /// channel in si.identity.v1.
    #[arg(long)]
    pub user: Option<String>,
    /// The address to reach (E.164).
    #[arg(long)]
    pub address: Option<String>,
    /// The channel.
    #[arg(long, value_enum, default_value = "sms")]
    pub channel: StartChannel,
    /// The new conversation's id (default: `si-` and a new UUID); in
    /// Conversations mode also its UniqueName at Twilio.
    #[arg(long)]
    pub conversation: Option<String>,
    /// The Si session to bind (default: `session-` and the conversation id).
    #[arg(long)]
    pub session: Option<String>,
    /// The opening text (default: the catalog's welcome in the user's locale).
    #[arg(long)]
    pub text: Option<String>,
    /// Our number to send from (default: lifecycle's LIFECYCLE_START_FROM).
    #[arg(long)]
    pub from: Option<String>,
    /// Locale of the opening (default: the user's, else English).
    #[arg(long)]
    pub locale: Option<String>,
    /// Who issues the command (kept for the audit).
    #[arg(long, default_value = "sictl")]
    pub issued_by: String,
    /// The command id (default: a new UUID; reuse one to retry idempotently).
    #[arg(long)]
    pub command_id: Option<String>,
}

/// Channels a conversation can be started on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StartChannel {
    /// SMS.
    Sms,
    /// WhatsApp.
    Whatsapp,
}

impl Start {
    /// The command record.
    #[must_use]
    pub fn command(&self, now_ms: i64) -> Command {
        let conversation = self
            .conversation
            .clone()
            .unwrap_or_else(|| format!("si-{}", uuid::Uuid::new_v4().simple()));
        let mut params = BTreeMap::new();
        let mut set = |name: &str, value: Option<&String>| {
            if let Some(v) = value.filter(|v| !v.trim().is_empty()) {
                params.insert(name.to_owned(), v.trim().to_owned());
            }
        };
        set("user_id", self.user.as_ref());
        set("text", self.text.as_ref());
        set("from", self.from.as_ref());
        Command {
            session_id: Some(
                self.session
                    .clone()
                    .unwrap_or_else(|| format!("session-{conversation}")),
            ),
            address: self.address.clone(),
            channel: Some(match self.channel {
                StartChannel::Sms => Channel::Sms,
                StartChannel::Whatsapp => Channel::Whatsapp,
            }),
            locale: self.locale.clone(),
            params,
            ..Command::new(
                CommandKind::StartConversation,
                command_id(self.command_id.as_ref()),
                conversation,
                &self.issued_by,
                now_ms,
            )
        }
    }
}

/// The id given, else a new UUID.
fn command_id(given: Option<&String>) -> String {
    given
        .cloned()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// Produces `command` on `si.commands.v1`, keyed by its conversation id, and
/// waits for the broker's acknowledgement.
///
/// # Errors
/// When the command is invalid, does not encode or is not acknowledged.
pub async fn issue(kafka: &KafkaArgs, codec: &Codec, command: &Command) -> anyhow::Result<()> {
    anyhow::ensure!(
        !command.conversation_id.trim().is_empty(),
        "--conversation must not be empty"
    );
    let topic = kafka.topic(topics::COMMANDS);
    let payload = codec.encode(&topic, command).await?;
    let producer: FutureProducer = si_runtime::kafka::durable_producer_config(kafka, "sictl")
        .create()
        .context("creating the producer")?;
    producer
        .send(
            FutureRecord::to(&topic)
                .key(&command.conversation_id)
                .payload(&payload),
            std::time::Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_escalation_carries_its_time_and_number() {
        let escalate = Escalate {
            conversation: "pm-1".into(),
            at: Some("2026-12-03T19:30:00+01:00".into()),
            address: None,
            from: Some("+14155550100".into()),
            locale: Some("fr".into()),
            issued_by: "ops".into(),
            command_id: Some("c-1".into()),
        };
        let command = escalate.command(5).expect("valid");
        assert_eq!(command.kind, CommandKind::EscalateToVoice);
        assert_eq!(command.conversation_id, "pm-1");
        assert_eq!(command.params["at"], "2026-12-03T18:30:00Z");
        assert_eq!(command.params["from"], "+14155550100");
        assert_eq!(command.locale.as_deref(), Some("fr"));
        let bad = Escalate {
            at: Some("tonight".into()),
            ..escalate
        };
        let error = bad.command(5).expect_err("not a time");
        assert!(error.to_string().contains("RFC 3339"), "{error}");
        let end = EndCall {
            conversation: "pm-1".into(),
            issued_by: "ops".into(),
        };
        assert_eq!(end.command(5).kind, CommandKind::EndCall);
    }

    #[test]
    fn a_close_carries_the_reason_and_the_summary_param() {
        let close = Close {
            conversation: "CH1".into(),
            reason: Some("USER_REQUEST".into()),
            summary: Some("Booked for Tuesday.".into()),
            issued_by: "ops".into(),
            command_id: Some("c-1".into()),
        };
        let command = close.command(5);
        assert_eq!(command.kind, CommandKind::CloseConversation);
        assert_eq!(command.conversation_id, "CH1");
        assert_eq!(command.command_id, "c-1");
        assert_eq!(command.reason.as_deref(), Some("USER_REQUEST"));
        assert_eq!(
            command.params.get("summary").map(String::as_str),
            Some("Booked for Tuesday.")
        );
        let bare = Close {
            summary: Some("  ".into()),
            command_id: None,
            ..close
        };
        let command = bare.command(5);
        assert!(command.params.is_empty());
        assert!(!command.command_id.is_empty());
    }

    #[test]
    fn a_start_names_the_user_or_the_address_and_binds_a_session() {
        let start = Start {
            user: Some("u-7".into()),
            address: None,
            channel: StartChannel::Whatsapp,
            conversation: Some("outreach-1".into()),
            session: None,
            text: Some("Your order shipped.".into()),
            from: None,
            locale: None,
            issued_by: "ops".into(),
            command_id: Some("c-2".into()),
        };
        let command = start.command(5);
        assert_eq!(command.kind, CommandKind::StartConversation);
        assert_eq!(command.conversation_id, "outreach-1");
        assert_eq!(command.session_id.as_deref(), Some("session-outreach-1"));
        assert_eq!(command.channel, Some(Channel::Whatsapp));
        assert_eq!(
            command.params.get("user_id").map(String::as_str),
            Some("u-7")
        );
        assert_eq!(
            command.params.get("text").map(String::as_str),
            Some("Your order shipped.")
        );
        assert!(!command.params.contains_key("from"));
        let fresh = Start {
            conversation: None,
            ..start
        }
        .command(5);
        assert!(fresh.conversation_id.starts_with("si-"));
    }
}
