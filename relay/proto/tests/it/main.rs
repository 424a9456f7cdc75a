//! relay-proto integration tests: one binary, one module per concern.

mod conformance;
mod conformance_sans_io;
mod fuzz;
mod reconfigure;
mod rfc5769;
mod scenarios;
mod stun_crate;
mod support;
