//! Table tests of the revocation rules: phrases that opt out, longer messages
//! that are flagged, ordinary messages that stay ordinary; in every language's
//! conversations.

use super::*;
use crate::fold;

const LOCALES: &[&str] = &["en", "en-US", "es-MX", "fr-CA", "de", "pt-BR"];

fn assess(text: &str, locale: &str) -> Option<Revocation> {
    RevocationRules::default().assess(text, locale)
}

#[test]
fn revocation_phrases_opt_out_in_every_conversation() {
    // (message, language of the words)
    let table: &[(&str, &str)] = &[
        ("opt out", "en"),
        ("Opt-Out!", "en"),
        ("OPT OUT", "en"),
        ("STOP ALL", "en"),
        ("STOP-ALL", "en"),
        ("please stop", "en"),
        ("Please stop.", "en"),
        ("stop texting me", "en"),
        ("Stop texting me!!! 😡", "en"),
        ("unsubscribe me", "en"),
        ("Unsubscribe me please 🙏", "en"),
        ("I want to unsubscribe", "en"),
        ("I want to cancel my subscription", "en"),
        ("don't text me anymore", "en"),
        ("Don’t text me again", "en"),
        ("do not contact me", "en"),
        ("no more messages please", "en"),
        ("remove me from your list", "en"),
        ("stop sending messages", "en"),
        ("you can stop now", "en"),
        ("leave me alone", "en"),
        ("No, stop.", "en"),
        ("Ok stop now", "en"),
        ("I quit", "en"),
        ("revoke consent", "en"),
        ("ＯＰＴ ＯＵＴ", "en"),
        // Wordings people use, each word in the lists.
        ("I said STOP", "en"),
        ("stop txting me", "en"),
        ("UN-SUBSCRIBE", "en"),
        ("I no longer want texts", "en"),
        ("stop spamming me", "en"),
        ("remove my number", "en"),
        ("wrong number", "en"),
        ("Si please stop", "en"),
        ("remove me from the list", "en"),
        ("take me off the list", "en"),
        ("I revoke my consent", "en"),
        // A contextual word with the object named is no less a revocation.
        ("unsubscribe me from this", "en"),
        ("unsubscribe from these messages", "en"),
        ("do not text this number", "en"),
        ("QUıT TEXTıNG ME", "en"),
        // Cyrillic Ѕ Т О Р, Greek Α, Cyrillic А
        ("\u{0405}\u{0422}\u{041E}\u{0420} \u{0391}LL", "en"),
        ("please \u{0455}top texting me", "en"),
        ("por favor paren", "es"),
        ("No me escriban más", "es"),
        ("darme de baja", "es"),
        ("Quiero darme de baja, gracias", "es"),
        ("ya no quiero mensajes", "es"),
        ("dejen de mandarme mensajes", "es"),
        ("No más", "es"),
        ("NO MAS!!", "es"),
        ("no más mensajes por favor", "es"),
        ("arrêtez svp", "fr"),
        ("Ne m'envoyez plus de messages", "fr"),
        ("Désabonnez-moi", "fr"),
        ("je veux me désabonner", "fr"),
        ("ARRETEZ LES MESSAGES S'IL VOUS PLAIT", "fr"),
    ];
    for (text, language) in table {
        for locale in LOCALES {
            let found = assess(text, locale).unwrap_or_else(|| panic!("{text:?} in {locale}"));
            assert_eq!(found.rule, Rule::Phrase, "{text:?} in {locale}: {found:?}");
            assert_eq!(found.action(), Action::OptOut);
            assert_eq!(found.as_sent, fold::trim(text), "{text:?}");
            // A phrase whose words are in the conversation's language too
            // (`stop` is English and French) is that language's.
            if !locale.starts_with(&found.language) {
                assert_eq!(&found.language, language, "{text:?} in {locale}");
            }
        }
    }
}

#[test]
fn longer_messages_with_a_revocation_are_flagged() {
    let table: &[(&str, Rule, &str)] = &[
        ("stop it please", Rule::Contextual, "stop it please"),
        ("Cancel that.", Rule::Contextual, "cancel that"),
        (
            "Please stop the reminders!",
            Rule::NearMessages,
            "stop the reminders",
        ),
        ("end this", Rule::Contextual, "end this"),
        ("arrête ça", Rule::Contextual, "arrete ca"),
        ("cancela eso", Rule::Contextual, "cancela eso"),
        ("Please stop, I'm at work", Rule::Clause, "please stop"),
        (
            "I quit my job today, so please stop texting me during the day",
            Rule::NearMessages,
            "stop texting",
        ),
        (
            "how do I unsubscribe from the reminders but keep chatting",
            Rule::Term,
            "unsubscribe",
        ),
        (
            "can you stop sending me all these reminders every morning",
            Rule::NearMessages,
            "stop sending",
        ),
        (
            "Honestly I don't want any more texts from this number after today",
            Rule::NearMessages,
            "don t want any more texts",
        ),
        (
            "Hola, por favor dejen de mandarme mensajes, ya no los necesito",
            Rule::Clause,
            "por favor dejen de mandarme mensajes",
        ),
        (
            "Bonjour, arrêtez de m'envoyer des messages le soir",
            Rule::NearMessages,
            "arretez de m envoyer",
        ),
        (
            "Thanks for the help with the recipe. Stop texting me now, I'm done.",
            Rule::Clause,
            "stop texting me now",
        ),
        // A negation about something else does not cancel a later verb.
        (
            "I'm not interested stop texting me",
            Rule::NearMessages,
            "stop texting",
        ),
        (
            "I don't know you stop texting me",
            Rule::NearMessages,
            "stop texting",
        ),
        (
            "I do not know this number stop texting me",
            Rule::NearMessages,
            "stop texting",
        ),
    ];
    for (text, rule, matched) in table {
        for locale in LOCALES {
            let found = assess(text, locale).unwrap_or_else(|| panic!("{text:?} in {locale}"));
            assert_eq!(found.rule, *rule, "{text:?} in {locale}: {found:?}");
            assert_eq!(found.action(), Action::Flag);
            assert_eq!(found.matched, *matched, "{text:?} in {locale}");
            assert_eq!(found.as_sent, *matched, "the message itself is not kept");
        }
    }
}

#[test]
fn ordinary_messages_stay_ordinary() {
    for text in [
        "Stop by tomorrow",
        "cancel my order",
        "Cancel my appointment please",
        "remind me to cancel my gym membership",
        "Stop the music",
        "stop the timer",
        "End of story",
        "ok thanks, bye",
        "No thanks",
        "Please cancel my dinner reservation for tonight",
        "The end of the movie was great",
        "the end",
        "don't stop texting me",
        "No, I don't want to cancel",
        "I dont wanna stop",
        "I don't want you to stop texting me",
        "I do not want you to cancel",
        "never stop",
        "Cancel my reminder",
        "I can't stop laughing",
        "Can you text me the address?",
        "Send me a message when it's done",
        "Not now, text me later",
        "Don't forget to text me",
        "I quit smoking last year",
        "What time does the store close? I want to end my day early",
        "I never got your message",
        "STOPP",
        "S.T.O.P",
        "ST0P",
        "stopping",
        "yes please",
        "help me",
        "Para mañana necesito una receta",
        "Un mensaje para mi madre",
        "C'est la fin du film",
        "",
        "🛑",
        "!!!",
    ] {
        for locale in LOCALES {
            assert_eq!(assess(text, locale), None, "{text:?} in {locale}");
        }
    }
}

#[test]
fn the_conversation_language_is_preferred_then_english() {
    // `stop` is a verb of English, Spanish and French.
    assert_eq!(
        assess("stop", "fr-CA").map(|r| r.language).as_deref(),
        Some("fr")
    );
    assert_eq!(
        assess("stop", "es").map(|r| r.language).as_deref(),
        Some("es")
    );
    assert_eq!(
        assess("stop", "de").map(|r| r.language).as_deref(),
        Some("en")
    );
    let french = assess("arrêtez svp", "en-US").expect("French phrase");
    assert_eq!(french.language, "fr");
    assert_eq!(french.reply_locale("en-US"), "fr");
    let in_place = assess("arrêtez svp", "fr-CA").expect("French phrase");
    assert_eq!(in_place.reply_locale("fr-CA"), "fr-CA");
}

#[test]
fn the_phrase_length_is_bounded() {
    let short = "please please please please please please stop texting me";
    assert_eq!(assess(short, "en").map(|r| r.rule), Some(Rule::Phrase));
    let long = "please please please please please please please please please stop texting me";
    let found = assess(long, "en").expect("still a revocation");
    assert_eq!(
        found.rule,
        Rule::NearMessages,
        "too long to act on at once: {found:?}"
    );
    assert_eq!(found.action(), Action::Flag);
}

#[test]
fn the_version_follows_the_words() {
    let words = ConsentWords::builtin();
    let a = RevocationRules::from_catalog(words, SOURCES);
    assert_eq!(a.version(), RevocationRules::default().version());
    assert_eq!(a.version().len(), 12);
    let b = RevocationRules::from_catalog(words, &[SOURCES[0]]);
    assert_ne!(a.version(), b.version());
}
