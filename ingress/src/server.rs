//! The webhook listener's connections: at most `MAX_CONNECTIONS` open, each
//! served by hyper's HTTP/1 connection, and each closed when its client is too
//! slow to send a request head (`HEADER_READ_TIMEOUT`) or idles between
//! requests for longer than `IDLE_TIMEOUT`.
//!
//! Why not hyper's own `header_read_timeout`: since hyper 1.4 its timer starts
//! whenever the connection waits for a request head, so it is also the
//! keep-alive idle timeout. A 10 s header timeout would then close idle
//! keep-alive connections after 10 s, well before a load balancer stops
//! reusing them (60 s for an AWS ALB or nginx), and a request the balancer
//! sends just as the pod closes the connection comes back to Twilio as a 502.
//! So the two deadlines are kept apart here: the header timeout runs from the
//! connection's start, or from the first byte of a later request, until hyper
//! hands the parsed request to the webhook service; the idle timeout runs from the end
//! of a response until the next request's first byte.
//!
//! Past the cap, connections are not accepted: they wait in the kernel's
//! accept backlog (their TCP handshake completes, their request is read) until
//! an open connection closes, which the idle timeout bounds.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::app::Webhooks;
use crate::metrics::Metrics;

/// How connections are bounded.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From a connection's start, or a request's first byte, to its complete head.
    pub header_read_timeout: Duration,
    /// From the end of a response to the next request's first byte.
    pub idle_timeout: Duration,
    /// Connections open at once; more wait in the accept backlog.
    pub max_connections: usize,
}

/// Which deadline a connection is under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// The request head did not arrive in time.
    Header,
    /// No new request in time after the last response.
    Idle,
}

impl Timeout {
    /// The metric label.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Header => "header_read",
            Self::Idle => "idle",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for (the rest of) a request head since the instant.
    Head(Instant),
    /// The webhook service has the request.
    Busy,
    /// The last response is done; no byte of a new request yet.
    Idle(Instant),
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// The connection task, when it last found the socket empty while busy:
    /// woken when the request is done, so that its deadline gets armed (hyper
    /// reads again only when the socket wakes it).
    waiting: Option<Waker>,
}

/// One connection's phase, shared by its socket wrapper and its service.
#[derive(Debug)]
struct Tracker {
    state: Mutex<State>,
    limits: Limits,
}

impl Tracker {
    fn new(limits: Limits) -> Self {
        Self {
            state: Mutex::new(State {
                phase: Phase::Head(Instant::now()),
                waiting: None,
            }),
            limits,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn busy(&self) {
        self.lock().phase = Phase::Busy;
    }

    fn idle(&self) {
        let waiting = {
            let mut state = self.lock();
            state.phase = Phase::Idle(Instant::now());
            state.waiting.take()
        };
        if let Some(waker) = waiting {
            waker.wake();
        }
    }

    fn bytes_read(&self) {
        let mut state = self.lock();
        if matches!(state.phase, Phase::Idle(_)) {
            state.phase = Phase::Head(Instant::now());
        }
    }

    /// The deadline the connection is under now, if any: none while the
    /// webhook service handles a request (`REQUEST_TIMEOUT` bounds that); then `cx`
    /// is woken when the request is done.
    fn deadline(&self, cx: &Context<'_>) -> Option<(Instant, Timeout)> {
        let mut state = self.lock();
        match state.phase {
            Phase::Head(since) => Some((since + self.limits.header_read_timeout, Timeout::Header)),
            Phase::Idle(since) => Some((since + self.limits.idle_timeout, Timeout::Idle)),
            Phase::Busy => {
                state.waiting = Some(cx.waker().clone());
                None
            }
        }
    }
}

/// Marks a connection idle when its request's response is ready, or when the
/// request is dropped unanswered.
struct BusyGuard(Arc<Tracker>);

impl BusyGuard {
    fn new(tracker: Arc<Tracker>) -> Self {
        tracker.busy();
        Self(tracker)
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.idle();
    }
}

/// A socket that fails its pending read or write with `TimedOut` once the
/// connection's current deadline passes; hyper then closes the connection.
struct Guarded {
    inner: TcpStream,
    tracker: Arc<Tracker>,
    sleep: Pin<Box<Sleep>>,
    armed: Option<Instant>,
    metrics: Metrics,
}

impl Guarded {
    fn new(inner: TcpStream, tracker: Arc<Tracker>, metrics: Metrics) -> Self {
        Self {
            inner,
            tracker,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
            metrics,
        }
    }

    /// Called when the socket has nothing to offer: errors once the deadline passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some((deadline, timeout)) = self.tracker.deadline(cx) else {
            return Poll::Pending;
        };
        if self.armed != Some(deadline) {
            self.sleep.as_mut().reset(deadline);
            self.armed = Some(deadline);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.metrics
                    .connection_timeouts
                    .with_label_values(&[timeout.label()])
                    .inc();
                tracing::debug!(timeout = timeout.label(), "closing a connection");
                Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, timeout.label()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.tracker.bytes_read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => this.poll_deadline(cx).map(Err),
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Pending => this.poll_deadline(cx).map(Err),
            ready => ready,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.poll_deadline(cx).map(Err),
            ready => ready,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Serves `webhooks` on `listener` until `shutdown`, then stops accepting and
/// waits for the open connections to finish their requests and close.
/// The caller bounds that wait (`DRAIN_TIMEOUT`).
pub async fn serve(
    listener: TcpListener,
    webhooks: Webhooks,
    limits: Limits,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // hyper's own header timer would also close idle keep-alive connections
    // (see the module docs); the tracker does both jobs.
    http.header_read_timeout(None).keep_alive(true);
    loop {
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                metrics.connections_waited.inc();
                tokio::select! {
                    permit = Arc::clone(&slots).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    () = shutdown.cancelled() => break,
                }
            }
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    accept_error(&error).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        metrics.connections_accepted.inc();
        metrics.connections_open.inc();
        let tracker = Arc::new(Tracker::new(limits));
        let io = TokioIo::new(Guarded::new(stream, Arc::clone(&tracker), metrics.clone()));
        let webhooks = webhooks.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let busy = BusyGuard::new(Arc::clone(&tracker));
            let webhooks = webhooks.clone();
            async move {
                let response = webhooks.answer(request).await;
                drop(busy);
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let connection = graceful.watch(http.serve_connection(io, service));
        let open = metrics.connections_open.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
            open.dec();
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Accept errors about one connection are skipped; others (out of file
/// descriptors) get a pause, so the loop does not spin.
async fn accept_error(error: &io::Error) {
    let per_connection = matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    );
    if !per_connection {
        tracing::error!(%error, "accepting a connection; pausing 1 s");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::Wake;

    use super::*;

    const LIMITS: Limits = Limits {
        header_read_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(60),
        max_connections: 1,
    };

    #[derive(Default)]
    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn kind(tracker: &Tracker, cx: &Context<'_>) -> Option<Timeout> {
        tracker.deadline(cx).map(|(_, timeout)| timeout)
    }

    #[test]
    fn the_deadline_follows_the_connection_phase() {
        let flag = Arc::new(Flag::default());
        let waker = Waker::from(Arc::clone(&flag));
        let cx = Context::from_waker(&waker);
        let tracker = Tracker::new(LIMITS);
        // A new connection must send its head in time.
        assert_eq!(kind(&tracker, &cx), Some(Timeout::Header));
        tracker.bytes_read();
        assert_eq!(kind(&tracker, &cx), Some(Timeout::Header));
        // While the webhook service has the request: no deadline, and the task is woken
        // when the request is done so that the idle deadline gets armed.
        tracker.busy();
        tracker.bytes_read();
        assert_eq!(kind(&tracker, &cx), None);
        assert!(!flag.0.load(Ordering::SeqCst));
        tracker.idle();
        assert!(
            flag.0.load(Ordering::SeqCst),
            "woken when the request was done"
        );
        let (idle_until, timeout) = tracker.deadline(&cx).expect("idle deadline");
        assert_eq!(timeout, Timeout::Idle);
        assert!(idle_until >= Instant::now() + Duration::from_secs(59));
        // The next request's first byte starts its header deadline.
        tracker.bytes_read();
        let (head_until, timeout) = tracker.deadline(&cx).expect("header deadline");
        assert_eq!(timeout, Timeout::Header);
        assert!(head_until <= Instant::now() + LIMITS.header_read_timeout);
    }
}
