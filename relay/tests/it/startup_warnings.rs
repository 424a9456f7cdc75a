//! What the relay warns about at start-up (`relay.md`, "Addresses behind 1:1 NAT"): relay
//! addresses that will refuse what most clients ask, and a 1:1 NAT mapping that maps nothing.

use std::net::UdpSocket;

use crate::support::{RelayProcess, base_args};

const NO_IPV4: &str = "no IPv4 relay address";
const MAPS_NOTHING: &str = "--external-ip maps an address that is no relay IP: it maps nothing";

#[test]
fn a_relay_with_ipv6_relay_addresses_alone_warns_that_browsers_get_440() {
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("SKIPPED: this host has no ::1 (IPv6 disabled)");
        return;
    }
    let relay = RelayProcess::start_raw_process(&base_args("[::1]:0", "1"));
    let logs = relay.stop_and_read_stderr();
    assert!(logs.contains(NO_IPV4), "{logs}");
    assert!(logs.contains("440 Address Family not Supported"), "{logs}");
    assert!(!logs.contains(MAPS_NOTHING), "{logs}");
}

#[test]
fn an_external_ip_whose_private_address_is_no_relay_ip_is_warned_about() {
    // The relay binds its relay sockets on 127.0.0.1 (the listener's address): 10.9.9.9 is
    // none of them, 127.0.0.1 is.
    let relay = RelayProcess::start_process(&["--external-ip", "203.0.113.5/10.9.9.9"]);
    let logs = relay.stop_and_read_stderr();
    let warning = logs
        .lines()
        .find(|line| line.contains(MAPS_NOTHING))
        .unwrap_or_else(|| panic!("no warning in:\n{logs}"));
    assert!(
        warning.contains("10.9.9.9") && warning.contains("203.0.113.5"),
        "{warning}"
    );
    assert!(!logs.contains(NO_IPV4), "{logs}");

    let relay = RelayProcess::start_process(&["--external-ip", "203.0.113.5/127.0.0.1"]);
    let logs = relay.stop_and_read_stderr();
    assert!(!logs.contains(MAPS_NOTHING), "a mapping that maps: {logs}");
}
