//! Stage cache: reuses the expensive results of a build (the Debian base
//! tree, OCI images built from packages) when their inputs are unchanged,
//! so changing an overlay file or model data costs far less than a cold
//! build. Entries live in the content-addressed cache: a small index file
//! per input key names the blob holding the result, and every blob is
//! checked against its digest on read.
//! Invariant: a key covers every input of the stage (cairn's version, the
//! tool arguments, packages, mirror, epoch, lock); anything else misses.
//! The caller decides whether it is on (`Settings::stage_cache`; the CLI
//! turns it off for `CAIRN_NO_STAGE_CACHE=1`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::host::digest::Sha256;
use crate::inputs::cache::Cache;

/// The key of a stage: a digest over a description of all its inputs.
pub fn key(stage: &str, inputs: &[String]) -> Sha256 {
    let mut text = format!("cairn-stage-v1\n{stage}\n{}\n", env!("CARGO_PKG_VERSION"));
    for i in inputs {
        text.push_str(i);
        text.push('\n');
    }
    Sha256::of_bytes(text.as_bytes())
}

fn index_path(cache: &Cache, stage: &str, key: &Sha256) -> PathBuf {
    cache.root().join("stages").join(format!("{stage}-{key}"))
}

/// The stored result (blob path and the extra line saved with it).
pub fn lookup(
    cache: &Cache,
    enabled: bool,
    stage: &str,
    key: &Sha256,
) -> Option<(PathBuf, String)> {
    if !enabled {
        return None;
    }
    let (digest, extra) = read_index(cache, stage, key)?;
    let blob = cache.get(&digest)?;
    Some((blob, extra))
}

/// Whether a result is stored for `key` (its index read, its blob neither
/// looked for nor checked): to know before [`lookup`] checks a blob of GBs
/// whether the stage will be run.
pub fn indexed(cache: &Cache, enabled: bool, stage: &str, key: &Sha256) -> bool {
    enabled && read_index(cache, stage, key).is_some()
}

/// The blob digest and extra line an index names (the blob not checked).
fn read_index(cache: &Cache, stage: &str, key: &Sha256) -> Option<(Sha256, String)> {
    let text = std::fs::read_to_string(index_path(cache, stage, key)).ok()?;
    let mut lines = text.lines();
    let digest = Sha256::from_hex(lines.next()?.trim()).ok()?;
    let extra = lines.next().unwrap_or("").to_string();
    Some((digest, extra))
}

/// Stores `file` as the result of `stage` for `key`, with one extra line.
/// Stores a stage result (callers store only when the stage cache is on).
pub fn store(cache: &Cache, stage: &str, key: &Sha256, file: &Path, extra: &str) -> Result<()> {
    let digest = cache.put_file(file)?;
    write_index(cache, stage, key, &digest, extra)
}

/// Like [`store`], but moves `file` into the cache ([`Cache::put_moved`]:
/// no copy of a multi-GB volume); `digest` is its sha256. Returns where
/// the result now lives.
pub fn store_moved(
    cache: &Cache,
    stage: &str,
    key: &Sha256,
    file: &Path,
    digest: &Sha256,
    extra: &str,
) -> Result<PathBuf> {
    let blob = cache.put_moved(file, digest)?;
    write_index(cache, stage, key, digest, extra)?;
    Ok(blob)
}

/// Where a volume image stored by [`store_volume_image`] lives:
/// `ROOT/volumes/STAGE-KEY`. Such an image is not a sha256 blob: its
/// caller checks it by its dm-verity root hash (which the build computes
/// anyway), so a multi-GB volume is not hashed a second time to be stored.
pub fn volume_image_path(cache: &Cache, stage: &str, key: &Sha256) -> PathBuf {
    cache
        .root()
        .join(crate::inputs::cache::VOLUMES)
        .join(format!("{stage}-{key}"))
}

/// Moves `file` into the cache as the volume image of `stage` for `key`
/// (read-only, fsynced, renamed into place, replacing an older one);
/// returns where it now lives.
pub fn store_volume_image(
    cache: &Cache,
    stage: &str,
    key: &Sha256,
    file: &Path,
) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let dest = volume_image_path(cache, stage, key);
    let dir = dest.parent().context("stage cache: volume folder")?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("stage cache: create {}", dir.display()))?;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o444))
        .with_context(|| format!("stage cache: chmod {}", file.display()))?;
    std::fs::File::open(file)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("stage cache: fsync {}", file.display()))?;
    match std::fs::rename(file, &dest) {
        Ok(()) => {}
        // The work folder is on another file system: a copy (its bytes are
        // checked by their root hash when read back, as a moved one is).
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let tmp = tempfile::Builder::new()
                .prefix(".tmp-")
                .tempfile_in(dir)
                .with_context(|| format!("stage cache: create a file in {}", dir.display()))?;
            std::fs::copy(file, tmp.path())
                .and_then(|_| tmp.as_file().sync_all())
                .with_context(|| {
                    format!(
                        "stage cache: copy {} into {}",
                        file.display(),
                        dir.display()
                    )
                })?;
            tmp.persist(&dest)
                .map_err(|e| e.error)
                .with_context(|| format!("stage cache: rename into {}", dest.display()))?;
            std::fs::remove_file(file).ok();
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "stage cache: cannot move {} into {}",
                    file.display(),
                    dest.display()
                )
            })
        }
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(dest)
}

fn write_index(
    cache: &Cache,
    stage: &str,
    key: &Sha256,
    digest: &Sha256,
    extra: &str,
) -> Result<()> {
    let idx = index_path(cache, stage, key);
    let dir = idx.parent().context("stage index folder")?;
    std::fs::create_dir_all(dir)?;
    // Unique per writer: two threads may store the same key at once.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{stage}-{key}.{}.{n}", std::process::id()));
    std::fs::write(&tmp, format!("{digest}\n{extra}\n"))?;
    std::fs::rename(&tmp, &idx).context("stage cache: publish index")?;
    Ok(())
}

/// Runs `tar -c` for the cache (numeric owners, extended attributes,
/// sorted names) of `members` of `tree` into `out`; `extra` options go
/// before `-c`.
fn tar_create(tree: &Path, out: &Path, extra: &[String], members: &[String]) -> Result<()> {
    let sh = crate::host::runner::shell()?;
    crate::host::runner::run(
        "stage cache: pack",
        xshell::cmd!(
            sh,
            "tar --numeric-owner --xattrs --xattrs-include=* --sort=name {extra...} -cf {out} -C {tree} {members...}"
        ),
    )?;
    Ok(())
}

/// Packs a root tree (numeric owners, extended attributes) for the cache.
pub fn pack_tree(tree: &Path, out: &Path) -> Result<()> {
    tar_create(tree, out, &[], &[".".into()])
}

/// Unpacks a cached root tree into an empty `tree`.
pub fn unpack_tree(blob: &Path, tree: &Path) -> Result<()> {
    unpack_trees(&[blob.to_path_buf()], tree)
}

/// The folder of a Debian root that [`pack_tree_split`] packs apart: about
/// half of it (libraries and kernel modules), so two tar processes unpack
/// the two halves at once.
pub const SPLIT_AT: &str = "usr/lib";

/// The extra line of a stage entry whose tree is stored in two parts
/// ([`store_tree`]); the part is under the stage's name + [`PART`].
const SPLIT_MARK: &str = "split usr/lib";
const PART: &str = "-part";

/// Packs `tree` as two tarballs, `rest` (everything but [`SPLIT_AT`]) and
/// `part` ([`SPLIT_AT`] with its contents), for [`unpack_trees`]. `None`
/// (nothing written) when [`SPLIT_AT`] is not a real folder of the tree:
/// then the caller packs it whole.
pub fn pack_tree_split(tree: &Path, rest: &Path, part: &Path) -> Result<Option<()>> {
    let split = tree.join(SPLIT_AT);
    if !std::fs::symlink_metadata(&split)
        .map(|m| m.is_dir())
        .unwrap_or(false)
    {
        return Ok(None);
    }
    let member = format!("./{SPLIT_AT}");
    tar_create(
        tree,
        rest,
        &["--anchored".into(), format!("--exclude={member}")],
        &[".".into()],
    )?;
    tar_create(tree, part, &[], &[member])?;
    Ok(Some(()))
}

/// Stores a root tree as the result of `stage` for `key`: in two parts
/// when it has [`SPLIT_AT`] ([`pack_tree_split`]), else whole. `scratch`
/// is a path prefix for the temporary tarballs.
pub fn store_tree(
    cache: &Cache,
    stage: &str,
    key: &Sha256,
    tree: &Path,
    scratch: &Path,
) -> Result<()> {
    let rest = scratch.with_extension("tar");
    let part = scratch.with_extension("part.tar");
    if pack_tree_split(tree, &rest, &part)?.is_some() {
        // The part first: an entry never names a part that is not stored.
        store(cache, &format!("{stage}{PART}"), key, &part, "")?;
        store(cache, stage, key, &rest, SPLIT_MARK)?;
        std::fs::remove_file(&part).ok();
    } else {
        pack_tree(tree, &rest)?;
        store(cache, stage, key, &rest, "")?;
    }
    std::fs::remove_file(&rest).ok();
    Ok(())
}

/// The tarballs of a tree [`store_tree`] stored (one, or the two parts),
/// for [`unpack_trees`]; `None` on a miss.
pub fn lookup_tree(
    cache: &Cache,
    enabled: bool,
    stage: &str,
    key: &Sha256,
) -> Option<Vec<PathBuf>> {
    match lookup(cache, enabled, stage, key)? {
        (rest, extra) if extra == SPLIT_MARK => {
            let (part, _) = lookup(cache, enabled, &format!("{stage}{PART}"), key)?;
            Some(vec![rest, part])
        }
        (whole, _) => Some(vec![whole]),
    }
}

/// The bytes of the tarballs [`store_tree`] stored for `key`, read from
/// the index and the blobs' sizes without checking the blobs: for
/// planning where the tree goes ([`lookup_tree`] checks them).
pub fn tree_size(cache: &Cache, enabled: bool, stage: &str, key: &Sha256) -> Option<u64> {
    if !enabled {
        return None;
    }
    let size = |d: &Sha256| std::fs::metadata(cache.blob_path(d)).ok().map(|m| m.len());
    let (rest, extra) = read_index(cache, stage, key)?;
    let mut total = size(&rest)?;
    if extra == SPLIT_MARK {
        let (part, _) = read_index(cache, &format!("{stage}{PART}"), key)?;
        total += size(&part)?;
    }
    Some(total)
}

/// Unpacks cached tarballs of one root tree (disjoint parts of it, as
/// [`pack_tree_split`] makes) into `tree`, all at once, one tar process
/// each. A folder one part needs before the other has made it is made
/// by tar; the part that holds the folder's own entry sets its mode and
/// owner (`-p`, also on a folder that exists); times are the epoch's after
/// normalise either way.
pub fn unpack_trees(blobs: &[PathBuf], tree: &Path) -> Result<()> {
    std::fs::create_dir_all(tree)?;
    if blobs.len() > 1 {
        // The folders above SPLIT_AT, made before the parts unpack: tar
        // gives up on a member whose missing parent another tar made in
        // between (GNU tar: "Cannot mkdir: No such file or directory").
        // The part holding their entries sets their mode and owner.
        if let Some(parent) = Path::new(SPLIT_AT).parent() {
            std::fs::create_dir_all(tree.join(parent))
                .with_context(|| format!("stage cache: create {}", tree.join(parent).display()))?;
        }
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = blobs
            .iter()
            .map(|blob| {
                s.spawn(move || -> Result<()> {
                    let sh = crate::host::runner::shell()?;
                    crate::host::runner::run(
                        "stage cache: unpack",
                        xshell::cmd!(
                            sh,
                            "tar --numeric-owner --xattrs --xattrs-include=* -xpf {blob} -C {tree}"
                        ),
                    )?;
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("stage cache: an unpacking thread panicked"))??;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cover_every_input_and_roundtrip() {
        let a = key("base", &["bookworm".into(), "pkgs a,b".into()]);
        assert_eq!(a, key("base", &["bookworm".into(), "pkgs a,b".into()]));
        assert_ne!(a, key("base", &["bookworm".into(), "pkgs a,b,c".into()]));
        assert_ne!(a, key("image", &["bookworm".into(), "pkgs a,b".into()]));
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::open(d.path().join("c")).unwrap();
        let f = d.path().join("result");
        std::fs::write(&f, "tree").unwrap();
        assert!(lookup(&cache, true, "base", &a).is_none());
        store(&cache, "base", &a, &f, "extra").unwrap();
        let (blob, extra) = lookup(&cache, true, "base", &a).unwrap();
        assert_eq!(std::fs::read_to_string(blob).unwrap(), "tree");
        assert_eq!(extra, "extra");
        // Another key misses.
        assert!(lookup(&cache, true, "base", &key("base", &[])).is_none());
    }

    #[test]
    fn trees_roundtrip_with_links_and_modes() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("t");
        std::fs::create_dir_all(t.join("usr/bin")).unwrap();
        std::fs::write(t.join("usr/bin/x"), "x").unwrap();
        std::fs::set_permissions(t.join("usr/bin/x"), std::fs::Permissions::from_mode(0o4755))
            .unwrap();
        std::os::unix::fs::symlink("usr/bin", t.join("bin")).unwrap();
        let tar = d.path().join("t.tar");
        pack_tree(&t, &tar).unwrap();
        let u = d.path().join("u");
        unpack_tree(&tar, &u).unwrap();
        assert_eq!(
            std::fs::metadata(u.join("usr/bin/x"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o4755
        );
        assert_eq!(
            std::fs::read_link(u.join("bin")).unwrap(),
            Path::new("usr/bin")
        );
    }

    #[test]
    fn a_tree_packed_in_two_parts_unpacks_the_same() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("t");
        for f in [
            "usr/lib/modules/m.ko",
            "usr/lib/x/y.so",
            "usr/bin/x",
            "etc/a",
            "usr/lib64/z",
        ] {
            std::fs::create_dir_all(t.join(f).parent().unwrap()).unwrap();
            std::fs::write(t.join(f), f).unwrap();
        }
        std::os::unix::fs::symlink("usr/lib", t.join("lib")).unwrap();
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
        // Modes that differ from what tar makes for a folder it needs.
        std::fs::set_permissions(t.join("usr"), std::fs::Permissions::from_mode(0o750)).unwrap();
        std::fs::set_permissions(t.join("usr/lib"), std::fs::Permissions::from_mode(0o711))
            .unwrap();
        let (rest, part) = (d.path().join("rest.tar"), d.path().join("part.tar"));
        assert!(pack_tree_split(&t, &rest, &part).unwrap().is_some());
        let u = d.path().join("u");
        unpack_trees(&[rest.clone(), part.clone()], &u).unwrap();
        let listing = |root: &Path| -> Vec<(PathBuf, u32, u64, Option<Vec<u8>>)> {
            walkdir::WalkDir::new(root)
                .sort_by_file_name()
                .into_iter()
                .map(|e| {
                    let e = e.unwrap();
                    let m = std::fs::symlink_metadata(e.path()).unwrap();
                    (
                        e.path().strip_prefix(root).unwrap().to_path_buf(),
                        mode(e.path()),
                        m.uid() as u64,
                        m.is_file().then(|| std::fs::read(e.path()).unwrap()),
                    )
                })
                .collect()
        };
        assert_eq!(listing(&t), listing(&u));
        assert_eq!(mode(&u.join("usr")), 0o750);
        assert_eq!(mode(&u.join("usr/lib")), 0o711);
        // The parts are disjoint: usr/lib only in one, usr/lib64 in the other.
        let names = |tar: &Path| {
            let mut cmd = crate::host::runner::command("tar");
            cmd.arg("-tf").arg(tar);
            let out = crate::host::runner::output("stage cache test: list", cmd).unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        let (r, p) = (names(&rest), names(&part));
        assert!(
            r.contains("./usr/lib64/z") && !r.contains("./usr/lib/"),
            "{r}"
        );
        assert!(
            p.contains("./usr/lib/modules/m.ko") && !p.contains("lib64"),
            "{p}"
        );
        // Control: without the folder, nothing is split.
        let t2 = d.path().join("t2");
        std::fs::create_dir_all(t2.join("usr")).unwrap();
        assert!(
            pack_tree_split(&t2, &d.path().join("r2"), &d.path().join("p2"))
                .unwrap()
                .is_none()
        );
        // Through the cache: two blobs for the split tree, one for the other.
        let cache = Cache::open(d.path().join("c")).unwrap();
        let k = key("tree", &[]);
        store_tree(&cache, "tree", &k, &t, &d.path().join("s1")).unwrap();
        let blobs = lookup_tree(&cache, true, "tree", &k).unwrap();
        assert_eq!(blobs.len(), 2);
        let v = d.path().join("v");
        unpack_trees(&blobs, &v).unwrap();
        assert_eq!(listing(&t), listing(&v));
        let k2 = key("tree", &["2".into()]);
        store_tree(&cache, "tree", &k2, &t2, &d.path().join("s2")).unwrap();
        assert_eq!(lookup_tree(&cache, true, "tree", &k2).unwrap().len(), 1);
        assert!(lookup_tree(&cache, false, "tree", &k).is_none());
        // The planned size is the stored tarballs' (both parts, or one).
        let bytes =
            |b: &[PathBuf]| -> u64 { b.iter().map(|p| std::fs::metadata(p).unwrap().len()).sum() };
        assert_eq!(tree_size(&cache, true, "tree", &k), Some(bytes(&blobs)));
        let one = lookup_tree(&cache, true, "tree", &k2).unwrap();
        assert_eq!(tree_size(&cache, true, "tree", &k2), Some(bytes(&one)));
        assert_eq!(tree_size(&cache, false, "tree", &k), None);
        assert_eq!(
            tree_size(&cache, true, "tree", &key("tree", &["3".into()])),
            None
        );
    }
}
