//! STUN messages (RFC 8489): a borrowed, zero-copy parse (`StunMessage<'a>` over the receive
//! buffer), MESSAGE-INTEGRITY (HMAC-SHA1) and FINGERPRINT checks, and `MessageBuilder`, the
//! encoder that writes header, attributes, integrity and fingerprint into one `Vec`.

use ring::hmac;
use subtle::ConstantTimeEq;

use crate::attributes::{self, AttributeType};
use crate::error_code::ErrorCode;

/// The fixed magic cookie of RFC 5389/8489 messages.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Size of the STUN header.
pub const HEADER_LEN: usize = 20;
/// XOR constant of the FINGERPRINT CRC-32.
const FINGERPRINT_XOR: u32 = 0x5354_554e;

wire_code_enum! {
    /// The STUN/TURN methods this crate knows. A message may carry any 12-bit method:
    /// [`StunMessage::method_code`] keeps it, [`StunMessage::method`] says whether it is one of
    /// these.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum Method {
        /// Binding (RFC 8489 section 18.1): request, or indication as a keepalive.
        Binding = 0x001,
        /// Allocate, request only (RFC 8656 section 7).
        Allocate = 0x003,
        /// Refresh, request only (RFC 8656 section 8).
        Refresh = 0x004,
        /// Send, indication only: client to peer through the relay (RFC 8656 section 11.1).
        Send = 0x006,
        /// Data, indication only: peer to client (RFC 8656 section 11.3). Not to be confused
        /// with the DATA *attribute*, [`crate::attributes::AttributeType::Data`].
        Data = 0x007,
        /// CreatePermission, request only (RFC 8656 section 10).
        CreatePermission = 0x008,
        /// ChannelBind, request only (RFC 8656 section 12).
        ChannelBind = 0x009,
    }
}

/// The 96-bit transaction id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TransactionId(pub [u8; 12]);

/// The class bits of a message type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// 0b00.
    Request,
    /// 0b01.
    Indication,
    /// 0b10.
    Success,
    /// 0b11.
    Error,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Self::Request => 0,
            Self::Indication => 1,
            Self::Success => 2,
            Self::Error => 3,
        }
    }
}

/// Encode method and class into the 14-bit message type.
pub fn message_type(method: impl Into<u16>, class: Class) -> u16 {
    let method = method.into();
    let c = class.bits();
    (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((c & 1) << 4)
        | ((c & 2) << 7)
}

fn split_type(typ: u16) -> (u16, Class) {
    let method = (typ & 0x000F) | ((typ >> 1) & 0x0070) | ((typ >> 2) & 0x0F80);
    let class = match ((typ >> 4) & 1) | ((typ >> 7) & 2) {
        0 => Class::Request,
        1 => Class::Indication,
        2 => Class::Success,
        _ => Class::Error,
    };
    (method, class)
}

/// Why bytes are not a STUN message. Small and `Copy`: it is counted, not logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer than 20 bytes.
    #[error("shorter than a STUN header")]
    TooShort,
    /// The first two bits are not zero.
    #[error("not a STUN message")]
    NotStun,
    /// Wrong magic cookie (RFC 3489 messages are not supported).
    #[error("bad magic cookie")]
    BadCookie,
    /// The length field is not a multiple of 4 or does not match the buffer.
    #[error("bad message length")]
    BadLength,
    /// An attribute runs past the end of the message.
    #[error("truncated attribute")]
    TruncatedAttribute,
    /// MESSAGE-INTEGRITY or FINGERPRINT has the wrong size, or something follows FINGERPRINT.
    #[error("misplaced or malformed integrity/fingerprint attribute")]
    BadTrailer,
    /// FINGERPRINT does not match.
    #[error("fingerprint mismatch")]
    BadFingerprint,
    /// More than [`MAX_ATTRIBUTES`] attributes.
    #[error("more than {MAX_ATTRIBUTES} attributes")]
    TooManyAttributes,
}

/// The most attributes a message may carry. Real ones carry about a dozen (a CreatePermission
/// for `--max-permissions` peers at once, 64 by default, about 70); a datagram packed with
/// thousands of empty ones would make every lookup (each a walk of the attributes) cost a
/// worker a millisecond, so it is refused at parse, before any lookup.
pub const MAX_ATTRIBUTES: usize = 128;

/// One raw attribute: type and unpadded value, borrowed from the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawAttribute<'a> {
    /// Attribute type.
    pub typ: u16,
    /// Value without padding.
    pub value: &'a [u8],
}

/// A parsed STUN message borrowing the receive buffer. Parsing validates the framing of every
/// attribute and the FINGERPRINT (if present); attribute values are decoded lazily.
#[derive(Clone, Copy, Debug)]
pub struct StunMessage<'a> {
    raw: &'a [u8],
    method: u16,
    class: Class,
    transaction_id: TransactionId,
    /// Offset of the MESSAGE-INTEGRITY attribute header; attributes after it are ignored.
    integrity: Option<usize>,
    /// Offset of the FINGERPRINT attribute header.
    fingerprint: Option<usize>,
}

impl<'a> StunMessage<'a> {
    /// Parse exactly one message (`buf` must be the whole message: one UDP datagram or one
    /// stream frame).
    pub fn parse(buf: &'a [u8]) -> Result<Self, DecodeError> {
        if buf.len() < HEADER_LEN {
            return Err(DecodeError::TooShort);
        }
        if buf[0] & 0xC0 != 0 {
            return Err(DecodeError::NotStun);
        }
        let length = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        if length % 4 != 0 || HEADER_LEN + length != buf.len() {
            return Err(DecodeError::BadLength);
        }
        if u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) != MAGIC_COOKIE {
            return Err(DecodeError::BadCookie);
        }
        let (method, class) = split_type(u16::from_be_bytes([buf[0], buf[1]]));
        let mut tid = [0u8; 12];
        tid.copy_from_slice(&buf[8..20]);
        let mut msg = Self {
            raw: buf,
            method,
            class,
            transaction_id: TransactionId(tid),
            integrity: None,
            fingerprint: None,
        };
        let mut pos = HEADER_LEN;
        let mut count = 0;
        while pos < buf.len() {
            if msg.fingerprint.is_some() {
                return Err(DecodeError::BadTrailer);
            }
            count += 1;
            if count > MAX_ATTRIBUTES {
                return Err(DecodeError::TooManyAttributes);
            }
            let (typ, len) = attr_header(buf, pos).ok_or(DecodeError::TruncatedAttribute)?;
            let padded = (len + 3) & !3;
            if pos + 4 + padded > buf.len() {
                return Err(DecodeError::TruncatedAttribute);
            }
            const MESSAGE_INTEGRITY: u16 = AttributeType::MessageIntegrity.code();
            const FINGERPRINT: u16 = AttributeType::Fingerprint.code();
            match typ {
                MESSAGE_INTEGRITY if msg.integrity.is_none() => {
                    if len != 20 {
                        return Err(DecodeError::BadTrailer);
                    }
                    msg.integrity = Some(pos);
                }
                FINGERPRINT => {
                    if len != 4 {
                        return Err(DecodeError::BadTrailer);
                    }
                    msg.fingerprint = Some(pos);
                }
                _ => {}
            }
            pos += 4 + padded;
        }
        if let Some(fp) = msg.fingerprint {
            let expected = u32::from_be_bytes([buf[fp + 4], buf[fp + 5], buf[fp + 6], buf[fp + 7]]);
            if crc32fast::hash(&buf[..fp]) ^ FINGERPRINT_XOR != expected {
                return Err(DecodeError::BadFingerprint);
            }
        }
        Ok(msg)
    }

    /// The method, if it is one this crate knows.
    pub fn method(&self) -> Option<Method> {
        Method::from_code(self.method)
    }

    /// The 12-bit method code as received (known or not).
    pub fn method_code(&self) -> u16 {
        self.method
    }

    /// The class.
    pub fn class(&self) -> Class {
        self.class
    }

    /// The transaction id.
    pub fn transaction_id(&self) -> TransactionId {
        self.transaction_id
    }

    /// The whole message.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// True if MESSAGE-INTEGRITY is present.
    pub fn has_integrity(&self) -> bool {
        self.integrity.is_some()
    }

    /// True if a (valid: parse checks it) FINGERPRINT is present.
    pub fn has_fingerprint(&self) -> bool {
        self.fingerprint.is_some()
    }

    /// The attributes that count: those before MESSAGE-INTEGRITY (or before FINGERPRINT).
    pub fn attributes(&self) -> Attributes<'a> {
        let end = self
            .integrity
            .or(self.fingerprint)
            .unwrap_or(self.raw.len());
        Attributes {
            raw: &self.raw[..end],
            pos: HEADER_LEN,
        }
    }

    /// The first attribute of type `typ` (an [`AttributeType`] or a raw code) before
    /// MESSAGE-INTEGRITY.
    pub fn get(&self, typ: impl Into<u16>) -> Option<&'a [u8]> {
        let typ = typ.into();
        self.attributes().find(|a| a.typ == typ).map(|a| a.value)
    }

    /// Every attribute of type `typ` before MESSAGE-INTEGRITY, in order.
    pub fn get_all(&self, typ: AttributeType) -> impl Iterator<Item = &'a [u8]> + use<'a> {
        self.attributes()
            .filter(move |a| a.typ == typ.code())
            .map(|a| a.value)
    }

    /// Comprehension-required attributes this server does not understand (for 420), at most
    /// `UNKNOWN_LIMIT`, without allocating.
    pub fn unknown_required(&self) -> ([u16; UNKNOWN_LIMIT], usize) {
        let mut out = [0u16; UNKNOWN_LIMIT];
        let mut n = 0;
        for a in self.attributes() {
            if attributes::is_comprehension_required(a.typ)
                && !attributes::is_understood(a.typ)
                && n < UNKNOWN_LIMIT
                && !out[..n].contains(&a.typ)
            {
                out[n] = a.typ;
                n += 1;
            }
        }
        (out, n)
    }

    /// Check MESSAGE-INTEGRITY (HMAC-SHA1 with `key`) in constant time. False if absent.
    pub fn verify_integrity(&self, key: &[u8]) -> bool {
        let Some(mi) = self.integrity else {
            return false;
        };
        let tag = integrity_tag(self.raw, mi, key);
        let got = &self.raw[mi + 4..mi + 24];
        bool::from(tag.as_ref().ct_eq(got))
    }
}

/// How many unknown attribute types a 420 response lists at most.
pub const UNKNOWN_LIMIT: usize = 8;

/// HMAC-SHA1 over `raw[..mi]` with the length field covering MESSAGE-INTEGRITY.
fn integrity_tag(raw: &[u8], mi: usize, key: &[u8]) -> hmac::Tag {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
    let mut ctx = hmac::Context::with_key(&key);
    let length = (mi + 24 - HEADER_LEN) as u16;
    ctx.update(&raw[..2]);
    ctx.update(&length.to_be_bytes());
    ctx.update(&raw[4..mi]);
    ctx.sign()
}

fn attr_header(buf: &[u8], pos: usize) -> Option<(u16, usize)> {
    let h = buf.get(pos..pos + 4)?;
    Some((
        u16::from_be_bytes([h[0], h[1]]),
        usize::from(u16::from_be_bytes([h[2], h[3]])),
    ))
}

/// Iterator over the attributes of a parsed message.
#[derive(Clone, Debug)]
pub struct Attributes<'a> {
    raw: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = RawAttribute<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        let (typ, len) = attr_header(self.raw, self.pos)?;
        let value = self.raw.get(self.pos + 4..self.pos + 4 + len)?;
        self.pos += 4 + ((len + 3) & !3);
        Some(RawAttribute { typ, value })
    }
}

/// Writes a STUN message: header first, then attributes (length kept up to date), then
/// optionally MESSAGE-INTEGRITY and FINGERPRINT.
#[derive(Clone, Debug)]
pub struct MessageBuilder {
    buf: Vec<u8>,
}

impl MessageBuilder {
    /// Start a message of `method` (a [`Method`] or a raw code).
    pub fn new(method: impl Into<u16>, class: Class, tid: TransactionId) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&message_type(method, class).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&tid.0);
        Self { buf }
    }

    /// Append an attribute with the given value.
    pub fn add(&mut self, typ: impl Into<u16>, value: &[u8]) -> &mut Self {
        self.add_with(typ, |out| out.extend_from_slice(value))
    }

    /// Append an attribute padded with `pad` instead of zeros (RFC 8489 lets senders pick any
    /// padding bytes; the RFC 5769 vectors use spaces, and integrity covers the padding).
    pub fn add_padded(&mut self, typ: impl Into<u16>, value: &[u8], pad: u8) -> &mut Self {
        self.add(typ, value);
        let padding = (4 - value.len() % 4) % 4;
        let end = self.buf.len();
        self.buf[end - padding..].fill(pad);
        self
    }

    /// Append an attribute whose value `write` appends to the buffer.
    pub fn add_with(&mut self, typ: impl Into<u16>, write: impl FnOnce(&mut Vec<u8>)) -> &mut Self {
        let start = self.buf.len();
        self.buf.extend_from_slice(&typ.into().to_be_bytes());
        self.buf.extend_from_slice(&[0, 0]);
        write(&mut self.buf);
        let len = self.buf.len() - start - 4;
        self.buf[start + 2..start + 4].copy_from_slice(&(len as u16).to_be_bytes());
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
        self.set_length();
        self
    }

    /// Append an XOR'd address attribute.
    pub fn add_xor_address(
        &mut self,
        typ: impl Into<u16>,
        addr: std::net::SocketAddr,
    ) -> &mut Self {
        let tid = self.transaction_id();
        self.add_with(typ, |out| attributes::encode_xor_address(out, addr, &tid))
    }

    /// Append ERROR-CODE with `reason` as the phrase (empty on unauthenticated responses).
    pub fn add_error_code(&mut self, code: ErrorCode, reason: &str) -> &mut Self {
        self.add_with(AttributeType::ErrorCode, |out| {
            attributes::encode_error_code(out, code.code(), reason)
        })
    }

    /// Append a 32-bit attribute (LIFETIME).
    pub fn add_u32(&mut self, typ: impl Into<u16>, value: u32) -> &mut Self {
        self.add(typ, &value.to_be_bytes())
    }

    /// Append MESSAGE-INTEGRITY computed with `key` (the long-term key).
    pub fn add_message_integrity(&mut self, key: &[u8]) -> &mut Self {
        let mi = self.buf.len();
        let tag = integrity_tag(&self.buf, mi, key);
        self.add(AttributeType::MessageIntegrity, tag.as_ref())
    }

    /// Append FINGERPRINT (must be last).
    pub fn add_fingerprint(&mut self) -> &mut Self {
        let fp = self.buf.len();
        // The CRC covers the header with the final length (including FINGERPRINT itself).
        let length = (fp + 8 - HEADER_LEN) as u16;
        self.buf[2..4].copy_from_slice(&length.to_be_bytes());
        let crc = crc32fast::hash(&self.buf) ^ FINGERPRINT_XOR;
        self.add(AttributeType::Fingerprint, &crc.to_be_bytes())
    }

    /// Current encoded size.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True if only the header was written.
    pub fn is_empty(&self) -> bool {
        self.buf.len() == HEADER_LEN
    }

    /// The transaction id written in the header.
    pub fn transaction_id(&self) -> TransactionId {
        let mut tid = [0u8; 12];
        tid.copy_from_slice(&self.buf[8..20]);
        TransactionId(tid)
    }

    /// The encoded message.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    fn set_length(&mut self) {
        let length = (self.buf.len() - HEADER_LEN) as u16;
        self.buf[2..4].copy_from_slice(&length.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_type_round_trips() {
        for method in Method::ALL.map(Method::code) {
            for class in [
                Class::Request,
                Class::Indication,
                Class::Success,
                Class::Error,
            ] {
                assert_eq!(split_type(message_type(method, class)), (method, class));
            }
        }
        assert_eq!(message_type(Method::Binding, Class::Request), 0x0001);
        assert_eq!(message_type(Method::Binding, Class::Success), 0x0101);
        assert_eq!(message_type(Method::Allocate, Class::Error), 0x0113);
        assert_eq!(message_type(Method::Send, Class::Indication), 0x0016);
        assert_eq!(message_type(Method::Data, Class::Indication), 0x0017);
        for m in Method::ALL {
            assert_eq!(Method::from_code(m.code()), Some(m));
        }
        assert_eq!(Method::from_code(0x002), None);
    }

    #[test]
    fn builder_output_parses_and_verifies() {
        let tid = TransactionId([9; 12]);
        let mut b = MessageBuilder::new(Method::Allocate, Class::Request, tid);
        b.add(attributes::USERNAME, b"user")
            .add_u32(attributes::LIFETIME, 600)
            .add_message_integrity(b"key")
            .add_fingerprint();
        let bytes = b.finish();
        let m = StunMessage::parse(&bytes).unwrap();
        assert_eq!(m.method(), Some(Method::Allocate));
        assert_eq!(m.class(), Class::Request);
        assert_eq!(m.transaction_id(), tid);
        assert_eq!(m.get(attributes::USERNAME), Some(&b"user"[..]));
        assert!(m.verify_integrity(b"key"));
        assert!(!m.verify_integrity(b"other"));
        assert!(m.has_fingerprint());
    }

    #[test]
    fn a_message_of_more_than_max_attributes_is_refused_at_parse() {
        let with = |n: usize| {
            let mut b =
                MessageBuilder::new(Method::Binding, Class::Request, TransactionId([2; 12]));
            for _ in 0..n {
                b.add(attributes::SOFTWARE, b"");
            }
            b.finish()
        };
        assert!(StunMessage::parse(&with(MAX_ATTRIBUTES)).is_ok());
        assert_eq!(
            StunMessage::parse(&with(MAX_ATTRIBUTES + 1)).unwrap_err(),
            DecodeError::TooManyAttributes
        );
    }

    #[test]
    fn corrupt_messages_are_rejected() {
        let tid = TransactionId([1; 12]);
        let mut b = MessageBuilder::new(Method::Binding, Class::Request, tid);
        b.add(attributes::SOFTWARE, b"x").add_fingerprint();
        let good = b.finish();
        assert!(StunMessage::parse(&good).is_ok());
        let mut bad = good.clone();
        bad[21] ^= 1;
        assert_eq!(
            StunMessage::parse(&bad).unwrap_err(),
            DecodeError::BadFingerprint
        );
        assert_eq!(
            StunMessage::parse(&good[..19]).unwrap_err(),
            DecodeError::TooShort
        );
        assert_eq!(
            StunMessage::parse(&good[..24]).unwrap_err(),
            DecodeError::BadLength
        );
        let mut cookie = good.clone();
        cookie[4] = 0;
        assert_eq!(
            StunMessage::parse(&cookie).unwrap_err(),
            DecodeError::BadCookie
        );
        let mut trunc = good.clone();
        trunc[23] = 200;
        assert_eq!(
            StunMessage::parse(&trunc).unwrap_err(),
            DecodeError::TruncatedAttribute
        );
    }
}
