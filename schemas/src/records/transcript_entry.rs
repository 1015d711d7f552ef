//! `si.transcript.v1`: `schemas/avro/transcript_entry.avsc`.

use serde::{Deserialize, Serialize};

use super::{MediaRef, StoredMedia};

/// One entry of a conversation's unified transcript: user and Si messages,
/// final call utterances and system events in one stream per conversation,
/// keyed by conversation id. Partition order, and `sequence`, is the
/// transcript order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TranscriptEntry {
    /// Deterministic id derived from the source event.
    pub entry_id: String,
    /// The conversation (Twilio ConversationSid); the Kafka key.
    pub conversation_id: String,
    /// The Si session bound 1:1 to the conversation.
    pub session_id: String,
    /// Position in the conversation's transcript: strictly increasing per
    /// conversation, gaps allowed.
    pub sequence: i64,
    /// Kind of entry.
    pub modality: Modality,
    /// Direction relative to Si.
    pub direction: Direction,
    /// Who the entry is by.
    pub speaker: TranscriptSpeaker,
    /// Text of the message or utterance.
    pub text: Option<String>,
    /// Media of a message (references only); empty when none.
    #[serde(default)]
    pub media: Vec<MediaRef>,
    /// The recording, for an entry announcing one.
    pub recording: Option<RecordingRef>,
    /// Call (`CA…`) of a VOICE entry or call-related SYSTEM entry.
    pub call_sid: Option<String>,
    /// Twilio message SID of a TEXT entry.
    pub message_sid: Option<String>,
    /// Locale of the text (BCP 47), when known.
    pub locale: Option<String>,
    /// When it was said or sent (ms since the epoch).
    pub at: i64,
    /// What the entry records (null in older entries).
    #[serde(default)]
    pub entry_kind: Option<TranscriptEntryKind>,
    /// Channel the entry happened on (null in older entries).
    #[serde(default)]
    pub channel: Option<super::Channel>,
    /// CALL_ENDED: how the call ended (`connected`, `declined`, `no_answer`,
    /// `busy`, `failed`, `canceled`, `machine`, `ended`).
    #[serde(default)]
    pub call_outcome: Option<String>,
    /// CALL_ENDED: the call's duration (0 when it never connected).
    #[serde(default)]
    pub call_duration_seconds: Option<i32>,
    /// The Twilio SID the entry comes from (message, call, recording or
    /// transcription), for audit.
    #[serde(default)]
    pub source_sid: Option<String>,
    /// MEDIA_STORED: the durable copies (or why they are unavailable), one per
    /// media item of the source message, or one for a recording.
    #[serde(default)]
    pub stored_media: Vec<StoredMedia>,
    /// The place, for a user's message that shared a location (WhatsApp).
    #[serde(default)]
    pub location: Option<super::Location>,
}

crate::avro_record!(TranscriptEntry, "transcript_entry.avsc");

avro_enum! {
    /// What a transcript entry records.
    pub enum TranscriptEntryKind (default Unknown) {
        /// An inbound message, or an outbound one Twilio accepted (one per response).
        Message = "MESSAGE",
        /// A call was answered.
        CallStarted = "CALL_STARTED",
        /// A call ended (or never connected).
        CallEnded = "CALL_ENDED",
        /// A call recording is available.
        Recording = "RECORDING",
        /// A transcribed utterance on a call.
        Utterance = "UTTERANCE",
        /// The media of an earlier message or recording are in Si's object
        /// storage, or unavailable with the reason (`stored_media`).
        MediaStored = "MEDIA_STORED",
        /// A symbol newer than this build (the default).
        Unknown = "UNKNOWN",
    }
}

avro_enum! {
    /// Kind of transcript entry.
    pub enum Modality (default Unknown) {
        /// An SMS, WhatsApp or chat message.
        Text = "TEXT",
        /// An utterance on a call.
        Voice = "VOICE",
        /// An event (call started or ended, recording available, conversation closed).
        System = "SYSTEM",
        /// A symbol newer than this build (the default).
        Unknown = "UNKNOWN",
    }
}

avro_enum! {
    /// Direction relative to Si.
    pub enum Direction (default Unknown) {
        /// From the user.
        Inbound = "INBOUND",
        /// From Si.
        Outbound = "OUTBOUND",
        /// Not applicable (system entries), or a symbol newer than this build (the default).
        Unknown = "UNKNOWN",
    }
}

avro_enum! {
    /// Who a transcript entry is by.
    pub enum TranscriptSpeaker (default Unknown) {
        /// The user.
        User = "USER",
        /// Si (text replies and its voice agent).
        Si = "SI",
        /// The adapter or Twilio (notices, call and recording events).
        System = "SYSTEM",
        /// A symbol newer than this build (the default).
        Unknown = "UNKNOWN",
    }
}

/// Reference to a call recording (audio is not stored in Kafka).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingRef {
    /// Twilio Recording SID (`RE…`).
    pub recording_sid: String,
    /// `RecordingUrl`; fetching it requires the Twilio account's credentials.
    pub url: Option<String>,
    /// Duration in seconds.
    pub duration_seconds: Option<i32>,
}
