//! Property tests of the splitter: the parts reassemble the normalized text, no
//! part exceeds its budget, no grapheme cluster or URL is split.

use proptest::prelude::*;
use si_schemas::records::{Channel, SegmentationHints};
use si_segment::{
    Encoding, Numbering, OverBudget, Plan, Response, SegmentConfig, Timing, billing, measure, plan,
};
use unicode_segmentation::UnicodeSegmentation;

// ---------------------------------------------------------------- reference

/// The GSM 03.38 default alphabet in code order (0x1B, the escape, left out),
/// and the extension table: written out independently of the crate's tables.
const BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
                     ¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
const EXTENDED: &str = "\u{0C}^{}\\[~]|€";

/// Encoding, units and segments by a straightforward reading of the rules.
fn reference(text: &str) -> (Encoding, usize, usize) {
    let gsm = text
        .chars()
        .all(|c| BASIC.contains(c) || EXTENDED.contains(c));
    let cost = |c: char| {
        if !gsm {
            c.len_utf16()
        } else if EXTENDED.contains(c) {
            2
        } else {
            1
        }
    };
    let (encoding, single, concat) = if gsm {
        (Encoding::Gsm7, 160, 153)
    } else {
        (Encoding::Ucs2, 70, 67)
    };
    let units: usize = text.chars().map(cost).sum();
    if units == 0 {
        return (encoding, 0, 0);
    }
    if units <= single {
        return (encoding, units, 1);
    }
    // The packing units are Twilio's calculator's (Unicode 10 grapheme clusters,
    // CR and LF apart); `billing::text_units` is checked against the calculator
    // itself in tests/oracles.rs.
    let mut items = Vec::new();
    for g in billing::text_units(text) {
        let size: usize = g.chars().map(cost).sum();
        if size <= concat {
            items.push(size);
        } else {
            items.extend(g.chars().map(cost));
        }
    }
    let (mut segments, mut fill) = (1, 0);
    for size in items {
        if fill + size > concat {
            segments += 1;
            fill = 0;
        }
        fill += size;
    }
    (encoding, units, segments)
}

// ---------------------------------------------------------------- generators

const WORDS: &[&str] = &[
    // accented Latin, in and out of GSM 03.38
    "café",
    "señor",
    "Ümlaut",
    "smørrebrød",
    "Ça",
    "ça",
    "São",
    "naïve",
    "Ærø",
    "straße",
    "crème",
    "à",
    // Greek: GSM capitals and others
    "ΔΦΓΛΩ",
    "ΠΨΣΘΞ",
    "Δέλτα",
    "ΑΒΓ",
    // extension characters
    "{x}",
    "[y]",
    "€5",
    "a|b",
    "~",
    "^",
    "\\",
    "{€}",
    // emoji, flags, ZWJ sequences, skin tones, combining marks
    "😀",
    "👍🏽",
    "👨‍👩‍👧‍👦",
    "🏳️‍🌈",
    "🇫🇷",
    "🇯🇵🇧🇷",
    "e\u{301}",
    "n\u{303}\u{301}",
    // other scripts
    "Привет",
    "мир",
    "漢字",
    "こんにちは",
    "שלום",
    "مرحبا",
    // look-alikes
    "“quoted”",
    "it’s",
    "—",
    "–",
    "…",
    "\u{A0}",
    "\u{200B}",
    "«ok»",
    "•",
];

const CLUSTERS: &[&str] = &[
    "👨‍👩‍👧‍👦",
    "🇫🇷",
    "🇯🇵",
    "👍🏽",
    "🏳️‍🌈",
    "e\u{301}",
    "n\u{303}\u{301}",
    "\r\n",
    "x",
    "€",
    "{",
    "é",
    "漢",
    "😀",
    "ç",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9]{1,10}",
        2 => "[a-z]{1,8}[.,!?;:]",
        3 => proptest::sample::select(WORDS).prop_map(str::to_owned),
        1 => "[a-z]{40,120}",
        // A long run without spaces made of multi-code-point clusters: only
        // grapheme boundaries to cut at.
        1 => proptest::collection::vec(proptest::sample::select(CLUSTERS), 10..90).prop_map(|c| c.concat()),
    ]
}

fn url() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_=&/-]{0,25}[a-z0-9]".prop_map(|p| format!("https://example.com/{p}")),
        "[a-z0-9]{1,12}".prop_map(|p| format!("www.example.org/{p}")),
        "[a-z]{1,8}".prop_map(|p| format!("http://t.co/{p}?q=1&r={p}")),
    ]
}

fn separator() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(
        &[
            " ", " ", " ", " ", "  ", "\n", "\n\n", ". ", "! ", "? ", "\r\n", ".\n\n", "。", " — ",
        ][..],
    )
}

#[derive(Debug, Clone)]
struct Generated {
    text: String,
    urls: Vec<String>,
}

fn text() -> impl Strategy<Value = Generated> {
    let token = prop_oneof![
        8 => word().prop_map(|w| (w, false)),
        1 => url().prop_map(|u| (u, true)),
    ];
    proptest::collection::vec((token, separator()), 0..160).prop_map(|tokens| {
        let mut text = String::new();
        let mut urls = Vec::new();
        for ((token, is_url), sep) in tokens {
            if is_url {
                // URLs stand between spaces so the detector sees them whole.
                text.push(' ');
                urls.push(token.clone());
                text.push_str(&token);
                text.push(' ');
            } else {
                text.push_str(&token);
            }
            text.push_str(sep);
        }
        Generated { text, urls }
    })
}

#[derive(Debug, Clone)]
struct Case {
    channel: Channel,
    config: SegmentConfig,
    hints: SegmentationHints,
}

fn case() -> impl Strategy<Value = Case> {
    (
        proptest::sample::select(&[Channel::Sms, Channel::Whatsapp, Channel::Chat][..]),
        any::<bool>(),
        proptest::sample::select(&[Numbering::Off, Numbering::Prefix, Numbering::Suffix][..]),
        1..=10usize,
        80..=1600usize,
        (any::<bool>(), 0..=100u8, any::<bool>()),
        (1..=8usize, proptest::option::of(1..=30usize), 5..=25usize),
    )
        .prop_map(
            |(
                channel,
                smart,
                numbering,
                segs,
                length,
                (keep, fill, truncate),
                (max_parts, max_segs, hard),
            )| {
                let mut config = SegmentConfig {
                    smart_encoding: smart,
                    numbering,
                    keep_paragraphs: keep,
                    min_fill_percent: fill,
                    max_parts: max_parts.min(hard),
                    hard_max_parts: hard,
                    sms_max_segments_per_response: max_segs,
                    over_budget: if truncate {
                        OverBudget::Truncate
                    } else {
                        OverBudget::Split
                    },
                    ..SegmentConfig::default()
                };
                config.sms.max_segments_per_message = Some(segs);
                config.whatsapp.max_length = length;
                config.chat.max_length = length;
                config.validate().expect("generated config is valid");
                Case {
                    channel,
                    config,
                    hints: SegmentationHints::default(),
                }
            },
        )
}

// ---------------------------------------------------------------- checks

const ZWSP: char = '\u{200B}';

const NOW: Timing = Timing {
    now_ms: 1_700_000_000_000,
    last_inbound_ms: Some(1_700_000_000_000),
};

/// The body without its numbering, checking the numbering on the way.
fn strip_numbering(body: &str, numbering: Numbering, index: usize, count: usize) -> &str {
    if count < 2 || numbering == Numbering::Off {
        return body;
    }
    let label = format!("({}/{count})", index + 1);
    match numbering {
        Numbering::Prefix => body
            .strip_prefix(&format!("{label} "))
            .unwrap_or_else(|| panic!("part {index} lacks {label}: {body:?}")),
        Numbering::Suffix => body
            .strip_suffix(&format!(" {label}"))
            .unwrap_or_else(|| panic!("part {index} lacks {label}: {body:?}")),
        Numbering::Off => body,
    }
}

fn check_plan(generated: &Generated, case: &Case, plan: &Plan) {
    let config = &case.config;
    let normalized = &plan.normalized_text;
    let sms = case.channel == Channel::Sms;
    let limits = config.limits(case.channel).expect("text channel");
    let numbering = if limits.numbered {
        config.numbering
    } else {
        Numbering::Off
    };
    let texts: Vec<&str> = plan
        .parts
        .iter()
        .filter_map(|p| p.body.as_deref())
        .collect();
    let n = texts.len();

    // Budgets, and the reported encoding and segments, for every part.
    for part in &plan.parts {
        let Some(body) = part.body.as_deref() else {
            continue;
        };
        let utf16 = body.encode_utf16().count();
        match case.channel {
            Channel::Chat => assert!(body.len() <= limits.max_length, "{} bytes", body.len()),
            _ => assert!(utf16 <= limits.max_length.min(1600), "{utf16} UTF-16 units"),
        }
        if sms {
            let (encoding, _, segments) = reference(body);
            assert_eq!(part.encoding, Some(encoding), "{body:?}");
            assert_eq!(part.segments, Some(segments), "{body:?}");
            let max = limits
                .max_segments_per_message
                .expect("SMS has a segment limit");
            assert!(segments <= max, "{segments} > {max} segments: {body:?}");
        } else {
            assert_eq!((part.encoding, part.segments), (None, None));
        }
        assert!(
            body.trim() == body && !body.is_empty(),
            "untrimmed or empty: {body:?}"
        );
    }
    assert!(n <= config.hard_max_parts, "{n} parts");
    if plan.truncated && !plan.over_budget {
        // Truncation to the budget: parts and segments within it.
        assert!(n <= config.max_parts, "{n} > {} parts", config.max_parts);
        if let (true, Some(max)) = (sms, config.sms_max_segments_per_response) {
            assert!(
                plan.total_segments.unwrap_or(0) <= max,
                "{:?} > {max} segments",
                plan.total_segments
            );
        }
    }

    // Reassembly: the bodies without numbering (and marker) are consecutive
    // slices of the normalized text with only whitespace between them.
    let marker = if sms && si_segment::gsm7::is_gsm7(normalized) {
        "..."
    } else {
        "…"
    };
    let boundaries: Vec<usize> = normalized
        .grapheme_indices(true)
        .map(|(i, _)| i)
        .chain([normalized.len()])
        .collect();
    let mut ranges = Vec::new();
    let mut cursor = 0;
    for (index, body) in texts.iter().enumerate() {
        let mut core = strip_numbering(body, numbering, index, n);
        if plan.truncated && index == n - 1 {
            core = core
                .strip_suffix(marker)
                .unwrap_or_else(|| panic!("last part lacks the marker {marker:?}: {core:?}"));
        }
        let gap_end = cursor + normalized[cursor..].len() - normalized[cursor..].trim_start().len();
        assert!(
            normalized[gap_end..].starts_with(core),
            "part {index} {core:?} is not next in the text at {gap_end}: {:?}",
            &normalized[gap_end..]
        );
        let range = gap_end..gap_end + core.len();
        assert!(
            boundaries.binary_search(&range.start).is_ok(),
            "part {index} starts inside a grapheme"
        );
        assert!(
            boundaries.binary_search(&range.end).is_ok(),
            "part {index} ends inside a grapheme"
        );
        cursor = range.end;
        ranges.push(range);
    }
    if plan.truncated {
        assert!(
            cursor < normalized.len(),
            "marked as truncated but everything was sent"
        );
    } else {
        assert!(
            normalized[cursor..].trim().is_empty(),
            "text left over: {:?}",
            &normalized[cursor..]
        );
    }

    // URLs are never cut: each occurrence lies inside one part or wholly outside the parts.
    if !plan.warnings.iter().any(|w| w.contains("cut at byte")) {
        for u in &generated.urls {
            for (at, _) in normalized.match_indices(u.as_str()) {
                let end = at + u.len();
                let overlapping: Vec<_> = ranges
                    .iter()
                    .filter(|r| r.start < end && at < r.end)
                    .collect();
                assert!(
                    overlapping.len() <= 1
                        && overlapping.iter().all(|r| r.start <= at && end <= r.end)
                        || (plan.truncated && overlapping.iter().all(|r| r.end == cursor)),
                    "URL {u:?} at {at} split across {overlapping:?}"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn parts_reassemble_fit_and_keep_clusters_and_urls(generated in text(), case in case()) {
        let response = Response { hints: Some(&case.hints), ..Response::text(&generated.text, case.channel) };
        match plan(&response, NOW, &case.config) {
            Ok(plan) => check_plan(&generated, &case, &plan),
            Err(si_segment::Error::Empty) => {
                let blank = generated.text.chars().all(|c| c.is_whitespace() || c == ZWSP);
                prop_assert!(blank, "Empty for a text with content");
            }
            Err(e) => prop_assert!(false, "{e}"),
        }
    }

    #[test]
    fn measure_matches_the_reference(generated in text()) {
        let m = measure(&generated.text);
        prop_assert_eq!((m.encoding, m.units, m.segments), reference(&generated.text));
    }

    #[test]
    fn cognition_max_parts_with_truncation_is_respected(generated in text(), max_parts in 1..=4i32) {
        let hints = SegmentationHints { max_parts: Some(max_parts), allow_truncation: Some(true), ..SegmentationHints::default() };
        let mut config = SegmentConfig::default();
        config.sms.max_segments_per_message = Some(1);
        let case = Case { channel: Channel::Sms, config, hints };
        let response = Response { hints: Some(&case.hints), ..Response::text(&generated.text, Channel::Sms) };
        if let Ok(plan) = plan(&response, NOW, &case.config) {
            let n = plan.parts.iter().filter(|p| p.body.is_some()).count();
            prop_assert!(n <= usize::try_from(max_parts).unwrap_or(0), "{} parts", n);
            check_plan(&generated, &case, &plan);
        }
    }
}
