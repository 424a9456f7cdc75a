//! `--config FILE`: a TOML file whose keys are the long flag names (`ping_interval` or
//! `ping-interval`, or a flag's older name), for every binary with a clap configuration.
//!
//! Precedence, highest first: a flag, its environment variable, the file, the default. The file
//! is turned into flags placed before the real ones, for the keys that were neither given as a
//! flag nor set in the environment, so clap checks every value the same way wherever it came
//! from.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

/// The argument id of the file flag (`--config`) in every binary.
pub const CONFIG_ARG: &str = "config";

/// Errors found while reading the configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Flags or environment variables were invalid (the message is clap's, with usage).
    #[error(transparent)]
    Clap(#[from] clap::Error),
    /// The `--config` file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The `--config` file is not valid TOML, or has an unknown key or a value of the wrong
    /// shape.
    #[error("config file {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Parses `args` (the first is the program name), the environment and the file named by
/// `--config`, if any. Returns the configuration and the matches it came from (for
/// [`crate::summary`]).
pub fn load<C, I, T>(args: I) -> Result<(C, ArgMatches), ConfigError>
where
    C: CommandFactory + FromArgMatches,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let from_env = |var: &str| std::env::var_os(var).is_some();
    let mut matches = match C::command().try_get_matches_from(&args) {
        Ok(matches) => matches,
        // A pair split between the command line and the file (`--tls-key` given, `tls-cert`
        // in the file) is whole only once the file is read: the parse of both says.
        Err(e) if e.kind() == clap::error::ErrorKind::MissingRequiredArgument => {
            let lenient = C::command().ignore_errors(true).try_get_matches_from(&args);
            match lenient {
                Ok(matches) if matches.get_one::<PathBuf>(CONFIG_ARG).is_some() => matches,
                _ => return Err(explain_invalid_value::<C>(e, &args, from_env).into()),
            }
        }
        Err(e) => return Err(explain_invalid_value::<C>(e, &args, from_env).into()),
    };
    if let Some(path) = matches.get_one::<PathBuf>(CONFIG_ARG).cloned() {
        let mut file_args = file_arguments::<C>(&path, &matches)?;
        if !file_args.is_empty() {
            let mut merged = Vec::with_capacity(args.len() + file_args.len());
            merged.extend(args.first().cloned());
            merged.append(&mut file_args);
            merged.extend(args.iter().skip(1).cloned());
            matches = C::command()
                .try_get_matches_from(merged)
                .map_err(|e| ConfigError::File {
                    path: path.clone(),
                    message: what_clap_refused(&explain_invalid_value::<C>(e, &args, from_env)),
                })?;
        }
    }
    let config = C::from_arg_matches(&matches)?;
    Ok((config, matches))
}

/// What a clap error says, in one line without its `error:`, its usage and its advice to try
/// `--help` (which are about a command line, and read oddly after "config file PATH:"); the
/// possible values and tips stay.
fn what_clap_refused(error: &clap::Error) -> String {
    let text = error.to_string();
    let said: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more information"))
        .filter(|line| !line.is_empty())
        .collect();
    let said = said.join(" ");
    said.strip_prefix("error: ").unwrap_or(&said).to_owned()
}

/// The long flag `text` names: `--NAME`, `--NAME=VALUE` (an argument), or `--NAME <VALUE>`
/// (clap's name of the argument in an error).
fn long_name(text: &str) -> Option<&str> {
    text.strip_prefix("--")?.split([' ', '=']).next()
}

/// clap's error about an invalid value, said better in two cases (the same kind of error,
/// naming the flag and why):
/// - the value was given to a flag that takes a secret ([`crate::summary::is_secret`]:
///   `--user NAME:PASSWORD`, `--turn-secret SECRET`): it is not quoted, for a mistyped one
///   (`alice;password`) is still a password, and the error goes to the terminal or, on a
///   reload, to the log;
/// - it came from the flag's environment variable (`is_set(VAR)`, and the flag is not among
///   `args`, whose first is the program): the variable is named, as clap names only the flag.
fn explain_invalid_value<C: CommandFactory>(
    error: clap::Error,
    args: &[OsString],
    is_set: impl Fn(&str) -> bool,
) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        error.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        // A conflict, a missing companion: clap quotes no value, and says why.
        return error;
    }
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else {
        return error;
    };
    let command = C::command();
    let named = long_name(arg);
    let Some(flag) = command
        .get_arguments()
        .find(|a| a.get_long().is_some_and(|long| named == Some(long)))
    else {
        return error;
    };
    let long = flag.get_long();
    let on_the_command_line = args
        .iter()
        .skip(1)
        .any(|a| a.to_str().and_then(long_name) == long);
    let variable = flag
        .get_env()
        .and_then(|var| var.to_str())
        .filter(|var| is_set(var) && !on_the_command_line);
    let secret = crate::summary::is_secret(flag);
    if variable.is_none() && !secret {
        return error;
    }
    let value = match error.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(value)) if !secret => format!(" '{value}'"),
        _ => String::new(),
    };
    let hidden = if secret {
        " (not shown: it holds a secret)"
    } else {
        ""
    };
    let origin = variable
        .map(|var| format!(" from the environment variable {var}"))
        .unwrap_or_default();
    let why = std::error::Error::source(&error)
        .map(|source| format!(": {source}"))
        .unwrap_or_default();
    C::command().error(
        error.kind(),
        format!("invalid value{value}{hidden} for '{arg}'{origin}{why}"),
    )
}

/// What a binary's flag table in its docs misses of `command`: a flag with no row, or a row
/// without the flag's environment variable or default. `doc` is Markdown whose table rows
/// start with the flag (or several) in code, then its variable and default in code. Empty
/// when the table is whole; each binary's tests check it, so that the docs, the operator's
/// contract, cannot drift from the flags.
pub fn docs_table_gaps(command: &clap::Command, doc: &str) -> Vec<String> {
    let mut gaps = Vec::new();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if arg.is_hide_set() || long == "help" || long == "version" {
            continue;
        }
        // A row of flags whose first cell names this one.
        let names = |l: &&str| {
            let first = l.strip_prefix("| `--").and_then(|l| l.split(" | ").next());
            first.map(|cell| format!("`--{cell}")).is_some_and(|cell| {
                cell.match_indices(&format!("`--{long}"))
                    .any(|(i, m)| cell[i + m.len()..].starts_with([' ', '`']))
            })
        };
        let Some(row) = doc.lines().find(names) else {
            gaps.push(format!("--{long} has no row"));
            continue;
        };
        if let Some(env) = arg.get_env() {
            let env = format!("`{}`", env.to_string_lossy());
            if !row.contains(&env) {
                gaps.push(format!("--{long}: {env} not in its row"));
            }
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let default = format!("`{}`", defaults.join(","));
        if !defaults.is_empty() && !row.contains(&default) {
            gaps.push(format!("--{long}: default {default} not in its row"));
        }
    }
    gaps
}

/// A TOML syntax error as its line and message, without the quoted source line that `toml`
/// adds: the line may hold a secret (`api-key = "...`), and the error goes to the log.
fn syntax_error(text: &str, error: &toml::de::Error) -> String {
    match error.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {}", error.message())
        }
        None => error.message().to_owned(),
    }
}

/// The file's keys as flag arguments, for every key that was neither given as a flag nor set
/// in the environment.
fn file_arguments<C: CommandFactory>(
    path: &Path,
    matches: &ArgMatches,
) -> Result<Vec<OsString>, ConfigError> {
    let file_error = |message: String| ConfigError::File {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| file_error(syntax_error(&text, &e)))?;
    let command = C::command();
    let mut out = Vec::new();
    for (key, value) in table {
        let long = key.replace('_', "-");
        let named = |a: &&clap::Arg| {
            a.get_long() == Some(long.as_str())
                || a.get_all_aliases()
                    .is_some_and(|aliases| aliases.contains(&long.as_str()))
        };
        let Some(arg) = command.get_arguments().find(named) else {
            return Err(file_error(format!("unknown key `{key}`")));
        };
        let id = arg.get_id().as_str();
        if id == CONFIG_ARG {
            return Err(file_error("`config` cannot be set from a file".into()));
        }
        if matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            // Said at each reload (at start-up, before logging starts, the summary marks the
            // flag's source): an operator editing the file would otherwise wait for a change
            // that cannot come.
            tracing::warn!(
                "config file {}: `{key}` is overridden by a flag or environment variable given \
                 at start-up (those win over the file)",
                path.display()
            );
            continue;
        }
        let flag = format!("--{long}");
        let scalar = |v: &toml::Value| match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            _ => Err(file_error(format!(
                "`{key}` must be a string, number or boolean"
            ))),
        };
        match &value {
            toml::Value::Boolean(b) if !arg.get_action().takes_values() => {
                if *b {
                    out.push(flag.into());
                }
            }
            toml::Value::Array(items)
                if items.len() > 1 && !matches!(arg.get_action(), clap::ArgAction::Append) =>
            {
                return Err(file_error(format!(
                    "`{key}` takes one value, not a list of {}",
                    items.len()
                )));
            }
            toml::Value::Array(items) => {
                for item in items {
                    out.push(format!("{flag}={}", scalar(item)?).into());
                }
            }
            other => out.push(format!("{flag}={}", scalar(other)?).into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Example {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value_t = 1)]
        workers: u32,
        #[arg(long, env = "STARTUP_TEST_NAME", default_value = "a")]
        name: String,
        #[arg(long, value_delimiter = ',')]
        url: Vec<String>,
        #[arg(long)]
        verbose: bool,
    }

    /// A TOML file in the temp directory, removed on drop.
    struct TempFile(PathBuf);

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn file(text: &str) -> TempFile {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("startup-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }

    #[test]
    fn a_file_fills_what_flags_did_not_give() {
        let f = file("workers = 4\nname = \"from-file\"\nurl = [\"x\", \"y\"]\nverbose = true\n");
        let path = f.0.to_str().unwrap().to_owned();
        let (c, _): (Example, _) =
            load(["prog", "--config", &path, "--name", "from-flag"]).unwrap();
        assert_eq!(c.workers, 4);
        assert_eq!(c.name, "from-flag", "a flag wins over the file");
        assert_eq!(c.url, ["x", "y"]);
        assert!(c.verbose);
    }

    #[derive(Debug, Parser)]
    struct WithSecret {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, value_name = "NAME:PASSWORD", value_parser = name_and_password)]
        user: Vec<String>,
        #[arg(long, default_value_t = 1)]
        workers: u32,
    }

    fn name_and_password(s: &str) -> Result<String, String> {
        s.contains(':')
            .then(|| s.to_owned())
            .ok_or_else(|| "expected NAME:PASSWORD".to_owned())
    }

    /// A mistyped secret is still a secret: the error names the flag and why, not the value,
    /// from a flag and from the file alike; other flags' values are quoted as clap quotes them.
    #[test]
    fn an_invalid_secret_value_is_not_quoted_in_the_error() {
        let Err(ConfigError::Clap(e)) = load::<WithSecret, _, _>(["prog", "--user", "al;pw123"])
        else {
            panic!("accepted");
        };
        let text = e.to_string();
        assert!(!text.contains("pw123"), "{text}");
        assert!(
            text.contains("--user") && text.contains("expected NAME:PASSWORD"),
            "{text}"
        );
        let f = file("user = [\"al;pw456\"]\n");
        let path = f.0.to_str().unwrap().to_owned();
        let Err(ConfigError::File { message, .. }) =
            load::<WithSecret, _, _>(["prog", "--config", &path])
        else {
            panic!("accepted");
        };
        assert!(
            !message.contains("pw456") && message.contains("--user"),
            "{message}"
        );
        let Err(ConfigError::Clap(e)) = load::<WithSecret, _, _>(["prog", "--workers", "many"])
        else {
            panic!("accepted");
        };
        assert!(e.to_string().contains("'many'"), "{e}");
    }

    /// A value from a flag's environment variable: the error names the variable (clap names
    /// the flag only); one given on the command line, or to a flag without a variable, is
    /// left as clap says it.
    #[test]
    fn an_invalid_value_from_the_environment_names_the_variable() {
        #[derive(Debug, Parser)]
        struct WithEnv {
            #[arg(long, env = "STARTUP_TEST_WORKERS")]
            workers: u32,
        }
        let error = |args: &[&str]| {
            // clap read the variable; which one it was is the question.
            WithEnv::command()
                .try_get_matches_from(["prog", "--workers", "many"])
                .map(|_| ())
                .map_err(|e| {
                    let args: Vec<OsString> = args.iter().map(OsString::from).collect();
                    explain_invalid_value::<WithEnv>(e, &args, |var| var == "STARTUP_TEST_WORKERS")
                        .to_string()
                })
                .unwrap_err()
        };
        let text = error(&["prog"]);
        assert!(
            text.contains(
                "invalid value 'many' for '--workers <WORKERS>' from the environment variable \
                 STARTUP_TEST_WORKERS: invalid digit"
            ),
            "{text}"
        );
        let text = error(&["prog", "--workers=many"]);
        assert!(
            !text.contains("STARTUP_TEST_WORKERS") && text.contains("'many'"),
            "{text}"
        );
        let text = error(&["prog", "--workers", "many"]);
        assert!(!text.contains("environment"), "{text}");

        // Not an invalid value (a conflict): left as clap says it, with its reason.
        #[derive(Debug, Parser)]
        struct Conflicting {
            #[arg(long, env = "STARTUP_TEST_A", conflicts_with = "b")]
            a: bool,
            #[arg(long, env = "STARTUP_TEST_B")]
            b: bool,
        }
        let conflict = Conflicting::command()
            .try_get_matches_from(["prog", "--a", "--b"])
            .unwrap_err();
        let text = explain_invalid_value::<Conflicting>(conflict, &[], |_| true).to_string();
        assert!(text.contains("cannot be used with"), "{text}");
    }

    /// A file's refused value keeps clap's list of the possible values.
    #[test]
    fn a_refused_file_value_keeps_the_possible_values() {
        #[derive(Debug, Parser)]
        struct WithChoice {
            #[arg(long)]
            config: Option<PathBuf>,
            #[arg(long, value_parser = ["text", "json"])]
            format: Option<String>,
        }
        let f = file("format = \"medium\"\n");
        let path = f.0.to_str().unwrap().to_owned();
        let err = load::<WithChoice, _, _>(["prog", "--config", &path]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "config file {path}: invalid value 'medium' for '--format <FORMAT>' [possible \
                 values: text, json]"
            )
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_the_file_named() {
        let f = file("wokers = 4\n");
        let path = f.0.to_str().unwrap().to_owned();
        let err = load::<Example, _, _>(["prog", "--config", &path]).unwrap_err();
        assert!(err.to_string().contains("unknown key `wokers`"), "{err}");
        let f = file("workers = \"many\"\n");
        let path = f.0.to_str().unwrap().to_owned();
        let err = load::<Example, _, _>(["prog", "--config", &path]).unwrap_err();
        assert!(matches!(err, ConfigError::File { .. }), "{err}");
        // One line, as about a file: no `error:` inside, no advice about the command line.
        assert_eq!(
            err.to_string(),
            format!(
                "config file {path}: invalid value 'many' for '--workers <WORKERS>': invalid \
                 digit found in string"
            )
        );
        let f = file("workers = [1, 2]\n");
        let path = f.0.to_str().unwrap().to_owned();
        let err = load::<Example, _, _>(["prog", "--config", &path]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("config file {path}: `workers` takes one value, not a list of 2")
        );
    }

    #[test]
    fn a_syntax_error_names_its_line_but_does_not_quote_it() {
        let f = file("workers = 4\nname = \"s3cret-LEAK\n");
        let path = f.0.to_str().unwrap().to_owned();
        let err = load::<Example, _, _>(["prog", "--config", &path]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("line 2"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }
}
