//! The volume stage, one for every read-only volume (the base, apps and
//! each model): a tree (or a file fed through a pseudo definition) packed
//! by [`squashfs`], its dm-verity hash tree made by [`hash_tree`], and the
//! pair kept in the stage cache by [`cached`], the one wrapper the build
//! sequence puts around a volume's making (`cached(cache, stage, key, ..,
//! || make())`, as mkosi places its cache calls). No other module stores
//! or looks up a volume (`.ci/layers.py` checks it).
//!
//! Invariant: a volume's bytes are a function of its key (the caller's
//! digest of every input: the tree or file, the options, the epoch), so a
//! stored volume is taken back only under the same key, and only after
//! its image checks against what was stored with it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::host::digest::Sha256;
use crate::inputs::cache::Cache;
use crate::pipeline::verity::VerityTree;

/// The stage-cache names a kind of volume keeps its image and hash tree
/// under.
pub struct Stage {
    pub image: &'static str,
    pub hash: &'static str,
}

pub const ROOT: Stage = Stage {
    image: "root-squashfs",
    hash: "root-verity",
};
pub const APPS: Stage = Stage {
    image: "apps-squashfs",
    hash: "apps-verity",
};
pub const MODEL: Stage = Stage {
    image: "model-volume",
    hash: "model-verity",
};

/// What mksquashfs packs and how: `mksquashfs TREE OUT OPTIONS
/// -all-time E -mkfs-time E -no-progress -quiet TAIL`, with `env` set.
pub struct Pack<'a> {
    /// The stage named in the runner's log and errors.
    pub label: &'static str,
    pub tree: &'a Path,
    pub options: Vec<OsString>,
    pub tail: Vec<OsString>,
    pub env: Option<(&'static str, &'a Path)>,
}

/// The one mksquashfs call: packs `p` into `out`, every time the epoch
/// (mksquashfs ≥ 4.4 is reproducible given fixed times). Returns the
/// image's size.
pub fn squashfs(p: &Pack, out: &Path, epoch: u64) -> Result<u64> {
    let sh = crate::host::runner::shell()?;
    let e = epoch.to_string();
    let (tree, options, tail) = (p.tree, &p.options, &p.tail);
    let mut cmd = xshell::cmd!(
        sh,
        "mksquashfs {tree} {out} {options...} -all-time {e} -mkfs-time {e} -no-progress -quiet {tail...}"
    );
    if let Some((k, v)) = p.env {
        cmd = cmd.env(k, v);
    }
    crate::host::runner::run(p.label, cmd)?;
    Ok(std::fs::metadata(out)?.len())
}

/// A volume made now, not yet stored.
pub struct Made {
    pub image: PathBuf,
    pub verity: VerityTree,
    /// The image's sha256, when it seeded the hash tree: the stage cache
    /// then keeps the image as a blob checked by it.
    digest: Option<Sha256>,
}

/// What seeds a hash tree's salt and UUID: a digest that determines the
/// image's bytes.
pub enum Seed<'a> {
    /// The image's sha256, computed here (the progress bar says `what`).
    Image(&'a str),
    /// The volume's key, when hashing a volume of GBs once more would cost
    /// more than it tells (the image is then kept by its root hash).
    Key(&'a Sha256),
}

/// The dm-verity hash tree of `image`, written to `hash_out`.
pub fn hash_tree(image: &Path, seed: Seed, hash_out: &Path) -> Result<Made> {
    use crate::pipeline::verity::make_verity_of;
    let (digest, verity) = match seed {
        Seed::Image(what) => {
            let d = Sha256::of_file_with_progress(image, what)?;
            (Some(d), make_verity_of(image, &d, hash_out)?)
        }
        Seed::Key(k) => (None, make_verity_of(image, k, hash_out)?),
    };
    Ok(Made {
        image: image.to_path_buf(),
        verity,
        digest,
    })
}

/// A volume ready for the media: from the stage cache or made now.
#[derive(Debug, Clone)]
pub struct Built {
    /// The squashfs image (in the work folder or the stage cache).
    pub image: PathBuf,
    pub verity: VerityTree,
    /// Whether it came from the stage cache.
    pub cached: bool,
}

/// The stage-cache wrapper: the volume stored under `key` when there is
/// one that checks, else `make()`'s, moved into the cache. `key` None:
/// the stage cache is off; nothing is looked up or stored. `alongside`
/// runs on a thread of its own while a stored image is checked (a file
/// model's pin check: both read GBs), and its error wins.
pub fn cached(
    cache: &Cache,
    stage: &Stage,
    key: Option<&Sha256>,
    alongside: Option<&(dyn Fn() -> Result<()> + Sync)>,
    make: impl FnOnce() -> Result<Made>,
) -> Result<Built> {
    let Some(key) = key else {
        let m = make()?;
        return Ok(Built {
            image: m.image,
            verity: m.verity,
            cached: false,
        });
    };
    let hit = match alongside {
        Some(check) if stored(cache, stage, key) => std::thread::scope(|s| {
            let checked = s.spawn(check);
            let v = lookup(cache, stage, key);
            checked
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
                .map(|()| v)
        })?,
        _ => lookup(cache, stage, key),
    };
    if let Some((image, verity)) = hit {
        return Ok(Built {
            image,
            verity,
            cached: true,
        });
    }
    let m = make()?;
    let image = store(cache, stage, key, &m)?;
    Ok(Built {
        image,
        verity: m.verity,
        cached: false,
    })
}

/// The hash tree's parameters, as the stage cache keeps them.
fn verity_line(v: &VerityTree) -> String {
    format!(
        "{} {} {} {} {}",
        v.root_hash, v.salt, v.uuid, v.data_size, v.hash_size
    )
}

/// Stores a new volume under `key`: the image is moved in, not copied,
/// and the media read it from there (the returned path); the hash tree is
/// stored with its parameters ([`verity_line`]). With the image's sha256
/// the image is a blob checked by it; without, it is checked by the
/// tree's root hash (`stagecache::store_volume_image`), for volumes of GBs
/// whose sha256 the build does not otherwise need.
fn store(cache: &Cache, stage: &Stage, key: &Sha256, m: &Made) -> Result<PathBuf> {
    use crate::inputs::stagecache;
    let image = match &m.digest {
        Some(d) => stagecache::store_moved(cache, stage.image, key, &m.image, d, "")?,
        None => stagecache::store_volume_image(cache, stage.image, key, &m.image)?,
    };
    stagecache::store(
        cache,
        stage.hash,
        key,
        &m.verity.hash_path,
        &verity_line(&m.verity),
    )?;
    Ok(image)
}

/// Whether a volume is stored for `key` (its image not yet checked).
fn stored(cache: &Cache, stage: &Stage, key: &Sha256) -> bool {
    use crate::inputs::stagecache;
    stagecache::indexed(cache, true, stage.image, key)
        || stagecache::volume_image_path(cache, stage.image, key).is_file()
}

/// Where a volume kept by its root hash lives in the cache (for tests
/// that damage it).
#[cfg(test)]
pub fn stored_image_path(cache: &Cache, stage: &Stage, key: &Sha256) -> PathBuf {
    crate::inputs::stagecache::volume_image_path(cache, stage.image, key)
}

/// The stored image and hash tree for `key`, used in place, when both are
/// there and agree. The tree is a blob checked by its sha256; the image is
/// a blob checked the same way, or (stored without a digest) checked by
/// recomputing its root hash, on every core. An image that fails its check
/// is removed, with a warning, and the volume is made again.
pub(crate) fn lookup(cache: &Cache, stage: &Stage, key: &Sha256) -> Option<(PathBuf, VerityTree)> {
    use crate::inputs::stagecache;
    let (hash, line) = stagecache::lookup(cache, true, stage.hash, key)?;
    let w: Vec<&str> = line.split_whitespace().collect();
    let [root, salt, uuid, data, hsize] = w[..] else {
        return None;
    };
    let v = VerityTree {
        hash_path: hash,
        root_hash: Sha256::from_hex(root).ok()?,
        salt: salt.to_string(),
        uuid: uuid.to_string(),
        data_block_size: crate::pipeline::verity::BLOCK_SIZE,
        hash_block_size: crate::pipeline::verity::BLOCK_SIZE,
        hash_algorithm: "sha256",
        data_size: data.parse().ok()?,
        hash_size: hsize.parse().ok()?,
    };
    if std::fs::metadata(&v.hash_path).ok()?.len() != v.hash_size {
        return None;
    }
    if let Some((image, _)) = stagecache::lookup(cache, true, stage.image, key) {
        let size = std::fs::metadata(&image).ok()?.len();
        return (size == v.data_size).then_some((image, v));
    }
    let image = stagecache::volume_image_path(cache, stage.image, key);
    let size = std::fs::metadata(&image).ok()?.len();
    let salt = hex::decode(&v.salt).ok()?;
    let blocks = v.data_size / u64::from(crate::pipeline::verity::BLOCK_SIZE);
    let checked = (|| -> std::io::Result<bool> {
        if size != v.data_size
            || !crate::host::verity::tree_leads_to(&v.hash_path, &salt, blocks, &v.root_hash)?
        {
            return Ok(false);
        }
        let root = crate::host::verity::root_of(&image, &salt, crate::host::parallel::cores())?;
        Ok(root == v.root_hash)
    })();
    match checked {
        Ok(true) => Some((image, v)),
        Ok(false) => {
            eprintln!(
                "warning: stage cache: volume image {} does not match its hash tree (root hash {}); removed, the volume is made again",
                image.display(),
                v.root_hash
            );
            std::fs::remove_file(&image).ok();
            None
        }
        Err(e) => {
            eprintln!(
                "warning: stage cache: cannot check {}: {e}",
                image.display()
            );
            None
        }
    }
}
