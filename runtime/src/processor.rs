//! The contract between a stage's logic and the stream runner.
//!
//! A stage implements [`Processor`]: a function over one decoded input record and
//! the keyed state of the record's partition, returning the records to write.
//! It never touches Kafka: the runner ([`crate::stream`]) owns the consumer, the
//! transactional producer, state restore, offsets, dead-lettering, metrics and
//! shutdown. Unit tests drive a processor with a [`StateStore`] and a
//! [`RecordContext::for_test`] and inspect the [`Output`]s with
//! [`Output::record`].
//!
//! Rules a processor follows so that exactly-once holds:
//!
//! - Everything that must survive a restart lives in the [`StateStore`]; the
//!   processor's own fields hold configuration, global-table handles and
//!   metrics only. The runner rolls the store back when a transaction aborts.
//! - The result depends only on the input, the store and the global tables: no
//!   wall clock (use [`RecordContext::timestamp_ms`] or [`StateStore::now`]),
//!   no randomness. A replay after a crash then writes the same records.
//! - Bad input is an [`ProcessError`], never a panic: the runner dead-letters
//!   the record and goes on.
//! - Work that must happen later, without an input record (an inactivity
//!   warning, a scheduled call), is a timer on a state entry
//!   ([`StateStore::set_timer`]); the runner calls [`Processor::on_timer`] when
//!   it is due, in a transaction like any record.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

use si_schemas::{AvroRecord, Codec, CodecError};

use crate::state::StateStore;

/// Where an input record came from.
#[derive(Debug, Clone, Copy)]
pub struct RecordContext<'a> {
    /// The topic as declared in `topics.yaml` (without the environment prefix).
    pub topic: &'a str,
    /// Partition of the record.
    pub partition: i32,
    /// Offset of the record.
    pub offset: i64,
    /// The record key, when it has one.
    pub key: Option<&'a [u8]>,
    /// The record's Kafka timestamp (ms since the epoch). The state store's
    /// notion of "now" while this record is processed.
    pub timestamp_ms: i64,
    /// The W3C `traceparent` of this record's processing: with traces
    /// exported, the context of the stage's `process` span (a child of the
    /// record's trace); otherwise the record's own header. The runner puts it
    /// on every output's headers; a processor copies it into the
    /// `traceparent` field of the records it writes.
    pub traceparent: Option<&'a str>,
}

impl<'a> RecordContext<'a> {
    /// A context for unit tests: partition 0, offset 0, no key, no trace.
    #[must_use]
    pub fn for_test(topic: &'a str, timestamp_ms: i64) -> Self {
        Self {
            topic,
            partition: 0,
            offset: 0,
            key: None,
            timestamp_ms,
            traceparent: None,
        }
    }

    /// The key as UTF-8 (keys are plain strings on every topic of this project).
    #[must_use]
    pub fn key_str(&self) -> Option<&'a str> {
        self.key.and_then(|k| std::str::from_utf8(k).ok())
    }
}

/// Why [`Processor::on_timer`] is called: the timer of `key` in the store of
/// `partition` was due.
#[derive(Debug, Clone, Copy)]
pub struct TimerContext<'a> {
    /// Partition of the store the timer was set in.
    pub partition: i32,
    /// The key whose timer fired (already removed from the entry).
    pub key: &'a str,
    /// When the timer was set to fire (ms since the epoch).
    pub due_at_ms: i64,
    /// The wall clock when it fired (ms since the epoch), at or after
    /// `due_at_ms`; also [`StateStore::now`] during the call.
    pub now_ms: i64,
}

/// Why a processor refused a record. Both variants dead-letter the record;
/// neither stops the stage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcessError {
    /// The record decoded but breaks the contract (a required value missing or
    /// malformed). Dead-lettered as `INVALID`. Mask addresses in the message.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The record is valid but cannot be processed, and retrying will not help.
    /// Dead-lettered as `PROCESSING_FAILED`.
    #[error("processing failed: {0}")]
    Failed(String),
}

/// A boxed future, as returned by [`EncodeRecord::encode`].
pub type EncodeFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<u8>, CodecError>> + Send + 'a>>;

/// A typed record the runner can encode without knowing its type.
pub trait EncodeRecord: Any + Send + Sync + fmt::Debug {
    /// Encodes the record in the Confluent wire format for `topic` (full name).
    fn encode<'a>(&'a self, codec: &'a Codec, topic: &'a str) -> EncodeFuture<'a>;
    /// The record, for downcasting in tests.
    fn as_any(&self) -> &dyn Any;
}

impl<T: AvroRecord + fmt::Debug> EncodeRecord for T {
    fn encode<'a>(&'a self, codec: &'a Codec, topic: &'a str) -> EncodeFuture<'a> {
        Box::pin(codec.encode(topic, self))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// One record a processor asks the runner to write, inside the same transaction
/// as the input's offset.
#[derive(Debug)]
pub struct Output {
    topic: &'static str,
    key: String,
    value: Option<Box<dyn EncodeRecord>>,
    trace: Option<String>,
}

impl Output {
    /// A record for `topic` (as declared in `topics.yaml`, e.g.
    /// `si_schemas::topics::CONVERSATION_EVENTS`), partitioned by `key`.
    #[must_use]
    pub fn new<T: AvroRecord + fmt::Debug>(
        topic: &'static str,
        key: impl Into<String>,
        record: T,
    ) -> Self {
        Self {
            topic,
            key: key.into(),
            value: Some(Box::new(record)),
            trace: None,
        }
    }

    /// A tombstone (null value) for `key` on a compacted `topic`.
    #[must_use]
    pub fn tombstone(topic: &'static str, key: impl Into<String>) -> Self {
        Self {
            topic,
            key: key.into(),
            value: None,
            trace: None,
        }
    }

    /// Puts this record in the trace `traceparent` names instead of the trace
    /// of the record being processed: for work that was held and is let go by
    /// another record (a parked response released by its conversation's first
    /// event still belongs to the response's trace). `None` changes nothing.
    #[must_use]
    pub fn in_trace(mut self, traceparent: Option<String>) -> Self {
        if traceparent.is_some() {
            self.trace = traceparent;
        }
        self
    }

    /// The trace this record was put in with [`Self::in_trace`], if any.
    #[must_use]
    pub fn trace(&self) -> Option<&str> {
        self.trace.as_deref()
    }

    /// The topic, as declared in `topics.yaml`.
    #[must_use]
    pub fn topic(&self) -> &'static str {
        self.topic
    }

    /// The key.
    #[must_use]
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether this is a tombstone.
    #[must_use]
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// The record, when it is a `T` (for tests and inspection).
    #[must_use]
    pub fn record<T: AvroRecord>(&self) -> Option<&T> {
        self.value.as_ref()?.as_any().downcast_ref::<T>()
    }

    pub(crate) fn value(&self) -> Option<&dyn EncodeRecord> {
        self.value.as_deref()
    }
}

/// The type a processor reads. Every [`AvroRecord`] is one (a stage with one
/// input type); a stage reading several topics of different types implements it
/// for an enum and decodes by topic.
pub trait InputRecord: Sized + Send + 'static {
    /// Decodes a Confluent-framed value read from `topic` (as declared in
    /// `topics.yaml`).
    fn decode<'a>(
        topic: &'a str,
        bytes: &'a [u8],
        codec: &'a Codec,
    ) -> impl Future<Output = Result<Self, CodecError>> + Send + 'a;
}

impl<T: AvroRecord> InputRecord for T {
    fn decode<'a>(
        _topic: &'a str,
        bytes: &'a [u8],
        codec: &'a Codec,
    ) -> impl Future<Output = Result<Self, CodecError>> + Send + 'a {
        codec.decode::<T>(bytes)
    }
}

/// A stage's logic: a pure function over (input record, keyed state) to outputs.
pub trait Processor: Send + 'static {
    /// What the stage reads.
    type Input: InputRecord;
    /// The value type of the stage's state store (a record with its own schema,
    /// written to the stage's compacted changelog topic).
    type State: AvroRecord + Clone + fmt::Debug;

    /// Handles one record. `state` is the store of the record's partition; its
    /// [`StateStore::now`] is the record's timestamp. Returns the records to
    /// write; an error dead-letters the input (state changes made before the
    /// error are rolled back).
    ///
    /// # Errors
    /// [`ProcessError`] when the record is invalid or cannot be processed.
    fn process(
        &mut self,
        ctx: &RecordContext<'_>,
        input: Self::Input,
        state: &mut StateStore<Self::State>,
    ) -> Result<Vec<Output>, ProcessError>;

    /// The `traceparent` an input names in its value, for records written by
    /// others who put it there instead of in the Kafka header (the cognition
    /// layer's responses). The header wins when both are present. The
    /// default: none.
    fn traceparent_in<'a>(&self, input: &'a Self::Input) -> Option<&'a str> {
        let _ = input;
        None
    }

    /// Whether someone waits on `outputs`, the records one input (or timer)
    /// writes: a user on the reply they lead to. A drained batch in which
    /// nothing was urgent is not committed at once: it waits up to the
    /// commit interval for an urgent record and goes with that one's
    /// transaction, which spares the broker a transaction per delivery status
    /// or state-only change. Exactly-once is the same either way; only when
    /// the outputs become visible changes. The default: any output is urgent
    /// (a state change alone is not: only a restore reads the changelog).
    fn urgent(&self, outputs: &[Output]) -> bool {
        !outputs.is_empty()
    }

    /// Handles a due timer: the timer of `ctx.key` has been removed from its
    /// entry before the call (set it again to re-arm). Outputs and state changes
    /// commit in one transaction with the timer's removal, so a timer fires
    /// exactly once. The default does nothing.
    ///
    /// # Errors
    /// [`ProcessError`] when the timer cannot be handled: the runner rolls back
    /// the call's state changes, logs and counts it, and drops the timer (it
    /// would fail the same way again).
    fn on_timer(
        &mut self,
        ctx: &TimerContext<'_>,
        state: &mut StateStore<Self::State>,
    ) -> Result<Vec<Output>, ProcessError> {
        let _ = (ctx, state);
        Ok(Vec::new())
    }
}
