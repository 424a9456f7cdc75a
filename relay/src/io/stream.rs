//! One TURN-over-TCP or TURN-over-TLS client connection: the reader splits the byte stream into
//! STUN messages (by their length field) and ChannelData messages (by their 4-byte header,
//! padded to a multiple of 4: RFC 8656 section 11.5 / RFC 6062) and hands each to the shard; the
//! writer drains an outbound queue the shard fills, flushing after every batch (TLS buffers
//! records until flushed), and writes out what is left when the connection closes. The queue is
//! bounded in messages and in bytes (`--stream-queue-bytes`): a message that would take a
//! connection over either bound is dropped and counted, so a client that stops reading costs
//! the relay at most that many bytes of queued data.

use std::cell::Cell;
use std::rc::Rc;

use relay_proto::framing::{MAX_FRAME_LEN, stream_frame_len};
use relay_proto::{FiveTuple, Transport};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

use startup::first_bytes::{Protocol, Verdict, classify};

use super::shard::Shard;

/// Messages queued towards one stream client before new ones are dropped (and counted). The
/// byte bound (`--stream-queue-bytes`) is usually the one that applies; this one caps the
/// per-message overhead of many tiny messages.
const OUTBOUND_QUEUE: usize = 512;

/// Capacity of the write buffer that coalesces queued messages into one write (its contents
/// count against `--stream-queue-bytes` until flushed).
const WRITE_BUFFER: usize = 64 * 1024;

/// Bytes read per `read` call.
const READ_CHUNK: usize = 16 * 1024;

/// A connection that sends nothing for this long is closed. Longer than a channel binding (600 s):
/// a client whose traffic flows keeps refreshing its permissions and channels well within it.
const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(900);

/// A new connection must have sent its first whole message within this: a TURN client opens
/// with a request at once, so silence or a message that never completes is a slow-loris client.
const FIRST_MESSAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a closing connection may take to write out what was queued before it closed.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves one connection until either side closes it or it sends something that is neither
/// STUN nor ChannelData. Removes the allocation of `five` at the end, after writing out (for a
/// bounded time) whatever was queued to the client before its end of stream.
pub(crate) async fn serve<S>(shard: Rc<Shard>, stream: S, five: FiveTuple)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (reader, writer) = tokio::io::split(stream);
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    let queued = Rc::new(Cell::new(0));
    let Some(registration) = shard.stream_opened(
        five,
        StreamSender {
            tx,
            queued: Rc::clone(&queued),
            max_bytes: shard.stream_queue_bytes(),
        },
    ) else {
        tracing::debug!(client = %five.client, "closing stream: its five-tuple is in use");
        shard.proxy_header_refused();
        return;
    };
    // Over TLS each message is a record of its own: TURN clients that read one message per
    // record (coturn's `turnutils_uclient`) lose the second of two messages sharing one.
    let record_per_message = five.transport == Transport::Tls;
    let mut writing = std::pin::pin!(write_queue(writer, rx, &queued, record_per_message));
    let client_finished = tokio::select! {
        () = read_frames(&shard, reader, five) => true,
        () = &mut writing => false,
    };
    // Unregistering drops the queue's sender: the writer ends once the queue is empty.
    drop(registration);
    if client_finished {
        // The client ended its side (or went idle, or sent garbage): still deliver what was
        // queued before, such as the answer to its last request, then close our side (TLS
        // close_notify, FIN). Bounded: a client that stops reading does not hold the task.
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, writing).await;
    }
}

async fn read_frames<R: AsyncRead + Unpin>(shard: &Rc<Shard>, mut reader: R, five: FiveTuple) {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK * 2);
    // Whether a whole message has come: until then the first-message rules apply.
    let mut opened = false;
    // The first message must be whole by then, however the client trickles its bytes.
    let first_by = tokio::time::Instant::now() + FIRST_MESSAGE_TIMEOUT;
    loop {
        // A connection opens with a STUN message (the cookie checked as soon as it is there):
        // ChannelData needs a channel bound on the connection first, and its shape (top bits
        // `01`) is that of any text.
        if !opened
            && !matches!(
                classify(&buf),
                Verdict::NeedMore | Verdict::Is(Protocol::Turn)
            )
        {
            tracing::debug!(client = %five.client, "closing stream: it does not open with STUN");
            shard.framing_error();
            return;
        }
        // Hand over every complete frame in the buffer.
        let mut consumed = 0;
        loop {
            match stream_frame_len(&buf[consumed..]) {
                Ok(Some(len)) if buf.len() - consumed >= len => {
                    opened = true;
                    shard.handle_stream_message(five, &buf[consumed..consumed + len]);
                    consumed += len;
                }
                Ok(_) => break,
                Err(e) => {
                    tracing::debug!(client = %five.client, error = %e, "closing stream: bad framing");
                    shard.framing_error();
                    return;
                }
            }
        }
        shard.flush();
        buf.drain(..consumed);
        debug_assert!(buf.len() <= MAX_FRAME_LEN);
        buf.reserve(READ_CHUNK);
        let until = if opened {
            tokio::time::Instant::now() + IDLE_TIMEOUT
        } else {
            first_by
        };
        match tokio::time::timeout_at(until, reader.read_buf(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(_)) => {}
            Err(_) => {
                if !opened {
                    // Its first message never came whole: as good as a framing error.
                    shard.framing_error();
                }
                tracing::debug!(client = %five.client, "closing idle stream");
                return;
            }
        }
    }
}

/// Writes queued messages out, coalescing what is queued into one write; with
/// `record_per_message` (TLS), each message is flushed on its own, so it is its own record. A
/// message's bytes stay counted in `queued` until the flush that hands them to the kernel has
/// completed, so the byte bound covers the write buffer too.
async fn write_queue<W: AsyncWrite + Unpin>(
    writer: W,
    mut rx: mpsc::Receiver<Vec<u8>>,
    queued: &Cell<usize>,
    record_per_message: bool,
) {
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER, writer);
    while let Some(message) = rx.recv().await {
        let mut batch = message.len();
        if writer.write_all(&message).await.is_err() {
            return;
        }
        drop(message);
        // Coalesce whatever else is queued into the same write.
        while let Ok(more) = rx.try_recv() {
            if record_per_message && writer.flush().await.is_err() {
                return;
            }
            batch += more.len();
            if writer.write_all(&more).await.is_err() {
                return;
            }
        }
        if writer.flush().await.is_err() {
            return;
        }
        queued.set(queued.get().saturating_sub(batch));
    }
    // Every sender is gone (the connection is being closed): flush and close our side.
    let _ = writer.shutdown().await;
}

/// The shard's end of one connection's outbound queue.
pub(crate) struct StreamSender {
    tx: mpsc::Sender<Vec<u8>>,
    /// Bytes accepted onto the queue and not yet flushed to the socket (shared with the
    /// connection's writer, on the same thread).
    queued: Rc<Cell<usize>>,
    /// `--stream-queue-bytes`.
    max_bytes: usize,
}

/// A message not queued: the connection is over its message or byte bound, or closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueFull;

impl StreamSender {
    /// Queues `data` unless that would take the connection over `--stream-queue-bytes` or
    /// [`OUTBOUND_QUEUE`] messages.
    pub(crate) fn try_push(&self, data: Vec<u8>) -> Result<(), QueueFull> {
        let queued = self.queued.get();
        let len = data.len();
        if queued.saturating_add(len) > self.max_bytes {
            return Err(QueueFull);
        }
        self.tx.try_send(data).map_err(|_| QueueFull)?;
        self.queued.set(queued + len);
        Ok(())
    }

    /// Bytes queued and not yet flushed.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender(max_bytes: usize) -> (StreamSender, mpsc::Receiver<Vec<u8>>, Rc<Cell<usize>>) {
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let queued = Rc::new(Cell::new(0));
        let s = StreamSender {
            tx,
            queued: Rc::clone(&queued),
            max_bytes,
        };
        (s, rx, queued)
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_and_in_messages() {
        let (s, _rx, _) = sender(1000);
        assert_eq!(s.try_push(vec![0; 600]), Ok(()));
        assert_eq!(
            s.try_push(vec![0; 401]),
            Err(QueueFull),
            "over the byte bound"
        );
        assert_eq!(s.try_push(vec![0; 400]), Ok(()), "exactly at the bound");
        assert_eq!(s.queued_bytes(), 1000);
        assert_eq!(s.try_push(vec![0; 1]), Err(QueueFull));

        let (s, _rx, _) = sender(usize::MAX);
        for _ in 0..OUTBOUND_QUEUE {
            assert_eq!(s.try_push(vec![0; 1]), Ok(()));
        }
        assert_eq!(
            s.try_push(vec![0; 1]),
            Err(QueueFull),
            "over the message bound"
        );
        assert_eq!(s.queued_bytes(), OUTBOUND_QUEUE);
    }

    #[tokio::test]
    async fn flushed_bytes_leave_the_count_and_a_stalled_writer_keeps_them() {
        let (s, rx, queued) = sender(100_000);
        // A peer that never reads: a 1 KiB pipe, so the writer stalls after about 1 KiB.
        let (ours, _theirs) = tokio::io::duplex(1024);
        for _ in 0..10 {
            s.try_push(vec![7; 5_000]).unwrap();
        }
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            write_queue(ours, rx, &queued, false),
        )
        .await;
        drop(s);
        let left = queued.get();
        assert_eq!(left, 50_000, "nothing flushed to a peer that never reads");

        let (s, rx, queued) = sender(100_000);
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        for _ in 0..10 {
            s.try_push(vec![7; 5_000]).unwrap();
        }
        drop(s);
        write_queue(ours, rx, &queued, false).await;
        assert_eq!(queued.get(), 0, "everything flushed");
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 50_000);
    }
}
