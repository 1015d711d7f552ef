//! The one loop every stage reads its secrets again with: on an interval,
//! and (egress, media) soon after Twilio refuses the credentials in force.
//! A change is logged by what changed (never a value); failures at most once
//! a minute, with how many there were since; every reload is reported to the
//! caller, for its metric and whatever else a change must wake.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The shortest time between two reloads asked for by refused requests.
pub const MIN_PROMPT_RELOAD_GAP: Duration = Duration::from_secs(1);

/// How often a failing reload is logged at most.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Secrets that can be read again from where they came from.
pub trait Reload: Send + Sync + 'static {
    /// What they are, for the log ("Twilio credentials").
    const WHAT: &'static str;

    /// Reads the source again and swaps in what it holds; whether what is in
    /// force changed.
    ///
    /// # Errors
    /// When the source cannot be used; what is in force stays.
    fn reload(&self) -> impl Future<Output = Result<bool, String>> + Send;

    /// Logs a change: which kind, how many, never a value.
    fn log_change(&self);

    /// After a prompted reload found the source unchanged: whatever else
    /// may help once Twilio refused what is in force (the rotation's other
    /// Auth Token); whether it changed what is in force (it logs why).
    fn after_refusal(&self) -> bool {
        false
    }
}

/// How one reload came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// New secrets are in force.
    Changed,
    /// The source holds what is in force.
    Unchanged,
    /// The source could not be used; what is in force stays.
    Failed,
}

impl Reloaded {
    /// The value of a metric's `result` label.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Changed => "changed",
            Self::Unchanged => "unchanged",
            Self::Failed => "error",
        }
    }
}

/// Rate-limits a repeated log line: the first event is logged, then at most
/// one per interval, saying how many happened in between.
#[derive(Debug, Clone)]
pub struct LogEvery {
    interval: Duration,
    last: Option<Instant>,
    unlogged: u64,
}

impl LogEvery {
    /// A limiter that logs at most once per `interval`.
    #[must_use]
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            unlogged: 0,
        }
    }

    /// Counts one event at `now`. `Some(n)` when it is to be logged, `n`
    /// being the events since the last logged one (this one included).
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        let due = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if !due {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }

    /// Events counted since the last logged one.
    #[must_use]
    pub fn unlogged(&self) -> u64 {
        self.unlogged
    }
}

/// Reloads `store` every `interval` and, when `prompt` is given, at most
/// once per [`MIN_PROMPT_RELOAD_GAP`] after it is notified (Twilio refused
/// the credentials in force; then, when the source holds what it held,
/// [`Reload::after_refusal`]). `observe` hears every outcome, after the
/// store has swapped. Ends with `shutdown`.
pub async fn reload_loop<R: Reload>(
    store: Arc<R>,
    interval: Duration,
    prompt: Option<Arc<Notify>>,
    mut observe: impl FnMut(Reloaded) + Send,
    shutdown: CancellationToken,
) {
    let mut last = tokio::time::Instant::now();
    let mut failures = LogEvery::new(FAILURE_LOG_INTERVAL);
    loop {
        let prompted = tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep_until(last + interval) => false,
            () = async {
                match &prompt {
                    Some(prompt) => prompt.notified().await,
                    None => std::future::pending().await,
                }
            } => {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep_until(last + MIN_PROMPT_RELOAD_GAP) => true,
                }
            }
        };
        last = tokio::time::Instant::now();
        let outcome = match store.reload().await {
            Ok(true) => {
                failures = LogEvery::new(FAILURE_LOG_INTERVAL);
                store.log_change();
                Reloaded::Changed
            }
            Ok(false) if prompted && store.after_refusal() => Reloaded::Changed,
            Ok(false) => Reloaded::Unchanged,
            Err(error) => {
                if let Some(failed) = failures.hit(Instant::now()) {
                    tracing::warn!(
                        error,
                        failed_since_last_log = failed,
                        "cannot reload the {}; the ones in force stay",
                        R::WHAT
                    );
                }
                Reloaded::Failed
            }
        };
        observe(outcome);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use super::*;

    /// A source whose reloads answer from a script, with one other token.
    struct Scripted {
        answers: Mutex<Vec<Result<bool, String>>>,
        reloads: AtomicU32,
        other: AtomicBool,
    }

    impl Reload for Scripted {
        const WHAT: &'static str = "test secrets";

        async fn reload(&self) -> Result<bool, String> {
            self.reloads.fetch_add(1, Ordering::SeqCst);
            self.answers.lock().unwrap().pop().unwrap_or(Ok(false))
        }

        fn log_change(&self) {}

        fn after_refusal(&self) -> bool {
            self.other.swap(false, Ordering::SeqCst)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn prompts_reload_a_gap_apart_and_every_outcome_is_observed() {
        let store = Arc::new(Scripted {
            // Popped from the end: a change, then a failure.
            answers: Mutex::new(vec![Err("unreadable".into()), Ok(true)]),
            reloads: AtomicU32::new(0),
            other: AtomicBool::new(true),
        });
        let prompt = Arc::new(Notify::new());
        let (seen, mut outcomes) = tokio::sync::mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        // An hour between scheduled reloads: only prompts can trigger one.
        let task = tokio::spawn(reload_loop(
            Arc::clone(&store),
            Duration::from_secs(3600),
            Some(Arc::clone(&prompt)),
            move |outcome| seen.send(outcome).unwrap(),
            shutdown.clone(),
        ));
        let started = tokio::time::Instant::now();
        // A change, a failure, then (the source unchanged) the other token,
        // then nothing more to try.
        let expected = [
            Reloaded::Changed,
            Reloaded::Failed,
            Reloaded::Changed,
            Reloaded::Unchanged,
        ];
        for expected in expected {
            prompt.notify_one();
            let outcome = tokio::time::timeout(Duration::from_secs(10), outcomes.recv())
                .await
                .expect("a prompt reloads")
                .unwrap();
            assert_eq!(outcome, expected);
        }
        // Four prompts, each reloaded a gap after the one before (the
        // first a gap after the start), none waiting for the hour.
        let took = started.elapsed();
        assert!(took >= 4 * MIN_PROMPT_RELOAD_GAP, "{took:?}");
        assert!(took < 5 * MIN_PROMPT_RELOAD_GAP, "{took:?}");
        assert_eq!(store.reloads.load(Ordering::SeqCst), 4);
        shutdown.cancel();
        task.await.unwrap();
    }

    #[test]
    fn log_every_logs_the_first_then_once_per_interval_with_the_count() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut log = LogEvery::new(s(60));
        assert_eq!(log.hit(t0), Some(1), "the first event is logged");
        assert_eq!(log.hit(t0 + s(1)), None);
        assert_eq!(log.hit(t0 + s(30)), None);
        assert_eq!(log.hit(t0 + s(59)), None);
        assert_eq!(log.unlogged(), 3);
        assert_eq!(
            log.hit(t0 + s(60)),
            Some(4),
            "a minute later: one line for the four since"
        );
        assert_eq!(log.hit(t0 + s(61)), None);
        assert_eq!(log.hit(t0 + s(200)), Some(2));
        assert_eq!(log.unlogged(), 0);
    }
}
