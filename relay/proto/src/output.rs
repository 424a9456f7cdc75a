//! What the core asks the I/O layer to do: per-packet actions (`ClientAction`, `PeerAction`,
//! returned directly, zero-copy) and queued control outputs (`Output`, from `poll_output`).

use std::net::SocketAddr;
use std::ops::Range;

use crate::five_tuple::{AddressFamily, FiveTuple};
use crate::relay_handle::RelayHandle;

/// Bytes the I/O layer must leave free in front of a peer datagram (`buf[..HEADROOM]`) so the
/// core can write a ChannelData header in place.
pub const HEADROOM: usize = 4;

/// Bytes the I/O layer should leave free after a peer datagram (`buf[HEADROOM + len..]`) so the
/// core can pad ChannelData to a multiple of 4 for stream (TCP/TLS) clients in place. Without
/// them, stream clients get the message through `Output::Transmit` (one allocation).
pub const TAILROOM: usize = 3;

/// What to do with one client packet, decided by `Server::handle_client_packet`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum ClientAction {
    /// Nothing to send now (consumed, dropped or malformed: see `Stats`). Outputs may still have
    /// been queued: drain `poll_output` after every call anyway.
    Drop,
    /// Send `packet[payload]` from the relay socket `relay` to `peer` (the payload of a
    /// ChannelData message or of a Send indication's DATA attribute: zero-copy).
    Forward {
        /// The allocation's relay socket (the handle of its `Output::BindRelay`).
        relay: RelayHandle,
        /// Destination peer.
        peer: SocketAddr,
        /// Byte range of the payload inside the input `packet`.
        payload: Range<usize>,
    },
    /// A response (or a relay-bind request) was queued: drain `poll_output`.
    Queued,
}

/// What to do with one peer datagram, decided by `Server::handle_peer_packet`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum PeerAction {
    /// Nothing to send (no allocation, no permission, over quota: see `Stats`).
    Drop,
    /// Send `buf[range]` to the client on `to`: a ChannelData message written in place (header
    /// in the headroom, padding in the tailroom for stream clients).
    ToClient {
        /// The client's 5-tuple (for TCP/TLS: the connection to write to).
        to: FiveTuple,
        /// Byte range of the message inside the caller's `buf`.
        range: Range<usize>,
    },
    /// A Data indication (no channel bound) was queued: drain `poll_output`.
    Queued,
}

/// Why the I/O layer could not bind a relay socket (workspace-internal, so exhaustive: the I/O
/// layer's counting matches each variant).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    /// The host has no address of the requested family (answered 440).
    FamilyNotSupported,
    /// No free port in the relay range, or the socket limit was hit (answered 508).
    NoCapacity,
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::FamilyNotSupported => "address family not supported",
            Self::NoCapacity => "no relay port available",
        })
    }
}

/// A queued control output, from `Server::poll_output`. Deliberately exhaustive (no
/// `#[non_exhaustive]`): the I/O layer matches every variant and destructures every field, so a
/// field added here (as `BindRelay::address` once was) does not compile until it is handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send `data` to the client on `to` (STUN responses, Data indications; already padded for
    /// stream transports).
    Transmit {
        /// The client's 5-tuple.
        to: FiveTuple,
        /// The complete message.
        data: Vec<u8>,
    },
    /// Bind a UDP relay socket of `family` for a new allocation of `five_tuple`, file it under
    /// `relay`, then call `Server::handle_relay_bound(now, relay, result)` with its local
    /// address.
    BindRelay {
        /// The new socket's name from now on, in both directions: pass it to
        /// `handle_relay_bound` and `handle_peer_packet`; `ClientAction::Forward` and
        /// `ReleaseRelay` name the socket by it.
        relay: RelayHandle,
        /// IPv4 or IPv6 relayed address.
        family: AddressFamily,
        /// The client's 5-tuple (to route peer packets of this relay to the same shard).
        five_tuple: FiveTuple,
        /// The client sent EVEN-PORT: try an even port (best effort).
        even_port: bool,
        /// EVEN-PORT with the R bit (RFC 8656 section 7.2): the port must be even and the
        /// next-higher one free too. Hold that one open for [`crate::RESERVATION_LIFETIME`]
        /// for the Allocate that claims it (its `address`); answer `BindError::NoCapacity`
        /// when no even port of the range has a free next one.
        reserve_next: bool,
        /// Bind exactly this local address: the port reserved by an earlier Allocate's EVEN-PORT
        /// (R bit) and claimed now with its RESERVATION-TOKEN. Answer `BindError::NoCapacity`
        /// if it is taken. `None` (the usual case): any free port in the relay range.
        address: Option<SocketAddr>,
    },
    /// The allocation of the relay socket `relay` is gone: close the socket. The handle is
    /// dead from here on (its index may come back, under another generation, in a later
    /// `BindRelay`).
    ReleaseRelay {
        /// The socket to close.
        relay: RelayHandle,
    },
}
