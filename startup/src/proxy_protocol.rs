//! `--proxy-protocol` in both binaries: every connection starts with a PROXY protocol header
//! (v1 text or v2 binary, as HAProxy's `send-proxy` / `send-proxy-v2` write it), which names
//! the client the load balancer accepted. That address replaces the socket's peer everywhere
//! (per-address limits, mapped addresses, nonces, logs). A connection without a well-formed
//! header is closed and counted; a `LOCAL` header (the balancer's own health check) keeps the
//! socket's peer. Feature `proxy-protocol`.
//!
//! The header is read exactly, never a byte past it, so what follows (a TLS ClientHello or an
//! HTTP request) is untouched; parsing is the `ppp` crate's.

use std::net::SocketAddr;
use std::time::Duration;

use ppp::{HeaderResult, v1, v2};
use tokio::io::{AsyncRead, AsyncReadExt as _};

/// The v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included (section 2.1).
const V1_MAX: usize = 107;

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The stream ended or failed before the header did.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a PROXY v1 or v2 header.
    #[error("not a PROXY protocol header")]
    Malformed,
    /// The header did not arrive in time.
    #[error("no PROXY protocol header within {0:?}")]
    TimedOut(Duration),
}

/// The connection's client: the address its PROXY header names, or `peer` (the socket's) when
/// the header names none. The header must arrive within `timeout`.
pub async fn client_within<S: AsyncRead + Unpin>(
    stream: &mut S,
    peer: SocketAddr,
    timeout: Duration,
) -> Result<SocketAddr, ProxyHeaderError> {
    match tokio::time::timeout(timeout, read_header(stream)).await {
        Ok(named) => Ok(named?.unwrap_or(peer)),
        Err(_) => Err(ProxyHeaderError::TimedOut(timeout)),
    }
}

/// Reads the PROXY header at the start of `stream`: the client's address, or `None` for a
/// header that names none (v2 `LOCAL`, v1 `UNKNOWN`, an unspecified or UNIX family).
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut header = vec![0u8; 12];
    stream.read_exact(&mut header).await?;
    if header == V2_SIGNATURE {
        let mut fixed = [0u8; 4];
        stream.read_exact(&mut fixed).await?;
        header.extend_from_slice(&fixed);
        let len = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
        let start = header.len();
        header.resize(start + len, 0);
        stream.read_exact(&mut header[start..]).await?;
    } else if header.starts_with(b"PROXY ") {
        // v1: up to CRLF, one byte at a time (nothing past it may be consumed).
        while !header.ends_with(b"\r\n") {
            if header.len() >= V1_MAX {
                return Err(ProxyHeaderError::Malformed);
            }
            header.push(stream.read_u8().await?);
        }
    } else {
        return Err(ProxyHeaderError::Malformed);
    }
    source(HeaderResult::parse(&header))
}

/// A PROXY v2 header (`PROXY`, TCP) naming `client` as the source and `server` as the
/// destination: what a balancer in front writes, for a server behind that reads it with
/// `--proxy-protocol`. Addresses of different families are both written as IPv6 (IPv4-mapped).
pub fn v2_header(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let (client, server) = if client.is_ipv4() == server.is_ipv4() {
        (client, server)
    } else {
        (as_ipv6(client), as_ipv6(server))
    };
    v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Proxy,
        v2::Protocol::Stream,
        (client, server),
    )
    .build()
    // Writing into a Vec cannot fail, and two addresses fit the length field.
    .unwrap_or_default()
}

fn as_ipv6(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        SocketAddr::V6(_) => addr,
    }
}

fn source(parsed: HeaderResult<'_>) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    match parsed {
        HeaderResult::V2(Ok(header)) => Ok(match (header.command, header.addresses) {
            (v2::Command::Local, _) => None,
            (_, v2::Addresses::IPv4(a)) => Some((a.source_address, a.source_port).into()),
            (_, v2::Addresses::IPv6(a)) => Some((a.source_address, a.source_port).into()),
            (_, v2::Addresses::Unspecified | v2::Addresses::Unix(_)) => None,
        }),
        HeaderResult::V1(Ok(header)) => Ok(match header.addresses {
            v1::Addresses::Tcp4(a) => Some((a.source_address, a.source_port).into()),
            v1::Addresses::Tcp6(a) => Some((a.source_address, a.source_port).into()),
            v1::Addresses::Unknown => None,
        }),
        HeaderResult::V1(Err(_)) | HeaderResult::V2(Err(_)) => Err(ProxyHeaderError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyHeaderError>, Vec<u8>) {
        let mut stream = bytes;
        let result = read_header(&mut stream).await;
        (result, stream.to_vec())
    }

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut bytes = V2_SIGNATURE.to_vec();
        bytes.push(0x20 | command);
        bytes.push(family);
        bytes.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
        bytes.extend_from_slice(addresses);
        bytes
    }

    #[tokio::test]
    async fn v1_and_v2_headers_name_the_client_and_leave_what_follows() {
        let (addr, rest) =
            read(b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 443\r\nGET / HTTP/1.1").await;
        assert_eq!(addr.unwrap(), Some("203.0.113.7:40000".parse().unwrap()));
        assert_eq!(rest, b"GET / HTTP/1.1");
        let (addr, _) = read(b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n").await;
        assert_eq!(addr.unwrap(), Some("[2001:db8::7]:40000".parse().unwrap()));
        let (addr, rest) = read(b"PROXY UNKNOWN\r\nX").await;
        assert_eq!((addr.unwrap(), rest.as_slice()), (None, &b"X"[..]));

        let ipv4 = [203, 0, 113, 9, 10, 0, 0, 1, 0x9c, 0x40, 0x01, 0xbb];
        let mut bytes = v2(1, 0x11, &ipv4);
        bytes.extend_from_slice(b"\x16\x03\x01");
        let (addr, rest) = read(&bytes).await;
        assert_eq!(addr.unwrap(), Some("203.0.113.9:40000".parse().unwrap()));
        assert_eq!(rest, b"\x16\x03\x01", "the TLS ClientHello is untouched");
        let (addr, _) = read(&v2(0, 0x00, &[])).await;
        assert_eq!(addr.unwrap(), None, "LOCAL: the balancer's own check");
    }

    #[tokio::test]
    async fn the_client_is_the_named_one_or_the_peer_and_a_silent_stream_times_out() {
        let peer: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let mut named = &b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 443\r\n"[..];
        let within = Duration::from_secs(1);
        let client = client_within(&mut named, peer, within).await.unwrap();
        assert_eq!(client, "203.0.113.7:40000".parse().unwrap());
        let mut unknown = &b"PROXY UNKNOWN\r\n"[..];
        assert_eq!(
            client_within(&mut unknown, peer, within).await.unwrap(),
            peer
        );
        let (mut silent, _writer) = tokio::io::duplex(64);
        let short = Duration::from_millis(50);
        assert!(matches!(
            client_within(&mut silent, peer, short).await,
            Err(ProxyHeaderError::TimedOut(_))
        ));
    }

    #[tokio::test]
    async fn a_written_v2_header_reads_back_as_the_client() {
        let client: SocketAddr = "203.0.113.7:40000".parse().unwrap();
        let server: SocketAddr = "10.0.0.1:443".parse().unwrap();
        let (addr, rest) = read(&[v2_header(client, server), b"GET".to_vec()].concat()).await;
        assert_eq!(
            (addr.unwrap(), rest.as_slice()),
            (Some(client), &b"GET"[..])
        );
        let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let (addr, _) = read(&v2_header(client, v6)).await;
        let mapped = SocketAddr::new(
            "::ffff:203.0.113.7".parse::<std::net::IpAddr>().unwrap(),
            40000,
        );
        assert_eq!(addr.unwrap(), Some(mapped), "mixed families: both as IPv6");
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"PROXY TCP4 not-an-address 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4",
            &[b'P'; 200],
        ] {
            assert!(
                read(bad).await.0.is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"PROXY ".as_slice(), &[b'x'; 150]].concat();
        assert!(matches!(
            read(&long).await.0,
            Err(ProxyHeaderError::Malformed)
        ));
    }
}
