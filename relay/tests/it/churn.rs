//! Allocation churn from one source IP through the real binary, with the default abuse limits:
//! every Allocate starts with an unauthenticated request answered 401 (RFC 8489 section
//! 9.2.4), so a legitimate client behind one IP (a NAT, a benchmark on loopback) does one
//! challenge round trip per allocation. Hundreds of allocate -> refresh(0) cycles must keep
//! succeeding: the per-IP limiters must not starve challenge/response traffic that
//! authenticates, and deleted allocations must give back their quota slot and relay port.

use std::time::{Duration, Instant};

use crate::support::{RelayProcess, TestClient, rest_password, unix_now, wait_until};

/// Sequential allocate -> refresh(0) cycles.
const CYCLES: usize = 500;

#[test]
fn hundreds_of_allocate_delete_cycles_from_one_ip_keep_succeeding() {
    // The defaults (`--unauth-rate` 100) on purpose; a narrow relay port range, so leaked
    // relay sockets would run out well within the loop.
    // One worker: the limiters are per worker, so this is the strictest set-up.
    let relay = RelayProcess::start_with_workers(
        1,
        &[
            "--turn-secret",
            "s3cret",
            "--allow-loopback-peers",
            "--relay-ports",
            "41000-41099",
        ],
    );
    let started = Instant::now();
    let mut failures = Vec::new();
    for i in 0..CYCLES {
        // A distinct REST user per cycle, like the peer ids signaling hands out.
        let user = format!("{}:peer-{i}", unix_now() + 600);
        let mut c = TestClient::new(relay.udp, &user, &rest_password(b"s3cret", &user));
        match c.allocate() {
            Ok(_) => {
                if let Err(code) = c.refresh(0) {
                    failures.push((i, "refresh(0)", code));
                }
            }
            Err(code) => failures.push((i, "allocate", code)),
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{CYCLES} cycles took too long (at {i}); failures: {failures:?}"
        );
    }
    let limited =
        |quota: &str| relay.metric(&format!("relay_quota_hits_total{{quota=\"{quota}\"}}"));
    assert!(wait_until(Duration::from_secs(3), || relay
        .metric("relay_allocations")
        == 0));
    // A dropped challenge costs the client a retransmission timeout (a webrtc agent's TURN
    // transaction gives up after a few): none may be dropped for a client that authenticates.
    assert!(
        failures.is_empty() && limited("unauthenticated_rate") + limited("unauthorized_rate") == 0,
        "{} of {CYCLES} cycles failed (code 0 = timed out): first {:?}\nquota hits: unauthenticated {}, unauthorized {}",
        failures.len(),
        &failures[..failures.len().min(10)],
        limited("unauthenticated_rate"),
        limited("unauthorized_rate"),
    );
    eprintln!("{CYCLES} allocate/delete cycles in {:?}", started.elapsed());
}
