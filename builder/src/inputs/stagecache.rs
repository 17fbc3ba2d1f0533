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
    let text = std::fs::read_to_string(index_path(cache, stage, key)).ok()?;
    let mut lines = text.lines();
    let digest = Sha256::from_hex(lines.next()?.trim()).ok()?;
    let extra = lines.next().unwrap_or("").to_string();
    let blob = cache.get(&digest)?;
    Some((blob, extra))
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
    let tmp = dir.join(format!(".{stage}-{key}.{}", std::process::id()));
    std::fs::write(&tmp, format!("{digest}\n{extra}\n"))?;
    std::fs::rename(&tmp, &idx).context("stage cache: publish index")?;
    Ok(())
}

/// Packs a root tree (numeric owners, extended attributes) for the cache.
pub fn pack_tree(tree: &Path, out: &Path) -> Result<()> {
    let sh = xshell::Shell::new()?;
    crate::host::runner::run(
        "stage cache: pack",
        xshell::cmd!(
            sh,
            "tar --numeric-owner --xattrs --xattrs-include=* --sort=name -cf {out} -C {tree} ."
        ),
    )?;
    Ok(())
}

/// Unpacks a cached root tree into an empty `tree`.
pub fn unpack_tree(blob: &Path, tree: &Path) -> Result<()> {
    std::fs::create_dir_all(tree)?;
    let sh = xshell::Shell::new()?;
    crate::host::runner::run(
        "stage cache: unpack",
        xshell::cmd!(
            sh,
            "tar --numeric-owner --xattrs --xattrs-include=* -xpf {blob} -C {tree}"
        ),
    )?;
    Ok(())
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
}
