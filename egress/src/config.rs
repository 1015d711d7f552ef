//! Configuration of `si-egress`: every field has a flag and an environment
//! variable, and the Helm chart sets the same names (`stages.egress`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};
use si_runtime::CommonConfig;

use crate::credentials::{Names, Parts, Source};
use crate::rates::Rates;

/// `si-egress`: performs the Twilio REST operations of `twilio.outbound.v1`.
#[derive(Debug, Clone, Parser)]
#[command(name = "si-egress", version, about)]
pub struct Config {
    /// Kafka, registry, admin listener, logs.
    #[command(flatten)]
    pub common: CommonConfig,
    /// Twilio account, credentials and base URLs.
    #[command(flatten)]
    pub twilio: TwilioArgs,
    /// Rate limits, retries, concurrency, backpressure, commits.
    #[command(flatten)]
    pub egress: EgressArgs,
    /// Consumer-group membership (session timeout, static membership).
    #[command(flatten)]
    pub group: si_runtime::GroupArgs,
    /// Signed URLs of media in Si's store.
    #[command(flatten)]
    pub media: MediaUrlArgs,
}

/// How outbound media named as `si-media:<object key>` reach Twilio: as a
/// short-lived signed URL of the media stage's public listener
/// (`si_runtime::media_url`). Without both settings such media fail as
/// invalid operations; public URLs pass unchanged either way.
#[derive(Debug, Clone, Args)]
pub struct MediaUrlArgs {
    /// Public base URL of the media stage's listener (its MEDIA_PUBLIC_ADDR
    /// behind the public ingress), e.g. `https://si.example.com`.
    #[arg(long, env = "MEDIA_PUBLIC_BASE_URL")]
    pub public_base_url: Option<String>,

    /// The key media URLs are signed with (at least 32 bytes; the media
    /// stage's MEDIA_URL_SECRET).
    #[arg(long, env = "MEDIA_URL_SECRET", hide_env_values = true)]
    pub key: Option<String>,

    /// How long a signed URL opens its object: long enough for Twilio to
    /// fetch it when the message is sent (a few seconds), short enough that
    /// a leaked URL soon stops working.
    #[arg(long, env = "MEDIA_URL_TTL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
}

impl MediaUrlArgs {
    /// The signer, when both the base URL and the key are set.
    ///
    /// # Errors
    /// When only one is set, the key is too short, or the TTL is zero.
    pub fn signer(&self) -> Result<Option<si_runtime::media_url::Signer>, String> {
        let base = self
            .public_base_url
            .as_deref()
            .map(str::trim)
            .filter(|b| !b.is_empty());
        let key = self.key.as_deref().filter(|k| !k.trim().is_empty());
        match (base, key) {
            (None, None) => Ok(None),
            (Some(base), Some(key)) => {
                if !(base.starts_with("https://") || base.starts_with("http://")) {
                    return Err("MEDIA_PUBLIC_BASE_URL must be an http(s) URL".into());
                }
                if self.ttl.is_zero() {
                    return Err("MEDIA_URL_TTL must be positive".into());
                }
                let key = si_runtime::media_url::UrlKey::new(key)
                    .map_err(|e| format!("MEDIA_URL_SECRET: {e}"))?;
                Ok(Some(si_runtime::media_url::Signer::new(
                    base, key, self.ttl,
                )))
            }
            _ => Err("MEDIA_PUBLIC_BASE_URL and MEDIA_URL_SECRET go together".into()),
        }
    }
}

/// How to reach Twilio.
#[derive(Debug, Clone, Args)]
pub struct TwilioArgs {
    /// Twilio Account SID (AC…): part of every Programmable Messaging and Voice path.
    #[arg(long, env = "TWILIO_ACCOUNT_SID")]
    pub account_sid: String,

    /// Auth Token of the account (HTTP Basic with the Account SID). Either this
    /// or the API key pair is required (here or in TWILIO_CREDENTIALS_DIR);
    /// the API key wins when both are set.
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,

    /// The secondary Auth Token, during a rotation: used rather than the
    /// primary (Twilio takes it from its creation on, and promoting it
    /// revokes the primary).
    #[arg(long, env = "TWILIO_AUTH_TOKEN_SECONDARY", hide_env_values = true)]
    pub auth_token_secondary: Option<String>,

    /// API key SID (SK…), used with TWILIO_API_KEY_SECRET for HTTP Basic auth.
    #[arg(long, env = "TWILIO_API_KEY_SID")]
    pub api_key_sid: Option<String>,

    /// API key secret.
    #[arg(long, env = "TWILIO_API_KEY_SECRET", hide_env_values = true)]
    pub api_key_secret: Option<String>,

    /// Base URL of Programmable Messaging and Voice (`/2010-04-01/Accounts/…`).
    #[arg(
        long,
        env = "TWILIO_API_BASE_URL",
        default_value = "https://api.twilio.com"
    )]
    pub api_base_url: String,

    /// Base URL of the Conversations API (`/v1/Conversations…`).
    #[arg(
        long,
        env = "TWILIO_CONVERSATIONS_BASE_URL",
        default_value = "https://conversations.twilio.com"
    )]
    pub conversations_base_url: String,

    /// Base URL of Twilio's Media Content Service, where egress uploads the
    /// media of a Conversations message (Conversations messages take a
    /// `MediaSid`, not a URL).
    #[arg(
        long,
        env = "TWILIO_MCS_BASE_URL",
        default_value = "https://mcs.us1.twilio.com"
    )]
    pub mcs_base_url: String,

    /// The Conversations Service (`IS…`) whose Media Content Service takes
    /// the media of Conversations messages. Without it, a Conversations
    /// message with media is refused (dead-lettered, saying so).
    #[arg(long, env = "TWILIO_CHAT_SERVICE_SID")]
    pub chat_service_sid: Option<String>,

    /// Public base URL of ingress; when set, Programmable Messaging sends get
    /// `StatusCallback=<base>/twilio/messaging/status` (unless the operation sets one).
    #[arg(long, env = "STATUS_CALLBACK_BASE_URL")]
    pub status_callback_base_url: Option<String>,

    /// Timeout of one Twilio request, connect to last byte.
    #[arg(long, env = "TWILIO_REQUEST_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// TCP/TLS connect timeout of Twilio requests.
    #[arg(long, env = "TWILIO_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// A directory holding the credentials as files (a mounted Kubernetes
    /// Secret): `auth-token`, or `api-key-sid` and `api-key-secret`. They win
    /// over the environment's and are read again every
    /// TWILIO_CREDENTIALS_RELOAD_INTERVAL (and soon after a 401), so a
    /// rotated secret is used without a restart.
    #[arg(long, env = "TWILIO_CREDENTIALS_DIR")]
    pub credentials_dir: Option<PathBuf>,

    /// How often TWILIO_CREDENTIALS_DIR is read again.
    #[arg(long, env = "TWILIO_CREDENTIALS_RELOAD_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub credentials_reload_interval: Duration,

    /// While Twilio refuses the credentials (401), every sender holds its
    /// operations and one request probes this often (at once when new
    /// credentials are loaded).
    #[arg(long, env = "TWILIO_AUTH_PROBE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub auth_probe_interval: Duration,

    /// How often a cheap authenticated GET (TWILIO_HEALTH_PATH) checks that
    /// Twilio is reachable and the credentials work; `0s` turns it off.
    /// Reported by `si_egress_twilio_reachable` and on /readyz, never
    /// failing readiness.
    #[arg(long, env = "TWILIO_HEALTH_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub health_interval: Duration,

    /// The health check's path under TWILIO_API_BASE_URL (`{AccountSid}` is
    /// replaced). The Account resource needs the Auth Token or a Main API
    /// key; with a Standard key use e.g.
    /// `/2010-04-01/Accounts/{AccountSid}/Messages.json?PageSize=1`.
    #[arg(
        long,
        env = "TWILIO_HEALTH_PATH",
        default_value = "/2010-04-01/Accounts/{AccountSid}.json"
    )]
    pub health_path: String,
}

impl TwilioArgs {
    /// Where the credentials come from: `TWILIO_CREDENTIALS_DIR` when set
    /// (re-read on an interval), else (and as fallback) the environment's:
    /// the API key pair when complete, else the secondary Auth Token when
    /// set, else the Auth Token.
    #[must_use]
    pub fn credential_source(&self) -> Source {
        Source {
            account_sid: self.account_sid.clone(),
            dir: self
                .credentials_dir
                .clone()
                .filter(|d| !d.as_os_str().is_empty()),
            env: crate::credentials::choose(
                &self.account_sid,
                Parts::of(
                    self.auth_token.as_ref(),
                    self.auth_token_secondary.as_ref(),
                    self.api_key_sid.as_ref(),
                    self.api_key_secret.as_ref(),
                ),
                Names::ENV,
            ),
        }
    }

    /// Cross-field checks with a message naming the variables.
    ///
    /// # Errors
    /// When the settings contradict each other.
    pub fn validate(&self) -> Result<(), String> {
        if self.credentials_reload_interval.is_zero() {
            return Err("TWILIO_CREDENTIALS_RELOAD_INTERVAL must be positive".into());
        }
        if self.auth_probe_interval.is_zero() {
            return Err("TWILIO_AUTH_PROBE_INTERVAL must be positive".into());
        }
        if !self.health_path.starts_with('/') {
            return Err("TWILIO_HEALTH_PATH must start with /".into());
        }
        Ok(())
    }
}

/// Egress behaviour.
#[derive(Debug, Clone, Args)]
#[allow(clippy::struct_field_names)]
pub struct EgressArgs {
    /// Messages per second of a US/CA long code sender (`sms:+1…`, not toll-free).
    #[arg(long, env = "EGRESS_RATE_LONG_CODE", default_value_t = 1.0)]
    pub rate_long_code: f64,
    /// Messages per second of a toll-free sender (`sms:+1800…`, 833–888).
    #[arg(long, env = "EGRESS_RATE_TOLL_FREE", default_value_t = 3.0)]
    pub rate_toll_free: f64,
    /// Messages per second of a short code sender (`sms:` with 5–6 digits).
    #[arg(long, env = "EGRESS_RATE_SHORT_CODE", default_value_t = 100.0)]
    pub rate_short_code: f64,
    /// Messages per second of a messaging service (`MG…`): the sum of its senders' rates.
    #[arg(long, env = "EGRESS_RATE_MESSAGING_SERVICE", default_value_t = 10.0)]
    pub rate_messaging_service: f64,
    /// Messages per second of a WhatsApp sender (10–80 by tier; the lowest tier by default).
    #[arg(long, env = "EGRESS_RATE_WHATSAPP", default_value_t = 10.0)]
    pub rate_whatsapp: f64,
    /// Calls per second of a voice sender (`voice:+…`).
    #[arg(long, env = "EGRESS_RATE_VOICE", default_value_t = 1.0)]
    pub rate_voice: f64,
    /// Messages per second of any other sender (international long codes, unknown forms).
    #[arg(long, env = "EGRESS_RATE_DEFAULT", default_value_t = 1.0)]
    pub rate_default: f64,
    /// Per-sender overrides, comma separated `<sender_key>=<messages per second>`,
    /// e.g. `sms:+14155550100=10,MG0123…=50`.
    #[arg(long, env = "EGRESS_SENDER_RATES", default_value = "")]
    pub sender_rates: String,
    /// Fraction of each configured rate egress actually uses (0 < h ≤ 1): a margin
    /// for the jitter between our limiter and Twilio's clock.
    #[arg(long, env = "EGRESS_RATE_HEADROOM", default_value_t = 0.97)]
    pub rate_headroom: f64,

    /// Cap on concurrent Twilio requests of one egress replica (the account-wide
    /// figure is this × replicas). Taken after a sender's rate cells, so a
    /// message waiting for a slow sender never holds one; given back when
    /// Twilio answers, before the ledger write.
    #[arg(long, env = "EGRESS_MAX_CONCURRENCY", default_value_t = 32)]
    pub max_concurrency: usize,
    /// How long a sender with nothing queued keeps its task and limiter before
    /// they are reclaimed (at least two of its rate periods). Keeps memory flat
    /// however many distinct senders (chat conversations) pass through.
    #[arg(long, env = "EGRESS_SENDER_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub sender_idle_timeout: Duration,
    /// Most operations one input partition may hold in memory (queued, waiting for
    /// a retry, in flight, or finished but not committed); the partition is paused there.
    #[arg(long, env = "EGRESS_MAX_PENDING_PER_PARTITION", default_value_t = 1000)]
    pub max_pending_per_partition: usize,

    /// Requests per operation before it is dead-lettered (retriable errors only).
    #[arg(long, env = "EGRESS_MAX_ATTEMPTS", default_value_t = 8)]
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt, with full jitter.
    #[arg(long, env = "EGRESS_RETRY_BASE", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub retry_base: Duration,
    /// Longest retry delay.
    #[arg(long, env = "EGRESS_RETRY_MAX", default_value = "60s", value_parser = humantime::parse_duration)]
    pub retry_max: Duration,

    /// Circuit breakers (per sender and per channel): the share of failed
    /// Twilio requests (5xx, no answer) in EGRESS_CIRCUIT_WINDOW that opens one.
    #[arg(long, env = "EGRESS_CIRCUIT_FAILURE_RATE", default_value_t = 0.5)]
    pub circuit_failure_rate: f64,
    /// Requests in the window before a breaker may open; 0 turns breakers off.
    #[arg(long, env = "EGRESS_CIRCUIT_MIN_REQUESTS", default_value_t = 10)]
    pub circuit_min_requests: u32,
    /// How far back request outcomes count for the breakers.
    #[arg(long, env = "EGRESS_CIRCUIT_WINDOW", default_value = "30s", value_parser = humantime::parse_duration)]
    pub circuit_window: Duration,
    /// How long an open breaker holds sends before one probe request (doubling
    /// after each failed probe, up to 8 ×).
    #[arg(long, env = "EGRESS_CIRCUIT_OPEN_FOR", default_value = "15s", value_parser = humantime::parse_duration)]
    pub circuit_open_for: Duration,

    /// Require an explicit opt-in at the consent re-check (otherwise only an
    /// opt-out blocks).
    #[arg(long, env = "EGRESS_REQUIRE_OPT_IN", default_value_t = false)]
    pub require_opt_in: bool,

    /// The longest time finished operations wait for their statuses and
    /// offsets to commit under load (a drained input commits at once).
    #[arg(long, env = "COMMIT_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub commit_interval: Duration,
    /// Kafka `transaction.timeout.ms` of the status producer.
    #[arg(long, env = "TRANSACTION_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub transaction_timeout: Duration,
}

impl EgressArgs {
    /// The circuit breaker settings.
    #[must_use]
    pub fn circuits(&self) -> crate::circuit::CircuitConfig {
        crate::circuit::CircuitConfig {
            failure_rate: self.circuit_failure_rate,
            min_requests: self.circuit_min_requests,
            window: self.circuit_window,
            open_for: self.circuit_open_for,
        }
    }

    /// The configured rates.
    ///
    /// # Errors
    /// When a rate or an override is not a positive number.
    pub fn rates(&self) -> Result<Rates, String> {
        let mut overrides = BTreeMap::new();
        for item in self.sender_rates.split(',').map(str::trim) {
            if item.is_empty() {
                continue;
            }
            let (key, rate) = item
                .rsplit_once('=')
                .ok_or_else(|| format!("EGRESS_SENDER_RATES: `{item}` is not <sender>=<rate>"))?;
            let rate: f64 = rate
                .trim()
                .parse()
                .map_err(|_| format!("EGRESS_SENDER_RATES: `{rate}` is not a number"))?;
            overrides.insert(key.trim().to_owned(), rate);
        }
        let rates = Rates {
            long_code: self.rate_long_code,
            toll_free: self.rate_toll_free,
            short_code: self.rate_short_code,
            messaging_service: self.rate_messaging_service,
            whatsapp: self.rate_whatsapp,
            voice: self.rate_voice,
            default: self.rate_default,
            overrides,
            headroom: self.rate_headroom,
        };
        rates.validate()?;
        Ok(rates)
    }

    /// Cross-field checks with a message naming the variables.
    ///
    /// # Errors
    /// When the settings contradict each other.
    pub fn validate(&self) -> Result<(), String> {
        self.rates()?;
        if self.max_concurrency == 0 {
            return Err("EGRESS_MAX_CONCURRENCY must be at least 1".into());
        }
        if self.sender_idle_timeout.is_zero() {
            return Err("EGRESS_SENDER_IDLE_TIMEOUT must be positive".into());
        }
        if self.max_pending_per_partition == 0 {
            return Err("EGRESS_MAX_PENDING_PER_PARTITION must be at least 1".into());
        }
        if self.max_attempts == 0 {
            return Err("EGRESS_MAX_ATTEMPTS must be at least 1".into());
        }
        if !(self.circuit_failure_rate > 0.0 && self.circuit_failure_rate <= 1.0) {
            return Err("EGRESS_CIRCUIT_FAILURE_RATE must be above 0 and at most 1".into());
        }
        if self.circuit_window.is_zero() || self.circuit_open_for.is_zero() {
            return Err(
                "EGRESS_CIRCUIT_WINDOW and EGRESS_CIRCUIT_OPEN_FOR must be positive".into(),
            );
        }
        if self.retry_base.is_zero() || self.retry_max < self.retry_base {
            return Err("EGRESS_RETRY_BASE must be positive and at most EGRESS_RETRY_MAX".into());
        }
        if self.commit_interval.is_zero()
            || self.transaction_timeout < self.commit_interval * 10
            || self.transaction_timeout < Duration::from_secs(1)
        {
            return Err(format!(
                "TRANSACTION_TIMEOUT ({:?}) must be at least 1s and 10 × COMMIT_INTERVAL ({:?})",
                self.transaction_timeout, self.commit_interval
            ));
        }
        Ok(())
    }
}
