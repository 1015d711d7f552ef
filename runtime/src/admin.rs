//! The admin listener of a stage: `/metrics` (Prometheus text format),
//! `/healthz` (the process is alive) and `/readyz` (every readiness check
//! passes; informational details, such as whether Twilio answers, are listed
//! below the verdict without changing it).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Named readiness checks; the stage is ready when all of them are.
///
/// A new `Readiness` holds one check, [`STARTING`], that is not ready: the
/// admin listener usually answers before the stage has registered what it
/// waits for (tables loading, `partitions`), and an empty set of checks must
/// not read as ready. Whoever registers the last check calls
/// [`Readiness::started`] ([`crate::stream::run`] does, after `partitions`).
///
/// Besides checks, a stage may publish [`ReadinessDetail`]s: lines shown on
/// `/readyz` that never make the stage unready (for example whether a remote
/// API answers: an outage there must not take healthy pods out of service).
#[derive(Debug, Clone)]
pub struct Readiness {
    checks: Arc<Mutex<BTreeMap<&'static str, bool>>>,
    details: Arc<Mutex<BTreeMap<&'static str, String>>>,
}

/// The check every stage starts with: cleared by [`Readiness::started`] once
/// the stage's own checks exist.
pub const STARTING: &str = "starting";

impl Default for Readiness {
    fn default() -> Self {
        Self {
            checks: Arc::new(Mutex::new(BTreeMap::from([(STARTING, false)]))),
            details: Arc::default(),
        }
    }
}

/// One readiness check, set by whoever owns it.
#[derive(Debug, Clone)]
pub struct ReadinessCheck {
    name: &'static str,
    checks: Arc<Mutex<BTreeMap<&'static str, bool>>>,
}

/// One informational line of `/readyz` (`name: value`), set by whoever owns
/// it; it never gates readiness.
#[derive(Debug, Clone)]
pub struct ReadinessDetail {
    name: &'static str,
    details: Arc<Mutex<BTreeMap<&'static str, String>>>,
}

impl Readiness {
    /// Adds a check that starts not ready.
    #[must_use]
    pub fn check(&self, name: &'static str) -> ReadinessCheck {
        self.lock().insert(name, false);
        ReadinessCheck {
            name,
            checks: Arc::clone(&self.checks),
        }
    }

    /// Says that every check the stage waits for is registered: clears
    /// [`STARTING`]. Checks added afterwards still count.
    pub fn started(&self) {
        self.lock().insert(STARTING, true);
    }

    /// Names of the checks that are not ready; empty when ready.
    #[must_use]
    pub fn pending(&self) -> Vec<&'static str> {
        self.lock()
            .iter()
            .filter(|(_, ready)| !**ready)
            .map(|(name, _)| *name)
            .collect()
    }

    /// Adds an informational detail (shown once set; never gates readiness).
    #[must_use]
    pub fn detail(&self, name: &'static str) -> ReadinessDetail {
        ReadinessDetail {
            name,
            details: Arc::clone(&self.details),
        }
    }

    /// The details set so far, by name.
    #[must_use]
    pub fn details(&self) -> Vec<(&'static str, String)> {
        self.details
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, value)| (*name, value.clone()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, bool>> {
        self.checks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ReadinessCheck {
    /// Marks this check ready or not.
    pub fn set(&self, ready: bool) {
        self.checks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(self.name, ready);
    }
}

impl ReadinessDetail {
    /// Replaces the detail's value.
    pub fn set(&self, value: impl Into<String>) {
        self.details
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(self.name, value.into());
    }
}

#[derive(Clone)]
struct AdminState {
    registry: Registry,
    readiness: Readiness,
}

/// A running admin listener.
#[derive(Debug)]
pub struct AdminServer {
    /// The address it listens on (useful when bound to port 0).
    pub local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    /// Binds `addr` and serves until `shutdown` is cancelled.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn start(
        addr: SocketAddr,
        registry: Registry,
        readiness: Readiness,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(ready))
            .with_state(AdminState {
                registry,
                readiness,
            });
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "admin listener failed");
            }
        });
        Ok(Self { local_addr, task })
    }

    /// Waits for the listener to stop (after shutdown). A scrape still open after a
    /// few seconds is cut off rather than holding the process.
    pub async fn stopped(mut self) {
        if tokio::time::timeout(Duration::from_secs(3), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

/// Runs `work` with the admin listener (metrics, health, readiness) serving
/// on `addr`, then stops the listener: the shape of every stage's `run`.
///
/// # Errors
/// When `addr` cannot be bound, or what `work` returns.
pub async fn with_admin<T>(
    addr: SocketAddr,
    registry: Registry,
    readiness: Readiness,
    shutdown: &CancellationToken,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let stop = shutdown.child_token();
    let admin = AdminServer::start(addr, registry, readiness, stop.clone())
        .await
        .map_err(|e| anyhow::anyhow!("binding the admin listener on {addr}: {e}"))?;
    tracing::info!(addr = %admin.local_addr, "admin listening");
    let result = work.await;
    stop.cancel();
    admin.stopped().await;
    result
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut body = Vec::new();
    let families = state.registry.gather();
    match TextEncoder::new().encode(&families, &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            body,
        )
            .into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

/// `ready` or `not ready: <pending checks>`, then one `name: value` line per
/// detail. Only the checks decide the status code.
async fn ready(State(state): State<AdminState>) -> impl IntoResponse {
    let pending = state.readiness.pending();
    let (status, mut body) = if pending.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", pending.join(", ")),
        )
    };
    for (name, value) in state.readiness.details() {
        body.push_str(&format!("{name}: {value}\n"));
    }
    (status, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_is_not_ready_before_it_registered_its_checks() {
        let readiness = Readiness::default();
        assert_eq!(readiness.pending(), vec![STARTING]);
        // A check that is ready at once does not make the stage ready while
        // it may still register others.
        readiness.check("table:a").set(true);
        assert_eq!(readiness.pending(), vec![STARTING]);
        let partitions = readiness.check("partitions");
        readiness.started();
        assert_eq!(readiness.pending(), vec!["partitions"]);
        partitions.set(true);
        assert!(readiness.pending().is_empty());
    }

    #[tokio::test]
    async fn readiness_metrics_and_health_are_served() -> anyhow::Result<()> {
        let registry = Registry::new();
        let counter = prometheus::IntCounter::new("si_test_total", "a test counter")?;
        registry.register(Box::new(counter.clone()))?;
        counter.inc_by(3);
        let readiness = Readiness::default();
        let shutdown = CancellationToken::new();
        let server = AdminServer::start(
            "127.0.0.1:0".parse()?,
            registry,
            readiness.clone(),
            shutdown.clone(),
        )
        .await?;
        let base = format!("http://{}", server.local_addr);

        let health = reqwest::get(format!("{base}/healthz")).await?;
        assert_eq!(health.status(), 200);

        // Before the stage registered anything: not ready, and says why.
        let starting = reqwest::get(format!("{base}/readyz")).await?;
        assert_eq!(starting.status(), 503);
        assert_eq!(starting.text().await?, "not ready: starting\n");

        let kafka = readiness.check("kafka");
        readiness.started();
        let not_ready = reqwest::get(format!("{base}/readyz")).await?;
        assert_eq!(not_ready.status(), 503);
        assert_eq!(not_ready.text().await?, "not ready: kafka\n");

        kafka.set(true);
        assert_eq!(reqwest::get(format!("{base}/readyz")).await?.status(), 200);

        // A detail is shown but never gates: the stage stays ready however
        // bad the news in it.
        let remote = readiness.detail("remote");
        remote.set("unreachable (connect error)");
        let detailed = reqwest::get(format!("{base}/readyz")).await?;
        assert_eq!(detailed.status(), 200);
        assert_eq!(
            detailed.text().await?,
            "ready\nremote: unreachable (connect error)\n"
        );
        remote.set("reachable");
        assert_eq!(
            reqwest::get(format!("{base}/readyz")).await?.text().await?,
            "ready\nremote: reachable\n"
        );
        assert!(readiness.pending().is_empty());

        let metrics = reqwest::get(format!("{base}/metrics"))
            .await?
            .text()
            .await?;
        assert!(metrics.contains("si_test_total 3"), "{metrics}");

        shutdown.cancel();
        server.stopped().await;
        Ok(())
    }
}
