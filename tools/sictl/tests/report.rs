//! `sictl report` against the real local broker and registry: only records
//! stamped inside `--from`..`--to` count (each partition is sought to the
//! offset for `--from`, and records at or after `--to` are left out).

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::producer::FutureRecord;
use serde_json::{Value, json};
use si_schemas::records::{ComplianceEvent, DeliveryStatus, OutboundOperation};
use si_schemas::{AvroRecord, topics};
use si_testkit::TestEnv;

const MINUTE: i64 = 60_000;

fn record<T: serde::de::DeserializeOwned>(value: Value) -> anyhow::Result<T> {
    Ok(serde_json::from_value(value)?)
}

/// Produces `value` to `topic` with the record timestamp `at`.
async fn produce_at<T: AvroRecord>(
    env: &TestEnv,
    topic: &str,
    key: &str,
    value: &T,
    at: i64,
) -> anyhow::Result<()> {
    let topic = env.topic(topic);
    let payload = env.codec.encode(&topic, value).await?;
    env.producer
        .send(
            FutureRecord::to(&topic)
                .key(key)
                .payload(&payload)
                .timestamp(at),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))?;
    Ok(())
}

fn rfc3339(ms: i64) -> anyhow::Result<String> {
    Ok(jiff::Timestamp::from_millisecond(ms)?.to_string())
}

#[tokio::test]
async fn only_records_stamped_in_the_range_count() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis())?;
    let from = now - 120 * MINUTE;
    let to = now - 60 * MINUTE;
    // One message accepted before, two inside and one after the range; an
    // opt-out before and one inside.
    for (id, at) in [
        ("before", from - MINUTE),
        ("inside-1", from),
        ("inside-2", to - 1),
        ("after", to),
    ] {
        let op: OutboundOperation = record(json!({
            "operation_id": id, "conversation_id": "pm-1", "kind": "SEND_MESSAGE",
            "channel": "SMS", "sender_key": "sms:+14155550199", "to": "+14155550100",
            "media_urls": [], "part_index": 0, "part_count": 1, "segments": 2,
            "params": {}, "created_at": at,
        }))?;
        produce_at(&env, topics::OUTBOUND, &op.sender_key, &op, at).await?;
        let status: DeliveryStatus = record(json!({
            "operation_id": id, "conversation_id": "pm-1", "outcome": "ACCEPTED",
            "twilio_sid": format!("SM-{id}"), "segments": 2, "attempts": 1,
            "kind": "SEND_MESSAGE", "at": at,
        }))?;
        produce_at(&env, topics::DELIVERY, "pm-1", &status, at).await?;
    }
    for (id, at) in [
        ("opt-out-before", from - 1),
        ("opt-out-inside", from + MINUTE),
    ] {
        let event: ComplianceEvent = record(json!({
            "event_id": id, "kind": "OPT_OUT", "source": "KEYWORD",
            "address": "+14155550100", "channel": "SMS", "at": at, "details": {},
        }))?;
        produce_at(&env, topics::COMPLIANCE, "sms:+14155550100", &event, at).await?;
    }

    let (ok, out, err) = support::sictl(
        &env,
        &[
            "report",
            "--from",
            &rfc3339(from)?,
            "--to",
            &rfc3339(to)?,
            "--json",
            "--price-table",
            "sms:US=0.01",
        ],
    )?;
    anyhow::ensure!(ok, "sictl report failed: {err}");
    let report: Value = serde_json::from_str(&out)?;
    assert_eq!(report["messages"]["sent"], 2, "{report:#}");
    assert_eq!(report["by_channel"]["sms"]["sent"], 2, "{report:#}");
    assert_eq!(report["opt_outs"], 1, "{report:#}");
    assert_eq!(report["records"][topics::DELIVERY], 2, "{report:#}");
    assert_eq!(report["cost"][0]["segments"], 4, "{report:#}");
    let usd = report["estimated_usd"].as_f64().unwrap_or(0.0);
    assert!((usd - 0.04).abs() < 1e-9, "{report:#}");
    // An empty range reads nothing and says so.
    let (ok, out, err) = support::sictl(&env, &["report", "--from", "1s", "--json"])?;
    anyhow::ensure!(ok, "sictl report failed: {err}");
    let empty: Value = serde_json::from_str(&out)?;
    assert_eq!(empty["messages"]["sent"], 0, "{empty:#}");
    assert_eq!(empty["messages"]["delivery_rate"], Value::Null, "{empty:#}");
    Ok(())
}
