//! Two `peer join` CLIs, one behind each NAT router, meeting through our signaling on the
//! public host: the scenarios of the issue, each asserting the selected candidate pair types.
//!
//! - endpoint-independent NATs: a direct path (no relay; the remote candidate is the other
//!   router's public address);
//! - symmetric NATs: STUN-only peers find no path at all, with our TURN they connect through a
//!   relay candidate on our relay;
//! - UDP blocked on one side: that side connects through a relay allocated over TCP.
//!
//! Both peers use the same nominated pair, seen from either end (A's local candidate is B's
//! remote one). Each side's `selected-pair` line is checked when it is printed; at least one
//! side must print one. (The `peer` CLI prints none on a side whose remote candidate is
//! peer-reflexive: webrtc 0.21.1 keeps no stats entry for prflx candidates.)

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use e2e::netns::{Host, ROUTER_A_WAN, ROUTER_B_WAN, RouterSpec, SERVER_IP, Topology};
use serde_json::Value;

use super::process::NsProcess;
use super::server::{IceServers, PublicServer};
use super::topology_or_skip;

/// Bound on ICE + DTLS + SCTP for one scenario (a few seconds on a working path).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one chat line crossing the connected data channel.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the CLI may take to print its selected pair once the channel is open (it retries
/// its stats for 2.5 s).
const PAIR_TIMEOUT: Duration = Duration::from_secs(4);
/// How long STUN-only peers behind symmetric NATs get to (fail to) connect.
const NO_DIRECT_PATH_WINDOW: Duration = Duration::from_secs(12);

#[test]
fn endpoint_independent_nats_connect_directly() {
    connected_scenario(
        RouterSpec::cone(),
        RouterSpec::cone(),
        "cone",
        |_, _, run| {
            for (side, pair) in run.pairs() {
                let other_wan = if side == Side::A {
                    ROUTER_B_WAN
                } else {
                    ROUTER_A_WAN
                };
                run.check(
                    pair.local != "relay" && pair.remote != "relay",
                    &format!("{side:?}: endpoint-independent NATs must connect without TURN"),
                );
                run.check(
                    matches!(pair.remote.as_str(), "srflx" | "prflx"),
                    &format!("{side:?}: the remote candidate must be server- or peer-reflexive"),
                );
                run.check(
                    pair.remote_addr.map(|a| a.ip()) == Some(IpAddr::V4(other_wan)),
                    &format!(
                        "{side:?}: the remote address must be the other router's public address"
                    ),
                );
            }
        },
    );
}

#[test]
fn symmetric_nats_connect_through_turn() {
    connected_scenario(
        RouterSpec::symmetric(),
        RouterSpec::symmetric(),
        "symmetric",
        |topo, server, run| {
            // Two symmetric NATs leave no direct path: at least one side sends from an allocation
            // on our relay. The other side may see that relayed address as `relay` (trickled
            // first) or as `prflx` (its connectivity check arrived before the candidate), and may
            // itself send from its host address to it (seen on a loaded machine): either is a
            // path through TURN.
            let through_relay: Vec<_> = run
                .pairs()
                .filter(|(_, pair)| pair.local == "relay")
                .collect();
            run.check(
                !through_relay.is_empty(),
                "symmetric NATs must connect through a TURN relay candidate on one side at least",
            );
            for (side, pair) in &through_relay {
                run.check(
                    pair.local_addr.map(|a| a.ip()) == Some(IpAddr::V4(SERVER_IP)),
                    &format!("{side:?}: the relay candidate must be an allocation on our relay"),
                );
            }
            for (side, pair) in run.pairs() {
                run.check(
                    pair.local == "relay" || matches!(pair.remote.as_str(), "relay" | "prflx"),
                    &format!("{side:?}: neither end of the pair is the relayed address"),
                );
            }
            // And the relay saw the data channel's traffic both ways.
            for direction in ["to_peer", "to_client"] {
                let series = format!("relay_packets_relayed_total{{direction=\"{direction}\"}}");
                let packets = server.relay_metric(topo, &series);
                eprintln!("symmetric: {series} = {packets}");
                run.check(
                    packets > 0.0,
                    &format!("the relay relayed no packets {direction}"),
                );
            }
        },
    );
}

#[test]
fn symmetric_nats_without_turn_find_no_direct_path() {
    let Some(topo) = topology_or_skip(RouterSpec::symmetric(), RouterSpec::symmetric()) else {
        return;
    };
    let server = PublicServer::start(&topo, IceServers::StunOnly);
    let url = server.room_url("symmetric-stun-only");
    let mut a = PeerCli::join(&topo, Host::ClientA, &url, "a");
    let mut b = PeerCli::join(&topo, Host::ClientB, &url, "b");
    // Both must have met through signaling and started ICE (negotiation done), or "no
    // connection" would prove nothing.
    let checking = |p: &mut PeerCli| {
        p.wait_json(CONNECT_TIMEOUT, |e| {
            e["event"] == "connection-state" && e["state"] == "connecting"
        })
        .is_some()
    };
    let met = checking(&mut a) && checking(&mut b);
    assert!(
        met,
        "peers never met through signaling and started ICE\n{}{}{}",
        a.proc.logs(),
        b.proc.logs(),
        server.logs()
    );
    let opened = a.wait_event(NO_DIRECT_PATH_WINDOW, "channel-open");
    assert!(
        opened.is_none() && !b.has_event("channel-open"),
        "STUN-only peers behind symmetric NATs must not find a direct path: {opened:?}\n{}{}",
        a.proc.logs(),
        b.proc.logs()
    );
}

#[test]
fn udp_blocked_side_connects_through_turn_over_tcp() {
    connected_scenario(
        RouterSpec::cone(),
        RouterSpec::cone().blocking_udp(),
        "udp-blocked",
        |topo, server, run| {
            let on_relay = |kind: &str, addr: Option<SocketAddr>| {
                kind == "relay" && addr.map(|a| a.ip()) == Some(IpAddr::V4(SERVER_IP))
            };
            let b_relayed = run
                .pair_b
                .as_ref()
                .is_some_and(|pair| on_relay(&pair.local, pair.local_addr));
            for (side, pair) in run.pairs() {
                // B's end of the pair is its relay candidate: local for B, remote for A. A may
                // know it as peer-reflexive (B's check through the relay came before B's relay
                // candidate; the CLI prints no address for those): then B's report says it.
                let ok = if side == Side::B {
                    on_relay(&pair.local, pair.local_addr)
                } else {
                    on_relay(&pair.remote, pair.remote_addr)
                        || (pair.remote == "prflx" && b_relayed)
                };
                run.check(
                    ok,
                    &format!(
                        "{side:?}: B (UDP blocked) must be reached through its relay candidate"
                    ),
                );
            }
            // Proof from the router that B's allocation rides on TCP: an established TCP flow
            // from B to the relay's TCP port, and no UDP flow out of B's LAN at all.
            let port = format!("dport={}", server.turn_tcp.port());
            run.check(
                conntrack(topo, Host::RouterB, "tcp")
                    .lines()
                    .any(|l| l.contains("ESTABLISHED") && l.contains(&port)),
                &format!("router B must carry an established TCP flow to the relay ({port})"),
            );
            run.check(
                !conntrack(topo, Host::RouterB, "udp").contains("src=10.2.0.10"),
                "no UDP flow may leave B's LAN",
            );
            let accepted = server.relay_metric(topo, "relay_stream_connections_accepted");
            run.check(
                accepted >= 1.0,
                "the relay accepted no TCP client connection",
            );
        },
    );
}

/// Builds the topology (or skips, see [`topology_or_skip`]), starts our signaling and relay
/// (STUN and TURN) on the public host, connects a peer behind each router in `room`, and runs
/// `check` on the result.
fn connected_scenario(
    router_a: RouterSpec,
    router_b: RouterSpec,
    room: &str,
    check: impl FnOnce(&Topology, &PublicServer, &Scenario<'_>),
) {
    let Some(topo) = topology_or_skip(router_a, router_b) else {
        return;
    };
    let server = PublicServer::start(&topo, IceServers::StunAndTurn);
    let run = Scenario::connect(&topo, &server, room);
    check(&topo, &server, &run);
}

/// Router `host`'s conntrack table for one protocol.
fn conntrack(topo: &Topology, host: Host, proto: &str) -> String {
    let out = topo
        .command(host, "conntrack")
        .args(["-L", "-p", proto])
        .output()
        .expect("run conntrack (apt-get install conntrack)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Which client a view belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    A,
    B,
}

/// The `selected-pair` event of `peer --json`.
#[derive(Debug)]
struct Pair {
    local: String,
    remote: String,
    local_addr: Option<SocketAddr>,
    remote_addr: Option<SocketAddr>,
    raw: Value,
}

impl Pair {
    fn parse(event: &Value) -> Self {
        let text = |k: &str| {
            event
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        Self {
            local: text("local"),
            remote: text("remote"),
            local_addr: text("local_addr").parse().ok(),
            remote_addr: text("remote_addr").parse().ok(),
            raw: event.clone(),
        }
    }
}

/// One `peer join --json` process.
struct PeerCli {
    proc: NsProcess,
}

impl PeerCli {
    fn join(topo: &Topology, host: Host, url: &str, name: &str) -> Self {
        let args = ["join", url, "--json", "--name", name].map(String::from);
        Self {
            proc: NsProcess::spawn(topo, host, "peer", &args),
        }
    }

    fn events(&self) -> Vec<Value> {
        self.proc
            .stdout_lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect()
    }

    fn has_event(&self, name: &str) -> bool {
        self.events().iter().any(|e| e["event"] == name)
    }

    /// Waits for the first JSON event that `wanted` accepts.
    fn wait_json(&mut self, timeout: Duration, wanted: impl Fn(&Value) -> bool) -> Option<Value> {
        self.proc.wait_stdout(timeout, |line| {
            serde_json::from_str::<Value>(line)
                .ok()
                .filter(|e| wanted(e))
        })
    }

    /// Waits for the first event called `name`.
    fn wait_event(&mut self, timeout: Duration, name: &str) -> Option<Value> {
        self.wait_json(timeout, |e| e["event"] == name)
    }

    /// Waits for the reliable data channel to open.
    fn wait_open(&mut self, timeout: Duration) -> bool {
        self.wait_json(timeout, |e| {
            e["event"] == "channel-open" && e["kind"] == "reliable"
        })
        .is_some()
    }

    /// Waits for a chat message with exactly `text`.
    fn wait_message(&mut self, timeout: Duration, text: &str) -> bool {
        self.wait_json(timeout, |e| e["event"] == "message" && e["text"] == text)
            .is_some()
    }

    /// The latest selected pair the peer reported.
    fn last_pair(&self) -> Option<Pair> {
        self.events()
            .iter()
            .rev()
            .find(|e| e["event"] == "selected-pair")
            .map(Pair::parse)
    }
}

/// Two connected peers (A behind router A, B behind router B) that exchanged a chat line each
/// way, with the pairs they reported; everything needed to explain a failure.
struct Scenario<'a> {
    topo: &'a Topology,
    server: &'a PublicServer,
    a: PeerCli,
    b: PeerCli,
    pair_a: Option<Pair>,
    pair_b: Option<Pair>,
}

impl<'a> Scenario<'a> {
    fn connect(topo: &'a Topology, server: &'a PublicServer, room: &str) -> Self {
        let url = server.room_url(room);
        let mut a = PeerCli::join(topo, Host::ClientA, &url, "a");
        let mut b = PeerCli::join(topo, Host::ClientB, &url, "b");
        let fail = |what: &str, a: &PeerCli, b: &PeerCli| -> ! {
            panic!(
                "{room}: {what}\n{}{}{}{}",
                a.proc.logs(),
                b.proc.logs(),
                server.logs(),
                topo.diagnostics()
            )
        };
        if !(a.wait_open(CONNECT_TIMEOUT) && b.wait_open(CONNECT_TIMEOUT)) {
            let exits = (a.proc.exited(), b.proc.exited());
            let what = format!("no data channel within {CONNECT_TIMEOUT:?} (exits: {exits:?})");
            fail(&what, &a, &b);
        }
        // Data must flow both ways over the selected path.
        for (text, a_to_b) in [("hello from a", true), ("hello from b", false)] {
            let (from, to) = if a_to_b {
                (&mut a, &mut b)
            } else {
                (&mut b, &mut a)
            };
            let delivered =
                from.proc.send_line(text).is_ok() && to.wait_message(MESSAGE_TIMEOUT, text);
            if !delivered {
                fail(&format!("{text:?} was not delivered"), &a, &b);
            }
        }
        // Both CLIs print their pair right after the channel opens (or never, see the module
        // docs): give the slower one a moment, then take what there is.
        let _ = a.wait_event(PAIR_TIMEOUT, "selected-pair").is_some()
            && b.wait_event(PAIR_TIMEOUT, "selected-pair").is_some();
        let (pair_a, pair_b) = (a.last_pair(), b.last_pair());
        if pair_a.is_none() && pair_b.is_none() {
            fail("neither peer reported its selected candidate pair", &a, &b);
        }
        for (side, pair) in [("A", &pair_a), ("B", &pair_b)] {
            match pair {
                Some(pair) => eprintln!("{room}: {side} selected {}", pair.raw),
                None => eprintln!("{room}: WARNING: {side} printed no selected-pair line"),
            }
        }
        Self {
            topo,
            server,
            a,
            b,
            pair_a,
            pair_b,
        }
    }

    /// The pairs reported, by side (at least one).
    fn pairs(&self) -> impl Iterator<Item = (Side, &Pair)> {
        [(Side::A, &self.pair_a), (Side::B, &self.pair_b)]
            .into_iter()
            .filter_map(|(side, pair)| Some((side, pair.as_ref()?)))
    }

    /// Asserts `ok`, with both pairs and every log in the failure message.
    fn check(&self, ok: bool, what: &str) {
        assert!(
            ok,
            "{what}\nA: {:?}\nB: {:?}\n{}{}{}{}",
            self.pair_a,
            self.pair_b,
            self.a.proc.logs(),
            self.b.proc.logs(),
            self.server.logs(),
            self.topo.diagnostics()
        );
    }
}
