//! Metrics: every worker publishes a copy of its shard's `Stats` and its I/O counters into a
//! `Metrics` slot (never on the per-packet path: on the worker's timer tick), and `/metrics`
//! sums the slots into Prometheus text through a prometheus-client `Collector`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::NoLabelSet;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use relay_proto::{
    DenyReason, LATENCY_BOUNDS_MICROS, LatencyHistogram, QuotaKind, SharedQuotas, Stats,
};

use crate::usage::UsageBook;

/// I/O-layer counters of one worker (plain fields, published with the core's stats).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IoStats {
    /// Datagrams the kernel refused or that were dropped on a full socket buffer.
    pub send_failures: u64,
    /// Relay sockets that could not be bound (no port free, family missing).
    pub relay_bind_failures: u64,
    /// Open TCP and TLS client connections (gauge).
    pub stream_connections: u64,
    /// TCP and TLS connections accepted.
    pub stream_connections_accepted: u64,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_failures: u64,
    /// TLS handshakes that did not finish within `--tls-handshake-timeout`.
    pub tls_handshake_timeouts: u64,
    /// Stream connections closed for lack of a well-formed PROXY header (`--proxy-protocol`).
    pub proxy_headers_refused: u64,
    /// TLS handshakes in progress (gauge).
    pub tls_handshakes: u64,
    /// Messages to a stream client dropped because its outbound queue was full (in messages
    /// or in `--stream-queue-bytes`).
    pub stream_queue_drops: u64,
    /// Bytes of those dropped messages.
    pub stream_queue_dropped_bytes: u64,
    /// Bytes queued towards stream clients and not yet flushed, all connections (gauge).
    pub stream_queued_bytes: u64,
    /// The most bytes queued towards any one stream connection (gauge; at most
    /// `--stream-queue-bytes`).
    pub stream_queued_bytes_max: u64,
    /// Stream connections refused because the relay was at `--max-connections`.
    pub stream_connections_refused: u64,
    /// Stream connections refused because their address was at `--max-connections-per-ip`.
    pub stream_connections_refused_per_ip: u64,
    /// Stream connections closed for framing errors (neither STUN nor ChannelData).
    pub stream_framing_errors: u64,
    /// Receive errors on UDP sockets other than "nothing to read".
    pub recv_errors: u64,
    /// Connections (`--http-upstream`) closed because their first bytes were neither TURN nor
    /// HTTP, or did not come within `--tls-handshake-timeout`.
    pub first_bytes_refused: u64,
    /// Connections forwarded to `--http-upstream`.
    pub http_upstream_connections: u64,
    /// Of those, the ones the upstream did not accept (unreachable, refused, timed out).
    pub http_upstream_failures: u64,
}

/// What one worker last published.
#[derive(Debug, Default, Clone)]
struct WorkerSnapshot {
    core: Stats,
    io: IoStats,
}

/// Shared between the workers (writers) and the admin server (reader).
#[derive(Debug)]
pub struct Metrics {
    workers: Vec<Mutex<WorkerSnapshot>>,
    /// The workers' shared state: its drain flag is the relay's (`/readyz`, `relay_draining`);
    /// nothing here keeps a copy of it.
    shared: Arc<SharedQuotas>,
    /// Relayed traffic per user (`/usage`); here its overflow counter and size gauge only.
    usage: Arc<UsageBook>,
    scrapes: AtomicU64,
    /// Certificate reloads on SIGHUP (refused: the old certificate stayed).
    tls_reloads: ReloadCounts,
    /// notAfter of the `--tls-cert` certificate in force, Unix seconds (0: none).
    tls_not_after: AtomicU64,
    config_reloads: ReloadCounts,
    /// `--max-connections`' slots, once the workers share them ([`Self::watch_connections`]).
    connections: std::sync::OnceLock<Arc<crate::io::conn_limit::ConnectionLimit>>,
}

/// Reloads of one kind on SIGHUP: those that took effect and those refused.
#[derive(Debug, Default)]
struct ReloadCounts {
    ok: AtomicU64,
    refused: AtomicU64,
}

impl ReloadCounts {
    fn count(&self, ok: bool) {
        let counter = if ok { &self.ok } else { &self.refused };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Slots for `workers` workers sharing `shared`.
    pub fn new(workers: usize, shared: Arc<SharedQuotas>, usage: Arc<UsageBook>) -> Self {
        Self {
            workers: (0..workers)
                .map(|_| Mutex::new(WorkerSnapshot::default()))
                .collect(),
            shared,
            usage,
            scrapes: AtomicU64::new(0),
            tls_reloads: ReloadCounts::default(),
            tls_not_after: AtomicU64::new(0),
            config_reloads: ReloadCounts::default(),
            connections: std::sync::OnceLock::new(),
        }
    }

    /// Reports the slots of `limit` (`relay_connection_slots`).
    pub(crate) fn watch_connections(&self, limit: Arc<crate::io::conn_limit::ConnectionLimit>) {
        let _ = self.connections.set(limit);
    }

    /// Counts one certificate reload.
    pub fn tls_reload(&self, ok: bool) {
        self.tls_reloads.count(ok);
    }

    /// Records the expiry of the `--tls-cert` certificate put in force (at start-up or by a
    /// reload).
    pub fn tls_certificate(&self, not_after: Option<std::time::SystemTime>) {
        let seconds = not_after.map_or(0, startup::tls::unix_seconds);
        self.tls_not_after.store(seconds, Ordering::Relaxed);
    }

    /// Counts one configuration reload (SIGHUP): `ok` when it took effect.
    pub fn config_reload(&self, ok: bool) {
        self.config_reloads.count(ok);
    }

    /// Worker `index` publishes its current counters.
    pub fn publish(&self, index: usize, core: &Stats, io: &IoStats) {
        if let Some(slot) = self.workers.get(index) {
            let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
            slot.core.clone_from(core);
            slot.io = *io;
        }
    }

    /// The usage ledger the workers drain into.
    pub fn usage(&self) -> &Arc<UsageBook> {
        &self.usage
    }

    /// The core stats of all workers, summed.
    pub fn core_totals(&self) -> Stats {
        let mut total = Stats::default();
        for slot in &self.workers {
            total.merge(&slot.lock().unwrap_or_else(PoisonError::into_inner).core);
        }
        total
    }

    /// The I/O stats of all workers, summed.
    pub fn io_totals(&self) -> IoStats {
        let mut t = IoStats::default();
        for slot in &self.workers {
            let s = slot.lock().unwrap_or_else(PoisonError::into_inner).io;
            t.send_failures += s.send_failures;
            t.relay_bind_failures += s.relay_bind_failures;
            t.stream_connections += s.stream_connections;
            t.stream_connections_accepted += s.stream_connections_accepted;
            t.tls_handshake_failures += s.tls_handshake_failures;
            t.tls_handshake_timeouts += s.tls_handshake_timeouts;
            t.proxy_headers_refused += s.proxy_headers_refused;
            t.tls_handshakes += s.tls_handshakes;
            t.stream_queue_drops += s.stream_queue_drops;
            t.stream_queue_dropped_bytes += s.stream_queue_dropped_bytes;
            t.stream_queued_bytes += s.stream_queued_bytes;
            t.stream_queued_bytes_max = t.stream_queued_bytes_max.max(s.stream_queued_bytes_max);
            t.stream_framing_errors += s.stream_framing_errors;
            t.stream_connections_refused += s.stream_connections_refused;
            t.stream_connections_refused_per_ip += s.stream_connections_refused_per_ip;
            t.recv_errors += s.recv_errors;
            t.first_bytes_refused += s.first_bytes_refused;
            t.http_upstream_connections += s.http_upstream_connections;
            t.http_upstream_failures += s.http_upstream_failures;
        }
        t
    }

    /// True while the relay drains (`/readyz` fails, `relay_draining` is 1): the workers'
    /// `SharedQuotas` flag, set by `RelayHandle::begin_drain`.
    pub fn is_draining(&self) -> bool {
        self.shared.is_draining()
    }

    /// Prometheus text exposition of every metric.
    pub fn render(self: &Arc<Self>) -> String {
        self.scrapes.fetch_add(1, Ordering::Relaxed);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Arc::clone(self)));
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

/// One series of the exposition: its kind and its value(s). The name and help go beside it in
/// the table of [`Metrics`]'s `Collector::encode`, which lists every series in output order.
enum Series<'a> {
    Counter(u64),
    /// Saturates at `i64::MAX` (prometheus-client's gauges are signed).
    Gauge(u64),
    /// A histogram in seconds from a shard-summed [`LatencyHistogram`].
    Latency(&'a LatencyHistogram),
    /// Counters by the value of one label: the label's name, then each value with its count.
    Labelled(&'static str, Vec<(&'static str, u64)>),
}

impl Series<'_> {
    fn encode(
        &self,
        e: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
    ) -> Result<(), std::fmt::Error> {
        match self {
            Self::Counter(value) => {
                let c = ConstCounter::new(*value);
                let m = e.encode_descriptor(name, help, None, c.metric_type())?;
                c.encode(m)
            }
            Self::Gauge(value) => {
                let g = ConstGauge::new(i64::try_from(*value).unwrap_or(i64::MAX));
                let m = e.encode_descriptor(name, help, None, g.metric_type())?;
                g.encode(m)
            }
            Self::Latency(h) => {
                let mut buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_MICROS
                    .iter()
                    .zip(h.counts)
                    .map(|(bound, n)| (*bound as f64 / 1e6, n))
                    .collect();
                buckets.push((f64::INFINITY, h.counts[LATENCY_BOUNDS_MICROS.len()]));
                let mut m = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
                m.encode_histogram::<NoLabelSet>(
                    h.sum_micros as f64 / 1e6,
                    h.count(),
                    &buckets,
                    None,
                )
            }
            Self::Labelled(label, values) => {
                let mut m =
                    e.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
                for (value_label, value) in values {
                    let labels = [(*label, *value_label)];
                    let family = m.encode_family(&labels)?;
                    ConstCounter::new(*value).encode(family)?;
                }
                Ok(())
            }
        }
    }
}

impl Collector for Metrics {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use Series::{Counter, Gauge, Labelled, Latency};
        let s = self.core_totals();
        let io = self.io_totals();
        let (overflowed, entries, unpublished) = {
            let ledger = self.usage.lock();
            (ledger.overflowed(), ledger.entries(), ledger.unpublished())
        };
        let denied = DenyReason::ALL
            .iter()
            .map(|r| (r.as_str(), s.denied(*r)))
            .collect();
        let quotas = QuotaKind::ALL
            .iter()
            .map(|q| (q.as_str(), s.quota(*q)))
            .collect();
        let series = [
            (
                "relay_allocations",
                "Live allocations",
                Gauge(s.allocations),
            ),
            (
                "relay_permissions",
                "Live permissions",
                Gauge(s.permissions),
            ),
            ("relay_channels", "Live channel bindings", Gauge(s.channels)),
            (
                "relay_tls_certificate_not_after_seconds",
                "notAfter of the --tls-cert certificate in force, in Unix seconds (0: none, or not readable as X.509)",
                Gauge(self.tls_not_after.load(Ordering::Relaxed)),
            ),
            (
                "relay_draining",
                "1 while draining (new allocations refused)",
                Gauge(u64::from(self.is_draining())),
            ),
            (
                "relay_workers",
                "Worker threads (protocol shards)",
                Gauge(self.workers.len() as u64),
            ),
            (
                "relay_tls_reloads",
                "Certificate reloads on SIGHUP that took effect",
                Counter(self.tls_reloads.ok.load(Ordering::Relaxed)),
            ),
            (
                "relay_tls_reloads_refused",
                "Certificate reloads on SIGHUP refused (the old certificate stays)",
                Counter(self.tls_reloads.refused.load(Ordering::Relaxed)),
            ),
            (
                "relay_config_reloads",
                "Configuration reloads on SIGHUP that took effect",
                Counter(self.config_reloads.ok.load(Ordering::Relaxed)),
            ),
            (
                "relay_config_reloads_refused",
                "Configuration reloads on SIGHUP refused (the configuration in force stays)",
                Counter(self.config_reloads.refused.load(Ordering::Relaxed)),
            ),
            (
                "relay_allocations_created",
                "Allocations created",
                Counter(s.allocations_created),
            ),
            (
                "relay_allocation_latency_seconds",
                "New allocations: Allocate received -> success response queued (relay socket bound)",
                Latency(&s.allocation_latency),
            ),
            (
                "relay_allocations_expired",
                "Allocations that timed out",
                Counter(s.allocations_expired),
            ),
            (
                "relay_allocations_deleted",
                "Allocations deleted by the client or a closed connection",
                Counter(s.allocations_deleted),
            ),
            (
                "relay_binding_requests",
                "STUN Binding requests answered",
                Counter(s.binding_requests),
            ),
            (
                "relay_packets_relayed",
                "Packets relayed, by direction",
                Labelled(
                    "direction",
                    vec![
                        ("to_peer", s.packets_to_peer),
                        ("to_client", s.packets_to_client),
                    ],
                ),
            ),
            (
                "relay_bytes_relayed",
                "Payload bytes relayed, by direction",
                Labelled(
                    "direction",
                    vec![
                        ("to_peer", s.bytes_to_peer),
                        ("to_client", s.bytes_to_client),
                    ],
                ),
            ),
            (
                "relay_auth_challenges",
                "Requests without credentials (each answered with a 401 challenge unless the unauthorized-rate limit dropped the answer)",
                Counter(s.auth_challenges),
            ),
            (
                "relay_auth_failures",
                "Requests whose credentials failed",
                Counter(s.auth_failures),
            ),
            (
                "relay_stale_nonces",
                "Requests with a stale or unknown nonce (each answered with 438 Stale Nonce unless the unauthorized-rate limit dropped the answer)",
                Counter(s.stale_nonces),
            ),
            (
                "relay_wrong_credentials",
                "441 Wrong Credentials responses",
                Counter(s.wrong_credentials),
            ),
            (
                "relay_allocation_mismatches",
                "437 Allocation Mismatch responses",
                Counter(s.allocation_mismatches),
            ),
            (
                "relay_error_responses",
                "Other error responses",
                Counter(s.error_responses),
            ),
            (
                "relay_malformed_packets",
                "Undecodable packets",
                Counter(s.malformed_packets),
            ),
            (
                "relay_dropped_packets",
                "Packets dropped: no allocation, permission or channel for them, or a STUN message the relay does not take (a response, an indication other than Send or Binding)",
                Counter(s.dropped_packets),
            ),
            (
                "relay_send_failures",
                "Datagrams the kernel refused or that found a full socket buffer",
                Counter(io.send_failures + s.send_failures),
            ),
            (
                "relay_peer_denied",
                "Peer addresses refused by the policy, by reason",
                Labelled("reason", denied),
            ),
            (
                "relay_udp_request_bytes",
                "Bytes of STUN requests received over UDP",
                Counter(s.udp_request_bytes),
            ),
            (
                "relay_udp_unauthenticated_response_bytes",
                "Bytes of unauthenticated responses sent over UDP (at most the request bytes plus --unauth-bytes per source IP)",
                Counter(s.udp_unauthenticated_response_bytes),
            ),
            (
                "relay_quota_hits",
                "Quota and rate-limit hits, by quota",
                Labelled("quota", quotas),
            ),
            (
                "relay_relay_bind_failures",
                "Relay sockets that could not be bound",
                Counter(io.relay_bind_failures),
            ),
            (
                "relay_stream_connections",
                "Open TURN connections over TCP/TLS (past their PROXY header, first bytes and TLS handshake)",
                Gauge(io.stream_connections),
            ),
            (
                "relay_connection_slots",
                "TCP/TLS connections holding a --max-connections slot: TURN ones, those forwarded to --http-upstream, and those still in their PROXY header, first bytes or TLS handshake",
                Gauge(
                    self.connections
                        .get()
                        .map_or(0, |limit| limit.open() as u64),
                ),
            ),
            (
                "relay_stream_connections_accepted",
                "TCP/TLS client connections that reached STUN framing (TLS: handshake done)",
                Counter(io.stream_connections_accepted),
            ),
            (
                "relay_stream_connections_refused",
                "TCP/TLS connections refused at --max-connections",
                Counter(io.stream_connections_refused),
            ),
            (
                "relay_stream_connections_refused_per_ip",
                "TCP/TLS connections refused at --max-connections-per-ip",
                Counter(io.stream_connections_refused_per_ip),
            ),
            (
                "relay_tls_handshakes",
                "TLS handshakes in progress (they count against --max-connections)",
                Gauge(io.tls_handshakes),
            ),
            (
                "relay_tls_handshake_failures",
                "TLS handshakes that failed or timed out",
                Counter(io.tls_handshake_failures),
            ),
            (
                "relay_proxy_headers_refused",
                "Stream connections closed: no well-formed PROXY protocol header (--proxy-protocol)",
                Counter(io.proxy_headers_refused),
            ),
            (
                "relay_tls_handshake_timeouts",
                "TLS handshakes not finished within --tls-handshake-timeout",
                Counter(io.tls_handshake_timeouts),
            ),
            (
                "relay_stream_queue_drops",
                "Messages dropped on a full stream outbound queue (--stream-queue-bytes or 512 messages)",
                Counter(io.stream_queue_drops),
            ),
            (
                "relay_stream_queue_dropped_bytes",
                "Bytes of the messages dropped on a full stream outbound queue",
                Counter(io.stream_queue_dropped_bytes),
            ),
            (
                "relay_stream_queued_bytes",
                "Bytes queued towards TCP/TLS clients and not yet written, all connections",
                Gauge(io.stream_queued_bytes),
            ),
            (
                "relay_stream_queued_bytes_max",
                "The most bytes queued towards one TCP/TLS connection (at most --stream-queue-bytes)",
                Gauge(io.stream_queued_bytes_max),
            ),
            (
                "relay_stream_framing_errors",
                "Stream connections closed for bad framing",
                Counter(io.stream_framing_errors),
            ),
            (
                "relay_recv_errors",
                "UDP receive errors",
                Counter(io.recv_errors),
            ),
            (
                "relay_first_bytes_refused",
                "Connections closed (--http-upstream): first bytes neither TURN nor HTTP, or too late",
                Counter(io.first_bytes_refused),
            ),
            (
                "relay_http_upstream_connections",
                "Connections handed to --http-upstream (those it did not accept included)",
                Counter(io.http_upstream_connections),
            ),
            (
                "relay_http_upstream_failures",
                "Connections --http-upstream did not accept (unreachable, refused, timed out)",
                Counter(io.http_upstream_failures),
            ),
            (
                "relay_usage_overflow",
                "Usage records counted into `other`: their bucket already held --usage-max-users users",
                Counter(overflowed),
            ),
            (
                "relay_usage_entries",
                "(user, bucket) entries held by the usage ledger",
                Gauge(entries as u64),
            ),
            (
                "relay_usage_unpublished",
                "(user, bucket) entries changed and not yet published to the fleet's Redis",
                Gauge(unpublished as u64),
            ),
        ];
        for (name, help, series) in &series {
            series.encode(&mut e, name, help)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_sums_of_workers() {
        let shared = Arc::new(SharedQuotas::new());
        let usage = Arc::new(UsageBook::new(crate::usage::UsageLimits {
            bucket: std::time::Duration::from_secs(60),
            retention: std::time::Duration::from_secs(600),
            max_users: 10,
        }));
        let m = Arc::new(Metrics::new(2, Arc::clone(&shared), usage));
        let a = Stats {
            allocations: 2,
            packets_to_peer: 5,
            ..Stats::default()
        };
        let mut b = Stats {
            allocations: 1,
            packets_to_peer: 7,
            ..Stats::default()
        };
        b.peer_denied[DenyReason::Loopback.index()] = 3;
        m.publish(0, &a, &IoStats::default());
        m.publish(
            1,
            &b,
            &IoStats {
                stream_connections: 4,
                ..IoStats::default()
            },
        );
        let text = m.render();
        for line in [
            "relay_allocations 3",
            "relay_packets_relayed_total{direction=\"to_peer\"} 12",
            "relay_peer_denied_total{reason=\"loopback\"} 3",
            "relay_stream_connections 4",
            "relay_draining 0",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        shared.set_draining(true);
        assert!(m.is_draining());
        assert!(m.render().contains("relay_draining 1"));
    }
}
