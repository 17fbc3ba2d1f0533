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

/// Where the tree starts in its hash device: after the superblock, padded
/// to one hash block (`host::verity`'s layout, `veritysetup format`'s).
/// The init opens every volume with `--no-superblock` and these values:
/// the superblock sits beside the tree, outside what the signed root hash
/// covers, so nothing in it is read at boot.
pub const HASH_OFFSET: u64 = BLOCK_SIZE as u64;

/// The signed command-line word with what the superblock would say of a
/// volume's tree: `cairn.verity.KEY=SALT,DATA_BLOCKS` (KEY: `root`, `apps`
/// or `model-NAME`, the init's mapping name without `cairn-`). The block
/// count has 16 digits so a command line's length is known before the
/// volumes are made (the UKI templates made ahead). Hash type 1, sha256,
/// 4096-byte blocks and the hash offset are cairn's constants, in the init
/// as here (a test compares them).
pub fn params_word(key: &str, salt_hex: &str, data_blocks: u64) -> String {
    format!("cairn.verity.{key}={salt_hex},{data_blocks:016}")
}

impl VerityTree {
    /// [`params_word`] of this tree.
    pub fn params_word(&self, key: &str) -> String {
        params_word(
            key,
            &self.salt,
            self.data_size / u64::from(self.data_block_size),
        )
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The init opens volumes with cairn's constants and the word's salt
    /// and block count, never the superblock's.
    #[test]
    fn the_init_opens_volumes_with_the_signed_parameters() {
        let init = crate::pipeline::initramfs::INIT;
        let f = &init[init.find("verity_args() {").expect("verity_args")..];
        let f = &f[..f.find("\n}\n").unwrap()];
        for want in [
            "--no-superblock".to_string(),
            "--format=1".to_string(),
            "--hash=sha256".to_string(),
            format!("--data-block-size={BLOCK_SIZE}"),
            format!("--hash-block-size={BLOCK_SIZE}"),
            format!("--hash-offset={HASH_OFFSET}"),
        ] {
            assert!(f.contains(&want), "{want} not in {f}");
        }
        // Every veritysetup open takes them.
        let opens = init.matches("veritysetup open").count();
        assert!(opens >= 4, "{opens}");
        assert_eq!(
            init.matches("veritysetup open $va ").count(),
            opens,
            "a veritysetup open without the signed parameters"
        );
        let w = params_word("model-iris", &"ab".repeat(32), 300);
        assert_eq!(
            w,
            format!(
                "cairn.verity.model-iris={},0000000000000300",
                "ab".repeat(32)
            )
        );
        // The options are veritysetup's and find the tree: `veritysetup
        // verify` (userspace, no device-mapper) with exactly the init's
        // options passes on a tree cairn made, after its superblock is
        // wiped (so nothing of it is used). Control: another salt fails.
        testkit::tool("veritysetup", "cryptsetup-bin");
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        let bytes: Vec<u8> = (0..300 * 4096u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&data, &bytes).unwrap();
        let hash = d.path().join("hash");
        let t = make_verity_of(&data, &Sha256::of_bytes(b"seed"), &hash).unwrap();
        let mut h = std::fs::read(&hash).unwrap();
        h[..512].fill(0);
        std::fs::write(&hash, &h).unwrap();
        let line = f
            .lines()
            .find_map(|l| l.trim().strip_prefix("echo \""))
            .and_then(|l| l.strip_suffix('"'))
            .expect("the echo of verity_args");
        let verify = |salt: &str| {
            let opts = line
                .replace("$salt", salt)
                .replace("$blocks", &(t.data_size / 4096).to_string());
            let mut c = crate::host::runner::command("veritysetup");
            c.arg("verify")
                .args(opts.split_whitespace())
                .arg(&data)
                .arg(&hash)
                .arg(t.root_hash.hex());
            crate::host::runner::output("test: veritysetup verify", c)
        };
        verify(&t.salt).unwrap();
        assert!(verify(&"0".repeat(64)).is_err());
        // Control: the word's length does not depend on the values.
        assert_eq!(
            params_word("root", &"0".repeat(64), 0).len(),
            params_word("root", &"f".repeat(64), 123_456_789).len()
        );
    }
}
