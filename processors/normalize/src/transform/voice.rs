//! Voice webhooks: call answers and status callbacks, the caller's answer to
//! the recording disclosure, recordings and transcriptions.
//!
//! # The conversation of a call
//!
//! Every event of a call goes to one conversation and session, decided on
//! the call's first webhook and kept in the partition's state under
//! `call|<CallSid>` (kind CALL, for [`CALL_BINDING_TTL`] after the call's
//! last event):
//!
//! 1. the conversation our own URL carries (`conversation_hint`: calls
//!    voice-link placed, and every callback URL of our TwiML once a call has
//!    one); its session is the one the call is bound to, else the one the
//!    user's directory entry for that conversation names, else the alias
//!    entry's, else the derived one;
//! 2. the call's binding, when an earlier webhook of the call made one;
//! 3. the user's active SMS or WhatsApp conversation with the number of the
//!    call, from the participant directory (`<channel>:<user>|<our number>`,
//!    the most recently updated of the two): an inbound call from someone
//!    who is texting Si joins that conversation and its session;
//! 4. else a conversation of its own, `call-<CallSid>`, with a new session
//!    (the caller still gets the visitor id of their number, as for text).
//!
//! Why a binding in normalize's state rather than the conversation in the
//! TwiML: ingress answers the call's first webhook before normalize has seen
//! it, so the TwiML of an inbound call cannot name a conversation yet, and
//! Twilio's recording and real-time transcription callbacks name neither the
//! caller nor the number. Ingress keys every voice webhook without a
//! conversation by its CallSid, so all of one call's webhooks reach the
//! partition that holds its binding, in order. The binding is sticky: a text
//! conversation closed mid-call does not split the call.

use serde::Deserialize;
use si_catalog::Catalog;
use si_catalog::voice::{self, Choice};
use si_runtime::processor::ProcessError;
use si_schemas::records::{
    CallEvent, CallState, Channel, ConversationBinding, ConversationEventType as T, EventSource,
    RecordingAvailable, RecordingDisclosure, TranscriptionEvent, TranscriptionSpeaker,
    TwilioWebhook,
};

use super::{Draft, Kind, Normalizer, Party, Skip, parse_time, require, upper_symbol};
use std::sync::Arc;
use std::time::Duration;

use crate::address::Address;
use crate::params::Params;
use si_runtime::state::StateStore;
use si_schemas::records::{NormalizeState, ParticipantBinding};

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
        state: &StateStore<NormalizeState>,
    ) -> Result<Result<Draft, Skip>, ProcessError> {
        let call_sid = require(params, "CallSid")?.to_owned();
        let bound = state
            .get(&call_key(&call_sid))
            .and_then(|s| s.conversation.as_ref());
        // The call's user: from this webhook, else (recording and
        // transcription callbacks) the one its first webhook named.
        let party = call_party(params).or_else(|| {
            bound
                .and_then(|b| b.participants.first())
                .map(Party::from_bound)
        });
        let link = self.call_link(webhook, bound, party.as_ref(), &call_sid);
        let linked_call = call_sid.clone();
        let conversation = link.conversation_id;
        let mut draft = match kind {
            Kind::CallStatus | Kind::CallAnswer => {
                let status = call_state(require(params, "CallStatus")?);
                // Twilio's callbacks may arrive out of order: a call that
                // ended does not ring again.
                if !status.has_ended()
                    && state
                        .get(&super::seen_key(&call_ended_key(&call_sid)))
                        .is_some()
                {
                    return Ok(Err("call_status_after_its_end"));
                }
                let mut draft = Draft::new(T::CallStatusChanged, EventSource::Voice, conversation);
                draft.call = Some(CallEvent {
                    call_sid,
                    status,
                    direction: params.get("Direction").map(str::to_owned),
                    duration_seconds: params
                        .number("CallDuration")
                        .or_else(|| params.number("Duration")),
                    disclosure_accepted: None,
                    // Ingress answers every answer webhook with the disclosure
                    // and the consent prompt, unless a machine answered
                    // (then it hangs up).
                    disclosure: (kind == Kind::CallAnswer
                        && !voice::answered_by_machine(params.get("AnsweredBy")))
                    .then_some(RecordingDisclosure::Disclosed),
                    answered_by: params.get("AnsweredBy").map(str::to_owned),
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
                    answered_by: None,
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
        draft.party = party;
        draft.session = link.session_id;
        draft.disclosed_earlier = state
            .get(&super::seen_key(&call_disclosed_key(&linked_call)))
            .is_some();
        draft.call_sid = Some(linked_call);
        Ok(Ok(draft))
    }

    /// The conversation and session of a call's webhook; see the module docs.
    fn call_link(
        &self,
        webhook: &TwilioWebhook,
        bound: Option<&ConversationBinding>,
        party: Option<&Party>,
        call_sid: &str,
    ) -> CallLink {
        let hint = webhook
            .conversation_hint
            .as_deref()
            .filter(|h| !h.is_empty());
        if let Some(hint) = hint {
            let session = bound
                .filter(|b| b.conversation_id == hint)
                .map(|b| b.session_id.clone())
                .or_else(|| {
                    party
                        .and_then(|p| self.text_binding(p, Some(hint)))
                        .map(|b| b.session_id.clone())
                })
                .or_else(|| {
                    self.directory
                        .get(&ParticipantBinding::alias_key(hint))
                        .filter(|a| a.active && a.conversation_id == hint)
                        .map(|a| a.session_id.clone())
                });
            return CallLink {
                conversation_id: hint.to_owned(),
                session_id: session,
            };
        }
        if let Some(b) = bound {
            return CallLink {
                conversation_id: b.conversation_id.clone(),
                session_id: Some(b.session_id.clone()),
            };
        }
        if let Some(b) = party.and_then(|p| self.text_binding(p, None)) {
            return CallLink {
                conversation_id: b.conversation_id.clone(),
                session_id: Some(b.session_id.clone()),
            };
        }
        CallLink {
            conversation_id: format!("call-{call_sid}"),
            session_id: None,
        }
    }

    /// The active directory entry of the call's user on SMS or WhatsApp with
    /// the number of the call (the most recently updated of the two), limited
    /// to `conversation` when given.
    fn text_binding(
        &self,
        party: &Party,
        conversation: Option<&str>,
    ) -> Option<Arc<ParticipantBinding>> {
        let e164 = party.address.as_ref()?.e164.as_deref()?;
        let ours = party
            .proxy
            .as_ref()
            .and_then(|p| p.e164.as_deref())
            .unwrap_or("");
        [Channel::Sms, Channel::Whatsapp]
            .into_iter()
            .filter_map(|c| {
                self.directory
                    .get(&format!("{}|{ours}", c.address_key(e164)))
            })
            .filter(|b| b.active && conversation.is_none_or(|c| b.conversation_id == c))
            .max_by(|a, b| {
                (a.updated_at, &a.conversation_id).cmp(&(b.updated_at, &b.conversation_id))
            })
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

/// How long a call's link to its conversation is kept after the call's last
/// webhook: Twilio ends a call after at most 24 hours, and the recording and
/// transcription callbacks follow within minutes.
pub(super) const CALL_BINDING_TTL: Duration = Duration::from_secs(24 * 3600);

/// The state key of a call's link to its conversation.
pub(super) fn call_key(call_sid: &str) -> String {
    format!("call|{call_sid}")
}

/// Where a call's events go.
struct CallLink {
    conversation_id: String,
    /// `None`: the conversation's own (state, directory, derived).
    session_id: Option<String>,
}

/// The dedup key under which a call's end is remembered (for the dedup
/// window), so that a status of the call arriving after it is dropped.
pub(super) fn call_ended_key(call_sid: &str) -> String {
    format!("{call_sid}:CallEnded")
}

/// The marker of a call whose recording disclosure was played (kept for
/// [`CALL_BINDING_TTL`]): its later events carry `recording_disclosed` too.
pub(super) fn call_disclosed_key(call_sid: &str) -> String {
    format!("{call_sid}:Disclosed")
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
