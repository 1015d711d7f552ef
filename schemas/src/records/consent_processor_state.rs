//! `si.consent.state.v1`: `schemas/avro/consent_processor_state.avsc` (internal changelog of consent).

use serde::{Deserialize, Serialize};

use super::{Channel, ConsentState};

/// One entry of the consent stage's state store (key `d|<consent key>` for a
/// decision, `c|<conversation id>` for a conversation's user, `r|<conversation
/// id>` for its inbound rate account). `kind` says which payload field is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentProcessorState {
    /// Which payload field is set.
    pub kind: ConsentProcessorStateKind,
    /// Set for DECISION: the decision exactly as published to `si.consent.v1`.
    pub decision: Option<ConsentState>,
    /// Set for CONTACT.
    pub contact: Option<ConversationContact>,
    /// Set for RATE.
    #[serde(default)]
    pub rate: Option<RateAccount>,
}

crate::avro_record!(ConsentProcessorState, "consent_processor_state.avsc");

avro_enum! {
    /// Which payload a consent state entry carries.
    pub enum ConsentProcessorStateKind (default Unknown) {
        /// A consent decision (`decision`).
        Decision = "DECISION",
        /// The user of a conversation (`contact`).
        Contact = "CONTACT",
        /// The inbound rate limit's account of a conversation (`rate`).
        Rate = "RATE",
        /// A symbol newer than this build (the default); ignored.
        Unknown = "UNKNOWN",
    }
}

/// The user address of a conversation, as last seen on an inbound message or
/// participant change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationContact {
    /// The conversation id.
    pub conversation_id: String,
    /// The user's address in E.164 without prefix.
    pub address: String,
    /// Channel of the user's address.
    pub channel: Channel,
    /// Our address the user talks to (E.164 without prefix), when known.
    pub proxy_address: Option<String>,
    /// Locale (BCP 47) of the user's latest message, when known.
    pub locale: Option<String>,
    /// Timestamp of the latest record that updated this entry (ms since the epoch).
    pub last_seen_at: i64,
}

/// The inbound rate limit's account of one conversation (GCRA over the
/// messages' receive times).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateAccount {
    /// The GCRA's theoretical arrival time (ms since the epoch): the
    /// allowance is whole again then.
    pub theoretical_arrival_at: i64,
    /// Receive time of the first message held back in the current flood;
    /// `None` when there is none.
    #[serde(default)]
    pub limited_since: Option<i64>,
    /// Messages held back in the current flood.
    #[serde(default)]
    pub held_back: i32,
}
