//! `Server`: the TURN state machine of one shard.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::config::ServerConfig;
use crate::five_tuple::FiveTuple;
use crate::output::{BindError, ClientAction, Output, PeerAction, RelayRequestId};
use crate::quota::SharedQuotas;
use crate::stats::Stats;

/// The STUN/TURN server state of one shard: allocations keyed by 5-tuple, an index from relay
/// address to allocation, one deadline queue for every expiry. Drive it as the crate docs say.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    shared: Arc<SharedQuotas>,
    outputs: VecDeque<Output>,
    stats: Stats,
    draining: bool,
}

impl Server {
    /// A server with its own (unshared) allocation counters.
    pub fn new(config: ServerConfig) -> Self {
        Self::with_shared_quotas(config, Arc::new(SharedQuotas::new()))
    }

    /// A shard: allocation counts (per user, total) and the drain flag are shared through `shared`.
    pub fn with_shared_quotas(config: ServerConfig, shared: Arc<SharedQuotas>) -> Self {
        let draining = config.draining;
        Self { config, shared, outputs: VecDeque::new(), stats: Stats::default(), draining }
    }

    /// One UDP datagram, or one framed message from a TCP/TLS stream (see `framing`), from a
    /// client. The ChannelData path does not allocate.
    pub fn handle_client_packet(
        &mut self,
        now: Instant,
        from: FiveTuple,
        packet: &[u8],
    ) -> ClientAction {
        let _ = (now, from, packet);
        ClientAction::Drop
    }

    /// A datagram from `peer` on the relay socket bound to `relay`. The payload is
    /// `buf[HEADROOM..HEADROOM + len]`; leave `TAILROOM` bytes after it for stream clients.
    pub fn handle_peer_packet(
        &mut self,
        now: Instant,
        relay: SocketAddr,
        peer: SocketAddr,
        buf: &mut [u8],
        len: usize,
    ) -> PeerAction {
        let _ = (now, relay, peer, buf, len);
        PeerAction::Drop
    }

    /// The answer to `Output::BindRelay`: the local address of the new relay socket, or why
    /// none could be bound (440 / 508 to the client).
    pub fn handle_relay_bound(
        &mut self,
        now: Instant,
        request: RelayRequestId,
        result: Result<SocketAddr, BindError>,
    ) {
        let _ = (now, request, result);
    }

    /// The TCP/TLS connection of `five_tuple` closed: its allocation is deleted (RFC 8656 §3.1).
    pub fn handle_connection_closed(&mut self, now: Instant, five_tuple: FiveTuple) {
        let _ = (now, five_tuple);
    }

    /// Run every expiry due at `now` (allocations, permissions, channels, rate-limit tables).
    pub fn handle_timeout(&mut self, now: Instant) {
        let _ = now;
    }

    /// When `handle_timeout` should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// The next queued output; drain until `None` after every `handle_*` call.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// This shard's counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Refuse new allocations (existing ones live on until they expire) when `true`.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// True while new allocations are refused (this shard's flag or the shared one).
    pub fn is_draining(&self) -> bool {
        self.draining || self.shared.is_draining()
    }

    /// The I/O layer failed to send a relayed packet to a peer (ENETUNREACH...): counted, the
    /// allocation stays.
    pub fn record_send_failure(&mut self) {
        self.stats.send_failures += 1;
    }

    /// The configuration in use.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }
}
