//! `Server::reconfigure` (the relay's SIGHUP reload), with a fake clock: new credentials,
//! peer lists and quotas apply to the next request, allocations and channels that exist relay
//! on, and a bandwidth limit set later reaches existing allocations.

use std::net::SocketAddr;

use relay_proto::{ClientAction, LiveSettings, RateLimit};

use crate::support::{Client, Harness, REST_SECRET, UNIX_T0, channel_data_packet, error_code};

#[test]
fn new_secrets_lists_and_quotas_apply_at_once_and_allocations_relay_on() {
    let mut h = Harness::new();
    let mut carol = Client::carol(UNIX_T0 + 3600);
    carol.allocate(&mut h);
    let peer: SocketAddr = "203.0.114.7:6000".parse().unwrap();
    carol.bind_channel(&mut h, 0x4000, peer);

    let mut live = LiveSettings::of(h.server.config());
    live.rest_secrets = vec![b"new-secret".to_vec()];
    live.deny = vec!["203.0.114.0/24".parse().unwrap()];
    live.quotas.bandwidth_per_allocation = Some(RateLimit {
        per_second: 100,
        burst: 100,
    });
    h.server.reconfigure(&live);
    assert_eq!(h.server.config().auth.rest_secrets, live.rest_secrets);

    // The removed secret stops verifying, for a new client and on carol's next refresh.
    let mut old = Client::rest_for_an_hour("192.0.2.21:40000", "dave", REST_SECRET);
    assert_eq!(old.allocate_error(&mut h), Some(401));
    let resp = carol.transact(&mut h, |c| c.refresh_request(600));
    assert_eq!(error_code(&resp), Some(401));
    let mut new = Client::rest_for_an_hour("192.0.2.22:40000", "erin", b"new-secret");
    new.allocate(&mut h);
    // A new permission meets the new deny list.
    let resp = h.request(new.from, &new.permission_request(&[peer]));
    assert_eq!(error_code(&resp), Some(403));

    // Carol's channel relays on, now under the bandwidth limit it did not have.
    let packet = channel_data_packet(0x4000, &[7u8; 60]);
    assert!(matches!(
        h.send(carol.from, &packet),
        ClientAction::Forward { .. }
    ));
    assert_eq!(
        h.send(carol.from, &packet),
        ClientAction::Drop,
        "over 100 B/s"
    );
}
