//! Voice webhooks: call answers and status callbacks, the caller's answer to
//! the recording disclosure, recordings and transcriptions.

use serde::Deserialize;
use si_catalog::Catalog;
use si_catalog::voice::{self, Choice};
use si_runtime::processor::ProcessError;
use si_schemas::records::{
    CallEvent, CallState, Channel, ConversationEventType as T, EventSource, RecordingAvailable,
    RecordingDisclosure, TranscriptionEvent, TranscriptionSpeaker, TwilioWebhook,
};

use super::{Draft, Kind, Normalizer, Party, Skip, parse_time, require, upper_symbol};
use crate::address::Address;
use crate::params::Params;

/// The first value of `name` in a raw query string.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

/// What the caller's answer at the consent prompt means for the call.
fn disclosure_of(choice: Choice) -> RecordingDisclosure {
    match choice {
        Choice::Accept => RecordingDisclosure::Accepted,
        Choice::Decline => RecordingDisclosure::Declined,
        Choice::NoInput => RecordingDisclosure::NoInput,
    }
}

impl Normalizer {
    /// The event of a voice webhook, or why there is none.
    pub(super) fn voice_draft(
        &self,
        kind: Kind,
        webhook: &TwilioWebhook,
        params: &Params,
    ) -> Result<Result<Draft, Skip>, ProcessError> {
        let call_sid = require(params, "CallSid")?.to_owned();
        let conversation = Self::call_conversation(webhook, &call_sid);
        let mut draft = match kind {
            Kind::CallStatus | Kind::CallAnswer => {
                let mut draft = Draft::new(T::CallStatusChanged, EventSource::Voice, conversation);
                draft.call = Some(CallEvent {
                    call_sid,
                    status: call_state(require(params, "CallStatus")?),
                    direction: params.get("Direction").map(str::to_owned),
                    duration_seconds: params
                        .number("CallDuration")
                        .or_else(|| params.number("Duration")),
                    disclosure_accepted: None,
                    // Ingress answers every answer webhook with the disclosure
                    // and the consent prompt.
                    disclosure: (kind == Kind::CallAnswer)
                        .then_some(RecordingDisclosure::Disclosed),
                });
                draft
            }
            Kind::Gather => {
                let choice = self.consent_choice(webhook, params);
                let mut draft = Draft::new(T::CallStatusChanged, EventSource::Voice, conversation);
                draft.call = Some(CallEvent {
                    call_sid,
                    status: params
                        .get("CallStatus")
                        .map_or(CallState::InProgress, call_state),
                    direction: params.get("Direction").map(str::to_owned),
                    duration_seconds: None,
                    disclosure_accepted: Some(choice == Choice::Accept),
                    disclosure: Some(disclosure_of(choice)),
                });
                draft
            }
            Kind::Recording => {
                let recording_sid = require(params, "RecordingSid")?.to_owned();
                let mut draft = Draft::new(T::RecordingAvailable, EventSource::Voice, conversation);
                draft.recording = Some(RecordingAvailable {
                    recording_sid,
                    call_sid,
                    url: params.get("RecordingUrl").map(str::to_owned),
                    status: params.get("RecordingStatus").map(str::to_owned),
                    duration_seconds: params.number("RecordingDuration"),
                    channels: params.number("RecordingChannels"),
                });
                draft
            }
            Kind::Transcription => {
                let Some(text) = params.get("TranscriptionText") else {
                    return Ok(Err("transcription_without_text"));
                };
                let mut draft = Draft::new(T::Transcription, EventSource::Voice, conversation);
                draft.transcription = Some(TranscriptionEvent {
                    call_sid,
                    transcription_sid: params.get("TranscriptionSid").map(str::to_owned),
                    text: text.to_owned(),
                    speaker: TranscriptionSpeaker::Unknown,
                    sequence: None,
                    is_final: true,
                    confidence: None,
                });
                draft
            }
            Kind::RealtimeTranscription => {
                let utterance = match realtime_utterance(params, call_sid)? {
                    Ok(u) => u,
                    Err(skip) => return Ok(Err(skip)),
                };
                let mut draft = Draft::new(T::Transcription, EventSource::Voice, conversation);
                draft.occurred_at = params.get("Timestamp").and_then(parse_time);
                draft.transcription = Some(utterance);
                draft
            }
            _ => unreachable!("voice_draft is only called for voice kinds"),
        };
        draft.channel = Some(Channel::Voice);
        draft.party = call_party(params);
        Ok(Ok(draft))
    }

    /// The caller's answer at the consent prompt, read exactly as ingress read
    /// it to choose the TwiML: the same function over the same `Digits`,
    /// `SpeechResult` and `locale` (our gather URL always carries the locale
    /// ingress prompted in; without one, `DEFAULT_LOCALE`, which must then be
    /// ingress's too).
    fn consent_choice(&self, webhook: &TwilioWebhook, params: &Params) -> Choice {
        let locale = query_param(webhook.query.as_deref(), "locale")
            .unwrap_or_else(|| self.settings.default_locale.clone());
        voice::choice(
            Catalog::builtin(),
            &locale,
            params.get("Digits"),
            params.get("SpeechResult"),
        )
    }
}

/// An utterance of Twilio's real-time transcription (`<Start><Transcription>`):
/// a `transcription-content` callback with `Final=true`, its `TranscriptionData`
/// JSON `{"transcript", "confidence"}`, the `Track` it was heard on
/// (`inbound_track`: the user; `outbound_track`: what the call played, Si's
/// voice agent) and its `SequenceId`. Started, stopped and error callbacks and
/// partial results (only sent with `partialResults`, which our TwiML leaves
/// off) are skipped.
fn realtime_utterance(
    params: &Params,
    call_sid: String,
) -> Result<Result<TranscriptionEvent, Skip>, ProcessError> {
    #[derive(Deserialize)]
    struct Data {
        transcript: Option<String>,
        confidence: Option<f64>,
    }
    match params.get("TranscriptionEvent") {
        Some("transcription-content") => {}
        Some("transcription-started") => return Ok(Err("transcription_started")),
        Some("transcription-stopped") => return Ok(Err("transcription_stopped")),
        Some("transcription-error") => return Ok(Err("transcription_error")),
        _ => return Ok(Err("transcription_event_unknown")),
    }
    if !params
        .get("Final")
        .is_some_and(|f| f.trim().eq_ignore_ascii_case("true"))
    {
        return Ok(Err("transcription_partial"));
    }
    let Some(json) = params.get("TranscriptionData") else {
        return Err(ProcessError::Invalid(
            "transcription-content without TranscriptionData".into(),
        ));
    };
    let data: Data = serde_json::from_str(json).map_err(|e| {
        ProcessError::Invalid(format!("TranscriptionData is not the expected JSON: {e}"))
    })?;
    let Some(text) = data.transcript.filter(|t| !t.trim().is_empty()) else {
        return Ok(Err("transcription_without_text"));
    };
    Ok(Ok(TranscriptionEvent {
        call_sid,
        transcription_sid: params.get("TranscriptionSid").map(str::to_owned),
        text,
        speaker: match params.get("Track") {
            Some("inbound_track") => TranscriptionSpeaker::User,
            Some("outbound_track") => TranscriptionSpeaker::Agent,
            _ => TranscriptionSpeaker::Unknown,
        },
        sequence: params.number("SequenceId"),
        is_final: true,
        confidence: data
            .confidence
            .filter(|c| c.is_finite() && (0.0..=1.0).contains(c)),
    }))
}

fn call_state(status: &str) -> CallState {
    upper_symbol(status).parse().unwrap_or(CallState::Unknown)
}

/// The user of a call: the caller of an inbound call, the callee of ours.
fn call_party(params: &Params) -> Option<Party> {
    let inbound = params.get("Direction").is_none_or(|d| d == "inbound");
    let (user, ours) = if inbound {
        ("From", "To")
    } else {
        ("To", "From")
    };
    params.get(user).map(|u| Party {
        address: Some(Address {
            channel: Channel::Voice,
            ..Address::parse(u)
        }),
        proxy: params.get(ours).map(Address::parse),
        ..Party::default()
    })
}
