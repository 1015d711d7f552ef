use serde_json::{Value, json};

use super::*;

const T0: i64 = 1_764_720_000_000; // 2025-12-03T00:00:00Z
const DAY: i64 = 86_400_000;

fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("a valid record")
}

fn op(
    id: &str,
    channel: &str,
    kind: &str,
    to: &str,
    segments: Option<i32>,
) -> Timed<OutboundOperation> {
    let sender = if channel == "WHATSAPP" {
        "whatsapp:+14155550199"
    } else {
        "sms:+14155550199"
    };
    Timed {
        at: T0,
        record: from_json(json!({
            "operation_id": id, "conversation_id": "pm-1", "kind": kind, "channel": channel,
            "sender_key": sender, "to": to, "media_urls": [], "part_index": 0, "part_count": 1,
            "segments": segments, "params": {}, "created_at": T0,
        })),
    }
}

fn status(
    id: &str,
    outcome: &str,
    sid: Option<&str>,
    segments: Option<i32>,
    kind: &str,
) -> Timed<DeliveryStatus> {
    Timed {
        at: T0 + 1,
        record: from_json(json!({
            "operation_id": id, "conversation_id": "pm-1", "outcome": outcome,
            "twilio_sid": sid, "segments": segments, "attempts": 1, "kind": kind, "at": T0 + 1,
        })),
    }
}

/// The answer to a command, as lifecycle and voice-link write it.
fn command_answer(id: &str) -> Timed<DeliveryStatus> {
    Timed {
        at: T0 + 1,
        record: DeliveryStatus::command_answer(
            id.into(),
            "pm-1".into(),
            DeliveryOutcome::Accepted,
            None,
            T0 + 1,
        ),
    }
}

fn remediation(id: &str, action: &str) -> Timed<DeliveryStatus> {
    let mut s = status(id, "FAILED", Some("SMx"), None, "SEND_MESSAGE");
    s.record.remediation = Some(from_json(json!({
        "origin_operation_id": id, "attempt": 1, "action": action,
        "terminal": action == "GIVE_UP", "reason": "test",
    })));
    s
}

fn report_event(sid: &str, channel: &str, state: &str) -> Timed<ConversationEvent> {
    Timed {
        at: T0 + 2,
        record: from_json(json!({
            "event_id": format!("e-{sid}-{state}"), "conversation_id": "pm-1", "session_id": "s",
            "event_type": "DELIVERY_UPDATED", "channel": channel, "source": "MESSAGING",
            "occurred_at": T0, "received_at": T0, "locale": "en-US", "locale_source": "IDENTITY",
            "webhook_id": "w", "dedup_key": format!("d-{sid}-{state}"),
            "delivery": { "message_sid": sid, "status": state },
        })),
    }
}

fn consent(id: &str, kind: &str, at: i64) -> Timed<ComplianceEvent> {
    Timed {
        at,
        record: from_json(json!({
            "event_id": id, "kind": kind, "source": "KEYWORD", "address": "+14155550100",
            "channel": "SMS", "at": at, "details": {},
        })),
    }
}

fn inputs() -> Inputs {
    Inputs {
        operations: vec![
            op("a", "SMS", "SEND_MESSAGE", "+14155550100", Some(2)),
            op("b", "SMS", "SEND_MESSAGE", "+447700900123", Some(1)),
            op("c", "WHATSAPP", "SEND_MESSAGE", "+14155550100", None),
            op("d", "SMS", "SEND_MESSAGE", "+14155550100", Some(1)),
            op("call", "VOICE", "CREATE_CALL", "+14155550100", None),
        ],
        statuses: vec![
            status("a", "ACCEPTED", Some("SM1"), Some(3), "SEND_MESSAGE"),
            status("a", "ACCEPTED", Some("SM1"), Some(3), "SEND_MESSAGE"),
            status("b", "ACCEPTED", Some("SM2"), None, "SEND_MESSAGE"),
            status("c", "ACCEPTED", Some("SM3"), Some(1), "SEND_MESSAGE"),
            status("d", "BLOCKED", None, None, "SEND_MESSAGE"),
            status("call", "ACCEPTED", Some("CA1"), None, "CREATE_CALL"),
            command_answer("lifecycle-start-1"),
            command_answer("voice-command-1"),
            remediation("c", "RESEND_AS_TEMPLATE"),
            remediation("c", "GIVE_UP"),
        ],
        events: vec![
            report_event("SM1", "SMS", "SENT"),
            report_event("SM1", "SMS", "DELIVERED"),
            report_event("SM1", "SMS", "READ"),
            report_event("SM2", "UNKNOWN", "UNDELIVERED"),
            report_event("SM3", "WHATSAPP", "FAILED"),
        ],
        compliance: vec![
            consent("o1", "OPT_OUT", T0 + 10),
            consent("o1", "OPT_OUT", T0 + 10),
            consent("i1", "OPT_IN", T0 + 20),
            consent("o2", "OPT_OUT", T0 + DAY + 5),
            consent("h1", "HELP", T0 + 30),
        ],
    }
}

#[test]
fn sent_delivered_and_rates_by_channel() {
    let r = summarize(&inputs(), &PriceTable::default(), T0, T0 + 2 * DAY);
    assert_eq!(r.from, "2025-12-03T00:00:00Z");
    let all = &r.messages;
    assert_eq!(
        (all.sent, all.delivered, all.undelivered, all.failed),
        (3, 1, 1, 1)
    );
    assert_eq!(all.delivery_rate, Some(1.0 / 3.0));
    let sms = &r.by_channel["sms"];
    assert_eq!(
        (sms.sent, sms.delivered, sms.undelivered),
        (2, 1, 1),
        "SM2's channel from its operation"
    );
    assert_eq!(sms.delivery_rate, Some(0.5));
    assert_eq!(r.by_channel["whatsapp"].failed, 1);
    assert_eq!(r.by_channel["whatsapp"].delivery_rate, Some(0.0));
    assert!(
        !r.by_channel.contains_key("unknown"),
        "the answers to commands are not messages: {:?}",
        r.by_channel
    );
}

#[test]
fn a_status_without_a_kind_is_a_message_by_its_operation_or_its_requests() {
    let mut inputs = inputs();
    for timed in &mut inputs.statuses {
        timed.record.kind = None;
    }
    // Without the operation, egress's requests still tell a message.
    let mut orphan = status("e", "ACCEPTED", Some("SM9"), Some(1), "SEND_MESSAGE");
    orphan.record.kind = None;
    inputs.statuses.push(orphan);
    let r = summarize(&inputs, &PriceTable::default(), T0, T0 + DAY);
    assert_eq!(
        r.messages.sent, 4,
        "a, b, c and e; not the call or the commands"
    );
    assert_eq!(r.by_channel["unknown"].sent, 1, "e has no operation");
    assert_eq!(
        r.escalations.calls_accepted, 1,
        "the call by its operation's kind"
    );
}

#[test]
fn with_no_price_the_total_says_so_rather_than_a_sum() {
    let r = summarize(&inputs(), &PriceTable::default(), T0, T0 + DAY);
    assert!(r.estimated_usd.to_bits() == 0.0_f64.to_bits(), "not -0.0");
    let text = render(&r);
    let total = text
        .lines()
        .find(|l| l.starts_with("total      "))
        .expect("a total row");
    assert!(total.ends_with("no price"), "{text}");
    assert!(!text.contains("-0.0"), "{text}");
}

#[test]
fn remediations_consent_and_escalations() {
    let r = summarize(&inputs(), &PriceTable::default(), T0, T0 + 2 * DAY);
    assert_eq!(
        r.remediations,
        BTreeMap::from([
            ("give_up".to_owned(), 1),
            ("resend_as_template".to_owned(), 1)
        ])
    );
    assert_eq!((r.opt_outs, r.opt_ins), (2, 1), "de-duplicated by event id");
    assert_eq!(
        r.consent_by_day["2025-12-03"],
        ConsentDay {
            opt_outs: 1,
            opt_ins: 1
        }
    );
    assert_eq!(
        r.consent_by_day["2025-12-04"],
        ConsentDay {
            opt_outs: 1,
            opt_ins: 0
        }
    );
    assert_eq!(
        r.escalations,
        Escalations {
            calls_requested: 1,
            calls_accepted: 1,
            calls_not_placed: 0
        }
    );
}

#[test]
fn cost_by_channel_and_country_from_twilio_segments_and_the_price_table() {
    let prices = PriceTable::parse("sms:US=0.01,whatsapp:*=0.005").expect("parses");
    let r = summarize(&inputs(), &prices, T0, T0 + DAY);
    let row = |c: &str, k: &str| {
        r.cost
            .iter()
            .find(|x| x.channel == c && x.country == k)
            .cloned()
    };
    let us = row("sms", "US").expect("an sms US row");
    assert_eq!(
        (us.messages, us.segments),
        (1, 3),
        "Twilio's count wins over the operation's"
    );
    assert!(us.estimated_usd.is_some_and(|u| (u - 0.03).abs() < 1e-9));
    let gb = row("sms", "GB").expect("an sms GB row");
    assert_eq!(
        (gb.segments, gb.estimated_usd),
        (1, None),
        "no price for sms:GB"
    );
    let wa = row("whatsapp", "US").expect("a whatsapp row");
    assert!(wa.estimated_usd.is_some_and(|u| (u - 0.005).abs() < 1e-9));
    assert!((r.estimated_usd - 0.035).abs() < 1e-9);
    assert_eq!(r.price_table, "sms:US=0.01,whatsapp:*=0.005");
    let text = render(&r);
    assert!(
        text.contains("sms        GB              1         1       no price"),
        "{text}"
    );
    assert!(
        text.contains("the rows with no price are not in the total"),
        "{text}"
    );
    assert!(
        text.contains("all               3          1            1        1          33.3%"),
        "{text}"
    );
}

#[test]
fn times_are_rfc3339_durations_before_now_or_now() {
    let now = T0 + DAY;
    assert_eq!(parse_time("now", now).ok(), Some(now));
    assert_eq!(parse_time("24h", now).ok(), Some(T0));
    assert_eq!(parse_time("2025-12-03T00:00:00Z", now).ok(), Some(T0));
    assert_eq!(parse_time("2025-12-03T01:00:00+01:00", now).ok(), Some(T0));
    let error = parse_time("yesterday", now).err().map(|e| e.to_string());
    assert!(error.is_some_and(|e| e.contains("RFC 3339")));
}
