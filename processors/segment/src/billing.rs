//! The units Twilio packs into SMS segments when it counts (and bills) them.
//!
//! Twilio's segment calculator (npm `sms-segments-calculator` 1.3.0,
//! TwilioDevEd/message-segment-calculator, the reference Twilio publishes for
//! "how many segments will this cost") packs a message unit by unit, a unit never
//! straddling two segments:
//!
//! - the units are the grapheme clusters of the `grapheme-splitter` 1.0.4
//!   package, which implements UAX #29 of **Unicode 10.0**;
//! - except that a `"\r\n"` cluster is taken apart into `"\r"` and `"\n"`
//!   (`splitGraphemes` in its `textUtils.ts`).
//!
//! The text itself is cut into parts at today's grapheme clusters
//! (`unicode-segmentation`, Unicode 16), which are never smaller than a Unicode
//! 10 cluster except in the cases below. So each of today's clusters is taken
//! apart here into the Unicode 10 clusters it is made of ([`text_units`]):
//!
//! - CR and LF: two units (the calculator's own rule);
//! - an Indic conjunct (Unicode 15.1 rule GB9c: consonant, virama, consonant, as
//!   in Devanagari `क्ष`): Unicode 10 breaks before the second consonant;
//! - after a ZWJ, Unicode 10 (GB11) joins only the emoji with the property
//!   `Glue_After_Zwj` or `E_Base_GAZ` (`GLUE_AFTER_ZWJ`); Unicode 11 and later
//!   join any pictographic emoji (so `❤️‍🔥` is two units for Twilio, one cluster
//!   today);
//! - a skin-tone modifier joins only an `E_Base` emoji of Unicode 10
//!   (`E_BASE`, GB10); today it extends anything;
//! - a character that extends a cluster today but was unassigned or not a mark
//!   in Unicode 10 (`NEWER_EXTEND`) is a unit of its own;
//! - only the Prepend characters of Unicode 10 (`PREPEND`) join what follows.
//!
//! So a surrogate pair and a GSM-7 escape sequence are never split (they are
//! one character), a flag, a keycap and most ZWJ emoji sequences are one unit,
//! and the count is exactly the calculator's, except for text the calculator
//! joins across today's cluster boundaries, which no real message has: a ZWJ
//! followed by a `Glue_After_Zwj` emoji after a non-emoji (`a‍♀`), U+11A3A
//! (Prepend in Unicode 10, no longer), and the four spacing marks U+1CF2,
//! U+1CF3, U+11720, U+11721 (Unicode 10 extended with them, today does not).
//! One case goes the other way: the calculator's splitter breaks combining
//! marks off a flag (`🇫🇷` + U+0301), which Unicode 10 and today keep on it,
//! so such a text can cost the calculator one segment less than here.
//! `tests/oracles.rs` compares the units of every code point of the BMP and
//! plane 1, in the contexts where the rules differ, with the calculator's.
//!
//! Facts from Unicode 10.0 `emoji-data.txt` (`E_Base`, `Glue_After_Zwj`,
//! `E_Base_GAZ`) and UAX #29 revisions 31 (Unicode 10) and 43 (Unicode 15.1),
//! checked against the calculator's behaviour.

use unicode_segmentation::UnicodeSegmentation;

/// Unicode 10 `Glue_After_Zwj` and `E_Base_GAZ` (U+1F466..U+1F469, boy, girl,
/// man, woman): what GB11 of Unicode 10 joins after a ZWJ.
const GLUE_AFTER_ZWJ: &[(u32, u32)] = &[
    (0x2640, 0x2640),
    (0x2642, 0x2642),
    (0x2695, 0x2696),
    (0x2708, 0x2708),
    (0x2764, 0x2764),
    (0x1F308, 0x1F308),
    (0x1F33E, 0x1F33E),
    (0x1F373, 0x1F373),
    (0x1F393, 0x1F393),
    (0x1F3A4, 0x1F3A4),
    (0x1F3A8, 0x1F3A8),
    (0x1F3EB, 0x1F3EB),
    (0x1F3ED, 0x1F3ED),
    (0x1F466, 0x1F469),
    (0x1F48B, 0x1F48B),
    (0x1F4BB, 0x1F4BC),
    (0x1F527, 0x1F527),
    (0x1F52C, 0x1F52C),
    (0x1F5E8, 0x1F5E8),
    (0x1F680, 0x1F680),
    (0x1F692, 0x1F692),
];

/// Unicode 10 `E_Base` and `E_Base_GAZ`: the emoji a skin-tone modifier joins
/// (GB10 of Unicode 10).
const E_BASE: &[(u32, u32)] = &[
    (0x261D, 0x261D),
    (0x26F9, 0x26F9),
    (0x270A, 0x270D),
    (0x1F385, 0x1F385),
    (0x1F3C2, 0x1F3C4),
    (0x1F3C7, 0x1F3C7),
    (0x1F3CA, 0x1F3CC),
    (0x1F442, 0x1F443),
    (0x1F446, 0x1F450),
    (0x1F466, 0x1F469),
    (0x1F46E, 0x1F46E),
    (0x1F470, 0x1F478),
    (0x1F47C, 0x1F47C),
    (0x1F481, 0x1F483),
    (0x1F485, 0x1F487),
    (0x1F4AA, 0x1F4AA),
    (0x1F574, 0x1F575),
    (0x1F57A, 0x1F57A),
    (0x1F590, 0x1F590),
    (0x1F595, 0x1F596),
    (0x1F645, 0x1F647),
    (0x1F64B, 0x1F64F),
    (0x1F6A3, 0x1F6A3),
    (0x1F6B4, 0x1F6B6),
    (0x1F6C0, 0x1F6C0),
    (0x1F6CC, 0x1F6CC),
    (0x1F918, 0x1F91C),
    (0x1F91E, 0x1F91F),
    (0x1F926, 0x1F926),
    (0x1F930, 0x1F939),
    (0x1F93D, 0x1F93E),
    (0x1F9D1, 0x1F9DD),
];

/// Characters that extend a grapheme cluster today (Grapheme_Cluster_Break
/// Extend or SpacingMark) but did not in Unicode 10 (most were not assigned
/// yet, a few were reclassified), skin-tone modifiers aside. Between Unicode 10
/// and the `unicode-segmentation` in use.
const NEWER_EXTEND: &[(u32, u32)] = &[
    (0x07FD, 0x07FD),
    (0x0897, 0x089F),
    (0x08CA, 0x08D3),
    (0x09FE, 0x09FE),
    (0x0B55, 0x0B55),
    (0x0C04, 0x0C04),
    (0x0C3C, 0x0C3C),
    (0x0CF3, 0x0CF3),
    (0x0D81, 0x0D81),
    (0x0EBA, 0x0EBA),
    (0x0ECE, 0x0ECE),
    (0x1715, 0x1715),
    (0x180F, 0x180F),
    (0x1ABF, 0x1ADD),
    (0x1AE0, 0x1AEB),
    (0x1DFA, 0x1DFA),
    (0xA82C, 0xA82C),
    (0xA8FF, 0xA8FF),
    (0x10D24, 0x10D27),
    (0x10D69, 0x10D6D),
    (0x10EAB, 0x10EAC),
    (0x10EFA, 0x10EFF),
    (0x10F46, 0x10F50),
    (0x10F82, 0x10F85),
    (0x11070, 0x11070),
    (0x11073, 0x11074),
    (0x110C2, 0x110C2),
    (0x11145, 0x11146),
    (0x111C9, 0x111C9),
    (0x111CE, 0x111CF),
    (0x11241, 0x11241),
    (0x1133B, 0x1133B),
    (0x113B8, 0x113C0),
    (0x113C2, 0x113C2),
    (0x113C5, 0x113C5),
    (0x113C7, 0x113CA),
    (0x113CC, 0x113D0),
    (0x113D2, 0x113D2),
    (0x113E1, 0x113E2),
    (0x1145E, 0x1145E),
    (0x1182C, 0x1183A),
    (0x11930, 0x11935),
    (0x11937, 0x11938),
    (0x1193B, 0x1193E),
    (0x11940, 0x11940),
    (0x11942, 0x11943),
    (0x119D1, 0x119D7),
    (0x119DA, 0x119E0),
    (0x119E4, 0x119E4),
    (0x11B60, 0x11B67),
    (0x11D8A, 0x11D8E),
    (0x11D90, 0x11D91),
    (0x11D93, 0x11D97),
    (0x11EF3, 0x11EF6),
    (0x11F00, 0x11F01),
    (0x11F03, 0x11F03),
    (0x11F34, 0x11F3A),
    (0x11F3E, 0x11F42),
    (0x11F5A, 0x11F5A),
    (0x13440, 0x13440),
    (0x13447, 0x13455),
    (0x1611E, 0x1612F),
    (0x16F4F, 0x16F4F),
    (0x16F7F, 0x16F87),
    (0x16FE4, 0x16FE4),
    (0x16FF0, 0x16FF1),
    (0x1CF00, 0x1CF2D),
    (0x1CF30, 0x1CF46),
    (0x1E08F, 0x1E08F),
    (0x1E130, 0x1E136),
    (0x1E2AE, 0x1E2AE),
    (0x1E2EC, 0x1E2EF),
    (0x1E4EC, 0x1E4EF),
    (0x1E5EE, 0x1E5EF),
    (0x1E6E3, 0x1E6E3),
    (0x1E6E6, 0x1E6E6),
    (0x1E6EE, 0x1E6EF),
    (0x1E6F5, 0x1E6F5),
];

/// Unicode 10 `Prepend` (GB9b joins whatever follows): Arabic number signs,
/// Syriac abbreviation mark, Malayalam dot reph, and a few of historic scripts.
const PREPEND: &[(u32, u32)] = &[
    (0x0600, 0x0605),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x08E2, 0x08E2),
    (0x0D4E, 0x0D4E),
    (0x110BD, 0x110BD),
    (0x111C2, 0x111C3),
    (0x11A3A, 0x11A3A),
    (0x11A86, 0x11A89),
    (0x11D46, 0x11D46),
];

const ZWJ: char = '\u{200D}';

fn in_table(table: &[(u32, u32)], c: char) -> bool {
    let c = u32::from(c);
    table
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

fn is_skin_tone(c: char) -> bool {
    ('\u{1F3FB}'..='\u{1F3FF}').contains(&c)
}

fn is_regional_indicator(c: char) -> bool {
    ('\u{1F1E6}'..='\u{1F1FF}').contains(&c)
}

fn is_hangul(c: char) -> bool {
    matches!(c,
        '\u{1100}'..='\u{11FF}' | '\u{A960}'..='\u{A97F}' | '\u{AC00}'..='\u{D7A3}' | '\u{D7B0}'..='\u{D7FF}')
}

/// Whether `a` then `b` make one cluster today.
fn one_cluster(a: char, b: char) -> bool {
    let mut buf = [0u8; 8];
    let a_len = a.encode_utf8(&mut buf).len();
    let b_len = b.encode_utf8(&mut buf[a_len..]).len();
    std::str::from_utf8(&buf[..a_len + b_len])
        .map(|pair| pair.graphemes(true).nth(1).is_none())
        .unwrap_or(false)
}

/// Whether `c` extends any cluster today (Extend, SpacingMark or ZWJ).
fn extends_today(c: char) -> bool {
    one_cluster('a', c)
}

/// Whether Unicode 10 keeps `c` in the cluster whose last character is `prev`
/// and whose last non-extending character is `base`; all in one cluster today;
/// `extends` is [`extends_today`] of `c`.
fn joins(base: char, prev: char, c: char, extends: bool) -> bool {
    if prev == '\r' {
        // "\r\n": the calculator's own split.
        return false;
    }
    if in_table(PREPEND, prev) {
        // GB9b: a Prepend character joins whatever follows.
        return true;
    }
    if is_skin_tone(c) {
        // GB10: E_Base Extend* × E_Modifier (a ZWJ is not Extend in Unicode 10).
        return prev != ZWJ && in_table(E_BASE, base);
    }
    if extends && !in_table(NEWER_EXTEND, c) {
        return true;
    }
    if prev == ZWJ {
        return in_table(GLUE_AFTER_ZWJ, c);
    }
    (is_regional_indicator(prev) && is_regional_indicator(c)) || (is_hangul(prev) && is_hangul(c))
}

/// The units Twilio's calculator packs, in order, that one grapheme cluster of
/// today (`unicode-segmentation`, extended) is made of.
pub(crate) fn units(cluster: &str) -> Units<'_> {
    Units { rest: cluster }
}

/// The units Twilio's segment calculator packs `text` in, in order (its
/// `graphemes`): every grapheme cluster of today taken apart by `units`.
pub fn text_units(text: &str) -> impl Iterator<Item = &str> {
    text.graphemes(true).flat_map(units)
}

/// Iterator of [`units`].
pub(crate) struct Units<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Units<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let mut chars = self.rest.char_indices();
        let (_, first) = chars.next()?;
        let (mut base, mut prev) = (first, first);
        let mut end = self.rest.len();
        for (i, c) in chars {
            let extends = extends_today(c);
            if !joins(base, prev, c, extends) {
                end = i;
                break;
            }
            if !extends || is_skin_tone(c) {
                base = c;
            }
            prev = c;
        }
        let (unit, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str) -> Vec<Vec<&str>> {
        text.graphemes(true).map(|g| units(g).collect()).collect()
    }

    #[test]
    fn crlf_is_two_units() {
        assert_eq!(split("a\r\nb"), [vec!["a"], vec!["\r", "\n"], vec!["b"]]);
    }

    #[test]
    fn conjuncts_break_before_the_second_consonant() {
        // क्ष: KA, VIRAMA, SSA is one cluster today (GB9c), two in Unicode 10.
        assert_eq!(split("क्षि"), [vec!["क्", "षि"]]);
        assert_eq!(split("नमस्ते"), [vec!["न"], vec!["म"], vec!["स्", "ते"]]);
        // Bengali too.
        assert_eq!(split("ক্ত"), [vec!["ক্", "ত"]]);
    }

    #[test]
    fn emoji_sequences_of_unicode_10_stay_whole() {
        let jamo = "\u{1100}\u{1161}\u{11A8}";
        for text in ["👨‍👩‍👧‍👦", "👩‍💻", "🏳️‍🌈", "🇫🇷", "👍🏽", "1️⃣", "e\u{301}", jamo]
        {
            assert_eq!(split(text), [vec![text]], "{text}");
        }
    }

    #[test]
    fn later_emoji_rules_are_undone() {
        assert_eq!(split("❤️‍🔥"), [vec!["❤️‍", "🔥"]]);
        assert_eq!(split("🫶🏽"), [vec!["🫶", "🏽"]]);
        assert_eq!(split("a🏽"), [vec!["a", "🏽"]]);
        // A mark added after Unicode 10 (Telugu nukta, Unicode 14).
        assert_eq!(split("క\u{C3C}"), [vec!["క", "\u{C3C}"]]);
    }

    #[test]
    fn tables_are_sorted() {
        for table in [GLUE_AFTER_ZWJ, E_BASE, NEWER_EXTEND, PREPEND] {
            assert!(table.windows(2).all(|w| w[0].1 < w[1].0));
            assert!(table.iter().all(|&(lo, hi)| lo <= hi));
        }
    }
}
