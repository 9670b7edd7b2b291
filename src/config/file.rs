//! `--config FILE`: the options of `tapwire run` from a TOML file. Each key is an option's long
//! name without the dashes (`max-clients = 5000`, `nat = true`, `forward = ["tcp:…", …]`).
//! Precedence: command line, then environment, then the file, then the defaults.
//!
//! How: the file's keys become command-line arguments, each checked on its own first (so that
//! an error names the key and its line), then appended only for the options that neither the
//! command line nor the environment set, and the whole is parsed once more.

use std::collections::BTreeMap;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{ArgMatches, Command};
use toml::Spanned;

/// The arguments the file at `path` (text `text`) adds to a run whose own arguments were
/// parsed into `given` by `cmd`: none for an option `given` has from the command line or the
/// environment. An unknown key, a value of the wrong kind or a value the option refuses is an
/// error naming the file, the line and the key.
pub fn arguments(
    cmd: &Command,
    given: &ArgMatches,
    path: &Path,
    text: &str,
) -> Result<Vec<String>, String> {
    let file = path.display();
    let table: BTreeMap<Spanned<String>, Spanned<toml::Value>> =
        toml::from_str(text).map_err(|e| format!("{file}: not valid TOML: {e}"))?;
    let line = |at: usize| text[..at.min(text.len())].matches('\n').count() + 1;
    let mut out = Vec::new();
    for (key, value) in &table {
        if key.get_ref() == "network" {
            // [[network]] tables: read by `declared_networks`.
            continue;
        }
        let at = format!("{file}:{}: {}", line(key.span().start), key.get_ref());
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key.get_ref().as_str()) && key.get_ref() != "config")
            .ok_or_else(|| {
                format!("{at}: unknown key (keys are the long options of `tapwire run`, e.g. max-clients)")
            })?;
        let args = option_args(key.get_ref(), value.get_ref()).map_err(|e| format!("{at}: {e}"))?;
        // The value alone, as the option would take it on the command line.
        let mut alone = vec!["tapwire".to_string()];
        alone.extend(args.iter().cloned());
        if let Err(e) = cmd.clone().try_get_matches_from(&alone) {
            let why = e.to_string();
            let why = why
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ");
            return Err(format!("{at}: {why}"));
        }
        let set = matches!(
            given.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if !set {
            out.extend(args);
        }
    }
    Ok(out)
}

/// The `[[network]]` tables of the file at `path` (text `text`), as written.
pub fn declared_networks(
    path: &Path,
    text: &str,
) -> Result<Vec<super::declared::DeclaredArgs>, String> {
    let file = path.display();
    let table: toml::Table =
        toml::from_str(text).map_err(|e| format!("{file}: not valid TOML: {e}"))?;
    match table.get("network") {
        None => Ok(Vec::new()),
        Some(v) => super::declared::parse(&file.to_string(), v),
    }
}

/// The command-line form of `key = value`: a flag for `true` (nothing for `false`), the
/// option and the value for a number or string, the option once per element of an array.
fn option_args(key: &str, value: &toml::Value) -> Result<Vec<String>, String> {
    let one = |v: &toml::Value| -> Result<String, String> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(n) => Ok(n.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            other => Err(format!(
                "{} is not a value for an option (use a string, a number, or a list of them)",
                other.type_str()
            )),
        }
    };
    match value {
        toml::Value::Boolean(true) => Ok(vec![format!("--{key}")]),
        toml::Value::Boolean(false) => Ok(Vec::new()),
        toml::Value::Array(items) => items
            .iter()
            .map(|v| one(v).map(|s| [format!("--{key}"), s]))
            .collect::<Result<Vec<_>, _>>()
            .map(|pairs| pairs.concat()),
        v => Ok(vec![format!("--{key}"), one(v)?]),
    }
}

/// Why [`RunArgs::load`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The command line or the environment (clap prints it, with usage).
    #[error(transparent)]
    Args(#[from] clap::Error),
    /// The config file.
    #[error("{0}")]
    File(String),
}

impl super::RunArgs {
    /// Parses `argv` (the program name, then the options of `tapwire run`), with the options of
    /// a `--config` file where neither the command line nor the environment sets them.
    pub fn load(argv: &[std::ffi::OsString]) -> Result<super::RunArgs, LoadError> {
        Self::load_reading(argv, |path| {
            std::fs::read_to_string(path).map_err(|e| {
                LoadError::File(format!("--config {}: cannot read it: {e}", path.display()))
            })
        })
    }

    /// [`RunArgs::load`] with `text` as the content of whatever file `--config` names (for
    /// tests and the fuzzer: no file is read).
    pub fn load_with_text(
        argv: &[std::ffi::OsString],
        text: &str,
    ) -> Result<super::RunArgs, LoadError> {
        Self::load_reading(argv, |_| Ok(text.to_string()))
    }

    fn load_reading(
        argv: &[std::ffi::OsString],
        read: impl FnOnce(&std::path::Path) -> Result<String, LoadError>,
    ) -> Result<super::RunArgs, LoadError> {
        use clap::FromArgMatches;
        let cmd = <super::RunArgs as clap::Args>::augment_args(clap::Command::new("tapwire"));
        let matches = cmd.clone().try_get_matches_from(argv)?;
        let args = super::RunArgs::from_arg_matches(&matches)?;
        let Some(path) = &args.config else {
            return Ok(args);
        };
        let text = read(path)?;
        let extra = arguments(&cmd, &matches, path, &text).map_err(LoadError::File)?;
        let declared = declared_networks(path, &text).map_err(LoadError::File)?;
        let mut all = argv.to_vec();
        all.extend(extra.into_iter().map(Into::into));
        let matches = cmd.try_get_matches_from(&all)?;
        let mut args = super::RunArgs::from_arg_matches(&matches)?;
        args.declared = declared;
        Ok(args)
    }
}

#[cfg(test)]
mod tests;
