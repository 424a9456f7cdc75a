//! The configuration as a readable block for the start-up log: one line per setting (hidden
//! flags aside) that has a value, `--flag  value`, marked with where it came from when it is not the default
//! (`(flag or file)`, `(environment)`, or `(implied by another flag)` for a default that
//! another flag chose, as a hidden older name does). Values of
//! flags whose value is named `SECRET` or `PASSWORD` (or a `NAME:PASSWORD` pair) are redacted, and
//! so is the password of any URL (`redis://user:PASSWORD@host`) and the value of a secret flag
//! passed on inside a list value ([`PASSED_ON_SECRETS`]), in both forms:
//! `--relay-arg=--user=NAME:PASSWORD` and `--relay-arg=--user --relay-arg=NAME:PASSWORD`.

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
                redact_values(&values).join(",")
            };
            let name = arg
                .get_long()
                .map_or_else(|| id.to_owned(), |long| format!("--{long}"));
            let source = match matches.value_source(id) {
                Some(ValueSource::CommandLine) => "  (flag or file)",
                Some(ValueSource::EnvVariable) => "  (environment)",
                Some(ValueSource::DefaultValue) if !is_declared_default(arg, &values) => {
                    "  (implied by another flag)"
                }
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

/// Whether `values` are `arg`'s declared default, not one a `default_value_if` put in its
/// place because of another flag (signaling's `--log-json` implies `--log-format json`). An
/// argument that declares none has clap's own (a switch's `false`).
fn is_declared_default(arg: &clap::Arg, values: &[String]) -> bool {
    let declared = arg.get_default_values();
    declared.is_empty()
        || declared.len() == values.len()
            && declared
                .iter()
                .zip(values)
                .all(|(declared, value)| declared.to_string_lossy() == value.as_str())
}

/// Whether `arg` takes a secret: its value is named `SECRET` or `PASSWORD` (or a
/// `NAME:PASSWORD` pair).
pub fn is_secret(arg: &clap::Arg) -> bool {
    arg.get_value_names().is_some_and(|names| {
        names
            .iter()
            .any(|n| n.as_str().contains("SECRET") || n.as_str().contains("PASSWORD"))
    })
}

/// The long names (and aliases) of the flags that take a secret when they are passed on inside
/// a value: those of the relay, for which [`is_secret`] holds (`--user NAME:PASSWORD`,
/// `--turn-secret SECRET` and its older name `--auth-secret`), as signaling's `--relay-arg`
/// hands them to its in-process relay. Whole names: `--user-quota` is no secret. (startup
/// cannot see the relay's command; signaling's `tests/it/reload.rs` checks this list against
/// it.) A Redis URL (`--register`) has only its password redacted, as everywhere.
pub const PASSED_ON_SECRETS: &[&str] = &["user", "turn-secret", "auth-secret"];

/// Whether `value` is a secret flag given alone (`--turn-secret`), so that the next value is
/// its secret: one of [`PASSED_ON_SECRETS`], or one whose name ends as a secret's does
/// (`secret`, `password`, or their plurals): a mistyped name (`--turn-secrets`) still holds a
/// secret, which the relay would refuse only after the summary printed it.
fn is_secret_flag(value: &str) -> bool {
    let alone = value.strip_prefix("--").filter(|name| !name.contains('='));
    alone.is_some_and(|name| {
        PASSED_ON_SECRETS.contains(&name)
            || ["secret", "secrets", "password", "passwords"]
                .iter()
                .any(|end| name.ends_with(end))
    })
}

/// One value of a flag that is not itself a secret, with what it may still hold redacted: a
/// URL's password, or the value of a secret flag passed on in the `--flag=value` form
/// (`--user=NAME:PASSWORD`, `--turn-secret=S`: [`PASSED_ON_SECRETS`], whole names only, so
/// `--user-quota=200` shows). A secret given as the value after its flag (`--turn-secret`, `S`)
/// is only seen by [`redact_values`], which has the values in order.
fn redact_value(value: &str) -> String {
    if let Some((flag, _)) = value.split_once('=')
        && is_secret_flag(flag)
    {
        return format!("{flag}=<redacted>");
    }
    redact_url_password(value)
}

/// The values of a flag that is not itself a secret, in order, with what they may hold
/// redacted: a URL's password, a secret flag's value in the `--flag=value` form, and a value
/// that follows a secret flag given alone (`--turn-secret`, `S`; `--user`, `NAME:PASSWORD`),
/// whole.
pub fn redact_values<S: AsRef<str>>(values: &[S]) -> Vec<String> {
    let mut follows_secret_flag = false;
    values
        .iter()
        .map(|value| {
            let value = value.as_ref();
            let shown = if follows_secret_flag {
                "<redacted>".to_owned()
            } else {
                redact_value(value)
            };
            follows_secret_flag = is_secret_flag(value);
            shown
        })
        .collect()
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
        #[arg(long = "relay-arg", allow_hyphen_values = true)]
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

    #[derive(Debug, Parser)]
    struct WithOlderName {
        #[arg(long, default_value = "text", default_value_if("json", "true", "json"))]
        format: String,
        #[arg(long, hide = true)]
        json: bool,
        #[arg(long)]
        verbose: bool,
    }

    #[test]
    fn a_default_chosen_by_another_flag_shows_and_is_marked() {
        let summary_of = |args: &[&str]| {
            let matches = WithOlderName::command()
                .get_matches_from(std::iter::once("prog").chain(args.iter().copied()));
            summary(&WithOlderName::command(), &matches)
        };
        assert_eq!(summary_of(&[]), "  --format   text\n  --verbose  false\n");
        assert_eq!(
            summary_of(&["--json"]),
            "  --format   json  (implied by another flag)\n  --verbose  false\n"
        );
        assert_eq!(
            summary_of(&["--json", "--format", "text"]),
            "  --format   text  (flag or file)\n  --verbose  false\n"
        );
    }

    /// The `--relay-arg` line of the summary of `args` (after the program name).
    fn relay_arg_line(args: &[&str]) -> String {
        let matches = Example::command()
            .get_matches_from(std::iter::once("prog").chain(args.iter().copied()));
        let text = summary(&Example::command(), &matches);
        text.lines()
            .find(|line| line.trim_start().starts_with("--relay-arg"))
            .unwrap_or_else(|| panic!("no --relay-arg line: {text}"))
            .to_owned()
    }

    #[test]
    fn secret_flags_passed_on_are_redacted_in_both_forms() {
        let line = relay_arg_line(&[
            "--relay-arg=--admin-listen=127.0.0.1:9",
            "--relay-arg",
            "--turn-secret",
            "--relay-arg",
            "splitsecretXYZ",
            "--relay-arg=--user",
            "--relay-arg=dave:davepassword",
            "--relay-arg=--auth-secret",
            "--relay-arg=olderXYZ",
            "--relay-arg=--turn-secret=joinedXYZ",
            "--relay-arg=--user=erin:erinpassword",
            "--relay-arg=--register",
            "--relay-arg=redis://default:redispass@10.0.0.5:6379",
            "--relay-arg=--register=rediss://:redispass2@h:1",
            "--relay-arg=--turn-secrets=mistypedXYZ",
        ]);
        assert_eq!(
            line.split_whitespace().collect::<Vec<_>>(),
            [
                "--relay-arg",
                "--admin-listen=127.0.0.1:9,--turn-secret,<redacted>,--user,<redacted>,\
                 --auth-secret,<redacted>,--turn-secret=<redacted>,--user=<redacted>,\
                 --register,redis://default:<redacted>@10.0.0.5:6379,\
                 --register=rediss://:<redacted>@h:1,--turn-secrets=<redacted>",
                "(flag",
                "or",
                "file)"
            ],
            "{line}"
        );
        for secret in ["XYZ", "davepassword", "erinpassword", "redispass"] {
            assert!(!line.contains(secret), "{secret} shows: {line}");
        }
    }

    #[test]
    fn a_secret_flag_given_alone_redacts_whatever_follows_it() {
        // `--user` as the value of `--turn-secret` (the relay refuses it, but the summary is
        // printed first): both it and the value after it are redacted.
        assert_eq!(
            redact_values(&[
                "--turn-secret",
                "--user",
                "dave:pw",
                "--workers",
                "2",
                "--user"
            ]),
            [
                "--turn-secret",
                "<redacted>",
                "<redacted>",
                "--workers",
                "2",
                "--user"
            ]
        );
        assert_eq!(redact_values::<&str>(&[]), Vec::<String>::new());
    }

    #[test]
    fn flags_that_only_look_like_secrets_show_their_values() {
        let line = relay_arg_line(&[
            "--relay-arg=--user-quota=200",
            "--relay-arg=--user-quota",
            "--relay-arg=200",
            "--relay-arg=--usage-max-users=500",
            "--relay-arg=--usage-max-users",
            "--relay-arg=500",
            "--relay-arg=--secret-free=1",
        ]);
        assert!(
            line.contains(
                "--user-quota=200,--user-quota,200,--usage-max-users=500,--usage-max-users,500,\
                 --secret-free=1  (flag or file)"
            ),
            "{line}"
        );
        assert!(!line.contains("<redacted>"), "{line}");
        assert_eq!(redact_value("--user-quota=200"), "--user-quota=200");
    }

    #[test]
    fn a_reload_diff_of_passed_on_flags_shows_changes_but_no_secret() {
        let parse = |args: &[&str]| {
            Example::command().get_matches_from(std::iter::once("prog").chain(args.iter().copied()))
        };
        let applied = |old, new| {
            let in_force = crate::reload::InForce::started(old);
            crate::reload::Changes::between(
                &Example::command(),
                in_force,
                new,
                &["relay_args"],
                &[],
            )
        };
        let old = parse(&[
            "--relay-arg=--turn-secret=oldXYZ",
            "--relay-arg=--user=dave:oldpassword",
            "--relay-arg=--user-quota=200",
        ]);
        let new = parse(&[
            "--relay-arg=--turn-secret=newXYZ",
            "--relay-arg=--user=dave:newpassword",
            "--relay-arg=--user-quota=180",
        ]);
        let changes = applied(&old, &new);
        assert_eq!(
            changes.applied,
            [
                "--relay-arg --turn-secret=<redacted>,--user=<redacted>,--user-quota=200 -> \
                 --turn-secret=<redacted>,--user=<redacted>,--user-quota=180"
            ]
        );
        let text = format!("{changes:?}");
        assert!(
            !text.contains("XYZ") && !text.contains("password"),
            "{text}"
        );
        // Each secret after its flag: only the values in order tell the secret apart.
        let old = parse(&[
            "--relay-arg=--turn-secret",
            "--relay-arg=oldXYZ",
            "--relay-arg=--user-quota",
            "--relay-arg=200",
        ]);
        let new = parse(&[
            "--relay-arg=--turn-secret",
            "--relay-arg=newXYZ",
            "--relay-arg=--user-quota",
            "--relay-arg=180",
        ]);
        let changes = applied(&old, &new);
        assert_eq!(
            changes.applied,
            ["--relay-arg --turn-secret,<redacted>,--user-quota,200 -> \
                 --turn-secret,<redacted>,--user-quota,180"]
        );
    }
}
