//! The user-facing texts of the Si Twilio channel, per locale.
//!
//! Texts live in `catalog/messages/<locale>.yaml` and are compiled in. English
//! (`en`) is the default and must have every key; other locales may leave keys
//! out. A lookup falls back from the exact locale (`es-MX`) to its language
//! (`es`) to the default (`en`), and says which locale it used, so callers can
//! record it (and set the TwiML `<Say language>` to match the text).
//!
//! The consent words (keywords and revocation phrase rules) of every language
//! live beside them in `catalog/consent/<language>.yaml` ([`consent`]); every
//! language with texts must have them. How a caller's spoken or keyed answer
//! to the recording disclosure is read from the voice word lists is
//! [`voice::choice`], shared by ingress (the TwiML) and normalize (the event).

pub mod consent;
mod region;
pub mod voice;

pub use region::locale_of_region;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;

/// The keys, so a typo is a compile error rather than a fallback at run time.
pub mod keys {
    /// Voice: recording disclosure read when a call starts.
    pub const VOICE_DISCLOSURE: &str = "voice.disclosure";
    /// Voice: asks for consent to record (keypad or speech).
    pub const VOICE_CONSENT_PROMPT: &str = "voice.consent_prompt";
    /// Voice: the caller accepted.
    pub const VOICE_ACCEPTED: &str = "voice.accepted";
    /// Voice: the caller declined; the conversation continues by text.
    pub const VOICE_DECLINED: &str = "voice.declined";
    /// Voice: no answer to the consent prompt; treated as a decline.
    pub const VOICE_NO_INPUT: &str = "voice.no_input";
    /// Voice: no voice agent is available.
    pub const VOICE_UNAVAILABLE: &str = "voice.unavailable";
    /// Voice: `|`-separated words that accept, for speech input.
    pub const VOICE_YES_WORDS: &str = "voice.yes_words";
    /// Voice: `|`-separated words that decline, for speech input.
    pub const VOICE_NO_WORDS: &str = "voice.no_words";
    /// Messaging: first contact, with consent confirmation.
    pub const WELCOME: &str = "messaging.welcome";
    /// Messaging: START and other opt-in keywords.
    pub const OPT_IN_CONFIRMATION: &str = "messaging.opt_in_confirmation";
    /// Messaging: STOP and other opt-out keywords.
    pub const OPT_OUT_CONFIRMATION: &str = "messaging.opt_out_confirmation";
    /// Messaging: HELP and INFO.
    pub const HELP: &str = "messaging.help";
    /// Messaging: first contact when an explicit opt-in is required.
    pub const CONSENT_REQUEST: &str = "messaging.consent_request";
    /// Messaging: the conversation will close soon for inactivity.
    pub const INACTIVITY_WARNING: &str = "messaging.inactivity_warning";
    /// Messaging: the conversation closed; how to come back.
    pub const CLOSING: &str = "messaging.closing";
    /// Messaging: for cognition (and the dev echo responder) to add to its
    /// answer to a message flagged `possible_revocation`: how to opt out.
    pub const REVOCATION_CLARIFICATION: &str = "messaging.revocation_clarification";
    /// Messaging: the user wrote again after a closure (a new conversation).
    pub const WELCOME_BACK: &str = "messaging.welcome_back";
    /// Messaging: Si is calling the user now (escalation to voice).
    pub const CALLING_NOW: &str = "messaging.calling_now";
    /// Messaging: when Si will call (`{time}`: local time, `{zone}`: the time zone).
    pub const CALL_SCHEDULED: &str = "messaging.call_scheduled";
    /// Messaging: the caller declined recording or did not answer the
    /// prompt; the conversation continues by text.
    pub const CALL_CONTINUES_BY_TEXT: &str = "messaging.call_continues_by_text";
    /// Messaging: the call was not answered (no answer, busy, failed, a
    /// machine): continue by text or ask for another call.
    pub const CALL_MISSED: &str = "messaging.call_missed";
    /// Messaging: the user's messages are held back by the inbound rate
    /// limit until they write more slowly.
    pub const RATE_LIMITED: &str = "messaging.rate_limited";

    /// Every key; the default locale must define all of them.
    pub const ALL: &[&str] = &[
        VOICE_DISCLOSURE,
        VOICE_CONSENT_PROMPT,
        VOICE_ACCEPTED,
        VOICE_DECLINED,
        VOICE_NO_INPUT,
        VOICE_UNAVAILABLE,
        VOICE_YES_WORDS,
        VOICE_NO_WORDS,
        WELCOME,
        OPT_IN_CONFIRMATION,
        OPT_OUT_CONFIRMATION,
        HELP,
        CONSENT_REQUEST,
        INACTIVITY_WARNING,
        CLOSING,
        REVOCATION_CLARIFICATION,
        WELCOME_BACK,
        CALLING_NOW,
        CALL_SCHEDULED,
        CALL_CONTINUES_BY_TEXT,
        CALL_MISSED,
        RATE_LIMITED,
    ];
}

/// The locale every lookup falls back to.
pub const DEFAULT_LOCALE: &str = "en";

const BUILTIN: &[&str] = &[
    include_str!("../messages/en.yaml"),
    include_str!("../messages/es.yaml"),
    include_str!("../messages/fr.yaml"),
];

/// A catalog that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CatalogError {
    /// A file does not parse.
    #[error("catalog file {index}: {message}")]
    Parse {
        /// Position in the list of files.
        index: usize,
        /// The parser's message.
        message: String,
    },
    /// The default locale lacks a key.
    #[error("the default locale {DEFAULT_LOCALE} has no text for {0}")]
    MissingDefault(String),
    /// A locale defines a key nobody asks for (a typo).
    #[error("locale {locale} defines unknown key {key}")]
    UnknownKey {
        /// The locale.
        locale: String,
        /// The key.
        key: String,
    },
    /// The same locale twice.
    #[error("locale {0} is defined twice")]
    Duplicate(String),
}

#[derive(Debug, Deserialize)]
struct LocaleFile {
    locale: String,
    say_language: String,
    messages: BTreeMap<String, String>,
}

#[derive(Debug)]
struct Locale {
    say_language: String,
    messages: BTreeMap<String, String>,
}

/// A text and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Text<'a> {
    /// The text.
    pub text: &'a str,
    /// The locale the text is in (after fallback).
    pub locale: &'a str,
    /// The TwiML `<Say language>` for that locale.
    pub say_language: &'a str,
}

/// Texts per locale.
#[derive(Debug)]
pub struct Catalog {
    locales: BTreeMap<String, Locale>,
}

impl Catalog {
    /// The compiled-in catalog.
    ///
    /// # Panics
    /// Never for a committed catalog: the unit tests load it.
    #[must_use]
    pub fn builtin() -> &'static Self {
        static CATALOG: OnceLock<Catalog> = OnceLock::new();
        CATALOG.get_or_init(|| Self::from_yaml(BUILTIN).expect("catalog/messages is valid"))
    }

    /// Builds a catalog from locale files, checking them.
    ///
    /// # Errors
    /// When a file does not parse, the default locale lacks a key, a locale defines
    /// an unknown key, or a locale appears twice.
    pub fn from_yaml(files: &[&str]) -> Result<Self, CatalogError> {
        let mut locales = BTreeMap::new();
        for (index, text) in files.iter().enumerate() {
            let file: LocaleFile =
                serde_norway::from_str(text).map_err(|e| CatalogError::Parse {
                    index,
                    message: e.to_string(),
                })?;
            let locale = normalize(&file.locale);
            if let Some(key) = file
                .messages
                .keys()
                .find(|k| !keys::ALL.contains(&k.as_str()))
            {
                return Err(CatalogError::UnknownKey {
                    locale,
                    key: key.clone(),
                });
            }
            let messages = file
                .messages
                .into_iter()
                .map(|(k, v)| (k, v.trim().to_owned()))
                .collect();
            let entry = Locale {
                say_language: file.say_language,
                messages,
            };
            if locales.insert(locale.clone(), entry).is_some() {
                return Err(CatalogError::Duplicate(locale));
            }
        }
        let default = locales
            .get(DEFAULT_LOCALE)
            .ok_or_else(|| CatalogError::MissingDefault("(the whole locale)".to_owned()))?;
        if let Some(key) = keys::ALL
            .iter()
            .find(|k| !default.messages.contains_key(**k))
        {
            return Err(CatalogError::MissingDefault((*key).to_owned()));
        }
        Ok(Self { locales })
    }

    /// The locales with at least one text.
    pub fn locales(&self) -> impl Iterator<Item = &str> {
        self.locales.keys().map(String::as_str)
    }

    /// The text for `key` in `locale`, falling back to the language and then to English.
    ///
    /// # Panics
    /// When `key` is not one of [`keys::ALL`] (a programming error).
    #[must_use]
    pub fn text(&self, key: &str, locale: &str) -> Text<'_> {
        let requested = normalize(locale);
        let language = requested.split('-').next().unwrap_or_default().to_owned();
        for candidate in [requested.as_str(), language.as_str(), DEFAULT_LOCALE] {
            if let Some((name, entry)) = self.locales.get_key_value(candidate)
                && let Some(text) = entry.messages.get(key)
            {
                return Text {
                    text,
                    locale: name,
                    say_language: &entry.say_language,
                };
            }
        }
        panic!("catalog key {key} is not defined in the default locale");
    }

    /// The `|`-separated word list under `key` (lower-cased), e.g. for speech answers.
    #[must_use]
    pub fn words(&self, key: &str, locale: &str) -> Vec<String> {
        self.text(key, locale)
            .text
            .split('|')
            .map(|w| w.trim().to_lowercase())
            .filter(|w| !w.is_empty())
            .collect()
    }
}

/// `es_MX`, `ES-mx` → `es-MX`; `EN` → `en`.
fn normalize(locale: &str) -> String {
    let mut parts = locale.trim().split(['-', '_']);
    let language = parts.next().unwrap_or_default().to_ascii_lowercase();
    match parts.next() {
        Some(region) if !region.is_empty() => format!("{language}-{}", region.to_ascii_uppercase()),
        _ => language,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_catalog_loads_with_every_key_in_english() {
        let catalog = Catalog::builtin();
        for key in keys::ALL {
            let text = catalog.text(key, "en");
            assert_eq!(text.locale, "en");
            assert!(!text.text.is_empty(), "{key}");
        }
        assert!(catalog.locales().count() >= 2);
    }

    #[test]
    fn regional_locales_fall_back_to_their_language() {
        let text = Catalog::builtin().text(keys::VOICE_ACCEPTED, "es-MX");
        assert_eq!(text.locale, "es");
        assert_eq!(text.say_language, "es-MX");
        assert!(text.text.starts_with("Gracias"), "{}", text.text);
        assert_eq!(
            Catalog::builtin()
                .text(keys::VOICE_ACCEPTED, "ES_mx")
                .locale,
            "es"
        );
    }

    #[test]
    fn a_missing_translation_falls_back_to_english_and_says_so() {
        // French has no voice.unavailable text.
        let text = Catalog::builtin().text(keys::VOICE_UNAVAILABLE, "fr-CA");
        assert_eq!(text.locale, "en");
        assert_eq!(text.say_language, "en-US");
        assert!(
            text.text.starts_with("Si cannot take calls"),
            "{}",
            text.text
        );
        // ...while a key French does have stays French.
        assert_eq!(Catalog::builtin().text(keys::HELP, "fr-CA").locale, "fr");
    }

    #[test]
    fn an_unknown_locale_gets_english() {
        let text = Catalog::builtin().text(keys::HELP, "ja-JP");
        assert_eq!(text.locale, "en");
        assert_eq!(Catalog::builtin().text(keys::HELP, "").locale, "en");
    }

    #[test]
    fn broken_catalogs_are_refused() {
        let english = BUILTIN[0];
        let stray = "locale: de\nsay_language: de-DE\nmessages:\n  voice.disclosur: x\n";
        assert_eq!(
            Catalog::from_yaml(&[english, stray]).err(),
            Some(CatalogError::UnknownKey {
                locale: "de".into(),
                key: "voice.disclosur".into()
            })
        );
        let thin = "locale: en\nsay_language: en-US\nmessages:\n  voice.disclosure: x\n";
        assert!(matches!(
            Catalog::from_yaml(&[thin]),
            Err(CatalogError::MissingDefault(_))
        ));
        assert!(matches!(
            Catalog::from_yaml(&[english, english]),
            Err(CatalogError::Duplicate(_))
        ));
    }

    #[test]
    fn speech_word_lists_are_split_and_lowercased() {
        let words = Catalog::builtin().words(keys::VOICE_YES_WORDS, "es");
        assert!(words.contains(&"sí".to_owned()), "{words:?}");
    }
}
