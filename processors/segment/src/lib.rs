//! Segmentation core of the Si Twilio channel: turns a cognition response into
//! the messages Twilio will accept and a person reads well. Pure functions, no
//! I/O: the segment processor ([`stage`], binary `si-segment`) calls [`plan`]
//! per `si.responses.v1` record and turns each [`Part`] into one
//! `twilio.outbound.v1` operation ([`Part::apply_to`]); `sictl segment` prints
//! the same plan. [`stage`] is the only module that touches Kafka (through the
//! stream runner).
//!
//! ```
//! use si_segment::{Response, SegmentConfig, Timing, plan};
//! use si_schemas::records::Channel;
//!
//! let config = SegmentConfig::default();
//! let timing = Timing { now_ms: 0, last_inbound_ms: None };
//! let plan = plan(&Response::text("It’s “fine”.", Channel::Sms), timing, &config).unwrap();
//! assert_eq!(plan.parts[0].body.as_deref(), Some("It's \"fine\"."));
//! assert_eq!(plan.parts[0].segments, Some(1));
//! ```
//!
//! # Normalized text
//!
//! The parts are cut from the *normalized text*:
//!
//! 1. leading and trailing whitespace removed (whitespace = grapheme clusters
//!    made of Unicode `White_Space` characters only);
//! 2. on SMS with smart encoding on: look-alike characters replaced
//!    ([`lookalike`]) if, and only if, the result is GSM-7 as a whole; then step 1
//!    again.
//!
//! Nothing else changes: inner whitespace, line breaks and every other character
//! stay. Each part's body, without its numbering and truncation marker, is a
//! slice of the normalized text; between two consecutive slices lies only
//! whitespace (dropped: a message neither starts nor ends with blanks), and the
//! slices cover the whole text, or a prefix of it when truncated.
//!
//! # Limits
//!
//! | channel  | per message                                                        | media per message |
//! |----------|--------------------------------------------------------------------|-------------------|
//! | SMS      | 1600 UTF-16 units and 10 segments (configurable)                   | 10                |
//! | WhatsApp | 1600 UTF-16 units, no segments                                     | 1                 |
//! | Chat     | 32 000 UTF-8 bytes                                                 | 10                |
//!
//! Sources: Twilio's 1600-character body limit for Programmable Messaging and
//! Conversations SMS/WhatsApp (error 21617; its description says emoji may count
//! as several characters, so UTF-16 units are counted, which is never less than
//! code points); Twilio's advice to stay within 10 segments (long UCS-2 messages
//! may be rejected by carriers, 30019); Conversations Limits: outbound body
//! "Chat: 32KB"; MMS takes at most 10 `MediaUrl`; "a WhatsApp media message can
//! only contain one media attachment".
//!
//! A response's budget is `max_parts` text parts (cognition's hint, else the
//! configured default; never above `hard_max_parts`) and, for SMS, optionally a
//! number of segments. Beyond it the response is sent whole (`split`) or cut to
//! fit with the truncation marker (`truncate`); cognition's `allow_truncation`
//! decides, the configured behaviour applies when it is absent. Beyond
//! `hard_max_parts` the text is always truncated, so no response floods a user.
//! Media-only parts do not count as text parts.

pub mod billing;
mod breaks;
pub mod config;
pub mod encoding;
pub mod gsm7;
pub mod lookalike;
mod plan;
pub mod pricing;
pub mod remedy;
mod split;
pub mod stage;
pub mod window;

pub use config::{MediaPlacement, Numbering, OverBudget, SegmentArgs, SegmentConfig};
pub use encoding::{Encoding, Measurement, measure};
pub use plan::{Part, Plan, Response, Timing, Trimmed, normalize, plan};
pub use window::{WINDOW_CLOSED_REASON, WindowState, whatsapp_window};

/// Why a response cannot be turned into parts. None is retriable: the same
/// input fails the same way, so the processor dead-letters it with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The channel carries no text messages (voice, unknown).
    #[error("channel {0} has no text messages")]
    UnsupportedChannel(String),
    /// No text and no media.
    #[error("nothing to send: the response has no text and no media")]
    Empty,
    /// A media reference without a URL Twilio can fetch.
    #[error("media item {index} has no URL")]
    MediaWithoutUrl {
        /// Position in the response's media list.
        index: usize,
    },
    /// WhatsApp window closed and no template configured.
    #[error("the WhatsApp 24-hour window is closed and no template is configured")]
    NoTemplate,
    /// A single grapheme cluster longer than a whole message.
    #[error("the grapheme cluster at byte {offset} does not fit in one message")]
    ClusterTooLong {
        /// Byte offset in the normalized text.
        offset: usize,
    },
    /// Invalid configuration.
    #[error("invalid segment configuration: {0}")]
    Config(String),
    /// A part came out beyond the channel limits: a bug in this crate.
    #[error("internal segmentation error: {0}")]
    Internal(String),
}

impl Error {
    /// Whether retrying the same input can succeed: never.
    #[must_use]
    pub const fn is_retriable(&self) -> bool {
        false
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
