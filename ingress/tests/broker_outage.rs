//! With the broker stopped, a webhook gets 503 (never 2xx); once the broker is
//! back, the same webhook sent again lands.
//!
//! The test starts a private broker (a `dev/stack` instance on free ports) and
//! stops that one, so it never disturbs the shared broker other tests use.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use si_schemas::records::TwilioWebhook;
use si_schemas::topics;
use si_testkit::{PrivateBroker, TestEnv};
use support::{Ingress, form_params};

#[tokio::test]
async fn a_webhook_is_never_acknowledged_while_kafka_is_down() -> anyhow::Result<()> {
    let broker = PrivateBroker::start("outage")?;
    let env = TestEnv::start_on(&broker.bootstrap()).await?;
    let ingress =
        Ingress::start_with(env, &["--produce-timeout", "2s", "--request-timeout", "4s"]).await?;
    let params = form_params(&[
        ("MessageSid", "SMoutage"),
        ("From", "+14155550100"),
        ("Body", "are you there?"),
    ]);

    // While the broker is up a webhook is stored (a fresh broker may need a
    // moment to elect the topic's leader: Twilio would retry, so do we).
    let warmup = form_params(&[("MessageSid", "SMwarmup"), ("From", "+14155550100")]);
    let warmup_refused = AtomicUsize::new(0);
    support::wait_for(Duration::from_secs(60), || async {
        let status = ingress
            .post_form("/twilio/messaging/inbound", &warmup, support::TOKEN)
            .await?
            .status();
        if status == 503 {
            warmup_refused.fetch_add(1, Ordering::Relaxed);
        }
        Ok(status == 200)
    })
    .await?;

    broker.down()?;
    for _ in 0..3 {
        let response = ingress
            .post_form("/twilio/messaging/inbound", &params, support::TOKEN)
            .await?;
        assert_eq!(response.status(), 503, "no 2xx while Kafka is down");
        assert_eq!(response.headers()["retry-after"], "1");
    }
    // Readiness follows the broker.
    support::wait_for(Duration::from_secs(30), || async {
        Ok(ingress.readyz().await? == 503)
    })
    .await?;

    broker.up()?;
    // Twilio retries: the same webhook lands once the broker is back. Retries that
    // come while the producer is still reconnecting get 503 too; count them.
    let refused = AtomicUsize::new(3 + warmup_refused.load(Ordering::Relaxed));
    support::wait_for(Duration::from_secs(60), || async {
        let status = ingress
            .post_form("/twilio/messaging/inbound", &params, support::TOKEN)
            .await?
            .status();
        if status == 503 {
            refused.fetch_add(1, Ordering::Relaxed);
        }
        Ok(status == 200)
    })
    .await?;
    let records = ingress
        .env
        .collect::<TwilioWebhook>(
            topics::WEBHOOKS,
            Duration::from_secs(30),
            |_| true,
            |kept| {
                kept.iter()
                    .any(|r| r.resource_sid.as_deref() == Some("SMoutage"))
            },
        )
        .await?;
    let sids: Vec<&str> = records
        .iter()
        .filter_map(|r| r.resource_sid.as_deref())
        .collect();
    // A warm-up answered 503 may still have been stored (the client retried
    // it, as Twilio does; downstream de-duplicates); nothing refused during
    // the outage was.
    assert_eq!(
        sids.iter().filter(|s| **s == "SMoutage").count(),
        1,
        "the refused attempts left nothing behind: {sids:?}"
    );
    assert!(
        sids.iter().all(|s| ["SMwarmup", "SMoutage"].contains(s)),
        "{sids:?}"
    );
    let metrics = ingress.metrics().await?;
    let refused = refused.load(Ordering::Relaxed);
    assert!(
        metrics.contains(&format!(
            "si_ingress_requests_total{{outcome=\"unavailable\",route=\"messaging_inbound\"}} {refused}"
        )),
        "every 503 counted ({refused}):\n{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_produce_stuck_on_a_dead_broker_past_the_drain_timeout()
-> anyhow::Result<()> {
    let broker = PrivateBroker::start("outage")?;
    let env = TestEnv::start_on(&broker.bootstrap()).await?;
    let ingress = Ingress::start_with(
        env,
        &[
            "--produce-timeout",
            "12s",
            "--request-timeout",
            "14s",
            "--drain-timeout",
            "1s",
        ],
    )
    .await?;
    let warmup = form_params(&[("MessageSid", "SMwarmup"), ("From", "+14155550100")]);
    let status = ingress
        .post_form("/twilio/messaging/inbound", &warmup, support::TOKEN)
        .await?
        .status();
    assert_eq!(status, 200);

    broker.down()?;
    let Ingress {
        running,
        shutdown,
        client,
        ..
    } = ingress;
    let params = form_params(&[("MessageSid", "SMstuck"), ("From", "+14155550100")]);
    let (body, signature) = support::signed_form(
        &format!("{}/twilio/messaging/inbound", support::PUBLIC),
        &params,
        support::TOKEN,
    );
    let url = format!("http://{}/twilio/messaging/inbound", running.addr);
    let metrics_url = format!("http://{}/metrics", running.admin_addr);
    let stuck = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("x-twilio-signature", signature)
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    // The webhook is in the handler, waiting for Kafka's acknowledgement.
    support::wait_for(Duration::from_secs(10), || async {
        let metrics = client.get(&metrics_url).send().await?.text().await?;
        Ok(metrics.contains("si_ingress_in_flight 1"))
    })
    .await?;

    shutdown.cancel();
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(30), running.stopped()).await??;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "stopped at the drain timeout, not at the 12 s produce timeout: {took:?}"
    );
    // Whatever the stuck request got, it was never a 2xx: Twilio will retry it.
    if let Ok(Ok(status)) = stuck.await {
        assert_ne!(status / 100, 2, "a webhook was acknowledged without Kafka");
    }
    Ok(())
}
