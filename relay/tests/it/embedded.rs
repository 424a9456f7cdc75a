//! The library entry point used by other binaries (`signaling --with-relay`): `Relay::start`
//! in-process, addresses, a TURN allocation through it, drain and shutdown.

use std::time::Duration;

use relay::{Config, Relay};

use crate::support::{TestClient, http_get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_start_in_process_serves_and_shuts_down() {
    let config = Config::from_args([
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--auth-secret",
        "embedded-secret",
    ])
    .unwrap();
    let handle = Relay::start(config).expect("start in-process");
    let addrs = handle.addrs().clone();
    assert_eq!(addrs.udp.len(), 1);
    assert_eq!(addrs.tcp.len(), 1);
    assert!(addrs.tls.is_empty());
    assert_eq!(
        addrs.relay_ips,
        vec!["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    let udp = addrs.udp[0];
    let admin = addrs.admin.expect("admin address");

    let username = format!("{}:peer-1", crate::support::unix_now() + 300);
    let password = crate::support::rest_password("embedded-secret", &username);
    let relayed = tokio::task::spawn_blocking(move || {
        let mut c = TestClient::new(udp, &username, &password);
        c.allocate()
    })
    .await
    .unwrap()
    .expect("allocate with a REST credential");
    assert_eq!(relayed.ip().to_string(), "127.0.0.1");
    assert_eq!(handle.allocations(), 1);

    handle.begin_drain();
    assert!(handle.is_draining());
    let (status, _) = tokio::task::spawn_blocking(move || http_get(admin, "/readyz"))
        .await
        .unwrap();
    assert_eq!(status, 503);

    tokio::time::timeout(Duration::from_secs(5), handle.shutdown())
        .await
        .expect("shutdown completes");
    // The port is free again.
    assert!(
        std::net::UdpSocket::bind(udp).is_ok(),
        "listening socket closed after shutdown"
    );
}
