//! Per-sender rate limits: the sender type follows from the sender key, its
//! rate from configuration (with per-sender overrides).

use std::collections::{BTreeMap, VecDeque};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// The span of a sender's rate its limiter lets through at once (see
/// [`Rates::burst`]): arrivals come in batches (a stage's transaction), and
/// spacing a batch out one period apart only delays its last messages.
pub const BURST_SPAN: Duration = Duration::from_millis(100);

/// The kind of a sending identity, which sets its default throughput
/// (shared with segment's delivery metrics).
pub use si_consent_gate::SenderClass as SenderType;

/// Messages per second by sender type, per-sender overrides, and the headroom.
#[derive(Debug, Clone, PartialEq)]
pub struct Rates {
    /// [`SenderType::LongCode`].
    pub long_code: f64,
    /// [`SenderType::TollFree`].
    pub toll_free: f64,
    /// [`SenderType::ShortCode`].
    pub short_code: f64,
    /// [`SenderType::MessagingService`].
    pub messaging_service: f64,
    /// [`SenderType::WhatsApp`].
    pub whatsapp: f64,
    /// [`SenderType::Voice`].
    pub voice: f64,
    /// [`SenderType::Other`].
    pub default: f64,
    /// Exact sender keys with their own rate.
    pub overrides: BTreeMap<String, f64>,
    /// Fraction of the rate actually used.
    pub headroom: f64,
}

impl Rates {
    /// Checks every rate is a positive finite number and the headroom in (0, 1].
    ///
    /// # Errors
    /// Naming the offending setting.
    pub fn validate(&self) -> Result<(), String> {
        let named = [
            ("EGRESS_RATE_LONG_CODE", self.long_code),
            ("EGRESS_RATE_TOLL_FREE", self.toll_free),
            ("EGRESS_RATE_SHORT_CODE", self.short_code),
            ("EGRESS_RATE_MESSAGING_SERVICE", self.messaging_service),
            ("EGRESS_RATE_WHATSAPP", self.whatsapp),
            ("EGRESS_RATE_VOICE", self.voice),
            ("EGRESS_RATE_DEFAULT", self.default),
        ];
        for (name, rate) in named
            .into_iter()
            .chain(self.overrides.values().map(|r| ("EGRESS_SENDER_RATES", *r)))
        {
            if !rate.is_finite() || rate <= 0.0 || rate > 100_000.0 {
                return Err(format!("{name}: {rate} is not a rate in (0, 100000]"));
            }
        }
        if !(self.headroom > 0.0 && self.headroom <= 1.0) {
            return Err(format!(
                "EGRESS_RATE_HEADROOM: {} is not in (0, 1]",
                self.headroom
            ));
        }
        Ok(())
    }

    /// The configured messages per second of a sender.
    #[must_use]
    pub fn rate(&self, sender_key: &str) -> f64 {
        if let Some(rate) = self.overrides.get(sender_key) {
            return *rate;
        }
        match SenderType::of(sender_key) {
            SenderType::LongCode => self.long_code,
            SenderType::TollFree => self.toll_free,
            SenderType::ShortCode => self.short_code,
            SenderType::MessagingService => self.messaging_service,
            SenderType::WhatsApp => self.whatsapp,
            SenderType::Voice => self.voice,
            SenderType::Chat | SenderType::Other => self.default,
        }
    }

    /// The interval between two sends of a sender: `1 / (rate × headroom)`.
    #[must_use]
    pub fn period(&self, sender_key: &str) -> Duration {
        Duration::from_secs_f64(1.0 / (self.rate(sender_key) * self.headroom))
    }

    /// How many cells a rested sender may take at once: what its rate allows
    /// in [`BURST_SPAN`] (at least one). A short code at 97/s may send 9
    /// messages of a batch together instead of one every 10 ms; a long code,
    /// WhatsApp or a Messaging Service at 10/s or less gets no burst.
    #[must_use]
    pub fn burst(&self, sender_key: &str) -> NonZeroU32 {
        let cells = self.rate(sender_key) * self.headroom * BURST_SPAN.as_secs_f64();
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        NonZeroU32::new(cells.floor() as u32).unwrap_or(NonZeroU32::MIN)
    }

    /// A limiter for one sender: one cell every [`Self::period`], and up to
    /// [`Self::burst`] at once after a rest. The burst can let more than the
    /// rate into one second; [`SendWindow`] holds the requests to it.
    #[must_use]
    pub fn limiter(&self, sender_key: &str) -> DefaultDirectRateLimiter {
        let quota = Quota::with_period(self.period(sender_key))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(self.burst(sender_key));
        RateLimiter::direct(quota)
    }
}

/// A sliding one-second window over a sender's actual request starts: at
/// most `floor(rate)` requests in any `1 s / headroom`. The limiter paces the
/// cells; this guards the moment the request really leaves, so scheduling
/// delays between a cell and its request cannot bunch requests together.
#[derive(Debug)]
pub struct SendWindow {
    max: usize,
    len: Duration,
    sent: tokio::sync::Mutex<VecDeque<tokio::time::Instant>>,
}

impl SendWindow {
    /// The window of a sender; `None` below one message per second (the
    /// limiter's spacing is then over a second already).
    #[must_use]
    pub fn new(rates: &Rates, sender_key: &str) -> Option<Self> {
        let rate = rates.rate(sender_key);
        if rate < 1.0 {
            return None;
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let max = rate.floor() as usize;
        Some(Self {
            max,
            len: Duration::from_secs_f64(1.0 / rates.headroom),
            sent: tokio::sync::Mutex::new(VecDeque::with_capacity(max)),
        })
    }

    /// Waits until one more request fits the window and records it.
    pub async fn admit(&self) {
        let mut sent = self.sent.lock().await;
        loop {
            let now = tokio::time::Instant::now();
            while sent
                .front()
                .is_some_and(|first| now.duration_since(*first) >= self.len)
            {
                sent.pop_front();
            }
            if sent.len() < self.max {
                sent.push_back(now);
                return;
            }
            let first = sent.front().copied().unwrap_or(now);
            tokio::time::sleep_until(first + self.len).await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rates() -> Rates {
        Rates {
            long_code: 1.0,
            toll_free: 3.0,
            short_code: 100.0,
            messaging_service: 10.0,
            whatsapp: 80.0,
            voice: 1.0,
            default: 1.0,
            overrides: BTreeMap::from([("sms:+14155550100".to_owned(), 10.0)]),
            headroom: 1.0,
        }
    }

    #[test]
    fn rates_by_type_and_override() {
        let r = rates();
        assert!((r.rate("sms:+14155550123") - 1.0).abs() < f64::EPSILON);
        assert!((r.rate("sms:+14155550100") - 10.0).abs() < f64::EPSILON);
        assert!((r.rate("whatsapp:+14155550100") - 80.0).abs() < f64::EPSILON);
        assert_eq!(r.period("sms:+14155550100"), Duration::from_millis(100));
        let slower = Rates {
            headroom: 0.5,
            ..rates()
        };
        assert_eq!(
            slower.period("sms:+14155550100"),
            Duration::from_millis(200)
        );
    }

    #[test]
    fn bad_rates_are_refused() {
        let mut r = rates();
        r.whatsapp = 0.0;
        assert!(r.validate().unwrap_err().contains("EGRESS_RATE_WHATSAPP"));
        let mut r = rates();
        r.headroom = 1.5;
        assert!(r.validate().is_err());
        let mut r = rates();
        r.overrides.insert("x".into(), f64::NAN);
        assert!(r.validate().is_err());
        assert!(rates().validate().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_admits_the_rate_per_window() {
        let r = rates();
        let window = SendWindow::new(&r, "sms:+14155550100").unwrap();
        let start = tokio::time::Instant::now();
        for _ in 0..10 {
            window.admit().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        window.admit().await;
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(1),
            "the 11th waits for the window"
        );
        assert!(
            SendWindow::new(
                &Rates {
                    long_code: 0.5,
                    ..r
                },
                "sms:+14155550123"
            )
            .is_none()
        );
    }

    #[test]
    fn a_slow_sender_gets_no_burst_and_a_short_code_a_tenth_of_a_second() {
        let r = Rates {
            headroom: 0.97,
            ..rates()
        };
        // 10/s × 0.97 × 0.1 s: under two cells, so one.
        let limiter = r.limiter("sms:+14155550100");
        assert!(limiter.check().is_ok());
        assert!(limiter.check().is_err(), "a second cell at once is a burst");
        assert_eq!(r.burst("sms:+14155550123").get(), 1);
        // 100/s × 0.97 × 0.1 s = 9.7: nine at once, then one per period.
        assert_eq!(r.burst("sms:12345").get(), 9);
        let limiter = r.limiter("sms:12345");
        for cell in 0..9 {
            assert!(limiter.check().is_ok(), "cell {cell} of the burst");
        }
        assert!(limiter.check().is_err(), "the tenth waits for the period");
    }
}
