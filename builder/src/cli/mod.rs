//! The command line's view of the process: the only place that reads
//! environment variables. Everything below takes what it needs as values
//! (`Settings`, `LoadEnv`), so the library's behaviour is its arguments.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::inputs::plan::Settings;

/// The cache: `$CAIRN_CACHE`, else `$XDG_CACHE_HOME/cairn`, else
/// `~/.cache/cairn`, made absolute (tools run in other folders).
pub fn cache_root_from_env() -> Result<PathBuf> {
    let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    let p = if let Some(p) = non_empty("CAIRN_CACHE") {
        PathBuf::from(p)
    } else if let Some(p) = non_empty("XDG_CACHE_HOME") {
        PathBuf::from(p).join("cairn")
    } else {
        match non_empty("HOME") {
            Some(h) => PathBuf::from(h).join(".cache").join("cairn"),
            None => bail!("cache: neither CAIRN_CACHE nor HOME is set; set CAIRN_CACHE=DIR"),
        }
    };
    Ok(if p.is_absolute() {
        p
    } else {
        std::env::current_dir()?.join(p)
    })
}

/// Settings from the environment: the cache, `CAIRN_NO_STAGE_CACHE`
/// (set: no stage cache) and `SOURCE_DATE_EPOCH` (a number, or an error).
pub fn settings_from_env() -> Result<Settings> {
    let source_date_epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => match v.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                return Err(crate::InputError(format!(
                    "SOURCE_DATE_EPOCH={v:?} is not a number of seconds since 1970; unset it or give e.g. 1735689600"
                ))
                .into())
            }
        },
        _ => None,
    };
    Ok(Settings {
        cache_root: cache_root_from_env()?,
        stage_cache: std::env::var_os("CAIRN_NO_STAGE_CACHE").is_none(),
        source_date_epoch,
        trees_on_disk: std::env::var(crate::host::scratch::ENV).is_ok_and(|v| v == "disk"),
    })
}

/// `--passphrase-env VAR`: the variable's value, read here (None: unset).
pub fn passphrase_from_env(var: &str) -> crate::release::signify::PassphraseSource {
    crate::release::signify::PassphraseSource::Env(var.to_string(), std::env::var_os(var))
}

/// The programs' search path (`PATH`), handed to the tool runner once.
pub fn tool_path_from_env() {
    crate::host::doctor::set_search_path(std::env::var_os("PATH"));
}

/// The QEMU knobs of `cairn run` and the boot tests: `CAIRN_QEMU_ACCEL`
/// (`kvm`, `tcg` or `auto`) and `CAIRN_BOOT_TIMEOUT_SCALE` (an integer >= 1);
/// bad values are ignored with a warning.
pub fn qemu_config_from_env() -> crate::vm::qemu::QemuConfig {
    use crate::vm::qemu::QemuConfig;
    let var = |k: &str| std::env::var(k).ok();
    QemuConfig::from_env_values(
        var(QemuConfig::ACCEL_VAR).as_deref(),
        var(QemuConfig::TIMEOUT_SCALE_VAR).as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_path_honours_cairn_cache() {
        // Set and restore within the test (no other test in this module
        // reads the variable).
        let old = std::env::var_os("CAIRN_CACHE");
        std::env::set_var("CAIRN_CACHE", "/some/where");
        let p = cache_root_from_env().unwrap();
        match old {
            Some(v) => std::env::set_var("CAIRN_CACHE", v),
            None => std::env::remove_var("CAIRN_CACHE"),
        }
        assert_eq!(p, PathBuf::from("/some/where"));
    }
}
