//! What every binary of the workspace (`signaling`, `relay`, `peer`) does at start-up, written
//! once so that the binaries agree:
//!
//! - [`admin_listen`]: `--admin-listen ADDR|none`;
//! - [`Secret`]: a configured secret that never shows in logs;
//! - [`duration`]: `250ms`, `30s`, `10m`, `1h` or a plain number of seconds, parsed and printed;
//! - [`config_file`]: a `--config` TOML file whose keys are the long flag names, under flags
//!   and environment variables;
//! - [`summary`]: the configuration as a readable block for the start-up log, secrets redacted;
//! - [`logging`]: `--log-format text|json` on stderr, colours only on a terminal, through a
//!   `--log-filter` that SIGHUP can replace;
//! - [`signals`]: SIGTERM or SIGINT, and SIGHUP;
//! - [`reload`]: what a SIGHUP reload changed, flag by flag, and its log lines;
//! - `tls` (feature `tls`): a TLS server configuration from PEM files, or self-signed;
//! - `proxy_protocol` (feature `proxy-protocol`): the PROXY header at the start of a connection;
//! - [`first_bytes`]: TURN or HTTP on one port, told apart by a connection's first bytes;
//! - [`source_limit`]: how many connections one source address may hold at once.
//! - `acme` (feature `acme`): certificates obtained and renewed from an ACME CA (tls-alpn-01).

#[cfg(feature = "acme")]
pub mod acme;
pub mod admin_listen;
pub mod config_file;
pub mod duration;
pub mod first_bytes;
pub mod logging;
#[cfg(feature = "proxy-protocol")]
pub mod proxy_protocol;
pub mod reload;
mod secret;
pub mod signals;
pub mod source_limit;
pub mod summary;
#[cfg(feature = "tls")]
pub mod tls;

pub use secret::Secret;
