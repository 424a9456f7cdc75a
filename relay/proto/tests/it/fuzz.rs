//! Property tests: no panic on arbitrary bytes for the STUN decoder, the ChannelData parser,
//! stream framing and the whole server (client and peer paths).

use std::time::Instant;

use proptest::prelude::*;
use relay_proto::message::{Class, MessageBuilder, StunMessage, TransactionId};
use relay_proto::{HEADROOM, Method, Server, channel_data, framing};

use crate::support::{Client, Harness, config, udp};

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn stun_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(m) = StunMessage::parse(&bytes) {
            for a in m.attributes() {
                prop_assert!(a.value.len() <= bytes.len());
            }
            let _ = m.verify_integrity(b"key");
            let _ = m.unknown_required();
        }
    }

    #[test]
    fn stun_decoder_survives_plausible_headers(
        typ in any::<u16>(),
        body in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        // A valid header and length in front of random attributes reaches the attribute walk.
        let len = body.len() & !3;
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&(typ & 0x3FFF).to_be_bytes());
        bytes.extend_from_slice(&(len as u16).to_be_bytes());
        bytes.extend_from_slice(&0x2112_A442u32.to_be_bytes());
        bytes.extend_from_slice(&[7; 12]);
        bytes.extend_from_slice(&body[..len]);
        let _ = StunMessage::parse(&bytes);
    }

    #[test]
    fn channel_data_and_framing_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
        if let Ok((n, range)) = channel_data::parse(&bytes) {
            prop_assert!(channel_data::is_valid_channel(n));
            prop_assert!(range.end <= bytes.len());
        }
        if let Ok(Some(len)) = framing::stream_frame_len(&bytes) {
            prop_assert!((4..=framing::MAX_FRAME_LEN).contains(&len));
        }
    }

    #[test]
    fn server_never_panics_on_arbitrary_client_and_peer_bytes(
        packets in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..120), 1..20),
    ) {
        // A live allocation with a permission, so that peer bytes reach the relay path (a
        // relay handle only comes from the server).
        let mut h = Harness::new();
        let mut alice = Client::alice_at(udp("192.0.2.1:1000"));
        let relay = alice.allocate_handle(&mut h);
        let peer = "8.8.8.8:1".parse().unwrap();
        let _ = alice.transact(&mut h, |c| c.permission_request(&[peer]));
        let (t0, server) = (h.now, &mut h.server);
        for p in &packets {
            let _ = server.handle_client_packet(t0, alice.from, p);
            let mut buf = vec![0u8; HEADROOM + p.len()];
            buf[HEADROOM..].copy_from_slice(p);
            let _ = server.handle_peer_packet(t0, relay, peer, &mut buf, p.len());
            while server.poll_output().is_some() {}
        }
    }

    #[test]
    fn server_never_panics_on_mutated_requests(flip in 0usize..64, value in any::<u8>()) {
        let t0 = Instant::now();
        let mut server = Server::new(config(t0));
        let mut b = MessageBuilder::new(Method::Allocate, Class::Request, TransactionId([3; 12]));
        b.add(0x0019u16, &[17, 0, 0, 0]).add(0x0006u16, b"alice").add(0x0015u16, b"nonce").add(0x0014u16, b"realm")
            .add_message_integrity(b"k").add_fingerprint();
        let mut bytes = b.finish();
        let i = flip % bytes.len();
        bytes[i] = value;
        let _ = server.handle_client_packet(t0, udp("192.0.2.1:1000"), &bytes);
        while server.poll_output().is_some() {}
    }
}
