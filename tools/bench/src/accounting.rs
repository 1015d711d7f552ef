//! Which message is which, and what became of each: every inbound text carries
//! a token (`sib-<run>-<seq>`) that the echo responder's reply repeats, so a
//! record on any topic and a request at the sandbox name the message they
//! belong to. The ledger counts, per run, messages sent, accepted by ingress,
//! answered once, lost (accepted, never answered) and duplicated (answered
//! more than once).

use std::collections::{BTreeMap, BTreeSet};

const MARK: &str = "sib-";

/// The token of message `seq` of run `run` (`run`: letters and digits).
#[must_use]
pub fn token(run: &str, seq: u64) -> String {
    format!("{MARK}{run}-{seq}")
}

/// The (run, seq) of the first token in `text`, if any.
#[must_use]
pub fn parse(text: &str) -> Option<(&str, u64)> {
    let start = text.find(MARK)? + MARK.len();
    let rest = &text[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .unwrap_or(rest.len());
    let (run, seq) = rest[..end].split_once('-')?;
    if run.is_empty() {
        return None;
    }
    Some((run, seq.parse().ok()?))
}

/// The seq of the token of run `run` in `text`, if `text` has one.
#[must_use]
pub fn seq_in(text: &str, run: &str) -> Option<u64> {
    parse(text).filter(|(r, _)| *r == run).map(|(_, seq)| seq)
}

/// What happened to the messages of one run.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    /// seq → whether ingress accepted it (2xx).
    sent: BTreeMap<u64, bool>,
    /// seq → accepted replies seen at the sandbox.
    replies: BTreeMap<u64, u32>,
}

/// The counts of a ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tally {
    /// Messages sent to ingress.
    pub sent: usize,
    /// Of them, answered 2xx by ingress (stored: Twilio would not retry).
    pub accepted: usize,
    /// Accepted messages answered exactly once or more.
    pub replied: usize,
    /// Accepted messages with no reply.
    pub lost: usize,
    /// Messages answered more than once.
    pub duplicated: usize,
    /// Replies beyond the first, summed over the duplicated messages.
    pub extra_replies: usize,
    /// Replies naming a message that was not accepted (or never sent).
    pub unexpected: usize,
}

impl Ledger {
    /// Message `seq` was sent; `accepted`: ingress answered 2xx.
    pub fn sent(&mut self, seq: u64, accepted: bool) {
        self.sent.insert(seq, accepted);
    }

    /// A reply to message `seq` was accepted by the sandbox (Twilio).
    pub fn replied(&mut self, seq: u64) {
        *self.replies.entry(seq).or_default() += 1;
    }

    /// Accepted messages without a reply so far.
    #[must_use]
    pub fn waiting(&self) -> usize {
        self.sent
            .iter()
            .filter(|(seq, accepted)| **accepted && !self.replies.contains_key(seq))
            .count()
    }

    /// The lost messages' seqs (accepted, no reply), first `limit` of them.
    #[must_use]
    pub fn lost(&self, limit: usize) -> Vec<u64> {
        self.sent
            .iter()
            .filter(|(seq, accepted)| **accepted && !self.replies.contains_key(seq))
            .map(|(seq, _)| *seq)
            .take(limit)
            .collect()
    }

    /// The counts.
    #[must_use]
    pub fn tally(&self) -> Tally {
        let accepted: BTreeSet<u64> = self
            .sent
            .iter()
            .filter(|(_, accepted)| **accepted)
            .map(|(seq, _)| *seq)
            .collect();
        let mut tally = Tally {
            sent: self.sent.len(),
            accepted: accepted.len(),
            ..Tally::default()
        };
        for (seq, n) in &self.replies {
            if !accepted.contains(seq) {
                tally.unexpected += *n as usize;
                continue;
            }
            tally.replied += 1;
            if *n > 1 {
                tally.duplicated += 1;
                tally.extra_replies += (*n - 1) as usize;
            }
        }
        tally.lost = tally.accepted - tally.replied;
        tally
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_inside_texts() {
        let t = token("a1b2", 42);
        assert_eq!(t, "sib-a1b2-42");
        assert_eq!(parse(&format!("Echo: bench {t} hello")), Some(("a1b2", 42)));
        assert_eq!(parse(&format!("Echo: bench {t}.")), Some(("a1b2", 42)));
        assert_eq!(seq_in(&t, "a1b2"), Some(42));
        assert_eq!(seq_in(&t, "other"), None);
        assert_eq!(parse("Hi, this is Si, your AI assistant."), None);
        assert_eq!(parse("sib--3"), None);
        assert_eq!(parse("sib-run-x"), None);
    }

    #[test]
    fn every_accepted_message_answered_once_is_clean() {
        let mut ledger = Ledger::default();
        for seq in 0..5 {
            ledger.sent(seq, true);
            ledger.replied(seq);
        }
        assert_eq!(ledger.waiting(), 0);
        assert_eq!(
            ledger.tally(),
            Tally {
                sent: 5,
                accepted: 5,
                replied: 5,
                ..Tally::default()
            }
        );
    }

    #[test]
    fn losses_duplicates_and_strays_are_counted_apart() {
        let mut ledger = Ledger::default();
        for seq in 0..6 {
            ledger.sent(seq, seq != 5); // 5: ingress refused it (503)
        }
        ledger.replied(0);
        ledger.replied(1);
        ledger.replied(1); // a duplicate
        ledger.replied(1); // and another
        ledger.replied(2);
        ledger.replied(3);
        // 4 is accepted and never answered: lost.
        ledger.replied(5); // a reply to a refused message
        ledger.replied(99); // never sent
        assert_eq!(ledger.waiting(), 1);
        assert_eq!(ledger.lost(10), vec![4]);
        assert_eq!(
            ledger.tally(),
            Tally {
                sent: 6,
                accepted: 5,
                replied: 4,
                lost: 1,
                duplicated: 1,
                extra_replies: 2,
                unexpected: 2,
            }
        );
    }

    #[test]
    fn a_refused_message_is_not_a_loss() {
        let mut ledger = Ledger::default();
        ledger.sent(0, false);
        assert_eq!(ledger.waiting(), 0);
        let tally = ledger.tally();
        assert_eq!((tally.sent, tally.accepted, tally.lost), (1, 0, 0));
    }
}
