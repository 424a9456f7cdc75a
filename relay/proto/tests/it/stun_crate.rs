//! Cross-checks against the `stun` crate (webrtc-rs): messages it encodes verify with our
//! parser, and messages we encode verify with it.

use std::net::{IpAddr, SocketAddr};

use relay_proto::Method;
use relay_proto::attributes::{self, USERNAME, XOR_MAPPED_ADDRESS};
use relay_proto::auth::long_term_key;
use relay_proto::message::{Class, MessageBuilder, StunMessage, TransactionId};
use stun::attributes::{ATTR_USERNAME, ATTR_XORMAPPED_ADDRESS};
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{BINDING_REQUEST, BINDING_SUCCESS, Getter, Message, Setter};
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;

#[test]
fn stun_crate_messages_verify_with_our_parser() {
    let mut m = Message::new();
    let integrity = MessageIntegrity::new_long_term_integrity(
        "alice".to_owned(),
        "example.org".to_owned(),
        "secret".to_owned(),
    );
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(BINDING_SUCCESS),
        Box::new(stun::agent::TransactionId::new()),
        Box::new(TextAttribute::new(ATTR_USERNAME, "alice".to_owned())),
        Box::new(XorMappedAddress {
            ip: "2001:db8::7".parse::<IpAddr>().unwrap(),
            port: 4242,
        }),
        Box::new(integrity),
        Box::new(FINGERPRINT),
    ];
    m.build(&setters).unwrap();
    let ours = StunMessage::parse(&m.raw).unwrap();
    assert_eq!(
        (ours.method(), ours.class()),
        (Some(Method::Binding), Class::Success)
    );
    assert_eq!(ours.get(USERNAME), Some(&b"alice"[..]));
    assert!(ours.has_fingerprint());
    assert!(ours.verify_integrity(&long_term_key("alice", "example.org", "secret")));
    let addr = attributes::decode_xor_address(
        ours.get(XOR_MAPPED_ADDRESS).unwrap(),
        &ours.transaction_id(),
    );
    assert_eq!(
        addr.unwrap(),
        "[2001:db8::7]:4242".parse::<SocketAddr>().unwrap()
    );
}

#[test]
fn our_messages_verify_with_the_stun_crate() {
    let key = long_term_key("bob", "example.org", "pw");
    let mapped: SocketAddr = "192.0.2.33:5555".parse().unwrap();
    let mut b = MessageBuilder::new(Method::Binding, Class::Request, TransactionId([4; 12]));
    b.add(USERNAME, b"bob")
        .add_xor_address(XOR_MAPPED_ADDRESS, mapped)
        .add_message_integrity(&key)
        .add_fingerprint();
    let bytes = b.finish();

    let mut m = Message::new();
    m.unmarshal_binary(&bytes).unwrap();
    assert_eq!(m.typ, BINDING_REQUEST);
    FINGERPRINT.check(&m).unwrap();
    MessageIntegrity::new_long_term_integrity(
        "bob".to_owned(),
        "example.org".to_owned(),
        "pw".to_owned(),
    )
    .check(&mut m)
    .unwrap();
    let mut xor = XorMappedAddress::default();
    xor.get_from(&m).unwrap();
    assert_eq!(SocketAddr::new(xor.ip, xor.port), mapped);
    assert!(m.contains(ATTR_XORMAPPED_ADDRESS));
}
