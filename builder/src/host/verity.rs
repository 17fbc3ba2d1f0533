//! The dm-verity on-disk format, as `veritysetup format` writes it with
//! the parameters cairn uses (format 1, sha256, 4096-byte data and hash
//! blocks, a salt, a superblock), written here so that the hash tree of a
//! multi-GB volume is computed on every core at once (veritysetup hashes
//! on one). A test compares every byte with veritysetup's; the kernel's
//! dm-verity reads it at every boot test.
//!
//! Layout of the hash file: the 512-byte superblock padded to one block,
//! then the tree's levels, the top one (nearest the root) first, each
//! level's digests packed 128 to a block and the last block zero-padded.
//! Every digest is sha256(salt || block). The root hash is the digest of
//! the top level's single block (of the data block itself when there is
//! only one). Memory: one digest per data block (32 bytes per 4 KiB).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::Digest as _;

use super::digest::Sha256;

/// Data and hash block size.
pub const BLOCK: u64 = 4096;
const DIGEST: usize = 32;
/// Digests in one hash block.
const PER_BLOCK: usize = BLOCK as usize / DIGEST;
/// dm-verity refuses longer salts.
pub const MAX_SALT: usize = 256;
/// What each worker reads at a time (a whole number of hash blocks' worth
/// of data, so workers' shares line up with hash blocks).
const READ: usize = 1 << 20;

/// A written hash tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    pub root_hash: Sha256,
    /// Bytes of data the tree covers.
    pub data_size: u64,
    /// Bytes in the hash file.
    pub hash_size: u64,
}

fn invalid(m: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, m)
}

/// Appends to `out` the digest of each 4096-byte block of `data`,
/// sha256(salt || block), `base` holding the salt.
pub fn hash_blocks(base: &sha2::Sha256, data: &[u8], out: &mut Vec<[u8; DIGEST]>) {
    for block in data.chunks_exact(BLOCK as usize) {
        out.push(base.clone().chain_update(block).finalize().into());
    }
}

/// Level 0 of the tree over the first `blocks` blocks of `file`: the
/// digests of the data blocks, computed by `workers` threads, each taking
/// one contiguous share that starts on a hash-block boundary.
fn level0(
    file: &File,
    blocks: u64,
    base: &sha2::Sha256,
    workers: usize,
) -> io::Result<Vec<[u8; DIGEST]>> {
    let groups = blocks.div_ceil(PER_BLOCK as u64);
    let workers = (workers.max(1) as u64).min(groups);
    let per = groups.div_ceil(workers) * PER_BLOCK as u64;
    let shares: Vec<(u64, u64)> = (0..workers)
        .map(|w| (w * per, ((w + 1) * per).min(blocks)))
        .filter(|(a, b)| a < b)
        .collect();
    let parts = std::thread::scope(|s| {
        let handles: Vec<_> = shares
            .iter()
            .map(|&(first, end)| {
                s.spawn(move || -> io::Result<Vec<[u8; DIGEST]>> {
                    let mut out = Vec::with_capacity((end - first) as usize);
                    let mut buf = vec![0u8; READ];
                    let mut at = first * BLOCK;
                    let stop = end * BLOCK;
                    while at < stop {
                        let want = (stop - at).min(READ as u64) as usize;
                        file.read_exact_at(&mut buf[..want], at).map_err(|e| {
                            if e.kind() == io::ErrorKind::UnexpectedEof {
                                io::Error::new(
                                    e.kind(),
                                    format!("data ends before byte {}", at + want as u64),
                                )
                            } else {
                                e
                            }
                        })?;
                        hash_blocks(base, &buf[..want], &mut out);
                        at += want as u64;
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect::<io::Result<Vec<_>>>()
    })?;
    Ok(parts.concat())
}

/// The hash blocks of one level (its digests packed, the last block
/// zero-padded) and the digests of those blocks (the next level up).
fn pack(level: &[[u8; DIGEST]], base: &sha2::Sha256) -> (Vec<u8>, Vec<[u8; DIGEST]>) {
    let mut blocks = vec![0u8; level.len().div_ceil(PER_BLOCK) * BLOCK as usize];
    for (slot, d) in blocks.chunks_exact_mut(DIGEST).zip(level) {
        slot.copy_from_slice(d);
    }
    let mut next = Vec::with_capacity(blocks.len() / BLOCK as usize);
    hash_blocks(base, &blocks, &mut next);
    (blocks, next)
}

/// The root hash over level 0's digests, and the levels' hash blocks from
/// level 0 up (empty for a single data block, whose digest is the root).
pub fn levels_from(level0: Vec<[u8; DIGEST]>, salt: &[u8]) -> io::Result<(Sha256, Vec<Vec<u8>>)> {
    let base = sha2::Sha256::new_with_prefix(salt);
    let mut levels = Vec::new();
    let mut level = level0;
    while level.len() > 1 {
        let (blocks, next) = pack(&level, &base);
        levels.push(blocks);
        level = next;
    }
    let root = level
        .first()
        .map(|d| Sha256(*d))
        .ok_or_else(|| invalid("no data".into()))?;
    Ok((root, levels))
}

/// The root hash of all of `data` (a positive multiple of 4096 bytes)
/// with `salt`, level 0 hashed by `workers` threads; nothing is written.
pub fn root_of(data: &Path, salt: &[u8], workers: usize) -> io::Result<Sha256> {
    let (file, blocks) = open_data(data, salt)?;
    let base = sha2::Sha256::new_with_prefix(salt);
    let level0 = level0(&file, blocks, &base, workers)?;
    Ok(levels_from(level0, salt)?.0)
}

/// Whether the hash file `hash` (as [`format`] writes it) leads to `root`
/// with `salt`: its superblock names `data_blocks`, and its top level
/// hashes to `root` (for a single data block, whose digest is the root,
/// there is no level to check). Reads two blocks.
pub fn tree_leads_to(
    hash: &Path,
    salt: &[u8],
    data_blocks: u64,
    root: &Sha256,
) -> io::Result<bool> {
    let f = File::open(hash)?;
    let mut sb = vec![0u8; 512];
    f.read_exact_at(&mut sb, 0)?;
    if sb[..8] != *b"verity\0\0" || sb[72..80] != data_blocks.to_le_bytes() {
        return Ok(false);
    }
    if data_blocks == 1 {
        return Ok(true);
    }
    let mut top = vec![0u8; BLOCK as usize];
    f.read_exact_at(&mut top, BLOCK)?;
    let got: [u8; DIGEST] = sha2::Sha256::new_with_prefix(salt)
        .chain_update(&top)
        .finalize()
        .into();
    Ok(Sha256(got) == *root)
}

fn open_data(data: &Path, salt: &[u8]) -> io::Result<(File, u64)> {
    if salt.len() > MAX_SALT {
        return Err(invalid(format!("salt of {} bytes is too long", salt.len())));
    }
    let file = File::open(data)?;
    let size = file.metadata()?.len();
    if size == 0 || size % BLOCK != 0 {
        return Err(invalid(format!(
            "{}: size {size} is not a positive multiple of {BLOCK}",
            data.display()
        )));
    }
    Ok((file, size / BLOCK))
}

/// The 512-byte superblock `veritysetup format` writes (version 1, hash
/// type 1), little-endian.
fn superblock(uuid: &[u8; 16], salt: &[u8], data_blocks: u64) -> Vec<u8> {
    let mut sb = Vec::with_capacity(512);
    sb.extend_from_slice(b"verity\0\0");
    sb.extend_from_slice(&1u32.to_le_bytes()); // version
    sb.extend_from_slice(&1u32.to_le_bytes()); // hash type: normal
    sb.extend_from_slice(uuid);
    let mut alg = [0u8; 32];
    alg[..6].copy_from_slice(b"sha256");
    sb.extend_from_slice(&alg);
    sb.extend_from_slice(&(BLOCK as u32).to_le_bytes());
    sb.extend_from_slice(&(BLOCK as u32).to_le_bytes());
    sb.extend_from_slice(&data_blocks.to_le_bytes());
    sb.extend_from_slice(&(salt.len() as u16).to_le_bytes());
    sb.extend_from_slice(&[0u8; 6]);
    let mut s = [0u8; MAX_SALT];
    s[..salt.len()].copy_from_slice(salt);
    sb.extend_from_slice(&s);
    sb.resize(512, 0);
    sb
}

/// Parses a UUID in its 8-4-4-4-12 text form.
pub fn uuid_bytes(uuid: &str) -> io::Result<[u8; 16]> {
    let hex: String = uuid.chars().filter(|c| *c != '-').collect();
    let mut out = [0u8; 16];
    if uuid.len() != 36 || hex.len() != 32 {
        return Err(invalid(format!("{uuid:?} is not a UUID")));
    }
    hex::decode_to_slice(&hex, &mut out).map_err(|_| invalid(format!("{uuid:?} is not a UUID")))?;
    Ok(out)
}

/// Writes the hash tree of all of `data` (a positive multiple of 4096
/// bytes) to `hash_out` (replaced), as `veritysetup format --salt=<salt>
/// --uuid=<uuid>` with 4096-byte blocks and sha256 writes it, level 0
/// hashed by `workers` threads.
pub fn format(
    data: &Path,
    hash_out: &Path,
    salt: &[u8],
    uuid: &[u8; 16],
    workers: usize,
) -> io::Result<Tree> {
    let (file, blocks) = open_data(data, salt)?;
    let base = sha2::Sha256::new_with_prefix(salt);
    let level0 = level0(&file, blocks, &base, workers)?;
    let (root_hash, levels) = levels_from(level0, salt)?;
    let mut out = std::io::BufWriter::new(File::create(hash_out)?);
    let mut sb = superblock(uuid, salt, blocks);
    sb.resize(BLOCK as usize, 0);
    out.write_all(&sb)?;
    // The top level first, level 0 last.
    for level in levels.iter().rev() {
        out.write_all(level)?;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_data()?;
    let hash_size = file.metadata()?.len();
    Ok(Tree {
        root_hash,
        data_size: blocks * BLOCK,
        hash_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(path: &Path, blocks: u64, seed: u8) {
        let mut v = Vec::with_capacity((blocks * BLOCK) as usize);
        let mut x = seed as u32 | 1;
        for _ in 0..blocks * BLOCK {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            v.push(x as u8);
        }
        std::fs::write(path, v).unwrap();
    }

    /// Every byte of the hash file and the root hash are veritysetup's,
    /// for sizes at each level boundary, with one worker and with several
    /// (shares that end inside a hash block). Control: another salt gives
    /// another root and other bytes.
    #[test]
    fn the_tree_is_veritysetups_byte_for_byte() {
        testkit::tool("veritysetup", "cryptsetup-bin");
        let d = tempfile::tempdir().unwrap();
        let salt = hex::decode("5a17".repeat(16)).unwrap();
        let uuid_s = "01234567-89ab-4cde-8f01-23456789abcd";
        let uuid = uuid_bytes(uuid_s).unwrap();
        for (i, blocks) in [1u64, 2, 128, 129, 300, 16384, 16385]
            .into_iter()
            .enumerate()
        {
            let img = d.path().join(format!("d{i}"));
            data(&img, blocks, i as u8);
            let theirs = d.path().join(format!("v{i}"));
            let mut c = crate::host::runner::command("veritysetup");
            c.arg("format")
                .arg(&img)
                .arg(&theirs)
                .args([
                    "--data-block-size=4096",
                    "--hash-block-size=4096",
                    "--hash=sha256",
                ])
                .arg(format!("--salt={}", hex::encode(&salt)))
                .arg(format!("--uuid={uuid_s}"));
            let out = crate::host::runner::output("test: veritysetup", c).unwrap();
            let out = String::from_utf8_lossy(&out.stdout).into_owned();
            let their_root = out
                .lines()
                .find_map(|l| l.strip_prefix("Root hash:"))
                .map(str::trim)
                .unwrap()
                .to_string();
            for workers in [1, 3] {
                let mine = d.path().join(format!("m{i}-{workers}"));
                let t = format(&img, &mine, &salt, &uuid, workers).unwrap();
                assert_eq!(
                    t.root_hash.hex(),
                    their_root,
                    "{blocks} blocks, {workers} workers"
                );
                let (a, b) = (
                    std::fs::read(&mine).unwrap(),
                    std::fs::read(&theirs).unwrap(),
                );
                assert_eq!(t.hash_size, b.len() as u64, "{blocks} blocks");
                assert!(
                    a == b,
                    "{blocks} blocks, {workers} workers: hash files differ"
                );
            }
            assert_eq!(root_of(&img, &salt, 2).unwrap().hex(), their_root);
            let root = Sha256::from_hex(&their_root).unwrap();
            assert!(tree_leads_to(&theirs, &salt, blocks, &root).unwrap());
            // Controls: another count of blocks, and (where the tree has a
            // level) another root.
            assert!(!tree_leads_to(&theirs, &salt, blocks + 1, &root).unwrap());
            if blocks > 1 {
                assert!(!tree_leads_to(&theirs, &salt, blocks, &Sha256::of_bytes(b"x")).unwrap());
            }
            let other = d.path().join(format!("o{i}"));
            let t = format(&img, &other, &[1, 2, 3], &uuid, 2).unwrap();
            assert_ne!(t.root_hash.hex(), their_root);
            assert_ne!(
                std::fs::read(&other).unwrap(),
                std::fs::read(&theirs).unwrap()
            );
        }
    }

    #[test]
    fn sizes_that_are_not_whole_blocks_and_bad_uuids_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("d");
        std::fs::write(&img, vec![0u8; 4097]).unwrap();
        let e = format(&img, &d.path().join("h"), b"s", &[0; 16], 2).unwrap_err();
        assert!(e.to_string().contains("not a positive multiple"), "{e}");
        std::fs::write(&img, b"").unwrap();
        assert!(format(&img, &d.path().join("h"), b"s", &[0; 16], 2).is_err());
        std::fs::write(&img, vec![0u8; 4096]).unwrap();
        assert!(format(&img, &d.path().join("h"), b"s", &[0; 16], 2).is_ok());
        assert!(uuid_bytes("01234567-89ab-4cde-8f01-23456789abcd").is_ok());
        assert!(uuid_bytes("0123456789ab4cde8f0123456789abcd").is_err());
        assert!(uuid_bytes("01234567-89ab-4cde-8f01-23456789abcx").is_err());
    }
}
