//! What egress does when Twilio refuses its credentials (401 / 20003).
//!
//! A 401 is a problem of the credentials, not of the operation: every request
//! with them would be refused. So the first one closes a hold that every
//! sender respects ([`AuthGate`]): no operation starts while the credentials
//! are rejected, except **one probe** at a time, once per probe interval or
//! as soon as the credentials change (a reload found new ones). The probe is
//! an ordinary operation's request; any answer that proves the credentials
//! work (2xx, or a 4xx other than 401) opens the hold and the held operations
//! go at once. Operations are never dead-lettered for it and refused attempts
//! are not counted against `EGRESS_MAX_ATTEMPTS`; only an operation's own
//! `not_after` ends it.
//!
//! The gate counts every refusal (`si_egress_twilio_auth_failures_total`),
//! shows the state (`si_egress_twilio_credentials_rejected` 1/0), asks for a
//! prompt reload of the credentials, and logs the first refusal, then at most
//! once per [`LOG_INTERVAL`] how many were refused meanwhile, then the
//! recovery.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge};
use si_runtime::admin::ReadinessDetail;
use tokio::sync::{Notify, watch};

use crate::credentials::{CredentialStore, LogEvery};
use crate::twilio::Answer;

/// At most one "still rejected" log line per this interval.
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);

/// What a Twilio answer says about the credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 401 / 20003: refused.
    Rejected,
    /// Twilio processed the request past authentication (2xx, or a 4xx
    /// other than 401): the credentials work.
    Accepted,
    /// Nothing learnt (5xx, 429, network error).
    Unknown,
}

impl Verdict {
    /// The verdict of `answer`.
    #[must_use]
    pub fn of(answer: &Answer) -> Self {
        match answer {
            Answer::Retry { auth: true, .. } => Self::Rejected,
            Answer::Accepted { .. } | Answer::Permanent { .. } => Self::Accepted,
            Answer::Retry { .. } => Self::Unknown,
        }
    }
}

/// How the gate reports: metrics and a `/readyz` line.
#[derive(Debug, Clone)]
pub struct AuthMetrics {
    /// `si_egress_twilio_auth_failures_total`.
    pub failures: IntCounter,
    /// `si_egress_twilio_credentials_rejected`.
    pub rejected: IntGauge,
    /// `twilio-credentials: ...` on `/readyz` (informational: refused
    /// credentials never make the pod unready).
    pub readyz: Option<ReadinessDetail>,
}

impl AuthMetrics {
    fn report(&self, rejected: bool, probe_interval: Duration) {
        self.rejected.set(i64::from(rejected));
        if let Some(readyz) = &self.readyz {
            readyz.set(if rejected {
                format!(
                    "refused by Twilio (401); operations held, one probe every {}",
                    humantime::format_duration(probe_interval)
                )
            } else {
                "not refused".to_owned()
            });
        }
    }
}

#[derive(Debug)]
struct Rejected {
    since: Instant,
    /// The credentials generation Twilio refused last.
    generation: u64,
    next_probe: Instant,
    probing: bool,
    refused: u64,
    log: LogEvery,
}

/// Whether a sender may start an attempt now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Yes (the credentials are not rejected, or a probe is due).
    Open,
    /// No: wait for a change of the gate, or until this instant when set
    /// (the next probe).
    Until(Option<Instant>),
}

/// Taken right before an attempt starts.
#[derive(Debug)]
pub enum Admit {
    /// Go.
    Open,
    /// Go as the probe: hand its answer to [`AuthGate::observe`] with it.
    Probe(Probe),
    /// Held: do not send.
    Held,
}

/// The one probe allowed while the credentials are rejected. Dropped without
/// an answer (the attempt made no request), it lets the next sender probe.
#[derive(Debug)]
pub struct Probe {
    gate: Arc<AuthGate>,
    answered: bool,
}

impl Drop for Probe {
    fn drop(&mut self) {
        if !self.answered {
            self.gate.probe_unused(Instant::now());
        }
    }
}

/// The shared "credentials rejected" hold.
#[derive(Debug)]
pub struct AuthGate {
    state: Mutex<Option<Rejected>>,
    changes: watch::Sender<u64>,
    store: Arc<CredentialStore>,
    probe_interval: Duration,
    reload: Arc<Notify>,
    metrics: AuthMetrics,
}

impl AuthGate {
    /// A gate over `store`'s credentials; `reload` is notified when Twilio
    /// refuses them (a prompt reload).
    #[must_use]
    pub fn new(
        store: Arc<CredentialStore>,
        probe_interval: Duration,
        reload: Arc<Notify>,
        metrics: AuthMetrics,
    ) -> Self {
        metrics.report(false, probe_interval);
        Self {
            state: Mutex::new(None),
            changes: watch::Sender::new(0),
            store,
            probe_interval,
            reload,
            metrics,
        }
    }

    /// Changes whenever the hold may have opened (or a probe became due).
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Whether Twilio refuses the current credentials as far as egress knows.
    #[must_use]
    pub fn is_rejected(&self) -> bool {
        self.lock().is_some()
    }

    /// Whether a sender may start an attempt at `now`.
    #[must_use]
    pub fn hold(&self, now: Instant) -> Hold {
        let state = self.lock();
        match state.as_ref() {
            None => Hold::Open,
            Some(r) if r.probing => Hold::Until(None),
            Some(r) if self.probe_due(r, now) => Hold::Open,
            Some(r) => Hold::Until(Some(r.next_probe)),
        }
    }

    /// Takes the right to send at `now`: open, the probe, or held.
    #[must_use]
    pub fn admit(self: &Arc<Self>, now: Instant) -> Admit {
        let mut state = self.lock();
        match state.as_mut() {
            None => Admit::Open,
            Some(r) if !r.probing && self.probe_due(r, now) => {
                r.probing = true;
                Admit::Probe(Probe {
                    gate: Arc::clone(self),
                    answered: false,
                })
            }
            Some(_) => Admit::Held,
        }
    }

    fn probe_due(&self, r: &Rejected, now: Instant) -> bool {
        now >= r.next_probe || self.store.generation() != r.generation
    }

    /// Records what Twilio answered to a request made with credentials of
    /// `generation` (the probe's, if it was the probe).
    pub fn observe(&self, verdict: Verdict, generation: u64, probe: Option<Probe>, now: Instant) {
        let was_probe = probe.is_some();
        if let Some(mut probe) = probe {
            probe.answered = true;
        }
        let mut state = self.lock();
        match verdict {
            Verdict::Rejected => {
                self.metrics.failures.inc();
                self.rejected(&mut state, generation, was_probe, now);
            }
            Verdict::Accepted => {
                if state.as_ref().is_some_and(|r| generation >= r.generation) {
                    if let Some(r) = state.take() {
                        self.metrics.report(false, self.probe_interval);
                        tracing::info!(
                            rejected_for = ?now.saturating_duration_since(r.since),
                            refused_requests = r.refused,
                            "Twilio accepts egress's credentials again: held operations go on"
                        );
                    }
                    self.changed();
                } else if was_probe && let Some(r) = state.as_mut() {
                    r.probing = false;
                    self.changed();
                }
            }
            Verdict::Unknown => {
                if was_probe && let Some(r) = state.as_mut() {
                    r.probing = false;
                    r.next_probe = now + self.probe_interval;
                    self.changed();
                }
            }
        }
    }

    fn rejected(
        &self,
        state: &mut Option<Rejected>,
        generation: u64,
        was_probe: bool,
        now: Instant,
    ) {
        let current = self.store.generation();
        match state.as_mut() {
            None if generation < current => {
                // Refused credentials that a reload has replaced already:
                // the new ones deserve their own try.
            }
            None => {
                let mut log = LogEvery::new(LOG_INTERVAL);
                let _ = log.hit(now);
                *state = Some(Rejected {
                    since: now,
                    generation,
                    next_probe: now + self.probe_interval,
                    probing: false,
                    refused: 1,
                    log,
                });
                self.metrics.report(true, self.probe_interval);
                let dir = self.store.dir();
                tracing::warn!(
                    kind = self.store.current().credentials.kind.as_str(),
                    credentials_dir = ?dir,
                    probe_interval = ?self.probe_interval,
                    "Twilio refuses egress's credentials (401 / 20003): every sender holds its \
                     operations (none is dropped) and one request probes per interval; write \
                     working credentials to the Secret, they are picked up without a restart"
                );
                self.store.refused(generation);
                self.reload.notify_one();
            }
            Some(r) => {
                r.refused += 1;
                if was_probe {
                    r.probing = false;
                }
                if generation >= r.generation {
                    r.generation = generation;
                    if was_probe {
                        r.next_probe = now + self.probe_interval;
                    }
                    self.store.refused(generation);
                    self.reload.notify_one();
                }
                if let Some(refused) = r.log.hit(now) {
                    tracing::warn!(
                        refused_since_last_log = refused,
                        rejected_for = ?now.saturating_duration_since(r.since),
                        "Twilio still refuses egress's credentials; operations stay held"
                    );
                }
                if was_probe {
                    self.changed();
                }
            }
        }
    }

    /// A reload swapped in new credentials: a held gate lets one probe try
    /// them at once.
    pub fn credentials_changed(&self) {
        self.changed();
    }

    fn probe_unused(&self, now: Instant) {
        if let Some(r) = self.lock().as_mut() {
            r.probing = false;
            r.next_probe = r.next_probe.min(now);
        }
        self.changed();
    }

    fn changed(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Rejected>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::credentials::{AUTH_TOKEN_FILE, Source};

    struct Fixture {
        gate: Arc<AuthGate>,
        store: Arc<CredentialStore>,
        dir: PathBuf,
        reload: Arc<Notify>,
        metrics: AuthMetrics,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    async fn fixture(probe_interval: Duration) -> Fixture {
        let dir = std::env::temp_dir().join(format!(
            "si-egress-auth-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(AUTH_TOKEN_FILE), "wrong").unwrap();
        let store = Arc::new(
            CredentialStore::load(Source {
                account_sid: "AC1".into(),
                dir: Some(dir.clone()),
                env: Err("none".into()),
            })
            .await
            .unwrap(),
        );
        let metrics = AuthMetrics {
            failures: IntCounter::new("f", "f").unwrap(),
            rejected: IntGauge::new("r", "r").unwrap(),
            readyz: None,
        };
        let reload = Arc::new(Notify::new());
        let gate = Arc::new(AuthGate::new(
            Arc::clone(&store),
            probe_interval,
            Arc::clone(&reload),
            metrics.clone(),
        ));
        Fixture {
            gate,
            store,
            dir,
            reload,
            metrics,
        }
    }

    #[tokio::test]
    async fn a_refusal_holds_every_sender_until_one_probe_succeeds() {
        let f = fixture(Duration::from_secs(60)).await;
        let gate = &f.gate;
        let t0 = Instant::now();
        assert_eq!(gate.hold(t0), Hold::Open);
        assert!(matches!(gate.admit(t0), Admit::Open));

        // Three requests were in flight; all come back 401.
        for _ in 0..3 {
            gate.observe(Verdict::Rejected, 1, None, t0);
        }
        assert_eq!(f.metrics.failures.get(), 3);
        assert_eq!(f.metrics.rejected.get(), 1);
        let probe_at = t0 + Duration::from_secs(60);
        assert_eq!(gate.hold(t0), Hold::Until(Some(probe_at)));
        assert!(matches!(gate.admit(t0), Admit::Held));
        // A prompt reload was asked for.
        tokio::time::timeout(Duration::from_secs(5), f.reload.notified())
            .await
            .unwrap();

        // The probe interval passes: exactly one sender gets the probe.
        let later = probe_at + Duration::from_millis(1);
        assert_eq!(gate.hold(later), Hold::Open);
        let Admit::Probe(probe) = gate.admit(later) else {
            panic!("the probe")
        };
        assert!(
            matches!(gate.admit(later), Admit::Held),
            "one probe at a time"
        );
        assert_eq!(gate.hold(later), Hold::Until(None));

        // Refused again: held for another interval.
        gate.observe(Verdict::Rejected, 1, Some(probe), later);
        assert_eq!(
            gate.hold(later),
            Hold::Until(Some(later + Duration::from_secs(60)))
        );
        assert_eq!(f.metrics.rejected.get(), 1);

        // The next probe is answered: open for all.
        let again = later + Duration::from_secs(61);
        let Admit::Probe(probe) = gate.admit(again) else {
            panic!("the probe")
        };
        gate.observe(Verdict::Accepted, 1, Some(probe), again);
        assert_eq!(gate.hold(again), Hold::Open);
        assert!(!gate.is_rejected());
        assert_eq!(f.metrics.rejected.get(), 0);
        assert_eq!(f.metrics.failures.get(), 4);
    }

    #[tokio::test]
    async fn new_credentials_are_probed_at_once() {
        let f = fixture(Duration::from_secs(3600)).await;
        let t0 = Instant::now();
        let mut changes = f.gate.subscribe();
        f.gate.observe(Verdict::Rejected, 1, None, t0);
        assert!(matches!(f.gate.hold(t0), Hold::Until(Some(_))));

        std::fs::write(f.dir.join(AUTH_TOKEN_FILE), "right").unwrap();
        assert_eq!(f.store.reload().await.unwrap(), Some(2));
        changes.borrow_and_update();
        f.gate.credentials_changed();
        assert!(changes.has_changed().unwrap(), "senders are woken");
        assert_eq!(f.gate.hold(t0), Hold::Open, "no need to wait an hour");
        let Admit::Probe(probe) = f.gate.admit(t0) else {
            panic!("the probe")
        };
        // A late 401 for the old credentials changes nothing.
        f.gate.observe(Verdict::Rejected, 1, None, t0);
        assert!(matches!(f.gate.admit(t0), Admit::Held));
        f.gate.observe(Verdict::Accepted, 2, Some(probe), t0);
        assert!(!f.gate.is_rejected());
    }

    #[tokio::test]
    async fn a_refusal_of_replaced_credentials_does_not_close_the_gate() {
        let f = fixture(Duration::from_secs(60)).await;
        std::fs::write(f.dir.join(AUTH_TOKEN_FILE), "right").unwrap();
        assert_eq!(f.store.reload().await.unwrap(), Some(2));
        let t0 = Instant::now();
        f.gate.observe(Verdict::Rejected, 1, None, t0);
        assert!(!f.gate.is_rejected());
        assert_eq!(f.metrics.failures.get(), 1, "still counted");
    }

    #[tokio::test]
    async fn a_probe_that_sent_nothing_passes_the_turn() {
        let f = fixture(Duration::from_secs(60)).await;
        let t0 = Instant::now();
        f.gate.observe(Verdict::Rejected, 1, None, t0);
        let due = t0 + Duration::from_secs(61);
        let Admit::Probe(probe) = f.gate.admit(due) else {
            panic!("the probe")
        };
        drop(probe);
        assert!(matches!(f.gate.admit(due), Admit::Probe(_)));
        // An inconclusive answer (5xx) waits for the next interval.
        let Admit::Probe(probe) = f.gate.admit(due) else {
            panic!("the probe")
        };
        f.gate.observe(Verdict::Unknown, 1, Some(probe), due);
        assert_eq!(
            f.gate.hold(due),
            Hold::Until(Some(due + Duration::from_secs(60)))
        );
    }

    #[test]
    fn answers_give_verdicts() {
        let retry = |auth| Answer::Retry {
            code: None,
            http_status: Some(if auth { 401 } else { 503 }),
            message: String::new(),
            retry_after: None,
            auth,
        };
        assert_eq!(Verdict::of(&retry(true)), Verdict::Rejected);
        assert_eq!(Verdict::of(&retry(false)), Verdict::Unknown);
        let permanent = Answer::Permanent {
            code: Some(21211),
            http_status: 400,
            message: String::new(),
        };
        assert_eq!(Verdict::of(&permanent), Verdict::Accepted);
    }
}
