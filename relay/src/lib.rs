//! The relay: a STUN/TURN server (RFC 8489, RFC 8656, RFC 6062 framing, RFC 6156 IPv6). The
//! protocol lives in the sans-IO crate `relay-proto`; this crate owns sockets, threads, TLS,
//! configuration and the admin HTTP endpoint.
//!
//! # Embedding
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = relay::Config::from_args(["--listen", "127.0.0.1:0", "--turn-secret", "s3cret"])?;
//! let handle = relay::Relay::start(config)?;
//! println!("TURN on {:?}", handle.addrs().udp);
//! // ... later, on shutdown:
//! handle.drain(std::time::Duration::from_secs(30)).await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! `config` (the clap struct), `io/` (workers: sockets, batches, stream framing, relay ports),
//! `tls` (rustls set-up), `metrics` + `admin` (`/healthz`, `/readyz`, `/metrics`, `/usage`),
//! `usage` (relayed bytes per user and time bucket), `reload` (SIGHUP: the configuration read
//! again, what it may change while running), `registration` (`--register`: the relay's record
//! in the fleet's Redis) and `usage_publisher` (its usage published there).

pub mod admin;
pub mod config;
mod io;
pub mod metrics;
pub mod registration;
pub mod reload;
pub mod tls;
pub mod usage;
pub mod usage_publisher;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use relay_proto::{AuthConfig, PeerPolicy, Quotas, RateLimit, ServerConfig, SharedQuotas};
use tokio::sync::{mpsc, watch};

pub use config::Config;
use io::drain::DrainSignal;
use io::driver::{WorkerSetup, run_worker};
pub use io::intake::{AdoptError, AdoptedStream, StreamIntake, StreamTransport};
use io::relay_ports::RelayPorts;
pub use metrics::Metrics;

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A listening socket could not be bound; `source` is `AddrInUse` when anything else
    /// holds the port (checked before the SO_REUSEPORT group is created).
    #[error("cannot bind {what} {addr} (choose another with {}): {source}", flag_of(.what))]
    Bind {
        /// `udp`, `tcp`, `tls` or `admin`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// TLS set-up failed (certificate or key).
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A worker thread could not start.
    #[error("worker start-up: {0}")]
    Worker(String),
    /// The configuration is inconsistent.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
}

/// The flag that sets the address of a listener of `what` kind (see [`StartError::Bind`]).
fn flag_of(what: &str) -> &'static str {
    match what {
        "tls" => "--tls-listen",
        "admin" => "--admin-listen",
        _ => "--listen",
    }
}

/// The addresses the relay ended up on (port 0 resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayAddrs {
    /// STUN/TURN over UDP.
    pub udp: Vec<SocketAddr>,
    /// STUN/TURN over TCP (empty with `--no-tcp`).
    pub tcp: Vec<SocketAddr>,
    /// TURNS (empty without TLS).
    pub tls: Vec<SocketAddr>,
    /// The admin HTTP server, if enabled.
    pub admin: Option<SocketAddr>,
    /// Local IPs relay sockets are bound on (one per family).
    pub relay_ips: Vec<IpAddr>,
    /// The generated certificate (PEM) with `--tls-self-signed`, for clients to trust.
    pub tls_self_signed_pem: Option<String>,
}

/// Starts relays.
#[derive(Debug)]
pub struct Relay;

impl Relay {
    /// Binds every socket, starts the worker threads and the admin server, and returns once
    /// they all run. Usable from inside or outside a tokio runtime (the relay runs on its own
    /// threads).
    pub fn start(config: Config) -> Result<RelayHandle, StartError> {
        config.validate()?;
        tls::install_crypto_provider();
        let workers = config.worker_count();
        let relay_ips = relay_ips(&config);
        tracing::info!(relay_ips = ?relay_ips, workers, "starting relay");
        warn_about_relay_ips(&config, &relay_ips);

        // TLS first: a bad certificate should fail before any socket is bound.
        let (tls_config, tls_files, tls_self_signed_pem) =
            if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
                let (tls_config, files) = tls::from_pem_files(cert, key, Vec::new())?;
                (Some(tls_config), Some(files), None)
            } else if config.tls_self_signed {
                let mut names = vec!["localhost".to_owned()];
                names.extend(
                    relay_ips
                        .iter()
                        .chain(
                            config
                                .listen
                                .iter()
                                .map(|a| a.ip())
                                .collect::<Vec<_>>()
                                .iter(),
                        )
                        .filter(|ip| !ip.is_unspecified())
                        .map(ToString::to_string),
                );
                names.dedup();
                let (cfg, pem) = tls::self_signed(names, Vec::new())?;
                (Some(cfg), None, Some(pem))
            } else {
                (None, None, None)
            };

        // One socket per worker per address.
        let mut udp: Vec<Vec<socket2::Socket>> = (0..workers).map(|_| Vec::new()).collect();
        let mut tcp: Vec<Vec<std::net::TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
        let mut tls: Vec<Vec<std::net::TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
        let mut addrs = RelayAddrs {
            udp: Vec::new(),
            tcp: Vec::new(),
            tls: Vec::new(),
            admin: None,
            relay_ips: relay_ips.clone(),
            tls_self_signed_pem,
        };
        // Each port is probed first: start-up fails if anything else holds it (with
        // SO_REUSEPORT we would otherwise join its group and share its traffic), and port 0
        // becomes a port that is free. Then one socket per worker on it.
        let bind_err = |what: &'static str, addr: SocketAddr| {
            move |source: std::io::Error| StartError::Bind { what, addr, source }
        };
        for &wanted in &config.listen {
            let bound = io::port_probe::probe_udp(wanted).map_err(bind_err("udp", wanted))?;
            for sockets in &mut udp {
                sockets.push(
                    io::udp::bind_listener(bound, config.socket_buffer)
                        .map_err(bind_err("udp", bound))?,
                );
            }
            addrs.udp.push(bound);
            if !config.no_tcp {
                // The UDP port for TCP too; if the kernel picked it and TCP has it taken, any
                // free port.
                let tcp_addr = match io::port_probe::probe_tcp(bound) {
                    Ok(addr) => addr,
                    Err(_) if wanted.port() == 0 => {
                        io::port_probe::probe_tcp(wanted).map_err(bind_err("tcp", wanted))?
                    }
                    Err(source) => return Err(bind_err("tcp", bound)(source)),
                };
                for sockets in &mut tcp {
                    sockets
                        .push(io::tcp::bind_listener(tcp_addr).map_err(bind_err("tcp", tcp_addr))?);
                }
                addrs.tcp.push(tcp_addr);
            }
        }
        if tls_config.is_some() {
            for &wanted in &config.tls_listen {
                let bound = io::port_probe::probe_tcp(wanted).map_err(bind_err("tls", wanted))?;
                for sockets in &mut tls {
                    sockets.push(io::tcp::bind_listener(bound).map_err(bind_err("tls", bound))?);
                }
                addrs.tls.push(bound);
            }
        }

        let shared = Arc::new(SharedQuotas::new());
        let secret_ids = Arc::new(RwLock::new(secret_ids(&config)));
        let usage = Arc::new(usage::UsageBook::new(config.usage_limits()));
        let metrics = Arc::new(Metrics::new(workers, Arc::clone(&shared), usage));
        if let Some(files) = &tls_files {
            metrics.tls_certificate(files.not_after());
        }
        let drain = DrainSignal::new(Arc::clone(&shared));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (stopped_tx, stopped_rx) = mpsc::channel::<()>(1);

        let mut threads = Vec::new();
        if let config::AdminListen::Addr(addr) = config.admin_listen {
            let listener =
                std::net::TcpListener::bind(addr).map_err(|source| StartError::Bind {
                    what: "admin",
                    addr,
                    source,
                })?;
            listener
                .set_nonblocking(true)
                .map_err(|source| StartError::Bind {
                    what: "admin",
                    addr,
                    source,
                })?;
            addrs.admin = listener.local_addr().ok();
            threads.push(spawn_admin(
                listener,
                Arc::clone(&metrics),
                shutdown_rx.clone(),
                stopped_tx.clone(),
            )?);
        }

        // Only stream listeners count against --max-connections.
        if !config.no_tcp || tls_config.is_some() {
            io::conn_limit::warn_if_fd_limit_below(config.max_connections);
        }

        // After the admin bind: its address is one the policy must refuse as a peer.
        let server_config = server_config(&config, &relay_ips, &addrs);
        let relay_ports = RelayPorts::new(
            &relay_ips,
            config.relay_ports.low,
            config.relay_ports.high,
            config.socket_buffer,
        );
        let tls_accept = tls_config.map(|c| io::tcp::TlsAccept {
            acceptor: tokio_rustls::TlsAcceptor::from(c),
            handshake_timeout: config.tls_handshake_timeout,
        });
        let connections = io::conn_limit::ConnectionLimit::new(
            config.max_connections,
            config.max_connections_per_ip,
        );
        metrics.watch_connections(Arc::clone(&connections));
        let http_upstream =
            config
                .http_upstream
                .clone()
                .map(|addr| io::http_upstream::HttpUpstream {
                    addr,
                    proxy_protocol: config.http_upstream_proxy_protocol,
                    connect_timeout: config.tls_handshake_timeout,
                });
        let (intake_queues, mut adopted): (Vec<_>, Vec<_>) = (0..workers)
            .map(|_| mpsc::channel(io::intake::QUEUE))
            .unzip();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (settings, worker_settings) = io::settings::channel(workers);
        for (index, (((udp, tcp), tls), settings)) in udp
            .into_iter()
            .zip(tcp)
            .zip(tls)
            .zip(worker_settings)
            .enumerate()
        {
            let setup = WorkerSetup {
                index,
                server_config: server_config.clone(),
                shared: Arc::clone(&shared),
                udp,
                tcp,
                tls,
                tls_accept: tls_accept.clone(),
                proxy_protocol: config.proxy_protocol,
                header_timeout: config.tls_handshake_timeout,
                http_upstream: http_upstream.clone(),
                adopted: adopted.remove(0),
                relay_ports: relay_ports.clone(),
                connections: Arc::clone(&connections),
                stream_queue_bytes: config.stream_queue_bytes,
                metrics: Arc::clone(&metrics),
                drain: Arc::clone(&drain),
                settings,
                shutdown: shutdown_rx.clone(),
                stopped: stopped_tx.clone(),
            };
            let ready = ready_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("relay-worker-{index}"))
                .spawn(move || run_worker(setup, ready))
                .map_err(|e| StartError::Worker(e.to_string()))?;
            threads.push(thread);
        }
        drop(ready_tx);
        let handle = RelayHandle {
            addrs,
            shared,
            metrics,
            drain,
            shutdown: shutdown_tx,
            stopped: stopped_rx,
            threads,
            tls_files,
            intake: StreamIntake::new(intake_queues),
            settings,
            secret_ids,
        };
        for _ in 0..workers {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(StartError::Worker(e)),
                Err(_) => return Err(StartError::Worker("a worker exited during start-up".into())),
            }
        }
        Ok(handle)
    }
}

/// The load and state of a running relay, readable from any task.
#[derive(Debug, Clone)]
pub struct RelayStatus {
    shared: Arc<SharedQuotas>,
    metrics: Arc<Metrics>,
    secret_ids: Arc<RwLock<Vec<String>>>,
}

impl RelayStatus {
    /// Live allocations across all workers.
    pub fn allocations(&self) -> u32 {
        self.shared.allocations()
    }

    /// True once the relay drains.
    pub fn is_draining(&self) -> bool {
        self.shared.is_draining()
    }

    /// The ids of the TURN REST secrets the relay accepts now (`fleet::secret::secret_id`).
    pub fn secret_ids(&self) -> Vec<String> {
        self.secret_ids
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Relayed traffic per user and time bucket (the same as `/usage`).
    pub fn usage(&self) -> &Arc<usage::UsageBook> {
        self.metrics.usage()
    }

    /// Payload bytes relayed since start, both directions (as of the workers' last publish).
    pub fn relayed_bytes(&self) -> u64 {
        let totals = self.metrics.core_totals();
        totals.bytes_to_peer + totals.bytes_to_client
    }
}

/// Starts a running relay's drain from any task, without its handle (as
/// [`RelayHandle::begin_drain`]).
#[derive(Debug, Clone)]
pub struct DrainSwitch(Arc<SharedQuotas>);

impl DrainSwitch {
    /// Refuse new allocations from now on (existing ones keep working); `/readyz` turns 503.
    pub fn begin_drain(&self) {
        self.0.set_draining(true);
    }
}

/// A running relay. Dropping it stops the relay (without waiting).
#[derive(Debug)]
pub struct RelayHandle {
    addrs: RelayAddrs,
    shared: Arc<SharedQuotas>,
    metrics: Arc<Metrics>,
    /// Wakes `drain` when the last allocation ends.
    drain: Arc<DrainSignal>,
    shutdown: watch::Sender<bool>,
    /// Closed when every worker and the admin thread have stopped (each holds a sender and
    /// drops it last).
    stopped: mpsc::Receiver<()>,
    threads: Vec<JoinHandle<()>>,
    /// The `--tls-cert`/`--tls-key` files, read again by [`RelayHandle::reload`].
    tls_files: Option<Arc<tls::CertificateFiles>>,
    /// Hands streams other servers accepted to the workers.
    intake: StreamIntake,
    /// Carries a reload's live settings to every worker.
    settings: io::settings::SettingsSender,
    /// The ids of the TURN REST secrets in force (advertised to the fleet).
    secret_ids: Arc<RwLock<Vec<String>>>,
}

/// Why a reload was refused (the configuration in force stays).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The new configuration is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The certificate files do not load.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A worker did not take the new settings in time (it stopped).
    #[error("a worker did not apply the new settings in time")]
    Workers,
}

impl RelayHandle {
    /// SIGHUP: takes what `config` changes among the settings a running relay can swap (the
    /// `--user`s and `--turn-secret`s, the quotas and rate limits, the peer allow/deny lists,
    /// see `relay::reload::RELOADABLE`) and reads the `--tls-cert`/`--tls-key` files again.
    /// Everything is checked first: an invalid configuration or a certificate pair that does
    /// not load is refused whole, and what is in force stays. Returns once every worker runs
    /// with the new settings. Allocations, permissions and channels that exist stay; new
    /// TLS handshakes get the new certificate, connections already open keep theirs. Counted
    /// in `relay_config_reloads_total` / `relay_config_reloads_refused_total` (and the
    /// certificate in `relay_tls_reloads*`). The other settings of `config` (addresses,
    /// workers, ...) are not applied.
    pub async fn reload(&self, config: &Config) -> Result<(), ReloadError> {
        let result = self.try_reload(config).await;
        self.metrics.config_reload(result.is_ok());
        result
    }

    async fn try_reload(&self, config: &Config) -> Result<(), ReloadError> {
        config.validate()?;
        let certificate = match &self.tls_files {
            Some(files) => {
                let fresh = files.read_again();
                if fresh.is_err() {
                    self.metrics.tls_reload(false);
                }
                Some((files, fresh?))
            }
            None => None,
        };
        let live = relay_proto::LiveSettings::of(&server_config(
            config,
            &self.addrs.relay_ips,
            &self.addrs,
        ));
        if let Some((files, fresh)) = certificate {
            files.install(fresh);
            // The expiry first: a reload counted shows the certificate it put in force.
            self.metrics.tls_certificate(files.not_after());
            self.metrics.tls_reload(true);
        }
        self.settings
            .deliver(live)
            .await
            .map_err(|_| ReloadError::Workers)?;
        *self
            .secret_ids
            .write()
            .unwrap_or_else(PoisonError::into_inner) = secret_ids(config);
        Ok(())
    }

    /// Where another server of this process hands over the TURN streams it accepted (a port
    /// shared with HTTP, like signaling's `--shared-port`).
    pub fn stream_intake(&self) -> StreamIntake {
        self.intake.clone()
    }

    /// The bound addresses.
    pub fn addrs(&self) -> &RelayAddrs {
        &self.addrs
    }

    /// Relayed traffic per user and time bucket (the same as `/usage`).
    pub fn usage(&self) -> &Arc<usage::UsageBook> {
        self.metrics.usage()
    }

    /// Live counters (the same as `/metrics`).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Live allocations across all workers.
    pub fn allocations(&self) -> u32 {
        self.shared.allocations()
    }

    /// A cheap, cloneable view of the relay's load and state (for fleet registration).
    pub fn status(&self) -> RelayStatus {
        RelayStatus {
            shared: Arc::clone(&self.shared),
            metrics: Arc::clone(&self.metrics),
            secret_ids: Arc::clone(&self.secret_ids),
        }
    }

    /// Refuse new allocations from now on (existing ones keep working); `/readyz` turns 503.
    /// The flag lives in `SharedQuotas` only: every worker, `/readyz` and `RelayStatus` read
    /// it there.
    pub fn begin_drain(&self) {
        self.shared.set_draining(true);
    }

    /// What starts the drain from another task ([`Self::begin_drain`] there).
    pub fn drain_switch(&self) -> DrainSwitch {
        DrainSwitch(Arc::clone(&self.shared))
    }

    /// True after `begin_drain`.
    pub fn is_draining(&self) -> bool {
        self.shared.is_draining()
    }

    /// Graceful shutdown: `begin_drain`, wait until every allocation has ended (the workers
    /// signal the last one; nothing polls) or `timeout` passed, then stop.
    pub async fn drain(self, timeout: Duration) {
        self.begin_drain();
        self.wait_drained(timeout).await;
        self.shutdown().await;
    }

    /// Waits until every allocation has ended (after `begin_drain`) or `timeout` passed; the
    /// relay keeps running: call `shutdown` next. Cancel it to stop waiting.
    pub async fn wait_drained(&self, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        self.drain.wait_idle(deadline).await;
        tracing::info!(
            remaining_allocations = self.allocations(),
            "drain finished, stopping"
        );
    }

    /// Stops every worker now (allocations end with the process) and waits for them.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.stopped.recv().await.is_some() {}
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }

    /// `shutdown` for callers outside an async context.
    pub fn shutdown_blocking(mut self) {
        let _ = self.shutdown.send(true);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

fn spawn_admin(
    listener: std::net::TcpListener,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
    stopped: mpsc::Sender<()>,
) -> Result<JoinHandle<()>, StartError> {
    std::thread::Builder::new()
        .name("relay-admin".into())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                tracing::error!("admin: cannot build runtime");
                return;
            };
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    tracing::error!("admin: cannot register listener");
                    return;
                };
                let app = admin::router(metrics);
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = shutdown.wait_for(|stop| *stop).await;
                    })
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "admin server failed");
                }
            });
            drop(stopped);
        })
        .map_err(|e| StartError::Worker(e.to_string()))
}

/// The relay IPs: `--relay-ip`, else each family's concrete listening IP, else the private side
/// of an `--external-ip` mapping, else the host's primary outbound IP of the family.
fn relay_ips(config: &Config) -> Vec<IpAddr> {
    if !config.relay_ip.is_empty() {
        return config.relay_ip.clone();
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    for listen in &config.listen {
        let family_v4 = listen.is_ipv4();
        if ips.iter().any(|ip| ip.is_ipv4() == family_v4) {
            continue;
        }
        let ip = if listen.ip().is_unspecified() {
            config
                .external_ip
                .iter()
                .filter_map(|m| m.private)
                .find(|p| p.is_ipv4() == family_v4)
                .or_else(|| primary_ip(family_v4))
                .unwrap_or_else(|| {
                    let fallback = if family_v4 { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { IpAddr::V6(Ipv6Addr::LOCALHOST) };
                    tracing::warn!(%fallback, "no route to find the host's address: pass --relay-ip");
                    fallback
                })
        } else {
            listen.ip()
        };
        ips.push(ip);
    }
    ips
}

/// Warns about relay IPs most clients cannot use: none of IPv4 (an Allocate that asks for no
/// family, as browsers' do, gets 440), and an `--external-ip` mapping for a relay IP the relay
/// does not have (it maps nothing).
fn warn_about_relay_ips(config: &Config, relay_ips: &[IpAddr]) {
    if !relay_ips.iter().any(IpAddr::is_ipv4) {
        tracing::warn!(
            relay_ips = ?relay_ips,
            "no IPv4 relay address: an Allocate that asks for no address family (browsers', \
             most clients') gets 440 Address Family not Supported; give an IPv4 --relay-ip too, \
             or listen on an IPv4 address"
        );
    }
    for mapping in &config.external_ip {
        if let Some(private) = mapping.private.filter(|p| !relay_ips.contains(p)) {
            tracing::warn!(
                %private,
                public = %mapping.public,
                relay_ips = ?relay_ips,
                "--external-ip maps an address that is no relay IP: it maps nothing"
            );
        }
    }
}

/// The source IP the kernel would use towards the Internet (a UDP `connect` sends nothing).
fn primary_ip(v4: bool) -> Option<IpAddr> {
    let (bind, probe): (SocketAddr, SocketAddr) = if v4 {
        (
            (Ipv4Addr::UNSPECIFIED, 0).into(),
            (Ipv4Addr::new(192, 0, 2, 1), 9).into(),
        )
    } else {
        (
            (Ipv6Addr::UNSPECIFIED, 0).into(),
            ("2001:db8::1".parse::<Ipv6Addr>().ok()?, 9).into(),
        )
    };
    let socket = StdUdpSocket::bind(bind).ok()?;
    socket.connect(probe).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// The ids of `config`'s TURN REST secrets, as the fleet record names them.
fn secret_ids(config: &Config) -> Vec<String> {
    config
        .auth_secrets
        .iter()
        .map(|s| fleet::secret::secret_id(s.expose()))
        .collect()
}

/// The core's configuration from the relay's.
fn server_config(config: &Config, relay_ips: &[IpAddr], addrs: &RelayAddrs) -> ServerConfig {
    let mut auth = AuthConfig::default();
    for user in &config.users {
        auth.add_user_credential(user.name.clone(), user.credential());
    }
    auth.rest_secrets = config
        .auth_secrets
        .iter()
        .map(|s| s.expose().to_vec())
        .collect();
    let mut own_ips: Vec<IpAddr> = relay_ips.to_vec();
    own_ips.extend(
        addrs
            .udp
            .iter()
            .chain(&addrs.tcp)
            .chain(&addrs.tls)
            .map(SocketAddr::ip)
            .filter(|ip| !ip.is_unspecified()),
    );
    own_ips.extend(config.external_ip.iter().map(|m| m.public));
    own_ips.sort_unstable();
    own_ips.dedup();
    let mut listen_addresses: Vec<SocketAddr> = addrs
        .udp
        .iter()
        .chain(&addrs.tcp)
        .chain(&addrs.tls)
        .copied()
        .collect();
    listen_addresses.extend(addrs.admin);
    for allowed in &config.allow_peer {
        let never = allowed.never_allowed_inside();
        if !never.is_empty() {
            let never: Vec<String> = never.iter().map(ToString::to_string).collect();
            tracing::warn!(
                "--allow-peer {allowed} cannot open {}: these addresses are always denied",
                never.join(", ")
            );
        }
    }
    let policy = PeerPolicy {
        allow: config.allow_peer.clone(),
        deny: config.deny_peer.clone(),
        allow_loopback_peers: config.allow_loopback_peers,
        own_ips,
        relay_ports: config.relay_ports.low..=config.relay_ports.high,
        listen_addresses,
    };
    let unauth = (config.unauth_rate > 0).then(|| RateLimit {
        per_second: u64::from(config.unauth_rate),
        burst: u64::from(config.unauth_rate) * 2,
    });
    let quotas = Quotas {
        allocations_per_user: config.user_quota,
        total_allocations: if config.total_quota == 0 {
            u32::MAX
        } else {
            config.total_quota
        },
        permissions_per_allocation: config.max_permissions,
        channels_per_allocation: config.max_channels,
        bandwidth_per_allocation: (config.max_bps > 0).then_some(RateLimit {
            per_second: config.max_bps,
            burst: config.max_bps,
        }),
        unauthenticated_per_ip: unauth,
        unauthorized_per_ip: unauth.map(|r| RateLimit {
            per_second: (r.per_second / 4).max(1),
            burst: (r.burst / 4).max(1),
        }),
        auth_failures_per_ip: unauth.map(|r| RateLimit {
            per_second: (r.per_second / 20).max(1),
            burst: (r.burst / 10).max(1),
        }),
        amplification_allowance: (config.unauth_bytes > 0).then_some(config.unauth_bytes),
        ..Quotas::default()
    };
    ServerConfig {
        realm: config.realm.clone(),
        auth,
        policy,
        quotas,
        external_ips: config.external_ip.clone(),
        ..ServerConfig::default()
    }
}
