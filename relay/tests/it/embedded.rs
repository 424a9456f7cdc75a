//! The library entry point used by other binaries (`signaling --with-relay`): `Relay::start`
//! in-process, addresses, a TURN allocation through it, drain and shutdown.

use std::time::Duration;

use relay::{Config, Relay};

use crate::support::{TestClient, base_args, http_get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_start_in_process_serves_and_shuts_down() {
    let config = Config::from_args(
        [
            &base_args("127.0.0.1:0", "2")[..],
            &["--turn-secret", "embedded-secret"],
        ]
        .concat(),
    )
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
    let password = crate::support::rest_password(b"embedded-secret", &username);
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

fn start_embedded(secret: &str) -> relay::RelayHandle {
    let config = Config::from_args([
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "none",
        "--workers",
        "2",
        "--turn-secret",
        secret,
    ])
    .unwrap();
    Relay::start(config).expect("start in-process")
}

/// The stream-connection gauge is a guard: a connection still open when the relay stops is
/// given back (the workers wait for their connection tasks, then publish), not leaked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_an_open_connection_leaves_the_gauge_at_zero() {
    let handle = start_embedded("gauge-secret");
    let tcp = handle.addrs().tcp[0];
    let metrics = std::sync::Arc::clone(handle.metrics());
    let _conn = std::net::TcpStream::connect(tcp).unwrap();
    let counted = tokio::task::spawn_blocking({
        let metrics = std::sync::Arc::clone(&metrics);
        move || {
            crate::support::wait_until(Duration::from_secs(5), || {
                metrics.io_totals().stream_connections == 1
            })
        }
    })
    .await
    .unwrap();
    assert!(counted, "the open connection is counted");

    tokio::time::timeout(Duration::from_secs(5), handle.shutdown())
        .await
        .expect("shutdown completes with a connection open");
    assert_eq!(metrics.io_totals().stream_connections, 0);
}

/// `drain` returns once the last allocation ends (the workers signal it), long before its
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_returns_when_the_last_allocation_ends() {
    let handle = start_embedded("drain-secret");
    let udp = handle.addrs().udp[0];
    let username = format!("{}:peer-1", crate::support::unix_now() + 300);
    let password = crate::support::rest_password(b"drain-secret", &username);
    let mut client = tokio::task::spawn_blocking(move || {
        let mut c = TestClient::new(udp, &username, &password);
        c.allocate().expect("allocate");
        c
    })
    .await
    .unwrap();
    assert_eq!(handle.allocations(), 1);
    let status = handle.status();
    let draining = tokio::spawn(handle.drain(Duration::from_secs(60)));
    let drain_began = tokio::task::spawn_blocking(move || {
        crate::support::wait_until(Duration::from_secs(5), || status.is_draining())
    })
    .await
    .unwrap();
    assert!(drain_began);
    assert!(!draining.is_finished(), "waits for the live allocation");
    tokio::task::spawn_blocking(move || client.refresh(0))
        .await
        .unwrap()
        .expect("delete the allocation");
    tokio::time::timeout(Duration::from_secs(5), draining)
        .await
        .expect("drain ends when the last allocation does")
        .unwrap();
}
