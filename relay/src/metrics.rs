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
    /// Certificate reloads on SIGHUP: accepted, and refused (the old certificate stayed).
    tls_reloads: AtomicU64,
    tls_reloads_refused: AtomicU64,
    /// notAfter of the `--tls-cert` certificate in force, Unix seconds (0: none).
    tls_not_after: AtomicU64,
    config_reloads: AtomicU64,
    config_reloads_refused: AtomicU64,
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
            tls_reloads: AtomicU64::new(0),
            tls_reloads_refused: AtomicU64::new(0),
            tls_not_after: AtomicU64::new(0),
            config_reloads: AtomicU64::new(0),
            config_reloads_refused: AtomicU64::new(0),
        }
    }

    /// Counts one certificate reload.
    pub fn tls_reload(&self, ok: bool) {
        let counter = if ok {
            &self.tls_reloads
        } else {
            &self.tls_reloads_refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Records the expiry of the `--tls-cert` certificate put in force (at start-up or by a
    /// reload).
    pub fn tls_certificate(&self, not_after: Option<std::time::SystemTime>) {
        let seconds = not_after.map_or(0, startup::tls::unix_seconds);
        self.tls_not_after.store(seconds, Ordering::Relaxed);
    }

    /// Counts one configuration reload (SIGHUP): `ok` when it took effect.
    pub fn config_reload(&self, ok: bool) {
        let counter = if ok {
            &self.config_reloads
        } else {
            &self.config_reloads_refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
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

fn counter(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    let m = e.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

fn gauge(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    let m = e.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

/// A histogram in seconds from a shard-summed [`LatencyHistogram`].
fn latency_histogram(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    h: &LatencyHistogram,
) -> Result<(), std::fmt::Error> {
    let mut buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_MICROS
        .iter()
        .zip(h.counts)
        .map(|(bound, n)| (*bound as f64 / 1e6, n))
        .collect();
    buckets.push((f64::INFINITY, h.counts[LATENCY_BOUNDS_MICROS.len()]));
    let mut m = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    m.encode_histogram::<NoLabelSet>(h.sum_micros as f64 / 1e6, h.count(), &buckets, None)
}

fn labelled_counters(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &'static str,
    values: &[(&'static str, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (value_label, value) in values {
        let labels = [(label, *value_label)];
        let family = m.encode_family(&labels)?;
        ConstCounter::new(*value).encode(family)?;
    }
    Ok(())
}

impl Collector for Metrics {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = self.core_totals();
        let io = self.io_totals();
        gauge(
            &mut e,
            "relay_allocations",
            "Live allocations",
            s.allocations,
        )?;
        gauge(
            &mut e,
            "relay_permissions",
            "Live permissions",
            s.permissions,
        )?;
        gauge(
            &mut e,
            "relay_channels",
            "Live channel bindings",
            s.channels,
        )?;
        gauge(
            &mut e,
            "relay_tls_certificate_not_after_seconds",
            "notAfter of the --tls-cert certificate in force, in Unix seconds (0: none, or not readable as X.509)",
            self.tls_not_after.load(Ordering::Relaxed),
        )?;
        gauge(
            &mut e,
            "relay_draining",
            "1 while draining (new allocations refused)",
            u64::from(self.is_draining()),
        )?;
        gauge(
            &mut e,
            "relay_workers",
            "Worker threads (protocol shards)",
            self.workers.len() as u64,
        )?;
        for (name, help, value) in [
            (
                "relay_tls_reloads",
                "Certificate reloads on SIGHUP that took effect",
                self.tls_reloads.load(Ordering::Relaxed),
            ),
            (
                "relay_tls_reloads_refused",
                "Certificate reloads on SIGHUP refused (the old certificate stays)",
                self.tls_reloads_refused.load(Ordering::Relaxed),
            ),
            (
                "relay_config_reloads",
                "Configuration reloads on SIGHUP that took effect",
                self.config_reloads.load(Ordering::Relaxed),
            ),
            (
                "relay_config_reloads_refused",
                "Configuration reloads on SIGHUP refused (the configuration in force stays)",
                self.config_reloads_refused.load(Ordering::Relaxed),
            ),
            (
                "relay_allocations_created",
                "Allocations created",
                s.allocations_created,
            ),
        ] {
            counter(&mut e, name, help, value)?;
        }
        latency_histogram(
            &mut e,
            "relay_allocation_latency_seconds",
            "New allocations: Allocate received -> success response queued (relay socket bound)",
            &s.allocation_latency,
        )?;
        for (name, help, value) in [
            (
                "relay_allocations_expired",
                "Allocations that timed out",
                s.allocations_expired,
            ),
            (
                "relay_allocations_deleted",
                "Allocations deleted by the client or a closed connection",
                s.allocations_deleted,
            ),
            (
                "relay_binding_requests",
                "STUN Binding requests answered",
                s.binding_requests,
            ),
        ] {
            counter(&mut e, name, help, value)?;
        }
        labelled_counters(
            &mut e,
            "relay_packets_relayed",
            "Packets relayed, by direction",
            "direction",
            &[
                ("to_peer", s.packets_to_peer),
                ("to_client", s.packets_to_client),
            ],
        )?;
        labelled_counters(
            &mut e,
            "relay_bytes_relayed",
            "Payload bytes relayed, by direction",
            "direction",
            &[
                ("to_peer", s.bytes_to_peer),
                ("to_client", s.bytes_to_client),
            ],
        )?;
        for (name, help, value) in [
            (
                "relay_auth_challenges",
                "Requests without credentials (each answered with a 401 challenge unless the unauthorized-rate limit dropped the answer)",
                s.auth_challenges,
            ),
            (
                "relay_auth_failures",
                "Requests whose credentials failed",
                s.auth_failures,
            ),
            (
                "relay_stale_nonces",
                "Requests with a stale or unknown nonce (each answered with 438 Stale Nonce unless the unauthorized-rate limit dropped the answer)",
                s.stale_nonces,
            ),
            (
                "relay_wrong_credentials",
                "441 Wrong Credentials responses",
                s.wrong_credentials,
            ),
            (
                "relay_allocation_mismatches",
                "437 Allocation Mismatch responses",
                s.allocation_mismatches,
            ),
            (
                "relay_error_responses",
                "Other error responses",
                s.error_responses,
            ),
            (
                "relay_malformed_packets",
                "Undecodable packets",
                s.malformed_packets,
            ),
            (
                "relay_dropped_packets",
                "Packets dropped: no allocation, permission or channel for them, or a STUN message the relay does not take (a response, an indication other than Send or Binding)",
                s.dropped_packets,
            ),
            (
                "relay_send_failures",
                "Datagrams the kernel refused or that found a full socket buffer",
                io.send_failures + s.send_failures,
            ),
        ] {
            counter(&mut e, name, help, value)?;
        }
        let denied: Vec<(&'static str, u64)> = DenyReason::ALL
            .iter()
            .map(|r| (r.as_str(), s.denied(*r)))
            .collect();
        labelled_counters(
            &mut e,
            "relay_peer_denied",
            "Peer addresses refused by the policy, by reason",
            "reason",
            &denied,
        )?;
        for (name, help, value) in [
            (
                "relay_udp_request_bytes",
                "Bytes of STUN requests received over UDP",
                s.udp_request_bytes,
            ),
            (
                "relay_udp_unauthenticated_response_bytes",
                "Bytes of unauthenticated responses sent over UDP (at most the request bytes plus --unauth-bytes per source IP)",
                s.udp_unauthenticated_response_bytes,
            ),
        ] {
            counter(&mut e, name, help, value)?;
        }
        let quotas: Vec<(&'static str, u64)> = QuotaKind::ALL
            .iter()
            .map(|q| (q.as_str(), s.quota(*q)))
            .collect();
        labelled_counters(
            &mut e,
            "relay_quota_hits",
            "Quota and rate-limit hits, by quota",
            "quota",
            &quotas,
        )?;
        counter(
            &mut e,
            "relay_relay_bind_failures",
            "Relay sockets that could not be bound",
            io.relay_bind_failures,
        )?;
        gauge(
            &mut e,
            "relay_stream_connections",
            "Open TCP/TLS client connections",
            io.stream_connections,
        )?;
        for (name, help, value) in [
            (
                "relay_stream_connections_accepted",
                "TCP/TLS client connections that reached STUN framing (TLS: handshake done)",
                io.stream_connections_accepted,
            ),
            (
                "relay_stream_connections_refused",
                "TCP/TLS connections refused at --max-connections",
                io.stream_connections_refused,
            ),
            (
                "relay_stream_connections_refused_per_ip",
                "TCP/TLS connections refused at --max-connections-per-ip",
                io.stream_connections_refused_per_ip,
            ),
        ] {
            counter(&mut e, name, help, value)?;
        }
        gauge(
            &mut e,
            "relay_tls_handshakes",
            "TLS handshakes in progress (they count against --max-connections)",
            io.tls_handshakes,
        )?;
        for (name, help, value) in [
            (
                "relay_tls_handshake_failures",
                "TLS handshakes that failed or timed out",
                io.tls_handshake_failures,
            ),
            (
                "relay_proxy_headers_refused",
                "Stream connections closed: no well-formed PROXY protocol header (--proxy-protocol)",
                io.proxy_headers_refused,
            ),
            (
                "relay_tls_handshake_timeouts",
                "TLS handshakes not finished within --tls-handshake-timeout",
                io.tls_handshake_timeouts,
            ),
            (
                "relay_stream_queue_drops",
                "Messages dropped on a full stream outbound queue (--stream-queue-bytes or 512 messages)",
                io.stream_queue_drops,
            ),
            (
                "relay_stream_queue_dropped_bytes",
                "Bytes of the messages dropped on a full stream outbound queue",
                io.stream_queue_dropped_bytes,
            ),
        ] {
            counter(&mut e, name, help, value)?;
        }
        gauge(
            &mut e,
            "relay_stream_queued_bytes",
            "Bytes queued towards TCP/TLS clients and not yet written, all connections",
            io.stream_queued_bytes,
        )?;
        gauge(
            &mut e,
            "relay_stream_queued_bytes_max",
            "The most bytes queued towards one TCP/TLS connection (at most --stream-queue-bytes)",
            io.stream_queued_bytes_max,
        )?;
        for (name, help, value) in [
            (
                "relay_stream_framing_errors",
                "Stream connections closed for bad framing",
                io.stream_framing_errors,
            ),
            ("relay_recv_errors", "UDP receive errors", io.recv_errors),
            (
                "relay_first_bytes_refused",
                "Connections closed (--http-upstream): first bytes neither TURN nor HTTP, or too late",
                io.first_bytes_refused,
            ),
            (
                "relay_http_upstream_connections",
                "Connections handed to --http-upstream (those it did not accept included)",
                io.http_upstream_connections,
            ),
            (
                "relay_http_upstream_failures",
                "Connections --http-upstream did not accept (unreachable, refused, timed out)",
                io.http_upstream_failures,
            ),
        ] {
            counter(&mut e, name, help, value)?;
        }
        let (overflowed, entries, unpublished) = {
            let ledger = self.usage.lock();
            (ledger.overflowed(), ledger.entries(), ledger.unpublished())
        };
        counter(
            &mut e,
            "relay_usage_overflow",
            "Usage records counted into `other`: their bucket already held --usage-max-users users",
            overflowed,
        )?;
        gauge(
            &mut e,
            "relay_usage_entries",
            "(user, bucket) entries held by the usage ledger",
            entries as u64,
        )?;
        gauge(
            &mut e,
            "relay_usage_unpublished",
            "(user, bucket) entries changed and not yet published to the fleet's Redis",
            unpublished as u64,
        )?;
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
