//! SIGHUP reloads of the real binary's `--config` file: TURN REST secrets, quotas, peer deny
//! lists and the log filter take effect at once for new requests while existing allocations
//! relay on; an invalid file is refused (counted) and the configuration in force stays; a
//! TURN-over-TLS allocation relays without losing a packet across reloads that also change
//! the certificate.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use crate::support::{
    RelayProcess, TestClient, TlsFiles, loopback_peer, rest_password, tls_link, unix_now,
    wait_until,
};

/// The relay's `--config` file, `relay.toml` in a temporary directory (removed on drop).
struct ConfigFile {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl ConfigFile {
    /// A new file holding `toml`.
    fn new(toml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        let file = Self { dir, path };
        file.write(toml);
        file
    }

    /// Replaces the contents (read again on SIGHUP).
    fn write(&self, toml: &str) {
        std::fs::write(&self.path, toml).unwrap();
    }

    /// Starts the relay binary on this file with `extra` flags.
    fn start_relay(&self, extra: &[&str]) -> RelayProcess {
        RelayProcess::start_with_config(&self.path, extra)
    }
}

/// Waits until `relay_config_reloads_total` (`ok`) or `..._refused_total` reaches `n`.
fn wait_reloads(relay: &RelayProcess, refused: bool, n: u64) {
    let series = if refused {
        "relay_config_reloads_refused_total"
    } else {
        "relay_config_reloads_total"
    };
    assert!(
        wait_until(Duration::from_secs(5), || relay.metric(series) >= n),
        "{series} did not reach {n}"
    );
}

/// A TURN REST client of `user` whose password `secret` signs.
fn rest_client(relay: &RelayProcess, secret: &str, user: &str) -> TestClient {
    let username = format!("{}:{user}", unix_now() + 600);
    let password = rest_password(secret.as_bytes(), &username);
    TestClient::new(relay.udp, &username, &password)
}

/// One ChannelData round trip through channel 0x4000 of `client`'s allocation: client to
/// peer, peer back to the relayed address, client receives it.
fn round_trip(client: &mut TestClient, peer: &UdpSocket, relayed: SocketAddr, payload: &[u8]) {
    client.send_channel(0x4000, payload);
    let mut buf = [0u8; 2048];
    let (n, _) = peer.recv_from(&mut buf).expect("the peer receives");
    assert_eq!(&buf[..n], payload);
    peer.send_to(payload, relayed).unwrap();
    let (_, data) = client
        .recv_channel(Duration::from_secs(3))
        .expect("the client receives");
    assert_eq!(data, payload);
}

#[test]
fn sighup_swaps_secrets_quotas_and_the_deny_list_without_disturbing_allocations() {
    let config = ConfigFile::new(
        "turn-secret = [\"old-secret\"]\nuser-quota = 1\nallow-loopback-peers = true\n",
    );
    let relay = config.start_relay(&[]);
    let peer = loopback_peer(Duration::from_secs(3));
    let mut before = rest_client(&relay, "old-secret", "alice");
    let relayed = before.allocate().expect("the old secret verifies");
    before
        .channel_bind(0x4000, peer.local_addr().unwrap())
        .unwrap();
    round_trip(&mut before, &peer, relayed, b"before the reload");
    assert_eq!(
        rest_client(&relay, "old-secret", "alice").allocate(),
        Err(486),
        "one allocation per user"
    );
    let denied_later: SocketAddr = "127.0.0.3:9".parse().unwrap();
    assert_eq!(before.create_permission(denied_later), Ok(()));

    config.write(
        "turn-secret = [\"new-secret\"]\nuser-quota = 2\nallow-loopback-peers = true\n\
         deny-peer = [\"127.0.0.3/32\"]\n",
    );
    relay.hangup();
    wait_reloads(&relay, false, 1);

    assert_eq!(
        rest_client(&relay, "old-secret", "bob").allocate(),
        Err(401),
        "a removed secret stops verifying at once"
    );
    let mut after = rest_client(&relay, "new-secret", "alice");
    after
        .allocate()
        .expect("the new secret verifies, and alice may hold two allocations now");
    assert_eq!(
        after.create_permission(denied_later),
        Err(403),
        "a new permission meets the new deny list"
    );
    assert_eq!(
        after.create_permission("127.0.0.4:9".parse().unwrap()),
        Ok(())
    );
    // The allocation made before the reload relays on.
    for i in 0..20 {
        round_trip(&mut before, &peer, relayed, format!("after {i}").as_bytes());
    }
    assert_eq!(relay.metric("relay_config_reloads_refused_total"), 0);
}

#[test]
fn an_invalid_configuration_is_refused_and_the_one_in_force_stays() {
    let config = ConfigFile::new("turn-secret = [\"kept\"]\nallow-loopback-peers = true\n");
    let relay = config.start_relay(&[]);
    let bad = [
        "turn-secret = [\"other\"]\nuser-quota = 0\n", // fails validation
        "turn-secret = [\"other\"\n",                  // not TOML
        "turn-secret = [\"other\"]\nno-such-flag = 1\n", // unknown key
        "turn-secret = [\"other\"]\ndeny-peer = [\"not-a-cidr\"]\n", // bad value
        "turn-secret = [\"other\"]\nlog-filter = \"relay=loud\"\n", // not a log filter
    ];
    for (n, text) in bad.iter().enumerate() {
        config.write(text);
        relay.hangup();
        wait_reloads(&relay, true, n as u64 + 1);
        assert_eq!(relay.metric("relay_config_reloads_total"), 0);
        rest_client(&relay, "kept", &format!("user{n}"))
            .allocate()
            .expect("the secret in force still verifies");
        assert_eq!(
            rest_client(&relay, "other", &format!("user{n}")).allocate(),
            Err(401),
            "nothing of the refused file was applied"
        );
    }
    let logs = relay.stop_and_read_stderr();
    assert!(
        logs.contains("configuration reload refused, the configuration in force stays"),
        "{logs}"
    );
}

#[test]
fn the_log_filter_follows_the_file() {
    let config = ConfigFile::new("user = [\"u:p\"]\nlog-filter = \"info\"\n");
    let relay = config.start_relay(&[]);
    let mut client = TestClient::new(relay.udp, "u", "p");
    client.allocate().unwrap();
    // Denied peers are logged at debug: not yet.
    assert_eq!(
        client.create_permission("192.0.2.1:9".parse().unwrap()),
        Err(403)
    );
    config.write("user = [\"u:p\"]\nlog-filter = \"info,relay_proto=debug\"\n");
    relay.hangup();
    wait_reloads(&relay, false, 1);
    assert_eq!(
        client.create_permission("198.51.100.1:9".parse().unwrap()),
        Err(403)
    );
    // Allocations are logged at debug only: the first one (at info) was not.
    TestClient::new(relay.udp, "u", "p")
        .allocate()
        .expect("a second allocation");
    let logs = relay.stop_and_read_stderr();
    assert_eq!(
        logs.matches("allocation created").count(),
        1,
        "the allocation trail at debug only: {logs}"
    );
    assert!(
        logs.contains("configuration reloaded: --log-filter info -> info,relay_proto=debug"),
        "{logs}"
    );
    assert!(
        logs.contains("198.51.100.1") && logs.contains("peer address denied"),
        "debug lines after the reload: {logs}"
    );
    assert!(!logs.contains("192.0.2.1"), "none before it: {logs}");
}

#[test]
fn a_turns_allocation_relays_every_packet_across_reloads_and_certificate_changes() {
    let config = ConfigFile::new("user = [\"u:p\"]\nallow-loopback-peers = true\n");
    let mut pem = testkit::write_self_signed(config.dir.path());
    let relay = config.start_relay(&TlsFiles::in_dir(config.dir.path()).args());
    let tls = relay.tls.expect("tls listener");
    let peer = loopback_peer(Duration::from_secs(3));
    let mut client = TestClient::with_link(tls_link(tls, &pem), tls, "u", "p");
    let relayed = client.allocate().expect("allocate over TLS");
    client
        .channel_bind(0x4000, peer.local_addr().unwrap())
        .unwrap();

    // Packets flow while the relay reloads: a new certificate and a new quota each time.
    const ROUNDS: u64 = 600;
    let mut reloads = 0;
    for i in 0..ROUNDS {
        if i % 150 == 75 {
            pem = testkit::write_self_signed(config.dir.path());
            reloads += 1;
            config.write(&format!(
                "user = [\"u:p\"]\nallow-loopback-peers = true\nmax-channels = {}\n",
                10 + reloads
            ));
            relay.hangup();
        }
        round_trip(
            &mut client,
            &peer,
            relayed,
            format!("packet {i}").as_bytes(),
        );
    }
    wait_reloads(&relay, false, reloads);
    assert_eq!(relay.metric("relay_tls_reloads_total"), reloads);
    // Every packet relayed once, each way: none lost, none doubled.
    for direction in ["to_peer", "to_client"] {
        let series = format!("relay_packets_relayed_total{{direction=\"{direction}\"}}");
        assert!(
            wait_until(Duration::from_secs(3), || relay.metric(&series) == ROUNDS),
            "{series}: {} of {ROUNDS}",
            relay.metric(&series)
        );
    }
    // New handshakes get the last certificate.
    let mut fresh = TestClient::with_link(tls_link(tls, &pem), tls, "u", "p");
    fresh
        .allocate()
        .expect("a client trusting the new certificate");
}

/// A relay started without any credentials says, at start-up, that it will refuse every
/// Allocate (a common first mistake: it looks ready otherwise).
#[test]
fn a_relay_without_credentials_warns_that_it_refuses_allocations() {
    let relay = RelayProcess::start_raw_process(&[
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--no-tcp",
    ]);
    let logs = relay.stop_and_read_stderr();
    assert!(logs.contains("no credentials"), "{logs}");
}

/// A reload names the file's keys that a flag given at start-up overrides: editing them in
/// the file changes nothing, and the operator is told so.
#[test]
fn a_reload_says_which_file_keys_a_flag_overrides() {
    let config = ConfigFile::new("user = [\"u:p\"]\nuser-quota = 5\n");
    let relay = config.start_relay(&["--user-quota", "7"]);
    config.write("user = [\"u:p\"]\nuser-quota = 6\n");
    relay.hangup();
    wait_reloads(&relay, false, 1);
    let logs = relay.stop_and_read_stderr();
    assert!(
        logs.contains("`user-quota` is overridden by a flag or environment variable"),
        "{logs}"
    );
}
