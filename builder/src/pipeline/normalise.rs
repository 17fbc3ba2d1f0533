//! Normalise: makes the composed tree the same on every build host and day.
//! Removes caches, logs and host-unique files; stamps every entry with
//! SOURCE_DATE_EPOCH. Invariant: only paths inside the tree are touched, and
//! symlinks are stamped, never followed.

use std::path::Path;

use anyhow::{Context, Result};
use filetime::FileTime;
use walkdir::WalkDir;

use crate::host::tree::{resolve_in_root, resolve_in_root_follow};

/// Files and folder contents that differ between builds or identify the
/// build host, and have no use on a read-only appliance.
const REMOVE: &[&str] = &[
    "var/cache/ldconfig/aux-cache",
    "var/lib/dbus/machine-id",
    "var/lib/systemd/random-seed",
    "var/cache/debconf/config.dat-old",
    "var/cache/debconf/templates.dat-old",
    "var/lib/dpkg/status-old",
    "var/lib/dpkg/diversions-old",
    "var/lib/dpkg/stato",
    "etc/passwd-",
    "etc/group-",
    "etc/shadow-",
    "etc/gshadow-",
];
const EMPTY: &[&str] = &[
    "var/log",
    "var/cache/apt",
    "var/lib/apt/lists",
    "tmp",
    "var/tmp",
    "run",
];

/// Folders whose contents a read-only appliance never reads: apt's lists
/// and caches, manual and info pages. The folders stay.
const PRUNE_CONTENTS: &[&str] = &[
    "var/lib/apt/lists",
    "var/cache/apt",
    "usr/share/man",
    "usr/share/info",
];
/// Documentation: each package's folder keeps only its `copyright` (the
/// licence notices that ship with the binaries; compose's mmdebstrap
/// options already keep nothing else, a tarball base may).
const DOC_DIR: &str = "usr/share/doc";
const DOC_KEEP: &[&str] = &["copyright"];
/// Translations: everything but the alias table goes (C and C.UTF-8 need
/// nothing here; C.UTF-8 itself is in /usr/lib/locale).
const LOCALE_DIR: &str = "usr/share/locale";
const LOCALE_KEEP: &[&str] = &["locale.alias"];
/// dpkg's database: only `status` stays (the manifest's package list and
/// SBOM come from it).
const DPKG_DIR: &str = "var/lib/dpkg";
const DPKG_KEEP: &[&str] = &["status"];
/// Packages whose files go: the package managers (nothing at boot runs
/// them; the image is never upgraded in place). Matched against dpkg's
/// file lists `var/lib/dpkg/info/NAME.list` and `NAME:ARCH.list`.
const PACKAGE_MANAGERS: &[&str] = &["apt", "dpkg"];
const PACKAGE_MANAGER_PREFIXES: &[&str] = &["libapt-pkg"];

pub struct Normalised {
    pub entries: u64,
    /// Entries the prune step removed (files, links and whole folders).
    pub pruned: u64,
}

/// Removes what a read-only appliance never runs or reads (see the
/// constants above). Every path resolves inside the tree (`host::tree`):
/// a link is removed as a link, never followed out of the tree. Returns
/// how many entries went.
pub fn prune(tree: &Path) -> Result<u64> {
    let mut removed = 0;
    // The package managers' own files, from dpkg's lists (read before the
    // lists themselves go). Folders stay: other packages share them.
    let info = Path::new(DPKG_DIR).join("info");
    let info_dir = resolve_in_root_follow(tree, &info)?;
    let mut lists: Vec<String> = match std::fs::read_dir(&info_dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                let Some(pkg) = n.strip_suffix(".list") else {
                    return false;
                };
                let pkg = pkg.split(':').next().unwrap_or(pkg);
                PACKAGE_MANAGERS.contains(&pkg)
                    || PACKAGE_MANAGER_PREFIXES.iter().any(|p| pkg.starts_with(p))
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    lists.sort();
    for list in lists {
        let text =
            crate::host::tree::read_in_tree_opt(tree, &info.join(&list))?.unwrap_or_default();
        for line in String::from_utf8_lossy(&text).lines() {
            let rel = line.trim().trim_start_matches('/');
            if rel.is_empty() || rel == "." {
                continue;
            }
            // Folders stay, and so does a link that leads to one (usrmerge's
            // /lib -> usr/lib is named in lists as "/lib"), resolved as the
            // image would, inside the tree.
            let followed = resolve_in_root_follow(tree, Path::new(rel))?;
            if std::fs::metadata(&followed)
                .map(|m| m.is_dir())
                .unwrap_or(false)
            {
                continue;
            }
            let p = resolve_in_root(tree, Path::new(rel))?;
            match std::fs::symlink_metadata(&p) {
                Ok(m) if !m.is_dir() => {
                    std::fs::remove_file(&p)
                        .with_context(|| format!("normalise: remove /{rel} (from {list})"))?;
                    removed += 1;
                }
                _ => {}
            }
        }
    }
    for rel in PRUNE_CONTENTS {
        removed += remove_children(tree, rel, &[])?;
    }
    let doc = resolve_in_root_follow(tree, Path::new(DOC_DIR))?;
    if let Ok(rd) = std::fs::read_dir(&doc) {
        let mut pkgs: Vec<String> = rd
            .flatten()
            // Folders only (links to another package's folder stay).
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        pkgs.sort();
        for p in pkgs {
            removed += remove_children(tree, &format!("{DOC_DIR}/{p}"), DOC_KEEP)?;
        }
    }
    removed += remove_children(tree, LOCALE_DIR, LOCALE_KEEP)?;
    removed += remove_children(tree, DPKG_DIR, DPKG_KEEP)?;
    Ok(removed)
}

/// Removes every entry of the folder `rel` (links as links, folders whole)
/// but those named in `keep`; nothing if `rel` is not a folder.
fn remove_children(tree: &Path, rel: &str, keep: &[&str]) -> Result<u64> {
    let dir = resolve_in_root_follow(tree, Path::new(rel))?;
    if !std::fs::symlink_metadata(&dir)
        .map(|m| m.is_dir())
        .unwrap_or(false)
    {
        return Ok(0);
    }
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(&dir)
        .with_context(|| format!("normalise: list /{rel}"))?
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| !keep.iter().any(|k| n == std::ffi::OsStr::new(k)))
        .collect();
    names.sort();
    let inner = dir
        .strip_prefix(tree)
        .unwrap_or(Path::new(rel))
        .to_path_buf();
    let mut removed = 0;
    for n in names {
        if crate::host::tree::remove_in_tree(tree, &inner.join(&n))
            .with_context(|| format!("normalise: remove /{rel}/{}", n.to_string_lossy()))?
        {
            removed += 1;
        }
    }
    Ok(removed)
}

pub fn normalise(tree: &Path, epoch: u64) -> Result<Normalised> {
    let pruned = prune(tree)?;
    for rel in REMOVE {
        let p = resolve_in_root(tree, Path::new(rel))?;
        if std::fs::symlink_metadata(&p).is_ok() {
            std::fs::remove_file(&p).with_context(|| format!("normalise: remove {rel}"))?;
        }
    }
    for rel in EMPTY {
        let p = resolve_in_root(tree, Path::new(rel))?;
        if !std::fs::symlink_metadata(&p)
            .map(|m| m.is_dir())
            .unwrap_or(false)
        {
            continue;
        }
        for e in std::fs::read_dir(&p)?.flatten() {
            let ep = e.path();
            // Keep the folder skeleton packages expect (e.g. var/log/apt).
            if e.file_type()?.is_dir() {
                empty_files_below(&ep)?;
            } else {
                std::fs::remove_file(&ep)
                    .with_context(|| format!("normalise: remove {}", ep.display()))?;
            }
        }
    }
    let entries = stamp(tree, epoch)?;
    Ok(Normalised { entries, pruned })
}

/// Stamps every entry of `tree` with `epoch` (links themselves, never
/// followed), leaving alone those whose modification time already is the
/// epoch: an entry the base/apps split sees as unchanged stays unchanged
/// (`pipeline::layers`). Returns how many entries the tree has.
pub fn stamp(tree: &Path, epoch: u64) -> Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let t = FileTime::from_unix_time(epoch as i64, 0);
    let mut entries = 0;
    // Children before parents, so stamping a file does not touch the stamp
    // of a folder already done.
    for e in WalkDir::new(tree).contents_first(true).sort_by_file_name() {
        let e = e.context("normalise: walk the tree")?;
        entries += 1;
        let m = e
            .path()
            .symlink_metadata()
            .with_context(|| format!("normalise: stat {}", e.path().display()))?;
        if (m.mtime(), m.mtime_nsec()) == (epoch as i64, 0) {
            continue;
        }
        filetime::set_symlink_file_times(e.path(), t, t)
            .with_context(|| format!("normalise: stamp {}", e.path().display()))?;
    }
    Ok(entries)
}

fn empty_files_below(dir: &Path) -> Result<()> {
    for e in WalkDir::new(dir).min_depth(1) {
        let e = e?;
        if !e.file_type().is_dir() {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn stamps_everything_and_never_follows_links() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::write(&outside, "x").unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("var/log/apt")).unwrap();
        std::fs::write(tree.join("var/log/apt/history.log"), "host stuff").unwrap();
        std::fs::write(tree.join("var/log/dpkg.log"), "host stuff").unwrap();
        symlink(&outside, tree.join("link")).unwrap();
        let before = std::fs::metadata(&outside).unwrap().modified().unwrap();
        normalise(&tree, 1_000_000).unwrap();
        assert!(tree.join("var/log/apt").is_dir());
        assert!(!tree.join("var/log/apt/history.log").exists());
        assert!(!tree.join("var/log/dpkg.log").exists());
        let m = std::fs::symlink_metadata(tree.join("var/log")).unwrap();
        assert_eq!(
            FileTime::from_last_modification_time(&m).unix_seconds(),
            1_000_000
        );
        let l = std::fs::symlink_metadata(tree.join("link")).unwrap();
        assert_eq!(
            FileTime::from_last_modification_time(&l).unix_seconds(),
            1_000_000
        );
        // The link's target outside the tree kept its own time.
        assert_eq!(
            std::fs::metadata(&outside).unwrap().modified().unwrap(),
            before
        );
    }

    #[test]
    fn prune_drops_docs_locales_package_managers_and_never_leaves_the_tree() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("keep"), "host").unwrap();
        let tree = d.path().join("tree");
        let w = |rel: &str, body: &str| {
            let p = tree.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        };
        w("usr/share/doc/bash/copyright", "c");
        w("usr/share/doc/bash/README.gz", "r");
        w("usr/share/doc/bash/examples/x", "e");
        w("usr/share/man/man1/ls.1.gz", "m");
        w("usr/share/info/dir", "i");
        w("usr/share/locale/locale.alias", "a");
        w("usr/share/locale/de/LC_MESSAGES/x.mo", "t");
        w(
            "var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease",
            "l",
        );
        w("var/lib/dpkg/status", "Package: bash\n");
        w("var/lib/dpkg/available", "");
        w("usr/bin/apt", "bin");
        w("usr/bin/dpkg", "bin");
        w("usr/lib/x86_64-linux-gnu/libapt-pkg.so.6.0", "lib");
        w("usr/bin/bash", "bin");
        w("usr/lib/locale/C.utf8/LC_CTYPE", "c");
        // An escaping link in a pruned folder, and a list naming a path
        // through a link that points out of the tree (read as the image
        // would: inside it).
        symlink(&outside, tree.join("usr/share/doc/bash/escape")).unwrap();
        symlink(&outside, tree.join("usr/share/doc/escape")).unwrap();
        symlink(&outside, tree.join("usr/lib/evil")).unwrap();
        // usrmerge: /lib is a link to usr/lib, and lists name "/lib".
        symlink("usr/lib", tree.join("lib")).unwrap();
        w("usr/lib/systemd/systemd", "init");
        w("usr/lib/systemd/system/apt-daily.service", "unit");
        w(
            "var/lib/dpkg/info/apt.list",
            "/.\n/lib\n/lib/systemd\n/lib/systemd/system\n/lib/systemd/system/apt-daily.service\n/usr\n/usr/bin\n/usr/bin/apt\n/usr/lib/evil/keep\n",
        );
        w("var/lib/dpkg/info/dpkg.list", "/usr/bin/dpkg\n");
        w(
            "var/lib/dpkg/info/libapt-pkg6.0:amd64.list",
            "/usr/lib/x86_64-linux-gnu/libapt-pkg.so.6.0\n",
        );
        w("var/lib/dpkg/info/bash.list", "/usr/bin/bash\n");
        let n = normalise(&tree, 1).unwrap();
        assert!(n.pruned > 0);
        for gone in [
            "usr/share/doc/bash/README.gz",
            "usr/share/doc/bash/examples",
            "usr/share/doc/bash/escape",
            "usr/share/man/man1",
            "usr/share/info/dir",
            "usr/share/locale/de",
            "var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease",
            "var/lib/dpkg/available",
            "var/lib/dpkg/info",
            "usr/bin/apt",
            "usr/lib/systemd/system/apt-daily.service",
            "usr/bin/dpkg",
            "usr/lib/x86_64-linux-gnu/libapt-pkg.so.6.0",
        ] {
            assert!(
                std::fs::symlink_metadata(tree.join(gone)).is_err(),
                "{gone} is still there"
            );
        }
        // Control: what the appliance runs or the SBOM reads stays.
        for kept in [
            "usr/share/doc/bash/copyright",
            "usr/share/doc/escape",
            "usr/share/locale/locale.alias",
            "var/lib/dpkg/status",
            "usr/bin/bash",
            "usr/lib/locale/C.utf8/LC_CTYPE",
            "usr/lib/evil",
            "lib",
            "usr/lib/systemd/systemd",
        ] {
            assert!(
                std::fs::symlink_metadata(tree.join(kept)).is_ok(),
                "{kept} was removed"
            );
        }
        // Nothing outside the tree was touched.
        assert_eq!(
            std::fs::read_to_string(outside.join("keep")).unwrap(),
            "host"
        );
    }
}
