//! dm-verity: computes the hash tree of a volume image (`host::verity`,
//! the format `veritysetup format` writes).
//! Salt and UUID are derived from a seed that determines the image's bytes
//! (its digest, or for a model volume its stage-cache key), so the root
//! hash depends only on what the image is made from.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::host::digest::Sha256;

pub const BLOCK_SIZE: u32 = 4096;

#[derive(Debug, Clone, Serialize)]
pub struct VerityTree {
    #[serde(skip)]
    pub hash_path: PathBuf,
    pub root_hash: Sha256,
    pub salt: String,
    pub uuid: String,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub hash_algorithm: &'static str,
    pub data_size: u64,
    pub hash_size: u64,
}

/// A UUID string made from 16 bytes of a digest.
pub fn uuid_from(d: &Sha256) -> String {
    let h = d.hex();
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

pub fn make_verity(data: &Path, hash_out: &Path) -> Result<VerityTree> {
    let digest = Sha256::of_file_with_progress(data, "verity: hash the root")?;
    make_verity_of(data, &digest, hash_out)
}

/// The hash tree of `data`, with salt and UUID made from `seed`: a digest
/// that determines the image's bytes (the image's sha256, which the
/// caller has just computed, or a stage-cache key).
pub fn make_verity_of(data: &Path, seed: &Sha256, hash_out: &Path) -> Result<VerityTree> {
    let salt = Sha256::of_bytes(format!("cairn verity salt {seed}").as_bytes());
    let uuid = uuid_from(&Sha256::of_bytes(
        format!("cairn verity uuid {seed}").as_bytes(),
    ));
    // The tree is written as `veritysetup format` writes it (a test
    // compares every byte), on every core: veritysetup hashes on one.
    let uuid_bytes = crate::host::verity::uuid_bytes(&uuid).context("verity: uuid")?;
    let tree = crate::host::verity::format(
        data,
        hash_out,
        &salt.0,
        &uuid_bytes,
        crate::host::parallel::cores(),
    )
    .with_context(|| {
        format!(
            "verity: hash tree of {} into {}",
            data.display(),
            hash_out.display()
        )
    })?;
    Ok(VerityTree {
        hash_path: hash_out.to_path_buf(),
        root_hash: tree.root_hash,
        salt: salt.hex(),
        uuid,
        data_block_size: BLOCK_SIZE,
        hash_block_size: BLOCK_SIZE,
        hash_algorithm: "sha256",
        data_size: tree.data_size,
        hash_size: tree.hash_size,
    })
}
