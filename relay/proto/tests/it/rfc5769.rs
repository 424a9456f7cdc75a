//! RFC 5769 test vectors: parse, verify integrity and fingerprint, and re-encode byte for byte.

use std::net::SocketAddr;

use relay_proto::Method;
use relay_proto::attributes::{
    self, ICE_CONTROLLED, NONCE, PRIORITY, REALM, SOFTWARE, USERNAME, XOR_MAPPED_ADDRESS,
};
use relay_proto::auth::long_term_key;
use relay_proto::message::{Class, MessageBuilder, StunMessage, TransactionId};

fn hex(s: &str) -> Vec<u8> {
    let digits: String = s.split_whitespace().collect();
    hex::decode(digits).unwrap()
}

const PASSWORD: &str = "VOkJxbRl1RmTxUk/WvJxBt";
const TID: [u8; 12] = [
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
];

fn sample_request() -> Vec<u8> {
    hex("00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
         80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
         00 24 00 04 6e 00 01 ff
         80 29 00 08 93 2f f9 b1 51 26 3b 36
         00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
         00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
         80 28 00 04 e5 7a 3b cf")
}

fn ipv4_response() -> Vec<u8> {
    hex("01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
         80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
         00 20 00 08 00 01 a1 47 e1 12 a6 43
         00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
         80 28 00 04 c0 7d 4c 96")
}

fn ipv6_response() -> Vec<u8> {
    hex("01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
         80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
         00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
         00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
         80 28 00 04 c8 fb 0b 4c")
}

fn long_term_request() -> Vec<u8> {
    hex("00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
         00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
         00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46
                     53 54 76 79 36 34 73 41
         00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
         00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66")
}

#[test]
fn sample_request_parses_verifies_and_reencodes() {
    let bytes = sample_request();
    let m = StunMessage::parse(&bytes).unwrap();
    assert_eq!(
        (m.method(), m.class()),
        (Some(Method::Binding), Class::Request)
    );
    assert_eq!(m.transaction_id(), TransactionId(TID));
    assert_eq!(m.get(SOFTWARE), Some(&b"STUN test client"[..]));
    assert_eq!(m.get(USERNAME), Some(&b"evtj:h6vY"[..]));
    assert_eq!(m.get(PRIORITY), Some(&[0x6e, 0x00, 0x01, 0xff][..]));
    assert!(m.has_fingerprint());
    assert!(m.verify_integrity(PASSWORD.as_bytes()));
    assert!(!m.verify_integrity(b"wrong"));
    // ICE attributes are understood (not "unknown comprehension-required").
    assert_eq!(m.unknown_required().1, 0);

    let mut b = MessageBuilder::new(Method::Binding, Class::Request, TransactionId(TID));
    b.add(SOFTWARE, b"STUN test client")
        .add(PRIORITY, &[0x6e, 0x00, 0x01, 0xff])
        .add(
            ICE_CONTROLLED,
            &[0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36],
        )
        .add_padded(USERNAME, b"evtj:h6vY", b' ')
        .add_message_integrity(PASSWORD.as_bytes())
        .add_fingerprint();
    assert_eq!(b.finish(), bytes);
}

fn check_response(bytes: &[u8], mapped: &str) {
    let m = StunMessage::parse(bytes).unwrap();
    assert_eq!(
        (m.method(), m.class()),
        (Some(Method::Binding), Class::Success)
    );
    assert_eq!(m.get(SOFTWARE), Some(&b"test vector"[..]));
    let addr =
        attributes::decode_xor_address(m.get(XOR_MAPPED_ADDRESS).unwrap(), &m.transaction_id());
    let mapped: SocketAddr = mapped.parse().unwrap();
    assert_eq!(addr.unwrap(), mapped);
    assert!(m.verify_integrity(PASSWORD.as_bytes()));
    assert!(m.has_fingerprint());

    let mut b = MessageBuilder::new(Method::Binding, Class::Success, TransactionId(TID));
    b.add_padded(SOFTWARE, b"test vector", b' ')
        .add_xor_address(XOR_MAPPED_ADDRESS, mapped)
        .add_message_integrity(PASSWORD.as_bytes())
        .add_fingerprint();
    assert_eq!(b.finish(), bytes);
}

#[test]
fn ipv4_response_parses_verifies_and_reencodes() {
    check_response(&ipv4_response(), "192.0.2.1:32853");
}

#[test]
fn ipv6_response_parses_verifies_and_reencodes() {
    check_response(
        &ipv6_response(),
        "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
    );
}

#[test]
fn long_term_request_parses_verifies_and_reencodes() {
    let bytes = long_term_request();
    let m = StunMessage::parse(&bytes).unwrap();
    let username = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
    assert_eq!(m.get(USERNAME), Some(username.as_bytes()));
    assert_eq!(m.get(NONCE), Some(&b"f//499k954d6OL34oL9FSTvy64sA"[..]));
    assert_eq!(m.get(REALM), Some(&b"example.org"[..]));
    assert!(!m.has_fingerprint());
    // The password after SASLprep is "TheMatrIX".
    let key = long_term_key(username, "example.org", "TheMatrIX");
    assert!(m.verify_integrity(&key));
    assert!(!m.verify_integrity(&long_term_key(username, "example.org", "TheMatrix")));

    let tid = TransactionId([
        0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0, 0x29, 0xda, 0x41, 0x2e,
    ]);
    let mut b = MessageBuilder::new(Method::Binding, Class::Request, tid);
    b.add(USERNAME, username.as_bytes())
        .add(NONCE, b"f//499k954d6OL34oL9FSTvy64sA")
        .add(REALM, b"example.org")
        .add_message_integrity(&key);
    assert_eq!(b.finish(), bytes);
}

#[test]
fn any_flipped_bit_breaks_integrity_or_fingerprint() {
    let bytes = sample_request();
    for i in 20..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x01;
        // Either the message fails, or (a flipped FINGERPRINT type) the fingerprint becomes an
        // unknown optional attribute after MESSAGE-INTEGRITY, which RFC 8489 says to ignore.
        let ok = StunMessage::parse(&bad)
            .is_ok_and(|m| m.verify_integrity(PASSWORD.as_bytes()) && m.has_fingerprint());
        assert!(!ok, "flipping byte {i} went unnoticed");
    }
}
