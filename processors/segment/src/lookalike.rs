//! Look-alike replacement ("smart encoding"): typographic characters that are
//! not GSM-7 are replaced with GSM-7 ones, so that a text does not fall back to
//! UCS-2 (70/67 units per segment instead of 160/153) because of one curly quote.
//!
//! The replacement is all or nothing: [`to_gsm7`] returns the replaced text only
//! when the result is GSM-7 as a whole; when any other non-GSM-7 character stays
//! (an emoji, a Cyrillic letter, `ç`), the text is sent unchanged as UCS-2, which
//! can carry the original characters. Letters are never changed (`á` stays `á`),
//! since that would change spelling; the table holds punctuation, spaces and
//! invisible characters only. It is applied to SMS only.
//!
//! | characters                                                         | become  |
//! |--------------------------------------------------------------------|---------|
//! | `‘ ’ ‚ ‛ ′ ‵ ‹ › ʼ ´` and `` ` `` (U+2018 U+2019 U+201A U+201B U+2032 U+2035 U+2039 U+203A U+02BC U+00B4 U+0060) | `'` |
//! | `“ ” „ ‟ ″ ‶ « »` (U+201C U+201D U+201E U+201F U+2033 U+2036 U+00AB U+00BB) | `"` |
//! | `‐ ‑ ‒ – — ― − ⁃ ﹘ ﹣` (U+2010 U+2011 U+2012 U+2013 U+2014 U+2015 U+2212 U+2043 U+FE58 U+FE63) | `-` |
//! | `•` bullet (U+2022)                                                | `-`     |
//! | `…` horizontal ellipsis (U+2026)                                   | `...`   |
//! | no-break space U+00A0, ogham space U+1680, U+2000–U+200A (en/em quad, en/em, three/four/six-per-em, figure, punctuation, thin, hair space), narrow no-break U+202F, medium mathematical U+205F, ideographic U+3000, tab U+0009 | one space |
//! | line separator U+2028, next line U+0085                            | `\n`    |
//! | paragraph separator U+2029                                         | `\n\n`  |
//! | zero width space U+200B, ZWNJ U+200C, ZWJ U+200D, word joiner U+2060, BOM/ZWNBSP U+FEFF, soft hyphen U+00AD | removed |
//! | fullwidth forms U+FF01–U+FF5E (`！`…`～`)                          | their ASCII counterpart U+0021–U+007E (`｀` → `'`) |
//!
//! Built from Twilio's description of Smart Encoding (curly quotes, dashes,
//! ellipsis, exotic spaces, zero-width characters) and compared with the table of
//! Twilio's segment calculator. Deliberate differences: every exotic space
//! becomes one space (the calculator has two for some, which lengthens the
//! text), `‹ ›` become `'` (quotes, not comparison signs), fractions, math
//! symbols, small capitals and combining marks are left alone.

/// The GSM-7 replacement of `c`, `None` when `c` has none.
#[must_use]
pub fn replacement(c: char) -> Option<&'static str> {
    Some(match c {
        '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}' | '\u{2032}' | '\u{2035}'
        | '\u{2039}' | '\u{203A}' | '\u{02BC}' | '\u{00B4}' | '`' => "'",
        '\u{201C}' | '\u{201D}' | '\u{201E}' | '\u{201F}' | '\u{2033}' | '\u{2036}'
        | '\u{00AB}' | '\u{00BB}' => "\"",
        '\u{2010}' | '\u{2011}' | '\u{2012}' | '\u{2013}' | '\u{2014}' | '\u{2015}'
        | '\u{2212}' | '\u{2043}' | '\u{FE58}' | '\u{FE63}' | '\u{2022}' => "-",
        '\u{2026}' => "...",
        '\u{00A0}'
        | '\u{1680}'
        | '\u{2000}'..='\u{200A}'
        | '\u{202F}'
        | '\u{205F}'
        | '\u{3000}'
        | '\t' => " ",
        '\u{2028}' | '\u{0085}' => "\n",
        '\u{2029}' => "\n\n",
        '\u{200B}' | '\u{200C}' | '\u{200D}' | '\u{2060}' | '\u{FEFF}' | '\u{00AD}' => "",
        '\u{FF40}' => "'",
        '\u{FF01}'..='\u{FF5E}' => {
            let ascii = c as usize - 0xFF01 + 0x21;
            let i = ascii - 0x21;
            &PRINTABLE_ASCII[i..=i]
        }
        _ => return None,
    })
}

/// `!` to `~`, sliced by [`replacement`] for fullwidth forms.
const PRINTABLE_ASCII: &str = "!\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~";

/// `text` with look-alikes replaced, when the result is entirely GSM-7; `None`
/// when `text` is already GSM-7 (nothing to do) or stays UCS-2 anyway.
#[must_use]
pub fn to_gsm7(text: &str) -> Option<String> {
    if crate::gsm7::is_gsm7(text) {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if crate::gsm7::lookup(c).is_some() {
            out.push(c);
        } else {
            out.push_str(replacement(c)?);
        }
    }
    // Fullwidth forms of ^ { } [ ] \ ~ | are extension characters, still GSM-7;
    // every other replacement is in the default alphabet.
    debug_assert!(crate::gsm7::is_gsm7(&out));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_replacement_is_gsm7() {
        for cp in 0..=0x10_FFFFu32 {
            let Some(c) = char::from_u32(cp) else {
                continue;
            };
            if let Some(r) = replacement(c) {
                assert!(crate::gsm7::is_gsm7(r), "{c:?} -> {r:?}");
                assert!(crate::gsm7::lookup(c).is_none(), "{c:?} is GSM-7 already");
            }
        }
    }

    #[test]
    fn fullwidth_maps_to_ascii() {
        assert_eq!(replacement('！'), Some("!"));
        assert_eq!(replacement('～'), Some("~"));
        assert_eq!(replacement('Ａ'), Some("A"));
        assert_eq!(replacement('｀'), Some("'"));
    }

    #[test]
    fn all_or_nothing() {
        assert_eq!(to_gsm7("“Hi” — it’s…").as_deref(), Some("\"Hi\" - it's..."));
        assert_eq!(to_gsm7("“Hi” 😀"), None, "the emoji keeps it UCS-2");
        assert_eq!(to_gsm7("plain"), None, "already GSM-7");
    }
}
