//! Go module files in a cache export (`runtime = "kubernetes"`): the
//! files of the Go module cache's download folder
//! (`$CAIRN_CACHE/go/mod/cache/download/MODULE/@v/VERSION.{info,mod,zip,ziphash}`)
//! that `cairn fetch` filled, carried as content-addressed members of the
//! export with an index (`GO-MODULES`: `SHA256 PATH` lines). An import
//! stores them as blobs, then places each under its path, so an offline
//! build (`GOPROXY=off`) finds them; Go itself checks every `.zip` and
//! `.mod` against go.sum when it uses them.
//! Invariant: an index path is a plain relative path of the download
//! folder's shape (no `..`, no dot-led component, only module-path
//! characters), so a hostile export cannot place a file elsewhere.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::host::digest::Sha256;

/// An index: each Go module file's digest and download path.
pub type Index = Vec<(Sha256, String)>;

/// The export member that lists the Go module files.
pub const MEMBER: &str = "GO-MODULES";
/// The index of a cluster's modules is a few hundred lines.
pub const MAX_INDEX: u64 = 8 << 20;
/// The files a module download leaves that a build reads.
const SUFFIXES: &[&str] = &[".info", ".mod", ".zip", ".ziphash"];

/// The Go module cache's download folder under the cache root (the
/// cluster stage's `GOMODCACHE` is `ROOT/go/mod`).
pub fn download_dir(cache_root: &Path) -> PathBuf {
    cache_root.join("go/mod/cache/download")
}

/// `rel` is a path the download folder can hold: `MODULE/@v/FILE` with a
/// known suffix, each component plain.
pub fn check_path(rel: &str) -> Result<()> {
    let parts: Vec<&str> = rel.split('/').collect();
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "-._~!+".contains(c);
    let plain = |p: &&str| !p.is_empty() && !p.starts_with('.') && p.chars().all(ok_char);
    let n = parts.len();
    if n < 3
        || parts[n - 2] != "@v"
        || !parts[..n - 2].iter().all(plain)
        || !plain(&parts[n - 1])
        || !SUFFIXES.iter().any(|s| parts[n - 1].ends_with(s))
    {
        bail!(
            "{MEMBER}: {rel:?} is not a Go module download path (MODULE/@v/VERSION.info|mod|zip|ziphash)"
        );
    }
    Ok(())
}

/// Every Go module file in the download folder under `cache_root`,
/// sorted by path: `(path relative to the folder, file)`.
pub fn files(cache_root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let dir = download_dir(cache_root);
    let mut out = Vec::new();
    if !dir.is_dir() {
        return Ok(out);
    }
    for e in walkdir::WalkDir::new(&dir).sort_by_file_name() {
        let e = e.with_context(|| format!("cache export: reading {}", dir.display()))?;
        // The checksum database's tiles and version lists are not needed:
        // go.sum pins every module.
        if !e.file_type().is_file() {
            continue;
        }
        let Ok(rel) = e.path().strip_prefix(&dir) else {
            continue;
        };
        let Some(rel) = rel.to_str() else { continue };
        if check_path(rel).is_ok() {
            out.push((rel.to_string(), e.path().to_path_buf()));
        }
    }
    Ok(out)
}

/// The index member's text.
pub fn index(entries: &[(Sha256, String)]) -> String {
    entries.iter().map(|(d, p)| format!("{d} {p}\n")).collect()
}

/// Parses the index member: each line `SHA256 PATH`, paths checked and
/// unique.
pub fn parse_index(text: &str) -> Result<Index> {
    let mut out: Vec<(Sha256, String)> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let (hex, path) = line
            .split_once(' ')
            .with_context(|| format!("{MEMBER} line {}: expected `SHA256 PATH`", i + 1))?;
        let d = Sha256::from_hex(hex).with_context(|| format!("{MEMBER} line {}", i + 1))?;
        check_path(path).with_context(|| format!("{MEMBER} line {}", i + 1))?;
        if !seen.insert(path.to_string()) {
            bail!("{MEMBER} line {}: {path:?} is listed twice", i + 1);
        }
        out.push((d, path.to_string()));
    }
    Ok(out)
}

/// Places the blob at `blob` as the download file `rel` under
/// `cache_root` (read-only, as Go leaves its cache), unless a file is
/// there already. Returns whether it wrote one.
pub fn place(cache_root: &Path, rel: &str, blob: &Path) -> Result<bool> {
    use std::os::unix::fs::PermissionsExt as _;
    check_path(rel)?;
    let dst = download_dir(cache_root).join(rel);
    if dst.symlink_metadata().is_ok() {
        return Ok(false);
    }
    let parent = dst.parent().context("a download path has a folder")?;
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cache import: cannot create {}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".cairn-import-")
        .tempfile_in(parent)
        .with_context(|| format!("cache import: cannot write in {}", parent.display()))?;
    let mut src =
        std::fs::File::open(blob).with_context(|| format!("cannot open {}", blob.display()))?;
    std::io::copy(&mut src, &mut tmp.as_file())
        .with_context(|| format!("cache import: writing {}", dst.display()))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o444))
        .with_context(|| format!("cache import: {}", dst.display()))?;
    tmp.as_file().sync_all().context("cache import: fsync")?;
    tmp.persist(&dst)
        .map_err(|e| e.error)
        .with_context(|| format!("cache import: cannot write {}", dst.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_download_shaped_paths_are_accepted() {
        for good in [
            "k8s.io/kubernetes/@v/v1.37.2.zip",
            "github.com/!azure/go-ansiterm/@v/v0.0.0-20250102033503-faa5f7b0171c.mod",
            "go.etcd.io/etcd/server/v3/@v/v3.7.2.ziphash",
            "cel.dev/expr/@v/v0.25.2.info",
        ] {
            check_path(good).unwrap();
        }
        for bad in [
            "../x/@v/v1.zip",
            "/abs/@v/v1.zip",
            "a/../../@v/v1.zip",
            "a/@v/v1.exe",
            "a/@v/list",
            "a/b/v1.zip",
            "@v/v1.zip",
            "a//@v/v1.zip",
            "a/.git/@v/v1.zip",
            "a b/@v/v1.zip",
            "a/@v/.zip",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_index_round_trips_and_refuses_bad_lines() {
        let d = Sha256::of_bytes(b"z");
        let e = vec![(d, "a.b/c/@v/v1.0.0.zip".to_string())];
        assert_eq!(parse_index(&index(&e)).unwrap(), e);
        let twice = format!("{d} a.b/c/@v/v1.0.0.zip\n{d} a.b/c/@v/v1.0.0.zip\n");
        assert!(format!("{:#}", parse_index(&twice).unwrap_err()).contains("twice"));
        let climbs = format!("{d} ../c/@v/v1.0.0.zip\n");
        assert!(parse_index(&climbs).is_err());
        assert!(parse_index("nothex a/@v/v1.zip\n").is_err());
    }
}
