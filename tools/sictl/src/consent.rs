//! `sictl consent`: the consent decision in force for an address, and decisions an
//! operator records (an opt-out received by e-mail or phone, an opt-in collected on
//! paper): compliance source `API`.
//!
//! `set` writes, in one Kafka transaction, the decision to `si.consent.v1` and its
//! `OPT_IN` / `OPT_OUT` event to `si.compliance.v1`: both or neither. Every stage
//! reads `si.consent.v1` as a table under the one precedence rule (the newest
//! `decided_at` wins, an opt-out on a tie), so a decision recorded now overrides
//! every older one, keyword or registry, and the user's next keyword overrides it.
//!
//! `show` reads both consent tables to their end and prints the decision in force
//! with every entry behind it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use serde::Serialize;
use si_consent_gate::{ANY_SCOPE, ConsentGate, consent_key};
use si_runtime::metrics::StageMetrics;
use si_runtime::{KafkaArgs, Readiness};
use si_schemas::records::{
    Channel, ComplianceEvent, ComplianceEventKind, ComplianceSource, ConsentState, ConsentStatus,
};
use si_schemas::{Codec, topics};
use tokio_util::sync::CancellationToken;

/// A channel that has consent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConsentChannel {
    Sms,
    Whatsapp,
}

impl From<ConsentChannel> for Channel {
    fn from(channel: ConsentChannel) -> Self {
        match channel {
            ConsentChannel::Sms => Self::Sms,
            ConsentChannel::Whatsapp => Self::Whatsapp,
        }
    }
}

/// A decision an operator may record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConsentDecision {
    OptedIn,
    OptedOut,
}

/// Which address (and sender scope) a command is about.
#[derive(Debug, Clone, clap::Args)]
pub struct Subject {
    /// The user's address in E.164, e.g. +14155550100.
    #[arg(long)]
    pub address: String,
    /// The channel of the address.
    #[arg(long, value_enum)]
    pub channel: ConsentChannel,
    /// Sender scope: a messaging service SID (MG…), one of our numbers (E.164), or * for every sender.
    #[arg(long, default_value = ANY_SCOPE)]
    pub scope: String,
}

impl Subject {
    /// Checks the address is E.164 and the scope is one the gates look up.
    ///
    /// # Errors
    /// A clear message naming what is wrong (never the address itself).
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            is_e164(&self.address),
            "--address must be a valid E.164 number such as +14155550100"
        );
        ensure!(
            self.scope == ANY_SCOPE || self.scope.starts_with("MG") || is_e164(&self.scope),
            "--scope must be *, a messaging service SID (MG…) or an E.164 number"
        );
        Ok(())
    }

    fn key(&self) -> anyhow::Result<String> {
        consent_key(self.channel.into(), &self.address, &self.scope)
            .context("this channel has no consent")
    }
}

/// `+` and at most 15 digits, exactly as libphonenumber formats the number in E.164.
fn is_e164(text: &str) -> bool {
    text.strip_prefix('+').is_some_and(|digits| {
        (1..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
    }) && phonenumber::parse(None, text)
        .is_ok_and(|number| number.format().mode(phonenumber::Mode::E164).to_string() == text)
}

/// An operator's decision, as `sictl consent set` records it.
#[derive(Debug, Clone)]
pub struct Decision {
    pub subject: Subject,
    pub status: ConsentDecision,
    /// Who decided (an operator, a ticket): kept in the compliance event.
    pub issued_by: String,
    /// Why, e.g. "asked by e-mail, ticket 4711".
    pub reason: Option<String>,
    /// When the user decided (milliseconds since the epoch).
    pub decided_at: i64,
    /// The compliance event's id (give the same one to make a retry idempotent downstream).
    pub event_id: String,
}

impl Decision {
    /// The `si.consent.v1` entry and the `si.compliance.v1` event, with their keys.
    ///
    /// # Errors
    /// When the subject is invalid.
    pub fn records(&self) -> anyhow::Result<((String, ConsentState), (String, ComplianceEvent))> {
        self.subject.validate()?;
        ensure!(
            !self.issued_by.trim().is_empty(),
            "--issued-by must name who decided"
        );
        let channel: Channel = self.subject.channel.into();
        let (status, kind) = match self.status {
            ConsentDecision::OptedIn => (ConsentStatus::OptedIn, ComplianceEventKind::OptIn),
            ConsentDecision::OptedOut => (ConsentStatus::OptedOut, ComplianceEventKind::OptOut),
        };
        let state = ConsentState {
            address: self.subject.address.clone(),
            channel,
            sender_scope: self.subject.scope.clone(),
            status,
            source: ComplianceSource::Api,
            decided_at: self.decided_at,
            updated_at: now_ms(),
            keyword: None,
            event_ref: Some(self.event_id.clone()),
        };
        let mut details =
            std::collections::BTreeMap::from([("issued_by".to_owned(), self.issued_by.clone())]);
        if let Some(reason) = &self.reason {
            details.insert("reason".to_owned(), reason.clone());
        }
        let event = ComplianceEvent {
            event_id: self.event_id.clone(),
            kind,
            source: ComplianceSource::Api,
            address: self.subject.address.clone(),
            channel,
            sender_scope: Some(self.subject.scope.clone()),
            conversation_id: None,
            message_ref: None,
            keyword: None,
            locale: None,
            at: self.decided_at,
            details,
        };
        let event_key = channel.address_key(&self.subject.address);
        Ok(((self.subject.key()?, state), (event_key, event)))
    }
}

/// Where `set` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Recorded {
    pub consent_key: String,
    pub status: ConsentStatus,
    pub decided_at: i64,
    pub event_id: String,
}

/// Records `decision`: its consent entry and compliance event in one transaction.
///
/// # Errors
/// An invalid decision (nothing written), or Kafka failing (the transaction is
/// aborted: nothing becomes visible).
pub async fn record(
    kafka: &KafkaArgs,
    codec: &Codec,
    decision: &Decision,
    timeout: Duration,
) -> anyhow::Result<Recorded> {
    let ((state_key, state), (event_key, event)) = decision.records()?;
    let consent_topic = kafka.topic(topics::CONSENT);
    let compliance_topic = kafka.topic(topics::COMPLIANCE);
    let state_bytes = codec.encode(&consent_topic, &state).await?;
    let event_bytes = codec.encode(&compliance_topic, &event).await?;

    let mut config = si_runtime::kafka::durable_producer_config(kafka, "sictl");
    config.set(
        "transactional.id",
        format!("{}sictl-consent-{}", kafka.topic_prefix, decision.event_id),
    );
    let producer: FutureProducer = config.create().context("creating the producer")?;
    let setup = producer.clone();
    tokio::task::spawn_blocking(move || {
        setup.init_transactions(timeout)?;
        setup.begin_transaction()
    })
    .await?
    .context("starting the transaction")?;
    let sent = async {
        for (topic, key, payload) in [
            (&consent_topic, &state_key, &state_bytes),
            (&compliance_topic, &event_key, &event_bytes),
        ] {
            producer
                .send(FutureRecord::to(topic).key(key).payload(payload), timeout)
                .await
                .map_err(|(error, _)| error)
                .with_context(|| format!("producing to {topic}"))?;
        }
        anyhow::Ok(())
    }
    .await;
    let finish = producer.clone();
    let outcome = match sent {
        Ok(()) => tokio::task::spawn_blocking(move || finish.commit_transaction(timeout))
            .await?
            .context("committing"),
        Err(error) => {
            let _ = tokio::task::spawn_blocking(move || finish.abort_transaction(timeout)).await;
            Err(error)
        }
    };
    outcome?;
    Ok(Recorded {
        consent_key: state_key,
        status: state.status,
        decided_at: state.decided_at,
        event_id: event.event_id,
    })
}

/// One entry behind a decision.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// `si.consent.v1` or `si.consent.registry.v1` (without prefix).
    pub table: &'static str,
    #[serde(flatten)]
    pub state: ConsentState,
}

/// What `show` found.
#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    /// The decision in force (`null`: the address never decided).
    pub in_force: Option<ConsentState>,
    /// Whether a message from the scope may be sent to the address: opted in, or no
    /// decision while texting first counts as consent (`CONSENT_POLICY=implied`).
    pub allowed_implied: bool,
    /// The same under `CONSENT_POLICY=explicit`.
    pub allowed_explicit: bool,
    /// Every entry for the scope and for *, in both tables.
    pub entries: Vec<Entry>,
}

/// Reads both consent tables to their end and reports on `subject`.
///
/// # Errors
/// An invalid subject, or the tables not loaded within `timeout`.
pub async fn show(
    kafka: &KafkaArgs,
    codec: &Codec,
    subject: &Subject,
    timeout: Duration,
) -> anyhow::Result<Shown> {
    subject.validate()?;
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let gate = ConsentGate::start(
        kafka,
        "sictl",
        codec.clone(),
        &Readiness::default(),
        &StageMetrics::new("sictl"),
        shutdown,
    )
    .await?;
    if tokio::time::timeout(timeout, gate.loaded()).await.is_err() {
        bail!("the consent tables were not read to their end within {timeout:?}");
    }
    let channel: Channel = subject.channel.into();
    let mut keys = vec![subject.key()?];
    if subject.scope != ANY_SCOPE {
        keys.extend(consent_key(channel, &subject.address, ANY_SCOPE));
    }
    let mut entries = Vec::new();
    for key in &keys {
        for (table, name) in [
            (gate.local(), topics::CONSENT),
            (gate.registry(), topics::CONSENT_REGISTRY),
        ] {
            if let Some(state) = table.get(key) {
                entries.push(Entry {
                    table: name,
                    state: state.as_ref().clone(),
                });
            }
        }
    }
    let allowed = |explicit| {
        gate.check(channel, &subject.address, &subject.scope, explicit)
            .is_allowed()
    };
    Ok(Shown {
        in_force: gate
            .effective(channel, &subject.address, &subject.scope)
            .map(|state| state.as_ref().clone()),
        allowed_implied: allowed(false),
        allowed_explicit: allowed(true),
        entries,
    })
}

/// Milliseconds since the epoch.
#[must_use]
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(address: &str, scope: &str) -> Decision {
        Decision {
            subject: Subject {
                address: address.into(),
                channel: ConsentChannel::Whatsapp,
                scope: scope.into(),
            },
            status: ConsentDecision::OptedOut,
            issued_by: "ops@example.test".into(),
            reason: Some("asked by e-mail".into()),
            decided_at: 1_700_000_000_000,
            event_id: "e-1".into(),
        }
    }

    #[test]
    fn a_decision_is_an_api_entry_and_an_api_compliance_event_under_the_contract_keys() {
        let ((key, state), (event_key, event)) =
            decision("+14155550100", "MG123").records().expect("valid");
        assert_eq!(key, "whatsapp:+14155550100|MG123");
        assert_eq!(state.status, ConsentStatus::OptedOut);
        assert_eq!(state.source, ComplianceSource::Api);
        assert_eq!(state.decided_at, 1_700_000_000_000);
        assert_eq!(state.event_ref.as_deref(), Some("e-1"));
        assert_eq!(event_key, "whatsapp:+14155550100");
        assert_eq!(event.kind, ComplianceEventKind::OptOut);
        assert_eq!(event.source, ComplianceSource::Api);
        assert_eq!(event.details["issued_by"], "ops@example.test");
        assert_eq!(event.details["reason"], "asked by e-mail");
    }

    #[test]
    fn addresses_and_scopes_that_the_gates_would_never_look_up_are_refused() {
        for (address, scope) in [
            ("4155550100", "*"),
            ("+1 415 555 0100", "*"),
            ("+", "*"),
            ("+141555501001234567", "*"),
            ("whatsapp:+14155550100", "*"),
            ("+14155550100", "everyone"),
        ] {
            assert!(
                decision(address, scope).records().is_err(),
                "{address} / {scope}"
            );
        }
        let mut anonymous = decision("+14155550100", "*");
        anonymous.issued_by = " ".into();
        assert!(anonymous.records().is_err());
    }
}
