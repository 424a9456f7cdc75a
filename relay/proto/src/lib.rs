//! Sans-IO STUN/TURN core (RFC 8489 STUN, RFC 8656 TURN, RFC 6156 IPv6, RFC 6062 framing).
//!
//! No sockets, no runtime, no clock: every input is a `handle_*(now, ...)` call on [`Server`],
//! every output is either the return value of that call (the relay hot path, zero-copy) or
//! queued for [`Server::poll_output`]. The I/O layer (crate `relay`) owns sockets and time.
//!
//! # Run loop (one per shard)
//! 1. Client datagram / framed stream message -> [`Server::handle_client_packet`]; act on the
//!    returned [`ClientAction`] (send `packet[payload]` to a peer from the relay socket named
//!    by its [`RelayHandle`]).
//! 2. Datagram on a relay socket -> receive into `buf[HEADROOM..]` and call
//!    [`Server::handle_peer_packet`] with that socket's [`RelayHandle`]; act on the
//!    [`PeerAction`] (send `buf[range]` to the client).
//! 3. After every call, drain [`Server::poll_output`] until `None`: STUN responses and Data
//!    indications ([`Output::Transmit`]), relay socket binds ([`Output::BindRelay`]: file the
//!    new socket at its handle's [`RelayHandle::index`], answer with
//!    [`Server::handle_relay_bound`]) and releases ([`Output::ReleaseRelay`]).
//! 4. Sleep until [`Server::poll_timeout`] (or the next packet) and call
//!    [`Server::handle_timeout`]. TCP/TLS connection closed -> [`Server::handle_connection_closed`].
//!
//! # Sharding
//! One `Server` per SO_REUSEPORT socket (per core), each owning the allocations of the clients
//! the kernel hashes to it and their relay sockets, without locks. Only the allocation counts
//! and the amplification credit per source IP are global: create one `Arc<SharedQuotas>` and
//! pass it to every shard with [`Server::with_shared_quotas`]. See `docs/relay.md`.
//!
//! # Layout
//! The wire:
//! - `message` (borrowed STUN codec, [`Method`]), `attributes` ([`AttributeType`] and value
//!   codecs), [`ErrorCode`] (`error_code`), `channel_data` (4-byte header, hot path),
//!   `framing` (stream framing).
//!
//! The server, [`Server`] in `server` (relay paths, timers, outputs) and `methods` (one
//! handler per TURN method, each citing its RFC section, and the shared `authorized_allocation`
//! opening), over state split by concern:
//! - `allocation_table` (`AllocationTable`: the slab of `allocation`s, indexed by 5-tuple and
//!   by relay handle), with `permission` / `channel` / `five_tuple` inside an allocation;
//! - `relay_handle` ([`RelayHandle`], the opaque name of a relay socket across the boundary,
//!   and `RelayHandles`, the slab that hands them out and maps them to allocations); both
//!   slabs reuse released indexes the one way of `slab_index`;
//! - `pending` (`PendingAllocations`: Allocates waiting for their relay socket);
//! - `admission` (`Admission`: `auth` / `nonce` credentials and nonces, the per-IP rate limits
//!   of unauthenticated requests, of challenges and of wrong passwords);
//! - `own_addresses` ([`OwnAddresses`]: the host addresses learned at run time, so that
//!   [`ServerConfig`] stays as given), checked by `policy` (peer addresses);
//! - `expiry` (one deadline queue), `stats`, `output`;
//! - shared by every shard: `quota` ([`SharedQuotas`]: allocation counts and the one drain
//!   flag), `reservations` (RESERVATION-TOKENs), `amplification` (byte budget of
//!   unauthenticated UDP responses).
//!
//! `config` holds [`ServerConfig`], which the server never changes but for its
//! [`LiveSettings`] (credentials, peer allow/deny lists, quotas), which
//! [`Server::reconfigure`] replaces while it runs.
//!
//! # API changes
//! Newest first. Changes since the first published API (a28a13f):
//! - New: [`LiveSettings`] and [`Server::reconfigure`] (the relay's SIGHUP reload): new
//!   credentials, peer allow/deny lists and quotas for a running server. `Server::config`
//!   returns them from then on. A `Quotas::bandwidth_per_allocation` set after an allocation
//!   was created now limits that allocation too (its bucket is made on its next packet).
//! - Relay sockets are named by an opaque [`RelayHandle`] (slab index + generation, like
//!   quinn's `ConnectionHandle`) instead of their local `SocketAddr`: `Output::BindRelay`'s
//!   `request: RelayRequestId` became `relay: RelayHandle` (`RelayRequestId` is gone),
//!   `handle_relay_bound` and `handle_peer_packet` take the handle, and
//!   `ClientAction::Forward::relay` and `Output::ReleaseRelay::relay` are handles. The I/O
//!   layer keeps its sockets in a `Vec` at [`RelayHandle::index`] and compares the whole
//!   handle. New: `Server::relay_handle_of`. An I/O layer that binds the same local address
//!   twice is no longer answered 508 (the core no longer indexes sockets by address).
//! - `ServerConfig::draining` is gone and `Server::set_draining` sets the `SharedQuotas` flag
//!   (all shards sharing it drain): the drain state has one owner. `Server::config` returns
//!   the configuration as given; the addresses learned at run time are
//!   `Server::own_addresses` ([`OwnAddresses`]).
//! - Typed wire vocabulary: `Method`, `AttributeType` and `ErrorCode` (each variant cites its
//!   RFC section). `StunMessage::method` returns `Option<Method>` (`method_code` keeps the raw
//!   12-bit code); `MessageBuilder::new`/`add*` and `StunMessage::get` take `impl Into<u16>`
//!   (a typed value or a raw code: write `0x7777u16`); `add_error_code` takes an `ErrorCode`.
//!   The attribute aliases (`attributes::USERNAME`...) are now `AttributeType`s; the `u16`
//!   method aliases (`message::ALLOCATE`...) are gone: write `Method::Allocate`. Both `DATA`
//!   constants are gone (one was the method, one the attribute): write `Method::Data` or
//!   `AttributeType::Data`.
//! - `Output` is no longer `#[non_exhaustive]`: it is workspace-internal, and the I/O layer
//!   matches every variant and field so that a new one cannot be ignored. RESERVATION-TOKENs
//!   moved into `SharedQuotas`, so a token issued by one shard is honoured by another.
//! - The amplification credit (`Quotas::amplification_allowance`) moved from each `Server` into
//!   `SharedQuotas` (a fixed table of atomic buckets): shards sharing one `SharedQuotas` share
//!   one credit per source IP. `Server::new` keeps its own. No signature changed.
//! - `Quotas` gained `amplification_allowance` (default `Some(2048)`), `QuotaKind` the variant
//!   `UnauthenticatedBytes`, `Stats` the fields `udp_request_bytes` and
//!   `udp_unauthenticated_response_bytes`; `DenyReason` the variant `Anycast`. Requests of an
//!   unsupported method (or a method that is not a request, like Send) are now dropped
//!   (RFC 8489 section 6.3) instead of answered with 400.
//! - `Output::BindRelay` gained `address: Option<SocketAddr>`: when `Some`, bind exactly that
//!   local address (the port reserved by EVEN-PORT's R bit, claimed with RESERVATION-TOKEN; this
//!   is how `turnutils_uclient` allocates RTP/RTCP pairs without `-c`), and answer
//!   `Err(BindError::NoCapacity)` if it is taken. Patterns with `..` keep compiling.
//! - Channel numbers 0x4000-0x7FFF are accepted (RFC 5766 range; coturn's clients use it).
//!
//! Additions (no signature changed):
//! - `message::MessageBuilder::add_padded` (RFC 5769 vectors pad with spaces).
//! - Public modules `message`, `attributes`, `auth`, `channel_data`, `framing` (codec for
//!   tests and the I/O layer's stream framing: `framing::stream_frame_len`).
//! - `Server::relay_address_of`.

/// A fieldless enum and its `ALL`: every variant, in declaration order (for the wire
/// vocabulary, wire-code order; for counters, `index()` order). Derived from the variants, so
/// that a new one cannot be left out of the metrics labels and `from_code` lookups that walk
/// `ALL`.
macro_rules! enum_with_all {
    (
        $(#[$attr:meta])*
        $vis:vis enum $name:ident {
            $($(#[$variant_attr:meta])* $variant:ident $(= $code:literal)?,)+
        }
    ) => {
        $(#[$attr])*
        $vis enum $name {
            $($(#[$variant_attr])* $variant $(= $code)?,)+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: [Self; [$(stringify!($variant)),+].len()] = [$(Self::$variant),+];
        }
    };
}

/// An `enum_with_all` of wire vocabulary: `#[repr(u16)]`, each variant's discriminant its
/// wire code, with `code`, `from_code` and `From<Self> for u16`.
macro_rules! wire_code_enum {
    (
        $(#[$attr:meta])*
        $vis:vis enum $name:ident {
            $($(#[$variant_attr:meta])* $variant:ident = $code:literal,)+
        }
    ) => {
        enum_with_all! {
            $(#[$attr])*
            #[repr(u16)]
            $vis enum $name {
                $($(#[$variant_attr])* $variant = $code,)+
            }
        }

        impl $name {
            /// The wire code.
            pub const fn code(self) -> u16 {
                self as u16
            }

            /// The known variant with wire code `code`, if any.
            pub fn from_code(code: u16) -> Option<Self> {
                Self::ALL.into_iter().find(|v| v.code() == code)
            }
        }

        impl From<$name> for u16 {
            fn from(value: $name) -> Self {
                value.code()
            }
        }

        // `ALL` is in wire-code order: the variants must be declared so.
        const _: () = {
            let codes = [$($code),+];
            let mut i = 1;
            while i < codes.len() {
                assert!(
                    codes[i - 1] < codes[i],
                    concat!(stringify!($name), ": declare the variants in wire-code order")
                );
                i += 1;
            }
        };
    };
}

mod admission;
mod allocation;
mod allocation_table;
mod amplification;
pub mod attributes;
pub mod auth;
mod channel;
pub mod channel_data;
mod config;
mod error_code;
mod expiry;
mod fast_hash;
mod five_tuple;
pub mod framing;
pub mod message;
mod methods;
mod nonce;
mod output;
mod own_addresses;
mod pending;
mod permission;
pub mod policy;
mod quota;
mod relay_handle;
mod reservations;
mod server;
mod slab_index;
mod small_list;
mod stats;
mod usage;

pub use attributes::AttributeType;
pub use config::{AuthConfig, ExternalIp, LiveSettings, ServerConfig, StaticCredential, WallClock};
pub use error_code::ErrorCode;
pub use five_tuple::{AddressFamily, FiveTuple, Transport};
pub use message::Method;
pub use output::{BindError, ClientAction, HEADROOM, Output, PeerAction, TAILROOM};
pub use own_addresses::OwnAddresses;
pub use policy::{DenyReason, IpNet, PeerPolicy};
pub use quota::{
    DEFAULT_AMPLIFICATION_ALLOWANCE, QuotaKind, Quotas, RateLimit, SharedQuotas, rate_key,
};
pub use relay_handle::RelayHandle;
pub use reservations::RESERVATION_LIFETIME;
pub use server::Server;
pub use stats::{LATENCY_BOUNDS_MICROS, LatencyHistogram, Stats};
pub use usage::Usage;

/// Helpers shared by the unit tests.
#[cfg(test)]
mod test_util {
    use std::net::IpAddr;

    /// The IP address written `s`.
    pub(crate) fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
}

#[cfg(test)]
mod tests {
    /// Shards run on their own threads: the core must be `Send`.
    #[test]
    fn server_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<super::Server>();
        assert_send::<super::Output>();
    }
}
