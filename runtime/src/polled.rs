//! A producer whose events (delivery reports, errors) a thread of its own
//! serves: what rust-rdkafka's `ThreadedProducer` does, without its idle
//! cost.
//!
//! `ThreadedProducer`'s thread polls in calls of 100 ms, and each call ends
//! in a busy loop: rust-rdkafka hands the call's remaining time to
//! librdkafka in whole milliseconds, rounded down, so librdkafka returns up
//! to a millisecond before the call's deadline and the rest is spent asking
//! again without waiting. That is about 0.9 % of a core per producer,
//! loaded or idle, and every transactional stage has two (README, "Where a
//! hop's time goes", item 8). Here the thread polls in calls of
//! [`POLL_PERIOD`], so the same tail comes once a second instead of ten
//! times. A report is still handled the moment it arrives: a poll serves
//! events as they come until its period ends.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, FutureRecord, ProducerContext};
use tokio::sync::oneshot;

/// How long each of the polling thread's calls lasts: the longest a dropped
/// producer outlives its owner.
pub const POLL_PERIOD: Duration = Duration::from_secs(1);

/// A [`BaseProducer`] with a thread that serves its events; derefs to it.
///
/// Dropping it does not wait for the thread: the thread notices at the end
/// of its current poll, at most [`POLL_PERIOD`] later, and drops the
/// producer then (rust-rdkafka's drop purges what was not sent and waits
/// up to 500 ms for the reports). Nothing a caller committed depends on
/// that: a transaction is committed, or aborted by the broker, whatever
/// becomes of the client.
pub struct PolledProducer<C: ProducerContext + 'static> {
    producer: Arc<BaseProducer<C>>,
    stop: Arc<AtomicBool>,
}

impl<C: ProducerContext + 'static> PolledProducer<C> {
    /// Starts the thread serving `producer`'s events.
    ///
    /// # Errors
    /// When the thread cannot be spawned.
    pub fn new(producer: BaseProducer<C>) -> std::io::Result<Self> {
        let producer = Arc::new(producer);
        let stop = Arc::new(AtomicBool::new(false));
        let (polled, stopped) = (Arc::clone(&producer), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("si-kafka-poll".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    polled.poll(POLL_PERIOD);
                }
            })?;
        Ok(Self { producer, stop })
    }
}

impl<C: ProducerContext + 'static> Deref for PolledProducer<C> {
    type Target = BaseProducer<C>;

    fn deref(&self) -> &BaseProducer<C> {
        &self.producer
    }
}

impl<C: ProducerContext + 'static> Drop for PolledProducer<C> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The context of a producer whose sends are awaited
/// ([`PolledProducer::send_acked`]): each record carries the sending half
/// of a channel that its delivery report completes.
pub struct Acks;

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = Box<oneshot::Sender<KafkaResult<()>>>;

    fn delivery(&self, result: &DeliveryResult<'_>, ack: Self::DeliveryOpaque) {
        let _ = ack.send(result.as_ref().map(|_| ()).map_err(|(e, _)| e.clone()));
    }
}

/// How long a send waits before trying again when librdkafka's queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(10);

impl PolledProducer<Acks> {
    /// Sends `record` and waits for its delivery report: `Ok` once the
    /// broker acknowledged it as the producer's `acks` asks, else the
    /// error (the record's `message.timeout.ms` bounds the wait). While
    /// librdkafka's queue is full the send is tried again, for at most
    /// `queue_timeout`.
    ///
    /// # Errors
    /// The delivery's error, the queue still full after `queue_timeout`,
    /// or any other refusal of the record.
    pub async fn send_acked<K, P>(
        &self,
        record: FutureRecord<'_, K, P>,
        queue_timeout: Duration,
    ) -> KafkaResult<()>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let FutureRecord {
            topic,
            partition,
            payload,
            key,
            timestamp,
            mut headers,
        } = record;
        let deadline = Instant::now() + queue_timeout;
        loop {
            let (ack, acked) = oneshot::channel();
            let record = BaseRecord {
                topic,
                partition,
                payload,
                key,
                timestamp,
                headers: headers.take(),
                delivery_opaque: Box::new(ack),
            };
            match self.send(record) {
                // A report always comes (a purge at the producer's drop
                // reports too); a dropped channel means the client is gone.
                Ok(()) => return acked.await.unwrap_or(Err(KafkaError::Canceled)),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if Instant::now() < deadline =>
                {
                    headers = back.headers;
                    tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                }
                Err((error, _)) => return Err(error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::ClientConfig;
    use rdkafka::producer::BaseRecord;

    fn offline(queue: &str) -> PolledProducer<Acks> {
        let producer: BaseProducer<Acks> = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("message.timeout.ms", "300")
            .set("queue.buffering.max.messages", queue)
            .create_with_context(Acks)
            .expect("producer");
        PolledProducer::new(producer).expect("thread")
    }

    fn timed_out(sent: &KafkaResult<()>) -> bool {
        matches!(
            sent,
            Err(KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageTimedOut
            ))
        )
    }

    /// Nothing listens there, so a record fails once its
    /// `message.timeout.ms` passes, and only the producer's own thread polls
    /// for that report.
    #[tokio::test]
    async fn an_awaited_send_gets_its_records_error() {
        let producer = offline("10");
        let record = FutureRecord::<(), _>::to("t").payload("x");
        let sent = tokio::time::timeout(
            Duration::from_secs(30),
            producer.send_acked(record, Duration::ZERO),
        )
        .await
        .expect("the report, served by the producer's thread");
        assert!(timed_out(&sent), "{sent:?}");
    }

    #[tokio::test]
    async fn a_full_queue_is_tried_again_until_the_queue_timeout() {
        // The queue holds one record: this one, until it times out.
        let producer = offline("1");
        let (ack, first) = oneshot::channel();
        producer
            .send(BaseRecord::<(), _, _>::with_opaque_to("t", Box::new(ack)).payload("1"))
            .map_err(|(e, _)| e)
            .expect("queued");

        let refused = producer
            .send_acked(FutureRecord::<(), _>::to("t").payload("2"), Duration::ZERO)
            .await;
        assert!(
            matches!(
                refused,
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull))
            ),
            "{refused:?}"
        );

        // Tried again until the first left the queue; then it times out in turn.
        let retried = producer
            .send_acked(
                FutureRecord::<(), _>::to("t").payload("3"),
                Duration::from_secs(30),
            )
            .await;
        assert!(timed_out(&retried), "{retried:?}");
        let first = first.await.expect("the first record's report");
        assert!(timed_out(&first), "{first:?}");
    }
}
