//! Pacing one sender: its rate cells, then a concurrency permit, kept across
//! the turns of the sender's event loop.
//!
//! The sender task waits for its pacer inside a `select!` that also wakes for
//! new jobs, finished attempts and retry timers, so the wait is dropped and
//! started again many times a second on a busy sender. [`Pacer::ready`] is
//! therefore cancellation-safe: every cell taken and the place in the
//! semaphore's queue live in the pacer, not in the future, and a new call
//! carries on where the dropped one stopped.
//!
//! Order: rate cells first, the permit second. A message waiting for a slow
//! sender's cells then holds no permit, so busy long codes never starve a short
//! code of permits.
//!
//! Segments: an SMS of `n` segments costs `n` cells (Twilio paces long codes
//! per segment). The request goes after its first cell; the other `n − 1` are
//! owed and paid before the sender's next request. Throughput is the same as
//! paying up front, and a lone long message is not held back for `n` periods.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::DefaultDirectRateLimiter;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

type CellWait = Pin<Box<dyn Future<Output = ()> + Send>>;
type PermitWait = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// One sender's pacing state. See the module documentation.
pub struct Pacer {
    limiter: Arc<DefaultDirectRateLimiter>,
    semaphore: Arc<Semaphore>,
    /// Cells still to take before the next request.
    owed: u32,
    /// Whether the head request's own cell is taken.
    cell_taken: bool,
    /// The cell being waited for, kept across cancellations.
    cell: Option<CellWait>,
    /// The permit being waited for (its place in the semaphore's queue).
    permit: Option<PermitWait>,
    /// When the current wait started.
    started: Option<Instant>,
}

/// What a finished wait hands out.
pub struct Ready {
    /// Held while the request is in flight.
    pub permit: OwnedSemaphorePermit,
    /// How long the head request waited for its cells and permit.
    pub waited: Duration,
}

impl Pacer {
    /// A pacer over a sender's `limiter` and the shared `semaphore`.
    #[must_use]
    pub fn new(limiter: DefaultDirectRateLimiter, semaphore: Arc<Semaphore>) -> Self {
        Self {
            limiter: Arc::new(limiter),
            semaphore,
            owed: 0,
            cell_taken: false,
            cell: None,
            permit: None,
            started: None,
        }
    }

    /// Waits until the next request of `cells` rate cells may leave, and
    /// returns its permit. Cancellation-safe: dropping the future keeps every
    /// cell taken and the place in the permit queue for the next call.
    /// `None` once the semaphore is closed.
    pub async fn ready(&mut self, cells: u32) -> Option<Ready> {
        let started = *self.started.get_or_insert_with(Instant::now);
        while self.owed > 0 || !self.cell_taken {
            let limiter = &self.limiter;
            let wait = self.cell.get_or_insert_with(|| {
                let limiter = Arc::clone(limiter);
                Box::pin(async move { limiter.until_ready().await })
            });
            wait.as_mut().await;
            // No await between the cell arriving and it being counted.
            self.cell = None;
            if self.owed > 0 {
                self.owed -= 1;
            } else {
                self.cell_taken = true;
            }
        }
        let semaphore = &self.semaphore;
        let wait = self
            .permit
            .get_or_insert_with(|| Box::pin(Arc::clone(semaphore).acquire_owned()));
        let permit = wait.as_mut().await;
        self.permit = None;
        let permit = permit.ok()?;
        self.cell_taken = false;
        self.owed = cells.saturating_sub(1);
        self.started = None;
        Some(Ready {
            permit,
            waited: started.elapsed(),
        })
    }

    /// Whether nothing is owed or half-taken: a new pacer would behave the
    /// same once one rate period has passed.
    #[must_use]
    pub fn is_settled(&self) -> bool {
        self.owed == 0 && !self.cell_taken && self.cell.is_none() && self.permit.is_none()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::cast_precision_loss)]
mod tests {
    use governor::{Quota, RateLimiter};

    use super::*;

    fn pacer(period: Duration, permits: usize) -> Pacer {
        Pacer::new(
            RateLimiter::direct(Quota::with_period(period).unwrap()),
            Arc::new(Semaphore::new(permits)),
        )
    }

    /// Waits for the pacer the way the sender loop does: inside a `select!`
    /// that a frequent event keeps interrupting.
    async fn ready_interrupted(p: &mut Pacer, cells: u32, every: Duration) -> Ready {
        let mut interrupt = tokio::time::interval(every);
        loop {
            tokio::select! {
                ready = p.ready(cells) => return ready.unwrap(),
                _ = interrupt.tick() => {}
            }
        }
    }

    #[tokio::test]
    async fn interruptions_lose_no_cells_and_segments_keep_the_pace() {
        // 5 cells/s; a steady stream of wake-ups every 10 ms (much shorter
        // than a cell) used to restart the wait forever for any multi-cell
        // message. The period is long so that a busy machine's scheduling
        // delay (CI saw 72 ms) stays well inside the tolerance below, while a
        // lost cell (a whole period late) does not.
        let period = Duration::from_millis(200);
        let mut p = pacer(period, 4);
        let start = Instant::now();
        let mut sent = Vec::new();
        // 4-segment, 1-segment, 3-segment and 2-segment messages: 10 cells.
        for cells in [4, 1, 3, 2] {
            let ready = ready_interrupted(&mut p, cells, Duration::from_millis(10)).await;
            sent.push(start.elapsed());
            drop(ready.permit);
        }
        // Requests leave after the cells owed by the message before them:
        // 0, 4, 5 and 8 periods.
        for (at, periods) in sent.iter().zip([0u32, 4, 5, 8]) {
            let expected = period * periods;
            assert!(
                *at + Duration::from_millis(5) >= expected
                    && *at < expected + Duration::from_millis(150),
                "sent at {at:?}, expected about {expected:?} ({sent:?})"
            );
        }
    }

    #[tokio::test]
    async fn a_slow_sender_waiting_for_cells_holds_no_permit() {
        let semaphore = Arc::new(Semaphore::new(1));
        let limiter = |period| RateLimiter::direct(Quota::with_period(period).unwrap());
        let mut slow = Pacer::new(limiter(Duration::from_secs(3600)), Arc::clone(&semaphore));
        let first = slow.ready(1).await.unwrap();
        drop(first.permit);
        // The slow sender now waits an hour for its next cell ...
        let blocked = tokio::time::timeout(Duration::from_millis(50), slow.ready(1)).await;
        assert!(blocked.is_err());
        // ... while the one permit stays free for a fast sender.
        let mut fast = Pacer::new(limiter(Duration::from_millis(1)), Arc::clone(&semaphore));
        let ready = tokio::time::timeout(Duration::from_millis(500), fast.ready(1))
            .await
            .expect("the fast sender is not starved")
            .unwrap();
        assert!(ready.waited < Duration::from_millis(500));
        assert!(!slow.is_settled(), "the slow sender is still mid-wait");
    }

    #[tokio::test]
    async fn the_permit_queue_place_survives_interruptions() {
        let semaphore = Arc::new(Semaphore::new(1));
        let held = Arc::clone(&semaphore).acquire_owned().await.unwrap();
        let mut p = Pacer::new(
            RateLimiter::direct(Quota::with_period(Duration::from_millis(1)).unwrap()),
            Arc::clone(&semaphore),
        );
        // Interrupted while queued behind the held permit.
        assert!(
            tokio::time::timeout(Duration::from_millis(20), p.ready(1))
                .await
                .is_err()
        );
        // Someone else queues now; our earlier place must come first.
        let later = tokio::spawn({
            let semaphore = Arc::clone(&semaphore);
            async move { semaphore.acquire_owned().await.unwrap() }
        });
        tokio::task::yield_now().await;
        drop(held);
        let ready = tokio::time::timeout(Duration::from_secs(1), p.ready(1))
            .await
            .expect("our queued place is served first")
            .unwrap();
        assert!(!later.is_finished());
        drop(ready.permit);
        drop(later.await.unwrap());
        assert!(p.is_settled());
    }

    #[tokio::test]
    async fn throughput_holds_the_rate_under_constant_interruption() {
        let period = Duration::from_millis(20);
        let mut p = pacer(period, 1);
        let start = Instant::now();
        let mut cells_sent = 0u32;
        // Mixed single- and multi-segment messages for about a second.
        for i in 0..30u32 {
            let cells = 1 + i % 3;
            let ready = ready_interrupted(&mut p, cells, Duration::from_millis(3)).await;
            drop(ready.permit);
            cells_sent += cells;
        }
        // The last message's owed cells are not yet paid: the pace is the
        // cells sent before it over the time taken.
        let paid = cells_sent - (1 + 29 % 3);
        let elapsed = start.elapsed().as_secs_f64();
        let limit = paid as f64 * period.as_secs_f64();
        assert!(
            elapsed <= limit * 1.25 + 0.05,
            "{paid} cells took {elapsed:.3} s; the limiter allows {limit:.3} s"
        );
        assert!(
            elapsed + 0.005 >= limit - period.as_secs_f64(),
            "faster than the rate"
        );
    }
}
