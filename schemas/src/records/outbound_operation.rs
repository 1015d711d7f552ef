//! `twilio.outbound.v1`: `schemas/avro/outbound_operation.avsc`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Channel;

/// One Twilio REST API call egress must make: send one message part, create a
/// conversation or call, add a participant, close a conversation. Keyed by
/// `sender_key`, so all work of one sender is in one partition: per-sender
/// rate limits hold across egress replicas, and since a conversation always
/// uses the same sender, per-conversation order is kept. Egress ends every
/// operation with exactly one `twilio.delivery.v1` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundOperation {
    /// Deterministic id derived from the producing input (e.g. `response_id` +
    /// `part_index`); egress's dedup ledger uses it to never resend what Twilio accepted.
    pub operation_id: String,
    /// Conversation the operation belongs to.
    pub conversation_id: String,
    /// The REST call to make.
    pub kind: OperationKind,
    /// Channel of the recipient.
    pub channel: Channel,
    /// The sending identity, equal to the Kafka key: the messaging service SID
    /// (`MG…`) or our sending address with its channel, e.g. `whatsapp:+14155550100`.
    pub sender_key: String,
    /// Recipient in E.164 without prefix.
    pub to: Option<String>,
    /// Sending address in E.164 without prefix; `None` when
    /// `messaging_service_sid` selects the sender.
    pub from: Option<String>,
    /// Messaging Service SID (`MG…`) to send through.
    pub messaging_service_sid: Option<String>,
    /// Text of this part, already within channel limits (at most 1600 characters).
    pub body: Option<String>,
    /// Media URLs to attach (at most 10), each fetchable by Twilio.
    #[serde(default)]
    pub media_urls: Vec<String>,
    /// Approved content template SID (`HX…`), e.g. for WhatsApp outside the 24-hour window.
    pub content_sid: Option<String>,
    /// Template variables as the JSON object text Twilio expects.
    pub content_variables_json: Option<String>,
    /// The `CognitionResponse` this part belongs to; `None` for adapter-originated operations.
    pub response_id: Option<String>,
    /// 0-based index of this part among `part_count` parts; 0 for single operations.
    pub part_index: i32,
    /// Number of parts the response was split into; 1 for single operations.
    pub part_count: i32,
    /// SMS segments Twilio bills for this part's body, sent as a message of its
    /// own: computed by segment the way Twilio's segment calculator counts
    /// (`si_segment::measure`). A response in several parts costs the sum of its
    /// parts' segments, not the count of its whole text. `None` for non-SMS and
    /// for parts without a body. Egress paces long codes by it.
    pub segments: Option<i32>,
    /// SMS encoding of `body`; `None` for other channels.
    pub encoding: Option<TextEncoding>,
    /// Why a template is sent instead of free text (e.g. `WHATSAPP_WINDOW_CLOSED`).
    pub template_reason: Option<String>,
    /// Call parameters for CREATE_CALL.
    pub call: Option<CallRequest>,
    /// Extra Twilio request parameters, sent as-is (e.g. `ValidityPeriod`).
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// When the operation was produced (ms since the epoch).
    pub created_at: i64,
    /// Do not send after this time (ms since the epoch): egress ends the
    /// operation without sending. `None` for no deadline.
    pub not_after: Option<i64>,
    /// W3C Trace Context `traceparent` of the trace this record belongs to.
    pub traceparent: Option<String>,
}

crate::avro_record!(OutboundOperation, "outbound_operation.avsc");

avro_enum! {
    /// The Twilio REST call an [`OutboundOperation`] makes.
    pub enum OperationKind (default Unknown) {
        /// `POST /v1/Conversations/{conversation}/Messages`.
        SendConversationMessage = "SEND_CONVERSATION_MESSAGE",
        /// Programmable Messaging `POST …/Messages.json`.
        SendMessage = "SEND_MESSAGE",
        /// `POST /v1/Conversations`.
        CreateConversation = "CREATE_CONVERSATION",
        /// `POST /v1/Conversations/{conversation}/Participants`.
        AddParticipant = "ADD_PARTICIPANT",
        /// `POST /v1/Conversations/{conversation}` with `State=closed`.
        CloseConversation = "CLOSE_CONVERSATION",
        /// `POST …/Calls.json` with `call`.
        CreateCall = "CREATE_CALL",
        /// `POST …/Calls/{CallSid}.json` with `Status=completed`: hang up the
        /// call `params["si.call_sid"]`.
        EndCall = "END_CALL",
        /// A symbol newer than this build (the default); dead-lettered.
        Unknown = "UNKNOWN",
    }
}

avro_enum! {
    /// SMS character encoding.
    pub enum TextEncoding (default Unknown) {
        /// GSM 03.38 7-bit: 160 characters in one segment, 153 per concatenated segment.
        Gsm7 = "GSM7",
        /// UCS-2: 70 UTF-16 units in one segment, 67 per concatenated segment.
        Ucs2 = "UCS2",
        /// Not known, or a symbol newer than this build (the default).
        Unknown = "UNKNOWN",
    }
}

/// Parameters of an outbound call (`POST …/Calls.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRequest {
    /// Our TwiML endpoint Twilio requests when the call connects (`Url`); it
    /// carries the conversation id.
    pub twiml_url: String,
    /// Where Twilio posts call status (`StatusCallback`).
    pub status_callback_url: Option<String>,
    /// Whether to request recording of the call (`Record`).
    pub record: bool,
    /// Seconds to let the phone ring (`Timeout`); `None` for Twilio's default.
    pub timeout_seconds: Option<i32>,
    /// `MachineDetection` value (`Enable` or `DetectMessageEnd`).
    pub machine_detection: Option<String>,
}

/// `params` entry naming the sending priority of a message (`LOW`, `NORMAL`,
/// `HIGH`); `HIGH` makes it urgent for delivery remediation. Never sent to Twilio.
pub const PRIORITY_PARAM: &str = "si.priority";

/// `params` entry of a resend by delivery remediation: the `operation_id` of
/// the chain's first operation. Never sent to Twilio.
pub const RESEND_OF_PARAM: &str = "si.resend_of";
