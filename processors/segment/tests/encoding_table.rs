//! Encoding and segment counts of tricky texts, with the expected values worked
//! out from the GSM 03.38 tables (arithmetic in the comments).
//!
//! Reminders: GSM-7 single 160 septets, concatenated 153 per segment; UCS-2
//! single 70 UTF-16 units, concatenated 67; extension characters `^ { } \ [ ~ ] | €`
//! and form feed are two septets; characters outside the BMP are two UTF-16
//! units; a character (or grapheme cluster) that does not fit a segment's rest
//! starts the next segment.

use si_segment::{Encoding, lookalike, measure};

use Encoding::{Gsm7, Ucs2};

fn r(s: &str, n: usize) -> String {
    s.repeat(n)
}

#[track_caller]
fn check(text: &str, encoding: Encoding, units: usize, segments: usize) {
    let m = measure(text);
    assert_eq!(
        (m.encoding, m.units, m.segments),
        (encoding, units, segments),
        "text {:?}",
        text.chars().take(40).collect::<String>()
    );
}

#[test]
fn gsm7_basics_and_boundaries() {
    check("", Gsm7, 0, 0);
    check("Hello", Gsm7, 5, 1);
    // 160 septets fit one segment; the 161st makes it concatenated: 153 + 8.
    check(&r("a", 160), Gsm7, 160, 1);
    check(&r("a", 161), Gsm7, 161, 2);
    // 153 × 2 = 306 → 2; 307 → 3. 153 × 3 = 459 → 3; 460 → 4. 153 × 10 = 1530 → 10.
    check(&r("a", 306), Gsm7, 306, 2);
    check(&r("a", 307), Gsm7, 307, 3);
    check(&r("a", 459), Gsm7, 459, 3);
    check(&r("a", 460), Gsm7, 460, 4);
    check(&r("a", 1530), Gsm7, 1530, 10);
    check(&r("a", 1531), Gsm7, 1531, 11);
    // The default alphabet's symbols: @ £ $ ¥ ¤ § ¡ ¿ _ each one septet.
    check("@£$¥¤§¡¿_", Gsm7, 9, 1);
    // CR LF: two septets (0x0D 0x0A).
    check("a\r\nb", Gsm7, 4, 1);
}

#[test]
fn extension_characters_cost_two() {
    // ^ { } \ [ ~ ] | € and form feed: 10 characters × 2 = 20 septets.
    check("^{}\\[~]|€\u{0C}", Gsm7, 20, 1);
    // 159 a + € = 159 + 2 = 161 septets > 160 → concatenated: 153 | 6 a + € = 8 → 2.
    check(&(r("a", 159) + "€"), Gsm7, 161, 2);
    // 158 a + € = 160 septets → exactly one segment.
    check(&(r("a", 158) + "€"), Gsm7, 160, 1);
    // 80 × { = 160 septets → 1; 81 × { = 162 → concatenated: a segment holds 76
    // pairs (152 septets; the 153rd cannot take half a pair): 76 + 5 → 2.
    check(&r("{", 80), Gsm7, 160, 1);
    check(&r("{", 81), Gsm7, 162, 2);
    // 153 pairs = 306 septets; at 76 pairs per segment: 76 + 76 + 1 → 3, where 306/153 would say 2.
    check(&r("{", 153), Gsm7, 306, 3);
}

#[test]
fn escape_pair_at_a_segment_boundary() {
    // 152 a + € + 152 a = 152 + 2 + 152 = 306 septets = 2 × 153, but the € cannot
    // straddle: segment 1 = 152 a (152), segment 2 = € + 151 a (153), segment 3 = 1 a → 3.
    check(&(r("a", 152) + "€" + &r("a", 152)), Gsm7, 306, 3);
    // Shifted by one, the € ends segment 1 exactly: 151 a + € = 153 | 153 a → 2.
    check(&(r("a", 151) + "€" + &r("a", 153)), Gsm7, 306, 2);
    // The same for a bracket at the end of segment 2: 153 a | 152 a + [ would be 154 → 3.
    check(&(r("a", 305) + "["), Gsm7, 307, 3);
}

#[test]
fn accented_latin_in_and_out_of_gsm7() {
    // In GSM 03.38: é è ù ì ò Ç Ø ø Å å Ä ä Ö ö Ñ ñ Ü ü ß É à Æ æ (23 characters, 1 septet each).
    check("éèùìòÇØøÅåÄäÖöÑñÜüßÉàÆæ", Gsm7, 23, 1);
    // Not in it: á í ó ú â ê î ô û ã õ ç (lower-case ç! only Ç is) → UCS-2.
    check("Ça va", Gsm7, 5, 1);
    check("ça va", Ucs2, 5, 1);
    check("São Paulo", Ucs2, 9, 1);
    check("café", Gsm7, 4, 1);
    check("cafè", Gsm7, 4, 1);
    check("cafê", Ucs2, 4, 1);
    // A decomposed é (e + U+0301) is not GSM-7 even though é is: 2 UTF-16 units.
    check("e\u{301}", Ucs2, 2, 1);
    // 71 UCS-2 units: 67 | 4 → 2.
    check(&(r("a", 70) + "ç"), Ucs2, 71, 2);
}

#[test]
fn greek() {
    // The ten Greek capitals in GSM 03.38 (those that do not look like Latin letters).
    check("ΔΦΓΛΩΠΨΣΘΞ", Gsm7, 10, 1);
    // Greek capitals that look Latin (Α U+0391, Β U+0392) are not: UCS-2.
    check("ΑΒΓ", Ucs2, 3, 1);
    // Lower case Greek is not GSM-7.
    check("Δέλτα", Ucs2, 5, 1);
    // Ohm sign U+2126 is not the Greek Ω U+03A9.
    check("5 \u{2126}", Ucs2, 3, 1);
    check("5 \u{3A9}", Gsm7, 3, 1);
}

#[test]
fn ucs2_boundaries() {
    // 70 units fit one segment; 71 → 67 + 4 → 2.
    check(&(r("a", 69) + "ś"), Ucs2, 70, 1);
    check(&(r("a", 70) + "ś"), Ucs2, 71, 2);
    // 67 × 2 = 134 → 2; 135 → 3. 67 × 10 = 670 → 10.
    check(&(r("a", 133) + "ś"), Ucs2, 134, 2);
    check(&(r("a", 134) + "ś"), Ucs2, 135, 3);
    check(&(r("a", 669) + "ś"), Ucs2, 670, 10);
    check(&(r("a", 670) + "ś"), Ucs2, 671, 11);
    // Cyrillic and CJK: 1 unit each.
    check("Привет, мир", Ucs2, 11, 1);
    check("你好，世界。", Ucs2, 6, 1);
}

#[test]
fn emoji_and_surrogate_pairs() {
    // 😀 is outside the BMP: 2 units.
    check("😀", Ucs2, 2, 1);
    // 35 × 2 = 70 → 1 segment; 36 × 2 = 72 → a segment holds 33 emoji (66 units,
    // the 67th unit cannot take half a pair): 33 + 3 → 2.
    check(&r("😀", 35), Ucs2, 70, 1);
    check(&r("😀", 36), Ucs2, 72, 2);
    // 68 a + 😀 = 70 → 1; 69 a + 😀 = 71 → 67 | 2 a + 😀 = 4 → 2.
    check(&(r("a", 68) + "😀"), Ucs2, 70, 1);
    check(&(r("a", 69) + "😀"), Ucs2, 71, 2);
}

#[test]
fn emoji_at_a_ucs2_segment_boundary() {
    // 66 a + 😀 + 66 a = 134 units = 2 × 67, but the pair cannot straddle units
    // 67/68: segment 1 = 66 a, segment 2 = 😀 + 65 a (67), segment 3 = 1 a → 3.
    check(&(r("a", 66) + "😀" + &r("a", 66)), Ucs2, 134, 3);
    // Shifted by one the pair ends segment 1 exactly: 65 a + 😀 = 67 | 67 a → 2.
    check(&(r("a", 65) + "😀" + &r("a", 67)), Ucs2, 134, 2);
}

#[test]
fn flags_and_zwj_sequences_stay_in_one_segment() {
    // 🇫🇷 = two regional indicators = 4 units, one grapheme cluster.
    check("🇫🇷", Ucs2, 4, 1);
    // 65 a + 🇫🇷 + 64 a = 133 units. The flag does not fit after 65 a (65 + 4 = 69 > 67):
    // segment 1 = 65 a, segment 2 = 🇫🇷 + 63 a (67), segment 3 = 1 a → 3
    // (Twilio's calculator says 3; packing surrogate pairs alone would say 2).
    check(&(r("a", 65) + "🇫🇷" + &r("a", 64)), Ucs2, 133, 3);
    // 👨‍👩‍👧‍👦 = 4 emoji (8 units) + 3 ZWJ (3 units) = 11 units, one cluster.
    check("👨‍👩‍👧‍👦", Ucs2, 11, 1);
    // 7 families = 77 units > 70: 6 per segment (66 units; a 7th would be 77) → 6 + 1 → 2.
    check(&r("👨‍👩‍👧‍👦", 7), Ucs2, 77, 2);
    // 👍🏽 = thumbs up + skin tone = 4 units; 🏳️‍🌈 = 🏳 (2) + VS16 (1) + ZWJ (1) + 🌈 (2) = 6.
    check("👍🏽", Ucs2, 4, 1);
    check("🏳️‍🌈", Ucs2, 6, 1);
}

#[test]
fn mixed_scripts() {
    // One non-GSM character turns the whole text UCS-2: 160 a + ś = 161 units → 67 | 67 | 27 → 3
    // (as GSM-7 the 160 a alone were 1 segment).
    check(&(r("a", 160) + "ś"), Ucs2, 161, 3);
    // Extension characters in a UCS-2 text are 1 unit each: "{€}" + ś = 4 units.
    check("{€}ś", Ucs2, 4, 1);
    // GSM-7 Greek capitals, extension € and Latin: Δ=1 € =2 " "=1 "ok"=2 → 6.
    check("Δ€ ok", Gsm7, 6, 1);
    check("Hello мир 😀", Ucs2, 12, 1);
}

#[test]
fn texts_that_fit_gsm7_only_after_lookalike_replacement() {
    // Curly quotes, an em dash and an ellipsis: UCS-2 as written.
    let text = "“Don’t” — wait…";
    check(text, Ucs2, 15, 1);
    // Replaced: "Don't" - wait... = 1+5+1 +1+1+1 +4+3 = 17 septets, GSM-7.
    let replaced = lookalike::to_gsm7(text).expect("becomes GSM-7");
    assert_eq!(replaced, "\"Don't\" - wait...");
    check(&replaced, Gsm7, 17, 1);
    // 100 a + ’ (U+2019) + 59 a: UCS-2 with 160 units → 67 | 67 | 26 → 3;
    // with ' it is 160 septets of GSM-7 → 1.
    let text = r("a", 100) + "’" + &r("a", 59);
    check(&text, Ucs2, 160, 3);
    check(&lookalike::to_gsm7(&text).expect("GSM-7"), Gsm7, 160, 1);
    // A no-break space and a zero-width space: "a\u{A0}b\u{200B}c" → "a bc".
    assert_eq!(
        lookalike::to_gsm7("a\u{A0}b\u{200B}c").as_deref(),
        Some("a bc")
    );
    // A fullwidth bracket becomes an extension character: ［ → [ (2 septets).
    check(&lookalike::to_gsm7("［x］").expect("GSM-7"), Gsm7, 5, 1);
    // An emoji keeps the text UCS-2: no replacement at all.
    assert_eq!(lookalike::to_gsm7("“Hi” 😀"), None);
}
