//! The inbound rate limit: how fast the user of one conversation may write
//! before their messages are held back from the cognition layer.
//!
//! A generic cell rate algorithm (GCRA) over the messages' receive times
//! (ingress's, carried by the event), not over the time the stage reads
//! them: a backlog after an outage is not a burst, and a replay after a
//! crash decides every message as before. The account of a conversation is
//! one timestamp (and the flood it is in, if any) in consent's state store,
//! written in the same transaction as the decision it led to. A flood lasts
//! until the user has been quiet for an interval past the time the
//! allowance is whole again.

use std::fmt;
use std::time::Duration;

use si_schemas::records::RateAccount;

/// How much longer than its allowance takes to be whole an account is kept
/// (see [`RateLimit::keep_for`]).
pub const KEEP_SLACK: Duration = Duration::from_secs(3_600);

/// How fast the user of one conversation may write: a sustained rate of
/// `messages` per `period`, and up to `burst` messages at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    messages: u32,
    period: Duration,
    burst: u32,
}

/// What the limit says of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Forward it; the account afterwards.
    Forward(RateAccount),
    /// Hold it back; the account afterwards, and whether it is the first
    /// message held back in its flood (the one to record and to tell the
    /// user about).
    HoldBack {
        /// The account afterwards.
        account: RateAccount,
        /// The first held back in its flood.
        first: bool,
        /// When the next message would be forwarded (ms since the epoch).
        retry_at: i64,
    },
}

impl RateLimit {
    /// A sustained rate of `messages` per `period`, bursts of up to `burst`.
    ///
    /// # Errors
    /// When a count or the period is zero.
    pub fn new(messages: u32, period: Duration, burst: u32) -> Result<Self, String> {
        if messages == 0 || burst == 0 {
            return Err("the rate limit's messages and burst must be at least 1".into());
        }
        if period.as_millis() < u128::from(messages) {
            return Err(
                "the rate limit's period must be at least a millisecond per message".into(),
            );
        }
        Ok(Self {
            messages,
            period,
            burst,
        })
    }

    /// `<messages>/<period>` (`10/1m`, `300/1h`), or `off` for no limit.
    ///
    /// # Errors
    /// When it is neither, saying what is expected.
    pub fn parse(limit: &str, burst: u32) -> Result<Option<Self>, String> {
        let limit = limit.trim();
        if limit.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let expected =
            || format!("expected <messages>/<period> (e.g. 10/1m) or off, got {limit:?}");
        let (messages, period) = limit.split_once('/').ok_or_else(expected)?;
        let messages: u32 = messages.trim().parse().map_err(|_| expected())?;
        let period = humantime::parse_duration(period.trim()).map_err(|_| expected())?;
        Self::new(messages, period, burst).map(Some)
    }

    /// The time one message takes from the allowance (ms).
    fn interval_ms(self) -> i64 {
        let period = i64::try_from(self.period.as_millis()).unwrap_or(i64::MAX);
        period / i64::from(self.messages)
    }

    /// How far ahead of its theoretical arrival a message may come (ms).
    fn tolerance_ms(self) -> i64 {
        self.interval_ms()
            .saturating_mul(i64::from(self.burst).saturating_sub(1))
    }

    /// The TTL of an account written for a message received at `at`: as
    /// long as it is live (an interval past the time its allowance is whole
    /// again), plus [`KEEP_SLACK`]. The store expires entries by the
    /// records' timestamps and sweeps them by the wall clock, both of which
    /// run ahead of the receive times the limit decides by when the stage
    /// lags; the slack keeps an account through a backlog of up to an hour
    /// (a longer one gives each conversation a fresh burst at each sweep).
    /// A stale account is harmless: [`Self::admit`] reads it as none.
    #[must_use]
    pub fn keep_for(self, account: &RateAccount, at: i64) -> Duration {
        let ms = account
            .theoretical_arrival_at
            .saturating_add(self.interval_ms())
            .saturating_sub(at)
            .max(0);
        Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)).saturating_add(KEEP_SLACK)
    }

    /// Decides the message received at `at` (ms since the epoch) of a
    /// conversation whose account is `account` (`None`: whole).
    #[must_use]
    pub fn admit(self, account: Option<&RateAccount>, at: i64) -> Admission {
        let interval = self.interval_ms();
        let account = self.live(account, at);
        let arrival = account.map_or(at, |a| a.theoretical_arrival_at.max(at));
        let earliest = arrival.saturating_sub(self.tolerance_ms());
        // A flood lasts until the allowance is whole again: the messages it
        // lets through meanwhile (one per interval) do not end it, so the
        // user is told once per flood, not once per interval.
        let limited_since = account.and_then(|a| a.limited_since);
        let held_back = account.map_or(0, |a| a.held_back);
        if at >= earliest {
            return Admission::Forward(RateAccount {
                theoretical_arrival_at: arrival.saturating_add(interval),
                limited_since,
                held_back,
            });
        }
        Admission::HoldBack {
            account: RateAccount {
                theoretical_arrival_at: arrival,
                limited_since: Some(limited_since.unwrap_or(at)),
                held_back: held_back.saturating_add(1),
            },
            first: limited_since.is_none(),
            retry_at: earliest,
        }
    }

    /// Charges the message received at `at` to the account without
    /// holding it back (a message that must reach the cognition layer
    /// whatever the rate): the account afterwards, in the flood it was in.
    #[must_use]
    pub fn charge(self, account: Option<&RateAccount>, at: i64) -> RateAccount {
        let account = self.live(account, at);
        let arrival = account.map_or(at, |a| a.theoretical_arrival_at.max(at));
        RateAccount {
            theoretical_arrival_at: arrival.saturating_add(self.interval_ms()),
            limited_since: account.and_then(|a| a.limited_since),
            held_back: account.map_or(0, |a| a.held_back),
        }
    }

    /// The account, unless the user has been quiet for an interval past the
    /// time its allowance was whole again: then it is no account, and the
    /// flood it recorded, if any, is over. (An interval, not the moment
    /// itself: with a burst of one, every forwarded message comes at that
    /// moment, and would end the flood.)
    fn live(self, account: Option<&RateAccount>, at: i64) -> Option<&RateAccount> {
        account.filter(|a| a.theoretical_arrival_at.saturating_add(self.interval_ms()) > at)
    }

    /// The burst.
    #[must_use]
    pub fn burst(self) -> u32 {
        self.burst
    }
}

impl fmt::Display for RateLimit {
    /// `<messages>/<period>` as configured (`10/1m`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.messages,
            humantime::format_duration(self.period)
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const T0: i64 = 1_795_000_000_000;

    fn limit(spec: &str, burst: u32) -> RateLimit {
        RateLimit::parse(spec, burst).unwrap().unwrap()
    }

    /// Feeds messages at `times` (ms after T0) through the limit; which were forwarded.
    fn run(limit: RateLimit, times: &[i64]) -> Vec<bool> {
        let mut account: Option<RateAccount> = None;
        times
            .iter()
            .map(|t| {
                let at = T0 + t;
                match limit.admit(account.as_ref(), at) {
                    Admission::Forward(a) => {
                        account = Some(a);
                        true
                    }
                    Admission::HoldBack { account: a, .. } => {
                        account = Some(a);
                        false
                    }
                }
            })
            .collect()
    }

    #[test]
    fn parses_the_limit_and_off() {
        let l = limit("10/1m", 10);
        assert_eq!(l.interval_ms(), 6_000);
        assert_eq!(l.tolerance_ms(), 54_000);
        assert_eq!(l.to_string(), "10/1m");
        assert_eq!(limit(" 300 / 1h ", 5).interval_ms(), 12_000);
        assert_eq!(RateLimit::parse("off", 10).unwrap(), None);
        assert_eq!(RateLimit::parse("OFF", 10).unwrap(), None);
        for bad in [
            "", "10", "ten/1m", "10/soon", "0/1m", "-1/1m", "10/0s", "5/3ms",
        ] {
            let err = RateLimit::parse(bad, 10).unwrap_err();
            assert!(!err.is_empty(), "{bad:?}");
        }
        assert!(RateLimit::parse("10/1m", 0).is_err());
    }

    #[test]
    fn a_burst_passes_then_one_message_per_interval() {
        // 3 per 3 s, bursts of 3: three at once, then one a second.
        let l = limit("3/3s", 3);
        let forwarded = run(l, &[0, 10, 20, 30, 500, 1_000, 1_100, 2_000, 2_010]);
        assert_eq!(
            forwarded,
            [true, true, true, false, false, true, false, true, false]
        );
    }

    #[test]
    fn a_user_within_the_rate_is_never_held_back() {
        let l = limit("10/1m", 10);
        let times: Vec<i64> = (0..200).map(|i| i * 6_000).collect();
        assert!(run(l, &times).iter().all(|f| *f));
        // Irregular, but never more than the burst ahead.
        let times: Vec<i64> = (0..50)
            .map(|i| (i / 10) * 60_000 + (i % 10) * 100)
            .collect();
        assert!(run(l, &times).iter().all(|f| *f));
    }

    #[test]
    fn a_flood_is_held_to_the_sustained_rate() {
        // 100 messages a second for a minute against 10/1m with bursts of 10:
        // the burst, then one per 6 s.
        let l = limit("10/1m", 10);
        let times: Vec<i64> = (0..6_000).map(|i| i * 10).collect();
        let forwarded = run(l, &times).iter().filter(|f| **f).count();
        assert_eq!(forwarded, 10 + 9);
    }

    #[test]
    fn a_flood_is_marked_from_its_first_held_back_message_until_the_allowance_is_whole() {
        let l = limit("2/2s", 2);
        let mut account = None;
        let mut seen = Vec::new();
        // A flood (from 2 ms; the message at 1,100 passes within it), then
        // quiet until the allowance is whole (at 3,000), then a new flood.
        // Each: (forwarded, first held back, flood's start, held back so far).
        for t in [0, 1, 2, 3, 4, 1_100, 1_101, 4_000, 4_001, 4_002] {
            let (forwarded, first, a) = match l.admit(account.as_ref(), T0 + t) {
                Admission::Forward(a) => (true, None, a),
                Admission::HoldBack {
                    account: a,
                    first,
                    retry_at,
                } => {
                    assert!(retry_at > T0 + t);
                    (false, Some(first), a)
                }
            };
            seen.push((
                forwarded,
                first,
                a.limited_since.map(|at| at - T0),
                a.held_back,
            ));
            account = Some(a);
        }
        assert_eq!(
            seen,
            [
                (true, None, None, 0),
                (true, None, None, 0),
                (false, Some(true), Some(2), 1),
                (false, Some(false), Some(2), 2),
                (false, Some(false), Some(2), 3),
                (true, None, Some(2), 3),
                (false, Some(false), Some(2), 4),
                (true, None, None, 0),
                (true, None, None, 0),
                (false, Some(true), Some(4_002), 1),
            ]
        );
    }

    #[test]
    fn with_a_burst_of_one_a_flood_is_told_once_too() {
        // One a second, no burst; a message every 100 ms for 10 s.
        let l = limit("1/1s", 1);
        let mut account = None;
        let (mut firsts, mut forwarded) = (0, 0);
        for i in 0..100 {
            match l.admit(account.as_ref(), T0 + i * 100) {
                Admission::Forward(a) => {
                    forwarded += 1;
                    account = Some(a);
                }
                Admission::HoldBack {
                    account: a, first, ..
                } => {
                    firsts += usize::from(first);
                    account = Some(a);
                }
            }
        }
        assert_eq!((firsts, forwarded), (1, 10));
    }

    #[test]
    fn a_charged_message_uses_allowance_without_ending_the_flood() {
        let l = limit("2/2s", 2);
        let mut a = l.charge(None, T0);
        a = l.charge(Some(&a), T0 + 1);
        let Admission::HoldBack {
            account,
            first: true,
            ..
        } = l.admit(Some(&a), T0 + 2)
        else {
            panic!("the charges used the burst");
        };
        let charged = l.charge(Some(&account), T0 + 3);
        assert_eq!(charged.limited_since, Some(T0 + 2), "still the flood");
        assert_eq!(
            charged.theoretical_arrival_at,
            account.theoretical_arrival_at + 1_000
        );
    }

    #[test]
    fn a_sustained_flood_is_told_once() {
        // 100 a second for ten minutes against 10/1m: one first.
        let l = limit("10/1m", 10);
        let mut account = None;
        let mut firsts = 0;
        for i in 0..60_000 {
            match l.admit(account.as_ref(), T0 + i * 10) {
                Admission::Forward(a) => account = Some(a),
                Admission::HoldBack {
                    account: a, first, ..
                } => {
                    firsts += usize::from(first);
                    account = Some(a);
                }
            }
        }
        assert_eq!(firsts, 1);
    }

    #[test]
    fn an_account_is_kept_an_hour_past_its_allowance_and_read_as_none_then() {
        let l = limit("10/1m", 10);
        let Admission::Forward(a) = l.admit(None, T0) else {
            panic!("the first message is forwarded");
        };
        assert_eq!(a.theoretical_arrival_at, T0 + 6_000);
        assert_eq!(l.keep_for(&a, T0), Duration::from_secs(12) + KEEP_SLACK);
        assert_eq!(l.keep_for(&a, T0 + 13_000), KEEP_SLACK);
        // An account kept past its allowance and an interval reads as none.
        assert_eq!(
            l.admit(Some(&a), T0 + 12_000),
            l.admit(None, T0 + 12_000),
            "whole again"
        );
    }
}
