//! The 5-tuple that identifies a client's allocation (RFC 8656 section 2: client address, server
//! address and transport protocol).

use std::net::SocketAddr;

/// The transport between the client and the server (the relayed transport is always UDP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// STUN/TURN over UDP: one datagram is one message.
    Udp,
    /// STUN/TURN over TCP: messages framed on a stream (RFC 6062 / RFC 8656 section 11.5 padding).
    Tcp,
    /// STUN/TURN over TLS over TCP (TURNS): framed like TCP.
    Tls,
}

impl Transport {
    /// True for stream transports, where ChannelData messages are padded to a multiple of 4 bytes.
    pub fn is_stream(self) -> bool {
        !matches!(self, Self::Udp)
    }

    /// A short lower-case label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        }
    }
}

/// One client connection as the server sees it: an allocation is keyed by this.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    /// The client's address as seen by the server (after any NAT).
    pub client: SocketAddr,
    /// The server's local address the client talks to (a listening address).
    pub server: SocketAddr,
    /// The client-to-server transport.
    pub transport: Transport,
}

/// The address family of a relayed transport address (RFC 6156 REQUESTED-ADDRESS-FAMILY).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressFamily {
    /// IPv4 relayed address (the default).
    V4,
    /// IPv6 relayed address.
    V6,
}

impl AddressFamily {
    /// The family of `addr`.
    pub fn of(addr: &SocketAddr) -> Self {
        if addr.is_ipv4() { Self::V4 } else { Self::V6 }
    }
}
