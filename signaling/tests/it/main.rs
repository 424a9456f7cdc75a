//! Integration tests of the signaling server: each test starts a server on port 0 (in this
//! process, or the real binary where only a process will do; see `support.rs`) and drives it
//! with real WebSocket and HTTP clients speaking protocol v1.

mod acme;
mod admin_api;
mod admin_page;
mod api;
mod auth;
mod basic;
mod cluster;
mod compat;
mod docs;
mod http;
#[path = "../../../tests/src/signaling_http.rs"]
mod http_client;
mod limits;
mod one_port;
mod ops;
#[path = "../../../tests/src/pebble.rs"]
mod pebble;
mod proxy;
mod reload;
mod resume;
mod support;
mod tls;
