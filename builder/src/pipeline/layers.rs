//! The base/apps split. The read-only root is two verity volumes stacked
//! by overlayfs in the initramfs: `base` (the Debian tree with its kernel
//! modules and the unpacked pinned images, pruned and normalised) and
//! `apps` over it (overlays, cairn's configuration and units, the firewall,
//! the policy bundle, model mount points). The images go in the base
//! because they share most of their files with it (libc and the rest of
//! Debian's essential set), which one squashfs stores once: on field-ai,
//! images in apps made base + apps 136.9 MiB against 109.2 MiB for one
//! image of the same files. What changes most often (overlays, network
//! policy, services) is then the small volume: an overlay change rebuilds
//! a few KiB, not the root.
//!
//! Both are composed on one tree, so links and folders resolve as on the
//! running image: the base is finished first and [`Snapshot::take`]
//! records every entry (inode and change time); the base image is made
//! from it then. The apps steps then write on the same tree, and
//! [`split`] moves every entry they created or changed into the apps tree
//! (with the folders above it, as they are in the final tree) and lists
//! every base entry they removed, which the apps image carries as an
//! overlayfs whiteout (a character device 0:0, [`whiteout_pseudo_file`]).
//!
//! Invariant: base ∪ apps, read through overlayfs, is exactly the tree the
//! apps steps left. An entry counts as changed when its inode or its
//! change time differs from the snapshot; the snapshot waits until the
//! clock has passed every change time in it, so a change made after it
//! can never carry an old time. Stamping a tree with the epoch
//! ([`crate::pipeline::normalise`]) skips entries that already carry it,
//! so it does not count as a change.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::host::inode;

/// What the snapshot keeps of an entry: its inode and change time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    ctime: (i64, i64),
}

/// Every entry of the base tree, by path relative to the tree.
pub struct Snapshot {
    entries: HashMap<PathBuf, Stamp>,
}

fn stamp(m: &std::fs::Metadata) -> Stamp {
    Stamp {
        ino: m.ino(),
        ctime: (m.ctime(), m.ctime_nsec()),
    }
}

impl Snapshot {
    /// Records every entry of `tree`, then waits until a file made now
    /// gets a later change time than any of them (file systems stamp with
    /// a coarse clock: a few milliseconds).
    pub fn take(tree: &Path) -> Result<Snapshot> {
        let mut entries = HashMap::new();
        let mut newest = (i64::MIN, 0);
        for e in walkdir::WalkDir::new(tree).min_depth(1) {
            let e = e.with_context(|| format!("layers: walk the base tree {}", tree.display()))?;
            let m = e
                .path()
                .symlink_metadata()
                .with_context(|| format!("layers: stat {}", e.path().display()))?;
            let s = stamp(&m);
            newest = newest.max(s.ctime);
            let rel = e.path().strip_prefix(tree).unwrap_or(e.path());
            entries.insert(rel.to_path_buf(), s);
        }
        let probe = tree.with_extension("clock-probe");
        let started = std::time::Instant::now();
        loop {
            std::fs::write(&probe, b"")
                .with_context(|| format!("layers: write {}", probe.display()))?;
            let now = stamp(&std::fs::symlink_metadata(&probe)?).ctime;
            std::fs::remove_file(&probe).ok();
            if now > newest {
                break;
            }
            if started.elapsed() > std::time::Duration::from_secs(10) {
                bail!(
                    "layers: the clock of the file system under {} does not pass the base tree's newest change time; is the host clock set back?",
                    tree.display()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Ok(Snapshot { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn changed(&self, rel: &Path, m: &std::fs::Metadata) -> bool {
        self.entries.get(rel) != Some(&stamp(m))
    }
}

/// What [`split`] did.
#[derive(Debug, Default)]
pub struct Split {
    /// Entries moved into the apps tree (a new folder counts once).
    pub moved: u64,
    /// Base entries the apps steps removed, relative to the tree: each is
    /// a whiteout in the apps image.
    pub whiteouts: Vec<PathBuf>,
}

/// Moves every entry of `tree` that is new or changed since `snap` into
/// `apps` (created; same file system as `tree`), with the folders above
/// it (made with the final tree's mode, owner and extended attributes),
/// and lists the base entries that are gone. What stays in `tree` is not
/// used again.
pub fn split(tree: &Path, snap: &Snapshot, apps: &Path) -> Result<Split> {
    std::fs::create_dir(apps).with_context(|| format!("layers: create {}", apps.display()))?;
    copy_attrs(apps, tree, apps)?;
    let mut out = Split::default();
    walk(tree, apps, Path::new(""), snap, &mut out)?;
    // A base entry that is gone: a whiteout where its folder still is a
    // folder (under a removed or replaced folder it is hidden already).
    let mut gone: Vec<&PathBuf> = snap
        .entries
        .keys()
        .filter(|rel| std::fs::symlink_metadata(tree.join(rel)).is_err())
        .filter(|rel| std::fs::symlink_metadata(apps.join(rel)).is_err())
        .collect();
    gone.sort();
    for rel in gone {
        let parent = rel.parent().unwrap_or(Path::new(""));
        let parent_is_dir = |root: &Path| {
            std::fs::symlink_metadata(root.join(parent))
                .map(|m| m.is_dir())
                .unwrap_or(false)
        };
        if parent.as_os_str().is_empty() || parent_is_dir(tree) || parent_is_dir(apps) {
            // The folder is in the final tree: give it its place in apps.
            ensure_parents(tree, apps, rel)?;
            out.whiteouts.push(rel.clone());
        }
    }
    Ok(out)
}

fn walk(tree: &Path, apps: &Path, rel: &Path, snap: &Snapshot, out: &mut Split) -> Result<()> {
    let dir = tree.join(rel);
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(&dir)
        .with_context(|| format!("layers: list {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("layers: list {}", dir.display()))?;
    names.sort();
    for n in names {
        let r = rel.join(&n);
        let p = tree.join(&r);
        let m = p
            .symlink_metadata()
            .with_context(|| format!("layers: stat {}", p.display()))?;
        let known = snap.entries.contains_key(&r);
        if m.is_dir() {
            if !known {
                // A new folder: everything in it is new too.
                ensure_parents(tree, apps, &r)?;
                std::fs::rename(&p, apps.join(&r))
                    .with_context(|| format!("layers: move {} to the apps tree", p.display()))?;
                out.moved += 1;
                continue;
            }
            if snap.changed(&r, &m) {
                ensure_parents(tree, apps, &r)?;
                ensure_dir(tree, apps, &r)?;
                out.moved += 1;
            }
            walk(tree, apps, &r, snap, out)?;
        } else if !known || snap.changed(&r, &m) {
            ensure_parents(tree, apps, &r)?;
            std::fs::rename(&p, apps.join(&r))
                .with_context(|| format!("layers: move {} to the apps tree", p.display()))?;
            out.moved += 1;
        }
    }
    Ok(())
}

/// The folders above `rel` in `apps`, each as it is in `tree`.
fn ensure_parents(tree: &Path, apps: &Path, rel: &Path) -> Result<()> {
    let mut at = PathBuf::new();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            at.push(c);
            ensure_dir(tree, apps, &at)?;
        }
    }
    Ok(())
}

fn ensure_dir(tree: &Path, apps: &Path, rel: &Path) -> Result<()> {
    let d = apps.join(rel);
    if std::fs::symlink_metadata(&d).is_ok() {
        return Ok(());
    }
    std::fs::create_dir(&d).with_context(|| format!("layers: create {}", d.display()))?;
    copy_attrs(apps, &tree.join(rel), &d)
}

/// Mode, owner, times and extended attributes of folder `from` onto `to`
/// (a folder this stage just made under `apps`), set on the folder itself,
/// opened without following a link (host::inode).
fn copy_attrs(apps: &Path, from: &Path, to: &Path) -> Result<()> {
    let m = from
        .symlink_metadata()
        .with_context(|| format!("layers: stat {}", from.display()))?;
    let rel = to
        .strip_prefix(apps)
        .context("layers: a folder outside work/apps")?;
    let f = inode::open_dir_beneath(apps, rel)
        .with_context(|| format!("layers: open {}", to.display()))?;
    for (name, value) in crate::pipeline::squashfs::xattrs(from)? {
        inode::set_xattr(&f, &name, &value).with_context(|| {
            format!(
                "layers: set extended attribute {} on {}",
                String::from_utf8_lossy(&name),
                to.display()
            )
        })?;
    }
    inode::set_owner(&f, m.uid(), m.gid())
        .with_context(|| format!("layers: chown {}", to.display()))?;
    inode::set_mode(&f, m.mode()).with_context(|| format!("layers: chmod {}", to.display()))?;
    inode::set_mtime(&f, m.mtime()).with_context(|| format!("layers: stamp {}", to.display()))?;
    Ok(())
}

/// mksquashfs pseudo definitions (`-pf`) of the whiteouts: one character
/// device 0:0, mode 0, root's, per removed base entry, its name quoted.
pub fn whiteout_pseudo_file(whiteouts: &[PathBuf]) -> Result<String> {
    let mut s = String::new();
    for w in whiteouts {
        let Some(name) = w.to_str() else {
            bail!(
                "layers: the removed base entry {} has a name that is not UTF-8; the apps volume cannot hide it",
                w.display()
            );
        };
        if name.contains('\n') {
            bail!("layers: the removed base entry {name:?} has a newline in its name; the apps volume cannot hide it");
        }
        s.push('"');
        for c in name.chars() {
            if c == '"' || c == '\\' {
                s.push('\\');
            }
            s.push(c);
        }
        s.push_str("\" c 0 0 0 0 0\n");
    }
    Ok(s)
}

/// The apps volume: normalises what the apps steps wrote (a second pass of
/// `pipeline::normalise`, which leaves the base's entries as they are),
/// splits it off `tree` into `TREE.apps` beside it and makes it in the
/// volume stage like the root, its whiteouts as pseudo definitions, keyed
/// by the digest of the apps tree and the whiteouts.
pub fn make_apps_volume(
    tree: &Path,
    snap: &Snapshot,
    plan: &crate::inputs::plan::Plan,
    work: &Path,
) -> Result<crate::pipeline::volumes::Volume> {
    use crate::host::digest::Sha256;
    use crate::pipeline::volume;
    let epoch = plan.recipe.source_date_epoch;
    let t = std::time::Instant::now();
    crate::pipeline::normalise::normalise(tree, epoch).context("apps: normalise")?;
    // Beside the tree, on its file system: `split` moves entries out of it.
    let apps = tree.with_extension("apps");
    if apps.exists() {
        std::fs::remove_dir_all(&apps)?;
    }
    let split = split(tree, snap, &apps)?;
    let pseudo = whiteout_pseudo_file(&split.whiteouts)?;
    let tree_key = crate::pipeline::squashfs::input_key(&apps, epoch)?;
    let key = crate::inputs::stagecache::key(
        "apps-volume",
        &[
            format!("tree {tree_key}"),
            format!("whiteouts {}", Sha256::of_bytes(pseudo.as_bytes())),
        ],
    );
    crate::host::progress::say(&format!(
        "        {} entries over {} of the base, {} whiteouts; apps tree digest {} in {:.1}s",
        split.moved,
        snap.len(),
        split.whiteouts.len(),
        &key.hex()[..16],
        t.elapsed().as_secs_f64(),
    ));
    let built = volume::cached(
        &plan.cache,
        &volume::APPS,
        plan.stage_cache.then_some(&key),
        None,
        || {
            let pf = work.join("apps.pseudo");
            std::fs::write(&pf, &pseudo)
                .with_context(|| format!("apps: write {}", pf.display()))?;
            let image = work.join("apps.squashfs");
            let pack = crate::pipeline::squashfs::root_pack(&apps, Some(&pf));
            volume::squashfs(&pack, &image, epoch).context("apps: squashfs")?;
            volume::hash_tree(
                &image,
                volume::Seed::Image("verity: hash apps"),
                &work.join("apps.verity"),
            )
        },
    )?;
    std::fs::remove_dir_all(&apps).ok();
    crate::host::progress::say(&format!(
        "        apps: {}, root hash {}{}",
        crate::host::progress::human_bytes(built.verity.data_size),
        built.verity.root_hash,
        if built.cached {
            ": unchanged, reusing the cached apps image and hash tree"
        } else {
            ""
        }
    ));
    Ok(crate::pipeline::volumes::Volume {
        name: crate::pipeline::volumes::APPS.into(),
        kind: crate::pipeline::volumes::Kind::Apps,
        image: built.image,
        verity: built.verity,
        compression: crate::recipe::workloads::Compression::Zstd,
        model_sha256: key,
        mount: "/".into(),
        cached: built.cached,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn tree_listing(root: &Path) -> Vec<String> {
        let mut v: Vec<String> = walkdir::WalkDir::new(root)
            .min_depth(1)
            .sort_by_file_name()
            .into_iter()
            .map(|e| {
                let e = e.unwrap();
                let m = e.path().symlink_metadata().unwrap();
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                let what = if m.is_dir() {
                    format!("dir {:o}", m.mode() & 0o7777)
                } else if m.file_type().is_symlink() {
                    format!("link {}", std::fs::read_link(e.path()).unwrap().display())
                } else {
                    format!(
                        "file {}",
                        String::from_utf8_lossy(&std::fs::read(e.path()).unwrap())
                    )
                };
                format!("{rel} {what}")
            })
            .collect();
        v.sort();
        v
    }

    /// New, replaced and removed entries go to apps (removed ones as
    /// whiteouts); unchanged ones stay in the base; a file only read or
    /// stamped with the time it already has is unchanged. Reading base and
    /// apps as overlayfs does gives the final tree back.
    #[test]
    fn apps_holds_exactly_what_changed_after_the_snapshot() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("root");
        for dir in ["etc/keep", "usr/lib", "var/old/deep"] {
            std::fs::create_dir_all(t.join(dir)).unwrap();
        }
        std::fs::write(t.join("etc/keep/a"), b"a").unwrap();
        std::fs::write(t.join("etc/hostname"), b"debian").unwrap();
        std::fs::write(t.join("etc/gone"), b"x").unwrap();
        std::fs::write(t.join("var/old/deep/f"), b"f").unwrap();
        std::os::unix::fs::symlink("usr/lib", t.join("lib")).unwrap();
        let stamp_all = |t: &Path| {
            for e in walkdir::WalkDir::new(t).contents_first(true) {
                let e = e.unwrap();
                let ft = filetime::FileTime::from_unix_time(1, 0);
                filetime::set_symlink_file_times(e.path(), ft, ft).unwrap();
            }
        };
        stamp_all(&t);
        let snap = Snapshot::take(&t).unwrap();
        assert_eq!(snap.len(), 12);
        // The apps steps: replace, add (through the link), remove, read.
        crate::host::tree::write_in_tree(&t, "etc/hostname", b"cairn", 0o644).unwrap();
        crate::host::tree::write_in_tree(&t, "lib/cairn/x", b"x", 0o644).unwrap();
        std::fs::remove_file(t.join("etc/gone")).unwrap();
        std::fs::remove_dir_all(t.join("var/old")).unwrap();
        std::fs::read(t.join("etc/keep/a")).unwrap();
        // Stamping again (normalise) changes nothing already stamped.
        crate::pipeline::normalise::stamp(&t, 1).unwrap();
        let fin = tree_listing(&t);
        let apps = d.path().join("apps");
        let s = split(&t, &snap, &apps).unwrap();
        assert_eq!(
            s.whiteouts,
            vec![PathBuf::from("etc/gone"), PathBuf::from("var/old")]
        );
        let got = tree_listing(&apps);
        assert_eq!(
            got,
            vec![
                "etc dir 755",
                "etc/hostname file cairn",
                "usr dir 755",
                "usr/lib dir 755",
                "usr/lib/cairn dir 755",
                "usr/lib/cairn/x file x",
                "var dir 755",
            ],
            "{got:#?}"
        );
        // Unchanged entries stayed in the base.
        assert!(t.join("etc/keep/a").exists());
        assert!(t.join("lib").symlink_metadata().is_ok());
        // overlayfs' view: apps over the base (the snapshot's base is the
        // tree less what moved), whiteouts hiding.
        let mut merged: std::collections::BTreeSet<String> = tree_listing(&t).into_iter().collect();
        for a in tree_listing(&apps) {
            let path = a.split(' ').next().unwrap().to_string();
            merged.retain(|m| m.split(' ').next().unwrap() != path);
            merged.insert(a);
        }
        let merged: Vec<String> = merged.into_iter().collect();
        assert_eq!(merged, fin);
        let pf = whiteout_pseudo_file(&s.whiteouts).unwrap();
        assert_eq!(pf, "\"etc/gone\" c 0 0 0 0 0\n\"var/old\" c 0 0 0 0 0\n");
        assert_eq!(
            whiteout_pseudo_file(&[PathBuf::from("a \"b\\")]).unwrap(),
            "\"a \\\"b\\\\\" c 0 0 0 0 0\n"
        );
        assert!(whiteout_pseudo_file(&[PathBuf::from("a\nb")]).is_err());
        // mksquashfs makes each an overlayfs whiteout: a character device
        // 0:0 (control: the file beside it is a plain file).
        let pfile = d.path().join("apps.pseudo");
        std::fs::write(&pfile, &pf).unwrap();
        let img = d.path().join("apps.squashfs");
        let pack = crate::pipeline::squashfs::root_pack(&apps, Some(&pfile));
        crate::pipeline::volume::squashfs(&pack, &img, 1).unwrap();
        let mut cmd = crate::host::runner::command("unsquashfs");
        cmd.arg("-lls").arg("-d").arg("").arg(&img);
        let out = crate::host::runner::output("test", cmd).unwrap();
        let listing = String::from_utf8_lossy(&out.stdout).into_owned();
        for w in ["/etc/gone", "/var/old"] {
            let l = listing
                .lines()
                .find(|l| l.ends_with(w))
                .unwrap_or_else(|| panic!("{w}: {listing}"));
            assert!(
                l.starts_with("c--------- root/root") && l.contains(" 0,  0 "),
                "{l}"
            );
        }
        let l = listing
            .lines()
            .find(|l| l.ends_with("/etc/hostname"))
            .unwrap_or_else(|| panic!("{listing}"));
        assert!(l.starts_with("-rw-r--r--"), "{l}");
    }

    /// A folder whose mode changed goes to apps as a folder with the new
    /// mode, its unchanged children staying in the base.
    #[test]
    fn a_changed_folder_is_copied_not_moved() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("root");
        std::fs::create_dir_all(t.join("srv")).unwrap();
        std::fs::write(t.join("srv/f"), b"f").unwrap();
        let snap = Snapshot::take(&t).unwrap();
        std::fs::set_permissions(t.join("srv"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let apps = d.path().join("apps");
        let s = split(&t, &snap, &apps).unwrap();
        assert_eq!(s.moved, 1);
        assert!(s.whiteouts.is_empty());
        assert_eq!(tree_listing(&apps), vec!["srv dir 700"]);
        assert!(t.join("srv/f").exists());
    }
}
