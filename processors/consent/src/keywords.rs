//! Consent keywords: which messages are an opt-out, an opt-in or a help request.
//!
//! A keyword counts only as the **whole message**: the text is trimmed of
//! surrounding whitespace, punctuation, symbols and emoji (anything that is not
//! a letter or a digit), folded ([`crate::fold`]: NFKC, look-alike letters,
//! case folding, accents) and compared with the keyword lists, folded alike.
//! `"  Stop! "`, `ＳＴＯＰ` and `ЅТОР` (Cyrillic) are STOP; `"Stop by tomorrow"`,
//! `"STOPP"`, `"S.T.O.P"` and `"don't stop"` are not keywords (messages of
//! several words are for the revocation rules, [`crate::revocation`]).
//!
//! The lists are the catalog's, per language (`catalog/consent/<lang>.yaml`),
//! and each language's keywords are recognised **whatever the conversation's
//! locale** (`ARRÊT` on a +1 number is an opt-out), except the words a file
//! lists as `local_only` (Spanish `SÍ`, which elsewhere is Si's own name). A
//! match says which language the word belongs to, so the reply goes out in
//! it; a word of several languages (STOP is in every list) is answered in the
//! conversation's locale when that is one of them, else in the first of them
//! (English first, then by language code).
//!
//! Further keywords come from `CONSENT_EXTRA_KEYWORDS` ([`Keywords::parse_extra`]).
//! A locale's extras apply to messages whose locale has that language (`es`
//! covers `es-MX`); a region (`es-MX`) applies to that region only; `*` applies
//! to every locale. Extras are answered in the conversation's locale.
//! When a word is both an opt-out and something else, opt-out wins.

use std::collections::BTreeMap;
use std::fmt;

use si_catalog::DEFAULT_LOCALE;
use si_catalog::consent::ConsentWords;

use crate::fold::{fold, trim};

/// What a keyword asks for. Ordered by precedence: opt-out wins.
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

/// A keyword found in a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// What it asks for.
    pub kind: KeywordKind,
    /// The keyword exactly as the user sent it, without the surrounding
    /// whitespace and punctuation (e.g. `Stop`).
    pub as_sent: String,
    /// The folded form that matched (e.g. `stop`).
    pub folded: String,
    /// The language the word belongs to when the reply should be in it rather
    /// than in the conversation's locale (`fr` for `ARRÊT` in an `en-US`
    /// conversation); `None`: the conversation's locale.
    pub language: Option<String>,
}

impl Matched {
    /// The locale to answer in, for a conversation in `locale`.
    #[must_use]
    pub fn reply_locale(&self, locale: &str) -> String {
        self.language.clone().unwrap_or_else(|| locale.to_owned())
    }
}

/// `CONSENT_EXTRA_KEYWORDS` does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CONSENT_EXTRA_KEYWORDS: {0}")]
pub struct KeywordsError(String);

/// Where a keyword is recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    /// In every conversation.
    Everywhere,
    /// In conversations of this language (`es`) or region (`es-MX`).
    Locale(String),
}

#[derive(Debug, Clone)]
struct Entry {
    kind: KeywordKind,
    /// The catalog language, `None` for extras.
    language: Option<String>,
    scope: Scope,
}

/// The keyword lists, by folded word.
#[derive(Debug, Clone)]
pub struct Keywords {
    words: BTreeMap<String, Vec<Entry>>,
}

impl Default for Keywords {
    /// The catalog's keywords of every language.
    fn default() -> Self {
        Self::from_catalog(ConsentWords::builtin())
    }
}

impl Keywords {
    /// The keywords of `languages` (one entry per catalog language).
    #[must_use]
    pub fn from_catalog(languages: &[ConsentWords]) -> Self {
        let mut keywords = Self {
            words: BTreeMap::new(),
        };
        for words in languages {
            let local: Vec<String> = words.local_only.iter().map(|w| fold(w)).collect();
            for (list, kind) in [
                (&words.keywords.opt_out, KeywordKind::OptOut),
                (&words.keywords.opt_in, KeywordKind::OptIn),
                (&words.keywords.help, KeywordKind::Help),
            ] {
                for word in list {
                    let folded = fold(trim(word));
                    let scope = if local.contains(&folded) {
                        Scope::Locale(words.language.clone())
                    } else {
                        Scope::Everywhere
                    };
                    keywords.add(
                        folded,
                        Entry {
                            kind,
                            language: Some(words.language.clone()),
                            scope,
                        },
                    );
                }
            }
        }
        keywords
    }

    /// The catalog's keywords plus the extras of `spec` (`CONSENT_EXTRA_KEYWORDS`):
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
            let scope = if locale == "*" {
                Scope::Everywhere
            } else {
                Scope::Locale(normalize_locale(locale))
            };
            let mut any = false;
            for word in words.split('|') {
                let word = fold(trim(word));
                if word.is_empty() {
                    continue;
                }
                if word.chars().any(|c| !c.is_alphanumeric()) {
                    return Err(KeywordsError(format!(
                        "`{word}` in `{entry}` is not one word; keywords are one word"
                    )));
                }
                keywords.add(
                    word,
                    Entry {
                        kind,
                        language: None,
                        scope: scope.clone(),
                    },
                );
                any = true;
            }
            if !any {
                return Err(KeywordsError(format!("no words in `{entry}`")));
            }
        }
        Ok(keywords)
    }

    fn add(&mut self, folded: String, entry: Entry) {
        self.words.entry(folded).or_default().push(entry);
    }

    /// The entries of `folded` that apply to a conversation in `locale`.
    fn applicable<'a>(&'a self, folded: &str, locale: &'a str) -> impl Iterator<Item = &'a Entry> {
        let language = locale.split('-').next().unwrap_or_default();
        self.words
            .get(folded)
            .into_iter()
            .flatten()
            .filter(move |e| match &e.scope {
                Scope::Everywhere => true,
                Scope::Locale(l) => l == language || l == locale,
            })
    }

    /// The keyword `text` is, for a message in `locale`; `None` when the text
    /// is not exactly one keyword.
    #[must_use]
    pub fn classify(&self, text: &str, locale: &str) -> Option<Matched> {
        let as_sent = trim(text);
        if as_sent.is_empty() {
            return None;
        }
        let folded = fold(as_sent);
        let folded = trim(&folded);
        let locale = normalize_locale(locale);
        let kind = self.applicable(folded, &locale).map(|e| e.kind).min()?;
        let language = locale.split('-').next().unwrap_or_default();
        let mut languages: Vec<Option<&str>> = self
            .applicable(folded, &locale)
            .filter(|e| e.kind == kind)
            .map(|e| e.language.as_deref())
            .collect();
        let language = if languages.iter().any(|l| l.is_none_or(|l| l == language)) {
            None
        } else {
            languages.sort_by_key(|l| (*l != Some(DEFAULT_LOCALE), *l));
            languages.first().copied().flatten().map(str::to_owned)
        };
        Some(Matched {
            kind,
            as_sent: as_sent.to_owned(),
            folded: folded.to_owned(),
            language,
        })
    }

    /// Every keyword (folded) of `kind` that applies to `locale`, sorted.
    #[must_use]
    pub fn words(&self, kind: KeywordKind, locale: &str) -> Vec<String> {
        let locale = normalize_locale(locale);
        self.words
            .keys()
            .filter(|w| self.applicable(w, &locale).any(|e| e.kind == kind))
            .cloned()
            .collect()
    }
}

/// `es_mx`, `ES-MX` → `es-MX`.
pub(crate) fn normalize_locale(locale: &str) -> String {
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

    const LOCALES: &[&str] = &["en", "en-US", "es", "es-MX", "fr-CA", "de", "pt-BR"];

    fn kind(text: &str, locale: &str) -> Option<KeywordKind> {
        Keywords::default().classify(text, locale).map(|m| m.kind)
    }

    /// `word` with every letter that has a look-alike in `script` (a range of
    /// code points) replaced by it; `None` when no letter has one.
    fn look_alike(word: &str, script: std::ops::RangeInclusive<u32>) -> Option<String> {
        let mut changed = false;
        let out = word
            .chars()
            .map(|c| {
                script
                    .clone()
                    .filter_map(char::from_u32)
                    .find(|l| crate::fold::latin_look_alike(*l) == Some(c))
                    .inspect(|_| changed = true)
                    .unwrap_or(c)
            })
            .collect();
        changed.then_some(out)
    }

    /// Full-width forms of ASCII letters.
    fn full_width(word: &str) -> String {
        word.chars()
            .map(|c| {
                if c.is_ascii_graphic() {
                    char::from_u32(u32::from(c) - 0x21 + 0xFF01).unwrap_or(c)
                } else {
                    c
                }
            })
            .collect()
    }

    /// Every spelling a user may send of `word`.
    fn spellings(word: &str) -> Vec<String> {
        let upper = word.to_uppercase();
        let lower = word.to_lowercase();
        let mut title: String = lower.chars().take(1).flat_map(char::to_uppercase).collect();
        title.extend(lower.chars().skip(1));
        let mut out = vec![
            upper.clone(),
            lower.clone(),
            title.clone(),
            format!("  {upper}  "),
            format!("{lower}."),
            format!("{title}!"),
            format!("\"{upper}\""),
            format!("\t{lower}?\n"),
            format!("¡{title}!"),
            format!("{upper} 🙏"),
            format!("🛑 {lower} 🛑"),
            format!("({lower})"),
            format!("**{title}**"),
            full_width(&upper),
            full_width(&lower),
            format!("{}！", full_width(&title)),
        ];
        // Cyrillic and Greek look-alike letters, in capitals and small letters.
        for script in [0x400..=0x52F, 0x370..=0x3FF] {
            out.extend(look_alike(&upper, script.clone()));
            out.extend(look_alike(&lower, script.clone()));
            if let Some(mixed) = look_alike(&upper[..1], script) {
                out.push(format!("{mixed}{}", &upper[1..]));
            }
        }
        out
    }

    #[test]
    fn every_keyword_of_every_language_in_every_spelling() {
        let languages = ConsentWords::builtin();
        let keywords = Keywords::default();
        let mut checked = 0;
        for words in languages {
            for (list, listed) in [
                (&words.keywords.opt_out, OptOut),
                (&words.keywords.opt_in, OptIn),
                (&words.keywords.help, Help),
            ] {
                for word in list {
                    let local = words.local_only.contains(word);
                    for text in spellings(word) {
                        for locale in LOCALES {
                            let applies = !local || locale.starts_with(&words.language);
                            let found = keywords.classify(&text, locale);
                            if applies {
                                let found = found.unwrap_or_else(|| {
                                    panic!("{text:?} ({} {word}) in {locale}", words.language)
                                });
                                assert_eq!(found.kind, listed, "{text:?} in {locale}");
                                assert_eq!(found.as_sent, crate::fold::trim(&text));
                            } else {
                                assert_eq!(found, None, "{text:?} is local to {}", words.language);
                            }
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert!(checked > 5_000, "{checked}");
    }

    #[test]
    fn the_issue_s_examples() {
        // Full width.
        assert_eq!(kind("ＳＴＯＰ", "en-US"), Some(OptOut));
        // ARRET and ARRÊT on a +1 number (locale from the phone number).
        for text in ["ARRET", "ARRÊT", "arrêt", "Arrêt!"] {
            let m = Keywords::default().classify(text, "en-US").expect(text);
            assert_eq!(m.kind, OptOut);
            assert_eq!(
                m.language.as_deref(),
                Some("fr"),
                "{text}: answered in French"
            );
            assert_eq!(m.reply_locale("en-US"), "fr");
        }
    }

    #[test]
    fn the_reply_goes_in_the_language_of_the_word() {
        let keywords = Keywords::default();
        let language = |text: &str, locale: &str| {
            keywords
                .classify(text, locale)
                .map(|m| m.reply_locale(locale))
        };
        // A word of several languages: the conversation's when it is one of them.
        assert_eq!(language("STOP", "es-MX").as_deref(), Some("es-MX"));
        assert_eq!(language("STOP", "fr-CA").as_deref(), Some("fr-CA"));
        assert_eq!(language("STOP", "en-US").as_deref(), Some("en-US"));
        // ...else English first.
        assert_eq!(language("STOP", "de").as_deref(), Some("en"));
        // A word of one language: that language.
        assert_eq!(language("AYUDA", "en-US").as_deref(), Some("es"));
        assert_eq!(language("aide", "es").as_deref(), Some("fr"));
        assert_eq!(language("OUI", "de-AT").as_deref(), Some("fr"));
        assert_eq!(language("Baja", "en").as_deref(), Some("es"));
        assert_eq!(language("baja", "es-AR").as_deref(), Some("es-AR"));
    }

    #[test]
    fn local_only_words_are_keywords_in_their_language_only() {
        let table: &[(&str, &str, Option<KeywordKind>)] = &[
            ("Sí", "es-MX", Some(OptIn)),
            ("si", "es", Some(OptIn)),
            ("SI", "en", None),
            ("Si", "fr", None),
            ("Sí", "de", None),
        ];
        for (text, locale, expected) in table {
            assert_eq!(kind(text, locale), *expected, "{text:?} in {locale}");
        }
    }

    #[test]
    fn other_texts_are_not_keywords() {
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
        ] {
            for locale in LOCALES {
                assert_eq!(kind(text, locale), None, "{text:?} in {locale}");
            }
        }
    }

    #[test]
    fn extra_keywords_per_locale() {
        let keywords = Keywords::parse_extra(
            " es:opt_out=DETENTE|alto ; de:opt_out=STOPP; de:help=Hilfe;*:opt_in=go;es-MX:help=AUXILIO;",
        )
        .expect("parses");
        let kind = |text: &str, locale: &str| keywords.classify(text, locale).map(|m| m.kind);
        assert_eq!(kind("detente", "es"), Some(OptOut));
        assert_eq!(kind("Detente.", "es-AR"), Some(OptOut));
        assert_eq!(kind("detente", "en"), None);
        assert_eq!(kind("stopp", "de-AT"), Some(OptOut));
        assert_eq!(
            kind("ＳＴＯＰＰ", "de"),
            Some(OptOut),
            "extras are folded too"
        );
        assert_eq!(kind("STOPP", "en"), None);
        assert_eq!(kind("hilfe", "de"), Some(Help));
        assert_eq!(kind("GO", "pt-BR"), Some(OptIn));
        assert_eq!(kind("auxilio", "es-MX"), Some(Help));
        assert_eq!(kind("auxilio", "es"), None);
        assert_eq!(kind("STOP", "de"), Some(OptOut), "the catalog's stay");
        assert!(keywords.words(OptOut, "es").contains(&"detente".to_owned()));
        let extra = keywords.classify("stopp", "de").expect("extra");
        assert_eq!(
            extra.language, None,
            "extras are answered in the conversation's locale"
        );
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
