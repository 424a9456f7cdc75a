//! `--http-upstream`: the relay's TCP and TLS ports also carry the web side. A connection whose
//! first bytes are an HTTP request line (see `startup::first_bytes`) is forwarded to the
//! upstream (signaling, a web server): a TCP connection to it, optionally a PROXY v2 header
//! naming the client (`--http-upstream-proxy-protocol`, for an upstream run with
//! `--proxy-protocol`), the bytes already read, then bytes copied both ways until either side
//! closes or nothing moves for [`IDLE_TIMEOUT`]. TLS ends at the relay: the upstream speaks
//! plain HTTP. Memory per connection is two fixed copy buffers.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Where HTTP connections go, and how.
#[derive(Debug, Clone)]
pub(crate) struct HttpUpstream {
    /// `--http-upstream`: `HOST:PORT`, resolved on each connection.
    pub(crate) addr: String,
    /// `--http-upstream-proxy-protocol`.
    pub(crate) proxy_protocol: bool,
    /// How long connecting to the upstream may take.
    pub(crate) connect_timeout: Duration,
}

/// A forwarded connection on which no byte moved either way for this long is closed. Longer
/// than signaling's WebSocket ping interval, so a quiet WebSocket stays open.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Bytes copied per read, each direction.
const COPY_BUFFER: usize = 16 * 1024;

/// Why a connection could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    /// The upstream did not accept a connection in time, or refused it.
    #[error("cannot reach the HTTP upstream {addr}: {source}")]
    Connect { addr: String, source: io::Error },
}

/// Forwards `client` (whose first bytes the stream replays) to the upstream; `peer` is the
/// client's address and `local` the relay's, for the PROXY header. Returns once both
/// directions are done or the connection went idle; an error only when the upstream could not
/// be reached.
pub(crate) async fn forward<S>(
    upstream: &HttpUpstream,
    client: S,
    peer: SocketAddr,
    local: SocketAddr,
) -> Result<(), ForwardError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let connect_error = |source| ForwardError::Connect {
        addr: upstream.addr.clone(),
        source,
    };
    let connecting = TcpStream::connect(upstream.addr.as_str());
    let mut server = match tokio::time::timeout(upstream.connect_timeout, connecting).await {
        Ok(Ok(server)) => server,
        Ok(Err(e)) => return Err(connect_error(e)),
        Err(_) => return Err(connect_error(io::ErrorKind::TimedOut.into())),
    };
    let _ = server.set_nodelay(true);
    if upstream.proxy_protocol {
        let header = startup::proxy_protocol::v2_header(peer, local);
        server.write_all(&header).await.map_err(connect_error)?;
    }
    splice(client, server, IDLE_TIMEOUT).await;
    Ok(())
}

/// Copies bytes both ways between `a` and `b` until both directions have ended (an end of
/// stream or an error is passed on as a shutdown of the other side's write half), or `idle`
/// without a byte moving in either direction.
pub(crate) async fn splice<A, B>(a: A, b: B, idle: Duration)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let last_activity = Cell::new(Instant::now());
    let (a_read, a_write) = tokio::io::split(a);
    let (b_read, b_write) = tokio::io::split(b);
    let a_to_b = copy_one_way(a_read, b_write, &last_activity, idle);
    let b_to_a = copy_one_way(b_read, a_write, &last_activity, idle);
    tokio::join!(a_to_b, b_to_a);
}

async fn copy_one_way<R, W>(mut from: R, mut to: W, last_activity: &Cell<Instant>, idle: Duration)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = match tokio::time::timeout(idle, from.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => n,
            // Quiet this way: fine while the other way moves (reading is cancel-safe).
            Err(_) if last_activity.get().elapsed() < idle => continue,
            Err(_) => break,
        };
        last_activity.set(Instant::now());
        if to.write_all(&buf[..n]).await.is_err() || to.flush().await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_flow_both_ways_and_an_end_is_passed_on() {
        let (mut client, client_side) = tokio::io::duplex(1024);
        let (server_side, mut server) = tokio::io::duplex(1024);
        let talk = async move {
            client.write_all(b"request").await.unwrap();
            let mut got = [0u8; 7];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"request");
            server.write_all(b"response").await.unwrap();
            drop(server);
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.unwrap();
            assert_eq!(answer, b"response", "the server's end reaches the client");
        };
        let both = async {
            tokio::join!(
                splice(client_side, server_side, Duration::from_secs(5)),
                talk
            )
        };
        tokio::time::timeout(Duration::from_secs(5), both)
            .await
            .expect("both directions ended");
    }

    #[tokio::test]
    async fn a_connection_where_nothing_moves_is_closed_after_the_idle_time() {
        let (_client, client_side) = tokio::io::duplex(1024);
        let (server_side, _server) = tokio::io::duplex(1024);
        let idle = Duration::from_millis(200);
        let started = Instant::now();
        tokio::time::timeout(
            Duration::from_secs(5),
            splice(client_side, server_side, idle),
        )
        .await
        .expect("closed once idle");
        assert!(started.elapsed() >= idle);
    }
}
