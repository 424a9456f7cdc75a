//! `Shard`: the state of one worker, shared by its tasks through an `Rc` (one thread, no locks):
//! the protocol core, the relay sockets of its allocations, its stream connections, one
//! preallocated receive buffer and one send batch. Every method is synchronous: tasks await
//! readiness, then call in here, and no `RefCell` borrow ever lives across an `.await`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_udp::RecvMeta;
use relay_proto::{
    AddressFamily, BindError, ClientAction, FiveTuple, HEADROOM, Output, PeerAction, RelayHandle,
    Server, TAILROOM, Transport,
};
use tokio::task::JoinHandle;

use super::conn_limit::{ConnectionLimit, ConnectionSlot, Refused};
use super::drain::DrainSignal;
use super::relay_ports::{PortClaim, RelayPorts, RelaySocket};
use super::send_batch::SendBatch;
use super::stream::StreamSender;
use super::tasks::TaskGroup;
use super::udp::{BATCH, UdpSocket};
use crate::metrics::{IoStats, Metrics};

/// One receive slot: headroom for the ChannelData header, the largest UDP payload, tailroom
/// for stream padding.
const SLOT: usize = HEADROOM + 65_536 + TAILROOM + 1;

/// How long a task may keep receiving before it yields to the worker's other tasks (timers,
/// other sockets).
pub(crate) const TIME_BUDGET: Duration = Duration::from_millis(2);

/// Bytes of the send arena (flushed early when full).
const ARENA: usize = 512 * 1024;

/// How often the shard publishes its counters for `/metrics`.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);

/// How long a stopping worker waits for its connections to write out what was queued to them
/// (the relay socket tasks end at once).
const SHUTDOWN_WRITE_OUT: Duration = Duration::from_secs(2);

/// A relay socket, the task receiving on it, and the core's handle for it (compared on every
/// lookup, so a stale handle never reaches the socket that reused its index).
struct RelaySlot {
    handle: RelayHandle,
    socket: Rc<UdpSocket>,
    task: Option<JoinHandle<()>>,
    /// The mark of the socket's port in the range, cleared when the slot goes.
    _claim: PortClaim,
}

impl RelaySlot {
    /// Stops the receiving task; the socket closes when its last `Rc` (the task's) drops.
    fn close(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Receive storage: `BATCH` slots and their metadata.
struct RecvBuffers {
    storage: Vec<u8>,
    meta: [RecvMeta; BATCH],
}

/// The state of one worker.
pub(crate) struct Shard {
    index: usize,
    core: RefCell<Server>,
    /// UDP listening sockets and whether each is bound to a wildcard IP (then replies carry the
    /// destination IP of the request as source through IP_PKTINFO).
    listeners: Vec<(Rc<UdpSocket>, bool)>,
    /// The relay sockets of this shard's allocations, at their `RelayHandle::index` (the core
    /// reuses released indexes, so this stays as long as the most allocations at once).
    relays: RefCell<Vec<Option<RelaySlot>>>,
    streams: RefCell<HashMap<FiveTuple, StreamSender>>,
    bufs: RefCell<RecvBuffers>,
    batch: RefCell<SendBatch>,
    relay_ports: RelayPorts,
    /// `--max-connections`, shared by every worker.
    connections: Arc<ConnectionLimit>,
    /// `--stream-queue-bytes`: the outbound bytes one TCP/TLS connection may have queued.
    stream_queue_bytes: usize,
    io_stats: Cell<IoStats>,
    metrics: Arc<Metrics>,
    last_publish: Cell<Instant>,
    /// Connection and relay-socket tasks: a stopping worker waits for them (bounded).
    tasks: TaskGroup,
    /// Woken when a draining relay's last allocation ends.
    drain: Arc<DrainSignal>,
}

/// What a shard shares with the other workers and the relay handle.
pub(crate) struct RelayWide {
    /// `--max-connections`, one counter for every worker.
    pub(crate) connections: Arc<ConnectionLimit>,
    pub(crate) metrics: Arc<Metrics>,
    /// Woken when a draining relay's last allocation ends.
    pub(crate) drain: Arc<DrainSignal>,
}

impl Shard {
    pub(crate) fn new(
        index: usize,
        core: Server,
        listeners: Vec<Rc<UdpSocket>>,
        relay_ports: RelayPorts,
        stream_queue_bytes: usize,
        relay_wide: RelayWide,
    ) -> Rc<Self> {
        let RelayWide {
            connections,
            metrics,
            drain,
        } = relay_wide;
        let listeners = listeners
            .into_iter()
            .map(|s| {
                let wildcard = s.local_addr().ip().is_unspecified();
                (s, wildcard)
            })
            .collect();
        Rc::new(Self {
            index,
            core: RefCell::new(core),
            listeners,
            relays: RefCell::new(Vec::new()),
            streams: RefCell::new(HashMap::new()),
            bufs: RefCell::new(RecvBuffers {
                storage: vec![0; SLOT * BATCH],
                meta: [RecvMeta::default(); BATCH],
            }),
            batch: RefCell::new(SendBatch::new(ARENA)),
            relay_ports,
            connections,
            stream_queue_bytes,
            io_stats: Cell::new(IoStats::default()),
            metrics,
            last_publish: Cell::new(Instant::now()),
            tasks: TaskGroup::new(),
            drain,
        })
    }

    /// The UDP listening sockets.
    pub(crate) fn listeners(&self) -> impl Iterator<Item = &Rc<UdpSocket>> {
        self.listeners.iter().map(|(s, _)| s)
    }

    /// Receives one batch from `socket`: datagram `i` at `i * SLOT + HEADROOM` of `storage`,
    /// up to `slot_end` of its slot; its metadata in `meta`. 0 on a receive error (counted,
    /// logged as `what`).
    fn recv_batch(
        &self,
        socket: &UdpSocket,
        storage: &mut [u8],
        meta: &mut [RecvMeta; BATCH],
        slot_end: usize,
        what: &str,
    ) -> usize {
        let mut chunks = storage.chunks_mut(SLOT);
        let mut slices: [IoSliceMut<'_>; BATCH] = std::array::from_fn(|_| {
            IoSliceMut::new(
                chunks
                    .next()
                    .map_or(&mut [][..], |c| &mut c[HEADROOM..slot_end]),
            )
        });
        match socket.try_recv(&mut slices, meta) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "{what} receive failed");
                self.count(|s| s.recv_errors += 1);
                0
            }
        }
    }

    fn count(&self, f: impl FnOnce(&mut IoStats)) {
        let mut s = self.io_stats.get();
        f(&mut s);
        self.io_stats.set(s);
    }

    /// Receives one batch of client datagrams on `socket` and processes it. Returns how many
    /// datagrams were read (0: the socket is drained).
    pub(crate) fn receive_client_batch(
        self: &Rc<Self>,
        socket: &Rc<UdpSocket>,
        wildcard: bool,
    ) -> usize {
        let mut bufs = self.bufs.borrow_mut();
        let RecvBuffers { storage, meta } = &mut *bufs;
        let n = self.recv_batch(socket, storage, meta, SLOT, "udp");
        if n == 0 {
            return 0;
        }
        let now = Instant::now();
        let local = socket.local_addr();
        let mut core = self.core.borrow_mut();
        for (i, m) in meta.iter().take(n).enumerate() {
            let server_ip = match (wildcard, m.dst_ip) {
                (true, Some(ip)) => ip,
                _ => local.ip(),
            };
            let five = FiveTuple {
                client: m.addr,
                server: SocketAddr::new(server_ip, local.port()),
                transport: Transport::Udp,
            };
            let start = i * SLOT + HEADROOM;
            let data = &storage[start..start + m.len];
            if data.is_empty() {
                // An empty datagram has no segments: the core counts it as malformed.
                let _ = core.handle_client_packet(now, five, data);
                continue;
            }
            for segment in data.chunks(m.stride.max(1)) {
                match core.handle_client_packet(now, five, segment) {
                    ClientAction::Forward {
                        relay,
                        peer,
                        payload,
                    } => {
                        if let Some(bytes) = segment.get(payload) {
                            self.queue_to_peer(relay, peer, bytes);
                        }
                    }
                    ClientAction::Drop | ClientAction::Queued => {}
                }
                self.drain_outputs(&mut core, now);
            }
        }
        drop(core);
        drop(bufs);
        self.flush();
        n
    }

    /// Receives one batch of peer datagrams on the relay socket `socket` (the core's `relay`)
    /// and processes it.
    pub(crate) fn receive_peer_batch(
        self: &Rc<Self>,
        relay: RelayHandle,
        socket: &Rc<UdpSocket>,
    ) -> usize {
        let mut bufs = self.bufs.borrow_mut();
        let RecvBuffers { storage, meta } = &mut *bufs;
        let n = self.recv_batch(socket, storage, meta, SLOT - TAILROOM, "relay socket");
        if n == 0 {
            return 0;
        }
        let now = Instant::now();
        let mut core = self.core.borrow_mut();
        for (i, m) in meta.iter().take(n).enumerate() {
            let slot = &mut storage[i * SLOT..(i + 1) * SLOT];
            let sent = match core.handle_peer_packet(now, relay, m.addr, slot, m.len) {
                PeerAction::ToClient { to, range } => slot
                    .get(range)
                    .is_none_or(|bytes| self.send_to_client(to, bytes)),
                // The Data indication is the one output queued.
                PeerAction::Queued => self.drain_outputs(&mut core, now),
                PeerAction::Drop => true,
            };
            if !sent {
                // The client's stream queue was full: what it was not sent is not billed.
                core.client_missed(relay, m.len);
            }
            self.drain_outputs(&mut core, now);
        }
        drop(core);
        drop(bufs);
        self.flush();
        n
    }

    /// One framed message from a TCP/TLS client.
    pub(crate) fn handle_stream_message(self: &Rc<Self>, five: FiveTuple, frame: &[u8]) {
        let now = Instant::now();
        let mut core = self.core.borrow_mut();
        if let ClientAction::Forward {
            relay,
            peer,
            payload,
        } = core.handle_client_packet(now, five, frame)
            && let Some(bytes) = frame.get(payload)
        {
            self.queue_to_peer(relay, peer, bytes);
        }
        self.drain_outputs(&mut core, now);
    }

    /// `--stream-queue-bytes`.
    pub(crate) fn stream_queue_bytes(&self) -> usize {
        self.stream_queue_bytes
    }

    /// Registers a new stream connection's outbound queue; it counts in the
    /// `stream_connections` gauge until the returned guard is dropped. `None` when a connection
    /// of the same five-tuple is open on this shard.
    pub(crate) fn stream_opened(
        self: &Rc<Self>,
        five: FiveTuple,
        tx: StreamSender,
    ) -> Option<StreamRegistration> {
        match self.streams.borrow_mut().entry(five) {
            // Only a PROXY header can name the five-tuple of a connection still open: the
            // newcomer is refused rather than take over the other's allocation.
            std::collections::hash_map::Entry::Occupied(_) => return None,
            std::collections::hash_map::Entry::Vacant(entry) => entry.insert(tx),
        };
        self.count(|s| {
            s.stream_connections += 1;
            s.stream_connections_accepted += 1;
        });
        Some(StreamRegistration {
            shard: Rc::clone(self),
            five,
        })
    }

    /// A stream connection ended (its `StreamRegistration` was dropped): its allocation goes
    /// with it (RFC 8656 section 3.1).
    fn stream_closed(self: &Rc<Self>, five: FiveTuple) {
        self.streams.borrow_mut().remove(&five);
        self.count(|s| s.stream_connections = s.stream_connections.saturating_sub(1));
        // Guards drop from tasks, never inside a core borrow; if one ever did, the allocation
        // would still expire with its lifetime.
        let Ok(mut core) = self.core.try_borrow_mut() else {
            return;
        };
        let now = Instant::now();
        core.handle_connection_closed(now, five);
        self.drain_outputs(&mut core, now);
        drop(core);
        self.flush();
    }

    /// Spawns a connection's task, tracked: a stopping worker waits for it.
    pub(crate) fn spawn_connection(&self, task: impl Future<Output = ()> + 'static) {
        self.tasks.spawn_local(task);
    }

    /// A slot of `--max-connections` for a connection just accepted, counted for its `source`
    /// when known (`--max-connections-per-ip`), or `None` (counted as a refusal) at a limit.
    pub(crate) fn admit_stream(&self, source: Option<IpAddr>) -> Option<ConnectionSlot> {
        self.connections
            .try_acquire(source)
            .map_err(|refused| self.connection_refused(refused))
            .ok()
    }

    /// Counts a stream connection refused a slot.
    pub(crate) fn connection_refused(&self, refused: Refused) {
        match refused {
            Refused::Full => self.count(|s| s.stream_connections_refused += 1),
            Refused::SourceFull => self.count(|s| s.stream_connections_refused_per_ip += 1),
        }
    }

    /// A TLS handshake begins; it counts in the `tls_handshakes` gauge until the guard drops.
    pub(crate) fn tls_handshake_started(&self) -> TlsHandshake<'_> {
        self.count(|s| s.tls_handshakes += 1);
        TlsHandshake(self)
    }

    /// Counts a TLS handshake that failed.
    pub(crate) fn tls_handshake_failed(&self) {
        self.count(|s| s.tls_handshake_failures += 1);
    }

    /// Counts a TLS handshake that did not finish within `--tls-handshake-timeout` (also a
    /// failure).
    pub(crate) fn tls_handshake_timed_out(&self) {
        self.count(|s| {
            s.tls_handshake_failures += 1;
            s.tls_handshake_timeouts += 1;
        });
    }

    /// Counts a stream connection closed for lack of a well-formed PROXY header.
    pub(crate) fn proxy_header_refused(&self) {
        self.count(|s| s.proxy_headers_refused += 1);
    }

    /// Counts a connection (`--http-upstream`) whose first bytes were neither TURN nor HTTP,
    /// or did not arrive in time.
    pub(crate) fn first_bytes_refused(&self) {
        self.count(|s| s.first_bytes_refused += 1);
    }

    /// Counts a connection forwarded to `--http-upstream`.
    pub(crate) fn http_forward_started(&self) {
        self.count(|s| s.http_upstream_connections += 1);
    }

    /// Counts a connection that could not be forwarded (the upstream unreachable).
    pub(crate) fn http_forward_failed(&self) {
        self.count(|s| s.http_upstream_failures += 1);
    }

    /// Counts a stream closed for bad framing.
    pub(crate) fn framing_error(&self) {
        self.count(|s| s.stream_framing_errors += 1);
    }

    /// Runs the core's due timers; returns when they should run next.
    pub(crate) fn on_timer(self: &Rc<Self>) -> Option<Instant> {
        let now = Instant::now();
        let mut core = self.core.borrow_mut();
        if core.poll_timeout().is_some_and(|t| t <= now) {
            core.handle_timeout(now);
            self.drain_outputs(&mut core, now);
        }
        let next = core.poll_timeout();
        if now.duration_since(self.last_publish.get()) >= PUBLISH_EVERY {
            self.last_publish.set(now);
            self.metrics
                .publish(self.index, core.stats(), &self.io_snapshot());
            self.bill_usage(&mut core);
            self.relay_ports.release_ended(now);
        }
        drop(core);
        self.flush();
        next
    }

    /// New credentials, peer lists and quotas for the core (a reload).
    pub(crate) fn reconfigure(&self, settings: &relay_proto::LiveSettings) {
        self.core.borrow_mut().reconfigure(settings);
    }

    /// Publishes counters and usage now (at shutdown).
    pub(crate) fn publish(&self) {
        let mut core = self.core.borrow_mut();
        self.metrics
            .publish(self.index, core.stats(), &self.io_snapshot());
        self.bill_usage(&mut core);
    }

    /// Moves the traffic relayed since the last tick, per user, into the usage ledger.
    fn bill_usage(&self, core: &mut Server) {
        let now = crate::usage::unix_now();
        let mut ledger = self.metrics.usage().lock();
        core.drain_usage(|user, usage| ledger.record(now, user, usage));
        ledger.expire(now);
    }

    /// The I/O counters with the queued-bytes gauges filled in.
    fn io_snapshot(&self) -> IoStats {
        let mut io = self.io_stats.get();
        let (mut total, mut max) = (0usize, 0usize);
        for sender in self.streams.borrow().values() {
            let queued = sender.queued_bytes();
            total += queued;
            max = max.max(queued);
        }
        io.stream_queued_bytes = total as u64;
        io.stream_queued_bytes_max = max as u64;
        io
    }

    /// Acts on every queued output of the core. Every variant and every field is named (the
    /// enum is exhaustive): a field the core adds does not compile until it is handled here.
    /// Carries out the core's outputs; false if a message for a stream client was dropped
    /// at its full queue.
    fn drain_outputs(self: &Rc<Self>, core: &mut Server, now: Instant) -> bool {
        let mut all_sent = true;
        while let Some(output) = core.poll_output() {
            match output {
                Output::Transmit { to, data } => all_sent &= self.transmit_owned(to, data),
                Output::BindRelay {
                    relay,
                    family,
                    // The relay socket is bound by this shard, the one that owns the client's
                    // allocation, so its peer datagrams come back here: nothing to route.
                    five_tuple: _,
                    even_port,
                    reserve_next,
                    address,
                } => {
                    let result = self.bind_relay(relay, family, even_port, reserve_next, address);
                    // The time the bind finished: the core's allocation latency runs from the
                    // Allocate's batch (`now`) to here.
                    core.handle_relay_bound(Instant::now().max(now), relay, result);
                }
                Output::ReleaseRelay { relay } => self.release_relay(relay),
            }
        }
        self.drain.check();
        all_sent
    }

    /// Binds the relay socket `relay`: exactly `address` when the core gives one (a port
    /// reserved by EVEN-PORT and claimed with RESERVATION-TOKEN), otherwise a free port of
    /// `family` (holding the next one open for a reservation if `reserve_next`), and files it
    /// at the handle's index.
    fn bind_relay(
        self: &Rc<Self>,
        relay: RelayHandle,
        family: AddressFamily,
        even_port: bool,
        reserve_next: bool,
        address: Option<SocketAddr>,
    ) -> Result<SocketAddr, BindError> {
        let bound = match address {
            Some(address) => self.relay_ports.bind_exact(address),
            None => self.relay_ports.bind(family, even_port, reserve_next),
        };
        let RelaySocket { socket, claim } = match bound {
            Ok(s) => s,
            Err(e) => {
                // No address of the family is the client's ask (440), not a failure of ours.
                match e {
                    BindError::NoCapacity => self.count(|s| s.relay_bind_failures += 1),
                    BindError::FamilyNotSupported => {}
                }
                tracing::debug!(%relay, error = %e, "relay bind failed");
                return Err(e);
            }
        };
        let socket = match UdpSocket::from_socket(socket, false) {
            Ok(s) => Rc::new(s),
            Err(e) => {
                self.count(|s| s.relay_bind_failures += 1);
                tracing::warn!(error = %e, "cannot register relay socket");
                return Err(BindError::NoCapacity);
            }
        };
        let addr = socket.local_addr();
        let task = self.tasks.spawn_local(super::driver::run_relay_socket(
            Rc::clone(self),
            relay,
            Rc::clone(&socket),
        ));
        let slot = RelaySlot {
            handle: relay,
            socket,
            task: Some(task),
            _claim: claim,
        };
        let mut relays = self.relays.borrow_mut();
        if relays.len() <= relay.index() {
            relays.resize_with(relay.index() + 1, || None);
        }
        // The core released the index's previous handle before handing it out again.
        if let Some(stale) = relays[relay.index()].replace(slot) {
            tracing::warn!(%relay, stale = %stale.handle, "relay handle index still in use");
            stale.close();
        }
        Ok(addr)
    }

    fn release_relay(&self, relay: RelayHandle) {
        let mut relays = self.relays.borrow_mut();
        let Some(entry) = relays.get_mut(relay.index()) else {
            return;
        };
        if entry.as_ref().is_some_and(|s| s.handle == relay)
            && let Some(slot) = entry.take()
        {
            slot.close();
        }
    }

    /// Queues `data` to `peer` from the relay socket `relay`.
    fn queue_to_peer(&self, relay: RelayHandle, peer: SocketAddr, data: &[u8]) {
        let relays = self.relays.borrow();
        let Some(Some(slot)) = relays.get(relay.index()) else {
            return;
        };
        if slot.handle != relay {
            return;
        }
        self.push(&slot.socket, peer, None, data);
    }

    /// Sends a message to a client: into the send batch for UDP, onto the connection's queue
    /// for TCP/TLS. False when a stream's queue was full (the message was dropped).
    fn send_to_client(&self, to: FiveTuple, data: &[u8]) -> bool {
        match to.transport {
            Transport::Udp => {
                self.queue_to_udp_client(to, data);
                true
            }
            Transport::Tcp | Transport::Tls => self.queue_to_stream(to, data.to_vec()),
        }
    }

    /// [`Self::send_to_client`] of an owned message.
    fn transmit_owned(&self, to: FiveTuple, data: Vec<u8>) -> bool {
        match to.transport {
            Transport::Udp => {
                self.queue_to_udp_client(to, &data);
                true
            }
            Transport::Tcp | Transport::Tls => self.queue_to_stream(to, data),
        }
    }

    fn queue_to_udp_client(&self, to: FiveTuple, data: &[u8]) {
        let port = to.server.port();
        let found = self.listeners.iter().find(|(s, wildcard)| {
            let local = s.local_addr();
            local.port() == port
                && (*wildcard || local.ip() == to.server.ip())
                && local.is_ipv4() == to.server.is_ipv4()
        });
        let Some((socket, wildcard)) = found else {
            tracing::debug!(server = %to.server, "no listening socket for reply");
            return;
        };
        let src: Option<IpAddr> = wildcard.then_some(to.server.ip());
        self.push(socket, to.client, src, data);
    }

    /// Queues `data` on the connection `to`; false when its queue is full (dropped, counted).
    /// A connection that is gone already counts as sent: its allocation ends with it.
    fn queue_to_stream(&self, to: FiveTuple, data: Vec<u8>) -> bool {
        let streams = self.streams.borrow();
        let Some(sender) = streams.get(&to) else {
            return true;
        };
        let len = data.len() as u64;
        if sender.try_push(data).is_err() {
            self.count(|s| {
                s.stream_queue_drops += 1;
                s.stream_queue_dropped_bytes += len;
            });
            return false;
        }
        true
    }

    fn push(&self, socket: &Rc<UdpSocket>, to: SocketAddr, src: Option<IpAddr>, data: &[u8]) {
        let mut batch = self.batch.borrow_mut();
        if batch.is_full_for(data.len()) {
            let report = batch.flush();
            if report.failed > 0 {
                self.count(|s| s.send_failures += report.failed);
            }
        }
        batch.push(socket, to, src, data);
    }

    /// Sends everything queued.
    pub(crate) fn flush(&self) {
        let mut batch = self.batch.borrow_mut();
        if batch.len() == 0 {
            return;
        }
        let report = batch.flush();
        if report.failed > 0 {
            self.count(|s| s.send_failures += report.failed);
        }
    }

    /// Stops the shard (the worker's listeners are stopped first): aborts every relay
    /// socket task, closes every connection's queue (its writer flushes what is queued and
    /// closes its side), waits for those tasks (at most `SHUTDOWN_WRITE_OUT`), then
    /// publishes the final counters.
    pub(crate) async fn shutdown(&self) {
        let relays: Vec<RelaySlot> = self.relays.borrow_mut().drain(..).flatten().collect();
        for slot in relays {
            slot.close();
        }
        let streams: Vec<StreamSender> =
            self.streams.borrow_mut().drain().map(|(_, s)| s).collect();
        drop(streams);
        if !self.tasks.close_and_wait(SHUTDOWN_WRITE_OUT).await {
            tracing::debug!(
                worker = self.index,
                "connections still writing at shutdown: dropped"
            );
        }
        self.publish();
    }
}

/// One registered stream connection (see `Shard::stream_opened`). Dropping it, when the
/// connection ends, fails or its task is cancelled, unregisters the connection, gives its
/// gauge back and ends its allocation: nothing leaks on an early return.
pub(crate) struct StreamRegistration {
    shard: Rc<Shard>,
    five: FiveTuple,
}

impl Drop for StreamRegistration {
    fn drop(&mut self) {
        self.shard.stream_closed(self.five);
    }
}

/// A TLS handshake in progress (see `Shard::tls_handshake_started`).
pub(crate) struct TlsHandshake<'a>(&'a Shard);

impl Drop for TlsHandshake<'_> {
    fn drop(&mut self) {
        self.0
            .count(|s| s.tls_handshakes = s.tls_handshakes.saturating_sub(1));
    }
}
