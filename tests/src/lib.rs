//! Shared harness for the end-to-end tests: spawning the real binaries on free ports and
//! cleaning them up by PID, whatever happens to the test.
//!
//! The binaries are the ones `cargo build --workspace --bins` put beside the test executable
//! (`target/<profile>/`); `scripts/test.sh` builds them before running the tests.

pub mod netns;
pub mod pebble;
pub mod redis;
pub mod signaling_http;

pub use testkit::{ChildGuard, bin_path, free_port, haproxy, wait_until};
