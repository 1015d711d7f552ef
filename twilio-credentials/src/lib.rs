//! Twilio REST credentials: from the environment, or from files in a
//! directory (`TWILIO_CREDENTIALS_DIR`, a mounted Kubernetes Secret) that the
//! stages calling Twilio (egress, media) read again on an interval, so a
//! rotated secret is used without a restart.
//!
//! The files are named like the chart's Secret keys: `auth-token`,
//! `auth-token-secondary`, or `api-key-sid` + `api-key-secret` (the pair wins
//! when both are there). Each file holds the value alone; surrounding
//! whitespace and the final newline are ignored. A missing or empty file
//! counts as absent. When the directory holds none of them, the
//! environment's credentials apply. A half key pair is an error: at start-up
//! a stage refuses to start, later it keeps the credentials it has (a Secret
//! being rewritten) and says so in the log.
//!
//! A secondary Auth Token, when there is one, is used rather than the
//! primary: Twilio takes it for API requests from the moment it is created,
//! and promoting it revokes the primary at once. So a rotation that loads the
//! new token as the secondary first (as ingress needs it for signatures
//! anyway) has the REST stages on the new token before the old one is
//! revoked, and no request is refused.
//!
//! Requests take the current credentials from [`CredentialStore`], a shared
//! swap behind a read lock that is held only to clone an `Arc`. Values are
//! never logged, and `Debug` redacts them. [`reload::reload_loop`] is the one
//! loop every stage reads its secrets again with.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

pub mod reload;

pub use reload::{LogEvery, MIN_PROMPT_RELOAD_GAP, Reload, Reloaded, reload_loop};

/// File of the Auth Token in `TWILIO_CREDENTIALS_DIR`.
pub const AUTH_TOKEN_FILE: &str = "auth-token";
/// File of the secondary Auth Token (during a rotation: the new one).
pub const AUTH_TOKEN_SECONDARY_FILE: &str = "auth-token-secondary";
/// File of the API key SID (`SK…`).
pub const API_KEY_SID_FILE: &str = "api-key-sid";
/// File of the API key secret.
pub const API_KEY_SECRET_FILE: &str = "api-key-secret";

/// Which kind of credential a stage authenticates with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Account SID + Auth Token.
    AuthToken,
    /// Account SID + the secondary Auth Token (a rotation under way).
    SecondaryAuthToken,
    /// API key SID + secret.
    ApiKey,
}

impl Kind {
    /// For logs.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthToken => "auth token",
            Self::SecondaryAuthToken => "secondary auth token",
            Self::ApiKey => "API key",
        }
    }
}

/// HTTP Basic credentials for Twilio.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User: an API key SID or the Account SID.
    pub user: String,
    /// Password: the API key secret or the Auth Token.
    pub password: String,
    /// Which of the two.
    pub kind: Kind,
    /// The rotation's other Auth Token, when there are two: the primary
    /// when these use the secondary (and back, once Twilio refused the
    /// secondary): tried when Twilio refuses these.
    pub other_token: Option<String>,
}

impl Credentials {
    /// The same account with the rotation's other Auth Token, if there is one.
    #[must_use]
    pub fn with_other_token(&self) -> Option<Self> {
        let other = self.other_token.clone()?;
        let kind = match self.kind {
            Kind::SecondaryAuthToken => Kind::AuthToken,
            Kind::AuthToken => Kind::SecondaryAuthToken,
            Kind::ApiKey => return None,
        };
        Some(Self {
            user: self.user.clone(),
            password: other,
            kind,
            other_token: Some(self.password.clone()),
        })
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("kind", &self.kind)
            .field("password", &"<redacted>")
            .field(
                "other_token",
                &self.other_token.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

/// The parts credentials are chosen from, each optional (blank = absent).
#[derive(Debug, Clone, Copy, Default)]
pub struct Parts<'a> {
    /// The (primary) Auth Token.
    pub auth_token: Option<&'a str>,
    /// The secondary Auth Token.
    pub auth_token_secondary: Option<&'a str>,
    /// The API key SID.
    pub api_key_sid: Option<&'a str>,
    /// The API key secret.
    pub api_key_secret: Option<&'a str>,
}

impl<'a> Parts<'a> {
    /// The parts given as settings, without surrounding whitespace (a blank
    /// one is absent).
    #[must_use]
    pub fn of(
        auth_token: Option<&'a String>,
        auth_token_secondary: Option<&'a String>,
        api_key_sid: Option<&'a String>,
        api_key_secret: Option<&'a String>,
    ) -> Self {
        let given = |v: Option<&'a String>| v.map(|v| v.trim()).filter(|v| !v.is_empty());
        Self {
            auth_token: given(auth_token),
            auth_token_secondary: given(auth_token_secondary),
            api_key_sid: given(api_key_sid),
            api_key_secret: given(api_key_secret),
        }
    }

    /// Whether none of the parts is there.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.auth_token.is_none()
            && self.auth_token_secondary.is_none()
            && self.api_key_sid.is_none()
            && self.api_key_secret.is_none()
    }
}

/// What the parts are called where they come from, for error messages.
#[derive(Debug, Clone, Copy)]
pub struct Names {
    /// The Auth Token's name.
    pub auth_token: &'static str,
    /// The secondary Auth Token's name.
    pub auth_token_secondary: &'static str,
    /// The API key SID's name.
    pub api_key_sid: &'static str,
    /// The API key secret's name.
    pub api_key_secret: &'static str,
}

impl Names {
    /// The environment variables.
    pub const ENV: Self = Self {
        auth_token: "TWILIO_AUTH_TOKEN",
        auth_token_secondary: "TWILIO_AUTH_TOKEN_SECONDARY",
        api_key_sid: "TWILIO_API_KEY_SID",
        api_key_secret: "TWILIO_API_KEY_SECRET",
    };
    /// The files in `TWILIO_CREDENTIALS_DIR`.
    pub const FILES: Self = Self {
        auth_token: AUTH_TOKEN_FILE,
        auth_token_secondary: AUTH_TOKEN_SECONDARY_FILE,
        api_key_sid: API_KEY_SID_FILE,
        api_key_secret: API_KEY_SECRET_FILE,
    };
}

/// The credentials the parts give: the API key pair when complete, else the
/// secondary Auth Token (the newer, during a rotation; with the primary as
/// the other token, tried when Twilio refuses the secondary), else the
/// primary.
///
/// # Errors
/// When there is none of them, or only half of the pair. Messages use
/// `names`.
pub fn choose(account_sid: &str, parts: Parts<'_>, names: Names) -> Result<Credentials, String> {
    fn present(v: Option<&str>) -> Option<&str> {
        v.filter(|v| !v.is_empty())
    }
    let Names {
        auth_token: token_name,
        api_key_sid: sid_name,
        api_key_secret: secret_name,
        ..
    } = names;
    match (present(parts.api_key_sid), present(parts.api_key_secret)) {
        (Some(sid), Some(secret)) => {
            return Ok(Credentials {
                user: sid.to_owned(),
                password: secret.to_owned(),
                kind: Kind::ApiKey,
                other_token: None,
            });
        }
        (Some(_), None) => return Err(format!("{sid_name} is set but {secret_name} is not")),
        (None, Some(_)) => return Err(format!("{secret_name} is set but {sid_name} is not")),
        (None, None) => {}
    }
    let token = |password: &str, kind, other: Option<&str>| Credentials {
        user: account_sid.to_owned(),
        password: password.to_owned(),
        kind,
        other_token: other.filter(|o| *o != password).map(str::to_owned),
    };
    match (
        present(parts.auth_token_secondary),
        present(parts.auth_token),
    ) {
        (Some(secondary), primary) => Ok(token(secondary, Kind::SecondaryAuthToken, primary)),
        (None, Some(primary)) => Ok(token(primary, Kind::AuthToken, None)),
        (None, None) => Err(format!("set {token_name}, or {sid_name} and {secret_name}")),
    }
}

/// The directory to read a mounted Secret's files from: its current
/// snapshot when it is the kubelet's (`..data`, a link the kubelet swaps in
/// one step when the Secret changes), so files read one after the other
/// come from one version of the Secret, never half the old and half the
/// new; else `dir` itself.
pub async fn snapshot(dir: &Path) -> PathBuf {
    tokio::fs::canonicalize(dir.join("..data"))
        .await
        .unwrap_or_else(|_| dir.to_path_buf())
}

/// Reads one secret file: its value without surrounding whitespace, `None`
/// when missing or blank. An error names the file, never its content.
///
/// # Errors
/// When the file exists but cannot be read.
pub async fn read_value(path: &Path) -> Result<Option<String>, String> {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => {
            let value = text.trim();
            Ok((!value.is_empty()).then(|| value.to_owned()))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        // The error names the file, never its content.
        Err(error) => Err(format!("reading {}: {}", path.display(), error.kind())),
    }
}

/// The credentials in `dir`, `None` when it holds none of the files.
///
/// # Errors
/// When a file cannot be read, or only half of the key pair is there.
pub async fn read_dir(dir: &Path, account_sid: &str) -> Result<Option<Credentials>, String> {
    let dir = &snapshot(dir).await;
    let token = read_value(&dir.join(AUTH_TOKEN_FILE)).await?;
    let secondary = read_value(&dir.join(AUTH_TOKEN_SECONDARY_FILE)).await?;
    let sid = read_value(&dir.join(API_KEY_SID_FILE)).await?;
    let secret = read_value(&dir.join(API_KEY_SECRET_FILE)).await?;
    let parts = Parts::of(
        token.as_ref(),
        secondary.as_ref(),
        sid.as_ref(),
        secret.as_ref(),
    );
    if parts.is_empty() {
        return Ok(None);
    }
    choose(account_sid, parts, Names::FILES)
        .map(Some)
        .map_err(|e| format!("{}: {e}", dir.display()))
}

/// Where credentials come from.
#[derive(Debug, Clone)]
pub struct Source {
    /// The Account SID (the user with an Auth Token).
    pub account_sid: String,
    /// `TWILIO_CREDENTIALS_DIR`, if set.
    pub dir: Option<PathBuf>,
    /// The environment's credentials, if complete; or why not.
    pub env: Result<Credentials, String>,
}

impl Source {
    /// The directory's credentials, else the environment's.
    ///
    /// # Errors
    /// A directory that cannot be read or holds half a key pair; neither
    /// source holding credentials.
    pub async fn load(&self) -> Result<Credentials, String> {
        if let Some(dir) = &self.dir
            && let Some(credentials) = read_dir(dir, &self.account_sid).await?
        {
            return Ok(credentials);
        }
        match (&self.env, &self.dir) {
            (Ok(credentials), _) => Ok(credentials.clone()),
            (Err(why), None) => Err(why.clone()),
            (Err(why), Some(dir)) => Err(format!(
                "{} holds no {AUTH_TOKEN_FILE}, {AUTH_TOKEN_SECONDARY_FILE} or {API_KEY_SID_FILE} + {API_KEY_SECRET_FILE}, and the environment has none: {why}",
                dir.display()
            )),
        }
    }
}

/// Credentials in use, with their generation (1 at start, +1 per change).
#[derive(Debug)]
pub struct Current {
    /// The credentials.
    pub credentials: Credentials,
    /// Bumped whenever a reload changes them.
    pub generation: u64,
}

/// The credentials requests use, swapped when a reload finds new ones (or,
/// once Twilio refused them, for the rotation's other Auth Token).
#[derive(Debug)]
pub struct CredentialStore {
    source: Source,
    state: RwLock<State>,
    /// The newest generation Twilio refused.
    refused: AtomicU64,
}

#[derive(Debug)]
struct State {
    current: Arc<Current>,
    /// What the source held at the last load: a reload that finds the same
    /// keeps the current credentials, the other token included.
    loaded: Credentials,
}

impl CredentialStore {
    /// Loads the credentials once.
    ///
    /// # Errors
    /// When none can be loaded (see [`Source::load`]).
    pub async fn load(source: Source) -> Result<Self, String> {
        let credentials = source.load().await?;
        Ok(Self {
            source,
            state: RwLock::new(State {
                current: Arc::new(Current {
                    credentials: credentials.clone(),
                    generation: 1,
                }),
                loaded: credentials,
            }),
            refused: AtomicU64::new(0),
        })
    }

    /// The credentials to use now.
    #[must_use]
    pub fn current(&self) -> Arc<Current> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(&state.current)
    }

    /// The generation of the current credentials.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.current().generation
    }

    /// The credentials directory, if any.
    #[must_use]
    pub fn dir(&self) -> Option<&Path> {
        self.source.dir.as_deref()
    }

    /// Reads the source again; swaps in what it holds when that differs from
    /// what it held before. Returns the new generation when they changed.
    ///
    /// # Errors
    /// When the source cannot be read (the current credentials stay).
    pub async fn reload(&self) -> Result<Option<u64>, String> {
        let loaded = self.source.load().await?;
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        if state.loaded == loaded {
            return Ok(None);
        }
        let generation = state.current.generation + 1;
        state.current = Arc::new(Current {
            credentials: loaded.clone(),
            generation,
        });
        state.loaded = loaded;
        Ok(Some(generation))
    }

    /// Twilio refused the credentials of `generation` (401).
    pub fn refused(&self, generation: u64) {
        self.refused.fetch_max(generation, Ordering::Relaxed);
    }

    /// After Twilio refused the credentials in force: the rotation's other
    /// Auth Token instead, if there is one (a secondary deleted at Twilio but
    /// still in the Secret, or a primary the promotion revoked). Returns the
    /// new generation; `None` when the current credentials were not refused
    /// (a refusal of older ones says nothing of them) or there is no other.
    pub fn try_other_token(&self) -> Option<u64> {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        if self.refused.load(Ordering::Relaxed) != state.current.generation {
            return None;
        }
        let other = state.current.credentials.with_other_token()?;
        let generation = state.current.generation + 1;
        state.current = Arc::new(Current {
            credentials: other,
            generation,
        });
        Some(generation)
    }
}

impl Reload for CredentialStore {
    const WHAT: &'static str = "Twilio credentials";

    async fn reload(&self) -> Result<bool, String> {
        Ok(CredentialStore::reload(self).await?.is_some())
    }

    fn log_change(&self) {
        let current = self.current();
        tracing::info!(
            kind = current.credentials.kind.as_str(),
            generation = current.generation,
            dir = ?self.dir(),
            "Twilio credentials changed: requests use the new ones from now on"
        );
    }

    fn after_refusal(&self) -> bool {
        let Some(generation) = self.try_other_token() else {
            return false;
        };
        tracing::warn!(
            kind = self.current().credentials.kind.as_str(),
            generation,
            "Twilio refused the Auth Token in force; requests use the rotation's other one from now on"
        );
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const ACCOUNT: &str = "AC00000000000000000000000000000000";

    fn env_token(token: &str) -> Result<Credentials, String> {
        Ok(Credentials {
            user: ACCOUNT.into(),
            password: token.into(),
            kind: Kind::AuthToken,
            other_token: None,
        })
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("si-twilio-credentials-{name}-{}", uuid_like()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A store of `dir`'s files alone (no environment).
    async fn dir_store(dir: &Path) -> CredentialStore {
        CredentialStore::load(Source {
            account_sid: ACCOUNT.into(),
            dir: Some(dir.to_path_buf()),
            env: Err("no env".into()),
        })
        .await
        .unwrap()
    }

    fn uuid_like() -> String {
        format!("{}-{}", std::process::id(), rand::random::<u64>())
    }

    /// Writes `value` to `dir/name` the way the kubelet swaps a Secret: a new
    /// file renamed over the old one.
    fn write(dir: &Path, name: &str, value: &str) {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, value).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }

    #[test]
    fn the_key_pair_wins_then_the_secondary_token_and_halves_are_refused() {
        let names = Names {
            auth_token: "T",
            auth_token_secondary: "T2",
            api_key_sid: "S",
            api_key_secret: "K",
        };
        let parts = |token, secondary, sid, secret| Parts {
            auth_token: token,
            auth_token_secondary: secondary,
            api_key_sid: sid,
            api_key_secret: secret,
        };
        let all = parts(Some("tok"), Some("next"), Some("SK1"), Some("sec"));
        let both = choose(ACCOUNT, all, names).unwrap();
        assert_eq!(both.kind, Kind::ApiKey);
        assert_eq!(both.user, "SK1");
        let token = choose(ACCOUNT, parts(Some("tok"), None, None, Some("")), names).unwrap();
        assert_eq!(
            (token.kind, token.user.as_str(), token.password.as_str()),
            (Kind::AuthToken, ACCOUNT, "tok")
        );
        let rotating = choose(ACCOUNT, parts(Some("tok"), Some("next"), None, None), names);
        let rotating = rotating.unwrap();
        assert_eq!(
            (
                rotating.kind,
                rotating.user.as_str(),
                rotating.password.as_str()
            ),
            (Kind::SecondaryAuthToken, ACCOUNT, "next"),
            "the secondary is the newer token"
        );
        let blank = choose(ACCOUNT, parts(Some("tok"), Some(""), None, None), names);
        assert_eq!(
            blank.unwrap().password,
            "tok",
            "a blank secondary is absent"
        );
        assert_eq!(
            choose(ACCOUNT, parts(Some("tok"), None, Some("SK1"), None), names).unwrap_err(),
            "S is set but K is not"
        );
        assert!(choose(ACCOUNT, Parts::default(), names).is_err());
        let debug = format!("{both:?}");
        assert!(!debug.contains("sec") && !debug.contains("SK1"), "{debug}");
    }

    #[tokio::test]
    async fn a_kubelet_mount_is_read_from_its_current_snapshot() {
        // The kubelet's layout: ..data links to a timestamped directory it
        // swaps in one step; the top-level names link through ..data.
        let dir = temp_dir("snapshot");
        let first = dir.join("..2026_12_08_00_00_00.1");
        std::fs::create_dir_all(&first).unwrap();
        std::fs::write(first.join(AUTH_TOKEN_FILE), "from-the-snapshot").unwrap();
        std::os::unix::fs::symlink(&first, dir.join("..data")).unwrap();
        assert_eq!(snapshot(&dir).await, std::fs::canonicalize(&first).unwrap());
        let read = read_dir(&dir, ACCOUNT).await.unwrap().unwrap();
        assert_eq!(read.password, "from-the-snapshot");
        // A plain directory is read as it is.
        let plain = temp_dir("plain");
        assert_eq!(snapshot(&plain).await, plain);
        std::fs::remove_dir_all(dir).unwrap();
        std::fs::remove_dir_all(plain).unwrap();
    }

    #[tokio::test]
    async fn files_win_over_the_environment_and_are_trimmed() {
        let dir = temp_dir("files");
        let source = Source {
            account_sid: ACCOUNT.into(),
            dir: Some(dir.clone()),
            env: env_token("from-env"),
        };
        // Nothing in the directory: the environment's.
        assert_eq!(source.load().await.unwrap().password, "from-env");
        write(&dir, AUTH_TOKEN_FILE, "from-file\n");
        assert_eq!(source.load().await.unwrap().password, "from-file");
        write(&dir, AUTH_TOKEN_SECONDARY_FILE, "the-next-one\n");
        let next = source.load().await.unwrap();
        assert_eq!(
            (next.kind, next.password.as_str()),
            (Kind::SecondaryAuthToken, "the-next-one")
        );
        write(&dir, API_KEY_SID_FILE, " SK123 \n");
        assert!(
            source.load().await.unwrap_err().contains("api-key-secret"),
            "half a pair is an error"
        );
        write(&dir, API_KEY_SECRET_FILE, "key-secret");
        let key = source.load().await.unwrap();
        assert_eq!((key.kind, key.user.as_str()), (Kind::ApiKey, "SK123"));
        assert_eq!(key.password, "key-secret");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_reload_swaps_only_changed_credentials_and_keeps_them_on_errors() {
        let dir = temp_dir("reload");
        write(&dir, AUTH_TOKEN_FILE, "old");
        let store = dir_store(&dir).await;
        let first = store.current();
        assert_eq!(
            (first.credentials.password.as_str(), first.generation),
            ("old", 1)
        );
        assert_eq!(store.reload().await.unwrap(), None, "unchanged");
        assert_eq!(store.generation(), 1);

        write(&dir, AUTH_TOKEN_FILE, "new\n");
        assert_eq!(store.reload().await.unwrap(), Some(2));
        assert_eq!(store.current().credentials.password, "new");
        // A request that took the old ones keeps them (its own Arc).
        assert_eq!(first.credentials.password, "old");

        // Mid-rotation: half a key pair. The current credentials stay.
        write(&dir, API_KEY_SID_FILE, "SK9");
        assert!(store.reload().await.is_err());
        assert_eq!(store.current().credentials.password, "new");
        assert_eq!(store.generation(), 2);

        // Every file gone and no environment: an error, the current stay.
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(store.reload().await.is_err());
        assert_eq!(store.generation(), 2);
    }

    #[tokio::test]
    async fn a_refused_token_gives_way_to_the_rotation_s_other_one() {
        let dir = temp_dir("other");
        write(&dir, AUTH_TOKEN_FILE, "primary");
        write(&dir, AUTH_TOKEN_SECONDARY_FILE, "secondary");
        let store = dir_store(&dir).await;
        let first = store.current();
        assert_eq!(first.credentials.kind, Kind::SecondaryAuthToken);
        assert_eq!(store.try_other_token(), None, "not refused");
        store.refused(1);
        assert_eq!(store.try_other_token(), Some(2));
        let now = store.current();
        assert_eq!(
            (now.credentials.kind, now.credentials.password.as_str()),
            (Kind::AuthToken, "primary")
        );
        // A late refusal of the secondary says nothing of the primary.
        store.refused(1);
        assert_eq!(store.try_other_token(), None);
        // The Secret unchanged: the primary stays.
        assert_eq!(store.reload().await.unwrap(), None);
        assert_eq!(store.generation(), 2);
        // The primary refused too: back to the secondary.
        store.refused(2);
        assert_eq!(store.try_other_token(), Some(3));
        assert_eq!(store.current().credentials.password, "secondary");
        // A new Secret: its own choice again, the secondary first.
        write(&dir, AUTH_TOKEN_SECONDARY_FILE, "newer");
        assert_eq!(store.reload().await.unwrap(), Some(4));
        assert_eq!(store.current().credentials.password, "newer");
        // Without a secondary there is nothing else to try.
        write(&dir, AUTH_TOKEN_SECONDARY_FILE, "");
        assert_eq!(store.reload().await.unwrap(), Some(5));
        store.refused(5);
        assert_eq!(store.try_other_token(), None);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn start_up_needs_credentials_somewhere() {
        let dir = temp_dir("empty");
        let error = CredentialStore::load(Source {
            account_sid: ACCOUNT.into(),
            dir: Some(dir.clone()),
            env: Err("set TWILIO_AUTH_TOKEN".into()),
        })
        .await
        .unwrap_err();
        assert!(error.contains("holds no auth-token"), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
