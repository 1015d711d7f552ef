//! The consent keyword matcher over what users text.

use std::sync::OnceLock;

use si_consent::Keywords;
use si_consent::fold;

use super::{Cursor, text};
use crate::engine::Target;

const WORDS: &[&str] = &[
    "STOP",
    "stop",
    "Stop.",
    "STOP!",
    "ＳＴＯＰ",
    "ꓢTOP",
    "ЅТОР",
    "unsubscribe",
    "CANCEL",
    "END",
    "QUIT",
    "START",
    "YES",
    "UNSTOP",
    "HELP",
    "INFO",
    "ARRÊT",
    "arret",
    "PARAR",
    "baja",
    "SAIR",
    "ajuda",
    "停止",
    "opt-out",
    "opt out",
    "don't",
    "stop please",
    "es:stop=alto",
    "en-US",
    "pt_BR",
    "es-MX",
    "fr",
    ";",
    "=",
    ":",
    ",",
];

/// The keyword matcher.
pub const KEYWORDS: Target = Target {
    name: "consent_keywords",
    about: "a keyword is the whole message up to surrounding punctuation, found again in itself and with more punctuation around it, and one of the locale's words",
    run: keywords,
    dictionary: WORDS,
    generate: None,
    max_len: 1024,
};

fn builtin() -> &'static Keywords {
    static KEYWORDS: OnceLock<Keywords> = OnceLock::new();
    KEYWORDS.get_or_init(Keywords::default)
}

fn keywords(data: &[u8]) {
    let mut cursor = Cursor::new(data);
    let locale = text(cursor.field());
    let message = text(cursor.rest());
    let keywords = builtin();
    if let Some(matched) = keywords.classify(&message, &locale) {
        assert!(!matched.as_sent.is_empty());
        assert_eq!(matched.as_sent, fold::trim(&message), "as sent");
        for variant in [
            matched.as_sent.clone(),
            format!("  {message}!!"),
            format!("\u{A0}¿{message}? 🙂"),
        ] {
            let again = keywords.classify(&variant, &locale);
            assert_eq!(
                again.as_ref().map(|m| m.kind),
                Some(matched.kind),
                "{variant:?} is not the same keyword"
            );
        }
        assert!(
            keywords
                .words(matched.kind, &locale)
                .contains(&matched.folded),
            "{:?} is not a {} word of {locale:?}",
            matched.folded,
            matched.kind
        );
    } else {
        assert!(
            keywords.classify(fold::trim(&message), &locale).is_none(),
            "a keyword once trimmed, not before"
        );
    }
    // Operators' extra keywords (CONSENT_EXTRA_KEYWORDS) parse or are refused.
    let _ = Keywords::parse_extra(&message);
}
