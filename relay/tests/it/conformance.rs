//! The conformance scenarios of `relay-proto` (`relay/proto/tests/it/conformance.rs`, included
//! by path) through the real relay on loopback: `Relay::start` in-process with 2 workers, real
//! UDP client and peer sockets. The sans-IO run of the same scenarios is in relay-proto.

#[path = "../../proto/tests/it/conformance.rs"]
mod scenarios;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use relay::{Config, Relay, RelayHandle};
use scenarios::{CLIENTS, PEERS, REALM, USERS, Wire};

/// How long a socket waits for a datagram it expects.
const RECV_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a socket waits to conclude that nothing comes.
const QUIET: Duration = Duration::from_millis(300);

/// A relay and the client and peer sockets of a scenario.
struct LoopbackWire {
    handle: Option<RelayHandle>,
    server: SocketAddr,
    clients: Vec<UdpSocket>,
    peers: Vec<UdpSocket>,
}

impl LoopbackWire {
    fn start() -> Self {
        let mut args: Vec<String> = [
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "none",
            "--no-tcp",
            "--workers",
            "2",
            "--realm",
            REALM,
            "--allow-loopback-peers",
            // All sockets share 127.0.0.1: no per-IP challenge rate, no amplification credit.
            "--unauth-rate",
            "0",
            "--unauth-bytes",
            "0",
        ]
        .map(str::to_owned)
        .to_vec();
        for (user, password) in USERS {
            args.extend(["--user".to_owned(), format!("{user}:{password}")]);
        }
        let handle = Relay::start(Config::from_args(args).unwrap()).expect("relay starts");
        let server = handle.addrs().udp[0];
        let bind = |ip: [u8; 4]| {
            let s = UdpSocket::bind(SocketAddr::from((ip, 0))).unwrap();
            s.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
            s
        };
        Self {
            handle: Some(handle),
            server,
            clients: (0..CLIENTS).map(|_| bind([127, 0, 0, 1])).collect(),
            // Permissions are per IP: each peer on its own loopback IP.
            peers: (0..PEERS).map(|i| bind([127, 0, 0, 1 + i as u8])).collect(),
        }
    }
}

impl Drop for LoopbackWire {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.shutdown_blocking();
        }
    }
}

fn recv(socket: &UdpSocket) -> Option<(SocketAddr, Vec<u8>)> {
    let mut buf = vec![0u8; 65_536];
    let (n, from) = socket.recv_from(&mut buf).ok()?;
    buf.truncate(n);
    Some((from, buf))
}

impl Wire for LoopbackWire {
    fn client_addr(&self, client: usize) -> SocketAddr {
        self.clients[client].local_addr().unwrap()
    }

    fn peer_addr(&self, peer: usize) -> SocketAddr {
        self.peers[peer].local_addr().unwrap()
    }

    fn request(&mut self, client: usize, packet: &[u8]) -> Vec<u8> {
        self.send(client, packet);
        let (from, response) = recv(&self.clients[client]).expect("a response");
        assert_eq!(from, self.server);
        response
    }

    fn send(&mut self, client: usize, packet: &[u8]) {
        self.clients[client].send_to(packet, self.server).unwrap();
    }

    fn client_recv(&mut self, client: usize) -> Option<Vec<u8>> {
        recv(&self.clients[client]).map(|(_, data)| data)
    }

    fn peer_recv(&mut self, peer: usize) -> Option<(SocketAddr, Vec<u8>)> {
        recv(&self.peers[peer])
    }

    fn peer_received_nothing(&mut self, peer: usize) -> bool {
        let socket = &self.peers[peer];
        socket.set_read_timeout(Some(QUIET)).unwrap();
        let nothing = recv(socket).is_none();
        socket.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
        nothing
    }

    fn peer_send(&mut self, peer: usize, to: SocketAddr, data: &[u8]) {
        self.peers[peer].send_to(data, to).unwrap();
    }
}

scenarios::conformance_tests!(scenarios, LoopbackWire::start());
