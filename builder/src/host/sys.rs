//! The libc calls cairn makes, each behind a small safe function with the
//! reason it is sound beside its `unsafe` block, so no other module
//! needs `unsafe` for a system call (signal handling is in
//! [`crate::host::interrupt`], inode metadata in [`crate::host::inode`]).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::io::{AsRawFd, FromRawFd as _};
use std::path::Path;

/// `_IOR(0x12, 114, u64)`: a block device's size in bytes.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
/// `_IO(0x12, 97)`: drop a block device's buffer cache.
const BLKFLSBUF: libc::c_ulong = 0x1261;

fn path_c(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has a NUL in its name", path.display()),
        )
    })
}

/// `r` as an io result: negative means errno.
fn check<T: Copy + PartialOrd + Default>(r: T) -> io::Result<T> {
    if r < T::default() {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A pipe: its read end and its write end, both closed on exec (a write
/// end given to a tool as its stdin is kept open by dup2).
pub fn pipe() -> io::Result<(File, File)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the two-element array; on
    // success each is new and owned by exactly one File from here on.
    unsafe {
        check(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC))?;
        Ok((File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])))
    }
}

/// The size in bytes of the block device open as `f` (BLKGETSIZE64).
pub fn block_device_size(f: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which
    // points at a live u64.
    check(unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) })?;
    Ok(size)
}

/// Drops the buffer cache of the block device open as `f` (BLKFLSBUF),
/// so a read-back reaches the medium.
pub fn flush_block_buffers(f: &File) -> io::Result<()> {
    // SAFETY: BLKFLSBUF takes no argument and touches no memory of ours.
    check(unsafe { libc::ioctl(f.as_raw_fd(), BLKFLSBUF as _, 0) })?;
    Ok(())
}

/// `_IO(0x12, 127)`: zero a byte range of a block device.
const BLKZEROOUT: libc::c_ulong = 0x127f;

/// Zeroes `len` bytes at `start` of the block device open as `f`
/// (BLKZEROOUT): the kernel guarantees the range reads back as zeros,
/// offloading to the device's WRITE ZEROES where it has one, else writing
/// zero pages itself. Both must be multiples of the logical block size.
pub fn zero_out_range(f: &File, start: u64, len: u64) -> io::Result<()> {
    let range: [u64; 2] = [start, len];
    // SAFETY: BLKZEROOUT reads two u64s from the pointer, which outlives the call.
    check(unsafe { libc::ioctl(f.as_raw_fd(), BLKZEROOUT as _, range.as_ptr()) })?;
    Ok(())
}

/// Advises the kernel to drop `f`'s cached pages (best effort).
pub fn drop_cached_pages(f: &File) {
    // SAFETY: advisory only; plain integers on a descriptor we hold open.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// Clears O_NONBLOCK on `f` (opened without blocking so a fifo swapped in
/// is refused, not waited on).
pub fn clear_nonblock(f: &File) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL take and return plain integers on a
    // descriptor we hold open.
    unsafe {
        let fl = check(libc::fcntl(f.as_raw_fd(), libc::F_GETFL))?;
        check(libc::fcntl(
            f.as_raw_fd(),
            libc::F_SETFL,
            fl & !libc::O_NONBLOCK,
        ))?;
    }
    Ok(())
}

/// Sets the calling thread's niceness to `nice` (best effort).
pub fn nice_this_thread(nice: i32) {
    // SAFETY: setpriority only reads its integer arguments; on Linux,
    // PRIO_PROCESS with who = 0 names the calling thread.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    euid() == 0
}

/// `_IO(KVMIO, 0x00)`.
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;

/// The KVM API version of `/dev/kvm` open as `f` (KVM_GET_API_VERSION).
pub fn kvm_api_version(f: &File) -> io::Result<i32> {
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns an int.
    check(unsafe { libc::ioctl(f.as_raw_fd(), KVM_GET_API_VERSION as _, 0) })
}

/// The effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// The file system `path` is on: its type (`f_type`) and its free bytes
/// for an unprivileged user; `None` where it cannot be asked.
pub fn fs_type_and_free(path: &Path) -> Option<(i64, u64)> {
    let c = path_c(path).ok()?;
    // SAFETY: a zeroed statfs is a valid value to be overwritten.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `s` a valid out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)]
    Some((
        s.f_type as i64,
        (s.f_bavail as u64).saturating_mul(s.f_bsize as u64),
    ))
}

/// Makes a fifo at `path` with `mode`.
pub fn mkfifo(path: &Path, mode: u32) -> io::Result<()> {
    let c = path_c(path)?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    check(unsafe { libc::mkfifo(c.as_ptr(), mode as libc::mode_t) })?;
    Ok(())
}

/// Extended attributes as (name, value) pairs.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// The extended attributes of `path` (not followed if a link) as
/// (name, value), sorted by name. `Ok(None)` where the file system has
/// none (ENOTSUP); an attribute gone between the list and its read
/// (ENODATA) is left out.
pub fn xattrs(path: &Path) -> io::Result<Option<Xattrs>> {
    let c = path_c(path)?;
    let names = match sized(|buf, len| {
        // SAFETY: `c` is NUL-terminated; `buf` is NULL with `len` 0 (a size
        // query) or points at `len` writable bytes.
        unsafe { libc::llistxattr(c.as_ptr(), buf.cast(), len) }
    }) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cn = CString::new(name).map_err(|_| io::Error::other("xattr name with a NUL"))?;
        let value = sized(|buf, len| {
            // SAFETY: as above; `cn` is NUL-terminated too.
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), buf.cast(), len) }
        });
        match value {
            Ok(v) => out.push((name.to_vec(), v)),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA | libc::ENOTSUP)) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort();
    Ok(Some(out))
}

/// The bytes of a "size query, then fill" call (`call(NULL, 0)` gives the
/// size): retried if the value grew in between (ERANGE).
fn sized(call: impl Fn(*mut u8, usize) -> isize) -> io::Result<Vec<u8>> {
    loop {
        let len = check(call(std::ptr::null_mut(), 0))? as usize;
        if len == 0 {
            return Ok(Vec::new());
        }
        let mut v = vec![0u8; len];
        match check(call(v.as_mut_ptr(), v.len())) {
            Ok(n) => {
                v.truncate(n as usize);
                return Ok(v);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sys_fifo_pipe_and_xattrs() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("fifo");
        mkfifo(&f, 0o600).unwrap();
        use std::os::unix::fs::FileTypeExt as _;
        assert!(std::fs::symlink_metadata(&f).unwrap().file_type().is_fifo());
        // Control: a second one at the same path is an error.
        assert!(mkfifo(&f, 0o600).is_err());
        let (mut r, mut w) = pipe().unwrap();
        use std::io::{Read as _, Write as _};
        w.write_all(b"x").unwrap();
        drop(w);
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "x");
        let plain = d.path().join("plain");
        std::fs::write(&plain, "").unwrap();
        let got = xattrs(&plain).unwrap();
        assert!(got
            .map(|v| v.iter().all(|(n, _)| !n.is_empty()))
            .unwrap_or(true));
        assert!(xattrs(&d.path().join("missing")).is_err());
    }
}
