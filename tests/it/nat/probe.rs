//! Proves the namespace topology behaves like the NATs it claims to be, with plain sockets
//! opened inside the namespaces (no project binaries): endpoint-independent vs symmetric
//! mapping seen from two server addresses, UDP hole punching between the two clients, and a
//! router that lets only TCP out.

use std::collections::HashSet;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use e2e::netns::{
    CLIENT_A_IP, CLIENT_B_IP, Host, NatKind, ROUTER_A_WAN, ROUTER_B_WAN, RouterSpec, SERVER_ALT_IP,
    SERVER_IP, Topology,
};

use super::topology_or_skip;

/// How long hole punching may take before it counts as failed. On a working path the first
/// packet after both sides have sent once gets through (a few ms here).
const PUNCH_WINDOW: Duration = Duration::from_secs(2);

#[test]
fn cone_nat_keeps_one_mapping_and_lets_hole_punching_through() {
    nat_behaves_as_its_kind(RouterSpec::cone(), Host::ClientA, CLIENT_A_IP, ROUTER_A_WAN);
}

#[test]
fn symmetric_nat_maps_per_destination_and_defeats_hole_punching() {
    nat_behaves_as_its_kind(
        RouterSpec::symmetric(),
        Host::ClientB,
        CLIENT_B_IP,
        ROUTER_B_WAN,
    );
}

/// Both routers of `spec`. The client `host` (at `ip`, behind the router on `wan`) is seen on
/// `wan` by three destinations: from one public address behind an endpoint-independent NAT,
/// from more than one behind a symmetric NAT. The two clients are seen on their routers' WAN
/// addresses, and hole punching between them goes through both ways behind endpoint-independent
/// NATs and neither way behind symmetric ones.
fn nat_behaves_as_its_kind(spec: RouterSpec, host: Host, ip: Ipv4Addr, wan: Ipv4Addr) {
    let Some(topo) = topology_or_skip(spec, spec) else {
        return;
    };
    let cone = match spec.nat {
        NatKind::EndpointIndependent => true,
        NatKind::Symmetric => false,
    };
    let mappings = mappings_towards_three_destinations(&topo, host, ip);
    let distinct: HashSet<_> = mappings.iter().collect();
    assert_eq!(
        distinct.len() == 1,
        cone,
        "an endpoint-independent NAT must reuse one mapping for every destination, a symmetric \
         NAT map each one separately ({:?} here): {mappings:?}",
        spec.nat
    );
    assert!(
        mappings.iter().all(|m| m.ip() == IpAddr::V4(wan)),
        "{mappings:?}"
    );

    let punch = hole_punch(&topo);
    assert_eq!(punch.a_public.ip(), IpAddr::V4(ROUTER_A_WAN), "{punch:?}");
    assert_eq!(punch.b_public.ip(), IpAddr::V4(ROUTER_B_WAN), "{punch:?}");
    assert_eq!(
        (punch.a_heard_b, punch.b_heard_a),
        (cone, cone),
        "hole punching must work both ways through two endpoint-independent NATs and fail \
         through two symmetric ones ({:?} here): {punch:?}\n{}",
        spec.nat,
        topo.diagnostics()
    );
}

#[test]
fn udp_blocking_router_lets_only_tcp_out() {
    let Some(topo) = topology_or_skip(RouterSpec::cone(), RouterSpec::cone().blocking_udp()) else {
        return;
    };
    let (server, server_addr) = udp_server(&topo, Duration::from_millis(500));

    // Control: the same probe from the unblocked side arrives.
    let from_a = udp_client(&topo, Host::ClientA, CLIENT_A_IP);
    assert_eq!(
        observe(&from_a, &server, server_addr).map(|a| a.ip()),
        Some(IpAddr::V4(ROUTER_A_WAN))
    );
    let from_b = udp_client(&topo, Host::ClientB, CLIENT_B_IP);
    assert_eq!(
        observe(&from_b, &server, server_addr),
        None,
        "UDP from behind the blocking router must not reach the server"
    );

    let listener = topo
        .in_netns(Host::Server, || TcpListener::bind((SERVER_IP, 0)))
        .expect("listener");
    let target = listener.local_addr().expect("addr");
    let _stream = topo
        .in_netns(Host::ClientB, || {
            TcpStream::connect_timeout(&target, Duration::from_secs(3))
        })
        .expect("TCP from behind the UDP-blocking router must connect");
    let (_conn, seen) = listener.accept().expect("accept");
    assert_eq!(seen.ip(), IpAddr::V4(ROUTER_B_WAN), "TCP is NATed too");
}

/// A UDP socket on `SERVER_IP:0` inside the server's namespace, reading with `timeout`, and
/// its address.
fn udp_server(topo: &Topology, timeout: Duration) -> (UdpSocket, SocketAddr) {
    let sock = topo
        .in_netns(Host::Server, || UdpSocket::bind((SERVER_IP, 0)))
        .expect("server socket");
    sock.set_read_timeout(Some(timeout)).expect("timeout");
    let addr = sock.local_addr().expect("addr");
    (sock, addr)
}

/// A UDP socket on `ip:0` inside `host`.
fn udp_client(topo: &Topology, host: Host, ip: Ipv4Addr) -> UdpSocket {
    let sock = topo
        .in_netns(host, || UdpSocket::bind((ip, 0)))
        .expect("client socket");
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    sock
}

/// The public address `client` is seen from, as observed by the server sockets at
/// 203.0.113.10:p, 203.0.113.11:p (other address, same port) and 203.0.113.10:q (same
/// address, other port), in that order; all sent from one client socket.
fn mappings_towards_three_destinations(
    topo: &Topology,
    host: Host,
    ip: Ipv4Addr,
) -> Vec<SocketAddr> {
    let servers = topo
        .in_netns(Host::Server, || -> std::io::Result<Vec<UdpSocket>> {
            let first = UdpSocket::bind((SERVER_IP, 0))?;
            let port = first.local_addr()?.port();
            let alt = UdpSocket::bind((SERVER_ALT_IP, port))?;
            let other_port = UdpSocket::bind((SERVER_IP, 0))?;
            Ok(vec![first, alt, other_port])
        })
        .expect("server sockets");
    let client = udp_client(topo, host, ip);
    servers
        .iter()
        .map(|server| {
            server
                .set_read_timeout(Some(Duration::from_secs(1)))
                .expect("timeout");
            let to = server.local_addr().expect("addr");
            observe(&client, server, to)
                .unwrap_or_else(|| panic!("probe to {to} never arrived\n{}", topo.diagnostics()))
        })
        .collect()
}

/// Sends one probe from `client` to `server` (at `to`, its address) and returns the source
/// address the server saw, or `None` if nothing arrived within the server's read timeout.
fn observe(client: &UdpSocket, server: &UdpSocket, to: SocketAddr) -> Option<SocketAddr> {
    client.send_to(b"probe", to).expect("send probe");
    let mut buf = [0u8; 64];
    match server.recv_from(&mut buf) {
        Ok((_, from)) => Some(from),
        Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
        Err(err) => panic!("server recv: {err}"),
    }
}

#[derive(Debug)]
struct Punch {
    a_public: SocketAddr,
    b_public: SocketAddr,
    a_heard_b: bool,
    b_heard_a: bool,
}

/// Classic UDP hole punching: each client learns its public address from the server, then
/// both send to the other's public address every 50 ms for [`PUNCH_WINDOW`].
fn hole_punch(topo: &Topology) -> Punch {
    let (server, server_addr) = udp_server(topo, Duration::from_secs(1));
    let a = udp_client(topo, Host::ClientA, CLIENT_A_IP);
    let b = udp_client(topo, Host::ClientB, CLIENT_B_IP);
    let a_public = observe(&a, &server, server_addr).expect("A reaches the server");
    let b_public = observe(&b, &server, server_addr).expect("B reaches the server");

    let mut punch = Punch {
        a_public,
        b_public,
        a_heard_b: false,
        b_heard_a: false,
    };
    let deadline = Instant::now() + PUNCH_WINDOW;
    while Instant::now() < deadline && !(punch.a_heard_b && punch.b_heard_a) {
        // Keep sending even after hearing the other side: it may still be waiting for us.
        let _ = a.send_to(b"from-a", b_public);
        let _ = b.send_to(b"from-b", a_public);
        punch.a_heard_b |= received(&a, b"from-b");
        punch.b_heard_a |= received(&b, b"from-a");
    }
    punch
}

/// Whether `sock` receives `want` within its read timeout.
fn received(sock: &UdpSocket, want: &[u8]) -> bool {
    let mut buf = [0u8; 64];
    matches!(sock.recv_from(&mut buf), Ok((n, _)) if &buf[..n] == want)
}

#[test]
fn topology_is_torn_down_on_drop() {
    let Some(topo) = topology_or_skip(RouterSpec::cone(), RouterSpec::symmetric()) else {
        return;
    };
    let names: Vec<String> = [Host::Server, Host::RouterA, Host::ClientB]
        .into_iter()
        .map(|h| topo.ns(h))
        .collect();
    // A process left running inside a namespace must not keep it alive.
    let mut sleeper = topo
        .command(Host::ClientA, "sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep");
    let client_ns = topo.ns(Host::ClientA);
    drop(topo);
    let status = sleeper.wait().expect("wait");
    assert!(!status.success(), "the process was killed: {status}");
    for name in names.iter().chain([&client_ns]) {
        assert!(
            !std::path::Path::new("/run/netns").join(name).exists(),
            "{name} still exists"
        );
    }
}
