//! Configuration of the segmentation, and its flags / environment variables
//! ([`SegmentArgs`]), shared by the segment processor and `sictl segment` so that
//! both produce exactly the same parts.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Serialize;
use si_schemas::records::Channel;

use crate::Error;

/// Twilio's body limit for SMS and WhatsApp through Programmable Messaging and
/// Conversations: 1600 characters (error 21617 above it). Counted here in UTF-16
/// units, so a character outside the BMP (most emoji) counts two, as Twilio's
/// 21617 description says such characters may.
pub const TWILIO_BODY_MAX_CHARS: usize = 1600;

/// Conversations' outbound body limit for chat (SDK) participants: "32KB"
/// (Twilio docs, Conversations Limits). Counted in UTF-8 bytes and taken as
/// 32 000 so that it holds whether KB means 1000 or 1024.
pub const CHAT_BODY_MAX_BYTES: usize = 32_000;

/// Media per Programmable Messaging / MMS message (`MediaUrl`, at most 10).
pub const MMS_MAX_MEDIA: usize = 10;

/// Media per WhatsApp message: one (Twilio: "a WhatsApp media message can only
/// contain one media attachment; additional attachments are ignored").
pub const WHATSAPP_MAX_MEDIA: usize = 1;

/// Where media go among the parts of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaPlacement {
    /// With the first text part; media that do not fit it come as media-only
    /// parts right before it.
    #[default]
    First,
    /// With the last text part; media that do not fit it come as media-only
    /// parts right after it.
    Last,
}

/// What to do when a response needs more parts or segments than its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OverBudget {
    /// Send the whole text in as many parts as it takes (up to `hard_max_parts`).
    #[default]
    Split,
    /// Cut the text to fit the budget and end it with the truncation marker.
    Truncate,
}

/// Part numbering like `(1/3)`, on responses split into two or more text parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Numbering {
    /// No numbering.
    Off,
    /// `(1/3) ` before the text: readable first, also when messages arrive out of order.
    #[default]
    Prefix,
    /// ` (1/3)` after the text.
    Suffix,
}

/// How a channel's body length is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LengthUnit {
    /// UTF-16 code units.
    Utf16,
    /// UTF-8 bytes.
    Utf8Bytes,
}

/// Limits of one message on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ChannelLimits {
    /// Maximum body length, in `unit`.
    pub max_length: usize,
    /// How `max_length` is counted.
    pub unit: LengthUnit,
    /// Maximum SMS segments per message (SMS only).
    pub max_segments_per_message: Option<usize>,
    /// Maximum media per message.
    pub max_media_per_message: usize,
    /// Whether parts are numbered on this channel (with [`SegmentConfig::numbering`]).
    pub numbered: bool,
}

/// An approved WhatsApp template (Content API) sent when the window is closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WhatsappTemplate {
    /// Content SID (`HX…`).
    pub content_sid: String,
    /// Variables as the JSON object text Twilio expects, e.g. `{"1":"Si"}`.
    pub variables_json: String,
}

/// Everything that shapes the parts of a response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SegmentConfig {
    /// Replace look-alike characters so SMS text stays GSM-7 ([`crate::lookalike`]).
    pub smart_encoding: bool,
    /// Part numbering on channels whose limits say `numbered`.
    pub numbering: Numbering,
    /// Split at any paragraph break in a part's window (default: only in its last half).
    pub keep_paragraphs: bool,
    /// A paragraph, line or sentence break must lie beyond this percentage of a
    /// part's window to be preferred over a later word break.
    pub min_fill_percent: u8,
    /// Text parts per response when the cognition hint `max_parts` is absent.
    pub max_parts: usize,
    /// Text parts per response, never exceeded: beyond it the text is truncated
    /// with the marker even when the over-budget behaviour is `split`.
    pub hard_max_parts: usize,
    /// SMS segments per response (all parts together); `None` for no such budget.
    pub sms_max_segments_per_response: Option<usize>,
    /// What to do beyond the budget when the hint `allow_truncation` is absent.
    pub over_budget: OverBudget,
    /// Appended to truncated text.
    pub truncation_marker: String,
    /// Truncation markers by locale (`de-CH`, then `de`), before `truncation_marker`.
    pub truncation_markers: BTreeMap<String, String>,
    /// Where media go.
    pub media_placement: MediaPlacement,
    /// SMS limits.
    pub sms: ChannelLimits,
    /// WhatsApp limits.
    pub whatsapp: ChannelLimits,
    /// Chat (SDK participant) limits.
    pub chat: ChannelLimits,
    /// Length of the WhatsApp customer-service window.
    #[serde(with = "humantime_serde_compat")]
    pub whatsapp_window: Duration,
    /// The window is treated as closed this long before it really closes.
    #[serde(with = "humantime_serde_compat")]
    pub whatsapp_window_margin: Duration,
    /// Template sent when the window is closed; without one such a response fails.
    pub whatsapp_template: Option<WhatsappTemplate>,
    /// The same template approved in other languages: Content SID by locale
    /// (lower case, `es`, `pt-br`), with `whatsapp_template`'s variables
    /// ([`SegmentConfig::whatsapp_template_for`]).
    pub whatsapp_templates: BTreeMap<String, String>,
}

impl Default for SegmentConfig {
    fn default() -> Self {
        Self {
            smart_encoding: true,
            numbering: Numbering::Prefix,
            keep_paragraphs: false,
            min_fill_percent: 50,
            max_parts: 5,
            hard_max_parts: 20,
            sms_max_segments_per_response: None,
            over_budget: OverBudget::Split,
            truncation_marker: "…".to_owned(),
            truncation_markers: BTreeMap::new(),
            media_placement: MediaPlacement::First,
            sms: ChannelLimits {
                max_length: TWILIO_BODY_MAX_CHARS,
                unit: LengthUnit::Utf16,
                max_segments_per_message: Some(10),
                max_media_per_message: MMS_MAX_MEDIA,
                numbered: true,
            },
            whatsapp: ChannelLimits {
                max_length: TWILIO_BODY_MAX_CHARS,
                unit: LengthUnit::Utf16,
                max_segments_per_message: None,
                max_media_per_message: WHATSAPP_MAX_MEDIA,
                numbered: true,
            },
            chat: ChannelLimits {
                max_length: CHAT_BODY_MAX_BYTES,
                unit: LengthUnit::Utf8Bytes,
                max_segments_per_message: None,
                max_media_per_message: MMS_MAX_MEDIA,
                numbered: false,
            },
            whatsapp_window: Duration::from_secs(24 * 3600),
            whatsapp_window_margin: Duration::ZERO,
            whatsapp_template: None,
            whatsapp_templates: BTreeMap::new(),
        }
    }
}

impl SegmentConfig {
    /// The template for a recipient in `locale`: the one approved in that
    /// locale, else in its language (`es-MX` → `es`), else the default
    /// `whatsapp_template`; `None` without a default.
    #[must_use]
    pub fn whatsapp_template_for(&self, locale: Option<&str>) -> Option<WhatsappTemplate> {
        let default = self.whatsapp_template.as_ref()?;
        let locale = locale
            .unwrap_or_default()
            .trim()
            .to_lowercase()
            .replace('_', "-");
        let content_sid =
            by_locale(&self.whatsapp_templates, &locale).unwrap_or(&default.content_sid);
        Some(WhatsappTemplate {
            content_sid: content_sid.clone(),
            variables_json: default.variables_json.clone(),
        })
    }
}

/// The entry of `locale` (BCP 47): its exact tag, else its language.
fn by_locale<'a>(entries: &'a BTreeMap<String, String>, locale: &str) -> Option<&'a String> {
    let language = locale.split(['-', '_']).next().unwrap_or(locale);
    entries.get(locale).or_else(|| entries.get(language))
}

/// Longest truncation marker, in characters.
const MAX_MARKER_CHARS: usize = 24;

/// Smallest allowed message length: numbering, the longest marker and some text.
const MIN_MAX_LENGTH: usize = 64;

impl SegmentConfig {
    /// The limits of `channel`, or an error for channels without text messages.
    pub fn limits(&self, channel: Channel) -> Result<&ChannelLimits, Error> {
        match channel {
            Channel::Sms => Ok(&self.sms),
            Channel::Whatsapp => Ok(&self.whatsapp),
            Channel::Chat => Ok(&self.chat),
            other => Err(Error::UnsupportedChannel(other.key_prefix().to_owned())),
        }
    }

    /// The truncation marker for `locale` (BCP 47): exact tag, then its language.
    #[must_use]
    pub fn marker_for(&self, locale: Option<&str>) -> &str {
        locale
            .and_then(|locale| by_locale(&self.truncation_markers, locale))
            .unwrap_or(&self.truncation_marker)
    }

    /// Cross-field checks, at start-up.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Config(m));
        for (name, limits) in [
            ("sms", &self.sms),
            ("whatsapp", &self.whatsapp),
            ("chat", &self.chat),
        ] {
            if limits.max_length < MIN_MAX_LENGTH {
                return bad(format!(
                    "{name} max length {} is too small",
                    limits.max_length
                ));
            }
            if limits.max_media_per_message == 0 {
                return bad(format!(
                    "{name} needs room for at least one media item per message"
                ));
            }
        }
        for (name, limits) in [("sms", &self.sms), ("whatsapp", &self.whatsapp)] {
            if limits.max_length > TWILIO_BODY_MAX_CHARS {
                return bad(format!(
                    "{name} max length {} exceeds Twilio's {TWILIO_BODY_MAX_CHARS} characters (error 21617)",
                    limits.max_length
                ));
            }
        }
        if self.sms.max_segments_per_message == Some(0) {
            return bad("sms max segments per message must be at least 1".into());
        }
        if self.max_parts == 0 || self.hard_max_parts == 0 {
            return bad("max parts and hard max parts must be at least 1".into());
        }
        if self.max_parts > self.hard_max_parts {
            return bad(format!(
                "max parts {} exceeds hard max parts {}",
                self.max_parts, self.hard_max_parts
            ));
        }
        if self.sms_max_segments_per_response == Some(0) {
            return bad("sms max segments per response must be at least 1".into());
        }
        if self.min_fill_percent > 100 {
            return bad("min fill percent is at most 100".into());
        }
        for marker in
            std::iter::once(&self.truncation_marker).chain(self.truncation_markers.values())
        {
            if marker.chars().count() > MAX_MARKER_CHARS {
                return bad(format!(
                    "truncation marker {marker:?} is longer than {MAX_MARKER_CHARS} characters"
                ));
            }
        }
        if self.whatsapp_window_margin >= self.whatsapp_window {
            return bad("the WhatsApp window margin must be shorter than the window".into());
        }
        if !self.whatsapp_templates.is_empty() && self.whatsapp_template.is_none() {
            return bad(
                "WhatsApp templates by locale need the default template (SEGMENT_WHATSAPP_TEMPLATE_SID) for the other locales"
                    .into(),
            );
        }
        for (locale, sid) in &self.whatsapp_templates {
            if locale.is_empty() || !sid.starts_with("HX") {
                return bad(format!(
                    "WhatsApp template {locale:?}={sid:?}: a locale and a Content SID (HX…) are needed"
                ));
            }
        }
        if let Some(t) = &self.whatsapp_template {
            if !t.content_sid.starts_with("HX") {
                return bad(format!(
                    "WhatsApp template SID {:?} is not a Content SID (HX…)",
                    t.content_sid
                ));
            }
            match serde_json::from_str::<serde_json::Value>(&t.variables_json) {
                Ok(serde_json::Value::Object(_)) => {}
                _ => return bad("WhatsApp template variables must be a JSON object".into()),
            }
        }
        Ok(())
    }
}

/// Serializes durations as humantime text (`24h`).
mod humantime_serde_compat {
    use std::time::Duration;

    pub(super) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }
}

fn parse_duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

fn parse_locale_marker(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(l, m)| (l.trim().to_owned(), m.to_owned()))
        .filter(|(l, _)| !l.is_empty())
        .ok_or_else(|| format!("expected LOCALE=MARKER, got {text:?}"))
}

/// The segmentation settings as flags and environment variables (`SEGMENT_…`).
/// Defaults are [`SegmentConfig::default`].
#[derive(Debug, Clone, Args)]
pub struct SegmentArgs {
    /// Replace look-alike characters (curly quotes, dashes, ellipsis, exotic spaces,
    /// zero-width characters) when that makes an SMS text GSM-7.
    #[arg(long, env = "SEGMENT_SMART_ENCODING", default_value_t = true, action = clap::ArgAction::Set)]
    pub smart_encoding: bool,

    /// Part numbering like (1/3) on SMS and WhatsApp responses of two or more parts.
    #[arg(long, env = "SEGMENT_NUMBERING", value_enum, default_value_t = Numbering::Prefix)]
    pub numbering: Numbering,

    /// Split at any paragraph break (default: only in the last half of a part).
    #[arg(long, env = "SEGMENT_KEEP_PARAGRAPHS", default_value_t = false, action = clap::ArgAction::Set)]
    pub keep_paragraphs: bool,

    /// Paragraph, line and sentence breaks are preferred only beyond this percentage of a part.
    #[arg(long, env = "SEGMENT_MIN_FILL_PERCENT", default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub min_fill_percent: u8,

    /// Text parts per response when cognition gives no max_parts hint.
    #[arg(long, env = "SEGMENT_MAX_PARTS", default_value_t = 5)]
    pub max_parts: usize,

    /// Text parts per response, never exceeded (the rest is truncated with the marker).
    #[arg(long, env = "SEGMENT_HARD_MAX_PARTS", default_value_t = 20)]
    pub hard_max_parts: usize,

    /// What to do beyond the budget when cognition does not say (allow_truncation).
    #[arg(long, env = "SEGMENT_OVER_BUDGET", value_enum, default_value_t = OverBudget::Split)]
    pub over_budget: OverBudget,

    /// Appended to truncated text.
    #[arg(long, env = "SEGMENT_TRUNCATION_MARKER", default_value = "…")]
    pub truncation_marker: String,

    /// Truncation marker for a locale, as LOCALE=MARKER (repeatable; env: `;`-separated).
    #[arg(long = "truncation-marker-for", env = "SEGMENT_TRUNCATION_MARKERS", value_delimiter = ';', value_parser = parse_locale_marker)]
    pub truncation_markers: Vec<(String, String)>,

    /// Where media go: with the first or the last text part.
    #[arg(long, env = "SEGMENT_MEDIA_PLACEMENT", value_enum, default_value_t = MediaPlacement::First)]
    pub media_placement: MediaPlacement,

    /// SMS segments per message (Twilio advises against more than 10; 10 × 153 < 1600).
    #[arg(
        long,
        env = "SEGMENT_SMS_MAX_SEGMENTS_PER_MESSAGE",
        default_value_t = 10
    )]
    pub sms_max_segments_per_message: usize,

    /// SMS segments per response, all parts together (default: no such budget).
    #[arg(long, env = "SEGMENT_SMS_MAX_SEGMENTS_PER_RESPONSE")]
    pub sms_max_segments_per_response: Option<usize>,

    /// SMS characters per message (UTF-16 units; Twilio's limit is 1600).
    #[arg(long, env = "SEGMENT_SMS_MAX_CHARS", default_value_t = TWILIO_BODY_MAX_CHARS)]
    pub sms_max_chars: usize,

    /// WhatsApp characters per message (UTF-16 units; Twilio's limit is 1600).
    #[arg(long, env = "SEGMENT_WHATSAPP_MAX_CHARS", default_value_t = TWILIO_BODY_MAX_CHARS)]
    pub whatsapp_max_chars: usize,

    /// Chat message size in UTF-8 bytes (Conversations: 32KB).
    #[arg(long, env = "SEGMENT_CHAT_MAX_BYTES", default_value_t = CHAT_BODY_MAX_BYTES)]
    pub chat_max_bytes: usize,

    /// Media per SMS/MMS message (Twilio: 10).
    #[arg(long, env = "SEGMENT_SMS_MAX_MEDIA", default_value_t = MMS_MAX_MEDIA)]
    pub sms_max_media: usize,

    /// Media per WhatsApp message (Twilio: 1).
    #[arg(long, env = "SEGMENT_WHATSAPP_MAX_MEDIA", default_value_t = WHATSAPP_MAX_MEDIA)]
    pub whatsapp_max_media: usize,

    /// Media per chat message.
    #[arg(long, env = "SEGMENT_CHAT_MAX_MEDIA", default_value_t = MMS_MAX_MEDIA)]
    pub chat_max_media: usize,

    /// Length of the WhatsApp customer-service window.
    #[arg(long, env = "SEGMENT_WHATSAPP_WINDOW", default_value = "24h", value_parser = parse_duration)]
    pub whatsapp_window: Duration,

    /// Treat the WhatsApp window as closed this long before it closes (queueing at egress).
    #[arg(long, env = "SEGMENT_WHATSAPP_WINDOW_MARGIN", default_value = "0s", value_parser = parse_duration)]
    pub whatsapp_window_margin: Duration,

    /// Approved template (Content SID, HX…) sent when the WhatsApp window is closed.
    #[arg(long, env = "SEGMENT_WHATSAPP_TEMPLATE_SID")]
    pub whatsapp_template_sid: Option<String>,

    /// The template's variables as a JSON object.
    #[arg(
        long,
        env = "SEGMENT_WHATSAPP_TEMPLATE_VARIABLES",
        default_value = "{}"
    )]
    pub whatsapp_template_variables: String,

    /// The same template approved in another language, for recipients in a
    /// locale, as LOCALE=HX… (repeatable; env: `;`-separated): a locale
    /// falls back to its language, then to SEGMENT_WHATSAPP_TEMPLATE_SID.
    #[arg(long = "whatsapp-template-for", env = "SEGMENT_WHATSAPP_TEMPLATES", value_delimiter = ';', value_parser = parse_locale_template)]
    pub whatsapp_templates: Vec<(String, String)>,
}

/// LOCALE=HX…, the locale in lower case with `-`.
fn parse_locale_template(text: &str) -> Result<(String, String), String> {
    parse_locale_marker(text)
        .map(|(l, sid)| (l.to_lowercase().replace('_', "-"), sid.trim().to_owned()))
        .map_err(|_| format!("expected LOCALE=HX…, got {text:?}"))
}

impl SegmentArgs {
    /// The validated configuration.
    pub fn config(&self) -> Result<SegmentConfig, Error> {
        let defaults = SegmentConfig::default();
        let config = SegmentConfig {
            smart_encoding: self.smart_encoding,
            numbering: self.numbering,
            keep_paragraphs: self.keep_paragraphs,
            min_fill_percent: self.min_fill_percent,
            max_parts: self.max_parts,
            hard_max_parts: self.hard_max_parts,
            sms_max_segments_per_response: self.sms_max_segments_per_response,
            over_budget: self.over_budget,
            truncation_marker: self.truncation_marker.clone(),
            truncation_markers: self.truncation_markers.iter().cloned().collect(),
            media_placement: self.media_placement,
            sms: ChannelLimits {
                max_length: self.sms_max_chars,
                max_segments_per_message: Some(self.sms_max_segments_per_message),
                max_media_per_message: self.sms_max_media,
                ..defaults.sms
            },
            whatsapp: ChannelLimits {
                max_length: self.whatsapp_max_chars,
                max_media_per_message: self.whatsapp_max_media,
                ..defaults.whatsapp
            },
            chat: ChannelLimits {
                max_length: self.chat_max_bytes,
                max_media_per_message: self.chat_max_media,
                ..defaults.chat
            },
            whatsapp_window: self.whatsapp_window,
            whatsapp_window_margin: self.whatsapp_window_margin,
            whatsapp_template: self
                .whatsapp_template_sid
                .as_ref()
                .map(|sid| WhatsappTemplate {
                    content_sid: sid.clone(),
                    variables_json: self.whatsapp_template_variables.clone(),
                }),
            whatsapp_templates: self.whatsapp_templates.iter().cloned().collect(),
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        segment: SegmentArgs,
    }

    #[test]
    fn flag_defaults_equal_config_defaults() {
        let cli = Cli::try_parse_from(["x"]).expect("parses");
        assert_eq!(
            cli.segment.config().expect("valid"),
            SegmentConfig::default()
        );
        SegmentConfig::default()
            .validate()
            .expect("defaults are valid");
    }

    #[test]
    fn rejects_bad_combinations() {
        let cli = Cli::try_parse_from(["x", "--sms-max-chars", "1601"]).expect("parses");
        assert!(cli.segment.config().is_err());
        let cli = Cli::try_parse_from([
            "x",
            "--whatsapp-template-sid",
            "HX1",
            "--whatsapp-template-variables",
            "[1]",
        ])
        .expect("parses");
        assert!(cli.segment.config().is_err());
        let cli = Cli::try_parse_from(["x", "--max-parts", "30"]).expect("parses");
        assert!(cli.segment.config().is_err());
        // Templates by locale: a default for the other locales, Content SIDs.
        let cli = Cli::try_parse_from(["x", "--whatsapp-template-for", "es=HX2"]).expect("parses");
        assert!(cli.segment.config().is_err());
        let cli = Cli::try_parse_from([
            "x",
            "--whatsapp-template-sid",
            "HX1",
            "--whatsapp-template-for",
            "es=MG2",
        ])
        .expect("parses");
        assert!(cli.segment.config().is_err());
    }

    #[test]
    fn whatsapp_template_by_locale() {
        let cli = Cli::try_parse_from([
            "x",
            "--whatsapp-template-sid",
            "HX1",
            "--whatsapp-template-for",
            "es=HX2",
            "--whatsapp-template-for",
            "pt_BR = HX3",
        ])
        .expect("parses");
        let config = cli.segment.config().expect("valid");
        let sid = |locale| {
            config
                .whatsapp_template_for(locale)
                .expect("a default")
                .content_sid
        };
        assert_eq!(sid(Some("es-MX")), "HX2");
        assert_eq!(sid(Some("pt-BR")), "HX3");
        assert_eq!(sid(Some("pt-PT")), "HX1");
        assert_eq!(sid(None), "HX1");
    }

    #[test]
    fn marker_by_locale() {
        let cli = Cli::try_parse_from(["x", "--truncation-marker-for", "de=… (gekürzt)"])
            .expect("parses");
        let config = cli.segment.config().expect("valid");
        assert_eq!(config.marker_for(Some("de-CH")), "… (gekürzt)");
        assert_eq!(config.marker_for(Some("fr")), "…");
        assert_eq!(config.marker_for(None), "…");
    }
}
