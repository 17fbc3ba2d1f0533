//! Opening a file cairn did not write (a release folder's files, public and
//! secret keys, signatures, passphrase files): the one way to do it.
//! Invariant: opening never blocks (O_NONBLOCK until fstat has shown a
//! regular file, so a FIFO or a device is refused instead of waited on),
//! `Links::Refuse` never follows a symlink in the last component, and
//! reads stop at a cap.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Whether the last path component may be a symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// A file the user named (a key, a passphrase file): a symlink is
    /// followed, the file it leads to must still be regular.
    Follow,
    /// A file inside a folder under check (a release folder): a symlink is
    /// refused, so nothing is read from outside the folder.
    Refuse,
}

/// Why an untrusted file was not opened or read. `Display` is one line
/// naming the file and the rule it broke.
#[derive(Debug, thiserror::Error)]
pub enum UntrustedError {
    #[error("{}: no such file", .0.display())]
    NotFound(PathBuf),
    #[error("{}: is a symbolic link; only regular files are read here, never followed out of the folder", .0.display())]
    Symlink(PathBuf),
    #[error("{}: is {kind}, not a regular file; only regular files are read", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{}: is larger than the {max}-byte limit for this file", path.display())]
    TooLarge { path: PathBuf, max: u64 },
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
}

impl UntrustedError {
    /// The file was simply absent (callers often report that differently).
    pub fn is_not_found(&self) -> bool {
        matches!(self, UntrustedError::NotFound(_))
    }
}

fn kind_of(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO (named pipe)"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// An opened regular file and its size when it was opened.
#[derive(Debug)]
pub struct UntrustedFile {
    pub file: File,
    pub len: u64,
    pub path: PathBuf,
}

/// Opens `path` for reading without blocking, refuses anything but a
/// regular file (and, with `Links::Refuse`, a symlink), then clears
/// O_NONBLOCK so reads behave normally.
pub fn open(path: &Path, links: Links) -> Result<UntrustedFile, UntrustedError> {
    let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
    if links == Links::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => UntrustedError::NotFound(path.to_path_buf()),
            Some(libc::ELOOP) if links == Links::Refuse => {
                UntrustedError::Symlink(path.to_path_buf())
            }
            // A socket cannot be opened at all (ENXIO): name what it is.
            _ => match path.symlink_metadata() {
                Ok(m) if !m.file_type().is_file() && !m.file_type().is_symlink() => {
                    UntrustedError::NotRegular {
                        path: path.to_path_buf(),
                        kind: kind_of(m.file_type()),
                    }
                }
                _ => UntrustedError::Io {
                    path: path.to_path_buf(),
                    action: "open",
                    source: e,
                },
            },
        })?;
    let meta = file.metadata().map_err(|e| UntrustedError::Io {
        path: path.to_path_buf(),
        action: "stat",
        source: e,
    })?;
    if !meta.file_type().is_file() {
        return Err(UntrustedError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_of(meta.file_type()),
        });
    }
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no pointers involved.
    let fd = file.as_raw_fd();
    let cleared = unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        fl >= 0 && libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK) >= 0
    };
    if !cleared {
        return Err(UntrustedError::Io {
            path: path.to_path_buf(),
            action: "clear O_NONBLOCK on",
            source: io::Error::last_os_error(),
        });
    }
    Ok(UntrustedFile {
        file,
        len: meta.len(),
        path: path.to_path_buf(),
    })
}

/// The whole of `path` (see [`open`]), refused if it holds more than `max`
/// bytes; never reads more than `max + 1`.
pub fn read(path: &Path, links: Links, max: u64) -> Result<Vec<u8>, UntrustedError> {
    let f = open(path, links)?;
    let too_large = || UntrustedError::TooLarge {
        path: path.to_path_buf(),
        max,
    };
    if f.len > max {
        return Err(too_large());
    }
    let mut buf = Vec::with_capacity(f.len as usize);
    f.file
        .take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| UntrustedError::Io {
            path: path.to_path_buf(),
            action: "read",
            source: e,
        })?;
    if buf.len() as u64 > max {
        return Err(too_large());
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mkfifo(p: &Path) {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn regular_files_are_read_and_capped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"hello").unwrap();
        assert_eq!(read(&p, Links::Refuse, 5).unwrap(), b"hello");
        let e = read(&p, Links::Refuse, 4).unwrap_err();
        assert!(matches!(e, UntrustedError::TooLarge { max: 4, .. }), "{e}");
        assert!(read(&d.path().join("nope"), Links::Follow, 9)
            .unwrap_err()
            .is_not_found());
    }

    #[test]
    fn fifo_directory_device_and_symlink_are_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        mkfifo(&fifo);
        for links in [Links::Follow, Links::Refuse] {
            let e = open(&fifo, links).unwrap_err();
            assert!(e.to_string().contains("FIFO"), "{e}");
            let e = open(d.path(), links).unwrap_err();
            assert!(e.to_string().contains("a directory"), "{e}");
            let e = open(Path::new("/dev/zero"), links).unwrap_err();
            assert!(e.to_string().contains("character device"), "{e}");
        }
        let target = d.path().join("t");
        std::fs::write(&target, b"x").unwrap();
        let link = d.path().join("l");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        // Control: the same link is fine when links may be followed.
        assert_eq!(read(&link, Links::Follow, 1).unwrap(), b"x");
        let e = open(&link, Links::Refuse).unwrap_err();
        assert!(matches!(e, UntrustedError::Symlink(_)), "{e}");
        // A socket is named as one, not as an open error.
        let sock = d.path().join("sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let e = open(&sock, Links::Refuse).unwrap_err();
        assert!(e.to_string().contains("is a socket"), "{e}");
        // A link to a FIFO is refused even when followed.
        let lf = d.path().join("lf");
        std::os::unix::fs::symlink(&fifo, &lf).unwrap();
        assert!(matches!(
            open(&lf, Links::Follow),
            Err(UntrustedError::NotRegular { .. })
        ));
    }
}
