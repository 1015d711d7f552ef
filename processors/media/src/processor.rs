//! The media stage's processor: a queue of copy jobs per conversation.
//!
//! - A `MESSAGE_RECEIVED` with media, or a completed `RECORDING_AVAILABLE`,
//!   appends a [`MediaJob`] to its conversation's queue (state key
//!   `conv|<conversation id>`) and arms the entry's timer. The input is
//!   otherwise untouched: downstream stages already have the message.
//! - Only the first job of a queue is copied (by the [`Copier`], on the async
//!   runtime, bounded across conversations); the others wait their turn, so a
//!   conversation's `MEDIA_STORED` events come in the order of its messages.
//! - The timer looks whether the first job's copy is done. If it is, the
//!   `MEDIA_STORED` event is written and the job leaves the queue, both in the
//!   transaction that also removes the timer, so the event is written exactly
//!   once; the next job starts. If not, the timer is armed again.
//!
//! Neither `process` nor `on_timer` waits for a download: a slow or broken
//! media URL holds back that conversation's later media follow-ups only,
//! never another conversation, and never any message.

use std::time::Duration;

use sha2::{Digest, Sha256};
use si_runtime::processor::{Output, ProcessError, Processor, RecordContext, TimerContext};
use si_runtime::state::StateStore;
use si_schemas::records::{
    ConversationEvent, ConversationEventType, EventSource, LocaleSource, MediaJob, MediaJobItem,
    MediaState, MediaStorageStatus, MediaStored, MediaUnavailableReason, StoredMedia,
};
use si_schemas::topics;

use crate::copier::Copier;

/// Settings of the processor.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How often a running copy is looked at (the timer; TIMER_INTERVAL
    /// rounds it up).
    pub check_interval: Duration,
    /// Most jobs queued per conversation; more are answered unavailable at once.
    pub max_queue: usize,
    /// How long a queue entry lives without progress (refreshed at every look).
    pub state_ttl: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            check_interval: Duration::from_millis(500),
            max_queue: 50,
            state_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The state key of a conversation's queue.
#[must_use]
pub fn conversation_key(conversation_id: &str) -> String {
    format!("conv|{conversation_id}")
}

/// The event id of the `MEDIA_STORED` event of a source event, from its
/// dedup key (`media|<source dedup_key>`), the way normalize derives ids.
#[must_use]
pub fn media_event_id(dedup_key: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"si.conversation.event");
    hasher.update([0u8]);
    hasher.update(dedup_key.as_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// The media stage.
#[derive(Debug)]
pub struct MediaProcessor {
    settings: Settings,
    copier: Copier,
}

impl MediaProcessor {
    /// A processor copying with `copier`.
    #[must_use]
    pub fn new(settings: Settings, copier: Copier) -> Self {
        Self { settings, copier }
    }

    /// The job an event asks for, if any.
    #[must_use]
    pub fn job_of(event: &ConversationEvent) -> Option<MediaJob> {
        let (source_sid, call_sid, items) = match event.event_type {
            ConversationEventType::MessageReceived => {
                let message = event.message.as_ref()?;
                if message.media.is_empty() {
                    return None;
                }
                let items = message
                    .media
                    .iter()
                    .map(|m| MediaJobItem {
                        sid: m.sid.clone(),
                        url: m.url.clone(),
                        content_type: m.content_type.clone(),
                        size_bytes: m.size_bytes,
                        filename: m.filename.clone(),
                    })
                    .collect();
                (message.message_sid.clone(), None, items)
            }
            ConversationEventType::RecordingAvailable => {
                let recording = event.recording.as_ref()?;
                if recording
                    .status
                    .as_deref()
                    .is_some_and(|s| !s.eq_ignore_ascii_case("completed"))
                {
                    return None;
                }
                let item = MediaJobItem {
                    sid: Some(recording.recording_sid.clone()),
                    url: recording.url.clone(),
                    content_type: None,
                    size_bytes: None,
                    filename: None,
                };
                (
                    recording.recording_sid.clone(),
                    Some(recording.call_sid.clone()),
                    vec![item],
                )
            }
            _ => return None,
        };
        Some(MediaJob {
            source_event_id: event.event_id.clone(),
            source_sid,
            call_sid,
            session_id: event.session_id.clone(),
            channel: event.channel,
            source: event.source.to_string(),
            locale: event.locale.clone(),
            locale_source: event.locale_source.to_string(),
            account_sid: event.account_sid.clone(),
            webhook_id: event.webhook_id.clone(),
            dedup_key: event.dedup_key.clone(),
            occurred_at: event.occurred_at,
            received_at: event.received_at,
            chat_service_sid: None,
            items,
        })
    }

    /// Saves the queue and arms its timer; deletes the entry when it is empty.
    fn save(&self, state: &mut StateStore<MediaState>, queue: MediaState, at_ms: i64) {
        let key = conversation_key(&queue.conversation_id);
        if queue.jobs.is_empty() {
            state.delete(&key);
            return;
        }
        state.put_with_ttl(key.clone(), queue, self.settings.state_ttl);
        state.set_timer(&key, at_ms);
    }

    fn next_check(&self, now_ms: i64) -> i64 {
        now_ms + i64::try_from(self.settings.check_interval.as_millis()).unwrap_or(i64::MAX / 2)
    }
}

/// The `MEDIA_STORED` event of a finished job.
#[must_use]
pub fn media_stored_event(
    conversation_id: &str,
    job: &MediaJob,
    items: Vec<StoredMedia>,
) -> ConversationEvent {
    let dedup_key = format!("media|{}", job.dedup_key);
    let event_id = media_event_id(&dedup_key);
    ConversationEvent {
        dedup_key,
        channel: job.channel,
        source: symbol_or_default::<EventSource>(&job.source),
        received_at: job.received_at,
        locale: job.locale.clone(),
        locale_source: symbol_or_default::<LocaleSource>(&job.locale_source),
        account_sid: job.account_sid.clone(),
        webhook_id: job.webhook_id.clone(),
        media_stored: Some(MediaStored {
            source_event_id: job.source_event_id.clone(),
            source_sid: job.source_sid.clone(),
            call_sid: job.call_sid.clone(),
            items,
        }),
        ..ConversationEvent::adapter(
            event_id,
            conversation_id,
            &job.session_id,
            ConversationEventType::MediaStored,
            job.occurred_at,
        )
    }
}

fn symbol_or_default<E: si_schemas::records::AvroEnum>(symbol: &str) -> E {
    E::from_symbol(symbol).unwrap_or(E::DEFAULT)
}

/// Every item of `job` unavailable for `reason` (a full queue).
fn all_unavailable(
    job: &MediaJob,
    reason: MediaUnavailableReason,
    detail: &str,
) -> Vec<StoredMedia> {
    job.items
        .iter()
        .enumerate()
        .map(|(i, item)| StoredMedia {
            index: i32::try_from(i).unwrap_or(i32::MAX),
            status: MediaStorageStatus::Unavailable,
            unavailable_reason: Some(reason),
            detail: Some(detail.to_owned()),
            twilio_sid: item.sid.clone(),
            twilio_url: item.url.clone(),
            content_type: item.content_type.clone(),
            size_bytes: item.size_bytes,
            filename: item.filename.clone(),
            ..StoredMedia::default()
        })
        .collect()
}

impl Processor for MediaProcessor {
    type Input = ConversationEvent;
    type State = MediaState;

    fn process(
        &mut self,
        ctx: &RecordContext<'_>,
        event: ConversationEvent,
        state: &mut StateStore<MediaState>,
    ) -> Result<Vec<Output>, ProcessError> {
        let Some(job) = Self::job_of(&event) else {
            return Ok(Vec::new());
        };
        if event.conversation_id.is_empty() {
            return Err(ProcessError::Invalid("conversation_id is empty".into()));
        }
        let key = conversation_key(&event.conversation_id);
        let mut queue = state.get(&key).cloned().unwrap_or_else(|| MediaState {
            conversation_id: event.conversation_id.clone(),
            jobs: Vec::new(),
        });
        if queue
            .jobs
            .iter()
            .any(|j| j.source_event_id == job.source_event_id)
        {
            return Ok(Vec::new());
        }
        if queue.jobs.len() >= self.settings.max_queue {
            let items = all_unavailable(
                &job,
                MediaUnavailableReason::FetchFailed,
                "the conversation's media queue is full",
            );
            return Ok(vec![Output::new(
                topics::CONVERSATION_EVENTS,
                event.conversation_id.clone(),
                media_stored_event(&event.conversation_id, &job, items),
            )]);
        }
        queue.jobs.push(job);
        if queue.jobs.len() == 1 {
            // Start at once; the timer picks the result up.
            self.copier.start(&queue.conversation_id, &queue.jobs[0]);
        }
        let at = self.next_check(ctx.timestamp_ms);
        self.save(state, queue, at);
        Ok(Vec::new())
    }

    fn on_timer(
        &mut self,
        ctx: &TimerContext<'_>,
        state: &mut StateStore<MediaState>,
    ) -> Result<Vec<Output>, ProcessError> {
        let Some(mut queue) = state.get(ctx.key).cloned() else {
            return Ok(Vec::new());
        };
        let mut outputs = Vec::new();
        // Finish every job whose copy is done, in order; start the next.
        while let Some(job) = queue.jobs.first() {
            match self.copier.poll(&queue.conversation_id, job) {
                Some(items) => {
                    let job = queue.jobs.remove(0);
                    outputs.push(Output::new(
                        topics::CONVERSATION_EVENTS,
                        queue.conversation_id.clone(),
                        media_stored_event(&queue.conversation_id, &job, items),
                    ));
                }
                None => break,
            }
        }
        let at = self.next_check(ctx.now_ms);
        self.save(state, queue, at);
        Ok(outputs)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Instant;

    use si_schemas::records::{Channel, MediaRef, MessageReceived, RecordingAvailable};

    use super::*;
    use crate::copier::{CopyMetrics, Sources};
    use crate::fetch::{Fetcher, Limits};
    use crate::store::MediaStore;

    fn event(conversation: &str, n: usize, media: Vec<MediaRef>) -> ConversationEvent {
        ConversationEvent {
            channel: Channel::Whatsapp,
            source: EventSource::Messaging,
            received_at: 11,
            locale: "es".into(),
            locale_source: LocaleSource::PhoneCountry,
            account_sid: Some("AC1".into()),
            webhook_id: format!("w-{n}"),
            dedup_key: format!("MM{n}|MESSAGE_RECEIVED"),
            message: Some(MessageReceived {
                message_sid: format!("MM{n}"),
                index: None,
                author: None,
                body: Some("hi".into()),
                media,
                attributes_json: None,
                num_segments: None,
                location: None,
                profile_name: None,
                button_payload: None,
            }),
            ..ConversationEvent::adapter(
                format!("ev-{conversation}-{n}"),
                conversation,
                "s",
                ConversationEventType::MessageReceived,
                10,
            )
        }
    }

    fn refused_type() -> MediaRef {
        MediaRef {
            url: Some("http://127.0.0.1:9/m".into()),
            content_type: Some("application/x-msdownload".into()),
            ..MediaRef::default()
        }
    }

    /// A processor whose copies never touch the network: every item of the
    /// tests is refused before a fetch (its declared type), or has no URL.
    fn processor(runtime: &tokio::runtime::Runtime, max_queue: usize) -> MediaProcessor {
        let limits = Limits {
            max_item_bytes: 10,
            max_message_bytes: 10,
            max_items: 2,
            allowed_types: vec!["image/*".into()],
            attempts: 1,
            retry_backoff: Duration::from_millis(1),
            retry_backoff_max: Duration::from_millis(1),
        };
        let fetcher = Fetcher::new(
            None,
            std::sync::Arc::new(tokio::sync::Notify::new()),
            Vec::new(),
            limits,
            Duration::from_millis(100),
            Duration::from_millis(100),
        )
        .unwrap();
        let copier = Copier::new(
            fetcher,
            MediaStore::open("memory://").unwrap(),
            Sources {
                mcs_base_url: "http://127.0.0.1:9".into(),
                chat_service_sid: None,
                store_retry: Duration::from_millis(10),
                delete_at_twilio: false,
            },
            2,
            CopyMetrics::unregistered(),
            runtime.handle().clone(),
        );
        MediaProcessor::new(
            Settings {
                check_interval: Duration::from_millis(1),
                max_queue,
                state_ttl: Duration::from_secs(60),
            },
            copier,
        )
    }

    /// Fires the conversation's timer until it writes something (or 5 s pass).
    fn fire_until_output(
        p: &mut MediaProcessor,
        store: &mut StateStore<MediaState>,
        conversation: &str,
    ) -> Vec<Output> {
        let key = conversation_key(conversation);
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            let now = store.timer(&key).unwrap_or(0);
            store.set_now(now);
            store.cancel_timer(&key);
            let ctx = TimerContext {
                partition: 0,
                key: &key,
                due_at_ms: now,
                now_ms: now,
            };
            let out = p.on_timer(&ctx, store).unwrap();
            if !out.is_empty() {
                return out;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("no output within 5 s");
    }

    #[test]
    fn messages_without_media_and_other_events_make_no_job() {
        let mut e = event("CH1", 1, Vec::new());
        assert!(MediaProcessor::job_of(&e).is_none());
        e.event_type = ConversationEventType::MessageSent;
        e.message.as_mut().unwrap().media = vec![refused_type()];
        assert!(MediaProcessor::job_of(&e).is_none());
        e.event_type = ConversationEventType::RecordingAvailable;
        e.message = None;
        e.recording = Some(RecordingAvailable {
            recording_sid: "RE1".into(),
            call_sid: "CA1".into(),
            url: Some("https://api.twilio.com/r/RE1".into()),
            status: Some("in-progress".into()),
            duration_seconds: None,
            channels: None,
        });
        assert!(
            MediaProcessor::job_of(&e).is_none(),
            "only completed recordings"
        );
        e.recording.as_mut().unwrap().status = Some("completed".into());
        let job = MediaProcessor::job_of(&e).unwrap();
        assert_eq!(job.source_sid, "RE1");
        assert_eq!(job.call_sid.as_deref(), Some("CA1"));
        assert_eq!(job.items.len(), 1);
    }

    #[test]
    fn a_conversations_jobs_are_written_in_order_and_the_queue_is_bounded() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let mut p = processor(&runtime, 2);
        let mut store = StateStore::new(Duration::from_secs(60));
        let ctx = RecordContext::for_test(topics::CONVERSATION_EVENTS, 100);
        for n in 1..=2 {
            let out = p
                .process(
                    &ctx,
                    event("CH1", n, vec![refused_type(), MediaRef::default()]),
                    &mut store,
                )
                .unwrap();
            assert!(out.is_empty(), "the message itself is never repeated");
        }
        // The queue is full: the third is answered at once, unavailable.
        let out = p
            .process(&ctx, event("CH1", 3, vec![refused_type()]), &mut store)
            .unwrap();
        let full = out[0].record::<ConversationEvent>().unwrap();
        assert_eq!(
            full.media_stored.as_ref().unwrap().items[0]
                .detail
                .as_deref(),
            Some("the conversation's media queue is full")
        );
        let queue = store.get(&conversation_key("CH1")).unwrap();
        assert_eq!(queue.jobs.len(), 2);
        assert!(store.timer(&conversation_key("CH1")).is_some());

        let mut written = Vec::new();
        while written.len() < 2 {
            for o in fire_until_output(&mut p, &mut store, "CH1") {
                written.push(o.record::<ConversationEvent>().unwrap().clone());
            }
        }
        let sources: Vec<&str> = written
            .iter()
            .map(|e| e.media_stored.as_ref().unwrap().source_event_id.as_str())
            .collect();
        assert_eq!(sources, ["ev-CH1-1", "ev-CH1-2"]);
        let first = &written[0];
        assert_eq!(first.event_type, ConversationEventType::MediaStored);
        assert_eq!(first.event_id, media_event_id("media|MM1|MESSAGE_RECEIVED"));
        assert_eq!(first.dedup_key, "media|MM1|MESSAGE_RECEIVED");
        assert_eq!(
            (first.channel, first.source, first.locale_source),
            (
                Channel::Whatsapp,
                EventSource::Messaging,
                LocaleSource::PhoneCountry
            )
        );
        let items = &first.media_stored.as_ref().unwrap().items;
        assert_eq!(
            items
                .iter()
                .map(|i| (i.index, i.status, i.unavailable_reason))
                .collect::<Vec<_>>(),
            [
                (
                    0,
                    MediaStorageStatus::Unavailable,
                    Some(MediaUnavailableReason::RefusedType)
                ),
                (
                    1,
                    MediaStorageStatus::Unavailable,
                    Some(MediaUnavailableReason::NoSource)
                ),
            ]
        );
        // Done: the entry and its timer are gone.
        assert!(store.get(&conversation_key("CH1")).is_none());
    }

    #[test]
    fn items_past_the_count_limit_are_too_many() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let mut p = processor(&runtime, 5);
        let mut store = StateStore::new(Duration::from_secs(60));
        let ctx = RecordContext::for_test(topics::CONVERSATION_EVENTS, 100);
        p.process(
            &ctx,
            event(
                "CH2",
                1,
                vec![refused_type(), refused_type(), refused_type()],
            ),
            &mut store,
        )
        .unwrap();
        let out = fire_until_output(&mut p, &mut store, "CH2");
        let e = out[0].record::<ConversationEvent>().unwrap();
        let reasons: Vec<_> = e
            .media_stored
            .as_ref()
            .unwrap()
            .items
            .iter()
            .map(|i| i.unavailable_reason)
            .collect();
        assert_eq!(
            reasons,
            [
                Some(MediaUnavailableReason::RefusedType),
                Some(MediaUnavailableReason::RefusedType),
                Some(MediaUnavailableReason::TooMany),
            ]
        );
    }
}
