//! Revocation by other words than a keyword (47 CFR 64.1200(a)(10): consent may
//! be revoked by any reasonable means; "stop", "quit", "end", "revoke", "opt
//! out", "cancel", "unsubscribe" count). The words are data, per language, in
//! `catalog/consent/<lang>.yaml` (`revocation`); this module is the rules.
//!
//! A message is folded ([`crate::fold`]) and cut into words; each language's
//! entries (which may be several words, `opt out`) are matched longest first:
//! a *term* (means revocation on its own: `unsubscribe`, `opt out`), a *verb*
//! (a revocation word with everyday meanings too: `stop`, `cancel`), a
//! *negation* (`don't`, `no more`), a word about *messages* (`texts`,
//! `messaging`), *filler* (`please`, `me`, `all`), or an unknown word.
//!
//! A *revocation* in a clause (text between `. , ; : ! ? ( )` or line breaks)
//! is a term; a verb not negated, that is without a negation before it with
//! only filler between (`don't stop`, `I don't want you to cancel` are none;
//! `I'm not interested stop texting me` is one); or a
//! negation followed by a word about messages within three entries with only
//! filler between (`don't text me`, `no more messages`).
//!
//! - **Opt-out at once** ([`Rule::Phrase`]): the whole message has at most
//!   `max_words` words, every one of them is a known entry, and a clause of
//!   it holds a revocation. Its only meaning is revocation: `opt out`, `STOP ALL`,
//!   `please stop`, `stop texting me`, `unsubscribe me`, `I want to cancel my
//!   subscription`.
//! - **Flag** (forwarded to cognition with `possible_revocation`): the
//!   whole message would be an opt-out but names its object only by a
//!   *contextual* word, with no term or word about messages
//!   ([`Rule::Contextual`]: `cancel that`, `stop it`, which may be about a
//!   reminder rather than Si's messages); or, within one
//!   clause: the clause alone
//!   would be an opt-out ([`Rule::Clause`]: `Please stop, I'm at work`); or a
//!   term appears ([`Rule::Term`]: `how do I unsubscribe from the reminders
//!   but keep the chat`); or a verb or negation comes before a word about
//!   messages, at most three words on ([`Rule::NearMessages`]: `can you stop
//!   sending me all these reminders every morning`).
//! - Anything else is an ordinary message: `Stop by tomorrow`, `cancel my
//!   order`, `The end of the movie was great`, `don't stop texting me`.
//!
//! The conversation's language is tried first, then English, then the others
//! by language code; the first that matches names the language of the reply
//! and of the audit record.

use std::fmt;

use sha2::{Digest, Sha256};
use si_catalog::DEFAULT_LOCALE;
use si_catalog::consent::{ConsentWords, SOURCES};

use crate::fold::{fold, trim, words};

/// What the consent stage does with a revocation it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Record the opt-out and confirm it, as for STOP.
    OptOut,
    /// Forward the message to cognition with `possible_revocation` set.
    Flag,
}

/// The rule that matched; its name goes into the compliance event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// The whole message is a revocation phrase.
    Phrase,
    /// The whole message would be a revocation phrase but refers to something
    /// by a contextual word (`cancel that`, `stop it`): it may be about
    /// something else than Si's messages.
    Contextual,
    /// One clause of the message is a revocation phrase.
    Clause,
    /// A word that means revocation on its own.
    Term,
    /// A revocation verb or negation before a word about messages.
    NearMessages,
}

impl Rule {
    /// The rule's name in the audit trail (`details.rule`).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Phrase => "revocation_phrase",
            Self::Contextual => "revocation_contextual",
            Self::Clause => "revocation_clause",
            Self::Term => "revocation_term",
            Self::NearMessages => "revocation_near_messages",
        }
    }

    /// What the rule leads to.
    #[must_use]
    pub const fn action(self) -> Action {
        match self {
            Self::Phrase => Action::OptOut,
            Self::Contextual | Self::Clause | Self::Term | Self::NearMessages => Action::Flag,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A revocation found in a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The rule that matched.
    pub rule: Rule,
    /// The language whose words matched.
    pub language: String,
    /// The folded words that matched (the phrase, the clause, the term, or
    /// the verb up to the word about messages).
    pub matched: String,
    /// For [`Rule::Phrase`], the message as sent without surrounding
    /// whitespace and punctuation (short by definition); else `matched`
    /// (a flag keeps the matched words, not the message).
    pub as_sent: String,
}

impl Revocation {
    /// What to do.
    #[must_use]
    pub const fn action(&self) -> Action {
        self.rule.action()
    }

    /// The locale to answer in, for a conversation in `locale`: the
    /// conversation's when the matched language is its language.
    #[must_use]
    pub fn reply_locale(&self, locale: &str) -> String {
        if locale.split(['-', '_']).next().unwrap_or_default() == self.language {
            locale.to_owned()
        } else {
            self.language.clone()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Category {
    Term,
    Verb,
    Negation,
    Messages,
    Filler,
    Contextual,
}

/// One entry (or an unknown word) found in a run of words.
#[derive(Debug, Clone, Copy)]
struct Piece {
    category: Option<Category>,
    start: usize,
    len: usize,
}

#[derive(Debug, Clone)]
struct Language {
    language: String,
    max_words: usize,
    /// Folded entries as words, longest first, then by category.
    entries: Vec<(Vec<String>, Category)>,
}

impl Language {
    fn new(consent: &ConsentWords) -> Self {
        let r = &consent.revocation;
        let mut entries: Vec<(Vec<String>, Category)> = [
            (&r.terms, Category::Term),
            (&r.verbs, Category::Verb),
            (&r.negations, Category::Negation),
            (&r.messages, Category::Messages),
            (&r.filler, Category::Filler),
            (&r.contextual, Category::Contextual),
        ]
        .into_iter()
        .flat_map(|(list, category)| {
            list.iter().map(move |entry| {
                let folded = fold(entry);
                let entry_words: Vec<String> = words(&folded).map(str::to_owned).collect();
                (entry_words, category)
            })
        })
        .filter(|(w, _)| !w.is_empty())
        .collect();
        entries.sort_by(|(a, ca), (b, cb)| b.len().cmp(&a.len()).then(ca.cmp(cb)));
        Self {
            language: consent.language.clone(),
            max_words: r.max_words,
            entries,
        }
    }

    /// `words` cut into entries, longest match first; unknown words alone.
    fn pieces(&self, words: &[&str]) -> Vec<Piece> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < words.len() {
            let found = self.entries.iter().find(|(entry, _)| {
                words.len() - i >= entry.len() && entry.iter().zip(&words[i..]).all(|(e, w)| e == w)
            });
            let piece = match found {
                Some((entry, category)) => Piece {
                    category: Some(*category),
                    start: i,
                    len: entry.len(),
                },
                None => Piece {
                    category: None,
                    start: i,
                    len: 1,
                },
            };
            i += piece.len;
            out.push(piece);
        }
        out
    }

    /// Whether `pieces` (one clause) hold a revocation.
    fn has_revocation(pieces: &[Piece]) -> bool {
        (0..pieces.len()).any(|i| match pieces[i].category {
            Some(Category::Term) => true,
            Some(Category::Verb) => !negated(pieces, i),
            Some(Category::Negation) => negation_reaches_messages(pieces, i).is_some(),
            _ => false,
        })
    }

    /// Whether `all` (the words of a message, cut into `clauses`) is a
    /// revocation phrase (short, every word known, a revocation in a clause),
    /// and if so whether it refers to something by a contextual word
    /// (`cancel that`: [`Rule::Contextual`]).
    fn phrase(&self, all: &[&str], clauses: &[Vec<&str>]) -> Option<Rule> {
        if all.is_empty() || all.len() > self.max_words {
            return None;
        }
        let pieces = self.pieces(all);
        let revocation = pieces.iter().all(|p| p.category.is_some())
            && clauses
                .iter()
                .any(|c| Self::has_revocation(&self.pieces(c)));
        // A contextual word makes it a flag only when nothing else names
        // the object: `cancel that` may be about a reminder, while
        // `unsubscribe me from this` and `do not text this` are about Si's
        // messages.
        let named = |p: &Piece| matches!(p.category, Some(Category::Term | Category::Messages));
        let contextual = pieces
            .iter()
            .any(|p| p.category == Some(Category::Contextual));
        revocation.then(|| {
            if contextual && !pieces.iter().any(named) {
                Rule::Contextual
            } else {
                Rule::Phrase
            }
        })
    }

    /// The flag rule that matches `clause`, with the matched words.
    fn flag(&self, clause: &[&str]) -> Option<(Rule, String)> {
        if self.phrase(clause, &[clause.to_vec()]).is_some() {
            return Some((Rule::Clause, clause.join(" ")));
        }
        let pieces = self.pieces(clause);
        let span = |from: &Piece, to: &Piece| clause[from.start..to.start + to.len].join(" ");
        if let Some(term) = pieces.iter().find(|p| p.category == Some(Category::Term)) {
            return Some((Rule::Term, span(term, term)));
        }
        for (i, piece) in pieces.iter().enumerate() {
            let to = match piece.category {
                Some(Category::Verb) if !negated(&pieces, i) => pieces[i + 1..]
                    .iter()
                    .take(3)
                    .position(|p| p.category == Some(Category::Messages))
                    .map(|k| i + 1 + k),
                Some(Category::Negation) => negation_reaches_messages(&pieces, i),
                _ => None,
            };
            if let Some(to) = to {
                return Some((Rule::NearMessages, span(piece, &pieces[to])));
            }
        }
        None
    }
}

/// The index of the word about messages that the negation at `i` reaches:
/// within three entries, with only filler between.
fn negation_reaches_messages(pieces: &[Piece], i: usize) -> Option<usize> {
    pieces[i + 1..]
        .iter()
        .take(3)
        .take_while(|p| matches!(p.category, Some(Category::Filler | Category::Messages)))
        .position(|p| p.category == Some(Category::Messages))
        .map(|k| i + 1 + k)
}

/// Whether the verb at `i` is negated: a negation before it with only
/// filler between (`don't stop`, `I don't want you to cancel`). A negation
/// behind other words is about something else (`I'm not interested stop
/// texting me`, `I don't know you stop texting me`).
fn negated(pieces: &[Piece], i: usize) -> bool {
    pieces[..i]
        .iter()
        .rev()
        .take_while(|p| matches!(p.category, Some(Category::Filler | Category::Negation)))
        .any(|p| p.category == Some(Category::Negation))
}

/// The revocation rules of every catalog language.
#[derive(Debug, Clone)]
pub struct RevocationRules {
    languages: Vec<Language>,
    version: String,
}

impl Default for RevocationRules {
    /// The catalog's rules.
    fn default() -> Self {
        Self::from_catalog(ConsentWords::builtin(), SOURCES)
    }
}

/// Characters that end a clause.
const CLAUSE_ENDS: &[char] = &[
    '.', ',', ';', ':', '!', '?', '¡', '¿', '(', ')', '\n', '\r', '…',
];

impl RevocationRules {
    /// The rules of `languages`; `sources` (the files' text) name the version.
    #[must_use]
    pub fn from_catalog(languages: &[ConsentWords], sources: &[&str]) -> Self {
        let mut hasher = Sha256::new();
        for source in sources {
            hasher.update(source.as_bytes());
            hasher.update([0u8]);
        }
        let digest = hasher.finalize();
        Self {
            languages: languages.iter().map(Language::new).collect(),
            version: hex12(&digest),
        }
    }

    /// A short fingerprint of the consent words the rules were built from
    /// (`details.consent_words_version` in the audit trail).
    #[must_use]
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Languages in the order they are tried for a conversation in `locale`.
    fn by_priority<'a>(&'a self, locale: &str) -> Vec<&'a Language> {
        let language = locale
            .split(['-', '_'])
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let mut out: Vec<&Language> = self.languages.iter().collect();
        out.sort_by_key(|l| {
            (
                l.language != language,
                l.language != DEFAULT_LOCALE,
                l.language.clone(),
            )
        });
        out
    }

    /// The revocation in `text`, for a conversation in `locale`; `None` for an
    /// ordinary message. Call it for messages that are not a keyword.
    #[must_use]
    pub fn assess(&self, text: &str, locale: &str) -> Option<Revocation> {
        let folded = fold(text);
        let all: Vec<&str> = words(&folded).collect();
        if all.is_empty() {
            return None;
        }
        let clauses: Vec<Vec<&str>> = folded
            .split(CLAUSE_ENDS)
            .map(|c| words(c).collect::<Vec<_>>())
            .filter(|c| !c.is_empty())
            .collect();
        let languages = self.by_priority(locale);
        let phrases: Vec<(&Language, Rule)> = languages
            .iter()
            .filter_map(|l| l.phrase(&all, &clauses).map(|rule| (*l, rule)))
            .collect();
        // A plain phrase in any language wins over a contextual one.
        let phrase = phrases
            .iter()
            .find(|(_, rule)| *rule == Rule::Phrase)
            .or_else(|| phrases.first());
        if let Some((language, rule)) = phrase {
            let matched = all.join(" ");
            return Some(Revocation {
                rule: *rule,
                language: language.language.clone(),
                as_sent: if *rule == Rule::Phrase {
                    trim(text).to_owned()
                } else {
                    matched.clone()
                },
                matched,
            });
        }
        languages.iter().find_map(|language| {
            clauses.iter().find_map(|clause| {
                language.flag(clause).map(|(rule, matched)| Revocation {
                    rule,
                    language: language.language.clone(),
                    as_sent: matched.clone(),
                    matched,
                })
            })
        })
    }
}

fn hex12(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().take(6).fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
#[path = "revocation_tests.rs"]
mod tests;
