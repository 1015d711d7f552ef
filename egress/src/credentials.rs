//! Twilio credentials ([`si_twilio_credentials`]: from the environment or
//! the mounted Secret's files, `TWILIO_CREDENTIALS_DIR`), read again by the
//! shared loop on an interval and soon after Twilio refuses a request, so a
//! rotated secret is used without a restart; a change opens the
//! [`AuthGate`]'s hold at once.

use std::sync::Arc;
use std::time::Duration;

pub use si_twilio_credentials::*;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::auth::AuthGate;
use crate::metrics::EgressMetrics;

/// Reloads the credentials every `interval` and, at most once per
/// [`MIN_PROMPT_RELOAD_GAP`], when `wanted` is notified (Twilio refused the
/// credentials); counts each reload and tells `gate` when they changed.
/// Ends with `shutdown`.
pub async fn run_reloads(
    store: Arc<CredentialStore>,
    gate: Arc<AuthGate>,
    wanted: Arc<Notify>,
    interval: Duration,
    metrics: EgressMetrics,
    shutdown: CancellationToken,
) {
    let observe = move |outcome: Reloaded| {
        metrics
            .credential_reloads
            .with_label_values(&[outcome.as_str()])
            .inc();
        if outcome == Reloaded::Changed {
            gate.credentials_changed();
        }
    };
    si_twilio_credentials::reload_loop(store, interval, Some(wanted), observe, shutdown).await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::time::Instant;

    use super::*;

    const ACCOUNT: &str = "AC00000000000000000000000000000000";

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "si-egress-credentials-{name}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Writes `value` to `dir/name` the way the kubelet swaps a Secret: a new
    /// file renamed over the old one.
    fn write(dir: &Path, name: &str, value: &str) {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, value).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }

    #[tokio::test]
    async fn a_refusal_makes_the_loop_reload_at_once_and_tell_the_gate() {
        use prometheus::{IntCounter, IntGauge};

        use crate::auth::{AuthMetrics, Hold, Verdict};

        let dir = temp_dir("loop");
        write(&dir, AUTH_TOKEN_FILE, "old");
        let store = Arc::new(
            CredentialStore::load(Source {
                account_sid: ACCOUNT.into(),
                dir: Some(dir.clone()),
                env: Err("no env".into()),
            })
            .await
            .unwrap(),
        );
        let wanted = Arc::new(Notify::new());
        let gate = Arc::new(AuthGate::new(
            Arc::clone(&store),
            Duration::from_secs(3600),
            Arc::clone(&wanted),
            AuthMetrics {
                failures: IntCounter::new("f", "f").unwrap(),
                rejected: IntGauge::new("r", "r").unwrap(),
                readyz: None,
            },
        ));
        let stage = si_runtime::metrics::StageMetrics::new("egress");
        let metrics = EgressMetrics::new(&stage).unwrap();
        let shutdown = CancellationToken::new();
        // An hour between scheduled reloads: only the refusal can trigger one.
        let task = tokio::spawn(run_reloads(
            Arc::clone(&store),
            Arc::clone(&gate),
            wanted,
            Duration::from_secs(3600),
            metrics.clone(),
            shutdown.clone(),
        ));
        let mut changes = gate.subscribe();
        write(&dir, AUTH_TOKEN_FILE, "new");
        let refused_at = Instant::now();
        gate.observe(Verdict::Rejected, 1, None, refused_at);
        assert!(matches!(gate.hold(refused_at), Hold::Until(Some(_))));
        tokio::time::timeout(Duration::from_secs(10), async {
            while store.generation() != 2 {
                changes.changed().await.unwrap();
            }
        })
        .await
        .expect("reloaded and the gate told");
        let took = refused_at.elapsed();
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert_eq!(store.current().credentials.password, "new");
        assert_eq!(
            gate.hold(Instant::now()),
            Hold::Open,
            "the new credentials may be probed at once"
        );
        assert_eq!(
            metrics
                .credential_reloads
                .with_label_values(&["changed"])
                .get(),
            1
        );
        shutdown.cancel();
        task.await.unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
