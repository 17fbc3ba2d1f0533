//! Metadata changes (mode, owner, times, extended attributes) on what a
//! tree holds, never on what a path happens to name. A path is walked from
//! the tree's root one component at a time, each opened with `O_NOFOLLOW`,
//! so a link that an input put anywhere on the way is an error (`ELOOP`),
//! never followed onto the build host; the change then acts on the open
//! descriptor (`fchmod`, `fchown`, `futimens`, `fsetxattr`) or, for an
//! entry that is itself a link, on its folder with `AT_SYMLINK_NOFOLLOW`.
//! Invariant: no function here resolves a link.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};

fn c_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC)`.
fn open_at(dir: &OwnedFd, name: &OsStr, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    let c = c_name(name)?;
    // SAFETY: `dir` is an open descriptor, `c` a NUL-terminated string that
    // outlives the call; the returned descriptor is owned by the caller.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The folder `rel` names inside `root`, opened without following any link
/// below `root` (`root` itself is the caller's own folder). `rel` may only
/// hold plain names: `..` or an absolute part is `InvalidInput`; a link or
/// a non-folder on the way is an error (`ELOOP` / `ENOTDIR`).
pub fn open_dir_beneath(root: &Path, rel: &Path) -> io::Result<File> {
    let mut cur: OwnedFd = File::open(root)?.into();
    for c in rel.components() {
        match c {
            Component::Normal(n) => {
                cur = open_at(&cur, n, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
            }
            Component::CurDir => {}
            _ => return Err(io::Error::from(io::ErrorKind::InvalidInput)),
        }
    }
    Ok(File::from(cur))
}

/// A fresh regular file `name` in the open folder `dir` (`O_CREAT|O_EXCL`,
/// so nothing that was there, link or not, is written through).
pub fn create_file_at(dir: &File, name: &OsStr, mode: u32) -> io::Result<File> {
    let d = dir.try_clone()?.into();
    open_at(
        &d,
        name,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
        mode,
    )
    .map(File::from)
}

/// Sets the permission bits of the open file or folder.
pub fn set_mode(f: &File, mode: u32) -> io::Result<()> {
    f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
}

/// Sets owner and group of the open file or folder.
pub fn set_owner(f: &File, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::fchown(f, Some(uid), Some(gid))
}

/// Sets access and modification times (whole seconds) of the open file.
pub fn set_mtime(f: &File, secs: i64) -> io::Result<()> {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    f.set_times(std::fs::FileTimes::new().set_accessed(t).set_modified(t))
}

/// Sets owner and group of the entry `name` in `dir`, a link itself rather
/// than what it points to.
pub fn set_owner_at(dir: &File, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
    let c = c_name(name)?;
    // SAFETY: an open descriptor and a NUL-terminated name; no link followed.
    let r = unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            c.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets access and modification times of the entry `name` in `dir`, a link
/// itself rather than what it points to.
pub fn set_mtime_at(dir: &File, name: &OsStr, secs: i64) -> io::Result<()> {
    let c = c_name(name)?;
    let ts = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: 0,
    };
    let times = [ts, ts];
    // SAFETY: an open descriptor, a NUL-terminated name and an array of two
    // timespecs, as utimensat(2) takes; no link followed.
    let r = unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets one extended attribute on the open file or folder.
pub fn set_xattr(f: &File, name: &[u8], value: &[u8]) -> io::Result<()> {
    let n = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: an open descriptor, a NUL-terminated name and a buffer of
    // `value.len()` bytes.
    let r = unsafe {
        libc::fsetxattr(
            f.as_raw_fd(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_link_on_the_way_is_never_followed() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let outside = d.path().join("outside");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("l")).unwrap();
        // Control: a real folder opens and takes the mode.
        let f = open_dir_beneath(&root, Path::new("a")).unwrap();
        set_mode(&f, 0o751).unwrap();
        assert_eq!(
            std::fs::metadata(root.join("a")).unwrap().mode() & 0o7777,
            0o751
        );
        // The link, as last or as an inner component, is refused.
        for rel in ["l", "l/x", "a/../l"] {
            assert!(open_dir_beneath(&root, Path::new(rel)).is_err(), "{rel}");
        }
        assert_eq!(std::fs::metadata(&outside).unwrap().mode() & 0o7777, 0o700);
    }

    #[test]
    fn times_and_owner_of_a_link_are_the_links() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("t");
        std::fs::write(&target, b"x").unwrap();
        let before = std::fs::metadata(&target).unwrap().mtime();
        std::os::unix::fs::symlink(&target, d.path().join("l")).unwrap();
        let dir = open_dir_beneath(d.path(), Path::new("")).unwrap();
        set_mtime_at(&dir, OsStr::new("l"), 12345).unwrap();
        let me = std::fs::symlink_metadata(d.path().join("l")).unwrap();
        set_owner_at(&dir, OsStr::new("l"), me.uid(), me.gid()).unwrap();
        assert_eq!(me.mtime(), 12345);
        assert_eq!(std::fs::metadata(&target).unwrap().mtime(), before);
    }

    #[test]
    fn a_fresh_file_is_never_written_through_a_link() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("t");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, d.path().join("l")).unwrap();
        let dir = open_dir_beneath(d.path(), Path::new("")).unwrap();
        assert!(create_file_at(&dir, OsStr::new("l"), 0o600).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        // Control: a new name is created.
        let f = create_file_at(&dir, OsStr::new("new"), 0o600).unwrap();
        set_mtime(&f, 7).unwrap();
        assert_eq!(std::fs::metadata(d.path().join("new")).unwrap().mtime(), 7);
    }
}
