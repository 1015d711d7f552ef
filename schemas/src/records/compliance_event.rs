//! `si.compliance.v1`: `schemas/avro/compliance_event.avsc`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Channel, ComplianceSource};

/// An auditable compliance fact about an address: consent given or withdrawn,
/// HELP answered, a message blocked for lack of consent, recording disclosure
/// accepted or declined. Append-only audit log kept for years; the current
/// consent per address is `si.consent.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComplianceEvent {
    /// Deterministic id derived from the triggering record, so reprocessing
    /// never duplicates an audit entry.
    pub event_id: String,
    /// The compliance fact.
    pub kind: ComplianceEventKind,
    /// Where it came from.
    pub source: ComplianceSource,
    /// The subject address in E.164 without prefix.
    pub address: String,
    /// Channel of the address.
    pub channel: Channel,
    /// Sender the fact applies to: messaging service SID (`MG…`), our sending
    /// address (E.164), or `*` for every sender; `None` when not sender-specific.
    pub sender_scope: Option<String>,
    /// Conversation in which it happened, if any.
    pub conversation_id: Option<String>,
    /// What triggered it: a message SID, an `operation_id` or a `response_id`.
    pub message_ref: Option<String>,
    /// The keyword or revocation phrase exactly as the user sent it (e.g.
    /// `Stop`, `opt out`); for `POSSIBLE_REVOCATION` the matched words, folded.
    pub keyword: Option<String>,
    /// Locale of the confirmation sent to the user, if one was sent (BCP 47).
    pub locale: Option<String>,
    /// When it happened (ms since the epoch).
    pub at: i64,
    /// Further audit facts as name/value pairs.
    #[serde(default)]
    pub details: BTreeMap<String, String>,
}

crate::avro_record!(ComplianceEvent, "compliance_event.avsc");

avro_enum! {
    /// The compliance fact a [`ComplianceEvent`] records.
    pub enum ComplianceEventKind (default Unknown) {
        /// Consent given.
        OptIn = "OPT_IN",
        /// Consent withdrawn.
        OptOut = "OPT_OUT",
        /// Help requested (and answered).
        Help = "HELP",
        /// An inbound message was not forwarded for consent or policy reasons.
        BlockedInbound = "BLOCKED_INBOUND",
        /// A message was not sent because the recipient has not consented.
        BlockedOutbound = "BLOCKED_OUTBOUND",
        /// The call recording disclosure was played to the caller.
        RecordingDisclosed = "RECORDING_DISCLOSED",
        /// The caller declined recording, or gave no answer (`details.answer`).
        RecordingDeclined = "RECORDING_DECLINED",
        /// An inbound message may revoke consent (a revocation word in a
        /// longer message) and was forwarded with `possible_revocation` set,
        /// not acted on.
        PossibleRevocation = "POSSIBLE_REVOCATION",
        /// The caller accepted recording and transcription.
        RecordingAccepted = "RECORDING_ACCEPTED",
        /// A symbol newer than this build (the default).
        Unknown = "UNKNOWN",
    }
}
