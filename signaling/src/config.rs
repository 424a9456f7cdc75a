//! The server's configuration: one clap struct, from flags and `SIGNALING_*` environment
//! variables, checked once at start-up and printed with its secrets redacted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::error::Error;

/// The default `--admin-listen`: loopback only.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9642";

pub use startup::Secret;
pub use startup::duration::parse as parse_duration;
pub use startup::logging::LogFormat;

/// Everything the signaling server can be told. Every flag also reads an environment variable.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "signaling",
    version,
    about = "WebRTC signaling server (protocol v1)"
)]
pub struct Config {
    /// Address to listen on (HTTP and WebSocket). Port 0 picks a free port; the bound address
    /// is printed on stdout as `listening on http://ADDR` (`https://` with TLS).
    #[arg(long, env = "SIGNALING_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Every connection starts with a PROXY protocol header (v1 or v2, as HAProxy's
    /// `send-proxy-v2` writes it) naming the client: for a TCP load balancer in front. Its
    /// address is the client's everywhere (limits, logs); connections without one are closed.
    #[arg(long, env = "SIGNALING_PROXY_PROTOCOL")]
    pub proxy_protocol: bool,

    /// PEM certificate chain: serve HTTPS and WSS on `--listen` instead of plain HTTP.
    #[arg(long, env = "SIGNALING_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `--tls-cert`.
    #[arg(long, env = "SIGNALING_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,

    /// Serve HTTPS and WSS with a certificate generated at start-up for `localhost` and the
    /// listening address (development only: browsers warn; the PEM is printed on stdout).
    #[arg(long, env = "SIGNALING_TLS_SELF_SIGNED")]
    pub tls_self_signed: bool,

    /// Serve HTTPS and WSS with a certificate for NAME obtained and renewed from an ACME CA
    /// (tls-alpn-01 on `--listen`, which must be port 443 of NAME as the CA sees it).
    /// Repeatable (or comma-separated): one certificate names them all. Needs `--acme-cache`.
    #[arg(
        long = "acme-domain",
        env = "SIGNALING_ACME_DOMAIN",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub acme_domains: Vec<String>,

    /// The ACME directory URL of the CA (default: Let's Encrypt's production directory).
    #[arg(long, env = "SIGNALING_ACME_DIRECTORY", value_name = "URL", default_value = startup::acme::LETS_ENCRYPT_DIRECTORY)]
    pub acme_directory: String,

    /// Directory for the ACME account key and the certificate (created mode 0700, files 0600):
    /// a restart with a valid cached certificate serves it without a new order.
    #[arg(long, env = "SIGNALING_ACME_CACHE", value_name = "DIR")]
    pub acme_cache: Option<PathBuf>,

    /// Contact address of the ACME account (the CA's expiry and policy mail).
    #[arg(long, env = "SIGNALING_ACME_EMAIL", value_name = "ADDRESS")]
    pub acme_email: Option<String>,

    /// PEM CA certificate to trust for the ACME directory's HTTPS instead of the system's
    /// roots: a private CA, or a test CA such as pebble.
    #[arg(long, env = "SIGNALING_ACME_DIRECTORY_CA", value_name = "PEM")]
    pub acme_directory_ca: Option<PathBuf>,

    /// How often the server sends a WebSocket ping to each connection.
    #[arg(long, env = "SIGNALING_PING_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// A connection that sends nothing (not even a pong) for this long is closed as a zombie;
    /// its peer leaves after the resume grace period with reason `timeout`.
    #[arg(long, env = "SIGNALING_PING_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub ping_timeout: Duration,

    /// How long a long-poll request (`GET /http/poll`) waits for a frame before it answers
    /// with none.
    #[arg(long, env = "SIGNALING_POLL_TIMEOUT", default_value = "25s", value_parser = parse_duration)]
    pub poll_timeout: Duration,

    /// How long a session whose socket dropped can be resumed before its peer leaves the room.
    #[arg(long, env = "SIGNALING_RESUME_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub resume_grace: Duration,

    /// Replay buffer bound per session, in messages: unacknowledged messages kept for resume.
    #[arg(long, env = "SIGNALING_REPLAY_MAX_MESSAGES", default_value_t = 256)]
    pub replay_max_messages: usize,

    /// Replay buffer bound per session, in bytes.
    #[arg(long, env = "SIGNALING_REPLAY_MAX_BYTES", default_value_t = 256 * 1024)]
    pub replay_max_bytes: usize,

    /// Outbound queue per connection, in messages. A client that falls this far behind is a
    /// slow consumer: its session ends with `slow_consumer`. (A y-webrtc subscription's queue
    /// holds one message per 256 bytes of --outbound-queue-bytes, if that is more.)
    #[arg(long, env = "SIGNALING_OUTBOUND_QUEUE", default_value_t = 256)]
    pub outbound_queue: usize,

    /// Outbound queue per connection, in bytes of queued frames: a client that falls this far
    /// behind is a slow consumer too. Bounds a silent receiver's cost whatever its frames' size.
    #[arg(long, env = "SIGNALING_OUTBOUND_QUEUE_BYTES", default_value_t = 1024 * 1024)]
    pub outbound_queue_bytes: usize,

    /// The largest text frame accepted, in bytes. Larger frames close the socket with 1009.
    #[arg(long, env = "SIGNALING_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,

    /// Peers per room.
    #[arg(long, env = "SIGNALING_MAX_PEERS_PER_ROOM", default_value_t = 32)]
    pub max_peers_per_room: usize,

    /// Rooms on this server.
    #[arg(long, env = "SIGNALING_MAX_ROOMS", default_value_t = 50_000)]
    pub max_rooms: usize,

    /// Sessions on this server (joined peers, including those waiting to resume).
    #[arg(long, env = "SIGNALING_MAX_SESSIONS", default_value_t = 100_000)]
    pub max_sessions: usize,

    /// Open WebSocket connections on this server (joined or not); more are refused with 503.
    #[arg(long, env = "SIGNALING_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// A connection must send its HTTP request headers within this time, or it is closed
    /// (against slowloris).
    #[arg(long, env = "SIGNALING_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// Bytes of frames the node may hold in all: queued for its connections and, on a single
    /// node, kept in sessions' replay buffers. Past it, the sessions holding the most end, most
    /// first (connected ones with frames queued: `slow_consumer`; parked ones: `replay_overflow`).
    #[arg(long, env = "SIGNALING_MEMORY_BUDGET", default_value_t = 256 << 20)]
    pub memory_budget: usize,

    /// Open HTTP connections that are not (yet) WebSockets; past it, new TCP connections are
    /// closed at once. Upgraded sockets count against `--max-connections` instead.
    #[arg(long, env = "SIGNALING_MAX_HTTP_CONNECTIONS", default_value_t = 1024)]
    pub max_http_connections: usize,

    /// Of `--max-http-connections`, how many one source address (IPv6: one /64) may hold: the
    /// socket's peer, or the client a PROXY header names; a `--trusted-proxy` is not limited.
    /// Past it, its new TCP connections are closed at once.
    #[arg(
        long,
        env = "SIGNALING_MAX_HTTP_CONNECTIONS_PER_IP",
        default_value_t = 256
    )]
    pub max_http_connections_per_ip: usize,

    /// Open WebSocket connections per client address; more are refused with HTTP 429
    /// `too_many_connections`. Keep it well above the users behind one NAT or proxy.
    #[arg(long, env = "SIGNALING_MAX_CONNECTIONS_PER_IP", default_value_t = 500)]
    pub max_connections_per_ip: usize,

    /// Sessions (attached or parked) per client address on this node; more joins are refused
    /// with `too_many_sessions`.
    #[arg(long, env = "SIGNALING_MAX_SESSIONS_PER_IP", default_value_t = 1000)]
    pub max_sessions_per_ip: usize,

    /// Sustained joins per second per client address (token bucket rate); a faster `join` gets
    /// `rate_limited`.
    #[arg(long, env = "SIGNALING_JOIN_RATE_PER_IP", default_value_t = 20.0)]
    pub join_rate_per_ip: f64,

    /// Burst of joins per client address (token bucket size).
    #[arg(long, env = "SIGNALING_JOIN_BURST_PER_IP", default_value_t = 100.0)]
    pub join_burst_per_ip: f64,

    /// Proxies (addresses or CIDR blocks, repeatable or comma-separated) whose
    /// `X-Forwarded-For`/`Forwarded` headers name the client. Others' headers are ignored.
    #[arg(
        long = "trusted-proxy",
        env = "SIGNALING_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<crate::client_ip::IpNet>,

    /// Sustained messages per second per connection (token bucket rate).
    #[arg(long, env = "SIGNALING_RATE_LIMIT", default_value_t = 50.0)]
    pub rate_limit: f64,

    /// Burst of messages per connection (token bucket size).
    #[arg(long, env = "SIGNALING_RATE_BURST", default_value_t = 200.0)]
    pub rate_burst: f64,

    /// HS256 secret for JWT auth. When set, every join needs a valid token granting its room
    /// (in the `token` query parameter or in `join`).
    #[arg(long, env = "SIGNALING_JWT_SECRET", value_name = "SECRET")]
    pub jwt_secret: Option<Secret>,

    /// Browser origins allowed to connect (repeatable or comma-separated), e.g.
    /// `https://app.example.com`. Empty = any origin. Requests without `Origin` are not browsers
    /// and are allowed.
    #[arg(
        long = "allowed-origin",
        env = "SIGNALING_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// On SIGTERM/SIGINT, how long to wait for clients to leave after telling them to reconnect.
    #[arg(long, env = "SIGNALING_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// The delay a draining server suggests to clients before they reconnect.
    #[arg(long, env = "SIGNALING_RECONNECT_AFTER", default_value = "1s", value_parser = parse_duration)]
    pub reconnect_after: Duration,

    /// STUN server URLs handed to clients (repeatable or comma-separated), e.g.
    /// `stun:stun.example.com:3478`.
    #[arg(long = "stun-url", env = "SIGNALING_STUN_URLS", value_delimiter = ',')]
    pub stun_urls: Vec<String>,

    /// TURN server URLs handed to clients with short-lived credentials (repeatable or
    /// comma-separated), e.g. `turn:turn.example.com:3478?transport=udp`, `turns:...:5349`.
    #[arg(long = "turn-url", env = "SIGNALING_TURN_URLS", value_delimiter = ',')]
    pub turn_urls: Vec<String>,

    /// TURN REST shared secrets (repeatable or comma-separated). The first signs credentials;
    /// the relay accepts any of its list, so secrets can be rotated.
    #[arg(
        long = "turn-secret",
        env = "SIGNALING_TURN_SECRETS",
        value_delimiter = ',',
        value_name = "SECRET"
    )]
    pub turn_secrets: Vec<Secret>,

    /// Set when `turn_secrets` holds only the secret agreed through Redis (no `--turn-secret`):
    /// the node writes it back if Redis loses it.
    #[arg(skip)]
    pub turn_secret_agreed: bool,

    /// Lifetime of minted TURN credentials. Fresh ones are pushed at 80% of it.
    #[arg(long, env = "SIGNALING_TURN_TTL", default_value = "10m", value_parser = parse_duration)]
    pub turn_ttl: Duration,

    /// Cluster mode: share rooms and sessions with the other nodes through Redis 7+ (or
    /// Valkey), e.g. `redis://10.0.0.5:6379`. Several comma-separated URLs are the seed nodes of
    /// a Redis Cluster (detected from the server). Without it the node is standalone and needs
    /// no external service.
    #[arg(long = "redis", env = "SIGNALING_REDIS", value_delimiter = ',')]
    pub redis_urls: Vec<String>,

    /// This node's name in the cluster: its id (in logs, `GET /v1/rooms/ROOM` and its lease) is
    /// `ID.` and a random part new at each start, so a node restarted under the same name is a
    /// new node and the sessions of its predecessor are adopted as a dead node's. Default: only
    /// the random part.
    #[arg(long, env = "SIGNALING_NODE_ID")]
    pub node_id: Option<String>,

    /// How often a cluster node renews its lease and looks for dead nodes.
    #[arg(long, env = "SIGNALING_NODE_HEARTBEAT", default_value = "1s", value_parser = parse_duration)]
    pub node_heartbeat: Duration,

    /// A cluster node that has not renewed its lease for this long is dead: another node parks
    /// its sessions (their clients resume anywhere within the resume grace period).
    #[arg(long, env = "SIGNALING_NODE_LEASE", default_value = "5s", value_parser = parse_duration)]
    pub node_lease: Duration,

    /// How often a cluster node reads the relay fleet (relays started with `--register`) from
    /// Redis; a room whose relay died or drains is moved within this time of Redis knowing it.
    #[arg(long, env = "SIGNALING_FLEET_REFRESH", default_value = "500ms", value_parser = parse_duration)]
    pub fleet_refresh: Duration,

    /// This node's region: rooms get relays of the fleet in the same region when there are
    /// any (relays' `--region`).
    #[arg(long, env = "SIGNALING_REGION")]
    pub region: Option<String>,

    /// The deadline of one Redis call; past it, the node counts Redis as unreachable.
    #[arg(long, env = "SIGNALING_REDIS_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub redis_timeout: Duration,

    /// API keys for the backend and admin HTTP API (`/v1/rooms/...`), repeatable or
    /// comma-separated, presented as `Authorization: Bearer KEY`. The API also takes admin
    /// JWTs signed with `--jwt-secret`; with neither a key nor `--jwt-secret`, it is off (404).
    #[arg(
        long = "api-key",
        env = "SIGNALING_API_KEYS",
        value_delimiter = ',',
        value_name = "SECRET"
    )]
    pub api_keys: Vec<Secret>,

    /// The admin listener: the live admin page (`/`, updated through SSE at `/events`), its
    /// JSON (`/snapshot`), `/metrics` and `/healthz`; `none` turns it off. It has no
    /// credentials of its own: keep it on loopback or a private network. When the default
    /// port is taken, a free port is used (the address is printed as `admin http://...`).
    #[arg(long, env = "SIGNALING_ADMIN_LISTEN", default_value = DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: startup::admin_listen::AdminListen,

    /// Do not serve `/metrics` on `--listen` (404 there; the admin listener keeps it): for
    /// nodes whose load should not be public behind a balancer in TCP mode.
    #[arg(long, env = "SIGNALING_NO_PUBLIC_METRICS")]
    pub no_public_metrics: bool,

    /// The price of one GB (10^9 bytes) of TURN egress, for the admin page's cost estimate.
    #[arg(long, env = "SIGNALING_EGRESS_PRICE_PER_GB", default_value = "0.05")]
    pub egress_price_per_gb: f64,

    /// Serve the web demo from this directory instead of the files embedded in the binary
    /// (for development).
    #[arg(long, env = "SIGNALING_WEB_DIR")]
    pub web_dir: Option<PathBuf>,

    /// Log format on stderr: `text` (coloured only on a terminal) or `json` lines. Default:
    /// `text`, or `json` with the older `--log-json`.
    #[arg(
        long,
        env = "SIGNALING_LOG_FORMAT",
        default_value = "text",
        default_value_if("log_json", "true", "json")
    )]
    pub log_format: LogFormat,

    /// Which logs to write: `info`, `warn,signaling=debug`, ... (`RUST_LOG` syntax). SIGHUP
    /// applies a new one from the `--config` file (when neither the flag nor `RUST_LOG` sets
    /// it).
    #[arg(long, env = "RUST_LOG", default_value = "info,redis=error", value_parser = startup::logging::parse_filter)]
    pub log_filter: String,

    /// The same as `--log-format json` (the flag's older name), unless `--log-format` is
    /// given: it makes `json` the default of `--log-format`, so the start-up summary shows the
    /// format in force.
    #[arg(long, env = "SIGNALING_LOG_JSON", hide = true)]
    pub log_json: bool,

    /// A TOML file of settings, keyed by flag name (`ping_interval = "10s"`); flags and
    /// environment variables take precedence over it.
    #[arg(long, env = "SIGNALING_CONFIG")]
    pub config: Option<PathBuf>,

    /// Run the STUN/TURN relay in this process (the one-command local stack): clients get its
    /// `stun:`/`turn:` URLs with credentials signed by `--turn-secret`, or by a secret generated
    /// at start-up when none is given.
    #[cfg(feature = "with-relay")]
    #[arg(long, env = "SIGNALING_WITH_RELAY")]
    pub with_relay: bool,

    /// UDP and TCP address of the in-process relay. Default: the `--listen` IP, port 3478 (or a
    /// free port when 3478 is taken).
    #[cfg(feature = "with-relay")]
    #[arg(long, env = "SIGNALING_RELAY_LISTEN")]
    pub relay_listen: Option<SocketAddr>,

    /// Host name or IP clients use to reach the in-process relay; needed when it listens on
    /// all interfaces (0.0.0.0 or ::).
    #[cfg(feature = "with-relay")]
    #[arg(long, env = "SIGNALING_RELAY_HOST")]
    pub relay_host: Option<String>,

    /// An extra flag for the in-process relay (repeatable), e.g.
    /// `--relay-arg=--relay-ports=50000-50999`. See `relay --help`.
    #[cfg(feature = "with-relay")]
    #[arg(long = "relay-arg", allow_hyphen_values = true)]
    pub relay_args: Vec<String>,

    /// One port for everything: `--listen` serves TURN too, handed to the in-process relay.
    /// Each connection is told apart by its first bytes (after the PROXY header and the TLS
    /// handshake): STUN or ChannelData goes to the relay, an HTTP request line to the web side.
    /// With TLS on, the port carries HTTPS, WSS and TURN over TLS (`turns:HOST:PORT` in
    /// `welcome`); without, HTTP, WS and TURN over TCP (`turn:HOST:PORT?transport=tcp`).
    #[cfg(feature = "with-relay")]
    #[arg(long, env = "SIGNALING_SHARED_PORT")]
    pub shared_port: bool,

    /// Where clients reach the shared port, `HOST:PORT`, when a balancer or a port forward sits
    /// in front (HAProxy on 443 passing TCP through to this node): `welcome` then advertises
    /// `turns:HOST:PORT` instead of `--relay-host` and the `--listen` port.
    #[cfg(feature = "with-relay")]
    #[arg(long, env = "SIGNALING_SHARED_PORT_PUBLIC", value_name = "HOST:PORT")]
    pub shared_port_public: Option<String>,
}

impl Config {
    /// Whether `--listen` speaks TLS: certificate files, a self-signed certificate or ACME.
    pub fn serves_tls(&self) -> bool {
        self.tls_cert.is_some() || self.tls_self_signed || !self.acme_domains.is_empty()
    }

    /// Checks the flags that need another flag or exclude one: `--tls-cert needs --tls-key`.
    /// Not clap's `requires` and `conflicts_with`, which count a switch's variable set to
    /// `false` as given: `SIGNALING_WITH_RELAY=false` would let `--shared-port` start without
    /// a relay (and ignore it), `SIGNALING_TLS_SELF_SIGNED=false` would refuse `--tls-cert`.
    pub fn check_combinations(&self) -> Result<(), Error> {
        let tls_files = self.tls_cert.is_some() || self.tls_key.is_some();
        let acme = !self.acme_domains.is_empty();
        #[cfg_attr(not(feature = "with-relay"), allow(unused_mut))]
        let mut refused = vec![
            (
                self.tls_cert.is_some() && self.tls_key.is_none(),
                "--tls-cert needs --tls-key",
            ),
            (
                self.tls_key.is_some() && self.tls_cert.is_none(),
                "--tls-key needs --tls-cert",
            ),
            (
                self.tls_self_signed && tls_files,
                "--tls-self-signed cannot be used with --tls-cert",
            ),
            (
                acme && self.acme_cache.is_none(),
                "--acme-domain needs --acme-cache",
            ),
            (
                acme && (tls_files || self.tls_self_signed),
                "--acme-domain cannot be used with --tls-cert or --tls-self-signed",
            ),
            (
                self.node_id.is_some() && self.redis_urls.is_empty(),
                "--node-id needs --redis",
            ),
        ];
        #[cfg(feature = "with-relay")]
        refused.extend([
            (
                self.relay_listen.is_some() && !self.with_relay,
                "--relay-listen needs --with-relay",
            ),
            (
                self.relay_host.is_some() && !self.with_relay,
                "--relay-host needs --with-relay",
            ),
            (
                !self.relay_args.is_empty() && !self.with_relay,
                "--relay-arg needs --with-relay",
            ),
            (
                self.shared_port && !self.with_relay,
                "--shared-port needs --with-relay",
            ),
            (
                self.shared_port_public.is_some() && !self.shared_port,
                "--shared-port-public needs --shared-port",
            ),
        ]);
        match refused.into_iter().find(|(refused, _)| *refused) {
            Some((_, why)) => Err(Error::Config(why.into())),
            None => Ok(()),
        }
    }

    /// Checks the values that clap cannot: flags that need another ([`Self::check_combinations`]),
    /// durations that must be positive, limits that must hold at least one of something, URLs
    /// with the right scheme.
    pub fn validate(&self) -> Result<(), Error> {
        self.check_combinations()?;
        let bad = |what: String| Err(Error::Config(what));
        if self.ping_interval.is_zero() || self.ping_timeout < self.ping_interval {
            return bad("--ping-interval must be > 0 and <= --ping-timeout".into());
        }
        if self.poll_timeout.is_zero() {
            return bad("--poll-timeout must be > 0".into());
        }
        if !(self.egress_price_per_gb.is_finite() && self.egress_price_per_gb >= 0.0) {
            return bad("--egress-price-per-gb must be a number >= 0".into());
        }
        if self.resume_grace.is_zero() {
            return bad("--resume-grace must be > 0".into());
        }
        if self.replay_max_messages == 0 || self.replay_max_bytes == 0 {
            return bad("the replay buffer bounds must be > 0".into());
        }
        if self.outbound_queue < 2 {
            return bad("--outbound-queue must be at least 2".into());
        }
        if self.outbound_queue_bytes < 2 * self.max_message_bytes {
            return bad(
                "--outbound-queue-bytes must hold at least two frames of --max-message-bytes"
                    .into(),
            );
        }
        if self.max_message_bytes < 256 {
            return bad("--max-message-bytes must be at least 256".into());
        }
        if self.max_peers_per_room == 0 || self.max_rooms == 0 || self.max_sessions == 0 {
            return bad("room and session limits must be > 0".into());
        }
        if self.header_read_timeout.is_zero()
            || self.max_http_connections == 0
            || self.max_http_connections_per_ip == 0
        {
            return bad(
                "--header-read-timeout, --max-http-connections and --max-http-connections-per-ip \
                 must be > 0"
                    .into(),
            );
        }
        if self.max_connections_per_ip == 0
            || self.max_sessions_per_ip == 0
            || !(self.join_rate_per_ip > 0.0 && self.join_burst_per_ip >= 1.0)
        {
            return bad(
                "--max-connections-per-ip and --max-sessions-per-ip must be > 0, --join-rate-per-ip > 0 and --join-burst-per-ip >= 1"
                    .into(),
            );
        }
        if !(self.rate_limit > 0.0 && self.rate_burst >= 1.0) {
            return bad("--rate-limit must be > 0 and --rate-burst >= 1".into());
        }
        for url in &self.stun_urls {
            if !url.starts_with("stun:") && !url.starts_with("stuns:") {
                return bad(format!("--stun-url {url}: must start with stun: or stuns:"));
            }
        }
        for url in &self.turn_urls {
            if !url.starts_with("turn:") && !url.starts_with("turns:") {
                return bad(format!("--turn-url {url}: must start with turn: or turns:"));
            }
        }
        if !self.turn_urls.is_empty() && self.turn_secrets.is_empty() && self.redis_urls.is_empty()
        {
            return bad(
                "--turn-url needs --turn-secret to mint credentials (a cluster agrees on one)"
                    .into(),
            );
        }
        for url in &self.redis_urls {
            if !url.starts_with("redis://") && !url.starts_with("rediss://") {
                return bad(format!("--redis {url}: must start with redis://"));
            }
        }
        if self.node_heartbeat.is_zero() || self.node_lease < self.node_heartbeat * 2 {
            return bad("--node-lease must be at least twice --node-heartbeat (> 0)".into());
        }
        if self.redis_timeout.is_zero() {
            return bad("--redis-timeout must be > 0".into());
        }
        if self
            .node_id
            .as_deref()
            .is_some_and(|id| id.is_empty() || id.contains(|c: char| c.is_whitespace()))
        {
            return bad("--node-id must be non-empty without spaces".into());
        }
        if self.turn_ttl < Duration::from_secs(1) {
            return bad("--turn-ttl must be at least 1s".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/signaling.md`'s flag table has a row for every flag, with its environment variable
    /// and its default: the docs are the operator's contract.
    #[test]
    fn the_docs_table_lists_every_flag_with_its_environment_and_default() {
        use clap::CommandFactory as _;
        let doc = include_str!("../../docs/signaling.md");
        let gaps = startup::config_file::docs_table_gaps(&Config::command(), doc);
        assert!(gaps.is_empty(), "docs/signaling.md: {gaps:?}");
    }

    #[test]
    fn secrets_are_redacted_and_defaults_validate() {
        let config = Config::parse_from([
            "signaling",
            "--jwt-secret",
            "hunter2",
            "--turn-url",
            "turn:127.0.0.1:3478",
            "--turn-secret",
            "s1,s2",
        ]);
        let printed = format!("{config:?}");
        assert!(
            !printed.contains("hunter2") && !printed.contains("s1"),
            "{printed}"
        );
        assert_eq!(config.turn_secrets.len(), 2);
        config.validate().unwrap();
    }

    #[test]
    fn the_older_log_json_shows_as_log_format_json_in_the_summary() {
        use clap::CommandFactory as _;
        let log_format_line = |args: &[&str]| {
            let matches = Config::command()
                .get_matches_from(std::iter::once("signaling").chain(args.iter().copied()));
            let summary = startup::summary::summary(&Config::command(), &matches);
            let line = summary
                .lines()
                .find(|line| line.trim_start().starts_with("--log-format"))
                .unwrap_or_else(|| panic!("no --log-format line: {summary}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let config =
                Config::parse_from(std::iter::once("signaling").chain(args.iter().copied()));
            (line, config.log_format)
        };
        assert_eq!(
            log_format_line(&["--log-json"]),
            (
                "--log-format json (implied by another flag)".into(),
                LogFormat::Json
            )
        );
        assert_eq!(
            log_format_line(&[]),
            ("--log-format text".into(), LogFormat::Text)
        );
        // The flag of the current name wins, and the summary says what is in force.
        assert_eq!(
            log_format_line(&["--log-json", "--log-format", "text"]),
            ("--log-format text (flag or file)".into(), LogFormat::Text)
        );
    }

    #[test]
    fn a_flag_without_the_flag_it_needs_is_named_with_it() {
        let cases: &[(&[&str], &str)] = &[
            (&["--tls-cert", "c.pem"], "--tls-cert needs --tls-key"),
            (&["--tls-key", "k.pem"], "--tls-key needs --tls-cert"),
            (
                &[
                    "--tls-self-signed",
                    "--tls-cert",
                    "c.pem",
                    "--tls-key",
                    "k.pem",
                ],
                "--tls-self-signed cannot be used with --tls-cert",
            ),
            (
                &["--acme-domain", "a.example"],
                "--acme-domain needs --acme-cache",
            ),
            (
                &[
                    "--acme-domain",
                    "a.example",
                    "--acme-cache",
                    "d",
                    "--tls-self-signed",
                ],
                "--acme-domain cannot be used with --tls-cert or --tls-self-signed",
            ),
            (&["--node-id", "a"], "--node-id needs --redis"),
            #[cfg(feature = "with-relay")]
            (&["--shared-port"], "--shared-port needs --with-relay"),
            #[cfg(feature = "with-relay")]
            (&["--relay-host", "h"], "--relay-host needs --with-relay"),
            #[cfg(feature = "with-relay")]
            (
                &["--relay-listen", "127.0.0.1:0"],
                "--relay-listen needs --with-relay",
            ),
            #[cfg(feature = "with-relay")]
            (
                &["--relay-arg=--workers=1"],
                "--relay-arg needs --with-relay",
            ),
            #[cfg(feature = "with-relay")]
            (
                &["--with-relay", "--shared-port-public", "h:443"],
                "--shared-port-public needs --shared-port",
            ),
        ];
        for (args, why) in cases {
            let config =
                Config::try_parse_from(std::iter::once("signaling").chain(args.iter().copied()))
                    .unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let refused = config.validate().expect_err(why).to_string();
            assert_eq!(refused, format!("invalid configuration: {why}"), "{args:?}");
        }
        let both = Config::parse_from(["signaling", "--tls-cert", "c.pem", "--tls-key", "k.pem"]);
        both.check_combinations().unwrap();
    }
}
