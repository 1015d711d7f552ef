//! Folding: the form in which a message is compared with consent words, so
//! that every spelling a phone or a person produces of a word is that word.
//!
//! 1. Unicode compatibility normalization (NFKC): full-width `ＳＴＯＰ`,
//!    mathematical `𝐒𝐓𝐎𝐏`, circled `Ⓢ`, ligatures `ﬁ` become plain letters.
//! 2. Typographic look-alikes, with segment's smart-encoding table
//!    ([`si_segment::lookalike::replacement`]): curly apostrophes and quotes,
//!    dashes, exotic spaces; zero-width characters, soft hyphens and
//!    bidirectional marks vanish (`ST\u{200B}OP` is `STOP`).
//! 3. Look-alike letters ([`latin_look_alike`]): Cyrillic and Greek letters
//!    that look like Latin ones (`ЅТОР` with Cyrillic letters is `STOP`), and
//!    the dotless `ı` (`quıt` is `quit`).
//! 4. Unicode default case folding (`ß` → `ss`, `Σ`/`ς` → `σ`).
//! 5. Accents dropped (canonical decomposition without combining marks):
//!    `arrêt` is `arret`, `sí` is `si`.
//!
//! Digits are not letters: `ST0P` stays `st0p`.

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// `text` folded (see the module docs).
#[must_use]
pub fn fold(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    // Look-alikes before NFKC too: it would turn some (Greek lunate sigma `ϲ`)
    // into letters that look like no Latin one.
    for c in text
        .chars()
        .map(|c| latin_look_alike(c).unwrap_or(c))
        .nfkc()
    {
        if let Some(r) = si_segment::lookalike::replacement(c) {
            plain.push_str(r);
        } else if is_bidi_control(c) {
            // Invisible, like the zero-width characters above.
        } else {
            plain.push(latin_look_alike(c).unwrap_or(c));
        }
    }
    let folded = caseless::default_case_fold_str(&plain);
    folded
        .nfd()
        .filter(|c| !is_combining_mark(*c))
        .nfc()
        .collect()
}

/// Whether `c` only orders text for display (marks, embeddings, isolates):
/// invisible, so `ST\u{200E}OP` is `STOP`.
const fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// The words of folded text: runs of letters and digits. Everything else
/// (spaces, punctuation, apostrophes, hyphens, emoji) separates words, so
/// `opt-out` is `opt out` and `don't` is `don t`.
pub fn words(folded: &str) -> impl Iterator<Item = &str> {
    folded
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
}

/// `text` without surrounding characters that are not letters or digits
/// (whitespace, punctuation, symbols, emoji).
#[must_use]
pub fn trim(text: &str) -> &str {
    text.trim_matches(|c: char| !c.is_alphanumeric())
}

/// The Latin letter that Cyrillic or Greek letter `c` (or Latin dotless
/// `ı`) looks like, in the same case; `None` for every other character. From Unicode's confusables data
/// (UTS #39), limited to letters that look the same in ordinary fonts.
#[must_use]
pub const fn latin_look_alike(c: char) -> Option<char> {
    Some(match c {
        // Cyrillic capitals
        'А' => 'A',
        'В' => 'B',
        'Е' => 'E',
        'К' => 'K',
        'М' => 'M',
        'Н' => 'H',
        'О' => 'O',
        'Р' => 'P',
        'С' => 'C',
        'Т' => 'T',
        'Х' => 'X',
        'У' | 'Ү' => 'Y',
        'Ѕ' => 'S',
        'І' | 'Ӏ' => 'I',
        'Ј' => 'J',
        'Ԛ' => 'Q',
        'Ԝ' => 'W',
        // Cyrillic small letters
        'а' => 'a',
        'е' => 'e',
        'о' => 'o',
        'р' => 'p',
        'с' => 'c',
        'у' | 'ү' => 'y',
        'х' => 'x',
        'ѕ' => 's',
        'і' => 'i',
        'ј' => 'j',
        'һ' => 'h',
        'ԛ' => 'q',
        'ԝ' => 'w',
        'ӏ' => 'l',
        // Greek capitals
        'Α' => 'A',
        'Β' => 'B',
        'Ε' => 'E',
        'Ζ' => 'Z',
        'Η' => 'H',
        'Ι' => 'I',
        'Κ' => 'K',
        'Μ' => 'M',
        'Ν' => 'N',
        'Ο' => 'O',
        'Ρ' => 'P',
        'Τ' => 'T',
        'Υ' => 'Y',
        'Χ' => 'X',
        // Greek small letters
        'ο' => 'o',
        'ν' => 'v',
        'ι' => 'i',
        'ρ' => 'p',
        'υ' => 'u',
        'ϲ' => 'c',
        'ϳ' => 'j',
        // Latin dotless i (Turkish keyboards type it for i)
        'ı' => 'i',
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_a_word_folds_to_it() {
        for text in [
            "STOP",
            "stop",
            "Stop",
            "ＳＴＯＰ",
            "ｓｔｏｐ",
            "𝐒𝐓𝐎𝐏",
            "ⓈⓉⓄⓅ",
            "ST\u{200B}OP",
            "S\u{00AD}TOP",
            "ST\u{200E}OP",
            "\u{2066}STOP\u{2069}",
            "S\u{202E}TOP",
            // Cyrillic Ѕ Т О Р, Greek Τ Ο Ρ, mixed
            "\u{0405}\u{0422}\u{041E}\u{0420}",
            "S\u{03A4}\u{039F}\u{03A1}",
            "\u{0455}t\u{043E}\u{0440}",
        ] {
            assert_eq!(fold(text), "stop", "{text:?}");
        }
        assert_eq!(fold("ARRÊT"), "arret");
        assert_eq!(fold("arre\u{0302}t"), "arret", "decomposed accent");
        assert_eq!(fold("SÍ"), "si");
        assert_eq!(fold("Straße"), "strasse");
        assert_eq!(fold("don’t"), "don't");
        assert_eq!(fold("ST0P"), "st0p", "digits are not letters");
    }

    #[test]
    fn words_split_on_everything_but_letters_and_digits() {
        let folded = fold("  Opt-Out, please!! don’t 🙏 text\tme ");
        assert_eq!(
            words(&folded).collect::<Vec<_>>(),
            ["opt", "out", "please", "don", "t", "text", "me"]
        );
        assert_eq!(trim(" ¡Stop! 🙏 "), "Stop");
    }

    #[test]
    fn look_alikes_are_letters_only_and_keep_their_case() {
        for (c, latin) in [('С', 'C'), ('с', 'c'), ('Ρ', 'P'), ('ρ', 'p'), ('Ѕ', 'S')] {
            assert_eq!(latin_look_alike(c), Some(latin));
        }
        for c in ['Д', 'П', 'λ', 'A', '1', '!'] {
            assert_eq!(latin_look_alike(c), None, "{c}");
        }
    }
}
