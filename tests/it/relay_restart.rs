//! A standalone relay that crashes and comes back on the same address, as the peers see it:
//! relay-only `peer` CLIs chatting through it restart ICE when their connection fails, and a
//! restart after the relay is back must allocate anew (the old allocations died with the
//! process) and bring the chat back. Before the fix every restart re-offered the dead relayed
//! candidates and the call never recovered.

use std::time::{Duration, Instant};

use crate::fleet::{relay_metric, start_loopback_relay};
use crate::peer_e2e::{
    chat_both_ways, expect_chat, field, join, joined, reliable_channel_open, say,
    start_signaling_with,
};

const TURN_SECRET: &str = "relay-restart-secret";

/// Bound on set-up and on noticing the relay's death.
const WAIT: Duration = Duration::from_secs(30);

/// How long the relay stays down after both peers restarted ICE on the failure.
const DOWN_AFTER_FAILURE: Duration = Duration::from_secs(10);

/// Bound on recovery once the relay is back: a few failure restarts' worth.
const RECOVERY: Duration = Duration::from_secs(40);

/// Whether `line` reports a selected pair through our relay.
fn relayed_pair(line: &str) -> bool {
    line.starts_with("* selected-pair") && field(line, "local") == Some("relay")
}

/// Whether `line` reports a connection (back) in state `connected`.
fn connected(line: &str) -> bool {
    line.starts_with("* connection-state") && field(line, "state") == Some("connected")
}

#[test]
fn relay_only_call_recovers_after_its_relay_restarts_on_the_same_address() {
    let port = e2e::free_port();
    let listen = format!("127.0.0.1:{port}");
    let relay_flags = ["--turn-secret", TURN_SECRET];
    let mut relay = start_loopback_relay(&listen, &relay_flags);
    let turn_url = format!("turn:127.0.0.1:{port}?transport=udp");
    let signaling = start_signaling_with(
        None,
        "127.0.0.1:0",
        &["--turn-url", &turn_url, "--turn-secret", TURN_SECRET],
    );
    let url = signaling.room_url("relay-restart");
    let mut alice = joined(join(&url, "alice", true));
    let mut bob = join(&url, "bob", true);
    for proc in [&mut alice, &mut bob] {
        proc.wait_line(WAIT, reliable_channel_open);
        proc.wait_seen(WAIT, relayed_pair);
    }
    say(&mut alice, "before the crash");
    expect_chat(&mut bob, "alice: before the crash");

    let marks = [alice.seen.len(), bob.seen.len()];
    relay.proc.kill();
    // Down long enough that both connections fail and restart ICE while it is gone, and
    // that the Allocate of that restart gives up (its STUN retransmissions last ~8 s): the
    // call has to come back by a later restart.
    for proc in [&mut alice, &mut bob] {
        proc.wait_line(WAIT, |l| {
            l.starts_with("* ice-restart") && field(l, "reason") == Some("failed")
        });
    }
    std::thread::sleep(DOWN_AFTER_FAILURE);
    let relay = start_loopback_relay(&listen, &relay_flags);
    let back = Instant::now();
    for (name, proc) in [("alice", &mut alice), ("bob", &mut bob)] {
        let recovered = proc.try_wait_line(RECOVERY.saturating_sub(back.elapsed()), connected);
        assert!(
            recovered.is_some(),
            "{name} did not reconnect within {RECOVERY:?} of the relay's restart \
             (allocations on the new relay: {}):\n{}",
            relay_metric(&relay, "relay_allocations_created_total"),
            proc.seen.join("\n")
        );
        eprintln!(
            "{name}: connected again {:?} after the restart",
            back.elapsed()
        );
    }
    // Each says which pair it uses now: a new relayed pair (a new allocation).
    for ((name, proc), mark) in [("alice", &mut alice), ("bob", &mut bob)]
        .into_iter()
        .zip(marks)
    {
        let deadline = Instant::now() + Duration::from_secs(10);
        let reselected =
            |proc: &testkit::Spawned| proc.seen[mark..].iter().any(|l| relayed_pair(l));
        while !reselected(proc) && Instant::now() < deadline {
            proc.read_for(Duration::from_millis(200));
        }
        assert!(
            reselected(proc),
            "{name} printed no selected-pair line after recovering:\n{}",
            proc.seen[mark..].join("\n")
        );
    }
    chat_both_ways(&mut alice, &mut bob, "after the restart", "heard you");
    assert!(
        relay_metric(&relay, "relay_allocations_created_total") > 0,
        "the restarted relay created no allocation"
    );
}
