//! A global table against the real broker: it loads a compacted topic in
//! full (values and tombstones) before it reports ready, then follows new
//! records in the background.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::producer::FutureRecord;
use si_runtime::Readiness;
use si_runtime::metrics::StageMetrics;
use si_runtime::table::GlobalTable;
use si_schemas::records::{Channel, IdentityRecord};
use si_schemas::topics;
use si_testkit::TestEnv;
use tokio_util::sync::CancellationToken;

fn identity(n: u32) -> IdentityRecord {
    IdentityRecord {
        address: format!("+1415555{n:04}"),
        channel: Channel::Sms,
        user_id: format!("user-{n}"),
        display_name: None,
        locale: None,
        updated_at: 0,
        attributes: BTreeMap::new(),
    }
}

async fn tombstone(env: &TestEnv, key: &str) -> anyhow::Result<()> {
    let topic = env.topic(topics::IDENTITY);
    env.producer
        .send(
            FutureRecord::<str, [u8]>::to(&topic).key(key),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_loads_fully_before_it_is_ready_and_then_follows_updates() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    for n in 0..200 {
        let record = identity(n);
        env.produce(topics::IDENTITY, &record.key(), &record)
            .await?;
    }
    tombstone(&env, &identity(7).key()).await?;

    let readiness = Readiness::default();
    let metrics = StageMetrics::new("test");
    let shutdown = CancellationToken::new();
    let table = GlobalTable::<IdentityRecord>::start(
        &env.kafka,
        "test",
        topics::IDENTITY,
        env.codec.clone(),
        &readiness,
        &metrics,
        shutdown.clone(),
    )
    .await?;
    readiness.started();
    tokio::time::timeout(Duration::from_secs(30), table.loaded()).await?;
    assert!(readiness.pending().is_empty(), "{:?}", readiness.pending());
    assert_eq!(table.len(), 199, "200 entries, one tombstoned");
    assert_eq!(table.get(&identity(8).key()).unwrap().user_id, "user-8");
    assert!(table.get(&identity(7).key()).is_none());

    // Updates after the load show up.
    let mut changed = identity(8);
    changed.user_id = "user-8b".into();
    env.produce(topics::IDENTITY, &changed.key(), &changed)
        .await?;
    tombstone(&env, &identity(9).key()).await?;
    let until = Instant::now() + Duration::from_secs(30);
    while table.get(&identity(8).key()).unwrap().user_id != "user-8b"
        || table.get(&identity(9).key()).is_some()
    {
        assert!(Instant::now() < until, "updates not applied within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_table_is_loaded_at_once() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let readiness = Readiness::default();
    let table = GlobalTable::<IdentityRecord>::start(
        &env.kafka,
        "test",
        topics::IDENTITY,
        env.codec.clone(),
        &readiness,
        &StageMetrics::new("test"),
        CancellationToken::new(),
    )
    .await?;
    readiness.started();
    assert!(!readiness.pending().is_empty() || table.is_loaded());
    tokio::time::timeout(Duration::from_secs(30), table.loaded()).await?;
    assert!(table.is_empty());
    assert!(readiness.pending().is_empty());
    Ok(())
}
