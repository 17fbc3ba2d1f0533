//! Squashfs: packs the normalised tree into the read-only root filesystem
//! (zstd). mksquashfs ≥ 4.4 is reproducible given fixed times, so the
//! image is a function of what mksquashfs reads of the tree: [`input_key`]
//! digests exactly that, and the volume stage (`pipeline::volume`) keeps
//! the root image and its hash tree in the stage cache under it (a rebuild
//! whose root did not change, such as one after a model-data change, takes
//! them from there).

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::Digest as _;

use crate::host::digest::Sha256;
use crate::pipeline::volume::Pack;

/// The mksquashfs options of the root (besides the times): zstd level 10
/// in 1 MiB blocks. Measured on the default base (372 MB of files, 2
/// cores): level 15 in 128 KiB blocks gave 95.7 MiB in 21.6 s; level 12,
/// 101.8 MiB in 10.0 s; level 10 in 1 MiB blocks, 94.8 MiB in 3.3 s
/// (zstd's levels above 11 switch to a far slower match finder, and
/// larger blocks win back more than they lose). The boot to ready took
/// the same time with either (squashfs reads a whole block per miss; the
/// kernel caches it).
pub const ROOT_OPTIONS: &[&str] = &[
    "-noappend",
    "-b",
    "1M",
    "-comp",
    "zstd",
    "-Xcompression-level",
    "10",
];

/// A digest of everything mksquashfs takes from `tree` with
/// [`ROOT_OPTIONS`]: every entry's path, type, permission bits, owner,
/// extended attributes, a file's content (or, for a further name of a
/// hard-linked file, the first name), a link's target and a device's
/// number, plus the options, SOURCE_DATE_EPOCH (every time in the image)
/// and the hash tree's parameters. Times in the tree are not read (the
/// image's are the epoch). Links are never followed.
pub fn input_key(tree: &Path, epoch: u64) -> Result<Sha256> {
    // What is hashed, in walk order: bytes, or the sha256 of a file's
    // content. The walk gathers them; the contents (nearly all the work)
    // are hashed on every core; then everything is folded in order, so the
    // key is the same as one pass would make.
    enum Piece {
        Bytes(Vec<u8>),
        Content(usize),
    }
    let mut pieces: Vec<Piece> = vec![Piece::Bytes(
        format!(
            "cairn root squashfs 1\0{}\0epoch {epoch}\0verity sha256 {}\0",
            ROOT_OPTIONS.join(" "),
            crate::pipeline::verity::BLOCK_SIZE
        )
        .into_bytes(),
    )];
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    let mut first_name: std::collections::HashMap<(u64, u64), Vec<u8>> =
        std::collections::HashMap::new();
    for e in walkdir::WalkDir::new(tree).sort_by_file_name() {
        let e = e.with_context(|| format!("squashfs: read the tree {}", tree.display()))?;
        let rel = e.path().strip_prefix(tree).unwrap_or(e.path());
        let rel = rel.as_os_str().as_bytes().to_vec();
        let m = e
            .path()
            .symlink_metadata()
            .with_context(|| format!("squashfs: stat {}", e.path().display()))?;
        let mut b = rel.clone();
        b.extend(format!("\0{:o} {} {}\0", m.mode(), m.uid(), m.gid()).as_bytes());
        for (name, value) in xattrs(e.path())? {
            b.extend_from_slice(b"xattr\0");
            b.extend_from_slice(&name);
            b.push(0);
            b.extend_from_slice(&value);
            b.push(0);
        }
        let ft = m.file_type();
        if ft.is_symlink() {
            let t = std::fs::read_link(e.path())
                .with_context(|| format!("squashfs: read link {}", e.path().display()))?;
            b.extend_from_slice(b"link\0");
            b.extend_from_slice(t.as_os_str().as_bytes());
        } else if ft.is_file() {
            let id = (m.dev(), m.ino());
            match first_name.get(&id) {
                Some(first) if m.nlink() > 1 => {
                    b.extend_from_slice(b"hardlink\0");
                    b.extend_from_slice(first);
                }
                _ => {
                    if m.nlink() > 1 {
                        first_name.insert(id, rel.clone());
                    }
                    b.extend(format!("file {}\0", m.len()).as_bytes());
                    pieces.push(Piece::Bytes(std::mem::take(&mut b)));
                    pieces.push(Piece::Content(files.len()));
                    files.push(e.path().to_path_buf());
                }
            }
        } else if !ft.is_dir() {
            b.extend(format!("node {}\0", m.rdev()).as_bytes());
        }
        b.extend_from_slice(b"\0\n");
        pieces.push(Piece::Bytes(b));
    }
    let contents = Sha256::of_files(&files).context("squashfs: the base tree's key")?;
    let mut h = sha2::Sha256::new();
    for p in &pieces {
        match p {
            Piece::Bytes(b) => h.update(b),
            Piece::Content(i) => h.update(contents[*i].0),
        }
    }
    Ok(Sha256(h.finalize().into()))
}

/// The extended attributes of `path` (not followed if a link), sorted by
/// name; none where the file system has none.
pub fn xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    match crate::host::sys::xattrs(path) {
        Ok(v) => Ok(v.unwrap_or_default()),
        // Gone since it was listed: not in the image either.
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(Vec::new()),
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "squashfs: list extended attributes of {}",
            path.display()
        ))),
    }
}

/// How the root (and the apps volume over it) is packed by the volume
/// stage: [`ROOT_OPTIONS`], and `pseudo`, a file of mksquashfs pseudo
/// definitions (the apps volume's whiteouts, `pipeline::layers`).
pub fn root_pack<'a>(tree: &'a Path, pseudo: Option<&'a Path>) -> Pack<'a> {
    let mut options: Vec<OsString> = ROOT_OPTIONS.iter().map(OsString::from).collect();
    if let Some(p) = pseudo {
        options.push("-pf".into());
        options.push(p.into());
    }
    Pack {
        label: "squashfs",
        tree,
        options,
        tail: Vec::new(),
        env: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    /// The key changes with everything mksquashfs reads and with nothing
    /// else: content, mode, a link's target, a new file, hard links
    /// against copies, the epoch; not a file's time.
    #[test]
    fn the_root_key_follows_what_mksquashfs_reads() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("tree");
        std::fs::create_dir_all(t.join("etc")).unwrap();
        std::fs::write(t.join("etc/a"), b"one\n").unwrap();
        std::fs::write(t.join("etc/b"), b"two\n").unwrap();
        std::os::unix::fs::symlink("a", t.join("etc/l")).unwrap();
        let k = |e: u64| input_key(&t, e).unwrap();
        let base = k(1);
        assert_eq!(k(1), base, "same tree, same key");
        assert_ne!(k(2), base, "the epoch is in every time of the image");
        // A file's time is not read (the image's are the epoch).
        let f = std::fs::File::options()
            .write(true)
            .open(t.join("etc/a"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        drop(f);
        assert_eq!(k(1), base, "times are not part of the key");
        let changed = |what: &str, key: Sha256| assert_ne!(key, base, "{what}");
        std::fs::write(t.join("etc/a"), b"One\n").unwrap();
        changed("content", k(1));
        std::fs::write(t.join("etc/a"), b"one\n").unwrap();
        assert_eq!(k(1), base, "restored");
        std::fs::set_permissions(t.join("etc/a"), std::fs::Permissions::from_mode(0o600)).unwrap();
        changed("mode", k(1));
        std::fs::set_permissions(t.join("etc/a"), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(k(1), base, "restored");
        std::fs::remove_file(t.join("etc/l")).unwrap();
        std::os::unix::fs::symlink("b", t.join("etc/l")).unwrap();
        changed("link target", k(1));
        std::fs::remove_file(t.join("etc/l")).unwrap();
        std::os::unix::fs::symlink("a", t.join("etc/l")).unwrap();
        assert_eq!(k(1), base, "restored");
        std::fs::write(t.join("etc/c"), b"").unwrap();
        changed("a new file", k(1));
        std::fs::remove_file(t.join("etc/c")).unwrap();
        // The same bytes as a hard link instead of a copy: another image.
        std::fs::write(t.join("etc/b"), b"one\n").unwrap();
        let copies = k(1);
        std::fs::remove_file(t.join("etc/b")).unwrap();
        std::fs::hard_link(t.join("etc/a"), t.join("etc/b")).unwrap();
        assert_ne!(k(1), copies, "hard links against copies");
        assert!(input_key(&d.path().join("missing"), 1).is_err());
    }
}
