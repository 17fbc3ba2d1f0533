//! Where a rebuild's root tree lives: in memory (the tmpfs at /dev/shm)
//! when its size is known and fits with room to spare, else on disk in the
//! build's folder. Creating files is what unpacking a cached tree costs,
//! and a disk file system pays for each in its journal and block
//! allocator: the cached Debian base (172 MB, 9,000 entries) unpacks in
//! 1.21 s on this project's ext4 builder and in 0.10 s on tmpfs.
//!
//! Only a tree whose size is known before it is written goes to memory (a
//! tree from the stage cache: its tarballs' sizes), so a build never runs
//! out of memory half-way; `CAIRN_TREES=disk` keeps every tree on disk.
//! Folders are named by the build's process id: a build that was killed
//! leaves one, which the next build removes ([`clean_stale`]).

use std::path::{Path, PathBuf};

/// The environment variable that keeps trees on disk (`disk`).
pub const ENV: &str = "CAIRN_TREES";
/// How to keep trees on disk, for messages.
pub const DISK_HINT: &str = "CAIRN_TREES=disk";
const SHM: &str = "/dev/shm";
const PREFIX: &str = "cairn-trees-";
const TMPFS_MAGIC: i64 = 0x0102_1994;
const GIB: u64 = 1 << 30;

/// Whether `needed` bytes fit: the tmpfs keeps twice that free plus 1 GiB,
/// and the machine keeps three times that available plus 2 GiB (a tmpfs
/// holds its files in memory; the rest of the build needs some too).
pub fn fits(needed: u64, tmpfs_free: u64, mem_available: u64) -> bool {
    let n = needed.max(1);
    n.saturating_mul(2).saturating_add(GIB) <= tmpfs_free
        && n.saturating_mul(3).saturating_add(2 * GIB) <= mem_available
}

/// A new folder in memory for trees of `needed` bytes, or `None` (on
/// disk then): `CAIRN_TREES=disk`, no tmpfs at /dev/shm, or not enough room.
pub fn memory_folder(needed: u64) -> Option<PathBuf> {
    if !has_room(Path::new(SHM), needed) {
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{}-", std::process::id()))
        .tempdir_in(SHM)
        .ok()?;
    // Kept: the build's own guard removes it (host::interrupt).
    Some(dir.keep())
}

/// Where to put a tree of about `bytes`: the memory folder when there is
/// one and the tree fits in it too, else `work` (on disk).
pub fn staging_folder<'a>(memory: Option<&'a Path>, work: &'a Path, bytes: u64) -> &'a Path {
    match memory {
        Some(m) if has_room(m, bytes) => m,
        _ => work,
    }
}

/// Whether `path` is on a tmpfs where `needed` bytes [`fits`].
fn has_room(path: &Path, needed: u64) -> bool {
    tmpfs_free(path)
        .zip(mem_available())
        .is_some_and(|(free, avail)| fits(needed, free, avail))
}

/// Free bytes of the tmpfs at `path`; `None` if it is not a tmpfs.
fn tmpfs_free(path: &Path) -> Option<u64> {
    let (kind, free) = crate::host::sys::fs_type_and_free(path)?;
    (kind == TMPFS_MAGIC).then_some(free)
}

/// `MemAvailable` of /proc/meminfo, in bytes.
fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&text)
}

fn parse_mem_available(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Removes the memory folders of builds that are no longer running.
pub fn clean_stale() {
    clean_stale_in(Path::new(SHM));
}

fn clean_stale_in(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let owned = e.metadata().is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt as _;
            m.is_dir() && m.uid() == crate::host::sys::euid()
        });
        if owned && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Moves the folder `from` to `to` (which must not exist): a rename, or,
/// across file systems (a staged image root on disk, the tree in memory),
/// `cp -a` (owners, modes, links, extended attributes kept) and then the
/// removal of `from`.
pub fn move_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let mut cp = crate::host::runner::command("cp");
            cp.arg("-a").arg("--no-target-directory").arg(from).arg(to);
            crate::host::runner::output("move tree: copy across file systems", cp)?;
            std::fs::remove_dir_all(from)
                .with_context(|| format!("move tree: remove {}", from.display()))
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "move {} to {}",
            from.display(),
            to.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_checked_with_margins() {
        let mib = 1 << 20;
        assert!(fits(400 * mib, 12 * GIB, 20 * GIB));
        // Not enough free in the tmpfs, or not enough memory available.
        assert!(!fits(400 * mib, GIB, 20 * GIB));
        assert!(!fits(400 * mib, 12 * GIB, 3 * GIB));
        assert!(!fits(u64::MAX, u64::MAX, u64::MAX - 1));
        assert_eq!(
            parse_mem_available("MemTotal: 10 kB\nMemAvailable:    2048 kB\n"),
            Some(2 << 20)
        );
        assert_eq!(parse_mem_available("MemTotal: 10 kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: x kB\n"), None);
    }

    #[test]
    fn memory_folders_of_dead_builds_are_removed_and_live_ones_kept() {
        let d = tempfile::tempdir().unwrap();
        // A pid that cannot be running (above the kernel's pid limit).
        let dead = d.path().join(format!("{PREFIX}4999999-abc"));
        let live = d.path().join(format!("{PREFIX}{}-abc", std::process::id()));
        let other = d.path().join("someone-else");
        for f in [&dead, &live, &other] {
            std::fs::create_dir_all(f.join("root/usr")).unwrap();
        }
        clean_stale_in(d.path());
        assert!(!dead.exists());
        assert!(live.exists() && other.exists());
    }

    #[test]
    fn trees_move_within_and_across_file_systems() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let make = |root: &Path| {
            std::fs::create_dir_all(root.join("usr/bin")).unwrap();
            std::fs::write(root.join("usr/bin/tool"), "x").unwrap();
            std::fs::set_permissions(
                root.join("usr/bin/tool"),
                std::fs::Permissions::from_mode(0o4755),
            )
            .unwrap();
            std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        };
        let check = |root: &Path| {
            let m = std::fs::metadata(root.join("usr/bin/tool")).unwrap();
            assert_eq!(m.permissions().mode() & 0o7777, 0o4755);
            assert_eq!(
                std::fs::read_link(root.join("bin")).unwrap(),
                Path::new("usr/bin")
            );
        };
        let a = d.path().join("a");
        make(&a);
        let b = d.path().join("b");
        move_tree(&a, &b).unwrap();
        assert!(!a.exists());
        check(&b);
        // Across file systems when /dev/shm is a tmpfs (it is on Debian).
        let shm = tempfile::tempdir_in(SHM).unwrap();
        assert!(tmpfs_free(shm.path()).is_some(), "{SHM} is not a tmpfs");
        let c = shm.path().join("c");
        move_tree(&b, &c).unwrap();
        assert!(!b.exists());
        check(&c);
        // A target that exists is refused, the source kept.
        make(&a);
        std::fs::create_dir_all(d.path().join("taken/x")).unwrap();
        assert!(move_tree(&a, &d.path().join("taken")).is_err());
        check(&a);
    }
}
