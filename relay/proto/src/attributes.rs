//! STUN/TURN attribute types and value codecs (RFC 8489 section 14, RFC 8656 section 18,
//! RFC 6156): XOR'd addresses, ERROR-CODE, LIFETIME, REQUESTED-TRANSPORT and friends.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::error_code::ErrorCode;
use crate::message::{MAGIC_COOKIE, TransactionId};

wire_code_enum! {
    /// The attribute types this crate knows, with their wire codes. A message may carry any
    /// other type: [`crate::message::RawAttribute::typ`] stays a `u16`, and
    /// [`AttributeType::from_code`] says whether it is one of these.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum AttributeType {
        /// MAPPED-ADDRESS (RFC 8489 section 14.1).
        MappedAddress = 0x0001,
        /// USERNAME (RFC 8489 section 14.3).
        Username = 0x0006,
        /// MESSAGE-INTEGRITY, HMAC-SHA1 (RFC 8489 section 14.5).
        MessageIntegrity = 0x0008,
        /// ERROR-CODE (RFC 8489 section 14.8).
        ErrorCode = 0x0009,
        /// UNKNOWN-ATTRIBUTES (RFC 8489 section 14.13).
        UnknownAttributes = 0x000A,
        /// CHANNEL-NUMBER (RFC 8656 section 18.1).
        ChannelNumber = 0x000C,
        /// LIFETIME (RFC 8656 section 18.2).
        Lifetime = 0x000D,
        /// XOR-PEER-ADDRESS (RFC 8656 section 18.3).
        XorPeerAddress = 0x0012,
        /// DATA, the payload of Send and Data indications (RFC 8656 section 18.4). Not to be
        /// confused with the Data *method*, [`crate::message::Method::Data`].
        Data = 0x0013,
        /// REALM (RFC 8489 section 14.9).
        Realm = 0x0014,
        /// NONCE (RFC 8489 section 14.10).
        Nonce = 0x0015,
        /// XOR-RELAYED-ADDRESS (RFC 8656 section 18.5).
        XorRelayedAddress = 0x0016,
        /// REQUESTED-ADDRESS-FAMILY (RFC 8656 section 18.6, from RFC 6156).
        RequestedAddressFamily = 0x0017,
        /// EVEN-PORT (RFC 8656 section 18.7).
        EvenPort = 0x0018,
        /// REQUESTED-TRANSPORT (RFC 8656 section 18.8).
        RequestedTransport = 0x0019,
        /// DONT-FRAGMENT (RFC 8656 section 18.9).
        DontFragment = 0x001A,
        /// XOR-MAPPED-ADDRESS (RFC 8489 section 14.2).
        XorMappedAddress = 0x0020,
        /// RESERVATION-TOKEN (RFC 8656 section 18.10).
        ReservationToken = 0x0022,
        /// PRIORITY (ICE, RFC 8445 section 7.1.1).
        Priority = 0x0024,
        /// USE-CANDIDATE (ICE, RFC 8445 section 7.1.2).
        UseCandidate = 0x0025,
        /// ADDITIONAL-ADDRESS-FAMILY, the second family of a dual allocation (RFC 8656 section
        /// 18.11).
        AdditionalAddressFamily = 0x8000,
        /// ADDRESS-ERROR-CODE, why one family of a dual allocation failed (RFC 8656 section
        /// 18.12).
        AddressErrorCode = 0x8001,
        /// SOFTWARE (RFC 8489 section 14.14).
        Software = 0x8022,
        /// FINGERPRINT (RFC 8489 section 14.7).
        Fingerprint = 0x8028,
        /// ICE-CONTROLLED (ICE, RFC 8445 section 7.1.3).
        IceControlled = 0x8029,
        /// ICE-CONTROLLING (ICE, RFC 8445 section 7.1.3).
        IceControlling = 0x802A,
    }
}

impl AttributeType {
    /// Comprehension-required (RFC 8489 section 14: 0x0000-0x7FFF): a request carrying one
    /// this server does not understand is answered with 420 Unknown Attribute.
    pub const fn is_comprehension_required(self) -> bool {
        is_comprehension_required(self.code())
    }
}

/// Short aliases of [`AttributeType`] variants, for builder code (`b.add(USERNAME, ..)`).
/// There is deliberately no `DATA` alias: write [`AttributeType::Data`] (the attribute) or
/// [`crate::message::Method::Data`] (the method).
pub const MAPPED_ADDRESS: AttributeType = AttributeType::MappedAddress;
/// [`AttributeType::Username`].
pub const USERNAME: AttributeType = AttributeType::Username;
/// [`AttributeType::MessageIntegrity`].
pub const MESSAGE_INTEGRITY: AttributeType = AttributeType::MessageIntegrity;
/// [`AttributeType::ErrorCode`].
pub const ERROR_CODE: AttributeType = AttributeType::ErrorCode;
/// [`AttributeType::UnknownAttributes`].
pub const UNKNOWN_ATTRIBUTES: AttributeType = AttributeType::UnknownAttributes;
/// [`AttributeType::ChannelNumber`].
pub const CHANNEL_NUMBER: AttributeType = AttributeType::ChannelNumber;
/// [`AttributeType::Lifetime`].
pub const LIFETIME: AttributeType = AttributeType::Lifetime;
/// [`AttributeType::XorPeerAddress`].
pub const XOR_PEER_ADDRESS: AttributeType = AttributeType::XorPeerAddress;
/// [`AttributeType::Realm`].
pub const REALM: AttributeType = AttributeType::Realm;
/// [`AttributeType::Nonce`].
pub const NONCE: AttributeType = AttributeType::Nonce;
/// [`AttributeType::XorRelayedAddress`].
pub const XOR_RELAYED_ADDRESS: AttributeType = AttributeType::XorRelayedAddress;
/// [`AttributeType::RequestedAddressFamily`].
pub const REQUESTED_ADDRESS_FAMILY: AttributeType = AttributeType::RequestedAddressFamily;
/// [`AttributeType::EvenPort`].
pub const EVEN_PORT: AttributeType = AttributeType::EvenPort;
/// [`AttributeType::RequestedTransport`].
pub const REQUESTED_TRANSPORT: AttributeType = AttributeType::RequestedTransport;
/// [`AttributeType::DontFragment`].
pub const DONT_FRAGMENT: AttributeType = AttributeType::DontFragment;
/// [`AttributeType::XorMappedAddress`].
pub const XOR_MAPPED_ADDRESS: AttributeType = AttributeType::XorMappedAddress;
/// [`AttributeType::ReservationToken`].
pub const RESERVATION_TOKEN: AttributeType = AttributeType::ReservationToken;
/// [`AttributeType::Priority`].
pub const PRIORITY: AttributeType = AttributeType::Priority;
/// [`AttributeType::UseCandidate`].
pub const USE_CANDIDATE: AttributeType = AttributeType::UseCandidate;
/// [`AttributeType::Software`].
pub const SOFTWARE: AttributeType = AttributeType::Software;
/// [`AttributeType::Fingerprint`].
pub const FINGERPRINT: AttributeType = AttributeType::Fingerprint;
/// [`AttributeType::IceControlled`].
pub const ICE_CONTROLLED: AttributeType = AttributeType::IceControlled;
/// [`AttributeType::IceControlling`].
pub const ICE_CONTROLLING: AttributeType = AttributeType::IceControlling;

/// True if this server understands the attribute type `typ` (every comprehension-required
/// type it knows); any other comprehension-required one in a request is answered with 420.
pub(crate) fn is_understood(typ: u16) -> bool {
    AttributeType::from_code(typ).is_some()
}

/// True if `typ` is comprehension-required (RFC 8489 section 14: 0x0000-0x7FFF).
pub const fn is_comprehension_required(typ: u16) -> bool {
    typ < 0x8000
}

/// IANA protocol number of UDP in REQUESTED-TRANSPORT.
pub const PROTOCOL_UDP: u8 = 17;

/// An attribute value that does not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttributeError {
    /// Wrong length for the attribute type.
    #[error("attribute has an invalid length")]
    BadLength,
    /// Unknown address family byte.
    #[error("unknown address family")]
    BadFamily,
    /// Text attribute is not UTF-8 or too long.
    #[error("invalid text attribute")]
    BadText,
    /// A required attribute is absent.
    #[error("missing attribute")]
    Missing,
}

/// The `N` address bytes that follow an address attribute's 4-byte header (reserved, family,
/// port): `BadLength` unless exactly `N` follow.
fn address_bytes<const N: usize>(value: &[u8]) -> Result<[u8; N], AttributeError> {
    value
        .get(4..)
        .and_then(|rest| rest.try_into().ok())
        .ok_or(AttributeError::BadLength)
}

/// Decode an XOR'd address (XOR-MAPPED/PEER/RELAYED-ADDRESS).
pub fn decode_xor_address(value: &[u8], tid: &TransactionId) -> Result<SocketAddr, AttributeError> {
    if value.len() < 4 {
        return Err(AttributeError::BadLength);
    }
    let port = u16::from_be_bytes([value[2], value[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    match value[1] {
        0x01 => {
            let ip = u32::from_be_bytes(address_bytes(value)?) ^ MAGIC_COOKIE;
            Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        0x02 => {
            let mut ip: [u8; 16] = address_bytes(value)?;
            for (b, k) in ip.iter_mut().zip(xor_key(tid)) {
                *b ^= k;
            }
            Ok(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        _ => Err(AttributeError::BadFamily),
    }
}

/// Encode an XOR'd address value (8 bytes for IPv4, 20 for IPv6) into `out`.
pub fn encode_xor_address(out: &mut Vec<u8>, addr: SocketAddr, tid: &TransactionId) {
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.extend_from_slice(&[0, 0x01]);
            out.extend_from_slice(&port.to_be_bytes());
            out.extend_from_slice(&(u32::from(ip) ^ MAGIC_COOKIE).to_be_bytes());
        }
        IpAddr::V6(ip) => {
            out.extend_from_slice(&[0, 0x02]);
            out.extend_from_slice(&port.to_be_bytes());
            for (b, k) in ip.octets().iter().zip(xor_key(tid)) {
                out.push(b ^ k);
            }
        }
    }
}

/// Length of an encoded XOR'd address value.
pub fn xor_address_len(addr: &SocketAddr) -> usize {
    if addr.is_ipv4() { 8 } else { 20 }
}

/// Decode a plain (non-XOR) MAPPED-ADDRESS value.
pub fn decode_address(value: &[u8]) -> Result<SocketAddr, AttributeError> {
    if value.len() < 4 {
        return Err(AttributeError::BadLength);
    }
    let port = u16::from_be_bytes([value[2], value[3]]);
    match (value[1], value.len()) {
        (0x01, 8) => {
            let raw: [u8; 4] = value[4..8]
                .try_into()
                .map_err(|_| AttributeError::BadLength)?;
            Ok(SocketAddr::new(IpAddr::V4(raw.into()), port))
        }
        (0x02, 20) => {
            let raw: [u8; 16] = value[4..20]
                .try_into()
                .map_err(|_| AttributeError::BadLength)?;
            Ok(SocketAddr::new(IpAddr::V6(raw.into()), port))
        }
        (0x01 | 0x02, _) => Err(AttributeError::BadLength),
        _ => Err(AttributeError::BadFamily),
    }
}

fn xor_key(tid: &TransactionId) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    key[4..].copy_from_slice(&tid.0);
    key
}

/// A decoded ERROR-CODE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorCodeValue<'a> {
    /// 300..699.
    pub code: u16,
    /// The reason phrase (may be empty).
    pub reason: &'a str,
}

impl ErrorCodeValue<'_> {
    /// The code as an [`ErrorCode`], if it is one this crate knows.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_code(self.code)
    }
}

/// Decode an ERROR-CODE value.
pub fn decode_error_code(value: &[u8]) -> Result<ErrorCodeValue<'_>, AttributeError> {
    if value.len() < 4 {
        return Err(AttributeError::BadLength);
    }
    let class = u16::from(value[2] & 0x07);
    let number = u16::from(value[3]);
    if !(3..=6).contains(&class) || number > 99 {
        return Err(AttributeError::BadLength);
    }
    let reason = std::str::from_utf8(&value[4..]).map_err(|_| AttributeError::BadText)?;
    Ok(ErrorCodeValue {
        code: class * 100 + number,
        reason,
    })
}

/// Encode an ERROR-CODE value.
pub fn encode_error_code(out: &mut Vec<u8>, code: u16, reason: &str) {
    out.extend_from_slice(&[0, 0, (code / 100) as u8, (code % 100) as u8]);
    out.extend_from_slice(reason.as_bytes());
}

/// Encode ADDRESS-ERROR-CODE (RFC 8656 section 18.12): the address family (0x01 IPv4, 0x02
/// IPv6), then class and number as in ERROR-CODE, then the reason phrase.
pub fn encode_address_error_code(out: &mut Vec<u8>, family: u8, code: u16, reason: &str) {
    out.extend_from_slice(&[family, 0, (code / 100) as u8, (code % 100) as u8]);
    out.extend_from_slice(reason.as_bytes());
}

/// Decode a 4-byte big-endian value (LIFETIME, PRIORITY).
pub fn decode_u32(value: &[u8]) -> Result<u32, AttributeError> {
    let raw: [u8; 4] = value.try_into().map_err(|_| AttributeError::BadLength)?;
    Ok(u32::from_be_bytes(raw))
}

/// Decode CHANNEL-NUMBER (2 bytes number + 2 bytes RFFU).
pub fn decode_channel_number(value: &[u8]) -> Result<u16, AttributeError> {
    if value.len() != 4 {
        return Err(AttributeError::BadLength);
    }
    Ok(u16::from_be_bytes([value[0], value[1]]))
}

/// Decode REQUESTED-TRANSPORT: the IANA protocol number.
pub fn decode_requested_transport(value: &[u8]) -> Result<u8, AttributeError> {
    if value.len() != 4 {
        return Err(AttributeError::BadLength);
    }
    Ok(value[0])
}

/// Decode REQUESTED-ADDRESS-FAMILY: 0x01 IPv4, 0x02 IPv6, anything else is returned as is.
pub fn decode_address_family(value: &[u8]) -> Result<u8, AttributeError> {
    if value.len() != 4 {
        return Err(AttributeError::BadLength);
    }
    Ok(value[0])
}

/// Decode a UTF-8 text attribute (USERNAME, REALM, NONCE, SOFTWARE) of at most `max` bytes.
pub fn decode_text(value: &[u8], max: usize) -> Result<&str, AttributeError> {
    if value.len() > max {
        return Err(AttributeError::BadText);
    }
    std::str::from_utf8(value).map_err(|_| AttributeError::BadText)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xor_address_round_trips_v4_and_v6() {
        let tid = TransactionId([7; 12]);
        for s in [
            "192.0.2.1:32853",
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
        ] {
            let addr: SocketAddr = s.parse().unwrap();
            let mut v = Vec::new();
            encode_xor_address(&mut v, addr, &tid);
            assert_eq!(v.len(), xor_address_len(&addr));
            assert_eq!(decode_xor_address(&v, &tid).unwrap(), addr);
        }
    }

    #[test]
    fn bad_address_values_are_errors() {
        let tid = TransactionId([0; 12]);
        assert_eq!(
            decode_xor_address(&[0, 1, 0], &tid),
            Err(AttributeError::BadLength)
        );
        assert_eq!(
            decode_xor_address(&[0, 1, 0, 0, 1], &tid),
            Err(AttributeError::BadLength)
        );
        assert_eq!(
            decode_xor_address(&[0, 3, 0, 0, 1, 2, 3, 4], &tid),
            Err(AttributeError::BadFamily)
        );
        assert_eq!(
            decode_xor_address(&[0, 2, 0, 0, 1, 2, 3, 4], &tid),
            Err(AttributeError::BadLength)
        );
    }

    #[test]
    fn error_code_round_trips() {
        let mut v = Vec::new();
        encode_error_code(&mut v, 438, "Stale Nonce");
        let e = decode_error_code(&v).unwrap();
        assert_eq!(e.code, 438);
        assert_eq!(e.reason, "Stale Nonce");
    }
}
