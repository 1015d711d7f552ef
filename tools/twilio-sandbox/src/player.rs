//! Plays a call as Twilio would: status callbacks in Twilio's order, the answer
//! URL fetched (signed), its TwiML executed verb by verb, the callee's answers
//! and utterances taken from the call's inbox, and the closing callbacks
//! (call `completed`, recording, transcription stopped) when it ends.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use si_runtime::mask::mask_address;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::calls::{
    CallError, CallRecord, CallStep, Control, GatherAnswer, MAX_LIVE_CALLS, Outcome, Speaker,
    Utterance,
};
use crate::state::{CallbackRecord, Shared};
use crate::twilio::{country_of, iso8601, now_ms, rfc2822, sid};
use crate::twiml::{
    self, Element, Fork, Gather, HTTP_RETRIEVAL_FAILURE, Recording, Transcription, Verb,
};
use crate::webhook::{Method, VOICE_ANSWER_PATH, VOICE_STATUS_PATH};

const API_VERSION: &str = "2010-04-01";
/// What Twilio says before hanging up on an application error.
pub const APPLICATION_ERROR: &str = "An application error has occurred.";
/// Documents one call may fetch (redirects and gather actions), against loops.
const MAX_DOCUMENTS: usize = 50;
/// Twilio's default `Timeout` (seconds a call rings).
const DEFAULT_RING_TIMEOUT: u64 = 60;

/// What the player needs to know about a call it plays.
#[derive(Debug, Clone)]
pub struct CallSpec {
    pub sid: String,
    pub from: String,
    pub to: String,
    /// `outbound-api` or `inbound`.
    pub direction: &'static str,
    /// The answer URL and how to request it.
    pub url: Option<String>,
    pub method: Method,
    /// Inline TwiML (`Twiml` on create) instead of a URL.
    pub twiml: Option<String>,
    pub status_callback: Option<String>,
    /// The `StatusCallbackEvent`s asked for (`completed` alone when none).
    pub events: Vec<String>,
    pub timeout_secs: u64,
    pub machine_detection: bool,
    /// `Record=true` on create: the whole call, reported here.
    pub record: Option<Option<String>>,
}

/// How a call ended.
enum End {
    /// Hung up (by the callee, `<Hangup/>`, the end of the document, or the
    /// REST API) with this final status.
    Status(&'static str),
    /// The sandbox is shutting down: no more callbacks.
    Shutdown,
}

/// What a wait on the inbox brought.
enum Woken {
    Timeout,
    Ring(Outcome),
    Answer(GatherAnswer),
    End(End),
}

struct ActiveRecording {
    sid: String,
    started: Instant,
    started_ms: i64,
    callback: Option<String>,
    method: Method,
    events: Vec<String>,
    channels: u32,
    source: &'static str,
    track: String,
}

struct ActiveTranscription {
    sid: String,
    spec: Transcription,
    sequence: u32,
}

/// A call someone places to one of our numbers.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundCall {
    /// The caller (`+1…`).
    pub from: String,
    /// Our number called (`+1…`).
    pub to: String,
    /// The number's voice URL (default `{public_url}/twilio/voice/answer`).
    #[serde(default)]
    pub url: Option<String>,
    /// The number's status callback (default `{public_url}/twilio/voice/status`);
    /// `completed` is posted there.
    #[serde(default)]
    pub status_callback: Option<String>,
    /// Answers to the call's gathers, in order, given ahead.
    #[serde(default)]
    pub answers: Vec<GatherAnswer>,
}

/// Places an inbound call: the signed voice request to the number's URL, then
/// its TwiML played. Returns the Call SID.
///
/// # Errors
/// Without a URL (no `callback_url` either), or past the live call limit.
pub fn place_inbound(shared: &Arc<Shared>, call: &InboundCall) -> anyhow::Result<String> {
    let public = shared.webhooks.as_ref().map(|w| w.public_base().to_owned());
    let url = call
        .url
        .clone()
        .or_else(|| public.as_ref().map(|p| format!("{p}{VOICE_ANSWER_PATH}")))
        .ok_or_else(|| {
            anyhow::anyhow!("no url, and the sandbox has no callback URL (SANDBOX_CALLBACK_URL)")
        })?;
    if shared.calls.live() >= MAX_LIVE_CALLS {
        anyhow::bail!("{MAX_LIVE_CALLS} calls are playing already");
    }
    let spec = CallSpec {
        sid: sid("CA"),
        from: call.from.clone(),
        to: call.to.clone(),
        direction: "inbound",
        url: Some(url),
        method: Method::Post,
        twiml: None,
        status_callback: call
            .status_callback
            .clone()
            .or_else(|| public.map(|p| format!("{p}{VOICE_STATUS_PATH}"))),
        events: Vec::new(),
        timeout_secs: 0,
        machine_detection: false,
        record: None,
    };
    let record = CallRecord::new(
        &spec.sid,
        spec.direction,
        &spec.from,
        &spec.to,
        spec.url.as_deref(),
    );
    let inbox = shared
        .calls
        .insert(record, true)
        .ok_or_else(|| anyhow::anyhow!("the call has no inbox"))?;
    for answer in &call.answers {
        shared
            .calls
            .send(&spec.sid, Control::Gather(answer.clone()))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let call_sid = spec.sid.clone();
    spawn(shared, spec, inbox);
    Ok(call_sid)
}

/// Starts playing a call in the background.
pub fn spawn(shared: &Arc<Shared>, spec: CallSpec, inbox: mpsc::Receiver<Control>) {
    let player = Player {
        shared: shared.clone(),
        spec,
        inbox,
        sequence: 0,
        answered: None,
        answered_by: None,
        pending: VecDeque::new(),
        recording: None,
        transcription: None,
        documents: 0,
    };
    shared.tasks.spawn(player.play());
}

struct Player {
    shared: Arc<Shared>,
    spec: CallSpec,
    inbox: mpsc::Receiver<Control>,
    /// `SequenceNumber` of the next status callback.
    sequence: u32,
    answered: Option<Instant>,
    answered_by: Option<&'static str>,
    /// Gather answers given ahead of their gather.
    pending: VecDeque<GatherAnswer>,
    recording: Option<ActiveRecording>,
    transcription: Option<ActiveTranscription>,
    documents: usize,
}

impl Player {
    async fn play(mut self) {
        tracing::info!(
            call = %self.spec.sid,
            direction = self.spec.direction,
            from = %mask_address(&self.spec.from),
            to = %mask_address(&self.spec.to),
            "call placed"
        );
        let end = if self.spec.direction == "inbound" {
            self.set_status("ringing");
            self.answer(Outcome::Answer, "ringing").await
        } else {
            self.ring().await
        };
        if let End::Status(status) = end {
            self.finish(status).await;
        }
    }

    fn update<T>(&self, change: impl FnOnce(&mut CallRecord) -> T) -> Option<T> {
        self.shared.calls.update(&self.spec.sid, change)
    }

    fn set_status(&self, status: &str) {
        self.update(|r| r.status = status.to_owned());
    }

    fn error(&self, code: u32, message: &str) {
        tracing::warn!(call = %self.spec.sid, code, message, "call error");
        self.update(|r| {
            r.errors.push(CallError {
                at_ms: now_ms(),
                code,
                message: message.to_owned(),
            });
        });
    }

    /// `initiated`, `ringing`, then whatever the ringing comes to.
    async fn ring(&mut self) -> End {
        self.status_callback("initiated", "initiated").await;
        self.set_status("ringing");
        self.status_callback("ringing", "ringing").await;
        let chosen = self.shared.calls.outcomes().for_number(&self.spec.to);
        let outcome = match chosen {
            Some(outcome) => outcome,
            None => {
                let timeout = Duration::from_secs(if self.spec.timeout_secs == 0 {
                    DEFAULT_RING_TIMEOUT
                } else {
                    self.spec.timeout_secs
                });
                match self
                    .wait(Some(Instant::now() + timeout), Waiting::Ring)
                    .await
                {
                    Woken::Ring(outcome) => outcome,
                    Woken::Timeout | Woken::Answer(_) => Outcome::NoAnswer,
                    Woken::End(End::Status(_)) => return End::Status("canceled"),
                    Woken::End(End::Shutdown) => return End::Shutdown,
                }
            }
        };
        match outcome {
            Outcome::Busy => End::Status("busy"),
            Outcome::NoAnswer => End::Status("no-answer"),
            Outcome::Failed => End::Status("failed"),
            Outcome::Answer | Outcome::Machine => self.answer(outcome, "in-progress").await,
        }
    }

    /// Answers the call and plays its TwiML; `first_status` is the
    /// `CallStatus` of the first voice request (`ringing` for inbound calls).
    async fn answer(&mut self, outcome: Outcome, first_status: &str) -> End {
        self.answered = Some(Instant::now());
        if self.spec.machine_detection {
            self.answered_by = Some(if outcome == Outcome::Machine {
                "machine_start"
            } else {
                "human"
            });
        }
        let answered_by = self.answered_by;
        self.update(|r| {
            r.answered_ms = Some(now_ms());
            r.answered_by = answered_by.map(str::to_owned);
        });
        if self.spec.direction != "inbound" {
            self.set_status("in-progress");
            self.status_callback("answered", "in-progress").await;
        }
        if let Some(callback) = self.spec.record.clone() {
            self.start_recording(
                &Recording {
                    callback,
                    callback_method: Method::Post,
                    events: vec!["completed".to_owned()],
                    channels: "mono".to_owned(),
                    track: "both".to_owned(),
                },
                "OutboundAPI",
            )
            .await;
        }
        let first = match (&self.spec.twiml, &self.spec.url) {
            (Some(xml), _) => Ok((String::new(), xml.clone())),
            (None, Some(url)) => {
                let url = url.clone();
                let params = self.voice_params(first_status);
                self.fetch(&url, self.spec.method, params).await
            }
            (None, None) => Err((
                HTTP_RETRIEVAL_FAILURE,
                "the call has neither Url nor Twiml (ApplicationSid is not played)".to_owned(),
            )),
        };
        if self.spec.direction == "inbound" {
            self.set_status("in-progress");
        }
        match first {
            Ok((url, xml)) => self.run(url, xml).await,
            Err((code, message)) => self.application_error(code, &message),
        }
    }

    fn application_error(&self, code: u32, message: &str) -> End {
        self.error(code, message);
        self.update(|r| r.heard.push(APPLICATION_ERROR.to_owned()));
        End::Status("completed")
    }

    /// Requests a TwiML document: `(url, body)`, or Twilio's error.
    async fn fetch(
        &mut self,
        url: &str,
        method: Method,
        params: Vec<(String, String)>,
    ) -> Result<(String, String), (u32, String)> {
        self.documents += 1;
        if self.documents > MAX_DOCUMENTS {
            return Err((
                HTTP_RETRIEVAL_FAILURE,
                format!("more than {MAX_DOCUMENTS} documents in one call"),
            ));
        }
        let result = self
            .shared
            .poster
            .request_signed(method, url, &params)
            .await;
        let (status, error) = match &result {
            Ok((status, _)) => (Some(*status), None),
            Err(error) => (None, Some(format!("{error:#}"))),
        };
        self.record_webhook(url, params, status, error);
        match result {
            Ok((status, body)) if (200..300).contains(&status) => Ok((url.to_owned(), body)),
            Ok((status, _)) => Err((
                HTTP_RETRIEVAL_FAILURE,
                format!("HTTP retrieval failure: {url} answered {status}"),
            )),
            Err(error) => Err((
                HTTP_RETRIEVAL_FAILURE,
                format!("HTTP retrieval failure: {error:#}"),
            )),
        }
    }

    /// Plays documents until the call ends.
    async fn run(&mut self, mut url: String, mut xml: String) -> End {
        loop {
            let document = match twiml::parse(&xml) {
                Ok(document) => document,
                Err(error) => return self.application_error(error.code, &error.message),
            };
            let mut next = None;
            for (verb, element) in document.verbs {
                self.step(&url, element);
                match self.execute(&url, verb).await {
                    Next::Continue => {}
                    Next::Fetch(target, method, params) => {
                        next = Some((target, method, params));
                        break;
                    }
                    Next::End(end) => return end,
                }
            }
            // The end of a document hangs up, as at Twilio.
            let Some((target, method, params)) = next else {
                return End::Status("completed");
            };
            match self.fetch(&target, method, params).await {
                Ok((fetched_url, body)) => {
                    url = fetched_url;
                    xml = body;
                }
                Err((code, message)) => return self.application_error(code, &message),
            }
        }
    }

    fn step(&self, document_url: &str, element: Element) {
        self.update(|r| {
            r.steps.push(CallStep {
                at_ms: now_ms(),
                document_url: document_url.to_owned(),
                element,
            });
        });
    }

    async fn execute(&mut self, url: &str, verb: Verb) -> Next {
        match verb {
            Verb::Say(say) => {
                self.update(|r| r.heard.push(say.text));
                Next::Continue
            }
            Verb::Pause { length_secs } => {
                let until = Instant::now() + Duration::from_secs(length_secs);
                match self.wait(Some(until), Waiting::Nothing).await {
                    Woken::End(end) => Next::End(end),
                    _ => Next::Continue,
                }
            }
            Verb::Hangup => Next::End(End::Status("completed")),
            Verb::Redirect {
                url: target,
                method,
            } => Next::Fetch(
                twiml::resolve(url, &target),
                method,
                self.voice_params("in-progress"),
            ),
            Verb::Gather(gather) => self.gather(url, gather).await,
            Verb::Start(forks) => {
                for fork in forks {
                    match fork {
                        Fork::Recording(recording) => {
                            self.start_recording(&recording, "StartCallRecordingTwiML")
                                .await;
                        }
                        Fork::Transcription(transcription) => {
                            self.start_transcription(transcription).await;
                        }
                        // A one-way stream: nothing to simulate beyond the step.
                        Fork::Stream(_) => {}
                    }
                }
                Next::Continue
            }
            Verb::Connect(stream) => {
                self.update(|r| {
                    r.connected = true;
                    r.stream = Some(stream);
                });
                let end = match self.wait(None, Waiting::Nothing).await {
                    Woken::End(end) => end,
                    _ => End::Status("completed"),
                };
                self.update(|r| r.connected = false);
                Next::End(end)
            }
        }
    }

    async fn gather(&mut self, url: &str, gather: Gather) -> Next {
        self.update(|r| {
            r.heard
                .extend(gather.prompts.iter().map(|p| p.text.clone()));
            r.gathering = true;
        });
        let answer = if self.answered_by == Some("machine_start") {
            GatherAnswer::silence()
        } else if let Some(answer) = self.pending.pop_front() {
            answer
        } else {
            let until = Instant::now() + Duration::from_secs(gather.timeout_secs);
            match self.wait(Some(until), Waiting::Gather).await {
                Woken::Answer(answer) => answer,
                Woken::Timeout | Woken::Ring(_) => GatherAnswer::silence(),
                Woken::End(end) => {
                    self.update(|r| r.gathering = false);
                    return Next::End(end);
                }
            }
        };
        self.update(|r| r.gathering = false);
        let mut params = self.voice_params("in-progress");
        let mut heard_something = false;
        if let Some(digits) = answer.digits.filter(|d| !d.is_empty() && gather.dtmf()) {
            let digits: String = match gather.num_digits {
                Some(n) => digits.chars().take(n as usize).collect(),
                None => digits,
            };
            params.push(("Digits".to_owned(), digits));
            params.push(("FinishedOnKey".to_owned(), String::new()));
            heard_something = true;
        } else if let Some(speech) = answer.speech.filter(|s| !s.is_empty() && gather.speech()) {
            params.push(("SpeechResult".to_owned(), speech));
            params.push((
                "Confidence".to_owned(),
                answer.confidence.unwrap_or(0.92).to_string(),
            ));
            heard_something = true;
        }
        if !(heard_something || gather.action_on_empty_result) {
            return Next::Continue;
        }
        let action = gather
            .action
            .as_deref()
            .map_or_else(|| url.to_owned(), |a| twiml::resolve(url, a));
        Next::Fetch(action, gather.method, params)
    }

    /// Waits for the inbox until `until` (`None`: until the call ends),
    /// handling utterances on the way; gather answers that come while not
    /// gathering wait for the next gather.
    async fn wait(&mut self, until: Option<Instant>, waiting: Waiting) -> Woken {
        loop {
            let received = tokio::select! {
                () = self.shared.shutdown.cancelled() => return Woken::End(End::Shutdown),
                () = sleep_until(until) => return Woken::Timeout,
                received = self.inbox.recv() => received,
            };
            let Some(control) = received else {
                // Forgotten by the registry: end quietly as hung up.
                return Woken::End(End::Status("completed"));
            };
            match control {
                Control::Ring(outcome) if waiting == Waiting::Ring => return Woken::Ring(outcome),
                Control::Ring(_) => {}
                Control::Gather(answer) if waiting == Waiting::Gather => {
                    return Woken::Answer(answer);
                }
                Control::Gather(answer) => self.pending.push_back(answer),
                Control::Say(speaker, text) => self.utterance(speaker, text).await,
                Control::HangUp => {
                    let status = if waiting == Waiting::Ring {
                        "no-answer"
                    } else {
                        "completed"
                    };
                    return Woken::End(End::Status(status));
                }
                Control::End(status) => {
                    if waiting == Waiting::Ring {
                        return Woken::End(End::Status("canceled"));
                    }
                    if status == "completed" {
                        return Woken::End(End::Status("completed"));
                    }
                    // `canceled` does not touch an answered call.
                }
            }
        }
    }

    async fn utterance(&mut self, speaker: Speaker, text: String) {
        let track = speaker.track();
        let mut transcribed = false;
        if let Some(active) = self.transcription.as_mut()
            && active.spec.covers(track)
        {
            active.sequence += 1;
            let data = json!({ "transcript": text, "confidence": 0.94 }).to_string();
            let mut params = transcription_params(
                &self.shared.config.account_sid,
                &self.spec.sid,
                &active.sid,
                "transcription-content",
                active.sequence,
            );
            let mut add = |n: &str, v: &str| params.push((n.to_owned(), v.to_owned()));
            add("LanguageCode", &active.spec.language);
            add("Track", track);
            add("TranscriptionData", &data);
            add("Final", "true");
            if let Some(callback) = active.spec.callback.clone() {
                self.post(&callback, params).await;
            }
            transcribed = true;
        }
        self.update(|r| {
            r.utterances.push(Utterance {
                at_ms: now_ms(),
                speaker,
                text,
                transcribed,
            });
        });
    }

    async fn start_recording(&mut self, recording: &Recording, source: &'static str) {
        if self.recording.is_some() {
            return;
        }
        let active = ActiveRecording {
            sid: sid("RE"),
            started: Instant::now(),
            started_ms: now_ms(),
            callback: recording.callback.clone(),
            method: recording.callback_method,
            events: recording.events.clone(),
            channels: if recording.channels == "dual" { 2 } else { 1 },
            source,
            track: recording.track.clone(),
        };
        let recording_sid = active.sid.clone();
        self.shared
            .add_recording(&self.shared.config.account_sid, &recording_sid);
        self.update(|r| r.recording_sid = Some(recording_sid));
        if active.events.iter().any(|e| e == "in-progress")
            && let Some(callback) = active.callback.clone()
        {
            let params = self.recording_params(&active, "in-progress");
            self.request(&callback, active.method, params).await;
        }
        self.recording = Some(active);
    }

    async fn start_transcription(&mut self, spec: Transcription) {
        if self.transcription.is_some() {
            return;
        }
        let active = ActiveTranscription {
            sid: sid("GT"),
            spec,
            sequence: 1,
        };
        let transcription_sid = active.sid.clone();
        self.update(|r| r.transcription_sid = Some(transcription_sid));
        let mut params = transcription_params(
            &self.shared.config.account_sid,
            &self.spec.sid,
            &active.sid,
            "transcription-started",
            active.sequence,
        );
        let mut add = |n: &str, v: &str| params.push((n.to_owned(), v.to_owned()));
        add("ProviderName", provider_name(&active.spec.engine));
        add("LanguageCode", &active.spec.language);
        add("TranscriptionEngine", &active.spec.engine);
        add("PartialResults", &active.spec.partial_results.to_string());
        add("Track", &active.spec.track);
        if let Some(name) = &active.spec.name {
            add("Name", name);
        }
        let callback = active.spec.callback.clone();
        self.transcription = Some(active);
        if let Some(callback) = callback {
            self.post(&callback, params).await;
        }
    }

    /// The end: transcription stopped, the call's final status, the recording;
    /// then the record says the call is over.
    async fn finish(&mut self, status: &'static str) {
        let duration = self.answered.map_or(0, |at| at.elapsed().as_secs());
        if let Some(mut active) = self.transcription.take() {
            active.sequence += 1;
            let params = transcription_params(
                &self.shared.config.account_sid,
                &self.spec.sid,
                &active.sid,
                "transcription-stopped",
                active.sequence,
            );
            if let Some(callback) = &active.spec.callback {
                self.post(callback, params).await;
            }
        }
        self.update(|r| {
            r.status = status.to_owned();
            r.gathering = false;
            r.connected = false;
            r.duration_secs = Some(duration);
        });
        tracing::info!(call = %self.spec.sid, status, duration, "call ended");
        let mut extra = vec![
            ("CallDuration".to_owned(), duration.to_string()),
            (
                "Duration".to_owned(),
                // Billed minutes: rounded up, at least one once answered.
                if self.answered.is_some() {
                    duration.div_ceil(60).max(1)
                } else {
                    0
                }
                .to_string(),
            ),
        ];
        if let Some(answered_by) = self.answered_by {
            extra.push(("AnsweredBy".to_owned(), answered_by.to_owned()));
        }
        self.status_callback_with("completed", status, extra).await;
        if let Some(active) = self.recording.take()
            && active.events.iter().any(|e| e == "completed")
            && let Some(callback) = active.callback.clone()
        {
            let params = self.recording_params(&active, "completed");
            self.request(&callback, active.method, params).await;
        }
        // Over only now: whoever waits for the end finds every callback posted.
        self.update(|r| r.ended_ms = Some(now_ms()));
    }

    async fn status_callback(&mut self, event: &str, status: &str) {
        let extra = self
            .answered_by
            .map(|a| vec![("AnsweredBy".to_owned(), a.to_owned())])
            .unwrap_or_default();
        self.status_callback_with(event, status, extra).await;
    }

    /// A call progress event, when it was asked for (`completed` always is).
    async fn status_callback_with(
        &mut self,
        event: &str,
        status: &str,
        extra: Vec<(String, String)>,
    ) {
        let wanted = event == "completed" || self.spec.events.iter().any(|e| e == event);
        let Some(callback) = self.spec.status_callback.clone().filter(|_| wanted) else {
            return;
        };
        let mut params = self.voice_params(status);
        params.push((
            "CallbackSource".to_owned(),
            "call-progress-events".to_owned(),
        ));
        params.push(("SequenceNumber".to_owned(), self.sequence.to_string()));
        params.push(("Timestamp".to_owned(), rfc2822(now_ms())));
        let extra: Vec<_> = extra
            .into_iter()
            .filter(|(n, _)| !params.iter().any(|(p, _)| p == n))
            .collect();
        params.extend(extra);
        self.sequence += 1;
        self.post(&callback, params).await;
    }

    /// Twilio's voice request parameters.
    fn voice_params(&self, status: &str) -> Vec<(String, String)> {
        let mut params = Vec::new();
        let mut add = |n: &str, v: &str| params.push((n.to_owned(), v.to_owned()));
        add("AccountSid", &self.shared.config.account_sid);
        add("ApiVersion", API_VERSION);
        add("CallSid", &self.spec.sid);
        add("CallStatus", status);
        add("Called", &self.spec.to);
        add("Caller", &self.spec.from);
        add("Direction", self.spec.direction);
        add("From", &self.spec.from);
        add("To", &self.spec.to);
        for (names, number) in [
            (["FromCountry", "CallerCountry"], &self.spec.from),
            (["ToCountry", "CalledCountry"], &self.spec.to),
        ] {
            if let Some(country) = country_of(number) {
                for name in names {
                    add(name, &country);
                }
            }
        }
        if let Some(answered_by) = self.answered_by {
            add("AnsweredBy", answered_by);
        }
        params
    }

    fn recording_params(&self, active: &ActiveRecording, status: &str) -> Vec<(String, String)> {
        let account = &self.shared.config.account_sid;
        let mut params = Vec::new();
        let mut add = |n: &str, v: &str| params.push((n.to_owned(), v.to_owned()));
        add("AccountSid", account);
        add("CallSid", &self.spec.sid);
        add("RecordingSid", &active.sid);
        add(
            "RecordingUrl",
            &format!(
                "{}/{API_VERSION}/Accounts/{account}/Recordings/{}",
                self.shared.base_url, active.sid
            ),
        );
        add("RecordingStatus", status);
        let duration = if status == "completed" {
            active.started.elapsed().as_secs().to_string()
        } else {
            "-1".to_owned()
        };
        add("RecordingDuration", &duration);
        add("RecordingChannels", &active.channels.to_string());
        add("RecordingStartTime", &rfc2822(active.started_ms));
        add("RecordingSource", active.source);
        add("RecordingTrack", &active.track);
        add("ErrorCode", "0");
        params
    }

    async fn post(&self, signed_url: &str, params: Vec<(String, String)>) {
        self.request(signed_url, Method::Post, params).await;
    }

    /// Sends a callback (signed) and records it with its answer.
    async fn request(&self, signed_url: &str, method: Method, params: Vec<(String, String)>) {
        let result = self
            .shared
            .poster
            .request_signed(method, signed_url, &params)
            .await;
        let (status, error) = match result {
            Ok((status, _)) => (Some(status), None),
            Err(error) => (None, Some(format!("{error:#}"))),
        };
        if let Some(error) = &error {
            tracing::warn!(call = %self.spec.sid, error, "call callback not delivered");
        }
        self.record_webhook(signed_url, params, status, error);
    }

    fn record_webhook(
        &self,
        signed_url: &str,
        params: Vec<(String, String)>,
        status: Option<u16>,
        error: Option<String>,
    ) {
        self.shared.record_callback(CallbackRecord {
            seq: 0,
            at_ms: now_ms(),
            url: self.shared.poster.post_url_for(signed_url),
            signed_url: signed_url.to_owned(),
            params,
            status,
            error,
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    Nothing,
    Ring,
    Gather,
}

enum Next {
    Continue,
    Fetch(String, Method, Vec<(String, String)>),
    End(End),
}

async fn sleep_until(until: Option<Instant>) {
    match until {
        Some(until) => tokio::time::sleep_until(until).await,
        None => std::future::pending().await,
    }
}

fn provider_name(engine: &str) -> &'static str {
    if engine.eq_ignore_ascii_case("deepgram") {
        "Deepgram"
    } else {
        "Google"
    }
}

/// What every real-time transcription event carries.
fn transcription_params(
    account: &str,
    call_sid: &str,
    transcription_sid: &str,
    event: &str,
    sequence: u32,
) -> Vec<(String, String)> {
    vec![
        ("AccountSid".to_owned(), account.to_owned()),
        ("CallSid".to_owned(), call_sid.to_owned()),
        ("TranscriptionSid".to_owned(), transcription_sid.to_owned()),
        ("Timestamp".to_owned(), iso8601_millis(now_ms())),
        ("TranscriptionEvent".to_owned(), event.to_owned()),
        ("SequenceId".to_owned(), sequence.to_string()),
    ]
}

/// `2026-11-22T05:44:10.123Z`.
fn iso8601_millis(ms: i64) -> String {
    let seconds = iso8601(ms);
    let trimmed = seconds.trim_end_matches('Z');
    format!("{trimmed}.{:03}Z", ms.rem_euclid(1000))
}
