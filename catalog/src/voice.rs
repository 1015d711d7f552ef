//! The caller's answer to the recording disclosure, read one way everywhere.
//!
//! Ingress decides the call's next TwiML with [`choice`] (record and connect,
//! or say goodbye); normalize reports the same answer on the call's event
//! (`CallEvent.disclosure`). Both call this function with the same inputs (the
//! gather's `Digits` and `SpeechResult` and the `locale` our gather URL
//! carries), so the event can never say "accepted" for a call that was not
//! recorded, or the other way round.

use crate::{Catalog, keys};

/// Whether Twilio's answering-machine detection says a machine (or a fax)
/// answered: `AnsweredBy` `machine_start`, `machine_end_beep`,
/// `machine_end_silence`, `machine_end_other` or `fax`. Ingress then hangs
/// up instead of playing the disclosure, and normalize records none.
#[must_use]
pub fn answered_by_machine(answered_by: Option<&str>) -> bool {
    answered_by.is_some_and(|a| a.starts_with("machine_") || a == "fax")
}

/// What the caller chose at the consent prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Pressed 1 or said a yes word: record and continue.
    Accept,
    /// Pressed 2 or said a no word: no recording, continue by text.
    Decline,
    /// No (usable) answer: treated as a decline.
    NoInput,
}

/// Reads the caller's answer: keypad first (1 accepts, 2 declines), then
/// speech against the locale's `voice.yes_words` and `voice.no_words`, whole
/// words, case-insensitive. No recording without a clear yes:
///
/// - a no word (negations among them: `not`, `pas`) declines, whatever
///   else was said (`yes... no, actually`, `I'm not sure`);
/// - a question is no answer (`¿Quién es Si?`);
/// - a yes word accepts in a short answer only, at most
///   [`MAX_ANSWER_WORDS`] words (`Yes, please`, `Sure, go ahead`): a
///   longer utterance (a voicemail greeting, a remark) is no answer.
///
/// Anything else, including silence, is [`Choice::NoInput`].
/// The most words a spoken yes may come with.
pub const MAX_ANSWER_WORDS: usize = 5;

#[must_use]
pub fn choice(
    catalog: &Catalog,
    locale: &str,
    digits: Option<&str>,
    speech: Option<&str>,
) -> Choice {
    match digits.map(str::trim) {
        Some("1") => return Choice::Accept,
        Some("2") => return Choice::Decline,
        _ => {}
    }
    let Some(speech) = speech else {
        return Choice::NoInput;
    };
    let spoken: String = speech
        .to_lowercase()
        .chars()
        .map(|c| match c {
            // Speech recognition may write a typographic apostrophe (d’accord).
            '\'' | '\u{2019}' => '\'',
            c if c.is_alphanumeric() => c,
            _ => ' ',
        })
        .collect();
    let words: Vec<&str> = spoken.split_whitespace().collect();
    let question = speech.contains(['?', '¿']);
    let spoken = format!(" {} ", words.join(" "));
    let said = |key| {
        catalog
            .words(key, locale)
            .iter()
            .any(|w| spoken.contains(&format!(" {w} ")))
    };
    if said(keys::VOICE_NO_WORDS) {
        Choice::Decline
    } else if !question && words.len() <= MAX_ANSWER_WORDS && said(keys::VOICE_YES_WORDS) {
        Choice::Accept
    } else {
        Choice::NoInput
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keypad_and_speech_choices() {
        let c = Catalog::builtin();
        assert_eq!(choice(c, "en", Some("1"), None), Choice::Accept);
        assert_eq!(choice(c, "en", Some(" 1 "), None), Choice::Accept);
        assert_eq!(choice(c, "en", Some("2"), Some("yes")), Choice::Decline);
        assert_eq!(choice(c, "en", None, Some("Yes, please.")), Choice::Accept);
        assert_eq!(choice(c, "en", None, Some("No.")), Choice::Decline);
        assert_eq!(
            choice(c, "en", None, Some("yes... no, actually")),
            Choice::Decline
        );
        assert_eq!(choice(c, "en", None, Some("I don't")), Choice::Decline);
        assert_eq!(choice(c, "es", None, Some("Sí, claro")), Choice::Accept);
        assert_eq!(choice(c, "en", None, Some("nobody knows")), Choice::NoInput);
        assert_eq!(
            choice(c, "en", None, Some("Sure, go ahead")),
            Choice::Accept
        );
        assert_eq!(choice(c, "en", None, Some("I accept")), Choice::Accept);
        // Negations decline; questions and long utterances are no answer.
        assert_eq!(choice(c, "en", None, Some("I'm not sure")), Choice::Decline);
        assert_eq!(choice(c, "en", None, Some("not okay")), Choice::Decline);
        assert_eq!(choice(c, "en", None, Some("never")), Choice::Decline);
        assert_eq!(choice(c, "en", None, Some("Okay?")), Choice::NoInput);
        assert_eq!(
            choice(
                c,
                "en",
                None,
                Some("Hi, you've reached Sam. Okay, leave a message after the tone")
            ),
            Choice::NoInput,
            "a voicemail greeting is no consent"
        );
        assert_eq!(
            choice(c, "es", None, Some("¿Quién es Si?")),
            Choice::NoInput
        );
        assert_eq!(choice(c, "es", None, Some("No, nunca")), Choice::Decline);
        assert_eq!(choice(c, "en", Some("7"), None), Choice::NoInput);
        assert_eq!(choice(c, "en", None, None), Choice::NoInput);
    }

    #[test]
    fn french_answers_with_either_apostrophe() {
        let c = Catalog::builtin();
        assert_eq!(choice(c, "fr-CA", None, Some("Oui.")), Choice::Accept);
        assert_eq!(choice(c, "fr", None, Some("D'accord")), Choice::Accept);
        assert_eq!(
            choice(c, "fr", None, Some("D\u{2019}accord !")),
            Choice::Accept
        );
        assert_eq!(choice(c, "fr", None, Some("Non merci")), Choice::Decline);
        assert_eq!(choice(c, "fr", None, Some("oui… non")), Choice::Decline);
        assert_eq!(
            choice(c, "fr", None, Some("Je ne suis pas d'accord")),
            Choice::Decline
        );
        assert_eq!(choice(c, "fr", None, Some("pas ok")), Choice::Decline);
        assert_eq!(
            choice(c, "fr", None, Some("yes")),
            Choice::NoInput,
            "words of the call's language only"
        );
    }
}
