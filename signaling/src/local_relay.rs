//! `--with-relay`: the STUN/TURN relay run inside the signaling process, so that one command
//! starts the whole local stack. The relay keeps its own threads and sockets; this module only
//! chooses loopback-safe defaults, shares the TURN REST secret with it, and turns its bound
//! addresses into the ICE server URLs clients receive. In production the two binaries run
//! separately with the same secret. With `--shared-port`, the signaling listener hands the TURN
//! connections it accepts to the relay ([`relay::StreamIntake`], see [`crate::listener`]), and
//! clients get that port's URL too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use clap::ArgMatches;
use clap::CommandFactory as _;
use clap::parser::ValueSource;
use relay::config::AdminListen;

use crate::config::{Config, Secret};
use crate::error::Error;

/// The port the relay tries first; a free port is used when it is taken.
const DEFAULT_RELAY_PORT: u16 = 3478;
/// The relay's admin port (`/metrics`, `/healthz`, `/readyz`) on loopback: the standalone
/// relay's default, tried first; a free port is used when it is taken.
const DEFAULT_RELAY_ADMIN_PORT: u16 = 9641;

/// The in-process relay: it drains with the server (its [`LocalRelay::drain_switch`] when the
/// server's drain starts, [`LocalRelay::finish_drain`] once it is done).
#[derive(Debug)]
pub struct LocalRelay {
    handle: relay::RelayHandle,
    /// The relay's listening address as asked (for its configuration on reloads).
    listen: SocketAddr,
    /// The relay's admin address as asked (likewise).
    admin: SocketAddr,
    /// Whether only clients on this host reach the relay ([`only_local_clients`]), decided
    /// at start from what the relay listens on: a reload cannot change that (those settings
    /// need a restart), so it cannot turn loopback peers on either.
    only_local_clients: bool,
    /// The relay's `--relay-arg` flags as started with and as last reloaded, to name what a
    /// reload changes.
    given: startup::reload::Running,
}

impl LocalRelay {
    /// Starts the relay and completes `config` with its URLs and, when none was given, a
    /// freshly generated TURN secret (shared with the relay, never printed). `listening` is
    /// signaling's own bound address: with `--shared-port`, the URL of TURN on it comes last.
    pub fn start(config: &mut Config, listening: SocketAddr) -> Result<Self, Error> {
        if config.turn_secrets.is_empty() {
            config.turn_secrets.push(generated_secret());
        }
        let listen = config
            .relay_listen
            .unwrap_or_else(|| SocketAddr::new(config.listen.ip(), DEFAULT_RELAY_PORT));
        if let Some(public) = &config.shared_port_public {
            check_host_port(public)?;
        }

        let (handle, given, only_local_clients) = start_with_fallbacks(config, listen)?;

        let addrs = handle.addrs();
        let bound = [&addrs.udp, &addrs.tcp, &addrs.tls]
            .into_iter()
            .find_map(|addrs| addrs.first())
            .map_or(listen.ip(), SocketAddr::ip);
        // The URLs name the address the relay bound (a `--relay-arg=--listen` replaces
        // `listen`); one on every interface needs `--relay-host` (the relay stops with `handle`).
        let host = url_host(config.relay_host.as_deref(), bound)?;
        // Each URL once, also when --stun-url/--turn-url name this relay already.
        let add = |urls: &mut Vec<String>, url: String| {
            if !urls.contains(&url) {
                urls.push(url);
            }
        };
        if let Some(udp) = addrs.udp.first() {
            add(&mut config.stun_urls, format!("stun:{host}:{}", udp.port()));
            add(
                &mut config.turn_urls,
                format!("turn:{host}:{}?transport=udp", udp.port()),
            );
        }
        if let Some(tcp) = addrs.tcp.first() {
            add(
                &mut config.turn_urls,
                format!("turn:{host}:{}?transport=tcp", tcp.port()),
            );
        }
        if let Some(tls) = addrs.tls.first() {
            add(
                &mut config.turn_urls,
                format!("turns:{host}:{}?transport=tcp", tls.port()),
            );
        }
        if config.shared_port {
            let url = shared_port_url(config, &host, listening);
            add(&mut config.turn_urls, url);
        }
        tracing::info!(stun = ?config.stun_urls, turn = ?config.turn_urls, "in-process relay started");
        // Scripts and tests parse these lines, like `listening on ...`.
        println!("relay udp {}", format_addrs(&addrs.udp));
        println!("relay tcp {}", format_addrs(&addrs.tcp));
        if let Some(admin) = addrs.admin {
            println!("relay admin http://{admin}");
        }
        let admin = addrs
            .admin
            .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0));
        Ok(Self {
            handle,
            listen,
            admin,
            only_local_clients,
            given: startup::reload::Running::new(given),
        })
    }

    /// SIGHUP: the relay's configuration built again from `config` (its `--relay-arg`s and
    /// TURN secrets) and applied with [`relay::RelayHandle::reload`], which checks it whole
    /// first. What changed in its `--relay-arg`s is logged as `in-process relay (--relay-arg)
    /// reloaded: ...`; the TURN secrets it shares are in the server's own reload line. A
    /// refusal counts in the relay's `relay_config_reloads_refused_total`, a `--relay-arg`
    /// that does not parse too.
    pub async fn reload(&mut self, config: &Config) -> Result<(), Error> {
        let in_process =
            |e: &dyn std::fmt::Display| Error::Config(format!("in-process relay: {e}"));
        let local = Some(self.only_local_clients);
        let (relay_config, given, _) = relay_config(config, self.listen, self.admin, local)
            .map_err(|e| {
                self.handle.metrics().config_reload(false);
                in_process(&e)
            })?;
        self.handle
            .reload(&relay_config)
            .await
            .map_err(|e| in_process(&e))?;
        self.given
            .reloaded(
                &relay::Config::command(),
                given,
                relay::reload::RELOADABLE,
                &[],
            )
            .log("in-process relay (--relay-arg)");
        Ok(())
    }

    /// Where the listener hands the TURN connections of `--shared-port`.
    pub fn stream_intake(&self) -> relay::StreamIntake {
        self.handle.stream_intake()
    }

    /// The relay's metrics (signaling's `/metrics` carries them too).
    pub fn metrics(&self) -> std::sync::Arc<relay::Metrics> {
        std::sync::Arc::clone(self.handle.metrics())
    }

    /// The relay's usage ledger (signaling's `GET /v1/usage` reads it).
    pub fn usage(&self) -> std::sync::Arc<relay::usage::UsageBook> {
        std::sync::Arc::clone(self.handle.usage())
    }

    /// What refuses new allocations from the start of the drain on (508; the relay's
    /// `/readyz` turns 503), from the task that drains the server. The allocations already
    /// made keep relaying.
    pub fn drain_switch(&self) -> relay::DrainSwitch {
        self.handle.drain_switch()
    }

    /// Waits until the relay's allocations have ended or `until` passed, then stops its workers
    /// (what is left ends with the process).
    pub async fn finish_drain(self, until: std::time::Instant) {
        let left = until.saturating_duration_since(std::time::Instant::now());
        self.handle.wait_drained(left).await;
        self.handle.shutdown().await;
    }
}

/// Starts the relay on `listen` and the default admin port; when the relay port (not given
/// by `--relay-listen`) or the admin port is taken, on a free one instead. Returns the relay,
/// its `--relay-arg` flags as parsed, and whether only local clients reach it.
fn start_with_fallbacks(
    config: &Config,
    listen: SocketAddr,
) -> Result<(relay::RelayHandle, ArgMatches, bool), Error> {
    let in_process = |e: &dyn std::fmt::Display| Error::Config(format!("in-process relay: {e}"));
    let taken = |e: &relay::StartError| {
        matches!(e, relay::StartError::Bind { source, .. }
            if source.kind() == std::io::ErrorKind::AddrInUse)
    };
    let admin = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_RELAY_ADMIN_PORT);
    let free_admin = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    let free_listen = SocketAddr::new(listen.ip(), 0);
    let mut attempts = vec![(listen, admin), (listen, free_admin)];
    if config.relay_listen.is_none() {
        attempts.extend([(free_listen, admin), (free_listen, free_admin)]);
    }
    let last = attempts.len() - 1;
    for (n, (listen, admin)) in attempts.into_iter().enumerate() {
        let (relay_config, given, local) =
            relay_config(config, listen, admin, None).map_err(|e| in_process(&e))?;
        match relay::Relay::start(relay_config) {
            Ok(handle) => return Ok((handle, given, local)),
            Err(e) if taken(&e) && n < last => {
                tracing::warn!(%listen, %admin, "relay or admin port taken, trying another");
            }
            Err(e) => return Err(in_process(&e)),
        }
    }
    unreachable!("the last attempt returns")
}

/// The relay's configuration: what the `--relay-arg` flags give (parsed like the relay's own
/// command line, returned with the matches), completed from ours where those flags are
/// silent: the same TURN secrets, a loopback-only admin port (`admin`), and loopback peers
/// allowed only when every TURN client is local ([`only_local_clients`]: two browser tabs
/// relay to each other through 127.0.0.1). `local` is that decision when made already (at
/// start, for a reload); returned too.
fn relay_config(
    config: &Config,
    listen: SocketAddr,
    admin: SocketAddr,
    local: Option<bool>,
) -> Result<(relay::Config, ArgMatches, bool), relay::config::ConfigError> {
    let args = std::iter::once("relay").chain(config.relay_args.iter().map(String::as_str));
    let (mut relay_config, given) = relay::Config::load_from(args)?;
    let silent = |id: &str| given.value_source(id) != Some(ValueSource::CommandLine);
    if silent("listen") {
        relay_config.listen = vec![listen];
    }
    // On IPv6 loopback alone, the relay's addresses would be IPv6 only, and an Allocate that
    // asks for no address family (a browser's) would get 440: relay over 127.0.0.1 as well.
    if silent("relay_ip")
        && relay_config
            .listen
            .iter()
            .all(|a| a.ip() == Ipv6Addr::LOCALHOST)
    {
        relay_config.relay_ip = vec![Ipv6Addr::LOCALHOST.into(), Ipv4Addr::LOCALHOST.into()];
    }
    if silent("auth_secrets") {
        relay_config.auth_secrets = config.turn_secrets.clone();
    }
    if silent("admin_listen") {
        relay_config.admin_listen = AdminListen::Addr(admin);
    }
    let local = local.unwrap_or_else(|| only_local_clients(config, &relay_config));
    if silent("allow_loopback_peers") && local {
        relay_config.allow_loopback_peers = true;
    }
    relay_config.validate()?;
    Ok((relay_config, given, local))
}

/// Whether only clients on this host reach the relay of `relay`: it listens on loopback alone
/// (UDP, TCP and TLS), takes no PROXY header and registers with no fleet, clients are told a
/// loopback name for it (`--relay-host`), and TURN on signaling's own port (`--shared-port`)
/// is on a loopback `--listen` with nothing in front (no `--proxy-protocol`, no
/// `--shared-port-public`). A remote client allowed loopback peers could send to the host's
/// own UDP services (a resolver on 127.0.0.53, a cache), out of its reach otherwise.
fn only_local_clients(config: &Config, relay: &relay::Config) -> bool {
    let loopback_name = |host: &str| {
        host == "localhost"
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    };
    let relay_local = relay.listen.iter().all(|a| a.ip().is_loopback())
        && (!relay.tls_enabled() || relay.tls_listen.iter().all(|a| a.ip().is_loopback()))
        && !relay.proxy_protocol
        && relay.register.is_empty()
        && config.relay_host.as_deref().is_none_or(loopback_name);
    let shared_port_local = !config.shared_port
        || (config.listen.ip().is_loopback()
            && !config.proxy_protocol
            && config.shared_port_public.is_none());
    relay_local && shared_port_local
}

/// The host of the relay's URLs: `--relay-host` (an IPv6 literal in brackets, as URLs write
/// it), else `ip`, the relay's listening IP, which must then be a concrete one.
fn url_host(relay_host: Option<&str>, ip: IpAddr) -> Result<String, Error> {
    match (relay_host, ip) {
        (Some(host), _) => Ok(match host.parse::<Ipv6Addr>() {
            Ok(v6) => format!("[{v6}]"),
            Err(_) => host.to_owned(),
        }),
        (None, ip) if ip.is_unspecified() => Err(Error::Config(
            "the relay listens on all interfaces: say which address clients use to reach it \
             with --relay-host"
                .into(),
        )),
        (None, IpAddr::V6(ip)) => Ok(format!("[{ip}]")),
        (None, IpAddr::V4(ip)) => Ok(ip.to_string()),
    }
}

/// `--shared-port-public` is `HOST:PORT`, a port other than 0, and an IPv6 HOST in brackets
/// (`[2001:db8::7]:443`; without them, where the address ends and the port starts is a guess).
fn check_host_port(public: &str) -> Result<(), Error> {
    let refused = |why: &str| {
        Err(Error::Config(format!(
            "--shared-port-public {public}: {why}"
        )))
    };
    let Some((host, port)) = public.rsplit_once(':') else {
        return refused("expected HOST:PORT");
    };
    if !matches!(port.parse::<u16>(), Ok(port) if port != 0) || host.is_empty() {
        return refused("expected HOST:PORT");
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return refused("an IPv6 address goes in brackets: [ADDRESS]:PORT");
    }
    Ok(())
}

/// TURN on signaling's own port (`--shared-port`): over TLS when signaling serves TLS, over TCP
/// otherwise. The address is `--shared-port-public` (what a balancer in front gives clients),
/// else HOST and signaling's port, where HOST is `--relay-host`, else the first
/// `--acme-domain` (the name of the ACME certificate, which a TLS client checks), else the
/// relay's listening IP (`host`).
fn shared_port_url(config: &Config, host: &str, listening: SocketAddr) -> String {
    let host = match (&config.relay_host, config.acme_domains.first()) {
        (None, Some(domain)) => domain.as_str(),
        _ => host,
    };
    let public = config
        .shared_port_public
        .clone()
        .unwrap_or_else(|| format!("{host}:{}", listening.port()));
    let scheme = if config.serves_tls() { "turns" } else { "turn" };
    format!("{scheme}:{public}?transport=tcp")
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

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn the_shared_port_is_advertised_under_the_name_its_certificate_has() {
        let listening: SocketAddr = "0.0.0.0:443".parse().unwrap();
        let url = |args: &[&str]| {
            let config = Config::parse_from(
                [&["signaling", "--with-relay", "--shared-port"], args].concat(),
            );
            // As `start` resolves it: `--relay-host`, else the relay's listening IP.
            let host = url_host(config.relay_host.as_deref(), "192.0.2.1".parse().unwrap());
            shared_port_url(&config, &host.unwrap(), listening)
        };
        let acme = ["--acme-domain", "sig.example", "--acme-cache", "/tmp/c"];
        assert_eq!(url(&acme), "turns:sig.example:443?transport=tcp");
        let named = [&acme[..], &["--relay-host", "turn.example"]].concat();
        assert_eq!(url(&named), "turns:turn.example:443?transport=tcp");
        assert_eq!(url(&[]), "turn:192.0.2.1:443?transport=tcp");
        let v6 = ["--relay-host", "2001:db8::7"];
        assert_eq!(url(&v6), "turn:[2001:db8::7]:443?transport=tcp");
    }

    #[test]
    fn an_ipv6_host_is_written_in_brackets_and_a_wildcard_needs_a_name() {
        let v6: IpAddr = "::1".parse().unwrap();
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(url_host(None, v6).unwrap(), "[::1]");
        assert_eq!(url_host(None, v4).unwrap(), "127.0.0.1");
        assert_eq!(url_host(Some("::1"), v4).unwrap(), "[::1]");
        assert_eq!(url_host(Some("[::1]"), v4).unwrap(), "[::1]");
        assert_eq!(url_host(Some("turn.example"), v6).unwrap(), "turn.example");
        let any: IpAddr = "::".parse().unwrap();
        assert!(url_host(None, any).is_err());
        assert_eq!(url_host(Some("turn.example"), any).unwrap(), "turn.example");
    }

    #[test]
    fn the_shared_port_public_address_is_host_and_port_with_an_ipv6_host_in_brackets() {
        for good in ["turn.example:443", "192.0.2.7:443", "[2001:db8::7]:443"] {
            assert!(check_host_port(good).is_ok(), "{good}");
        }
        for bad in [
            "turn.example",
            "turn.example:0",
            ":443",
            "2001:db8::7:443",
            "[::1]:x",
        ] {
            assert!(check_host_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_peers_are_allowed_only_when_every_turn_client_is_local() {
        let loopback: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        let public: SocketAddr = "0.0.0.0:3478".parse().unwrap();
        let allowed_at = |args: &[&str], relay_listen: SocketAddr, decided: Option<bool>| {
            let config = Config::parse_from([&["signaling", "--with-relay"], args].concat());
            relay_config(
                &config,
                relay_listen,
                "127.0.0.1:0".parse().unwrap(),
                decided,
            )
            .expect("relay config")
            .0
            .allow_loopback_peers
        };
        let allowed =
            |args: &[&str], relay_listen: SocketAddr| allowed_at(args, relay_listen, None);
        let local = ["--listen", "127.0.0.1:8080"];
        assert!(allowed(&local, loopback));
        assert!(allowed(
            &[&local[..], &["--shared-port"]].concat(),
            loopback
        ));
        assert!(!allowed(&local, public));
        // TURN on a public signaling port, or behind a balancer: remote clients.
        let shared_public = ["--listen", "0.0.0.0:443", "--shared-port"];
        assert!(!allowed(&shared_public, loopback));
        let balanced = [&local[..], &["--shared-port", "--proxy-protocol"]].concat();
        assert!(!allowed(&balanced, loopback));
        // The relay reachable another way: its own listeners, a name clients resolve
        // elsewhere, a forward in front of the shared port.
        assert!(!allowed(
            &[&local[..], &["--relay-arg=--listen=0.0.0.0:3478"]].concat(),
            loopback
        ));
        assert!(!allowed(
            &[
                &local[..],
                &[
                    "--relay-arg=--tls-listen=0.0.0.0:5349",
                    "--relay-arg=--tls-self-signed"
                ]
            ]
            .concat(),
            loopback
        ));
        assert!(!allowed(
            &[&local[..], &["--relay-host", "turn.example"]].concat(),
            loopback
        ));
        assert!(allowed(
            &[&local[..], &["--relay-host", "localhost"]].concat(),
            loopback
        ));
        let forwarded = [
            &local[..],
            &["--shared-port", "--shared-port-public", "rtc.example:443"],
        ]
        .concat();
        assert!(!allowed(&forwarded, loopback));
        // A reload keeps the decision made at start (what it rests on needs a restart).
        assert!(!allowed_at(&local, loopback, Some(false)));
        // The relay's own flag decides when given.
        let given = [
            "--listen",
            "0.0.0.0:443",
            "--shared-port",
            "--relay-arg=--allow-loopback-peers",
        ];
        assert!(allowed(&given, loopback));
    }
}
