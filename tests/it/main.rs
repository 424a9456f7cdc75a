//! One integration-test binary for the whole workspace (one link, not dozens).
//! Each module drives the real binaries over real sockets.
mod aiortc;
mod cluster_e2e;
mod fleet;
mod fleet_failover;
mod nat;
mod peer_e2e;
mod proxy_protocol;
mod relay_restart;
mod usage;
