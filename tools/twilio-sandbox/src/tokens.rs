//! The account's Auth Tokens, as at Twilio: the primary, which signs
//! webhooks and callbacks, and during a rotation a secondary. Both
//! authenticate API requests. Promoting the secondary makes it the primary
//! and revokes the old primary at once; deleting it revokes it.
//! (`POST|DELETE /v1/AuthTokens/Secondary`, `POST /v1/AuthTokens/Promote`.)

use std::sync::{Arc, PoisonError, RwLock};

use subtle::ConstantTimeEq as _;

#[derive(Debug)]
struct Pair {
    primary: String,
    secondary: Option<String>,
}

/// The tokens, shared by the API (Basic auth) and the webhook posters
/// (signatures).
#[derive(Debug, Clone)]
pub struct AuthTokens(Arc<RwLock<Pair>>);

impl AuthTokens {
    /// Tokens with `primary` and no secondary.
    #[must_use]
    pub fn new(primary: &str) -> Self {
        Self(Arc::new(RwLock::new(Pair {
            primary: primary.to_owned(),
            secondary: None,
        })))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Pair> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Pair> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The primary token: what webhooks are signed with.
    #[must_use]
    pub fn primary(&self) -> String {
        self.read().primary.clone()
    }

    /// The secondary token, during a rotation.
    #[must_use]
    pub fn secondary(&self) -> Option<String> {
        self.read().secondary.clone()
    }

    /// Whether `password` is one of the tokens (compared in constant time).
    #[must_use]
    pub fn accepts(&self, password: &str) -> bool {
        let pair = self.read();
        let equal = |token: &str| bool::from(password.as_bytes().ct_eq(token.as_bytes()));
        equal(&pair.primary) | pair.secondary.as_deref().is_some_and(equal)
    }

    /// Creates a new secondary token (replacing one there was) and returns it.
    pub fn create_secondary(&self) -> String {
        let token = format!("{:032x}", rand::random::<u128>());
        self.write().secondary = Some(token.clone());
        token
    }

    /// Deletes the secondary token; whether there was one.
    pub fn delete_secondary(&self) -> bool {
        self.write().secondary.take().is_some()
    }

    /// Makes the secondary token the primary, revoking the old primary;
    /// returns the new primary, `None` when there is no secondary.
    pub fn promote(&self) -> Option<String> {
        let mut pair = self.write();
        let promoted = pair.secondary.take()?;
        pair.primary.clone_from(&promoted);
        Some(promoted)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn promotion_revokes_the_old_primary_at_once() {
        let tokens = AuthTokens::new("old");
        assert!(tokens.accepts("old") && !tokens.accepts("new"));
        assert_eq!(tokens.promote(), None, "nothing to promote");
        let new = tokens.create_secondary();
        assert_ne!(new, "old");
        assert!(
            tokens.accepts("old") && tokens.accepts(&new),
            "both during the rotation"
        );
        assert_eq!(tokens.primary(), "old", "the primary still signs");
        assert_eq!(tokens.promote().as_deref(), Some(new.as_str()));
        assert_eq!(tokens.primary(), new);
        assert!(!tokens.accepts("old"), "revoked");
        assert_eq!(tokens.secondary(), None);
        let abandoned = tokens.create_secondary();
        assert!(tokens.delete_secondary());
        assert!(!tokens.accepts(&abandoned));
        assert!(!tokens.delete_secondary());
    }
}
