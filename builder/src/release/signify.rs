//! OpenBSD signify (Ed25519) key and signature files, bit-compatible with
//! `signify-openbsd`: generate, read and write keys, sign and verify.
//! Invariant: every parser returns a `SignifyError` on malformed or hostile
//! input and never panics; decrypted secret bytes are wiped after use.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use rand_core::{OsRng, RngCore};
use sha2::{Digest as _, Sha512};

/// Public-key algorithm tag at the start of every signify blob.
const PKALG: [u8; 2] = *b"Ed";
/// Key-derivation algorithm tag in secret keys (bcrypt_pbkdf).
const KDFALG: [u8; 2] = *b"BK";
/// First-line prefix of every signify file.
const COMMENT_HDR: &str = "untrusted comment: ";
/// signify rejects comments of this many bytes or more.
const COMMENT_MAX: usize = 1024;
/// Length of the random key number that links keys and signatures.
pub const KEYNUM_LEN: usize = 8;
/// bcrypt_pbkdf rounds signify uses for passphrase-protected keys.
pub const KDF_ROUNDS: u32 = 42;
/// Refuse secret keys claiming more rounds than this (a hostile or corrupt
/// key could otherwise make us spin for hours). signify always writes 42.
pub const MAX_KDF_ROUNDS: u32 = 1024;
/// Key and signature files are tiny; refuse to slurp anything bigger.
const MAX_KEY_FILE: u64 = 4096;

const PUBKEY_LEN: usize = 2 + KEYNUM_LEN + 32;
const SIG_LEN: usize = 2 + KEYNUM_LEN + 64;
const SECKEY_LEN: usize = 2 + 2 + 4 + 16 + 8 + KEYNUM_LEN + 64;

/// Errors from reading, writing, signing and verifying signify files.
#[derive(Debug, thiserror::Error)]
pub enum SignifyError {
    /// Garbled base64, wrong length, wrong algorithm, missing comment line...
    #[error("malformed signify file: {0}")]
    Malformed(String),
    /// The secret key is encrypted and no passphrase was supplied.
    #[error("the secret key is protected by a passphrase, but none was given")]
    PassphraseRequired,
    /// The passphrase did not decrypt the secret key (checksum mismatch).
    #[error("incorrect passphrase for the secret key")]
    WrongPassphrase,
    /// The signature was made by a different key than the one checked against.
    #[error("signature was made by key id {sig_key}, not by the given public key {pub_key}")]
    KeyMismatch { sig_key: String, pub_key: String },
    /// The signature does not match the message under the (correct) key.
    #[error("signature verification failed: the message or signature has been altered")]
    BadSignature,
    /// A key file that would be written already exists.
    #[error("refusing to overwrite existing key file {}", .0.display())]
    AlreadyExists(PathBuf),
    /// Obtaining a passphrase failed (no TTY, empty, unset variable, mismatch).
    #[error("passphrase: {0}")]
    Passphrase(String),
    /// Reading or writing a file failed.
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

type Result<T, E = SignifyError> = std::result::Result<T, E>;

fn malformed(msg: impl Into<String>) -> SignifyError {
    SignifyError::Malformed(msg.into())
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SignifyError + 'a {
    move |source| SignifyError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Best-effort wipe of secret material.
fn wipe(buf: &mut [u8]) {
    buf.fill(0);
    std::hint::black_box(buf);
}

// ---------------------------------------------------------------------------
// File framing: "untrusted comment: ...\n" + base64 + "\n" [+ message]
// ---------------------------------------------------------------------------

/// One parsed signify file: the decoded blob and whatever follows the
/// base64 line (the message, for embedded signatures). The comment line is
/// validated but, being untrusted, not kept.
struct Framed<'a> {
    blob: Vec<u8>,
    rest: &'a [u8],
}

fn describe_len(len: usize) -> &'static str {
    match len {
        PUBKEY_LEN => " (that is the size of a public key)",
        SIG_LEN => " (that is the size of a signature)",
        SECKEY_LEN => " (that is the size of a secret key)",
        _ => "",
    }
}

/// Split off one line (without its '\n'); `None` for the remainder means the
/// line was not newline-terminated.
fn split_line(data: &[u8]) -> (&[u8], Option<&[u8]>) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (data.get(..i).unwrap_or_default(), data.get(i + 1..)),
        None => (data, None),
    }
}

fn parse_framed<'a>(
    data: &'a [u8],
    expected_len: usize,
    what: &str,
    need_final_newline: bool,
) -> Result<Framed<'a>> {
    let (comment_line, rest) = split_line(data);
    let Some(rest) = rest else {
        return Err(malformed(format!(
            "{what}: expected two lines (an 'untrusted comment:' line and a base64 line)"
        )));
    };
    let comment_line = comment_line.strip_suffix(b"\r").unwrap_or(comment_line);
    let Some(comment) = comment_line.strip_prefix(COMMENT_HDR.as_bytes()) else {
        return Err(malformed(format!(
            "{what}: first line must start with '{COMMENT_HDR}'"
        )));
    };
    if comment.is_empty() {
        return Err(malformed(format!("{what}: empty comment line")));
    }
    if comment.len() >= COMMENT_MAX {
        return Err(malformed(format!("{what}: comment line is too long")));
    }

    let (b64_line, after) = split_line(rest);
    if after.is_none() && need_final_newline {
        return Err(malformed(format!(
            "{what}: missing newline after the base64 line"
        )));
    }
    let b64 = b64_line.trim_ascii_end_compat();
    if b64.is_empty() {
        return Err(malformed(format!("{what}: missing base64 line")));
    }
    // Longer than any signify blob cannot be right; don't bother decoding.
    if b64.len() > 4 * (SECKEY_LEN.max(expected_len) / 3 + 2) {
        return Err(malformed(format!(
            "{what}: base64 line is too long ({} characters)",
            b64.len()
        )));
    }
    let blob = BASE64
        .decode(b64)
        .map_err(|e| malformed(format!("{what}: invalid base64: {e}")))?;
    if blob.len() != expected_len {
        return Err(malformed(format!(
            "{what}: expected {expected_len} bytes, found {}{}",
            blob.len(),
            describe_len(blob.len())
        )));
    }
    if blob.get(..2) != Some(&PKALG[..]) {
        return Err(malformed(format!(
            "{what}: unsupported algorithm (expected 'Ed')"
        )));
    }
    Ok(Framed {
        blob,
        rest: after.unwrap_or_default(),
    })
}

/// `<[u8]>::trim_ascii_end` is newer than our MSRV (1.75).
trait TrimEnd {
    fn trim_ascii_end_compat(&self) -> &Self;
}
impl TrimEnd for [u8] {
    fn trim_ascii_end_compat(&self) -> &[u8] {
        let end = self
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        self.get(..end).unwrap_or_default()
    }
}

/// Make `comment` safe for the single comment line: no line breaks, not
/// empty, and short enough for signify to accept.
fn clean_comment(comment: &str, fallback: &str) -> String {
    let mut c: String = comment
        .chars()
        .map(|ch| if ch == '\n' || ch == '\r' { ' ' } else { ch })
        .collect();
    if c.trim().is_empty() {
        c = fallback.to_string();
    }
    // signify's writer needs header + comment + '\n' < 1024 bytes.
    let max = COMMENT_MAX - COMMENT_HDR.len() - 2;
    if c.len() > max {
        let mut cut = max;
        while !c.is_char_boundary(cut) {
            cut -= 1;
        }
        c.truncate(cut);
    }
    c
}

fn frame(comment: &str, blob: &[u8]) -> String {
    format!("{COMMENT_HDR}{comment}\n{}\n", BASE64.encode(blob))
}

/// Read the head of a key/signature file: at most `MAX_KEY_FILE` bytes,
/// plus whether there was more.
fn read_head(path: &Path) -> Result<(Vec<u8>, bool)> {
    let f = File::open(path).map_err(io_err("open", path))?;
    let mut buf = Vec::new();
    f.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(io_err("read", path))?;
    let more = buf.len() as u64 > MAX_KEY_FILE;
    buf.truncate(MAX_KEY_FILE as usize);
    Ok((buf, more))
}

/// Read a whole key file, refusing anything implausibly large.
fn read_key_file(path: &Path) -> Result<Vec<u8>> {
    let (mut buf, more) = read_head(path)?;
    if more {
        wipe(&mut buf);
        return Err(malformed(format!(
            "{}: too large to be a signify key",
            path.display()
        )));
    }
    Ok(buf)
}

/// Sequential reader over a fixed-size decoded blob.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        let head = self.0.get(..N).ok_or_else(|| malformed("blob too short"))?;
        let arr: [u8; N] = head.try_into().map_err(|_| malformed("blob too short"))?;
        self.0 = self.0.get(N..).unwrap_or_default();
        Ok(arr)
    }
}

// ---------------------------------------------------------------------------
// Public keys
// ---------------------------------------------------------------------------

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

fn with_path(e: SignifyError, path: &Path) -> SignifyError {
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

// ---------------------------------------------------------------------------
// Signatures
// ---------------------------------------------------------------------------

/// A signify signature: the signer's key number plus the Ed25519 signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signature {
    pub keynum: [u8; KEYNUM_LEN],
    pub sig: ed25519_dalek::Signature,
}

impl Signature {
    /// Parse a detached `.sig` file (anything after the base64 line is
    /// ignored, as signify does).
    pub fn parse(text: &str) -> Result<Signature> {
        let framed = parse_framed(text.as_bytes(), SIG_LEN, "signature", false)?;
        Self::from_blob(&framed.blob)
    }

    /// Parse a signature with the message embedded after it (`signify -S -e`,
    /// and the `SHA256.sig` format `signify -C` checks). Returns the
    /// signature and the embedded message, which is not yet verified.
    pub fn parse_embedded(data: &[u8]) -> Result<(Signature, &[u8])> {
        let framed = parse_framed(data, SIG_LEN, "signature", true)?;
        Ok((Self::from_blob(&framed.blob)?, framed.rest))
    }

    fn from_blob(blob: &[u8]) -> Result<Signature> {
        let mut c = Cursor(blob);
        let _alg: [u8; 2] = c.take()?;
        let keynum: [u8; KEYNUM_LEN] = c.take()?;
        let raw: [u8; 64] = c.take()?;
        Ok(Signature {
            keynum,
            sig: ed25519_dalek::Signature::from_bytes(&raw),
        })
    }

    /// Read a detached `.sig` file (only its first two lines matter).
    pub fn read(path: &Path) -> Result<Signature> {
        let (data, _more) = read_head(path)?;
        let framed =
            parse_framed(&data, SIG_LEN, "signature", false).map_err(|e| with_path(e, path))?;
        Self::from_blob(&framed.blob)
    }

    /// Read a file with an embedded message; returns the signature and the
    /// (unverified) message.
    pub fn read_embedded(path: &Path) -> Result<(Signature, Vec<u8>)> {
        let data = std::fs::read(path).map_err(io_err("read", path))?;
        let (sig, msg) = Self::parse_embedded(&data).map_err(|e| with_path(e, path))?;
        Ok((sig, msg.to_vec()))
    }

    fn blob(&self) -> Vec<u8> {
        let mut blob = Vec::with_capacity(SIG_LEN);
        blob.extend_from_slice(&PKALG);
        blob.extend_from_slice(&self.keynum);
        blob.extend_from_slice(&self.sig.to_bytes());
        blob
    }

    /// Detached `.sig` file contents, commented `verify with <pubkey_file_name>`
    /// like signify (which uses the basename of the key, e.g. `cairn.pub`).
    pub fn to_file_text(&self, pubkey_file_name: &str) -> String {
        let comment = clean_comment(&format!("verify with {pubkey_file_name}"), "signature");
        frame(&comment, &self.blob())
    }

    /// Signature file with `msg` embedded after it, as `signify -S -e`
    /// writes. This is the form `signify -C -x SHA256.sig` requires.
    pub fn to_embedded_file_bytes(&self, pubkey_file_name: &str, msg: &[u8]) -> Vec<u8> {
        let mut out = self.to_file_text(pubkey_file_name).into_bytes();
        out.extend_from_slice(msg);
        out
    }

    /// Check this signature over `msg` against `key`.
    pub fn verify(&self, key: &PublicKey, msg: &[u8]) -> Result<()> {
        if self.keynum != key.keynum {
            return Err(SignifyError::KeyMismatch {
                sig_key: hex::encode(self.keynum),
                pub_key: key.key_id(),
            });
        }
        key.key
            .verify_strict(msg, &self.sig)
            .map_err(|_| SignifyError::BadSignature)
    }
}

// ---------------------------------------------------------------------------
// Passphrases
// ---------------------------------------------------------------------------

/// Where a passphrase comes from. Never from the command line (argv is
/// visible to every user via /proc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PassphraseSource {
    /// Ask on the controlling terminal; `confirm` asks twice.
    Prompt { confirm: bool },
    /// First line of this file (trailing newline stripped).
    File(PathBuf),
    /// The named environment variable.
    Env(String),
}

/// Obtain a passphrase from `source`. Empty passphrases are refused
/// (signify refuses them too).
pub fn read_passphrase(source: PassphraseSource) -> Result<Vec<u8>> {
    let pass = match source {
        PassphraseSource::Prompt { confirm } => prompt_passphrase(confirm)?,
        PassphraseSource::File(path) => {
            let f = File::open(&path).map_err(io_err("open passphrase file", &path))?;
            let mut data = Vec::new();
            f.take(64 * 1024)
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
        PassphraseSource::Env(var) => {
            let value = std::env::var_os(&var).ok_or_else(|| {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic xorshift, so junk inputs are reproducible.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    #[test]
    fn sign_verify_roundtrip() {
        let sk = generate();
        let pk = PublicKey::parse(&sk.public().to_file_text("test public key")).unwrap();
        assert_eq!(pk, sk.public());
        let sig = sk.sign(b"hello world");
        let text = sig.to_file_text("test.pub");
        assert!(text.starts_with("untrusted comment: verify with test.pub\n"));
        let parsed = Signature::parse(&text).unwrap();
        assert_eq!(parsed, sig);
        parsed.verify(&pk, b"hello world").unwrap();
        assert!(matches!(
            parsed.verify(&pk, b"hello world!"),
            Err(SignifyError::BadSignature)
        ));
    }

    #[test]
    fn file_layout_matches_signify() {
        let sk = generate();
        let pub_text = sk.public().to_file_text("x public key");
        let mut lines = pub_text.lines();
        assert_eq!(lines.next(), Some("untrusted comment: x public key"));
        let blob = BASE64.decode(lines.next().unwrap()).unwrap();
        assert_eq!(blob.len(), 42);
        assert_eq!(&blob[..2], b"Ed");
        assert_eq!(&blob[2..10], &sk.keynum);
        assert!(pub_text.ends_with('\n'));

        let sec_text = sk.to_file_text("x secret key", None).unwrap();
        let blob = BASE64.decode(sec_text.lines().nth(1).unwrap()).unwrap();
        assert_eq!(blob.len(), 104);
        assert_eq!(&blob[..4], b"EdBK");
        assert_eq!(&blob[4..8], &[0, 0, 0, 0]);
        assert_eq!(&blob[32..40], &sk.keynum);

        let sec_text = sk.to_file_text("x secret key", Some(b"pw")).unwrap();
        let blob = BASE64.decode(sec_text.lines().nth(1).unwrap()).unwrap();
        assert_eq!(&blob[4..8], &[0, 0, 0, 42]);

        let sig = sk.sign(b"m");
        let blob = BASE64
            .decode(sig.to_file_text("x.pub").lines().nth(1).unwrap())
            .unwrap();
        assert_eq!(blob.len(), 74);
        assert_eq!(&blob[2..10], &sk.keynum);
    }

    #[test]
    fn unencrypted_secret_key_roundtrip() {
        let sk = generate();
        let text = sk.to_file_text("t secret key", None).unwrap();
        // A passphrase is ignored for unencrypted keys.
        for pass in [None, Some(&b"ignored"[..])] {
            let back = SecretKey::parse(&text, pass).unwrap();
            assert_eq!(back.keynum, sk.keynum);
            assert_eq!(back.public(), sk.public());
        }
    }

    #[test]
    fn encrypted_secret_key_roundtrip_and_wrong_passphrase() {
        let sk = generate();
        let text = sk
            .to_file_text("t secret key", Some(b"correct horse"))
            .unwrap();
        let back = SecretKey::parse(&text, Some(b"correct horse")).unwrap();
        assert_eq!(back.public(), sk.public());
        back.sign(b"x").verify(&sk.public(), b"x").unwrap();

        assert!(matches!(
            SecretKey::parse(&text, None),
            Err(SignifyError::PassphraseRequired)
        ));
        assert!(matches!(
            SecretKey::parse(&text, Some(b"wrong horse")),
            Err(SignifyError::WrongPassphrase)
        ));
        assert!(matches!(
            SecretKey::parse(&text, Some(b"")),
            Err(SignifyError::WrongPassphrase)
        ));
        assert!(sk.to_file_text("c", Some(b"")).is_err());
        let msg = SignifyError::PassphraseRequired.to_string();
        assert!(msg.contains("passphrase"), "{msg}");
    }

    #[test]
    fn flipped_signature_byte_is_bad_signature() {
        let sk = generate();
        let sig = sk.sign(b"payload");
        for i in 0..64 {
            let mut bytes = sig.sig.to_bytes();
            bytes[i] ^= 0x01;
            let bad = Signature {
                keynum: sig.keynum,
                sig: ed25519_dalek::Signature::from_bytes(&bytes),
            };
            assert!(
                matches!(
                    bad.verify(&sk.public(), b"payload"),
                    Err(SignifyError::BadSignature)
                ),
                "byte {i}"
            );
        }
        // Same through the text form.
        let text = sig.to_file_text("k.pub");
        let mut blob = BASE64.decode(text.lines().nth(1).unwrap()).unwrap();
        blob[40] ^= 0x80;
        let tampered = format!("untrusted comment: x\n{}\n", BASE64.encode(&blob));
        let parsed = Signature::parse(&tampered).unwrap();
        assert!(matches!(
            parsed.verify(&sk.public(), b"payload"),
            Err(SignifyError::BadSignature)
        ));
    }

    #[test]
    fn different_key_is_key_mismatch() {
        let a = generate();
        let b = generate();
        let sig = a.sign(b"m");
        match sig.verify(&b.public(), b"m") {
            Err(e @ SignifyError::KeyMismatch { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&a.public().key_id()), "{msg}");
                assert!(msg.contains(&b.public().key_id()), "{msg}");
            }
            other => panic!("expected KeyMismatch, got {other:?}"),
        }
        // Same key number but a different key: the signature is just bad.
        let forged = PublicKey {
            keynum: a.keynum,
            key: b.public().key,
        };
        assert!(matches!(
            sig.verify(&forged, b"m"),
            Err(SignifyError::BadSignature)
        ));
    }

    #[test]
    fn garbled_inputs_are_malformed() {
        let sk = generate();
        let pub_text = sk.public().to_file_text("p");
        let sig_text = sk.sign(b"m").to_file_text("p.pub");
        let sec_text = sk.to_file_text("s", None).unwrap();

        let cases: Vec<String> = vec![
            String::new(),
            "untrusted comment: x\n".into(),
            "untrusted comment: x\n\n".into(),
            "comment: x\nRWQ=\n".into(),
            "untrusted comment: \nRWQ=\n".into(),
            pub_text.replace("untrusted comment:", "trusted comment:"),
            pub_text[..pub_text.len() - 6].to_string(),
            pub_text.replacen("RW", "R!", 1),
            pub_text.replacen("RW", "QW", 1), // "Ad..." wrong algorithm
            format!("untrusted comment: x\n{}\n", BASE64.encode([0u8; 42])),
        ];
        for c in &cases {
            assert!(
                matches!(PublicKey::parse(c), Err(SignifyError::Malformed(_))),
                "{c:?}"
            );
        }
        // Cross-type confusion gives a helpful length error.
        match PublicKey::parse(&sig_text) {
            Err(SignifyError::Malformed(m)) => assert!(m.contains("signature"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Signature::parse(&pub_text),
            Err(SignifyError::Malformed(_))
        ));
        assert!(matches!(
            SecretKey::parse(&pub_text, None),
            Err(SignifyError::Malformed(_))
        ));
        // Corrupt unencrypted key: checksum catches it.
        let mut blob = BASE64.decode(sec_text.lines().nth(1).unwrap()).unwrap();
        blob[50] ^= 1;
        let bad = format!("untrusted comment: s\n{}\n", BASE64.encode(&blob));
        assert!(matches!(
            SecretKey::parse(&bad, None),
            Err(SignifyError::Malformed(_))
        ));
        // Absurd KDF rounds are refused rather than ground through.
        let mut blob = BASE64.decode(sec_text.lines().nth(1).unwrap()).unwrap();
        blob[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        let bad = format!("untrusted comment: s\n{}\n", BASE64.encode(&blob));
        assert!(matches!(
            SecretKey::parse(&bad, Some(b"pw")),
            Err(SignifyError::Malformed(_))
        ));
        // Embedded signatures need the newline after the base64 line.
        let no_nl = sig_text.trim_end();
        assert!(Signature::parse(no_nl).is_ok());
        assert!(matches!(
            Signature::parse_embedded(no_nl.as_bytes()),
            Err(SignifyError::Malformed(_))
        ));
    }

    #[test]
    fn crlf_and_comment_sanitising() {
        let sk = generate();
        let text = sk
            .public()
            .to_file_text("evil\ncomment\r")
            .replace('\n', "\r\n");
        assert_eq!(PublicKey::parse(&text).unwrap(), sk.public());
        let long = "x".repeat(5000);
        let text = sk.public().to_file_text(&long);
        assert!(text.lines().next().unwrap().len() < COMMENT_MAX);
        assert_eq!(PublicKey::parse(&text).unwrap(), sk.public());
        let text = sk.public().to_file_text("");
        assert_eq!(PublicKey::parse(&text).unwrap(), sk.public());
    }

    #[test]
    fn embedded_roundtrip() {
        let sk = generate();
        let msg = b"SHA256 (a) = 00\n\xff binary ok";
        let sig = sk.sign(msg);
        let file = sig.to_embedded_file_bytes("k.pub", msg);
        let (parsed, body) = Signature::parse_embedded(&file).unwrap();
        assert_eq!(body, msg);
        parsed.verify(&sk.public(), body).unwrap();
        // Detached parse of an embedded file still yields the signature.
        let text = String::from_utf8_lossy(&file);
        assert_eq!(Signature::parse(&text).unwrap(), sig);

        // Large embedded files: `read` looks only at the head.
        let dir = tempfile::tempdir().unwrap();
        let big = vec![b'z'; 100_000];
        let path = dir.path().join("big.sig");
        std::fs::write(&path, sk.sign(&big).to_embedded_file_bytes("k.pub", &big)).unwrap();
        let head_only = Signature::read(&path).unwrap();
        let (whole, body) = Signature::read_embedded(&path).unwrap();
        assert_eq!(head_only, whole);
        whole.verify(&sk.public(), &body).unwrap();

        // Key files need not be UTF-8 (the comment is free-form).
        let mut raw = b"untrusted comment: caf\xe9 public key\n".to_vec();
        let pub_text = sk.public().to_file_text("x");
        raw.extend_from_slice(pub_text.lines().nth(1).unwrap().as_bytes());
        raw.push(b'\n');
        let kpath = dir.path().join("latin1.pub");
        std::fs::write(&kpath, raw).unwrap();
        assert_eq!(PublicKey::read(&kpath).unwrap(), sk.public());
        // A huge "key" file is refused without reading it all.
        std::fs::write(&kpath, &big).unwrap();
        assert!(matches!(
            PublicKey::read(&kpath),
            Err(SignifyError::Malformed(_))
        ));
    }

    #[test]
    fn no_panics_on_junk() {
        let sk = generate();
        let valid = [
            sk.public().to_file_text("p public key"),
            sk.sign(b"m").to_file_text("p.pub"),
            sk.to_file_text("s secret key", None).unwrap(),
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        for v in &valid {
            // Every truncation.
            for n in 0..=v.len() {
                inputs.push(v.as_bytes()[..n].to_vec());
            }
            // Random byte mutations.
            for _ in 0..100 {
                let mut b = v.as_bytes().to_vec();
                let i = rng.below(b.len());
                b[i] = rng.next() as u8;
                inputs.push(b);
            }
        }
        for _ in 0..300 {
            // Pure junk, junk after a valid header, and well-formed base64
            // of random bytes of every interesting length.
            let n = rng.below(300);
            inputs.push(rng.bytes(n));
            let mut b = b"untrusted comment: junk\n".to_vec();
            b.extend(rng.bytes(n));
            inputs.push(b);
            let len = [PUBKEY_LEN, SIG_LEN, SECKEY_LEN, rng.below(120)][rng.below(4)];
            let mut blob = rng.bytes(len);
            if rng.below(2) == 0 && blob.len() >= 4 {
                blob[..4].copy_from_slice(b"EdBK");
            }
            inputs.push(format!("untrusted comment: j\n{}\n", BASE64.encode(&blob)).into_bytes());
        }
        assert!(inputs.len() > 300);
        for input in &inputs {
            let text = String::from_utf8_lossy(input);
            let _ = PublicKey::parse(&text);
            let _ = Signature::parse(&text);
            let _ = Signature::parse_embedded(input);
            let _ = SecretKey::parse(&text, None);
            if let Ok(sig) = Signature::parse(&text) {
                let _ = sig.verify(&sk.public(), input);
            }
        }
    }

    #[test]
    fn keygen_writes_files_and_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("cairn-test");
        let (p, s) = keygen(&prefix, None, "cairn-test").unwrap();
        assert_eq!(p, dir.path().join("cairn-test.pub"));
        assert_eq!(s, dir.path().join("cairn-test.sec"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&s).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let pub_text = std::fs::read_to_string(&p).unwrap();
        assert!(pub_text.starts_with("untrusted comment: cairn-test public key\n"));
        let sec_text = std::fs::read_to_string(&s).unwrap();
        assert!(sec_text.starts_with("untrusted comment: cairn-test secret key\n"));
        let sk = SecretKey::read(&s, None).unwrap();
        assert_eq!(sk.public(), PublicKey::read(&p).unwrap());

        let before = std::fs::read(&s).unwrap();
        assert!(matches!(
            keygen(&prefix, None, "again"),
            Err(SignifyError::AlreadyExists(_))
        ));
        assert_eq!(std::fs::read(&s).unwrap(), before);

        // Only the .pub existing also refuses, and creates no .sec.
        let prefix2 = dir.path().join("half");
        std::fs::write(dir.path().join("half.pub"), "x").unwrap();
        assert!(matches!(
            keygen(&prefix2, None, "half"),
            Err(SignifyError::AlreadyExists(_))
        ));
        assert!(!dir.path().join("half.sec").exists());
    }

    #[test]
    fn passphrase_sources() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pass");
        std::fs::write(&f, "s3cret\nsecond line\n").unwrap();
        assert_eq!(
            read_passphrase(PassphraseSource::File(f.clone())).unwrap(),
            b"s3cret"
        );
        std::fs::write(&f, "crlf\r\n").unwrap();
        assert_eq!(
            read_passphrase(PassphraseSource::File(f.clone())).unwrap(),
            b"crlf"
        );
        std::fs::write(&f, "\n").unwrap();
        assert!(read_passphrase(PassphraseSource::File(f.clone())).is_err());
        assert!(read_passphrase(PassphraseSource::File(dir.path().join("missing"))).is_err());
        assert!(read_passphrase(PassphraseSource::Env(
            "CAIRN_SIGNIFY_TEST_SURELY_UNSET_VAR".into()
        ))
        .is_err());
        // PATH is always set and non-empty in test environments.
        assert!(!read_passphrase(PassphraseSource::Env("PATH".into()))
            .unwrap()
            .is_empty());
    }
}
