//! The open-loop load: message `i` of a run is due at `i / rate` seconds after
//! the start and is sent then, whether or not earlier ones were answered, so
//! a slow pipeline shows as queueing delay instead of a slower sender.
//! Latencies count from the due time, never from the moment a late send left.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use twilio_sandbox::{InboundSms, Webhooks};

use crate::accounting::token;

/// Milliseconds since the Unix epoch (the clock record timestamps use).
#[must_use]
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The number of bench user `n` (`+1415500nnnn` and up).
#[must_use]
pub fn user(n: usize) -> String {
    format!("+1415{:07}", 5_000_000 + n)
}

/// Our short code user `n` writes to: `20000` and up, `count` of them.
#[must_use]
pub fn short_code(n: usize, count: usize) -> String {
    (20_000 + n % count.max(1)).to_string()
}

/// One run's load.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The run's token id.
    pub run: String,
    /// Messages per second.
    pub rate: f64,
    /// How long messages are sent.
    pub duration: Duration,
    /// Distinct users, written round-robin.
    pub users: usize,
    /// Short codes the users write to.
    pub short_codes: usize,
    /// Most requests to ingress open at once (a send past it waits, still
    /// timed from its due moment).
    pub max_outstanding: usize,
}

impl Plan {
    /// How many messages the run sends.
    #[must_use]
    pub fn messages(&self) -> u64 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let n = (self.rate * self.duration.as_secs_f64()).round() as u64;
        n.max(1)
    }

    /// When message `seq` is due, in ms after the start.
    #[must_use]
    pub fn due_ms(&self, seq: u64) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let seq = seq as f64;
        seq * 1000.0 / self.rate
    }
}

/// One message as sent.
#[derive(Debug, Clone)]
pub struct Sent {
    pub seq: u64,
    /// When it was due (ms since the epoch).
    pub due_ms: i64,
    /// How late it really left (ms).
    pub lag_ms: i64,
    /// When ingress's final answer came (ms since the epoch), if one came.
    pub answered_ms: Option<i64>,
    /// Ingress's final status (after the retries Twilio would make for 5xx).
    pub status: Option<u16>,
}

impl Sent {
    /// Whether ingress stored it (2xx).
    #[must_use]
    pub fn accepted(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// Sends the plan's messages on schedule through `webhooks` (signed as Twilio
/// signs); returns them all, answered or not, in seq order.
pub async fn drive(webhooks: Arc<Webhooks>, plan: &Plan) -> Vec<Sent> {
    let total = plan.messages();
    let limit = Arc::new(Semaphore::new(plan.max_outstanding.max(1)));
    let start = tokio::time::Instant::now();
    let start_ms = now_ms();
    let mut tasks = JoinSet::new();
    let mut sent = Vec::with_capacity(usize::try_from(total).unwrap_or_default());
    for seq in 0..total {
        let due = plan.due_ms(seq);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        tokio::time::sleep_until(start + Duration::from_micros((due * 1000.0) as u64)).await;
        let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
            break;
        };
        #[allow(clippy::cast_possible_truncation)]
        let due_ms = start_ms + due.round() as i64;
        let n = usize::try_from(seq).unwrap_or_default() % plan.users.max(1);
        let sms = InboundSms {
            from: user(n),
            to: short_code(n, plan.short_codes),
            body: format!(
                "bench {} hello Si, how are you today?",
                token(&plan.run, seq)
            ),
            ..InboundSms::default()
        };
        let webhooks = Arc::clone(&webhooks);
        tasks.spawn(async move {
            let lag_ms = now_ms() - due_ms;
            let posted = webhooks.post_inbound_sms(&sms).await;
            drop(permit);
            Sent {
                seq,
                due_ms,
                lag_ms,
                answered_ms: posted.is_ok().then(now_ms),
                status: posted.ok().map(|p| p.status),
            }
        });
        // Collect finished sends as we go, so the set stays small.
        while let Some(done) = tasks.try_join_next() {
            if let Ok(s) = done {
                sent.push(s);
            }
        }
    }
    while let Some(done) = tasks.join_next().await {
        if let Ok(s) = done {
            sent.push(s);
        }
    }
    sent.sort_by_key(|s| s.seq);
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_evenly_spaced() {
        let plan = Plan {
            run: "r".into(),
            rate: 100.0,
            duration: Duration::from_secs(20),
            users: 10,
            short_codes: 2,
            max_outstanding: 10,
        };
        assert_eq!(plan.messages(), 2000);
        assert!((plan.due_ms(1) - 10.0).abs() < 1e-9);
        assert!((plan.due_ms(1999) - 19_990.0).abs() < 1e-9);
    }

    #[test]
    fn users_and_short_codes() {
        assert_eq!(user(0), "+14155000000");
        assert_eq!(user(123), "+14155000123");
        assert_eq!(short_code(0, 20), "20000");
        assert_eq!(short_code(21, 20), "20001");
        assert_eq!(short_code(5, 0), "20000");
    }
}
