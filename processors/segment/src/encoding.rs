//! SMS encoding detection and segment counting.
//!
//! A message is GSM-7 when every character is in the GSM 03.38 default alphabet or
//! its extension table ([`crate::gsm7`]), otherwise UCS-2. Segment sizes follow
//! from the 140-octet (1120-bit) user data of one SMS and the 6-octet (48-bit)
//! user data header a concatenated message carries in every segment:
//!
//! | encoding | unit            | single segment     | per concatenated segment         |
//! |----------|-----------------|--------------------|----------------------------------|
//! | GSM-7    | septet (7 bits) | 1120 / 7 = 160     | (1120 − 48) / 7 = 153.1 → 153    |
//! | UCS-2    | UTF-16 unit     | 1120 / 16 = 70     | (1120 − 48) / 16 = 67            |
//!
//! An extension character costs two septets (escape + code); a character outside
//! the Basic Multilingual Plane costs two UTF-16 units (a surrogate pair).
//!
//! The segment count is what Twilio bills for the text sent as one message, as
//! Twilio's own segment calculator (`sms-segments-calculator`,
//! TwilioDevEd/message-segment-calculator) counts it: concatenated segments are
//! packed unit by unit, a unit going into the current segment if it fits, else
//! starting the next one. The units are the calculator's grapheme clusters
//! (module `billing`): Unicode 10 clusters, with CR and LF apart. So an escape
//! pair, a surrogate pair, a flag or a family emoji never straddles two
//! segments (a segment may stay short of 153/67), while CR LF and an Indic
//! conjunct may, although the splitter never cuts a *part* inside them. Only a
//! unit longer than a whole segment (which cannot fit anywhere) is packed
//! character by character, still never splitting an escape or surrogate pair.
//!
//! That count is per message. A response split into parts is several messages:
//! each part is billed its own count ([`Measurement::segments`] of its body), and
//! the response costs their sum, not the count of its whole text.

use serde::Serialize;
use si_schemas::records::TextEncoding;
use unicode_segmentation::UnicodeSegmentation;

use crate::{billing, gsm7};

/// GSM-7 septets in a single-segment message.
pub const GSM7_SINGLE: usize = 160;
/// GSM-7 septets per segment of a concatenated message.
pub const GSM7_CONCAT: usize = 153;
/// UCS-2 (UTF-16) units in a single-segment message.
pub const UCS2_SINGLE: usize = 70;
/// UCS-2 (UTF-16) units per segment of a concatenated message.
pub const UCS2_CONCAT: usize = 67;

/// SMS character encoding of a message body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Encoding {
    /// GSM 03.38 7-bit default alphabet (+ extension table).
    Gsm7,
    /// UCS-2, counted in UTF-16 units.
    Ucs2,
}

impl Encoding {
    /// Units (septets or UTF-16 units) that fit in a single-segment message.
    #[must_use]
    pub const fn single_segment_units(self) -> usize {
        match self {
            Self::Gsm7 => GSM7_SINGLE,
            Self::Ucs2 => UCS2_SINGLE,
        }
    }

    /// Units (septets or UTF-16 units) per segment of a concatenated message.
    #[must_use]
    pub const fn concatenated_segment_units(self) -> usize {
        match self {
            Self::Gsm7 => GSM7_CONCAT,
            Self::Ucs2 => UCS2_CONCAT,
        }
    }

    /// The `twilio.outbound.v1` field value.
    #[must_use]
    pub const fn to_schema(self) -> TextEncoding {
        match self {
            Self::Gsm7 => TextEncoding::Gsm7,
            Self::Ucs2 => TextEncoding::Ucs2,
        }
    }

    /// `GSM-7` or `UCS-2`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Gsm7 => "GSM-7",
            Self::Ucs2 => "UCS-2",
        }
    }
}

impl std::fmt::Display for Encoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl From<Encoding> for TextEncoding {
    fn from(encoding: Encoding) -> Self {
        encoding.to_schema()
    }
}

/// Encoding and size of one message body as Twilio will send it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Measurement {
    /// GSM-7 if every character is GSM-7, else UCS-2.
    pub encoding: Encoding,
    /// Septets (GSM-7) or UTF-16 units (UCS-2).
    pub units: usize,
    /// SMS segments Twilio bills for this text sent as one message (its segment
    /// calculator's count, see the module docs); 0 for an empty body.
    pub segments: usize,
    /// Length in UTF-16 units (what Twilio's 1600-character limit is checked against here).
    pub utf16_len: usize,
    /// Length in UTF-8 bytes.
    pub utf8_len: usize,
}

/// Encoding and segment count of `text` sent as one SMS body.
#[must_use]
pub fn measure(text: &str) -> Measurement {
    let mut meter = Meter::default();
    meter.push_str(text);
    meter.measurement()
}

/// GSM-7 if every character of `text` is GSM-7, else UCS-2.
#[must_use]
pub fn detect(text: &str) -> Encoding {
    if gsm7::is_gsm7(text) {
        Encoding::Gsm7
    } else {
        Encoding::Ucs2
    }
}

/// Whether `c` is its own grapheme cluster whatever its neighbours, as long as
/// they are such characters too: its Grapheme_Cluster_Break property is Other,
/// Control or LF (not CR, Extend, ZWJ, SpacingMark, Prepend, Regional_Indicator
/// or Hangul). Covers ASCII but CR, Latin-1 and Latin Extended, Greek,
/// Cyrillic, general punctuation, currency, CJK punctuation, kana and ideographs,
/// fullwidth ASCII. Checked against `unicode-segmentation` in the tests.
#[inline]
pub(crate) fn is_simple(c: char) -> bool {
    matches!(c,
        '\0'..='\x0C'
            | '\x0E'..='\x7F'
            | '\u{A0}'..='\u{2FF}'
            | '\u{370}'..='\u{482}'
            | '\u{48A}'..='\u{52F}'
            | '\u{2010}'..='\u{2027}'
            | '\u{2030}'..='\u{205E}'
            | '\u{20A0}'..='\u{20C0}'
            | '\u{3000}'..='\u{3029}'
            | '\u{3041}'..='\u{3096}'
            | '\u{30A0}'..='\u{30FF}'
            | '\u{4E00}'..='\u{9FFF}'
            | '\u{FF01}'..='\u{FF5E}')
}

/// Whether every grapheme cluster of `text` is a single character, by
/// [`is_simple`]: then clusters can be counted without the (slower) UAX #29
/// segmentation.
#[inline]
pub(crate) fn simple_clusters(text: &str) -> bool {
    text.chars().all(is_simple)
}

/// The grapheme clusters of a text with their byte offsets; characters when
/// `simple` (see [`simple_clusters`]).
#[derive(Clone)]
pub(crate) enum Clusters<'a> {
    Chars(&'a str, std::str::CharIndices<'a>),
    Graphemes(unicode_segmentation::GraphemeIndices<'a>),
}

/// The clusters of `text`; `simple` must be [`simple_clusters`] of a text `text` is part of.
pub(crate) fn clusters(text: &str, simple: bool) -> Clusters<'_> {
    if simple {
        Clusters::Chars(text, text.char_indices())
    } else {
        Clusters::Graphemes(text.grapheme_indices(true))
    }
}

impl<'a> Iterator for Clusters<'a> {
    type Item = (usize, &'a str);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::Chars(text, chars) => chars.next().map(|(i, c)| (i, &text[i..i + c.len_utf8()])),
            Self::Graphemes(graphemes) => graphemes.next(),
        }
    }
}

/// Segments of concatenated messages, filled cluster by cluster (next fit).
#[derive(Debug, Clone, Copy, Default)]
struct Pack {
    full: usize,
    fill: usize,
}

impl Pack {
    #[inline]
    fn add(&mut self, cost: usize, capacity: usize) {
        if self.fill + cost > capacity {
            self.full += 1;
            self.fill = 0;
        }
        self.fill += cost;
    }

    fn count(self) -> usize {
        self.full + usize::from(self.fill > 0)
    }
}

/// Incremental measurement: push grapheme clusters, read encoding and segments
/// at any point. Used by the splitter to find how much text fits a part.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Meter {
    non_gsm: bool,
    septets: usize,
    utf16: usize,
    utf8: usize,
    gsm_pack: Pack,
    ucs_pack: Pack,
}

impl Meter {
    /// Adds every grapheme cluster of `text`.
    pub(crate) fn push_str(&mut self, text: &str) {
        if simple_clusters(text) {
            for c in text.chars() {
                self.push_char_cluster(c);
            }
        } else {
            for g in text.graphemes(true) {
                self.push_grapheme(g);
            }
        }
    }

    #[inline]
    fn push_char_cluster(&mut self, c: char) {
        let utf16 = c.len_utf16();
        self.utf16 += utf16;
        self.utf8 += c.len_utf8();
        self.ucs_pack.add(utf16, UCS2_CONCAT);
        if !self.non_gsm {
            match gsm7::septets(c) {
                Some(s) => {
                    self.septets += s;
                    self.gsm_pack.add(s, GSM7_CONCAT);
                }
                None => self.non_gsm = true,
            }
        }
    }

    /// Adds one grapheme cluster.
    #[inline]
    pub(crate) fn push_grapheme(&mut self, g: &str) {
        let mut chars = g.chars();
        if let (Some(c), None) = (chars.next(), chars.clone().next()) {
            self.push_char_cluster(c);
            return;
        }
        for unit in billing::units(g) {
            self.push_unit(unit);
        }
    }

    /// Adds one unit of Twilio's segment packing (`billing::units`).
    fn push_unit(&mut self, g: &str) {
        let mut utf16 = 0;
        let mut septets = Some(0);
        for c in g.chars() {
            utf16 += c.len_utf16();
            septets = septets.and_then(|s| gsm7::septets(c).map(|n| s + n));
        }
        self.utf16 += utf16;
        self.utf8 += g.len();
        if utf16 <= UCS2_CONCAT {
            self.ucs_pack.add(utf16, UCS2_CONCAT);
        } else {
            for c in g.chars() {
                self.ucs_pack.add(c.len_utf16(), UCS2_CONCAT);
            }
        }
        if !self.non_gsm {
            match septets {
                Some(s) => {
                    self.septets += s;
                    if s <= GSM7_CONCAT {
                        self.gsm_pack.add(s, GSM7_CONCAT);
                    } else {
                        for c in g.chars() {
                            self.gsm_pack
                                .add(gsm7::septets(c).unwrap_or(1), GSM7_CONCAT);
                        }
                    }
                }
                None => self.non_gsm = true,
            }
        }
    }

    pub(crate) fn encoding(&self) -> Encoding {
        if self.non_gsm {
            Encoding::Ucs2
        } else {
            Encoding::Gsm7
        }
    }

    pub(crate) fn units(&self) -> usize {
        match self.encoding() {
            Encoding::Gsm7 => self.septets,
            Encoding::Ucs2 => self.utf16,
        }
    }

    pub(crate) fn segments(&self) -> usize {
        let encoding = self.encoding();
        let units = self.units();
        if units == 0 {
            0
        } else if units <= encoding.single_segment_units() {
            1
        } else {
            match encoding {
                Encoding::Gsm7 => self.gsm_pack.count(),
                Encoding::Ucs2 => self.ucs_pack.count(),
            }
        }
    }

    pub(crate) fn utf16(&self) -> usize {
        self.utf16
    }

    pub(crate) fn utf8(&self) -> usize {
        self.utf8
    }

    pub(crate) fn measurement(&self) -> Measurement {
        Measurement {
            encoding: self.encoding(),
            units: self.units(),
            segments: self.segments(),
            utf16_len: self.utf16,
            utf8_len: self.utf8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_equals_whole() {
        let text = "Hola €{x}\r\n¿qué tal? 👨‍👩‍👧 🇫🇷 ok";
        let mut meter = Meter::default();
        for g in text.graphemes(true) {
            meter.push_grapheme(g);
        }
        assert_eq!(meter.measurement(), measure(text));
    }

    #[test]
    fn simple_characters_are_their_own_clusters() {
        let mut checked = 0;
        for c in (0..=0x10_FFFF)
            .filter_map(char::from_u32)
            .filter(|&c| is_simple(c))
        {
            let text = format!("a{c}a{c}{c}\u{1F600}{c}\u{0915}{c}");
            assert_eq!(text.graphemes(true).count(), 9, "U+{:04X}", c as u32);
            checked += 1;
        }
        assert_eq!(checked, 22_590, "characters in the ranges of is_simple");
    }

    fn segments(text: &str) -> (Encoding, usize) {
        let m = measure(text);
        (m.encoding, m.segments)
    }

    // The expected counts are those of Twilio's segment calculator
    // (sms-segments-calculator 1.3.0); tests/oracles.rs asks it for the same texts.

    #[test]
    fn crlf_at_a_segment_boundary_is_split_as_twilio_does() {
        let a = |n| "a".repeat(n);
        // 152 + CR = 153 septets, LF + 152 = 153: two segments (was three with
        // CR LF kept together).
        assert_eq!(
            segments(&format!("{}\r\n{}", a(152), a(152))),
            (Encoding::Gsm7, 2)
        );
        assert_eq!(segments(&format!("{}\r\n", a(158))), (Encoding::Gsm7, 1));
        let ya = |n| "я".repeat(n);
        assert_eq!(
            segments(&format!("{}\r\n{}", ya(66), ya(66))),
            (Encoding::Ucs2, 2)
        );
    }

    #[test]
    fn a_conjunct_at_a_segment_boundary_is_split_as_twilio_does() {
        let a = |n| "a".repeat(n);
        // क्ष is one cluster (3 units) today; Twilio packs क् (units 66-67) and ष
        // (68) apart: 67 + 66 units, two segments (was three).
        assert_eq!(
            segments(&format!("{}क्ष{}", a(65), a(65))),
            (Encoding::Ucs2, 2)
        );
        // ❤️‍🔥 likewise: ❤️‍ ends segment 1, 🔥 starts segment 2.
        assert_eq!(
            segments(&format!("{}❤️‍🔥{}", a(64), a(65))),
            (Encoding::Ucs2, 2)
        );
    }

    #[test]
    fn surrogate_pairs_escapes_and_flags_never_straddle_segments() {
        let a = |n| "a".repeat(n);
        // 😀 would take units 67 and 68: it moves to segment 2, 66 + 67 + 1.
        assert_eq!(
            segments(&format!("{}😀{}", a(66), a(66))),
            (Encoding::Ucs2, 3)
        );
        assert_eq!(
            segments(&format!("{}😀{}", a(65), a(67))),
            (Encoding::Ucs2, 2)
        );
        // € (escape + code) would take septets 153 and 154.
        assert_eq!(
            segments(&format!("{}€{}", a(152), a(152))),
            (Encoding::Gsm7, 3)
        );
        assert_eq!(
            segments(&format!("{}€{}", a(151), a(153))),
            (Encoding::Gsm7, 2)
        );
        // A flag is one unit for Twilio (a Unicode 10 cluster), not two pairs.
        assert_eq!(
            segments(&format!("{}🇫🇷{}", a(65), a(64))),
            (Encoding::Ucs2, 3)
        );
    }

    #[test]
    fn empty_is_zero_segments() {
        let m = measure("");
        assert_eq!((m.encoding, m.units, m.segments), (Encoding::Gsm7, 0, 0));
    }
}
