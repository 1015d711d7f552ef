//! Segment planning and SMS billing over arbitrary Unicode.

use std::collections::BTreeMap;

use si_schemas::records::{Channel, MediaRef, SegmentationHints};
use si_segment::config::LengthUnit;
use si_segment::{
    Encoding, Error, Numbering, OverBudget, Plan, Response, SegmentConfig, Timing, billing, gsm7,
    lookalike, measure, normalize, plan,
};
use unicode_segmentation::UnicodeSegmentation;

use super::{Cursor, text};
use crate::engine::Target;

const WORDS: &[&str] = &[
    " ",
    "  ",
    "\n",
    "\n\n",
    "\r\n",
    ". ",
    "! ",
    "? ",
    "。",
    " — ",
    "…",
    "(1/2) ",
    " (2/2)",
    "https://example.com/a/b?c=d&e=f",
    "www.example.org/x",
    "user@example.com",
    "€",
    "{}",
    "[]",
    "~",
    "\\",
    "^",
    "|",
    "€€€€€€€€€€",
    "😀😀😀😀",
    "👨‍👩‍👧‍👦",
    "🇫🇷🇯🇵",
    "e\u{301}",
    "\u{200B}",
    "\u{A0}",
    "\u{2029}",
    "\u{85}",
    "\u{0B}",
    "\u{0C}",
    "“quoted”",
    "it’s",
];

/// `plan()` of the segment stage.
pub const PLAN: Target = Target {
    name: "segment_plan",
    about: "parts fit the channel limits and budgets, are counted as billed, are trimmed, and reassemble the normalized text in order",
    run: plan_target,
    dictionary: WORDS,
    generate: None,
    max_len: 12_000,
};

const NOW: i64 = 1_700_000_000_000;
const LOCALES: &[Option<&str>] = &[None, Some("en-US"), Some("es"), Some("pt-BR"), Some("ja")];

fn config(cursor: &mut Cursor<'_>) -> SegmentConfig {
    let flags = cursor.byte();
    let hard = 1 + cursor.choose(25);
    let mut config = SegmentConfig {
        smart_encoding: flags & 1 != 0,
        numbering: [
            Numbering::Off,
            Numbering::Prefix,
            Numbering::Suffix,
            Numbering::Prefix,
        ][usize::from(flags >> 1) & 3],
        keep_paragraphs: flags & 8 != 0,
        min_fill_percent: u8::try_from(cursor.choose(101)).unwrap_or(50),
        max_parts: (1 + cursor.choose(10)).min(hard),
        hard_max_parts: hard,
        sms_max_segments_per_response: (flags & 16 != 0).then(|| 1 + cursor.choose(30)),
        over_budget: if flags & 32 != 0 {
            OverBudget::Truncate
        } else {
            OverBudget::Split
        },
        truncation_markers: BTreeMap::from([
            ("es".to_owned(), "[...]".to_owned()),
            ("ja".to_owned(), "…（続く）".to_owned()),
        ]),
        ..SegmentConfig::default()
    };
    config.sms.max_segments_per_message = Some(1 + cursor.choose(10));
    let length = 64 + cursor.choose(1537);
    config.whatsapp.max_length = length;
    config.chat.max_length = 64 + cursor.choose(4000);
    config
}

fn plan_target(data: &[u8]) {
    let mut cursor = Cursor::new(data);
    let channel = [Channel::Sms, Channel::Whatsapp, Channel::Chat][cursor.choose(3)];
    let config = config(&mut cursor);
    if config.validate().is_err() {
        return;
    }
    let locale = LOCALES[cursor.choose(LOCALES.len())];
    let hint = cursor.byte();
    let hints = SegmentationHints {
        max_parts: (hint & 1 != 0).then(|| i32::from(hint >> 4) - 2),
        keep_paragraphs: (hint & 2 != 0).then_some(hint & 4 != 0),
        allow_truncation: (hint & 8 != 0).then_some(hint & 64 != 0),
        ..SegmentationHints::default()
    };
    let media: Vec<MediaRef> = (0..usize::from(hint >> 6) % 3)
        .map(|i| MediaRef {
            url: Some(format!("https://example.com/m/{i}.jpg")),
            ..MediaRef::default()
        })
        .collect();
    let input = text(cursor.rest());
    let response = Response {
        text: &input,
        media: &media,
        channel,
        locale,
        hints: Some(&hints),
        // A Conversations message takes one media item.
        conversations: hint & 32 != 0,
    };
    let timing = Timing {
        now_ms: NOW,
        last_inbound_ms: Some(NOW),
    };
    match plan(&response, timing, &config) {
        Ok(plan) => check(
            &input,
            channel,
            &config,
            locale,
            &plan,
            response.conversations,
        ),
        Err(Error::Empty) => assert!(
            normalize(&input, channel, config.smart_encoding)
                .0
                .is_empty()
                && media.is_empty(),
            "refused as empty"
        ),
        Err(Error::ClusterTooLong { .. }) => {}
        Err(other) => panic!("plan failed: {other}"),
    }
}

fn is_ws(g: &str) -> bool {
    g.chars().all(char::is_whitespace)
}

/// `text` from `at`, past whitespace clusters.
fn skip_ws(text: &str, at: usize) -> usize {
    text[at..]
        .grapheme_indices(true)
        .find(|(_, g)| !is_ws(g))
        .map_or(text.len(), |(i, _)| at + i)
}

fn strip_numbering(body: &str, numbering: Numbering, index: usize, count: usize) -> &str {
    let label = format!("({}/{count})", index + 1);
    match numbering {
        _ if count < 2 => body,
        Numbering::Prefix => body
            .strip_prefix(&format!("{label} "))
            .unwrap_or_else(|| panic!("part {index} lacks its number {label}")),
        Numbering::Suffix => body
            .strip_suffix(&format!(" {label}"))
            .unwrap_or_else(|| panic!("part {index} lacks its number {label}")),
        Numbering::Off => body,
    }
}

fn check(
    input: &str,
    channel: Channel,
    config: &SegmentConfig,
    locale: Option<&str>,
    plan: &Plan,
    conversations: bool,
) {
    let limits = config.limits(channel).expect("a text channel");
    let sms = channel == Channel::Sms;
    let normalized = &plan.normalized_text;
    assert_eq!(
        normalized,
        &normalize(input, channel, config.smart_encoding).0,
        "normalized text"
    );
    let bodies: Vec<&str> = plan
        .parts
        .iter()
        .filter_map(|p| p.body.as_deref())
        .collect();
    let count = plan.parts.len();
    // The part budgets count text parts (media-only parts come on top).
    assert!(
        bodies.len() <= config.hard_max_parts,
        "{} text parts",
        bodies.len()
    );
    let mut billed = 0;
    for (i, part) in plan.parts.iter().enumerate() {
        assert_eq!((part.index, part.count), (i, count), "part numbering");
        assert!(part.media_urls.len() <= limits.max_media_per_message);
        assert!(!conversations || part.media_urls.len() <= 1, "one MediaSid");
        let Some(body) = part.body.as_deref() else {
            continue;
        };
        let m = measure(body);
        match limits.unit {
            LengthUnit::Utf16 => assert!(m.utf16_len <= limits.max_length.min(1600), "{m:?}"),
            LengthUnit::Utf8Bytes => assert!(m.utf8_len <= limits.max_length, "{m:?}"),
        }
        if sms {
            assert_eq!(part.segments, Some(m.segments), "billed segments of a part");
            assert_eq!(part.encoding, Some(m.encoding));
            let max = limits.max_segments_per_message.unwrap_or(usize::MAX);
            assert!(m.segments <= max, "{} segments > {max}", m.segments);
            billed += m.segments;
        } else {
            assert_eq!((part.segments, part.encoding), (None, None));
        }
        let graphemes: Vec<&str> = body.graphemes(true).collect();
        assert!(
            graphemes.first().is_some_and(|g| !is_ws(g))
                && graphemes.last().is_some_and(|g| !is_ws(g)),
            "part {i} is empty or not trimmed: {body:?}"
        );
    }
    if sms && !bodies.is_empty() {
        assert_eq!(plan.total_segments, Some(billed), "total segments");
    }
    // The bodies, numbering and marker off, are the normalized text in order
    // with only whitespace between them.
    let numbering = if limits.numbered {
        config.numbering
    } else {
        Numbering::Off
    };
    let marker = config.marker_for(locale);
    let gsm_marker = lookalike::to_gsm7(marker);
    let n = bodies.len();
    let mut at = 0;
    for (i, body) in bodies.iter().enumerate() {
        let mut core = strip_numbering(body, numbering, i, n);
        if plan.truncated && i + 1 == n {
            core = core
                .strip_suffix(marker)
                .or_else(|| gsm_marker.as_deref().and_then(|m| core.strip_suffix(m)))
                .unwrap_or_else(|| panic!("the last part lacks the marker: {core:?}"));
            core = core.trim_end();
        }
        let start = skip_ws(normalized, at);
        assert!(
            normalized[start..].starts_with(core),
            "part {i} is not the next piece of the text"
        );
        at = start + core.len();
    }
    if plan.truncated {
        assert!(at < normalized.len(), "truncated, yet everything was sent");
    } else if n > 0 {
        assert_eq!(
            skip_ws(normalized, at),
            normalized.len(),
            "text left unsent"
        );
    }
}

/// `measure()`: encoding, units and billed segments of one body.
pub const MEASURE: Target = Target {
    name: "segment_measure",
    about: "encoding, lengths and billed segments agree with the GSM-7 tables, UTF-16 and the segment sizes; billing units cover the text",
    run: measure_target,
    dictionary: WORDS,
    generate: None,
    max_len: 6000,
};

fn measure_target(data: &[u8]) {
    let input = text(data);
    let m = measure(&input);
    assert_eq!(m.utf8_len, input.len());
    assert_eq!(m.utf16_len, input.encode_utf16().count());
    let gsm = gsm7::is_gsm7(&input);
    assert_eq!(m.encoding == Encoding::Gsm7, gsm, "encoding");
    let (single, multi) = if gsm {
        assert_eq!(Some(m.units), gsm7::septet_len(&input), "septets");
        assert!(gsm7::encode(&input).is_some(), "GSM-7 text does not encode");
        (160, 153)
    } else {
        assert_eq!(m.units, m.utf16_len, "UCS-2 units");
        assert!(gsm7::encode(&input).is_none());
        (70, 67)
    };
    match m.units {
        0 => assert_eq!(m.segments, 0),
        u if u <= single => assert_eq!(m.segments, 1),
        u => {
            assert!(m.segments >= u.div_ceil(multi), "{m:?}: too few segments");
            assert!(m.segments <= u, "{m:?}: more segments than units");
        }
    }
    assert_eq!(billing::text_units(&input).collect::<String>(), input);
    if let Some(replaced) = lookalike::to_gsm7(&input) {
        assert!(
            gsm7::is_gsm7(&replaced),
            "look-alike replacement is not GSM-7"
        );
    }
}
