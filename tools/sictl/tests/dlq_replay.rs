//! `sictl dlq replay` against the real local broker: the chosen dead letters go
//! back to twilio.outbound.v1 unchanged, keyed by sender, once each.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use si_schemas::records::{Channel, OperationKind, OutboundDeadLetter, OutboundOperation};
use si_schemas::topics;
use si_testkit::TestEnv;
use sictl::dlq::{ReplayOptions, Selection, replay};

fn operation(i: usize) -> OutboundOperation {
    OutboundOperation {
        operation_id: format!("op-{i}"),
        conversation_id: format!("pm-{}", i % 2),
        kind: OperationKind::SendMessage,
        channel: Channel::Sms,
        sender_key: format!("sms:+1415555019{}", i % 3),
        to: Some("+15005550001".into()),
        from: Some(format!("+1415555019{}", i % 3)),
        messaging_service_sid: None,
        body: Some(format!("part {i} ¿sí? 👋")),
        media_urls: Vec::new(),
        content_sid: None,
        content_variables_json: None,
        response_id: Some(format!("r-{i}")),
        part_index: 0,
        part_count: 1,
        segments: Some(1),
        encoding: None,
        template_reason: None,
        call: None,
        params: BTreeMap::from([("si.purpose".to_owned(), "reply".to_owned())]),
        created_at: 1_700_000_000_000,
        not_after: None,
        traceparent: None,
    }
}

fn dead_letter(operation: OutboundOperation, reason: &str) -> OutboundDeadLetter {
    OutboundDeadLetter {
        operation,
        reason: reason.into(),
        error_code: Some(21211),
        http_status: Some(400),
        attempts: 1,
        first_attempt_at: 1_700_000_000_000,
        dead_lettered_at: 1_700_000_001_000,
    }
}

fn options(selection: Selection, dry_run: bool) -> ReplayOptions {
    ReplayOptions {
        selection,
        dry_run,
        timeout: Duration::from_secs(30),
    }
}

#[tokio::test]
async fn chosen_dead_letters_are_replayed_once_keyed_by_sender() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let n = 6;
    for i in 0..n {
        let op = operation(i);
        let key = op.sender_key.clone();
        env.produce(topics::OUTBOUND_DLQ, &key, &dead_letter(op, "permanent"))
            .await?;
    }
    // op-1 was dead-lettered twice (replayed once before, failed again): replayed once.
    let mut again = operation(1);
    again.body = Some("the latest".into());
    let key = again.sender_key.clone();
    env.produce(
        topics::OUTBOUND_DLQ,
        &key,
        &dead_letter(again, "retries exhausted"),
    )
    .await?;

    // A dry run reports and writes nothing.
    let chosen: BTreeSet<String> = ["op-1", "op-4"].iter().map(|s| (*s).to_owned()).collect();
    let dry = replay(
        &env.kafka,
        &env.codec,
        &options(Selection::Ids(chosen.clone()), true),
    )
    .await?;
    assert_eq!(dry.read, n + 1);
    assert!(dry.dry_run);
    let ids: Vec<&str> = dry
        .replayed
        .iter()
        .map(|r| r.operation_id.as_str())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(dry.replayed.iter().all(|r| r.outbound_offset.is_none()));
    assert!(
        env.read_raw(topics::OUTBOUND, 1, Duration::from_secs(2))
            .await
            .is_err(),
        "a dry run produced"
    );

    // The real thing.
    let report = replay(
        &env.kafka,
        &env.codec,
        &options(Selection::Ids(chosen), false),
    )
    .await?;
    assert!(report.missing.is_empty());
    assert_eq!(report.replayed.len(), 2);
    assert!(report.replayed.iter().all(|r| r.outbound_offset.is_some()));
    let replayed = env
        .read::<OutboundOperation>(topics::OUTBOUND, 2, Duration::from_secs(30))
        .await?;
    let by_id: BTreeMap<String, (Option<String>, OutboundOperation)> = replayed
        .into_iter()
        .map(|(key, op)| (op.operation_id.clone(), (key, op)))
        .collect();
    let (key, op1) = &by_id["op-1"];
    assert_eq!(key.as_deref(), Some(op1.sender_key.as_str()));
    assert_eq!(op1.body.as_deref(), Some("the latest"));
    let (key, op4) = &by_id["op-4"];
    assert_eq!(op4, &operation(4), "replayed unchanged");
    assert_eq!(key.as_deref(), Some(operation(4).sender_key.as_str()));
    // Only those two.
    assert!(
        env.read_raw(topics::OUTBOUND, 3, Duration::from_secs(2))
            .await
            .is_err()
    );

    // The binary: an unknown id fails and replays nothing; --all --dry-run lists each once.
    let (ok, _, stderr) = support::sictl(&env, &["dlq", "replay", "--operation-id", "op-nope"])?;
    assert!(!ok);
    assert!(stderr.contains("op-nope"), "{stderr}");
    let (ok, stdout, stderr) = support::sictl(&env, &["dlq", "replay", "--all", "--dry-run"])?;
    assert!(ok, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), n, "{stdout}");
    let ids: BTreeSet<&str> = lines
        .iter()
        .filter_map(|l| l["operation_id"].as_str())
        .collect();
    assert_eq!(ids.len(), n);
    assert!(lines.iter().all(|l| l["error_code"] == 21211));
    let (ok, _, stderr) = support::sictl(&env, &["dlq", "replay"])?;
    assert!(!ok, "a selection is required: {stderr}");
    let (ok, _, _) = support::sictl(&env, &["dlq", "replay", "--all", "--operation-id", "op-1"])?;
    assert!(!ok, "--all and --operation-id exclude each other");
    Ok(())
}

/// Writes `letters` in one transaction, committed or aborted, as egress does.
async fn transactional(
    env: &TestEnv,
    letters: &[OutboundDeadLetter],
    commit: bool,
) -> anyhow::Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
    let topic = env.topic(topics::OUTBOUND_DLQ);
    let producer: FutureProducer = si_runtime::kafka::client_config(&env.kafka, "test-egress")
        .set(
            "transactional.id",
            format!("{}test-egress", env.kafka.topic_prefix),
        )
        .create()?;
    producer.init_transactions(Duration::from_secs(30))?;
    producer.begin_transaction()?;
    for letter in letters {
        let payload = env.codec.encode(&topic, letter).await?;
        producer
            .send(
                FutureRecord::to(&topic)
                    .key(letter.operation.sender_key.as_str())
                    .payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)?;
    }
    if commit {
        producer.commit_transaction(Duration::from_secs(30))?;
    } else {
        producer.abort_transaction(Duration::from_secs(30))?;
    }
    Ok(())
}

#[tokio::test]
async fn only_committed_dead_letters_are_replayed() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    transactional(&env, &[dead_letter(operation(10), "committed")], true).await?;
    transactional(&env, &[dead_letter(operation(11), "aborted")], false).await?;
    transactional(&env, &[dead_letter(operation(12), "committed")], true).await?;
    let report = replay(&env.kafka, &env.codec, &options(Selection::All, false)).await?;
    let ids: BTreeSet<&str> = report
        .replayed
        .iter()
        .map(|r| r.operation_id.as_str())
        .collect();
    assert_eq!(ids, BTreeSet::from(["op-10", "op-12"]));
    assert_eq!(report.read, 2);
    Ok(())
}

#[tokio::test]
async fn an_empty_dlq_replays_nothing() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let report = replay(&env.kafka, &env.codec, &options(Selection::All, false)).await?;
    assert_eq!(report.read, 0);
    assert!(report.replayed.is_empty());
    let missing = replay(
        &env.kafka,
        &env.codec,
        &options(Selection::Ids(BTreeSet::from(["op-x".to_owned()])), false),
    )
    .await?;
    assert_eq!(missing.missing, ["op-x"]);
    Ok(())
}
