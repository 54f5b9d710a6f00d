//! External commands, built one way.
//!
//! Every program this workspace runs (git, PostgreSQL's binaries, docker helpers) is started through
//! [`Cmd`]: it always has an explicit working directory, starts from an empty environment plus a
//! short whitelist, and is logged with `tracing` when it starts. The bare `Command::new` is banned
//! by `clippy.toml` everywhere else, so a forgotten working directory or a leaked credential in the
//! inherited environment cannot happen by accident.
//!
//! This crate owns nothing but that constructor; it knows no program in particular.
#![deny(missing_docs)]
#![allow(clippy::disallowed_methods)] // the one place allowed to call Command::new

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

/// Environment variables copied from the parent unless the caller overrides them.
const INHERITED: &[&str] = &["PATH", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// A description of an external command: program, arguments, directory and environment.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    cwd: PathBuf,
    env: Vec<(OsString, OsString)>,
}

impl Cmd {
    /// A command for `program` that will run in `cwd` with the whitelisted environment only.
    pub fn new(program: impl AsRef<OsStr>, cwd: impl AsRef<Path>) -> Self {
        let env = INHERITED
            .iter()
            .filter_map(|k| std::env::var_os(k).map(|v| (OsString::from(k), v)))
            .collect();
        Self {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            cwd: cwd.as_ref().to_owned(),
            env,
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Appends several arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets (or replaces) one environment variable.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        let key = key.as_ref().to_owned();
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.as_ref().to_owned()));
        self
    }

    /// The program name, for error messages.
    pub fn program(&self) -> &OsStr {
        &self.program
    }

    /// A one-line rendering of the command for logs and error messages.
    pub fn display(&self) -> String {
        let mut s = self.program.to_string_lossy().into_owned();
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    /// A blocking `std` command, ready for stdio settings and `spawn`.
    pub fn to_std(&self) -> std::process::Command {
        tracing::debug!(cmd = %self.display(), cwd = %self.cwd.display(), "starting command");
        let mut c = std::process::Command::new(&self.program);
        c.args(&self.args).current_dir(&self.cwd).env_clear();
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// An async `tokio` command, ready for stdio settings and `spawn`/`output`.
    pub fn to_tokio(&self) -> tokio::process::Command {
        tokio::process::Command::from(self.to_std())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_is_whitelisted_and_cwd_is_set() {
        let dir = std::env::temp_dir();
        let out = Cmd::new("sh", &dir)
            .args(["-c", "env; pwd"])
            .env("ONLY_THIS", "1")
            .to_std()
            .output()
            .expect("sh runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("ONLY_THIS=1"));
        assert!(
            !text.contains("CARGO_PKG_NAME"),
            "inherited env leaked: {text}"
        );
        let canonical = dir.canonicalize().unwrap();
        assert!(
            text.lines()
                .any(|l| Path::new(l) == canonical || Path::new(l) == dir)
        );
    }
}
