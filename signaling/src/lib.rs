//! Signaling service: peers in a room find each other and exchange SDP and ICE candidates.
//!
//! # Layout
//! - [`protocol`]: the one definition of the wire and of the client rules (error classes, close
//!   codes, backoff, acks); always built, the peer SDK uses only this.
//!
//! With the `server` feature (default):
//! - [`config`]: the clap configuration (secrets, durations and the `--config` file come from the
//!   workspace's `startup` crate); [`error`]: client errors vs fatal errors.
//! - [`listener`]: the accept loop (header-read timeout, cap on connections not upgraded);
//!   [`lingering_close`]: a refused request's answer is not lost to a reset on close;
//!   [`write_deadline`]: a client that does not read its answers does not keep its slot.
//! - [`client_request`]: what every client endpoint reads and checks first (origin, draining,
//!   connection limits, `?token=`) and the WebSocket frame limits; [`ws`]: the `/ws` upgrade;
//!   [`cors`]: cross-origin access to the HTTP transports, `/v1/ice-servers` and PeerJS ids;
//!   [`admission`]: admitting `join`/`resume`, shared by every transport; [`session`]: the per-socket task; [`connection`]: one
//!   WebSocket's frames; [`http_transport`]: SSE + POST and long-polling.
//! - [`outbound`]: a connection's queue, bounded in frames and bytes, cleared when its session
//!   ends as a slow consumer; [`memory_budget`]: the node's bound over all of them;
//!   [`open_connections`]: a guard per open connection.
//! - [`backend`]: where rooms and sessions live: in this process ([`hub`] composes [`room`]
//!   (members, roles, peer index), [`sessions`] (parking, expiry, tombstones) and [`outbox`]
//!   (numbering, replay; a broadcast's body shared by its receivers) behind one lock, no clock
//!   inside) or in Redis shared by many nodes ([`cluster`]); [`resume`]: resume tokens;
//!   [`rate_limit`]: the per-connection token bucket.
//! - [`y_webrtc`], [`peerjs`]: servers for those libraries' own protocols, on the same hub;
//!   [`written_acks`]: what they wrote is acknowledged for them (they have no `ack`).
//! - [`api`]: the backend HTTP API (`/v1/rooms/...`); [`relay_fleet`]: the relay fleet.
//! - [`client_ip`]: the client's address (trusted proxies) and per-address limits.
//! - [`auth`]: optional HS256 JWTs; [`turn_credentials`]: TURN REST credentials for ICE servers.
//! - [`metrics`], [`web`] (the embedded demo), [`shutdown`] (drain on SIGTERM/SIGINT),
//!   [`reload`] (SIGHUP: the configuration read again, what it may change while running).
//! - [`admin`]: the admin listener (`--admin-listen`): the live admin page over SSE;
//!   [`peer_stats`]: the clients' `stats` reports it shows.
//! - `local_relay` (feature `with-relay`, default): the STUN/TURN relay run in-process by
//!   `--with-relay`, the one-command local stack.
//!
//! [`serve`] runs the whole server on a bound listener; `main.rs` only parses the
//! configuration, starts logging and binds.

pub mod protocol;

#[cfg(feature = "server")]
pub mod admin;
#[cfg(feature = "server")]
pub mod admission;
#[cfg(feature = "server")]
pub mod api;
#[cfg(feature = "server")]
pub mod auth;
#[cfg(feature = "server")]
pub mod backend;
#[cfg(feature = "server")]
pub mod client_ip;
#[cfg(feature = "server")]
pub mod client_request;
#[cfg(feature = "server")]
pub mod cluster;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod connection;
#[cfg(feature = "server")]
pub mod cors;
#[cfg(feature = "server")]
pub mod error;
#[cfg(feature = "server")]
pub mod http_transport;
#[cfg(feature = "server")]
pub mod hub;
#[cfg(feature = "server")]
pub mod lingering_close;
#[cfg(feature = "server")]
pub mod listener;
#[cfg(feature = "with-relay")]
pub mod local_relay;
#[cfg(feature = "server")]
pub mod memory_budget;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod open_connections;
#[cfg(feature = "server")]
pub mod outbound;
#[cfg(feature = "server")]
pub mod outbox;
#[cfg(feature = "server")]
pub mod peer_stats;
#[cfg(feature = "server")]
pub mod peerjs;
#[cfg(feature = "server")]
pub mod rate_limit;
#[cfg(feature = "server")]
pub mod relay_fleet;
#[cfg(feature = "server")]
pub mod reload;
#[cfg(feature = "server")]
pub mod resume;
#[cfg(feature = "server")]
pub mod room;
#[cfg(feature = "server")]
pub mod session;
#[cfg(feature = "server")]
pub mod sessions;
#[cfg(feature = "server")]
pub mod shutdown;
#[cfg(feature = "server")]
pub mod turn_credentials;
#[cfg(feature = "server")]
pub mod web;
#[cfg(feature = "server")]
pub mod write_deadline;
#[cfg(feature = "server")]
pub mod written_acks;
#[cfg(feature = "server")]
pub mod ws;
#[cfg(feature = "server")]
pub mod y_webrtc;

#[cfg(feature = "server")]
pub use server::{AppState, agree_turn_secret_if_needed, app, serve};

#[cfg(feature = "server")]
pub(crate) mod server {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;
    use std::time::{Duration, Instant};

    use axum::Router;
    use axum::extract::State;
    use axum::handler::Handler;
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::{MethodRouter, get, post};
    use tokio::net::TcpListener;
    use tokio_util::sync::CancellationToken;

    use crate::backend::Backend;
    use crate::client_ip::{IpLimits, IpTable};
    use crate::cluster::{ClusterHub, ClusterSettings};
    use crate::config::Config;
    use crate::error::Error;
    use crate::http_transport::SendRates;
    use crate::hub::{HubSettings, LocalHub};
    use crate::listener::ListenerLimits;
    use crate::memory_budget::MemoryBudget;
    use crate::metrics::Metrics;
    use crate::open_connections::OpenConnections;
    use crate::outbox::ReplayLimits;
    use crate::protocol::http;
    use crate::relay_fleet::RelayFleet;
    use crate::turn_credentials::IceServerMinter;
    use crate::web::WebAssets;

    /// The bytes of `--outbound-queue-bytes` a y-webrtc subscription's queue gives one frame
    /// ([`AppState::topic_queue`]): 4,096 frames by default.
    pub(crate) const TOPIC_QUEUE_BYTES_PER_FRAME: usize = 256;

    /// Everything the handlers share.
    pub struct AppState {
        /// The configuration as started. The settings SIGHUP reloads
        /// ([`crate::reload::RELOADABLE`]) are read from [`AppState::live`] instead.
        pub config: Config,
        pub hub: Backend,
        pub metrics: Arc<Metrics>,
        /// The settings SIGHUP replaces (JWT secret, API keys, rates, limits, origins).
        pub live_settings: crate::reload::Live,
        pub web: WebAssets,
        /// The id of the next connection (for logs).
        pub next_conn: AtomicU64,
        /// Open WebSockets and HTTP streams.
        pub connections: OpenConnections,
        /// Connections and join rates per client address.
        pub clients: Arc<IpTable>,
        /// The message rate of HTTP `send`s, per session.
        pub send_rates: SendRates,
        /// The node's `--memory-budget`, shared by the hub and every connection's queue.
        pub memory: Arc<MemoryBudget>,
        /// ICE servers as the hub mints them (for `GET /v1/ice-servers`).
        pub ice: IceServerMinter,
        /// PeerJS clients' registrations, for their reconnects.
        pub peerjs: crate::peerjs::Registrations,
        /// The relay fleet and the connection to read it (cluster mode).
        pub fleet: Option<(Arc<RelayFleet>, fleet::link::Connection)>,
        /// HTTPS and WSS (`--tls-cert`/`--tls-key` or `--tls-self-signed`).
        pub tls: Option<tokio_rustls::TlsAcceptor>,
        /// The `--tls-cert`/`--tls-key` files, read again on SIGHUP ([`crate::reload`]).
        pub tls_files: Option<Arc<startup::tls::CertificateFiles>>,
        /// The certificate generated for `--tls-self-signed`, as PEM (printed at start-up).
        pub tls_self_signed_pem: Option<String>,
        /// The in-process relay's metrics (`--with-relay`): `/metrics` serves both.
        #[cfg(feature = "with-relay")]
        pub relay_metrics: std::sync::OnceLock<Arc<relay::Metrics>>,
        /// Where the listener hands TURN connections (`--shared-port`).
        #[cfg(feature = "with-relay")]
        pub relay_intake: std::sync::OnceLock<relay::StreamIntake>,
        /// The in-process relay's usage ledger (`--with-relay`): `GET /v1/usage` reads it on a
        /// single node (in a cluster the node publishes it to Redis and reads Redis).
        #[cfg(feature = "with-relay")]
        pub relay_usage: std::sync::OnceLock<Arc<relay::usage::UsageBook>>,
        /// Starts the in-process relay's drain (`--with-relay`): the server's drain flips it
        /// before it tells any client, so a client told `draining` finds the relay draining.
        #[cfg(feature = "with-relay")]
        pub relay_drain: std::sync::OnceLock<relay::DrainSwitch>,
        /// Cancelled by `POST /v1/drain`: `serve` drains as on SIGTERM.
        pub drain_requested: CancellationToken,
    }

    /// What `--tls-cert`/`--tls-key` (the acceptor and the files, for reloads) or
    /// `--tls-self-signed` (the acceptor and the generated certificate's PEM) ask for.
    type TlsSetup = (
        Option<tokio_rustls::TlsAcceptor>,
        Option<Arc<startup::tls::CertificateFiles>>,
        Option<String>,
    );

    fn tls_config(config: &Config, metrics: &Arc<Metrics>) -> Result<TlsSetup, Error> {
        let tls_error = |e: startup::tls::TlsError| Error::Config(format!("TLS: {e}"));
        // The same ALPN ids whatever the certificate's source.
        let acceptor = tokio_rustls::TlsAcceptor::from;
        if let Some(server_config) = acme_config(config, metrics)? {
            return Ok((Some(acceptor(server_config)), None, None));
        }
        if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
            let (server_config, files) =
                startup::tls::from_pem_files(cert, key, alpn_protocols(config))
                    .map_err(tls_error)?;
            metrics.tls_certificate(files.not_after());
            return Ok((Some(acceptor(server_config)), Some(files), None));
        }
        if config.tls_self_signed {
            let mut names = vec!["localhost".to_owned()];
            if !config.listen.ip().is_unspecified() {
                names.push(config.listen.ip().to_string());
            }
            // `--relay-host` is the address clients use for this host (run.sh --lan gives the
            // LAN IP while listening on all interfaces): name it too.
            #[cfg(feature = "with-relay")]
            if let Some(host) = config.relay_host.as_ref().filter(|h| !names.contains(h)) {
                names.push(host.trim_matches(['[', ']']).to_owned());
            }
            let (server_config, pem) =
                startup::tls::self_signed(names, alpn_protocols(config)).map_err(tls_error)?;
            return Ok((Some(acceptor(server_config)), None, Some(pem)));
        }
        Ok((None, None, None))
    }

    use tokio_rustls::rustls::ServerConfig as TlsServerConfig;

    /// The ALPN ids the TLS listener offers: HTTP/1.1 (the only HTTP it speaks, so an
    /// HTTP/2-only client is refused in the handshake), and on the shared port the ids of RFC
    /// 7443 for TURN clients that send one.
    fn alpn_protocols(config: &Config) -> Vec<Vec<u8>> {
        #[allow(unused_mut)]
        let mut alpn = vec![b"http/1.1".to_vec()];
        #[cfg(feature = "with-relay")]
        if config.shared_port {
            alpn.extend([b"stun.turn".to_vec(), b"stun.nat-discovery".to_vec()]);
        }
        #[cfg(not(feature = "with-relay"))]
        let _ = config;
        alpn
    }

    /// With `--acme-domain`: the TLS configuration whose certificate ACME obtains and renews,
    /// its manager running on the current runtime (it ends with the runtime).
    fn acme_config(
        config: &Config,
        metrics: &Arc<Metrics>,
    ) -> Result<Option<Arc<TlsServerConfig>>, Error> {
        let Some(cache) = (!config.acme_domains.is_empty())
            .then_some(config.acme_cache.clone())
            .flatten()
        else {
            return Ok(None);
        };
        let settings = startup::acme::Settings {
            domains: config.acme_domains.clone(),
            directory: config.acme_directory.clone(),
            cache,
            email: config.acme_email.clone(),
            directory_ca: config.acme_directory_ca.clone(),
            backoff: startup::acme::Backoff::default(),
        };
        let report_to = Arc::clone(metrics);
        let report: startup::acme::Report = Arc::new(move |status| report_to.acme(status));
        let (server_config, manager) =
            startup::acme::start(settings, alpn_protocols(config), report)
                .map_err(|e| Error::Config(format!("ACME: {e}")))?;
        tokio::spawn(manager.run());
        Ok(Some(server_config))
    }

    /// A cluster node given no `--turn-secret` agrees on one with the other nodes (and the
    /// relays of the fleet) through Redis; anything else is left as it is. Run before
    /// [`AppState::new`] (and before the in-process relay, which would generate one).
    pub async fn agree_turn_secret_if_needed(config: &mut Config) -> Result<(), Error> {
        if config.redis_urls.is_empty() || !config.turn_secrets.is_empty() {
            return Ok(());
        }
        let candidate = hex::encode(rand::random::<[u8; 32]>());
        let agreed =
            crate::cluster::agree_turn_secret(&config.redis_urls, config.redis_timeout, &candidate)
                .await
                .map_err(|e| {
                    Error::Unreachable(format!(
                        "--redis: cannot agree on a TURN secret through redis at start-up: {e}"
                    ))
                })?;
        config.turn_secrets.push(crate::config::Secret::new(agreed));
        config.turn_secret_agreed = true;
        tracing::info!("TURN secret agreed through redis");
        Ok(())
    }

    impl AppState {
        /// Builds the state from a validated configuration; in cluster mode, connects to Redis.
        pub async fn new(config: Config) -> Result<Arc<Self>, Error> {
            config.validate()?;
            let metrics = Arc::new(Metrics::new(!config.redis_urls.is_empty()));
            let memory = Arc::new(MemoryBudget::new(config.memory_budget));
            let settings = HubSettings {
                replay: ReplayLimits {
                    max_messages: config.replay_max_messages,
                    max_bytes: config.replay_max_bytes,
                },
                resume_grace: config.resume_grace,
                max_peers_per_room: config.max_peers_per_room,
                max_rooms: config.max_rooms,
                max_sessions: config.max_sessions,
                ping_interval: config.ping_interval,
                ping_timeout: config.ping_timeout,
                max_message_bytes: config.max_message_bytes,
                reconnect_after: config.reconnect_after,
                memory: Arc::clone(&memory),
            };
            let mut ice = IceServerMinter::from_config(&config);
            let fleet = if config.redis_urls.is_empty() {
                None
            } else {
                let (conn, _) = fleet::link::connect(&config.redis_urls, config.redis_timeout)
                    .await
                    .map_err(redis_unreachable)?;
                let relays = Arc::new(RelayFleet::new(config.region.clone()));
                ice = ice.with_fleet(Arc::clone(&relays));
                // Read once before serving, so the first joins already get the fleet's relays.
                crate::relay_fleet::refresh(&relays, &conn, config.redis_timeout, &[], &metrics)
                    .await;
                Some((relays, conn))
            };
            let minter = ice.clone();
            let hub = if config.redis_urls.is_empty() {
                Backend::Local(Box::new(LocalHub::new(settings, ice, Arc::clone(&metrics))))
            } else {
                let cluster = ClusterSettings {
                    redis_urls: config.redis_urls.clone(),
                    node_id: incarnation_id(config.node_id.as_deref()),
                    heartbeat: config.node_heartbeat,
                    lease: config.node_lease,
                    redis_timeout: config.redis_timeout,
                    agreed_turn_secret: config
                        .turn_secret_agreed
                        .then(|| config.turn_secrets.first().cloned())
                        .flatten(),
                };
                let hub = ClusterHub::start(cluster, settings, ice, Arc::clone(&metrics))
                    .await
                    .map_err(redis_unreachable)?;
                Backend::Cluster(hub)
            };
            let web = match &config.web_dir {
                Some(dir) => WebAssets::Dir(dir.clone()),
                None => WebAssets::Embedded,
            };
            let (tls, tls_files, tls_self_signed_pem) = tls_config(&config, &metrics)?;
            let connections = OpenConnections::new(
                metrics.connections.clone(),
                metrics.connections_total.clone(),
            );
            Ok(Arc::new(Self {
                live_settings: crate::reload::Live::new(&config),
                hub,
                metrics,
                web,
                next_conn: AtomicU64::new(1),
                connections,
                tls,
                tls_files,
                tls_self_signed_pem,
                #[cfg(feature = "with-relay")]
                relay_metrics: std::sync::OnceLock::new(),
                #[cfg(feature = "with-relay")]
                relay_intake: std::sync::OnceLock::new(),
                #[cfg(feature = "with-relay")]
                relay_usage: std::sync::OnceLock::new(),
                #[cfg(feature = "with-relay")]
                relay_drain: std::sync::OnceLock::new(),
                drain_requested: CancellationToken::new(),
                clients: IpTable::new(IpLimits {
                    max_connections: config.max_connections_per_ip,
                    join_rate: config.join_rate_per_ip,
                    join_burst: config.join_burst_per_ip,
                    max_sessions: config.max_sessions_per_ip,
                }),
                send_rates: SendRates::new(config.rate_limit, config.rate_burst),
                ice: minter,
                peerjs: match &fleet {
                    Some((_, conn)) => {
                        crate::peerjs::Registrations::redis(conn.clone(), config.redis_timeout)
                    }
                    None => crate::peerjs::Registrations::local(),
                },
                memory,
                fleet,
                config,
            }))
        }

        /// A new connection's outbound queue, with the configured bounds, counted in the
        /// memory budget.
        pub fn outbound_queue(&self) -> (crate::outbound::OutboundTx, crate::outbound::OutboundRx) {
            self.queue_of(self.config.outbound_queue)
        }

        /// A y-webrtc subscription's outbound queue: bounded in bytes as any other, in frames
        /// only as the bytes are (one per `TOPIC_QUEUE_BYTES_PER_FRAME`, at least
        /// `--outbound-queue`). y-webrtc sends every signal to the whole topic, so a topic of
        /// N subscribers sends each about 8 (N - 1)^2 small frames as it forms (2,900 for 20):
        /// `--outbound-queue` frames would end honest readers as slow consumers. The queues of
        /// one socket's topics share `--outbound-queue-bytes` (`connection_bytes`).
        pub fn topic_queue(
            &self,
            connection_bytes: &Arc<std::sync::atomic::AtomicUsize>,
        ) -> (crate::outbound::OutboundTx, crate::outbound::OutboundRx) {
            let bytes = self.config.outbound_queue_bytes;
            let frames = self
                .config
                .outbound_queue
                .max(bytes / TOPIC_QUEUE_BYTES_PER_FRAME);
            crate::outbound::queue_sharing(
                frames,
                bytes,
                &self.memory,
                Arc::clone(connection_bytes),
            )
        }

        /// An outbound queue of at most `frames` frames and `--outbound-queue-bytes` bytes.
        fn queue_of(
            &self,
            frames: usize,
        ) -> (crate::outbound::OutboundTx, crate::outbound::OutboundRx) {
            crate::outbound::queue(frames, self.config.outbound_queue_bytes, &self.memory)
        }

        /// How often the hub's periodic work runs: fine enough for the resume grace period
        /// and the TURN credential refresh, at most once a second.
        fn sweep_interval(&self) -> Duration {
            let mut interval = self.config.resume_grace / 10;
            if let Some(refresh) = IceServerMinter::from_config(&self.config).refresh_after() {
                interval = interval.min(refresh / 10);
            }
            interval.clamp(Duration::from_millis(10), Duration::from_secs(1))
        }
    }

    /// Redis did not answer at start-up (it is needed then; later outages are survived).
    fn redis_unreachable(e: impl std::fmt::Display) -> Error {
        Error::Unreachable(format!("--redis: redis cannot be reached at start-up: {e}"))
    }

    /// This process's id in the cluster: `--node-id` (or nothing) and a random part new at each
    /// start. A node restarted under the same `--node-id` within its predecessor's lease must
    /// not take the predecessor's sessions and lease for its own: they would never be adopted
    /// (their sockets are gone) and it would not notice losing them. As another id, the
    /// predecessor's lease runs out and its sessions are adopted as any dead node's.
    fn incarnation_id(node_id: Option<&str>) -> String {
        let random = format!("{:08x}", rand::random::<u32>());
        match node_id {
            Some(id) => format!("{id}.{random}"),
            None => random,
        }
    }

    /// A route for GET alone. axum answers HEAD with a `get` route's handler (dropping the
    /// body), which for an upgrade or a stream would act: attach a session, take a stream
    /// over. HEAD, like any other method, gets an empty 405 saying `Allow: GET` (axum's own
    /// 405 would name HEAD too). OPTIONS is a route of its own so that axum adds no `Allow:
    /// GET,HEAD` to it: on a cross-origin route the CORS layer answers it (a preflight).
    fn get_only<H, T>(handler: H) -> MethodRouter<Arc<AppState>>
    where
        H: Handler<T, Arc<AppState>>,
        T: 'static,
    {
        let refused = || async { (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "GET")]) };
        get(handler)
            .head(refused)
            .options(refused)
            .fallback(refused)
    }

    /// The HTTP routes: WebSocket upgrade, health, readiness, metrics and the web demo.
    pub fn app(state: Arc<AppState>) -> Router {
        // What a page of another origin calls with `fetch`.
        let cross_origin = Router::new()
            .route(http::OPEN, post(crate::http_transport::open))
            .route(http::EVENTS, get_only(crate::http_transport::events))
            .route(http::POLL, get_only(crate::http_transport::poll))
            .route(http::SEND, post(crate::http_transport::send))
            .route("/http/{room}", post(crate::http_transport::open_room))
            .route("/v1/ice-servers", get(crate::api::ice_servers))
            .route("/peerjs/{key}/id", get(crate::peerjs::new_id))
            .route("/peerjs/{key}/peers", get(crate::peerjs::peers))
            .layer(crate::cors::layer(Arc::clone(&state)));
        let public_metrics = if state.config.no_public_metrics {
            Router::new()
        } else {
            Router::new().route("/metrics", get(metrics))
        };
        Router::new()
            .route("/ws", get_only(crate::ws::upgrade))
            .route("/ws/{room}", get_only(crate::ws::upgrade_room))
            .route("/y-webrtc", get_only(crate::y_webrtc::upgrade))
            .route("/peerjs/peerjs", get_only(crate::peerjs::upgrade))
            .merge(cross_origin)
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .merge(public_metrics)
            .merge(operator_api(Arc::clone(&state)))
            .route("/", get(crate::web::index))
            .route("/r/{room}", get(crate::web::index))
            .fallback(get(crate::web::file))
            .with_state(state)
    }

    /// The backend and admin API (`--api-key`), each answer counted by status.
    fn operator_api(state: Arc<AppState>) -> Router<Arc<AppState>> {
        Router::new()
            .route("/v1/rooms", get(crate::api::rooms))
            .route("/v1/rooms/{room}", get(crate::api::room))
            .route("/v1/rooms/{room}/close", post(crate::api::close_room))
            .route("/v1/rooms/{room}/peers/{peer}/kick", post(crate::api::kick))
            .route("/v1/drain", post(crate::api::drain))
            .route("/v1/usage", get(crate::api::usage))
            .route("/v1/rooms/{room}/broadcast", post(crate::api::broadcast))
            .route("/v1/relays", get(crate::api::relays))
            .route_layer(axum::middleware::from_fn_with_state(
                state,
                count_api_answer,
            ))
    }

    async fn count_api_answer(
        State(app): State<Arc<AppState>>,
        request: axum::extract::Request,
        next: axum::middleware::Next,
    ) -> axum::response::Response {
        let response = next.run(request).await;
        app.metrics.api_answer(response.status());
        response
    }

    async fn readyz(State(app): State<Arc<AppState>>) -> impl IntoResponse {
        if app.hub.is_draining() {
            (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        } else if !app.hub.is_available() {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "shared store unavailable\n",
            )
        } else {
            (StatusCode::OK, "ready\n")
        }
    }

    /// `GET /metrics` (also on the admin listener).
    pub(crate) async fn metrics(State(app): State<Arc<AppState>>) -> impl IntoResponse {
        app.metrics.budget_used.set(app.memory.used() as i64);
        // Read from the hub's flags at each scrape (the only reader of the gauge).
        app.metrics.cluster_available(app.hub.is_available());
        #[allow(unused_mut)] // Only `with-relay` appends.
        let mut text = app.metrics.encode();
        #[cfg(feature = "with-relay")]
        if let Some(relay) = app.relay_metrics.get()
            && let Some(ours) = text.strip_suffix("# EOF\n")
        {
            // One exposition: the relay's families, then its single `# EOF`.
            text = format!("{ours}{}", relay.render());
        }
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
    }

    /// Serves on `listener` until `shutdown` is cancelled, then drains (see [`crate::shutdown`])
    /// and returns.
    pub async fn serve(
        listener: TcpListener,
        state: Arc<AppState>,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        let sweeper = {
            let state = Arc::clone(&state);
            let every = state.sweep_interval();
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(every);
                loop {
                    ticker.tick().await;
                    state.hub.sweep(Instant::now()).await;
                }
            })
        };
        let fleet_watcher = state.fleet.clone().map(|(relays, conn)| {
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                crate::relay_fleet::run(
                    relays,
                    conn,
                    &state.hub,
                    state.config.fleet_refresh,
                    state.config.redis_timeout,
                    &state.metrics,
                )
                .await;
            })
        });
        let stopped = CancellationToken::new();
        let limits = ListenerLimits {
            header_read_timeout: state.config.header_read_timeout,
            max_http_connections: state.config.max_http_connections,
            max_http_connections_per_ip: state.config.max_http_connections_per_ip,
            trusted_proxies: state.config.trusted_proxies.clone().into(),
        };
        crate::listener::check_fd_budget(
            state.config.max_connections,
            state.config.max_http_connections,
        );
        let server = tokio::spawn(crate::listener::serve(
            listener,
            app(Arc::clone(&state)),
            limits,
            crate::listener::Edge {
                proxy_protocol: state.config.proxy_protocol,
                tls: state.tls.clone(),
                #[cfg(feature = "with-relay")]
                turn: state.relay_intake.get().cloned(),
            },
            Arc::clone(&state.metrics),
            stopped.clone(),
        ));
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = state.drain_requested.cancelled() => {}
        }
        crate::shutdown::drain(&state, "server shutting down", state.config.drain_timeout).await;
        stopped.cancel();
        sweeper.abort();
        if let Some(watcher) = fleet_watcher {
            watcher.abort();
        }
        // HTTP keep-alive connections get a short while to finish; upgraded sockets are closed.
        let result = match tokio::time::timeout(Duration::from_secs(2), server).await {
            Ok(Ok(())) | Err(_) => Ok(()),
            Ok(Err(join)) => Err(Error::Io(std::io::Error::other(join))),
        };
        if let Backend::Cluster(hub) = &state.hub {
            hub.leave().await;
        }
        result
    }
}
