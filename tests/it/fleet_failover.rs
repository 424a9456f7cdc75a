//! Relay failover as the peers see it (issue 13, client side): `peer` CLIs in a room of a relay
//! fleet (real relays registered in a real Redis, one signaling node). When the room's relay
//! dies (kill -9) or drains (SIGTERM), the server moves the room (`ice_servers` naming another
//! relay); relay-only peers restart ICE onto it (`* ice-restart ... reason=relay-moved`, then a
//! `* selected-pair ... relay=HOST:PORT` line naming the new relay) and the chat goes on. Peers on
//! a direct pair get the new servers and are left alone.

use std::time::{Duration, Instant};

use e2e::redis::RedisServer;
use futures_util::SinkExt as _;
use tokio_tungstenite::tungstenite::Message;

use crate::fleet::{FleetRelay, start_fleet_relay, start_fleet_signaling};
use crate::peer_e2e::{
    Proc, Signaling, assert_no_ice_restart, chat_both_ways, field, join, say, wait_ice_restart,
};

/// Bound on every step (set-up, move, restart).
const WAIT: Duration = Duration::from_secs(30);

/// The relay port of a `* selected-pair ... relay=127.0.0.1:PORT` line.
pub(crate) fn relay_port(line: &str) -> Option<u16> {
    field(line, "relay")?.rsplit(':').next()?.parse().ok()
}

/// Three registered relays and a signaling node reading the fleet.
pub(crate) fn fleet(redis: &RedisServer) -> Vec<FleetRelay> {
    ["r1", "r2", "r3"]
        .iter()
        .map(|id| start_fleet_relay(redis, id))
        .collect()
}

/// A fleet of one relay (`r1`) and a signaling node reading it.
fn one_relay_fleet() -> (RedisServer, Vec<FleetRelay>, Signaling) {
    let redis = RedisServer::start();
    let relays = vec![start_fleet_relay(&redis, "r1")];
    let signaling = start_fleet_signaling(&redis);
    (redis, relays, signaling)
}

/// Alice joins `url`, then Bob; returns both once each printed its first selected pair.
pub(crate) fn pair(url: &str, relay_only: bool) -> (Proc, Proc, [String; 2]) {
    let mut alice = join(url, "alice", relay_only);
    alice.wait_line(WAIT, |l| l.starts_with("* joined"));
    let mut bob = join(url, "bob", relay_only);
    let a = alice.wait_line(WAIT, |l| l.starts_with("* selected-pair"));
    let b = bob.wait_line(WAIT, |l| l.starts_with("* selected-pair"));
    (alice, bob, [a, b])
}

enum Failure {
    /// kill -9: the room moves when the relay's lease (1 s) runs out.
    Death,
    /// SIGTERM: the relay marks itself draining; the room moves at once.
    Drain,
}

fn relay_only_peers_follow_their_room(failure: Failure) {
    let redis = RedisServer::start();
    let mut relays = fleet(&redis);
    let signaling = start_fleet_signaling(&redis);
    let url = signaling.room_url("failover-room");
    let (mut alice, mut bob, lines) = pair(&url, true);
    let ports: Vec<u16> = lines
        .iter()
        .map(|line| {
            assert_eq!(field(line, "local"), Some("relay"), "{line}");
            relay_port(line).unwrap_or_else(|| panic!("no relay= in {line}"))
        })
        .collect();
    assert_eq!(ports[0], ports[1], "both peers of a room use its relay");
    let old = ports[0];
    let victim = relays
        .iter()
        .position(|r| r.port == old)
        .expect("the room's relay is one of the fleet");

    let started = Instant::now();
    match failure {
        Failure::Death => drop(relays.remove(victim)),
        Failure::Drain => {
            // SAFETY: kill(2) on the pid of a child this test owns.
            let rc = unsafe { libc::kill(relays[victim].proc.pid() as libc::pid_t, libc::SIGTERM) };
            assert_eq!(rc, 0);
        }
    }
    for (name, proc) in [("alice", &mut alice), ("bob", &mut bob)] {
        wait_ice_restart(proc, "relay-moved");
        let restarted = started.elapsed();
        let line = proc.wait_line(WAIT, |l| l.starts_with("* selected-pair"));
        let port = relay_port(&line).unwrap_or_else(|| panic!("{name}: no relay= in {line}"));
        assert_ne!(port, old, "{name} still on the old relay: {line}");
        assert!(
            relays.iter().any(|r| r.port == port),
            "{name} on a relay of the fleet: {line}"
        );
        eprintln!(
            "{name}: ICE restart {restarted:?} and the new pair {:?} after the relay's {}",
            started.elapsed(),
            match failure {
                Failure::Death => "kill -9",
                Failure::Drain => "SIGTERM",
            }
        );
    }
    chat_both_ways(&mut alice, &mut bob, "on the new relay", "heard you");
}

#[test]
fn relay_only_peers_restart_ice_onto_the_new_relay_when_theirs_dies() {
    relay_only_peers_follow_their_room(Failure::Death);
}

#[test]
fn relay_only_peers_restart_ice_onto_the_new_relay_when_theirs_drains() {
    relay_only_peers_follow_their_room(Failure::Drain);
}

/// The port of the relay the server gives `room` (a bare session that joins and leaves).
/// The relay a peer of `room` is given, by a short-lived join.
fn room_relay(addr: std::net::SocketAddr, room: &str) -> u16 {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let (mut ws, port) = crate::fleet::join(addr, room).await;
        let _ = ws.send(Message::text(r#"{"type":"leave"}"#)).await;
        port
    })
}

#[test]
fn peers_on_a_direct_pair_are_left_alone_when_the_relay_moves() {
    let redis = RedisServer::start();
    let mut relays = fleet(&redis);
    let signaling = start_fleet_signaling(&redis);
    // ICE may nominate a relayed pair before the host pair is checked, and webrtc keeps it
    // (seen on a loaded machine). This test is about a direct pair, so it tries again, in a
    // new room, until both peers report one (at most three calls).
    let (mut alice, mut bob, old) = (1..=3)
        .find_map(|attempt| {
            let room = format!("direct-room-{attempt}");
            let old = room_relay(signaling.addr, &room);
            let url = signaling.room_url(&room);
            let (mut alice, mut bob, lines) = pair(&url, false);
            let direct = [(&mut alice, &lines[0]), (&mut bob, &lines[1])]
                .into_iter()
                .all(|(proc, first)| {
                    let direct = |l: &str| {
                        l.starts_with("* selected-pair") && field(l, "local") != Some("relay")
                    };
                    direct(first)
                        || proc
                            .try_wait_line(Duration::from_secs(10), direct)
                            .is_some()
                });
            if !direct {
                eprintln!("attempt {attempt}: ICE kept a relayed pair; calling again");
            }
            direct.then_some((alice, bob, old))
        })
        .expect("a direct pair within three calls");
    for proc in [&alice, &bob] {
        let line = proc
            .seen
            .iter()
            .rev()
            .find(|l| l.starts_with("* selected-pair"))
            .expect("a selected pair");
        assert_ne!(field(line, "local"), Some("relay"), "{line}");
        assert_eq!(relay_port(line), None, "{line}");
    }
    let victim = relays
        .iter()
        .position(|r| r.port == old)
        .expect("the room's relay is one of the fleet");
    drop(relays.remove(victim));
    for proc in [&mut alice, &mut bob] {
        // The move arrives ...
        proc.wait_line(WAIT, |l| l.starts_with("* ice-servers-updated"));
    }
    // ... and changes nothing: no restart, the pair and the chat stay.
    chat_both_ways(&mut alice, &mut bob, "still direct", "indeed");
    assert_no_ice_restart(&alice, "Alice (direct)");
    assert_no_ice_restart(&bob, "Bob (direct)");
}

/// The fleet's only relay dies under two relay-only peers: they restart ICE onto nothing (their
/// room has no TURN server now), the SDK says so in its log, and when a relay registers they
/// restart onto it and the chat goes on.
#[test]
fn relay_only_peers_wait_out_an_empty_fleet_and_move_onto_the_next_relay() {
    let (redis, mut relays, signaling) = one_relay_fleet();
    let url = signaling.room_url("empty-fleet-room");
    let logs = [(); 2].map(|()| tempfile::NamedTempFile::new().unwrap());
    let peer = |name: &str, log: &tempfile::NamedTempFile| {
        let args = [
            "join",
            &url,
            "--name",
            name,
            "--bind",
            "127.0.0.1",
            "--relay-only",
        ];
        let stderr = std::process::Stdio::from(log.reopen().unwrap());
        crate::peer_e2e::spawn_with_stderr("peer", &args, true, stderr)
    };
    let mut alice = peer("alice", &logs[0]);
    alice.wait_line(WAIT, |l| l.starts_with("* joined"));
    let mut bob = peer("bob", &logs[1]);
    for proc in [&mut alice, &mut bob] {
        let line = proc.wait_line(WAIT, |l| l.starts_with("* selected-pair"));
        assert_eq!(relay_port(&line), Some(relays[0].port), "{line}");
    }

    drop(relays.pop());
    for (proc, log) in [(&mut alice, &logs[0]), (&mut bob, &logs[1])] {
        wait_ice_restart(proc, "relay-moved");
        let deadline = Instant::now() + WAIT;
        loop {
            let said = std::fs::read_to_string(log.path()).unwrap();
            if said.contains("the signaling server lists no TURN server now") {
                break;
            }
            assert!(Instant::now() < deadline, "no warning in the log:\n{said}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    let next = start_fleet_relay(&redis, "r2");
    for proc in [&mut alice, &mut bob] {
        proc.wait_line(WAIT, |l| {
            l.starts_with("* selected-pair") && relay_port(l) == Some(next.port)
        });
    }
    chat_both_ways(&mut alice, &mut bob, "on the next relay", "back again");
}

/// Only Alice is relayed (relay-only; Bob on a host candidate): when the room's relay dies,
/// she restarts ICE and Bob answers. Bob makes no restart of his own, and still reports the
/// new pair his answer led to (it was printed only after a restart of one's own).
#[test]
fn the_side_that_answers_a_relay_move_reports_its_new_pair() {
    let redis = RedisServer::start();
    let mut relays = fleet(&redis);
    let signaling = start_fleet_signaling(&redis);
    // ICE may nominate one of Bob's relayed candidates (then he restarts too): call again, in
    // a new room, until his pair is direct (at most three calls).
    let (mut alice, mut bob, first, before) = (1..=3)
        .find_map(|attempt| {
            let url = signaling.room_url(&format!("answering-room-{attempt}"));
            let mut alice = join(&url, "alice", true);
            alice.wait_line(WAIT, |l| l.starts_with("* joined"));
            let mut bob = join(&url, "bob", false);
            let first = alice.wait_line(WAIT, |l| l.starts_with("* selected-pair"));
            let before = bob.wait_line(WAIT, |l| l.starts_with("* selected-pair"));
            if field(&before, "local") == Some("relay") {
                eprintln!("attempt {attempt}: Bob's pair is relayed; calling again");
                return None;
            }
            Some((alice, bob, first, before))
        })
        .expect("a direct pair for Bob within three calls");
    let old = relay_port(&first).unwrap_or_else(|| panic!("no relay= in {first}"));
    let victim = relays
        .iter()
        .position(|r| r.port == old)
        .expect("the room's relay is one of the fleet");
    drop(relays.remove(victim));

    wait_ice_restart(&mut alice, "relay-moved");
    let after = bob.wait_line(WAIT, |l| l.starts_with("* selected-pair"));
    assert!(
        field(&after, "local_addr") != field(&before, "local_addr")
            || field(&after, "remote_addr") != field(&before, "remote_addr"),
        "{before}\n{after}"
    );
    chat_both_ways(&mut alice, &mut bob, "through the new relay", "heard");
    assert_no_ice_restart(&bob, "Bob");
}

/// A line sent as the only relay died is lost on the way and left to SCTP's retransmission
/// timer, which backs off (1, 2, 4, 8, 16 s ...) while there is no path. When a relay comes
/// back 20 s later and ICE selects a pair through it, the line goes again at once
/// (`third_party/rtc-sctp/PATCHES.md` #4), not at the timer's next expiry, about 31 s after it
/// was first sent.
#[test]
fn a_line_lost_with_the_relay_goes_again_as_soon_as_a_relay_is_back() {
    let (redis, mut relays, signaling) = one_relay_fleet();
    let url = signaling.room_url("lost-line-room");
    let (mut alice, mut bob, _) = pair(&url, true);
    chat_both_ways(&mut alice, &mut bob, "before", "before too");

    drop(relays.pop());
    let killed = Instant::now();
    say(&mut alice, "sent as the relay died");
    for proc in [&mut alice, &mut bob] {
        wait_ice_restart(proc, "relay-moved");
    }
    std::thread::sleep(Duration::from_secs(20).saturating_sub(killed.elapsed()));
    let next = start_fleet_relay(&redis, "r2");
    let back = Instant::now();
    bob.wait_line(WAIT, |l| l == "alice: sent as the relay died");
    let took = back.elapsed();
    eprintln!(
        "the lost line arrived {took:?} after the relay came back ({:?} after it was sent)",
        killed.elapsed()
    );
    assert!(
        took < Duration::from_secs(6),
        "{took:?}: left to the retransmission timer"
    );
    for proc in [&mut alice, &mut bob] {
        proc.wait_seen(WAIT, |l| {
            l.starts_with("* selected-pair") && relay_port(l) == Some(next.port)
        });
    }
}
