//! A sans-IO harness: a `Server` with a fake clock, and a typed TURN test client that builds
//! requests with the crate's own codec and reads the queued responses.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use relay_proto::Method;
use relay_proto::attributes::{
    self, CHANNEL_NUMBER, ERROR_CODE, LIFETIME, NONCE, REALM, REQUESTED_TRANSPORT, USERNAME,
    XOR_PEER_ADDRESS, XOR_RELAYED_ADDRESS,
};
use relay_proto::auth::long_term_key;
use relay_proto::message::{Class, MessageBuilder, StunMessage, TransactionId};
use relay_proto::{
    AddressFamily, AttributeType, ClientAction, FiveTuple, Output, Quotas, RelayHandle, Server,
    ServerConfig, Transport, WallClock, channel_data,
};

pub(crate) const REALM_NAME: &str = "example.org";
pub(crate) const UNIX_T0: u64 = 1_700_000_000;
pub(crate) const REST_SECRET: &[u8] = b"rest-secret";

/// A server with users alice/alice-pass and bob/bob-pass, a REST secret, no rate limits.
pub(crate) fn config(t0: Instant) -> ServerConfig {
    let mut config = ServerConfig {
        realm: REALM_NAME.to_owned(),
        clock: WallClock {
            instant: t0,
            unix_secs: UNIX_T0,
        },
        quotas: Quotas {
            unauthenticated_per_ip: None,
            unauthorized_per_ip: None,
            ..Quotas::default()
        },
        ..ServerConfig::default()
    };
    config.auth.add_user("alice", "alice-pass");
    config.auth.add_user("bob", "bob-pass");
    config.auth.rest_secrets = vec![b"old-secret".to_vec(), REST_SECRET.to_vec()];
    config
}

pub(crate) fn five_tuple(client: &str, transport: Transport) -> FiveTuple {
    FiveTuple {
        client: client.parse().unwrap(),
        server: "198.51.100.1:3478".parse().unwrap(),
        transport,
    }
}

pub(crate) fn udp(client: &str) -> FiveTuple {
    five_tuple(client, Transport::Udp)
}

/// The fake clock and the server under test.
pub(crate) struct Harness {
    pub(crate) server: Server,
    pub(crate) now: Instant,
    next_port: u16,
}

impl Harness {
    pub(crate) fn new() -> Self {
        let t0 = Instant::now();
        Self::with_config(t0, config(t0))
    }

    /// A new harness in which [`Client::alice`] has allocated: (harness, alice, her relayed
    /// address).
    pub(crate) fn with_alice_allocated() -> (Self, Client, SocketAddr) {
        let mut h = Self::new();
        let mut alice = Client::alice();
        let relayed = alice.allocate(&mut h);
        (h, alice, relayed)
    }

    /// A new harness in which [`Client::alice`] has allocated: (harness, alice, the handle of
    /// her relay socket).
    pub(crate) fn with_alice_relay() -> (Self, Client, RelayHandle) {
        let mut h = Self::new();
        let mut alice = Client::alice();
        let relay = alice.allocate_handle(&mut h);
        (h, alice, relay)
    }

    /// A harness on `config` as changed by `change`.
    pub(crate) fn configured(change: impl FnOnce(&mut ServerConfig)) -> Self {
        let t0 = Instant::now();
        let mut config = config(t0);
        change(&mut config);
        Self::with_config(t0, config)
    }

    pub(crate) fn with_config(t0: Instant, config: ServerConfig) -> Self {
        Self {
            server: Server::new(config),
            now: t0,
            next_port: 50000,
        }
    }

    /// Advance the fake clock and run due timers.
    pub(crate) fn advance(&mut self, d: Duration) {
        self.now += d;
        self.server.handle_timeout(self.now);
    }

    pub(crate) fn send(&mut self, from: FiveTuple, packet: &[u8]) -> ClientAction {
        self.server.handle_client_packet(self.now, from, packet)
    }

    /// All queued outputs.
    pub(crate) fn outputs(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.server.poll_output()).collect()
    }

    /// Send a request and return the single response sent back to `from`.
    pub(crate) fn request(&mut self, from: FiveTuple, packet: &[u8]) -> Vec<u8> {
        let action = self.send(from, packet);
        assert_eq!(action, ClientAction::Queued, "no response queued");
        match self.outputs().as_slice() {
            [Output::Transmit { to, data }] => {
                assert_eq!(*to, from);
                data.clone()
            }
            other => panic!("expected one transmit, got {other:?}"),
        }
    }

    /// Answer a pending BindRelay with a fresh relay address; returns the response to the client.
    pub(crate) fn complete_bind(&mut self, relay: RelayHandle, family: AddressFamily) -> Vec<u8> {
        self.next_port += 2;
        let address: SocketAddr = match family {
            AddressFamily::V4 => SocketAddr::new("198.51.100.1".parse().unwrap(), self.next_port),
            AddressFamily::V6 => SocketAddr::new("2001:db8::1".parse().unwrap(), self.next_port),
        };
        self.server.handle_relay_bound(self.now, relay, Ok(address));
        match self.outputs().as_slice() {
            [Output::Transmit { data, .. }] => data.clone(),
            other => panic!("expected the Allocate response, got {other:?}"),
        }
    }
}

/// A TURN client's credentials and current nonce.
#[derive(Clone)]
pub(crate) struct Client {
    pub(crate) from: FiveTuple,
    pub(crate) username: String,
    pub(crate) key: [u8; 16],
    pub(crate) nonce: Option<String>,
    /// The REALM its requests name (the server's, unless a test changes it).
    pub(crate) realm: String,
    tid: u32,
}

impl Client {
    /// alice/alice-pass from 192.0.2.10:40000: the client most scenarios start with.
    pub(crate) fn alice() -> Self {
        Self::alice_at(udp("192.0.2.10:40000"))
    }

    /// alice/alice-pass from `from`.
    pub(crate) fn alice_at(from: FiveTuple) -> Self {
        Self::new(from, "alice", "alice-pass")
    }

    pub(crate) fn new(from: FiveTuple, username: &str, password: &str) -> Self {
        Self {
            from,
            username: username.to_owned(),
            key: long_term_key(username, REALM_NAME, password),
            nonce: None,
            realm: REALM_NAME.to_owned(),
            tid: 0,
        }
    }

    pub(crate) fn rest(from: FiveTuple, expiry: u64, user: &str, secret: &[u8]) -> Self {
        let username = format!("{expiry}:{user}");
        let password = relay_proto::auth::rest_password(secret, &username);
        Self::new(from, &username, &password)
    }

    /// `user` from `client`, a REST user of `secret` whose username expires an hour after
    /// [`UNIX_T0`].
    pub(crate) fn rest_for_an_hour(client: &str, user: &str, secret: &[u8]) -> Self {
        Self::rest(udp(client), UNIX_T0 + 3600, user, secret)
    }

    /// carol from 192.0.2.20:40000, a REST user of `REST_SECRET` whose username expires at
    /// `expiry` (Unix seconds).
    pub(crate) fn carol(expiry: u64) -> Self {
        Self::rest(udp("192.0.2.20:40000"), expiry, "carol", REST_SECRET)
    }

    pub(crate) fn next_tid(&mut self) -> TransactionId {
        self.tid += 1;
        let mut t = [0u8; 12];
        t[..4].copy_from_slice(&self.tid.to_be_bytes());
        t[4..8].copy_from_slice(&self.from.client.port().to_be_bytes().repeat(2));
        TransactionId(t)
    }

    /// A request with USERNAME/REALM/NONCE/MESSAGE-INTEGRITY if a nonce is known.
    pub(crate) fn build(
        &mut self,
        method: Method,
        tid: TransactionId,
        attrs: impl FnOnce(&mut MessageBuilder),
    ) -> Vec<u8> {
        let mut b = MessageBuilder::new(method, Class::Request, tid);
        attrs(&mut b);
        if let Some(nonce) = &self.nonce {
            b.add(USERNAME, self.username.as_bytes())
                .add(REALM, self.realm.as_bytes())
                .add(NONCE, nonce.as_bytes())
                .add_message_integrity(&self.key);
        }
        b.add_fingerprint();
        b.finish()
    }

    /// Send a request built by `make`; on 438 learn the new nonce and send it once more.
    pub(crate) fn transact(
        &mut self,
        h: &mut Harness,
        mut make: impl FnMut(&mut Self) -> Vec<u8>,
    ) -> Vec<u8> {
        let req = make(self);
        let resp = h.request(self.from, &req);
        if error_code(&resp) != Some(438) {
            return resp;
        }
        self.learn_nonce(&resp);
        let req = make(self);
        h.request(self.from, &req)
    }

    /// Remember the NONCE of a 401/438.
    pub(crate) fn learn_nonce(&mut self, response: &[u8]) {
        let m = StunMessage::parse(response).unwrap();
        let nonce = m.get(NONCE).expect("challenge carries a NONCE");
        self.nonce = Some(String::from_utf8(nonce.to_vec()).unwrap());
    }

    /// Send one Allocate (with credentials once a nonce is known) and return the response;
    /// nothing is bound, so it must be an error (a success would queue a `BindRelay`).
    pub(crate) fn allocate_once(&mut self, h: &mut Harness) -> Vec<u8> {
        let tid = self.next_tid();
        h.request(self.from, &self.allocate_request(tid))
    }

    /// Send an Allocate and learn the NONCE of the challenge (401 or 438) it draws; returns
    /// that challenge.
    pub(crate) fn fetch_nonce(&mut self, h: &mut Harness) -> Vec<u8> {
        let challenge = self.allocate_once(h);
        self.learn_nonce(&challenge);
        challenge
    }

    /// The error code of a fresh client's authenticated Allocate, sent after its challenge.
    pub(crate) fn allocate_error(&mut self, h: &mut Harness) -> Option<u16> {
        self.fetch_nonce(h);
        error_code(&self.allocate_once(h))
    }

    pub(crate) fn allocate_request(&mut self, tid: TransactionId) -> Vec<u8> {
        self.build(Method::Allocate, tid, |b| {
            b.add(REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        })
    }

    /// An Allocate of a UDP relay (REQUESTED-TRANSPORT first) with the attributes `attrs` adds.
    pub(crate) fn allocate_request_with(
        &mut self,
        attrs: impl FnOnce(&mut MessageBuilder),
    ) -> Vec<u8> {
        let tid = self.next_tid();
        self.build(Method::Allocate, tid, |b| {
            b.add(REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            attrs(b);
        })
    }

    pub(crate) fn refresh_request(&mut self, lifetime: u32) -> Vec<u8> {
        let tid = self.next_tid();
        self.build(Method::Refresh, tid, |b| {
            b.add_u32(LIFETIME, lifetime);
        })
    }

    pub(crate) fn permission_request(&mut self, peers: &[SocketAddr]) -> Vec<u8> {
        let tid = self.next_tid();
        self.build(Method::CreatePermission, tid, |b| {
            for p in peers {
                b.add_xor_address(XOR_PEER_ADDRESS, *p);
            }
        })
    }

    pub(crate) fn channel_bind_request(&mut self, number: u16, peer: SocketAddr) -> Vec<u8> {
        let tid = self.next_tid();
        self.build(Method::ChannelBind, tid, |b| {
            let n = number.to_be_bytes();
            b.add(CHANNEL_NUMBER, &[n[0], n[1], 0, 0])
                .add_xor_address(XOR_PEER_ADDRESS, peer);
        })
    }

    pub(crate) fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) -> Vec<u8> {
        let tid = self.next_tid();
        let mut b = MessageBuilder::new(Method::Send, Class::Indication, tid);
        b.add_xor_address(XOR_PEER_ADDRESS, peer)
            .add(AttributeType::Data, data);
        b.finish()
    }

    /// A ChannelBind of `number` to `peer` that must succeed.
    pub(crate) fn bind_channel(&mut self, h: &mut Harness, number: u16, peer: SocketAddr) {
        let resp = h.request(self.from, &self.channel_bind_request(number, peer));
        self.verify_success(&resp, Method::ChannelBind);
    }

    /// The error code of a ChannelBind of `number` to `peer` (`None` if it succeeds).
    pub(crate) fn channel_bind_error(
        &mut self,
        h: &mut Harness,
        number: u16,
        peer: SocketAddr,
    ) -> Option<u16> {
        error_code(&h.request(self.from, &self.channel_bind_request(number, peer)))
    }

    /// A Refresh asking for `lifetime` that must succeed; returns the LIFETIME granted.
    pub(crate) fn refresh(&mut self, h: &mut Harness, lifetime: u32) -> u32 {
        let resp = h.request(self.from, &self.refresh_request(lifetime));
        lifetime_of(&self.verify_success(&resp, Method::Refresh))
    }

    /// Full allocation: 401 challenge, authenticated Allocate, relay bind. Returns the
    /// XOR-RELAYED-ADDRESS.
    pub(crate) fn allocate(&mut self, h: &mut Harness) -> SocketAddr {
        self.allocate_family(h, AddressFamily::V4)
    }

    /// Full allocation (see `allocate`); returns the relay socket's handle, the name peer
    /// datagrams and `ReleaseRelay` use.
    pub(crate) fn allocate_handle(&mut self, h: &mut Harness) -> RelayHandle {
        self.allocate(h);
        h.server
            .relay_handle_of(&self.from)
            .expect("a live allocation")
    }

    pub(crate) fn allocate_family(&mut self, h: &mut Harness, family: AddressFamily) -> SocketAddr {
        if self.nonce.is_none() {
            let challenge = self.allocate_once(h);
            assert_eq!(error_code(&challenge), Some(401));
            self.learn_nonce(&challenge);
        }
        let req = self.allocate_request_with(|b| {
            if family == AddressFamily::V6 {
                b.add(attributes::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
            }
        });
        assert_eq!(h.send(self.from, &req), ClientAction::Queued);
        let outputs: Vec<Output> = h
            .outputs()
            .into_iter()
            .filter(|o| !matches!(o, Output::ReleaseRelay { .. }))
            .collect();
        let relay = match outputs.as_slice() {
            [
                Output::BindRelay {
                    relay,
                    family: f,
                    five_tuple,
                    ..
                },
            ] => {
                assert_eq!(*f, family);
                assert_eq!(*five_tuple, self.from);
                *relay
            }
            other => panic!("expected BindRelay, got {other:?}"),
        };
        let resp = h.complete_bind(relay, family);
        let m = self.verify_success(&resp, Method::Allocate);
        attributes::decode_xor_address(m.get(XOR_RELAYED_ADDRESS).unwrap(), &m.transaction_id())
            .unwrap()
    }

    /// Parse a success response and check its integrity with our key.
    pub(crate) fn verify_success<'a>(&self, resp: &'a [u8], method: Method) -> StunMessage<'a> {
        let m = StunMessage::parse(resp).unwrap();
        assert_eq!(
            (m.method(), m.class()),
            (Some(method), Class::Success),
            "error {:?}",
            error_code(resp)
        );
        assert!(m.verify_integrity(&self.key), "response integrity");
        assert!(m.has_fingerprint());
        m
    }
}

/// A ChannelData message of `payload` on channel `number`.
pub(crate) fn channel_data_packet(number: u16, payload: &[u8]) -> Vec<u8> {
    let mut header = [0u8; channel_data::CHANNEL_DATA_HEADER_LEN];
    channel_data::write_header(&mut header, number, payload.len() as u16);
    [&header[..], payload].concat()
}

/// The ERROR-CODE of a response, if any.
pub(crate) fn error_code(resp: &[u8]) -> Option<u16> {
    let m = StunMessage::parse(resp).ok()?;
    attributes::decode_error_code(m.get(ERROR_CODE)?)
        .ok()
        .map(|e| e.code)
}

pub(crate) fn lifetime_of(m: &StunMessage<'_>) -> u32 {
    attributes::decode_u32(m.get(LIFETIME).unwrap()).unwrap()
}
