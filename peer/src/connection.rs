//! One WebRTC peer connection to one remote peer, run as its own task.
//!
//! The task owns the `webrtc` peer connection and applies perfect negotiation
//! ([`crate::negotiation`]) to the signals the room routes to it: it answers offers (rolling
//! back its own when polite), applies answers, queues early candidates, trickles its own
//! candidates (and end-of-candidates) back, restarts ICE when the connection fails (each
//! restart gathers anew: new sockets, new TURN allocations), and picks up fresh ICE servers,
//! restarting ICE when the room's relay moved away from under a relayed pair
//! ([`crate::ice_servers`]). Data channels it creates or receives get a reader task each
//! ([`crate::channel`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use signaling::protocol::client_rules::{self, STATS_EVERY};
use signaling::protocol::{
    CandidatePair, CandidateType, ConnectionStats, IceCandidate, IceProtocol, IceServer,
    MAX_STATS_RELAY_URL, MAX_STATS_RTT_MS, PeerId, RelayProtocol, Signal,
};
use tokio::sync::{mpsc, oneshot};
use webrtc::data_channel::DataChannel;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfiguration,
    RTCConfigurationBuilder, RTCDtlsRole, RTCDtlsTransportState, RTCIceCandidateInit,
    RTCIceCandidateType, RTCIceConnectionState, RTCIceGatheringState, RTCIceServer,
    RTCIceTransportPolicy, RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSdpType,
    RTCSessionDescription, RTCStatsReportEntry, SettingEngineBuilder, StatsSelector,
};

use crate::channel::{
    CarriedOver, ChannelContext, ChannelKind, ChannelReaders, ChannelRegistry, RemoteId,
    read_remote, spawn_reader,
};
use crate::error::Result;
use crate::ice_servers::{relay_moved, turn_urls};
use crate::negotiation::{CandidateDecision, Negotiation, OfferDecision};
use crate::sent_log::Outgoing;
use crate::turn_tcp_bridge::TurnTcpBridges;
use crate::{
    ConnectionState, IceRestartReason, PeerEvent, PeerOptions, ReplaceReason, SelectedPair,
};

/// Inputs the room sends to a connection.
#[derive(Debug)]
pub(crate) enum ConnectionInput {
    /// A negotiation message from the remote peer.
    Remote(Signal),
    /// Fresh ICE servers: new TURN credentials for the next gathering, or another relay (then
    /// a relayed pair on a relay no longer listed restarts ICE). `resumed`: they came with a
    /// resume (`resumed`), not with an `ice_servers` frame.
    IceServers {
        servers: Vec<IceServer>,
        resumed: bool,
    },
    /// The server restated our role (after a re-join).
    Polite(bool),
    /// The remote peer re-joined under a new id: an offer of ours still unanswered went to
    /// its old id, and is sent again.
    Renamed,
    /// The server has no current `stats` report from us (the session is new after a re-join,
    /// or reports were dropped while signaling was down): report at the next tick.
    ReportStats,
    /// Report the selected candidate pair.
    SelectedPair(oneshot::Sender<Option<SelectedPair>>),
    /// Close the connection ([`ConnectionTask::close`]).
    Close(Closing),
    /// While closing after [`Closing::WeLeave`]: the peer left the room too, and will not
    /// close its side for us.
    PeerLeft,
}

/// How a connection closes ([`ConnectionTask::close`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closing {
    /// We leave: our channels close first, and the peer reads what we sent.
    WeLeave,
    /// The peer left: what it sent is read up to its channels' closes first.
    PeerLeft,
    /// At once ([`crate::Peer::close_at_once`]).
    AtOnce,
}

/// Outputs of a connection to the room.
#[derive(Debug)]
pub(crate) enum ConnectionOutput {
    /// Send this signal to the connection's remote peer.
    Signal { key: u64, signal: Signal },
    /// Report this on the connection to the server (`stats`); the room puts in the remote
    /// peer's current id.
    Stats { key: u64, report: ConnectionStats },
    /// This connection ends for a new one to the same peer, which the room makes as `polite`
    /// is. Either the remote started a new connection to us (an offer or answer with another
    /// DTLS fingerprint than its connection's: it did not keep its side across a re-join, as
    /// the JS client and clients written from `docs/protocol.md` do not), and the new one
    /// answers its `offer`; or, without one, the new connection offers at once: the remote
    /// answered our offer from its new connection (which holds a DTLS session that is not
    /// ours), or it cannot restart ICE. `unacknowledged`: the reliable messages SCTP had not
    /// acknowledged, which the new connection sends first.
    StartedOver {
        key: u64,
        reason: ReplaceReason,
        polite: bool,
        offer: Option<Signal>,
        unacknowledged: Vec<Outgoing>,
    },
    /// A signal of the remote's that reached this connection after it ended with
    /// [`Self::StartedOver`]: for the connection that replaced it (the candidates of the
    /// remote's offer often come right after it).
    HandedOver { peer: PeerId, signal: Signal },
    /// The connection task ended. `unconfirmed`: the peer, when we left and it had not closed
    /// its side when the wait for that ended ([`CHANNEL_CLOSE_WAIT`] at most, less when cut
    /// short or when the path went down): it may not have read all we sent.
    Ended {
        key: u64,
        unconfirmed: Option<PeerId>,
    },
}

/// The room's handle on a running connection.
pub(crate) struct ConnectionHandle {
    pub(crate) input: mpsc::UnboundedSender<ConnectionInput>,
    pub(crate) remote: RemoteId,
    pub(crate) name: Option<String>,
}

/// Events the `webrtc` handler forwards to the connection task.
enum HandlerEvent {
    NegotiationNeeded,
    Candidate(RTCIceCandidateInit),
    GatheringComplete,
    IceState(RTCIceConnectionState),
    State(RTCPeerConnectionState),
    DataChannel(Arc<dyn DataChannel>),
}

struct Handler {
    tx: mpsc::UnboundedSender<HandlerEvent>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_negotiation_needed(&self) {
        let _ = self.tx.send(HandlerEvent::NegotiationNeeded);
    }

    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(init) => {
                let _ = self.tx.send(HandlerEvent::Candidate(init));
            }
            Err(err) => tracing::warn!("cannot encode local candidate: {err}"),
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.tx.send(HandlerEvent::GatheringComplete);
        }
    }

    async fn on_ice_connection_state_change(&self, state: RTCIceConnectionState) {
        let _ = self.tx.send(HandlerEvent::IceState(state));
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.tx.send(HandlerEvent::State(state));
    }

    async fn on_data_channel(&self, data_channel: Arc<dyn DataChannel>) {
        let _ = self.tx.send(HandlerEvent::DataChannel(data_channel));
    }
}

/// Everything a connection task needs from the room.
pub(crate) struct ConnectionContext {
    pub(crate) key: u64,
    pub(crate) remote: RemoteId,
    pub(crate) polite: bool,
    pub(crate) ice_servers: Vec<IceServer>,
    pub(crate) options: Arc<PeerOptions>,
    pub(crate) registry: Arc<ChannelRegistry>,
    pub(crate) events: mpsc::Sender<PeerEvent>,
    pub(crate) output: mpsc::UnboundedSender<ConnectionOutput>,
    /// What the connection this one replaces had not had acknowledged (empty for a new one).
    pub(crate) carried_over: CarriedOver,
    /// Why the connection this one replaces was replaced ([`ConnectionOutput::StartedOver`]),
    /// if it replaces one.
    pub(crate) replaces: Option<ReplaceReason>,
    /// The readers of this connection's channels.
    pub(crate) readers: ChannelReaders,
}

impl ConnectionContext {
    /// What a reader of one of this connection's channels needs.
    fn channel_context(&self) -> ChannelContext {
        ChannelContext {
            key: self.key,
            remote: self.remote.clone(),
            registry: self.registry.clone(),
            events: self.events.clone(),
            carried_over: self.carried_over.clone(),
            readers: self.readers.clone(),
        }
    }
}

/// The DTLS role our answers claim (`a=setup`). A pair's DTLS roles are fixed by its first
/// offer and answer, and every later answer must claim the same role (RFC 8842, section 5.3):
/// Chrome refuses one that does not ("Failed to set SSL role for the transport"), and its
/// renegotiations and ICE restarts never complete. `webrtc` does not track this; it answers
/// with one configured role every time (`active`, the DTLS client, by default). So the role is
/// chosen by who offers first:
/// - the polite side opens the channels and makes the first offer. Answerers (browsers,
///   aiortc, our impolite side) answer `active`, which makes us the DTLS server, so our later
///   answers say `passive`. If our first offer is rolled back in a collision, our first
///   answer says `passive` too.
/// - the impolite side answers the first offer, with `webrtc`'s default every time: `active`,
///   the DTLS client (`passive` to an ICE-lite offerer).
///
/// Left: a remote that answers our first offer `passive` makes us the client, and our later
/// answers would still say `passive`. Browsers answer `active`.
fn answering_dtls_role(polite: bool) -> RTCDtlsRole {
    if polite {
        RTCDtlsRole::Server
    } else {
        RTCDtlsRole::Auto
    }
}

/// Maps protocol ICE servers to `webrtc`'s.
pub(crate) fn rtc_ice_servers(servers: &[IceServer]) -> Vec<RTCIceServer> {
    servers
        .iter()
        .map(|server| RTCIceServer {
            urls: server.urls.clone(),
            username: server.username.clone().unwrap_or_default(),
            credential: server.credential.clone().unwrap_or_default(),
        })
        .collect()
}

/// The ICE servers a connection uses: all of them, or only the STUN ones with `no_turn`.
fn usable_servers(servers: &[IceServer], no_turn: bool) -> Vec<IceServer> {
    if !no_turn {
        return servers.to_vec();
    }
    servers
        .iter()
        .filter_map(|server| {
            let urls: Vec<String> = server
                .urls
                .iter()
                .filter(|url| url.starts_with("stun:") || url.starts_with("stuns:"))
                .cloned()
                .collect();
            (!urls.is_empty()).then(|| IceServer {
                urls,
                ..server.clone()
            })
        })
        .collect()
}

fn configuration(servers: &[IceServer], relay_only: bool) -> RTCConfiguration {
    RTCConfigurationBuilder::new()
        .with_ice_servers(rtc_ice_servers(servers))
        .with_ice_transport_policy(if relay_only {
            RTCIceTransportPolicy::Relay
        } else {
            RTCIceTransportPolicy::All
        })
        .build()
}

/// Builds the peer connection and starts its task. The polite side (the later joiner)
/// creates the data channels, which starts the negotiation.
pub(crate) async fn spawn(ctx: ConnectionContext) -> Result<ConnectionHandle> {
    let (handler_tx, handler_rx) = mpsc::unbounded_channel();
    let options = ctx.options.clone();
    let settings = SettingEngineBuilder::new()
        // Accept a working pair as soon as it is found; the defaults wait up to 2 s
        // (relay) hoping for a better one, which dominates set-up time on a LAN or a relay.
        .with_host_acceptance_min_wait(Some(Duration::ZERO))
        // Loopback/LAN checks often arrive before the trickled candidate, making the first
        // working pair peer-reflexive: its default 1 s wait was the bulk of direct set-up.
        .with_prflx_acceptance_min_wait(Some(Duration::ZERO))
        .with_srflx_acceptance_min_wait(Some(Duration::ZERO))
        .with_relay_acceptance_min_wait(Some(if options.relay_only {
            Duration::ZERO
        } else {
            Duration::from_millis(500)
        }))
        .with_ice_timeouts(
            Some(Duration::from_secs(3)),
            Some(Duration::from_secs(6)),
            Some(Duration::from_secs(1)),
        )
        // An ICE restart gathers anew, as a browser's does: new sockets, new candidates and
        // new TURN allocations (the old ones released first). Without it webrtc re-offers the
        // candidates of the first gathering, so after a relay restart (same address, its
        // allocations gone) every restart re-offered dead relayed candidates and a relay-only
        // call never recovered.
        .with_discard_local_candidates_during_ice_restart(true)
        .with_answering_dtls_role(answering_dtls_role(ctx.polite))
        .build();
    // webrtc speaks TURN over UDP only: TCP TURN URLs go through local bridges.
    let mut bridges = TurnTcpBridges::new(options.turn_ca_files());
    let usable = usable_servers(&ctx.ice_servers, options.no_turn);
    let turn_urls = turn_urls(&usable);
    let credentials_expiry = credentials_expiry(&usable);
    let ice_servers = bridges.map(&usable).await;
    let pc = PeerConnectionBuilder::new()
        .with_configuration(configuration(&ice_servers, options.relay_only))
        .with_setting_engine(settings)
        .with_handler(Arc::new(Handler { tx: handler_tx }))
        .with_udp_addrs(options.udp_addrs.clone())
        .with_data_channel_send_buffer_limit(options.send_buffer_limit)
        .build()
        .await?;
    let pc: Arc<dyn PeerConnection> = Arc::new(pc);

    if ctx.polite {
        for kind in [ChannelKind::Reliable, ChannelKind::Unreliable] {
            let (label, init) = kind.init();
            let dc = pc.create_data_channel(label, Some(init)).await?;
            spawn_reader(ctx.channel_context(), dc);
        }
    }

    let (input_tx, input_rx) = mpsc::unbounded_channel();
    let handle = ConnectionHandle {
        input: input_tx,
        remote: ctx.remote.clone(),
        name: None,
    };
    let task = ConnectionTask {
        negotiation: Negotiation::new(ctx.polite),
        opened_channels: ctx.polite,
        pc,
        ctx,
        bridges,
        turn_urls,
        turn_unchecked: Some(usable),
        ice_restart_pending: false,
        fresh_credentials_due: None,
        credentials_expiry,
        offer_out: None,
        adopted_quiet_until: None,
        offer_deferred: None,
        restart_deferred: None,
        started_over: false,
        last_restart: None,
        state: RTCPeerConnectionState::New,
        was_connected: false,
        created: Instant::now(),
        restart_unconfirmed: None,
        stats_sent: None,
    };
    tokio::spawn(task.run(input_rx, handler_rx));
    Ok(handle)
}

struct ConnectionTask {
    ctx: ConnectionContext,
    pc: Arc<dyn PeerConnection>,
    negotiation: Negotiation,
    /// Whether this side opened data channels (the polite side does, when it builds the
    /// connection; the other side gets them from the remote's offer).
    opened_channels: bool,
    /// Local UDP bridges for TCP TURN URLs; they live as long as the connection.
    bridges: TurnTcpBridges,
    /// The TURN URLs of the configuration in effect ([`turn_urls`] of the usable servers).
    turn_urls: BTreeSet<String>,
    /// The servers in effect, until a failure of the connection checked them (once per
    /// configuration: see [`crate::turn_check`]).
    turn_unchecked: Option<Vec<IceServer>>,
    ice_restart_pending: bool,
    /// Fresh TURN credentials arrived (same URLs) and no ICE restart of ours has gathered with
    /// them yet: a relayed path is still on an allocation made with older ones, and moves
    /// onto them from this moment on ([`Self::move_onto_fresh_credentials`]).
    fresh_credentials_due: Option<Instant>,
    /// When the TURN credentials of the configuration in effect expire (Unix seconds, from
    /// their username), if known.
    credentials_expiry: Option<u64>,
    /// Our offer waiting for its answer: since when it was sent, and whether it restarts ICE.
    offer_out: Option<(Instant, bool)>,
    /// Adopted after a re-join (`ConnectionInput::Renamed`): until then we make no offer and
    /// send none again, unless the remote shows first that it kept its side of the
    /// connection. A remote that did not makes a new connection and offers from it meanwhile
    /// (a polite JS client within 1.5 s); an ICE restart offer of ours would reach that new
    /// connection instead, and be answered there from a DTLS session that is not ours.
    adopted_quiet_until: Option<Instant>,
    /// An offer held back by the quiet period, and whether it restarts ICE.
    offer_deferred: Option<bool>,
    /// An ICE restart held back by the quiet, and why.
    restart_deferred: Option<IceRestartReason>,
    /// A new connection replaces this one, which ends (`ConnectionOutput::StartedOver`).
    started_over: bool,
    last_restart: Option<Instant>,
    state: RTCPeerConnectionState,
    /// Whether the connection has ever been connected.
    was_connected: bool,
    created: Instant,
    /// When the peer answered our ICE restart keeping its ICE credentials, until ICE is
    /// connected again. Not connected [`RESTART_CONFIRM_WAIT`] later, the peer cannot restart
    /// ICE, and a new connection replaces this one ([`Self::start_over`]).
    restart_unconfirmed: Option<Instant>,
    /// The path of the last `stats` report and when it was sent.
    stats_sent: Option<(String, Instant)>,
}

impl ConnectionTask {
    fn peer(&self) -> PeerId {
        read_remote(&self.ctx.remote)
    }

    /// Tells the application (a closed event stream is not an error: it stopped listening).
    async fn emit(&self, event: PeerEvent) {
        let _ = self.ctx.events.send(event).await;
    }

    fn signal(&self, signal: Signal) {
        let _ = self.ctx.output.send(ConnectionOutput::Signal {
            key: self.ctx.key,
            signal,
        });
    }

    async fn run(
        mut self,
        mut input: mpsc::UnboundedReceiver<ConnectionInput>,
        mut handler: mpsc::UnboundedReceiver<HandlerEvent>,
    ) {
        let mut stats_tick = tokio::time::interval(STATS_TICK);
        stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut confirmed = true;
        loop {
            let result = tokio::select! {
                _ = stats_tick.tick() => self.on_tick().await,
                message = input.recv() => match message {
                    Some(ConnectionInput::Close(closing)) => {
                        confirmed = self.close(closing, &mut input, &mut handler).await;
                        break;
                    }
                    None => break,
                    Some(message) => self.on_input(message).await,
                },
                event = handler.recv() => match event {
                    None => break,
                    Some(event) => self.on_handler_event(event).await,
                },
            };
            if self.started_over {
                break;
            }
            if let Err(err) = result {
                tracing::warn!(peer = %self.peer(), "negotiation step failed: {err}");
                self.emit(PeerEvent::Error {
                    peer: Some(self.peer()),
                    message: err.to_string(),
                })
                .await;
            }
        }
        if self.started_over {
            // Until the room drops our handle, what reaches us goes to the new connection.
            while let Some(message) = input.recv().await {
                match message {
                    ConnectionInput::Remote(signal) => {
                        let _ = self.ctx.output.send(ConnectionOutput::HandedOver {
                            peer: self.peer(),
                            signal,
                        });
                    }
                    // The room closes while it still holds our handle.
                    ConnectionInput::Close(_) => break,
                    _ => {}
                }
            }
        }
        let _ = self.pc.close().await;
        self.ctx.registry.remove_connection(self.ctx.key);
        let _ = self.ctx.output.send(ConnectionOutput::Ended {
            key: self.ctx.key,
            unconfirmed: (!confirmed).then(|| self.peer()),
        });
    }

    /// Closing waits, [`CHANNEL_CLOSE_WAIT`] at most, until what was sent on the connection
    /// was read:
    ///
    /// - When we leave ([`Closing::WeLeave`]): our channels close, and while the path is up we
    ///   wait for the peer to close its side, or to leave the room too
    ///   ([`ConnectionInput::PeerLeft`]). A peer on this SDK does once it has read what
    ///   we sent: its SCTP holds our channels' closes back behind the data it has not handed
    ///   on, and it reads up to those closes before it closes the connection of a peer that
    ///   left (below). Closing at once would drop what its SCTP had acknowledged but not
    ///   handed on yet. Its close is seen on our DTLS transport ([`Self::peer_closed`]).
    /// - When the peer left: until our channels' readers end, having handed on what the peer
    ///   sent up to its channels' closes.
    /// - [`Closing::AtOnce`]: no wait.
    ///
    /// `false` when we left and the peer did not close its side in time.
    async fn close(
        &mut self,
        closing: Closing,
        input: &mut mpsc::UnboundedReceiver<ConnectionInput>,
        handler: &mut mpsc::UnboundedReceiver<HandlerEvent>,
    ) -> bool {
        match closing {
            Closing::WeLeave => return self.await_peer_close(input, handler).await,
            Closing::PeerLeft => {
                // Nothing goes to it any more.
                self.ctx.registry.remove_connection(self.ctx.key);
                if !self.await_readers_while_path_up(handler).await {
                    tracing::debug!(peer = %self.peer(), "channels not read to their close in time");
                }
            }
            Closing::AtOnce => {}
        }
        true
    }

    /// The peer left: waits until our channels' readers end, having handed on what the peer
    /// sent up to its channels' closes ([`CHANNEL_CLOSE_WAIT`] at most). The channels are not
    /// closed here while the path is up: a channel we close is reported closed at once, ahead
    /// of what the peer sent before its own close. A path that is down (or goes down) carries
    /// nothing more: the channels are closed then, so that the wait (and a `send` blocked on a
    /// full buffer) ends at once. `false` if the readers had not ended in time.
    async fn await_readers_while_path_up(
        &mut self,
        handler: &mut mpsc::UnboundedReceiver<HandlerEvent>,
    ) -> bool {
        let ended = self.ctx.readers.ended(CHANNEL_CLOSE_WAIT);
        tokio::pin!(ended);
        let mut handler_open = true;
        loop {
            if path_is_down(self.state) {
                self.ctx.readers.close();
                return ended.await;
            }
            tokio::select! {
                done = &mut ended => return done,
                event = handler.recv(), if handler_open => match event {
                    Some(HandlerEvent::State(state)) => self.state = state,
                    Some(_) => {}
                    None => handler_open = false,
                },
            }
        }
    }

    /// We leave: closes our channels, then waits while the path is up until the peer closes
    /// its side or leaves too ([`CHANNEL_CLOSE_WAIT`] at most). `false` when the peer had not
    /// closed its side when that wait ended: it ran out, was cut short
    /// ([`Closing::AtOnce`]), or the path went down.
    async fn await_peer_close(
        &mut self,
        input: &mut mpsc::UnboundedReceiver<ConnectionInput>,
        handler: &mut mpsc::UnboundedReceiver<HandlerEvent>,
    ) -> bool {
        self.ctx.readers.close();
        let deadline = tokio::time::Instant::now() + CHANNEL_CLOSE_WAIT;
        let mut poll = tokio::time::interval(PEER_CLOSED_POLL);
        while self.state == RTCPeerConnectionState::Connected {
            tokio::select! {
                event = handler.recv() => match event {
                    Some(HandlerEvent::State(state)) => self.state = state,
                    Some(_) => {}
                    None => return true,
                },
                _ = poll.tick() => {
                    if self.peer_closed().await {
                        return true;
                    }
                }
                message = input.recv() => match message {
                    Some(ConnectionInput::PeerLeft) | None => return true,
                    // Cut short: it is not known whether the peer read all.
                    Some(ConnectionInput::Close(Closing::AtOnce)) => {
                        return self.peer_closed().await;
                    }
                    Some(_) => {}
                },
                () = tokio::time::sleep_until(deadline) => {
                    tracing::debug!(peer = %self.peer(), "the peer did not close in time");
                    return false;
                }
            }
        }
        // The path went down: unless the peer closed first, what it had not read is lost.
        self.peer_closed().await
    }

    /// Whether the peer closed its side: its DTLS `close_notify` closed our DTLS transport
    /// (the connection state stays `connected` until ICE finds the path gone, ~3 s later).
    async fn peer_closed(&self) -> bool {
        let Some(sctp) = self.pc.sctp().await else {
            // No data channels ever: nothing to wait for.
            return true;
        };
        matches!(
            sctp.transport().state().await,
            Ok(RTCDtlsTransportState::Closed | RTCDtlsTransportState::Failed)
        )
    }

    /// Once a second: the `stats` report, an unanswered offer sent again, a restart onto
    /// fresh credentials that is owed.
    async fn on_tick(&mut self) -> Result<()> {
        self.report_stats().await;
        match self.adopted_quiet_until {
            Some(until) if Instant::now() < until => return Ok(()),
            Some(_) => {
                // The quiet after an adoption is over: an offer made before the re-join goes
                // to the peer's new id.
                self.adopted_quiet_until = None;
                self.resend_offer(Duration::ZERO).await?;
            }
            None => self.resend_offer(client_rules::OFFER_RESEND).await?,
        }
        if self
            .restart_unconfirmed
            .is_some_and(|at| at.elapsed() >= RESTART_CONFIRM_WAIT)
            && self.may_start_over()
        {
            tracing::info!(peer = %self.peer(), "the peer cannot restart ICE: a new connection replaces ours");
            self.start_over(ReplaceReason::IceRestartRefused, None)
                .await;
            return Ok(());
        }
        // An ICE restart held back by the quiet, once no offer is out (`webrtc` only marks the
        // next offer as a restart: one made while an offer is out would be lost).
        if let Some(reason) = self.restart_deferred
            && self.is_stable().await
        {
            self.restart_deferred = None;
            self.restart_ice(reason).await?;
        }
        // An offer held back by the quiet, once no other is out.
        if self.offer_deferred.is_some() && self.is_stable().await {
            let ice_restart = self.offer_deferred.take().unwrap_or(false);
            self.make_offer(ice_restart).await?;
        }
        self.move_onto_fresh_credentials().await
    }

    async fn on_input(&mut self, message: ConnectionInput) -> Result<()> {
        match message {
            ConnectionInput::Remote(signal) => self.on_signal(signal).await,
            ConnectionInput::IceServers { servers, resumed } => {
                self.on_ice_servers(&servers, resumed).await
            }
            ConnectionInput::Polite(polite) => {
                self.negotiation.set_polite(polite);
                Ok(())
            }
            ConnectionInput::Renamed => {
                self.adopted_quiet_until = Some(Instant::now() + ADOPTION_QUIET);
                Ok(())
            }
            ConnectionInput::ReportStats => {
                self.stats_sent = None;
                Ok(())
            }
            ConnectionInput::SelectedPair(reply) => {
                let _ = reply.send(self.selected_pair().await);
                Ok(())
            }
            ConnectionInput::Close(_) | ConnectionInput::PeerLeft => Ok(()),
        }
    }

    /// Fresh ICE servers; the configuration is replaced (it takes effect at the next
    /// gathering). Same TURN URLs: a credential refresh; a connected path whose local candidate
    /// is relayed restarts ICE onto allocations made with the fresh credentials, now or once it
    /// is connected again (the old ones stop refreshing once the secret that signed them is
    /// rotated out; see [`Self::move_onto_fresh_credentials`]). Other TURN URLs: the
    /// room moved to another relay; if the selected pair is relayed through a server that is
    /// no longer listed (or the connection lost its path and has no pair), ICE restarts at
    /// once (see [`relay_moved`]).
    async fn on_ice_servers(&mut self, servers: &[IceServer], resumed: bool) -> Result<()> {
        let usable = usable_servers(servers, self.ctx.options.no_turn);
        let new_urls = turn_urls(&usable);
        let new_expiry = credentials_expiry(&usable);
        let restart = if new_urls == self.turn_urls {
            // Owed until a gathering of ours starts after this configuration is in effect.
            if !new_urls.is_empty() {
                let due = if resumed {
                    fresh_credentials_due(self.credentials_expiry, new_expiry, unix_now())
                } else {
                    Instant::now()
                };
                self.fresh_credentials_due =
                    Some(self.fresh_credentials_due.map_or(due, |owed| owed.min(due)));
            }
            None
        } else {
            let pair = self.selected_pair().await;
            let path_lost = self.was_connected
                && !matches!(
                    self.state,
                    RTCPeerConnectionState::Connected | RTCPeerConnectionState::Closed
                );
            let restart = relay_moved(
                &self.turn_urls,
                &new_urls,
                pair.as_ref().map(|pair| pair.local_type.as_str()),
                pair.as_ref().and_then(|pair| pair.relay_url.as_deref()),
                path_lost,
            );
            tracing::info!(
                peer = %self.peer(),
                old = ?self.turn_urls,
                new = ?new_urls,
                local = ?pair.as_ref().map(|pair| &pair.local_type),
                relay = ?pair.as_ref().and_then(|pair| pair.relay_url.as_deref()),
                path_lost,
                restart,
                "TURN servers changed"
            );
            if new_urls.is_empty() && (restart || self.ctx.options.relay_only) {
                tracing::warn!(
                    peer = %self.peer(),
                    "the signaling server lists no TURN server now (its relay fleet may be \
                     empty): a relayed path has none to restart onto, and waits until one is \
                     listed again"
                );
            }
            restart.then_some(IceRestartReason::RelayMoved)
        };
        let mapped = self.bridges.map(&usable).await;
        self.pc
            .set_configuration(configuration(&mapped, self.ctx.options.relay_only))
            .await?;
        self.turn_urls = new_urls;
        self.credentials_expiry = new_expiry;
        self.turn_unchecked = Some(usable);
        if let Some(reason) = restart {
            self.restart_ice(reason).await?;
        }
        self.move_onto_fresh_credentials().await
    }

    /// Fresh credentials not gathered with yet ([`Self::fresh_credentials_due`]): a connected
    /// path whose local candidate is relayed restarts ICE onto them. A connection that is not
    /// connected (or in the middle of a negotiation) when they arrive does so once it is: it
    /// may come back on its old allocation without a restart of its own. (An answered restart
    /// of the other side is not counted as one: at worst one restart too many.)
    async fn move_onto_fresh_credentials(&mut self) -> Result<()> {
        if self
            .fresh_credentials_due
            .is_none_or(|due| Instant::now() < due)
            || self.state != RTCPeerConnectionState::Connected
            || !self.is_stable().await
        {
            return Ok(());
        }
        let relayed = self
            .selected_pair()
            .await
            .is_some_and(|pair| pair.local_type == "relay");
        if relayed {
            self.restart_ice(IceRestartReason::FreshCredentials).await?;
        }
        Ok(())
    }

    /// While connected: a `stats` report when the selected pair changed since the last one, or
    /// [`STATS_EVERY`] after it (`docs/protocol.md`, client rules).
    async fn report_stats(&mut self) {
        if self.state != RTCPeerConnectionState::Connected {
            return;
        }
        let Some((pair, sent, received)) = self.selected_pair_with_bytes().await else {
            return;
        };
        let report = stats_report(self.peer(), &pair, sent, received);
        let path = format!("{:?}", report.pair);
        let now = Instant::now();
        let due = match &self.stats_sent {
            Some((last, at)) => *last != path || now.duration_since(*at) >= STATS_EVERY,
            None => true,
        };
        if due {
            self.stats_sent = Some((path, now));
            let _ = self.ctx.output.send(ConnectionOutput::Stats {
                key: self.ctx.key,
                report,
            });
        }
    }

    /// The selected pair, with a bridged relay URL mapped back to the TURN URL it stands for.
    async fn selected_pair(&self) -> Option<SelectedPair> {
        self.selected_pair_with_bytes()
            .await
            .map(|(pair, _, _)| pair)
    }

    /// [`Self::selected_pair`] and the pair's bytes sent and received.
    async fn selected_pair_with_bytes(&self) -> Option<(SelectedPair, u64, u64)> {
        let (mut pair, sent, received) = selected_pair_stats(self.pc.as_ref()).await?;
        if let Some(original) = pair
            .relay_url
            .as_deref()
            .and_then(|url| self.bridges.original_url(url))
        {
            pair.relay_url = Some(original.to_owned());
        }
        Some((pair, sent, received))
    }

    async fn is_stable(&self) -> bool {
        self.pc.pending_local_description().await.is_none()
            && self.pc.pending_remote_description().await.is_none()
    }

    /// Whether `sdp` (an offer or answer of the remote's) comes from another DTLS session
    /// than the connection's: its fingerprint differs from the current remote description's.
    async fn is_another_dtls_session(&self, sdp: &str) -> bool {
        let Some(current) = self.pc.current_remote_description().await else {
            return false;
        };
        matches!(
            (dtls_fingerprint(&current.sdp), dtls_fingerprint(sdp)),
            (Some(old), Some(new)) if old != new
        )
    }

    /// Whether `answer`, to an ICE-restart offer of ours, keeps the peer's ICE credentials
    /// (`a=ice-ufrag`). A browser may (Chrome does when it restarts at the same moment), and
    /// checks with our new credentials; a peer that cannot restart ICE does too (aiortc),
    /// and goes on checking with our old ones, which we no longer accept: see
    /// [`ConnectionTask::restart_unconfirmed`].
    async fn answer_keeps_ice_credentials(&self, answer: &str) -> bool {
        let (Some(offer), Some(local), Some(remote)) = (
            self.pc.pending_local_description().await,
            self.pc.current_local_description().await,
            self.pc.current_remote_description().await,
        ) else {
            return false;
        };
        let restarting = ice_ufrag(&offer.sdp) != ice_ufrag(&local.sdp);
        restarting && ice_ufrag(answer).is_some() && ice_ufrag(answer) == ice_ufrag(&remote.sdp)
    }

    /// Whether a new connection may replace this one for a peer that cannot restart ICE: at
    /// once if this one was ever connected (fresh TURN credentials, a moved relay) or is the
    /// first; else (a replacement that never connected: the path may be down for good, the
    /// relay gone) once it is [`START_OVER_BACKOFF`] old, so that a peer that cannot restart
    /// ICE and a dead path do not make a new connection, and TURN allocations, every few
    /// seconds.
    fn may_start_over(&self) -> bool {
        self.was_connected
            || self.ctx.replaces.is_none()
            || self.created.elapsed() >= START_OVER_BACKOFF
    }

    /// Ends this connection for a new one to the same peer (`docs/protocol.md`, "A new
    /// connection"), which answers `offer` (the peer's new connection's) or else offers at
    /// once. Nothing more is sent here; the reliable messages not acknowledged go first on the
    /// new one.
    async fn start_over(&mut self, reason: ReplaceReason, offer: Option<Signal>) {
        self.started_over = true;
        // What this one was still to send for the connection it replaced goes first. Not
        // waited for while a channel of ours is sending it (a send may wait for a path that is
        // gone, and this task would not close the connection that ends it): then it is lost
        // with this connection.
        let mut unacknowledged = match self.ctx.carried_over.try_lock() {
            Ok(mut carried_over) => std::mem::take(&mut *carried_over),
            Err(_) => {
                tracing::debug!(peer = %self.peer(), "messages carried over are being sent on the connection being replaced");
                Vec::new()
            }
        };
        self.emit(PeerEvent::ConnectionReplaced {
            peer: self.peer(),
            reason,
        })
        .await;
        let taken = self.ctx.registry.take_unacknowledged(self.ctx.key).await;
        unacknowledged.extend(taken.messages);
        if taken.dropped > 0 {
            self.emit(PeerEvent::Error {
                peer: Some(self.peer()),
                message: format!(
                    "{} message(s) not acknowledged on channels the peer closed were not kept to send again",
                    taken.dropped
                ),
            })
            .await;
        }
        let _ = self.ctx.output.send(ConnectionOutput::StartedOver {
            key: self.ctx.key,
            reason,
            polite: self.negotiation.polite(),
            offer,
            unacknowledged,
        });
    }

    async fn on_signal(&mut self, signal: Signal) -> Result<()> {
        if let Signal::Offer { sdp, .. } | Signal::Answer { sdp } = &signal {
            if self.is_another_dtls_session(sdp).await {
                tracing::info!(peer = %self.peer(), "the peer started a new connection: ours is replaced");
                let offer = matches!(signal, Signal::Offer { .. }).then_some(signal);
                self.start_over(ReplaceReason::PeerStartedOver, offer).await;
                return Ok(());
            }
            // The remote kept its side: no need to wait any longer.
            if self.adopted_quiet_until.is_some() {
                self.adopted_quiet_until = Some(Instant::now());
            }
        }
        match signal {
            Signal::Offer { sdp, .. } => {
                let stable = self.is_stable().await;
                match self.negotiation.on_offer(stable) {
                    OfferDecision::Ignore => {
                        tracing::debug!(peer = %self.peer(), "glare: ignoring colliding offer");
                        Ok(())
                    }
                    OfferDecision::Accept { rollback_first } => {
                        if rollback_first {
                            tracing::debug!(peer = %self.peer(), "glare: rolling back our offer");
                            self.pc
                                .set_local_description(RTCSessionDescription::rollback(None)?)
                                .await?;
                        }
                        self.pc
                            .set_remote_description(RTCSessionDescription::offer(sdp)?)
                            .await?;
                        self.apply_queued().await;
                        let answer = self.pc.create_answer(None).await?;
                        self.pc.set_local_description(answer).await?;
                        if let Some(local) = self.pc.local_description().await {
                            self.signal(Signal::Answer { sdp: local.sdp });
                        }
                        Ok(())
                    }
                }
            }
            Signal::Answer { sdp } => {
                self.negotiation.on_answer();
                if self.pc.pending_local_description().await.is_none() {
                    tracing::debug!(peer = %self.peer(), "answer without a pending offer dropped");
                    return Ok(());
                }
                if self.answer_keeps_ice_credentials(&sdp).await {
                    if self.ctx.replaces == Some(ReplaceReason::IceRestartRefused)
                        && self.may_start_over()
                    {
                        // The connection before this one showed it: no need to wait and see.
                        tracing::info!(peer = %self.peer(), "the peer cannot restart ICE: a new connection replaces ours");
                        self.start_over(ReplaceReason::IceRestartRefused, None)
                            .await;
                        return Ok(());
                    }
                    tracing::debug!(peer = %self.peer(), "the peer kept its ICE credentials in its answer to our ICE restart");
                    self.restart_unconfirmed = Some(Instant::now());
                }
                self.pc
                    .set_remote_description(RTCSessionDescription::answer(sdp)?)
                    .await?;
                self.apply_queued().await;
                Ok(())
            }
            Signal::Candidate { candidate } => {
                if let CandidateDecision::Apply(candidate) =
                    self.negotiation.on_candidate(candidate)
                {
                    self.add_candidate(candidate).await;
                }
                Ok(())
            }
            Signal::EndOfCandidates { username_fragment } => {
                let end = IceCandidate {
                    candidate: String::new(),
                    sdp_mid: None,
                    sdp_m_line_index: None,
                    username_fragment,
                };
                if let CandidateDecision::Apply(end) = self.negotiation.on_candidate(end) {
                    self.add_candidate(end).await;
                }
                Ok(())
            }
        }
    }

    async fn apply_queued(&mut self) {
        for candidate in self.negotiation.remote_description_applied() {
            self.add_candidate(candidate).await;
        }
    }

    async fn add_candidate(&self, candidate: IceCandidate) {
        let init = RTCIceCandidateInit {
            candidate: candidate.candidate,
            sdp_mid: candidate.sdp_mid,
            sdp_mline_index: candidate.sdp_m_line_index,
            username_fragment: candidate.username_fragment,
            url: None,
        };
        if let Err(err) = self.pc.add_ice_candidate(init).await
            && !self.negotiation.ignoring_offer()
        {
            tracing::debug!(peer = %self.peer(), "remote candidate rejected: {err}");
        }
    }

    /// Whether an offer of ours would negotiate anything besides an ICE restart. This SDK adds
    /// no media, so that is only the data channels it opened: no local description yet, or one
    /// without an `m=application` section. `webrtc` (its `rtc` core, 0.21.1) also says
    /// negotiation is needed whenever the remote offered media that we rejected (`m=audio 0`,
    /// no codecs here): the rejected section's direction never matches its transceiver's, so
    /// every answer to every offer asked for another, about 20 offers a second to a browser
    /// that offered audio and video, until the signaling rate limit stopped them.
    async fn has_something_to_negotiate(&self) -> bool {
        match self.pc.current_local_description().await {
            None => true,
            Some(local) => {
                self.opened_channels
                    && !local
                        .sdp
                        .lines()
                        .any(|line| line.starts_with("m=application"))
            }
        }
    }

    async fn make_offer(&mut self, ice_restart: bool) -> Result<()> {
        if self.adopted_quiet_until.is_some() {
            self.offer_deferred = Some(self.offer_deferred.unwrap_or(false) || ice_restart);
            return Ok(());
        }
        if !self.is_stable().await {
            // An offer is already out (or one is being answered): the negotiation that
            // follows covers whatever changed.
            return Ok(());
        }
        self.negotiation.set_making_offer(true);
        let result = async {
            let offer = self.pc.create_offer(None).await?;
            self.pc.set_local_description(offer).await?;
            Ok::<_, crate::error::PeerError>(self.pc.local_description().await)
        }
        .await;
        self.negotiation.set_making_offer(false);
        if let Some(local) = result? {
            self.signal(Signal::Offer {
                sdp: local.sdp,
                ice_restart,
            });
            self.offer_out = Some((Instant::now(), ice_restart));
        }
        Ok(())
    }

    /// Sends our offer again when it has waited `after` for its answer and is still pending:
    /// a signal to a peer whose session ended meanwhile is lost (`unknown_peer`), and while an
    /// offer is out no new one is made (a later ICE restart would wait for ever).
    async fn resend_offer(&mut self, after: Duration) -> Result<()> {
        let Some((since, ice_restart)) = self.offer_out else {
            return Ok(());
        };
        if since.elapsed() < after {
            return Ok(());
        }
        match self.pc.pending_local_description().await {
            Some(offer) if offer.sdp_type == RTCSdpType::Offer => {
                tracing::info!(peer = %self.peer(), "offer unanswered: sending it again");
                self.signal(Signal::Offer {
                    sdp: offer.sdp,
                    ice_restart,
                });
                self.offer_out = Some((Instant::now(), ice_restart));
            }
            // Answered, or rolled back for the remote's offer.
            _ => self.offer_out = None,
        }
        Ok(())
    }

    async fn on_handler_event(&mut self, event: HandlerEvent) -> Result<()> {
        match event {
            HandlerEvent::NegotiationNeeded => {
                let restart = std::mem::take(&mut self.ice_restart_pending);
                if !restart && !self.has_something_to_negotiate().await {
                    tracing::debug!(peer = %self.peer(), "negotiation needed, with nothing to offer: ignored");
                    return Ok(());
                }
                self.make_offer(restart).await
            }
            HandlerEvent::Candidate(init) => {
                let local = self.pc.local_description().await;
                let candidate = local_candidate(init, local.as_ref().map(|desc| desc.sdp.as_str()));
                self.signal(Signal::Candidate { candidate });
                Ok(())
            }
            HandlerEvent::GatheringComplete => {
                let ufrag = self
                    .pc
                    .local_description()
                    .await
                    .and_then(|desc| ice_ufrag(&desc.sdp).map(str::to_owned));
                self.signal(Signal::EndOfCandidates {
                    username_fragment: ufrag,
                });
                Ok(())
            }
            HandlerEvent::IceState(state) => {
                tracing::debug!(peer = %self.peer(), %state, "ice connection state");
                if matches!(
                    state,
                    RTCIceConnectionState::Connected | RTCIceConnectionState::Completed
                ) {
                    self.restart_unconfirmed = None;
                }
                if state == RTCIceConnectionState::Failed {
                    self.restart_ice(IceRestartReason::Failed).await?;
                }
                Ok(())
            }
            HandlerEvent::State(state) => {
                self.state = state;
                self.was_connected |= state == RTCPeerConnectionState::Connected;
                let mapped = ConnectionState::from(state);
                self.emit(PeerEvent::ConnectionState {
                    peer: self.peer(),
                    state: mapped,
                })
                .await;
                if state == RTCPeerConnectionState::Failed {
                    self.check_turn();
                    self.restart_ice(IceRestartReason::Failed).await?;
                }
                Ok(())
            }
            HandlerEvent::DataChannel(dc) => {
                spawn_reader(self.ctx.channel_context(), dc);
                Ok(())
            }
        }
    }

    /// The connection failed: once per configuration, each TURN server in it is tried with
    /// its credentials (in a task of its own). When none gives an allocation, each is reported
    /// as [`PeerEvent::TurnUnusable`] saying why (`webrtc` only logs it); when one does, TURN
    /// is not why the connection failed, and nothing is said.
    fn check_turn(&mut self) {
        let Some(servers) = self.turn_unchecked.take() else {
            return;
        };
        let (peer, events) = (self.peer(), self.ctx.events.clone());
        tokio::spawn(async move {
            let mut unusable = Vec::new();
            for server in servers {
                let (Some(username), Some(credential)) = (&server.username, &server.credential)
                else {
                    continue;
                };
                for url in &server.urls {
                    match crate::turn_check::check(url, username, credential).await {
                        None => {}
                        Some(crate::turn_check::TurnOutcome::Allocated) => return,
                        Some(outcome) => unusable.push((url.clone(), outcome.to_string())),
                    }
                }
            }
            for (url, reason) in unusable {
                let peer = peer.clone();
                let _ = events
                    .send(PeerEvent::TurnUnusable { peer, url, reason })
                    .await;
            }
        });
    }

    /// Restarts ICE with a new offer (either side may; glare is resolved by the polite flag).
    /// After a failure at most once every few seconds. A relay move (or fresh credentials)
    /// always restarts: the
    /// configuration it brings is used only by a gathering that starts after it, so a
    /// failure restart of the last seconds (on the old relay) does not count.
    async fn restart_ice(&mut self, reason: IceRestartReason) -> Result<()> {
        if self.adopted_quiet_until.is_some() {
            // `webrtc` starts gathering at once: the path stalled until the restart's offer,
            // held back by the quiet, was answered.
            self.restart_deferred.get_or_insert(reason);
            return Ok(());
        }
        if reason == IceRestartReason::Failed
            && self
                .last_restart
                .is_some_and(|at| at.elapsed() < Duration::from_secs(3))
        {
            return Ok(());
        }
        self.last_restart = Some(Instant::now());
        tracing::info!(peer = %self.peer(), %reason, "restarting ICE");
        self.emit(PeerEvent::IceRestart {
            peer: self.peer(),
            reason,
        })
        .await;
        self.pc.restart_ice().await?;
        // The restart gathers with the configuration in effect.
        self.fresh_credentials_due = None;
        self.ice_restart_pending = true;
        self.make_offer(true).await
    }
}

/// When the TURN credentials of `servers` expire (Unix seconds): the `<expiry>` of the first
/// TURN server's REST username (`<expiry>:<room>:<peer>`), if it has one.
fn credentials_expiry(servers: &[IceServer]) -> Option<u64> {
    servers
        .iter()
        .filter(|server| server.urls.iter().any(|url| url.starts_with("turn")))
        .find_map(|server| server.username.as_deref()?.split(':').next()?.parse().ok())
}

/// The Unix time in seconds.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// When a relayed path moves onto the fresh credentials a resume brought (expiring at
/// `fresh`), from the ones it gathered with (expiring at `old`), at Unix time `now`: when the
/// server's `ice_servers` would have come for the old ones, at 80% of their lifetime (the
/// lifetime is what the fresh ones have left). Not at once: the other peer may still be away
/// (both lost signaling), and an ICE restart it cannot answer yet takes the path down until
/// it is back. Unknown expiries: at once.
fn fresh_credentials_due(old: Option<u64>, fresh: Option<u64>, now: u64) -> Instant {
    let (Some(old), Some(fresh)) = (old, fresh) else {
        return Instant::now();
    };
    let lifetime = fresh.saturating_sub(now);
    let due = old.saturating_sub(lifetime / 5);
    let now_instant = Instant::now();
    now_instant
        .checked_add(Duration::from_secs(due.saturating_sub(now)))
        .unwrap_or(now_instant)
}

/// Maps a local candidate from `webrtc` to the protocol's. `webrtc` labels every candidate
/// with `sdpMid: ""`, which browsers drop; all our m-lines are bundled on one transport, so a
/// candidate belongs to the first m-line of the local description: its mid and index 0.
fn local_candidate(init: RTCIceCandidateInit, local_sdp: Option<&str>) -> IceCandidate {
    let (sdp_mid, sdp_m_line_index) = match init.sdp_mid.filter(|mid| !mid.is_empty()) {
        Some(mid) => (Some(mid), init.sdp_mline_index),
        None => match local_sdp.and_then(first_mid) {
            Some(mid) => (Some(mid), Some(0)),
            None => (None, init.sdp_mline_index.or(Some(0))),
        },
    };
    IceCandidate {
        candidate: init.candidate,
        sdp_mid,
        sdp_m_line_index,
        username_fragment: init
            .username_fragment
            .filter(|ufrag| !ufrag.is_empty())
            .or_else(|| local_sdp.and_then(ice_ufrag).map(str::to_owned)),
    }
}

/// The mid of the first m-line of a session description.
fn first_mid(sdp: &str) -> Option<String> {
    sdp.lines()
        .skip_while(|line| !line.starts_with("m="))
        .find_map(|line| line.strip_prefix("a=mid:"))
        .map(|mid| mid.trim().to_owned())
        .filter(|mid| !mid.is_empty())
}

/// The value of the first `a=<name>:` line of `sdp`, trimmed.
fn sdp_attribute<'a>(sdp: &'a str, name: &str) -> Option<&'a str> {
    sdp.lines()
        .find_map(|line| {
            line.strip_prefix("a=")?
                .strip_prefix(name)?
                .strip_prefix(':')
        })
        .map(str::trim)
}

/// The first `a=ice-ufrag` value of `sdp`: it names the ICE session.
fn ice_ufrag(sdp: &str) -> Option<&str> {
    sdp_attribute(sdp, "ice-ufrag")
}

/// How long closing a connection waits for what was sent on it to be read
/// ([`ConnectionTask::close`]).
pub(crate) const CHANNEL_CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Whether a connection in `state` has no path to its peer (ICE lost it, or it was closed):
/// nothing sent either way arrives any more. Asked only of a peer that left the room, where
/// `Disconnected` counts: a peer that leaves in order first waits (while its path is up) for
/// us to close our side, so a path down when it is gone is a peer that died, not a blip.
fn path_is_down(state: RTCPeerConnectionState) -> bool {
    matches!(
        state,
        RTCPeerConnectionState::Disconnected
            | RTCPeerConnectionState::Failed
            | RTCPeerConnectionState::Closed
    )
}

/// How often closing checks whether the peer closed its side ([`ConnectionTask::close`]).
const PEER_CLOSED_POLL: Duration = Duration::from_millis(50);

/// How often a connection checks whether a `stats` report is due.
const STATS_TICK: Duration = Duration::from_secs(1);

/// How old a replacement that never connected gets before a peer that cannot restart ICE has
/// it replaced again ([`ConnectionTask::may_start_over`]).
const START_OVER_BACKOFF: Duration = Duration::from_secs(30);

/// How long ICE gets to be connected again after the peer answered our ICE restart keeping its
/// ICE credentials ([`ConnectionTask::restart_unconfirmed`]): well under 1 s with a browser on
/// loopback. Data from a peer that cannot restart ICE is lost meanwhile (the connections after
/// the first do not wait: [`ConnectionContext::replaces`]).
const RESTART_CONFIRM_WAIT: Duration = Duration::from_secs(2);

/// How long an adopted connection makes no offer ([`ConnectionTask::adopted_quiet_until`]):
/// longer than the 1.5 s a polite JS client waits before its first offer.
const ADOPTION_QUIET: Duration = Duration::from_secs(2);

/// The first `a=fingerprint` value of `sdp`: it names the certificate of the DTLS session.
fn dtls_fingerprint(sdp: &str) -> Option<&str> {
    sdp_attribute(sdp, "fingerprint")
}

/// The `stats` report of a connection to `peer` over `pair` (`docs/protocol.md`): types and
/// protocols the protocol does not know leave the pair out rather than send a bad report.
pub(crate) fn stats_report(
    peer: PeerId,
    pair: &SelectedPair,
    bytes_sent: u64,
    bytes_received: u64,
) -> ConnectionStats {
    let candidate = |t: &str| match t {
        "host" => Some(CandidateType::Host),
        "srflx" => Some(CandidateType::Srflx),
        "prflx" => Some(CandidateType::Prflx),
        "relay" => Some(CandidateType::Relay),
        _ => None,
    };
    let protocol = match pair.protocol.as_str() {
        "udp" => Some(IceProtocol::Udp),
        "tcp" => Some(IceProtocol::Tcp),
        _ => None,
    };
    let wire = match (
        candidate(&pair.local_type),
        candidate(&pair.remote_type),
        protocol,
    ) {
        (Some(local), Some(remote), Some(protocol)) => {
            let relay_url = pair
                .relay_url
                .clone()
                .filter(|url| local == CandidateType::Relay && url.len() <= MAX_STATS_RELAY_URL);
            let relay_protocol = relay_url.as_deref().map(|url| {
                if url.starts_with("turns:") {
                    RelayProtocol::Tls
                } else if url.contains("transport=tcp") {
                    RelayProtocol::Tcp
                } else {
                    RelayProtocol::Udp
                }
            });
            Some(CandidatePair {
                local,
                remote,
                protocol,
                relay_protocol,
                relay_url,
            })
        }
        _ => None,
    };
    ConnectionStats {
        peer,
        pair: wire,
        // Rounded to the nearest millisecond, as the JS client does (a 0.6 ms loopback RTT is
        // 1, not 0).
        rtt_ms: pair.rtt.map(|rtt| {
            let millis = (rtt.as_secs_f64() * 1000.0).round();
            if millis >= f64::from(MAX_STATS_RTT_MS) {
                MAX_STATS_RTT_MS
            } else {
                millis as u32
            }
        }),
        bytes_sent,
        bytes_received,
    }
}

/// The selected candidate pair of a connection and its bytes sent and received, from its stats.
pub(crate) async fn selected_pair_stats(
    pc: &dyn PeerConnection,
) -> Option<(SelectedPair, u64, u64)> {
    let report = pc.get_stats(Instant::now(), StatsSelector::None).await;
    let by_transport = report
        .transport()
        .and_then(|transport| report.get(&transport.selected_candidate_pair_id))
        .and_then(|entry| match entry {
            RTCStatsReportEntry::IceCandidatePair(pair) => Some(pair),
            _ => None,
        });
    // Fall back to the nominated pair that carried the most traffic.
    let pair = by_transport
        .or_else(|| {
            report
                .candidate_pairs()
                .filter(|pair| pair.nominated)
                .max_by_key(|pair| pair.bytes_received + pair.bytes_sent)
        })
        .or_else(|| {
            report
                .candidate_pairs()
                .filter(|pair| pair.bytes_received > 0)
                .max_by_key(|pair| pair.bytes_received + pair.bytes_sent)
        });
    let Some(pair) = pair else {
        tracing::debug!(entries = ?report.ids().collect::<Vec<_>>(), "no selected candidate pair in stats");
        return None;
    };
    // Pairs name their candidates by candidate id; the report keys candidate entries with a
    // type prefix (`RTCLocalIceCandidate_<id>`), so match on the suffix.
    let local = report.iter().find_map(|entry| match entry {
        RTCStatsReportEntry::LocalCandidate(c)
            if entry.id().ends_with(&pair.local_candidate_id) =>
        {
            Some(c)
        }
        _ => None,
    });
    // A peer-reflexive remote candidate (learnt from an incoming check before the trickled
    // candidate arrived) has no stats entry of its own.
    let remote = report.iter().find_map(|entry| match entry {
        RTCStatsReportEntry::RemoteCandidate(c)
            if entry.id().ends_with(&pair.remote_candidate_id) =>
        {
            Some(c)
        }
        _ => None,
    });
    tracing::debug!(
        local = %pair.local_candidate_id,
        remote = %pair.remote_candidate_id,
        found_local = local.is_some(),
        found_remote = remote.is_some(),
        "selected pair"
    );
    let local = local?;
    let selected = SelectedPair {
        local_type: local.candidate_type.to_string(),
        remote_type: remote.map_or_else(|| "prflx".to_owned(), |c| c.candidate_type.to_string()),
        local_address: format!(
            "{}:{}",
            local.address.clone().unwrap_or_default(),
            local.port
        ),
        remote_address: remote.map_or_else(String::new, |c| {
            format!("{}:{}", c.address.clone().unwrap_or_default(), c.port)
        }),
        protocol: local.protocol.clone(),
        rtt: (pair.current_round_trip_time > 0.0)
            .then(|| Duration::from_secs_f64(pair.current_round_trip_time)),
        relay_url: (local.candidate_type == RTCIceCandidateType::Relay && !local.url.is_empty())
            .then(|| local.url.clone()),
    };
    Some((selected, pair.bytes_sent, pair.bytes_received))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_credentials_of_a_resume_are_taken_when_the_old_ones_would_be_refreshed() {
        let turn = |username: &str| IceServer {
            urls: vec!["turn:relay.example:3478".into()],
            username: Some(username.into()),
            credential: Some("x".into()),
        };
        let stun = IceServer {
            urls: vec!["stun:relay.example:3478".into()],
            username: None,
            credential: None,
        };
        assert_eq!(
            credentials_expiry(&[stun.clone(), turn("1700000600:room:abc")]),
            Some(1_700_000_600)
        );
        assert_eq!(credentials_expiry(&[stun, turn("alice")]), None);

        // 10-minute credentials: the old ones, got at 1_000, expire at 1_600; a resume at
        // 1_100 brings ones that expire at 1_700. The push for the old ones was due at 1_480.
        let now = Instant::now();
        let due = fresh_credentials_due(Some(1_600), Some(1_700), 1_100);
        let wait = due.duration_since(now);
        assert!(
            wait >= Duration::from_secs(379) && wait <= Duration::from_secs(381),
            "{wait:?}"
        );
        // Past it already (a long absence), or not known: at once.
        let late = fresh_credentials_due(Some(1_600), Some(2_200), 1_600);
        assert!(late <= Instant::now());
        assert!(fresh_credentials_due(None, Some(1_700), 1_100) <= Instant::now());
    }

    #[test]
    fn stats_reports_carry_the_pair_in_the_wire_vocabulary() {
        let pair = SelectedPair {
            local_type: "relay".into(),
            remote_type: "host".into(),
            local_address: "127.0.0.1:50000".into(),
            remote_address: "127.0.0.1:40000".into(),
            protocol: "udp".into(),
            rtt: Some(Duration::from_micros(2500)),
            relay_url: Some("turn:127.0.0.1:3478?transport=tcp".into()),
        };
        let report = stats_report("abc".into(), &pair, 10, 20);
        let wire = report.pair.clone().expect("a known pair");
        assert_eq!(
            (wire.local, wire.remote, wire.protocol, wire.relay_protocol),
            (
                CandidateType::Relay,
                CandidateType::Host,
                IceProtocol::Udp,
                Some(RelayProtocol::Tcp)
            )
        );
        assert_eq!((report.rtt_ms, report.bytes_sent), (Some(3), 10));
        assert_eq!(report.check(), Ok(()));
        // A loopback RTT under a millisecond rounds to 1, not down to 0.
        let fast = SelectedPair {
            rtt: Some(Duration::from_micros(600)),
            ..pair.clone()
        };
        assert_eq!(stats_report("abc".into(), &fast, 0, 0).rtt_ms, Some(1));
        let odd = SelectedPair {
            local_type: "unknown".into(),
            ..pair
        };
        assert_eq!(stats_report("abc".into(), &odd, 0, 0).pair, None);
    }

    #[test]
    fn ufrag_is_read_from_the_sdp() {
        let sdp = "v=0\r\na=group:BUNDLE 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=ice-ufrag:AbCd\r\na=ice-pwd:x\r\n";
        assert_eq!(ice_ufrag(sdp), Some("AbCd"));
        assert_eq!(ice_ufrag("v=0\r\n"), None);
    }

    #[test]
    fn local_candidates_carry_the_mid_of_their_m_line() {
        let sdp = "v=0\r\na=group:BUNDLE 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=ice-ufrag:AbCd\r\na=mid:0\r\n";
        // What webrtc 0.21.1 hands out: an empty mid.
        let init = RTCIceCandidateInit {
            candidate: "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host".into(),
            sdp_mid: Some(String::new()),
            sdp_mline_index: Some(0),
            username_fragment: None,
            url: None,
        };
        let candidate = local_candidate(init.clone(), Some(sdp));
        assert_eq!(candidate.sdp_mid.as_deref(), Some("0"));
        assert_eq!(candidate.sdp_m_line_index, Some(0));
        assert_eq!(candidate.username_fragment.as_deref(), Some("AbCd"));
        assert_eq!(candidate.candidate, init.candidate);
        // On the wire the mid is a non-empty string.
        let json = serde_json::to_value(&candidate).unwrap_or_default();
        assert_eq!(json["sdpMid"], "0");
        // A real mid is kept.
        let named = RTCIceCandidateInit {
            sdp_mid: Some("data".into()),
            ..init.clone()
        };
        assert_eq!(
            local_candidate(named, Some(sdp)).sdp_mid.as_deref(),
            Some("data")
        );
        // No description yet: no made-up mid, but never an empty one.
        assert_eq!(local_candidate(init, None).sdp_mid, None);
    }

    /// An ICE server entry of a welcome: its URLs and, for TURN, (username, credential).
    fn ice_server(urls: &[&str], credentials: Option<(&str, &str)>) -> IceServer {
        IceServer {
            urls: urls.iter().map(|&url| url.to_owned()).collect(),
            username: credentials.map(|(username, _)| username.to_owned()),
            credential: credentials.map(|(_, credential)| credential.to_owned()),
        }
    }

    #[test]
    fn no_turn_keeps_only_stun_urls() {
        let servers = vec![
            ice_server(
                &["stun:127.0.0.1:3478", "turn:127.0.0.1:3478?transport=udp"],
                Some(("u", "c")),
            ),
            ice_server(&["turns:127.0.0.1:5349"], None),
        ];
        let direct = usable_servers(&servers, true);
        assert_eq!(direct.len(), 1);
        assert_eq!(direct[0].urls, vec!["stun:127.0.0.1:3478".to_owned()]);
        assert_eq!(usable_servers(&servers, false), servers);
    }

    #[test]
    fn turn_credentials_map_to_webrtc_ice_servers() {
        let servers = vec![
            ice_server(
                &["turn:127.0.0.1:3478?transport=udp"],
                Some(("1700000000:p1", "secret")),
            ),
            ice_server(&["stun:127.0.0.1:3478"], None),
        ];
        let mapped = rtc_ice_servers(&servers);
        assert_eq!(mapped[0].username, "1700000000:p1");
        assert_eq!(mapped[0].credential, "secret");
        assert_eq!(mapped[1].username, "");
    }
}
