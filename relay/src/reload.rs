//! SIGHUP in the `relay` binary: the configuration is read again as at start-up (the same
//! command line, the environment, the `--config` file) and validated; the settings a running
//! relay can swap ([`RELOADABLE`]) take effect in every worker ([`crate::RelayHandle::reload`])
//! and the log filter changes; a change to any other setting is logged as needing a restart
//! and not applied. An invalid configuration is refused whole (logged, counted) and the one
//! in force stays. See `docs/relay.md`, "Reloading".

use startup::reload::{Reloading, log_refused};

use crate::RelayHandle;
use crate::config::{Config, ConfigError};

/// The argument ids of the settings a reload applies: credentials, quotas and rate limits, the
/// peer policy and the log filter. (The certificate files are read again on every reload, at
/// the paths given at start-up.)
pub const RELOADABLE: &[&str] = &[
    "users",
    "auth_secrets",
    "user_quota",
    "total_quota",
    "max_permissions",
    "max_channels",
    "max_bps",
    "unauth_rate",
    "unauth_bytes",
    "allow_loopback_peers",
    "allow_peer",
    "deny_peer",
    "log_filter",
];

/// Reads the configuration again and applies it to `relay` (see the module docs).
pub async fn reload(reloading: &mut Reloading, relay: &RelayHandle) {
    let loaded = reloading
        .load::<Config>()
        .map_err(ConfigError::from)
        .and_then(|(config, matches)| config.validate().map(|()| (config, matches)));
    let (mut config, matches) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            relay.metrics().config_reload(false);
            log_refused("configuration", &e);
            return;
        }
    };
    if config.auth_secrets.is_empty() && config.users.is_empty() {
        config.auth_secrets = reloading.supplied_secrets().to_vec();
    }
    if let Err(e) = relay.reload(&config).await {
        log_refused("configuration", &e);
        return;
    }
    reloading.applied::<Config>(matches, RELOADABLE, &[], &config.log_filter);
}
