//! The conformance scenarios (`conformance.rs`) on the sans-IO `Server`: a `Wire` that turns
//! every output into what the real I/O layer would do (bind a relay address, deliver a
//! datagram), with a fake clock that never moves.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use relay_proto::{
    ClientAction, FiveTuple, HEADROOM, Output, PeerAction, RelayHandle, Server, TAILROOM, Transport,
};

use crate::conformance::{self, CLIENTS, PEERS, REALM, USERS, Wire};
use crate::support::config;

/// The server, the addresses of the fake sockets and what each has received.
struct SansIoWire {
    server: Server,
    now: Instant,
    clients: Vec<FiveTuple>,
    peers: Vec<SocketAddr>,
    client_inbox: Vec<VecDeque<Vec<u8>>>,
    peer_inbox: Vec<VecDeque<(SocketAddr, Vec<u8>)>>,
    /// The bound relay sockets, at their handle's index (as the I/O layer keeps them).
    relays: Vec<Option<(RelayHandle, SocketAddr)>>,
    next_relay_port: u16,
}

impl SansIoWire {
    fn new() -> Self {
        let now = Instant::now();
        let mut cfg = config(now);
        cfg.realm = REALM.to_owned();
        cfg.auth = Default::default();
        for (user, password) in USERS {
            cfg.auth.add_user(user, password);
        }
        cfg.policy.allow_loopback_peers = true;
        let clients = (0..CLIENTS)
            .map(|i| FiveTuple {
                client: SocketAddr::from(([127, 0, 0, 1], 40_000 + i as u16)),
                server: "127.0.0.1:3478".parse().unwrap(),
                transport: Transport::Udp,
            })
            .collect();
        let peers = (0..PEERS)
            .map(|i| SocketAddr::from(([127, 0, 0, 1 + i as u8], 45_000)))
            .collect();
        Self {
            server: Server::new(cfg),
            now,
            clients,
            peers,
            client_inbox: vec![VecDeque::new(); CLIENTS],
            peer_inbox: vec![VecDeque::new(); PEERS],
            relays: Vec::new(),
            next_relay_port: 50_000,
        }
    }

    /// Acts on every output as the I/O layer does: binds relay addresses, delivers
    /// transmits to the client inboxes.
    fn drain_outputs(&mut self) {
        while let Some(output) = self.server.poll_output() {
            match output {
                Output::Transmit { to, data } => self.deliver_to_client(to, data),
                Output::BindRelay {
                    relay,
                    family: _,
                    five_tuple: _,
                    even_port: _,
                    // Ports go up by two: the next one of each is always free.
                    reserve_next: _,
                    address,
                } => {
                    self.next_relay_port += 2;
                    let address = address.unwrap_or_else(|| {
                        SocketAddr::from(([127, 0, 0, 1], self.next_relay_port))
                    });
                    if self.relays.len() <= relay.index() {
                        self.relays.resize(relay.index() + 1, None);
                    }
                    assert!(self.relays[relay.index()].is_none(), "index in use");
                    self.relays[relay.index()] = Some((relay, address));
                    self.server.handle_relay_bound(self.now, relay, Ok(address));
                }
                Output::ReleaseRelay { relay } => {
                    let slot = self.relays.get_mut(relay.index()).expect("a bound relay");
                    assert_eq!(slot.map(|(h, _)| h), Some(relay), "a live handle");
                    *slot = None;
                }
            }
        }
    }

    fn deliver_to_client(&mut self, to: FiveTuple, data: Vec<u8>) {
        let index = self
            .clients
            .iter()
            .position(|c| *c == to)
            .expect("a known client");
        self.client_inbox[index].push_back(data);
    }
}

impl Wire for SansIoWire {
    fn client_addr(&self, client: usize) -> SocketAddr {
        self.clients[client].client
    }

    fn peer_addr(&self, peer: usize) -> SocketAddr {
        self.peers[peer]
    }

    fn request(&mut self, client: usize, packet: &[u8]) -> Vec<u8> {
        self.send(client, packet);
        let response = self.client_inbox[client].pop_front().expect("a response");
        assert!(self.client_inbox[client].is_empty(), "exactly one response");
        response
    }

    fn send(&mut self, client: usize, packet: &[u8]) {
        let from = self.clients[client];
        match self.server.handle_client_packet(self.now, from, packet) {
            ClientAction::Forward {
                relay,
                peer,
                payload,
            } => {
                let (_, source) = self.relays[relay.index()].expect("a bound relay");
                if let Some(index) = self.peers.iter().position(|p| *p == peer) {
                    self.peer_inbox[index].push_back((source, packet[payload].to_vec()));
                }
            }
            ClientAction::Queued | ClientAction::Drop => {}
        }
        self.drain_outputs();
    }

    fn client_recv(&mut self, client: usize) -> Option<Vec<u8>> {
        self.client_inbox[client].pop_front()
    }

    fn peer_recv(&mut self, peer: usize) -> Option<(SocketAddr, Vec<u8>)> {
        self.peer_inbox[peer].pop_front()
    }

    fn peer_received_nothing(&mut self, peer: usize) -> bool {
        self.peer_inbox[peer].is_empty()
    }

    fn peer_send(&mut self, peer: usize, to: SocketAddr, data: &[u8]) {
        let mut buf = vec![0u8; HEADROOM + data.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + data.len()].copy_from_slice(data);
        let from = self.peers[peer];
        // The socket bound to `to` receives it: the wire finds it by address, as the network
        // does; the core gets its handle.
        let Some((relay, _)) = self.relays.iter().flatten().find(|(_, a)| *a == to) else {
            return;
        };
        let relay = *relay;
        match self
            .server
            .handle_peer_packet(self.now, relay, from, &mut buf, data.len())
        {
            PeerAction::ToClient { to, range } => self.deliver_to_client(to, buf[range].to_vec()),
            PeerAction::Queued | PeerAction::Drop => {}
        }
        self.drain_outputs();
    }
}

conformance::conformance_tests!(conformance, SansIoWire::new());
