//! SIGHUP in `signaling`: the configuration is read again as at start-up (the same command
//! line, the environment, the `--config` file) and validated; the settings a running server
//! can swap ([`RELOADABLE`]) take effect, the certificate files are read again, the in-process
//! relay (`--with-relay`) takes its part, and the log filter changes. A change to any other
//! setting is logged as needing a restart and not applied. An invalid configuration is
//! refused whole (logged, counted in `signaling_config_reloads_total{result="refused"}`) and
//! the one in force stays. See `docs/signaling.md`, "Reloading".
//!
//! The swapped settings are read where they are used through [`AppState::live`]
//! ([`LiveSettings`]); `AppState::config` keeps the configuration as started.

use std::sync::{Arc, PoisonError, RwLock};

use startup::reload::{Reloading, log_refused};
use startup::tls::FreshCertificate;

use crate::AppState;
use crate::auth::Authenticator;
use crate::client_ip::IpLimits;
use crate::config::{Config, Secret};
use crate::error::Error;

/// The argument ids of the settings a reload applies.
pub const RELOADABLE: &[&str] = &[
    "jwt_secret",
    "api_keys",
    "turn_secrets",
    "rate_limit",
    "rate_burst",
    "max_connections",
    "max_connections_per_ip",
    "max_sessions_per_ip",
    "join_rate_per_ip",
    "join_burst_per_ip",
    "allowed_origins",
    "log_filter",
    // With `--with-relay`: the in-process relay reloads what it can of them ([`HANDED_ON`]).
    "relay_args",
];

/// Of [`RELOADABLE`], what the in-process relay applies (what it can) and logs itself: the
/// server's reload line names a change of it as handed on, not as applied.
pub const HANDED_ON: &[(&str, &str)] = &[("relay_args", "the in-process relay")];

/// The settings a reload swaps that are read per request or per message.
#[derive(Debug, Clone)]
pub struct LiveSettings {
    /// `--jwt-secret`: present when joins need a token.
    pub auth: Option<Arc<Authenticator>>,
    /// `--api-key`s of the backend API.
    pub api_keys: Vec<Secret>,
    /// `--rate-limit`: messages per second per connection.
    pub rate_limit: f64,
    /// `--rate-burst`: messages at once per connection.
    pub rate_burst: f64,
    /// `--max-connections`: open WebSockets and HTTP streams of the node.
    pub max_connections: usize,
    /// `--allowed-origin`s (empty: any).
    pub allowed_origins: Vec<String>,
}

impl LiveSettings {
    /// The live part of `config`.
    pub fn of(config: &Config) -> Self {
        Self {
            auth: config
                .jwt_secret
                .as_ref()
                .map(|secret| Arc::new(Authenticator::new(secret))),
            api_keys: config.api_keys.clone(),
            rate_limit: config.rate_limit,
            rate_burst: config.rate_burst,
            max_connections: config.max_connections,
            allowed_origins: config.allowed_origins.clone(),
        }
    }
}

/// The [`LiveSettings`] in force, replaced whole by a reload.
#[derive(Debug)]
pub struct Live(RwLock<Arc<LiveSettings>>);

impl Live {
    /// The settings of `config`.
    pub fn new(config: &Config) -> Self {
        Self(RwLock::new(Arc::new(LiveSettings::of(config))))
    }

    /// The settings in force (a request keeps the ones it started with).
    pub fn get(&self) -> Arc<LiveSettings> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn replace(&self, settings: LiveSettings) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(settings);
    }
}

/// A validated configuration, ready to be put in force.
#[derive(Debug)]
pub struct PreparedReload {
    live: LiveSettings,
    ip_limits: IpLimits,
    signing_secret: Option<Secret>,
    rate: (f64, f64),
    certificate: Option<FreshCertificate>,
}

impl AppState {
    /// The settings a reload swaps, as in force now.
    pub fn live(&self) -> Arc<LiveSettings> {
        self.live_settings.get()
    }

    /// Checks `config` whole (its values, the certificate files read again) without
    /// changing anything; [`Self::apply_reload`] puts it in force.
    pub fn prepare_reload(&self, config: &Config) -> Result<PreparedReload, Error> {
        config.validate()?;
        let certificate = match &self.tls_files {
            Some(files) => match files.read_again() {
                Ok(fresh) => Some(fresh),
                Err(e) => {
                    self.metrics.tls_reload(false);
                    return Err(Error::Config(format!("TLS: {e}")));
                }
            },
            None => None,
        };
        Ok(PreparedReload {
            live: LiveSettings::of(config),
            ip_limits: IpLimits {
                max_connections: config.max_connections_per_ip,
                join_rate: config.join_rate_per_ip,
                join_burst: config.join_burst_per_ip,
                max_sessions: config.max_sessions_per_ip,
            },
            signing_secret: config.turn_secrets.first().cloned(),
            rate: (config.rate_limit, config.rate_burst),
            certificate,
        })
    }

    /// Puts a prepared configuration in force: new requests, messages and TLS handshakes see
    /// it; connections and sessions that exist go on (a new rate applies to their next
    /// message, a new secret to the next credentials minted).
    pub fn apply_reload(&self, prepared: PreparedReload) {
        if let (Some(files), Some(fresh)) = (&self.tls_files, prepared.certificate) {
            files.install(fresh);
            // The expiry first: a reload counted shows the certificate it put in force.
            self.metrics.tls_certificate(files.not_after());
            self.metrics.tls_reload(true);
        }
        self.live_settings.replace(prepared.live);
        self.clients.set_limits(prepared.ip_limits);
        self.send_rates.set_rate(prepared.rate.0, prepared.rate.1);
        self.ice.set_signing_secret(prepared.signing_secret);
    }
}

/// Reads the configuration again and applies it (see the module docs).
pub async fn reload(
    reloading: &mut Reloading,
    state: &AppState,
    #[cfg(feature = "with-relay")] local_relay: Option<&mut crate::local_relay::LocalRelay>,
) {
    let refuse = |reason: &dyn std::fmt::Display| {
        state.metrics.config_reload(false);
        log_refused("configuration", reason);
    };
    let (mut config, matches) = match reloading.load::<Config>() {
        Ok(loaded) => loaded,
        Err(e) => return refuse(&e),
    };
    if config.turn_secrets.is_empty() {
        config.turn_secrets = reloading.supplied_secrets().to_vec();
    }
    let prepared = match state.prepare_reload(&config) {
        Ok(prepared) => prepared,
        Err(e) => return refuse(&e),
    };
    #[cfg(feature = "with-relay")]
    if let Some(local_relay) = local_relay
        && let Err(e) = local_relay.reload(&config).await
    {
        return refuse(&e);
    }
    state.apply_reload(prepared);
    state.metrics.config_reload(true);
    reloading.applied::<Config>(matches, RELOADABLE, HANDED_ON, &config.log_filter);
}
