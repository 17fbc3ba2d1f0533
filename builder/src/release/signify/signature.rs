//! Signatures: detached and embedded (`signify -S -e`, the SHA256.sig
//! form), parse, write and verify.
//! Invariant: a signature verifies only under the key whose number it
//! carries, with strict Ed25519 verification.

use std::path::Path;

use super::format::{clean_comment, frame, parse_framed, read_head, Cursor};
use super::keys::with_path;
use super::{PublicKey, Result, SignifyError, KEYNUM_LEN, MAX_EMBEDDED, PKALG, SIG_LEN};
use crate::host::untrusted::{self, Links};

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
        let data = untrusted::read(path, Links::Follow, MAX_EMBEDDED)?;
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
