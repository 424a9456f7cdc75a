//! A worker: one OS thread with a tokio current-thread runtime and a `LocalSet` running the
//! shard's tasks: one per UDP listening socket, one per relay socket, TCP/TLS accept loops and
//! connections, and the timer task. Each task awaits readiness, then processes whole batches
//! synchronously, yielding after `TIME_BUDGET` so that no socket can starve the others or the
//! timers. On shutdown the listeners stop first, then the shard closes its relay sockets and
//! connections and waits for their tasks (`Shard::shutdown`); the worker's `stopped` sender is
//! dropped last, so the relay handle knows every worker is done when the channel closes.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_proto::{RelayHandle, Server, ServerConfig, SharedQuotas};
use socket2::Socket;
use tokio::sync::{mpsc, watch};
use tokio::task::LocalSet;

use super::conn_limit::ConnectionLimit;
use super::drain::DrainSignal;
use super::http_upstream::HttpUpstream;
use super::intake::{Adopted, serve_adopted};
use super::relay_ports::RelayPorts;
use super::settings::SettingsReceiver;
use super::shard::{RelayWide, Shard, TIME_BUDGET};
use super::tcp;
use super::udp::UdpSocket;
use crate::metrics::Metrics;

/// Longest the timer task sleeps, so counters reach `/metrics` promptly (shutdown is a `select!`
/// arm beside the timer, noticed at once).
const MAX_TIMER_SLEEP: Duration = Duration::from_millis(200);

/// Everything one worker needs, prepared (sockets bound) by `Relay::start`.
pub(crate) struct WorkerSetup {
    pub(crate) index: usize,
    pub(crate) server_config: ServerConfig,
    pub(crate) shared: Arc<SharedQuotas>,
    pub(crate) udp: Vec<Socket>,
    pub(crate) tcp: Vec<std::net::TcpListener>,
    pub(crate) tls: Vec<std::net::TcpListener>,
    pub(crate) tls_accept: Option<tcp::TlsAccept>,
    /// `--proxy-protocol` on the TCP and TLS listeners.
    pub(crate) proxy_protocol: bool,
    /// How long a PROXY header may take (`--tls-handshake-timeout`).
    pub(crate) header_timeout: Duration,
    /// `--http-upstream` on the TCP and TLS listeners.
    pub(crate) http_upstream: Option<HttpUpstream>,
    /// Streams other servers of the process hand over (`StreamIntake`).
    pub(crate) adopted: mpsc::Receiver<Adopted>,
    pub(crate) relay_ports: RelayPorts,
    /// `--max-connections`, one counter for every worker.
    pub(crate) connections: Arc<ConnectionLimit>,
    /// `--stream-queue-bytes`.
    pub(crate) stream_queue_bytes: usize,
    pub(crate) metrics: Arc<Metrics>,
    /// Woken by the shard when a draining relay's last allocation ends.
    pub(crate) drain: Arc<DrainSignal>,
    /// New live settings (SIGHUP), applied to the shard's core.
    pub(crate) settings: SettingsReceiver,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Dropped when the worker has stopped (the handle waits for all of them).
    pub(crate) stopped: mpsc::Sender<()>,
}

/// Runs a worker on the current thread until shutdown. Reports set-up success or failure on
/// `ready` first.
pub(crate) fn run_worker(setup: WorkerSetup, ready: std::sync::mpsc::Sender<Result<(), String>>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!(
                "worker {}: cannot build runtime: {e}",
                setup.index
            )));
            return;
        }
    };
    let local = LocalSet::new();
    local.block_on(&runtime, async move {
        let WorkerSetup {
            index,
            server_config,
            shared,
            udp,
            tcp,
            tls,
            tls_accept,
            proxy_protocol,
            header_timeout,
            http_upstream,
            adopted,
            relay_ports,
            connections,
            stream_queue_bytes,
            metrics,
            drain,
            settings,
            mut shutdown,
            stopped,
        } = setup;
        let registered = (|| -> std::io::Result<_> {
            let udp = udp
                .into_iter()
                .map(|s| UdpSocket::from_socket(s, true).map(Rc::new))
                .collect::<Result<Vec<_>, _>>()?;
            let tcp = tcp
                .into_iter()
                .map(tokio::net::TcpListener::from_std)
                .collect::<Result<Vec<_>, _>>()?;
            let tls = tls
                .into_iter()
                .map(tokio::net::TcpListener::from_std)
                .collect::<Result<Vec<_>, _>>()?;
            Ok((udp, tcp, tls))
        })();
        let (udp, tcp, tls) = match registered {
            Ok(v) => v,
            Err(e) => {
                let _ = ready.send(Err(format!("worker {index}: cannot register sockets: {e}")));
                return;
            }
        };
        let core = Server::with_shared_quotas(server_config, shared);
        let shard = Shard::new(
            index,
            core,
            udp,
            relay_ports,
            stream_queue_bytes,
            RelayWide {
                connections,
                metrics,
                drain,
            },
        );
        // The listeners: aborted first at shutdown, so no new work arrives while the shard
        // waits for its connections.
        let mut listeners = Vec::new();
        for socket in shard.listeners() {
            listeners.push(tokio::task::spawn_local(run_udp_listener(
                Rc::clone(&shard),
                Rc::clone(socket),
            )));
        }
        listeners.push(tokio::task::spawn_local(serve_adopted(
            Rc::clone(&shard),
            adopted,
        )));
        let plain = tcp::StreamEdge {
            proxy_protocol,
            tls: None,
            header_timeout,
            http_upstream,
        };
        for listener in tcp {
            listeners.push(tokio::task::spawn_local(tcp::accept_loop(
                Rc::clone(&shard),
                listener,
                plain.clone(),
            )));
        }
        if let Some(tls_accept) = tls_accept {
            let secure = tcp::StreamEdge {
                tls: Some(tls_accept),
                ..plain
            };
            for listener in tls {
                listeners.push(tokio::task::spawn_local(tcp::accept_loop(
                    Rc::clone(&shard),
                    listener,
                    secure.clone(),
                )));
            }
        }
        listeners.push(tokio::task::spawn_local(super::settings::run(
            Rc::clone(&shard),
            settings,
        )));
        let _ = ready.send(Ok(()));
        tokio::select! {
            () = run_timer(Rc::clone(&shard)) => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
        for listener in &listeners {
            listener.abort();
        }
        shard.shutdown().await;
        drop(stopped);
    });
}

/// Receives client datagrams on one listening socket.
async fn run_udp_listener(shard: Rc<Shard>, socket: Rc<UdpSocket>) {
    let wildcard = socket.local_addr().ip().is_unspecified();
    loop {
        if let Err(e) = socket.readable().await {
            tracing::error!(error = %e, "listening socket failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let mut started = Instant::now();
        while shard.receive_client_batch(&socket, wildcard) > 0 {
            if started.elapsed() >= TIME_BUDGET {
                tokio::task::yield_now().await;
                started = Instant::now();
            }
        }
    }
}

/// Receives peer datagrams on one relay socket until its allocation ends (the task is aborted).
pub(crate) async fn run_relay_socket(shard: Rc<Shard>, relay: RelayHandle, socket: Rc<UdpSocket>) {
    loop {
        if let Err(e) = socket.readable().await {
            tracing::debug!(error = %e, "relay socket failed");
            return;
        }
        let mut started = Instant::now();
        while shard.receive_peer_batch(relay, &socket) > 0 {
            if started.elapsed() >= TIME_BUDGET {
                tokio::task::yield_now().await;
                started = Instant::now();
            }
        }
    }
}

/// Runs the core's timers (one deadline queue in the core) and publishes metrics.
async fn run_timer(shard: Rc<Shard>) {
    loop {
        let next = shard.on_timer();
        let now = Instant::now();
        let wake = next.map_or(now + MAX_TIMER_SLEEP, |t| {
            t.clamp(now, now + MAX_TIMER_SLEEP)
        });
        tokio::time::sleep_until(wake.into()).await;
    }
}
