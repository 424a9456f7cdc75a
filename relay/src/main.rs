//! The `relay` binary: reads the configuration, starts the relay, prints the bound addresses
//! (one `listening <transport> <addr>` line each, then `admin http://<addr>`), and drains on
//! SIGTERM/SIGINT (a second signal stops at once).

use std::io::Write as _;

use anyhow::Context as _;
use relay::config::{ConfigError, LogFormat};
use relay::{Config, Relay};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let config = match Config::load() {
        Ok(c) => c,
        Err(ConfigError::Clap(e)) => e.exit(),
        Err(e) => return Err(e.into()),
    };
    init_tracing(config.log_format);
    tracing::info!("configuration:\n{}", config.redacted_summary());
    let drain_timeout = config.drain_timeout;
    let handle = Relay::start(config).context("starting the relay")?;

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
    writeln!(out, "ready")?;
    out.flush()?;
    drop(out);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let signal = wait_for_signal().await?;
        tracing::info!(signal, ?drain_timeout, "draining: new allocations refused");
        tokio::select! {
            () = handle.drain(drain_timeout) => {}
            second = wait_for_signal() => {
                tracing::info!(signal = second.unwrap_or("?"), "second signal: stopping now");
            }
        }
        anyhow::Ok(())
    })?;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
