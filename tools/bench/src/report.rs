//! One run's figures and the markdown tables (rates as rows).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::accounting::Tally;
use crate::commits::Commits;
use crate::procfs::Usage;
use crate::stats::{Summary, rate};
use crate::topics::{Hop, Stamps};

/// Column headers of the per-hop table, in order.
pub const HOPS: [&str; 8] = [
    "ingress answer (200)",
    "send → webhooks.v1 (ingress)",
    "→ conversation.events.v1 (normalize)",
    "→ inbound.v1 (consent)",
    "→ responses.v1 (echo responder)",
    "→ outbound.v1 (segment)",
    "→ Twilio sandbox (egress)",
    "→ delivery.v1 (egress status)",
];

/// What one rate measured.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Messages per second asked for.
    pub rate: f64,
    pub tally: Tally,
    /// Sends that left more than 50 ms after they were due (the generator
    /// itself fell behind), and the largest lag.
    pub late_sends: usize,
    pub max_lag_ms: i64,
    /// Replies the sandbox refused (429 past a sender's rate, other errors).
    pub refused_at_twilio: usize,
    /// Other messages to bench users (welcomes, notices): not replies.
    pub other_messages: usize,
    /// Seqs with more than one record, per topic (exactly once: zero).
    pub topic_duplicates: Vec<(&'static str, usize)>,
    /// One summary per [`HOPS`] column.
    pub hops: Vec<Option<Summary>>,
    /// Due time → the reply's request at the sandbox.
    pub e2e: Option<Summary>,
    /// Achieved messages per second per stage (its output's first records).
    pub throughput: Vec<(&'static str, Option<f64>)>,
    /// CPU and peak RSS per process over the run.
    pub usage: Vec<Usage>,
    /// Transactions each stage committed over the run, and the run's length
    /// in seconds (the CPU window: the sends and the drain).
    pub commits: Vec<(&'static str, Commits)>,
    pub seconds: f64,
}

/// Per message: when it was due, ingress's answer, its first record on each
/// hop's topic and its first accepted reply at the sandbox.
#[derive(Debug, Default, Clone)]
pub struct Timeline {
    pub due: BTreeMap<u64, i64>,
    pub answered: BTreeMap<u64, i64>,
    pub topics: Vec<(Hop, Stamps)>,
    /// seq → receive times (ms) of the accepted replies at the sandbox.
    pub replies: BTreeMap<u64, Vec<i64>>,
}

fn first(stamps: &Stamps) -> BTreeMap<u64, i64> {
    stamps
        .iter()
        .filter_map(|(seq, ts)| ts.iter().min().map(|t| (*seq, *t)))
        .collect()
}

/// `later - earlier` for every seq that has both.
fn deltas(earlier: &BTreeMap<u64, i64>, later: &BTreeMap<u64, i64>) -> Option<Summary> {
    Summary::of(
        later
            .iter()
            .filter_map(|(seq, t)| earlier.get(seq).map(|e| t - e))
            .collect(),
    )
}

impl Timeline {
    fn stamps(&self, hop: Hop) -> BTreeMap<u64, i64> {
        self.topics
            .iter()
            .find(|(h, _)| *h == hop)
            .map(|(_, s)| first(s))
            .unwrap_or_default()
    }

    fn reply_times(&self) -> BTreeMap<u64, i64> {
        self.replies
            .iter()
            .filter_map(|(seq, ts)| ts.iter().min().map(|t| (*seq, *t)))
            .collect()
    }

    /// One summary per [`HOPS`] column, then end to end.
    #[must_use]
    pub fn hops(&self) -> (Vec<Option<Summary>>, Option<Summary>) {
        let at = |hop| self.stamps(hop);
        let sandbox = self.reply_times();
        let hops = vec![
            deltas(&self.due, &self.answered),
            deltas(&self.due, &at(Hop::Webhooks)),
            deltas(&at(Hop::Webhooks), &at(Hop::Events)),
            deltas(&at(Hop::Events), &at(Hop::Inbound)),
            deltas(&at(Hop::Inbound), &at(Hop::Responses)),
            deltas(&at(Hop::Responses), &at(Hop::Outbound)),
            deltas(&at(Hop::Outbound), &sandbox),
            deltas(&sandbox, &at(Hop::Delivery)),
        ];
        (hops, deltas(&self.due, &sandbox))
    }

    /// Achieved messages per second of each stage, over its output's records.
    #[must_use]
    pub fn throughput(&self) -> Vec<(&'static str, Option<f64>)> {
        let of = |times: &BTreeMap<u64, i64>| {
            let first = times.values().min().copied().unwrap_or_default();
            let last = times.values().max().copied().unwrap_or_default();
            rate(times.len(), first, last)
        };
        let mut out: Vec<(&'static str, Option<f64>)> = Hop::ALL
            .iter()
            .filter(|hop| **hop != Hop::Delivery)
            .map(|hop| (hop.stage(), of(&self.stamps(*hop))))
            .collect();
        out.push(("si-egress", of(&self.reply_times())));
        out
    }

    /// Seqs with more than one record, per topic.
    #[must_use]
    pub fn topic_duplicates(&self) -> Vec<(&'static str, usize)> {
        self.topics
            .iter()
            .map(|(hop, stamps)| (hop.topic(), stamps.values().filter(|t| t.len() > 1).count()))
            .collect()
    }
}

fn cell(summary: Option<&Summary>) -> String {
    summary.map_or_else(|| "–".to_owned(), ToString::to_string)
}

fn rate_cell(rate: f64) -> String {
    if rate.fract() == 0.0 {
        format!("{rate:.0}")
    } else {
        format!("{rate}")
    }
}

/// The warm-up's one line: what it sent and how it was answered, and the
/// broker's CPU (the JIT compiling is what it is for).
#[must_use]
pub fn warmup_line(r: &RunResult, duration: std::time::Duration) -> String {
    let e2e = r.e2e.as_ref().map_or_else(
        || "no replies".to_owned(),
        |s| format!("e2e p50 {} ms, p99 {} ms", s.p50, s.p99),
    );
    let broker = r
        .usage
        .iter()
        .find(|u| u.name == "kafka")
        .and_then(|u| u.cpu_percent)
        .map_or_else(String::new, |cpu| format!("; kafka {cpu:.0} % of a core"));
    let outcome: Vec<String> = OUTCOME
        .iter()
        .zip(outcome(&r.tally))
        .map(|(name, n)| format!("{n} {name}"))
        .collect();
    format!(
        "Warm-up, not in the tables: {} msg/s for {duration:?}, {}; {e2e}{broker}",
        rate_cell(r.rate),
        outcome.join(", "),
    )
}

/// The outcome columns of a run, in the tables' order.
const OUTCOME: [&str; 5] = ["sent", "accepted", "replied", "lost", "duplicated"];

fn outcome(t: &Tally) -> [usize; 5] {
    [t.sent, t.accepted, t.replied, t.lost, t.duplicated]
}

/// The markdown tables: outcome and end to end, per hop, per stage.
#[must_use]
pub fn markdown(results: &[RunResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| rate (msg/s) | sent | accepted | replied | lost | duplicated | e2e p50 ms | p90 | p99 | max | replies/s |"
    );
    let _ = writeln!(
        out,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in results {
        let e2e = r.e2e.as_ref();
        let field =
            |f: fn(&Summary) -> i64| e2e.map_or_else(|| "–".to_owned(), |s| f(s).to_string());
        let replies = r
            .throughput
            .iter()
            .find(|(stage, _)| *stage == "si-egress")
            .and_then(|(_, rate)| *rate)
            .map_or_else(|| "–".to_owned(), |rate| format!("{rate:.0}"));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            rate_cell(r.rate),
            outcome(&r.tally).map(|n| n.to_string()).join(" | "),
            field(|s| s.p50),
            field(|s| s.p90),
            field(|s| s.p99),
            field(|s| s.max),
            replies,
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Per hop, ms, p50 / p90 / p99 / max:");
    let _ = writeln!(out);
    let _ = writeln!(out, "| rate | {} |", HOPS.join(" | "));
    let _ = writeln!(out, "|---:|{}", "---|".repeat(HOPS.len()));
    for r in results {
        let cells: Vec<String> = r.hops.iter().map(|h| cell(h.as_ref())).collect();
        let _ = writeln!(out, "| {} | {} |", rate_cell(r.rate), cells.join(" | "));
    }
    if let Some(first) = results.first() {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Throughput per stage, msg/s (its output records of the run):"
        );
        let _ = writeln!(out);
        let names: Vec<&str> = first.throughput.iter().map(|(n, _)| *n).collect();
        let _ = writeln!(out, "| rate | {} |", names.join(" | "));
        let _ = writeln!(out, "|---:|{}", "---:|".repeat(names.len()));
        for r in results {
            let cells: Vec<String> = r
                .throughput
                .iter()
                .map(|(_, t)| t.map_or_else(|| "–".to_owned(), |t| format!("{t:.0}")))
                .collect();
            let _ = writeln!(out, "| {} | {} |", rate_cell(r.rate), cells.join(" | "));
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "CPU (% of one core, average over the run) / peak RSS (MiB):"
        );
        let _ = writeln!(out);
        let names: Vec<&str> = first.usage.iter().map(|u| u.name.as_str()).collect();
        let _ = writeln!(out, "| rate | {} |", names.join(" | "));
        let _ = writeln!(out, "|---:|{}", "---:|".repeat(names.len()));
        for r in results {
            let cells: Vec<String> = r
                .usage
                .iter()
                .map(|u| {
                    let cpu = u
                        .cpu_percent
                        .map_or_else(|| "–".to_owned(), |c| format!("{c:.0} %"));
                    let rss = u
                        .peak_rss_mib
                        .map_or_else(|| "–".to_owned(), |m| format!("{m:.0}"));
                    format!("{cpu} / {rss}")
                })
                .collect();
            let _ = writeln!(out, "| {} | {} |", rate_cell(r.rate), cells.join(" | "));
        }
        commit_table(&mut out, results);
    }
    let _ = writeln!(out);
    for r in results {
        let dups: Vec<String> = r
            .topic_duplicates
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(topic, n)| format!("{topic} {n}"))
            .collect();
        let dups = if dups.is_empty() {
            "none".to_owned()
        } else {
            dups.join(", ")
        };
        let _ = writeln!(
            out,
            "- {}/s: {} not accepted by ingress (no 2xx after Twilio's retries), of them {} answered all the same (stored before the error); {} sends left over 50 ms late (max {} ms); {} replies refused by the sandbox; {} extra replies; {} other messages to the users; messages with more than one record on a topic: {dups}",
            rate_cell(r.rate),
            r.tally.sent - r.tally.accepted,
            r.tally.unexpected,
            r.late_sends,
            r.max_lag_ms,
            r.refused_at_twilio,
            r.tally.extra_replies,
            r.other_messages,
        );
    }
    out
}

/// Transactions per stage: per second, input records each, mean commit
/// time; and all stages' transactions per accepted message.
fn commit_table(out: &mut String, results: &[RunResult]) {
    let Some(first) = results.first() else {
        return;
    };
    let names: Vec<&str> = first
        .commits
        .iter()
        .filter(|(name, _)| {
            results.iter().any(|r| {
                r.commits
                    .iter()
                    .any(|(n, c)| n == name && c.transactions > 0.0)
            })
        })
        .map(|(name, _)| *name)
        .collect();
    if names.is_empty() {
        return;
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Transactions per stage: committed per second / input records each / mean commit ms; \
         and all stages' transactions per accepted message:"
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "| rate | {} | per message |", names.join(" | "));
    let _ = writeln!(out, "|---:|{}---:|", "---:|".repeat(names.len()));
    for r in results {
        let of = |name: &str| {
            r.commits
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, c)| *c)
                .unwrap_or_default()
        };
        let cells: Vec<String> = names.iter().map(|n| of(n).cell(r.seconds)).collect();
        let total: f64 = names.iter().map(|n| of(n).transactions).sum();
        #[allow(clippy::cast_precision_loss)]
        let per_message = if r.tally.accepted > 0 {
            format!("{:.1}", total / r.tally.accepted as f64)
        } else {
            "–".to_owned()
        };
        let _ = writeln!(
            out,
            "| {} | {} | {per_message} |",
            rate_cell(r.rate),
            cells.join(" | ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hops_chain_each_topic_to_the_one_before() {
        let mut t = Timeline::default();
        for seq in 0..3u64 {
            let base = 1_000 * i64::try_from(seq).expect("small");
            t.due.insert(seq, base);
            t.answered.insert(seq, base + 4);
            t.replies.insert(seq, vec![base + 60]);
        }
        let stamp = |offset: i64| -> Stamps {
            (0..3u64)
                .map(|s| (s, vec![1_000 * i64::try_from(s).expect("small") + offset]))
                .collect()
        };
        t.topics = vec![
            (Hop::Webhooks, stamp(3)),
            (Hop::Events, stamp(10)),
            (Hop::Inbound, stamp(20)),
            (Hop::Responses, stamp(30)),
            (Hop::Outbound, stamp(45)),
            (Hop::Delivery, stamp(70)),
        ];
        // A duplicate on one topic: the first record counts for the latency.
        t.topics[2].1.get_mut(&1).expect("seq 1").push(5_000);
        let (hops, e2e) = t.hops();
        let p50s: Vec<i64> = hops.iter().map(|h| h.expect("summary").p50).collect();
        assert_eq!(p50s, vec![4, 3, 7, 10, 10, 15, 15, 10]);
        assert_eq!(e2e.expect("e2e").max, 60);
        assert_eq!(
            t.topic_duplicates().iter().map(|(_, n)| *n).sum::<usize>(),
            1
        );
        let throughput = t.throughput();
        assert_eq!(throughput.len(), 6);
        assert!(
            throughput
                .iter()
                .all(|(_, r)| r.is_some_and(|r| (r - 1.0).abs() < 1e-9))
        );
    }

    #[test]
    fn the_warmup_line_and_the_table_give_the_same_outcome() {
        let mut ledger = crate::accounting::Ledger::default();
        for seq in 0..3 {
            ledger.sent(seq, true);
        }
        ledger.replied(0);
        ledger.replied(1);
        ledger.replied(1);
        let result = RunResult {
            rate: 50.0,
            tally: ledger.tally(),
            late_sends: 0,
            max_lag_ms: 0,
            refused_at_twilio: 0,
            other_messages: 0,
            topic_duplicates: Vec::new(),
            hops: Vec::new(),
            e2e: Some(Summary {
                count: 2,
                p50: 12,
                p90: 30,
                p99: 41,
                max: 41,
            }),
            throughput: Vec::new(),
            usage: vec![crate::procfs::Usage {
                name: "kafka".to_owned(),
                cpu_percent: Some(87.4),
                peak_rss_mib: None,
            }],
            commits: vec![
                ("si-ingress", Commits::default()),
                (
                    "si-normalize",
                    Commits {
                        transactions: 4.0,
                        records: 6.0,
                        commit_seconds: 0.02,
                    },
                ),
            ],
            seconds: 2.0,
        };
        assert_eq!(
            warmup_line(&result, std::time::Duration::from_secs(20)),
            "Warm-up, not in the tables: 50 msg/s for 20s, 3 sent, 3 accepted, 2 replied, 1 lost, \
             1 duplicated; e2e p50 12 ms, p99 41 ms; kafka 87 % of a core"
        );
        let table = markdown(&[result]);
        // The tables' first row has the same outcome, column by column.
        assert!(
            table.contains("\n| 50 | 3 | 3 | 2 | 1 | 1 | 12 | 30 | 41 | 41 | – |\n"),
            "{}",
            table
        );
        // Only stages that committed get a column; 4 transactions for 3 messages.
        assert!(
            table.contains("| rate | si-normalize | per message |\n|---:|---:|---:|\n| 50 | 2 / 1.5 / 5.0 | 1.3 |\n"),
            "{}",
            table
        );
    }
}
