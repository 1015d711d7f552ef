//! Twilio connectivity health: a cheap authenticated GET (by default the
//! Account resource, `GET /2010-04-01/Accounts/{AccountSid}.json`) every
//! `TWILIO_HEALTH_INTERVAL`, reported as `si_egress_twilio_reachable` (1/0),
//! `si_egress_twilio_health_checks_total{result}` and a `twilio` line on
//! `/readyz`. It never makes the pod unready or unhealthy: a Twilio outage
//! must not make Kubernetes restart or drain healthy pods (operations wait
//! in Kafka and egress retries them). A check that proves the credentials
//! work also opens a credentials hold ([`AuthGate`]) when no operation is
//! waiting to probe it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, IntGauge, Opts};
use si_runtime::admin::ReadinessDetail;
use si_runtime::metrics::StageMetrics;
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthGate, Verdict};
use crate::config::TwilioArgs;
use crate::twilio::TwilioClient;

/// What one health check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// 2xx: reachable, credentials accepted.
    Ok,
    /// 401 / 403: reachable, the credentials are refused (or may not read
    /// the resource: a Standard API key and the Account resource).
    Rejected(u16),
    /// Another answer below 500 (a wrong path, 429).
    Other(u16),
    /// 5xx: Twilio answers but fails.
    ServerError(u16),
    /// No answer: connect error, timeout, TLS.
    Unreachable(&'static str),
}

impl Health {
    /// From the HTTP status or the reason there was none.
    #[must_use]
    pub fn of(result: Result<u16, &'static str>) -> Self {
        match result {
            Ok(status) if (200..300).contains(&status) => Self::Ok,
            Ok(status @ (401 | 403)) => Self::Rejected(status),
            Ok(status) if status >= 500 => Self::ServerError(status),
            Ok(status) => Self::Other(status),
            Err(why) => Self::Unreachable(why),
        }
    }

    /// Whether Twilio's API answered as a working service (anything but a
    /// 5xx or no answer).
    #[must_use]
    pub fn reachable(self) -> bool {
        !matches!(self, Self::ServerError(_) | Self::Unreachable(_))
    }

    /// The `result` label.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Rejected(_) => "rejected",
            Self::Other(_) => "other",
            Self::ServerError(_) => "server_error",
            Self::Unreachable(_) => "unreachable",
        }
    }

    /// The `/readyz` line.
    #[must_use]
    pub fn detail(self) -> String {
        match self {
            Self::Ok => "reachable, credentials accepted".to_owned(),
            Self::Rejected(status) => format!("reachable, credentials refused (HTTP {status})"),
            Self::Other(status) => format!("reachable, answered HTTP {status}"),
            Self::ServerError(status) => format!("unreachable (HTTP {status})"),
            Self::Unreachable(why) => format!("unreachable ({why})"),
        }
    }
}

/// The health check's metrics (registered only when it runs, so a
/// switched-off check exports no 0 that an alert would read as an outage).
#[derive(Debug, Clone)]
pub struct HealthMetrics {
    /// `si_egress_twilio_reachable`.
    pub reachable: IntGauge,
    /// `si_egress_twilio_health_checks_total{result}`.
    pub checks: IntCounterVec,
}

impl HealthMetrics {
    /// Registers the metrics on the stage registry.
    ///
    /// # Errors
    /// When they are registered twice.
    pub fn register(stage: &StageMetrics) -> anyhow::Result<Self> {
        let reachable = IntGauge::new(
            "si_egress_twilio_reachable",
            "1 when egress's last Twilio health check got an answer below 500 (TWILIO_HEALTH_PATH), else 0",
        )?;
        stage.registry().register(Box::new(reachable.clone()))?;
        let checks = IntCounterVec::new(
            Opts::new(
                "si_egress_twilio_health_checks_total",
                "Twilio health checks, by result: ok, rejected, other, server_error, unreachable",
            ),
            &["result"],
        )?;
        stage.registry().register(Box::new(checks.clone()))?;
        Ok(Self { reachable, checks })
    }
}

/// The URL the health check fetches.
#[must_use]
pub fn url(args: &TwilioArgs) -> String {
    format!(
        "{}{}",
        args.api_base_url.trim_end_matches('/'),
        args.health_path.replace("{AccountSid}", &args.account_sid)
    )
}

/// Checks every `interval` until `shutdown`.
pub async fn run(
    client: TwilioClient,
    url: String,
    interval: Duration,
    gate: Arc<AuthGate>,
    metrics: HealthMetrics,
    detail: ReadinessDetail,
    shutdown: CancellationToken,
) {
    let mut last: Option<Health> = None;
    loop {
        let check = client.get_status(&url);
        let (result, generation) = tokio::select! {
            () = shutdown.cancelled() => return,
            done = check => done,
        };
        let health = Health::of(result);
        metrics.reachable.set(i64::from(health.reachable()));
        metrics.checks.with_label_values(&[health.label()]).inc();
        detail.set(health.detail());
        if health == Health::Ok {
            gate.observe(Verdict::Accepted, generation, None, Instant::now());
        }
        // Log changes only (never the URL: it holds the account SID).
        if last.is_none_or(|l| l.label() != health.label()) {
            if health.reachable() {
                tracing::info!(twilio = %health.detail(), "Twilio health check");
            } else {
                tracing::warn!(twilio = %health.detail(), "Twilio health check");
            }
        }
        last = Some(health);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        twilio: TwilioArgs,
    }

    #[test]
    fn the_url_names_the_account() {
        let args = Args::try_parse_from([
            "t",
            "--account-sid",
            "AC123",
            "--api-base-url",
            "http://127.0.0.1:8090/",
        ])
        .unwrap();
        assert_eq!(
            url(&args.twilio),
            "http://127.0.0.1:8090/2010-04-01/Accounts/AC123.json"
        );
        let args = Args::try_parse_from([
            "t",
            "--account-sid",
            "AC123",
            "--health-path",
            "/2010-04-01/Accounts/{AccountSid}/Messages.json?PageSize=1",
        ])
        .unwrap();
        assert_eq!(
            url(&args.twilio),
            "https://api.twilio.com/2010-04-01/Accounts/AC123/Messages.json?PageSize=1"
        );
    }

    #[test]
    fn answers_are_read_as_health() {
        assert_eq!(Health::of(Ok(200)), Health::Ok);
        assert!(Health::of(Ok(200)).reachable());
        let refused = Health::of(Ok(401));
        assert_eq!(refused.label(), "rejected");
        assert!(refused.reachable(), "Twilio answered");
        assert_eq!(
            refused.detail(),
            "reachable, credentials refused (HTTP 401)"
        );
        assert!(!Health::of(Ok(503)).reachable());
        assert_eq!(Health::of(Ok(404)).label(), "other");
        let down = Health::of(Err("connect error"));
        assert!(!down.reachable());
        assert_eq!(down.detail(), "unreachable (connect error)");
    }
}
