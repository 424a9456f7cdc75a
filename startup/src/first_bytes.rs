//! One port for TURN and HTTP (both binaries): a connection is told apart by its first bytes,
//! after the PROXY header and the TLS handshake, before anything else reads it. Both sides
//! speak first, so the server waits for at most [`DECISIVE_LEN`] bytes:
//!
//! - an HTTP request line starts with a method and a space (`GET `, `POST `, ... `PRI ` for the
//!   HTTP/2 preface): the web side;
//! - a STUN header has its top two bits `00` and the magic cookie `0x2112A442` at bytes 4..8:
//!   TURN;
//! - anything else is neither, and the connection is refused.
//!
//! ChannelData is refused too: no TURN client starts a connection with it (a channel needs an
//! allocation, made by a STUN request on that very connection), and its shape (top bits `01`)
//! takes in every ASCII letter, so accepting it would hand any text to the relay, past
//! `--header-read-timeout`. [`classify`] is the pure decision; [`sniff`]
//! reads the first bytes within a time limit and hands back a [`Replay`] stream that yields
//! them again, so the side that takes the connection sees it from its first byte.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};

/// The most bytes [`classify`] needs to decide (`OPTIONS ` and `CONNECT `; a STUN header's
/// first 8 bytes).
pub const DECISIVE_LEN: usize = 8;

/// The STUN magic cookie (RFC 8489 section 5).
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];

/// The methods an HTTP/1.1 client sends (RFC 9110 section 9, PATCH) and the HTTP/2 preface,
/// each with the space that ends it.
const HTTP_METHODS: [&[u8]; 10] = [
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"CONNECT ",
    b"OPTIONS ",
    b"TRACE ",
    b"PATCH ",
    b"PRI ",
];

/// What a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// STUN: TURN over TCP or TLS.
    Turn,
    /// An HTTP request line (HTTPS, WebSocket upgrades).
    Http,
}

/// What the first bytes say so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not enough bytes to decide (never with [`DECISIVE_LEN`] bytes or more).
    NeedMore,
    /// The connection speaks this.
    Is(Protocol),
    /// Neither TURN nor HTTP.
    Neither,
}

/// Decides what a connection that began with `first` speaks.
pub fn classify(first: &[u8]) -> Verdict {
    if first.is_empty() {
        return Verdict::NeedMore;
    }
    let mut could_be_http = false;
    for method in HTTP_METHODS {
        if first.starts_with(method) {
            return Verdict::Is(Protocol::Http);
        }
        could_be_http |= method.starts_with(first);
    }
    if could_be_http {
        return Verdict::NeedMore;
    }
    match first[0] >> 6 {
        0b00 => {
            let cookie = first.get(4..).unwrap_or_default();
            let seen = cookie.len().min(MAGIC_COOKIE.len());
            if cookie[..seen] != MAGIC_COOKIE[..seen] {
                Verdict::Neither
            } else if seen < MAGIC_COOKIE.len() {
                Verdict::NeedMore
            } else {
                Verdict::Is(Protocol::Turn)
            }
        }
        // ChannelData (`01`) cannot open a connection; `10` and `11` are neither.
        _ => Verdict::Neither,
    }
}

/// Why a connection's first bytes were refused.
#[derive(Debug, thiserror::Error)]
pub enum SniffError {
    /// Reading failed, or the client closed before saying enough.
    #[error("reading the first bytes: {0}")]
    Io(#[from] io::Error),
    /// The first bytes are neither TURN nor HTTP.
    #[error("the first bytes are neither TURN nor HTTP")]
    Neither,
    /// The client did not send enough bytes in time.
    #[error("no decisive first bytes within {0:?}")]
    TimedOut(Duration),
}

/// Reads the first bytes of `stream` (at most [`DECISIVE_LEN`], within `timeout`) and says what
/// it speaks; the returned stream yields those bytes again before the rest.
pub async fn sniff<S: AsyncRead + Unpin>(
    mut stream: S,
    timeout: Duration,
) -> Result<(Protocol, Replay<S>), SniffError> {
    let mut first = [0u8; DECISIVE_LEN];
    let mut filled = 0;
    let reading = async {
        loop {
            match classify(&first[..filled]) {
                Verdict::Is(protocol) => return Ok(protocol),
                Verdict::Neither => return Err(SniffError::Neither),
                Verdict::NeedMore => {}
            }
            // `classify` decides within DECISIVE_LEN bytes, so there is always room here.
            let n = stream.read(&mut first[filled..]).await?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
            filled += n;
        }
    };
    let protocol = match tokio::time::timeout(timeout, reading).await {
        Ok(result) => result?,
        Err(_) => return Err(SniffError::TimedOut(timeout)),
    };
    Ok((protocol, Replay::new(first[..filled].to_vec(), stream)))
}

/// A stream whose first bytes were already read: it yields them again, then reads on from the
/// stream. Writes go straight through.
#[derive(Debug)]
pub struct Replay<S> {
    first: Vec<u8>,
    /// How many of `first` have been yielded.
    replayed: usize,
    inner: S,
}

impl<S> Replay<S> {
    /// A stream that yields `first`, then what `inner` yields.
    pub fn new(first: Vec<u8>, inner: S) -> Self {
        Self {
            first,
            replayed: 0,
            inner,
        }
    }

    /// The bytes still to be replayed.
    pub fn pending(&self) -> &[u8] {
        &self.first[self.replayed..]
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let pending = &this.first[this.replayed..];
        if pending.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = pending.len().min(buf.remaining());
        buf.put_slice(&pending[..n]);
        this.replayed += n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
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
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt as _;

    use super::*;

    /// A STUN Binding request header (no attributes).
    const BINDING: [u8; 20] = [
        0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ];

    #[test]
    fn whole_beginnings_are_classified() {
        use Protocol::{Http, Turn};
        let cases: &[(&[u8], Verdict)] = &[
            (b"GET /ws/room HTTP/1.1\r\n", Verdict::Is(Http)),
            (b"POST /v1/rooms HTTP/1.1\r\n", Verdict::Is(Http)),
            (b"OPTIONS * HTTP/1.1\r\n", Verdict::Is(Http)),
            (b"CONNECT x:443 HTTP/1.1\r\n", Verdict::Is(Http)),
            (b"PRI * HTTP/2.0\r\n", Verdict::Is(Http)),
            (&BINDING, Verdict::Is(Turn)),
            // ChannelData (channel 0x4001, coturn's 0x7ABC) cannot open a connection.
            (&[0x40, 0x01, 0x00, 0x04, 1, 2, 3, 4], Verdict::Neither),
            (&[0x7A, 0xBC, 0x00, 0x00], Verdict::Neither),
            // Text that is no method: a capital no method continues, lower case, JSON.
            (b"GEX\x00", Verdict::Neither),
            (b"XXXX", Verdict::Neither),
            (b"get / HTTP/1.1", Verdict::Neither),
            (b"{\"type\":\"join\"}", Verdict::Neither),
            // STUN's top bits without the cookie; TLS records; top bits 10 and 11.
            (
                &[0x00, 0x01, 0x00, 0x00, 0xde, 0xad, 0xbe, 0xef],
                Verdict::Neither,
            ),
            (
                &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0, 0],
                Verdict::Neither,
            ),
            (&[0x80, 0, 0, 0], Verdict::Neither),
            (&[0xff; 8], Verdict::Neither),
        ];
        for (bytes, verdict) in cases {
            assert_eq!(classify(bytes), *verdict, "{bytes:x?}");
        }
    }

    #[test]
    fn every_prefix_waits_or_agrees_and_eight_bytes_always_decide() {
        let whole: [&[u8]; 5] = [
            b"OPTIONS * HTTP/1.1",
            b"DELETE /v1/x HTTP/1.1",
            &BINDING,
            &[0x40, 0x01, 0x00, 0x04],
            b"GEX\x00 more",
        ];
        for bytes in whole {
            let end = classify(&bytes[..bytes.len().min(DECISIVE_LEN)]);
            assert_ne!(end, Verdict::NeedMore, "{bytes:x?}");
            for cut in 0..bytes.len().min(DECISIVE_LEN) {
                let verdict = classify(&bytes[..cut]);
                assert!(
                    verdict == Verdict::NeedMore || verdict == end,
                    "prefix {:x?} of {bytes:x?}: {verdict:?}",
                    &bytes[..cut]
                );
            }
        }
        assert_eq!(classify(b""), Verdict::NeedMore);
        assert_eq!(classify(b"OPTIONS"), Verdict::NeedMore);
        assert_eq!(classify(&BINDING[..7]), Verdict::NeedMore);
        assert_eq!(classify(&BINDING[..5]), Verdict::NeedMore);
        assert_eq!(classify(&[0x00, 1, 0, 0, 0x21, 0x13]), Verdict::Neither);
    }

    #[tokio::test]
    async fn bytes_arriving_one_at_a_time_are_sniffed_and_replayed_whole() {
        for (message, protocol) in [
            (b"GET /healthz HTTP/1.1\r\n\r\n".to_vec(), Protocol::Http),
            (BINDING.to_vec(), Protocol::Turn),
        ] {
            let (client, server) = tokio::io::duplex(64);
            let writer = {
                let message = message.clone();
                tokio::spawn(async move {
                    let mut client = client;
                    for byte in message {
                        client.write_all(&[byte]).await.unwrap();
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    client
                })
            };
            let (found, mut replay) = sniff(server, Duration::from_secs(5)).await.unwrap();
            assert_eq!(found, protocol);
            let _client = writer.await.unwrap();
            let mut again = vec![0u8; message.len()];
            replay.read_exact(&mut again).await.unwrap();
            assert_eq!(again, message, "nothing lost, nothing reordered");
        }
    }

    #[tokio::test]
    async fn silence_garbage_and_early_ends_are_refused() {
        let (_client, server) = tokio::io::duplex(64);
        let short = Duration::from_millis(50);
        assert!(matches!(
            sniff(server, short).await,
            Err(SniffError::TimedOut(_))
        ));
        // A partial method, then nothing: still a timeout, not a guess.
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"OPTI").await.unwrap();
        assert!(matches!(
            sniff(server, short).await,
            Err(SniffError::TimedOut(_))
        ));
        let garbage = &[0x16u8, 0x03, 0x01, 0x00, 0x10][..];
        assert!(matches!(
            sniff(garbage, short).await,
            Err(SniffError::Neither)
        ));
        let cut = &b"POS"[..];
        assert!(matches!(sniff(cut, short).await, Err(SniffError::Io(_))));
    }

    #[tokio::test]
    async fn writes_pass_through_the_replay() {
        let (client, server) = tokio::io::duplex(64);
        let mut replay = Replay::new(b"ab".to_vec(), server);
        assert_eq!(replay.pending(), b"ab");
        replay.write_all(b"to the client").await.unwrap();
        drop(replay);
        let mut got = String::new();
        let mut client = client;
        client.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "to the client");
    }
}
