//! TCP and TLS listeners: accept loops (one per worker on a SO_REUSEPORT listener, so the
//! kernel spreads connections over workers and a connection stays on the shard that accepted
//! it), the TLS handshake with a timeout, then `stream::serve`.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use relay_proto::{FiveTuple, Transport};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::shard::Shard;
use super::stream;

/// A TLS client must finish its handshake within this time.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Accepts connections until the worker stops; TLS when `tls` is given.
pub(crate) async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, tls: Option<TlsAcceptor>) {
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
        if !shard.admit_stream() {
            tracing::debug!(%client, "connection limit reached: closing");
            continue;
        }
        let Ok(server) = conn.local_addr() else {
            continue;
        };
        let _ = conn.set_nodelay(true);
        let shard = Rc::clone(&shard);
        let tls = tls.clone();
        tokio::task::spawn_local(async move {
            match tls {
                None => {
                    let five = FiveTuple {
                        client,
                        server,
                        transport: Transport::Tcp,
                    };
                    stream::serve(shard, conn, five).await;
                }
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(conn)).await {
                        Ok(Ok(tls_stream)) => {
                            let five = FiveTuple {
                                client,
                                server,
                                transport: Transport::Tls,
                            };
                            stream::serve(shard, tls_stream, five).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%client, error = %e, "TLS handshake failed");
                            shard.tls_failed();
                        }
                        Err(_) => {
                            tracing::debug!(%client, "TLS handshake timed out");
                            shard.tls_failed();
                        }
                    }
                }
            }
        });
    }
}
