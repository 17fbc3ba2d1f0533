//! Sign: writes `SHA256` (one `SHA256 (file) = hex` line per output, as
//! `signify -C` reads it) and `SHA256.sig`, an embedded signify signature
//! over those exact bytes. Invariant: the list names every file in the
//! output folder except the two it writes, sorted by name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::host::digest::Sha256;
use crate::release::signify::{PassphraseSource, SecretKey};

pub const SUMS: &str = "SHA256";
pub const SIG: &str = "SHA256.sig";

/// The text of a SHA256 file for `dir`'s files (all but SHA256 and its sig).
pub fn sums_for(dir: &Path) -> Result<String> {
    sums_for_known(dir, &BTreeMap::new())
}

/// As [`sums_for`], taking the digests the caller already computed
/// (`known`: file name -> digest, e.g. the manifest's outputs) instead of
/// reading those files again; every other file is hashed. A known name that
/// is not a file of `dir` is an error (the caller's list is stale).
pub fn sums_for_known(dir: &Path, known: &BTreeMap<String, Sha256>) -> Result<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("sign: list {}", dir.display()))?
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != SUMS && n != SIG)
        .collect();
    names.sort();
    if let Some(stale) = known.keys().find(|k| !names.contains(k)) {
        bail!(
            "sign: {stale} has a known digest but is not a file in {}",
            dir.display()
        );
    }
    let mut out = String::new();
    for n in names {
        let d = match known.get(&n) {
            Some(d) => *d,
            None => Sha256::of_file_with_progress(&dir.join(&n), &format!("sign: hash {n}"))?,
        };
        out.push_str(&format!("SHA256 ({n}) = {d}\n"));
    }
    Ok(out)
}

/// Where a secret key and its passphrase come from.
pub struct SigningKey {
    pub path: PathBuf,
    pub passphrase: Option<PassphraseSource>,
}

/// Reads the secret key, asking for the passphrase only if it is encrypted.
pub fn load_key(k: &SigningKey) -> Result<SecretKey> {
    match SecretKey::read(&k.path, None) {
        Ok(key) => Ok(key),
        Err(crate::release::signify::SignifyError::PassphraseRequired) => {
            let source = k
                .passphrase
                .clone()
                .unwrap_or(PassphraseSource::Prompt { confirm: false });
            let pass = crate::release::signify::read_passphrase(source)
                .map_err(|e| crate::InputError(format!("{}: {e}", k.path.display())))?;
            SecretKey::read(&k.path, Some(&pass))
                .map_err(|e| crate::InputError(format!("{}: {e}", k.path.display())).into())
        }
        Err(e) => Err(crate::InputError(format!("{}: {e}", k.path.display())).into()),
    }
}

/// A key pair `cairn keygen` wrote.
pub struct NewKeyPair {
    pub public: PathBuf,
    pub secret: PathBuf,
    pub key_id: String,
}

/// `cairn keygen`: writes `NAME.pub` and `NAME.sec`, the secret encrypted
/// under the passphrase read from `passphrase` (`None`: unencrypted). The
/// keys' comments name the file. An unreadable or empty passphrase, or an
/// existing file, is bad input (exit 2); nothing is overwritten.
pub fn keygen(name: &Path, passphrase: Option<PassphraseSource>) -> Result<NewKeyPair> {
    let passphrase = match passphrase {
        None => None,
        Some(source) => Some(
            crate::release::signify::read_passphrase(source)
                .map_err(|e| crate::InputError(e.to_string()))?,
        ),
    };
    let comment = name
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "cairn".into());
    let (public, secret) = crate::release::signify::keygen(name, passphrase.as_deref(), &comment)
        .map_err(|e| crate::InputError(format!("{e:#}")))?;
    let key_id = crate::release::signify::PublicKey::read(&public)?.key_id();
    Ok(NewKeyPair {
        public,
        secret,
        key_id,
    })
}

/// Writes SHA256 and SHA256.sig into `dir`. `pub_name` goes into the
/// signature's comment (`verify with NAME.pub`).
pub fn sign_dir(dir: &Path, key: &SecretKey, pub_name: &str) -> Result<String> {
    sign_dir_known(dir, key, pub_name, &BTreeMap::new())
}

/// As [`sign_dir`], with the digests already known (see [`sums_for_known`]):
/// the build passes the manifest's, so each medium is hashed once.
pub fn sign_dir_known(
    dir: &Path,
    key: &SecretKey,
    pub_name: &str,
    known: &BTreeMap<String, Sha256>,
) -> Result<String> {
    let sums = sums_for_known(dir, known)?;
    if sums.is_empty() {
        bail!("sign: {} has nothing to sign", dir.display());
    }
    let sig = key.sign(sums.as_bytes());
    std::fs::write(dir.join(SUMS), &sums).context("sign: write SHA256")?;
    std::fs::write(
        dir.join(SIG),
        sig.to_embedded_file_bytes(pub_name, sums.as_bytes()),
    )
    .context("sign: write SHA256.sig")?;
    Ok(key.public().key_id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_list_every_file_sorted_and_signature_verifies() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("b.raw"), "b").unwrap();
        std::fs::write(d.path().join("a.json"), "a").unwrap();
        let key = crate::release::signify::generate();
        sign_dir(d.path(), &key, "k.pub").unwrap();
        let sums = std::fs::read_to_string(d.path().join(SUMS)).unwrap();
        let lines: Vec<&str> = sums.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("SHA256 (a.json) = "));
        let (sig, msg) =
            crate::release::signify::Signature::read_embedded(&d.path().join(SIG)).unwrap();
        assert_eq!(msg, sums.as_bytes());
        sig.verify(&key.public(), &msg).unwrap();
        // Control: another key does not verify it.
        assert!(sig
            .verify(&crate::release::signify::generate().public(), &msg)
            .is_err());
    }

    #[test]
    fn sums_take_known_digests_and_hash_the_rest() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.raw"), "a").unwrap();
        std::fs::write(d.path().join("b.json"), "b").unwrap();
        // A known digest is used as given (here deliberately not a.raw's,
        // to show the file is not read again) ...
        let given = Sha256::of_bytes(b"not a");
        let known = BTreeMap::from([("a.raw".to_string(), given)]);
        let sums = sums_for_known(d.path(), &known).unwrap();
        assert!(
            sums.contains(&format!("SHA256 (a.raw) = {given}\n")),
            "{sums}"
        );
        // ... and a file without one is hashed.
        let b = Sha256::of_bytes(b"b");
        assert!(sums.contains(&format!("SHA256 (b.json) = {b}\n")), "{sums}");
        // Control: without known digests, a.raw is hashed.
        let plain = sums_for(d.path()).unwrap();
        assert!(plain.contains(&format!("SHA256 (a.raw) = {}\n", Sha256::of_bytes(b"a"))));
        // A known name that is not in the folder is refused.
        let stale = BTreeMap::from([("gone.iso".to_string(), given)]);
        let e = sums_for_known(d.path(), &stale).unwrap_err().to_string();
        assert!(e.contains("gone.iso"), "{e}");
    }
}
