//! One TURN-over-TCP or TURN-over-TLS client connection: the reader splits the byte stream into
//! STUN messages (by their length field) and ChannelData messages (by their 4-byte header,
//! padded to a multiple of 4: RFC 8656 section 11.5 / RFC 6062) and hands each to the shard; the
//! writer drains a bounded outbound queue the shard fills, flushing after every batch (TLS
//! buffers records until flushed), and writes out what is left when the connection closes.

use std::rc::Rc;

use relay_proto::FiveTuple;
use relay_proto::framing::{MAX_FRAME_LEN, stream_frame_len};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

use super::shard::Shard;

/// Messages queued towards one stream client before new ones are dropped (and counted).
const OUTBOUND_QUEUE: usize = 512;

/// Bytes read per `read` call.
const READ_CHUNK: usize = 16 * 1024;

/// A connection that sends nothing for this long is closed. Longer than a channel binding (600 s):
/// a client whose traffic flows keeps refreshing its permissions and channels well within it.
const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(900);

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
    shard.stream_opened(five, tx);
    let mut writing = std::pin::pin!(write_queue(writer, rx));
    let client_finished = tokio::select! {
        () = read_frames(&shard, reader, five) => true,
        () = &mut writing => false,
    };
    // Unregistering drops the queue's sender: the writer ends once the queue is empty.
    shard.stream_closed(five);
    if client_finished {
        // The client ended its side (or went idle, or sent garbage): still deliver what was
        // queued before, such as the answer to its last request, then close our side (TLS
        // close_notify, FIN). Bounded: a client that stops reading does not hold the task.
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, writing).await;
    }
}

async fn read_frames<R: AsyncRead + Unpin>(shard: &Rc<Shard>, mut reader: R, five: FiveTuple) {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK * 2);
    loop {
        // Hand over every complete frame in the buffer.
        let mut consumed = 0;
        loop {
            match stream_frame_len(&buf[consumed..]) {
                Ok(Some(len)) if buf.len() - consumed >= len => {
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
        match tokio::time::timeout(IDLE_TIMEOUT, reader.read_buf(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(_)) => {}
            Err(_) => {
                tracing::debug!(client = %five.client, "closing idle stream");
                return;
            }
        }
    }
}

async fn write_queue<W: AsyncWrite + Unpin>(writer: W, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut writer = BufWriter::with_capacity(64 * 1024, writer);
    while let Some(message) = rx.recv().await {
        if writer.write_all(&message).await.is_err() {
            return;
        }
        // Coalesce whatever else is queued into the same write.
        while let Ok(more) = rx.try_recv() {
            if writer.write_all(&more).await.is_err() {
                return;
            }
        }
        if writer.flush().await.is_err() {
            return;
        }
    }
    // Every sender is gone (the connection is being closed): flush and close our side.
    let _ = writer.shutdown().await;
}
