//! The public server host of a NAT scenario: our `relay` (STUN/TURN over UDP and TCP) and our
//! `signaling` (handing out the relay's URLs with short-lived REST credentials), both on
//! 203.0.113.10 with ports chosen by the kernel and read back from their stdout.

use std::net::SocketAddr;
use std::time::Duration;

use e2e::netns::{Host, PUBLIC_NET, SERVER_IP, Topology};

use super::process::NsProcess;

/// How long a binary may take to print its bound addresses.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Which ICE servers signaling hands to the peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IceServers {
    /// STUN plus TURN over UDP and over TCP.
    StunAndTurn,
    /// STUN only: the peers can find their public addresses but have no relay.
    StunOnly,
}

/// `relay` and `signaling` running in the server namespace.
pub(super) struct PublicServer {
    pub(super) turn_tcp: SocketAddr,
    pub(super) turn_tls: SocketAddr,
    /// The TURN REST shared secret of the relay and signaling.
    pub(super) secret: String,
    /// The relay's admin HTTP address (`/metrics`).
    admin: SocketAddr,
    signaling_addr: SocketAddr,
    relay: NsProcess,
    signaling: NsProcess,
}

impl PublicServer {
    pub(super) fn start(topo: &Topology, ice: IceServers) -> Self {
        let secret = format!("nat-e2e-{}", std::process::id());
        let relay_args: Vec<String> = [
            "--listen",
            &format!("{SERVER_IP}:0"),
            "--relay-ip",
            &SERVER_IP.to_string(),
            "--relay-ports",
            "49152-49407",
            "--turn-secret",
            &secret,
            "--realm",
            "nat.e2e.test",
            // The peers' public addresses are in TEST-NET-3, which the relay denies by default
            // (documentation range): this scenario's "internet" is made of it.
            "--allow-peer",
            PUBLIC_NET,
            "--admin-listen",
            &format!("{SERVER_IP}:0"),
            "--workers",
            "1",
            "--drain-timeout",
            "0s",
            // TURNS with a throw-away certificate (clients here do not verify it).
            "--tls-self-signed",
            "--tls-listen",
            &format!("{SERVER_IP}:0"),
        ]
        .map(String::from)
        .to_vec();
        let mut relay = NsProcess::spawn(topo, Host::Server, "relay", &relay_args);
        let listening = |transport: &'static str| {
            move |line: &str| {
                line.strip_prefix("listening ")?
                    .strip_prefix(transport)?
                    .trim()
                    .parse::<SocketAddr>()
                    .ok()
            }
        };
        let turn_udp = relay.wait_stdout(START_TIMEOUT, listening("udp"));
        let turn_tcp = relay.wait_stdout(START_TIMEOUT, listening("tcp"));
        let turn_tls = relay.wait_stdout(START_TIMEOUT, listening("tls"));
        let admin = relay.wait_stdout(START_TIMEOUT, |line| {
            line.strip_prefix("admin http://")?
                .parse::<SocketAddr>()
                .ok()
        });
        let ready = relay.wait_stdout(START_TIMEOUT, |l| (l == "ready").then_some(()));
        let (Some(turn_udp), Some(turn_tcp), Some(turn_tls), Some(admin), Some(())) =
            (turn_udp, turn_tcp, turn_tls, admin, ready)
        else {
            panic!("relay did not start\n{}", relay.logs());
        };

        let mut signaling_args = vec![
            "--listen".to_owned(),
            format!("{SERVER_IP}:0"),
            "--stun-url".to_owned(),
            format!("stun:{turn_udp}"),
        ];
        if ice == IceServers::StunAndTurn {
            signaling_args.extend([
                "--turn-url".to_owned(),
                format!("turn:{turn_udp}?transport=udp"),
                "--turn-url".to_owned(),
                format!("turn:{turn_tcp}?transport=tcp"),
                "--turn-secret".to_owned(),
                secret.clone(),
            ]);
        }
        let mut signaling = NsProcess::spawn(topo, Host::Server, "signaling", &signaling_args);
        let Some(signaling_addr) = signaling.wait_stdout(START_TIMEOUT, |line| {
            line.strip_prefix("listening on http://")?.parse().ok()
        }) else {
            panic!("signaling did not start\n{}", signaling.logs());
        };
        Self {
            turn_tcp,
            turn_tls,
            secret,
            admin,
            signaling_addr,
            relay,
            signaling,
        }
    }

    /// The WebSocket URL of `room`.
    pub(super) fn room_url(&self, room: &str) -> String {
        format!("ws://{}/ws/{room}", self.signaling_addr)
    }

    /// The sum of the relay's Prometheus samples whose line starts with `series` (e.g.
    /// `relay_packets_relayed_total{direction="to_peer"}`).
    pub(super) fn relay_metric(&self, topo: &Topology, series: &str) -> f64 {
        self.relay_metrics(topo)
            .lines()
            .filter(|l| l.starts_with(series))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The relay's `/metrics` samples (no comments), read in the server namespace.
    pub(super) fn relay_metrics(&self, topo: &Topology) -> String {
        let admin = self.admin;
        let text = topo
            .in_netns(Host::Server, || Ok(testkit::http_get(admin, "/metrics")?.1))
            .unwrap_or_else(|e| panic!("relay /metrics: {e:#}\n{}", self.relay.logs()));
        text.lines()
            .filter(|l| l.starts_with("relay_"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Both servers' logs, for a failure message.
    pub(super) fn logs(&self) -> String {
        format!("{}{}", self.relay.logs(), self.signaling.logs())
    }
}
