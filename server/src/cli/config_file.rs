//! The optional TOML config file: its keys are the long flag names (`lease_ttl` or
//! `lease-ttl`). Precedence: command-line flags, then environment variables, then the
//! file, then defaults.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Turns the file into `--flag=value` arguments for the options of `command` that are
/// not set through their environment variable.
pub fn args_from_file(path: &Path, command: &clap::Command) -> Result<Vec<OsString>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
    let table: toml::Table = text.parse().with_context(|| format!("parsing config file {}", path.display()))?;
    let mut args = Vec::new();
    for (key, value) in table {
        let long = key.replace('_', "-");
        let Some(arg) = command.get_arguments().find(|a| a.get_long() == Some(long.as_str()) && long != "config")
        else {
            let known: Vec<_> =
                command.get_arguments().filter_map(|a| a.get_long()).filter(|l| *l != "config").collect();
            bail!("unknown key {key:?} in {}; known keys: {}", path.display(), known.join(", "));
        };
        if arg.get_env().is_some_and(|env| std::env::var_os(env).is_some()) {
            continue;
        }
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => bail!("key {key:?} in {}: expected a string, number or boolean, got {other}", path.display()),
        };
        args.push(OsString::from(format!("--{long}={value}")));
    }
    Ok(args)
}

/// Finds `--config PATH` / `--config=PATH` in `argv`, else `KINESIS_BUTLER_CONFIG`.
pub fn config_path(argv: &[OsString]) -> Option<std::path::PathBuf> {
    let mut iter = argv.iter().skip(1);
    while let Some(a) = iter.next() {
        let a = a.to_string_lossy();
        if a == "--config" {
            return iter.next().map(Into::into);
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(p.into());
        }
    }
    std::env::var_os("KINESIS_BUTLER_CONFIG").map(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Command};

    fn command() -> Command {
        Command::new("t")
            .arg(Arg::new("lease_ttl").long("lease-ttl").env("KB_TEST_LEASE_TTL_UNSET"))
            .arg(Arg::new("store").long("store").env("KB_TEST_STORE_SET"))
    }

    #[test]
    fn file_values_become_flags_unless_env_is_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "lease_ttl = \"3s\"\nstore = \"redis://x\"\n").unwrap();
        std::env::set_var("KB_TEST_STORE_SET", "sqlite://y");
        let args = args_from_file(&path, &command()).unwrap();
        assert_eq!(args, vec![OsString::from("--lease-ttl=3s")]);
        std::fs::write(&path, "nope = 1\n").unwrap();
        let err = args_from_file(&path, &command()).unwrap_err().to_string();
        assert!(err.contains("unknown key \"nope\""), "{err}");
    }
}
