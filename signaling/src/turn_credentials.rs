//! ICE servers for clients, with short-lived TURN credentials in the TURN REST scheme:
//! `username = "<expiry-unix>:<room>:<peer-id>"`, `credential = base64(HMAC-SHA1(secret,
//! username))`. The user part `<room>:<peer-id>` is what the relay bills usage to (its room is
//! the part before the last `:`; room ids and peer ids never hold a `:`). Any REST server
//! accepts it: coturn reads the expiry before the first `:` as well.
//!
//! The relay holds the same secret list and recomputes the credential, so nothing is stored.
//! The first configured secret signs; the relay accepts any of its list, which lets secrets
//! rotate without dropping allocations.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use relay_proto::auth::rest_password;

use crate::config::{Config, Secret};
use crate::protocol::{IceServer, PeerId, RoomId};
use crate::relay_fleet::RelayFleet;

/// Mints the `ice_servers` list for a peer: the TURN URLs of its room's relay when the server
/// knows a relay fleet with an active relay, else the static `--turn-url` list.
#[derive(Debug, Clone)]
pub struct IceServerMinter {
    stun_urls: Vec<String>,
    turn_urls: Vec<String>,
    fleet: Option<Arc<RelayFleet>>,
    /// The signing secret (the first configured one); `None` when no TURN is configured.
    /// Shared by every clone, so that a reload ([`IceServerMinter::set_signing_secret`])
    /// reaches the hub's too.
    signing_secret: Arc<RwLock<Option<Secret>>>,
    ttl: Duration,
}

impl IceServerMinter {
    /// From the configuration's `--stun-url`, `--turn-url`, `--turn-secret`, `--turn-ttl`.
    pub fn from_config(config: &Config) -> Self {
        Self {
            stun_urls: config.stun_urls.clone(),
            turn_urls: config.turn_urls.clone(),
            fleet: None,
            signing_secret: Arc::new(RwLock::new(config.turn_secrets.first().cloned())),
            ttl: config.turn_ttl,
        }
    }

    /// Also mints from `fleet` (cluster mode), whose relays must accept this minter's secret.
    pub fn with_fleet(mut self, fleet: Arc<RelayFleet>) -> Self {
        fleet.set_signing_secret(self.signing_secret().as_ref().map(Secret::expose));
        self.fleet = Some(fleet);
        self
    }

    /// Signs with `secret` from now on (SIGHUP), in this minter and every clone of it.
    pub fn set_signing_secret(&self, secret: Option<Secret>) {
        if let Some(fleet) = &self.fleet {
            fleet.set_signing_secret(secret.as_ref().map(Secret::expose));
        }
        *self
            .signing_secret
            .write()
            .unwrap_or_else(PoisonError::into_inner) = secret;
    }

    fn signing_secret(&self) -> Option<Secret> {
        self.signing_secret
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// When fresh credentials must be pushed after minting: at 80% of the TTL. `None` when no
    /// credentials expire.
    pub fn refresh_after(&self) -> Option<Duration> {
        self.mints_credentials().then(|| self.ttl.mul_f64(0.8))
    }

    fn mints_credentials(&self) -> bool {
        self.signing_secret().is_some() && (!self.turn_urls.is_empty() || self.fleet.is_some())
    }

    /// The ICE servers for `peer` of `room`, with TURN credentials valid from `now` for the TTL.
    pub fn mint(&self, peer: &PeerId, room: &RoomId, now: SystemTime) -> Vec<IceServer> {
        let relay = self.fleet.as_ref().and_then(|fleet| fleet.relay_for(room));
        let turn_urls = relay.map_or_else(|| self.turn_urls.clone(), |relay| relay.urls);
        let mut servers = Vec::with_capacity(2);
        if !self.stun_urls.is_empty() {
            servers.push(IceServer {
                urls: self.stun_urls.clone(),
                username: None,
                credential: None,
            });
        }
        if let (Some(secret), false) = (self.signing_secret(), turn_urls.is_empty()) {
            let expiry = now
                .checked_add(self.ttl)
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            let username = format!("{expiry}:{room}:{peer}");
            let credential = rest_password(secret.expose(), &username);
            servers.push(IceServer {
                urls: turn_urls,
                username: Some(username),
                credential: Some(credential),
            });
        }
        servers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use clap::Parser;

    #[test]
    fn hmac_matches_a_known_value() {
        // RFC 2202 test case 2: HMAC-SHA1("Jefe", "what do ya want for nothing?")
        // = effcdf6ae5eb2fa2d27416d5f184df9c259a7c79.
        let expected = base64::engine::general_purpose::STANDARD.encode([
            0xef, 0xfc, 0xdf, 0x6a, 0xe5, 0xeb, 0x2f, 0xa2, 0xd2, 0x74, 0x16, 0xd5, 0xf1, 0x84,
            0xdf, 0x9c, 0x25, 0x9a, 0x7c, 0x79,
        ]);
        assert_eq!(
            rest_password(b"Jefe", "what do ya want for nothing?"),
            expected
        );
        assert_eq!(expected, "7/zfauXrL6LSdBbV8YTfnCWafHk=");
    }

    #[test]
    fn mints_stun_and_turn_entries_with_expiry_and_peer_id() {
        let config = Config::parse_from([
            "signaling",
            "--stun-url",
            "stun:127.0.0.1:3478",
            "--turn-url",
            "turn:127.0.0.1:3478,turns:127.0.0.1:5349",
            "--turn-secret",
            "first,second",
            "--turn-ttl",
            "10m",
        ]);
        let minter = IceServerMinter::from_config(&config);
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let servers = minter.mint(&PeerId::from("p1"), &RoomId::from("r"), now);
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0].urls, vec!["stun:127.0.0.1:3478".to_owned()]);
        assert_eq!(servers[0].username, None);
        let turn = &servers[1];
        assert_eq!(turn.urls.len(), 2);
        assert_eq!(turn.username.as_deref(), Some("1000600:r:p1"));
        assert_eq!(
            turn.credential.as_deref(),
            Some(rest_password(b"first", "1000600:r:p1").as_str())
        );
        assert_eq!(minter.refresh_after(), Some(Duration::from_secs(480)));
    }

    #[test]
    fn no_turn_means_no_credentials() {
        let minter = IceServerMinter::from_config(&Config::parse_from(["signaling"]));
        assert!(
            minter
                .mint(&PeerId::from("p"), &RoomId::from("r"), SystemTime::now())
                .is_empty()
        );
        assert_eq!(minter.refresh_after(), None);
    }
}
