//! Closing a TCP connection without losing the last answer (a web server's "lingering close").
//!
//! When a socket is closed with bytes from the client still unread (a request body the server
//! refused, or stopped reading past its deadline), the kernel does not send a FIN: it resets
//! the connection and discards what was written but not yet sent. So the answer that explains
//! why (`400`, `413`) can be lost, under load or when the client reads slowly, and the client
//! sees only "connection reset".
//!
//! So a [`LingeringTcp`] dropped with bytes of its client waiting, or in the middle of a request
//! body that was not read to its end (refused, or cut off: the rest may still be on its way), is
//! closed the way Apache closes a connection: its write side is shut (the answer, then a FIN),
//! and what the client still sends is read and thrown away until it stops (its FIN), for at
//! most [`LINGER_TIME`] and [`LINGER_BYTES`]; then it is closed. Any other connection (its
//! client done, or sending nothing: a slowloris) is closed at once, and so is one past the
//! number that may linger at once ([`Lingering`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// The longest a closing connection is read from before it is closed.
pub const LINGER_TIME: Duration = Duration::from_secs(2);

/// The most bytes read and thrown away from a closing connection before it is closed.
pub const LINGER_BYTES: usize = 256 * 1024;

/// The connections that may linger at once (each holds a descriptor for up to [`LINGER_TIME`]).
#[derive(Clone)]
pub struct Lingering(Arc<Semaphore>);

impl Lingering {
    /// At most `max` connections lingering at once.
    pub fn new(max: usize) -> Self {
        Self(Arc::new(Semaphore::new(max)))
    }

    /// `tcp`, closed with a linger when dropped with bytes waiting or while `body_unread`
    /// (set by whoever reads the connection's request bodies).
    pub fn wrap(&self, tcp: TcpStream, body_unread: Arc<AtomicBool>) -> LingeringTcp {
        LingeringTcp {
            tcp: Some(tcp),
            body_unread,
            lingering: self.clone(),
        }
    }
}

/// A TCP stream that lingers on close while its client may still send.
pub struct LingeringTcp {
    /// Taken only by `drop`.
    tcp: Option<TcpStream>,
    /// A request body was started and not read to its end.
    body_unread: Arc<AtomicBool>,
    lingering: Lingering,
}

impl LingeringTcp {
    fn tcp(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(self.tcp.as_mut().expect("taken only by drop"))
    }
}

impl Drop for LingeringTcp {
    fn drop(&mut self) {
        let Some(tcp) = self.tcp.take() else {
            return;
        };
        // Bytes waiting now would draw a reset on close, and so would the rest of a body still
        // on its way; the client's FIN (or an error) means nothing more comes.
        let mut first = [0u8; 1024];
        match tcp.try_read(&mut first) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !self.body_unread.load(Ordering::Acquire) {
                    return;
                }
            }
            Err(_) => return,
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Ok(permit) = Arc::clone(&self.lingering.0).try_acquire_owned() else {
            return;
        };
        runtime.spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(LINGER_TIME, linger(tcp)).await;
        });
    }
}

/// Shuts `tcp`'s write side, then reads until the client stops or [`LINGER_BYTES`] were read.
async fn linger(mut tcp: TcpStream) {
    if tcp.shutdown().await.is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    let mut read = 0;
    while read < LINGER_BYTES {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => read += n,
        }
    }
}

impl AsyncRead for LingeringTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().tcp().poll_read(cx, buf)
    }
}

impl AsyncWrite for LingeringTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().tcp().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().tcp().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.as_ref().is_some_and(AsyncWrite::is_write_vectored)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().tcp().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().tcp().poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// When the client's body comes: before the server closes (unread then), or after (the
    /// server knowing, or not, that it closes in the middle of a body).
    #[derive(Clone, Copy)]
    enum Body {
        Before,
        After { known: bool },
    }

    /// A server that writes an answer the client has no room for yet, and closes without
    /// reading the client's body: the client, reading later, gets all of it and a clean end.
    async fn answer_survives_close(lingering: Option<&Lingering>, body: Body) -> io::Result<usize> {
        const ANSWER: usize = 512 * 1024;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpSocket::new_v4().unwrap();
        // A small receive window: most of the answer waits in the server's send queue.
        client.set_recv_buffer_size(4096).unwrap();
        let mut client = client
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        // A request body, more than the look on drop takes, that the server never reads.
        let request = [b'r'; 8 * 1024];
        if let Body::Before = body {
            client.write_all(&request).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut server = server;
        let mut sent = 0;
        let chunk = [b'x'; 16 * 1024];
        // As much of the answer as the send queue takes now.
        while sent < ANSWER {
            match tokio::time::timeout(Duration::from_millis(100), server.write(&chunk)).await {
                Ok(Ok(n)) => sent += n,
                _ => break,
            }
        }
        assert!(sent > 64 * 1024, "the send queue took only {sent} bytes");
        let known = matches!(body, Body::After { known: true });
        match lingering {
            Some(lingering) => drop(lingering.wrap(server, Arc::new(AtomicBool::new(known)))),
            None => drop(server),
        }
        if let Body::After { .. } = body {
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(&request).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut got))
            .await
            .expect("the server closed")?;
        assert_eq!(got.len(), sent);
        Ok(got.len())
    }

    #[tokio::test]
    async fn an_answer_written_before_a_close_arrives_whole_whenever_the_body_comes() {
        let lingering = Lingering::new(4);
        for body in [Body::Before, Body::After { known: true }] {
            answer_survives_close(Some(&lingering), body)
                .await
                .expect("a clean end");
            // The kernel's own close resets the connection (at once with bytes unread, or when
            // they arrive) and drops the answer's unsent part.
            let plain = answer_survives_close(None, body).await;
            assert!(plain.is_err(), "a plain close lost nothing: {plain:?}");
        }
        // Nothing waiting and no body known to be under way: closed at once, as plainly.
        let unknown = answer_survives_close(Some(&lingering), Body::After { known: false }).await;
        assert!(unknown.is_err(), "lingered without a reason: {unknown:?}");
    }

    #[tokio::test]
    async fn at_most_the_limit_linger_and_the_rest_close_at_once() {
        let lingering = Lingering::new(0);
        let plain = answer_survives_close(Some(&lingering), Body::Before).await;
        assert!(plain.is_err(), "lingered past the limit: {plain:?}");
    }
}
