//! The configuration as a readable block for the start-up log: one line per setting (hidden
//! flags aside) that has a value, `--flag  value`, marked with where it came from when it is not the default. Values of
//! flags whose value is named `SECRET` or `PASSWORD` (or a `NAME:PASSWORD` pair) are redacted, and
//! so is the password of any URL (`redis://user:PASSWORD@host`) and the value of a flag passed on
//! inside a value (`--relay-arg=--user=NAME:PASSWORD`) whose name says it holds a secret.

use std::fmt::Write as _;

use clap::parser::ValueSource;
use clap::{ArgMatches, Command};

/// The block (see the module docs); each line starts with two spaces.
pub fn summary(command: &Command, matches: &ArgMatches) -> String {
    let rows: Vec<(String, String, &str)> = command
        .get_arguments()
        .filter(|arg| !arg.is_hide_set() && !matches!(arg.get_id().as_str(), "help" | "version"))
        .filter_map(|arg| {
            let id = arg.get_id().as_str();
            let values: Vec<String> = matches
                .get_raw(id)?
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            if values.is_empty() {
                return None;
            }
            let shown = if is_secret(arg) {
                values
                    .iter()
                    .map(|v| redact(v))
                    .collect::<Vec<_>>()
                    .join(",")
            } else {
                values
                    .iter()
                    .map(|v| redact_value(v))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let name = arg
                .get_long()
                .map_or_else(|| id.to_owned(), |long| format!("--{long}"));
            let source = match matches.value_source(id) {
                Some(ValueSource::CommandLine) => "  (flag or file)",
                Some(ValueSource::EnvVariable) => "  (environment)",
                _ => "",
            };
            Some((name, shown, source))
        })
        .collect();
    let width = rows.iter().map(|(name, ..)| name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (name, value, source) in rows {
        let _ = writeln!(out, "  {name:<width$}  {value}{source}");
    }
    out
}

/// Whether `arg` takes a secret: its value is named `SECRET` or `PASSWORD` (or a
/// `NAME:PASSWORD` pair).
pub(crate) fn is_secret(arg: &clap::Arg) -> bool {
    arg.get_value_names().is_some_and(|names| {
        names
            .iter()
            .any(|n| n.as_str().contains("SECRET") || n.as_str().contains("PASSWORD"))
    })
}

/// A value of a flag that is not itself a secret, with what it may still hold redacted: a URL's
/// password, or the value of a flag passed on (`--user=NAME:PASSWORD`, `--turn-secret=S`,
/// `--api-key=K`) whose name contains `secret`, `password`, `user`, `key` or `token`.
pub(crate) fn redact_value(value: &str) -> String {
    if let Some((flag, _)) = value.split_once('=')
        && flag.starts_with("--")
        && ["secret", "password", "user", "key", "token"]
            .iter()
            .any(|word| flag.contains(word))
    {
        return format!("{flag}=<redacted>");
    }
    redact_url_password(value)
}

/// `value` with the password of a URL's user info (`scheme://user:password@host`, or
/// `scheme://password@host`) redacted; any other value as it is.
fn redact_url_password(value: &str) -> String {
    let Some(scheme_end) = value.find("://").map(|i| i + 3) else {
        return value.to_owned();
    };
    let authority_end = value[scheme_end..]
        .find('/')
        .map_or(value.len(), |i| scheme_end + i);
    let Some(at) = value[scheme_end..authority_end]
        .rfind('@')
        .map(|i| scheme_end + i)
    else {
        return value.to_owned();
    };
    let user = match value[scheme_end..at].split_once(':') {
        Some((user, _)) => format!("{user}:"),
        None => String::new(),
    };
    format!("{}{user}<redacted>{}", &value[..scheme_end], &value[at..])
}

/// `<redacted>`, keeping the user name of a `NAME:PASSWORD` pair.
fn redact(value: &str) -> String {
    match value.split_once(':') {
        Some((name, _)) => format!("{name}:<redacted>"),
        None => "<redacted>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    struct Example {
        #[arg(long, default_value = "10s")]
        ping_interval: String,
        #[arg(long, value_name = "SECRET", value_delimiter = ',')]
        turn_secret: Vec<String>,
        #[arg(long, value_name = "NAME:PASSWORD")]
        user: Vec<String>,
        #[arg(long)]
        region: Option<String>,
        #[arg(long, value_delimiter = ',')]
        redis: Vec<String>,
        #[arg(long = "relay-arg")]
        relay_args: Vec<String>,
    }

    #[test]
    fn one_line_per_set_value_with_secrets_redacted() {
        let matches = Example::command().get_matches_from([
            "prog",
            "--turn-secret",
            "s3cr3t,older",
            "--user",
            "alice:hunter2",
            "--redis",
            "redis://default:pa55@10.0.0.5:6379/0,rediss://:pa56@h:1,redis://h:2",
            "--relay-arg=--user=bob:pa57",
            "--relay-arg=--workers=2",
        ]);
        let text = summary(&Example::command(), &matches);
        assert!(
            !text.contains("s3cr3t") && !text.contains("hunter2"),
            "{text}"
        );
        assert!(
            text.contains("--turn-secret    <redacted>,<redacted>  (flag or file)"),
            "{text}"
        );
        assert!(text.contains("--user           alice:<redacted>"), "{text}");
        assert!(
            text.contains(
                "redis://default:<redacted>@10.0.0.5:6379/0,rediss://:<redacted>@h:1,redis://h:2"
            ),
            "{text}"
        );
        assert!(!text.contains("pa55") && !text.contains("pa56"), "{text}");
        assert!(text.contains("--user=<redacted>,--workers=2"), "{text}");
        assert!(!text.contains("pa57"), "{text}");
        assert!(text.contains("--ping-interval  10s\n"), "{text}");
        assert!(
            !text.contains("--region"),
            "unset values are left out: {text}"
        );
    }
}
