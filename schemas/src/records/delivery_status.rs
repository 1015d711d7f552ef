//! `twilio.delivery.v1`: `schemas/avro/delivery_status.avsc`.

use serde::{Deserialize, Serialize};

/// The single terminal outcome of one `OutboundOperation`, written by egress:
/// every `operation_id` gets exactly one with `remediation` `None`, so nothing
/// is dropped silently. Segment's delivery remediation writes further records
/// (`remediation` set), one per decision. Keyed by conversation id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryStatus {
    /// The `OutboundOperation` this is the outcome of.
    pub operation_id: String,
    /// Conversation of the operation; the Kafka key.
    pub conversation_id: String,
    /// How the operation ended.
    pub outcome: DeliveryOutcome,
    /// SID Twilio assigned when ACCEPTED.
    pub twilio_sid: Option<String>,
    /// SMS segments of the sent message (one part of a response): Twilio's own
    /// `num_segments` when its answer carried one, else segment's count for the
    /// part (`OutboundOperation.segments`); `None` when the message was not
    /// accepted or is not an SMS.
    pub segments: Option<i32>,
    /// Twilio error code of the last attempt, when there was one.
    pub error_code: Option<i32>,
    /// Twilio's error message, or egress's reason for BLOCKED and DEAD_LETTERED.
    pub error_message: Option<String>,
    /// Requests egress made to Twilio for this operation (0 when it never called Twilio).
    pub attempts: i32,
    /// The operation's `response_id`, copied for convenience.
    pub response_id: Option<String>,
    /// The operation's `part_index`, copied for convenience.
    pub part_index: Option<i32>,
    /// The operation's `part_count`, copied (null in older records).
    #[serde(default)]
    pub part_count: Option<i32>,
    /// The operation's kind, copied (null in older records and command answers).
    #[serde(default)]
    pub kind: Option<super::OperationKind>,
    /// The text sent in this operation, exactly as sent.
    #[serde(default)]
    pub body: Option<String>,
    /// For a resend by segment's remediation: the chain's first operation.
    #[serde(default)]
    pub resend_of: Option<String>,
    /// Set only on segment's remediation records.
    #[serde(default)]
    pub remediation: Option<Remediation>,
    /// When egress reached the outcome (ms since the epoch).
    pub at: i64,
    /// Only on voice-link's answer to an `ESCALATE_TO_VOICE` it scheduled
    /// for later: when the call will be placed (ms since the epoch).
    #[serde(default)]
    pub scheduled_at: Option<i64>,
    /// The `event_id` of the compliance event written in the same
    /// transaction as this outcome (egress's BLOCKED_OUTBOUND or 21610
    /// OPT_OUT, voice-link's BLOCKED_OUTBOUND), if any.
    #[serde(default)]
    pub compliance_event_id: Option<String>,
}

/// A decision of segment's delivery remediation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remediation {
    /// The first operation of the chain.
    pub origin_operation_id: String,
    /// Remediations decided in the chain so far, this one included.
    pub attempt: i32,
    /// The decision.
    pub action: RemediationAction,
    /// The resend's operation id.
    #[serde(default)]
    pub next_operation_id: Option<String>,
    /// Channel of the resend.
    #[serde(default)]
    pub channel: Option<super::Channel>,
    /// RETRY_LATER: when the resend is written (ms since the epoch).
    #[serde(default)]
    pub not_before: Option<i64>,
    /// The chain's last record.
    pub terminal: bool,
    /// Why, for people.
    pub reason: String,
}

avro_enum! {
    /// What delivery remediation decided.
    pub enum RemediationAction (default Unknown) {
        /// The same message again after a delay.
        RetryLater = "RETRY_LATER",
        /// The approved WhatsApp template instead of the text.
        ResendAsTemplate = "RESEND_AS_TEMPLATE",
        /// An urgent message on the user's other channel.
        FallbackChannel = "FALLBACK_CHANNEL",
        /// Nothing more is tried (terminal).
        GiveUp = "GIVE_UP",
        /// A resend of the chain was delivered (terminal).
        Recovered = "RECOVERED",
        /// A symbol newer than this build (the default).
        Unknown = "UNKNOWN",
    }
}

crate::avro_record!(DeliveryStatus, "delivery_status.avsc");

impl DeliveryStatus {
    /// The answer to a command (not an operation) on `twilio.delivery.v1`:
    /// `operation_id` is the stage's id for the command, nothing was sent.
    #[must_use]
    pub fn command_answer(
        operation_id: String,
        conversation_id: String,
        outcome: DeliveryOutcome,
        message: Option<String>,
        at: i64,
    ) -> Self {
        Self {
            operation_id,
            conversation_id,
            outcome,
            twilio_sid: None,
            segments: None,
            error_code: None,
            error_message: message,
            attempts: 0,
            response_id: None,
            part_index: None,
            part_count: None,
            kind: None,
            body: None,
            resend_of: None,
            remediation: None,
            at,
            scheduled_at: None,
            compliance_event_id: None,
        }
    }
}

avro_enum! {
    /// Terminal outcome of an outbound operation.
    pub enum DeliveryOutcome (default Unknown) {
        /// Twilio accepted the request (`twilio_sid` set); carrier delivery is
        /// reported later as DELIVERY_UPDATED on `si.conversation.events.v1`.
        Accepted = "ACCEPTED",
        /// Twilio rejected it permanently (`error_code` set).
        Failed = "FAILED",
        /// Egress gave up; the operation is on `twilio.outbound.dlq.v1`.
        DeadLettered = "DEAD_LETTERED",
        /// Egress refused to send (consent re-check or policy) without calling Twilio.
        Blocked = "BLOCKED",
        /// A symbol newer than this build (the default).
        Unknown = "UNKNOWN",
    }
}
