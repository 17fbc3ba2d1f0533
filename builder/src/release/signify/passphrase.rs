//! Passphrases for secret keys: from the terminal, a file or an
//! environment variable, never from the command line.
//! Invariant: empty passphrases are refused; buffers that held one are wiped.

use std::fs::OpenOptions;
use std::io::Read;
use std::path::PathBuf;

use super::{io_err, wipe, Result, SignifyError};
use crate::host::untrusted::{self, Links};

/// Where a passphrase comes from. Never from the command line (argv is
/// visible to every user via /proc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PassphraseSource {
    /// Ask on the controlling terminal; `confirm` asks twice.
    Prompt { confirm: bool },
    /// First line of this file (trailing newline stripped).
    File(PathBuf),
    /// The named environment variable, as the CLI read it (None: unset).
    Env(String, Option<std::ffi::OsString>),
}

/// Obtain a passphrase from `source`. Empty passphrases are refused
/// (signify refuses them too).
pub fn read_passphrase(source: PassphraseSource) -> Result<Vec<u8>> {
    let pass = match source {
        PassphraseSource::Prompt { confirm } => prompt_passphrase(confirm)?,
        PassphraseSource::File(path) => {
            let f = untrusted::open(&path, Links::Follow)?;
            let mut data = Vec::new();
            f.file
                .take(64 * 1024)
                .read_to_end(&mut data)
                .map_err(io_err("read passphrase file", &path))?;
            let end = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
            let mut line = data.get(..end).unwrap_or_default().to_vec();
            wipe(&mut data);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.is_empty() {
                return Err(SignifyError::Passphrase(format!(
                    "passphrase file {} is empty",
                    path.display()
                )));
            }
            line
        }
        PassphraseSource::Env(var, value) => {
            let value = value.ok_or_else(|| {
                SignifyError::Passphrase(format!("environment variable {var} is not set"))
            })?;
            #[cfg(unix)]
            let bytes = {
                use std::os::unix::ffi::OsStringExt as _;
                value.into_vec()
            };
            #[cfg(not(unix))]
            let bytes = value
                .into_string()
                .map_err(|_| {
                    SignifyError::Passphrase(format!("environment variable {var} is not UTF-8"))
                })?
                .into_bytes();
            bytes
        }
    };
    if pass.is_empty() {
        return Err(SignifyError::Passphrase("empty passphrase".into()));
    }
    Ok(pass)
}

fn prompt_passphrase(confirm: bool) -> Result<Vec<u8>> {
    // rpassword talks to /dev/tty; check up front for a clear error.
    if OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .is_err()
    {
        return Err(SignifyError::Passphrase(
            "no terminal to prompt on; use a passphrase file or environment variable".into(),
        ));
    }
    let read = |prompt: &str| {
        rpassword::prompt_password(prompt)
            .map(String::into_bytes)
            .map_err(|e| SignifyError::Passphrase(format!("cannot read from terminal: {e}")))
    };
    let mut first = read("passphrase: ")?;
    if first.is_empty() {
        return Err(SignifyError::Passphrase("empty passphrase".into()));
    }
    if confirm {
        let mut second = read("confirm passphrase: ")?;
        let same = first == second;
        wipe(&mut second);
        if !same {
            wipe(&mut first);
            return Err(SignifyError::Passphrase("passphrases don't match".into()));
        }
    }
    Ok(first)
}
