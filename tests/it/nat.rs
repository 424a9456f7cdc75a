//! Real NATs: network namespaces with a "public" server host and two clients, each behind its
//! own NAT router (see `e2e::netns` for the topology). `probe` proves the topology itself
//! (mapping behaviour, hole punching, a UDP-blocking firewall) with small UDP/TCP probes;
//! `peers` runs our `signaling` and `relay` on the public host and two `peer` CLIs behind the
//! routers, and asserts which candidate pair they select.
//!
//! Needs root (to create namespaces). Where namespaces cannot be created the tests skip with a
//! loud message on stderr, unless `E2E_REQUIRE_NETNS=1` makes that a failure (CI runs as root
//! and sets it, so a broken set-up cannot pass as a skip).

mod peers;
mod probe;
mod process;
mod server;
mod turn_tcp;

use std::io::Write as _;

use e2e::netns::{RouterSpec, Topology, netns_unavailable};

/// Builds a topology, or returns `None` after a loud skip message where this machine cannot
/// create network namespaces. The messages name the test: libtest runs each on a thread named
/// after it.
fn topology_or_skip(router_a: RouterSpec, router_b: RouterSpec) -> Option<Topology> {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a real-NAT test");
    if let Some(reason) = netns_unavailable() {
        let required = std::env::var("E2E_REQUIRE_NETNS").is_ok_and(|v| !v.is_empty() && v != "0");
        assert!(
            !required,
            "{test}: E2E_REQUIRE_NETNS is set but network namespaces are unavailable: {reason}"
        );
        // Straight to fd 2, not `eprintln!`: libtest captures the macros of passing tests.
        let _ = writeln!(
            std::io::stderr().lock(),
            "\n########## SKIPPED {test}: cannot create network namespaces ({reason}).\n\
             ########## The real-NAT tests need root; CI runs them.\n"
        );
        return None;
    }
    match Topology::up(router_a, router_b) {
        Ok(topo) => Some(topo),
        Err(err) => panic!("{test}: building the namespace topology failed: {err:#}"),
    }
}
