//! Connections: a client too slow to send its request head is cut off at
//! `HEADER_READ_TIMEOUT`, an idle keep-alive connection is closed at
//! `IDLE_TIMEOUT` (not at the shorter header timeout), and at most
//! `MAX_CONNECTIONS` are served at once.

mod support;

use std::time::{Duration, Instant};

use support::Ingress;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request ingress answers without Kafka: no route, so 404.
const NOT_FOUND_REQUEST: &[u8] = b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n";

/// Reads one response to `NOT_FOUND_REQUEST` (its body closes it).
async fn read_not_found(stream: &mut TcpStream, deadline: Duration) -> anyhow::Result<String> {
    let mut seen = Vec::new();
    let mut buffer = [0; 1024];
    tokio::time::timeout(deadline, async {
        while !String::from_utf8_lossy(&seen).contains("no webhook endpoint here") {
            let n = stream.read(&mut buffer).await?;
            anyhow::ensure!(n > 0, "closed before the response was complete");
            seen.extend_from_slice(&buffer[..n]);
        }
        Ok(())
    })
    .await??;
    let text = String::from_utf8_lossy(&seen).into_owned();
    anyhow::ensure!(text.starts_with("HTTP/1.1 404"), "{text}");
    Ok(text)
}

/// Waits until the server closes `stream` (end of stream or reset); fails
/// after `deadline` or if the server sends anything.
async fn closed_by_server(stream: &mut TcpStream, deadline: Duration) -> anyhow::Result<()> {
    let mut buffer = [0; 256];
    match tokio::time::timeout(deadline, stream.read(&mut buffer)).await {
        Err(_) => anyhow::bail!("still connected after {deadline:?}"),
        Ok(Ok(0) | Err(_)) => Ok(()),
        Ok(Ok(n)) => anyhow::bail!(
            "the server sent {:?} instead of closing",
            String::from_utf8_lossy(&buffer[..n])
        ),
    }
}

/// The value of a counter or gauge in the metrics text, 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_cut_off_at_the_header_timeout() -> anyhow::Result<()> {
    let ingress = Ingress::start(&["--header-read-timeout", "1s", "--idle-timeout", "60s"]).await?;
    let stream = TcpStream::connect(ingress.running.addr).await?;
    let connected = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(b"POST /twilio/messaging/inbound HTTP/1.1\r\nHo")
        .await?;
    // A byte every 100 ms for up to 20 s: the head never completes, yet bytes
    // keep coming, so only a deadline on the whole head ends the connection.
    let trickle = tokio::spawn(async move {
        for byte in b"st: x\r\nX-Padding: ".iter().chain([b'a'; 200].iter()) {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut buffer = [0; 256];
    let outcome = tokio::time::timeout(Duration::from_secs(15), reader.read(&mut buffer)).await;
    let took = connected.elapsed();
    trickle.abort();
    match outcome {
        Err(_) => anyhow::bail!("a trickling client was still connected after {took:?}"),
        Ok(Ok(n)) if n > 0 => anyhow::bail!(
            "expected a close, got {:?}",
            String::from_utf8_lossy(&buffer[..n])
        ),
        Ok(_) => {}
    }
    // Not before the deadline: it is the header timeout that ended it.
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    let metrics = ingress.metrics().await?;
    assert_eq!(
        metric(
            &metrics,
            "si_ingress_connection_timeouts_total{timeout=\"header_read\"}"
        ),
        1.0,
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() -> anyhow::Result<()> {
    let ingress = Ingress::start(&["--header-read-timeout", "1s", "--idle-timeout", "4s"]).await?;
    let mut stream = TcpStream::connect(ingress.running.addr).await?;
    stream.write_all(NOT_FOUND_REQUEST).await?;
    read_not_found(&mut stream, Duration::from_secs(10)).await?;
    let answered = Instant::now();
    // Kept alive: a second request on the same connection is served.
    stream.write_all(NOT_FOUND_REQUEST).await?;
    read_not_found(&mut stream, Duration::from_secs(10)).await?;
    let answered_again = Instant::now();
    closed_by_server(&mut stream, Duration::from_secs(30)).await?;
    let idled = answered_again.elapsed();
    // Far longer than the 1 s header timeout: the idle timeout closed it.
    assert!(
        idled >= Duration::from_secs(2),
        "closed {idled:?} after the response (first answer {:?} before)",
        answered_again - answered
    );
    let metrics = ingress.metrics().await?;
    assert_eq!(
        metric(
            &metrics,
            "si_ingress_connection_timeouts_total{timeout=\"idle\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "si_ingress_connection_timeouts_total{timeout=\"header_read\"}"
        ),
        0.0,
        "{metrics}"
    );
    support::wait_for(Duration::from_secs(10), || async {
        Ok(metric(&ingress.metrics().await?, "si_ingress_connections_open") == 0.0)
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_connection_past_the_cap_waits_until_one_closes() -> anyhow::Result<()> {
    let ingress = Ingress::start(&[
        "--max-connections",
        "2",
        "--max-in-flight",
        "2",
        "--idle-timeout",
        "120s",
        "--header-read-timeout",
        "60s",
    ])
    .await?;
    // Two kept-alive connections, each served once, fill the cap.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(ingress.running.addr).await?;
        stream.write_all(NOT_FOUND_REQUEST).await?;
        read_not_found(&mut stream, Duration::from_secs(10)).await?;
        held.push(stream);
    }
    support::wait_for(Duration::from_secs(10), || async {
        let metrics = ingress.metrics().await?;
        Ok(metric(&metrics, "si_ingress_connections_open") == 2.0
            && metric(&metrics, "si_ingress_connections_waited_total") >= 1.0)
    })
    .await?;
    // A third connects (the kernel's backlog takes it) but is not served...
    let mut third = TcpStream::connect(ingress.running.addr).await?;
    third.write_all(NOT_FOUND_REQUEST).await?;
    let early = read_not_found(&mut third, Duration::from_secs(1)).await;
    assert!(early.is_err(), "served past the cap: {early:?}");
    // ...until one of the two closes.
    drop(held.remove(0));
    read_not_found(&mut third, Duration::from_secs(20)).await?;
    let metrics = ingress.metrics().await?;
    assert_eq!(
        metric(&metrics, "si_ingress_connections_accepted_total"),
        3.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "si_ingress_connections_open"),
        2.0,
        "{metrics}"
    );
    Ok(())
}
