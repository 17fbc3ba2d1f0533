//! The bottom layer: things every other layer uses and that know nothing
//! of recipes or images: the one tool runner, digests, the tree-access
//! layer, cpio, progress display and the host tool table.

pub mod cpio;
pub mod deb822;
pub mod digest;
pub mod direct;
pub mod doctor;
pub mod drive;
pub mod inode;
pub mod interrupt;
pub mod limits;
pub mod parallel;
pub mod progress;
pub mod qcow2;
pub mod runner;
pub mod scratch;
pub mod shown;
pub mod sys;
pub mod tar;
pub mod time;
pub mod tree;
pub mod untrusted;
pub mod verity;
pub mod vmdk;

/// Asks for a pipe or fifo of `size` bytes (F_SETPIPE_SZ), so the side
/// that writes may run ahead between reads. Best effort: on failure (a
/// size over /proc/sys/fs/pipe-max-size, not a pipe) the default stays.
pub fn set_pipe_size(pipe: &impl std::os::unix::io::AsRawFd, size: usize) {
    let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    // SAFETY: fcntl on a descriptor the caller holds open; no pointers.
    unsafe {
        libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, size);
    }
}

/// The two bytes every gzip member starts with (RFC 1952).
pub const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Whether `head` (the first bytes of a stream) starts a gzip stream: the
/// one check image archives, layers and their media types share.
pub fn is_gzip(head: &[u8]) -> bool {
    head.starts_with(&GZIP_MAGIC)
}

/// Fills `buf` from `f` at `off` as far as the file allows (a short count
/// only at its end), without moving the file's offset (several readers may
/// share it). Interrupted reads are retried.
pub fn read_full_at(f: &std::fs::File, buf: &mut [u8], mut off: u64) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt as _;
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], off) {
            Ok(0) => break,
            Ok(k) => {
                n += k;
                off += k as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Fills `buf` as far as `r` allows (a short count only at its end);
/// returns the bytes read. Interrupted reads are retried.
pub fn read_full(r: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
