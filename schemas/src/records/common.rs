//! Types shared by several topic schemas (each `.avsc` defines them inline, identically).

use serde::{Deserialize, Serialize};

avro_enum! {
    /// Channel of an address or message. Addresses are always stored as E.164
    /// (e.g. `+14155550100`) without a channel prefix; this says which channel
    /// they belong to.
    pub enum Channel (default Unknown) {
        /// SMS/MMS (Programmable Messaging or a Conversations SMS binding).
        Sms = "SMS",
        /// WhatsApp through Twilio.
        Whatsapp = "WHATSAPP",
        /// A phone call.
        Voice = "VOICE",
        /// A Conversations chat (SDK) participant without a phone address.
        Chat = "CHAT",
        /// Not known, or a symbol newer than this build (the default).
        Unknown = "UNKNOWN",
    }
}

impl Channel {
    /// The lower-case prefix used in Kafka keys and sender keys
    /// (`sms:+14155550100`, `whatsapp:+14155550100`).
    #[must_use]
    pub const fn key_prefix(self) -> &'static str {
        match self {
            Self::Sms => "sms",
            Self::Whatsapp => "whatsapp",
            Self::Voice => "voice",
            Self::Chat => "chat",
            Self::Unknown => "unknown",
        }
    }

    /// The key of an address on this channel: `<channel>:<E.164>`, e.g.
    /// `sms:+14155550100` (the key of si.identity.v1 and si.compliance.v1).
    #[must_use]
    pub fn address_key(self, e164: &str) -> String {
        format!("{}:{e164}", self.key_prefix())
    }
}

/// Reference to one media item (image, audio, video, document) of a message.
/// Media bytes are never inlined in Kafka: fetch them by SID (Conversations
/// Media API) or URL with the Twilio account's credentials.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MediaRef {
    /// Twilio Media SID (`ME…`) for Conversations media; `None` for Programmable
    /// Messaging media, which only has a URL.
    pub sid: Option<String>,
    /// URL of the media (Programmable Messaging `MediaUrl{N}`, or a URL outbound
    /// media is served from); may require Twilio HTTP basic auth. `None` when
    /// only the SID is known.
    pub url: Option<String>,
    /// MIME type as reported by Twilio, e.g. `image/jpeg`.
    pub content_type: Option<String>,
    /// Size in bytes, when Twilio reports it.
    pub size_bytes: Option<i64>,
    /// Original file name, when Twilio reports it.
    pub filename: Option<String>,
}

/// A place the user shared (a WhatsApp location message), in WGS 84 degrees.
/// Shared by `si.conversation.events.v1`, `si.inbound.v1` and
/// `si.transcript.v1`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Location {
    /// Degrees north, -90 to 90.
    pub latitude: f64,
    /// Degrees east, -180 to 180.
    pub longitude: f64,
    /// The place's address, when given.
    pub address: Option<String>,
    /// The place's name, when given.
    pub label: Option<String>,
}

// Coordinates are finite (normalize takes no other), so equality is total.
impl Eq for Location {}

/// A media item as copied into Si's object storage by the media stage (or why
/// it could not be copied). Shared by `si.conversation.events.v1`
/// (`MEDIA_STORED`) and `si.transcript.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StoredMedia {
    /// Position of the item in its message's media list; 0 for a recording.
    pub index: i32,
    /// Whether the item was copied.
    pub status: MediaStorageStatus,
    /// Why the item is unavailable; `None` when stored.
    #[serde(default)]
    pub unavailable_reason: Option<MediaUnavailableReason>,
    /// Human-readable detail of an unavailable item; never credentials.
    #[serde(default)]
    pub detail: Option<String>,
    /// Media SID (`ME…`) or Recording SID (`RE…`), when known.
    #[serde(default)]
    pub twilio_sid: Option<String>,
    /// The Twilio URL the item was fetched from (for audit).
    #[serde(default)]
    pub twilio_url: Option<String>,
    /// Key of the object in the media store; `None` unless stored.
    #[serde(default)]
    pub object_key: Option<String>,
    /// MIME type of the stored bytes.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Size in bytes.
    #[serde(default)]
    pub size_bytes: Option<i64>,
    /// SHA-256 of the stored bytes, lower-case hex.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Original file name, when Twilio reports it.
    #[serde(default)]
    pub filename: Option<String>,
}

avro_enum! {
    /// Whether a media item was copied into Si's object storage.
    pub enum MediaStorageStatus (default Unknown) {
        /// The bytes are in the object store.
        Stored = "STORED",
        /// Not copied; the reason says why. The message went through.
        Unavailable = "UNAVAILABLE",
        /// A symbol newer than this build (the default).
        Unknown = "UNKNOWN",
    }
}

avro_enum! {
    /// Why a media item was not copied.
    pub enum MediaUnavailableReason (default Unknown) {
        /// Larger than the per-item limit.
        TooLarge = "TOO_LARGE",
        /// The message's items together would exceed the per-message limit.
        MessageTooLarge = "MESSAGE_TOO_LARGE",
        /// A content type outside the allow-list.
        RefusedType = "REFUSED_TYPE",
        /// Twilio answered 404 or 410.
        NotFound = "NOT_FOUND",
        /// Every attempt failed (5xx, 429, timeouts, refused credentials).
        FetchFailed = "FETCH_FAILED",
        /// No URL to fetch it from.
        NoSource = "NO_SOURCE",
        /// More items than the stage copies per message.
        TooMany = "TOO_MANY",
        /// A symbol newer than this build (the default).
        Unknown = "UNKNOWN",
    }
}

avro_enum! {
    /// Consent of an address to receive messages from a sender scope.
    /// Never treat [`ConsentStatus::Unknown`] as opted in.
    pub enum ConsentStatus (default Unknown) {
        /// Explicit opt-in (START/YES/UNSTOP keyword, Consent Registry or API).
        OptedIn = "OPTED_IN",
        /// Opted out (STOP and equivalents, registry, API, or Twilio error 21610);
        /// nothing but the opt-out confirmation may be sent.
        OptedOut = "OPTED_OUT",
        /// Contact seen, no explicit decision yet.
        Pending = "PENDING",
        /// No information, or a symbol newer than this build (the default).
        Unknown = "UNKNOWN",
    }
}

avro_enum! {
    /// Where a compliance decision or event came from.
    pub enum ComplianceSource (default Unknown) {
        /// A consent keyword or a revocation phrase in an inbound message (STOP,
        /// START, HELP and their equivalents; `opt out`, `please stop`…).
        Keyword = "KEYWORD",
        /// The upstream Consent Registry.
        Registry = "REGISTRY",
        /// An operator or another Si system (command or API).
        Api = "API",
        /// An error Twilio returned on send (e.g. 21610, recipient opted out at Twilio).
        TwilioError = "TWILIO_ERROR",
        /// The first inbound message from an address.
        FirstContact = "FIRST_CONTACT",
        /// A choice made on a call (e.g. accepting or declining recording).
        VoiceIvr = "VOICE_IVR",
        /// The adapter's inbound rate limit (the user of a conversation wrote
        /// faster than it allows).
        RateLimit = "RATE_LIMIT",
        /// Not known, or a symbol newer than this build (the default).
        Unknown = "UNKNOWN",
    }
}

/// Whether `address` is an E.164 number as addresses are stored here (no
/// channel prefix): `+`, a non-zero digit, 7 to 15 digits in all.
#[must_use]
pub fn is_e164(address: &str) -> bool {
    address.strip_prefix('+').is_some_and(|digits| {
        (7..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0')
    })
}
