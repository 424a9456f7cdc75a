//! TURN scenarios written once against [`Wire`], a TURN server reached some way, and run twice:
//! on the sans-IO `Server` with a fake clock (`conformance_sans_io.rs`, this crate) and through
//! the real relay, its `Shard`s and sockets, on loopback (`relay/tests/it/conformance.rs`,
//! which includes this file by path). The same bytes in, the same answers out: the I/O layer
//! adds nothing and loses nothing. Only `relay_proto`'s codec and `std` are used here.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use relay_proto::attributes::{self, AttributeType};
use relay_proto::auth::long_term_key;
use relay_proto::message::{Class, MessageBuilder, StunMessage, TransactionId};
use relay_proto::{ErrorCode, Method, channel_data};

/// The realm both servers run with.
pub(crate) const REALM: &str = "example.org";
/// Static users both servers know: (name, password).
pub(crate) const USERS: [(&str, &str); 2] = [("alice", "alice-pass"), ("bob", "bob-pass")];
/// Client sockets (5-tuples) a scenario may use.
pub(crate) const CLIENTS: usize = 3;
/// Peer sockets a scenario may use. Permissions are per IP: peer 1 must have another IP than
/// peer 0 (on loopback, 127.0.0.2).
pub(crate) const PEERS: usize = 2;

/// A TURN server as the scenarios see it: client sockets `0..CLIENTS` and peer sockets
/// `0..PEERS`, addressed by index.
pub(crate) trait Wire {
    /// The address the server sees client `client` at (its XOR-MAPPED-ADDRESS).
    fn client_addr(&self, client: usize) -> SocketAddr;
    /// The address of peer `peer`.
    fn peer_addr(&self, peer: usize) -> SocketAddr;
    /// Send a request from `client` and return the one response.
    fn request(&mut self, client: usize, packet: &[u8]) -> Vec<u8>;
    /// Send an indication or ChannelData from `client` (no response).
    fn send(&mut self, client: usize, packet: &[u8]);
    /// The next datagram `client` received unasked (Data indication, ChannelData).
    fn client_recv(&mut self, client: usize) -> Option<Vec<u8>>;
    /// The next datagram peer `peer` received: (source address, payload).
    fn peer_recv(&mut self, peer: usize) -> Option<(SocketAddr, Vec<u8>)>;
    /// True if peer `peer` receives nothing (the real wire waits a little to say so).
    fn peer_received_nothing(&mut self, peer: usize) -> bool;
    /// Peer `peer` sends `data` to the relay address `to`.
    fn peer_send(&mut self, peer: usize, to: SocketAddr, data: &[u8]);
}

/// A TURN client on one of the wire's client sockets.
pub(crate) struct TurnClient {
    socket: usize,
    username: String,
    key: [u8; 16],
    nonce: Option<String>,
    tid: u32,
}

impl TurnClient {
    pub(crate) fn new(socket: usize, username: &str, password: &str) -> Self {
        Self {
            socket,
            username: username.to_owned(),
            key: long_term_key(username, REALM, password),
            nonce: None,
            tid: 0,
        }
    }

    /// Unique across clients: two clients on one socket must not look like retransmissions.
    fn next_tid(&mut self) -> TransactionId {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        self.tid += 1;
        let mut t = [0u8; 12];
        t[..4].copy_from_slice(&self.tid.to_be_bytes());
        t[4..8].copy_from_slice(&NEXT.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        t[8] = self.socket as u8;
        TransactionId(t)
    }

    /// A request with the credentials once a nonce is known.
    fn build(&mut self, method: Method, attrs: &dyn Fn(&mut MessageBuilder)) -> Vec<u8> {
        let tid = self.next_tid();
        let mut b = MessageBuilder::new(method, Class::Request, tid);
        attrs(&mut b);
        if let Some(nonce) = &self.nonce {
            b.add(AttributeType::Username, self.username.as_bytes())
                .add(AttributeType::Realm, REALM.as_bytes())
                .add(AttributeType::Nonce, nonce.as_bytes())
                .add_message_integrity(&self.key);
        }
        b.add_fingerprint();
        b.finish()
    }

    /// Send a request; on the first 401 (no nonce yet) or a 438, learn the nonce and retry
    /// once. `Ok(success response)` or `Err(error code)`.
    fn transact<W: Wire>(
        &mut self,
        w: &mut W,
        method: Method,
        attrs: &dyn Fn(&mut MessageBuilder),
    ) -> Result<Vec<u8>, u16> {
        let mut resp = w.request(self.socket, &self.build(method, attrs));
        let code = error_code(&resp);
        if (code == Some(401) && self.nonce.is_none()) || code == Some(438) {
            let m = StunMessage::parse(&resp).expect("a STUN response");
            let nonce = m
                .get(AttributeType::Nonce)
                .expect("a challenge has a NONCE");
            self.nonce = Some(String::from_utf8(nonce.to_vec()).expect("NONCE is text"));
            resp = w.request(self.socket, &self.build(method, attrs));
        }
        let m = StunMessage::parse(&resp).expect("a STUN response");
        assert_eq!(m.method(), Some(method), "the response is to our method");
        match error_code(&resp) {
            Some(code) => Err(code),
            None => {
                assert_eq!(m.class(), Class::Success);
                assert!(m.verify_integrity(&self.key), "signed with our key");
                assert!(m.has_fingerprint());
                Ok(resp)
            }
        }
    }

    /// Allocate (UDP, IPv4); the XOR-RELAYED-ADDRESS.
    pub(crate) fn allocate<W: Wire>(&mut self, w: &mut W) -> Result<SocketAddr, u16> {
        let resp = self.transact(w, Method::Allocate, &|b| {
            b.add(AttributeType::RequestedTransport, &[17, 0, 0, 0]);
        })?;
        let m = StunMessage::parse(&resp).unwrap();
        Ok(xor_address(&m, AttributeType::XorRelayedAddress))
    }

    /// Refresh with `lifetime` seconds; the granted LIFETIME.
    pub(crate) fn refresh<W: Wire>(&mut self, w: &mut W, lifetime: u32) -> Result<u32, u16> {
        let resp = self.transact(w, Method::Refresh, &|b| {
            b.add_u32(AttributeType::Lifetime, lifetime);
        })?;
        let m = StunMessage::parse(&resp).unwrap();
        Ok(attributes::decode_u32(m.get(AttributeType::Lifetime).unwrap()).unwrap())
    }

    pub(crate) fn create_permission<W: Wire>(
        &mut self,
        w: &mut W,
        peer: SocketAddr,
    ) -> Result<(), u16> {
        self.transact(w, Method::CreatePermission, &|b| {
            b.add_xor_address(AttributeType::XorPeerAddress, peer);
        })
        .map(drop)
    }

    pub(crate) fn channel_bind<W: Wire>(
        &mut self,
        w: &mut W,
        number: u16,
        peer: SocketAddr,
    ) -> Result<(), u16> {
        self.transact(w, Method::ChannelBind, &|b| {
            let n = number.to_be_bytes();
            b.add(AttributeType::ChannelNumber, &[n[0], n[1], 0, 0])
                .add_xor_address(AttributeType::XorPeerAddress, peer);
        })
        .map(drop)
    }

    /// A Send indication of `data` to `peer`.
    pub(crate) fn send_indication<W: Wire>(&mut self, w: &mut W, peer: SocketAddr, data: &[u8]) {
        let tid = self.next_tid();
        let mut b = MessageBuilder::new(Method::Send, Class::Indication, tid);
        b.add_xor_address(AttributeType::XorPeerAddress, peer)
            .add(AttributeType::Data, data);
        w.send(self.socket, &b.finish());
    }

    /// ChannelData of `data` on channel `number`.
    pub(crate) fn send_channel_data<W: Wire>(&mut self, w: &mut W, number: u16, data: &[u8]) {
        let mut header = [0u8; channel_data::CHANNEL_DATA_HEADER_LEN];
        channel_data::write_header(&mut header, number, data.len() as u16);
        let mut packet = header.to_vec();
        packet.extend_from_slice(data);
        w.send(self.socket, &packet);
    }
}

/// The ERROR-CODE of a response, if any.
pub(crate) fn error_code(resp: &[u8]) -> Option<u16> {
    let m = StunMessage::parse(resp).ok()?;
    attributes::decode_error_code(m.get(AttributeType::ErrorCode)?)
        .ok()
        .map(|e| e.code)
}

/// `packet` parsed, after asserting that it is a `class` message of `method`.
fn parse_as(packet: &[u8], method: Method, class: Class) -> StunMessage<'_> {
    let m = StunMessage::parse(packet).expect("a STUN message");
    assert_eq!((m.method(), m.class()), (Some(method), class));
    m
}

/// The address in `m`'s XOR-encoded address attribute `attr`.
fn xor_address(m: &StunMessage<'_>, attr: AttributeType) -> SocketAddr {
    attributes::decode_xor_address(m.get(attr).unwrap(), &m.transaction_id()).unwrap()
}

/// (XOR-PEER-ADDRESS, DATA) of a Data indication.
fn data_indication(packet: &[u8]) -> (SocketAddr, Vec<u8>) {
    let m = parse_as(packet, Method::Data, Class::Indication);
    let peer = xor_address(&m, AttributeType::XorPeerAddress);
    (peer, m.get(AttributeType::Data).unwrap().to_vec())
}

/// One `#[test]` per scenario of this module, each run on a fresh `$wire`. `$scenarios` names
/// this module where the macro is used (the including crates mount it under different names).
macro_rules! conformance_tests {
    ($scenarios:ident, $wire:expr) => {
        $scenarios::conformance_tests!(
            @each $scenarios, $wire,
            allocation_life_cycle,
            allocation_belongs_to_its_5_tuple_and_user,
            send_and_data_indications,
            channel_data_both_ways,
        );
    };
    (@each $scenarios:ident, $wire:expr, $($scenario:ident),* $(,)?) => {
        $(
            #[test]
            fn $scenario() {
                $scenarios::$scenario(&mut $wire);
            }
        )*
    };
}
pub(crate) use conformance_tests;

/// Binding answers with the client's address; an Allocate first gets 401, then the relayed
/// address; Refresh grants a lifetime; Refresh 0 deletes; a Refresh after that is a 437.
pub(crate) fn allocation_life_cycle<W: Wire>(w: &mut W) {
    let tid = TransactionId([9; 12]);
    let binding = MessageBuilder::new(Method::Binding, Class::Request, tid).finish();
    let resp = w.request(0, &binding);
    let m = parse_as(&resp, Method::Binding, Class::Success);
    let mapped = xor_address(&m, AttributeType::XorMappedAddress);
    assert_eq!(mapped, w.client_addr(0));

    let mut alice = TurnClient::new(0, USERS[0].0, USERS[0].1);
    let relayed = alice.allocate(w).expect("allocate");
    assert!(relayed.is_ipv4());
    assert_eq!(alice.refresh(w, 600), Ok(600));
    assert_eq!(alice.refresh(w, 0), Ok(0));
    assert_eq!(
        alice.refresh(w, 600),
        Err(ErrorCode::AllocationMismatch.code())
    );
}

/// One allocation per 5-tuple (437 for a second one), and only its creator may use it (441).
pub(crate) fn allocation_belongs_to_its_5_tuple_and_user<W: Wire>(w: &mut W) {
    let mut alice = TurnClient::new(0, USERS[0].0, USERS[0].1);
    alice.allocate(w).expect("allocate");
    let mut again = TurnClient::new(0, USERS[0].0, USERS[0].1);
    assert_eq!(again.allocate(w), Err(ErrorCode::AllocationMismatch.code()));
    let mut bob_on_alices_socket = TurnClient::new(0, USERS[1].0, USERS[1].1);
    assert_eq!(
        bob_on_alices_socket.refresh(w, 600),
        Err(ErrorCode::WrongCredentials.code())
    );
    let mut wrong_password = TurnClient::new(1, USERS[0].0, "not-the-password");
    assert_eq!(
        wrong_password.allocate(w),
        Err(ErrorCode::Unauthorized.code())
    );
    assert_eq!(alice.refresh(w, 0), Ok(0));
}

/// Send indications reach a permitted peer from the relayed address; the peer's answer comes
/// back as a Data indication; a peer without permission is not relayed.
pub(crate) fn send_and_data_indications<W: Wire>(w: &mut W) {
    let mut alice = TurnClient::new(1, USERS[0].0, USERS[0].1);
    let relayed = alice.allocate(w).expect("allocate");
    let (peer, stranger) = (w.peer_addr(0), w.peer_addr(1));
    alice.create_permission(w, peer).expect("permission");

    alice.send_indication(w, peer, b"to the peer");
    let (from, data) = w.peer_recv(0).expect("relayed to the peer");
    assert_eq!(data, b"to the peer");
    assert_eq!(from.port(), relayed.port(), "sent from the relayed address");

    w.peer_send(0, relayed, b"to the client");
    let got = w.client_recv(1).expect("relayed to the client");
    assert_eq!(data_indication(&got), (peer, b"to the client".to_vec()));

    // No permission for the stranger (another IP): dropped both ways.
    w.peer_send(1, relayed, b"unsolicited");
    alice.send_indication(w, stranger, b"not permitted");
    w.peer_send(0, relayed, b"after the stranger");
    let got = w
        .client_recv(1)
        .expect("the permitted peer still gets through");
    assert_eq!(
        data_indication(&got),
        (peer, b"after the stranger".to_vec()),
        "the stranger's datagram was not relayed"
    );
    assert!(
        w.peer_received_nothing(1),
        "nothing relayed to the stranger"
    );
    assert_eq!(alice.refresh(w, 0), Ok(0));
}

/// ChannelBind, then ChannelData both ways; the peer sees the bare payload.
pub(crate) fn channel_data_both_ways<W: Wire>(w: &mut W) {
    let mut bob = TurnClient::new(2, USERS[1].0, USERS[1].1);
    let relayed = bob.allocate(w).expect("allocate");
    let peer = w.peer_addr(0);
    bob.channel_bind(w, 0x4001, peer).expect("channel bind");
    assert_eq!(
        bob.channel_bind(w, 0x4002, peer),
        Err(ErrorCode::BadRequest.code()),
        "a peer has one channel"
    );

    bob.send_channel_data(w, 0x4001, b"over the channel");
    let (from, data) = w.peer_recv(0).expect("relayed to the peer");
    assert_eq!(
        (from.port(), data.as_slice()),
        (relayed.port(), &b"over the channel"[..])
    );

    w.peer_send(0, relayed, b"back, odd length");
    let got = w.client_recv(2).expect("relayed to the client");
    let (number, payload) = channel_data::parse(&got).expect("ChannelData");
    assert_eq!(number, 0x4001);
    assert_eq!(&got[payload], b"back, odd length");
    assert_eq!(bob.refresh(w, 0), Ok(0));
}
