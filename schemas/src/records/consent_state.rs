//! `si.consent.v1` and `si.consent.registry.v1`: `schemas/avro/consent_state.avsc`.

use serde::{Deserialize, Serialize};

use super::{Channel, ComplianceSource, ConsentStatus};

/// Current consent of one address toward one sender scope, an entry of a
/// compacted table keyed `<channel>:<E.164>|<sender_scope>`. `si.consent.v1` is
/// written by the adapter's consent stage; `si.consent.registry.v1` is the
/// upstream Consent Registry's feed in the same shape. A tombstone erases the
/// entry. Among the entries that apply (both topics; the exact sender scope and
/// `*`), the latest `decided_at` wins, OPTED_OUT on a tie.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentState {
    /// The address in E.164 without prefix.
    pub address: String,
    /// Channel of the address.
    pub channel: Channel,
    /// Sender the decision applies to: messaging service SID (`MG…`), our
    /// sending address (E.164), or `*` for every sender.
    pub sender_scope: String,
    /// The consent decision.
    pub status: ConsentStatus,
    /// Where the decision came from.
    pub source: ComplianceSource,
    /// When the decision was made (ms since the epoch); orders decisions across sources.
    pub decided_at: i64,
    /// When this entry was written (ms since the epoch).
    pub updated_at: i64,
    /// The keyword that caused the decision, for KEYWORD decisions.
    pub keyword: Option<String>,
    /// `event_id` of the `si.compliance.v1` event recording the decision, or the
    /// registry's own reference.
    pub event_ref: Option<String>,
}

crate::avro_record!(ConsentState, "consent_state.avsc");

impl ConsentState {
    /// The Kafka key of this entry: `<channel>:<E.164>|<sender_scope>`.
    #[must_use]
    pub fn key(&self) -> String {
        format!(
            "{}|{}",
            self.channel.address_key(&self.address),
            self.sender_scope
        )
    }
}
