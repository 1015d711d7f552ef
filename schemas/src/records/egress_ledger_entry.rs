//! `twilio.egress.ledger.v1`: `schemas/avro/egress_ledger_entry.avsc`.

use serde::{Deserialize, Serialize};

use super::DeliveryOutcome;

/// Internal to egress: Twilio's final answer to one outbound operation,
/// written as soon as Twilio answers so that a restart before the operation's
/// status and offset commit does not resend what Twilio already accepted.
/// Keyed by `operation_id`, written to the operation's partition of
/// `twilio.outbound.v1`; the transaction that commits the status writes its tombstone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressLedgerEntry {
    /// The `OutboundOperation` Twilio answered; the Kafka key.
    pub operation_id: String,
    /// Conversation of the operation.
    pub conversation_id: String,
    /// Twilio's answer: ACCEPTED or FAILED (a permanent error).
    pub outcome: DeliveryOutcome,
    /// SID Twilio assigned when ACCEPTED.
    pub twilio_sid: Option<String>,
    /// SMS segments Twilio reported, when known.
    pub segments: Option<i32>,
    /// Twilio error code when FAILED.
    pub error_code: Option<i32>,
    /// Twilio's error message when FAILED.
    pub error_message: Option<String>,
    /// HTTP status of Twilio's answer.
    pub http_status: Option<i32>,
    /// Requests egress made for the operation up to this answer.
    pub attempts: i32,
    /// When Twilio answered (ms since the epoch).
    pub at: i64,
}

crate::avro_record!(EgressLedgerEntry, "egress_ledger_entry.avsc");
