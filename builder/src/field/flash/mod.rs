//! `cairn flash IMAGE DEVICE`: a verified write to a USB stick or disk.
//!
//! Order, and why:
//! 1. **verify first** (`cairn::release::verify::verify` on the medium, signature and
//!    digests): a failure refuses with nothing written;
//! 2. **target checks**: a regular file needs `--to-file`; a block device must
//!    be a whole disk, not mounted (itself or a partition), not held by
//!    dm/md/LVM, not backing `/` or swap, and at least as large as the image;
//!    a fixed disk (not removable, not USB/MMC) needs `--allow-fixed`, one
//!    over [`LARGE`] `--allow-large`;
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
//!
//! With the release's signed version 2 data map (`release::datamap`),
//! step 1 checks the signature and the map only, step 3 writes only its
//! ranges, each checked against its signed digest as it is read, and
//! zeroes the gaps (BLKZEROOUT, or zeros written with `--write-zeros`);
//! step 5 reads back every range against the same digest. `--full` writes
//! every byte after a whole verify (docs/flashing.md).
//!
//! `target` holds step 2, `write` steps 3 to 5. The image, SHA256 and the
//! key are opened through `host::untrusted` (regular files only, never a
//! symlink in the release folder, never blocking); so is the target.

mod many;
mod target;
mod write;

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::host::digest::Sha256;
use crate::host::progress::{human_bytes, Progress};
use crate::host::untrusted::{self, Links};

pub use many::{flash_many, ManyOptions, ManyReport, Receipt, StickOutcome};
use target::{confirm, inspect_target, open_target, Target};
pub use target::{list_targets, parse_mountinfo, Candidate};

const MIB: u64 = 1 << 20;
/// The head written last (MBR, GPT header and entries, ISO system area).
pub(super) const HEAD: u64 = MIB;
pub(super) const CHUNK: usize = 4 << 20;

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
    /// A signed site file to put on the ESP after the image (the raw's
    /// `cairn-esp`, the ISO's EFI partition).
    pub site: Option<PathBuf>,
    /// Every byte, or the data map's ranges (see [`WriteMode`]).
    pub write: WriteMode,
    /// Accept a block device that is neither removable nor on USB/MMC.
    pub allow_fixed: bool,
    /// Accept a block device larger than [`LARGE`].
    pub allow_large: bool,
    /// Overwrite a target whose audit trail holds records not yet
    /// collected (`cairn audit collect`), losing them.
    pub discard_audit: bool,
}

/// Larger targets need `allow_large`: sticks are smaller, system disks
/// are not (Etcher warns from the same size).
pub const LARGE: u64 = 64 << 30;

/// How the image reaches the stick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteMode {
    /// With a signed data map (`NAME.raw.map`): only its ranges are
    /// written and read back, the rest zeroed by the device (BLKZEROOUT;
    /// a new file: its holes). Without one (an ISO, an older release):
    /// every byte.
    #[default]
    Auto,
    /// Every byte of the image, written and read back (`--full`).
    Full,
    /// As `Auto`, but cairn writes the gaps' zeros itself (`--write-zeros`).
    WriteZeros,
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
    /// SIGINT, SIGTERM or SIGHUP during the write: the device was left
    /// unbootable on purpose. Exit 128 + the signal (130 for SIGINT).
    #[error("{0}")]
    Interrupted(String),
}

impl FlashError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            FlashError::Refused(_) | FlashError::Failed(_) => 1,
            FlashError::BadInput(_) => 2,
            FlashError::Interrupted(_) => crate::host::interrupt::exit_code(),
        }
    }
}

/// What `cairn flash` did: one stick without receipts gets the detailed
/// single-stick report; several sticks, or a receipts log, the parallel
/// writer with one line per stick.
#[derive(Debug)]
pub enum Flashed {
    One(FlashReport),
    Many(ManyReport),
}

/// `cairn flash`: writes `opts.image` to every device, as [`flash`] for a
/// single device without receipts, else as [`flash_many`].
pub fn flash_devices(mut opts: ManyOptions) -> Result<Flashed, FlashError> {
    if opts.devices.len() == 1 && opts.receipts.is_none() {
        let one = FlashOptions {
            image: opts.image,
            device: opts.devices.remove(0),
            pubkey: opts.pubkey,
            yes: opts.yes,
            to_file: opts.to_file,
            max_size: opts.max_size,
            site: opts.site,
            write: opts.write,
            allow_fixed: opts.allow_fixed,
            allow_large: opts.allow_large,
            discard_audit: opts.discard_audit,
        };
        return flash(&one).map(Flashed::One);
    }
    flash_many(&opts).map(Flashed::Many)
}

/// What was written.
#[derive(Debug, Clone)]
pub struct FlashReport {
    pub image: PathBuf,
    pub device: PathBuf,
    /// How the target was described to the user (`/dev/sdb: SanDisk Cruzer, 14.9 GiB`).
    pub target: String,
    pub bytes: u64,
    /// `full`, `sparse-zeroout`, `sparse-zeros-written` or `sparse-new-file`.
    pub mode: &'static str,
    /// The bytes written and read back (all of them when `full`).
    pub written: u64,
    /// The signed digest, equal to the digest read back from the target.
    pub sha256: Sha256,
    pub key_id: String,
    pub seconds: f64,
    /// `NAME (key ID)` of the site file written, if any.
    pub site: Option<String>,
    /// Its `role R, node N` (`SignedSite::role_text`).
    pub site_role: Option<String>,
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
        if self.mode == "full" {
            write!(
                f,
                "  read back: sha256 {} matches the signed digest ({:.1}s)",
                self.sha256, self.seconds
            )?;
        } else {
            writeln!(
                f,
                "  {}: {} of data written, the other {} zeroed ({})",
                self.mode,
                human_bytes(self.written),
                human_bytes(self.bytes - self.written),
                gaps_how(self.mode)
            )?;
            write!(
                f,
                "  read back: every range matches its signed digest in the data map of sha256 {} ({:.1}s)",
                self.sha256, self.seconds
            )?;
        }
        if let Some(site) = &self.site {
            write!(f, "\n  site {site}: written to the ESP and read back")?;
            if let Some(r) = &self.site_role {
                write!(f, "; {r}")?;
            }
        }
        Ok(())
    }
}

/// How a sparse mode zeroes the gaps, for people.
pub fn gaps_how(mode: &str) -> &'static str {
    match mode {
        "sparse-zeroout" => "by the device, BLKZEROOUT",
        "sparse-zeros-written" => "zeros written by cairn",
        "sparse-new-file" => "holes of the new file",
        _ => "every byte written",
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

/// A file target may not be the image itself (opening it for the write
/// would truncate it) or any file in the release folder.
fn refuse_target_in_release(
    opts: &FlashOptions,
    src: &untrusted::UntrustedFile,
) -> Result<(), FlashError> {
    use std::os::unix::fs::MetadataExt;
    let dev = &opts.device;
    if let (Ok(t), Ok(s)) = (std::fs::metadata(dev), src.file.metadata()) {
        if (t.dev(), t.ino()) == (s.dev(), s.ino()) {
            return Err(bad(format!(
                "{} is the image itself; give another target",
                dev.display()
            )));
        }
    }
    let parent = |p: &Path| match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let folder = std::fs::canonicalize(parent(&opts.image)).ok();
    if folder.is_some() && std::fs::canonicalize(parent(dev)).ok() == folder {
        return Err(bad(format!(
            "{} is inside the release folder; write the image somewhere else",
            dev.display()
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// flash
// ---------------------------------------------------------------------------

/// A release verified once, and the open handle every write reads from.
struct Verified {
    src: untrusted::UntrustedFile,
    /// The signed digest of the image.
    want: Sha256,
    key_id: String,
    /// The digest of the verified SHA256 file.
    sums_sha256: Sha256,
    size: u64,
    /// The signed data map of the image, if the release has one.
    map: Option<crate::release::datamap::DataMap>,
    /// `src` is a `.raw.zst`: `want` and `size` are the raw's, from the map.
    compressed: bool,
}

/// Opens and verifies `image` with `pubkey`; nothing is written. A `.raw`
/// with a signed version 2 data map, written sparse (`full` false), is
/// checked by signature and map only: each range's digest is checked as
/// it is read for the write ([`write`]), so the image is read once.
/// Anything else is verified whole first (`release::verify`).
fn verify_release(image: &Path, pubkey: &Path, full: bool) -> Result<Verified, FlashError> {
    // The handle the write reads from: opened first, without following a
    // symlink or blocking, so it is the file verify looks at.
    let src = untrusted::open(image, Links::Refuse).map_err(|e| {
        bad(format!(
            "refusing: {e}; give the {} medium to write",
            crate::media::extensions(|f| f.esp != crate::media::Esp::OfRaw)
        ))
    })?;
    let src = if full {
        src
    } else {
        match verify_by_map(image, pubkey, src)? {
            Ok(v) => return Ok(v),
            Err(src) => src,
        }
    };

    // (a) verify
    let report = crate::release::verify::verify(image, pubkey, false).map_err(|e| match e {
        crate::release::verify::VerifyError::BadInput(m) => {
            FlashError::BadInput(format!("flash: refusing: {m}"))
        }
        crate::release::verify::VerifyError::Failed(m) => refused(m),
    })?;
    // The digest from the list verify authenticated (never re-read).
    let name = image
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let want = *report.signed.get(name).ok_or_else(|| {
        refused(format!(
            "{name} is not listed in {}",
            crate::release::verify::SUMS
        ))
    })?;
    let (raw, compressed) = match crate::release::compressed::raw_name(name) {
        Some(raw) => (raw, true),
        None => (name, false),
    };
    let expect = (!compressed).then_some((src.len, want));
    let map = signed_map(image, raw, expect, &report.signed)?;
    // A .raw.zst is written as the raw it decompresses to: the map (signed)
    // gives that raw's size and digest; verify checked the stream matches.
    let (size, want) = match (&map, compressed) {
        (_, false) => (src.len, want),
        (Some(m), true) => (m.size, m.sha256),
        (None, true) => {
            return Err(refused(format!(
                "{name}: no signed {raw}.map gives its uncompressed digest"
            )))
        }
    };
    Ok(Verified {
        src,
        want,
        key_id: report.key_id,
        sums_sha256: report.sums_sha256,
        size,
        map,
        compressed,
    })
}

/// The signature-and-map check of [`verify_release`] for `image` (open as
/// `src`): `None` when it is not a `.raw` whose signed list has a version
/// 2 map (then the whole release is verified).
fn verify_by_map(
    image: &Path,
    pubkey: &Path,
    src: untrusted::UntrustedFile,
) -> Result<Result<Verified, untrusted::UntrustedFile>, FlashError> {
    let name = image
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let folder = match image.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !crate::media::RAW.is_file(name) || !folder.join(format!("{name}.map")).exists() {
        return Ok(Err(src));
    }
    let (key_id, signed, sums_sha256) = crate::release::verify::signed_list(folder, pubkey)
        .map_err(|e| match e {
            crate::release::verify::VerifyError::BadInput(m) => {
                FlashError::BadInput(format!("flash: refusing: {m}"))
            }
            crate::release::verify::VerifyError::Failed(m) => refused(m),
        })?;
    let want = *signed.get(name).ok_or_else(|| {
        refused(format!(
            "{name} is not listed in {}",
            crate::release::verify::SUMS
        ))
    })?;
    let map = signed_map(image, name, Some((src.len, want)), &signed)?;
    match map {
        Some(m) if !m.range_sha256.is_empty() => Ok(Ok(Verified {
            size: src.len,
            src,
            want,
            key_id,
            sums_sha256,
            map: Some(m),
            compressed: false,
        })),
        _ => Ok(Err(src)),
    }
}

/// The data map of the raw `name` (`NAME.map` beside `image`) if SHA256
/// lists one: read through `host::untrusted`, checked against its signed
/// digest, parsed, and checked to describe the raw (`expect`: its size and
/// signed digest; for a `.raw.zst`, the raw's signed digest if listed).
/// A listed map that is missing, altered or malformed refuses the flash.
fn signed_map(
    image: &Path,
    name: &str,
    expect: Option<(u64, Sha256)>,
    signed: &std::collections::BTreeMap<String, Sha256>,
) -> Result<Option<crate::release::datamap::DataMap>, FlashError> {
    use crate::release::datamap::{DataMap, MAX_MAP_FILE};
    use std::io::Read as _;
    let map_name = format!("{name}.map");
    let path = image.with_file_name(&map_name);
    let Some(map_digest) = signed.get(&map_name) else {
        return Ok(None);
    };
    let f =
        untrusted::open(&path, Links::Refuse).map_err(|e| refused(format!("{map_name}: {e}")))?;
    let mut bytes = Vec::new();
    (&f.file)
        .take(MAX_MAP_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| refused(format!("{map_name}: cannot read: {e}")))?;
    let got = Sha256::of_bytes(&bytes);
    if got != *map_digest {
        return Err(refused(format!(
            "digest: {map_name}: expected {map_digest} got {got}"
        )));
    }
    let (size, want) = match expect {
        Some(e) => e,
        None => {
            let m: DataMap = serde_json::from_slice(&bytes)
                .map_err(|e| refused(format!("{map_name}: does not parse: {e}")))?;
            if let Some(d) = signed.get(name).filter(|d| **d != m.sha256) {
                return Err(refused(format!(
                    "{map_name}: gives sha256 {} for {name}, SHA256 {d}",
                    m.sha256
                )));
            }
            (m.size, m.sha256)
        }
    };
    DataMap::parse(&bytes, name, size, want)
        .map(Some)
        .map_err(|e| refused(format!("{map_name}: {e}")))
}

/// A target that passed every check.
struct Checked {
    target: Target,
    /// How it is named to the user.
    desc: String,
    is_block: bool,
}

/// A stick that comes back holds its audit trail (docs/audit.md): the
/// only copy. Flashing over records nobody saved is refused, exit 2, until
/// `cairn audit collect` saved them or `--discard-audit` says to lose them.
fn refuse_uncollected_audit(device: &Path) -> Result<(), FlashError> {
    let d = device.display();
    let status = crate::release::audit_collect::status(device).map_err(|e| {
        bad(format!(
            "refusing: {d}: cannot read its audit trail ({e:#}); collect it with `cairn audit collect {d} --out DIR`, or pass --discard-audit to overwrite it unread"
        ))
    })?;
    let Some(s) = status.filter(|s| s.uncollected() > 0) else {
        return Ok(());
    };
    let why = if s.mark_mismatch {
        " (its collected mark does not match the trail: altered, or written over)"
    } else {
        ""
    };
    Err(bad(format!(
        "refusing: {d} holds {} audit record(s) not yet collected{why}; save them with `cairn audit collect {d} --out DIR` first, or pass --discard-audit to lose them",
        s.uncollected()
    )))
}

/// (b) the target checks for `opts.device`; nothing is written.
fn check_target(opts: &FlashOptions, v: &Verified) -> Result<Checked, FlashError> {
    let size = v.size;
    let target = inspect_target(opts)?;
    if let Target::File { .. } = target {
        refuse_target_in_release(opts, &v.src)?;
    }
    if !matches!(
        target,
        Target::File {
            exists_nonempty: false
        }
    ) && !opts.discard_audit
    {
        refuse_uncollected_audit(&opts.device)?;
    }
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
        if !d.removable() && !opts.allow_fixed {
            return Err(refused(format!(
                "{} is a fixed disk (not removable, bus {}); pass --allow-fixed if you mean to overwrite it",
                d.desc, d.bus
            )));
        }
        if d.size > LARGE && !opts.allow_large {
            return Err(refused(format!(
                "{} is larger than {} (sticks rarely are; system disks are); pass --allow-large if you mean it",
                d.desc,
                human_bytes(LARGE)
            )));
        }
        if d.size < size {
            return Err(refused(format!(
                "{} is too small: {} for an image of {}",
                d.desc,
                human_bytes(d.size),
                human_bytes(size)
            )));
        }
    }
    Ok(Checked {
        target,
        desc,
        is_block,
    })
}

/// What the confirmation says will be lost on `c`, or `None` when there is
/// nothing to lose (a new or empty file).
fn at_risk(device: &Path, c: &Checked) -> Option<String> {
    match &c.target {
        Target::Block(d) => Some(format!(
            "Everything on {} (/dev/{}) will be lost.",
            d.desc, d.name
        )),
        Target::File {
            exists_nonempty: true,
        } => Some(format!("{} will be overwritten.", device.display())),
        Target::File { .. } => None,
    }
}

/// What will be written to `c`: the data map's ranges when the release
/// has one and `--full` was not asked for.
fn plan_for<'a>(opts: &FlashOptions, v: &'a Verified, c: &Checked) -> write::Plan<'a> {
    use write::{Gaps, Plan};
    // A version 1 map (no range digests) is written whole: the sparse
    // write checks each range against its signed digest.
    let map = v.map.as_ref().filter(|m| !m.range_sha256.is_empty());
    match (opts.write, map) {
        (WriteMode::Full, _) | (_, None) => Plan::Full,
        (WriteMode::WriteZeros, Some(map)) => Plan::Sparse {
            map,
            gaps: Gaps::Write,
        },
        (WriteMode::Auto, Some(map)) => Plan::Sparse {
            map,
            gaps: if c.is_block {
                Gaps::ZeroOut
            } else {
                Gaps::NewFile
            },
        },
    }
}

/// The receipt's word for how `opts.device` is written.
fn mode_for(opts: &FlashOptions, v: &Verified, c: &Checked) -> &'static str {
    plan_for(opts, v, c).mode()
}

/// The bytes a plan writes and reads back.
fn written_by(opts: &FlashOptions, v: &Verified, c: &Checked) -> u64 {
    match plan_for(opts, v, c) {
        write::Plan::Full => v.size,
        write::Plan::Sparse { map, .. } => {
            // The head is always written whole.
            let head = v.size.min(HEAD);
            head + map
                .ranges
                .iter()
                .map(|(s, e)| e.saturating_sub(*s.max(&head)))
                .sum::<u64>()
        }
    }
}

/// Opens the checked target and writes, flushes and reads it back.
fn write_checked(
    opts: &FlashOptions,
    v: &Verified,
    c: &Checked,
    progress: &mut Progress,
) -> Result<Sha256, FlashError> {
    // Open the target before writing anything.
    let dst = open_target(opts, &c.target, v.size)?;
    let plan = plan_for(opts, v, c);
    let mut src = if v.compressed {
        let r = crate::release::compressed::decoder(&v.src.file)
            .map_err(|e| failed(format!("{}: not a zstd stream: {e}", opts.image.display())))?;
        write::Source::Zst { r, pos: 0 }
    } else {
        write::Source::File(&v.src.file)
    };
    write::write_and_read_back(
        &mut src,
        &opts.image,
        &dst,
        &opts.device,
        v.size,
        c.is_block,
        v.want,
        plan,
        progress,
    )
}

/// Verifies `opts.image`, checks the target, writes it boot-sector-last,
/// flushes and reads it back. Nothing is written unless verification and
/// every target check pass.
pub fn flash(opts: &FlashOptions) -> Result<FlashReport, FlashError> {
    let started = Instant::now();
    let image = &opts.image;
    let v = verify_release(image, &opts.pubkey, opts.write == WriteMode::Full)?;
    let site = opts
        .site
        .as_deref()
        .map(|s| site_for(image, s))
        .transpose()?;
    let c = check_target(opts, &v)?;
    if !opts.yes {
        if let Some(what) = at_risk(&opts.device, &c) {
            let q = format!(
                "flash: write {} ({}) to {}?\n  {what}\n  Continue?",
                image.display(),
                human_bytes(v.size),
                c.desc
            );
            if !confirm(&q)? {
                return Err(FlashError::Refused(
                    "flash: cancelled; nothing was written".into(),
                ));
            }
        }
    }
    let guard = crate::host::interrupt::hold();
    let mut progress = Progress::new(&format!("flash {}", opts.device.display()), v.size);
    let (mode, written) = (mode_for(opts, &v, &c), written_by(opts, &v, &c));
    let got = write_checked(opts, &v, &c, &mut progress)?;
    if let Some(s) = &site {
        write_site(&opts.device, c.is_block, s)?;
    }
    drop(guard);
    Ok(FlashReport {
        image: image.clone(),
        device: opts.device.clone(),
        target: c.desc,
        bytes: v.size,
        mode,
        written,
        sha256: got,
        key_id: v.key_id,
        seconds: started.elapsed().as_secs_f64(),
        site_role: site.as_ref().map(|s| s.role_text()),
        site: site.map(|s| format!("{} (key {})", s.name, s.key_id)),
    })
}

/// Puts the signed site file on the written `device`'s ESP, flushes, and
/// reads both files back (byte for byte).
/// (The read-back comes from the device: flushed, BLKFLSBUF, no cache.)
/// If that fails, or a signal arrives, the stick is made unbootable again
/// (first MiB zero): it must not boot with the recipe's defaults in place
/// of its site's settings.
fn write_site(
    device: &Path,
    is_block: bool,
    s: &crate::release::site::SignedSite,
) -> Result<(), FlashError> {
    let dev = device.display();
    let step = || -> anyhow::Result<()> {
        if write::interrupted() {
            anyhow::bail!("interrupted");
        }
        crate::release::site::put_on_medium(device, s)?;
        std::fs::OpenOptions::new()
            .write(true)
            .open(device)
            .and_then(|f| write::flush(&f, is_block))
            .map_err(|e| anyhow::anyhow!("flushing {dev}: {e}"))?;
        crate::release::site::read_back(device, s)?;
        if write::interrupted() {
            anyhow::bail!("interrupted");
        }
        Ok(())
    };
    let Err(e) = step() else { return Ok(()) };
    let left = match write::make_unbootable(device, is_block) {
        Ok(()) => format!("{dev} was left unbootable on purpose (its first MiB is zero); run cairn flash again"),
        Err(z) => format!("zeroing the first MiB of {dev} failed too ({z}): do not boot it; run cairn flash again"),
    };
    if write::interrupted() {
        Err(FlashError::Interrupted(format!(
            "flash: interrupted while the site file was written: {left}"
        )))
    } else {
        Err(failed(format!("site file: {e:#}; {left}")))
    }
}

/// The site file for `image`, checked against the (verified) release's
/// declaration and signature-checked, before anything is written.
fn site_for(image: &Path, site: &Path) -> Result<crate::release::site::SignedSite, FlashError> {
    let decl =
        crate::release::site::declaration_beside(image).map_err(|e| bad(format!("{e:#}")))?;
    crate::release::site::load_signed(site, &decl).map_err(|e| bad(format!("{e:#}")))
}
