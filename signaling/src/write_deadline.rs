//! A bound on how long an HTTP connection's writes may stall: a client that sends requests
//! (pipelined, say) and never reads the answers would otherwise keep its place in
//! `--max-http-connections` for as long as it likes, since hyper has no write timeout.
//!
//! [`WriteDeadline`] wraps a connection's stream: while the connection counts as an HTTP
//! connection ([`HttpSlot::is_counted`]), a write (or flush, or shutdown) that makes no progress
//! for `--header-read-timeout` fails, and the connection is closed and counted. Once upgraded to
//! a WebSocket, or while it carries an SSE stream or a pending long-poll, its slot does not
//! count it and the bound waits (those have write timeouts of their own); when a stream ends on
//! its own timeout and the connection counts again, a write still stalled fails within another
//! `--header-read-timeout`.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::listener::HttpSlot;
use crate::metrics::Metrics;

/// A stream whose writes may stall for at most `within` while its connection counts as HTTP.
pub struct WriteDeadline<I> {
    io: I,
    within: Duration,
    slot: HttpSlot,
    metrics: Arc<Metrics>,
    /// Since when the current write stalls (armed at its first `Pending`).
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<I> WriteDeadline<I> {
    pub fn new(io: I, within: Duration, slot: HttpSlot, metrics: Arc<Metrics>) -> Self {
        Self {
            io,
            within,
            slot,
            metrics,
            stalled: None,
        }
    }

    /// The outcome of a write step: progress ends the stall; a stall past the deadline fails
    /// if the connection counts as HTTP then. The timer stays armed while the slot is lent or
    /// released (it is looked at again every `within`, since nothing else wakes this task when
    /// a stream's loan ends), so a stall that outlives a loan fails at most `within` after it.
    fn step<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let within = self.within;
        loop {
            let stalled = self
                .stalled
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(within)));
            ready!(stalled.as_mut().poll(cx));
            if self.slot.is_counted() {
                self.stalled = None;
                self.metrics.http_write_timeouts.inc();
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client did not read its answers within --header-read-timeout",
                )));
            }
            // Lent to a stream, or upgraded: not this bound's; look again in `within`.
            stalled.as_mut().reset(tokio::time::Instant::now() + within);
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteDeadline<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.step(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.step(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.step(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_shutdown(cx);
        this.step(cx, polled)
    }
}
