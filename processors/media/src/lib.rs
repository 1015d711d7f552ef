//! The media stage (`si-media`): copies inbound media (Programmable Messaging
//! `MediaUrl{N}`, Conversations media) and completed call recordings into
//! Si's object storage and writes a `MEDIA_STORED` event with the durable
//! references (object key, content type, size, SHA-256, the Twilio SID and
//! URL), or each item `UNAVAILABLE` with the reason, to
//! `si.conversation.events.v1`. Voice-link turns it into a `MEDIA_STORED`
//! transcript entry.
//!
//! # Why a stage of its own, and why a follow-up event
//!
//! A download takes from milliseconds to a minute and can fail; normalize's
//! exactly-once loop handles every webhook of a partition one after the
//! other, so a download there would hold back every conversation of the
//! partition. Holding the message until its media are copied would also
//! delay the reply to a user for the time of a download. So normalize keeps
//! Twilio's references on the message as before, and this stage, reading
//! the same topic, copies the media off its loop ([`copier`]) and adds a
//! follow-up event per message: the message and everything after it flow
//! on at once, a slow media URL delays only its own conversation's later
//! `MEDIA_STORED` events (a queue per conversation keeps them in message
//! order), and downloads of different conversations run side by side up to
//! `MEDIA_CONCURRENCY`.
//!
//! # Exactly once, and idempotent copies
//!
//! The queue lives in the stage's state (changelog `si.media.state.v1`); the
//! `MEDIA_STORED` event is written in the transaction that removes its job.
//! A copy is a side effect outside the transaction, made idempotent by its
//! key: `media/<conversation>/<source SID>/<index>-<sha256>` written with
//! "create, never overwrite". A crash at any point therefore redoes at most
//! the copy of the first job of a queue, which finds its objects in place:
//! no item is stored twice, no event is lost or written twice.

pub mod copier;
pub mod fetch;
pub mod processor;
pub mod serve;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser};
use prometheus::{IntCounterVec, Opts};
use si_runtime::media_url::UrlKey;
use si_runtime::metrics::StageMetrics;
use si_runtime::stream::{self, StreamArgs, StreamEnv, StreamSpec};
use si_runtime::{CommonConfig, Readiness, with_admin};
use si_schemas::{Codec, Registry, topics};
use si_twilio_credentials::{CredentialStore, Reloaded, Source};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::serve::Serving;

pub use copier::{Copier, CopyMetrics, Sources, object_key};
pub use fetch::{Fetcher, Limits};
pub use processor::{MediaProcessor, Settings};
pub use si_twilio_credentials::Credentials;
pub use store::MediaStore;

/// The stage name: consumer group `si-media`, transactional ids `si-media-<POD_NAME>`.
pub const STAGE: &str = "media";

/// The content types copied unless `MEDIA_ALLOWED_TYPES` says otherwise:
/// what Twilio accepts as MMS and WhatsApp media, less what is executable.
pub const DEFAULT_ALLOWED_TYPES: &str =
    "image/*,audio/*,video/*,application/pdf,text/vcard,text/x-vcard,text/plain";

/// Settings of the media stage.
#[derive(Debug, Clone, Args)]
pub struct MediaArgs {
    /// Where media are kept: `file:///path`, `s3://bucket/prefix`,
    /// `gs://bucket/prefix`, `az://container/prefix` (credentials from the
    /// backend's usual environment: AWS_*, GOOGLE_*, AZURE_*).
    #[arg(long, env = "MEDIA_STORE_URL")]
    pub store_url: String,

    /// Largest media item copied, in bytes (larger: UNAVAILABLE, TOO_LARGE).
    #[arg(long, env = "MEDIA_MAX_ITEM_BYTES", default_value_t = 20 * 1024 * 1024)]
    pub max_item_bytes: u64,

    /// Largest sum of one message's items, in bytes (the rest: MESSAGE_TOO_LARGE).
    #[arg(long, env = "MEDIA_MAX_MESSAGE_BYTES", default_value_t = 50 * 1024 * 1024)]
    pub max_message_bytes: u64,

    /// Most items copied per message (the rest: TOO_MANY).
    #[arg(long, env = "MEDIA_MAX_ITEMS", default_value_t = 10)]
    pub max_items: usize,

    /// Content types copied, comma-separated, `type/*` for a family (others: REFUSED_TYPE).
    #[arg(long, env = "MEDIA_ALLOWED_TYPES", default_value = DEFAULT_ALLOWED_TYPES)]
    pub allowed_types: String,

    /// Attempts per item before it is UNAVAILABLE (5xx, 429, 404, 401, timeouts).
    #[arg(long, env = "MEDIA_FETCH_ATTEMPTS", default_value_t = 4)]
    pub fetch_attempts: u32,

    /// First pause between attempts; it doubles up to MEDIA_RETRY_BACKOFF_MAX.
    #[arg(long, env = "MEDIA_RETRY_BACKOFF", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub retry_backoff: Duration,

    /// Longest pause between attempts.
    #[arg(long, env = "MEDIA_RETRY_BACKOFF_MAX", default_value = "10s", value_parser = humantime::parse_duration)]
    pub retry_backoff_max: Duration,

    /// Timeout of one download attempt, connect to last byte.
    #[arg(long, env = "MEDIA_FETCH_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub fetch_timeout: Duration,

    /// Connect timeout of downloads.
    #[arg(long, env = "MEDIA_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// Downloads running at once, across all conversations (one per
    /// conversation at a time).
    #[arg(long, env = "MEDIA_CONCURRENCY", default_value_t = 8)]
    pub concurrency: usize,

    /// How often a running copy is looked at (rounded up to TIMER_INTERVAL).
    #[arg(long, env = "MEDIA_CHECK_INTERVAL", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub check_interval: Duration,

    /// Most messages waiting per conversation; more are UNAVAILABLE at once.
    #[arg(long, env = "MEDIA_MAX_QUEUE", default_value_t = 50)]
    pub max_queue: usize,

    /// Pause before a copy is tried again after the media store failed.
    #[arg(long, env = "MEDIA_STORE_RETRY", default_value = "10s", value_parser = humantime::parse_duration)]
    pub store_retry: Duration,

    /// Delete Programmable Messaging media at Twilio once their copy is
    /// verified (Twilio's privacy advice); off by default.
    #[arg(long, env = "MEDIA_DELETE_AT_TWILIO", default_value_t = false, action = clap::ArgAction::Set)]
    pub delete_at_twilio: bool,

    /// How long a conversation's queue is kept when the stage makes no
    /// progress on it (refreshed at every look).
    #[arg(long, env = "MEDIA_STATE_TTL", default_value = "7days", value_parser = humantime::parse_duration)]
    pub state_ttl: Duration,

    /// The key outbound media URLs are signed with (egress's MEDIA_URL_SECRET,
    /// at least 32 bytes). When set, the public listener serves
    /// `GET /media/<object key>?expires=…&signature=…` on MEDIA_PUBLIC_ADDR;
    /// unset, no listener.
    #[arg(long, env = "MEDIA_URL_SECRET", hide_env_values = true)]
    pub url_key: Option<String>,

    /// The key before the last rotation, accepted until the URLs it signed
    /// have expired (MEDIA_URL_TTL).
    #[arg(long, env = "MEDIA_URL_SECRET_PREVIOUS", hide_env_values = true)]
    pub url_key_previous: Option<String>,

    /// Where the public listener binds (behind the public ingress, at the
    /// base URL egress's MEDIA_PUBLIC_BASE_URL names).
    #[arg(long, env = "MEDIA_PUBLIC_ADDR", default_value = "0.0.0.0:8088")]
    pub public_addr: std::net::SocketAddr,
}

impl MediaArgs {
    /// The keys signed media URLs may carry, current first; empty when
    /// MEDIA_URL_SECRET is unset (no public listener).
    ///
    /// # Errors
    /// A key shorter than 32 bytes, or a previous key without a current one.
    pub fn url_keys(&self) -> anyhow::Result<Vec<UrlKey>> {
        let current = non_empty(self.url_key.as_ref());
        let previous = non_empty(self.url_key_previous.as_ref());
        let Some(current) = current else {
            if previous.is_some() {
                anyhow::bail!("MEDIA_URL_SECRET_PREVIOUS needs MEDIA_URL_SECRET");
            }
            return Ok(Vec::new());
        };
        let mut keys =
            vec![UrlKey::new(&current).map_err(|e| anyhow::anyhow!("MEDIA_URL_SECRET: {e}"))?];
        if let Some(previous) = previous {
            keys.push(
                UrlKey::new(&previous)
                    .map_err(|e| anyhow::anyhow!("MEDIA_URL_SECRET_PREVIOUS: {e}"))?,
            );
        }
        Ok(keys)
    }
}

/// Twilio credentials and hosts for downloads.
#[derive(Debug, Clone, Args)]
pub struct TwilioMediaArgs {
    /// Twilio Account SID (HTTP Basic user with TWILIO_AUTH_TOKEN).
    #[arg(long, env = "TWILIO_ACCOUNT_SID")]
    pub account_sid: Option<String>,

    /// Auth Token of the account.
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,

    /// The secondary Auth Token, during a rotation: used rather than the
    /// primary (Twilio takes it from its creation on, and promoting it
    /// revokes the primary).
    #[arg(long, env = "TWILIO_AUTH_TOKEN_SECONDARY", hide_env_values = true)]
    pub auth_token_secondary: Option<String>,

    /// API key SID (SK…); wins over the Auth Token when set with its secret.
    #[arg(long, env = "TWILIO_API_KEY_SID")]
    pub api_key_sid: Option<String>,

    /// API key secret.
    #[arg(long, env = "TWILIO_API_KEY_SECRET", hide_env_values = true)]
    pub api_key_secret: Option<String>,

    /// A directory holding the credentials as files (the mounted Twilio
    /// Secret: `auth-token`, `auth-token-secondary`, or `api-key-sid` +
    /// `api-key-secret`), which win over the variables above and are read
    /// again every `TWILIO_CREDENTIALS_RELOAD_INTERVAL` and within a second
    /// of a refused download, so a rotation needs no restart. An Auth Token
    /// file needs `TWILIO_ACCOUNT_SID`.
    #[arg(long, env = "TWILIO_CREDENTIALS_DIR")]
    pub credentials_dir: Option<std::path::PathBuf>,

    /// How often `TWILIO_CREDENTIALS_DIR` is read again.
    #[arg(long, env = "TWILIO_CREDENTIALS_RELOAD_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub credentials_reload_interval: Duration,

    /// Base URL of Programmable Messaging and Voice: media and recording URLs
    /// on this origin get the credentials.
    #[arg(
        long,
        env = "TWILIO_API_BASE_URL",
        default_value = "https://api.twilio.com"
    )]
    pub api_base_url: String,

    /// Base URL of Twilio's Media Content Service (Conversations media); its
    /// origin gets the credentials too.
    #[arg(
        long,
        env = "TWILIO_MCS_BASE_URL",
        default_value = "https://mcs.us1.twilio.com"
    )]
    pub mcs_base_url: String,

    /// Conversations service (IS…) whose media SIDs are fetched through the
    /// Media Content Service; unset: Conversations media without a URL are
    /// UNAVAILABLE (NO_SOURCE).
    #[arg(long, env = "TWILIO_CHAT_SERVICE_SID")]
    pub chat_service_sid: Option<String>,
}

/// Everything `si-media` reads from flags and the environment.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "si-media",
    about = "Media stage: copies inbound media and call recordings into Si's object storage, exactly once"
)]
pub struct Config {
    /// Kafka, registry, admin listener, logs.
    #[command(flatten)]
    pub common: CommonConfig,
    /// The stream runner (TIMER_INTERVAL bounds how late a finished copy is written).
    #[command(flatten)]
    pub stream: StreamArgs,
    /// The media stage.
    #[command(flatten)]
    pub media: MediaArgs,
    /// Twilio.
    #[command(flatten)]
    pub twilio: TwilioMediaArgs,
}

fn non_empty(value: Option<&String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

impl Config {
    /// Cross-field checks: the limits, the allow-list, the credentials.
    ///
    /// # Errors
    /// With a message naming the variable that is wrong.
    pub fn limits(&self) -> anyhow::Result<Limits> {
        self.stream
            .validate(self.common.service.drain_timeout)
            .map_err(anyhow::Error::msg)?;
        let m = &self.media;
        if m.max_item_bytes == 0 || m.max_message_bytes == 0 {
            anyhow::bail!("MEDIA_MAX_ITEM_BYTES and MEDIA_MAX_MESSAGE_BYTES must be positive");
        }
        if m.fetch_attempts == 0 || m.fetch_attempts > 20 {
            anyhow::bail!("MEDIA_FETCH_ATTEMPTS must be 1 to 20");
        }
        if m.concurrency == 0 || m.max_queue == 0 {
            anyhow::bail!("MEDIA_CONCURRENCY and MEDIA_MAX_QUEUE must be positive");
        }
        let allowed_types: Vec<String> = m
            .allowed_types
            .split(',')
            .map(fetch::essence)
            .filter(|t| !t.is_empty())
            .collect();
        if let Some(bad) = allowed_types.iter().find(|t| {
            t.split_once('/')
                .is_none_or(|(a, b)| a.is_empty() || b.is_empty())
        }) {
            anyhow::bail!("MEDIA_ALLOWED_TYPES: {bad:?} is not a type/subtype or type/*");
        }
        Ok(Limits {
            max_item_bytes: m.max_item_bytes,
            max_message_bytes: m.max_message_bytes,
            max_items: m.max_items,
            allowed_types,
            attempts: m.fetch_attempts,
            retry_backoff: m.retry_backoff,
            retry_backoff_max: m.retry_backoff_max.max(m.retry_backoff),
        })
    }

    /// The HTTP Basic credentials: the API key when both halves are set,
    /// else the Account SID and the secondary Auth Token when set, else the
    /// Auth Token, else none.
    ///
    /// # Errors
    /// When only half of a pair is set, or a token without the account.
    pub fn credentials(&self) -> anyhow::Result<Option<Credentials>> {
        let t = &self.twilio;
        let parts = si_twilio_credentials::Parts::of(
            t.auth_token.as_ref(),
            t.auth_token_secondary.as_ref(),
            t.api_key_sid.as_ref(),
            t.api_key_secret.as_ref(),
        );
        if parts.is_empty() {
            return Ok(None);
        }
        let account = non_empty(t.account_sid.as_ref());
        if (parts.auth_token.is_some() || parts.auth_token_secondary.is_some()) && account.is_none()
        {
            anyhow::bail!(
                "TWILIO_AUTH_TOKEN / TWILIO_AUTH_TOKEN_SECONDARY needs TWILIO_ACCOUNT_SID"
            );
        }
        si_twilio_credentials::choose(
            account.as_deref().unwrap_or_default(),
            parts,
            si_twilio_credentials::Names::ENV,
        )
        .map(Some)
        .map_err(anyhow::Error::msg)
    }

    /// Where the credentials come from: the environment's, and
    /// `TWILIO_CREDENTIALS_DIR`'s files when set; `None` when neither is
    /// given (downloads then go without credentials).
    ///
    /// # Errors
    /// Half a key pair or a token without its account in the environment; a
    /// directory without `TWILIO_ACCOUNT_SID`.
    pub fn credential_source(&self) -> anyhow::Result<Option<Source>> {
        let env = self.credentials()?;
        let dir = self.twilio.credentials_dir.clone();
        if dir.is_none() && env.is_none() {
            return Ok(None);
        }
        anyhow::ensure!(
            !self.twilio.credentials_reload_interval.is_zero(),
            "TWILIO_CREDENTIALS_RELOAD_INTERVAL must be positive"
        );
        let account_sid = non_empty(self.twilio.account_sid.as_ref());
        if dir.is_some() && account_sid.is_none() {
            anyhow::bail!(
                "TWILIO_CREDENTIALS_DIR needs TWILIO_ACCOUNT_SID (the user of an auth-token file)"
            );
        }
        Ok(Some(Source {
            account_sid: account_sid.unwrap_or_default(),
            dir,
            env: env.ok_or_else(|| "no Twilio credentials in the environment".to_owned()),
        }))
    }

    /// The origins credentials are sent to.
    ///
    /// # Errors
    /// When a base URL does not parse.
    pub fn auth_origins(&self) -> anyhow::Result<Vec<String>> {
        [
            ("TWILIO_API_BASE_URL", &self.twilio.api_base_url),
            ("TWILIO_MCS_BASE_URL", &self.twilio.mcs_base_url),
        ]
        .into_iter()
        .map(|(name, url)| {
            fetch::origin(url).ok_or_else(|| anyhow::anyhow!("{name} {url:?} is not a URL"))
        })
        .collect()
    }
}

/// Runs the media stage until `shutdown`: admin listener, then the stream.
///
/// # Errors
/// On invalid configuration, when Kafka, the registry or the media store
/// cannot be set up, and on fatal stream errors.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let limits = config.limits()?;
    let metrics = StageMetrics::new(STAGE);
    // Downloads Twilio refuses (401) wake the reload at once.
    let refused = Arc::new(Notify::new());
    let credentials = match config.credential_source()? {
        Some(source) => {
            let store = CredentialStore::load(source)
                .await
                .map_err(|e| anyhow::anyhow!("Twilio credentials: {e}"))?;
            let store = Arc::new(store);
            if config.twilio.credentials_dir.is_some() {
                let reloads = IntCounterVec::new(
                    Opts::new(
                        "si_media_twilio_credential_reloads_total",
                        "Reloads of the Twilio credentials (TWILIO_CREDENTIALS_DIR), by result: changed, unchanged, error",
                    ),
                    &["result"],
                )?;
                metrics.registry().register(Box::new(reloads.clone()))?;
                tokio::spawn(si_twilio_credentials::reload_loop(
                    Arc::clone(&store),
                    config.twilio.credentials_reload_interval,
                    Some(Arc::clone(&refused)),
                    move |outcome: Reloaded| reloads.with_label_values(&[outcome.as_str()]).inc(),
                    shutdown.clone(),
                ));
            }
            Some(store)
        }
        None => None,
    };
    let auth_origins = config.auth_origins()?;
    let store = MediaStore::open(&config.media.store_url)?;
    let url_keys = config.media.url_keys()?;
    let fetcher = Fetcher::new(
        credentials,
        refused,
        auth_origins,
        limits,
        config.media.connect_timeout,
        config.media.fetch_timeout,
    )
    .context("building the HTTP client")?;
    let readiness = Readiness::default();
    let copy_metrics = CopyMetrics::new(metrics.registry())?;
    // Outbound media: signed URLs answered from the store, on a listener of
    // their own (public, unlike the admin listener).
    let public_stop = shutdown.child_token();
    let public = if url_keys.is_empty() {
        None
    } else {
        let serving = Serving::new(store.clone(), url_keys, metrics.registry())?;
        let (addr, task) = serve::start(config.media.public_addr, serving, public_stop.clone())
            .await
            .with_context(|| format!("binding MEDIA_PUBLIC_ADDR {}", config.media.public_addr))?;
        tracing::info!(%addr, "serving signed media URLs");
        Some(task)
    };
    let copier = Copier::new(
        fetcher,
        store,
        Sources {
            mcs_base_url: config.twilio.mcs_base_url.clone(),
            chat_service_sid: non_empty(config.twilio.chat_service_sid.as_ref()),
            store_retry: config.media.store_retry,
            delete_at_twilio: config.media.delete_at_twilio,
        },
        config.media.concurrency,
        copy_metrics,
        tokio::runtime::Handle::current(),
    );
    let settings = Settings {
        check_interval: config.media.check_interval,
        max_queue: config.media.max_queue,
        state_ttl: config.media.state_ttl,
    };
    let result = with_admin(
        config.common.service.admin_addr,
        metrics.registry().clone(),
        readiness.clone(),
        &shutdown.clone(),
        run_stream(&config, settings, copier, metrics, readiness, shutdown),
    )
    .await;
    public_stop.cancel();
    if let Some(task) = public {
        let _ = task.await;
    }
    result
}

async fn run_stream(
    config: &Config,
    settings: Settings,
    copier: Copier,
    metrics: StageMetrics,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let codec = Codec::new(Registry::new(config.common.registry.config())?);
    let state_ttl = settings.state_ttl;
    let processor = MediaProcessor::new(settings, copier);
    let env = StreamEnv {
        kafka: config.common.kafka.clone(),
        args: config.stream.clone(),
        drain_timeout: config.common.service.drain_timeout,
        codec,
        metrics,
        readiness,
    };
    let spec = StreamSpec {
        stage: STAGE,
        outputs: topics::written_by("media").to_vec(),
        inputs: vec![topics::CONVERSATION_EVENTS],
        changelog: topics::MEDIA_STATE,
        state_ttl,
        // Off the reply path: a message never waits for its media.
        batch_linger: Duration::from_millis(50),
    };
    stream::run(env, spec, processor, shutdown).await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["si-media", "--store-url", "memory://"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).unwrap()
    }

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        let limits = parse(&[]).limits().unwrap();
        assert!(limits.allows("image/png") && limits.allows("application/pdf"));
        assert!(!limits.allows("application/x-msdownload"));
        for (flag, value, name) in [
            ("--allowed-types", "image", "MEDIA_ALLOWED_TYPES"),
            ("--fetch-attempts", "0", "MEDIA_FETCH_ATTEMPTS"),
            ("--max-item-bytes", "0", "MEDIA_MAX_ITEM_BYTES"),
            ("--concurrency", "0", "MEDIA_CONCURRENCY"),
        ] {
            let error = parse(&[flag, value]).limits().unwrap_err().to_string();
            assert!(error.contains(name), "{flag}: {error}");
        }
    }

    #[test]
    fn credentials_prefer_the_api_key_and_refuse_halves() {
        assert!(parse(&[]).credentials().unwrap().is_none());
        let c = parse(&["--account-sid", "AC1", "--auth-token", "t"]);
        assert_eq!(c.credentials().unwrap().unwrap().user, "AC1");
        let c = parse(&[
            "--account-sid",
            "AC1",
            "--auth-token",
            "t",
            "--api-key-sid",
            "SK1",
            "--api-key-secret",
            "s",
        ]);
        assert_eq!(c.credentials().unwrap().unwrap().user, "SK1");
        assert!(parse(&["--api-key-sid", "SK1"]).credentials().is_err());
        assert!(parse(&["--auth-token", "t"]).credentials().is_err());
        // A credentials directory: the source holds it and the environment's.
        assert!(parse(&[]).credential_source().unwrap().is_none());
        let source = parse(&[
            "--credentials-dir",
            "/etc/si/twilio",
            "--account-sid",
            "AC1",
        ])
        .credential_source()
        .unwrap()
        .unwrap();
        assert_eq!(
            source.dir.as_deref(),
            Some(std::path::Path::new("/etc/si/twilio"))
        );
        assert!(source.env.is_err(), "none in the environment");
        let error = parse(&["--credentials-dir", "/etc/si/twilio"])
            .credential_source()
            .unwrap_err()
            .to_string();
        assert!(error.contains("TWILIO_ACCOUNT_SID"), "{error}");
        let error = parse(&[
            "--credentials-dir",
            "/etc/si/twilio",
            "--account-sid",
            "AC1",
            "--credentials-reload-interval",
            "0s",
        ])
        .credential_source()
        .unwrap_err()
        .to_string();
        assert!(error.contains("must be positive"), "{error}");
        assert_eq!(
            parse(&["--api-base-url", "http://127.0.0.1:8090/"])
                .auth_origins()
                .unwrap(),
            ["http://127.0.0.1:8090", "https://mcs.us1.twilio.com"]
        );
    }
}
