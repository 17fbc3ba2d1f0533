//! The process environment, read once: `Env::read` takes a snapshot at
//! start-up and every command derives what it needs from it (`Settings`,
//! the QEMU knobs, a passphrase variable, PATH). Nothing below `cli/`
//! reads the environment, so the library's behaviour is its arguments,
//! and tests build an `Env` from a list instead of setting variables.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::inputs::plan::Settings;
use crate::release::signify::PassphraseSource;
use crate::vm::qemu::QemuConfig;

/// A snapshot of the process environment and working folder.
#[derive(Clone, Default)]
pub struct Env {
    vars: BTreeMap<OsString, OsString>,
    cwd: Option<PathBuf>,
}

/// Names only: a value may be a passphrase (`--passphrase-env`).
impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("vars", &self.vars.keys().collect::<Vec<_>>())
            .field("cwd", &self.cwd)
            .finish()
    }
}

impl Env {
    /// The one read of the process environment.
    pub fn read() -> Env {
        Env {
            vars: std::env::vars_os().collect(),
            cwd: std::env::current_dir().ok(),
        }
    }

    /// An environment made of `vars` (tests), working folder `cwd`.
    pub fn from_vars<K: Into<OsString>, V: Into<OsString>>(
        vars: impl IntoIterator<Item = (K, V)>,
        cwd: Option<PathBuf>,
    ) -> Env {
        Env {
            vars: vars
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            cwd,
        }
    }

    fn get(&self, k: &str) -> Option<&OsStr> {
        self.vars.get(OsStr::new(k)).map(|v| v.as_os_str())
    }

    fn non_empty(&self, k: &str) -> Option<&OsStr> {
        self.get(k).filter(|v| !v.is_empty())
    }

    fn text(&self, k: &str) -> Option<&str> {
        self.get(k).and_then(|v| v.to_str())
    }

    /// The cache: `$CAIRN_CACHE`, else `$XDG_CACHE_HOME/cairn`, else
    /// `~/.cache/cairn`, made absolute (tools run in other folders).
    pub fn cache_root(&self) -> Result<PathBuf> {
        let p = if let Some(p) = self.non_empty("CAIRN_CACHE") {
            PathBuf::from(p)
        } else if let Some(p) = self.non_empty("XDG_CACHE_HOME") {
            PathBuf::from(p).join("cairn")
        } else {
            match self.non_empty("HOME") {
                Some(h) => PathBuf::from(h).join(".cache").join("cairn"),
                None => bail!("cache: neither CAIRN_CACHE nor HOME is set; set CAIRN_CACHE=DIR"),
            }
        };
        if p.is_absolute() {
            return Ok(p);
        }
        match &self.cwd {
            Some(cwd) => Ok(cwd.join(p)),
            None => bail!(
                "cache: {} is relative and the working folder is unknown; give an absolute CAIRN_CACHE",
                p.display()
            ),
        }
    }

    /// Settings: the cache, `CAIRN_NO_STAGE_CACHE` (set: no stage cache),
    /// `CAIRN_TREES` and `SOURCE_DATE_EPOCH` (a number, or an error).
    pub fn settings(&self) -> Result<Settings> {
        let source_date_epoch = match self.get("SOURCE_DATE_EPOCH") {
            Some(v) if !v.is_empty() => match v.to_str().and_then(|s| s.parse::<u64>().ok()) {
                Some(n) => Some(n),
                None => {
                    return Err(crate::InputError(format!(
                    "SOURCE_DATE_EPOCH={v:?} is not a number of seconds since 1970; unset it or give e.g. 1735689600"
                ))
                    .into())
                }
            },
            _ => None,
        };
        Ok(Settings {
            cache_root: self.cache_root()?,
            stage_cache: self.get("CAIRN_NO_STAGE_CACHE").is_none(),
            source_date_epoch,
            trees_on_disk: self.text(crate::host::scratch::ENV) == Some("disk"),
        })
    }

    /// `--passphrase-env VAR`: the variable's value (None: unset).
    pub fn passphrase(&self, var: &str) -> PassphraseSource {
        PassphraseSource::Env(var.to_string(), self.get(var).map(OsStr::to_os_string))
    }

    /// `TERM=dumb`: a terminal that cannot move the cursor, so bars
    /// redrawn in place would pile up (`--progress auto` logs plain lines).
    pub fn dumb_terminal(&self) -> bool {
        self.get("TERM").is_some_and(|t| t == "dumb")
    }

    /// `CAIRN_PROGRESS_EVERY`: seconds between two plain progress lines of
    /// one job (default 10; logs that want more, or tests that act on
    /// the first line, set it lower). A value that is not a positive
    /// number is ignored with a warning.
    pub fn progress_every(&self) -> Option<std::time::Duration> {
        let v = self.text("CAIRN_PROGRESS_EVERY")?;
        match v.parse::<f64>() {
            Ok(s) if s.is_finite() && s > 0.0 && s < 1e6 => {
                Some(std::time::Duration::from_secs_f64(s))
            }
            _ => {
                eprintln!(
                    "warning: CAIRN_PROGRESS_EVERY={v:?} is not a number of seconds; using 10"
                );
                None
            }
        }
    }

    /// The programs' search path (`PATH`).
    pub fn tool_path(&self) -> Option<OsString> {
        self.get("PATH").map(OsStr::to_os_string)
    }

    /// The QEMU knobs of `cairn run` and the boot tests: `CAIRN_QEMU_ACCEL`
    /// (`kvm`, `tcg` or `auto`) and `CAIRN_BOOT_TIMEOUT_SCALE` (an integer
    /// >= 1); bad values are ignored with a warning.
    pub fn qemu_config(&self) -> QemuConfig {
        QemuConfig::from_env_values(
            self.text(QemuConfig::ACCEL_VAR),
            self.text(QemuConfig::TIMEOUT_SCALE_VAR),
        )
    }
}

/// [`Env::cache_root`] of this process (for test harnesses).
pub fn cache_root_from_env() -> Result<PathBuf> {
    Env::read().cache_root()
}

/// [`Env::settings`] of this process (for test harnesses).
pub fn settings_from_env() -> Result<Settings> {
    Env::read().settings()
}

/// `--passphrase-env VAR` of this process (for test harnesses).
pub fn passphrase_from_env(var: &str) -> PassphraseSource {
    Env::read().passphrase(var)
}

/// Hands this process's `PATH` to the tool runner (for test harnesses;
/// the CLI does it in [`super::setup`]).
pub fn tool_path_from_env() {
    crate::host::doctor::set_search_path(Env::read().tool_path());
}

/// [`Env::qemu_config`] of this process (for test harnesses).
pub fn qemu_config_from_env() -> QemuConfig {
    Env::read().qemu_config()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Env {
        Env::from_vars(vars.iter().copied(), Some(PathBuf::from("/work")))
    }

    #[test]
    fn cache_root_order() {
        let e = env(&[("CAIRN_CACHE", "/some/where"), ("HOME", "/home/u")]);
        assert_eq!(e.cache_root().unwrap(), PathBuf::from("/some/where"));
        let e = env(&[
            ("CAIRN_CACHE", ""),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ]);
        assert_eq!(e.cache_root().unwrap(), PathBuf::from("/x/cairn"));
        let e = env(&[("HOME", "/h")]);
        assert_eq!(e.cache_root().unwrap(), PathBuf::from("/h/.cache/cairn"));
        let e = env(&[("CAIRN_CACHE", "rel")]);
        assert_eq!(e.cache_root().unwrap(), PathBuf::from("/work/rel"));
        assert!(env(&[]).cache_root().is_err());
    }

    #[test]
    fn the_plain_progress_period_parses() {
        let every = |v: &str| env(&[("CAIRN_PROGRESS_EVERY", v)]).progress_every();
        assert_eq!(every("0.05"), Some(std::time::Duration::from_millis(50)));
        assert_eq!(every("30"), Some(std::time::Duration::from_secs(30)));
        for bad in ["", "0", "-1", "soon", "NaN", "inf"] {
            assert_eq!(every(bad), None, "{bad}");
        }
        assert_eq!(env(&[]).progress_every(), None);
    }

    #[test]
    fn a_dumb_terminal_is_told_apart() {
        assert!(env(&[("TERM", "dumb")]).dumb_terminal());
        assert!(!env(&[("TERM", "xterm-256color")]).dumb_terminal());
        assert!(!env(&[]).dumb_terminal());
    }

    #[test]
    fn settings_parse_their_variables() {
        let s = env(&[
            ("CAIRN_CACHE", "/c"),
            ("SOURCE_DATE_EPOCH", "1735689600"),
            ("CAIRN_NO_STAGE_CACHE", ""),
            ("CAIRN_TREES", "disk"),
        ])
        .settings()
        .unwrap();
        assert_eq!(s.source_date_epoch, Some(1735689600));
        assert!(!s.stage_cache);
        assert!(s.trees_on_disk);
        let s = env(&[("CAIRN_CACHE", "/c")]).settings().unwrap();
        assert!(s.stage_cache && !s.trees_on_disk && s.source_date_epoch.is_none());
        // A bad epoch is bad input (exit 2), named with the fix.
        let e = env(&[("CAIRN_CACHE", "/c"), ("SOURCE_DATE_EPOCH", "soon")])
            .settings()
            .unwrap_err();
        assert!(e.downcast_ref::<crate::InputError>().is_some(), "{e:#}");
        assert!(e.to_string().contains("1735689600"), "{e:#}");
    }

    #[test]
    fn passphrase_variable_is_read_from_the_snapshot() {
        let e = env(&[("PW", "secret")]);
        assert_eq!(
            e.passphrase("PW"),
            PassphraseSource::Env("PW".into(), Some("secret".into()))
        );
        assert!(!format!("{e:?}").contains("secret"), "{e:?}");
        assert_eq!(
            e.passphrase("NOPE"),
            PassphraseSource::Env("NOPE".into(), None)
        );
    }
}
