//! Dead letters: records a stage cannot decode or process go to
//! `si.deadletter.v1` with the reason, the original bytes and where they came
//! from, inside the same transaction as the offsets; the stage goes on.
//!
//! What is poison and what is not:
//!
//! | failure | kind | handling |
//! |---|---|---|
//! | not Confluent-framed, unknown schema id, corrupt datum | `UNDECODABLE` | dead-letter |
//! | decodes with its writer schema but does not resolve to ours | `SCHEMA_MISMATCH` | dead-letter |
//! | null value, or the processor says [`crate::processor::ProcessError::Invalid`] | `INVALID` | dead-letter |
//! | the processor says [`crate::processor::ProcessError::Failed`], an output does not fit its schema | `PROCESSING_FAILED` | dead-letter |
//! | registry unreachable or 5xx, our schema not registered yet, transaction errors | — | retriable: abort, rewind, back off, try again |

use std::collections::BTreeMap;

use rdkafka::Message;
use rdkafka::message::Headers;
use si_schemas::records::{DeadLetter, DeadLetterErrorKind};

use crate::mask::mask_address;

/// Builds the dead letter of `message`.
#[must_use]
pub fn dead_letter<M: Message>(
    stage: &str,
    message: &M,
    kind: DeadLetterErrorKind,
    reason: &str,
    at_ms: i64,
) -> DeadLetter {
    let mut headers = BTreeMap::new();
    if let Some(h) = message.headers() {
        for header in h.iter() {
            let value = header
                .value
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            headers.insert(header.key.to_owned(), value);
        }
    }
    DeadLetter {
        stage: stage.to_owned(),
        source_topic: message.topic().to_owned(),
        source_partition: message.partition(),
        source_offset: message.offset(),
        reason: scrub(reason),
        error_kind: kind,
        original_key: message.key().map(<[u8]>::to_vec),
        original_value: message.payload().map(<[u8]>::to_vec),
        headers,
        at: at_ms,
    }
}

/// Masks anything in an error text that looks like a phone number (a run of 7
/// or more digits, optionally with a leading `+`), and caps its length, so a
/// reason never carries an address or a whole message body.
#[must_use]
pub fn scrub(reason: &str) -> String {
    const MAX: usize = 1_000;
    let mut out = String::with_capacity(reason.len().min(MAX));
    let chars: Vec<char> = reason.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let start = i;
        let plus = chars[i] == '+';
        let mut j = if plus { i + 1 } else { i };
        while j < chars.len() && chars[j].is_ascii_digit() {
            j += 1;
        }
        let digits = j - if plus { i + 1 } else { i };
        if digits >= 7 {
            let run: String = chars[start..j].iter().collect();
            out.push_str(&mask_address(&run));
            i = j;
        } else {
            out.push(chars[i]);
            i += 1;
        }
        if out.len() >= MAX {
            out.push('…');
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_masks_phone_numbers_and_keeps_the_rest() {
        let s = scrub("bad value String(\"+14155550100\") at field From, code 21211");
        assert!(!s.contains("4155550100"), "{s}");
        assert!(s.contains("+14•••••••00"), "{s}");
        assert!(s.contains("21211"), "{s}");
        assert_eq!(scrub("no digits here"), "no digits here");
        let bare = scrub("number 4155550100 end");
        assert!(!bare.contains("55550"), "{bare}");
    }

    #[test]
    fn scrub_caps_the_length() {
        let long = "x".repeat(5_000);
        assert!(scrub(&long).chars().count() <= 1_001);
    }
}
