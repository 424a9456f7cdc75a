//! The admin listener (`--admin-listen`, loopback by default): a live page of rooms, peers,
//! relays and TURN cost, fed by Server-Sent Events, plus `/metrics` and `/healthz`.
//!
//! - `GET /`: the page (plain HTML and JS embedded from `signaling/admin-page/`);
//! - `GET /events`: `text/event-stream`, one `snapshot` event a second;
//! - `GET /snapshot`: the same snapshot once, as JSON;
//! - `GET /metrics`, `GET /healthz`: as on the main listener.
//!
//! The listener has no credentials: it is for loopback or a private network (see
//! `docs/signaling.md`, "The admin page"). The snapshot is built from the hub (rooms, peers,
//! their latest `stats` reports), the in-process relay's counters (`--with-relay`) and the relay
//! fleet (`--redis` with registered relays).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use futures_util::Stream;
use rust_embed::RustEmbed;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::api::PeerEntry;
use crate::peer_stats::LinkView;

#[derive(RustEmbed)]
#[folder = "admin-page/"]
struct Page;

/// How often `/events` sends a snapshot.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);

/// One room as the admin page shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RoomSnapshot {
    pub room: String,
    pub peers: Vec<PeerView>,
}

/// One peer as the admin page shows it: as the API lists it, with its connections.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeerView {
    #[serde(flatten)]
    pub entry: PeerEntry,
    /// Milliseconds since its join, or its latest attach in a cluster (whole seconds there);
    /// its entry has no `connected_secs` in a snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected_ms: Option<u64>,
    /// Its latest `stats` report per other peer.
    pub links: Vec<LinkView>,
}

/// One relay as the admin page shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RelayView {
    pub id: String,
    pub urls: Vec<String>,
    pub allocations: u64,
    pub bytes_per_sec: u64,
    /// `active` or `draining`.
    pub state: &'static str,
}

/// Traffic and its cost.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TrafficView {
    /// Peers with a report (the share's denominator).
    pub peers_reporting: u64,
    /// Of those, peers with at least one relayed link.
    pub peers_relayed: u64,
    /// `peers_relayed / peers_reporting` (0 when nobody reports).
    pub relayed_share: f64,
    /// Bytes the TURN relays sent out: the in-process relay's counters when there is one
    /// (`egress_source` = `relay`), else the bytes clients report sending on relayed links
    /// (`clients`).
    pub turn_egress_bytes: u64,
    pub egress_source: &'static str,
    /// `--egress-price-per-gb`.
    pub price_per_gb: f64,
    /// `turn_egress_bytes / 10^9 * price_per_gb`.
    pub estimated_cost: f64,
}

/// What `/events` and `/snapshot` send.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Snapshot {
    /// This node's id in a cluster, `local` on a single node.
    pub node: String,
    pub draining: bool,
    pub rooms: Vec<RoomSnapshot>,
    pub relays: Vec<RelayView>,
    pub traffic: TrafficView,
    /// Set when the cluster store could not be read: `rooms` is empty then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The in-process relay's byte counter at the previous snapshot of a stream (for bytes/s).
#[derive(Debug, Default)]
pub struct RateMeter {
    last: Option<(u64, Instant)>,
}

impl RateMeter {
    /// Bytes per second since the previous call (0 on the first).
    pub fn rate(&mut self, total: u64, now: Instant) -> u64 {
        let rate = match self.last {
            Some((bytes, at)) if now > at => {
                let secs = now.duration_since(at).as_secs_f64();
                (total.saturating_sub(bytes) as f64 / secs) as u64
            }
            _ => 0,
        };
        self.last = Some((total, now));
        rate
    }
}

/// Builds the snapshot of this node.
pub async fn snapshot(app: &AppState, meter: &mut RateMeter) -> Snapshot {
    let (rooms, error) = match app.hub.snapshot().await {
        Ok(rooms) => (rooms, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let mut relays = Vec::new();
    #[cfg_attr(not(feature = "with-relay"), allow(unused_mut))]
    let mut relay_egress = None;
    #[cfg(feature = "with-relay")]
    if let Some(metrics) = app.relay_metrics.get() {
        let totals = metrics.core_totals();
        let bytes = totals.bytes_to_peer + totals.bytes_to_client;
        relay_egress = Some(bytes);
        relays.push(RelayView {
            id: "in-process".into(),
            urls: app.config.turn_urls.clone(),
            allocations: totals.allocations,
            bytes_per_sec: meter.rate(bytes, Instant::now()),
            state: if metrics.is_draining() {
                "draining"
            } else {
                "active"
            },
        });
    }
    #[cfg(not(feature = "with-relay"))]
    let _ = meter;
    if let Some((fleet, _)) = &app.fleet {
        relays.extend(fleet.snapshot().iter().map(|r| RelayView {
            id: r.id.clone(),
            urls: r.urls.clone(),
            allocations: r.allocations,
            bytes_per_sec: r.bytes_per_sec,
            state: match r.state {
                fleet::relays::RelayState::Active => "active",
                fleet::relays::RelayState::Draining => "draining",
            },
        }));
    }
    let traffic = traffic(&rooms, relay_egress, app.config.egress_price_per_gb);
    Snapshot {
        node: app.hub.node_id().unwrap_or("local").to_owned(),
        draining: app.hub.is_draining(),
        rooms,
        relays,
        traffic,
        error,
    }
}

/// The traffic view of `rooms`; `relay_egress`: the in-process relay's bytes, if any.
pub fn traffic(
    rooms: &[RoomSnapshot],
    relay_egress: Option<u64>,
    price_per_gb: f64,
) -> TrafficView {
    let reporting = rooms
        .iter()
        .flat_map(|r| &r.peers)
        .filter(|p| !p.links.is_empty());
    let (mut peers_reporting, mut peers_relayed, mut reported_egress) = (0u64, 0u64, 0u64);
    for peer in reporting {
        peers_reporting += 1;
        let relayed: Vec<&LinkView> = peer.links.iter().filter(|l| l.path == "relayed").collect();
        if !relayed.is_empty() {
            peers_relayed += 1;
        }
        reported_egress += relayed.iter().map(|l| l.bytes_sent).sum::<u64>();
    }
    let (turn_egress_bytes, egress_source) = match relay_egress {
        Some(bytes) => (bytes, "relay"),
        None => (reported_egress, "clients"),
    };
    TrafficView {
        peers_reporting,
        peers_relayed,
        relayed_share: if peers_reporting == 0 {
            0.0
        } else {
            peers_relayed as f64 / peers_reporting as f64
        },
        turn_egress_bytes,
        egress_source,
        price_per_gb,
        estimated_cost: turn_egress_bytes as f64 / 1e9 * price_per_gb,
    }
}

/// The admin listener's routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(|| async { page("index.html") }))
        .route("/admin.js", get(|| async { page("admin.js") }))
        .route("/events", get(events))
        .route("/snapshot", get(snapshot_json))
        .route("/metrics", get(crate::server::metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state)
}

fn page(path: &str) -> Response {
    match Page::get(path) {
        Some(file) => (
            [
                (header::CONTENT_TYPE, file.metadata.mimetype().to_owned()),
                (header::CACHE_CONTROL, "no-cache".to_owned()),
            ],
            file.data.into_owned(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

async fn snapshot_json(State(app): State<Arc<AppState>>) -> Json<Snapshot> {
    Json(snapshot(&app, &mut RateMeter::default()).await)
}

async fn events(
    State(app): State<Arc<AppState>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let ticker = tokio::time::interval(SNAPSHOT_EVERY);
    let stream = futures_util::stream::unfold(
        (app, ticker, RateMeter::default()),
        |(app, mut ticker, mut meter)| async move {
            ticker.tick().await;
            let snap = snapshot(&app, &mut meter).await;
            let data = serde_json::to_string(&snap).unwrap_or_else(|_| "{}".into());
            let event = Event::default().event("snapshot").data(data);
            Some((Ok(event), (app, ticker, meter)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Serves the admin routes on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, state: Arc<AppState>, shutdown: CancellationToken) {
    let app = router(state);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "admin listener stopped");
    }
}

/// Binds `--admin-listen`: the default address falls back to a free port on the same IP
/// when it is taken (another process on this machine); an address given explicitly must bind.
pub async fn bind(
    addr: std::net::SocketAddr,
    explicit: bool,
) -> std::io::Result<(TcpListener, std::net::SocketAddr)> {
    let listener = match TcpListener::bind(addr).await {
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::AddrInUse => {
            tracing::warn!(%addr, "admin port taken, using a free port");
            TcpListener::bind(std::net::SocketAddr::new(addr.ip(), 0)).await?
        }
        other => other?,
    };
    let bound = listener.local_addr()?;
    Ok((listener, bound))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_cost() {
        let t0 = Instant::now();
        let mut meter = RateMeter::default();
        assert_eq!(meter.rate(1000, t0), 0);
        assert_eq!(meter.rate(3000, t0 + Duration::from_secs(2)), 1000);
        let t = traffic(&[], Some(2_000_000_000), 0.05);
        assert!((t.estimated_cost - 0.1).abs() < 1e-9);
        assert_eq!((t.relayed_share, t.egress_source), (0.0, "relay"));
    }
}
