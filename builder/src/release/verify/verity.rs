//! dm-verity root hash recomputation, as `veritysetup format` computes it,
//! and the verity parameters the manifest may describe.
//! Invariant: memory is one digest per data block (32 bytes per 4 KiB).

use std::io::{self, Read};

use sha2::Digest as _;

use super::{failed, VerifyError, HASH_BUF, MANIFEST};
use crate::host::digest::Sha256;
use crate::release::manifest::Manifest;

/// dm-verity parameters cairn uses (and the only ones verify accepts).
pub(super) use crate::host::verity::BLOCK as VERITY_BLOCK;
// dm-verity refuses salts longer than this.
use crate::host::verity::MAX_SALT;

pub(super) use crate::host::read_full;

/// The dm-verity root hash (format 1, sha256, 4096-byte data and hash
/// blocks) of the first `data_size` bytes of `data`, as
/// `veritysetup format --salt=<hex salt>` computes it: every block is
/// hashed as sha256(salt || block); digests are packed 128 to a hash
/// block, zero-padded, and hashed again level by level until one digest
/// is left. `data_size` must be a positive multiple of 4096 and `data`
/// must provide that many bytes.
pub fn verity_root_hash<R: Read>(data: R, data_size: u64, salt: &[u8]) -> io::Result<Sha256> {
    let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
    if data_size == 0 || data_size % VERITY_BLOCK != 0 {
        return Err(invalid(format!(
            "data size {data_size} is not a positive multiple of {VERITY_BLOCK}"
        )));
    }
    if salt.len() > MAX_SALT {
        return Err(invalid(format!("salt of {} bytes is too long", salt.len())));
    }
    let base = sha2::Sha256::new_with_prefix(salt);
    let blocks = data_size / VERITY_BLOCK;
    let blocks_usize = usize::try_from(blocks)
        .map_err(|_| invalid(format!("data size {data_size} is too large")))?;
    let mut level = Vec::with_capacity(blocks_usize);
    let mut r = data.take(data_size);
    let mut buf = vec![0u8; HASH_BUF];
    let mut remaining = data_size;
    while remaining > 0 {
        let want = remaining.min(HASH_BUF as u64) as usize;
        let n = read_full(&mut r, &mut buf[..want])?;
        if n != want {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("data ends {remaining} bytes short of the verity data size"),
            ));
        }
        crate::host::verity::hash_blocks(&base, &buf[..n], &mut level);
        remaining -= n as u64;
    }
    // The levels above, as the build writes them (`host::verity`).
    Ok(crate::host::verity::levels_from(level, salt)?.0)
}

/// The verity parameters the manifest records, checked to be ones this
/// verifier computes (sha256, 4096-byte blocks); returns the salt.
pub(super) fn verity_salt(manifest: &Manifest) -> Result<Vec<u8>, VerifyError> {
    let v = &manifest.verity;
    if v.hash_algorithm != "sha256"
        || u64::from(v.data_block_size) != VERITY_BLOCK
        || u64::from(v.hash_block_size) != VERITY_BLOCK
    {
        return Err(failed(format!(
            "root hash: {MANIFEST} describes verity {} with {}/{}-byte blocks; only sha256 with 4096-byte blocks is supported",
            v.hash_algorithm, v.data_block_size, v.hash_block_size
        )));
    }
    hex::decode(&v.salt)
        .ok()
        .filter(|s| s.len() <= MAX_SALT)
        .ok_or_else(|| {
            failed(format!(
                "root hash: {MANIFEST} verity salt is not valid hex"
            ))
        })
}
