//! Deterministic ids. A replay of the same input yields the same ids on any
//! instance, so downstream readers can de-duplicate on them.
//!
//! - `event_id`: a UUID (RFC 9562 version 8, custom) from SHA-256 of the dedup key.
//! - `session_id`: a UUID from SHA-256 of the conversation id: the binding
//!   conversation ↔ session is 1:1 by construction and needs no coordination
//!   between partitions (normalize still records it in its state, with the
//!   conversation's participants).
//! - `visitor_id`: `v-` + 32 hex digits of HMAC-SHA256(`VISITOR_ID_SECRET`, E.164):
//!   stable across conversations, channels and instances, not reversible to the
//!   number without the secret.
//! - derived conversation ids for Programmable Messaging (`pm-…`) and calls
//!   without a conversation (`call-<CallSid>`), see the crate docs.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use si_schemas::records::PM_CONVERSATION_PREFIX;

fn uuid_of(domain: &str, value: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(domain.as_bytes());
    hasher.update([0u8]);
    hasher.update(value.as_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// The event id of a dedup key.
#[must_use]
pub fn event_id(dedup_key: &str) -> String {
    uuid_of("si.conversation.event", dedup_key)
}

/// The digest a seen event is remembered under: 128 bits of SHA-256 of the
/// dedup key, as 32 hex digits.
#[must_use]
pub fn dedup_digest(dedup_key: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"si.normalize.seen");
    hasher.update([0u8]);
    hasher.update(dedup_key.as_bytes());
    hex::encode(&hasher.finalize()[..16])
}

/// The Si session id of a conversation.
#[must_use]
pub fn session_id(conversation_id: &str) -> String {
    uuid_of("si.session", conversation_id)
}

/// Keyed hashes of addresses.
#[derive(Clone)]
pub struct AddressHasher {
    key: Vec<u8>,
}

impl std::fmt::Debug for AddressHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AddressHasher(..)")
    }
}

impl AddressHasher {
    /// A hasher keyed with `secret`.
    #[must_use]
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: secret.to_vec(),
        }
    }

    fn hex(&self, parts: &[&str]) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            unreachable!("HMAC accepts keys of any length")
        };
        for part in parts {
            mac.update(part.as_bytes());
            mac.update(&[0u8]);
        }
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// The visitor id of an address (E.164, or `chat:<identity>`).
    #[must_use]
    pub fn visitor_id(&self, address: &str) -> String {
        format!("v-{}", self.hex(&["visitor", address]))
    }

    /// The conversation id of a Programmable Messaging pair that has no
    /// conversation in the participant directory.
    #[must_use]
    pub fn messaging_conversation(&self, channel: &str, user: &str, proxy: &str) -> String {
        format!(
            "{PM_CONVERSATION_PREFIX}{}",
            self.hex(&["pm", channel, user, proxy])
        )
    }

    /// The conversation id of a Programmable Messaging pair whose previous
    /// conversation closed at `closed_at` (ms since the epoch): a new id, so
    /// the re-entry is a new conversation with a new session.
    #[must_use]
    pub fn messaging_conversation_after(
        &self,
        channel: &str,
        user: &str,
        proxy: &str,
        closed_at: i64,
    ) -> String {
        let epoch = closed_at.to_string();
        format!(
            "{PM_CONVERSATION_PREFIX}{}",
            self.hex(&["pm", channel, user, proxy, &epoch])
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_distinct() {
        assert_eq!(event_id("tok-1"), event_id("tok-1"));
        assert_ne!(event_id("tok-1"), event_id("tok-2"));
        let id = event_id("tok-1");
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'8', "version 8 UUID: {id}");
        assert_ne!(session_id("CH1"), event_id("CH1"));
    }

    #[test]
    fn visitor_ids_depend_on_the_secret_and_hide_the_number() {
        let a = AddressHasher::new(b"one");
        let b = AddressHasher::new(b"two");
        let v = a.visitor_id("+14155550100");
        assert_eq!(v, a.visitor_id("+14155550100"));
        assert_ne!(v, b.visitor_id("+14155550100"));
        assert!(v.starts_with("v-") && v.len() == 34, "{v}");
        assert!(!v.contains("4155550100"));
        let c = a.messaging_conversation("sms", "+14155550100", "+14155550199");
        assert!(c.starts_with("pm-"));
        let after = a.messaging_conversation_after("sms", "+14155550100", "+14155550199", 5);
        assert!(after.starts_with("pm-") && after.len() == c.len());
        assert_ne!(after, c);
        assert_ne!(
            after,
            a.messaging_conversation_after("sms", "+14155550100", "+14155550199", 6)
        );
        assert_ne!(
            c,
            a.messaging_conversation("whatsapp", "+14155550100", "+14155550199")
        );
    }
}
