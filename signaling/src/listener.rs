//! The accept loop: HTTP/1.1 connections served by hyper under the limits a public server needs
//! against slow or abusive clients (slowloris):
//!
//! - a connection must be through its edge steps (PROXY header, TLS handshake, first bytes)
//!   within `--header-read-timeout` of the accept, and send each request's headers within
//!   `--header-read-timeout`, and then its body within `--header-read-timeout` more
//!   ([`DeadlineBody`]), or it is closed; headers over [`MAX_HEADER_BYTES`] get 431;
//! - at most `--max-http-connections` connections may be open and not upgraded to a WebSocket
//!   (past that, new ones are closed at once and counted);
//! - a connection closed with its client's bytes waiting, or in the middle of a request body
//!   not read to its end (refused, or too slow), lingers ([`crate::lingering_close`]), so that
//!   its answer is not lost to a reset;
//! - an answer's write that makes no progress within `--header-read-timeout` closes the
//!   connection ([`crate::write_deadline`]): a client that never reads cannot keep its slot;
//! - when accepting fails because the process is out of file descriptors (EMFILE/ENFILE), the
//!   loop backs off for a moment and goes on serving instead of spinning;
//! - at start-up, a warning when `ulimit -n` is below what `--max-connections` needs.
//!
//! With `--shared-port` (and `--with-relay`), a connection whose first bytes are STUN rather
//! than an HTTP request line is handed to the in-process relay as a TURN
//! stream (`startup::first_bytes` decides; the bytes read are replayed to whichever side takes
//! it); it then leaves this count for the relay's `--max-connections`.
//!
//! Upgraded WebSockets leave this count: they are bounded by `--max-connections` and the
//! per-address limits in [`crate::ws`]. So do connections while they carry a long-lived HTTP
//! stream (an SSE stream, a pending long-poll): the handler borrows the connection's
//! [`HttpSlot`] for the stream's length, and the stream counts as a connection instead.

use std::future::Future as _;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use startup::source_limit::{SourceLimit, SourceSlot};

use crate::client_ip::IpNet;
use crate::lingering_close::Lingering;
use crate::metrics::Metrics;
use crate::write_deadline::WriteDeadline;

/// The limits of the accept loop.
#[derive(Debug, Clone)]
pub struct ListenerLimits {
    pub header_read_timeout: Duration,
    pub max_http_connections: usize,
    pub max_http_connections_per_ip: usize,
    /// `--trusted-proxy`: sources whose connections carry many clients' (not limited per
    /// source).
    pub trusted_proxies: Arc<[IpNet]>,
}

impl ListenerLimits {
    /// A share of `--max-http-connections-per-ip` for `source`: `Ok(None)` for a trusted proxy,
    /// `Err` when the source holds its share.
    fn source_slot(
        &self,
        per_source: &Arc<SourceLimit>,
        source: IpAddr,
    ) -> Result<Option<SourceSlot>, ()> {
        let source = source.to_canonical();
        if self.trusted_proxies.iter().any(|net| net.contains(source)) {
            return Ok(None);
        }
        let key = relay_proto::rate_key(source);
        per_source.try_take(key).map(Some).ok_or(())
    }
}

/// What a connection passes through before HTTP: a PROXY protocol header naming the client
/// (`--proxy-protocol`), then TLS (`--tls-cert`/`--tls-key`, `--tls-self-signed`), then with
/// `--shared-port` its first bytes, which send TURN to the in-process relay.
#[derive(Clone, Default)]
pub struct Edge {
    pub proxy_protocol: bool,
    pub tls: Option<TlsAcceptor>,
    /// `--shared-port`: where TURN connections go.
    #[cfg(feature = "with-relay")]
    pub turn: Option<relay::StreamIntake>,
}

/// A connection's place in the `--max-http-connections` count, held until it is upgraded or
/// closed. Handlers find it in the request's extensions.
#[derive(Clone)]
pub struct HttpSlot {
    pending: Arc<AtomicUsize>,
    state: Arc<Mutex<SlotState>>,
    /// A request body was started and not read to its end (the close then lingers).
    body_unread: Arc<AtomicBool>,
}

/// Where a connection stands in the counts; one lock, so that a loan ending after the
/// connection closed (its stream's task outlives the request) cannot count it again.
struct SlotState {
    /// Counted in `pending` now (false while a stream borrows the slot, and once closed).
    counted: bool,
    /// The connection is gone: nothing counts it again.
    closed: bool,
    /// Its source's share of `--max-http-connections-per-ip` (`None`: a trusted proxy, or not
    /// known yet), suspended while lent to a stream (the source's streams count in
    /// `--max-connections-per-ip` instead).
    source: Option<SourceSlot>,
}

impl HttpSlot {
    fn new(pending: Arc<AtomicUsize>, source: Option<SourceSlot>) -> Self {
        Self {
            pending,
            state: Arc::new(Mutex::new(SlotState {
                counted: true,
                closed: false,
                source,
            })),
            body_unread: Arc::new(AtomicBool::new(false)),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts the connection for its source once it is known (behind a PROXY header).
    fn set_source(&self, slot: SourceSlot) {
        self.state().source = Some(slot);
    }

    /// Whether the connection counts in `--max-http-connections` now (not lent to a stream,
    /// not upgraded, not closed).
    pub fn is_counted(&self) -> bool {
        self.state().counted
    }

    /// Takes the connection out of the counts until the loan is dropped (a long-lived stream,
    /// which `--max-connections` and `--max-connections-per-ip` count meanwhile).
    pub fn lend(&self) -> SlotLoan {
        let mut state = self.state();
        if state.counted {
            state.counted = false;
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(source) = &mut state.source {
            source.suspend();
        }
        SlotLoan(self.clone())
    }
}

/// See [`HttpSlot::lend`]. Dropped, it counts the connection again unless it closed meanwhile;
/// for its source even over the share (the source's next connection is then refused).
pub struct SlotLoan(HttpSlot);

impl Drop for SlotLoan {
    fn drop(&mut self) {
        let slot = &self.0;
        let mut state = slot.state();
        if state.closed || state.counted {
            return;
        }
        state.counted = true;
        slot.pending.fetch_add(1, Ordering::AcqRel);
        if let Some(source) = &mut state.source {
            source.resume();
        }
    }
}

/// Counts a connection until it is upgraded or closed.
struct Pending(HttpSlot);

impl Drop for Pending {
    fn drop(&mut self) {
        let slot = &self.0;
        let mut state = slot.state();
        state.closed = true;
        if state.counted {
            state.counted = false;
            slot.pending.fetch_sub(1, Ordering::AcqRel);
        }
        state.source = None;
    }
}

/// Serves `router` on `listener` until `stop` is cancelled; connections in progress are then
/// shut down gracefully (upgraded WebSockets are no longer HTTP connections: the drain closes
/// them). The steps of the `edge` (the PROXY header, the TLS handshake, the first bytes on a
/// shared port) must all finish within `--header-read-timeout` of the accept, and count against
/// `--max-http-connections` while they run; a connection that fails one is closed and counted.
/// The request headers then get `--header-read-timeout` of their own (hyper's timer). With
/// TLS, every connection is HTTPS (and its WebSockets WSS).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ListenerLimits,
    edge: Edge,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let pending = Arc::new(AtomicUsize::new(0));
    let per_source = SourceLimit::new(limits.max_http_connections_per_ip);
    // As many as may be open and not upgraded: closing ones hold no more descriptors than that.
    let lingering = Lingering::new(limits.max_http_connections);
    let serving = HttpServing {
        router,
        limits: limits.clone(),
        stop: stop.clone(),
        metrics: Arc::clone(&metrics),
    };
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors (or another transient failure): wait for some to be
                // released instead of spinning; the connections already open keep being served.
                tracing::warn!(error = %e, "accept failed: backing off");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if pending.fetch_add(1, Ordering::AcqRel) >= limits.max_http_connections {
            pending.fetch_sub(1, Ordering::AcqRel);
            metrics.http_refused.inc();
            drop(tcp);
            continue;
        }
        // Behind a PROXY header, the source is known once the header is read.
        let source = if edge.proxy_protocol {
            None
        } else {
            match limits.source_slot(&per_source, peer.ip()) {
                Ok(slot) => slot,
                Err(()) => {
                    pending.fetch_sub(1, Ordering::AcqRel);
                    metrics.http_refused_per_ip.inc();
                    continue;
                }
            }
        };
        let guard = Pending(HttpSlot::new(Arc::clone(&pending), source));
        // Signaling frames are small and latency-bound: no Nagle delay.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let serving = serving.clone();
        let edge = edge.clone();
        let per_source = Arc::clone(&per_source);
        // The PROXY header, the TLS handshake and the first bytes share one deadline.
        let deadline = tokio::time::Instant::now() + limits.header_read_timeout;
        let Ok(local) = tcp.local_addr() else {
            continue;
        };
        let tcp = lingering.wrap(tcp, Arc::clone(&guard.0.body_unread));
        tokio::spawn(async move {
            let mut tcp = tcp;
            let (limits, metrics) = (&serving.limits, &serving.metrics);
            let peer = if edge.proxy_protocol {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let client = Box::pin(startup::proxy_protocol::client_within(&mut tcp, peer, left));
                let client = match client.await {
                    Ok(client) => client,
                    Err(e) => {
                        metrics.proxy_headers_refused.inc();
                        tracing::debug!(error = %e, %peer, "PROXY header refused");
                        return;
                    }
                };
                match limits.source_slot(&per_source, client.ip()) {
                    Ok(Some(slot)) => guard.0.set_source(slot),
                    Ok(None) => {}
                    Err(()) => {
                        metrics.http_refused_per_ip.inc();
                        return;
                    }
                }
                client
            } else {
                peer
            };
            let conn = Conn {
                peer,
                local,
                secure: false,
                deadline,
            };
            // The edge steps are boxed and HTTP gets a task of its own (serve_or_hand_over): a
            // connection held open (an SSE stream, a pending long-poll) then costs its HTTP
            // future alone, not one sized for every step and stream type nested inline.
            let Some(tls) = edge.tls.clone() else {
                Box::pin(serve_or_hand_over(tcp, conn, &edge, serving, guard)).await;
                return;
            };
            match Box::pin(tokio::time::timeout_at(deadline, tls.accept(tcp))).await {
                Ok(Ok(stream)) => {
                    let conn = Conn {
                        secure: true,
                        ..conn
                    };
                    Box::pin(serve_or_hand_over(stream, conn, &edge, serving, guard)).await;
                }
                Ok(Err(e)) => {
                    metrics.tls_handshake_failures.inc();
                    tracing::debug!(error = %e, %peer, "TLS handshake failed");
                }
                Err(_) => {
                    metrics.tls_handshake_failures.inc();
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            }
        });
    }
}

/// The most bytes of request headers a connection may send (hyper's read buffer; beyond it the
/// request gets 431): what a browser's WebSocket upgrade with cookies needs, many times over.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// A connection past its PROXY header: the client, our address, whether it is TLS, and when
/// its edge steps (PROXY header, TLS handshake, first bytes) must be done.
#[derive(Clone, Copy)]
struct Conn {
    peer: SocketAddr,
    #[cfg_attr(not(feature = "with-relay"), allow(dead_code))]
    local: SocketAddr,
    #[cfg_attr(not(feature = "with-relay"), allow(dead_code))]
    secure: bool,
    #[cfg_attr(not(feature = "with-relay"), allow(dead_code))]
    deadline: tokio::time::Instant,
}

/// What serves HTTP on a connection: the app, the listener's limits, the stop signal and the
/// metrics.
#[derive(Clone)]
struct HttpServing {
    router: Router,
    limits: ListenerLimits,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
}

/// HTTP on `io`; with `--shared-port`, HTTP or (handed to the in-process relay) TURN, by the
/// first bytes, which must come by the connection's edge deadline.
async fn serve_or_hand_over<I>(io: I, conn: Conn, edge: &Edge, serving: HttpServing, guard: Pending)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    #[cfg(feature = "with-relay")]
    if let Some(intake) = &edge.turn {
        use startup::first_bytes::{Protocol, sniff};
        let peer = conn.peer;
        let left = conn
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        match Box::pin(sniff(io, left)).await {
            Ok((Protocol::Http, io)) => {
                // A task of its own, sized for HTTP alone: this one, sized for every edge
                // step, ends here.
                tokio::spawn(serve_connection(io, peer, serving, guard));
            }
            Ok((Protocol::Turn, io)) => {
                // Not an HTTP connection: the relay's `--max-connections` counts it from now.
                drop(guard);
                let metrics = &serving.metrics;
                let transport = if conn.secure {
                    relay::StreamTransport::Tls
                } else {
                    relay::StreamTransport::Tcp
                };
                match intake.adopt(io, peer, conn.local, transport) {
                    Ok(()) => {
                        metrics.turn_handovers.inc();
                    }
                    Err(e) => {
                        metrics.first_bytes_refused.inc();
                        tracing::debug!(error = %e, %peer, "TURN connection not taken");
                    }
                }
            }
            Err(e) => {
                serving.metrics.first_bytes_refused.inc();
                tracing::debug!(error = %e, %peer, "neither TURN nor HTTP: closing");
            }
        }
        return;
    }
    #[cfg(not(feature = "with-relay"))]
    let _ = edge;
    // A task of its own, sized for HTTP alone: this one, sized for every edge step, ends here.
    tokio::spawn(serve_connection(io, conn.peer, serving, guard));
}

async fn serve_connection<I>(io: I, peer: SocketAddr, serving: HttpServing, guard: Pending)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let HttpServing {
        router,
        limits,
        stop,
        metrics,
    } = serving;
    let slot = guard.0.clone();
    let body_time = limits.header_read_timeout;
    let io = WriteDeadline::new(
        io,
        limits.header_read_timeout,
        guard.0.clone(),
        Arc::clone(&metrics),
    );
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request.extensions_mut().insert(slot.clone());
        // Only a request with a body gets a deadline (GETs and upgrades have none: no timer).
        let request = request.map(|body| {
            if hyper::body::Body::is_end_stream(&body) {
                axum::body::Body::new(body)
            } else {
                let unread = Arc::clone(&slot.body_unread);
                axum::body::Body::new(DeadlineBody::new(body, body_time, unread))
            }
        });
        let (router, slot) = (router.clone(), slot.clone());
        async move {
            let mut response = router.oneshot(request).await?;
            // Answered before its body was read to the end (a 413 on its `Content-Length`, a
            // refusal): the connection cannot carry another request, and says so. A 503 (this
            // node is draining, or cannot reach Redis, or is full) closes it too: the client's
            // next try opens a new connection, which a balancer in front may give another
            // node (a kept-alive one would come back here).
            if slot.body_unread.load(Ordering::Acquire)
                || response.status() == axum::http::StatusCode::SERVICE_UNAVAILABLE
            {
                response.headers_mut().insert(
                    axum::http::header::CONNECTION,
                    axum::http::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(MAX_HEADER_BYTES);
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            metrics.http_header_timeouts.inc();
        }
        tracing::debug!(error = %e, %peer, "HTTP connection ended with an error");
    }
    // The HTTP connection is over: closed, timed out, or handed to a WebSocket (which
    // `--max-connections` counts from now on).
    drop(guard);
}

/// A request body that must arrive whole within a time from its request's headers: a client
/// that trickles it, or stops, gets [`BodyTooSlow`] instead of holding its connection.
pub struct DeadlineBody<B> {
    body: B,
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// Set from the start until the body is read to its end: a connection closed meanwhile
    /// lingers ([`crate::lingering_close`]), the rest of the body being on its way.
    unread: Arc<AtomicBool>,
}

impl<B> DeadlineBody<B> {
    fn new(body: B, within: Duration, unread: Arc<AtomicBool>) -> Self {
        unread.store(true, Ordering::Release);
        Self {
            body,
            deadline: Box::pin(tokio::time::sleep(within)),
            unread,
        }
    }
}

/// The error of a [`DeadlineBody`] past its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within --header-read-timeout")]
pub struct BodyTooSlow;

impl<B> hyper::body::Body for DeadlineBody<B>
where
    B: hyper::body::Body + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = B::Data;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        if self.body.is_end_stream() {
            self.unread.store(false, Ordering::Release);
            return Pin::new(&mut self.body).poll_frame(cx).map_err(Into::into);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTooSlow))));
        }
        let polled = Pin::new(&mut self.body).poll_frame(cx).map_err(Into::into);
        if matches!(polled, Poll::Ready(None)) || self.body.is_end_stream() {
            self.unread.store(false, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Warns when the process may open fewer files than `--max-connections` needs (each WebSocket
/// is one descriptor, plus the HTTP connections, as many again closing with a linger, and a
/// margin for the process's own).
pub fn check_fd_budget(max_connections: usize, max_http_connections: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass; no other precondition.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    // HTTP connections open, and as many lingering on their close.
    let needed = (max_connections + 2 * max_http_connections + 64) as libc::rlim_t;
    if limit.rlim_cur < needed {
        tracing::warn!(
            open_files = limit.rlim_cur,
            needed,
            "ulimit -n is below --max-connections + 2 x --max-http-connections + 64: raise it, \
             or lower the limits (past it, accepts fail and new clients wait)"
        );
    }
}
