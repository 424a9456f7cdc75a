//! TLS (TURNS) server configuration: the workspace's one kit for it, `startup::tls`.

pub use startup::tls::*;
