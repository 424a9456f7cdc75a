//! SIGHUP in both binaries: the configuration is read again exactly as at start-up (the
//! command line kept from then, the environment, the `--config` file) and validated; then it
//! is compared flag by flag with the one in force ([`Changes`]) and each binary applies the
//! flags it can swap while running. The comparison and the log lines live here, so that both
//! binaries report a reload alike:
//!
//! - `configuration reloaded: --user-quota 10 -> 5, --turn-secret <redacted> -> <redacted>`
//!   (info), and after a `;` the changes handed to a part that logs what it applied
//!   ([`Changes::handed_on`]);
//! - `configuration reload removed --jwt-secret: ...` (warn: a secret the file no longer names
//!   is gone, and what it guarded is off);
//! - `configuration reload: changed but needs a restart (not applied): --listen` (warn);
//! - `configuration reload refused, the configuration in force stays: <reason>` (warn).

use std::ffi::OsString;
use std::fmt;

use clap::{ArgMatches, Command, CommandFactory, FromArgMatches};

use crate::Secret;
use crate::config_file::{self, ConfigError};
use crate::logging::LogFilter;
use crate::summary::{is_secret, redact_values};

/// What a binary keeps from start-up to reload its configuration: the command line, the
/// configuration in force as parsed (to name what a reload changes), the TURN secrets it was
/// given beyond its configuration (agreed through Redis, generated), and the log filter.
#[derive(Debug)]
pub struct Reloading {
    args: Vec<OsString>,
    running: Running,
    supplied_secrets: Vec<Secret>,
    log_filter: LogFilter,
}

impl Reloading {
    /// From the start-up command line and its parse, the secrets in force that the
    /// configuration did not name (kept when a reloaded one names none), and the log filter.
    pub fn new(
        args: Vec<OsString>,
        matches: ArgMatches,
        supplied_secrets: Vec<Secret>,
        log_filter: LogFilter,
    ) -> Self {
        Self {
            args,
            running: Running::new(matches),
            supplied_secrets,
            log_filter,
        }
    }

    /// The configuration read again as at start-up (not yet validated by the binary).
    pub fn load<C: CommandFactory + FromArgMatches>(&self) -> Result<(C, ArgMatches), ConfigError> {
        config_file::load::<C, _, _>(self.args.iter().cloned())
    }

    /// The secrets to use when the reloaded configuration names none.
    pub fn supplied_secrets(&self) -> &[Secret] {
        &self.supplied_secrets
    }

    /// A reload of `matches` took effect: applies `log_filter` (first, so that the new filter
    /// decides what of this reload is logged), logs what changed (see [`Changes`]), and keeps
    /// `matches` as the configuration in force. `handed_on` names, of `reloadable`, the
    /// settings handed to a part that applies what it can of them and logs that itself
    /// (signaling's `--relay-arg`, to its in-process relay), with that part
    /// ([`Changes::handed_on`]).
    pub fn applied<C: CommandFactory>(
        &mut self,
        matches: ArgMatches,
        reloadable: &[&str],
        handed_on: &[(&str, &str)],
        log_filter: &str,
    ) {
        if let Err(e) = self.log_filter.set(log_filter) {
            tracing::warn!(error = %e, "the log filter stays");
        }
        let command = C::command();
        let changes = self
            .running
            .reloaded(&command, matches, reloadable, handed_on);
        changes.log("configuration");
    }
}

/// The parses of a configuration a process runs with, kept across reloads (see [`InForce`]).
#[derive(Debug)]
pub struct Running {
    /// As started: what the settings that need a restart run with.
    started: ArgMatches,
    /// As last reloaded: what the reloadable settings run with.
    reloaded: ArgMatches,
}

impl Running {
    /// A configuration as started.
    pub fn new(started: ArgMatches) -> Self {
        Self {
            reloaded: started.clone(),
            started,
        }
    }

    /// A reload of `matches` (parses of `command`) took effect: what changed from the
    /// configuration in force (see [`Changes::between`]); `matches` is the last reloaded one
    /// from now on.
    pub fn reloaded(
        &mut self,
        command: &Command,
        matches: ArgMatches,
        reloadable: &[&str],
        handed_on: &[(&str, &str)],
    ) -> Changes {
        let in_force = InForce {
            started: &self.started,
            reloaded: &self.reloaded,
        };
        let changes = Changes::between(command, in_force, &matches, reloadable, handed_on);
        self.reloaded = matches;
        changes
    }
}

/// The configuration a process runs with: a setting that needs a restart still has its
/// start-up value (`started`), whatever later files said; a reloadable one has the value of the
/// last reload that took effect (`reloaded`).
#[derive(Debug, Clone, Copy)]
pub struct InForce<'a> {
    pub started: &'a ArgMatches,
    pub reloaded: &'a ArgMatches,
}

impl<'a> InForce<'a> {
    /// A configuration never reloaded.
    pub fn started(matches: &'a ArgMatches) -> Self {
        Self {
            started: matches,
            reloaded: matches,
        }
    }
}

/// What a reload changed, by flag.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Changed flags that take effect now: `--user-quota 10 -> 5`; a secret shows as
    /// `--turn-secret <redacted>`.
    pub applied: Vec<String>,
    /// Changed flags that only a restart applies, as `--listen`.
    pub needs_restart: Vec<String>,
    /// Secret flags that had a value and have none now, as `--jwt-secret` (applied too).
    pub secrets_removed: Vec<String>,
    /// Changed flags handed to a part that applies what it can of them and says so itself:
    /// `--relay-arg A -> B (handed to the in-process relay, ...)`.
    pub handed_on: Vec<String>,
}

impl Changes {
    /// Compares the configuration in force and `new` (parses of `command`) flag by flag.
    /// `reloadable` names the argument ids the binary applies while running; every other
    /// change needs a restart. `handed_on` names, of `reloadable`, those handed to a part that
    /// applies what it can of them and logs that itself (argument id, the part): their changes
    /// go to [`Self::handed_on`], not [`Self::applied`].
    pub fn between(
        command: &Command,
        old: InForce<'_>,
        new: &ArgMatches,
        reloadable: &[&str],
        handed_on: &[(&str, &str)],
    ) -> Self {
        let mut changes = Self::default();
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            let is_reloadable = reloadable.contains(&id);
            let in_force = if is_reloadable {
                old.reloaded
            } else {
                old.started
            };
            let (before, after) = (raw_values(in_force, id), raw_values(new, id));
            if before == after {
                continue;
            }
            let name = arg
                .get_long()
                .map_or_else(|| id.to_owned(), |long| format!("--{long}"));
            if !is_reloadable {
                changes.needs_restart.push(name);
                continue;
            }
            let change = if is_secret(arg) {
                let redacted = |v: &[OsString]| if v.is_empty() { "(none)" } else { "<redacted>" };
                if after.is_empty() {
                    changes.secrets_removed.push(name.clone());
                }
                format!("{name} {} -> {}", redacted(&before), redacted(&after))
            } else {
                format!("{name} {} -> {}", shown(&before), shown(&after))
            };
            match handed_on.iter().find(|(handed, _)| *handed == id) {
                Some((_, to)) => changes.handed_on.push(format!(
                    "{change} (handed to {to}, which logs what it applied and what needs a restart)"
                )),
                None => changes.applied.push(change),
            }
        }
        changes
    }

    /// Logs a reload that took effect (`what`: `configuration`, or `relay configuration` for
    /// an embedded relay): one line with the changes applied (and those handed on), and a
    /// warning naming those that need a restart.
    pub fn log(&self, what: &str) {
        let applied = if self.applied.is_empty() {
            "no setting changed".to_owned()
        } else {
            self.applied.join(", ")
        };
        if self.handed_on.is_empty() {
            tracing::info!("{what} reloaded: {applied}");
        } else {
            tracing::info!("{what} reloaded: {applied}; {}", self.handed_on.join(", "));
        }
        if !self.needs_restart.is_empty() {
            tracing::warn!(
                "{what} reload: changed but needs a restart (not applied): {}",
                self.needs_restart.join(", ")
            );
        }
        if !self.secrets_removed.is_empty() {
            tracing::warn!(
                "{what} reload removed {}: the file and environment no longer give it, so what \
                 it guarded or signed is off now (put it back and reload to undo)",
                self.secrets_removed.join(", ")
            );
        }
    }
}

/// Logs a refused reload with its reason, on one line: the configuration in force stays.
pub fn log_refused(what: &str, reason: &dyn fmt::Display) {
    let reason = one_line(&reason.to_string());
    tracing::warn!("{what} reload refused, the configuration in force stays: {reason}");
}

/// A reason of several lines (clap's errors: the error, the arguments it names, a usage line,
/// a pointer to `--help`) as one: its lines joined, without the usage and the pointer.
fn one_line(reason: &str) -> String {
    reason
        .lines()
        .map(str::trim)
        .filter(|line| {
            !line.is_empty()
                && !line.starts_with("Usage:")
                && !line.starts_with("For more information")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn raw_values(matches: &ArgMatches, id: &str) -> Vec<OsString> {
    matches
        .get_raw(id)
        .map(|values| values.map(ToOwned::to_owned).collect())
        .unwrap_or_default()
}

fn shown(values: &[OsString]) -> String {
    if values.is_empty() {
        return "(none)".into();
    }
    let values: Vec<String> = values
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    redact_values(&values).join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    struct Example {
        #[arg(long, default_value_t = 10)]
        user_quota: u32,
        #[arg(long, value_name = "SECRET", value_delimiter = ',')]
        turn_secret: Vec<String>,
        #[arg(long, value_name = "SECRET")]
        jwt_secret: Option<String>,
        #[arg(long, default_value = "127.0.0.1:1")]
        listen: String,
        #[arg(long)]
        verbose: bool,
    }

    #[test]
    fn changes_are_split_into_applied_and_restart_with_secrets_redacted() {
        let parse = |args: &[&str]| {
            Example::command().get_matches_from(std::iter::once("prog").chain(args.iter().copied()))
        };
        let old = parse(&["--turn-secret", "s3cr3t", "--jwt-secret", "j"]);
        let new = parse(&[
            "--turn-secret",
            "n3w",
            "--user-quota",
            "5",
            "--listen",
            "127.0.0.1:2",
            "--verbose",
        ]);
        let reloadable = ["turn_secret", "jwt_secret", "user_quota", "verbose"];
        let from_old = |new| {
            Changes::between(
                &Example::command(),
                InForce::started(&old),
                new,
                &reloadable,
                &[],
            )
        };
        let changes = from_old(&new);
        assert_eq!(
            changes.applied,
            [
                "--user-quota 10 -> 5",
                "--turn-secret <redacted> -> <redacted>",
                "--jwt-secret <redacted> -> (none)",
                "--verbose false -> true"
            ]
        );
        assert_eq!(changes.needs_restart, ["--listen"]);
        assert_eq!(changes.secrets_removed, ["--jwt-secret"]);
        assert_eq!(from_old(&old), Changes::default());
        // A restart-only setting compares with the value it runs with (the started one), not
        // with what the last reload's file said: putting it back is no change.
        let in_force = InForce {
            started: &old,
            reloaded: &new,
        };
        let back = Changes::between(&Example::command(), in_force, &old, &reloadable, &[]);
        assert!(back.needs_restart.is_empty(), "{back:?}");
        assert!(!back.applied.is_empty(), "{back:?}");
        let text = format!("{changes:?}");
        assert!(!text.contains("s3cr3t") && !text.contains("n3w"), "{text}");
    }

    #[test]
    fn a_setting_handed_on_is_not_told_as_applied() {
        #[derive(Debug, Parser)]
        struct Embedding {
            #[arg(long, default_value_t = 10)]
            rate: u32,
            #[arg(long = "relay-arg", allow_hyphen_values = true)]
            relay_args: Vec<String>,
        }
        let parse = |args: &[&str]| {
            Embedding::command()
                .get_matches_from(std::iter::once("prog").chain(args.iter().copied()))
        };
        let old = parse(&["--relay-arg=--relay-ports=46100-46199"]);
        let new = parse(&["--rate", "5", "--relay-arg=--relay-ports=46100-46150"]);
        let changes = Changes::between(
            &Embedding::command(),
            InForce::started(&old),
            &new,
            &["rate", "relay_args"],
            &[("relay_args", "the relay")],
        );
        assert_eq!(changes.applied, ["--rate 10 -> 5"]);
        assert_eq!(
            changes.handed_on,
            [
                "--relay-arg --relay-ports=46100-46199 -> --relay-ports=46100-46150 (handed to \
              the relay, which logs what it applied and what needs a restart)"
            ]
        );
        assert!(changes.needs_restart.is_empty(), "{changes:?}");
    }

    #[test]
    fn a_refused_reload_is_told_on_one_line() {
        let error = Example::command()
            .try_get_matches_from(["prog", "--user-quota", "x"])
            .unwrap_err()
            .to_string();
        assert!(error.lines().count() > 1, "{error}");
        let line = one_line(&error);
        assert!(!line.contains('\n') && !line.contains("--help"), "{line}");
        assert!(
            line.starts_with("error: invalid value 'x' for '--user-quota"),
            "{line}"
        );
    }
}
