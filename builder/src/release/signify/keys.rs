//! Public and secret keys: parse, write, generate, and `keygen`'s files.
//! Invariant: decrypted secret bytes are wiped after use; key files are
//! created new (never overwritten), the secret one mode 0600.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use rand_core::{OsRng, RngCore};
use sha2::{Digest as _, Sha512};

use super::format::{clean_comment, frame, parse_framed, read_key_file, Cursor};
use super::{
    io_err, malformed, wipe, Result, Signature, SignifyError, KDFALG, KDF_ROUNDS, KEYNUM_LEN,
    MAX_KDF_ROUNDS, PKALG, PUBKEY_LEN, SECKEY_LEN,
};

/// A signify public key: the random key number plus the Ed25519 key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublicKey {
    pub keynum: [u8; KEYNUM_LEN],
    pub key: VerifyingKey,
}

impl PublicKey {
    /// Read a `.pub` file.
    pub fn read(path: &Path) -> Result<PublicKey> {
        let data = read_key_file(path)?;
        Self::parse_bytes(&data).map_err(|e| with_path(e, path))
    }

    /// Parse the text of a `.pub` file.
    pub fn parse(text: &str) -> Result<PublicKey> {
        Self::parse_bytes(text.as_bytes())
    }

    fn parse_bytes(data: &[u8]) -> Result<PublicKey> {
        let framed = parse_framed(data, PUBKEY_LEN, "public key", false)?;
        let mut c = Cursor(&framed.blob);
        let _alg: [u8; 2] = c.take()?;
        let keynum: [u8; KEYNUM_LEN] = c.take()?;
        let raw: [u8; 32] = c.take()?;
        let key = VerifyingKey::from_bytes(&raw)
            .map_err(|_| malformed("public key: not a valid Ed25519 point"))?;
        Ok(PublicKey { keynum, key })
    }

    /// The `.pub` file contents, with `comment` as the comment line
    /// (signify writes `<name> public key`).
    pub fn to_file_text(&self, comment: &str) -> String {
        let mut blob = Vec::with_capacity(PUBKEY_LEN);
        blob.extend_from_slice(&PKALG);
        blob.extend_from_slice(&self.keynum);
        blob.extend_from_slice(self.key.as_bytes());
        frame(&clean_comment(comment, "signify public key"), &blob)
    }

    /// The key number in hex: identifies the key pair.
    pub fn key_id(&self) -> String {
        hex::encode(self.keynum)
    }
}

pub(super) fn with_path(e: SignifyError, path: &Path) -> SignifyError {
    match e {
        SignifyError::Malformed(m) => SignifyError::Malformed(format!("{}: {m}", path.display())),
        other => other,
    }
}

// ---------------------------------------------------------------------------
// Secret keys
// ---------------------------------------------------------------------------

/// A decrypted signify secret key.
#[derive(Clone)]
pub struct SecretKey {
    pub keynum: [u8; KEYNUM_LEN],
    signing: SigningKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("keynum", &hex::encode(self.keynum))
            .finish_non_exhaustive()
    }
}

fn checksum(seckey: &[u8; 64]) -> [u8; 8] {
    let digest = Sha512::digest(seckey);
    let mut out = [0u8; 8];
    out.copy_from_slice(digest.get(..8).unwrap_or(&[0u8; 8]));
    out
}

fn kdf_xor(passphrase: &[u8], salt: &[u8; 16], rounds: u32, seckey: &mut [u8; 64]) -> Result<()> {
    let mut xorkey = [0u8; 64];
    bcrypt_pbkdf::bcrypt_pbkdf(passphrase, salt, rounds, &mut xorkey)
        .map_err(|e| SignifyError::Passphrase(format!("key derivation failed: {e}")))?;
    for (s, x) in seckey.iter_mut().zip(xorkey.iter()) {
        *s ^= x;
    }
    wipe(&mut xorkey);
    Ok(())
}

impl SecretKey {
    /// Read a `.sec` file. `passphrase` is needed only if the key is
    /// encrypted (rounds > 0) and is ignored otherwise.
    pub fn read(path: &Path, passphrase: Option<&[u8]>) -> Result<SecretKey> {
        let mut data = read_key_file(path)?;
        let res = Self::parse_bytes(&data, passphrase).map_err(|e| with_path(e, path));
        // The file is the (possibly unencrypted) key; don't leave it around.
        wipe(&mut data);
        res
    }

    /// Parse the text of a `.sec` file (see [`SecretKey::read`]).
    pub fn parse(text: &str, passphrase: Option<&[u8]>) -> Result<SecretKey> {
        Self::parse_bytes(text.as_bytes(), passphrase)
    }

    fn parse_bytes(data: &[u8], passphrase: Option<&[u8]>) -> Result<SecretKey> {
        let mut framed = parse_framed(data, SECKEY_LEN, "secret key", false)?;
        let res = Self::from_blob(&framed.blob, passphrase);
        wipe(&mut framed.blob);
        res
    }

    fn from_blob(blob: &[u8], passphrase: Option<&[u8]>) -> Result<SecretKey> {
        let mut c = Cursor(blob);
        let _alg: [u8; 2] = c.take()?;
        let kdfalg: [u8; 2] = c.take()?;
        if kdfalg != KDFALG {
            return Err(malformed("secret key: unsupported KDF (expected 'BK')"));
        }
        let rounds = u32::from_be_bytes(c.take()?);
        let salt: [u8; 16] = c.take()?;
        let sum: [u8; 8] = c.take()?;
        let keynum: [u8; KEYNUM_LEN] = c.take()?;
        let mut seckey: [u8; 64] = c.take()?;

        if rounds > 0 {
            if rounds > MAX_KDF_ROUNDS {
                wipe(&mut seckey);
                return Err(malformed(format!(
                    "secret key: {rounds} KDF rounds exceeds the limit of {MAX_KDF_ROUNDS}"
                )));
            }
            let Some(pass) = passphrase else {
                wipe(&mut seckey);
                return Err(SignifyError::PassphraseRequired);
            };
            if pass.is_empty() {
                wipe(&mut seckey);
                return Err(SignifyError::WrongPassphrase);
            }
            if let Err(e) = kdf_xor(pass, &salt, rounds, &mut seckey) {
                wipe(&mut seckey);
                return Err(e);
            }
        }
        if checksum(&seckey) != sum {
            wipe(&mut seckey);
            return Err(if rounds > 0 {
                SignifyError::WrongPassphrase
            } else {
                malformed("secret key: checksum mismatch (the key file is corrupt)")
            });
        }
        let signing = SigningKey::from_keypair_bytes(&seckey);
        wipe(&mut seckey);
        let signing = signing.map_err(|_| {
            malformed("secret key: embedded public half does not match the private key")
        })?;
        Ok(SecretKey { keynum, signing })
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            keynum: self.keynum,
            key: self.signing.verifying_key(),
        }
    }

    /// Sign `msg` (pure Ed25519, exactly as `signify -S`).
    pub fn sign(&self, msg: &[u8]) -> Signature {
        Signature {
            keynum: self.keynum,
            sig: self.signing.sign(msg),
        }
    }

    /// The `.sec` file contents with `comment` as the comment line (signify
    /// writes `<name> secret key`). With a passphrase the key is encrypted
    /// with bcrypt_pbkdf (42 rounds, fresh salt); without, rounds are 0.
    pub fn to_file_text(&self, comment: &str, passphrase: Option<&[u8]>) -> Result<String> {
        let mut seckey = self.signing.to_keypair_bytes();
        let sum = checksum(&seckey);
        let mut salt = [0u8; 16];
        OsRng.fill_bytes(&mut salt);
        let rounds = match passphrase {
            Some([]) => {
                wipe(&mut seckey);
                return Err(SignifyError::Passphrase("empty passphrase".into()));
            }
            Some(pass) => {
                if let Err(e) = kdf_xor(pass, &salt, KDF_ROUNDS, &mut seckey) {
                    wipe(&mut seckey);
                    return Err(e);
                }
                KDF_ROUNDS
            }
            None => 0,
        };
        let mut blob = Vec::with_capacity(SECKEY_LEN);
        blob.extend_from_slice(&PKALG);
        blob.extend_from_slice(&KDFALG);
        blob.extend_from_slice(&rounds.to_be_bytes());
        blob.extend_from_slice(&salt);
        blob.extend_from_slice(&sum);
        blob.extend_from_slice(&self.keynum);
        blob.extend_from_slice(&seckey);
        wipe(&mut seckey);
        let text = frame(&clean_comment(comment, "signify secret key"), &blob);
        wipe(&mut blob);
        Ok(text)
    }
}

/// A fresh key pair from OS randomness (random key number too).
pub fn generate() -> SecretKey {
    let signing = SigningKey::generate(&mut OsRng);
    let mut keynum = [0u8; KEYNUM_LEN];
    OsRng.fill_bytes(&mut keynum);
    SecretKey { keynum, signing }
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

fn create_new(path: &Path, secret: bool) -> Result<File> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    opts.open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            SignifyError::AlreadyExists(path.to_path_buf())
        } else {
            io_err("create", path)(e)
        }
    })
}

fn write_all_synced(mut f: File, path: &Path, text: &str) -> Result<()> {
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_err("write", path))
}

/// Generate a key pair and write `<name_prefix>.pub` and `<name_prefix>.sec`
/// (mode 0600, encrypted iff `passphrase` is given), with signify's comments
/// `<comment_name> public key` / `<comment_name> secret key`. Never
/// overwrites: fails with `AlreadyExists` if either file exists.
/// Returns `(public_path, secret_path)`.
pub fn keygen(
    name_prefix: &Path,
    passphrase: Option<&[u8]>,
    comment_name: &str,
) -> Result<(PathBuf, PathBuf)> {
    let pub_path = with_suffix(name_prefix, ".pub");
    let sec_path = with_suffix(name_prefix, ".sec");
    for p in [&sec_path, &pub_path] {
        if p.symlink_metadata().is_ok() {
            return Err(SignifyError::AlreadyExists(p.clone()));
        }
    }
    let key = generate();
    let sec_text = key.to_file_text(&format!("{comment_name} secret key"), passphrase)?;
    let pub_text = key
        .public()
        .to_file_text(&format!("{comment_name} public key"));

    let sec_file = create_new(&sec_path, true)?;
    let written = write_all_synced(sec_file, &sec_path, &sec_text).and_then(|()| {
        let pub_file = create_new(&pub_path, false)?;
        let res = write_all_synced(pub_file, &pub_path, &pub_text);
        if res.is_err() {
            let _ = std::fs::remove_file(&pub_path);
        }
        res
    });
    let mut sec_bytes = sec_text.into_bytes();
    wipe(&mut sec_bytes);
    if let Err(e) = written {
        // We created the secret key file ourselves, so removing it is safe.
        let _ = std::fs::remove_file(&sec_path);
        return Err(e);
    }
    Ok((pub_path, sec_path))
}
