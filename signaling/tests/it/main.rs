//! Integration tests of the `signaling` binary: each test starts the real server on port 0 and
//! drives it with real WebSocket clients speaking protocol v1.

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
mod ops;
mod resume;
mod support;
mod tls;
