//! `sictl report --from <time> --to <time>`: what the channel did in a time
//! range, read from the topics themselves (record timestamps, read_committed):
//!
//! - messages sent: egress's ACCEPTED statuses of messages on
//!   `twilio.delivery.v1` with `remediation` null (one per message Twilio
//!   accepted, resends included; not the answers to commands), by channel
//!   (the channel of the operation on `twilio.outbound.v1`);
//! - delivered (or read), undelivered and failed: the first final
//!   DELIVERY_UPDATED report per message SID on `si.conversation.events.v1`,
//!   and the delivery rate, delivered / sent, by channel;
//! - remediation decisions by action (`twilio.delivery.v1` records with
//!   `remediation` set);
//! - opt-outs and opt-ins per UTC day (`si.compliance.v1` OPT_OUT / OPT_IN);
//! - segments and the estimated cost per channel and country: the accepted
//!   messages' segments (Twilio's count on the status, else the operation's)
//!   priced with `PRICE_TABLE` ([`si_segment::pricing`]: an estimate);
//! - escalations: voice-link's CREATE_CALL operations and their outcomes.
//!
//! Each partition is read from the first offset at or after `--from`
//! (offsetsForTimes) to its end when the report starts; records stamped at
//! or after `--to` are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::Message as _;
use rdkafka::TopicPartitionList;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer as _, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::Offset;
use serde::Serialize;
use si_runtime::KafkaArgs;
use si_runtime::table::EndOfPartitionIsFine;
use si_schemas::records::{
    Channel, ComplianceEvent, ComplianceEventKind, ConversationEvent, ConversationEventType,
    DeliveryOutcome, DeliveryStatus, OperationKind, OutboundOperation,
};
use si_schemas::{AvroRecord, Codec, topics};
use si_segment::pricing::{PriceTable, UNKNOWN_COUNTRY, country_of};
use si_segment::stage::final_status;

/// `sictl report`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportCommand {
    /// Start of the range (inclusive): an RFC 3339 time
    /// (`2026-12-03T00:00:00Z`) or a duration before now (`24h`, `7days`).
    #[arg(long)]
    pub from: String,
    /// End of the range (exclusive), the same forms; default: now.
    #[arg(long, default_value = "now")]
    pub to: String,
    /// Prints the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Prices for the estimated cost, as segment's PRICE_TABLE
    /// (`sms:US=0.0083,sms:*=0.05,whatsapp:*=0.005`, USD per SMS segment or
    /// WhatsApp message). Empty: no cost is estimated.
    #[arg(long, env = "PRICE_TABLE", default_value = "")]
    pub price_table: String,
    /// Longest time to read each topic to its end, e.g. `60s`.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// A time argument: `now`, RFC 3339, or a duration before `now_ms`.
///
/// # Errors
/// When the text is none of these.
pub fn parse_time(text: &str, now_ms: i64) -> anyhow::Result<i64> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("now") {
        return Ok(now_ms);
    }
    if let Ok(at) = text.parse::<jiff::Timestamp>() {
        return Ok(at.as_millisecond());
    }
    let ago = humantime::parse_duration(text).map_err(|_| {
        anyhow::anyhow!(
            "{text:?}: expected an RFC 3339 time (2026-12-03T00:00:00Z), a duration before now (24h) or now"
        )
    })?;
    let ago = i64::try_from(ago.as_millis()).unwrap_or(i64::MAX);
    Ok(now_ms.saturating_sub(ago))
}

/// A decoded record and its timestamp.
#[derive(Debug, Clone)]
pub struct Timed<T> {
    /// Record timestamp (ms since the epoch).
    pub at: i64,
    pub record: T,
}

/// The records a report is made of.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// `twilio.delivery.v1`.
    pub statuses: Vec<Timed<DeliveryStatus>>,
    /// `si.conversation.events.v1` (DELIVERY_UPDATED are used).
    pub events: Vec<Timed<ConversationEvent>>,
    /// `si.compliance.v1`.
    pub compliance: Vec<Timed<ComplianceEvent>>,
    /// `twilio.outbound.v1`.
    pub operations: Vec<Timed<OutboundOperation>>,
}

/// Outcomes of one channel's messages.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Deliveries {
    /// Accepted by Twilio (egress's ACCEPTED, remediation null).
    pub sent: u64,
    /// First final report delivered or read.
    pub delivered: u64,
    pub undelivered: u64,
    pub failed: u64,
    /// delivered / sent (`None` when nothing was sent).
    pub delivery_rate: Option<f64>,
}

impl Deliveries {
    fn rate(&mut self) {
        self.delivery_rate = (self.sent > 0).then(|| ratio(self.delivered, self.sent));
    }
}

#[allow(clippy::cast_precision_loss)]
fn ratio(a: u64, b: u64) -> f64 {
    a as f64 / b as f64
}

/// Opt-outs and opt-ins of one day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConsentDay {
    pub opt_outs: u64,
    pub opt_ins: u64,
}

/// Segments and cost of one channel and country.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CostRow {
    pub channel: String,
    pub country: String,
    pub messages: u64,
    pub segments: u64,
    /// USD from the price table; `None` without a price for it.
    pub estimated_usd: Option<f64>,
}

/// Escalations to a call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Escalations {
    /// CREATE_CALL operations written.
    pub calls_requested: u64,
    /// ... that Twilio accepted.
    pub calls_accepted: u64,
    /// ... that failed, were dead-lettered or blocked.
    pub calls_not_placed: u64,
}

/// The report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// The range, RFC 3339, `from` inclusive, `to` exclusive.
    pub from: String,
    pub to: String,
    /// Every message.
    pub messages: Deliveries,
    /// By channel (`sms`, `whatsapp`, `chat`, `unknown`).
    pub by_channel: BTreeMap<String, Deliveries>,
    /// Remediation decisions by action (`retry_later`, `resend_as_template`,
    /// `fallback_channel`, `give_up`, `recovered`).
    pub remediations: BTreeMap<String, u64>,
    pub opt_outs: u64,
    pub opt_ins: u64,
    /// Per UTC day (`2026-12-03`).
    pub consent_by_day: BTreeMap<String, ConsentDay>,
    /// Accepted messages' segments and estimated cost.
    pub cost: Vec<CostRow>,
    /// The sum of the rows with a price.
    pub estimated_usd: f64,
    /// The price table used (normalised), empty when none.
    pub price_table: String,
    pub escalations: Escalations,
    /// Records read per topic (in the range).
    pub records: BTreeMap<String, u64>,
}

/// Whether a status of `kind` (its own, else its operation's) is the outcome
/// of a message. Without a kind it is a message only if egress made a
/// request for it (`attempts`; a record written before statuses had a
/// kind); the answer to a command (lifecycle's `lifecycle-start-…`,
/// voice-link's `voice-command-…`) made none.
fn is_message(kind: Option<OperationKind>, attempts: i32) -> bool {
    match kind {
        Some(kind) => matches!(
            kind,
            OperationKind::SendMessage | OperationKind::SendConversationMessage
        ),
        None => attempts > 0,
    }
}

fn channel_label(channel: Channel) -> String {
    channel.key_prefix().to_owned()
}

fn day_of(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(
        |_| "invalid".to_owned(),
        |t| t.to_zoned(jiff::tz::TimeZone::UTC).date().to_string(),
    )
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

/// The report of `inputs` (already limited to the range).
#[must_use]
pub fn summarize(inputs: &Inputs, prices: &PriceTable, from: i64, to: i64) -> Report {
    let mut report = Report {
        from: rfc3339(from),
        to: rfc3339(to),
        price_table: prices.to_string(),
        ..Report::default()
    };
    let channel_of_sid = count_sent(&mut report, inputs, prices);
    count_deliveries(&mut report, inputs, &channel_of_sid);
    report.messages.rate();
    for figures in report.by_channel.values_mut() {
        figures.rate();
    }
    count_consent(&mut report, inputs);
    report.escalations.calls_requested = inputs
        .operations
        .iter()
        .filter(|t| t.record.kind == OperationKind::CreateCall)
        .map(|t| t.record.operation_id.as_str())
        .collect::<BTreeSet<_>>()
        .len() as u64;
    report
}

/// Egress's statuses: messages sent and their estimated cost, calls placed
/// or not, and segment's remediation records. Returns each sent message's
/// channel by its SID.
fn count_sent<'a>(
    report: &mut Report,
    inputs: &'a Inputs,
    prices: &PriceTable,
) -> BTreeMap<&'a str, String> {
    let operations: BTreeMap<&str, &OutboundOperation> = inputs
        .operations
        .iter()
        .map(|t| (t.record.operation_id.as_str(), &t.record))
        .collect();
    let mut seen_ops: BTreeSet<&str> = BTreeSet::new();
    let mut channel_of_sid: BTreeMap<&str, String> = BTreeMap::new();
    let mut costs: BTreeMap<(String, String), CostRow> = BTreeMap::new();
    for Timed { record: s, .. } in &inputs.statuses {
        if let Some(remediation) = &s.remediation {
            *report
                .remediations
                .entry(remediation.action.as_str().to_ascii_lowercase())
                .or_default() += 1;
            continue;
        }
        if !seen_ops.insert(s.operation_id.as_str()) {
            continue;
        }
        let op = operations.get(s.operation_id.as_str()).copied();
        let kind = s.kind.or(op.map(|op| op.kind));
        if kind == Some(OperationKind::CreateCall) {
            match s.outcome {
                DeliveryOutcome::Accepted => report.escalations.calls_accepted += 1,
                DeliveryOutcome::Unknown => {}
                _ => report.escalations.calls_not_placed += 1,
            }
            continue;
        }
        if s.outcome != DeliveryOutcome::Accepted || !is_message(kind, s.attempts) {
            continue;
        }
        let channel = op.map_or_else(|| "unknown".to_owned(), |op| channel_label(op.channel));
        if let Some(sid) = s.twilio_sid.as_deref().filter(|sid| !sid.is_empty()) {
            channel_of_sid.insert(sid, channel.clone());
        }
        report.messages.sent += 1;
        report.by_channel.entry(channel.clone()).or_default().sent += 1;
        let country = op
            .and_then(|op| op.to.as_deref())
            .map_or_else(|| UNKNOWN_COUNTRY.to_owned(), country_of);
        let segments = s
            .segments
            .or_else(|| op.and_then(|op| op.segments))
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0)
            .unwrap_or(1);
        let row = costs
            .entry((channel.clone(), country.clone()))
            .or_insert_with(|| CostRow {
                channel,
                country: country.clone(),
                estimated_usd: Some(0.0),
                ..CostRow::default()
            });
        row.messages += 1;
        row.segments += u64::from(segments);
        let estimate = op.and_then(|op| prices.estimate(op.channel, &country, segments));
        row.estimated_usd = match (row.estimated_usd, estimate) {
            (Some(sum), Some(cost)) => Some(sum + cost),
            _ => None,
        };
    }
    report.cost = costs.into_values().collect();
    // Folded from 0.0: a float sum of nothing is -0.0.
    report.estimated_usd = report
        .cost
        .iter()
        .filter_map(|r| r.estimated_usd)
        .fold(0.0, |sum, usd| sum + usd);
    channel_of_sid
}

/// The first final delivery report of each message, under the channel it
/// was sent on.
fn count_deliveries(report: &mut Report, inputs: &Inputs, channel_of_sid: &BTreeMap<&str, String>) {
    let mut concluded: BTreeSet<&str> = BTreeSet::new();
    for Timed { record: e, .. } in &inputs.events {
        if e.event_type != ConversationEventType::DeliveryUpdated {
            continue;
        }
        let Some(d) = &e.delivery else { continue };
        let Some(status) = final_status(d.status) else {
            continue;
        };
        if d.message_sid.is_empty() || !concluded.insert(d.message_sid.as_str()) {
            continue;
        }
        let channel = channel_of_sid
            .get(d.message_sid.as_str())
            .cloned()
            .unwrap_or_else(|| channel_label(e.channel));
        let figures = report.by_channel.entry(channel).or_default();
        for f in [&mut report.messages, figures] {
            match status {
                "delivered" | "read" => f.delivered += 1,
                "undelivered" => f.undelivered += 1,
                _ => f.failed += 1,
            }
        }
    }
}

/// Opt-outs and opt-ins, in all and by day, each compliance event once.
fn count_consent(report: &mut Report, inputs: &Inputs) {
    let mut compliance_ids: BTreeSet<&str> = BTreeSet::new();
    for Timed { at, record: c } in &inputs.compliance {
        if !matches!(
            c.kind,
            ComplianceEventKind::OptOut | ComplianceEventKind::OptIn
        ) || !compliance_ids.insert(c.event_id.as_str())
        {
            continue;
        }
        let day = report.consent_by_day.entry(day_of(*at)).or_default();
        if c.kind == ComplianceEventKind::OptOut {
            day.opt_outs += 1;
            report.opt_outs += 1;
        } else {
            day.opt_ins += 1;
            report.opt_ins += 1;
        }
    }
}

/// The human form of a report.
#[must_use]
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let pct =
        |rate: Option<f64>| rate.map_or_else(|| "-".to_owned(), |r| format!("{:.1}%", r * 100.0));
    let _ = writeln!(out, "Report {} .. {}", report.from, report.to);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<10} {:>8} {:>10} {:>12} {:>8} {:>14}",
        "channel", "sent", "delivered", "undelivered", "failed", "delivery rate"
    );
    for (channel, f) in report
        .by_channel
        .iter()
        .chain(std::iter::once((&"all".to_owned(), &report.messages)))
    {
        let _ = writeln!(
            out,
            "{channel:<10} {:>8} {:>10} {:>12} {:>8} {:>14}",
            f.sent,
            f.delivered,
            f.undelivered,
            f.failed,
            pct(f.delivery_rate)
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "remediation decisions");
    if report.remediations.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for (action, n) in &report.remediations {
        let _ = writeln!(out, "  {action:<20} {n:>8}");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "consent (UTC day)       opt-outs  opt-ins");
    for (day, c) in &report.consent_by_day {
        let _ = writeln!(out, "  {day:<20} {:>9} {:>8}", c.opt_outs, c.opt_ins);
    }
    let _ = writeln!(
        out,
        "  {:<20} {:>9} {:>8}",
        "total", report.opt_outs, report.opt_ins
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<10} {:<8} {:>8} {:>9} {:>14}",
        "channel", "country", "messages", "segments", "estimated USD"
    );
    for row in &report.cost {
        let usd = row
            .estimated_usd
            .map_or_else(|| "no price".to_owned(), |usd| format!("{usd:.4}"));
        let _ = writeln!(
            out,
            "{:<10} {:<8} {:>8} {:>9} {:>14}",
            row.channel, row.country, row.messages, row.segments, usd
        );
    }
    let unpriced = report
        .cost
        .iter()
        .filter(|r| r.estimated_usd.is_none())
        .count();
    let total_usd = if unpriced > 0 && unpriced == report.cost.len() {
        "no price".to_owned()
    } else {
        format!("{:.4}", report.estimated_usd)
    };
    let _ = writeln!(
        out,
        "{:<10} {:<8} {:>8} {:>9} {:>14}",
        "total",
        "",
        report.cost.iter().map(|r| r.messages).sum::<u64>(),
        report.cost.iter().map(|r| r.segments).sum::<u64>(),
        total_usd
    );
    let left_out = if unpriced > 0 && unpriced < report.cost.len() {
        "; the rows with no price are not in the total"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "(an estimate from PRICE_TABLE {:?}{left_out}; Twilio's invoice is the truth)",
        report.price_table
    );
    let _ = writeln!(out);
    let e = &report.escalations;
    let _ = writeln!(
        out,
        "escalations: {} calls requested, {} accepted by Twilio, {} not placed",
        e.calls_requested, e.calls_accepted, e.calls_not_placed
    );
    out
}

/// Reads the topics for `[from, to)` and makes the report.
///
/// # Errors
/// When a topic cannot be read to its end within the timeout.
pub async fn run(
    kafka: &KafkaArgs,
    codec: &Codec,
    command: &ReportCommand,
    now_ms: i64,
) -> anyhow::Result<Report> {
    let from = parse_time(&command.from, now_ms).context("--from")?;
    let to = parse_time(&command.to, now_ms).context("--to")?;
    anyhow::ensure!(from < to, "--from must be before --to");
    let prices = PriceTable::parse(&command.price_table)?;
    let timeout = command.timeout;
    let inputs = Inputs {
        statuses: read_range(kafka, codec, topics::DELIVERY, from, to, timeout).await?,
        events: read_range(kafka, codec, topics::CONVERSATION_EVENTS, from, to, timeout).await?,
        compliance: read_range(kafka, codec, topics::COMPLIANCE, from, to, timeout).await?,
        operations: read_range(kafka, codec, topics::OUTBOUND, from, to, timeout).await?,
    };
    let mut report = summarize(&inputs, &prices, from, to);
    report.records = BTreeMap::from([
        (topics::DELIVERY.to_owned(), inputs.statuses.len() as u64),
        (
            topics::CONVERSATION_EVENTS.to_owned(),
            inputs.events.len() as u64,
        ),
        (
            topics::COMPLIANCE.to_owned(),
            inputs.compliance.len() as u64,
        ),
        (topics::OUTBOUND.to_owned(), inputs.operations.len() as u64),
    ]);
    Ok(report)
}

/// Where each partition starts (the first offset at or after `from`) and ends now.
fn bounds(probe: &BaseConsumer, topic: &str, from: i64) -> anyhow::Result<Vec<(i32, Offset, i64)>> {
    let call = Duration::from_secs(10);
    let metadata = probe.fetch_metadata(Some(topic), call)?;
    let meta = metadata
        .topics()
        .first()
        .ok_or_else(|| anyhow::anyhow!("no metadata for {topic}"))?;
    if let Some(error) = meta.error() {
        anyhow::bail!("topic {topic}: {error:?}");
    }
    let mut times = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in meta.partitions() {
        let (_, high) = probe.fetch_watermarks(topic, p.id(), call)?;
        ends.insert(p.id(), high);
        times.add_partition_offset(topic, p.id(), Offset::Offset(from))?;
    }
    let starts = probe.offsets_for_times(times, call)?;
    Ok(starts
        .elements()
        .iter()
        .map(|e| {
            (
                e.partition(),
                e.offset(),
                ends.get(&e.partition()).copied().unwrap_or(0),
            )
        })
        .collect())
}

/// Every committed record of `name` (without the prefix) stamped in
/// `[from, to)`, read from offsetsForTimes(`from`) to the end at start.
async fn read_range<T: AvroRecord>(
    kafka: &KafkaArgs,
    codec: &Codec,
    name: &str,
    from: i64,
    to: i64,
    timeout: Duration,
) -> anyhow::Result<Vec<Timed<T>>> {
    let topic = kafka.topic(name);
    let mut config = si_runtime::kafka::client_config(kafka, "sictl-report");
    config
        .set(
            "group.id",
            format!("{}sictl-report-{}", kafka.topic_prefix, std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set_log_level(RDKafkaLogLevel::Warning);
    let probe_config = config.clone();
    let probe_topic = topic.clone();
    let bounds = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let probe: BaseConsumer = probe_config.create()?;
        // Leaders moving (a new topic, a broker restarting) fail a call for
        // a moment: retry for up to 10 s.
        let until = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match bounds(&probe, &probe_topic, from) {
                Err(error) if std::time::Instant::now() < until => {
                    tracing::debug!(error = format!("{error:#}"), "partition bounds; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                result => return result,
            }
        }
    })
    .await?
    .with_context(|| format!("finding where {topic} holds {}", rfc3339(from)))?;
    let mut assignment = TopicPartitionList::new();
    let mut open: BTreeSet<i32> = BTreeSet::new();
    let mut end_of: BTreeMap<i32, i64> = BTreeMap::new();
    for (partition, start, high) in bounds {
        end_of.insert(partition, high);
        // Offset::End: no record at or after `from`.
        if let Offset::Offset(start) = start
            && start < high
        {
            assignment.add_partition_offset(&topic, partition, Offset::Offset(start))?;
            open.insert(partition);
        }
    }
    let mut out = Vec::new();
    if open.is_empty() {
        return Ok(out);
    }
    let consumer: StreamConsumer<EndOfPartitionIsFine> =
        config.create_with_context(EndOfPartitionIsFine)?;
    consumer.assign(&assignment)?;
    let deadline = tokio::time::Instant::now() + timeout;
    while !open.is_empty() {
        let received = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "{topic} was not read to its end within {timeout:?} (partitions {open:?} left)"
                )
            })?;
        let message = match received {
            Ok(message) => message,
            Err(KafkaError::PartitionEOF(partition)) => {
                open.remove(&partition);
                continue;
            }
            Err(error) => return Err(error).with_context(|| format!("reading {topic}")),
        };
        let partition = message.partition();
        let offset = message.offset();
        let end = end_of.get(&partition).copied().unwrap_or(0);
        if offset + 1 >= end {
            open.remove(&partition);
        }
        let at = message.timestamp().to_millis().unwrap_or(0);
        if offset >= end || at < from || at >= to {
            continue;
        }
        let Some(payload) = message.payload() else {
            continue;
        };
        match codec.decode::<T>(payload).await {
            Ok(record) => out.push(Timed { at, record }),
            Err(error) => {
                tracing::warn!(%topic, partition, offset, %error, "undecodable record left out");
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
