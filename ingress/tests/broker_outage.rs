//! With the broker stopped, a webhook gets 503 (never 2xx); once the broker is
//! back, the same webhook sent again lands.
//!
//! This test stops the shared local broker, so it cannot run beside other tests:
//! it is ignored in the parallel run and `dev/test` runs it on its own:
//! `cargo test -p si-ingress --test broker_outage -- --ignored`.

mod support;

use std::process::Command;
use std::time::Duration;

use si_schemas::records::TwilioWebhook;
use si_schemas::topics;
use support::{Ingress, form_params};

fn stack(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(si_testkit::repo_root().join("dev/stack"))
        .args(args)
        .status()?;
    anyhow::ensure!(status.success(), "dev/stack {args:?} failed");
    Ok(())
}

/// Brings the broker back even when an assertion fails midway.
struct BrokerGuard;

impl Drop for BrokerGuard {
    fn drop(&mut self) {
        let _ = stack(&["up", "kafka"]);
    }
}

#[tokio::test]
#[ignore = "stops the shared broker; dev/test runs it alone"]
async fn a_webhook_is_never_acknowledged_while_kafka_is_down() -> anyhow::Result<()> {
    let ingress = Ingress::start(&["--produce-timeout", "2s", "--request-timeout", "4s"]).await?;
    let params = form_params(&[
        ("MessageSid", "SMoutage"),
        ("From", "+14155550100"),
        ("Body", "are you there?"),
    ]);

    let warmup = form_params(&[("MessageSid", "SMwarmup"), ("From", "+14155550100")]);
    assert_eq!(
        ingress
            .post_form("/twilio/messaging/inbound", &warmup, support::TOKEN)
            .await?
            .status(),
        200
    );

    let guard = BrokerGuard;
    stack(&["down", "kafka"])?;
    for _ in 0..3 {
        let response = ingress
            .post_form("/twilio/messaging/inbound", &params, support::TOKEN)
            .await?;
        assert_eq!(response.status(), 503, "no 2xx while Kafka is down");
        assert_eq!(response.headers()["retry-after"], "1");
    }
    // Readiness follows the broker.
    support::wait_for(Duration::from_secs(30), || async {
        Ok(ingress
            .client
            .get(format!("http://{}/readyz", ingress.running.admin_addr))
            .send()
            .await?
            .status()
            == 503)
    })
    .await?;

    stack(&["up", "kafka"])?;
    drop(guard);
    // Twilio retries: the same webhook lands once the broker is back.
    support::wait_for(Duration::from_secs(60), || async {
        Ok(ingress
            .post_form("/twilio/messaging/inbound", &params, support::TOKEN)
            .await?
            .status()
            == 200)
    })
    .await?;
    let records = ingress
        .env
        .read::<TwilioWebhook>(topics::WEBHOOKS, 2, Duration::from_secs(30))
        .await?;
    let sids: Vec<_> = records
        .iter()
        .filter_map(|(_, r)| r.resource_sid.clone())
        .collect();
    assert!(sids.contains(&"SMoutage".to_owned()), "{sids:?}");
    Ok(())
}
