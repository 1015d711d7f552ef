//! Circuit breakers: when Twilio (or a carrier behind it) fails, egress stops
//! hammering it. One breaker per sender (in its sender task) and one per
//! channel (shared by every sender task of the replica).
//!
//! - **Closed**: requests go. Outcomes of the last `window` are counted; with
//!   at least `min_requests` of them and a failure share of at least
//!   `failure_rate`, the breaker opens.
//! - **Open**: nothing is sent until `open_for` has passed (doubling, up to
//!   8 ×, each time a probe fails). Operations wait in their queue; an urgent
//!   WhatsApp message is handed to delivery remediation instead (its SMS
//!   fallback), see the sender.
//! - **Half-open**: one request, the probe, goes. Its success closes the
//!   breaker, its failure opens it again.
//!
//! A failure is a 5xx or no answer (timeout, connection error). 4xx answers
//! mean Twilio works (the request was wrong), 429 and 401 have their own
//! handling (pacing, credentials): none of them count.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use si_schemas::records::Channel;

use crate::metrics::EgressMetrics;

/// Longest time a probe may take before another one is allowed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a waiter looks again while a probe is in flight.
const PROBE_POLL: Duration = Duration::from_millis(200);
/// Most outcomes a breaker remembers.
const MAX_OUTCOMES: usize = 256;

/// Breaker settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CircuitConfig {
    /// Failure share that opens the breaker (0 < r ≤ 1).
    pub failure_rate: f64,
    /// Outcomes needed in the window before it may open; 0 turns breakers off.
    pub min_requests: u32,
    /// How far back outcomes count.
    pub window: Duration,
    /// How long it stays open before a probe.
    pub open_for: Duration,
}

impl CircuitConfig {
    /// Breakers that never open.
    #[must_use]
    pub fn off() -> Self {
        Self {
            failure_rate: 1.0,
            min_requests: 0,
            window: Duration::from_secs(30),
            open_for: Duration::from_secs(15),
        }
    }
}

/// Whether a request may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed: go.
    Go,
    /// Half-open: go as the probe.
    Probe,
    /// Open (or a probe is in flight): not before then.
    WaitUntil(Instant),
}

impl Admit {
    /// The stricter of two answers.
    #[must_use]
    pub fn and(self, other: Self) -> Self {
        match (self, other) {
            (Self::WaitUntil(a), Self::WaitUntil(b)) => Self::WaitUntil(a.max(b)),
            (w @ Self::WaitUntil(_), _) | (_, w @ Self::WaitUntil(_)) => w,
            (Self::Probe, _) | (_, Self::Probe) => Self::Probe,
            _ => Self::Go,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { probe_since: Option<Instant> },
}

/// A state change, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Closed to open.
    Opened,
    /// Half-open to open again (the probe failed).
    Reopened,
    /// Open to half-open.
    HalfOpened,
    /// Half-open to closed.
    Closed,
}

impl Transition {
    /// Metric label of the new state.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Opened | Self::Reopened => "open",
            Self::HalfOpened => "half_open",
            Self::Closed => "closed",
        }
    }
}

/// One breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: CircuitConfig,
    state: State,
    outcomes: VecDeque<(Instant, bool)>,
    /// Consecutive openings without a successful probe.
    openings: u32,
}

impl Breaker {
    /// A closed breaker.
    #[must_use]
    pub fn new(config: CircuitConfig) -> Self {
        Self {
            config,
            state: State::Closed,
            outcomes: VecDeque::new(),
            openings: 0,
        }
    }

    /// Whether it is open or half-open.
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.state != State::Closed
    }

    /// Whether a request may go at `now` (changes nothing).
    #[must_use]
    pub fn check(&self, now: Instant) -> Admit {
        match self.state {
            State::Closed => Admit::Go,
            State::Open { until } if now < until => Admit::WaitUntil(until),
            State::Open { .. } | State::HalfOpen { probe_since: None } => Admit::Probe,
            State::HalfOpen {
                probe_since: Some(since),
            } => {
                if now.duration_since(since) >= PROBE_TIMEOUT {
                    Admit::Probe
                } else {
                    Admit::WaitUntil(now + PROBE_POLL)
                }
            }
        }
    }

    /// A request starts at `now` after [`Self::check`] said `admit`.
    pub fn begin(&mut self, now: Instant, admit: Admit) -> Option<Transition> {
        if admit != Admit::Probe || self.state == State::Closed {
            return None;
        }
        let was_open = matches!(self.state, State::Open { .. });
        self.state = State::HalfOpen {
            probe_since: Some(now),
        };
        was_open.then_some(Transition::HalfOpened)
    }

    /// A probe ended without a Twilio answer to judge by (blocked, invalid):
    /// the next request may probe.
    pub fn release(&mut self) {
        if let State::HalfOpen { .. } = self.state {
            self.state = State::HalfOpen { probe_since: None };
        }
    }

    /// Records the outcome of a request that started while admitted.
    pub fn record(&mut self, now: Instant, ok: bool) -> Option<Transition> {
        match self.state {
            State::Open { .. } => None,
            State::HalfOpen { .. } => {
                if ok {
                    self.state = State::Closed;
                    self.outcomes.clear();
                    self.openings = 0;
                    Some(Transition::Closed)
                } else {
                    self.open(now);
                    Some(Transition::Reopened)
                }
            }
            State::Closed => {
                if self.config.min_requests == 0 {
                    return None;
                }
                self.outcomes.push_back((now, ok));
                while self.outcomes.len() > MAX_OUTCOMES
                    || self
                        .outcomes
                        .front()
                        .is_some_and(|(at, _)| now.duration_since(*at) > self.config.window)
                {
                    self.outcomes.pop_front();
                }
                let total = self.outcomes.len();
                let failed = self.outcomes.iter().filter(|(_, ok)| !ok).count();
                #[allow(clippy::cast_precision_loss)]
                let share = failed as f64 / total.max(1) as f64;
                if total >= self.config.min_requests as usize && share >= self.config.failure_rate {
                    self.open(now);
                    Some(Transition::Opened)
                } else {
                    None
                }
            }
        }
    }

    fn open(&mut self, now: Instant) {
        let factor = 1u32 << self.openings.min(3);
        self.openings = self.openings.saturating_add(1);
        self.state = State::Open {
            until: now + self.config.open_for * factor,
        };
        self.outcomes.clear();
    }
}

/// The per-channel breakers of a replica, with their metrics.
#[derive(Debug)]
pub struct Circuits {
    config: CircuitConfig,
    channels: Mutex<HashMap<Channel, Breaker>>,
    metrics: EgressMetrics,
}

impl Circuits {
    /// Closed breakers.
    #[must_use]
    pub fn new(config: CircuitConfig, metrics: EgressMetrics) -> Self {
        Self {
            config,
            channels: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// A breaker for a sender task.
    #[must_use]
    pub fn sender_breaker(&self) -> Breaker {
        Breaker::new(self.config)
    }

    fn with_channel<R>(&self, channel: Channel, f: impl FnOnce(&mut Breaker) -> R) -> R {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        let breaker = channels
            .entry(channel)
            .or_insert_with(|| Breaker::new(self.config));
        f(breaker)
    }

    /// Whether a request of `sender` on `channel` may go.
    #[must_use]
    pub fn check(&self, sender: &Breaker, channel: Channel, now: Instant) -> Admit {
        sender
            .check(now)
            .and(self.with_channel(channel, |b| b.check(now)))
    }

    /// A request starts.
    pub fn begin(&self, sender: &mut Breaker, channel: Channel, now: Instant) {
        let admit = sender.check(now);
        let t = sender.begin(now, admit);
        self.note("sender", channel, t);
        let t = self.with_channel(channel, |b| {
            let admit = b.check(now);
            b.begin(now, admit)
        });
        self.note("channel", channel, t);
    }

    /// A request ended: `Some(ok)` with Twilio's health, `None` when it says
    /// nothing about Twilio (no request made, 429, 401).
    pub fn record(&self, sender: &mut Breaker, channel: Channel, now: Instant, ok: Option<bool>) {
        let Some(ok) = ok else {
            sender.release();
            self.with_channel(channel, Breaker::release);
            return;
        };
        let t = sender.record(now, ok);
        self.note("sender", channel, t);
        let t = self.with_channel(channel, |b| b.record(now, ok));
        self.note("channel", channel, t);
    }

    /// A sender task ends with its breaker.
    pub fn forget(&self, sender: &Breaker, channel: Option<Channel>) {
        if sender.is_open()
            && let Some(channel) = channel
        {
            self.metrics
                .circuits_open
                .with_label_values(&["sender", channel.key_prefix()])
                .dec();
        }
    }

    fn note(&self, scope: &str, channel: Channel, transition: Option<Transition>) {
        let Some(t) = transition else { return };
        let label = channel.key_prefix();
        self.metrics
            .circuit_transitions
            .with_label_values(&[scope, label, t.label()])
            .inc();
        let open = self
            .metrics
            .circuits_open
            .with_label_values(&[scope, label]);
        match t {
            Transition::Opened => {
                open.inc();
                tracing::warn!(
                    scope,
                    channel = label,
                    "circuit opened: Twilio requests are failing; sends are held"
                );
            }
            Transition::Reopened => {
                tracing::warn!(scope, channel = label, "circuit probe failed: held longer")
            }
            Transition::HalfOpened => {
                tracing::info!(
                    scope,
                    channel = label,
                    "circuit half-open: one probe request"
                );
            }
            Transition::Closed => {
                open.dec();
                tracing::info!(
                    scope,
                    channel = label,
                    "circuit closed: Twilio answers again"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CircuitConfig {
        CircuitConfig {
            failure_rate: 0.5,
            min_requests: 4,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
        }
    }

    #[test]
    fn opens_on_the_failure_rate_probes_and_closes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        assert_eq!(b.record(t0, true), None);
        assert_eq!(b.record(t0, false), None);
        assert_eq!(b.record(t0, true), None);
        assert_eq!(b.check(t0), Admit::Go);
        // 2 of 4 failed: open.
        assert_eq!(b.record(t0, false), Some(Transition::Opened));
        let until = t0 + Duration::from_secs(5);
        assert_eq!(b.check(t0), Admit::WaitUntil(until));
        // Late answers of requests sent before it opened change nothing.
        assert_eq!(b.record(t0, true), None);
        // Time passes: one probe.
        assert_eq!(b.check(until), Admit::Probe);
        assert_eq!(b.begin(until, Admit::Probe), Some(Transition::HalfOpened));
        assert!(
            matches!(b.check(until), Admit::WaitUntil(_)),
            "one probe at a time"
        );
        assert_eq!(b.record(until, true), Some(Transition::Closed));
        assert_eq!(b.check(until), Admit::Go);
    }

    #[test]
    fn a_failed_probe_reopens_for_longer_and_a_lost_probe_is_replaced() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        for _ in 0..4 {
            b.record(t0, false);
        }
        let t1 = t0 + Duration::from_secs(5);
        b.begin(t1, b.check(t1));
        assert_eq!(b.record(t1, false), Some(Transition::Reopened));
        assert_eq!(
            b.check(t1),
            Admit::WaitUntil(t1 + Duration::from_secs(10)),
            "doubled"
        );
        let t2 = t1 + Duration::from_secs(10);
        b.begin(t2, b.check(t2));
        // The probe never reached Twilio (blocked): the next one may go.
        b.release();
        assert_eq!(b.check(t2), Admit::Probe);
        b.begin(t2, Admit::Probe);
        // A probe that never answers is replaced after the probe timeout.
        assert_eq!(b.check(t2 + PROBE_TIMEOUT), Admit::Probe);
    }

    #[test]
    fn old_outcomes_and_too_few_requests_do_not_open_it() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        for _ in 0..3 {
            assert_eq!(b.record(t0, false), None, "below min_requests");
        }
        // Ten seconds later those failures are out of the window.
        let t1 = t0 + Duration::from_secs(11);
        for _ in 0..3 {
            assert_eq!(b.record(t1, true), None);
        }
        assert_eq!(b.record(t1, false), None, "1 of 4 failed");
        let mut off = Breaker::new(CircuitConfig::off());
        for _ in 0..100 {
            assert_eq!(off.record(t0, false), None);
        }
    }

    #[test]
    fn the_stricter_answer_wins() {
        let t = Instant::now();
        let later = t + Duration::from_secs(1);
        assert_eq!(Admit::Go.and(Admit::Go), Admit::Go);
        assert_eq!(Admit::Go.and(Admit::Probe), Admit::Probe);
        assert_eq!(Admit::Probe.and(Admit::WaitUntil(t)), Admit::WaitUntil(t));
        assert_eq!(
            Admit::WaitUntil(later).and(Admit::WaitUntil(t)),
            Admit::WaitUntil(later)
        );
    }
}
