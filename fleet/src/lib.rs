//! What the signaling nodes and the relays of one deployment share through Redis.
//!
//! - [`link`]: a connection to a standalone Redis or to a Redis Cluster (detected), with a
//!   deadline on every call.
//! - [`secret`]: the TURN REST secret agreed by the processes that were given none.
//! - [`relays`]: the record a relay advertises, its lease, and which relay serves a room
//!   (weighted rendezvous hashing), a pure function every signaling node computes alike.
//! - [`usage`]: the relays' traffic per user and time bucket, published for signaling's
//!   fleet-wide `/v1/usage`.

pub mod link;
pub mod relays;
pub mod secret;
pub mod usage;
