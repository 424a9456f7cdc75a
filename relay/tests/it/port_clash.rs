//! A port another socket holds fails start-up, even when that socket has SO_REUSEPORT (which
//! would otherwise let the relay join its group and share, or lose, the traffic): UDP, TCP and
//! TLS listeners, each with a non-zero exit and an error naming the port.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::support::{RelayProcess, base_args, run_relay_to_exit};

/// A socket of ours on 127.0.0.1 with SO_REUSEPORT, as another process of the same user could
/// hold it (TCP ones listen).
fn reuseport_holder(ty: Type, port: u16) -> (Socket, SocketAddr) {
    let protocol = if ty == Type::DGRAM {
        Protocol::UDP
    } else {
        Protocol::TCP
    };
    let socket = Socket::new(Domain::IPV4, ty, Some(protocol)).unwrap();
    socket.set_reuse_port(true).unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    socket.bind(&addr.into()).unwrap();
    if ty == Type::STREAM {
        socket.listen(16).unwrap();
    }
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    (socket, addr)
}

/// A TCP port held with SO_REUSEPORT whose UDP twin is free (at most 20 tries).
fn tcp_holder_with_free_udp_twin() -> (Socket, SocketAddr) {
    for _ in 0..20 {
        let (holder, addr) = reuseport_holder(Type::STREAM, 0);
        if UdpSocket::bind(addr).is_ok() {
            return (holder, addr);
        }
    }
    panic!("no TCP port with a free UDP twin in 20 tries");
}

/// Flags for a relay on free loopback ports serving TURNS (self-signed) on `tls_listen`.
fn tls_listening_on(tls_listen: &str) -> [&str; 7] {
    [
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--tls-self-signed",
        "--tls-listen",
        tls_listen,
    ]
}

/// Runs the relay with `args`; it must exit non-zero with `expected` in its error output.
fn assert_start_up_fails(args: &[&str], expected: &str) {
    let (status, stderr) = run_relay_to_exit(args, Duration::from_secs(20));
    let status = status.unwrap_or_else(|| panic!("the relay kept running; stderr:\n{stderr}"));
    assert!(!status.success(), "exit status {status}; stderr:\n{stderr}");
    assert!(
        stderr.contains(expected) && stderr.contains("already in use"),
        "expected `{expected}` ... `already in use` in:\n{stderr}"
    );
}

#[test]
fn a_udp_port_held_with_so_reuseport_fails_start_up() {
    let (holder, addr) = reuseport_holder(Type::DGRAM, 0);
    let listen = addr.to_string();
    // UDP only (`--no-tcp`): the TCP port of the same number is not ours to hold, and another
    // test may take it at any time.
    let udp_only = [&base_args(&listen, "2")[..], &["--no-tcp"]].concat();
    assert_start_up_fails(
        &udp_only,
        &format!("cannot bind udp {addr} (choose another with --listen)"),
    );
    // The holder still gets its traffic (nobody joined its group).
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    probe.send_to(b"still mine", addr).unwrap();
    let holder: UdpSocket = holder.into();
    holder
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 32];
    let (n, _) = holder.recv_from(&mut buf).expect("the holder receives");
    assert_eq!(&buf[..n], b"still mine");
    // Once it is gone, the relay starts on that port.
    drop(holder);
    let relay = RelayProcess::start_raw(&udp_only);
    assert_eq!(relay.udp, addr);
}

#[test]
fn a_tcp_port_held_with_so_reuseport_fails_start_up() {
    let (_holder, addr) = tcp_holder_with_free_udp_twin();
    assert_start_up_fails(
        &base_args(&addr.to_string(), "2"),
        &format!("cannot bind tcp {addr}"),
    );
}

#[test]
fn a_tls_port_held_with_so_reuseport_fails_start_up() {
    let (_holder, addr) = reuseport_holder(Type::STREAM, 0);
    assert_start_up_fails(
        &tls_listening_on(&addr.to_string()),
        &format!("cannot bind tls {addr} (choose another with --tls-listen)"),
    );
}

#[test]
fn a_port_held_by_a_plain_socket_fails_start_up_too() {
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap();
    assert_start_up_fails(
        &tls_listening_on(&addr.to_string()),
        &format!("cannot bind tls {addr}"),
    );
}
