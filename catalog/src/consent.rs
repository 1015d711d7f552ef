//! Consent words per language: `catalog/consent/<language>.yaml`, compiled in.
//!
//! The data only: which words are opt-out, opt-in and help keywords, and the
//! words the revocation phrase rules are built from. How a message is compared
//! with them (folding, phrase rules) is the consent stage's business
//! (`processors/consent`); this module parses and checks the files.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use serde::Deserialize;

use crate::{Catalog, normalize};

/// The compiled-in files, in order; their text is also what the consent stage
/// fingerprints as the version of its rules.
pub const SOURCES: &[&str] = &[
    include_str!("../consent/en.yaml"),
    include_str!("../consent/es.yaml"),
    include_str!("../consent/fr.yaml"),
];

/// Consent words that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConsentWordsError {
    /// A file does not parse (including unknown fields).
    #[error("consent words file {index}: {message}")]
    Parse {
        /// Position in the list of files.
        index: usize,
        /// The parser's message.
        message: String,
    },
    /// A file breaks a rule.
    #[error("consent words of {language}: {message}")]
    Invalid {
        /// The file's language.
        language: String,
        /// What is wrong.
        message: String,
    },
}

/// Whole-message keywords of one language.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeywordLists {
    /// Opt-out (STOP and equivalents).
    pub opt_out: Vec<String>,
    /// Opt-in (START and equivalents).
    pub opt_in: Vec<String>,
    /// Help (HELP, INFO).
    pub help: Vec<String>,
}

/// The words the revocation phrase rules of one language are built from.
/// Every entry may be several words (`opt out`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RevocationWords {
    /// The longest message, in words, that can be a revocation phrase.
    pub max_words: usize,
    /// Words that mean revocation on their own (`unsubscribe`, `opt out`).
    pub terms: Vec<String>,
    /// Revocation words that also have everyday meanings (`stop`, `cancel`).
    pub verbs: Vec<String>,
    /// Words that make a revocation of a following word about messages
    /// (`don't text`) and cancel a following verb (`don't stop`).
    #[serde(default)]
    pub negations: Vec<String>,
    /// Words about Si's messages (`texts`, `messaging`).
    pub messages: Vec<String>,
    /// Polite and empty words allowed around a revocation (`please`, `me`).
    #[serde(default)]
    pub filler: Vec<String>,
    /// Words that refer to something the conversation named (`it`, `that`):
    /// a short revocation with one of them is flagged, not acted on
    /// (`cancel that` may be about a reminder).
    #[serde(default)]
    pub contextual: Vec<String>,
}

/// The consent words of one language.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConsentWords {
    /// The language (`en`, `es`), matching a `catalog/messages` locale.
    pub language: String,
    /// Whole-message keywords, recognised whatever the conversation's locale.
    pub keywords: KeywordLists,
    /// Keywords recognised only in conversations of this language.
    #[serde(default)]
    pub local_only: Vec<String>,
    /// Revocation phrase rules.
    pub revocation: RevocationWords,
}

impl ConsentWords {
    /// The compiled-in consent words of every language.
    ///
    /// # Panics
    /// Never for a committed catalog: the unit tests load it.
    #[must_use]
    pub fn builtin() -> &'static [Self] {
        static WORDS: OnceLock<Vec<ConsentWords>> = OnceLock::new();
        WORDS.get_or_init(|| {
            Self::from_yaml(SOURCES, Catalog::builtin()).expect("catalog/consent is valid")
        })
    }

    /// Parses and checks consent word files against the message catalog: one
    /// file per language, every language of `catalog` has one, no empty lists
    /// or entries, `local_only` words are keywords of the file.
    ///
    /// # Errors
    /// When a file does not parse or breaks one of those rules.
    pub fn from_yaml(files: &[&str], catalog: &Catalog) -> Result<Vec<Self>, ConsentWordsError> {
        let mut out: Vec<Self> = Vec::new();
        for (index, text) in files.iter().enumerate() {
            let mut words: Self =
                serde_norway::from_str(text).map_err(|e| ConsentWordsError::Parse {
                    index,
                    message: e.to_string(),
                })?;
            words.language = normalize(&words.language);
            words.check()?;
            if out.iter().any(|w| w.language == words.language) {
                return Err(words.invalid("defined twice"));
            }
            out.push(words);
        }
        let have: BTreeSet<&str> = out.iter().map(|w| w.language.as_str()).collect();
        for locale in catalog.locales() {
            let language = locale.split('-').next().unwrap_or_default();
            if !have.contains(language) {
                return Err(ConsentWordsError::Invalid {
                    language: language.to_owned(),
                    message: "the message catalog has this language but no consent words"
                        .to_owned(),
                });
            }
        }
        for words in &out {
            if !catalog.locales().any(|l| l == words.language) {
                return Err(words.invalid("no catalog/messages file for this language"));
            }
        }
        Ok(out)
    }

    fn invalid(&self, message: &str) -> ConsentWordsError {
        ConsentWordsError::Invalid {
            language: self.language.clone(),
            message: message.to_owned(),
        }
    }

    fn check(&self) -> Result<(), ConsentWordsError> {
        if self.language.is_empty() || self.language.contains('-') {
            return Err(self.invalid("`language` must be a bare language code (en, es)"));
        }
        let k = &self.keywords;
        let r = &self.revocation;
        let lists: [(&str, &Vec<String>); 10] = [
            ("keywords.opt_out", &k.opt_out),
            ("keywords.opt_in", &k.opt_in),
            ("keywords.help", &k.help),
            ("local_only", &self.local_only),
            ("revocation.terms", &r.terms),
            ("revocation.verbs", &r.verbs),
            ("revocation.negations", &r.negations),
            ("revocation.messages", &r.messages),
            ("revocation.filler", &r.filler),
            ("revocation.contextual", &r.contextual),
        ];
        for (name, list) in lists {
            if list.iter().any(|w| w.trim().is_empty()) {
                return Err(self.invalid(&format!("{name} has an empty entry")));
            }
        }
        for (name, list) in [
            ("keywords.opt_out", &k.opt_out),
            ("revocation.terms", &r.terms),
            ("revocation.verbs", &r.verbs),
            ("revocation.messages", &r.messages),
        ] {
            if list.is_empty() {
                return Err(self.invalid(&format!("{name} is empty")));
            }
        }
        if r.max_words == 0 {
            return Err(self.invalid("revocation.max_words must be at least 1"));
        }
        let keywords: BTreeSet<String> = k
            .opt_out
            .iter()
            .chain(&k.opt_in)
            .chain(&k.help)
            .map(|w| w.to_lowercase())
            .collect();
        if let Some(word) = self
            .local_only
            .iter()
            .find(|w| !keywords.contains(&w.to_lowercase()))
        {
            return Err(self.invalid(&format!("local_only word {word} is not a keyword")));
        }
        if let Some(word) = k
            .opt_out
            .iter()
            .chain(&k.opt_in)
            .chain(&k.help)
            .find(|w| w.split_whitespace().count() != 1)
        {
            return Err(self.invalid(&format!("keyword `{word}` must be one word")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_catalog_language_has_consent_words() {
        let words = ConsentWords::builtin();
        let languages: Vec<&str> = words.iter().map(|w| w.language.as_str()).collect();
        assert_eq!(languages, ["en", "es", "fr"]);
        for w in words {
            assert!(
                w.keywords.opt_out.iter().any(|k| k == "STOP"),
                "{}",
                w.language
            );
        }
    }

    #[test]
    fn broken_files_are_refused() {
        let catalog = Catalog::builtin();
        let [en, es, fr] = [SOURCES[0], SOURCES[1], SOURCES[2]];
        assert!(ConsentWords::from_yaml(&[en, es, fr], catalog).is_ok());
        // A language of the message catalog without consent words.
        assert!(matches!(
            ConsentWords::from_yaml(&[en, es], catalog),
            Err(ConsentWordsError::Invalid { language, .. }) if language == "fr"
        ));
        assert!(matches!(
            ConsentWords::from_yaml(&[en, es, fr, fr], catalog),
            Err(ConsentWordsError::Invalid { .. })
        ));
        let typo = en.replace("  verbs:", "  verb:");
        assert!(matches!(
            ConsentWords::from_yaml(&[&typo, es, fr], catalog),
            Err(ConsentWordsError::Parse { .. })
        ));
        let stray = es.replace("local_only: [SÍ]", "local_only: [NADA]");
        assert!(matches!(
            ConsentWords::from_yaml(&[en, &stray, fr], catalog),
            Err(ConsentWordsError::Invalid { .. })
        ));
        let two = en.replace("[HELP, INFO]", "[HELP, MORE INFO]");
        assert!(matches!(
            ConsentWords::from_yaml(&[&two, es, fr], catalog),
            Err(ConsentWordsError::Invalid { .. })
        ));
        let zero = en.replace("max_words: 10", "max_words: 0");
        assert!(matches!(
            ConsentWords::from_yaml(&[&zero, es, fr], catalog),
            Err(ConsentWordsError::Invalid { .. })
        ));
        let german = "language: de\nkeywords: {opt_out: [STOPP], opt_in: [], help: []}\n\
                      revocation: {max_words: 3, terms: [abmelden], verbs: [stopp], messages: [sms]}\n";
        assert!(matches!(
            ConsentWords::from_yaml(&[en, es, fr, german], catalog),
            Err(ConsentWordsError::Invalid { language, .. }) if language == "de"
        ));
    }
}
