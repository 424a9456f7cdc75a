//! relay-proto integration tests: one binary, one module per concern.

mod fuzz;
mod rfc5769;
mod scenarios;
mod stun_crate;
mod support;
