//! The relay's configuration: one clap struct read from flags, then environment variables, then
//! an optional TOML file (`--config`), in that order of precedence (flags win).
//!
//! The file uses the long flag names as keys (`relay-ports = "50000-51000"`, `user = ["a:b"]`,
//! `allow-loopback-peers = true`); `_` and `-` are interchangeable. Values are parsed by the same
//! clap parsers as flags, so a file can never hold a value a flag could not.

use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{ArgMatches, CommandFactory, Parser};
use relay_proto::{ExternalIp, IpNet, StaticCredential};
pub use startup::Secret;
pub use startup::duration::parse as parse_duration;
pub use startup::logging::LogFormat;

/// Command-line, environment and file configuration of the `relay` binary.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "relay",
    version,
    about = "STUN/TURN relay (RFC 8489, RFC 8656, RFC 6156; RFC 6062 framing, not TCP allocations)"
)]
pub struct Config {
    /// TOML file with defaults for any of the options below (keys are the long flag names).
    #[arg(long, env = "RELAY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// UDP and TCP listening addresses (STUN/TURN over UDP and TCP). Port 0 picks a free port.
    /// `[::]:PORT` takes IPv6 alone: list `0.0.0.0:PORT` beside it for both families.
    #[arg(
        long,
        env = "RELAY_LISTEN",
        value_delimiter = ',',
        default_value = "0.0.0.0:3478"
    )]
    pub listen: Vec<SocketAddr>,

    /// Disable TURN over TCP on the `--listen` addresses (UDP only).
    #[arg(long, env = "RELAY_NO_TCP")]
    pub no_tcp: bool,

    /// TLS (TURNS) listening addresses; used only with `--tls-cert`/`--tls-key` or `--tls-self-signed`.
    #[arg(
        long,
        env = "RELAY_TLS_LISTEN",
        value_delimiter = ',',
        default_value = "0.0.0.0:5349"
    )]
    pub tls_listen: Vec<SocketAddr>,

    /// Every TCP and TLS connection starts with a PROXY protocol header (v1 or v2, as HAProxy's
    /// `send-proxy-v2` writes it) naming the client: for a TCP load balancer in front. Its
    /// address is the client's everywhere (XOR-MAPPED-ADDRESS, limits, nonces, logs);
    /// connections without one are closed. UDP is not affected.
    #[arg(long, env = "RELAY_PROXY_PROTOCOL")]
    pub proxy_protocol: bool,

    /// One port for TURN and the web: connections on the TCP and TLS listeners whose first
    /// bytes are an HTTP request line (rather than STUN or ChannelData) are forwarded to this
    /// `HOST:PORT` (plain HTTP: TLS ends here), e.g. a `signaling` server; anything else is
    /// closed and counted. Connecting to it may take `--tls-handshake-timeout`. Off by default:
    /// the listeners then speak TURN only.
    #[arg(long, env = "RELAY_HTTP_UPSTREAM", value_name = "HOST:PORT")]
    pub http_upstream: Option<String>,

    /// Start every connection forwarded to `--http-upstream` with a PROXY v2 header naming the
    /// client (run the upstream with `--proxy-protocol`), so it sees the client's address.
    #[arg(
        long,
        env = "RELAY_HTTP_UPSTREAM_PROXY_PROTOCOL",
        requires = "http_upstream"
    )]
    pub http_upstream_proxy_protocol: bool,

    /// PEM certificate chain for TURNS.
    #[arg(long, env = "RELAY_TLS_CERT", value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for TURNS.
    #[arg(long, env = "RELAY_TLS_KEY", value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Serve TURNS with a certificate generated at start-up (development only: clients must
    /// skip verification or trust the printed certificate).
    #[arg(long, env = "RELAY_TLS_SELF_SIGNED", conflicts_with = "tls_cert")]
    pub tls_self_signed: bool,

    /// Relay (allocation) addresses, at most one IPv4 and one IPv6. Default: for each family
    /// `--listen` has, its IP if concrete, otherwise the host's primary outbound address of that
    /// family (with no IPv4 one, browsers' allocations get 440: start-up warns).
    #[arg(long, env = "RELAY_RELAY_IP", value_delimiter = ',')]
    pub relay_ip: Vec<IpAddr>,

    /// UDP port range for relayed transport addresses, inclusive.
    #[arg(long, env = "RELAY_RELAY_PORTS", default_value = "49152-65535")]
    pub relay_ports: PortRange,

    /// 1:1 NAT mapping `PUBLIC[/PRIVATE]`: advertise PUBLIC in XOR-RELAYED-ADDRESS for relay
    /// sockets bound to PRIVATE (or to every relay address of that family if PRIVATE is omitted).
    #[arg(long, env = "RELAY_EXTERNAL_IP", value_delimiter = ',', value_parser = parse_external_ip)]
    pub external_ip: Vec<ExternalIp>,

    /// Authentication realm (long-term credentials).
    #[arg(long, env = "RELAY_REALM", default_value = "relay")]
    pub realm: String,

    /// Static long-term user `name:password` (repeatable), or `name:0xKEY` with the 32 hex
    /// digits of the precomputed key `MD5(name:realm:password)` (as coturn's `turnadmin -k`
    /// prints it), so that the password itself is stored nowhere.
    #[arg(
        long = "user",
        env = "RELAY_USERS",
        value_delimiter = ',',
        value_name = "NAME:PASSWORD"
    )]
    pub users: Vec<StaticUser>,

    /// TURN REST shared secrets (repeatable or comma separated): any of them verifies a
    /// credential, the first is the current one. Rotate by prepending the new secret.
    /// (`--auth-secret` is the older name of this flag.)
    #[arg(
        long = "turn-secret",
        visible_alias = "auth-secret",
        env = "RELAY_TURN_SECRETS",
        value_delimiter = ',',
        value_name = "SECRET"
    )]
    pub auth_secrets: Vec<Secret>,

    /// Maximum simultaneous allocations per username (486 Allocation Quota Reached beyond).
    /// The default fits a peer of a full mesh room: 31 other peers, each connection allocating
    /// once per TURN URL (UDP, TCP, TLS), twice while an ICE restart overlaps the old.
    #[arg(long, env = "RELAY_USER_QUOTA", default_value_t = 200)]
    pub user_quota: u32,

    /// Maximum simultaneous allocations on the whole relay (486 beyond; 0 = unlimited).
    #[arg(long, env = "RELAY_TOTAL_QUOTA", default_value_t = 100_000)]
    pub total_quota: u32,

    /// Maximum permissions per allocation (at least 1).
    #[arg(long, env = "RELAY_MAX_PERMISSIONS", default_value_t = 64)]
    pub max_permissions: u32,

    /// Maximum channel bindings per allocation (at least 1).
    #[arg(long, env = "RELAY_MAX_CHANNELS", default_value_t = 64)]
    pub max_channels: u32,

    /// Relayed bytes per second per allocation, both directions together (token bucket; excess
    /// is dropped; 0 = unlimited).
    #[arg(long, env = "RELAY_MAX_BPS", default_value_t = 0)]
    pub max_bps: u64,

    /// Unauthenticated requests per second per source IP (401 answers: a quarter of it; wrong
    /// passwords: a twentieth, past which the source's credentials go unchecked; 0 = no
    /// limit).
    #[arg(long, env = "RELAY_UNAUTH_RATE", default_value_t = 100)]
    pub unauth_rate: u32,

    /// Bytes of unauthenticated UDP responses (Binding, 401, 438, 400, 420) a source IP may
    /// receive beyond the bytes of the STUN requests it sent (amplification allowance, one
    /// credit per source IP for the whole relay, in a fixed 512 KiB table; 0 = no byte limit).
    #[arg(long, env = "RELAY_UNAUTH_BYTES", default_value_t = relay_proto::DEFAULT_AMPLIFICATION_ALLOWANCE)]
    pub unauth_bytes: u32,

    /// Maximum simultaneous TCP/TLS client connections of the whole relay (one counter for
    /// every worker). A connection counts from accept on, TLS handshake included; new
    /// connections beyond it are closed at once and counted. At least 1 (run with `--no-tcp`
    /// and no TLS for none).
    #[arg(long, env = "RELAY_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,

    /// Of `--max-connections`, how many one client address (IPv6: one /64) may hold; more are
    /// closed at once and counted. Keep it well above the users behind one NAT or proxy.
    #[arg(long, env = "RELAY_MAX_CONNECTIONS_PER_IP", default_value_t = 500)]
    pub max_connections_per_ip: usize,

    /// Bytes queued towards one TCP/TLS client connection and not yet written to its socket
    /// (write buffer included). A message that would go over it is dropped and counted
    /// (`relay_stream_queue_drops_total`): a client that stops reading costs at most this much.
    /// At least 65556 (one largest STUN or ChannelData message).
    #[arg(long, env = "RELAY_STREAM_QUEUE_BYTES", default_value_t = DEFAULT_STREAM_QUEUE_BYTES)]
    pub stream_queue_bytes: usize,

    /// A TLS client that has not finished its handshake this long after connecting is closed
    /// (e.g. `5s`, `1500ms`).
    #[arg(long, env = "RELAY_TLS_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub tls_handshake_timeout: Duration,

    /// Allow peers on loopback addresses (127.0.0.0/8, ::1). Tests only: off by default.
    #[arg(long, env = "RELAY_ALLOW_LOOPBACK_PEERS")]
    pub allow_loopback_peers: bool,

    /// Peer CIDRs allowed even though the default policy denies them (e.g. `10.0.0.0/8`).
    /// 0.0.0.0/8, ::/128 and 169.254.169.254 can never be allowed.
    #[arg(
        long,
        env = "RELAY_ALLOW_PEER",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    pub allow_peer: Vec<IpNet>,

    /// Peer CIDRs denied in addition to the default policy.
    #[arg(
        long,
        env = "RELAY_DENY_PEER",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    pub deny_peer: Vec<IpNet>,

    /// Admin HTTP address (`/healthz`, `/readyz`, `/metrics`, `/usage`); `none` disables it.
    #[arg(long, env = "RELAY_ADMIN_LISTEN", default_value = "127.0.0.1:9641")]
    pub admin_listen: AdminListen,

    /// Usage accounting: the width of one time bucket (the finest window of `/usage`;
    /// whole seconds, e.g. `1m`).
    #[arg(long, env = "RELAY_USAGE_BUCKET", default_value = "1m", value_parser = parse_duration)]
    pub usage_bucket: Duration,

    /// Usage accounting: how long per-user buckets are kept (e.g. `6h`).
    #[arg(long, env = "RELAY_USAGE_RETENTION", default_value = "6h", value_parser = parse_duration)]
    pub usage_retention: Duration,

    /// Usage accounting: distinct users kept per bucket; the traffic of more goes to `other`
    /// (counted in `relay_usage_overflow_total`).
    #[arg(long, env = "RELAY_USAGE_MAX_USERS", default_value_t = 1000)]
    pub usage_max_users: usize,

    /// On SIGTERM/SIGINT: refuse new allocations, keep existing ones at most this long, then exit
    /// (e.g. `30s`, `5m`, `0s` = exit at once).
    #[arg(long, env = "RELAY_DRAIN_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Worker threads, each with its own SO_REUSEPORT sockets and protocol shard (0 = one per core).
    #[arg(long, env = "RELAY_WORKERS", default_value_t = 0)]
    pub workers: usize,

    /// Socket receive and send buffer size for listening and relay sockets, in bytes.
    #[arg(long, env = "RELAY_SOCKET_BUFFER", default_value_t = 4 << 20)]
    pub socket_buffer: usize,

    /// Log format on stderr.
    #[arg(long, env = "RELAY_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    /// Which logs to write: `info`, `warn,relay=debug`, ... (`RUST_LOG` syntax). SIGHUP
    /// applies a new one from the `--config` file (when neither the flag nor `RUST_LOG` sets
    /// it).
    #[arg(long, env = "RUST_LOG", default_value = "info,redis=error", value_parser = startup::logging::parse_filter)]
    pub log_filter: String,

    /// Join a relay fleet: advertise this relay in the Redis that signaling reads (one URL, or
    /// the seeds of a Redis Cluster). Signaling then gives each room a relay of the fleet.
    #[arg(
        long = "register",
        // Signaling's name for the same Redis.
        visible_alias = "redis",
        env = "RELAY_REGISTER",
        value_delimiter = ',',
        value_name = "REDIS_URL"
    )]
    pub register: Vec<String>,

    /// This relay's id in the fleet (random when not given).
    #[arg(long, env = "RELAY_NODE_ID")]
    pub node_id: Option<String>,

    /// The URLs clients should use for this relay (`turn:host:port?transport=udp`, `turns:...`,
    /// `stun:...`; repeatable). Default: one per listener, on `--external-ip` when given.
    #[arg(
        long = "public-url",
        env = "RELAY_PUBLIC_URLS",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub public_urls: Vec<String>,

    /// Region label of this relay in the fleet (signaling prefers relays of its own region).
    #[arg(long, env = "RELAY_REGION")]
    pub region: Option<String>,

    /// Relative weight of this relay's share of rooms in the fleet (> 0).
    #[arg(long, env = "RELAY_CAPACITY", default_value_t = 1.0)]
    pub capacity: f64,

    /// How often the relay renews its fleet lease and publishes its load.
    #[arg(long, env = "RELAY_NODE_HEARTBEAT", default_value = "1s", value_parser = parse_duration)]
    pub node_heartbeat: Duration,

    /// A relay that has not renewed its lease for this long is out of the fleet.
    #[arg(long, env = "RELAY_NODE_LEASE", default_value = "5s", value_parser = parse_duration)]
    pub node_lease: Duration,
}

/// The default `--stream-queue-bytes`: 128 KiB, about 0.4 s of a 2.5 Mbit/s video call (older
/// media is useless to a real-time client anyway).
pub const DEFAULT_STREAM_QUEUE_BYTES: usize = 128 * 1024;

/// Errors found while reading the configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Flags, environment variables or the `--config` file were invalid.
    #[error(transparent)]
    Load(#[from] startup::config_file::ConfigError),
    /// The values parse but do not make sense together.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl From<clap::Error> for ConfigError {
    fn from(e: clap::Error) -> Self {
        Self::Load(e.into())
    }
}

impl Config {
    /// The usage ledger's bounds (`--usage-bucket`, `--usage-retention`, `--usage-max-users`).
    pub fn usage_limits(&self) -> crate::usage::UsageLimits {
        crate::usage::UsageLimits {
            bucket: self.usage_bucket,
            retention: self.usage_retention,
            max_users: self.usage_max_users,
        }
    }

    /// Reads the configuration from the process's arguments, environment and `--config` file;
    /// also returns the matches it came from (for the start-up summary).
    pub fn load() -> Result<(Self, ArgMatches), ConfigError> {
        Self::load_from(std::env::args_os())
    }

    /// Reads the configuration from `args` (the first is the program name), the environment
    /// and the `--config` file named there.
    pub fn load_from<I, T>(args: I) -> Result<(Self, ArgMatches), ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let (config, matches) = startup::config_file::load::<Self, _, _>(args)?;
        config.validate()?;
        Ok((config, matches))
    }

    /// The configuration as a readable block, secrets redacted (`startup::summary`).
    /// `--tls-listen` has a default, listened on only with TLS: without it the line says so.
    pub fn summary(matches: &ArgMatches) -> String {
        let summary = startup::summary::summary(&Self::command(), matches);
        let tls =
            matches.get_one::<PathBuf>("tls_cert").is_some() || matches.get_flag("tls_self_signed");
        if tls {
            return summary;
        }
        summary
            .lines()
            .map(|line| {
                if line.trim_start().starts_with("--tls-listen ") {
                    format!("{line}  (unused: no --tls-cert or --tls-self-signed)\n")
                } else {
                    format!("{line}\n")
                }
            })
            .collect()
    }

    /// A configuration from the given arguments (without the program name) and the `RELAY_*`
    /// environment, ignoring `--config`: for embedding the relay in another binary.
    pub fn from_args<I, T>(args: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let config = Self::try_parse_from(
            std::iter::once(OsString::from("relay")).chain(args.into_iter().map(Into::into)),
        )?;
        config.validate()?;
        Ok(config)
    }

    /// Checks combinations clap cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(ConfigError::Invalid(
                "at least one --listen address is needed".into(),
            ));
        }
        let v4 = self.relay_ip.iter().filter(|ip| ip.is_ipv4()).count();
        let v6 = self.relay_ip.len() - v4;
        if v4 > 1 || v6 > 1 {
            return Err(ConfigError::Invalid(
                "--relay-ip takes at most one IPv4 and one IPv6 address".into(),
            ));
        }
        if let Some((ip, why)) = self
            .relay_ip
            .iter()
            .find_map(|ip| Some((ip, not_a_host_address(*ip)?)))
        {
            return Err(ConfigError::Invalid(format!("--relay-ip {ip} {why}")));
        }
        if self.usage_bucket < Duration::from_secs(1) || self.usage_retention < self.usage_bucket {
            return Err(ConfigError::Invalid(
                "--usage-bucket must be at least 1s and --usage-retention at least one bucket"
                    .into(),
            ));
        }
        for user in &self.users {
            if user.name.is_empty() || user.password.expose().is_empty() {
                return Err(ConfigError::Invalid(
                    "--user needs NAME:PASSWORD, both non-empty".into(),
                ));
            }
        }
        if !(self.capacity > 0.0 && self.capacity.is_finite()) {
            return Err(ConfigError::Invalid("--capacity must be > 0".into()));
        }
        if self.node_heartbeat.is_zero() || self.node_lease <= self.node_heartbeat {
            return Err(ConfigError::Invalid(
                "--node-heartbeat must be > 0 and < --node-lease".into(),
            ));
        }
        if let Some(url) = self.public_urls.iter().find(|u| {
            !["turn:", "turns:", "stun:", "stuns:"]
                .iter()
                .any(|scheme| u.starts_with(scheme))
        }) {
            return Err(ConfigError::Invalid(format!(
                "--public-url {url} is not a turn:, turns:, stun: or stuns: URL"
            )));
        }
        if self.tls_handshake_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "--tls-handshake-timeout must be > 0".into(),
            ));
        }
        if self.stream_queue_bytes < relay_proto::framing::MAX_FRAME_LEN {
            return Err(ConfigError::Invalid(format!(
                "--stream-queue-bytes must be at least {} (one largest message)",
                relay_proto::framing::MAX_FRAME_LEN
            )));
        }
        if let Some(upstream) = &self.http_upstream
            && !upstream
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        {
            return Err(ConfigError::Invalid(format!(
                "--http-upstream {upstream} is not HOST:PORT"
            )));
        }
        // Limits for which 0 would turn a service off rather than mean "no limit".
        let at_least_one = [
            ("--user-quota", u64::from(self.user_quota)),
            ("--max-permissions", u64::from(self.max_permissions)),
            ("--max-channels", u64::from(self.max_channels)),
            ("--max-connections", self.max_connections as u64),
            (
                "--max-connections-per-ip",
                self.max_connections_per_ip as u64,
            ),
        ];
        if let Some((flag, _)) = at_least_one.iter().find(|(_, value)| *value == 0) {
            return Err(ConfigError::Invalid(format!("{flag} must be at least 1")));
        }
        Ok(())
    }

    /// Whether TURNS is served.
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some() || self.tls_self_signed
    }

    /// The number of workers to run (`--workers 0` = available cores).
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, usize::from)
        }
    }
}

/// Parses `PUBLIC[/PRIVATE]` (both of one family).
pub fn parse_external_ip(s: &str) -> Result<ExternalIp, String> {
    let mapping =
        ExternalIp::parse(s).ok_or_else(|| format!("`{s}` is not PUBLIC or PUBLIC/PRIVATE"))?;
    if mapping
        .private
        .is_some_and(|p| p.is_ipv4() != mapping.public.is_ipv4())
    {
        return Err(format!("`{s}`: PUBLIC and PRIVATE must be the same family"));
    }
    for ip in std::iter::once(mapping.public).chain(mapping.private) {
        if let Some(why) = not_a_host_address(ip) {
            return Err(format!("`{s}`: {ip} {why}"));
        }
    }
    Ok(mapping)
}

/// Why `ip` cannot be an address of this host that peers reach (`--relay-ip`, either side of
/// `--external-ip`), if it cannot: no socket binds an IPv4-mapped IPv6 address, and one that
/// is unspecified or multicast names no host.
fn not_a_host_address(ip: IpAddr) -> Option<String> {
    if ip.is_unspecified() || ip.is_multicast() {
        return Some("is not a unicast address".into());
    }
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(|v4| format!("is an IPv4-mapped IPv6 address: give the IPv4 address ({v4})")),
        IpAddr::V4(_) => None,
    }
}

/// An inclusive UDP port range, `LOW-HIGH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub low: u16,
    /// Last port (inclusive).
    pub high: u16,
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (low, high) = s
            .split_once('-')
            .ok_or_else(|| format!("`{s}` is not a range like 49152-65535"))?;
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("`{p}` is not a port"))
        };
        let (low, high) = (port(low)?, port(high)?);
        if low == 0 || low > high {
            return Err(format!("`{s}`: need 1 <= LOW <= HIGH"));
        }
        Ok(Self { low, high })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.low, self.high)
    }
}

/// A static long-term-credential user, `name:password` or `name:0xKEY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticUser {
    /// The USERNAME clients send.
    pub name: String,
    /// The password, or `0x` and the key's 32 hex digits (redacted in logs).
    pub password: Secret,
}

impl StaticUser {
    /// What the core verifies with: the key, when the password is `0x` and 32 hex digits.
    pub fn credential(&self) -> StaticCredential {
        let text = self.password.expose_str();
        let key = text
            .strip_prefix("0x")
            .filter(|hex| hex.len() == 32)
            .and_then(|hex| hex::decode(hex).ok())
            .and_then(|bytes| <[u8; 16]>::try_from(bytes).ok());
        match key {
            Some(key) => StaticCredential::Key(key),
            None => StaticCredential::Password(text.to_owned()),
        }
    }
}

impl FromStr for StaticUser {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, password) = s
            .split_once(':')
            .ok_or_else(|| "expected NAME:PASSWORD".to_owned())?;
        Ok(Self {
            name: name.to_owned(),
            password: Secret::new(password),
        })
    }
}

pub use startup::admin_listen::AdminListen;

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/relay.md`'s flag table has a row for every flag, with its environment variable
    /// and its default: the docs are the operator's contract.
    #[test]
    fn the_docs_table_lists_every_flag_with_its_environment_and_default() {
        use clap::CommandFactory as _;
        let doc = include_str!("../../docs/relay.md");
        let gaps = startup::config_file::docs_table_gaps(&Config::command(), doc);
        assert!(gaps.is_empty(), "docs/relay.md: {gaps:?}");
    }

    #[test]
    fn the_summary_says_when_tls_listen_is_unused() {
        let line = |args: &[&str]| {
            let matches = Config::command()
                .get_matches_from(std::iter::once("relay").chain(args.iter().copied()));
            Config::summary(&matches)
                .lines()
                .find(|l| l.trim_start().starts_with("--tls-listen "))
                .map(str::to_owned)
                .expect("a --tls-listen line")
        };
        assert!(line(&[]).ends_with("(unused: no --tls-cert or --tls-self-signed)"));
        assert!(!line(&["--tls-self-signed"]).contains("unused"));
    }

    #[test]
    fn defaults_are_documented_values() {
        let c = Config::from_args(Vec::<String>::new()).unwrap();
        assert_eq!(
            c.listen,
            vec!["0.0.0.0:3478".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            c.tls_listen,
            vec!["0.0.0.0:5349".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            c.relay_ports,
            PortRange {
                low: 49152,
                high: 65535
            }
        );
        assert_eq!(
            c.admin_listen,
            AdminListen::Addr("127.0.0.1:9641".parse().unwrap())
        );
        assert_eq!(c.user_quota, 200);
        assert_eq!(c.max_connections, 20_000);
        assert_eq!(c.max_connections_per_ip, 500);
        assert_eq!(c.tls_handshake_timeout, Duration::from_secs(5));
        assert_eq!(c.unauth_bytes, 2048);
        assert_eq!(c.stream_queue_bytes, 128 * 1024);
        assert!(!c.allow_loopback_peers);
        assert!(!c.tls_enabled());
    }

    /// A `relay.toml` holding `toml` in a temporary directory (removed with it).
    fn config_file(toml: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, toml).unwrap();
        let path = path.to_str().unwrap().to_owned();
        (dir, path)
    }

    #[test]
    fn file_is_overridden_by_flags() {
        let (_dir, p) = config_file(
            "realm = \"file-realm\"\nrelay_ports = \"50000-50010\"\nuser = [\"a:b\", \"c:d\"]\nallow-loopback-peers = true\nuser-quota = 3\n",
        );
        let (c, _) = Config::load_from(["relay", "--config", &p, "--realm", "flag-realm"]).unwrap();
        assert_eq!(c.realm, "flag-realm");
        assert_eq!(
            c.relay_ports,
            PortRange {
                low: 50000,
                high: 50010
            }
        );
        assert_eq!(c.users.len(), 2);
        assert!(c.allow_loopback_peers);
        assert_eq!(c.user_quota, 3);
    }

    /// relay.md: every option is a flag, a variable or a file key: a required pair may be split
    /// between them (helper-161: clap refused it before the file was read).
    #[test]
    fn a_pair_split_between_the_file_and_a_flag_is_whole() {
        let (_dir, p) = config_file("tls-cert = \"cert.pem\"\nhttp-upstream = \"127.0.0.1:1\"\n");
        let (c, _) = Config::load_from([
            "relay",
            "--config",
            &p,
            "--tls-key",
            "key.pem",
            "--http-upstream-proxy-protocol",
        ])
        .unwrap();
        assert_eq!(
            c.tls_cert.as_deref(),
            Some(std::path::Path::new("cert.pem"))
        );
        assert_eq!(c.tls_key.as_deref(), Some(std::path::Path::new("key.pem")));
        assert!(c.http_upstream_proxy_protocol);
        // Still refused when the file does not complete it.
        let (_dir, p) = config_file("realm = \"r\"\n");
        let err = Config::load_from(["relay", "--config", &p, "--tls-key", "key.pem"]).unwrap_err();
        assert!(err.to_string().contains("--tls-cert"), "{err}");
        assert!(Config::load_from(["relay", "--tls-key", "key.pem"]).is_err());
    }

    #[test]
    fn unknown_file_key_is_an_error() {
        let (_dir, path) = config_file("no_such_option = 1\n");
        let err = Config::load_from(["relay", "--config", &path]).unwrap_err();
        assert!(err.to_string().contains("no_such_option"), "{err}");
    }

    #[test]
    fn secrets_are_redacted() {
        let args = [
            "relay",
            "--user",
            "alice:hunter2",
            "--turn-secret",
            "s3cr3t,older",
        ];
        let (c, matches) = Config::load_from(args).unwrap();
        assert_eq!(c.auth_secrets.len(), 2);
        let (old_name, _) = Config::load_from(["relay", "--auth-secret", "s3cr3t"]).unwrap();
        assert_eq!(old_name.auth_secrets.len(), 1, "--auth-secret is an alias");
        let shown = format!("{}\n{:?}", Config::summary(&matches), c);
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cr3t"),
            "{shown}"
        );
        assert!(shown.contains("alice"));
    }

    #[test]
    fn limits_parse_and_a_zero_handshake_timeout_is_refused() {
        let c = Config::from_args([
            "--tls-handshake-timeout",
            "1500ms",
            "--unauth-bytes",
            "0",
            "--max-connections",
            "7",
        ])
        .unwrap();
        assert_eq!(c.tls_handshake_timeout, Duration::from_millis(1500));
        assert_eq!((c.unauth_bytes, c.max_connections), (0, 7));
        assert!(Config::from_args(["--tls-handshake-timeout", "0s"]).is_err());
        assert_eq!(
            Config::from_args(["--stream-queue-bytes", "70000"])
                .unwrap()
                .stream_queue_bytes,
            70_000
        );
        assert!(Config::from_args(["--stream-queue-bytes", "65555"]).is_err());
        // A limit whose 0 would turn the service off is refused at 0, naming the flag.
        for flag in [
            "--user-quota",
            "--max-permissions",
            "--max-channels",
            "--max-connections",
            "--max-connections-per-ip",
        ] {
            let err = Config::from_args([flag, "0"]).unwrap_err().to_string();
            assert!(err.contains(&format!("{flag} must be at least 1")), "{err}");
        }
    }

    #[test]
    fn value_parsers() {
        assert!("10-5".parse::<PortRange>().is_err());
        assert_eq!(
            parse_external_ip("203.0.113.7/10.0.0.7").unwrap().private,
            Some("10.0.0.7".parse().unwrap())
        );
        assert!(parse_external_ip("203.0.113.7/::1").is_err());
        // No host has these: unspecified, or IPv4-mapped (no socket binds one).
        for refused in [
            "0.0.0.0",
            "::",
            "::ffff:203.0.113.10",
            "203.0.113.7/0.0.0.0",
        ] {
            let err = parse_external_ip(refused).unwrap_err();
            assert!(
                err.contains("is not a unicast") || err.contains("IPv4-mapped"),
                "{err}"
            );
        }
        let err = Config::from_args(["--relay-ip", "::ffff:127.0.0.1"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("give the IPv4 address (127.0.0.1)"), "{err}");
        assert!("10.0.0.0/8".parse::<IpNet>().is_ok());
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert_eq!(
            parse_duration("1500ms").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("5x").is_err());
        assert_eq!(
            "none".parse::<AdminListen>().unwrap(),
            AdminListen::Disabled
        );
    }
}
