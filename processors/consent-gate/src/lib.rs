//! The consent gate: which decision is in force for an address and a sender,
//! and whether a message may be sent.
//!
//! Decisions live in two compacted topics of the same shape, both read in full
//! by every instance of a stage that gates (consent, segment, egress):
//! `si.consent.v1`, the adapter's own decisions, and `si.consent.registry.v1`,
//! the upstream Consent Registry's feed. An entry is keyed
//! `<channel>:<E.164>|<sender scope>`, the scope being a messaging service SID,
//! one of our sending addresses, or [`ANY_SCOPE`].
//!
//! **Precedence.** For a send from scope `S` to an address, the applicable
//! entries are those of scope `S` and of `*`, in both topics. The entry with the
//! newest `decided_at` is in force; on a tie OPTED_OUT wins over everything
//! else. The source does not matter: an older registry record never overrides
//! a newer local STOP, and a newer registry opt-in (say, the user opted in on
//! Si's website) does override an older local STOP.
//!
//! **Verdict.** OPTED_OUT always blocks. OPTED_IN always allows. No entry,
//! PENDING or UNKNOWN allow only when the caller does not require an explicit
//! opt-in (the `implied` consent policy, where texting first is consent).
//! Chat participants have no phone address and no consent state; voice is
//! consented on the call itself: both are always allowed here.

pub mod recorded;
pub mod sender_class;

pub use recorded::{
    EGRESS_RECHECK_REASON, RECORDED_EVENT_PREFIX, egress_blocked_event_id, twilio_opt_out_event_id,
    with_recorded,
};

/// `OutboundOperation.params` of a `CREATE_CALL`: the text channel (`sms`,
/// `whatsapp`) whose consent the call was placed under, so egress checks it
/// again right before creating the call (voice itself has no consent state).
pub const CALL_CONSENT_CHANNEL_PARAM: &str = "si.consent.channel";
/// `OutboundOperation.params` of a `CREATE_CALL`: the sender scope of that
/// consent (our number the user texts, the Messaging Service, or `*`).
pub const CALL_CONSENT_SCOPE_PARAM: &str = "si.consent.scope";

/// The consent a `CREATE_CALL` is checked against (its channel and sender
/// scope from [`CALL_CONSENT_CHANNEL_PARAM`] and [`CALL_CONSENT_SCOPE_PARAM`]);
/// `None` for another operation, or a call that names none.
#[must_use]
pub fn call_consent(op: &OutboundOperation) -> Option<(Channel, &str)> {
    if op.kind != OperationKind::CreateCall {
        return None;
    }
    let channel = match op.params.get(CALL_CONSENT_CHANNEL_PARAM)?.as_str() {
        "sms" => Channel::Sms,
        "whatsapp" => Channel::Whatsapp,
        _ => return None,
    };
    Some((channel, op.params.get(CALL_CONSENT_SCOPE_PARAM)?.as_str()))
}
pub use sender_class::SenderClass;

use std::sync::Arc;

use si_runtime::Readiness;
use si_runtime::config::KafkaArgs;
use si_runtime::metrics::StageMetrics;
use si_runtime::table::GlobalTable;
use si_schemas::records::{Channel, ConsentState, ConsentStatus, OperationKind, OutboundOperation};
use si_schemas::{Codec, topics};
use tokio_util::sync::CancellationToken;

/// The sender scope that covers every Si sender.
pub const ANY_SCOPE: &str = "*";

/// Who sends a conversation's messages: one sender identity per number,
/// derived here only, so consent's replies, segment's responses and
/// lifecycle's operations for one user share one partition of
/// `twilio.outbound.v1` and one limiter in egress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    /// The operation's `sender_key` (the outbound topic's key, egress's limiter).
    pub key: String,
    /// The consent scope sends are checked against.
    pub scope: String,
    /// `From` of the request, when it names our address.
    pub from: Option<String>,
    /// `MessagingServiceSid` of the request, when a Messaging Service sends.
    pub messaging_service_sid: Option<String>,
}

/// The sender of a conversation's messages on `channel`:
///
/// - Programmable Messaging (`programmable_messaging`): the Messaging Service
///   when one is configured (`messaging_service_sid`), else our address the
///   user wrote to (`proxy`);
/// - Conversations: chat participants per conversation; otherwise our
///   address, else the Messaging Service (named only as the key: Twilio sends
///   through the participants' bindings).
///
/// `None` when no sender is known.
#[must_use]
pub fn sender(
    channel: Channel,
    conversation_id: &str,
    programmable_messaging: bool,
    proxy: Option<&str>,
    messaging_service_sid: Option<&str>,
) -> Option<Sender> {
    let proxy = proxy.filter(|p| !p.is_empty());
    let mg = messaging_service_sid.filter(|m| !m.is_empty());
    if programmable_messaging {
        return match (mg, proxy) {
            (Some(mg), _) => Some(Sender {
                key: mg.to_owned(),
                scope: mg.to_owned(),
                from: None,
                messaging_service_sid: Some(mg.to_owned()),
            }),
            (None, Some(from)) => Some(Sender {
                key: channel.address_key(from),
                scope: from.to_owned(),
                from: Some(from.to_owned()),
                messaging_service_sid: None,
            }),
            (None, None) => None,
        };
    }
    match (channel, proxy, mg) {
        (Channel::Chat, _, _) => Some(Sender {
            key: format!("{}:{conversation_id}", Channel::Chat.key_prefix()),
            scope: ANY_SCOPE.to_owned(),
            from: None,
            messaging_service_sid: None,
        }),
        (_, Some(from), _) => Some(Sender {
            key: channel.address_key(from),
            scope: from.to_owned(),
            from: Some(from.to_owned()),
            messaging_service_sid: None,
        }),
        (_, None, Some(mg)) => Some(Sender {
            key: mg.to_owned(),
            scope: mg.to_owned(),
            from: None,
            messaging_service_sid: None,
        }),
        (_, None, None) => None,
    }
}

/// The key of a consent entry, `<channel>:<E.164>|<scope>`; `None` for channels
/// without consent state (chat, voice, unknown).
#[must_use]
pub fn consent_key(channel: Channel, address: &str, scope: &str) -> Option<String> {
    has_consent(channel).then(|| format!("{}|{scope}", channel.address_key(address)))
}

/// Whether messages on `channel` are subject to consent.
#[must_use]
pub fn has_consent(channel: Channel) -> bool {
    matches!(channel, Channel::Sms | Channel::Whatsapp)
}

/// The decision in force among `entries`: the newest `decided_at`, OPTED_OUT
/// on a tie (and, between two equally new non-opt-outs, the first given).
#[must_use]
pub fn newest<'a>(entries: impl IntoIterator<Item = &'a ConsentState>) -> Option<&'a ConsentState> {
    entries.into_iter().fold(None, |best, entry| match best {
        None => Some(entry),
        Some(current) => Some(if outranks(entry, current) {
            entry
        } else {
            current
        }),
    })
}

/// Whether `candidate` takes precedence over `current`.
fn outranks(candidate: &ConsentState, current: &ConsentState) -> bool {
    candidate.decided_at > current.decided_at
        || (candidate.decided_at == current.decided_at
            && candidate.status == ConsentStatus::OptedOut
            && current.status != ConsentStatus::OptedOut)
}

/// Whether a message may be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Send it.
    Allowed,
    /// Do not send it: the decision in force (none when there is no entry and
    /// an explicit opt-in is required).
    Blocked {
        /// The status in force (`Unknown` when there is no entry).
        status: ConsentStatus,
        /// The entry in force, when there is one.
        decision: Option<Arc<ConsentState>>,
    },
}

impl Verdict {
    /// Whether the message may be sent.
    #[must_use]
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allowed)
    }
}

/// Verdict for the decision in force (`None`: no entry).
#[must_use]
pub fn verdict(decision: Option<Arc<ConsentState>>, require_opt_in: bool) -> Verdict {
    let status = decision
        .as_ref()
        .map_or(ConsentStatus::Unknown, |d| d.status);
    let allowed = match status {
        ConsentStatus::OptedIn => true,
        ConsentStatus::OptedOut => false,
        ConsentStatus::Pending | ConsentStatus::Unknown => !require_opt_in,
    };
    if allowed {
        Verdict::Allowed
    } else {
        Verdict::Blocked { status, decision }
    }
}

/// The adapter's and the registry's consent tables, read in full.
#[derive(Clone, Debug)]
pub struct ConsentGate {
    local: GlobalTable<ConsentState>,
    registry: GlobalTable<ConsentState>,
}

impl ConsentGate {
    /// Starts reading `si.consent.v1` and `si.consent.registry.v1` in the
    /// background. Each table registers a readiness check, so `/readyz` and the
    /// stream runner wait until both are loaded.
    ///
    /// # Errors
    /// When a table consumer cannot be created or a topic does not exist.
    pub async fn start(
        kafka: &KafkaArgs,
        stage: &str,
        codec: Codec,
        readiness: &Readiness,
        metrics: &StageMetrics,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let local = GlobalTable::start(
            kafka,
            stage,
            topics::CONSENT,
            codec.clone(),
            readiness,
            metrics,
            shutdown.clone(),
        )
        .await?;
        let registry = GlobalTable::start(
            kafka,
            stage,
            topics::CONSENT_REGISTRY,
            codec,
            readiness,
            metrics,
            shutdown,
        )
        .await?;
        Ok(Self::from_tables(local, registry))
    }

    /// A gate over tables the caller built (tests, or tables already started).
    #[must_use]
    pub fn from_tables(
        local: GlobalTable<ConsentState>,
        registry: GlobalTable<ConsentState>,
    ) -> Self {
        Self { local, registry }
    }

    /// The adapter's own table (`si.consent.v1`).
    #[must_use]
    pub fn local(&self) -> &GlobalTable<ConsentState> {
        &self.local
    }

    /// The registry's table (`si.consent.registry.v1`).
    #[must_use]
    pub fn registry(&self) -> &GlobalTable<ConsentState> {
        &self.registry
    }

    /// Waits until both tables have been read to their end once. A stage that
    /// gates must not decide against half-loaded tables.
    pub async fn loaded(&self) {
        self.local.loaded().await;
        self.registry.loaded().await;
    }

    /// Whether both tables have been read to their end once.
    #[must_use]
    pub fn is_loaded(&self) -> bool {
        self.local.is_loaded() && self.registry.is_loaded()
    }

    /// The decision in force for a send from `scope` to `address` on `channel`:
    /// the newest of the entries for `scope` and for `*` in both tables.
    #[must_use]
    pub fn effective(
        &self,
        channel: Channel,
        address: &str,
        scope: &str,
    ) -> Option<Arc<ConsentState>> {
        let keys = [
            consent_key(channel, address, scope)?,
            consent_key(channel, address, ANY_SCOPE)?,
        ];
        let scopes = if scope == ANY_SCOPE {
            &keys[..1]
        } else {
            &keys[..]
        };
        let mut entries = Vec::with_capacity(4);
        for key in scopes {
            entries.extend(self.local.get(key));
            entries.extend(self.registry.get(key));
        }
        let best = newest(entries.iter().map(Arc::as_ref))?;
        entries
            .iter()
            .find(|e| std::ptr::eq(e.as_ref(), best))
            .cloned()
    }

    /// Whether a message from `scope` to `address` on `channel` may be sent.
    /// See the module documentation for the rules.
    #[must_use]
    pub fn check(
        &self,
        channel: Channel,
        address: &str,
        scope: &str,
        require_opt_in: bool,
    ) -> Verdict {
        if !has_consent(channel) {
            return Verdict::Allowed;
        }
        verdict(self.effective(channel, address, scope), require_opt_in)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use si_schemas::records::ComplianceSource;

    const USER: &str = "+14155550100";
    const NUMBER: &str = "+14155550199";

    #[test]
    fn one_sender_per_number_and_service() {
        const MG: &str = "MG0123456789abcdef0123456789abcdef";
        let pm = |proxy, mg| sender(Channel::Sms, "pm-1", true, proxy, mg);
        let via_service = pm(Some(NUMBER), Some(MG)).expect("a sender");
        assert_eq!(via_service.key, MG);
        assert_eq!(via_service.messaging_service_sid.as_deref(), Some(MG));
        assert_eq!(via_service.from, None);
        let via_number = pm(Some(NUMBER), None).expect("a sender");
        assert_eq!(via_number.key, format!("sms:{NUMBER}"));
        assert_eq!(via_number.from.as_deref(), Some(NUMBER));
        assert_eq!(pm(None, None), None);
        let conversations = sender(Channel::Whatsapp, "CH1", false, Some(NUMBER), Some(MG));
        assert_eq!(
            conversations.map(|s| s.key),
            Some(format!("whatsapp:{NUMBER}")),
            "Conversations send through our address"
        );
        let chat = sender(Channel::Chat, "CH1", false, None, None).expect("a sender");
        assert_eq!(
            (chat.key.as_str(), chat.scope.as_str()),
            ("chat:CH1", ANY_SCOPE)
        );
        let no_number = sender(Channel::Sms, "CH1", false, None, Some(MG)).expect("a sender");
        assert_eq!((no_number.key.as_str(), no_number.from), (MG, None));
    }

    fn entry(
        scope: &str,
        status: ConsentStatus,
        source: ComplianceSource,
        at: i64,
    ) -> ConsentState {
        ConsentState {
            address: USER.into(),
            channel: Channel::Sms,
            sender_scope: scope.into(),
            status,
            source,
            decided_at: at,
            updated_at: at,
            keyword: None,
            event_ref: None,
        }
    }

    fn gate(local: Vec<ConsentState>, registry: Vec<ConsentState>) -> ConsentGate {
        let table = |topic, entries: Vec<ConsentState>| {
            GlobalTable::from_entries(topic, entries.into_iter().map(|e| (e.key(), e)))
        };
        ConsentGate::from_tables(
            table(topics::CONSENT, local),
            table(topics::CONSENT_REGISTRY, registry),
        )
    }

    use ComplianceSource::{Keyword, Registry};
    use ConsentStatus::{OptedIn, OptedOut, Pending};

    #[test]
    fn a_newer_local_stop_beats_an_older_registry_opt_in() {
        let gate = gate(
            vec![entry(ANY_SCOPE, OptedOut, Keyword, 2_000)],
            vec![entry(ANY_SCOPE, OptedIn, Registry, 1_000)],
        );
        let d = gate
            .effective(Channel::Sms, USER, NUMBER)
            .expect("decision");
        assert_eq!((d.status, d.source), (OptedOut, Keyword));
        assert!(!gate.check(Channel::Sms, USER, NUMBER, false).is_allowed());
    }

    #[test]
    fn a_newer_registry_opt_in_beats_an_older_local_stop() {
        let gate = gate(
            vec![entry(ANY_SCOPE, OptedOut, Keyword, 1_000)],
            vec![entry(ANY_SCOPE, OptedIn, Registry, 2_000)],
        );
        let d = gate
            .effective(Channel::Sms, USER, NUMBER)
            .expect("decision");
        assert_eq!((d.status, d.source), (OptedIn, Registry));
        assert!(gate.check(Channel::Sms, USER, NUMBER, true).is_allowed());
    }

    #[test]
    fn an_opt_out_wins_a_tie_whatever_the_order() {
        for (local, registry) in [(OptedOut, OptedIn), (OptedIn, OptedOut)] {
            let gate = gate(
                vec![entry(ANY_SCOPE, local, Keyword, 5)],
                vec![entry(ANY_SCOPE, registry, Registry, 5)],
            );
            let d = gate
                .effective(Channel::Sms, USER, NUMBER)
                .expect("decision");
            assert_eq!(d.status, OptedOut);
        }
    }

    #[test]
    fn the_sender_scope_and_the_wildcard_both_apply_but_other_scopes_do_not() {
        let other = "MG00000000000000000000000000000000";
        let gate = gate(
            vec![
                entry(NUMBER, OptedOut, Keyword, 3),
                entry(ANY_SCOPE, OptedIn, Keyword, 2),
            ],
            vec![entry(other, OptedOut, Registry, 9)],
        );
        assert_eq!(
            gate.effective(Channel::Sms, USER, NUMBER).map(|d| d.status),
            Some(OptedOut)
        );
        assert_eq!(
            gate.effective(Channel::Sms, USER, "+14155550111")
                .map(|d| d.status),
            Some(OptedIn)
        );
        assert_eq!(
            gate.effective(Channel::Sms, USER, other).map(|d| d.status),
            Some(OptedOut)
        );
    }

    #[test]
    fn channels_are_separate() {
        let gate = gate(vec![entry(ANY_SCOPE, OptedOut, Keyword, 1)], vec![]);
        assert!(gate.effective(Channel::Whatsapp, USER, NUMBER).is_none());
        assert!(
            gate.check(Channel::Whatsapp, USER, NUMBER, false)
                .is_allowed()
        );
        assert!(
            !gate
                .check(Channel::Whatsapp, USER, NUMBER, true)
                .is_allowed()
        );
    }

    #[test]
    fn chat_and_voice_are_not_gated() {
        let gate = gate(vec![], vec![]);
        assert!(
            gate.check(Channel::Chat, "user-1", NUMBER, true)
                .is_allowed()
        );
        assert!(gate.check(Channel::Voice, USER, NUMBER, true).is_allowed());
        assert_eq!(consent_key(Channel::Chat, "user-1", ANY_SCOPE), None);
    }

    #[test]
    fn verdicts_follow_the_policy() {
        let at = |status| Some(Arc::new(entry(ANY_SCOPE, status, Keyword, 1)));
        assert!(verdict(at(OptedIn), true).is_allowed());
        assert!(!verdict(at(OptedOut), false).is_allowed());
        assert!(verdict(at(Pending), false).is_allowed());
        assert!(!verdict(at(Pending), true).is_allowed());
        assert!(verdict(None, false).is_allowed());
        assert_eq!(
            verdict(None, true),
            Verdict::Blocked {
                status: ConsentStatus::Unknown,
                decision: None
            }
        );
    }

    #[test]
    fn keys_follow_the_topic_contract() {
        assert_eq!(
            consent_key(Channel::Whatsapp, USER, ANY_SCOPE).as_deref(),
            Some("whatsapp:+14155550100|*")
        );
        let e = entry(NUMBER, OptedIn, Keyword, 1);
        assert_eq!(consent_key(Channel::Sms, USER, NUMBER), Some(e.key()));
    }
}
