//! Copying a job's media into the store, off the stream loop.
//!
//! [`Copier::start`] spawns the copy of one job on the async runtime (at most
//! `MEDIA_CONCURRENCY` run at once, across all conversations);
//! [`Copier::poll`] tells the processor whether it is done and hands over the
//! result. Nothing here is durable: the job itself is in the processor's
//! state, and a job whose copy was lost (a restart, a rebalance, an aborted
//! transaction) is simply started again. That is safe because every item's
//! object key is deterministic and puts never overwrite.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use sha2::{Digest, Sha256};
use si_schemas::records::{
    AvroEnum as _, MediaJob, MediaJobItem, MediaStorageStatus, MediaUnavailableReason, StoredMedia,
};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use crate::fetch::{Fetcher, Refused, essence};
use crate::store::{MediaStore, Put};

/// Metrics of the copies.
#[derive(Debug, Clone)]
pub struct CopyMetrics {
    /// Items by outcome (`stored`, `existed`, or the unavailable reason in lower case).
    pub items: IntCounterVec,
    /// Bytes stored.
    pub bytes: IntCounterVec,
    /// Time to copy one job, by outcome of the job (`done`, `store_error`).
    pub job_seconds: HistogramVec,
    /// Copies running now.
    pub running: IntGauge,
    /// Deletes at Twilio after a verified copy, by outcome.
    pub deleted: IntCounterVec,
}

impl CopyMetrics {
    /// Registers the metrics.
    ///
    /// # Errors
    /// When a metric is registered twice.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let items = IntCounterVec::new(
            Opts::new(
                "si_media_items_total",
                "Media items handled, by outcome: stored, existed (already in the store), or the reason they are unavailable",
            ),
            &["outcome"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "si_media_stored_bytes_total",
                "Bytes written to the media store",
            ),
            &["kind"],
        )?;
        let job_seconds = HistogramVec::new(
            HistogramOpts::new(
                "si_media_job_seconds",
                "Time to copy the media of one message or recording",
            )
            .buckets(vec![
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
            ]),
            &["outcome"],
        )?;
        let running = IntGauge::new("si_media_copies_running", "Copies running now")?;
        let deleted = IntCounterVec::new(
            Opts::new(
                "si_media_twilio_deletes_total",
                "Media deleted at Twilio after a verified copy (MEDIA_DELETE_AT_TWILIO), by outcome: deleted, failed, unverified",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(deleted.clone()))?;
        registry.register(Box::new(items.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(job_seconds.clone()))?;
        registry.register(Box::new(running.clone()))?;
        Ok(Self {
            items,
            bytes,
            job_seconds,
            running,
            deleted,
        })
    }

    /// Metrics registered nowhere (unit tests).
    #[must_use]
    pub fn unregistered() -> Self {
        Self::new(&Registry::new()).unwrap_or_else(|_| unreachable!("a fresh registry"))
    }
}

/// Past this many known jobs, old uncollected results are dropped.
const ORPHAN_CHECK_ABOVE: usize = 1000;
/// An uncollected result older than this is an orphan.
const ORPHAN_AFTER: Duration = Duration::from_secs(600);

/// The state of one job's copy.
#[derive(Debug, Clone)]
pub enum Slot {
    /// Running.
    Running,
    /// Every item is stored or known to be unavailable (since when).
    Done(Vec<StoredMedia>, Instant),
    /// The store failed; the job is started again after a pause.
    Failed {
        /// When it may be started again.
        retry_at: Instant,
    },
}

/// Where conversations media are fetched from, and how long a failed store is left alone.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Base URL of Twilio's Media Content Service (Conversations media).
    pub mcs_base_url: String,
    /// The Conversations service (`IS…`) used when the event names none.
    pub chat_service_sid: Option<String>,
    /// Pause after a store failure before the job is tried again.
    pub store_retry: Duration,
    /// Delete Programmable Messaging media at Twilio once their copy is
    /// verified (the stored object has the size that was read).
    pub delete_at_twilio: bool,
}

/// The download pool.
#[derive(Debug, Clone)]
pub struct Copier {
    slots: Arc<Mutex<HashMap<String, Slot>>>,
    permits: Arc<Semaphore>,
    fetcher: Fetcher,
    store: MediaStore,
    sources: Sources,
    metrics: CopyMetrics,
    handle: Handle,
}

impl Copier {
    /// A pool of `concurrency` copies running on `handle`.
    #[must_use]
    pub fn new(
        fetcher: Fetcher,
        store: MediaStore,
        sources: Sources,
        concurrency: usize,
        metrics: CopyMetrics,
        handle: Handle,
    ) -> Self {
        Self {
            slots: Arc::default(),
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            fetcher,
            store,
            sources,
            metrics,
            handle,
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The result of `job_id` when its copy is done, taking it out of the
    /// pool; otherwise starts the copy unless it is running (or resting after
    /// a store failure). Never blocks.
    pub fn poll(&self, conversation_id: &str, job: &MediaJob) -> Option<Vec<StoredMedia>> {
        let mut slots = self.slots();
        match slots.get(&job.source_event_id) {
            Some(Slot::Done(..)) => match slots.remove(&job.source_event_id) {
                Some(Slot::Done(items, _)) => Some(items),
                _ => None,
            },
            Some(Slot::Running) => None,
            Some(Slot::Failed { retry_at }) if *retry_at > Instant::now() => None,
            Some(Slot::Failed { .. }) | None => {
                slots.insert(job.source_event_id.clone(), Slot::Running);
                drop(slots);
                self.spawn(conversation_id.to_owned(), job.clone());
                None
            }
        }
    }

    /// Starts the copy of `job` unless the pool knows it already (running,
    /// done, or resting after a store failure). Never blocks.
    pub fn start(&self, conversation_id: &str, job: &MediaJob) {
        let mut slots = self.slots();
        if slots.contains_key(&job.source_event_id) {
            return;
        }
        slots.insert(job.source_event_id.clone(), Slot::Running);
        drop(slots);
        self.spawn(conversation_id.to_owned(), job.clone());
    }

    /// How many jobs the pool knows (running, done or resting).
    #[must_use]
    pub fn len(&self) -> usize {
        self.slots().len()
    }

    /// Whether the pool knows no job.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn spawn(&self, conversation_id: String, job: MediaJob) {
        let this = self.clone();
        self.handle.spawn(async move {
            let Ok(_permit) = this.permits.clone().acquire_owned().await else {
                return;
            };
            this.metrics.running.inc();
            let started = Instant::now();
            let result = this.copy(&conversation_id, &job).await;
            this.metrics.running.dec();
            let slot = match result {
                Ok(items) => {
                    this.metrics
                        .job_seconds
                        .with_label_values(&["done"])
                        .observe(started.elapsed().as_secs_f64());
                    Slot::Done(items, Instant::now())
                }
                Err(error) => {
                    this.metrics
                        .job_seconds
                        .with_label_values(&["store_error"])
                        .observe(started.elapsed().as_secs_f64());
                    tracing::warn!(
                        error = %error,
                        "media store failed; the copy is tried again"
                    );
                    Slot::Failed {
                        retry_at: Instant::now() + this.sources.store_retry,
                    }
                }
            };
            let mut slots = this.slots();
            slots.insert(job.source_event_id.clone(), slot);
            // Results nobody collects (their partition moved to another
            // instance) are dropped after a while; the new owner copies again.
            if slots.len() > ORPHAN_CHECK_ABOVE {
                slots.retain(|_, s| !matches!(s, Slot::Done(_, at) if at.elapsed() > ORPHAN_AFTER));
            }
        });
    }

    /// Copies every item of `job`; an item that cannot be had is marked
    /// unavailable. Only a store failure fails the job (retried later).
    async fn copy(
        &self,
        conversation_id: &str,
        job: &MediaJob,
    ) -> object_store::Result<Vec<StoredMedia>> {
        let limits = self.fetcher.limits().clone();
        // Items an earlier run stored already (a restart, or media deleted at
        // Twilio after their copy): taken as they are, not fetched again.
        let earlier: HashMap<usize, (String, u64)> = self
            .store
            .list_folder(&folder(conversation_id, &job.source_sid))
            .await?
            .into_iter()
            .filter_map(|(name, size)| {
                let (index, sha256) = name.split_once('-')?;
                Some((index.parse().ok()?, (sha256.to_owned(), size)))
            })
            .collect();
        let mut stored_bytes: u64 = 0;
        let mut out = Vec::with_capacity(job.items.len());
        for (index, item) in job.items.iter().enumerate() {
            let mut record = StoredMedia {
                index: i32::try_from(index).unwrap_or(i32::MAX),
                status: MediaStorageStatus::Unavailable,
                twilio_sid: item
                    .sid
                    .clone()
                    .or_else(|| item.url.as_deref().and_then(media_sid)),
                twilio_url: item.url.clone(),
                content_type: item.content_type.as_deref().map(essence),
                size_bytes: item.size_bytes,
                filename: item.filename.clone(),
                ..StoredMedia::default()
            };
            let outcome = if let Some((sha256, size)) = earlier.get(&index) {
                stored_bytes += size;
                Ok(StoredItem {
                    key: object_key(conversation_id, &job.source_sid, index, sha256),
                    content_type: None,
                    size: *size,
                    sha256: sha256.clone(),
                    existed: true,
                })
            } else {
                self.copy_item(
                    conversation_id,
                    job,
                    index,
                    item,
                    &mut stored_bytes,
                    &limits,
                )
                .await?
            };
            match outcome {
                Ok(stored) => {
                    self.metrics
                        .items
                        .with_label_values(&[if stored.existed { "existed" } else { "stored" }])
                        .inc();
                    record.status = MediaStorageStatus::Stored;
                    record.object_key = Some(stored.key);
                    record.content_type = stored.content_type.or(record.content_type);
                    record.size_bytes = Some(i64::try_from(stored.size).unwrap_or(i64::MAX));
                    record.sha256 = Some(stored.sha256);
                }
                Err(refused) => {
                    self.metrics
                        .items
                        .with_label_values(&[refused.reason.symbol().to_ascii_lowercase()])
                        .inc();
                    tracing::info!(
                        index,
                        reason = refused.reason.symbol(),
                        detail = %refused.detail,
                        "media item unavailable"
                    );
                    record.unavailable_reason = Some(refused.reason);
                    record.detail = Some(refused.detail);
                    if let Some(size) = refused.size {
                        record.size_bytes = Some(i64::try_from(size).unwrap_or(i64::MAX));
                    }
                }
            }
            out.push(record);
        }
        Ok(out)
    }

    async fn copy_item(
        &self,
        conversation_id: &str,
        job: &MediaJob,
        index: usize,
        item: &MediaJobItem,
        stored_bytes: &mut u64,
        limits: &crate::fetch::Limits,
    ) -> object_store::Result<Result<StoredItem, Refused>> {
        use MediaUnavailableReason as R;
        let refuse = |reason, detail: String| {
            Ok(Err(Refused {
                reason,
                detail,
                size: None,
            }))
        };
        if index >= limits.max_items {
            return refuse(
                R::TooMany,
                format!(
                    "item {} of a message; at most {} are copied",
                    index + 1,
                    limits.max_items
                ),
            );
        }
        if let Some(t) = item.content_type.as_deref().map(essence)
            && !t.is_empty()
            && !limits.allows(&t)
        {
            return refuse(R::RefusedType, format!("{t} is not an allowed media type"));
        }
        let declared = item.size_bytes.and_then(|s| u64::try_from(s).ok());
        if let Some(size) = declared
            && size > limits.max_item_bytes
        {
            return Ok(Err(Refused {
                reason: R::TooLarge,
                detail: format!(
                    "{size} bytes, over the {}-byte limit",
                    limits.max_item_bytes
                ),
                size: Some(size),
            }));
        }
        let remaining = limits.max_message_bytes.saturating_sub(*stored_bytes);
        if remaining == 0 || declared.is_some_and(|size| size > remaining) {
            return refuse(
                R::MessageTooLarge,
                format!(
                    "the message's media would exceed the {}-byte limit",
                    limits.max_message_bytes
                ),
            );
        }
        let Some((url, via_mcs)) = self.url_of(job, item) else {
            return refuse(R::NoSource, "no URL to fetch the item from".to_owned());
        };
        let limit = limits.max_item_bytes.min(remaining);
        let fetched = if via_mcs {
            self.fetcher.fetch_mcs(&url, limit).await
        } else {
            self.fetcher.fetch(&url, limit).await
        };
        let fetched = match fetched {
            Ok(fetched) => fetched,
            Err(mut refused) => {
                if refused.reason == R::TooLarge && limit < limits.max_item_bytes {
                    refused.reason = R::MessageTooLarge;
                    refused.detail = format!(
                        "the message's media would exceed the {}-byte limit",
                        limits.max_message_bytes
                    );
                }
                return Ok(Err(refused));
            }
        };
        let content_type = fetched
            .content_type
            .clone()
            .or_else(|| item.content_type.as_deref().map(essence));
        let size = fetched.bytes.len() as u64;
        let sha256 = hex::encode(Sha256::digest(&fetched.bytes));
        let key = object_key(conversation_id, &job.source_sid, index, &sha256);
        let put = self
            .store
            .put_once(&key, fetched.bytes, content_type.as_deref())
            .await?;
        if put == Put::Created {
            self.metrics
                .bytes
                .with_label_values(&["media"])
                .inc_by(size);
        }
        if self.sources.delete_at_twilio && is_message_media(&url) {
            self.delete_at_twilio(&key, size, &url).await?;
        }
        *stored_bytes += size;
        Ok(Ok(StoredItem {
            key,
            content_type,
            size,
            sha256,
            existed: put == Put::Existed,
        }))
    }

    /// Deletes the media at Twilio once the stored object is verified (its
    /// size is what was read); a failed delete is logged and counted, never
    /// retried (the copy stands either way).
    async fn delete_at_twilio(&self, key: &str, size: u64, url: &str) -> object_store::Result<()> {
        let stored = self.store.size(key).await?;
        let outcome = if stored != size {
            tracing::warn!(
                stored,
                size,
                "stored media differ in size; not deleted at Twilio"
            );
            "unverified"
        } else {
            match self.fetcher.delete_at_twilio(url).await {
                Ok(()) => "deleted",
                Err(detail) => {
                    tracing::warn!(%detail, "media not deleted at Twilio");
                    "failed"
                }
            }
        };
        self.metrics.deleted.with_label_values(&[outcome]).inc();
        Ok(())
    }

    /// The URL an item is fetched from: its own, else (Conversations media)
    /// the Media Content Service's resource of its SID (`true`).
    fn url_of(&self, job: &MediaJob, item: &MediaJobItem) -> Option<(String, bool)> {
        if let Some(url) = item.url.as_deref().filter(|u| !u.is_empty()) {
            return Some((url.to_owned(), false));
        }
        let sid = item.sid.as_deref()?;
        let service = job
            .chat_service_sid
            .as_deref()
            .or(self.sources.chat_service_sid.as_deref())?;
        Some((
            format!(
                "{}/v1/Services/{service}/Media/{sid}",
                self.sources.mcs_base_url.trim_end_matches('/')
            ),
            true,
        ))
    }
}

struct StoredItem {
    key: String,
    content_type: Option<String>,
    size: u64,
    sha256: String,
    existed: bool,
}

/// The object key of item `index` of `source_sid` in a conversation:
/// `media/<conversation>/<source SID>/<index>-<sha256>`. Characters outside
/// `[A-Za-z0-9._-]` in the ids are replaced, so a key is always one path.
#[must_use]
pub fn object_key(conversation_id: &str, source_sid: &str, index: usize, sha256: &str) -> String {
    format!("{}/{index}-{sha256}", folder(conversation_id, source_sid))
}

/// The folder of a source's items: `media/<conversation>/<source SID>`.
fn folder(conversation_id: &str, source_sid: &str) -> String {
    format!(
        "media/{}/{}",
        path_safe(conversation_id),
        path_safe(source_sid)
    )
}

fn path_safe(id: &str) -> String {
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe.is_empty() || safe.chars().all(|c| c == '.') {
        "_".to_owned()
    } else {
        safe
    }
}

/// Whether `url` is a Programmable Messaging media URL
/// (`…/Messages/{MM|SM}/Media/{ME}`), the kind Twilio lets us delete.
fn is_message_media(url: &str) -> bool {
    url.contains("/Messages/") && media_sid(url).is_some()
}

/// The Media SID (`ME…`) at the end of a Twilio media URL.
#[must_use]
pub fn media_sid(url: &str) -> Option<String> {
    let last = url
        .split(['?', '#'])
        .next()?
        .trim_end_matches('/')
        .rsplit('/')
        .next()?;
    let last = last.strip_suffix(".json").unwrap_or(last);
    (last.len() == 34 && last.starts_with("ME") && last[2..].bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| last.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_deterministic_single_paths() {
        assert_eq!(object_key("CH1", "MM2", 0, "ab"), "media/CH1/MM2/0-ab");
        assert_eq!(object_key("pm-a/b", "..", 3, "ff"), "media/pm-a_b/_/3-ff");
        assert_eq!(object_key("", "x y", 1, "00"), "media/_/x_y/1-00");
    }

    #[test]
    fn media_sids_come_from_twilio_urls() {
        let sid = format!("ME{}", "a".repeat(32));
        assert_eq!(
            media_sid(&format!(
                "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/{sid}"
            )),
            Some(sid.clone())
        );
        assert_eq!(
            media_sid(&format!("https://x/Media/{sid}.json?x=1")),
            Some(sid)
        );
        assert_eq!(media_sid("https://x/Media/ME1"), None);
        assert_eq!(media_sid("https://x/other"), None);
    }
}
