//! From a cognition response to the ordered parts the segment processor sends.

use serde::Serialize;
use si_schemas::records::{
    Channel, CognitionResponse, MediaRef, OutboundOperation, SegmentationHints,
};

use crate::breaks;
use crate::config::{
    ChannelLimits, LengthUnit, MediaPlacement, Numbering, OverBudget, SegmentConfig,
    WhatsappTemplate,
};
use crate::encoding::{Encoding, Measurement, measure};
use crate::lookalike;
use crate::split::{Extra, Limit, Piece, Splitter};
use crate::window::{WINDOW_CLOSED_REASON, WindowState, whatsapp_window};
use crate::{Error, gsm7};

/// What is to be sent: the parts of a [`CognitionResponse`] for one recipient.
#[derive(Debug, Clone, Copy)]
pub struct Response<'a> {
    /// Reply text, any length.
    pub text: &'a str,
    /// Media to attach; each needs a URL.
    pub media: &'a [MediaRef],
    /// The recipient's channel.
    pub channel: Channel,
    /// Locale of the text (BCP 47), for the truncation marker.
    pub locale: Option<&'a str>,
    /// Cognition's hints.
    pub hints: Option<&'a SegmentationHints>,
    /// Sent as a Twilio Conversations message, which takes one media item
    /// (its `MediaSid`): each item then goes in a part of its own.
    pub conversations: bool,
}

impl<'a> Response<'a> {
    /// Plain text on a channel, no media, locale or hints.
    #[must_use]
    pub const fn text(text: &'a str, channel: Channel) -> Self {
        Self {
            text,
            media: &[],
            channel,
            locale: None,
            hints: None,
            conversations: false,
        }
    }

    /// A `si.responses.v1` record, sent on `channel` (the conversation's channel).
    #[must_use]
    pub fn from_record(record: &'a CognitionResponse, channel: Channel) -> Self {
        Self {
            text: &record.text,
            media: &record.media,
            channel,
            locale: record.locale.as_deref(),
            hints: record.hints.as_ref(),
            conversations: false,
        }
    }
}

/// Time and per-conversation state the plan depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Now (ms since the epoch).
    pub now_ms: i64,
    /// The user's last inbound message in this conversation (ms since the epoch);
    /// `None` when they never wrote. Only WhatsApp uses it.
    pub last_inbound_ms: Option<i64>,
}

/// One message to send: maps one-to-one onto the part fields of an
/// [`OutboundOperation`] (see [`Part::apply_to`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Part {
    /// 0-based position among the response's parts (`part_index`).
    pub index: usize,
    /// Number of parts of the response (`part_count`).
    pub count: usize,
    /// Text, within the channel's limits; `None` for media-only and template parts.
    pub body: Option<String>,
    /// Media URLs (`media_urls`), within the channel's per-message limit.
    pub media_urls: Vec<String>,
    /// SMS encoding of `body`; `None` on other channels or without a body.
    pub encoding: Option<Encoding>,
    /// SMS segments Twilio bills for `body` sent as this one message (its
    /// segment calculator's count, [`crate::encoding`]); `None` on other
    /// channels or without a body. Becomes `OutboundOperation.segments`.
    pub segments: Option<usize>,
    /// Template Content SID when a template is sent instead of text.
    pub content_sid: Option<String>,
    /// Template variables (JSON object text).
    pub content_variables_json: Option<String>,
    /// Why a template is sent (`WHATSAPP_WINDOW_CLOSED`).
    pub template_reason: Option<String>,
    /// Do not send after this time (ms since the epoch): the close of the
    /// WhatsApp window for free text sent inside it.
    pub not_after: Option<i64>,
}

impl Part {
    /// Sets the fields this part decides on `op`: `body`, `media_urls`,
    /// `content_sid`, `content_variables_json`, `part_index`, `part_count`,
    /// `segments`, `encoding`, `template_reason`, and `not_after` (the earlier of
    /// the existing deadline and this part's). Everything else (ids, addresses,
    /// kind, timestamps, trace) is the caller's.
    pub fn apply_to(&self, op: &mut OutboundOperation) {
        op.body.clone_from(&self.body);
        op.media_urls.clone_from(&self.media_urls);
        op.content_sid.clone_from(&self.content_sid);
        op.content_variables_json
            .clone_from(&self.content_variables_json);
        op.part_index = i32::try_from(self.index).unwrap_or(i32::MAX);
        op.part_count = i32::try_from(self.count).unwrap_or(i32::MAX);
        op.segments = self.segments.map(|s| i32::try_from(s).unwrap_or(i32::MAX));
        op.encoding = self.encoding.map(Encoding::to_schema);
        op.template_reason.clone_from(&self.template_reason);
        op.not_after = match (op.not_after, self.not_after) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// Whitespace the pipeline drops from the ends of a response text: a message
/// neither starts nor ends with blanks (step 1 of the normalized text).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Trimmed {
    /// Characters dropped before the first non-whitespace cluster.
    pub leading: usize,
    /// Characters dropped after the last non-whitespace cluster.
    pub trailing: usize,
}

impl Trimmed {
    /// What trimming drops from `text`.
    #[must_use]
    pub fn of(text: &str) -> Self {
        let start = breaks::skip_ws(text, 0);
        let end = breaks::trim_end(text, start, text.len());
        Self {
            leading: text[..start].chars().count(),
            trailing: text[end..].chars().count(),
        }
    }

    /// Whether anything was dropped.
    #[must_use]
    pub const fn any(self) -> bool {
        self.leading + self.trailing > 0
    }
}

/// The parts of a response and how they came about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// `sms`, `whatsapp` or `chat`.
    pub channel: &'static str,
    /// The parts, in sending order.
    pub parts: Vec<Part>,
    /// The text the parts are cut from ([`crate`] docs: "Normalized text").
    pub normalized_text: String,
    /// Whitespace at the ends of the response text that is not sent.
    pub trimmed: Trimmed,
    /// Look-alike replacement was applied.
    pub smart_encoded: bool,
    /// SMS: encoding of the normalized text as a whole.
    pub encoding: Option<Encoding>,
    /// SMS: segments Twilio would bill for the normalized text sent as one
    /// message (ignoring limits); what is sent is `parts`, so this is only a
    /// comparison.
    pub text_segments: Option<usize>,
    /// SMS: what the response costs: the sum of the parts' `segments`, each part
    /// billed as its own message (numbering included), so it can exceed
    /// `text_segments`.
    pub total_segments: Option<usize>,
    /// The text needed more than its budget and was sent whole anyway.
    pub over_budget: bool,
    /// The text was cut and ends with the truncation marker.
    pub truncated: bool,
    /// WhatsApp: the customer-service window at planning time.
    pub window: Option<WindowState>,
    /// Things an operator should know (URL cut inside, budget exceeded, …).
    pub warnings: Vec<String>,
}

/// The ordered parts for `response`: the pure core of the segment processor.
pub fn plan(
    response: &Response<'_>,
    timing: Timing,
    config: &SegmentConfig,
) -> Result<Plan, Error> {
    let channel = response.channel;
    let limits = *config.limits(channel)?;
    let media = media_urls(response.media)?;
    let (normalized, smart_encoded) = normalize(response.text, channel, config.smart_encoding);
    if normalized.is_empty() && media.is_empty() {
        return Err(Error::Empty);
    }
    let sms = channel == Channel::Sms;
    let measured_whole = measure(&normalized);
    let whole = Some(measured_whole).filter(|m| sms && m.units > 0);
    let mut plan = Plan {
        channel: channel.key_prefix(),
        parts: Vec::new(),
        encoding: whole.map(|m| m.encoding),
        text_segments: whole.map(|m| m.segments),
        normalized_text: String::new(),
        trimmed: Trimmed::of(response.text),
        smart_encoded,
        total_segments: None,
        over_budget: false,
        truncated: false,
        window: None,
        warnings: Vec::new(),
    };

    let mut not_after = None;
    if channel == Channel::Whatsapp {
        let state = whatsapp_window(
            timing.last_inbound_ms,
            timing.now_ms,
            config.whatsapp_window,
            config.whatsapp_window_margin,
        );
        plan.window = Some(state);
        match state {
            WindowState::Open { closes_at_ms } => not_after = Some(closes_at_ms),
            WindowState::Closed { .. } => {
                let template = config
                    .whatsapp_template_for(response.locale)
                    .ok_or(Error::NoTemplate)?;
                plan.warnings.push(format!(
                    "WhatsApp window closed: template {} sent instead of {} characters of text and {} media",
                    template.content_sid,
                    normalized.chars().count(),
                    media.len()
                ));
                plan.parts.push(template_part(&template));
                plan.normalized_text = normalized;
                return Ok(plan);
            }
        }
    }

    let limit = Limit {
        max_utf16: (limits.unit == LengthUnit::Utf16).then_some(limits.max_length),
        max_utf8: (limits.unit == LengthUnit::Utf8Bytes).then_some(limits.max_length),
        max_segments: if sms {
            limits.max_segments_per_message
        } else {
            None
        },
    };
    let hints = response.hints;
    let budget = Budget::of(hints, config, sms);
    let numbering = if limits.numbered {
        config.numbering
    } else {
        Numbering::Off
    };
    let marker = marker(config.marker_for(response.locale), sms, &normalized);

    let texts = if normalized.is_empty() {
        Vec::new()
    } else {
        let keep_paragraphs = hints
            .and_then(|h| h.keep_paragraphs)
            .unwrap_or(config.keep_paragraphs);
        let splitter = Splitter::new(&normalized, keep_paragraphs, config.min_fill_percent);
        let outcome = split_text(&splitter, measured_whole, limit, budget, numbering, &marker)?;
        plan.over_budget = outcome.over_budget;
        plan.truncated = outcome.truncated;
        plan.warnings.extend(outcome.warnings);
        outcome.bodies
    };

    // Every body is checked against the limits once more, from scratch: a body
    // Twilio would reject (21617) is a bug, better dead-lettered than sent.
    let measured = texts
        .into_iter()
        .map(|body| {
            let m = if body == normalized {
                measured_whole
            } else {
                measure(&body)
            };
            if fits(&m, &limits, limit.max_segments) {
                Ok((body, m))
            } else {
                Err(Error::Internal(format!(
                    "part exceeds the channel limits: {m:?}"
                )))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    if sms {
        plan.total_segments = Some(measured.iter().map(|(_, m)| m.segments).sum());
    }
    let per_message = if response.conversations {
        limits.max_media_per_message.min(1)
    } else {
        limits.max_media_per_message
    };
    plan.parts = layout(
        measured,
        media,
        per_message,
        config.media_placement,
        sms,
        not_after,
    );
    plan.normalized_text = normalized;
    Ok(plan)
}

/// The one part sent instead of a reply when the WhatsApp window is closed:
/// the approved template.
fn template_part(template: &WhatsappTemplate) -> Part {
    Part {
        index: 0,
        count: 1,
        body: None,
        media_urls: Vec::new(),
        encoding: None,
        segments: None,
        content_sid: Some(template.content_sid.clone()),
        content_variables_json: Some(template.variables_json.clone()),
        template_reason: Some(WINDOW_CLOSED_REASON.to_owned()),
        not_after: None,
    }
}

/// Whether a body measured `m` is within the channel's length and (SMS
/// only: `max_segments` is `None` elsewhere) segment limits.
fn fits(m: &Measurement, limits: &ChannelLimits, max_segments: Option<usize>) -> bool {
    let length = match limits.unit {
        LengthUnit::Utf16 => m.utf16_len <= limits.max_length,
        LengthUnit::Utf8Bytes => m.utf8_len <= limits.max_length,
    };
    length && max_segments.is_none_or(|max| m.segments <= max)
}

/// The normalized text and whether look-alikes were replaced: the text without
/// leading and trailing whitespace; for SMS with smart encoding, with
/// look-alikes replaced when that makes it GSM-7, and trimmed again.
#[must_use]
pub fn normalize(text: &str, channel: Channel, smart_encoding: bool) -> (String, bool) {
    let trimmed = trim(text);
    if channel == Channel::Sms
        && smart_encoding
        && let Some(replaced) = lookalike::to_gsm7(trimmed)
    {
        return (trim(&replaced).to_owned(), true);
    }
    (trimmed.to_owned(), false)
}

fn trim(text: &str) -> &str {
    let start = breaks::skip_ws(text, 0);
    &text[start..breaks::trim_end(text, start, text.len())]
}

fn media_urls(media: &[MediaRef]) -> Result<Vec<String>, Error> {
    media
        .iter()
        .enumerate()
        .map(|(index, m)| match m.url.as_deref().map(str::trim) {
            Some(url) if !url.is_empty() => Ok(url.to_owned()),
            _ => Err(Error::MediaWithoutUrl { index }),
        })
        .collect()
}

/// The marker as sent: on SMS, a GSM-7 text gets the marker's look-alike
/// replacement (`…` → `...`) so that it stays GSM-7.
fn marker(marker: &str, sms: bool, text: &str) -> String {
    if sms
        && gsm7::is_gsm7(text)
        && let Some(gsm) = lookalike::to_gsm7(marker)
    {
        return gsm;
    }
    marker.to_owned()
}

#[derive(Debug, Clone, Copy)]
struct Budget {
    max_parts: usize,
    hard_max_parts: usize,
    max_segments: Option<usize>,
    truncate: bool,
}

impl Budget {
    /// The response's budget: its hints within the configuration's bounds.
    fn of(hints: Option<&SegmentationHints>, config: &SegmentConfig, sms: bool) -> Self {
        Self {
            max_parts: hints
                .and_then(|h| h.max_parts)
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n > 0)
                .unwrap_or(config.max_parts)
                .min(config.hard_max_parts),
            hard_max_parts: config.hard_max_parts,
            max_segments: if sms {
                config.sms_max_segments_per_response
            } else {
                None
            },
            truncate: hints
                .and_then(|h| h.allow_truncation)
                .unwrap_or(config.over_budget == OverBudget::Truncate),
        }
    }
}

struct Outcome {
    bodies: Vec<String>,
    over_budget: bool,
    truncated: bool,
    warnings: Vec<String>,
}

/// A text piece with its marker, before numbering.
struct Text {
    piece: Piece,
    marked: bool,
}

fn split_text(
    splitter: &Splitter<'_>,
    whole: Measurement,
    limit: Limit,
    budget: Budget,
    numbering: Numbering,
    marker: &str,
) -> Result<Outcome, Error> {
    let text = splitter.text();
    let fits_whole = limit.max_utf16.is_none_or(|m| whole.utf16_len <= m)
        && limit.max_utf8.is_none_or(|m| whole.utf8_len <= m)
        && limit.max_segments.is_none_or(|m| whole.segments <= m);
    let mut outcome = Outcome {
        bodies: Vec::new(),
        over_budget: false,
        truncated: false,
        warnings: Vec::new(),
    };
    let within_segments = |segments: usize| budget.max_segments.is_none_or(|max| segments <= max);

    if fits_whole && within_segments(whole.segments) {
        outcome.bodies.push(text.to_owned());
        return Ok(outcome);
    }

    // Everything, in as many parts as it takes (at most hard_max_parts + 1 are made).
    let (pieces, complete) = split_unbounded(splitter, limit, numbering, budget.hard_max_parts)?;
    let bodies = number(text, &pieces, numbering, marker);
    let segments: usize = bodies.iter().map(|b| measure(b).segments).sum();
    let over = pieces.len() > budget.max_parts || !within_segments(segments);
    if !over {
        outcome.bodies = bodies;
        warn_forced(&mut outcome.warnings, &pieces);
        return Ok(outcome);
    }
    if !budget.truncate && complete {
        outcome.over_budget = true;
        outcome.warnings.push(format!(
            "over budget: {} parts / {segments} segments (max {} parts, {} segments); sent whole",
            pieces.len(),
            budget.max_parts,
            budget
                .max_segments
                .map_or_else(|| "any".to_owned(), |s| s.to_string()),
        ));
        outcome.bodies = bodies;
        warn_forced(&mut outcome.warnings, &pieces);
        return Ok(outcome);
    }
    let (max_parts, max_segments) = if budget.truncate {
        (budget.max_parts, budget.max_segments)
    } else {
        outcome.over_budget = true;
        outcome.warnings.push(format!(
            "more than hard_max_parts={} parts: truncated",
            budget.hard_max_parts
        ));
        (budget.hard_max_parts, None)
    };
    let pieces = split_truncated(splitter, limit, numbering, marker, max_parts, max_segments)?;
    outcome.truncated = pieces.last().is_some_and(|t| t.marked);
    let plain: Vec<Piece> = pieces.iter().map(|t| t.piece).collect();
    warn_forced(&mut outcome.warnings, &plain);
    outcome.bodies = number_marked(text, &pieces, numbering, marker);
    Ok(outcome)
}

fn warn_forced(warnings: &mut Vec<String>, pieces: &[Piece]) {
    for p in pieces.iter().filter(|p| p.forced) {
        warnings.push(format!(
            "a URL or unbreakable run longer than a part was cut at byte {}",
            p.end
        ));
    }
}

/// The widest numbering for parts counted with `digits` digits.
fn numbering_extra(numbering: Numbering, digits: usize, suffix_before: &str) -> (String, String) {
    let nines = "9".repeat(digits);
    let label = format!("({nines}/{nines})");
    match numbering {
        Numbering::Off => (String::new(), suffix_before.to_owned()),
        Numbering::Prefix => (format!("{label} "), suffix_before.to_owned()),
        Numbering::Suffix => (String::new(), format!("{suffix_before} {label}")),
    }
}

fn digits(n: usize) -> usize {
    n.to_string().len()
}

fn split_unbounded(
    splitter: &Splitter<'_>,
    limit: Limit,
    numbering: Numbering,
    hard_max_parts: usize,
) -> Result<(Vec<Piece>, bool), Error> {
    let text = splitter.text();
    let mut width = 1;
    loop {
        let (prefix, suffix) = numbering_extra(numbering, width, "");
        let extra = Extra {
            prefix: &prefix,
            suffix: &suffix,
        };
        let mut pieces = Vec::new();
        let mut start = 0;
        while start < text.len() && pieces.len() <= hard_max_parts {
            let piece = splitter.fill(start, extra, limit)?;
            start = splitter.next_start(piece.end);
            pieces.push(piece);
        }
        let complete = start >= text.len() && pieces.len() <= hard_max_parts;
        if numbering == Numbering::Off || digits(pieces.len()) <= width {
            return Ok((pieces, complete));
        }
        width = digits(pieces.len());
    }
}

fn split_truncated(
    splitter: &Splitter<'_>,
    limit: Limit,
    numbering: Numbering,
    marker: &str,
    max_parts: usize,
    max_segments: Option<usize>,
) -> Result<Vec<Text>, Error> {
    let text = splitter.text();
    let numbering = if max_parts < 2 {
        Numbering::Off
    } else {
        numbering
    };
    let width = digits(max_parts);
    let (prefix, suffix) = numbering_extra(numbering, width, "");
    let extra = Extra {
        prefix: &prefix,
        suffix: &suffix,
    };
    let (_, marked_suffix) = numbering_extra(numbering, width, marker);
    let marked_extra = Extra {
        prefix: &prefix,
        suffix: &marked_suffix,
    };

    let mut parts: Vec<(Piece, Limit)> = Vec::new();
    let mut used = 0;
    let mut start = 0;
    while start < text.len() && parts.len() < max_parts {
        let part_limit = match max_segments {
            Some(max) => {
                let left = max.saturating_sub(used);
                if left == 0 {
                    break;
                }
                Limit {
                    max_segments: Some(limit.max_segments.map_or(left, |m| m.min(left))),
                    ..limit
                }
            }
            None => limit,
        };
        let piece = match splitter.fill(start, extra, part_limit) {
            Ok(piece) => piece,
            Err(error) if parts.is_empty() => return Err(error),
            Err(_) => break,
        };
        let body = [
            prefix.as_str(),
            &text[piece.start..piece.end],
            suffix.as_str(),
        ]
        .concat();
        used += measure(&body).segments;
        start = splitter.next_start(piece.end);
        parts.push((piece, part_limit));
    }
    if start >= text.len() {
        return Ok(parts
            .into_iter()
            .map(|(piece, _)| Text {
                piece,
                marked: false,
            })
            .collect());
    }
    // Text is left over: the last part ends with the marker instead, made room
    // for by refilling it; if not even a word and the marker fit, the part
    // before carries the marker.
    while let Some((last, part_limit)) = parts.pop() {
        if let Ok(piece) = splitter.fill(last.start, marked_extra, part_limit) {
            let mut texts: Vec<Text> = parts
                .into_iter()
                .map(|(piece, _)| Text {
                    piece,
                    marked: false,
                })
                .collect();
            let marked = piece.end < text.len();
            texts.push(Text { piece, marked });
            return Ok(texts);
        }
    }
    Err(Error::Internal(
        "no room for the truncation marker".to_owned(),
    ))
}

fn number(text: &str, pieces: &[Piece], numbering: Numbering, marker: &str) -> Vec<String> {
    let texts: Vec<Text> = pieces
        .iter()
        .map(|&piece| Text {
            piece,
            marked: false,
        })
        .collect();
    number_marked(text, &texts, numbering, marker)
}

fn number_marked(text: &str, pieces: &[Text], numbering: Numbering, marker: &str) -> Vec<String> {
    let n = pieces.len();
    pieces
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let core = &text[t.piece.start..t.piece.end];
            let marker = if t.marked { marker } else { "" };
            match numbering {
                _ if n < 2 => format!("{core}{marker}"),
                Numbering::Off => format!("{core}{marker}"),
                Numbering::Prefix => format!("({}/{n}) {core}{marker}", i + 1),
                Numbering::Suffix => format!("{core}{marker} ({}/{n})", i + 1),
            }
        })
        .collect()
}

/// Media attached to the first or last text part, up to `per_message` per part;
/// the rest in media-only parts next to it (before the first part, or after the
/// last), keeping the media order.
fn layout(
    texts: Vec<(String, Measurement)>,
    media: Vec<String>,
    per_message: usize,
    placement: MediaPlacement,
    sms: bool,
    not_after: Option<i64>,
) -> Vec<Part> {
    let part = |body: Option<(String, Measurement)>, media_urls: Vec<String>| {
        let (encoding, segments) = match (&body, sms) {
            (Some((_, m)), true) => (Some(m.encoding), Some(m.segments)),
            _ => (None, None),
        };
        Part {
            index: 0,
            count: 0,
            body: body.map(|(b, _)| b),
            media_urls,
            encoding,
            segments,
            content_sid: None,
            content_variables_json: None,
            template_reason: None,
            not_after,
        }
    };
    let mut groups: Vec<Vec<String>> = media
        .chunks(per_message.max(1))
        .map(<[String]>::to_vec)
        .collect();
    let mut parts: Vec<Part> = Vec::new();
    if texts.is_empty() {
        parts.extend(groups.into_iter().map(|g| part(None, g)));
    } else {
        let n = texts.len();
        for (i, text) in texts.into_iter().enumerate() {
            match placement {
                MediaPlacement::First if i == 0 => {
                    // All groups but the last go first, media-only; the last rides with the text.
                    let last = groups.pop().unwrap_or_default();
                    parts.extend(groups.drain(..).map(|g| part(None, g)));
                    parts.push(part(Some(text), last));
                }
                MediaPlacement::Last if i == n - 1 => {
                    let mut rest = groups.drain(..);
                    parts.push(part(Some(text), rest.next().unwrap_or_default()));
                    parts.extend(rest.map(|g| part(None, g)));
                }
                _ => parts.push(part(Some(text), Vec::new())),
            }
        }
    }
    let count = parts.len();
    for (index, p) in parts.iter_mut().enumerate() {
        p.index = index;
        p.count = count;
    }
    parts
}
