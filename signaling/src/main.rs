//! The `signaling` binary: parse the configuration, start logging, bind, serve until SIGTERM or
//! SIGINT, drain, exit. SIGHUP reloads the configuration (`signaling::reload`).

use anyhow::Context as _;
use clap::CommandFactory as _;
use clap::parser::ValueSource;
use signaling::config::Config;
use startup::admin_listen::AdminListen;
use startup::config_file::ConfigError;
use startup::reload::Reloading;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let (mut config, matches) = match startup::config_file::load::<Config, _, _>(args.clone()) {
        Ok(loaded) => loaded,
        Err(ConfigError::Clap(e)) => e.exit(),
        Err(e) => return Err(e.into()),
    };
    // Before anything starts (the in-process relay would), as clap's own usage errors are:
    // status 2, `error: invalid configuration: --shared-port needs --with-relay`.
    if let Err(e) = config.check_combinations() {
        Config::command()
            .error(clap::error::ErrorKind::MissingRequiredArgument, e)
            .exit();
    }
    let log_filter = startup::logging::init(config.log_format, &config.log_filter);
    tracing::info!(
        "starting; configuration:\n{}",
        startup::summary::summary(&Config::command(), &matches)
    );

    // Before anything is printed: from then on a SIGHUP reloads and SIGTERM or SIGINT drains;
    // neither ends the process unannounced.
    let mut hangups = startup::signals::reload_requests().context("cannot listen for SIGHUP")?;
    let mut signals = startup::signals::ShutdownSignals::install()
        .context("cannot listen for SIGTERM and SIGINT")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let named_secrets = !config.turn_secrets.is_empty();
    signaling::agree_turn_secret_if_needed(&mut config).await?;
    #[cfg(feature = "with-relay")]
    let local_relay = if config.with_relay {
        Some(signaling::local_relay::LocalRelay::start(
            &mut config,
            addr,
        )?)
    } else {
        None
    };
    // A secret agreed through Redis or generated for the in-process relay stays in force
    // across reloads of a configuration that names none.
    let supplied_secrets = if named_secrets {
        Vec::new()
    } else {
        config.turn_secrets.clone()
    };
    let admin_listen_explicit =
        matches.value_source("admin_listen") != Some(ValueSource::DefaultValue);
    let reloading = Reloading::new(args, matches, supplied_secrets, log_filter);
    let state = signaling::AppState::new(config).await?;
    #[cfg(feature = "with-relay")]
    if let Some(local_relay) = &local_relay {
        let _ = state.relay_metrics.set(local_relay.metrics());
        if state.config.shared_port {
            let _ = state.relay_intake.set(local_relay.stream_intake());
        }
        let _ = state.relay_usage.set(local_relay.usage());
        let _ = state.relay_drain.set(local_relay.drain_switch());
    }
    // In a cluster the in-process relay's usage goes to Redis too, beside the fleet relays':
    // every node's `/v1/usage` reports it, and it outlives this process.
    #[cfg(feature = "with-relay")]
    let usage_publisher = match (&local_relay, &state.fleet) {
        (Some(local_relay), Some((_, conn))) => {
            let node = state.hub.node_id().unwrap_or("local");
            let publisher = std::sync::Arc::new(relay::usage_publisher::UsagePublisher::new(
                conn.clone(),
                &format!("signaling-{node}"),
                local_relay.usage(),
                state.config.redis_timeout,
            ));
            let every = state.config.node_heartbeat;
            let running = std::sync::Arc::clone(&publisher);
            let task = tokio::spawn(async move { running.run(every).await });
            Some((publisher, task))
        }
        _ => None,
    };
    // Tests and scripts parse this line for the bound address.
    let (http, ws) = if state.tls.is_some() {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    // Bound before anything is printed: a failure must not follow a `listening on` line.
    let admin = match state.config.admin_listen {
        AdminListen::Addr(wanted) => Some(
            signaling::admin::bind(wanted, admin_listen_explicit)
                .await
                .with_context(|| format!("cannot listen on --admin-listen {wanted}"))?,
        ),
        AdminListen::Disabled => None,
    };
    println!("listening on {http}://{addr}");
    if let Some(pem) = &state.tls_self_signed_pem {
        print!("{pem}");
    }
    let admin_stop = CancellationToken::new();
    if let Some((listener, bound)) = admin {
        println!("admin http://{bound}");
        tokio::spawn(signaling::admin::serve(
            listener,
            std::sync::Arc::clone(&state),
            admin_stop.clone(),
        ));
    }

    // A private or self-signed certificate is trusted by `peer` with `--ca`.
    let trust = if state.tls.is_some() && state.config.acme_domains.is_empty() {
        " --ca CA.pem"
    } else {
        ""
    };
    // An ACME certificate names the domain only: the address would not pass its check.
    let host = match state.config.acme_domains.first() {
        Some(domain) if addr.port() == 443 => domain.clone(),
        Some(domain) => format!("{domain}:{}", addr.port()),
        None => addr.to_string(),
    };
    println!(
        "web demo: open {http}://{host}/r/demo in two browser tabs (or `peer join {ws}://{host}/ws/demo{trust}`)"
    );

    // SIGHUP reads the configuration and the certificate files again (and no longer ends the
    // process).
    #[cfg(feature = "with-relay")]
    let local_relay = std::sync::Arc::new(tokio::sync::Mutex::new(local_relay));
    {
        let state = std::sync::Arc::clone(&state);
        let mut reloading = reloading;
        #[cfg(feature = "with-relay")]
        let local_relay = std::sync::Arc::clone(&local_relay);
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                #[cfg(feature = "with-relay")]
                signaling::reload::reload(
                    &mut reloading,
                    &state,
                    local_relay.lock().await.as_mut(),
                )
                .await;
                #[cfg(not(feature = "with-relay"))]
                signaling::reload::reload(&mut reloading, &state).await;
            }
        });
    }
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let name = signals.recv().await;
            tracing::info!(signal = name, "shutting down");
            shutdown.cancel();
            // A second signal does not wait for the drain.
            let name = signals.recv().await;
            tracing::warn!(signal = name, "second signal: exiting without draining");
            std::process::exit(130);
        });
    }
    // The in-process relay drains with the server, on a signal or `POST /v1/drain` (the drain
    // refuses new allocations at once, `AppState::relay_drain`); its allocations get what is
    // left of `--drain-timeout` once the server has drained.
    #[cfg(feature = "with-relay")]
    let relay_drain = {
        let state = std::sync::Arc::clone(&state);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = state.drain_requested.cancelled() => {}
            }
            std::time::Instant::now() + state.config.drain_timeout
        })
    };
    signaling::serve(listener, state, shutdown).await?;
    admin_stop.cancel();
    #[cfg(feature = "with-relay")]
    {
        let until = relay_drain
            .await
            .unwrap_or_else(|_| std::time::Instant::now());
        let taken = local_relay.lock().await.take();
        if let Some(local_relay) = taken {
            local_relay.finish_drain(until).await;
            if let Some((publisher, task)) = usage_publisher {
                task.abort();
                publisher
                    .publish_last(3, std::time::Duration::from_secs(1))
                    .await;
            }
        }
    }
    tracing::info!("stopped");
    Ok(())
}
