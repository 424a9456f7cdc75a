//! Fresh ICE servers from the signaling server, and which connections must restart ICE.
//!
//! `ice_servers` (`docs/protocol.md`) means one of two things. With the same TURN URLs as
//! before it is a credential refresh: the connection takes the new configuration, and a
//! connected one whose local candidate is relayed restarts ICE onto allocations made with the
//! fresh credentials (an allocation keeps the credentials it was made with, and stops
//! refreshing once the secret that signed them is rotated out). With different TURN URLs the
//! room moved to another relay of the fleet (its relay died or drains): a connection whose
//! selected candidate pair goes through a relayed candidate of a TURN server that is no longer
//! listed restarts ICE; direct pairs (host, srflx, prflx) are left alone. [`relay_moved`] is
//! that decision, as a pure function.

use std::collections::BTreeSet;
use std::net::IpAddr;

use signaling::protocol::IceServer;

/// Default port of `turn:` URLs (RFC 7065).
pub(crate) const DEFAULT_TURN_PORT: u16 = 3478;
/// Default port of `turns:` URLs (RFC 7065).
pub(crate) const DEFAULT_TURNS_PORT: u16 = 5349;

/// A `turn:` or `turns:` URL split into its parts (RFC 7065:
/// `turn[s]:HOST[:PORT][?transport=T]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TurnUrl {
    /// `turns:` (TLS).
    pub(crate) tls: bool,
    /// Host name or IP literal, without IPv6 brackets.
    pub(crate) host: String,
    /// The port, or the scheme's default.
    pub(crate) port: u16,
    /// The `transport` parameter as written (`udp`, `tcp`), if any.
    pub(crate) transport: Option<String>,
}

impl TurnUrl {
    /// `None` for anything but a well-formed `turn:`/`turns:` URL.
    pub(crate) fn parse(url: &str) -> Option<Self> {
        let (tls, rest) = match url.strip_prefix("turns:") {
            Some(rest) => (true, rest),
            None => (false, url.strip_prefix("turn:")?),
        };
        let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
        let transport = query
            .split('&')
            .find_map(|param| param.strip_prefix("transport="))
            .map(str::to_owned);
        let default_port = if tls {
            DEFAULT_TURNS_PORT
        } else {
            DEFAULT_TURN_PORT
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']')?;
            let port = match after.strip_prefix(':') {
                Some(port) => port.parse().ok()?,
                None if after.is_empty() => default_port,
                None => return None,
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, port.parse().ok()?),
                None => (authority, default_port),
            }
        };
        if host.is_empty() {
            return None;
        }
        Some(Self {
            tls,
            host: host.to_owned(),
            port,
            transport,
        })
    }

    /// `HOST:PORT` (IPv6 in brackets): the server this URL names, whatever the transport.
    pub(crate) fn server(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether both URLs name the same server (host and port; scheme and transport aside).
    /// IP literals are compared as addresses, names case-insensitively.
    fn same_server(&self, other: &Self) -> bool {
        self.port == other.port
            && match (self.host.parse::<IpAddr>(), other.host.parse::<IpAddr>()) {
                (Ok(a), Ok(b)) => a == b,
                _ => self.host.eq_ignore_ascii_case(&other.host),
            }
    }
}

/// The TURN URLs (`turn:`, `turns:`) among `servers`: what tells a relay move from a
/// credential refresh. STUN URLs and credentials do not count; order does not either.
pub(crate) fn turn_urls(servers: &[IceServer]) -> BTreeSet<String> {
    servers
        .iter()
        .flat_map(|server| &server.urls)
        .filter(|url| url.starts_with("turn:") || url.starts_with("turns:"))
        .cloned()
        .collect()
}

/// Whether a connection must restart ICE because the TURN servers changed from `old` to `new`
/// (both as [`turn_urls`]).
///
/// `local_type` is the candidate type of the selected pair's local candidate (`host`, `srflx`,
/// `prflx`, `relay`; `None` while no pair is selected) and `relay_url` the URL of the TURN
/// server that relayed candidate was allocated on (`RTCIceCandidateStats.url`), if known.
/// `path_lost`: the connection was connected and is not any more (disconnected, failed, or
/// checking again after a failure restart).
///
/// Same URLs (a credential refresh): no restart. Otherwise restart when the local candidate
/// is relayed and its server (host:port) is not named by any of the new TURN URLs, or cannot
/// be determined; or when no pair is selected and the path was lost (its restarts so far
/// gathered on the old servers, likely the relay that died). A direct local candidate, or no
/// pair on a connection that never connected: no restart.
pub(crate) fn relay_moved(
    old: &BTreeSet<String>,
    new: &BTreeSet<String>,
    local_type: Option<&str>,
    relay_url: Option<&str>,
    path_lost: bool,
) -> bool {
    if old == new {
        return false;
    }
    match local_type {
        None => return path_lost,
        Some("relay") => {}
        Some(_) => return false,
    }
    let Some(server) = relay_url.and_then(TurnUrl::parse) else {
        return true;
    };
    !new.iter()
        .filter_map(|url| TurnUrl::parse(url))
        .any(|listed| listed.same_server(&server))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(urls: &[&str]) -> BTreeSet<String> {
        urls.iter().map(|url| (*url).to_owned()).collect()
    }

    const A: &str = "turn:10.0.0.1:3478?transport=udp";
    const A_TCP: &str = "turn:10.0.0.1:3478?transport=tcp";
    const B: &str = "turn:10.0.0.2:3478?transport=udp";
    const B_TLS: &str = "turns:10.0.0.2:5349";

    /// Whether a connection relayed through `server` restarts when the TURN URLs go from
    /// `old` to `new` (the pair is not failing).
    fn relayed_moves(old: &[&str], new: &[&str], server: &str) -> bool {
        relay_moved(&set(old), &set(new), Some("relay"), Some(server), false)
    }

    #[test]
    fn same_urls_is_a_credential_refresh() {
        let urls = set(&[A, A_TCP]);
        for local in [Some("relay"), Some("host"), None] {
            assert!(!relay_moved(&urls, &urls, local, Some(A), false));
            assert!(!relay_moved(&urls, &urls, local, None, false));
        }
    }

    #[test]
    fn a_relayed_pair_on_a_server_no_longer_listed_restarts() {
        assert!(relayed_moves(&[A, A_TCP], &[B, B_TLS], A));
        // Gathered over TCP (a bridged URL already mapped back to the listed one).
        assert!(relayed_moves(&[A, A_TCP], &[B, B_TLS], A_TCP));
        // The relay died: every TURN URL is gone.
        assert!(relayed_moves(&[A, A_TCP], &[], A));
    }

    #[test]
    fn a_relayed_pair_on_a_server_still_listed_stays() {
        // Another relay added, ours kept.
        assert!(!relayed_moves(&[A], &[A, B], A));
        // Same host:port under another transport or scheme: the same server.
        assert!(!relayed_moves(&[A], &[A_TCP, B], A));
        assert!(!relayed_moves(&[B], &["turn:10.0.0.2"], B));
        // Names compare case-insensitively, IPv6 literals as addresses.
        assert!(!relayed_moves(
            &["turn:relay-1.example.org:3478"],
            &["turn:Relay-1.Example.org:3478?transport=tcp"],
            "turn:relay-1.example.org:3478?transport=udp",
        ));
        assert!(!relayed_moves(
            &["turn:[::1]:3478"],
            &["turn:[0:0::1]:3478?transport=udp"],
            "turn:[::1]:3478?transport=udp",
        ));
        // Same host, other port: another relay.
        assert!(relayed_moves(&[A], &["turn:10.0.0.1:3479"], A));
    }

    #[test]
    fn an_unknown_relay_server_restarts_when_the_urls_changed() {
        let old = set(&[A]);
        let new = set(&[A, B]);
        assert!(relay_moved(&old, &new, Some("relay"), None, false));
        assert!(relay_moved(&old, &new, Some("relay"), Some(""), false));
        assert!(relay_moved(
            &old,
            &new,
            Some("relay"),
            Some("stun:10.0.0.1:3478"),
            false
        ));
        assert!(!relay_moved(&new, &new, Some("relay"), None, false));
    }

    #[test]
    fn direct_pairs_and_unselected_connections_are_left_alone() {
        let old = set(&[A]);
        let new = set(&[B]);
        for local in ["host", "srflx", "prflx"] {
            assert!(!relay_moved(&old, &new, Some(local), None, false));
            assert!(!relay_moved(&old, &new, Some(local), Some(A), false));
        }
        assert!(!relay_moved(&old, &new, None, None, false));
        // A direct pair that is failing is left to the failure restart too.
        assert!(!relay_moved(&old, &new, Some("host"), None, true));
    }

    #[test]
    fn a_lost_connection_without_a_pair_restarts_on_new_servers() {
        let old = set(&[A]);
        // Its failure restarts gathered on the old relay: try the new one at once.
        assert!(relay_moved(&old, &set(&[B]), None, None, true));
        // Not on a credential refresh.
        assert!(!relay_moved(&old, &old, None, None, true));
    }

    #[test]
    fn turn_urls_ignore_stun_credentials_and_order() {
        let server = |urls: &[&str], user: &str| IceServer {
            urls: urls.iter().map(|url| (*url).to_owned()).collect(),
            username: Some(user.into()),
            credential: Some(format!("{user}-secret")),
        };
        let before = vec![
            server(&["stun:10.0.0.1:3478"], "x"),
            server(&[A, A_TCP], "1700000000:p1"),
        ];
        let refreshed = vec![
            server(&[A_TCP, A], "1700000600:p1"),
            server(&["stun:10.0.0.9:3478"], "y"),
        ];
        assert_eq!(turn_urls(&before), turn_urls(&refreshed));
        assert_eq!(turn_urls(&before), set(&[A, A_TCP]));
        let moved = vec![server(&[B], "1700000600:p1")];
        assert_ne!(turn_urls(&before), turn_urls(&moved));
    }

    #[test]
    fn turn_urls_parse() {
        assert_eq!(
            TurnUrl::parse("turn:relay.example.org?transport=tcp"),
            Some(TurnUrl {
                tls: false,
                host: "relay.example.org".into(),
                port: DEFAULT_TURN_PORT,
                transport: Some("tcp".into()),
            })
        );
        assert_eq!(
            TurnUrl::parse("turns:[2001:db8::1]").map(|url| (url.tls, url.port, url.server())),
            Some((true, DEFAULT_TURNS_PORT, "[2001:db8::1]:5349".to_owned()))
        );
        assert_eq!(
            TurnUrl::parse(A).map(|url| url.server()).as_deref(),
            Some("10.0.0.1:3478")
        );
        assert_eq!(TurnUrl::parse("stun:10.0.0.1:3478"), None);
        assert_eq!(TurnUrl::parse("turn::3478"), None);
        assert_eq!(TurnUrl::parse("turn:h:notaport"), None);
        assert_eq!(TurnUrl::parse("turn:[::1]x"), None);
    }
}
