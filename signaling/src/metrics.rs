//! Prometheus metrics, served as text at `GET /metrics`.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::peer_stats::{Recorded, path_of};
use crate::protocol::ErrorCode;

/// The path type of a selected candidate pair: both candidate types (4 x 4 values) and
/// whether it is relayed. Bounded: no peer, room or address ever becomes a label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabel {
    path: &'static str,
    local: &'static str,
    remote: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RelayLabel {
    relay: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// Counts one reload on SIGHUP in `reloads`, by result: `ok` when it took effect, else
/// `refused` (what was in force stays).
fn count_reload(reloads: &Family<ResultLabel, Counter>, ok: bool) {
    let result = if ok { "ok" } else { "refused" };
    reloads.get_or_create(&ResultLabel { result }).inc();
}

/// Why a cluster node closed its sockets with 1013 (the `reason` of
/// `signaling_cluster_outages_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// A Redis call failed or timed out.
    Store,
    /// The node's pub/sub subscription was lost.
    Pubsub,
    /// The node found its lease gone from Redis (expired, its sessions adopted by another
    /// node; or Redis lost its data), the first sign of the outage.
    LeaseLost,
}

impl Outage {
    const ALL: [Self; 3] = [Self::Store, Self::Pubsub, Self::LeaseLost];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Store => "store",
            Self::Pubsub => "pubsub",
            Self::LeaseLost => "lease_lost",
        }
    }
}

/// The series only a cluster node (`--redis`) has: the health of its link to Redis and to the
/// other nodes.
#[derive(Debug)]
struct ClusterMetrics {
    available: Gauge,
    outages: Family<ReasonLabel, Counter>,
    store_errors: Counter,
    nodes: Gauge,
    sessions_adopted: Counter,
    sessions_vanished: Counter,
    sessions_orphaned: Counter,
}

impl ClusterMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            available: Gauge::default(),
            outages: Family::default(),
            store_errors: Counter::default(),
            nodes: Gauge::default(),
            sessions_adopted: Counter::default(),
            sessions_vanished: Counter::default(),
            sessions_orphaned: Counter::default(),
        };
        registry.register(
            "cluster_available",
            "1 while Redis answers and this node's channel is subscribed, 0 during an outage",
            metrics.available.clone(),
        );
        // Every reason from the start, so that an alert on `increase` sees the first outage.
        for why in Outage::ALL {
            let reason = why.as_str();
            let _ = metrics.outages.get_or_create(&ReasonLabel { reason });
        }
        registry.register(
            "cluster_outages",
            "Times this node closed its sockets with 1013 because of an outage, by reason",
            metrics.outages.clone(),
        );
        registry.register(
            "cluster_store_errors",
            "Redis calls that failed or timed out",
            metrics.store_errors.clone(),
        );
        registry.register(
            "cluster_nodes",
            "Nodes holding a live lease, this one included, at the last heartbeat that reached Redis",
            metrics.nodes.clone(),
        );
        registry.register(
            "cluster_sessions_adopted",
            "Sessions of dead nodes this node adopted (parked for their clients to resume)",
            metrics.sessions_adopted.clone(),
        );
        registry.register(
            "cluster_sessions_vanished",
            "Sessions attached here found missing from Redis (their keys expired, or ended \
             unheard): their sockets were closed",
            metrics.sessions_vanished.clone(),
        );
        registry.register(
            "cluster_sessions_orphaned",
            "Sessions Redis attached to this node that it did not serve (a join or resume it \
             gave up on during an outage, run by Redis afterwards): parked, to be resumed or to \
             leave after the grace period",
            metrics.sessions_orphaned.clone(),
        );
        metrics
    }
}

/// Every metric of the server. Cheap to update from any task (atomics).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections and HTTP streams (SSE, long-poll).
    pub connections: Gauge,
    /// WebSocket connections (upgraded, whatever follows) and HTTP streams accepted since start.
    pub connections_total: Counter,
    /// Sessions (joined peers, attached or waiting to resume).
    pub sessions: Gauge,
    /// Rooms with at least one session.
    pub rooms: Gauge,
    /// Signal and broadcast messages delivered to a recipient's queue.
    pub messages_relayed: Counter,
    /// Numbered frames (`cseq`) dropped because the session had handled them already.
    pub duplicates_dropped: Counter,
    /// TCP connections closed at once because `--max-http-connections` were open.
    pub http_refused: Counter,
    /// TCP connections closed at once: their source held `--max-http-connections-per-ip`.
    pub http_refused_per_ip: Counter,
    /// HTTP connections closed: a request's headers did not come within
    /// `--header-read-timeout`.
    pub http_header_timeouts: Counter,
    /// HTTP connections closed: an answer's write made no progress within
    /// `--header-read-timeout` (a client that does not read).
    pub http_write_timeouts: Counter,
    /// TLS handshakes that failed or did not finish within `--header-read-timeout`.
    pub tls_handshake_failures: Counter,
    tls_reloads: Family<ResultLabel, Counter>,
    tls_not_after: Gauge,
    config_reloads: Family<ResultLabel, Counter>,
    /// Connections closed because their PROXY header was missing or malformed.
    pub proxy_headers_refused: Counter,
    /// `--shared-port`: connections closed because their first bytes were neither TURN nor
    /// HTTP (or came too late), or because the relay could not take them.
    pub first_bytes_refused: Counter,
    /// `--shared-port`: TURN connections handed to the in-process relay.
    pub turn_handovers: Counter,
    acme_certificates: Family<ResultLabel, Counter>,
    acme_not_after: Gauge,
    acme_next_order: Gauge,
    errors: Family<CodeLabel, Counter>,
    resumes: Family<ResultLabel, Counter>,
    http_requests: Family<KindLabel, Counter>,
    http_frames: Counter,
    /// Sessions ended because the node was past its memory budget.
    pub budget_evictions: Counter,
    /// Bytes of frames held (queued and kept for replay), as the memory budget counts them.
    pub budget_used: Gauge,
    /// Active relays in the fleet, as this node last read it.
    pub relay_fleet: Gauge,
    /// Rooms of this node moved to another relay of the fleet.
    pub relay_reassignments: Counter,
    rooms_per_relay: Family<RelayLabel, Gauge>,
    /// `join` received -> `welcome` queued (admitted sessions only); a PeerJS registration's
    /// request read -> its session joined, a y-webrtc `subscribe` read -> its subscription.
    pub join_latency: Histogram,
    /// A `signal` received -> queued to its target (inside this server); delivered ones only.
    signal_latency: Histogram,
    /// Join -> the session's first `stats` report with a selected candidate pair.
    ice_connected: Histogram,
    /// Selected candidate pairs reported (new or changed), by path type.
    ice_paths: Family<PathLabel, Counter>,
    /// `stats` reports accepted.
    stats_reports: Counter,
    /// Answers of the backend and admin API by HTTP status.
    api_answers: Family<StatusLabel, Counter>,
    /// Cluster mode only.
    cluster: Option<ClusterMetrics>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(false)
    }
}

impl Metrics {
    /// Every series of a node; `cluster` adds the `signaling_cluster_*` series of a node
    /// started with `--redis`.
    pub fn new(cluster: bool) -> Self {
        let mut registry = Registry::with_prefix("signaling");
        let cluster = cluster.then(|| ClusterMetrics::register(&mut registry));
        let connections = Gauge::default();
        let connections_total = Counter::default();
        let sessions = Gauge::default();
        let rooms = Gauge::default();
        let messages_relayed = Counter::default();
        let http_refused = Counter::default();
        let http_refused_per_ip = Counter::default();
        registry.register(
            "http_connections_refused_per_ip",
            "TCP connections closed at once: their source held --max-http-connections-per-ip",
            http_refused_per_ip.clone(),
        );
        let http_header_timeouts = Counter::default();
        let http_write_timeouts = Counter::default();
        let tls_handshake_failures = Counter::default();
        let tls_reloads = Family::<ResultLabel, Counter>::default();
        let config_reloads = Family::<ResultLabel, Counter>::default();
        let proxy_headers_refused = Counter::default();
        let first_bytes_refused = Counter::default();
        let turn_handovers = Counter::default();
        let acme_certificates = Family::<ResultLabel, Counter>::default();
        let acme_not_after = Gauge::default();
        let acme_next_order = Gauge::default();
        registry.register(
            "acme_certificates",
            "ACME certificate steps by result (cached, issued, renewed, failed)",
            acme_certificates.clone(),
        );
        registry.register(
            "acme_certificate_not_after_seconds",
            "notAfter of the ACME certificate in force, in Unix seconds (0: none yet)",
            acme_not_after.clone(),
        );
        registry.register(
            "acme_next_order_seconds",
            "When the next ACME order (renewal or retry) is planned, in Unix seconds",
            acme_next_order.clone(),
        );
        let errors = Family::<CodeLabel, Counter>::default();
        let resumes = Family::<ResultLabel, Counter>::default();
        let http_requests = Family::<KindLabel, Counter>::default();
        let http_frames = Counter::default();
        let duplicates_dropped = Counter::default();
        let budget_evictions = Counter::default();
        let budget_used = Gauge::default();
        registry.register(
            "memory_budget_evictions",
            "Sessions ended because the node was past its --memory-budget",
            budget_evictions.clone(),
        );
        registry.register(
            "memory_budget_used_bytes",
            "Bytes of frames held (queued and kept for replay) as the memory budget counts them",
            budget_used.clone(),
        );
        let relay_fleet = Gauge::default();
        let relay_reassignments = Counter::default();
        let rooms_per_relay = Family::<RelayLabel, Gauge>::default();
        let join_latency = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        let signal_latency = Histogram::new(exponential_buckets(0.000_05, 2.0, 14));
        let ice_connected = Histogram::new(exponential_buckets(0.1, 2.0, 10));
        let ice_paths = Family::<PathLabel, Counter>::default();
        let stats_reports = Counter::default();
        let api_answers = Family::<StatusLabel, Counter>::default();
        registry.register(
            "api_answers",
            "Answers of the backend and admin API (/v1/...) by HTTP status (401: a bad key)",
            api_answers.clone(),
        );
        registry.register(
            "join_latency_seconds",
            "Time from a join received to its welcome queued (a PeerJS registration, a y-webrtc subscribe)",
            join_latency.clone(),
        );
        registry.register(
            "signal_latency_seconds",
            "Time from a signal received to its delivery queued to the target, inside the server",
            signal_latency.clone(),
        );
        registry.register(
            "ice_connected_seconds",
            "Time from a join to the session's first stats report with a selected candidate pair",
            ice_connected.clone(),
        );
        registry.register(
            "ice_paths",
            "Selected candidate pairs reported by clients (new or changed), by path type",
            ice_paths.clone(),
        );
        registry.register(
            "stats_reports",
            "Client stats reports accepted",
            stats_reports.clone(),
        );
        registry.register(
            "relay_fleet",
            "Active relays of the fleet that accept this node's TURN credentials (those rooms are given to)",
            relay_fleet.clone(),
        );
        registry.register(
            "relay_reassignments",
            "Rooms of this node moved to another relay of the fleet",
            relay_reassignments.clone(),
        );
        registry.register(
            "relay_rooms",
            "Rooms of this node per relay of the fleet",
            rooms_per_relay.clone(),
        );
        registry.register(
            "connections",
            "Open WebSocket connections and HTTP streams (SSE, long-poll)",
            connections.clone(),
        );
        registry.register(
            "connections_accepted",
            "WebSocket connections and HTTP streams (SSE, long-poll) accepted",
            connections_total.clone(),
        );
        registry.register("sessions", "Sessions, attached or parked", sessions.clone());
        registry.register("rooms", "Rooms with at least one peer", rooms.clone());
        registry.register(
            "messages_relayed",
            "Signal and broadcast messages delivered to a peer",
            messages_relayed.clone(),
        );
        registry.register(
            "http_connections_refused",
            "TCP connections closed at once: too many open HTTP connections",
            http_refused.clone(),
        );
        registry.register(
            "http_header_timeouts",
            "HTTP connections closed because a request's headers did not come within \
             --header-read-timeout",
            http_header_timeouts.clone(),
        );
        registry.register(
            "http_write_timeouts",
            "HTTP connections closed because an answer's write made no progress within \
             --header-read-timeout (the client does not read)",
            http_write_timeouts.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or did not finish within the header-read timeout",
            tls_handshake_failures.clone(),
        );
        registry.register(
            "tls_reloads",
            "Certificate reloads on SIGHUP by result (refused: the old certificate stays)",
            tls_reloads.clone(),
        );
        let tls_not_after = Gauge::default();
        registry.register(
            "tls_certificate_not_after_seconds",
            "notAfter of the --tls-cert certificate in force, in Unix seconds (0: none, or not readable as X.509)",
            tls_not_after.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads on SIGHUP by result (refused: the configuration in force stays)",
            config_reloads.clone(),
        );
        registry.register(
            "proxy_headers_refused",
            "Connections closed: no well-formed PROXY protocol header (--proxy-protocol)",
            proxy_headers_refused.clone(),
        );
        registry.register(
            "first_bytes_refused",
            "Connections closed (--shared-port): first bytes neither TURN nor HTTP, too late, or \
             the relay busy",
            first_bytes_refused.clone(),
        );
        registry.register(
            "turn_handovers",
            "TURN connections handed to the in-process relay (--shared-port)",
            turn_handovers.clone(),
        );
        registry.register("errors", "Error replies by code", errors.clone());
        registry.register("resumes", "Resume attempts by result", resumes.clone());
        registry.register(
            "http_requests",
            "Requests of the HTTP transports by kind (open, events, poll, send)",
            http_requests.clone(),
        );
        registry.register(
            "http_frames_delivered",
            "Frames written to SSE streams and long-poll replies",
            http_frames.clone(),
        );
        registry.register(
            "duplicate_frames",
            "Numbered client frames (cseq) dropped as already handled",
            duplicates_dropped.clone(),
        );
        Self {
            registry,
            connections,
            connections_total,
            sessions,
            rooms,
            messages_relayed,
            duplicates_dropped,
            http_refused,
            http_refused_per_ip,
            http_header_timeouts,
            http_write_timeouts,
            tls_handshake_failures,
            tls_reloads,
            tls_not_after,
            config_reloads,
            proxy_headers_refused,
            first_bytes_refused,
            turn_handovers,
            acme_certificates,
            acme_not_after,
            acme_next_order,
            errors,
            resumes,
            http_requests,
            http_frames,
            budget_evictions,
            budget_used,
            relay_fleet,
            relay_reassignments,
            rooms_per_relay,
            join_latency,
            signal_latency,
            ice_connected,
            ice_paths,
            stats_reports,
            api_answers,
            cluster,
        }
    }

    /// Counts one answer of the backend and admin API.
    pub fn api_answer(&self, status: axum::http::StatusCode) {
        let status = status.as_u16();
        self.api_answers
            .get_or_create(&StatusLabel { status })
            .inc();
    }

    /// Cluster mode: whether Redis answers and the node's channel is subscribed.
    pub fn cluster_available(&self, available: bool) {
        if let Some(cluster) = &self.cluster {
            cluster.available.set(i64::from(available));
        }
    }

    /// Cluster mode: counts one outage (the node closed its sockets with 1013).
    pub fn cluster_outage(&self, why: Outage) {
        if let Some(cluster) = &self.cluster {
            let reason = why.as_str();
            cluster.outages.get_or_create(&ReasonLabel { reason }).inc();
        }
    }

    /// Cluster mode: counts a session attached here found missing from Redis.
    pub fn cluster_session_vanished(&self) {
        if let Some(cluster) = &self.cluster {
            cluster.sessions_vanished.inc();
        }
    }

    /// Cluster mode: counts one failed Redis call.
    pub fn cluster_store_error(&self) {
        if let Some(cluster) = &self.cluster {
            cluster.store_errors.inc();
        }
    }

    /// Cluster mode: the nodes with a live lease.
    pub fn cluster_nodes(&self, nodes: u64) {
        if let Some(cluster) = &self.cluster {
            cluster.nodes.set(i64::try_from(nodes).unwrap_or(i64::MAX));
        }
    }

    /// Cluster mode: counts one session found in this node's index that it did not serve.
    pub fn cluster_session_orphaned(&self) {
        if let Some(cluster) = &self.cluster {
            cluster.sessions_orphaned.inc();
        }
    }

    /// Cluster mode: counts one session adopted from a dead node.
    pub fn cluster_session_adopted(&self) {
        if let Some(cluster) = &self.cluster {
            cluster.sessions_adopted.inc();
        }
    }

    /// Times a `signal` received at `received` whose delivery to its target was just queued
    /// (one refused, e.g. `unknown_peer`, is not timed).
    pub fn signal_delivered(&self, received: Instant) {
        self.signal_latency
            .observe(received.elapsed().as_secs_f64());
    }

    /// Counts one error reply (or refusal) with `code`.
    pub fn error(&self, code: ErrorCode) {
        self.errors
            .get_or_create(&CodeLabel {
                code: code.as_str(),
            })
            .inc();
    }

    /// Counts an accepted `stats` report: `since_join` is the time from the session's join to
    /// the report.
    pub fn stats_report(&self, recorded: &Recorded, since_join: std::time::Duration) {
        self.stats_reports.inc();
        if recorded.first_connected {
            self.ice_connected.observe(since_join.as_secs_f64());
        }
        if let Some(pair) = &recorded.new_pair {
            self.ice_paths
                .get_or_create(&PathLabel {
                    path: path_of(Some(pair)),
                    local: pair.local.as_str(),
                    remote: pair.remote.as_str(),
                })
                .inc();
        }
    }

    /// Counts one certificate reload.
    pub fn tls_reload(&self, ok: bool) {
        count_reload(&self.tls_reloads, ok);
    }

    /// Records the expiry of the `--tls-cert` certificate put in force (at start-up or by a
    /// reload).
    pub fn tls_certificate(&self, not_after: Option<std::time::SystemTime>) {
        let seconds = not_after.map_or(0, startup::tls::unix_seconds);
        self.tls_not_after
            .set(i64::try_from(seconds).unwrap_or(i64::MAX));
    }

    /// Counts one ACME step; records the expiry of the certificate in force and when the
    /// next order is planned.
    pub fn acme(&self, status: startup::acme::Status) {
        self.acme_certificates
            .get_or_create(&ResultLabel {
                result: status.outcome.as_str(),
            })
            .inc();
        let unix = |t: std::time::SystemTime| {
            t.duration_since(std::time::SystemTime::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        };
        self.acme_not_after.set(status.not_after.map_or(0, unix));
        self.acme_next_order.set(unix(status.next_order));
    }

    /// Counts one configuration reload (SIGHUP): `ok` when it took effect.
    pub fn config_reload(&self, ok: bool) {
        count_reload(&self.config_reloads, ok);
    }

    /// Counts one resume attempt.
    pub fn resume(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.resumes.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts one request of an HTTP transport.
    pub fn http_request(&self, kind: &'static str) {
        self.http_requests.get_or_create(&KindLabel { kind }).inc();
    }

    /// Counts frames written to an SSE stream or a long-poll reply.
    pub fn http_frames(&self, n: u64) {
        self.http_frames.inc_by(n);
    }

    /// Replaces the rooms-per-relay gauges.
    pub fn set_rooms_per_relay(&self, counts: &std::collections::HashMap<String, u64>) {
        self.rooms_per_relay.clear();
        for (relay, rooms) in counts {
            self.rooms_per_relay
                .get_or_create(&RelayLabel {
                    relay: relay.clone(),
                })
                .set(*rooms as i64);
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
