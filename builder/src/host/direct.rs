//! Writing and reading media of many GB around the page cache
//! (`O_DIRECT`).
//!
//! A build writes every model's bytes three more times (raw disk, ISO,
//! qcow2) and reads each medium once more to hash it. Through the page
//! cache, each of those GB first needs fresh memory: on a machine short
//! of it (or a VM whose free memory goes back to its host) that costs
//! more than the disk does, and it pushes out what the build reads again
//! (the volumes, the base). Media are not read again by the build (their
//! digest is taken from the writes or read once here), so their bulk
//! goes straight to the disk.
//!
//! Only aligned pieces go direct: an offset and a length that are
//! multiples of [`ALIGN`], from an [`AlignedBuf`]. Anything else, and any
//! file system that refuses `O_DIRECT` (at open or at the first write),
//! goes through the page cache as before: the bytes written are the same
//! either way.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::Path;

use anyhow::{Context, Result};

/// The alignment of direct offsets, lengths and buffers: a page, which
/// covers every logical block size of the disks cairn writes to.
pub const ALIGN: usize = 4096;

/// A zeroed buffer whose start is [`ALIGN`]ed (a `Vec` over-allocated by
/// one alignment, used from its first aligned byte).
pub struct AlignedBuf {
    bytes: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// `len` zero bytes, `len` rounded up to [`ALIGN`].
    pub fn new(len: usize) -> Self {
        let len = len.div_ceil(ALIGN) * ALIGN;
        let bytes = vec![0u8; len + ALIGN];
        let start = bytes.as_ptr().align_offset(ALIGN).min(ALIGN);
        AlignedBuf { bytes, start, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + self.len]
    }
}

/// Whether a piece at `at` of `data` may go direct.
fn aligned(data: &[u8], at: u64) -> bool {
    at % ALIGN as u64 == 0
        && data.len() % ALIGN == 0
        && (data.as_ptr() as usize) % ALIGN == 0
        && !data.is_empty()
}

fn refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

/// Opens `path` with `opts` plus `O_DIRECT`, or `None` where the file
/// system does not offer it.
fn open_direct(opts: &OpenOptions, path: &Path) -> Option<File> {
    let mut o = opts.clone();
    o.custom_flags(libc::O_DIRECT);
    o.open(path).ok()
}

/// Whether `path` (an existing file) can be opened for direct writes:
/// what `qemu-img -t none` needs.
pub fn supported(path: &Path) -> bool {
    open_direct(OpenOptions::new().write(true), path).is_some()
}

/// Positioned writes into one file, direct where they are aligned.
pub struct Writer {
    path: std::path::PathBuf,
    buffered: File,
    direct: Option<File>,
}

impl Writer {
    /// Opens the existing file `path` for writing (not truncated).
    pub fn open(path: &Path) -> Result<Self> {
        let mut opts = OpenOptions::new();
        opts.write(true);
        let buffered = opts
            .open(path)
            .with_context(|| format!("open {} for writing", path.display()))?;
        Ok(Writer {
            path: path.to_path_buf(),
            direct: open_direct(&opts, path),
            buffered,
        })
    }

    /// Creates `path` (or empties it) for writing.
    pub fn create(path: &Path) -> Result<Self> {
        let buffered = File::create(path).with_context(|| format!("create {}", path.display()))?;
        let direct = open_direct(OpenOptions::new().write(true), path);
        Ok(Writer {
            path: path.to_path_buf(),
            buffered,
            direct,
        })
    }

    /// Opens the existing file `path` for buffered writes only (pieces
    /// small enough that the page cache is the faster way).
    pub fn open_buffered(path: &Path) -> Result<Self> {
        let buffered = OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("open {} for writing", path.display()))?;
        Ok(Writer {
            path: path.to_path_buf(),
            buffered,
            direct: None,
        })
    }

    /// Whether aligned writes go direct (for tests and messages).
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Writes all of `data` at `at`.
    pub fn write_at(&mut self, data: &[u8], at: u64) -> Result<()> {
        if let Some(d) = &self.direct {
            if aligned(data, at) {
                match d.write_all_at(data, at) {
                    Ok(()) => return Ok(()),
                    // Refused after all: everything goes buffered from
                    // now on, this piece again from its start.
                    Err(e) if refused(&e) => self.direct = None,
                    Err(e) => {
                        return Err(e).with_context(|| format!("write {}", self.path.display()))
                    }
                }
            }
        }
        self.buffered
            .write_all_at(data, at)
            .with_context(|| format!("write {}", self.path.display()))
    }
}

/// Positioned reads from one file, direct where they are aligned.
pub struct Reader {
    buffered: File,
    direct: Option<File>,
}

impl Reader {
    /// `buffered` is the file already open; `path` is opened again direct.
    pub fn new(buffered: File, path: &Path) -> Self {
        Reader {
            direct: open_direct(OpenOptions::new().read(true), path),
            buffered,
        }
    }

    /// Reads through the page cache only.
    pub fn buffered(file: File) -> Self {
        Reader {
            buffered: file,
            direct: None,
        }
    }

    pub fn into_file(self) -> File {
        self.buffered
    }

    pub fn file(&self) -> &File {
        &self.buffered
    }

    /// Reads up to `want` bytes at `at` into the start of `buf` (at least
    /// `want` long); returns how many, 0 at the end of the file. A piece
    /// the page cache holds in full is read from there; any other, direct.
    pub fn read_at(&mut self, buf: &mut AlignedBuf, want: usize, at: u64) -> io::Result<usize> {
        let want = want.min(buf.len());
        if let Some(d) = &self.direct {
            if at % ALIGN as u64 == 0 && want > 0 {
                if cached(&self.buffered, at, want) {
                    return self.buffered.read_at(&mut buf.as_mut_slice()[..want], at);
                }
                // A direct read's length is whole blocks; past the end of
                // the file it comes back short, past `want` it is not used.
                let whole = want.div_ceil(ALIGN) * ALIGN;
                match d.read_at(&mut buf.as_mut_slice()[..whole], at) {
                    Ok(n) => return Ok(n.min(want)),
                    Err(e) if refused(&e) => self.direct = None,
                    Err(e) => return Err(e),
                }
            }
        }
        self.buffered.read_at(&mut buf.as_mut_slice()[..want], at)
    }
}

/// The data runs `(start, end)` of bytes `[from, len)` of `f`, in
/// order; the rest are holes, which read as zeros and need not be read
/// (reading them on ext4 fills the page cache with zeros). `None` where
/// the file system cannot say (SEEK_DATA unsupported): read it all.
pub fn data_runs(f: &File, from: u64, len: u64) -> Option<Vec<(u64, u64)>> {
    use std::os::unix::io::AsRawFd as _;
    let fd = f.as_raw_fd();
    // lseek with SEEK_DATA/SEEK_HOLE: `Ok(None)` past the last data (ENXIO).
    let seek = |at: u64, whence: libc::c_int| -> io::Result<Option<u64>> {
        // SAFETY: lseek only moves this open descriptor's offset (every
        // user of the descriptor reads and writes at explicit offsets).
        let r = unsafe { libc::lseek(fd, at as libc::off_t, whence) };
        if r >= 0 {
            Ok(Some(r as u64))
        } else {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                Ok(None)
            } else {
                Err(e)
            }
        }
    };
    let mut runs = Vec::new();
    let mut pos = from;
    while pos < len {
        let Some(start) = seek(pos, libc::SEEK_DATA).ok()? else {
            break;
        };
        if start >= len {
            break;
        }
        let end = seek(start, libc::SEEK_HOLE)
            .ok()?
            .unwrap_or(len)
            .clamp(start + 1, len);
        runs.push((start, end));
        pos = end;
    }
    Some(runs)
}

/// Whether the page cache holds every page of `[at, at + len)` of `f`;
/// `false` when it cannot tell.
fn cached(f: &File, at: u64, len: usize) -> bool {
    let Ok(size) = f.metadata().map(|m| m.len()) else {
        return false;
    };
    if at >= size {
        return false;
    }
    let len = len.min((size - at) as usize);
    resident_pages(f, at, len) == Some(len.div_ceil(ALIGN))
}

/// How many pages of `[at, at + len)` of `f` (`at` page-aligned, the
/// range inside the file) the page cache holds: `mincore` over a mapping
/// of that range, which reads nothing and faults nothing in.
fn resident_pages(f: &File, at: u64, len: usize) -> Option<usize> {
    use std::os::unix::io::AsRawFd as _;
    if len == 0 {
        return Some(0);
    }
    let mut resident = vec![0u8; len.div_ceil(ALIGN)];
    // SAFETY: a shared read-only mapping of `len` bytes of a file held
    // open, never dereferenced, unmapped before return; mincore writes one
    // byte per page into `resident`, which has that many.
    unsafe {
        let m = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            at as libc::off_t,
        );
        if m == libc::MAP_FAILED {
            return None;
        }
        let ok = libc::mincore(m, len, resident.as_mut_ptr()) == 0;
        libc::munmap(m, len);
        ok.then(|| resident.iter().filter(|r| *r & 1 == 1).count())
    }
}

/// How often [`DropBehind`] drops what the page cache holds of its files.
const DROP_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// While it lives, keeps what the page cache holds of some files small:
/// the bytes a tool has written are sent to the disk and dropped every
/// [`DROP_EVERY`], so a tool writing GBs front to back reuses the same few
/// pages instead of taking fresh memory for every one (the cost this
/// module is about). Dirty pages are started on their way to the disk by
/// one pass and dropped, clean, by a later one; a page dropped before a
/// reader came to it is read again from the disk: the bytes are the same
/// either way.
///
/// Files are opened by path at every pass (a tool may create or replace
/// its output after this starts), never following a final link, without
/// blocking, and only regular files are touched.
pub struct DropBehind {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DropBehind {
    pub fn start(paths: Vec<std::path::PathBuf>) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("drop-behind".into())
            .spawn(move || {
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(DROP_EVERY);
                    for p in &paths {
                        drop_cached(p);
                    }
                }
            })
            .ok();
        DropBehind { stop, thread }
    }
}

impl Drop for DropBehind {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts writing out the dirty pages of the regular file at `path` and
/// drops its clean ones from the page cache (best effort: advice only).
fn drop_cached(path: &Path) {
    use std::os::unix::io::AsRawFd as _;
    let Ok(f) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return;
    };
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return;
    }
    // SAFETY: advice on a descriptor owned here; it reads no memory.
    unsafe {
        libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers_start_on_a_page() {
        for len in [1, 4095, 4096, 1 << 20] {
            let mut b = AlignedBuf::new(len);
            assert_eq!(b.as_slice().as_ptr() as usize % ALIGN, 0);
            assert!(b.len() >= len && b.len() % ALIGN == 0);
            b.as_mut_slice().fill(7);
            assert!(b.as_slice().iter().all(|x| *x == 7));
        }
        assert!(aligned(AlignedBuf::new(ALIGN).as_slice(), 8192));
        // Control: an odd offset, length or start is not direct.
        let b = AlignedBuf::new(2 * ALIGN);
        assert!(!aligned(b.as_slice(), 512));
        assert!(!aligned(&b.as_slice()[..ALIGN - 1], 0));
        assert!(!aligned(&b.as_slice()[1..ALIGN + 1], 0));
    }

    #[test]
    fn writes_and_reads_give_the_same_bytes_direct_or_not() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let mut w = Writer::create(&p).unwrap();
        let mut big = AlignedBuf::new(3 * ALIGN);
        for (i, b) in big.as_mut_slice().iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        // Aligned (direct where the file system allows), then a piece at an
        // odd offset and an odd length (buffered), overlapping nothing.
        w.write_at(big.as_slice(), 8192).unwrap();
        w.write_at(b"tail", 8192 + 3 * ALIGN as u64 + 5).unwrap();
        w.write_at(b"head", 3).unwrap();
        drop(w);
        let got = std::fs::read(&p).unwrap();
        let mut want = vec![0u8; 8192 + 3 * ALIGN + 9];
        want[3..7].copy_from_slice(b"head");
        want[8192..8192 + 3 * ALIGN].copy_from_slice(big.as_slice());
        want[8192 + 3 * ALIGN + 5..].copy_from_slice(b"tail");
        assert_eq!(got, want);

        // Reads: whole, from an odd offset, past the end.
        let mut r = Reader::new(File::open(&p).unwrap(), &p);
        let mut buf = AlignedBuf::new(1 << 16);
        let n = r.read_at(&mut buf, 1 << 16, 0).unwrap();
        assert_eq!(&buf.as_slice()[..n], &want[..]);
        let n = r.read_at(&mut buf, 10, 3).unwrap();
        assert_eq!(&buf.as_slice()[..n], &want[3..13]);
        let n = r.read_at(&mut buf, 100, 8192).unwrap();
        assert_eq!(&buf.as_slice()[..n], &want[8192..8292]);
        assert_eq!(r.read_at(&mut buf, 100, want.len() as u64).unwrap(), 0);
    }

    #[test]
    fn data_runs_skip_holes() {
        let d = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")).unwrap();
        let p = d.path().join("sparse");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        f.set_len(16 << 20).unwrap();
        f.write_all_at(&[1u8; 10], 4 << 20).unwrap();
        f.write_all_at(&[2u8; 5000], 9 << 20).unwrap();
        let runs = data_runs(&f, 0, 16 << 20).unwrap();
        // Block-granular: each run covers its bytes and lies inside its MiB.
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert!(runs[0].0 <= 4 << 20 && runs[0].1 >= (4 << 20) + 10 && runs[0].1 <= 5 << 20);
        assert!(runs[1].0 <= 9 << 20 && runs[1].1 >= (9 << 20) + 5000 && runs[1].1 <= 10 << 20);
        // A run that reaches the end is cut at `len`; an all-hole file has none.
        assert_eq!(
            data_runs(&f, 0, (4 << 20) + 5).unwrap(),
            vec![(runs[0].0, (4 << 20) + 5)]
        );
        f.set_len(0).unwrap();
        f.set_len(1 << 20).unwrap();
        assert!(data_runs(&f, 0, 1 << 20).unwrap().is_empty());
        // Control: a dense file is one run.
        std::fs::write(&p, vec![3u8; 3 << 20]).unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(data_runs(&f, 0, 3 << 20).unwrap(), vec![(0, 3 << 20)]);
        // From inside a run: it starts there.
        assert_eq!(data_runs(&f, 5, 3 << 20).unwrap(), vec![(5, 3 << 20)]);
    }

    #[test]
    fn direct_writes_leave_the_page_cache_alone() {
        // On a file system with O_DIRECT (the build's: ext4, xfs, btrfs),
        // aligned writes are not cached; mincore over a mapping of the
        // file tells. Control: a buffered write of the same bytes is. In
        // the workspace's target folder, where the build writes (/tmp may
        // be a tmpfs, which is all page cache).
        let d = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")).unwrap();
        let p = d.path().join("f");
        let mut w = Writer::create(&p).unwrap();
        if !w.is_direct() {
            panic!(
                "{} offers no O_DIRECT; run the tests from a checkout on ext4, xfs or btrfs",
                d.path().display()
            );
        }
        let mut b = AlignedBuf::new(64 * ALIGN);
        b.as_mut_slice().fill(1);
        w.write_at(b.as_slice(), 0).unwrap();
        drop(w);
        assert_eq!(cached_pages(&p), 0, "direct write left pages cached");
        let q = d.path().join("g");
        std::fs::write(&q, b.as_slice()).unwrap();
        assert!(cached_pages(&q) > 0, "control: a buffered write is cached");
        // Reads: what is not cached is read direct and stays uncached; what
        // is cached is read from there. Both give the bytes.
        let mut buf = AlignedBuf::new(64 * ALIGN);
        for f in [&p, &q] {
            let mut r = Reader::new(File::open(f).unwrap(), f);
            buf.as_mut_slice().fill(0);
            assert_eq!(r.read_at(&mut buf, 64 * ALIGN, 0).unwrap(), 64 * ALIGN);
            assert!(buf.as_slice().iter().all(|x| *x == 1));
        }
        assert_eq!(cached_pages(&p), 0, "a direct read cached pages");
        assert_eq!(
            cached_pages(&q),
            64,
            "the cached file was not read from the cache"
        );
        // Control: a plain read caches.
        std::fs::read(&p).unwrap();
        assert!(cached_pages(&p) > 0, "control: a buffered read is cached");
    }

    #[test]
    fn drop_behind_keeps_a_written_file_out_of_the_page_cache() {
        // A tool's buffered writes (here this test's, 64 MiB) while a
        // DropBehind watches the file: once it has stopped, almost nothing
        // of the file is cached, and the bytes are all on the disk.
        // Control: the same writes to a file nobody watches stay cached.
        let d = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")).unwrap();
        let chunk = vec![5u8; 1 << 20];
        let write = |p: &Path| {
            let mut f = File::create(p).unwrap();
            for _ in 0..64 {
                std::io::Write::write_all(&mut f, &chunk).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        };
        let watched = d.path().join("watched");
        let guard = DropBehind::start(vec![watched.clone()]);
        write(&watched);
        // More passes: one starts the last writes out, a later one drops
        // them (time to spare for a busy disk).
        std::thread::sleep(10 * DROP_EVERY);
        drop(guard);
        let pages = 64 * (1 << 20) / ALIGN;
        let left = cached_pages(&watched);
        assert!(left < pages / 4, "{left} of {pages} pages still cached");
        let back = std::fs::read(&watched).unwrap();
        assert!(back.len() == 64 << 20 && back.iter().all(|b| *b == 5));
        let plain = d.path().join("plain");
        write(&plain);
        let left = cached_pages(&plain);
        assert!(left > pages / 2, "control: {left} of {pages} pages cached");
        // A fifo among the paths is neither opened for long nor waited on.
        let fifo = d.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let guard = DropBehind::start(vec![fifo, d.path().join("missing")]);
        std::thread::sleep(3 * DROP_EVERY);
        drop(guard);
    }

    fn cached_pages(p: &Path) -> usize {
        let f = File::open(p).unwrap();
        let len = f.metadata().unwrap().len() as usize;
        resident_pages(&f, 0, len).unwrap()
    }
}
