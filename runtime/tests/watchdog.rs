//! The stuck-loop watchdog of `Transactions` ends with them. A stage stopped
//! in a process that goes on (a test's in-process stages; a driver that makes
//! its transactions again) must not have a watchdog left behind that finds
//! no more beats and exits the process.
//!
//! Alone in its binary: it counts the process's watchdog threads.
//!
//! ```sh
//! eval "$(dev/stack env)"; cargo test -p si-runtime --test watchdog
//! ```

use std::time::{Duration, Instant};

use si_runtime::txn::{Transactions, WATCHDOG_THREAD};
use si_testkit::TestEnv;

fn watchdogs() -> usize {
    si_testkit::procfs::own_threads().map_or(0, |threads| {
        threads
            .iter()
            .filter(|(name, _)| name == WATCHDOG_THREAD)
            .count()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_ends_with_its_transactions() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let kafka = env.kafka.clone();
    let txns = tokio::task::spawn_blocking(move || {
        Transactions::init(&kafka, "watchdog-test", Duration::from_secs(5))
    })
    .await?
    .map_err(anyhow::Error::msg)?;
    // The thread names itself once it runs.
    assert_eq!(
        watchdogs_within(1, Duration::from_secs(10)).await,
        1,
        "a watchdog per transactions"
    );
    drop(txns);
    // It looks once a second.
    assert_eq!(
        watchdogs_within(0, Duration::from_secs(10)).await,
        0,
        "the watchdog outlived its transactions"
    );
    Ok(())
}

/// The watchdog threads once there are `wanted`, or when `deadline` passes.
async fn watchdogs_within(wanted: usize, deadline: Duration) -> usize {
    let deadline = Instant::now() + deadline;
    while watchdogs() != wanted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watchdogs()
}
