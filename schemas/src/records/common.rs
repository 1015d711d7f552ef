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
