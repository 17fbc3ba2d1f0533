//! `cairn flash IMAGE DEVICE`: a verified write to a USB stick or disk.
//!
//! Order, and why:
//! 1. **verify first** (`cairn::release::verify::verify` on the medium, signature and
//!    digests): a failure refuses with nothing written;
//! 2. **target checks**: a regular file needs `--to-file`; a block device must
//!    be a whole disk, not mounted (itself or a partition), not held by
//!    dm/md/LVM, not backing `/` or swap, and at least as large as the image;
//!    the device is named (vendor, model, size) and the user confirms on the
//!    tty unless `--yes`;
//! 3. **write** with the boot sector last: the first MiB (MBR/GPT, ISO
//!    system area) is zeroed first, then everything after it is written and
//!    flushed, then the first MiB. An interrupted write (Ctrl-C, pulled
//!    stick, power loss) leaves a device with no valid partition table or
//!    boot sector rather than a half-written one that looks bootable. The
//!    image bytes are hashed while they are read, and the first MiB is only
//!    written if that hash equals the *signed* digest (the file cannot be
//!    swapped between verification and write);
//! 4. **flush**: fsync, and BLKFLSBUF on block devices so the read-back
//!    comes from the device, not the page cache;
//! 5. **read back** the written range and compare its SHA-256 with the
//!    signed digest.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use sha2::Digest as _;

use crate::host::digest::Sha256;
use crate::host::progress::{human_bytes, Progress};

const MIB: u64 = 1 << 20;
/// The head written last (MBR, GPT header and entries, ISO system area).
const HEAD: u64 = MIB;
const CHUNK: usize = 4 << 20;

/// `_IOR(0x12, 114, size_t)`.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
/// `_IO(0x12, 97)`.
const BLKFLSBUF: libc::c_ulong = 0x1261;

#[derive(Debug, Clone)]
pub struct FlashOptions {
    /// A `.raw` or `.iso` in a signed output folder.
    pub image: PathBuf,
    /// A whole block device (`/dev/sdb`), or a file with `to_file`.
    pub device: PathBuf,
    pub pubkey: PathBuf,
    /// Do not ask for confirmation.
    pub yes: bool,
    /// Allow (and create if missing) a regular file as the target.
    pub to_file: bool,
    /// Simulated target capacity (tests; the CLI leaves it `None`): a target
    /// smaller than the image is refused as a too-small device would be.
    pub max_size: Option<u64>,
}

/// Why flashing stopped. `Display` is the one-line message.
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    /// The image did not verify, or the target is unsafe / too small, or
    /// the user said no: nothing was written. Exit 1.
    #[error("{0}")]
    Refused(String),
    /// Unusable request (missing image, regular file without `--to-file`,
    /// no tty to confirm on...): nothing was written. Exit 2.
    #[error("{0}")]
    BadInput(String),
    /// Writing, flushing or the read-back check failed. Exit 1.
    #[error("{0}")]
    Failed(String),
    /// SIGINT during the write: the device was left unbootable on purpose. Exit 130.
    #[error("{0}")]
    Interrupted(String),
}

impl FlashError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            FlashError::Refused(_) | FlashError::Failed(_) => 1,
            FlashError::BadInput(_) => 2,
            FlashError::Interrupted(_) => 130,
        }
    }
}

/// What was written.
#[derive(Debug, Clone)]
pub struct FlashReport {
    pub image: PathBuf,
    pub device: PathBuf,
    /// How the target was described to the user (`/dev/sdb: SanDisk Cruzer, 14.9 GiB`).
    pub target: String,
    pub bytes: u64,
    /// The signed digest, equal to the digest read back from the target.
    pub sha256: Sha256,
    pub key_id: String,
    pub seconds: f64,
}

impl std::fmt::Display for FlashReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "flash: wrote {} ({}) to {}",
            self.image.display(),
            human_bytes(self.bytes),
            self.target
        )?;
        writeln!(f, "  verified with key {} before writing", self.key_id)?;
        write!(
            f,
            "  read back: sha256 {} matches the signed digest ({:.1}s)",
            self.sha256, self.seconds
        )
    }
}

fn refused(msg: impl std::fmt::Display) -> FlashError {
    FlashError::Refused(format!("flash: refusing: {msg}"))
}

fn bad(msg: impl std::fmt::Display) -> FlashError {
    FlashError::BadInput(format!("flash: {msg}"))
}

fn failed(msg: impl std::fmt::Display) -> FlashError {
    FlashError::Failed(format!("flash: {msg}"))
}

// ---------------------------------------------------------------------------
// SIGINT
// ---------------------------------------------------------------------------

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the SIGINT flag handler for its lifetime and restores the
/// previous disposition on drop.
struct SigintGuard(libc::sighandler_t);

impl SigintGuard {
    fn install() -> SigintGuard {
        INTERRUPTED.store(false, Ordering::SeqCst);
        let handler: extern "C" fn(libc::c_int) = on_sigint;
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        let old = unsafe { libc::signal(libc::SIGINT, handler as libc::sighandler_t) };
        SigintGuard(old)
    }
}

impl Drop for SigintGuard {
    fn drop(&mut self) {
        if self.0 != libc::SIG_ERR {
            // SAFETY: restores the disposition signal() returned.
            unsafe { libc::signal(libc::SIGINT, self.0) };
        }
    }
}

// ---------------------------------------------------------------------------
// Target inspection
// ---------------------------------------------------------------------------

fn dev_major(d: u64) -> u64 {
    ((d >> 32) & 0xffff_f000) | ((d >> 8) & 0xfff)
}

fn dev_minor(d: u64) -> u64 {
    ((d >> 12) & 0xffff_ff00) | (d & 0xff)
}

fn majmin(d: u64) -> String {
    format!("{}:{}", dev_major(d), dev_minor(d))
}

/// `(maj:min, mount point, mount source)` for each line of a mountinfo file.
pub fn parse_mountinfo(text: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 5 {
            continue;
        }
        let source = line
            .split(" - ")
            .nth(1)
            .and_then(|r| r.split(' ').nth(1))
            .unwrap_or("")
            .to_string();
        out.push((
            f[2].to_string(),
            unescape_mount(f[4]),
            unescape_mount(&source),
        ));
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// A block device as sysfs sees it.
#[derive(Debug, Clone)]
struct BlockDev {
    /// Kernel name (`sdb`).
    name: String,
    /// `maj:min` of the disk and each of its partitions, with names.
    members: Vec<(String, String)>,
    size: u64,
    desc: String,
}

/// Looks `maj:min` up under `sys` (normally `/sys`).
fn block_dev(sys: &Path, mm: &str, path: &Path) -> Result<BlockDev, FlashError> {
    let link = sys.join("dev/block").join(mm);
    let real = std::fs::canonicalize(&link).map_err(|e| {
        bad(format!(
            "{}: block device {mm} not found in sysfs ({}): {e}",
            path.display(),
            link.display()
        ))
    })?;
    let name = real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if real.join("partition").exists() {
        let disk = real
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "the whole disk".into());
        return Err(refused(format!(
            "{} is partition {name}; write the image to the whole device /dev/{disk}",
            path.display()
        )));
    }
    let mut members = vec![(mm.to_string(), name.clone())];
    if let Ok(rd) = std::fs::read_dir(&real) {
        let mut parts: Vec<(String, String)> = rd
            .flatten()
            .filter(|e| e.path().join("partition").exists())
            .filter_map(|e| {
                let dev = read_trim(&e.path().join("dev"))?;
                Some((dev, e.file_name().to_string_lossy().into_owned()))
            })
            .collect();
        parts.sort();
        members.extend(parts);
    }
    let sectors: u64 = read_trim(&real.join("size"))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let vendor = read_trim(&real.join("device/vendor")).unwrap_or_default();
    let model = read_trim(&real.join("device/model")).unwrap_or_default();
    let removable = read_trim(&real.join("removable")).as_deref() == Some("1");
    let what = format!("{vendor} {model}").trim().to_string();
    let what = if what.is_empty() {
        "unknown model".to_string()
    } else {
        what
    };
    let desc = format!(
        "{} ({what}, {}{})",
        path.display(),
        human_bytes(sectors * 512),
        if removable { ", removable" } else { "" }
    );
    Ok(BlockDev {
        name,
        members,
        size: sectors * 512,
        desc,
    })
}

/// Refuses a disk that is in use: mounted, held (dm/md/LVM), swap, or the
/// running system's root. `root_dev` is `maj:min` of `/`.
fn check_in_use(
    sys: &Path,
    dev: &BlockDev,
    mountinfo: &str,
    swaps: &str,
    root_dev: &str,
    path: &Path,
) -> Result<(), FlashError> {
    let mounts = parse_mountinfo(mountinfo);
    for (mm, name) in &dev.members {
        let node = format!("/dev/{name}");
        if let Some((_, at, _)) = mounts.iter().find(|(m, _, src)| m == mm || *src == node) {
            return Err(refused(format!(
                "{} is in use: /dev/{name} is mounted at {at}; unmount it first",
                path.display()
            )));
        }
        if mm == root_dev {
            return Err(refused(format!(
                "{} holds the running system (/ is on /dev/{name})",
                path.display()
            )));
        }
        let holders = sys.join("class/block").join(name).join("holders");
        if let Ok(rd) = std::fs::read_dir(&holders) {
            let mut h: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            h.sort();
            if let Some(first) = h.first() {
                return Err(refused(format!(
                    "{} is in use: /dev/{name} is held by {first} (device-mapper, RAID or LVM)",
                    path.display()
                )));
            }
        }
        if swaps
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().next() == Some(node.as_str()))
        {
            return Err(refused(format!(
                "{} is in use: /dev/{name} is active swap",
                path.display()
            )));
        }
    }
    Ok(())
}

enum Target {
    File { exists_nonempty: bool },
    Block(BlockDev),
}

fn inspect_target(opts: &FlashOptions) -> Result<Target, FlashError> {
    let path = &opts.device;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if opts.to_file {
                return Ok(Target::File {
                    exists_nonempty: false,
                });
            }
            return Err(bad(format!(
                "{} does not exist (pass --to-file to write an image file)",
                path.display()
            )));
        }
        Err(e) => return Err(bad(format!("{}: {e}", path.display()))),
    };
    let ft = meta.file_type();
    if ft.is_file() {
        if !opts.to_file {
            return Err(bad(format!(
                "{} is a regular file, not a block device; pass --to-file to write the image into a file",
                path.display()
            )));
        }
        return Ok(Target::File {
            exists_nonempty: meta.len() > 0,
        });
    }
    if ft.is_block_device() {
        let sys = Path::new("/sys");
        let dev = block_dev(sys, &majmin(meta.rdev()), path)?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
        let root_dev = std::fs::metadata("/")
            .map(|m| majmin(m.dev()))
            .unwrap_or_default();
        check_in_use(sys, &dev, &mountinfo, &swaps, &root_dev, path)?;
        return Ok(Target::Block(dev));
    }
    Err(bad(format!(
        "{} is neither a block device nor a regular file",
        path.display()
    )))
}

/// Asks `question [y/N]` on the controlling terminal.
fn confirm(question: &str) -> Result<bool, FlashError> {
    let mut tty = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|e| {
            bad(format!(
                "cannot ask for confirmation (no terminal: {e}); pass --yes"
            ))
        })?;
    write!(tty, "{question} [y/N] ")
        .and_then(|()| tty.flush())
        .map_err(|e| bad(format!("cannot write to the terminal: {e}")))?;
    let mut line = String::new();
    std::io::BufReader::new(tty)
        .read_line(&mut line)
        .map_err(|e| bad(format!("cannot read the answer: {e}")))?;
    Ok(matches!(
        line.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

// ---------------------------------------------------------------------------
// I/O helpers
// ---------------------------------------------------------------------------

fn read_full_at(f: &File, buf: &mut [u8], mut off: u64) -> std::io::Result<usize> {
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

fn block_size_of(f: &File) -> std::io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(size)
}

/// fsync, then (block devices) BLKFLSBUF, then drop cached pages so the
/// read-back reaches the medium.
fn flush(f: &File, block: bool) -> std::io::Result<()> {
    f.sync_all()?;
    if block {
        // SAFETY: BLKFLSBUF takes no argument.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), BLKFLSBUF as _, 0) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    // SAFETY: advisory only.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    Ok(())
}

/// The signed digest of `image` from its folder's SHA256 (already verified).
fn signed_digest(image: &Path) -> Result<Sha256, FlashError> {
    let name = image
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| bad(format!("{}: not a file name", image.display())))?;
    let folder = match image.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let sums = std::fs::read(folder.join(crate::release::verify::SUMS)).map_err(|e| {
        refused(format!(
            "cannot re-read {}: {e}",
            crate::release::verify::SUMS
        ))
    })?;
    let map = crate::release::verify::parse_sums(&sums).map_err(refused)?;
    map.get(name).copied().ok_or_else(|| {
        refused(format!(
            "{name} is not listed in {}",
            crate::release::verify::SUMS
        ))
    })
}

// ---------------------------------------------------------------------------
// flash
// ---------------------------------------------------------------------------

/// Verifies `opts.image`, checks the target, writes it boot-sector-last,
/// flushes and reads it back. Nothing is written unless verification and
/// every target check pass.
pub fn flash(opts: &FlashOptions) -> Result<FlashReport, FlashError> {
    let started = Instant::now();
    let image = &opts.image;
    match std::fs::metadata(image) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(bad(format!(
                "{} is not a file; give the .raw or .iso medium to write",
                image.display()
            )))
        }
        Err(e) => return Err(bad(format!("{}: {e}", image.display()))),
    }

    // (a) verify
    let report =
        crate::release::verify::verify(image, &opts.pubkey, false).map_err(|e| match e {
            crate::release::verify::VerifyError::BadInput(m) => {
                FlashError::BadInput(format!("flash: refusing: {m}"))
            }
            crate::release::verify::VerifyError::Failed(m) => refused(m),
        })?;
    let want = signed_digest(image)?;
    let size = std::fs::metadata(image)
        .map_err(|e| bad(format!("{}: {e}", image.display())))?
        .len();

    // (b) target
    let target = inspect_target(opts)?;
    if let Some(max) = opts.max_size {
        if size > max {
            return Err(refused(format!(
                "{} is too small: it holds {} ({max} bytes), the image needs {} ({size} bytes)",
                opts.device.display(),
                human_bytes(max),
                human_bytes(size)
            )));
        }
    }
    let (desc, is_block) = match &target {
        Target::File { .. } => (format!("file {}", opts.device.display()), false),
        Target::Block(d) => (d.desc.clone(), true),
    };
    if let Target::Block(d) = &target {
        if d.size < size {
            return Err(refused(format!(
                "{} is too small: {} for an image of {}",
                d.desc,
                human_bytes(d.size),
                human_bytes(size)
            )));
        }
    }
    let ask = match &target {
        Target::Block(_) => true,
        Target::File { exists_nonempty } => *exists_nonempty,
    };
    if ask && !opts.yes {
        let what = match &target {
            Target::Block(d) => format!("Everything on {} (/dev/{}) will be lost.", d.desc, d.name),
            Target::File { .. } => format!("{} will be overwritten.", opts.device.display()),
        };
        let q = format!(
            "flash: write {} ({}) to {desc}?\n  {what}\n  Continue?",
            image.display(),
            human_bytes(size)
        );
        if !confirm(&q)? {
            return Err(FlashError::Refused(
                "flash: cancelled; nothing was written".into(),
            ));
        }
    }

    // Open both ends before writing anything.
    let src = File::open(image).map_err(|e| bad(format!("{}: {e}", image.display())))?;
    let dst = if is_block {
        // O_EXCL on a block device fails with EBUSY if the kernel has it
        // (or a partition) claimed: a last guard against mounted disks.
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
            .open(&opts.device)
    } else {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&opts.device)
    }
    .map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) {
            refused(format!(
                "{} is busy (in use by the kernel): {e}",
                opts.device.display()
            ))
        } else {
            bad(format!(
                "cannot open {} for writing: {e}",
                opts.device.display()
            ))
        }
    })?;
    if is_block {
        let cap = block_size_of(&dst)
            .map_err(|e| bad(format!("BLKGETSIZE64 on {}: {e}", opts.device.display())))?;
        if cap < size {
            return Err(refused(format!(
                "{desc} is too small: {} for an image of {}",
                human_bytes(cap),
                human_bytes(size)
            )));
        }
    }

    let dev = opts.device.display().to_string();
    let io = |what: &str, e: std::io::Error| failed(format!("{what} {dev}: {e}"));
    // (c) write: head zeroed first, body, head last.
    let head_len = size.min(HEAD);
    let zeros = vec![0u8; HEAD as usize];
    if is_block {
        dst.write_all_at(&zeros[..head_len as usize], 0)
            .map_err(|e| io("zeroing the first MiB of", e))?;
        // A stale backup GPT at the end of a larger device is cleared too.
        if let Ok(cap) = block_size_of(&dst) {
            if cap >= size + HEAD {
                dst.write_all_at(&zeros, cap - HEAD)
                    .map_err(|e| io("zeroing the last MiB of", e))?;
            }
        }
    } else {
        dst.set_len(size).map_err(|e| io("sizing", e))?;
    }
    flush(&dst, is_block).map_err(|e| io("flushing", e))?;

    let mut hasher = sha2::Sha256::new();
    let mut head = vec![0u8; head_len as usize];
    let n =
        read_full_at(&src, &mut head, 0).map_err(|e| bad(format!("{}: {e}", image.display())))?;
    if n as u64 != head_len {
        return Err(refused(format!(
            "{} shrank while flashing",
            image.display()
        )));
    }
    hasher.update(&head);

    let guard = SigintGuard::install();
    let mut progress = Progress::new(&format!("flash {}", opts.device.display()), size);
    progress.update(0);
    let mut buf = vec![0u8; CHUNK];
    let mut off = head_len;
    while off < size {
        if INTERRUPTED.load(Ordering::SeqCst) {
            progress.abandon();
            let _ = dst.sync_all();
            return Err(FlashError::Interrupted(format!(
                "flash: interrupted after {} of {}: {dev} was left unbootable on purpose \
                 (its first MiB is zero); run cairn flash again",
                human_bytes(off),
                human_bytes(size)
            )));
        }
        let want_len = ((size - off) as usize).min(CHUNK);
        let n = read_full_at(&src, &mut buf[..want_len], off)
            .map_err(|e| failed(format!("reading {}: {e}", image.display())))?;
        if n != want_len {
            progress.abandon();
            return Err(failed(format!(
                "{} shrank while flashing; {dev} was left unbootable",
                image.display()
            )));
        }
        hasher.update(&buf[..n]);
        // A fresh file is already zero; a device is not.
        if is_block || buf[..n].iter().any(|b| *b != 0) {
            dst.write_all_at(&buf[..n], off)
                .map_err(|e| io("writing", e))?;
        }
        off += n as u64;
        progress.update(off);
    }
    let got_src = Sha256(hasher.finalize().into());
    if got_src != want {
        progress.abandon();
        return Err(refused(format!(
            "{} changed after it was verified (sha256 {got_src}, signed {want}); \
             {dev} was left unbootable (first MiB zero)",
            image.display()
        )));
    }
    flush(&dst, is_block).map_err(|e| io("flushing", e))?;
    if INTERRUPTED.load(Ordering::SeqCst) {
        progress.abandon();
        return Err(FlashError::Interrupted(format!(
            "flash: interrupted before the boot sector was written: {dev} was left unbootable on purpose; run cairn flash again"
        )));
    }
    dst.write_all_at(&head, 0)
        .map_err(|e| io("writing the first MiB of", e))?;
    // (d) flush
    flush(&dst, is_block).map_err(|e| io("flushing", e))?;
    progress.finish();
    drop(guard);

    // (e) read back
    let mut h = sha2::Sha256::new();
    let mut off = 0u64;
    while off < size {
        let len = ((size - off) as usize).min(CHUNK);
        let n = read_full_at(&dst, &mut buf[..len], off).map_err(|e| io("reading back", e))?;
        if n != len {
            return Err(failed(format!(
                "read-back of {dev} ended at byte {} of {size}",
                off + n as u64
            )));
        }
        h.update(&buf[..n]);
        off += n as u64;
    }
    let got = Sha256(h.finalize().into());
    if got != want {
        return Err(failed(format!(
            "read-back of {dev} does not match: expected sha256 {want}, got {got}; the medium may be faulty"
        )));
    }
    Ok(FlashReport {
        image: image.clone(),
        device: opts.device.clone(),
        target: desc,
        bytes: size,
        sha256: got,
        key_id: report.key_id,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flash_majmin_and_mountinfo() {
        // makedev(8, 17) and a large minor
        assert_eq!(majmin(0x811), "8:17");
        let d = (259u64 << 8) | (300 & 0xff) | ((300 & !0xff) << 12);
        assert_eq!(majmin(d), "259:300");
        let mi = "36 35 8:17 / /media/usb\\040stick rw,relatime shared:1 - vfat /dev/sdb1 rw\n\
                  22 1 0:21 / / rw - overlay overlay rw\n";
        let v = parse_mountinfo(mi);
        assert_eq!(
            v[0],
            ("8:17".into(), "/media/usb stick".into(), "/dev/sdb1".into())
        );
        assert_eq!(v[1].0, "0:21");
    }

    fn fake_sys() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path().to_path_buf();
        let disk = sys.join("devices/pci/usb/block/sdb");
        std::fs::create_dir_all(disk.join("device")).unwrap();
        std::fs::create_dir_all(disk.join("sdb1")).unwrap();
        std::fs::create_dir_all(disk.join("holders")).unwrap();
        std::fs::create_dir_all(disk.join("sdb1/holders")).unwrap();
        std::fs::write(disk.join("sdb1/partition"), "1\n").unwrap();
        std::fs::write(disk.join("sdb1/dev"), "8:17\n").unwrap();
        std::fs::write(disk.join("size"), "31116288\n").unwrap();
        std::fs::write(disk.join("removable"), "1\n").unwrap();
        std::fs::write(disk.join("device/vendor"), "SanDisk \n").unwrap();
        std::fs::write(disk.join("device/model"), "Cruzer Blade\n").unwrap();
        std::fs::create_dir_all(sys.join("dev/block")).unwrap();
        std::os::unix::fs::symlink(&disk, sys.join("dev/block/8:16")).unwrap();
        std::os::unix::fs::symlink(disk.join("sdb1"), sys.join("dev/block/8:17")).unwrap();
        std::fs::create_dir_all(sys.join("class/block")).unwrap();
        std::os::unix::fs::symlink(&disk, sys.join("class/block/sdb")).unwrap();
        std::os::unix::fs::symlink(disk.join("sdb1"), sys.join("class/block/sdb1")).unwrap();
        (t, sys)
    }

    #[test]
    fn flash_block_checks_on_a_fake_sysfs() {
        let (_t, sys) = fake_sys();
        let p = Path::new("/dev/sdb");
        let d = block_dev(&sys, "8:16", p).unwrap();
        assert_eq!(d.name, "sdb");
        assert_eq!(d.size, 31116288 * 512);
        assert_eq!(
            d.desc,
            "/dev/sdb (SanDisk Cruzer Blade, 14.8 GiB, removable)"
        );
        assert_eq!(d.members.len(), 2);

        let e = block_dev(&sys, "8:17", Path::new("/dev/sdb1")).unwrap_err();
        assert!(e.to_string().contains("whole device /dev/sdb"), "{e}");

        let ok = check_in_use(
            &sys,
            &d,
            "22 1 0:21 / / rw - overlay overlay rw\n",
            "",
            "0:21",
            p,
        );
        assert!(ok.is_ok());
        let mi = "36 35 8:17 / /media/usb rw - vfat /dev/sdb1 rw\n";
        let e = check_in_use(&sys, &d, mi, "", "0:21", p).unwrap_err();
        assert!(e.to_string().contains("mounted at /media/usb"), "{e}");
        let e = check_in_use(&sys, &d, "", "", "8:17", p).unwrap_err();
        assert!(e.to_string().contains("running system"), "{e}");
        let swaps = "Filename Type Size Used Priority\n/dev/sdb1 partition 1 0 -2\n";
        let e = check_in_use(&sys, &d, "", swaps, "0:1", p).unwrap_err();
        assert!(e.to_string().contains("swap"), "{e}");
        std::fs::create_dir_all(sys.join("class/block/sdb1/holders/dm-0")).unwrap();
        let e = check_in_use(&sys, &d, "", "", "0:1", p).unwrap_err();
        assert!(e.to_string().contains("held by dm-0"), "{e}");
        assert!(matches!(e, FlashError::Refused(_)));
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn flash_refuses_odd_targets() {
        let opts = FlashOptions {
            image: PathBuf::from("x.raw"),
            device: PathBuf::from("/dev/null"),
            pubkey: PathBuf::from("k.pub"),
            yes: true,
            to_file: false,
            max_size: None,
        };
        let e = match inspect_target(&opts) {
            Err(e) => e,
            Ok(_) => panic!("/dev/null accepted"),
        };
        assert_eq!(e.exit_code(), 2, "{e}");
        let t = tempfile::tempdir().unwrap();
        let mut o = opts.clone();
        o.device = t.path().join("missing");
        assert!(matches!(inspect_target(&o), Err(FlashError::BadInput(_))));
        o.to_file = true;
        assert!(matches!(
            inspect_target(&o),
            Ok(Target::File {
                exists_nonempty: false
            })
        ));
    }
}
