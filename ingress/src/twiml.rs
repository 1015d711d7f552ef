//! TwiML for voice escalation: the recording disclosure with a consent prompt,
//! and what follows the caller's choice (accept: `<Start><Recording>`,
//! `<Start><Transcription>` for Twilio's real-time transcription of both
//! tracks, and the voice agent's stream; decline or silence: nothing is
//! recorded or transcribed, a goodbye and `<Hangup/>`). Texts come from the shared catalog, in
//! the conversation's locale (our own call URLs carry `locale` and
//! `conversation`; they are passed on to every callback URL we hand Twilio).

/// The caller's answer, read by the rule normalize also reports on the event.
pub use si_catalog::voice::{Choice, choice};
use si_catalog::{Catalog, keys};

/// How voice answers are put together.
#[derive(Debug, Clone)]
pub struct VoiceSettings {
    /// The public base URL Twilio calls (no trailing slash).
    pub public_base_url: String,
    /// The media stream of the voice agent (`wss://…`); without one, an accepted call
    /// is told Si cannot take calls and continues by text.
    pub stream_url: Option<String>,
    /// Seconds the consent prompt waits for an answer.
    pub gather_timeout_secs: u32,
}

/// Escapes text for XML content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// What a call's TwiML passes on to our own callback URLs.
#[derive(Debug, Clone, Copy)]
pub struct Carried<'a> {
    /// The conversation the call belongs to.
    pub conversation: Option<&'a str>,
    /// The language the call is spoken in.
    pub locale: &'a str,
    /// The webhook span's W3C `traceparent` (with traces exported), so the
    /// callbacks the TwiML names continue the call's trace.
    pub traceparent: Option<&'a str>,
}

impl Carried<'_> {
    /// The query of our callback URLs: `conversation`, `locale` and
    /// `traceparent` only.
    fn query(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        if let Some(conversation) = self.conversation {
            query.append_pair("conversation", conversation);
        }
        query.append_pair("locale", self.locale);
        if let Some(traceparent) = self.traceparent {
            query.append_pair(si_runtime::trace::TRACEPARENT, traceparent);
        }
        query.finish()
    }
}

fn say(catalog: &Catalog, key: &str, locale: &str) -> String {
    let text = catalog.text(key, locale);
    format!(
        "<Say language=\"{}\">{}</Say>",
        escape(text.say_language),
        escape(text.text)
    )
}

fn document(verbs: &str) -> String {
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response>{verbs}</Response>")
}

pub use si_catalog::voice::answered_by_machine;

/// The answer to a call answered by a machine: hang up at once. Nobody is
/// there to hear the disclosure, and a greeting is no consent; voice-link
/// reads the call's `AnsweredBy` and tells the user by text.
#[must_use]
pub fn hang_up() -> String {
    document("<Hangup/>")
}

/// The answer to a call: the disclosure, then the consent prompt.
#[must_use]
pub fn answer(settings: &VoiceSettings, catalog: &Catalog, carried: Carried<'_>) -> String {
    let locale = carried.locale;
    let prompt = catalog.text(keys::VOICE_CONSENT_PROMPT, locale);
    let action = format!(
        "{}/twilio/voice/gather?{}",
        settings.public_base_url,
        carried.query()
    );
    let hints: Vec<String> = catalog
        .words(keys::VOICE_YES_WORDS, locale)
        .into_iter()
        .chain(catalog.words(keys::VOICE_NO_WORDS, locale))
        .collect();
    document(&format!(
        "{disclosure}<Gather input=\"dtmf speech\" numDigits=\"1\" timeout=\"{timeout}\" \
         language=\"{language}\" hints=\"{hints}\" actionOnEmptyResult=\"true\" \
         action=\"{action}\" method=\"POST\">{prompt}</Gather>",
        disclosure = say(catalog, keys::VOICE_DISCLOSURE, locale),
        timeout = settings.gather_timeout_secs,
        language = escape(prompt.say_language),
        hints = escape(&hints.join(", ")),
        action = escape(&action),
        prompt = say(catalog, keys::VOICE_CONSENT_PROMPT, locale),
    ))
}

/// What the call does after the caller's choice.
#[must_use]
pub fn after_choice(
    settings: &VoiceSettings,
    catalog: &Catalog,
    carried: Carried<'_>,
    choice: Choice,
) -> String {
    let Carried {
        conversation,
        locale,
        ..
    } = carried;
    match choice {
        Choice::Decline => document(&format!(
            "{}<Hangup/>",
            say(catalog, keys::VOICE_DECLINED, locale)
        )),
        Choice::NoInput => document(&format!(
            "{}<Hangup/>",
            say(catalog, keys::VOICE_NO_INPUT, locale)
        )),
        Choice::Accept => {
            let Some(stream) = &settings.stream_url else {
                return document(&format!(
                    "{}<Hangup/>",
                    say(catalog, keys::VOICE_UNAVAILABLE, locale)
                ));
            };
            let query = carried.query();
            let recording_callback = format!(
                "{}/twilio/voice/recording?{query}",
                settings.public_base_url
            );
            let transcription_callback = format!(
                "{}/twilio/voice/transcription?{query}",
                settings.public_base_url
            );
            // The caller is recognised in the language the consent prompt
            // was spoken (and its speech gathered) in.
            let language = catalog
                .text(keys::VOICE_CONSENT_PROMPT, locale)
                .say_language;
            let parameter = conversation.map_or_else(String::new, |c| {
                format!("<Parameter name=\"conversation\" value=\"{}\"/>", escape(c))
            });
            document(&format!(
                "{accepted}<Start><Recording recordingStatusCallback=\"{callback}\" \
                 recordingStatusCallbackEvent=\"completed\"/></Start>\
                 <Start><Transcription statusCallbackUrl=\"{transcription}\" \
                 track=\"both_tracks\" languageCode=\"{language}\"/></Start>\
                 <Connect><Stream url=\"{stream}\">{parameter}<Parameter name=\"locale\" value=\"{locale}\"/></Stream></Connect>",
                accepted = say(catalog, keys::VOICE_ACCEPTED, locale),
                callback = escape(&recording_callback),
                transcription = escape(&transcription_callback),
                language = escape(language),
                stream = escape(stream),
                locale = escape(locale),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(stream: Option<&str>) -> VoiceSettings {
        VoiceSettings {
            public_base_url: "https://si.example.com".into(),
            stream_url: stream.map(str::to_owned),
            gather_timeout_secs: 6,
        }
    }

    #[test]
    fn machines_and_faxes_are_told_apart_from_people() {
        for machine in [
            "machine_start",
            "machine_end_beep",
            "machine_end_silence",
            "machine_end_other",
            "fax",
        ] {
            assert!(answered_by_machine(Some(machine)), "{machine}");
        }
        for person in [None, Some("human"), Some("unknown"), Some("")] {
            assert!(!answered_by_machine(person), "{person:?}");
        }
        assert!(hang_up().ends_with("<Response><Hangup/></Response>"));
    }

    #[test]
    fn the_answer_discloses_recording_and_asks_in_the_callers_language() {
        let xml = answer(
            &settings(None),
            Catalog::builtin(),
            carried(Some("CH1"), "es-MX"),
        );
        assert!(xml.starts_with("<?xml"), "{xml}");
        assert!(
            xml.contains("<Say language=\"es-MX\">Hola, habla Si. Esta llamada se graba"),
            "{xml}"
        );
        assert!(xml.contains("input=\"dtmf speech\""), "{xml}");
        assert!(xml.contains("actionOnEmptyResult=\"true\""), "{xml}");
        assert!(
            xml.contains("action=\"https://si.example.com/twilio/voice/gather?conversation=CH1&amp;locale=es-MX\""),
            "{xml}"
        );
    }

    #[test]
    fn a_locale_without_translation_falls_back_to_english() {
        let xml = answer(&settings(None), Catalog::builtin(), carried(None, "ja-JP"));
        assert!(
            xml.contains("<Say language=\"en-US\">Hi, this is Si."),
            "{xml}"
        );
    }

    #[test]
    fn keypad_and_speech_choices() {
        let c = Catalog::builtin();
        assert_eq!(choice(c, "en", Some("1"), None), Choice::Accept);
        assert_eq!(choice(c, "en", Some("2"), Some("yes")), Choice::Decline);
        assert_eq!(choice(c, "en", None, Some("Yes, please.")), Choice::Accept);
        assert_eq!(choice(c, "en", None, Some("No.")), Choice::Decline);
        assert_eq!(
            choice(c, "en", None, Some("yes... no, actually")),
            Choice::Decline
        );
        assert_eq!(choice(c, "es", None, Some("Sí, claro")), Choice::Accept);
        assert_eq!(choice(c, "en", None, Some("nobody knows")), Choice::NoInput);
        assert_eq!(choice(c, "en", Some("7"), None), Choice::NoInput);
        assert_eq!(choice(c, "en", None, None), Choice::NoInput);
    }

    #[test]
    fn declining_ends_the_call_politely_and_says_text_continues() {
        let xml = after_choice(
            &settings(Some("wss://voice")),
            Catalog::builtin(),
            carried(Some("CH1"), "en"),
            Choice::Decline,
        );
        assert!(xml.contains("continues by text message"), "{xml}");
        assert!(xml.ends_with("<Hangup/></Response>"), "{xml}");
        assert!(!xml.contains("<Recording"), "{xml}");
        assert!(
            !xml.contains("<Start"),
            "nothing recorded or transcribed: {xml}"
        );
    }

    #[test]
    fn silence_ends_the_call_without_recording_or_transcribing() {
        let c = Catalog::builtin();
        let silence = choice(c, "fr", None, None);
        assert_eq!(silence, Choice::NoInput);
        let xml = after_choice(
            &settings(Some("wss://voice")),
            c,
            carried(Some("CH1"), "fr"),
            silence,
        );
        assert!(xml.ends_with("<Hangup/></Response>"), "{xml}");
        assert!(
            !xml.contains("<Start") && !xml.contains("<Transcription") && !xml.contains("<Stream"),
            "{xml}"
        );
    }

    #[test]
    fn accepting_records_and_connects_the_stream_with_the_conversation() {
        let xml = after_choice(
            &settings(Some("wss://voice.example/agent")),
            Catalog::builtin(),
            carried(Some("CH1"), "en"),
            Choice::Accept,
        );
        assert!(xml.contains("<Start><Recording recordingStatusCallback=\"https://si.example.com/twilio/voice/recording?conversation=CH1&amp;locale=en\""), "{xml}");
        assert!(xml.contains("<Connect><Stream url=\"wss://voice.example/agent\"><Parameter name=\"conversation\" value=\"CH1\"/>"), "{xml}");
        assert!(
            xml.contains(
                "<Start><Transcription statusCallbackUrl=\"https://si.example.com/twilio/voice/transcription?conversation=CH1&amp;locale=en\" \
                 track=\"both_tracks\" languageCode=\"en-US\"/></Start>"
            ),
            "{xml}"
        );
        let recording = xml.find("<Recording").unwrap_or(usize::MAX);
        let transcription = xml.find("<Transcription").unwrap_or(usize::MAX);
        let stream = xml.find("<Connect>").unwrap_or(0);
        assert!(
            recording < stream && transcription < stream,
            "both start before the call connects: {xml}"
        );
        let spanish = after_choice(
            &settings(Some("wss://voice.example/agent")),
            Catalog::builtin(),
            carried(None, "es-MX"),
            Choice::Accept,
        );
        assert!(
            spanish.contains(
                "transcription?locale=es-MX\" track=\"both_tracks\" languageCode=\"es-MX\""
            ),
            "{spanish}"
        );
        let without_agent = after_choice(
            &settings(None),
            Catalog::builtin(),
            carried(Some("CH1"), "en"),
            Choice::Accept,
        );
        assert!(
            without_agent.contains("Si cannot take calls")
                && !without_agent.contains("<Recording")
                && !without_agent.contains("<Transcription"),
            "{without_agent}"
        );
    }

    fn carried<'a>(conversation: Option<&'a str>, locale: &'a str) -> Carried<'a> {
        Carried {
            conversation,
            locale,
            traceparent: None,
        }
    }

    #[test]
    fn the_callbacks_continue_the_calls_trace() {
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let traced = Carried {
            traceparent: Some(traceparent),
            ..carried(Some("CH1"), "en")
        };
        let query = format!("conversation=CH1&amp;locale=en&amp;traceparent={traceparent}");
        let xml = answer(&settings(None), Catalog::builtin(), traced);
        assert!(xml.contains(&format!("gather?{query}\"")), "{xml}");
        let xml = after_choice(
            &settings(Some("wss://voice")),
            Catalog::builtin(),
            traced,
            Choice::Accept,
        );
        assert!(xml.contains(&format!("recording?{query}\"")), "{xml}");
        assert!(xml.contains(&format!("transcription?{query}\"")), "{xml}");
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&apos;");
    }
}
