//! `twilio.outbound.dlq.v1`: `schemas/avro/outbound_dead_letter.avsc`.

use serde::{Deserialize, Serialize};

use super::OutboundOperation;

/// An outbound operation egress gave up on, with the reason, for inspection
/// and replay. Replaying puts `operation` unchanged back on
/// `twilio.outbound.v1`; its `operation_id` keeps the replay idempotent. A
/// DEAD_LETTERED record on `twilio.delivery.v1` reports the same operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundDeadLetter {
    /// The operation exactly as read from `twilio.outbound.v1`.
    pub operation: OutboundOperation,
    /// Why egress gave up, human-readable and without secrets.
    pub reason: String,
    /// Twilio error code of the last attempt, if any.
    pub error_code: Option<i32>,
    /// HTTP status of the last attempt, if any.
    pub http_status: Option<i32>,
    /// Requests egress made to Twilio for this operation.
    pub attempts: i32,
    /// When egress first handled the operation (ms since the epoch).
    pub first_attempt_at: i64,
    /// When egress gave up (ms since the epoch).
    pub dead_lettered_at: i64,
}

crate::avro_record!(OutboundDeadLetter, "outbound_dead_letter.avsc");
