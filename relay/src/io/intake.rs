//! Streams another server accepted and hands over: signaling's shared port (`--shared-port`)
//! accepts a connection, reads its PROXY header and does its TLS handshake, sees TURN in its
//! first bytes, and gives the stream (those bytes replayed) to the relay through a
//! [`StreamIntake`]. Each worker takes its share from a bounded queue and serves the stream
//! like one of its own connections: the same framing, the same `--max-connections` slot, the
//! same five-tuple (the client's address the other server saw, its own local address).

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use relay_proto::{FiveTuple, Transport};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::shard::Shard;
use super::stream;

/// Streams waiting for each worker before new ones are refused: a worker that falls this far
/// behind is not keeping up with connections anyway.
pub(crate) const QUEUE: usize = 256;

/// A byte stream the relay can serve: already accepted, decrypted if it was TLS, starting with
/// the client's first TURN message.
pub trait AdoptedStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> AdoptedStream for S {}

/// How the client reached the server that accepted its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamTransport {
    /// TURN over TCP.
    Tcp,
    /// TURN over TLS (the stream handed over is the decrypted one).
    Tls,
}

/// Why a stream was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdoptError {
    /// The workers' queues are full.
    #[error("the relay's workers are busy")]
    Busy,
    /// The relay has stopped.
    #[error("the relay has stopped")]
    Stopped,
}

/// One stream on its way to a worker.
pub(crate) struct Adopted {
    stream: Box<dyn AdoptedStream>,
    five: FiveTuple,
}

/// Hands streams to the relay's workers, in turn. Cheap to clone; usable from any thread and
/// runtime (the stream's I/O stays registered where it was accepted).
#[derive(Debug, Clone)]
pub struct StreamIntake {
    workers: Arc<[mpsc::Sender<Adopted>]>,
    next: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Adopted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adopted").field("five", &self.five).finish()
    }
}

impl StreamIntake {
    /// An intake for workers listening on `workers`.
    pub(crate) fn new(workers: Vec<mpsc::Sender<Adopted>>) -> Self {
        Self {
            workers: workers.into(),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Gives `stream` to a worker, which serves TURN on it as if it had accepted it from
    /// `client` on its own socket `server`. At `--max-connections` the worker closes it (and
    /// counts it, like a connection of its own).
    pub fn adopt(
        &self,
        stream: impl AdoptedStream,
        client: SocketAddr,
        server: SocketAddr,
        transport: StreamTransport,
    ) -> Result<(), AdoptError> {
        let transport = match transport {
            StreamTransport::Tcp => Transport::Tcp,
            StreamTransport::Tls => Transport::Tls,
        };
        let mut adopted = Adopted {
            stream: Box::new(stream),
            five: FiveTuple {
                client,
                server,
                transport,
            },
        };
        let count = self.workers.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let mut stopped = 0;
        // The next worker in turn, or the one after it if that one's queue is full.
        for offset in 0..count {
            match self.workers[(first + offset) % count].try_send(adopted) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(back)) => adopted = back,
                Err(mpsc::error::TrySendError::Closed(back)) => {
                    adopted = back;
                    stopped += 1;
                }
            }
        }
        if stopped == count {
            Err(AdoptError::Stopped)
        } else {
            Err(AdoptError::Busy)
        }
    }
}

/// A worker's intake task: serves every stream handed to it until the worker stops.
pub(crate) async fn serve_adopted(shard: Rc<Shard>, mut queue: mpsc::Receiver<Adopted>) {
    while let Some(Adopted { stream, five }) = queue.recv().await {
        let Some(slot) = shard.admit_stream(Some(five.client.ip())) else {
            tracing::debug!(client = %five.client, "connection limit reached: closing");
            continue;
        };
        let conn_shard = Rc::clone(&shard);
        shard.spawn_connection(async move {
            let _slot = slot;
            stream::serve(conn_shard, stream, five).await;
        });
    }
}
