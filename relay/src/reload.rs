//! SIGHUP in the `relay` binary: the configuration is read again as at start-up (the same
//! command line, the environment, the `--config` file) and validated; the settings a running
//! relay can swap ([`RELOADABLE`]) take effect in every worker ([`crate::RelayHandle::reload`])
//! and the log filter changes; a change to any other setting is logged as needing a restart
//! and not applied. An invalid configuration is refused whole (logged, counted) and the one
//! in force stays. See `docs/relay.md`, "Reloading".

use std::ffi::OsString;

use clap::{ArgMatches, CommandFactory as _};
use startup::logging::LogFilter;
use startup::reload::{Changes, log_refused};

use crate::RelayHandle;
use crate::config::{Config, Secret};

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

/// What the binary keeps from start-up to reload its configuration.
#[derive(Debug)]
pub struct Reloader {
    /// The command line the relay was started with.
    args: Vec<OsString>,
    /// The configuration in force, as parsed (to name what a reload changes).
    matches: ArgMatches,
    /// The TURN secret agreed through Redis at start-up, kept when the configuration names
    /// no credentials.
    supplied_secrets: Vec<Secret>,
    log_filter: LogFilter,
}

impl Reloader {
    /// From the start-up command line, its parse, the secrets the relay was given beyond the
    /// configuration (agreed through Redis), and the log filter.
    pub fn new(
        args: Vec<OsString>,
        matches: ArgMatches,
        supplied_secrets: Vec<Secret>,
        log_filter: LogFilter,
    ) -> Self {
        Self {
            args,
            matches,
            supplied_secrets,
            log_filter,
        }
    }

    /// Reads the configuration again and applies it to `relay` (see the module docs).
    pub async fn reload(&mut self, relay: &RelayHandle) {
        let (mut config, matches) = match Config::load_from(self.args.iter().cloned()) {
            Ok(loaded) => loaded,
            Err(e) => {
                relay.metrics().config_reload(false);
                log_refused("configuration", &e);
                return;
            }
        };
        if config.auth_secrets.is_empty() && config.users.is_empty() {
            config.auth_secrets.clone_from(&self.supplied_secrets);
        }
        if let Err(e) = relay.reload(&config).await {
            log_refused("configuration", &e);
            return;
        }
        Changes::between(&Config::command(), &self.matches, &matches, RELOADABLE)
            .log("configuration");
        if let Err(e) = self.log_filter.set(&config.log_filter) {
            tracing::warn!(error = %e, "the log filter stays");
        }
        self.matches = matches;
    }
}
