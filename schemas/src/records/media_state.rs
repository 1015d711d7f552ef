//! `si.media.state.v1`: `schemas/avro/media_state.avsc` (internal changelog of the media stage).

use serde::{Deserialize, Serialize};

use super::Channel;

/// The media stage's queue of one conversation, under `conv|<conversation
/// id>`: events whose media are still to be copied, oldest first. The entry's
/// timer is when the stage next looks whether the first one's download is done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaState {
    /// The conversation.
    pub conversation_id: String,
    /// Events whose media are still to be copied, oldest first.
    #[serde(default)]
    pub jobs: Vec<MediaJob>,
}

crate::avro_record!(MediaState, "media_state.avsc");

/// The media of one source event to copy, with what the `MEDIA_STORED` event
/// repeats of the source event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaJob {
    /// `event_id` of the source event.
    pub source_event_id: String,
    /// The message (`SM`/`MM`/`IM`) or recording (`RE`) SID.
    pub source_sid: String,
    /// The call of a recording.
    pub call_sid: Option<String>,
    /// The Si session.
    pub session_id: String,
    /// Channel of the source event.
    pub channel: Channel,
    /// `EventSource` symbol of the source event.
    pub source: String,
    /// Locale of the source event.
    pub locale: String,
    /// `LocaleSource` symbol of the source event.
    pub locale_source: String,
    /// The Twilio account of the source event.
    pub account_sid: Option<String>,
    /// `webhook_id` of the source event.
    pub webhook_id: String,
    /// `dedup_key` of the source event.
    pub dedup_key: String,
    /// `occurred_at` of the source event (ms since the epoch).
    pub occurred_at: i64,
    /// `received_at` of the source event (ms since the epoch).
    pub received_at: i64,
    /// Conversations chat service (`IS…`) of Conversations media, when known.
    pub chat_service_sid: Option<String>,
    /// The items, in the source's order.
    #[serde(default)]
    pub items: Vec<MediaJobItem>,
}

/// One media item as the source event names it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MediaJobItem {
    /// Media or Recording SID.
    pub sid: Option<String>,
    /// URL to fetch it from.
    pub url: Option<String>,
    /// Declared MIME type.
    pub content_type: Option<String>,
    /// Declared size.
    pub size_bytes: Option<i64>,
    /// Original file name.
    pub filename: Option<String>,
}
