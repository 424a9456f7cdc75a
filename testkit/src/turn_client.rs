//! The webrtc-rs `turn` crate's client, set up the one way the suites use it: on a fresh
//! loopback UDP socket, realm `relay`, already listening.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
pub use turn::client::Client;
use turn::client::ClientConfig;

/// A `turn` client of the relay at `server` (its STUN and TURN address) with `username` and
/// `password`, bound to `127.0.0.1:0` and listening; allocate with [`Client::allocate`].
/// Panics if the socket cannot be bound or the client cannot start.
pub async fn udp_client(server: SocketAddr, username: &str, password: &str) -> Client {
    let conn = UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind the TURN client's socket");
    let client = Client::new(ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: username.to_owned(),
        password: password.to_owned(),
        realm: "relay".to_owned(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(conn),
        vnet: None,
    })
    .await
    .expect("start the TURN client");
    client.listen().await.expect("TURN client listen");
    client
}
