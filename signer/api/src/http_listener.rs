//! Serving HTTP/1.1 on a TCP listener with bounds on what a connection may hold: every HTTP
//! listener of hsmgate (the OCSP responder and its metrics, the pre-signer's and the gateway's
//! metrics, the ACME server over HTTP and HTTPS) serves through [`serve`] or [`serve_with`].
//!
//! Why it lives here: this is the one crate the gateway, the OCSP service and the ACME server
//! all depend on, and it links no PKCS#11; putting the listener in `ocsp` or `ca-frontend`
//! would make the gateway depend on them (dependencies point one way: hsm-config <- signer <-
//! ocsp <- ca-frontend).
//!
//! What each connection is bounded by ([`Limits`]):
//!
//! - `header_read_timeout`: the TLS handshake (if any) and each request's header must arrive
//!   within it (hyper's `header_read_timeout`), so a client that sends half a header, or
//!   nothing, is closed after it. Slowloris' defence, as nginx's `client_header_timeout`.
//! - `idle_timeout`: a kept-alive connection with no bytes in either direction for this long is
//!   closed (nginx's `keepalive_timeout`).
//! - `max_connection_age`: after this, the connection finishes its request and closes, so one
//!   client cannot pin a connection (and the thread it landed on) for ever.
//! - `max_connections`: open connections on the listener (all its sockets, for the responder's
//!   `SO_REUSEPORT` set). Past 7/8 of it, connections that are idle for a second are shed (closed
//!   after their response, or at once if they never sent a byte), so that thousands of idle
//!   sockets make room for a client that speaks. At the cap, a new connection is accepted and
//!   closed at once rather than left in the kernel's backlog: a full backlog drops SYNs and the
//!   client waits out TCP's retransmission back-off (1 s, 3 s, 7 s) without a word, while a
//!   prompt close lets it retry or fail over at once, and keeps our file descriptors below the
//!   process limit (at `EMFILE` `accept` itself fails and nobody gets in).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// What one listener allows its connections. In config files as a `connections` table, with
/// times in seconds; every field has a default.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Seconds for the TLS handshake and for each request's header (default 10).
    pub header_read_timeout_secs: u64,
    /// Seconds a kept-alive connection may stay silent (default 15).
    pub idle_timeout_secs: u64,
    /// Seconds after which a connection closes once its current request is answered
    /// (default 300).
    pub max_connection_age_secs: u64,
    /// Open connections at most (default 10,000; keep it below the process's file limit,
    /// `ulimit -n`, minus what the process needs besides).
    pub max_connections: usize,
    /// Seconds in-flight requests get to finish at shutdown (default 10).
    pub drain_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout_secs: 10,
            idle_timeout_secs: 15,
            max_connection_age_secs: 300,
            max_connections: 10_000,
            drain_secs: 10,
        }
    }
}

impl Limits {
    /// For a `/metrics` listener: one scraper every few seconds needs a handful of connections.
    pub fn metrics() -> Self {
        Limits {
            max_connections: 64,
            ..Limits::default()
        }
    }

    /// What is wrong with these limits, each message naming the field under `table`
    /// (e.g. `responder.connections`).
    pub fn problems(&self, table: &str) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, value) in [
            ("header_read_timeout_secs", self.header_read_timeout_secs),
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("max_connection_age_secs", self.max_connection_age_secs),
        ] {
            if value == 0 {
                problems.push(format!("{table}.{name}: must be at least 1"));
            }
        }
        if self.max_connections == 0 {
            problems.push(format!("{table}.max_connections: must be at least 1"));
        }
        // tokio's semaphore holds at most `usize::MAX >> 3` permits.
        if self.max_connections > Semaphore::MAX_PERMITS {
            problems.push(format!(
                "{table}.max_connections: at most {}",
                Semaphore::MAX_PERMITS
            ));
        }
        problems
    }

    fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs)
    }
    fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
    fn max_connection_age(&self) -> Duration {
        Duration::from_secs(self.max_connection_age_secs)
    }
}

/// The connection budget shared by every socket of one listener (the responder accepts on one
/// `SO_REUSEPORT` socket per thread, each on its own runtime; they share one [`Gate`]).
#[derive(Clone, Debug)]
pub struct Gate {
    limits: Limits,
    permits: Arc<Semaphore>,
    /// Bumped when the listener is nearly full: connections idle for a second close.
    shed: Arc<watch::Sender<Instant>>,
    last_shed: Arc<AtomicU64>,
    started: Instant,
}

impl Gate {
    pub fn new(limits: Limits) -> Self {
        Gate {
            limits,
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            shed: Arc::new(watch::channel(Instant::now()).0),
            last_shed: Arc::new(AtomicU64::new(0)),
            started: Instant::now(),
        }
    }

    /// Connections open now.
    fn open(&self) -> usize {
        self.limits.max_connections - self.permits.available_permits()
    }

    /// Past 7/8 of the cap, asks idle connections to close, at most every 250 ms (each request
    /// wakes every connection task).
    fn shed_if_crowded(&self) {
        if self.permits.available_permits() > self.limits.max_connections / 8 {
            return;
        }
        let now_ms = self.started.elapsed().as_millis() as u64;
        let last = self.last_shed.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < 250
            || self
                .last_shed
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        tracing::debug!(
            open = self.open(),
            "listener crowded: shedding idle connections"
        );
        self.shed.send_replace(Instant::now());
    }
}

/// Serves `app` over plain HTTP on `listener` within `gate`'s limits until `shutdown`
/// resolves; then stops accepting and gives open requests `drain_secs` to finish.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    gate: Gate,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_with(listener, app, gate, shutdown, |tcp| async move { Ok(tcp) }).await
}

/// [`serve`] with a `handshake` run on each accepted socket first (a TLS acceptor), within the
/// header-read timeout.
pub async fn serve_with<H, F, S>(
    listener: TcpListener,
    app: axum::Router,
    gate: Gate,
    shutdown: impl Future<Output = ()>,
    handshake: H,
) -> io::Result<()>
where
    H: Fn(TcpStream) -> F,
    F: Future<Output = io::Result<S>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = &mut shutdown => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // EMFILE/ENFILE (the cap is above the process's file limit) or a connection
                // reset before accept: nothing to do for that socket; do not spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = gate.permits.clone().try_acquire_owned() else {
            // At the cap: closed at once (see the module doc for why not left in the backlog).
            tracing::debug!(
                cap = gate.limits.max_connections,
                "connection refused: at the cap"
            );
            drop(tcp);
            gate.shed_if_crowded();
            continue;
        };
        gate.shed_if_crowded();
        // Nagle off: a response is typically one small write, which Nagle would hold back
        // waiting for the client's delayed ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::trace!("TCP_NODELAY: {e}");
        }
        let limits = gate.limits;
        let handshake = tokio::time::timeout(limits.header_read_timeout(), handshake(tcp));
        let connection = Connection {
            app: app.clone(),
            limits,
            stop: stop_rx.clone(),
            shed: gate.shed.subscribe(),
        };
        connections.spawn(async move {
            let _permit = permit;
            let Ok(Ok(stream)) = handshake.await else {
                return;
            };
            connection.run(stream).await;
        });
    }
    drop(listener);
    stop_tx.send_replace(true);
    let drain = Duration::from_secs(gate.limits.drain_secs);
    let drained = tokio::time::timeout(drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = connections.len(),
            "requests still open after the drain time; closing them"
        );
        connections.abort_all();
    }
    Ok(())
}

/// One accepted connection and what may end it early.
struct Connection {
    app: axum::Router,
    limits: Limits,
    stop: watch::Receiver<bool>,
    shed: watch::Receiver<Instant>,
}

impl Connection {
    async fn run<S>(mut self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let opened = Instant::now();
        let activity = Arc::new(AtomicU64::new(0));
        let io = Watched {
            inner: stream,
            opened,
            last: activity.clone(),
        };
        let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout())
            .keep_alive(true);
        let service = TowerToHyperService::new(self.app.clone());
        let conn = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);

        let idle_after = self.limits.idle_timeout();
        let silent_for = |activity: &AtomicU64| {
            opened.elapsed()
                - Duration::from_millis(activity.load(Ordering::Relaxed)).min(opened.elapsed())
        };
        let age_limit = tokio::time::sleep(self.limits.max_connection_age());
        tokio::pin!(age_limit);
        let mut closing = false;
        loop {
            // When the connection would be idle too long if nothing happens meanwhile.
            let idle_check = tokio::time::sleep(idle_after.saturating_sub(silent_for(&activity)));
            tokio::select! {
                _ = conn.as_mut() => return,
                () = &mut age_limit, if !closing => {}
                () = idle_check, if !closing => {
                    if silent_for(&activity) < idle_after {
                        continue;
                    }
                }
                Ok(()) = self.stop.changed(), if !closing => {}
                Ok(()) = self.shed.changed(), if !closing => {
                    // Only connections that have been quiet for a second: a client that just
                    // connected is about to send its request.
                    if silent_for(&activity) < Duration::from_secs(1) {
                        continue;
                    }
                }
            }
            // Closes now if no request is in progress (or none was ever sent); otherwise
            // after the response. A half-sent header is ended by the header-read timeout.
            conn.as_mut().graceful_shutdown();
            closing = true;
        }
    }
}

/// A stream that records when bytes last moved, in milliseconds since the connection opened.
struct Watched<S> {
    inner: S,
    opened: Instant,
    last: Arc<AtomicU64>,
}

impl<S> Watched<S> {
    fn touch(&self) {
        self.last
            .store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn limits_name_the_field_they_break() {
        let limits = Limits {
            header_read_timeout_secs: 0,
            max_connections: 0,
            ..Limits::default()
        };
        assert_eq!(
            limits.problems("responder.connections"),
            [
                "responder.connections.header_read_timeout_secs: must be at least 1",
                "responder.connections.max_connections: must be at least 1",
            ]
        );
        assert!(Limits::default().problems("x").is_empty());
    }

    /// A listener on port 0 serving `GET /` with `limits`; its address.
    async fn listening(limits: Limits) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        tokio::spawn(serve(
            listener,
            app,
            Gate::new(limits),
            std::future::pending(),
        ));
        addr
    }

    /// Reads until EOF or a reset (true), or until `within` passes (false).
    async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 1024];
        tokio::time::timeout(within, async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }

    async fn get(addr: std::net::SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn silent_and_half_sent_connections_are_closed_after_the_header_timeout() {
        let addr = listening(Limits {
            header_read_timeout_secs: 1,
            idle_timeout_secs: 60,
            ..Limits::default()
        })
        .await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUser-Ag")
            .await
            .unwrap();
        // Meanwhile an ordinary request is answered.
        assert!(get(addr).await.starts_with("HTTP/1.1 200"));
        assert!(!closed_within(&mut silent, Duration::from_millis(500)).await);
        assert!(closed_within(&mut silent, Duration::from_secs(3)).await);
        assert!(closed_within(&mut half, Duration::from_secs(3)).await);
    }

    #[tokio::test]
    async fn at_the_cap_a_new_connection_is_closed_at_once_and_idle_ones_make_room() {
        let addr = listening(Limits {
            max_connections: 2,
            ..Limits::default()
        })
        .await;
        let mut first = TcpStream::connect(addr).await.unwrap();
        let _second = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut third = TcpStream::connect(addr).await.unwrap();
        assert!(closed_within(&mut third, Duration::from_millis(500)).await);
        // The two have been silent for over a second: the next arrival sheds them, and a
        // client that speaks gets in (header timeout 10 s, so only shedding can explain it).
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let _nudge = TcpStream::connect(addr).await.unwrap();
        assert!(closed_within(&mut first, Duration::from_secs(2)).await);
        assert!(get(addr).await.starts_with("HTTP/1.1 200"));
    }
}
