//! Normalise: makes the composed tree the same on every build host and day.
//! Removes caches, logs and host-unique files; stamps every entry with
//! SOURCE_DATE_EPOCH. Invariant: only paths inside the tree are touched, and
//! symlinks are stamped, never followed.

use std::path::Path;

use anyhow::{Context, Result};
use filetime::FileTime;
use walkdir::WalkDir;

use crate::host::tree::resolve_in_root;

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

pub struct Normalised {
    pub entries: u64,
}

pub fn normalise(tree: &Path, epoch: u64) -> Result<Normalised> {
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
    let t = FileTime::from_unix_time(epoch as i64, 0);
    let mut entries = 0;
    // Children before parents, so stamping a file does not touch the stamp
    // of a folder already done.
    for e in WalkDir::new(tree).contents_first(true).sort_by_file_name() {
        let e = e.context("normalise: walk the tree")?;
        filetime::set_symlink_file_times(e.path(), t, t)
            .with_context(|| format!("normalise: stamp {}", e.path().display()))?;
        entries += 1;
    }
    Ok(Normalised { entries })
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
}
