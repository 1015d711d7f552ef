//! A stage refuses to start, with an error naming the topic, when an input
//! is not partitioned like its changelog: partition `p` of the changelog
//! keeps the state of partition `p` of every input, so a count that differs
//! would mix up the state of different keys.
//!
//! ```sh
//! eval "$(dev/stack env)"; cargo test -p si-runtime --test co_partitioning
//! ```

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use si_runtime::Readiness;
use si_runtime::metrics::StageMetrics;
use si_runtime::stream::{self, StreamArgs, StreamEnv, StreamError, StreamSpec};
use si_testkit::TestEnv;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn an_input_partitioned_unlike_the_changelog_stops_the_start() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let admin = si_runtime::kafka::create_admin(&env.kafka, "test")?;
    let (input, state) = ("copartition.in", "copartition.state");
    let (input_full, state_full) = (env.kafka.topic(input), env.kafka.topic(state));
    let topics = [
        NewTopic::new(&input_full, 4, TopicReplication::Fixed(1)),
        NewTopic::new(&state_full, 2, TopicReplication::Fixed(1)),
    ];
    for created in admin.create_topics(&topics, &AdminOptions::new()).await? {
        created.map_err(|(topic, code)| anyhow::anyhow!("{topic}: {code}"))?;
    }

    let stream_env = StreamEnv {
        kafka: env.kafka.clone(),
        args: StreamArgs::default(),
        drain_timeout: Duration::from_secs(10),
        codec: env.codec.clone(),
        metrics: StageMetrics::new("copartition-test"),
        readiness: Readiness::default(),
    };
    let spec = StreamSpec {
        inputs: vec![input],
        changelog: state,
        ..common::spec("copartition-test")
    };
    let ran = tokio::time::timeout(
        Duration::from_secs(60),
        stream::run(
            stream_env,
            spec,
            common::WritesNothing(Duration::ZERO),
            CancellationToken::new(),
        ),
    )
    .await?;
    let Err(StreamError::Setup(error)) = ran else {
        anyhow::bail!("expected a setup error, got {ran:?}");
    };
    let expected = format!("{input_full} has 4 partitions but {state_full} has 2");
    assert!(error.starts_with(&expected), "{error}");
    Ok(())
}
