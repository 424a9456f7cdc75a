//! Logs on stderr, as text or JSON lines, through a filter (`--log-filter`, or `RUST_LOG`;
//! default `info`) that SIGHUP can replace ([`LogFilter`]).

use std::io::IsTerminal as _;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

/// `--log-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured only when stderr is a terminal).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The value parser of `--log-filter`: a `RUST_LOG`-style directive list (`info`,
/// `warn,relay=debug`) that parses, kept as written.
pub fn parse_filter(s: &str) -> Result<String, String> {
    EnvFilter::builder()
        .parse(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("`{s}` is not a log filter: {e}"))
}

/// The filter in force, which [`LogFilter::set`] replaces (on SIGHUP) without restarting
/// logging.
#[derive(Debug, Clone)]
pub struct LogFilter {
    handle: reload::Handle<EnvFilter, Registry>,
}

impl LogFilter {
    /// Filters by `filter` from now on (checked with [`parse_filter`] first).
    pub fn set(&self, filter: &str) -> Result<(), String> {
        let parsed = EnvFilter::builder()
            .parse(filter)
            .map_err(|e| format!("`{filter}` is not a log filter: {e}"))?;
        self.handle.reload(parsed).map_err(|e| e.to_string())
    }
}

/// Starts logging to stderr in `format`, filtered by `filter` (a directive list that
/// [`parse_filter`] accepted; one that does not parse falls back to `info`). Text has ANSI
/// colours only when stderr is a terminal, so files and journald get plain lines.
pub fn init(format: LogFormat, filter: &str) -> LogFilter {
    let filter = EnvFilter::builder()
        .parse(filter)
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let layer = fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => registry
            .with(layer.with_ansi(std::io::stderr().is_terminal()))
            .init(),
        LogFormat::Json => registry.with(layer.json()).init(),
    }
    LogFilter { handle }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_or_say_why_not() {
        assert_eq!(parse_filter("info").unwrap(), "info");
        assert!(parse_filter("warn,relay=debug").is_ok());
        assert!(parse_filter("relay=notalevel").is_err());
    }
}
