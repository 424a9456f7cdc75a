//! `ServerConfig`: everything the core needs to decide, with the defaults of issue 3.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::policy::{IpNet, PeerPolicy};
use crate::quota::Quotas;

/// Configuration of one `Server` (clone it for every shard; the nonce secret is generated once
/// in `AuthConfig::default()`, so clones share it).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The REALM of long-term credentials (also part of every static user's key).
    pub realm: String,
    /// Users, REST secrets, nonce secret and lifetime.
    pub auth: AuthConfig,
    /// Which peer addresses clients may reach.
    pub policy: PeerPolicy,
    /// Per-user, per-allocation and per-source-IP limits.
    pub quotas: Quotas,
    /// Allocation lifetime when the client asks for none (RFC 8656: 600 s).
    pub default_allocation_lifetime: Duration,
    /// Upper bound on requested allocation lifetimes (3600 s).
    pub max_allocation_lifetime: Duration,
    /// Permission lifetime (RFC 8656: exactly 300 s).
    pub permission_lifetime: Duration,
    /// Channel binding lifetime (RFC 8656: 600 s).
    pub channel_lifetime: Duration,
    /// SOFTWARE attribute on authenticated responses; `None` (default) sends none.
    pub software: Option<String>,
    /// 1:1 NAT: the public IP advertised in XOR-RELAYED-ADDRESS for a relay bound on a private IP.
    pub external_ips: Vec<ExternalIp>,
    /// Maps `Instant`s to Unix time for REST usernames and nonces (captured at `default()`;
    /// tests set a fixed one).
    pub clock: WallClock,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            realm: "relay".to_owned(),
            auth: AuthConfig::default(),
            policy: PeerPolicy::default(),
            quotas: Quotas::default(),
            default_allocation_lifetime: Duration::from_secs(600),
            max_allocation_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            software: None,
            external_ips: Vec::new(),
            clock: WallClock::now(),
        }
    }
}

/// The part of a [`ServerConfig`] a running server takes anew (`Server::reconfigure`, the
/// relay's SIGHUP reload): static users and REST secrets, the configured peer allow and deny
/// lists, and the quotas. The rest (realm, nonce key, lifetimes, the host's own addresses,
/// relay ports, the size of the rate-limit tables) stays as the server was started with.
/// `Debug` redacts every secret.
#[derive(Clone)]
pub struct LiveSettings {
    /// `AuthConfig::users`.
    pub users: HashMap<String, StaticCredential>,
    /// `AuthConfig::rest_secrets`.
    pub rest_secrets: Vec<Vec<u8>>,
    /// `PeerPolicy::allow`.
    pub allow: Vec<IpNet>,
    /// `PeerPolicy::deny`.
    pub deny: Vec<IpNet>,
    /// `PeerPolicy::allow_loopback_peers`.
    pub allow_loopback_peers: bool,
    /// `ServerConfig::quotas` (but `rate_limit_table_size`).
    pub quotas: Quotas,
}

impl LiveSettings {
    /// The live part of `config`.
    pub fn of(config: &ServerConfig) -> Self {
        Self {
            users: config.auth.users.clone(),
            rest_secrets: config.auth.rest_secrets.clone(),
            allow: config.policy.allow.clone(),
            deny: config.policy.deny.clone(),
            allow_loopback_peers: config.policy.allow_loopback_peers,
            quotas: config.quotas.clone(),
        }
    }

    /// Writes these settings into `config`, leaving everything else as it is.
    pub(crate) fn apply_to(&self, config: &mut ServerConfig) {
        config.auth.users.clone_from(&self.users);
        config.auth.rest_secrets.clone_from(&self.rest_secrets);
        config.policy.allow.clone_from(&self.allow);
        config.policy.deny.clone_from(&self.deny);
        config.policy.allow_loopback_peers = self.allow_loopback_peers;
        config.quotas = Quotas {
            rate_limit_table_size: config.quotas.rate_limit_table_size,
            ..self.quotas.clone()
        };
    }
}

/// Opens the `Debug` of struct `name` with `users` (their names, sorted) and `rest_secrets`
/// (how many): the credentials as a `Debug` shows them, never a password or a secret.
fn redacted_credentials<'a, 'b>(
    f: &'a mut fmt::Formatter<'b>,
    name: &str,
    users: &HashMap<String, StaticCredential>,
    rest_secrets: &[Vec<u8>],
) -> fmt::DebugStruct<'a, 'b> {
    let mut names: Vec<&str> = users.keys().map(String::as_str).collect();
    names.sort_unstable();
    let mut out = f.debug_struct(name);
    out.field("users", &names).field(
        "rest_secrets",
        &format_args!("<{} redacted>", rest_secrets.len()),
    );
    out
}

impl fmt::Debug for LiveSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        redacted_credentials(f, "LiveSettings", &self.users, &self.rest_secrets)
            .field("allow", &self.allow)
            .field("deny", &self.deny)
            .field("allow_loopback_peers", &self.allow_loopback_peers)
            .field("quotas", &self.quotas)
            .finish()
    }
}

/// One `--external-ip PUBLIC[/PRIVATE]` mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExternalIp {
    /// The address clients and peers reach.
    pub public: IpAddr,
    /// The local relay IP it maps; `None` maps every relay IP of the same family.
    pub private: Option<IpAddr>,
}

impl ExternalIp {
    /// Parse `PUBLIC` or `PUBLIC/PRIVATE`.
    pub fn parse(s: &str) -> Option<Self> {
        let (public, private) = match s.split_once('/') {
            Some((p, q)) => (p, Some(q)),
            None => (s, None),
        };
        let public = public.trim().parse().ok()?;
        let private = match private {
            Some(p) => Some(p.trim().parse().ok()?),
            None => None,
        };
        Some(Self { public, private })
    }
}

/// The anchor that converts monotonic `Instant`s to Unix seconds without reading the clock.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// A monotonic instant...
    pub instant: Instant,
    /// ...and the Unix time (seconds) at that instant.
    pub unix_secs: u64,
}

impl WallClock {
    /// Anchor at the current time.
    pub fn now() -> Self {
        let unix_secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            instant: Instant::now(),
            unix_secs,
        }
    }

    /// Unix seconds at `now` (saturating before the anchor).
    pub fn unix_secs_at(&self, now: Instant) -> u64 {
        match now.checked_duration_since(self.instant) {
            Some(d) => self.unix_secs.saturating_add(d.as_secs()),
            None => self
                .unix_secs
                .saturating_sub(self.instant.duration_since(now).as_secs()),
        }
    }
}

/// A static user's secret: the password, or the precomputed long-term key
/// `MD5(username ":" realm ":" password)` (what coturn's `turnadmin -k` prints).
#[derive(Clone, PartialEq, Eq)]
pub enum StaticCredential {
    /// The cleartext password (the key is derived with the configured realm).
    Password(String),
    /// The 16-byte long-term key.
    Key([u8; 16]),
}

impl fmt::Debug for StaticCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Password(_) => f.write_str("Password(<redacted>)"),
            Self::Key(_) => f.write_str("Key(<redacted>)"),
        }
    }
}

/// Long-term credential sources. `Debug` redacts every secret.
#[derive(Clone)]
pub struct AuthConfig {
    /// Static users: username -> password or key.
    pub users: HashMap<String, StaticCredential>,
    /// TURN REST shared secrets (`username = <expiry-unix>[:<user>]`,
    /// `password = base64(HMAC-SHA1(secret, username))`); any of them verifies, so a secret can
    /// be rotated by listing old and new.
    pub rest_secrets: Vec<Vec<u8>>,
    /// Key of the stateless HMAC nonces (random by default; shards must share it).
    pub nonce_secret: Vec<u8>,
    /// How long a nonce stays valid before `438 Stale Nonce`.
    pub nonce_lifetime: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        let mut nonce_secret = vec![0u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut nonce_secret[..]);
        Self {
            users: HashMap::new(),
            rest_secrets: Vec::new(),
            nonce_secret,
            nonce_lifetime: Duration::from_secs(600),
        }
    }
}

impl AuthConfig {
    /// Add a static user with a cleartext password.
    pub fn add_user(&mut self, username: impl Into<String>, password: impl Into<String>) {
        self.users
            .insert(username.into(), StaticCredential::Password(password.into()));
    }

    /// Adds (or replaces) a static user with a password or a precomputed key.
    pub fn add_user_credential(
        &mut self,
        username: impl Into<String>,
        credential: StaticCredential,
    ) {
        self.users.insert(username.into(), credential);
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        redacted_credentials(f, "AuthConfig", &self.users, &self.rest_secrets)
            .field("nonce_secret", &format_args!("<redacted>"))
            .field("nonce_lifetime", &self.nonce_lifetime)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_redacts_secrets() {
        let mut auth = AuthConfig::default();
        auth.add_user("alice", "hunter2");
        auth.rest_secrets.push(b"topsecret".to_vec());
        let text = format!(
            "{:?}",
            ServerConfig {
                auth,
                ..ServerConfig::default()
            }
        );
        assert!(text.contains("alice"));
        assert!(!text.contains("hunter2"));
        assert!(!text.contains("topsecret"));
    }

    #[test]
    fn external_ip_parsing() {
        let e = ExternalIp::parse("203.0.113.1/10.0.0.5").unwrap();
        assert_eq!(e.public, "203.0.113.1".parse::<IpAddr>().unwrap());
        assert_eq!(e.private, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(ExternalIp::parse("203.0.113.1").unwrap().private, None);
        assert!(ExternalIp::parse("nope").is_none());
    }
}
