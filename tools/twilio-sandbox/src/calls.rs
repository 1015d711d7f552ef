//! The calls the sandbox keeps: what each one did so far (its [`CallRecord`]),
//! and the inbox through which the control API and the REST API steer a call
//! while the player (`src/player.rs`) plays it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};

use crate::twiml::{Element, Stream};

/// Calls kept for the control API (the oldest ended ones are forgotten first).
const KEPT_CALLS: usize = 1000;
/// Calls playing at once; past it a new call is refused with 429 / 20429.
pub const MAX_LIVE_CALLS: usize = 200;
/// Controls waiting for one call.
const INBOX: usize = 64;

/// What happens when a call rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// A person answers (`AnsweredBy=human` when machine detection was asked for).
    Answer,
    /// An answering machine answers (`AnsweredBy=machine_start`); every
    /// gather hears silence.
    Machine,
    /// `busy`.
    Busy,
    /// Nobody answers: `no-answer` at once (as if `Timeout` had passed).
    NoAnswer,
    /// `failed`.
    Failed,
}

impl std::str::FromStr for Outcome {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(text.trim().to_owned())).map_err(|_| {
            format!("unknown call outcome {text:?} (answer, machine, busy, no-answer, failed)")
        })
    }
}

/// How new calls ring: a default outcome and outcomes for some `To` numbers.
/// Without either, a call rings until it is told what happens
/// (`POST /_sandbox/calls/{CA}/ring`) or its `Timeout` passes (`no-answer`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallOutcomes {
    pub default: Option<Outcome>,
    pub by_number: BTreeMap<String, Outcome>,
}

impl CallOutcomes {
    /// The outcome for a call to `to`, if one is set.
    #[must_use]
    pub fn for_number(&self, to: &str) -> Option<Outcome> {
        self.by_number.get(to).copied().or(self.default)
    }
}

/// The callee's (or caller's) answer to a `<Gather>`: digits, a phrase, or
/// silence (neither).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatherAnswer {
    /// Keys pressed (`Digits`).
    pub digits: Option<String>,
    /// A phrase said (`SpeechResult`).
    pub speech: Option<String>,
    /// `Confidence` of the phrase (default 0.92).
    pub confidence: Option<f64>,
}

impl GatherAnswer {
    /// Keys pressed.
    #[must_use]
    pub fn digits(digits: &str) -> Self {
        Self {
            digits: Some(digits.to_owned()),
            ..Self::default()
        }
    }

    /// A phrase said.
    #[must_use]
    pub fn speech(phrase: &str) -> Self {
        Self {
            speech: Some(phrase.to_owned()),
            ..Self::default()
        }
    }

    /// Nothing: the gather times out.
    #[must_use]
    pub fn silence() -> Self {
        Self::default()
    }
}

/// Who speaks an utterance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Speaker {
    /// The person on the phone: Twilio's `inbound_track`.
    User,
    /// Si (the agent on the media stream): Twilio's `outbound_track`.
    Si,
}

impl Speaker {
    /// The transcription track Twilio reports.
    #[must_use]
    pub fn track(self) -> &'static str {
        match self {
            Self::User => "inbound_track",
            Self::Si => "outbound_track",
        }
    }
}

/// What the control API or the REST API tells a playing call.
#[derive(Debug, Clone)]
pub enum Control {
    /// How the ringing ends.
    Ring(Outcome),
    /// The answer to the current (or next) `<Gather>`.
    Gather(GatherAnswer),
    /// Someone speaks (transcribed when a real-time transcription runs).
    Say(Speaker, String),
    /// The callee hangs up.
    HangUp,
    /// `POST Calls/{CA}.json Status=completed|canceled`.
    End(String),
}

/// One TwiML verb the call executed, as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallStep {
    pub at_ms: i64,
    /// The URL of the document it came from.
    pub document_url: String,
    #[serde(flatten)]
    pub element: Element,
}

/// Something that went wrong while playing (Twilio's error code and message).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallError {
    pub at_ms: i64,
    pub code: u32,
    pub message: String,
}

/// Something said on the call through the control API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Utterance {
    pub at_ms: i64,
    pub speaker: Speaker,
    pub text: String,
    /// Whether a `transcription-content` callback carried it.
    pub transcribed: bool,
}

/// What a call did so far.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallRecord {
    pub sid: String,
    /// `outbound-api` or `inbound`.
    pub direction: String,
    pub from: String,
    pub to: String,
    /// The answer URL.
    pub url: Option<String>,
    /// Twilio's `CallStatus`: `queued`, `ringing`, `in-progress`, `completed`,
    /// `busy`, `no-answer`, `failed`, `canceled`.
    pub status: String,
    pub answered_by: Option<String>,
    pub created_ms: i64,
    pub answered_ms: Option<i64>,
    pub ended_ms: Option<i64>,
    /// `CallDuration` once ended.
    pub duration_secs: Option<u64>,
    /// The TwiML verbs executed, in order.
    pub steps: Vec<CallStep>,
    /// What the callee heard: every `<Say>` (also inside `<Gather>`) and
    /// Twilio's own "An application error has occurred".
    pub heard: Vec<String>,
    pub errors: Vec<CallError>,
    /// Waiting at a `<Gather>` now.
    pub gathering: bool,
    /// Connected to an agent's media stream now (`<Connect><Stream>`).
    pub connected: bool,
    /// The agent stream it was connected to, with its parameters.
    pub stream: Option<Stream>,
    /// `RE…` once `<Start><Recording>` (or `Record=true`) started one.
    pub recording_sid: Option<String>,
    /// `GT…` once `<Start><Transcription>` started one.
    pub transcription_sid: Option<String>,
    pub utterances: Vec<Utterance>,
}

impl CallRecord {
    /// A call that has not rung yet.
    #[must_use]
    pub fn new(sid: &str, direction: &str, from: &str, to: &str, url: Option<&str>) -> Self {
        Self {
            sid: sid.to_owned(),
            direction: direction.to_owned(),
            from: from.to_owned(),
            to: to.to_owned(),
            url: url.map(str::to_owned),
            status: "queued".to_owned(),
            answered_by: None,
            created_ms: crate::twilio::now_ms(),
            answered_ms: None,
            ended_ms: None,
            duration_secs: None,
            steps: Vec::new(),
            heard: Vec::new(),
            errors: Vec::new(),
            gathering: false,
            connected: false,
            stream: None,
            recording_sid: None,
            transcription_sid: None,
            utterances: Vec::new(),
        }
    }

    /// Whether the call is over, its closing callbacks (status, recording,
    /// transcription) posted.
    #[must_use]
    pub fn ended(&self) -> bool {
        self.ended_ms.is_some()
    }
}

/// Why a control did not reach a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlError {
    /// No call with that SID.
    NotFound,
    /// The call is over (or was never played).
    Ended,
    /// Too many controls waiting for the call.
    Busy,
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotFound => "no such call",
            Self::Ended => "the call is over",
            Self::Busy => "too many controls waiting for this call",
        })
    }
}

impl std::error::Error for ControlError {}

struct Entry {
    record: CallRecord,
    inbox: Option<mpsc::Sender<Control>>,
}

#[derive(Default)]
struct Inner {
    calls: HashMap<String, Entry>,
    order: VecDeque<String>,
}

/// Every call the sandbox keeps.
pub struct Calls {
    inner: Mutex<Inner>,
    outcomes: Mutex<CallOutcomes>,
    changed: Notify,
}

impl Calls {
    #[must_use]
    pub fn new(outcomes: CallOutcomes) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            outcomes: Mutex::new(outcomes),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn outcomes(&self) -> CallOutcomes {
        self.outcomes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn set_outcomes(&self, outcomes: CallOutcomes) {
        *self
            .outcomes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = outcomes;
    }

    /// Calls not over yet.
    pub fn live(&self) -> usize {
        self.lock()
            .calls
            .values()
            .filter(|e| !e.record.ended())
            .count()
    }

    /// Keeps a new call; with `playing`, returns the inbox its player reads.
    pub fn insert(&self, record: CallRecord, playing: bool) -> Option<mpsc::Receiver<Control>> {
        let (sender, receiver) = if playing {
            let (s, r) = mpsc::channel(INBOX);
            (Some(s), Some(r))
        } else {
            (None, None)
        };
        let mut inner = self.lock();
        while inner.order.len() >= KEPT_CALLS {
            // Forget the oldest ended call; if none has ended, the oldest.
            let at = inner
                .order
                .iter()
                .position(|sid| inner.calls.get(sid).is_none_or(|e| e.record.ended()))
                .unwrap_or(0);
            if let Some(sid) = inner.order.remove(at) {
                inner.calls.remove(&sid);
            }
        }
        inner.order.push_back(record.sid.clone());
        inner.calls.insert(
            record.sid.clone(),
            Entry {
                record,
                inbox: sender,
            },
        );
        drop(inner);
        self.changed.notify_waiters();
        receiver
    }

    pub fn get(&self, sid: &str) -> Option<CallRecord> {
        self.lock().calls.get(sid).map(|e| e.record.clone())
    }

    /// Every kept call, oldest first.
    pub fn list(&self) -> Vec<CallRecord> {
        let inner = self.lock();
        inner
            .order
            .iter()
            .filter_map(|sid| inner.calls.get(sid).map(|e| e.record.clone()))
            .collect()
    }

    /// Changes a call's record and wakes whoever waits on calls.
    pub fn update<T>(&self, sid: &str, change: impl FnOnce(&mut CallRecord) -> T) -> Option<T> {
        let out = {
            let mut inner = self.lock();
            let entry = inner.calls.get_mut(sid)?;
            let out = change(&mut entry.record);
            if entry.record.ended() {
                entry.inbox = None;
            }
            out
        };
        self.changed.notify_waiters();
        Some(out)
    }

    /// Hands a control to a playing call.
    ///
    /// # Errors
    /// When there is no such call, it is over, or its inbox is full.
    pub fn send(&self, sid: &str, control: Control) -> Result<(), ControlError> {
        let inner = self.lock();
        let entry = inner.calls.get(sid).ok_or(ControlError::NotFound)?;
        let inbox = entry.inbox.as_ref().ok_or(ControlError::Ended)?;
        inbox.try_send(control).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ControlError::Busy,
            mpsc::error::TrySendError::Closed(_) => ControlError::Ended,
        })
    }

    /// Waits until `condition` holds for the call (woken by every change, no
    /// polling): the record, or `None` when `timeout` passes first.
    pub async fn wait(
        &self,
        sid: &str,
        timeout: Duration,
        mut condition: impl FnMut(&CallRecord) -> bool,
    ) -> Option<CallRecord> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(record) = self.get(sid).filter(|r| condition(r)) {
                return Some(record);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.get(sid).filter(|r| condition(r));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_by_number_win_over_the_default() {
        let outcomes = CallOutcomes {
            default: Some(Outcome::Answer),
            by_number: [("+14155550100".to_owned(), Outcome::Busy)].into(),
        };
        assert_eq!(outcomes.for_number("+14155550100"), Some(Outcome::Busy));
        assert_eq!(outcomes.for_number("+14155550101"), Some(Outcome::Answer));
        assert_eq!(CallOutcomes::default().for_number("+1"), None);
        assert_eq!("no-answer".parse::<Outcome>(), Ok(Outcome::NoAnswer));
        assert!("maybe".parse::<Outcome>().is_err());
    }

    #[tokio::test]
    async fn a_waiter_wakes_on_the_change_it_waits_for() {
        let calls = std::sync::Arc::new(Calls::new(CallOutcomes::default()));
        let mut inbox = calls
            .insert(CallRecord::new("CA1", "inbound", "+1", "+2", None), true)
            .expect("playing");
        let waiter = {
            let calls = calls.clone();
            tokio::spawn(async move {
                calls
                    .wait("CA1", Duration::from_secs(10), |r| {
                        r.status == "in-progress"
                    })
                    .await
            })
        };
        calls.update("CA1", |r| r.status = "ringing".into());
        calls.update("CA1", |r| r.status = "in-progress".into());
        let seen = waiter
            .await
            .expect("joined")
            .expect("woken before the deadline");
        assert_eq!(seen.status, "in-progress");

        calls.send("CA1", Control::HangUp).expect("delivered");
        assert!(matches!(inbox.recv().await, Some(Control::HangUp)));
        calls.update("CA1", |r| r.ended_ms = Some(1));
        assert_eq!(calls.send("CA1", Control::HangUp), Err(ControlError::Ended));
        assert_eq!(
            calls.send("CAnope", Control::HangUp),
            Err(ControlError::NotFound)
        );
        assert!(
            calls
                .wait("CA1", Duration::from_millis(10), |r| r.status == "busy")
                .await
                .is_none()
        );
    }
}
