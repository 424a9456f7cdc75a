//! One integration-test binary for the whole workspace (one link, not dozens).
//! Each module drives the real binaries over real sockets.
mod nat;
mod peer_e2e;
