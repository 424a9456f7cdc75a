//! The room task: maps signaling events onto peer connections.
//!
//! It owns the set of connections (one per remote peer), routes incoming signals to them and
//! their outgoing signals to the signaling client, forwards fresh ICE servers (from
//! `ice_servers`, and from `resumed` and a re-join's `welcome`; each connection decides whether
//! the room's relay moved away from under it, see [`crate::ice_servers`]), turns
//! joins/leaves into [`PeerEvent`]s, and after a signaling re-join (the server forgot the
//! session) keeps the live connections: a connection whose peer is not in the new room
//! listing is *orphaned* and is adopted by the first newcomer with the same display name, so
//! two peers that both re-join keep their data channels instead of building duplicates. A peer
//! that did not keep its side (it offers or answers from another DTLS session) gets a new
//! connection in place of the adopted one (`ConnectionOutput::StartedOver`).
//! Connections' `stats` reports go out only while the session is up and name the remote's
//! current id (an orphan's are dropped), so a re-join never reports on an old-session peer.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};

use signaling::protocol::{
    ClientMessage, ErrorCode, IceServer, LeaveReason, PeerId, PeerInfo, ServerMessage, SessionInfo,
    Signal,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Duration, Instant};

/// How long closing a peer waits for its `leave` to be written.
const LEAVE_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long closing the room at once waits for its connections to have closed (their DTLS
/// `close_notify` sent), so that the peers see the close before the process may exit.
const AT_ONCE_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// How long closing the room waits, once the connections closed their channels, before it
/// leaves ([`Room::close`]).
const LEAVE_LINGER: Duration = Duration::from_secs(1);

/// How long after the server said a peer left it is reported as left, its connection having
/// delivered what it had received meanwhile (its SCTP acknowledged it, so the peer will not
/// send it again). Then the connection closes, once it was read up to the peer's channels'
/// closes ([`ConnectionInput::Close`]).
const LEAVE_DRAIN: Duration = Duration::from_secs(1);

/// How long after a re-join the connections kept for peers of the old session wait for those
/// peers to come back (as long as the server's default resume grace): a peer that re-joins
/// takes its connection back, by its display name.
const ORPHAN_WAIT: Duration = Duration::from_secs(30);

use crate::PeerError;
use crate::channel::{ChannelReaders, ChannelRegistry, read_remote};
use crate::connection::{
    self, Closing, ConnectionContext, ConnectionHandle, ConnectionInput, ConnectionOutput,
};
use crate::sent_log::Outgoing;
use crate::signaling_client::{SignalingClient, SignalingEvent};
use crate::{PeerEvent, PeerOptions, ReplaceReason, SelectedPair};

/// The connection of a peer that left, delivering what it had received until `at`.
struct Leaving {
    at: Instant,
    key: u64,
    handle: ConnectionHandle,
    peer: PeerId,
    reason: LeaveReason,
    /// Reliable messages sent to the peer that its SCTP had not acknowledged.
    unacknowledged: usize,
}

/// Requests from the [`crate::Peer`] handle.
pub(crate) enum RoomCommand {
    SelectedPair {
        peer: PeerId,
        reply: oneshot::Sender<Option<SelectedPair>>,
    },
    /// Leave the room and close every connection: gracefully ([`Room::close`]) or at once.
    /// The reply: the peers that did not close their side in time.
    Close {
        at_once: bool,
        reply: oneshot::Sender<Vec<PeerId>>,
    },
}

/// While the room closes gracefully: the callers waiting for it, and whether one asked for
/// the close at once ([`crate::Peer::close_at_once`] while [`crate::Peer::close`] is under
/// way).
struct CloseRequests<'a> {
    commands: &'a mut mpsc::UnboundedReceiver<RoomCommand>,
    /// Whether a [`crate::Peer`] handle is left to ask anything.
    commands_open: bool,
    replies: Vec<oneshot::Sender<Vec<PeerId>>>,
    at_once: bool,
}

impl<'a> CloseRequests<'a> {
    fn new(
        commands: &'a mut mpsc::UnboundedReceiver<RoomCommand>,
        reply: oneshot::Sender<Vec<PeerId>>,
        at_once: bool,
    ) -> Self {
        Self {
            commands,
            commands_open: true,
            replies: vec![reply],
            at_once,
        }
    }

    /// Completes once a caller asks for the close at once, answering what else is asked
    /// meanwhile; never if the close was at once from the start.
    async fn hurried(&mut self) {
        while self.commands_open && !self.at_once {
            match self.commands.recv().await {
                Some(command) => {
                    self.take(command);
                    if self.at_once {
                        return;
                    }
                }
                None => self.commands_open = false,
            }
        }
        std::future::pending().await
    }

    /// A request while the room closes: a selected pair is none any more; a close waits for
    /// the answer, and one at once says so.
    fn take(&mut self, command: RoomCommand) {
        match command {
            RoomCommand::SelectedPair { reply, .. } => {
                let _ = reply.send(None);
            }
            RoomCommand::Close { at_once, reply } => {
                self.replies.push(reply);
                self.at_once |= at_once;
            }
        }
    }

    /// The room closed: every caller hears it, and which peers did not close in time (those
    /// whose requests came while nothing read them too).
    fn answer(mut self, unconfirmed: &[PeerId]) {
        while let Ok(command) = self.commands.try_recv() {
            self.take(command);
        }
        for reply in self.replies {
            let _ = reply.send(unconfirmed.to_vec());
        }
    }
}

pub(crate) struct Room {
    pub(crate) me: Arc<RwLock<PeerId>>,
    pub(crate) signaling: SignalingClient,
    pub(crate) options: Arc<PeerOptions>,
    pub(crate) registry: Arc<ChannelRegistry>,
    pub(crate) events: mpsc::Sender<PeerEvent>,
    pub(crate) ice_servers: Vec<IceServer>,
    connections: HashMap<u64, ConnectionHandle>,
    /// Connections kept across a re-join whose peers the new session has not listed yet. They
    /// send nothing and take no ICE servers until then ([`Self::claim_orphan`]): an ICE
    /// restart's offer would be lost, and the restart would take their path down meanwhile.
    orphans: Vec<u64>,
    /// When the orphans whose peers have not come back are given up ([`ORPHAN_WAIT`] after
    /// the re-join).
    orphans_until: Option<Instant>,
    /// Connections of peers that left, delivering what they had received ([`LEAVE_DRAIN`]).
    leaving: Vec<Leaving>,
    /// Connections of peers that left, closed and still handing on what those sent, until
    /// they end: closing the room waits for them too.
    draining: HashSet<u64>,
    /// While the room closes: the peers that did not close their side in time (they may not
    /// have read all we sent), for the callers of [`crate::Peer::close`].
    unconfirmed: Vec<PeerId>,
    /// Whether the signaling session is up (false from `Reconnecting` until it resumed or
    /// re-joined). `stats` reports made meanwhile are dropped rather than queued: after a
    /// re-join they would name peer ids of the old session (`unknown_peer`), and a fresh
    /// report follows the comeback anyway.
    signaling_up: bool,
    /// How many times the session re-joined: signals and reports are sent as of this session
    /// (`SignalingClient::send_in_session`).
    rejoins: u64,
    next_key: u64,
    output_tx: mpsc::UnboundedSender<ConnectionOutput>,
    next_request: u64,
}

impl Room {
    pub(crate) fn new(
        me: Arc<RwLock<PeerId>>,
        signaling: SignalingClient,
        options: Arc<PeerOptions>,
        registry: Arc<ChannelRegistry>,
        events: mpsc::Sender<PeerEvent>,
        ice_servers: Vec<IceServer>,
    ) -> (Self, mpsc::UnboundedReceiver<ConnectionOutput>) {
        let (output_tx, output_rx) = mpsc::unbounded_channel();
        (
            Self {
                me,
                signaling,
                options,
                registry,
                events,
                ice_servers,
                connections: HashMap::new(),
                orphans: Vec::new(),
                orphans_until: None,
                leaving: Vec::new(),
                draining: HashSet::new(),
                unconfirmed: Vec::new(),
                signaling_up: true,
                rejoins: 0,
                next_key: 1,
                output_tx,
                next_request: 100,
            },
            output_rx,
        )
    }

    pub(crate) async fn run(
        mut self,
        initial_peers: Vec<PeerInfo>,
        mut signaling_rx: mpsc::UnboundedReceiver<SignalingEvent>,
        mut output_rx: mpsc::UnboundedReceiver<ConnectionOutput>,
        mut commands: mpsc::UnboundedReceiver<RoomCommand>,
    ) {
        for info in initial_peers {
            self.peer_present(info).await;
        }
        loop {
            let orphans_until = self.orphans_until;
            let next_leave = self.leaving.iter().map(|leaving| leaving.at).min();
            tokio::select! {
                () = tokio::time::sleep_until(orphans_until.unwrap_or_else(Instant::now)),
                    if orphans_until.is_some() => self.give_up_orphans().await,
                () = tokio::time::sleep_until(next_leave.unwrap_or_else(Instant::now)),
                    if next_leave.is_some() => self.finish_leaving().await,
                event = signaling_rx.recv() => match event {
                    Some(event) => {
                        if !self.on_signaling(event).await {
                            break;
                        }
                    }
                    None => break,
                },
                Some(output) = output_rx.recv() => self.on_output(output).await,
                command = commands.recv() => match command {
                    Some(RoomCommand::SelectedPair { peer, reply }) => {
                        match self.find(&peer) {
                            Some(handle) => {
                                let _ = handle.input.send(ConnectionInput::SelectedPair(reply));
                            }
                            None => {
                                let _ = reply.send(None);
                            }
                        }
                    }
                    Some(RoomCommand::Close { at_once, reply }) => {
                        let mut requests = CloseRequests::new(&mut commands, reply, at_once);
                        if at_once {
                            let open = self.connections.keys().copied().collect();
                            self.close_at_once(open, &mut output_rx).await;
                        } else {
                            self.close(&mut output_rx, &mut signaling_rx, &mut requests).await;
                        }
                        requests.answer(&self.unconfirmed);
                        return;
                    }
                    None => break,
                },
            }
        }
        drop(self.shutdown());
    }

    /// Leaves and closes every connection at once, then waits until those in `open` ended,
    /// their closes sent ([`AT_ONCE_CLOSE_WAIT`] at most), so that the peers see them before
    /// the caller may exit.
    async fn close_at_once(
        &mut self,
        mut open: HashSet<u64>,
        output_rx: &mut mpsc::UnboundedReceiver<ConnectionOutput>,
    ) {
        let left = self.shutdown();
        let _ = tokio::time::timeout(LEAVE_WRITE_TIMEOUT, left).await;
        self.await_ended(&mut open, output_rx, Instant::now() + AT_ONCE_CLOSE_WAIT)
            .await;
    }

    /// Closes every connection, leaves [`LEAVE_LINGER`] later (once the `leave` frame was
    /// written, or [`LEAVE_WRITE_TIMEOUT`]), and waits until the connections ended
    /// ([`connection::CHANNEL_CLOSE_WAIT`] at most): each closes its channels and waits for
    /// the peer to read what was sent and close its side, or to leave too; those of peers
    /// that left hand on what they sent.
    ///
    /// Asked meanwhile to close at once (`requests`), it leaves if it had not yet, closes our
    /// connections at once and waits only for that ([`AT_ONCE_CLOSE_WAIT`]); the connections
    /// of peers that left go on handing on what they sent, unwaited for.
    async fn close(
        &mut self,
        output_rx: &mut mpsc::UnboundedReceiver<ConnectionOutput>,
        signaling_rx: &mut mpsc::UnboundedReceiver<SignalingEvent>,
        requests: &mut CloseRequests<'_>,
    ) {
        let closing = std::mem::take(&mut self.connections);
        for handle in closing.values() {
            let _ = handle.input.send(ConnectionInput::Close(Closing::WeLeave));
        }
        // Closes ours at once: those still `open`, to wait for.
        let hurry = |open: &HashSet<u64>| {
            for handle in closing.values() {
                let _ = handle.input.send(ConnectionInput::Close(Closing::AtOnce));
            }
            let ours = closing.keys().filter(|key| open.contains(key));
            ours.copied().collect::<HashSet<u64>>()
        };
        let mut open: HashSet<u64> = closing.keys().copied().collect();
        open.extend(self.draining.iter().copied());
        // A peer that is not on this SDK closes its connection when it hears we left, without
        // waiting for its application to take what its SCTP acknowledged: it gets a moment.
        tokio::select! {
            () = self.await_ended(&mut open, output_rx, Instant::now() + LEAVE_LINGER) => {}
            () = requests.hurried() => {
                self.close_at_once(hurry(&open), output_rx).await;
                return;
            }
        }
        let left = self.shutdown();
        // The leave must reach the server before the caller may exit; a dead signaling
        // socket does not hold the close up for long.
        let _ = tokio::time::timeout(LEAVE_WRITE_TIMEOUT, left).await;
        // Those of peers that left too: what they sent is printed before we exit.
        open.extend(self.draining.drain());
        let mut signaling_up = true;
        let deadline = Instant::now() + connection::CHANNEL_CLOSE_WAIT + Duration::from_secs(1);
        while !open.is_empty() {
            tokio::select! {
                output = output_rx.recv() => if !self.note_ended(&mut open, output) { break },
                event = signaling_rx.recv(), if signaling_up => match event {
                    Some(SignalingEvent::Message(ServerMessage::PeerLeft { peer_id, .. })) => {
                        // Leaving too, it will not close its side for us.
                        for handle in closing.values() {
                            if read_remote(&handle.remote) == peer_id {
                                let _ = handle.input.send(ConnectionInput::PeerLeft);
                            }
                        }
                    }
                    Some(_) => {}
                    None => signaling_up = false,
                },
                () = requests.hurried() => {
                    let mut ours = hurry(&open);
                    self.await_ended(&mut ours, output_rx, Instant::now() + AT_ONCE_CLOSE_WAIT)
                        .await;
                    break;
                }
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
    }

    /// While the room closes: takes outputs of connections until every one in `open` ended, no
    /// more can come, or `until` passes.
    async fn await_ended(
        &mut self,
        open: &mut HashSet<u64>,
        output_rx: &mut mpsc::UnboundedReceiver<ConnectionOutput>,
        until: Instant,
    ) {
        while !open.is_empty() {
            let Ok(output) = tokio::time::timeout_at(until, output_rx.recv()).await else {
                break;
            };
            if !self.note_ended(open, output) {
                break;
            }
        }
    }

    /// While the room closes: an output of a connection, `Ended` taking its key out of `open`
    /// (and of [`Self::draining`]); `false` once no more can come.
    fn note_ended(&mut self, open: &mut HashSet<u64>, output: Option<ConnectionOutput>) -> bool {
        match output {
            Some(ConnectionOutput::Ended { key, unconfirmed }) => {
                open.remove(&key);
                self.draining.remove(&key);
                self.unconfirmed.extend(unconfirmed);
                true
            }
            Some(_) => true,
            None => false,
        }
    }

    /// Leaves the room and closes every connection at once (those of peers that left hand on
    /// what they sent first); the receiver completes once the `leave` frame was written.
    fn shutdown(&mut self) -> oneshot::Receiver<()> {
        let left = self.signaling.leave();
        for (_, handle) in self.connections.drain() {
            let _ = handle.input.send(ConnectionInput::Close(Closing::AtOnce));
        }
        for leaving in std::mem::take(&mut self.leaving) {
            self.close_left(&leaving);
        }
        left
    }

    /// Closes the connection of a peer that left; it ends once it handed on what the peer
    /// sent ([`ConnectionInput::Close`]).
    fn close_left(&mut self, leaving: &Leaving) {
        let sent = leaving
            .handle
            .input
            .send(ConnectionInput::Close(Closing::PeerLeft));
        if sent.is_ok() {
            self.draining.insert(leaving.key);
        }
    }

    fn find(&self, peer: &PeerId) -> Option<&ConnectionHandle> {
        self.connections
            .values()
            .find(|handle| &read_remote(&handle.remote) == peer)
    }

    fn find_key(&self, peer: &PeerId) -> Option<u64> {
        self.connections
            .iter()
            .find(|(_, handle)| &read_remote(&handle.remote) == peer)
            .map(|(key, _)| *key)
    }

    async fn emit(&self, event: PeerEvent) {
        let _ = self.events.send(event).await;
    }

    /// Returns `false` when the session is over.
    async fn on_signaling(&mut self, event: SignalingEvent) -> bool {
        match event {
            SignalingEvent::Message(message) => self.on_server_message(message).await,
            SignalingEvent::Reconnecting { attempt, delay } => {
                self.signaling_up = false;
                self.emit(PeerEvent::SignalingReconnecting { attempt, delay })
                    .await;
            }
            SignalingEvent::Resumed {
                replayed,
                resent,
                ice_servers,
            } => {
                self.signaling_up = true;
                self.emit(PeerEvent::SignalingResumed { replayed, resent })
                    .await;
                // Reports dropped while we were away: the server gets the current ones.
                for handle in self.connections.values() {
                    let _ = handle.input.send(ConnectionInput::ReportStats);
                }
                // Normally the same TURN URLs as the last `ice_servers` (replayed if it came
                // while we were away) with fresher credentials.
                self.update_ice_servers(ice_servers, true);
            }
            SignalingEvent::Rejoined { session, reason } => {
                self.on_rejoined(*session, reason).await
            }
            SignalingEvent::Closed(error) => {
                let code = match &error {
                    PeerError::Signaling { code, .. } => Some(*code),
                    _ => None,
                };
                self.emit(PeerEvent::SignalingClosed {
                    code,
                    message: error.to_string(),
                })
                .await;
                return false;
            }
        }
        true
    }

    async fn on_rejoined(&mut self, info: SessionInfo, reason: ErrorCode) {
        if let Ok(mut me) = self.me.write() {
            *me = info.peer_id.clone();
        }
        self.signaling_up = true;
        self.rejoins += 1;
        // Every existing connection is orphaned until its peer shows up again.
        self.orphans = self.connections.keys().copied().collect();
        self.orphans_until = Some(Instant::now() + ORPHAN_WAIT);
        self.emit(PeerEvent::SignalingRejoined {
            peer_id: info.peer_id.clone(),
            reason,
        })
        .await;
        // New connections use the fresh ICE servers at once; the kept ones take them once
        // their peers are known again (the room may have moved to another relay while we were
        // away), so that an ICE restart they cause goes to the peers' new ids.
        self.ice_servers = info.ice_servers;
        for peer in info.peers {
            self.peer_present(peer).await;
        }
    }

    async fn on_server_message(&mut self, message: ServerMessage) {
        match message {
            ServerMessage::PeerJoined { peer } => self.peer_present(peer).await,
            ServerMessage::PeerLeft { peer_id, reason } => {
                match self.find_key(&peer_id) {
                    Some(key) => {
                        let Some(handle) = self.connections.remove(&key) else {
                            return;
                        };
                        self.orphans.retain(|k| *k != key);
                        // Nothing more is sent there; what arrived is still delivered.
                        let unacknowledged = self.registry.take_unacknowledged(key).await.count();
                        self.leaving.push(Leaving {
                            at: Instant::now() + LEAVE_DRAIN,
                            key,
                            handle,
                            peer: peer_id,
                            reason,
                            unacknowledged,
                        });
                    }
                    None => {
                        self.emit(PeerEvent::PeerLeft {
                            peer: peer_id,
                            reason,
                        })
                        .await;
                    }
                }
            }
            ServerMessage::Signal { from, signal } => {
                if self.find(&from).is_none() {
                    // A signal from a peer we have not heard of: it joined after us, so we are
                    // the impolite side.
                    self.peer_present(PeerInfo {
                        id: from.clone(),
                        name: None,
                        polite: false,
                    })
                    .await;
                }
                if let Some(handle) = self.find(&from) {
                    let _ = handle.input.send(ConnectionInput::Remote(signal));
                }
            }
            ServerMessage::IceServers { ice_servers } => {
                self.update_ice_servers(ice_servers, false);
                self.emit(PeerEvent::IceServersUpdated).await;
            }
            ServerMessage::Broadcast { from, data } => {
                self.emit(PeerEvent::Broadcast { from, data }).await;
            }
            ServerMessage::Error {
                code,
                message,
                reference,
            } => {
                tracing::debug!(%code, %message, ?reference, "signaling error");
                self.emit(PeerEvent::Error {
                    peer: None,
                    message: format!("signaling: {code}: {message}"),
                })
                .await;
            }
            ServerMessage::Welcome { .. }
            | ServerMessage::Resumed { .. }
            | ServerMessage::Pong { .. }
            | ServerMessage::Draining { .. } => {}
        }
    }

    /// The peers of orphans that did not come back within [`ORPHAN_WAIT`] of our re-join are
    /// gone (their sessions ended with the old server, or they left meanwhile): their
    /// connections close, and they are reported as left (`ended`).
    async fn give_up_orphans(&mut self) {
        self.orphans_until = None;
        for key in std::mem::take(&mut self.orphans) {
            let Some(handle) = self.connections.remove(&key) else {
                continue;
            };
            let unacknowledged = self.registry.take_unacknowledged(key).await.count();
            let leaving = Leaving {
                at: Instant::now(),
                key,
                peer: read_remote(&handle.remote),
                handle,
                reason: LeaveReason::Ended,
                unacknowledged,
            };
            self.close_and_report(leaving).await;
        }
    }

    /// The connections of peers that left and whose [`LEAVE_DRAIN`] is over close; the
    /// peers are reported as left, and the reliable messages their SCTP had not acknowledged.
    async fn finish_leaving(&mut self) {
        let now = Instant::now();
        let (done, draining) = std::mem::take(&mut self.leaving)
            .into_iter()
            .partition(|leaving| leaving.at <= now);
        self.leaving = draining;
        for leaving in done {
            self.close_and_report(leaving).await;
        }
    }

    async fn close_and_report(&mut self, leaving: Leaving) {
        self.close_left(&leaving);
        if leaving.unacknowledged > 0 {
            self.emit(PeerEvent::Unacknowledged {
                peer: leaving.peer.clone(),
                messages: leaving.unacknowledged,
            })
            .await;
        }
        self.emit(PeerEvent::PeerLeft {
            peer: leaving.peer,
            reason: leaving.reason,
        })
        .await;
    }

    /// New ICE servers for new connections and every existing one but the orphans (which
    /// restarts ICE if its relay is no longer listed, or onto fresh credentials: at once, or,
    /// for those of a resume, `resumed`, when the old ones would have been refreshed).
    fn update_ice_servers(&mut self, ice_servers: Vec<IceServer>, resumed: bool) {
        for (key, handle) in &self.connections {
            if !self.orphans.contains(key) {
                let _ = handle.input.send(ConnectionInput::IceServers {
                    servers: ice_servers.clone(),
                    resumed,
                });
            }
        }
        self.ice_servers = ice_servers;
    }

    /// Connection `key`'s peer is in the new session: if it was an orphan, it is one no more,
    /// and takes the session's ICE servers (after its other inputs, so that an ICE restart
    /// they cause waits out an adoption's quiet).
    fn claim_orphan(&mut self, key: u64) {
        let Some(pos) = self.orphans.iter().position(|k| *k == key) else {
            return;
        };
        self.orphans.swap_remove(pos);
        if let Some(handle) = self.connections.get(&key) {
            let _ = handle.input.send(ConnectionInput::IceServers {
                servers: self.ice_servers.clone(),
                resumed: false,
            });
        }
    }

    /// A peer is in the room: connect to it (or adopt an orphaned connection to it).
    async fn peer_present(&mut self, info: PeerInfo) {
        if let Some(key) = self.find_key(&info.id) {
            if let Some(handle) = self.connections.get(&key) {
                let _ = handle.input.send(ConnectionInput::Polite(info.polite));
            }
            // Its peer kept its session (ours re-joined).
            self.claim_orphan(key);
            return;
        }
        if let Some(name) = &info.name
            && let Some(pos) = self.orphans.iter().position(|key| {
                self.connections
                    .get(key)
                    .is_some_and(|handle| handle.name.as_ref() == Some(name))
            })
        {
            let key = self.orphans[pos];
            // Reserved first: the rename is queued under the id's lock, so that it comes
            // before any message its channels queue under the new id (`channel.rs`).
            let Ok(permit) = self.events.reserve().await else {
                return;
            };
            if let Some(handle) = self.connections.get(&key) {
                let old = {
                    let mut remote = handle
                        .remote
                        .write()
                        .unwrap_or_else(PoisonError::into_inner);
                    let old = std::mem::replace(&mut *remote, info.id.clone());
                    permit.send(PeerEvent::PeerRenamed {
                        old: old.clone(),
                        new: info.id.clone(),
                    });
                    old
                };
                let _ = handle.input.send(ConnectionInput::Polite(info.polite));
                let _ = handle.input.send(ConnectionInput::Renamed);
                // The new session has no report on this connection yet.
                let _ = handle.input.send(ConnectionInput::ReportStats);
                self.claim_orphan(key);
                tracing::info!(%old, new = %info.id, "re-joined peer adopted its connection");
                return;
            }
        }
        if self
            .connect(&info.id, info.name.clone(), info.polite, None)
            .await
            .is_some()
        {
            self.emit(PeerEvent::PeerJoined {
                peer: info.id,
                name: info.name,
            })
            .await;
        }
    }

    /// A new connection to `peer`; its key, or `None` (reported) if it could not be made.
    /// `replaces`: if it replaces a connection, why, and the messages that one had not had
    /// acknowledged.
    async fn connect(
        &mut self,
        peer: &PeerId,
        name: Option<String>,
        polite: bool,
        replaces: Option<(ReplaceReason, Vec<Outgoing>)>,
    ) -> Option<u64> {
        let (replaces, carried_over) = replaces.unzip();
        let key = self.next_key;
        self.next_key += 1;
        let ctx = ConnectionContext {
            key,
            remote: Arc::new(RwLock::new(peer.clone())),
            polite,
            ice_servers: self.ice_servers.clone(),
            options: self.options.clone(),
            registry: self.registry.clone(),
            events: self.events.clone(),
            output: self.output_tx.clone(),
            replaces,
            carried_over: Arc::new(tokio::sync::Mutex::new(carried_over.unwrap_or_default())),
            readers: ChannelReaders::default(),
        };
        match connection::spawn(ctx).await {
            Ok(mut handle) => {
                handle.name = name;
                self.connections.insert(key, handle);
                Some(key)
            }
            Err(err) => {
                self.emit(PeerEvent::Error {
                    peer: Some(peer.clone()),
                    message: format!("cannot create peer connection: {err}"),
                })
                .await;
                None
            }
        }
    }

    /// The remote peer started a new connection to us (it did not keep its side across a
    /// re-join): ours, ended, is replaced by a new one, which answers its offer if it made one,
    /// and otherwise offers at once (it opens the channels, as the polite side does, and then
    /// takes its real role). The reliable messages the old one had not delivered go first on
    /// the new one's reliable channel.
    async fn replace_connection(
        &mut self,
        key: u64,
        reason: ReplaceReason,
        polite: bool,
        offer: Option<Signal>,
        unacknowledged: Vec<Outgoing>,
    ) {
        let Some(old) = self.connections.remove(&key) else {
            return;
        };
        self.orphans.retain(|k| *k != key);
        let peer = read_remote(&old.remote);
        let offers_first = offer.is_none();
        let Some(key) = self
            .connect(
                &peer,
                old.name,
                polite || offers_first,
                Some((reason, unacknowledged)),
            )
            .await
        else {
            return;
        };
        let Some(handle) = self.connections.get(&key) else {
            return;
        };
        match offer {
            Some(offer) => {
                let _ = handle.input.send(ConnectionInput::Remote(offer));
            }
            None => {
                let _ = handle.input.send(ConnectionInput::Polite(polite));
            }
        }
    }

    async fn on_output(&mut self, output: ConnectionOutput) {
        match output {
            ConnectionOutput::Signal { key, signal } => {
                // An orphan's peer has not re-joined: its old id is unknown to this session
                // (`unknown_peer`). An offer it made waits for the adoption; it goes again to
                // the new id once the adopted connection's quiet is over
                // (`ConnectionInput::Renamed`).
                if self.orphans.contains(&key) {
                    tracing::debug!("signal dropped: its peer has not re-joined");
                    return;
                }
                let Some(handle) = self.connections.get(&key) else {
                    return;
                };
                let to = read_remote(&handle.remote);
                let id = self.next_request;
                self.next_request += 1;
                let message = ClientMessage::Signal {
                    id: Some(id),
                    cseq: None,
                    to,
                    signal,
                };
                if self
                    .signaling
                    .send_in_session(message, self.rejoins)
                    .is_err()
                {
                    tracing::debug!("signaling session closed; signal dropped");
                }
            }
            ConnectionOutput::Stats { key, mut report } => {
                // Only on a live session, and about a peer in the room under its current id:
                // an orphan's peer has not re-joined (yet), and a report made just before an
                // adoption names the old id.
                if !self.signaling_up || self.orphans.contains(&key) {
                    tracing::debug!("stats report dropped: signaling down or peer not in the room");
                    return;
                }
                let Some(handle) = self.connections.get(&key) else {
                    return;
                };
                report.peer = read_remote(&handle.remote);
                let message = ClientMessage::Stats { id: None, report };
                if self
                    .signaling
                    .send_in_session(message, self.rejoins)
                    .is_err()
                {
                    tracing::debug!("signaling session closed; stats report dropped");
                }
            }
            ConnectionOutput::StartedOver {
                key,
                reason,
                polite,
                offer,
                unacknowledged,
            } => {
                self.replace_connection(key, reason, polite, offer, unacknowledged)
                    .await;
            }
            ConnectionOutput::HandedOver { peer, signal } => {
                if let Some(handle) = self.find(&peer) {
                    let _ = handle.input.send(ConnectionInput::Remote(signal));
                }
            }
            ConnectionOutput::Ended { key, .. } => {
                self.connections.remove(&key);
                self.draining.remove(&key);
                self.orphans.retain(|k| *k != key);
            }
        }
    }
}
