//! The secrets webhooks are checked with: the Auth Tokens (primary and, during
//! a rotation, secondary) and the webhook shared-key secrets. From the
//! environment, or from files in a directory (`TWILIO_CREDENTIALS_DIR`, the
//! mounted Twilio Secret) that ingress reads again on an interval, so a
//! rotated or revoked secret takes effect without a restart.
//!
//! The files are named like the chart's Secret keys: `auth-token`,
//! `auth-token-secondary`, `webhook-shared-secret` (comma separated during a
//! rotation). Each holds the value alone; surrounding whitespace is ignored,
//! and a missing or blank file counts as absent. The directory wins whole:
//! when it holds any of the files, its values alone apply (a secret removed
//! from the Secret stops being accepted, although the environment the pod
//! started with still has it); when it holds none at start, the
//! environment's apply. A directory with files but no Auth Token (neither
//! `auth-token` nor `auth-token-secondary`) is an error, and so is one that
//! held files and holds none any more (a Secret deleted and being
//! recreated must not bring back the environment's, possibly revoked,
//! tokens): at start ingress refuses to start, later it keeps the secrets
//! in force and says so.
//!
//! Requests take the current secrets from [`SecretStore::current`], a read
//! lock held only to clone an `Arc`. Values are never logged, and `Debug`
//! redacts them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use prometheus::IntCounterVec;
pub use si_twilio_credentials::{AUTH_TOKEN_FILE, AUTH_TOKEN_SECONDARY_FILE};
use si_twilio_credentials::{Reload, Reloaded, read_value, reload_loop, snapshot};
use tokio_util::sync::CancellationToken;

/// File of the webhook shared-key secrets, comma separated.
pub const SHARED_SECRET_FILE: &str = "webhook-shared-secret";

/// What webhooks are checked with.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecrets {
    /// Auth Tokens (HMAC-SHA1), primary first.
    pub auth_tokens: Vec<String>,
    /// Webhook shared-key secrets, for requests with
    /// `X-Twilio-Webhooks-Signature-Settings` (HMAC-SHA1 or HMAC-SHA256).
    pub shared_secrets: Vec<String>,
}

impl std::fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSecrets")
            .field("auth_tokens", &self.auth_tokens.len())
            .field("shared_secrets", &self.shared_secrets.len())
            .finish()
    }
}

/// The non-blank entries of a comma-separated list, trimmed.
fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The secrets in `dir`, `None` when it holds none of the files.
///
/// # Errors
/// When a file cannot be read, or there are files but no `auth-token`.
pub async fn read_dir(dir: &Path) -> Result<Option<WebhookSecrets>, String> {
    // One version of the Secret, never a mix of two.
    let snapshot = snapshot(dir).await;
    let dir = snapshot.as_path();
    let primary = read_value(&dir.join(AUTH_TOKEN_FILE)).await?;
    let secondary = read_value(&dir.join(AUTH_TOKEN_SECONDARY_FILE)).await?;
    let shared = read_value(&dir.join(SHARED_SECRET_FILE)).await?;
    if primary.is_none() && secondary.is_none() && shared.is_none() {
        return Ok(None);
    }
    let auth_tokens: Vec<String> = primary.into_iter().chain(secondary).collect();
    if auth_tokens.is_empty() {
        return Err(format!(
            "{} holds {SHARED_SECRET_FILE} but no {AUTH_TOKEN_FILE}",
            dir.display()
        ));
    }
    Ok(Some(WebhookSecrets {
        auth_tokens,
        shared_secrets: shared.as_deref().map(list).unwrap_or_default(),
    }))
}

/// The secrets requests are checked with, swapped when a reload finds new ones.
#[derive(Debug)]
pub struct SecretStore {
    current: RwLock<Arc<WebhookSecrets>>,
    /// The environment's secrets, what applies while the directory holds none.
    env: WebhookSecrets,
    dir: Option<PathBuf>,
    /// Whether the directory ever held files: from then on it alone applies.
    seen_files: AtomicBool,
}

impl SecretStore {
    /// Secrets that never change (no directory).
    #[must_use]
    pub fn fixed(secrets: WebhookSecrets) -> Self {
        Self {
            current: RwLock::new(Arc::new(secrets.clone())),
            env: secrets,
            dir: None,
            seen_files: AtomicBool::new(false),
        }
    }

    /// The directory's secrets when it holds any, else the environment's.
    ///
    /// # Errors
    /// When the directory cannot be read or holds files but no Auth Token.
    pub async fn load(env: WebhookSecrets, dir: Option<PathBuf>) -> Result<Self, String> {
        let store = Self::fixed(env);
        let store = Self { dir, ..store };
        store.reload().await?;
        Ok(store)
    }

    /// The secrets in force.
    #[must_use]
    pub fn current(&self) -> Arc<WebhookSecrets> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Reads the directory again; whether the secrets changed.
    ///
    /// # Errors
    /// When the directory cannot be read or holds files but no Auth Token;
    /// the secrets in force stay.
    pub async fn reload(&self) -> Result<bool, String> {
        let Some(dir) = &self.dir else {
            return Ok(false);
        };
        let next = match read_dir(dir).await? {
            Some(secrets) => {
                self.seen_files.store(true, Ordering::Relaxed);
                secrets
            }
            None if self.seen_files.load(Ordering::Relaxed) => {
                return Err(format!(
                    "{} held the secrets and holds none of them now",
                    dir.display()
                ));
            }
            None => self.env.clone(),
        };
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if **current == next {
            return Ok(false);
        }
        *current = Arc::new(next);
        Ok(true)
    }

    /// Reloads every `interval` until `shutdown`, counting each in
    /// `reloads{result}` (`changed`, `unchanged`, `error`).
    pub fn spawn_reloads(
        self: &Arc<Self>,
        interval: Duration,
        reloads: IntCounterVec,
        shutdown: CancellationToken,
    ) {
        if self.dir.is_none() {
            return;
        }
        let count = move |outcome: Reloaded| reloads.with_label_values(&[outcome.as_str()]).inc();
        tokio::spawn(reload_loop(
            Arc::clone(self),
            interval,
            None,
            count,
            shutdown,
        ));
    }
}

impl Reload for SecretStore {
    const WHAT: &'static str = "webhook secrets";

    async fn reload(&self) -> Result<bool, String> {
        SecretStore::reload(self).await
    }

    fn log_change(&self) {
        let secrets = self.current();
        tracing::info!(
            auth_tokens = secrets.auth_tokens.len(),
            shared_secrets = secrets.shared_secrets.len(),
            "webhook secrets changed"
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env() -> WebhookSecrets {
        WebhookSecrets {
            auth_tokens: vec!["env-token".into(), "env-next".into()],
            shared_secrets: vec!["env-shared".into()],
        }
    }

    /// A fresh directory under the system's temporary one.
    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("si-ingress-secrets-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Writes `value` to `dir/file` the way the kubelet swaps a Secret: a
    /// new file renamed over the old one.
    fn write(dir: &Path, file: &str, value: &str) {
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, value).unwrap();
        std::fs::rename(&tmp, dir.join(file)).unwrap();
    }

    #[tokio::test]
    async fn an_empty_directory_leaves_the_environment_in_force() {
        let dir = temp_dir();
        let store = SecretStore::load(env(), Some(dir.clone())).await.unwrap();
        assert_eq!(*store.current(), env());
        // A missing directory too (the Secret not mounted yet).
        let store = SecretStore::load(env(), Some(dir.as_path().join("absent")))
            .await
            .unwrap();
        assert_eq!(*store.current(), env());
    }

    #[tokio::test]
    async fn the_directory_wins_whole_and_a_rotation_is_picked_up() {
        let dir = temp_dir();
        write(dir.as_path(), AUTH_TOKEN_FILE, "old\n");
        let store = SecretStore::load(env(), Some(dir.clone())).await.unwrap();
        // The environment's secondary and shared secret do not apply.
        assert_eq!(store.current().auth_tokens, ["old"]);
        assert!(store.current().shared_secrets.is_empty());

        // The new token added as the secondary, then promoted.
        write(dir.as_path(), AUTH_TOKEN_SECONDARY_FILE, " new ");
        assert!(store.reload().await.unwrap());
        assert_eq!(store.current().auth_tokens, ["old", "new"]);
        assert!(!store.reload().await.unwrap(), "unchanged");
        write(dir.as_path(), AUTH_TOKEN_FILE, "new");
        std::fs::remove_file(dir.as_path().join(AUTH_TOKEN_SECONDARY_FILE)).unwrap();
        write(dir.as_path(), SHARED_SECRET_FILE, "k1, k2,");
        assert!(store.reload().await.unwrap());
        assert_eq!(store.current().auth_tokens, ["new"]);
        assert_eq!(store.current().shared_secrets, ["k1", "k2"]);

        // Every file gone (the Secret deleted, to be recreated): an error,
        // the secrets in force stay; the environment's never come back.
        for file in [AUTH_TOKEN_FILE, SHARED_SECRET_FILE] {
            std::fs::remove_file(dir.as_path().join(file)).unwrap();
        }
        let err = store.reload().await.unwrap_err();
        assert!(err.contains("holds none of them now"), "{err}");
        assert_eq!(store.current().auth_tokens, ["new"]);
    }

    #[tokio::test]
    async fn files_without_an_auth_token_are_refused_and_the_secrets_in_force_stay() {
        let dir = temp_dir();
        write(dir.as_path(), SHARED_SECRET_FILE, "k1");
        let err = SecretStore::load(env(), Some(dir.clone()))
            .await
            .unwrap_err();
        assert!(err.contains("but no auth-token"), "{err}");

        write(dir.as_path(), AUTH_TOKEN_FILE, "tok");
        let store = SecretStore::load(env(), Some(dir.clone())).await.unwrap();
        // The primary removed, the secondary left: only the secondary.
        std::fs::remove_file(dir.as_path().join(AUTH_TOKEN_FILE)).unwrap();
        write(dir.as_path(), AUTH_TOKEN_SECONDARY_FILE, "next");
        assert!(store.reload().await.unwrap());
        assert_eq!(store.current().auth_tokens, ["next"]);
        // No token left: an error, the tokens in force stay.
        std::fs::remove_file(dir.as_path().join(AUTH_TOKEN_SECONDARY_FILE)).unwrap();
        write(dir.as_path(), SHARED_SECRET_FILE, "k1");
        let err = store.reload().await.unwrap_err();
        assert!(
            err.contains("webhook-shared-secret but no auth-token"),
            "{err}"
        );
        assert_eq!(store.current().auth_tokens, ["next"], "kept");
    }

    #[test]
    fn debug_never_shows_a_value() {
        let shown = format!("{:?}", env());
        assert!(!shown.contains("env-token") && !shown.contains("env-shared"));
        assert!(shown.contains("auth_tokens: 2"), "{shown}");
    }
}
