//! Latency summaries: nearest-rank percentiles over whole milliseconds.

use std::fmt;

/// p50, p90, p99 and max of a set of latencies (milliseconds), and how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub count: usize,
    pub p50: i64,
    pub p90: i64,
    pub p99: i64,
    pub max: i64,
}

/// The nearest-rank percentile `p` (0 < p ≤ 100) of `sorted` (ascending): the
/// smallest value with at least `p` % of the values at or below it. `None`
/// for no values.
#[must_use]
pub fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

impl Summary {
    /// The summary of `values` (any order); `None` for no values.
    #[must_use]
    pub fn of(mut values: Vec<i64>) -> Option<Self> {
        values.sort_unstable();
        Some(Self {
            count: values.len(),
            p50: percentile(&values, 50.0)?,
            p90: percentile(&values, 90.0)?,
            p99: percentile(&values, 99.0)?,
            max: *values.last()?,
        })
    }
}

/// `12 / 30 / 95 / 140` (p50 / p90 / p99 / max, ms).
impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} / {} / {} / {}",
            self.p50, self.p90, self.p99, self.max
        )
    }
}

/// Achieved rate of `count` events between the first and the last timestamp
/// (ms): `(count - 1) / span`. `None` below two events or for a zero span.
#[must_use]
pub fn rate(count: usize, first_ms: i64, last_ms: i64) -> Option<f64> {
    let span = last_ms - first_ms;
    if count < 2 || span <= 0 {
        return None;
    }
    #[allow(clippy::cast_precision_loss)]
    Some((count - 1) as f64 * 1000.0 / span as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50.0), Some(50));
        assert_eq!(percentile(&values, 90.0), Some(90));
        assert_eq!(percentile(&values, 99.0), Some(99));
        assert_eq!(percentile(&values, 100.0), Some(100));
        // Ten values: p99 is the largest, p50 the fifth.
        let ten: Vec<i64> = (1..=10).map(|v| v * 10).collect();
        assert_eq!(percentile(&ten, 50.0), Some(50));
        assert_eq!(percentile(&ten, 90.0), Some(90));
        assert_eq!(percentile(&ten, 99.0), Some(100));
        assert_eq!(percentile(&[7], 1.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn summary_sorts_and_takes_the_max() {
        let summary = Summary::of(vec![30, 5, 1000, 12, 12, 8, 40, 25, 9, 11]).expect("values");
        assert_eq!(
            summary,
            Summary {
                count: 10,
                p50: 12,
                p90: 40,
                p99: 1000,
                max: 1000
            }
        );
        assert_eq!(summary.to_string(), "12 / 40 / 1000 / 1000");
        assert_eq!(Summary::of(Vec::new()), None);
    }

    #[test]
    fn a_tail_shows_in_p99_but_not_p90() {
        let mut values = vec![10; 990];
        values.extend([500; 10]);
        let summary = Summary::of(values).expect("values");
        assert_eq!((summary.p50, summary.p90, summary.p99), (10, 10, 10));
        assert_eq!(summary.max, 500);
        let mut values = vec![10; 980];
        values.extend([500; 20]);
        assert_eq!(Summary::of(values).expect("values").p99, 500);
    }

    #[test]
    fn rates_over_the_span() {
        assert_eq!(rate(101, 1_000, 2_000), Some(100.0));
        assert_eq!(rate(1, 1_000, 2_000), None);
        assert_eq!(rate(5, 1_000, 1_000), None);
    }
}
