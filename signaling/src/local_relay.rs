//! `--with-relay`: the STUN/TURN relay run inside the signaling process, so that one command
//! starts the whole local stack. The relay keeps its own threads and sockets; this module only
//! chooses loopback-safe defaults, shares the TURN REST secret with it, and turns its bound
//! addresses into the ICE server URLs clients receive. In production the two binaries run
//! separately with the same secret.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use clap::ArgMatches;
use clap::CommandFactory as _;
use clap::parser::ValueSource;
use relay::config::AdminListen;

use crate::config::{Config, Secret};
use crate::error::Error;

/// The port the relay tries first; a free port is used when it is taken.
const DEFAULT_RELAY_PORT: u16 = 3478;

/// The in-process relay. Stop it with [`LocalRelay::shutdown`] after the server has drained.
#[derive(Debug)]
pub struct LocalRelay {
    handle: relay::RelayHandle,
    /// The relay's listening address as asked (for its configuration on reloads).
    listen: SocketAddr,
    /// The relay's `--relay-arg` flags as parsed, to name what a reload changes.
    given: ArgMatches,
}

impl LocalRelay {
    /// Starts the relay and completes `config` with its URLs and, when none was given, a
    /// freshly generated TURN secret (shared with the relay, never printed).
    pub fn start(config: &mut Config) -> Result<Self, Error> {
        if config.turn_secrets.is_empty() {
            config.turn_secrets.push(generated_secret());
        }
        let listen = config
            .relay_listen
            .unwrap_or_else(|| SocketAddr::new(config.listen.ip(), DEFAULT_RELAY_PORT));
        let host = match (&config.relay_host, listen.ip()) {
            (Some(host), _) => host.clone(),
            (None, ip) if ip.is_unspecified() => {
                return Err(Error::Config(
                    "the relay listens on all interfaces: say which address clients use to \
                     reach it with --relay-host"
                        .into(),
                ));
            }
            (None, IpAddr::V6(ip)) => format!("[{ip}]"),
            (None, IpAddr::V4(ip)) => ip.to_string(),
        };

        let in_process =
            |e: &dyn std::fmt::Display| Error::Config(format!("in-process relay: {e}"));
        let (relay_config, given) = relay_config(config, listen).map_err(|e| in_process(&e))?;
        let handle = match relay::Relay::start(relay_config.clone()) {
            Err(relay::StartError::Bind { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse
                    && config.relay_listen.is_none() =>
            {
                tracing::warn!(%listen, "relay port taken, using a free port");
                relay::Relay::start(relay::Config {
                    listen: vec![SocketAddr::new(listen.ip(), 0)],
                    ..relay_config
                })
            }
            other => other,
        }
        .map_err(|e| in_process(&e))?;

        let addrs = handle.addrs();
        if let Some(udp) = addrs.udp.first() {
            config.stun_urls.push(format!("stun:{host}:{}", udp.port()));
            config
                .turn_urls
                .push(format!("turn:{host}:{}?transport=udp", udp.port()));
        }
        if let Some(tcp) = addrs.tcp.first() {
            config
                .turn_urls
                .push(format!("turn:{host}:{}?transport=tcp", tcp.port()));
        }
        if let Some(tls) = addrs.tls.first() {
            config
                .turn_urls
                .push(format!("turns:{host}:{}?transport=tcp", tls.port()));
        }
        tracing::info!(stun = ?config.stun_urls, turn = ?config.turn_urls, "in-process relay started");
        // Scripts and tests parse these lines, like `listening on ...`.
        println!("relay udp {}", format_addrs(&addrs.udp));
        println!("relay tcp {}", format_addrs(&addrs.tcp));
        if let Some(admin) = addrs.admin {
            println!("relay admin http://{admin}");
        }
        Ok(Self {
            handle,
            listen,
            given,
        })
    }

    /// SIGHUP: the relay's configuration built again from `config` (its `--relay-arg`s and
    /// TURN secrets) and applied with [`relay::RelayHandle::reload`], which checks it whole
    /// first. What changed is logged as `in-process relay configuration reloaded: ...`.
    pub async fn reload(&mut self, config: &Config) -> Result<(), Error> {
        let in_process =
            |e: &dyn std::fmt::Display| Error::Config(format!("in-process relay: {e}"));
        let (relay_config, given) =
            relay_config(config, self.listen).map_err(|e| in_process(&e))?;
        self.handle
            .reload(&relay_config)
            .await
            .map_err(|e| in_process(&e))?;
        startup::reload::Changes::between(
            &relay::Config::command(),
            &self.given,
            &given,
            relay::reload::RELOADABLE,
        )
        .log("in-process relay configuration");
        self.given = given;
        Ok(())
    }

    /// The relay's metrics (signaling's `/metrics` carries them too).
    pub fn metrics(&self) -> std::sync::Arc<relay::Metrics> {
        std::sync::Arc::clone(self.handle.metrics())
    }

    /// Stops the relay's workers (allocations end with the process).
    pub async fn shutdown(self) {
        self.handle.shutdown().await;
    }
}

/// The relay's configuration: what the `--relay-arg` flags give (parsed like the relay's own
/// command line, returned with the matches), completed from ours where those flags are
/// silent: the same TURN secrets, a loopback-only admin port, and loopback peers allowed only
/// when the relay itself is on loopback (everything local: two browser tabs relay to each
/// other through 127.0.0.1).
fn relay_config(
    config: &Config,
    listen: SocketAddr,
) -> Result<(relay::Config, ArgMatches), relay::config::ConfigError> {
    let args = std::iter::once("relay").chain(config.relay_args.iter().map(String::as_str));
    let (mut relay_config, given) = relay::Config::load_from(args)?;
    let silent = |id: &str| given.value_source(id) != Some(ValueSource::CommandLine);
    if silent("listen") {
        relay_config.listen = vec![listen];
    }
    if silent("auth_secrets") {
        relay_config.auth_secrets = config.turn_secrets.clone();
    }
    if silent("admin_listen") {
        relay_config.admin_listen =
            AdminListen::Addr(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0));
    }
    if silent("allow_loopback_peers") && listen.ip().is_loopback() {
        relay_config.allow_loopback_peers = true;
    }
    relay_config.validate()?;
    Ok((relay_config, given))
}

/// 32 random bytes, hex: the shared secret of a stack nobody configured.
fn generated_secret() -> Secret {
    let bytes: [u8; 32] = rand::random();
    Secret::new(hex::encode(bytes))
}

fn format_addrs(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
