//! Consent keywords: which messages are an opt-out, an opt-in or a help request.
//!
//! A keyword counts only as the **whole message**: the text is trimmed of
//! surrounding whitespace, punctuation and symbols (anything that is not a
//! letter or a digit), upper-cased, and compared with the keyword lists.
//! `"  Stop! "` is STOP; `"Stop by tomorrow"`, `"STOPP"`, `"S.T.O.P"` and
//! `"don't stop"` are not keywords.
//!
//! Built in, for every locale (Twilio's lists, see `../shared/TWILIO.md`):
//!
//! | kind | keywords |
//! |---|---|
//! | opt-out | STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, REVOKE, OPTOUT |
//! | opt-in | START, YES, UNSTOP |
//! | help | HELP, INFO |
//!
//! Built in per language (the catalog's texts ask for them): `es` AYUDA (help),
//! SÍ and SI (opt-in); `fr` AIDE (help), OUI (opt-in), ARRET and ARRÊT
//! (opt-out, as Canadian carriers use them). Further keywords per locale come
//! from `CONSENT_EXTRA_KEYWORDS` ([`Keywords::parse_extra`]). A locale's extras
//! apply to messages whose locale has that language (`es` covers `es-MX`); a
//! region (`es-MX`) applies to that region only; `*` applies to every locale.
//! When a word is both an opt-out and something else, opt-out wins.

use std::collections::BTreeMap;
use std::fmt;

/// What a keyword asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeywordKind {
    /// Stop all messages (STOP and equivalents).
    OptOut,
    /// Resume messages (START and equivalents).
    OptIn,
    /// Ask for help (HELP, INFO).
    Help,
}

impl KeywordKind {
    /// The name used in `CONSENT_EXTRA_KEYWORDS`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::OptOut => "opt_out",
            Self::OptIn => "opt_in",
            Self::Help => "help",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "opt_out" | "optout" | "stop" => Some(Self::OptOut),
            "opt_in" | "optin" | "start" => Some(Self::OptIn),
            "help" => Some(Self::Help),
            _ => None,
        }
    }
}

impl fmt::Display for KeywordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Twilio's opt-out keywords.
pub const OPT_OUT: &[&str] = &[
    "STOP",
    "STOPALL",
    "UNSUBSCRIBE",
    "CANCEL",
    "END",
    "QUIT",
    "REVOKE",
    "OPTOUT",
];
/// Twilio's opt-in keywords.
pub const OPT_IN: &[&str] = &["START", "YES", "UNSTOP"];
/// Twilio's help keywords.
pub const HELP: &[&str] = &["HELP", "INFO"];

/// Built-in keywords per language, on top of Twilio's.
const BUILTIN_LOCALE: &[(&str, KeywordKind, &str)] = &[
    ("es", KeywordKind::Help, "AYUDA"),
    ("es", KeywordKind::OptIn, "SÍ"),
    ("es", KeywordKind::OptIn, "SI"),
    ("fr", KeywordKind::Help, "AIDE"),
    ("fr", KeywordKind::OptIn, "OUI"),
    ("fr", KeywordKind::OptOut, "ARRET"),
    ("fr", KeywordKind::OptOut, "ARRÊT"),
];

/// A keyword found in a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// What it asks for.
    pub kind: KeywordKind,
    /// The keyword exactly as the user sent it, without the surrounding
    /// whitespace and punctuation (e.g. `Stop`).
    pub as_sent: String,
}

/// `CONSENT_EXTRA_KEYWORDS` does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CONSENT_EXTRA_KEYWORDS: {0}")]
pub struct KeywordsError(String);

/// The keyword lists: global ones and per locale.
#[derive(Debug, Clone)]
pub struct Keywords {
    /// Locale (`*`, a language `es` or a region `es-MX`) → word → kind.
    by_locale: BTreeMap<String, BTreeMap<String, KeywordKind>>,
}

impl Default for Keywords {
    fn default() -> Self {
        let mut keywords = Self {
            by_locale: BTreeMap::new(),
        };
        for (words, kind) in [
            (OPT_OUT, KeywordKind::OptOut),
            (OPT_IN, KeywordKind::OptIn),
            (HELP, KeywordKind::Help),
        ] {
            for word in words {
                keywords.add("*", kind, word);
            }
        }
        for (locale, kind, word) in BUILTIN_LOCALE {
            keywords.add(locale, *kind, word);
        }
        keywords
    }
}

impl Keywords {
    /// The built-in lists plus the extras of `spec` (`CONSENT_EXTRA_KEYWORDS`):
    /// entries separated by `;`, each `<locale>:<kind>=<word>|<word>...`, kind
    /// one of `opt_out`, `opt_in`, `help`, locale `*` for every locale. Example:
    /// `es:opt_out=BAJA|ALTO;de:opt_out=STOPP;de:help=HILFE;*:opt_out=UNSUB`.
    /// Empty entries are ignored.
    ///
    /// # Errors
    /// When an entry is malformed or names an unknown kind.
    pub fn parse_extra(spec: &str) -> Result<Self, KeywordsError> {
        let mut keywords = Self::default();
        for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (head, words) = entry
                .split_once('=')
                .ok_or_else(|| KeywordsError(format!("`{entry}` has no `=`")))?;
            let (locale, kind) = head.split_once(':').ok_or_else(|| {
                KeywordsError(format!("`{head}` is not <locale>:<kind> in `{entry}`"))
            })?;
            let locale = locale.trim();
            if locale.is_empty() {
                return Err(KeywordsError(format!("empty locale in `{entry}`")));
            }
            let kind = KeywordKind::parse(kind).ok_or_else(|| {
                KeywordsError(format!(
                    "unknown kind `{}` in `{entry}` (opt_out, opt_in or help)",
                    kind.trim()
                ))
            })?;
            let mut any = false;
            for word in words.split('|') {
                let word = canonical(word);
                if word.is_empty() {
                    continue;
                }
                if word.chars().any(char::is_whitespace) {
                    return Err(KeywordsError(format!(
                        "`{word}` in `{entry}` has inner whitespace; keywords are one word"
                    )));
                }
                keywords.add(locale, kind, &word);
                any = true;
            }
            if !any {
                return Err(KeywordsError(format!("no words in `{entry}`")));
            }
        }
        Ok(keywords)
    }

    fn add(&mut self, locale: &str, kind: KeywordKind, word: &str) {
        let locale = if locale == "*" {
            "*".to_owned()
        } else {
            normalize_locale(locale)
        };
        let words = self.by_locale.entry(locale).or_default();
        let word = canonical(word);
        // Opt-out wins when a word is listed twice.
        let kind = match words.get(&word) {
            Some(KeywordKind::OptOut) => KeywordKind::OptOut,
            _ => kind,
        };
        words.insert(word, kind);
    }

    /// The keyword `text` is, for a message in `locale`; `None` when the text
    /// is not exactly one keyword.
    #[must_use]
    pub fn classify(&self, text: &str, locale: &str) -> Option<Matched> {
        let as_sent = strip(text);
        if as_sent.is_empty() {
            return None;
        }
        let word = canonical(as_sent);
        let locale = normalize_locale(locale);
        let language = locale.split('-').next().unwrap_or_default();
        let mut found: Option<KeywordKind> = None;
        for scope in ["*", language, locale.as_str()] {
            if let Some(kind) = self.by_locale.get(scope).and_then(|w| w.get(&word)) {
                found = Some(match found {
                    Some(KeywordKind::OptOut) => KeywordKind::OptOut,
                    _ => *kind,
                });
            }
        }
        found.map(|kind| Matched {
            kind,
            as_sent: as_sent.to_owned(),
        })
    }

    /// Every keyword of `kind` that applies to `locale`, sorted.
    #[must_use]
    pub fn words(&self, kind: KeywordKind, locale: &str) -> Vec<String> {
        let locale = normalize_locale(locale);
        let language = locale.split('-').next().unwrap_or_default().to_owned();
        let mut out: Vec<String> = ["*", language.as_str(), locale.as_str()]
            .iter()
            .filter_map(|scope| self.by_locale.get(*scope))
            .flat_map(|words| words.iter())
            .filter(|(_, k)| **k == kind)
            .map(|(w, _)| w.clone())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// The text without surrounding whitespace, punctuation and symbols.
fn strip(text: &str) -> &str {
    text.trim_matches(|c: char| !c.is_alphanumeric())
}

/// Upper case, for comparison.
fn canonical(word: &str) -> String {
    strip(word).to_uppercase()
}

/// `es_mx`, `ES-MX` → `es-MX`.
fn normalize_locale(locale: &str) -> String {
    let mut parts = locale.trim().split(['-', '_']);
    let language = parts.next().unwrap_or_default().to_ascii_lowercase();
    match parts.next() {
        Some(region) if !region.is_empty() => {
            format!("{language}-{}", region.to_ascii_uppercase())
        }
        _ => language,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use KeywordKind::{Help, OptIn, OptOut};

    fn kind(text: &str, locale: &str) -> Option<KeywordKind> {
        Keywords::default().classify(text, locale).map(|m| m.kind)
    }

    #[test]
    fn every_twilio_keyword_in_every_spelling() {
        let table: &[(&str, KeywordKind)] = &[
            ("STOP", OptOut),
            ("STOPALL", OptOut),
            ("UNSUBSCRIBE", OptOut),
            ("CANCEL", OptOut),
            ("END", OptOut),
            ("QUIT", OptOut),
            ("REVOKE", OptOut),
            ("OPTOUT", OptOut),
            ("START", OptIn),
            ("YES", OptIn),
            ("UNSTOP", OptIn),
            ("HELP", Help),
            ("INFO", Help),
        ];
        assert_eq!(
            table.len(),
            OPT_OUT.len() + OPT_IN.len() + HELP.len(),
            "every keyword has a row"
        );
        for (word, expected) in table {
            let lower = word.to_lowercase();
            let mut title = word[..1].to_owned();
            title.push_str(&lower[1..]);
            for text in [
                (*word).to_owned(),
                lower.clone(),
                title.clone(),
                format!("  {word}  "),
                format!("{lower}."),
                format!("{title}!"),
                format!("\"{word}\""),
                format!("\t{lower}?\n"),
                format!("¡{title}!"),
                format!("{word} 🙏"),
                format!("({lower})"),
            ] {
                for locale in ["en", "es-MX", "fr", "de", "pt-BR"] {
                    assert_eq!(kind(&text, locale), Some(*expected), "{text:?} in {locale}");
                }
            }
        }
    }

    #[test]
    fn look_alikes_are_not_keywords() {
        for text in [
            "Stop by tomorrow",
            "stop it",
            "please stop",
            "don't stop",
            "STOPP",
            "STOPS",
            "stopping",
            "S T O P",
            "S.T.O.P",
            "ST0P",
            "STOP ALL",
            "STOP-ALL",
            "OPT OUT",
            "opt-out",
            "unsubscribe me",
            "cancel my order",
            "the end",
            "ending",
            "quitting",
            "REVOKED",
            "yes please",
            "yes, start",
            "YESS",
            "started",
            "restart",
            "help me",
            "helpful",
            "information",
            "INFO?? what info",
            "",
            "   ",
            "!!!",
            "🛑",
            "AYUDA",
            "OUI",
            "ARRET",
        ] {
            assert_eq!(kind(text, "en"), None, "{text:?} is not a keyword in en");
        }
    }

    #[test]
    fn built_in_locale_keywords_apply_to_their_language_only() {
        let table: &[(&str, &str, Option<KeywordKind>)] = &[
            ("AYUDA", "es", Some(Help)),
            ("ayuda", "es-MX", Some(Help)),
            ("Sí", "es-MX", Some(OptIn)),
            ("si", "es", Some(OptIn)),
            ("Si", "en", None),
            ("Sí", "fr", None),
            ("aide", "fr-CA", Some(Help)),
            ("Oui!", "fr", Some(OptIn)),
            ("arrêt", "fr-CA", Some(OptOut)),
            ("ARRET", "fr", Some(OptOut)),
            ("arret", "es", None),
            ("STOP", "es", Some(OptOut)),
        ];
        for (text, locale, expected) in table {
            assert_eq!(kind(text, locale), *expected, "{text:?} in {locale}");
        }
    }

    #[test]
    fn the_keyword_is_reported_as_sent() {
        let m = Keywords::default()
            .classify("  Stop!! ", "en")
            .expect("keyword");
        assert_eq!(m.as_sent, "Stop");
        assert_eq!(m.kind, OptOut);
    }

    #[test]
    fn extra_keywords_per_locale() {
        let keywords = Keywords::parse_extra(
            " es:opt_out=BAJA|alto ; de:opt_out=STOPP; de:help=Hilfe;*:opt_in=go;es-MX:help=AUXILIO;",
        )
        .expect("parses");
        let kind = |text: &str, locale: &str| keywords.classify(text, locale).map(|m| m.kind);
        assert_eq!(kind("baja", "es"), Some(OptOut));
        assert_eq!(kind("Alto.", "es-AR"), Some(OptOut));
        assert_eq!(kind("baja", "en"), None);
        assert_eq!(kind("stopp", "de-AT"), Some(OptOut));
        assert_eq!(kind("STOPP", "en"), None);
        assert_eq!(kind("hilfe", "de"), Some(Help));
        assert_eq!(kind("GO", "pt-BR"), Some(OptIn));
        assert_eq!(kind("auxilio", "es-MX"), Some(Help));
        assert_eq!(kind("auxilio", "es"), None);
        assert_eq!(kind("STOP", "de"), Some(OptOut), "built-ins stay");
        assert!(keywords.words(OptOut, "es").contains(&"BAJA".to_owned()));
    }

    #[test]
    fn an_opt_out_wins_when_a_word_is_listed_twice() {
        let keywords =
            Keywords::parse_extra("es:opt_in=ALTO;es:opt_out=ALTO;*:opt_in=STOP").expect("parses");
        assert_eq!(
            keywords.classify("alto", "es").map(|m| m.kind),
            Some(OptOut)
        );
        assert_eq!(
            keywords.classify("stop", "en").map(|m| m.kind),
            Some(OptOut)
        );
    }

    #[test]
    fn malformed_extra_keywords_are_rejected() {
        for spec in [
            "es:opt_out",
            "opt_out=BAJA",
            "es:stopit=BAJA",
            ":opt_out=BAJA",
            "es:opt_out=",
            "es:opt_out=|!!",
            "es:opt_out=DE BAJA",
        ] {
            assert!(Keywords::parse_extra(spec).is_err(), "{spec:?}");
        }
        assert!(Keywords::parse_extra("").is_ok());
        assert!(Keywords::parse_extra(" ; ").is_ok());
    }
}
