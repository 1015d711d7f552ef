//! The transactions each stage committed during a run, from the counters of
//! its `/metrics` read before and after: how many per second, how many input
//! records each carried, and how long its commit took on average. Every
//! transaction costs the broker a few requests and a marker per partition it
//! wrote to, the same whether it carries one record or a hundred, so these
//! figures say where the broker's time goes.

/// A stage's committed-transaction counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Commits {
    /// `si_transactions_total{outcome="committed"}`.
    pub transactions: f64,
    /// `si_transaction_records_sum`: input records of those transactions.
    pub records: f64,
    /// `si_transaction_commit_seconds_sum`.
    pub commit_seconds: f64,
}

impl Commits {
    /// The counters reached since `before` (a restart, which resets them,
    /// counts from zero).
    #[must_use]
    pub fn since(self, before: Self) -> Self {
        let delta = |now: f64, then: f64| if now >= then { now - then } else { now };
        Self {
            transactions: delta(self.transactions, before.transactions),
            records: delta(self.records, before.records),
            commit_seconds: delta(self.commit_seconds, before.commit_seconds),
        }
    }

    /// Committed transactions per second over `seconds`.
    #[must_use]
    pub fn per_second(&self, seconds: f64) -> Option<f64> {
        (self.transactions > 0.0 && seconds > 0.0).then(|| self.transactions / seconds)
    }

    /// Input records per committed transaction.
    #[must_use]
    pub fn records_per_transaction(&self) -> Option<f64> {
        (self.transactions > 0.0).then(|| self.records / self.transactions)
    }

    /// Mean time of a commit, in milliseconds.
    #[must_use]
    pub fn mean_commit_ms(&self) -> Option<f64> {
        (self.transactions > 0.0).then(|| self.commit_seconds / self.transactions * 1000.0)
    }

    /// One table cell: `per second / records each / mean commit ms`, or `–`
    /// for a stage that committed none (ingress, the echo responder).
    #[must_use]
    pub fn cell(&self, seconds: f64) -> String {
        match (
            self.per_second(seconds),
            self.records_per_transaction(),
            self.mean_commit_ms(),
        ) {
            (Some(rate), Some(records), Some(ms)) => {
                format!("{rate:.0} / {records:.1} / {ms:.1}")
            }
            _ => "–".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_counts_what_the_counters_gained_and_a_restart_counts_from_zero() {
        let before = Commits {
            transactions: 100.0,
            records: 400.0,
            commit_seconds: 1.0,
        };
        let after = Commits {
            transactions: 300.0,
            records: 1_400.0,
            commit_seconds: 2.0,
        };
        let run = after.since(before);
        assert_eq!(run.per_second(20.0), Some(10.0));
        assert_eq!(run.records_per_transaction(), Some(5.0));
        assert_eq!(run.mean_commit_ms(), Some(5.0));
        assert_eq!(run.cell(20.0), "10 / 5.0 / 5.0");
        let restarted = Commits {
            transactions: 50.0,
            records: 50.0,
            commit_seconds: 0.5,
        };
        assert_eq!(restarted.since(before).transactions, 50.0);
    }

    #[test]
    fn a_stage_that_committed_nothing_has_no_figures() {
        let none = Commits::default();
        assert_eq!(none.records_per_transaction(), None);
        assert_eq!(none.cell(20.0), "–");
    }
}
