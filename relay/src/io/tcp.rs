//! TCP and TLS listeners: accept loops (one per worker on a SO_REUSEPORT listener, so the
//! kernel spreads connections over workers and a connection stays on the shard that accepted
//! it). Every accepted connection first takes a slot of the relay-wide `--max-connections`
//! and of its address's `--max-connections-per-ip` (refused and closed at once without one)
//! and holds it until it ends, TLS handshake included; the handshake must finish within `--tls-handshake-timeout`. Then `stream::serve`,
//! or with `--http-upstream`, TURN or a forward to the upstream by the first bytes.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use relay_proto::{FiveTuple, Transport};
use socket2::{Domain, Protocol, Socket, Type};
use startup::first_bytes::Protocol as Speaks;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::http_upstream::{self, HttpUpstream};
use super::shard::Shard;
use super::stream;

/// TLS on a listener: the acceptor and how long a client may take to finish its handshake.
#[derive(Clone)]
pub(crate) struct TlsAccept {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) handshake_timeout: Duration,
}

/// A TCP listener bound with SO_REUSEPORT (one per worker on the same port).
pub(crate) fn bind_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// How a listener's connections start: a PROXY header naming the client (`--proxy-protocol`,
/// read within the TLS handshake timeout), then TLS when `tls` is given, then, with
/// `--http-upstream`, the first bytes that tell TURN from HTTP.
#[derive(Clone)]
pub(crate) struct StreamEdge {
    pub(crate) proxy_protocol: bool,
    pub(crate) tls: Option<TlsAccept>,
    /// The time a PROXY header (and the first bytes, with an upstream) may take.
    pub(crate) header_timeout: Duration,
    /// `--http-upstream`: where connections that speak HTTP go.
    pub(crate) http_upstream: Option<HttpUpstream>,
}

/// Accepts connections until the worker stops.
pub(crate) async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, edge: StreamEdge) {
    loop {
        let (conn, client) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Before anything else, TLS handshake included: the slot is the connection's until
        // its task ends. Behind a PROXY header, its source is known once the header is read.
        let source = (!edge.proxy_protocol).then_some(client.ip());
        let Some(slot) = shard.admit_stream(source) else {
            tracing::debug!(%client, "connection limit reached: closing");
            continue;
        };
        let Ok(server) = conn.local_addr() else {
            continue;
        };
        let _ = conn.set_nodelay(true);
        let edge = edge.clone();
        let conn_shard = Rc::clone(&shard);
        shard.spawn_connection(async move {
            // Dropped with the task, however it ends (cancellation included).
            let mut slot = slot;
            let mut conn = conn;
            let client = if edge.proxy_protocol {
                let header_timeout = edge.header_timeout;
                match startup::proxy_protocol::client_within(&mut conn, client, header_timeout)
                    .await
                {
                    Ok(client) => client,
                    Err(e) => {
                        tracing::debug!(%client, error = %e, "PROXY header refused");
                        conn_shard.proxy_header_refused();
                        return;
                    }
                }
            } else {
                client
            };
            if let Err(refused) = slot.attribute(client.ip()) {
                tracing::debug!(%client, "connection limit of its address reached: closing");
                conn_shard.connection_refused(refused);
                return;
            }
            match &edge.tls {
                None => {
                    let five = FiveTuple {
                        client,
                        server,
                        transport: Transport::Tcp,
                    };
                    serve_stream(conn_shard, conn, five, &edge).await;
                }
                Some(tls) => {
                    serve_tls(conn_shard, conn, five_tls(client, server), tls, &edge).await
                }
            }
        });
    }
}

fn five_tls(client: SocketAddr, server: SocketAddr) -> FiveTuple {
    FiveTuple {
        client,
        server,
        transport: Transport::Tls,
    }
}

/// The TLS handshake (bounded by `handshake_timeout`), then the TURN stream (or, with
/// `--http-upstream`, whatever the first bytes say).
async fn serve_tls(
    shard: Rc<Shard>,
    conn: TcpStream,
    five: FiveTuple,
    tls: &TlsAccept,
    edge: &StreamEdge,
) {
    let client = five.client;
    let handshake = shard.tls_handshake_started();
    let result = tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(conn)).await;
    drop(handshake);
    match result {
        Ok(Ok(tls_stream)) => serve_stream(shard, tls_stream, five, edge).await,
        Ok(Err(e)) => {
            tracing::debug!(%client, error = %e, "TLS handshake failed");
            shard.tls_handshake_failed();
        }
        Err(_) => {
            tracing::debug!(%client, "TLS handshake timed out");
            shard.tls_handshake_timed_out();
        }
    }
}

/// A connection past its PROXY header and TLS handshake: TURN, or with `--http-upstream`, TURN
/// or HTTP by its first bytes (anything else is closed and counted).
async fn serve_stream<S>(shard: Rc<Shard>, conn: S, five: FiveTuple, edge: &StreamEdge)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Some(upstream) = &edge.http_upstream else {
        stream::serve(shard, conn, five).await;
        return;
    };
    match startup::first_bytes::sniff(conn, edge.header_timeout).await {
        Ok((Speaks::Turn, conn)) => stream::serve(shard, conn, five).await,
        Ok((Speaks::Http, conn)) => {
            shard.http_forward_started();
            if let Err(e) = http_upstream::forward(upstream, conn, five.client, five.server).await {
                tracing::warn!(client = %five.client, error = %e, "HTTP connection not forwarded");
                shard.http_forward_failed();
            }
        }
        Err(e) => {
            tracing::debug!(client = %five.client, error = %e, "neither TURN nor HTTP: closing");
            shard.first_bytes_refused();
        }
    }
}
