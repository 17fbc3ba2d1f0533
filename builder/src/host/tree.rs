//! Paths inside the image being built. Every write into the staging tree
//! goes through `resolve_in_root`, which follows symlinks the way the booted
//! image would (absolute links restart at the staging root), so no input can
//! make cairn touch a file outside the staging folder.

use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use walkdir::WalkDir;

use super::inode;

/// A relative path inside an image: no root, no `..`, no empty parts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ImagePath(PathBuf);

impl ImagePath {
    pub fn new(p: impl AsRef<Path>) -> Result<Self> {
        let p = p.as_ref();
        let mut out = PathBuf::new();
        for c in p.components() {
            match c {
                Component::Normal(n) => out.push(n),
                Component::CurDir => {}
                Component::RootDir => {}
                Component::ParentDir => bail!("path {} contains `..`", p.display()),
                Component::Prefix(_) => bail!("path {} has a prefix", p.display()),
            }
        }
        if out.as_os_str().is_empty() {
            bail!("path {:?} names the image root itself", p);
        }
        Ok(ImagePath(out))
    }

    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

const MAX_LINKS: usize = 40;

/// Resolves `rel` inside `root` as if `root` were `/`: symlinks in every
/// component but the last are followed, absolute targets restart at `root`,
/// `..` never climbs above `root`. The last component is not followed, so
/// the result may be a symlink itself (callers replace, never write through).
pub fn resolve_in_root(root: &Path, rel: &Path) -> Result<PathBuf> {
    resolve(root, rel, false)
}

/// Like `resolve_in_root`, but follows the last component too.
pub fn resolve_in_root_follow(root: &Path, rel: &Path) -> Result<PathBuf> {
    resolve(root, rel, true)
}

fn resolve(root: &Path, rel: &Path, follow_last: bool) -> Result<PathBuf> {
    let mut pending: Vec<OsString> = components(rel);
    pending.reverse();
    let mut done: Vec<OsString> = Vec::new();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            done.pop();
            continue;
        }
        if part == "." || part.is_empty() {
            continue;
        }
        let is_last = pending.is_empty();
        let mut cand = root.to_path_buf();
        cand.extend(&done);
        cand.push(&part);
        if !is_last || follow_last {
            if let Ok(meta) = std::fs::symlink_metadata(&cand) {
                if meta.file_type().is_symlink() {
                    hops += 1;
                    if hops > MAX_LINKS {
                        bail!("too many symlinks resolving {} in the image", rel.display());
                    }
                    let target = std::fs::read_link(&cand)
                        .with_context(|| format!("cannot read link {}", cand.display()))?;
                    if target.is_absolute() {
                        done.clear();
                    }
                    let mut t = components(&target);
                    t.reverse();
                    pending.extend(t);
                    continue;
                }
            }
        }
        done.push(part);
    }
    let mut out = root.to_path_buf();
    out.extend(&done);
    Ok(out)
}

fn components(p: &Path) -> Vec<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// Creates every directory of `rel` inside `root` (following in-root links).
pub fn create_dirs_in_root(root: &Path, rel: &Path) -> Result<PathBuf> {
    let mut cur = PathBuf::new();
    let mut real = root.to_path_buf();
    for c in rel.components() {
        if let Component::Normal(n) = c {
            cur.push(n);
            let r = resolve_in_root_follow(root, &cur)?;
            match std::fs::symlink_metadata(&r) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => bail!("{} exists in the image and is not a folder", cur.display()),
                // Every existing component of `r` was checked not to be a
                // link, so this only creates fresh folders inside the root.
                Err(_) => std::fs::create_dir_all(&r)
                    .with_context(|| format!("cannot create {}", r.display()))?,
            }
            real = r;
        }
    }
    Ok(real)
}

/// Layers one overlay folder into the tree: folders merged, files and links
/// replaced, owned by root. Device nodes, fifos, sockets and set-id bits are
/// refused: overlays are configuration, not system binaries.
pub fn apply_overlay(overlay: &Path, tree: &Path) -> Result<()> {
    for entry in WalkDir::new(overlay).min_depth(1).sort_by_file_name() {
        let entry = entry.with_context(|| format!("cannot walk {}", overlay.display()))?;
        let rel = entry
            .path()
            .strip_prefix(overlay)
            .context("walk left the overlay")?;
        let meta = entry.path().symlink_metadata()?;
        let ft = meta.file_type();
        let mode = meta.mode() & 0o7777;
        if mode & 0o6000 != 0 && !ft.is_symlink() {
            bail!(
                "{}: set-uid/set-gid files are not allowed in overlays; chmod u-s,g-s it",
                entry.path().display()
            );
        }
        let parent = rel.parent().unwrap_or(Path::new(""));
        let dest_dir = create_dirs_in_root(tree, parent)?;
        let name = rel.file_name().context("overlay entry without a name")?;
        let dest = dest_dir.join(name);
        // Metadata is set on what the tree holds (host::inode): the folder
        // or the file just made, opened without following a link.
        let below = |p: &Path| -> Result<PathBuf> {
            Ok(p.strip_prefix(tree)
                .context("resolved outside the tree")?
                .to_path_buf())
        };
        if ft.is_dir() {
            let real = create_dirs_in_root(tree, rel)?;
            inode::open_dir_beneath(tree, &below(&real)?)
                .and_then(|f| inode::set_mode(&f, mode))
                .with_context(|| format!("cannot chmod {}", real.display()))?;
            continue;
        }
        remove_any(&dest)?;
        let parent = inode::open_dir_beneath(tree, &below(&dest_dir)?)
            .with_context(|| format!("cannot open {}", dest_dir.display()))?;
        if ft.is_symlink() {
            let target = std::fs::read_link(entry.path())?;
            std::os::unix::fs::symlink(&target, &dest)
                .with_context(|| format!("cannot create link {}", dest.display()))?;
            inode::set_owner_at(&parent, name, 0, 0)
                .with_context(|| format!("cannot chown {}", dest.display()))?;
        } else if ft.is_file() {
            let mut from = open_regular(entry.path())?;
            let mut to = inode::create_file_at(&parent, name, 0o600)
                .with_context(|| format!("cannot create {}", dest.display()))?;
            std::io::copy(&mut from, &mut to).with_context(|| {
                format!("cannot copy {} into the image", entry.path().display())
            })?;
            inode::set_mode(&to, mode)
                .and_then(|()| inode::set_owner(&to, 0, 0))
                .with_context(|| format!("cannot chmod/chown {}", dest.display()))?;
        } else {
            bail!(
                "{}: device nodes, fifos and sockets are not allowed in overlays",
                entry.path().display()
            );
        }
    }
    Ok(())
}

fn remove_any(p: &Path) -> Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p)?,
        Ok(_) => std::fs::remove_file(p)?,
        Err(_) => {}
    }
    Ok(())
}

/// Writes a file inside the tree (through in-root resolution), replacing
/// whatever was there.
pub fn write_in_tree(tree: &Path, rel: &str, content: &[u8], mode: u32) -> Result<()> {
    let rel = Path::new(rel);
    let dir = create_dirs_in_root(tree, rel.parent().unwrap_or(Path::new("")))?;
    let dest = dir.join(rel.file_name().context("file name")?);
    remove_any(&dest)?;
    std::fs::write(&dest, content).with_context(|| format!("cannot write {}", dest.display()))?;
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

pub fn link_in_tree(tree: &Path, rel: &str, target: &str) -> Result<()> {
    let rel = Path::new(rel);
    let dir = create_dirs_in_root(tree, rel.parent().unwrap_or(Path::new("")))?;
    let dest = dir.join(rel.file_name().context("file name")?);
    remove_any(&dest)?;
    std::os::unix::fs::symlink(target, &dest)
        .with_context(|| format!("cannot link {}", dest.display()))?;
    Ok(())
}

/// Opens an input file on the host (a tarball, an archive) for reading:
/// without blocking and refused unless it is a regular file, so a fifo
/// named as an input is an error, not a hang.
pub fn open_regular(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let meta = f
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?;
    if !meta.file_type().is_file() {
        bail!(
            "{} is {}; inputs must be regular files",
            path.display(),
            kind_of(&meta.file_type())
        );
    }
    Ok(f)
}

/// A file inside the tree opened for reading: `rel` resolved as the image
/// would (in-root links), the last component opened without following a
/// link and without blocking, and refused unless it is a regular file (a
/// fifo would hang the build, a device would read the host's).
pub fn open_in_tree(tree: &Path, rel: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let real = resolve_in_root_follow(tree, rel)?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&real)
        .with_context(|| format!("/{} in the image", rel.display()))?;
    let meta = f
        .metadata()
        .with_context(|| format!("/{} in the image", rel.display()))?;
    if !meta.file_type().is_file() {
        bail!(
            "/{} in the image is not a regular file ({})",
            rel.display(),
            kind_of(&meta.file_type())
        );
    }
    Ok(f)
}

fn kind_of(ft: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "a folder"
    } else if ft.is_symlink() {
        "a symlink"
    } else if ft.is_fifo() {
        "a fifo"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// Reads a regular file inside the tree (see `open_in_tree`).
pub fn read_in_tree(tree: &Path, rel: &Path) -> Result<Vec<u8>> {
    let mut f = open_in_tree(tree, rel)?;
    let mut v = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut v)
        .with_context(|| format!("cannot read /{} in the image", rel.display()))?;
    Ok(v)
}

/// Reads a regular file inside the tree, or `None` if nothing is there.
/// Anything else than a regular file (a fifo, a folder, a link out) is an
/// error, never a silent skip.
pub fn read_in_tree_opt(tree: &Path, rel: &Path) -> Result<Option<Vec<u8>>> {
    let real = resolve_in_root_follow(tree, rel)?;
    if std::fs::symlink_metadata(&real).is_err() {
        return Ok(None);
    }
    read_in_tree(tree, rel).map(Some)
}

/// Like [`read_in_tree_opt`], refusing a file over `cap` bytes (read no
/// further than that).
pub fn read_in_tree_capped(tree: &Path, rel: &Path, cap: u64) -> Result<Option<Vec<u8>>> {
    use std::io::Read as _;
    let real = resolve_in_root_follow(tree, rel)?;
    if std::fs::symlink_metadata(&real).is_err() {
        return Ok(None);
    }
    let f = open_in_tree(tree, rel)?;
    let mut v = Vec::new();
    f.take(cap.saturating_add(1))
        .read_to_end(&mut v)
        .with_context(|| format!("cannot read /{} in the image", rel.display()))?;
    if v.len() as u64 > cap {
        bail!(
            "/{} in the image is over the {cap}-byte limit",
            rel.display()
        );
    }
    Ok(Some(v))
}

/// Whether `rel` names a regular file inside the tree (in-root links
/// followed; a link out of the tree is resolved inside it, never on the host).
pub fn is_file_in_tree(tree: &Path, rel: &Path) -> bool {
    resolve_in_root_follow(tree, rel)
        .ok()
        .and_then(|r| std::fs::symlink_metadata(r).ok())
        .map(|m| m.file_type().is_file())
        .unwrap_or(false)
}

/// Copies a regular file out of the tree to `dest` on the host (created
/// fresh, mode 0644), returning its size.
pub fn copy_out_of_tree(tree: &Path, rel: &Path, dest: &Path) -> Result<u64> {
    let mut f = open_in_tree(tree, rel)?;
    if std::fs::symlink_metadata(dest).is_ok() {
        std::fs::remove_file(dest).with_context(|| format!("cannot replace {}", dest.display()))?;
    }
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .with_context(|| format!("cannot create {}", dest.display()))?;
    let n = std::io::copy(&mut f, &mut out)
        .with_context(|| format!("cannot copy /{} out of the image", rel.display()))?;
    set_plain_mode(dest)?;
    Ok(n)
}

/// Removes the entry `rel` names inside the tree (a file, a link, or a
/// folder with its contents); the last component is never followed, so a
/// link is removed, not its target.
pub fn remove_in_tree(tree: &Path, rel: &Path) -> Result<bool> {
    let real = resolve_in_root(tree, rel)?;
    if real == tree {
        bail!("refusing to remove the image root");
    }
    match std::fs::symlink_metadata(&real) {
        Ok(_) => {
            remove_any(&real)?;
            Ok(true)
        }
        Err(_) => Ok(false),
    }
}

/// Entries at or under `rel` inside the tree (nothing followed) that are
/// neither folders nor regular files, with what each is: stages whose host
/// tool walks a folder with the host's rules (depmod) refuse them.
pub fn special_below(tree: &Path, rel: &Path) -> Result<Vec<(PathBuf, &'static str)>> {
    let real = resolve_in_root_follow(tree, rel)?;
    let mut out = Vec::new();
    for e in WalkDir::new(&real).follow_links(false).sort_by_file_name() {
        let e = e.with_context(|| format!("cannot walk /{}", rel.display()))?;
        let ft = e.file_type();
        if !ft.is_dir() && !ft.is_file() {
            let inner = e.path().strip_prefix(tree).unwrap_or(e.path());
            out.push((inner.to_path_buf(), kind_of(&ft)));
        }
    }
    Ok(out)
}

/// Gives a copied file mode 0644 (cached blobs are stored read-only).
pub fn set_plain_mode(p: &Path) -> Result<()> {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn image_path_refuses_dotdot() {
        assert!(ImagePath::new("a/../b").is_err());
        assert!(ImagePath::new("/").is_err());
        assert_eq!(
            ImagePath::new("/etc/x").unwrap().as_path(),
            Path::new("etc/x")
        );
    }

    #[test]
    fn absolute_and_dotdot_links_stay_in_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        symlink("/etc", root.join("usr/lib/etc-link")).unwrap();
        symlink("../../../../../..", root.join("up")).unwrap();
        assert_eq!(
            resolve_in_root(&root, Path::new("lib/x")).unwrap(),
            root.join("usr/lib/x")
        );
        // An absolute link restarts at the staging root, not the host's /.
        assert_eq!(
            resolve_in_root(&root, Path::new("lib/etc-link/passwd")).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            resolve_in_root(&root, Path::new("up/etc/shadow")).unwrap(),
            root.join("etc/shadow")
        );
        assert_eq!(
            resolve_in_root(&root, Path::new("../../x")).unwrap(),
            root.join("x")
        );
        // The last component is not followed.
        assert_eq!(
            resolve_in_root(&root, Path::new("lib")).unwrap(),
            root.join("lib")
        );
    }

    #[test]
    fn link_loops_end_in_an_error() {
        let d = tempfile::tempdir().unwrap();
        symlink("b", d.path().join("a")).unwrap();
        symlink("a", d.path().join("b")).unwrap();
        assert!(resolve_in_root(d.path(), Path::new("a/x")).is_err());
    }

    #[test]
    fn create_dirs_follows_in_root_links() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("usr/lib")).unwrap();
        symlink("/usr/lib", d.path().join("lib")).unwrap();
        let p = create_dirs_in_root(d.path(), Path::new("lib/cairn/x")).unwrap();
        assert_eq!(p, d.path().join("usr/lib/cairn/x"));
        assert!(d.path().join("usr/lib/cairn/x").is_dir());
    }

    fn mkfifo(p: &Path) {
        crate::host::sys::mkfifo(p, 0o644).unwrap();
    }

    #[test]
    fn reads_resolve_inside_the_tree_and_refuse_special_files() {
        let d = tempfile::tempdir().unwrap();
        let host = d.path().join("host");
        let tree = d.path().join("tree");
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("secret"), "host secret").unwrap();
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        // An absolute link to the host folder: its in-image meaning is
        // tree/<host path>, which does not exist.
        symlink(&host, tree.join("etc/h")).unwrap();
        assert!(read_in_tree(&tree, Path::new("etc/h/secret")).is_err());
        assert_eq!(
            read_in_tree_opt(&tree, Path::new("etc/h/secret")).unwrap(),
            None
        );
        assert!(!is_file_in_tree(&tree, Path::new("etc/h/secret")));
        assert!(copy_out_of_tree(&tree, Path::new("etc/h/secret"), &d.path().join("c")).is_err());
        // Control: the same file planted at the in-image meaning is read.
        let inside = tree.join(host.strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::write(inside.join("secret"), "tree file").unwrap();
        assert_eq!(
            read_in_tree(&tree, Path::new("etc/h/secret")).unwrap(),
            b"tree file"
        );
        let n = copy_out_of_tree(&tree, Path::new("etc/h/secret"), &d.path().join("c")).unwrap();
        assert_eq!(n, 9);
        // A fifo is refused at once (opened without blocking), not read.
        mkfifo(&tree.join("etc/fifo"));
        let t = std::time::Instant::now();
        let e = read_in_tree(&tree, Path::new("etc/fifo")).unwrap_err();
        assert!(format!("{e:#}").contains("a fifo"), "{e:#}");
        assert!(read_in_tree_opt(&tree, Path::new("etc/fifo")).is_err());
        assert!(open_regular(&tree.join("etc/fifo")).is_err());
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        // A folder is not a file either.
        assert!(read_in_tree(&tree, Path::new("etc")).is_err());
        let special = special_below(&tree, Path::new("etc")).unwrap();
        let names: Vec<_> = special.iter().map(|(p, w)| (p.clone(), *w)).collect();
        assert_eq!(
            names,
            vec![
                (PathBuf::from("etc/fifo"), "a fifo"),
                (PathBuf::from("etc/h"), "a symlink")
            ]
        );
    }

    #[test]
    fn remove_in_tree_removes_the_link_not_its_target() {
        let d = tempfile::tempdir().unwrap();
        let host = d.path().join("host");
        let tree = d.path().join("tree");
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("keep"), "x").unwrap();
        std::fs::create_dir_all(tree.join("m")).unwrap();
        symlink(&host, tree.join("m/dir")).unwrap();
        // Through the link: resolved inside the tree, where nothing is.
        assert!(!remove_in_tree(&tree, Path::new("m/dir/keep")).unwrap());
        assert!(host.join("keep").exists());
        assert!(remove_in_tree(&tree, Path::new("m/dir")).unwrap());
        assert!(host.join("keep").exists());
        assert!(std::fs::symlink_metadata(tree.join("m/dir")).is_err());
        assert!(remove_in_tree(&tree, Path::new("..")).is_err());
    }
}
