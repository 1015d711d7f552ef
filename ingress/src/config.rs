//! Configuration of the ingress stage.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use si_runtime::CommonConfig;

use crate::secrets::WebhookSecrets;

/// Twilio's own limit: it waits at most this long for a webhook answer.
pub const TWILIO_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(15);
/// Twilio waits at most this long for a Conversations (pre-event) webhook.
pub const TWILIO_CONVERSATIONS_TIMEOUT: Duration = Duration::from_secs(5);

/// Verifies Twilio webhooks, stores them in Kafka, answers TwiML for voice.
#[derive(Debug, Clone, Parser)]
#[command(name = "si-ingress", version, about)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonConfig,

    /// Address the webhook listener binds.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen_addr: SocketAddr,

    /// The public base URL Twilio calls: scheme, host, port if not the default, and
    /// any path prefix a proxy strips (e.g. `https://si.example.com`). Signatures are
    /// checked against it plus the path and query exactly as received.
    #[arg(long, env = "PUBLIC_BASE_URL")]
    pub public_base_url: String,

    /// The Twilio Auth Token (signs webhooks).
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub twilio_auth_token: String,

    /// A second Auth Token accepted during rotation.
    #[arg(long, env = "TWILIO_AUTH_TOKEN_SECONDARY", hide_env_values = true)]
    pub twilio_auth_token_secondary: Option<String>,

    /// Webhook shared-key secrets: a request carrying
    /// `X-Twilio-Webhooks-Signature-Settings` is checked with them (and the
    /// HMAC the header names, SHA-1 unless `HMAC_SHA256`) instead of the Auth
    /// Tokens. Comma separated during rotation.
    #[arg(
        long,
        env = "TWILIO_WEBHOOK_SHARED_SECRET",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub twilio_webhook_shared_secret: Vec<String>,

    /// A directory holding the secrets as files (the mounted Twilio Secret:
    /// `auth-token`, `auth-token-secondary`, `webhook-shared-secret`). When it
    /// holds any of them its values alone apply, read again every
    /// `TWILIO_CREDENTIALS_RELOAD_INTERVAL`, so a rotated or revoked secret
    /// takes effect without a restart; when it holds none, the variables
    /// above apply.
    #[arg(long, env = "TWILIO_CREDENTIALS_DIR")]
    pub twilio_credentials_dir: Option<std::path::PathBuf>,

    /// How often `TWILIO_CREDENTIALS_DIR` is read again.
    #[arg(long, env = "TWILIO_CREDENTIALS_RELOAD_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub twilio_credentials_reload_interval: Duration,

    /// Largest accepted request body; larger ones get 413.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 65_536)]
    pub max_body_bytes: usize,

    /// Requests handled at once; more are shed with 503 and Retry-After.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 512)]
    pub max_in_flight: usize,

    /// Connections open at once; further ones wait in the accept backlog until
    /// one closes. At least `MAX_IN_FLIGHT`.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// Deadline for a request head (request line and headers), from the
    /// connection's start or a request's first byte; a slower client is
    /// disconnected.
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// A keep-alive connection with no new request for this long is closed.
    /// Keep it above the idle timeout of the load balancer in front (60 s for
    /// an AWS ALB and nginx), so the balancer closes first and never sends a
    /// request on a connection ingress is closing.
    #[arg(long, env = "IDLE_TIMEOUT", default_value = "75s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Deadline for a whole request (below Twilio's 15 s).
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Deadline for Kafka to acknowledge a webhook; past it the answer is 503.
    #[arg(long, env = "PRODUCE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub produce_timeout: Duration,

    /// Deadline for storing a Conversations pre-event webhook (Twilio waits 5 s).
    #[arg(long, env = "PRE_EVENT_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    pub pre_event_timeout: Duration,

    /// Locale of voice prompts when our call URL names none.
    #[arg(long, env = "DEFAULT_LOCALE", default_value = "en")]
    pub default_locale: String,

    /// Media stream of the voice agent (`wss://…`) an accepted call connects to.
    #[arg(long, env = "VOICE_STREAM_URL")]
    pub voice_stream_url: Option<String>,

    /// Seconds the recording-consent prompt waits for an answer.
    #[arg(long, env = "GATHER_TIMEOUT_SECONDS", default_value_t = 6)]
    pub gather_timeout_seconds: u32,
}

impl Config {
    /// Cross-field checks, with a clear message for the operator.
    ///
    /// # Errors
    /// When a setting cannot work.
    pub fn validate(mut self) -> anyhow::Result<Self> {
        let base = self.public_base_url.trim().trim_end_matches('/').to_owned();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            bail!("PUBLIC_BASE_URL must start with https:// (or http:// locally), got {base:?}");
        }
        if base.contains(['?', '#']) {
            bail!("PUBLIC_BASE_URL must not have a query or fragment: {base:?}");
        }
        self.public_base_url = base;
        // Secrets are trimmed: a value read from a file often ends in a
        // newline, and a list is often written `k0, k1`.
        self.twilio_auth_token = self.twilio_auth_token.trim().to_owned();
        if self.twilio_auth_token.is_empty() {
            bail!("TWILIO_AUTH_TOKEN is empty");
        }
        self.twilio_auth_token_secondary = self
            .twilio_auth_token_secondary
            .take()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());
        self.twilio_webhook_shared_secret = std::mem::take(&mut self.twilio_webhook_shared_secret)
            .into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        if self.request_timeout >= TWILIO_WEBHOOK_TIMEOUT {
            bail!(
                "REQUEST_TIMEOUT ({:?}) must be below Twilio's {:?}",
                self.request_timeout,
                TWILIO_WEBHOOK_TIMEOUT
            );
        }
        if self.produce_timeout >= self.request_timeout {
            bail!(
                "PRODUCE_TIMEOUT ({:?}) must be below REQUEST_TIMEOUT ({:?})",
                self.produce_timeout,
                self.request_timeout
            );
        }
        if self.pre_event_timeout >= TWILIO_CONVERSATIONS_TIMEOUT {
            bail!(
                "PRE_EVENT_TIMEOUT ({:?}) must be below Twilio's {:?} for Conversations webhooks",
                self.pre_event_timeout,
                TWILIO_CONVERSATIONS_TIMEOUT
            );
        }
        if self.max_in_flight == 0 || self.max_body_bytes == 0 {
            bail!("MAX_IN_FLIGHT and MAX_BODY_BYTES must be positive");
        }
        if self.max_connections < self.max_in_flight {
            bail!(
                "MAX_CONNECTIONS ({}) must be at least MAX_IN_FLIGHT ({}): each request needs a connection",
                self.max_connections,
                self.max_in_flight
            );
        }
        if self.twilio_credentials_reload_interval.is_zero() {
            bail!("TWILIO_CREDENTIALS_RELOAD_INTERVAL must be positive");
        }
        if self.header_read_timeout.is_zero() || self.idle_timeout.is_zero() {
            bail!("HEADER_READ_TIMEOUT and IDLE_TIMEOUT must be positive");
        }
        if let Some(url) = &self.voice_stream_url
            && !url.starts_with("wss://")
            && !url.starts_with("ws://")
        {
            bail!("VOICE_STREAM_URL must be a wss:// URL, got {url:?}");
        }
        Ok(self)
    }

    /// The Auth Tokens currently valid (primary, then secondary).
    #[must_use]
    pub fn auth_tokens(&self) -> Vec<String> {
        std::iter::once(self.twilio_auth_token.clone())
            .chain(self.twilio_auth_token_secondary.clone())
            .collect()
    }

    /// The environment's webhook secrets (what applies while
    /// `TWILIO_CREDENTIALS_DIR` holds none).
    #[must_use]
    pub fn webhook_secrets(&self) -> WebhookSecrets {
        WebhookSecrets {
            auth_tokens: self.auth_tokens(),
            shared_secrets: self.twilio_webhook_shared_secret.clone(),
        }
    }

    /// Parses flags and environment, then validates.
    ///
    /// # Errors
    /// When a setting cannot work.
    pub fn from_args<I, T>(args: I) -> anyhow::Result<Self>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::try_parse_from(args)
            .context("reading the configuration")?
            .validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> anyhow::Result<Config> {
        let mut args = vec![
            "si-ingress",
            "--public-base-url",
            "https://si.example.com/",
            "--twilio-auth-token",
            "tok",
        ];
        args.extend_from_slice(extra);
        Config::from_args(args)
    }

    #[test]
    fn defaults_are_consistent() -> anyhow::Result<()> {
        let config = parse(&[])?;
        assert_eq!(config.public_base_url, "https://si.example.com");
        assert_eq!(config.auth_tokens(), ["tok"]);
        Ok(())
    }

    #[test]
    fn secrets_are_trimmed() -> anyhow::Result<()> {
        let config = Config::from_args([
            "si-ingress",
            "--public-base-url",
            "https://si.example.com",
            "--twilio-auth-token",
            "tok\n",
            "--twilio-auth-token-secondary",
            " tok2 ",
            "--twilio-webhook-shared-secret",
            "k0, k1,, ",
        ])?;
        assert_eq!(config.auth_tokens(), ["tok", "tok2"]);
        assert_eq!(config.twilio_webhook_shared_secret, ["k0", "k1"]);
        Ok(())
    }

    #[test]
    fn timeouts_must_nest_inside_twilios() {
        let error =
            parse(&["--produce-timeout", "12s"]).expect_err("produce above request timeout");
        assert!(error.to_string().contains("PRODUCE_TIMEOUT"), "{error}");
        let error = parse(&["--request-timeout", "20s"]).expect_err("above Twilio's limit");
        assert!(error.to_string().contains("REQUEST_TIMEOUT"), "{error}");
        let error = parse(&["--pre-event-timeout", "5s"]).expect_err("at Twilio's limit");
        assert!(error.to_string().contains("PRE_EVENT_TIMEOUT"), "{error}");
    }

    #[test]
    fn connection_limits_must_be_usable() {
        let error = parse(&["--max-in-flight", "64", "--max-connections", "32"])
            .expect_err("fewer connections than requests in flight");
        assert!(error.to_string().contains("MAX_CONNECTIONS"), "{error}");
        let error = parse(&["--idle-timeout", "0s"]).expect_err("no idle time at all");
        assert!(error.to_string().contains("IDLE_TIMEOUT"), "{error}");
        assert!(parse(&["--header-read-timeout", "0s"]).is_err());
    }

    #[test]
    fn the_public_url_must_be_a_base() {
        assert!(parse(&["--public-base-url", "si.example.com"]).is_err());
        assert!(parse(&["--public-base-url", "https://si.example.com/?x=1"]).is_err());
    }

    #[test]
    fn the_secondary_token_is_accepted_too() -> anyhow::Result<()> {
        let config = parse(&["--twilio-auth-token-secondary", "next"])?;
        assert_eq!(config.auth_tokens(), ["tok", "next"]);
        Ok(())
    }
}
