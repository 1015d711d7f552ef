//! Load shedding, the request deadline and graceful shutdown.
//!
//! A client that sends its headers and then stalls the body holds a request slot
//! (the in-flight permit is taken before the body is read), which makes both the
//! shedding and the deadline deterministic.

mod support;

use std::time::{Duration, Instant};

use support::{Ingress, form_params};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens a request whose body never completes.
async fn stalled_request(ingress: &Ingress) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(ingress.running.addr).await?;
    stream
        .write_all(
            b"POST /twilio/messaging/inbound HTTP/1.1\r\nHost: x\r\n\
              Content-Type: application/x-www-form-urlencoded\r\nX-Twilio-Signature: x\r\n\
              Content-Length: 100\r\n\r\nBody=partial",
        )
        .await?;
    Ok(stream)
}

async fn response_head(stream: &mut TcpStream) -> anyhow::Result<String> {
    let mut buffer = vec![0; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer)).await??;
    Ok(String::from_utf8_lossy(&buffer[..n]).into_owned())
}

#[tokio::test]
async fn requests_past_the_in_flight_limit_are_shed_with_retry_after() -> anyhow::Result<()> {
    let ingress = Ingress::start(&["--max-in-flight", "1"]).await?;
    let holder = stalled_request(&ingress).await?;
    let params = form_params(&[("MessageSid", "SM1"), ("From", "+14155550100")]);
    // The stalled request holds the only slot as soon as its headers are in.
    support::wait_for(Duration::from_secs(10), || async {
        let response = ingress
            .post_form("/twilio/messaging/inbound", &params, support::TOKEN)
            .await?;
        Ok(response.status() == 503
            && response
                .headers()
                .get("retry-after")
                .is_some_and(|v| v == "1")
            && response.text().await?.contains("overloaded"))
    })
    .await?;
    drop(holder);
    // Once the slot is free, webhooks are accepted again.
    support::wait_for(Duration::from_secs(10), || async {
        Ok(ingress
            .post_form("/twilio/messaging/inbound", &params, support::TOKEN)
            .await?
            .status()
            == 200)
    })
    .await?;
    let metrics = ingress.metrics().await?;
    assert!(
        metrics.contains("si_ingress_requests_total{outcome=\"overloaded\",route=\"any\"}"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn an_oversized_content_length_gets_413_before_the_body_is_read() -> anyhow::Result<()> {
    let ingress = Ingress::start(&["--max-body-bytes", "1000", "--request-timeout", "10s"]).await?;
    let mut stream = TcpStream::connect(ingress.running.addr).await?;
    // Headers only: the body is never sent.
    stream
        .write_all(
            b"POST /twilio/messaging/inbound HTTP/1.1\r\nHost: x\r\n\
              Content-Type: application/x-www-form-urlencoded\r\nX-Twilio-Signature: x\r\n\
              Content-Length: 10000000\r\n\r\n",
        )
        .await?;
    let started = Instant::now();
    let head = response_head(&mut stream).await?;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "413 after {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn a_request_past_its_deadline_gets_503() -> anyhow::Result<()> {
    let ingress =
        Ingress::start(&["--request-timeout", "1s", "--produce-timeout", "500ms"]).await?;
    let mut stalled = stalled_request(&ingress).await?;
    let started = Instant::now();
    let head = response_head(&mut stalled).await?;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered at the deadline, not later"
    );
    Ok(())
}

#[tokio::test]
async fn shutdown_drains_and_stops() -> anyhow::Result<()> {
    let ingress = Ingress::start(&["--drain-timeout", "5s"]).await?;
    let params = form_params(&[("MessageSid", "SM1"), ("From", "+14155550100")]);
    assert_eq!(
        ingress
            .post_form("/twilio/messaging/inbound", &params, support::TOKEN)
            .await?
            .status(),
        200
    );
    let Ingress {
        running,
        shutdown,
        env,
        ..
    } = ingress;
    shutdown.cancel();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), running.stopped()).await??;
    assert!(started.elapsed() < Duration::from_secs(10));
    // What was acknowledged is in Kafka.
    let records = env
        .read::<si_schemas::records::TwilioWebhook>(
            si_schemas::topics::WEBHOOKS,
            1,
            Duration::from_secs(20),
        )
        .await?;
    assert_eq!(records[0].1.resource_sid.as_deref(), Some("SM1"));
    Ok(())
}

#[tokio::test]
async fn a_stalled_client_does_not_hold_shutdown() -> anyhow::Result<()> {
    // The stalled request would be answered (and its connection closed) only at the
    // 14 s request deadline; shutdown must not wait for it.
    let ingress = Ingress::start(&["--drain-timeout", "2s", "--request-timeout", "14s"]).await?;
    let _stalled = stalled_request(&ingress).await?;
    let Ingress {
        running, shutdown, ..
    } = ingress;
    shutdown.cancel();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(30), running.stopped()).await??;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(14),
        "stopped without waiting for the stalled request's deadline: {took:?}"
    );
    Ok(())
}
