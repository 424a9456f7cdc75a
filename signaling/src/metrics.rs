//! Prometheus metrics, served as text at `GET /metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::protocol::ErrorCode;

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

/// Every metric of the server. Cheap to update from any task (atomics).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections and HTTP streams (SSE, long-poll).
    pub connections: Gauge,
    /// WebSocket connections and HTTP streams accepted since start.
    pub connections_total: Counter,
    /// Sessions (joined peers, attached or waiting to resume).
    pub sessions: Gauge,
    /// Rooms with at least one session.
    pub rooms: Gauge,
    /// Signal and broadcast messages delivered to a recipient's queue.
    pub messages_relayed: Counter,
    /// TCP connections closed at once because `--max-http-connections` were open.
    pub http_refused: Counter,
    /// TLS handshakes that failed or did not finish within `--header-read-timeout`.
    pub tls_handshake_failures: Counter,
    tls_reloads: Family<ResultLabel, Counter>,
    config_reloads: Family<ResultLabel, Counter>,
    /// Connections closed because their PROXY header was missing or malformed.
    pub proxy_headers_refused: Counter,
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
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("signaling");
        let connections = Gauge::default();
        let connections_total = Counter::default();
        let sessions = Gauge::default();
        let rooms = Gauge::default();
        let messages_relayed = Counter::default();
        let http_refused = Counter::default();
        let tls_handshake_failures = Counter::default();
        let tls_reloads = Family::<ResultLabel, Counter>::default();
        let config_reloads = Family::<ResultLabel, Counter>::default();
        let proxy_headers_refused = Counter::default();
        let errors = Family::<CodeLabel, Counter>::default();
        let resumes = Family::<ResultLabel, Counter>::default();
        let http_requests = Family::<KindLabel, Counter>::default();
        let http_frames = Counter::default();
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
        registry.register(
            "relay_fleet",
            "Active relays in the fleet (relays registered in Redis)",
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
            "WebSocket connections accepted",
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
            "tls_handshake_failures",
            "TLS handshakes that failed or did not finish within the header-read timeout",
            tls_handshake_failures.clone(),
        );
        registry.register(
            "tls_reloads",
            "Certificate reloads on SIGHUP by result (refused: the old certificate stays)",
            tls_reloads.clone(),
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
        Self {
            registry,
            connections,
            connections_total,
            sessions,
            rooms,
            messages_relayed,
            http_refused,
            tls_handshake_failures,
            tls_reloads,
            config_reloads,
            proxy_headers_refused,
            errors,
            resumes,
            http_requests,
            http_frames,
            budget_evictions,
            budget_used,
            relay_fleet,
            relay_reassignments,
            rooms_per_relay,
        }
    }
}

impl Metrics {
    /// Counts one error reply (or refusal) with `code`.
    pub fn error(&self, code: ErrorCode) {
        self.errors
            .get_or_create(&CodeLabel {
                code: code.as_str(),
            })
            .inc();
    }

    /// Counts one certificate reload.
    pub fn tls_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "refused" };
        self.tls_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Counts one configuration reload (SIGHUP): `ok` when it took effect.
    pub fn config_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "refused" };
        self.config_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
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
