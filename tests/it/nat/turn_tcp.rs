//! TURN over TCP and over TLS through a firewall that lets no UDP out, against our relay, driven by coturn's
//! reference client `turnutils_uclient` (Debian package `coturn`): the relay half of the
//! "UDP blocked" scenario, independent of the peer SDK.

use std::net::UdpSocket;
use std::time::Duration;

use e2e::netns::{Host, RouterSpec, SERVER_ALT_IP, SERVER_IP, Topology};
use e2e::wait_until;

use super::process::NsProcess;
use super::server::{IceServers, PublicServer};
use super::topology_or_skip;

/// Messages the client sends through its allocation to the echo peer (and expects back).
const MESSAGES: usize = 20;

#[test]
fn udp_blocked_client_relays_over_tcp_and_tls_through_our_relay() {
    let Some(topo) = topology_or_skip(RouterSpec::cone(), RouterSpec::cone().blocking_udp()) else {
        return;
    };
    let server = PublicServer::start(&topo, IceServers::StunAndTurn);

    // A UDP echo peer on the public host's second address, on a port the kernel picked.
    let echo_port = topo
        .in_netns(Host::Server, || {
            UdpSocket::bind((SERVER_ALT_IP, 0))?.local_addr()
        })
        .expect("pick a port")
        .port();
    let echo_args = [
        "-L",
        &SERVER_ALT_IP.to_string(),
        "-p",
        &echo_port.to_string(),
    ]
    .map(String::from);
    let _echo = NsProcess::spawn_program(&topo, Host::Server, "turnutils_peer", &echo_args);

    for (transport, flags, port) in [
        ("tcp", &["-t"][..], server.turn_tcp.port()),
        ("tls", &["-t", "-S"][..], server.turn_tls.port()),
    ] {
        let (received, client_logs) = relay_round_trip(&topo, &server, flags, port, echo_port);
        let details = || {
            format!(
                "{client_logs}{}===== relay metrics:\n{}",
                server.logs(),
                server.relay_metrics(&topo)
            )
        };
        // TCP and TLS are reliable: every echo must come back. (Echoes used to be lost when
        // the client half-closed its stream with replies still queued; the relay now drains.)
        assert_eq!(
            received,
            Some(MESSAGES),
            "TURN over {transport}: echoes that came back through the allocation\n{}",
            details()
        );
    }
    assert!(
        server.relay_metric(&topo, "relay_stream_connections_accepted") >= 2.0,
        "the relay must have served the clients over TCP and TLS\n{}",
        server.logs()
    );
}

/// Runs `turnutils_uclient` with `transport_flags` from client B against the relay's `port`,
/// sending [`MESSAGES`] to the echo peer; returns how many came back (`None`: no final count)
/// and the client's output.
fn relay_round_trip(
    topo: &Topology,
    server: &PublicServer,
    transport_flags: &[&str],
    port: u16,
    echo_port: u16,
) -> (Option<usize>, String) {
    let mut args: Vec<String> = transport_flags.iter().map(|f| (*f).to_owned()).collect();
    args.extend(
        [
            "-c", // no second (RTCP) allocation
            "-W",
            &server.secret,
            "-u",
            "nat-e2e",
            "-e",
            &SERVER_ALT_IP.to_string(),
            "-r",
            &echo_port.to_string(),
            "-n",
            &MESSAGES.to_string(),
            "-m",
            "1",
            "-l",
            "120",
            "-p",
            &port.to_string(),
            &SERVER_IP.to_string(),
        ]
        .map(String::from),
    );
    let mut client = NsProcess::spawn_program(topo, Host::ClientB, "turnutils_uclient", &args);
    let status = wait_until(Duration::from_secs(30), || client.exited());
    assert!(
        status.is_some_and(|s| s.success()),
        "turnutils_uclient {transport_flags:?} failed or hung ({status:?}); is coturn installed?\n{}",
        client.logs()
    );
    // Progress lines report running totals; the last one is the final count.
    let received = client.stdout_lines().iter().rev().find_map(|l| {
        let (_, rest) = l.split_once("tot_recv_msgs=")?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse::<usize>()
            .ok()
    });
    (received, client.logs())
}
