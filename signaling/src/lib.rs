//! Signaling service: peers in a room find each other and exchange SDP and ICE candidates.
//!
//! # Layout
//! - [`protocol`]: the one definition of the wire (always built; the peer SDK uses only this).

pub mod protocol;
