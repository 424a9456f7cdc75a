//! The `relay` binary: reads the configuration, starts the relay, prints the bound addresses
//! (one `listening <transport> <addr>` line each, then `admin http://<addr>`), reads its
//! configuration and certificate files again on SIGHUP (`relay::reload`), and drains on SIGTERM/SIGINT (a second signal stops at
//! once). With `--register`, it joins the relay
//! fleet in Redis, marks itself draining there first thing on SIGTERM, and leaves it when it
//! stops.

use std::io::Write as _;

use anyhow::Context as _;
use std::sync::Arc;

use relay::config::ConfigError;
use relay::registration::{FleetSettings, Registration};
use relay::{Config, Relay};
use startup::reload::Reloading;

fn main() -> anyhow::Result<()> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let (mut config, matches) = match Config::load_from(args.iter().cloned()) {
        Ok(loaded) => loaded,
        Err(ConfigError::Load(startup::config_file::ConfigError::Clap(e))) => e.exit(),
        Err(e) => return Err(e.into()),
    };
    let log_filter = startup::logging::init(config.log_format, &config.log_filter);
    tracing::info!("configuration:\n{}", Config::summary(&matches));
    let mut supplied_secrets = Vec::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Before anything is printed: from then on a SIGHUP reloads (the configuration and the
    // certificate files) and SIGTERM or SIGINT drains; neither ends the process unannounced.
    let (mut hangups, mut shutdown) = {
        let _entered = runtime.enter();
        (
            startup::signals::reload_requests()?,
            startup::signals::ShutdownSignals::install()?,
        )
    };
    let mut agreed_turn_secret = None;
    if !config.register.is_empty() && config.auth_secrets.is_empty() && config.users.is_empty() {
        // A fleet relay given no credentials takes the TURN secret signaling agreed on (or
        // proposes one).
        let candidate = format!("{:032x}", rand::random::<u128>());
        let agreed = runtime
            .block_on(fleet::secret::agree_turn_secret(
                &config.register,
                std::time::Duration::from_secs(2),
                &candidate,
            ))
            .context("--register: cannot agree on a TURN secret through redis at start-up")?;
        let agreed = relay::config::Secret::new(agreed);
        agreed_turn_secret = Some(agreed.clone());
        supplied_secrets.push(agreed);
        config.auth_secrets.clone_from(&supplied_secrets);
        tracing::info!("TURN secret agreed through redis");
    }
    if config.auth_secrets.is_empty() && config.users.is_empty() {
        tracing::warn!(
            "no credentials (--user, --turn-secret or --register): every Allocate will be \
             refused; the relay answers STUN Binding only"
        );
    }
    let drain_timeout = config.drain_timeout;
    let fleet_config = config.clone();
    let handle = Relay::start(config).context("starting the relay")?;
    let registration = match FleetSettings::from_config(&fleet_config, handle.addrs()) {
        Some(mut settings) => {
            settings.agreed_turn_secret = agreed_turn_secret;
            Some(Arc::new(
                runtime
                    .block_on(Registration::start(settings, handle.status()))
                    .context("--register: cannot register in the relay fleet")?,
            ))
        }
        None => None,
    };

    let addrs = handle.addrs().clone();
    let mut out = std::io::stdout().lock();
    for a in &addrs.udp {
        writeln!(out, "listening udp {a}")?;
    }
    for a in &addrs.tcp {
        writeln!(out, "listening tcp {a}")?;
    }
    for a in &addrs.tls {
        writeln!(out, "listening tls {a}")?;
    }
    for ip in &addrs.relay_ips {
        writeln!(out, "relay ip {ip}")?;
    }
    if let Some(a) = addrs.admin {
        writeln!(out, "admin http://{a}")?;
    }
    if let Some(pem) = &addrs.tls_self_signed_pem {
        write!(out, "{pem}")?;
    }
    if let Some(registration) = &registration {
        writeln!(out, "fleet id {}", registration.id())?;
    }
    writeln!(out, "ready")?;
    out.flush()?;
    drop(out);

    runtime.block_on(async move {
        let (stop_heartbeats, stopped) = tokio::sync::watch::channel(false);
        if let Some(registration) = &registration {
            tokio::spawn(Arc::clone(registration).run(stopped));
        }
        let mut reloading = Reloading::new(args, matches, supplied_secrets, log_filter);
        let signal = loop {
            tokio::select! {
                signal = shutdown.recv() => break signal,
                Some(()) = hangups.recv() => relay::reload::reload(&mut reloading, &handle).await,
            }
        };
        tracing::info!(signal, ?drain_timeout, "draining: new allocations refused");
        handle.begin_drain();
        if let Some(registration) = &registration {
            registration.mark_draining().await;
        }
        tokio::select! {
            () = handle.wait_drained(drain_timeout) => {}
            second = shutdown.recv() => {
                tracing::info!(signal = second, "second signal: stopping now");
            }
        }
        // Waits for the workers, which bill their last counts on their way out.
        handle.shutdown().await;
        let _ = stop_heartbeats.send(true);
        if let Some(registration) = &registration {
            // The workers' last counts are in the ledger now.
            registration
                .usage()
                .publish_last(3, std::time::Duration::from_secs(1))
                .await;
            registration.withdraw().await;
        }
        anyhow::Ok(())
    })?;
    tracing::info!("stopped");
    Ok(())
}
