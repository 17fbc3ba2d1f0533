//! Layer checking and unpacking. One engine reads a layer blob (gzip or
//! plain tar, told apart by magic bytes), hashes it as stored (the layer
//! digest) and uncompressed (the diff_id), checks every entry against the
//! policy and, when unpacking, hands checked entries to the writer. A
//! refused entry is never written.

use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{self, BufReader, Cursor, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::{bail, Context, Result};
use sha2::Digest;

use super::tarfmt::{join, split_name, Kind, Name, RawEntry, TarReader};
use super::{LoadedImage, OciError, Refusal};
use crate::host::digest::Sha256;
use crate::host::limits::{Cap, CappedReader, CountingReader, Limits, Meter, SetIdRule};
use crate::host::tree::{create_dirs_in_root, resolve_in_root, resolve_in_root_follow};

/// What a layer may contain beyond plain files, folders and links.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerPolicy {
    /// Allow set-uid/set-gid files and file capabilities.
    pub allow_setuid: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
}

/// What a checked layer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSummary {
    /// Digest of the blob as stored (compressed if it is).
    pub digest: Sha256,
    /// Digest of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: Sha256,
    pub compression: Compression,
    /// Blob bytes as stored.
    pub size: u64,
    pub uncompressed_size: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub whiteouts: u64,
}

#[derive(Default)]
struct Counts {
    files: u64,
    dirs: u64,
    symlinks: u64,
    hardlinks: u64,
    whiteouts: u64,
}

/// Everything one scan obeys: the layer policy, what to do with set-id
/// files, whether whiteouts mean anything (not in a base tarball), caps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    pub policy: LayerPolicy,
    pub strip_setid: bool,
    pub whiteouts: bool,
    pub limits: Limits,
}

impl Rules {
    pub fn layer(policy: &LayerPolicy, limits: &Limits) -> Rules {
        Rules {
            policy: *policy,
            strip_setid: false,
            whiteouts: true,
            limits: *limits,
        }
    }
}

pub(crate) enum Problem {
    Refused(Refusal),
    Cap(Cap),
    Corrupt(String),
    Compression(String),
    Write(anyhow::Error),
}

/// An entry that passed the policy, path normalised (no `./`, no trailing
/// `/`; empty = the image root).
pub(crate) struct Checked {
    pub path: Vec<u8>,
    pub what: What,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
}

pub(crate) enum What {
    Skip,
    Dir,
    File { size: u64 },
    Symlink { target: Vec<u8> },
    Hardlink { target: Vec<u8> },
    Whiteout { victim: Vec<u8> },
    Opaque { dir: Vec<u8> },
}

pub(crate) trait Sink {
    fn apply(&mut self, e: &Checked, data: &mut dyn Read) -> Result<()>;
}

struct HashRead<R> {
    r: R,
    h: sha2::Sha256,
    n: u64,
}

impl<R: Read> Read for HashRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.r.read(buf)?;
        self.h.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

fn hash_read<R: Read>(r: R) -> HashRead<R> {
    HashRead {
        r,
        h: sha2::Sha256::new(),
        n: 0,
    }
}

pub(crate) struct Scan {
    pub digest: Sha256,
    pub diff_id: Sha256,
    pub size: u64,
    pub uncompressed_size: u64,
    pub compression: Compression,
    counts: Counts,
    pub outcome: Result<(), Problem>,
    limits: Limits,
}

impl Scan {
    /// Whether a cap stopped the scan early (the digests are then partial).
    pub fn capped(&self) -> bool {
        matches!(self.outcome, Err(Problem::Cap(_)))
    }

    fn summary(&self) -> LayerSummary {
        LayerSummary {
            digest: self.digest,
            diff_id: self.diff_id,
            compression: self.compression,
            size: self.size,
            uncompressed_size: self.uncompressed_size,
            files: self.counts.files,
            dirs: self.counts.dirs,
            symlinks: self.counts.symlinks,
            hardlinks: self.counts.hardlinks,
            whiteouts: self.counts.whiteouts,
        }
    }

    /// The result as the public API reports it; write errors become
    /// `OciError::Io`.
    pub fn into_result(self) -> Result<LayerSummary, OciError> {
        let summary = self.summary();
        let layer = self.digest;
        match self.outcome {
            Ok(()) => Ok(summary),
            Err(Problem::Refused(refusal)) => Err(OciError::LayerRefused { layer, refusal }),
            Err(Problem::Cap(cap)) => Err(OciError::LayerCap {
                layer,
                message: cap.message(&self.limits),
            }),
            Err(Problem::Corrupt(message)) => Err(OciError::LayerCorrupt { layer, message }),
            Err(Problem::Compression(kind)) => {
                Err(OciError::UnsupportedCompression { layer, kind })
            }
            Err(Problem::Write(e)) => Err(OciError::io(
                format!("layer {}: {e:#}", super::Oci(&layer)),
                io::Error::other("unpack failed"),
            )),
        }
    }
}

fn read_up_to(r: &mut impl Read, n: usize) -> io::Result<Vec<u8>> {
    let mut v = Vec::with_capacity(n);
    r.take(n as u64).read_to_end(&mut v)?;
    Ok(v)
}

/// Reads the whole blob (always to its end, so both digests are right even
/// when an entry is refused; never past a cap), checking entries and
/// feeding `sink`.
pub(crate) fn scan<R: Read>(reader: R, rules: &Rules, sink: Option<&mut dyn Sink>) -> Scan {
    let compressed = Rc::new(Cell::new(0u64));
    let hit: Rc<Cell<Option<Cap>>> = Rc::new(Cell::new(None));
    let mut raw = hash_read(CountingReader::new(reader, compressed.clone()));
    let mut outcome: Result<(), Problem> = Ok(());
    let head = match read_up_to(&mut raw, 6) {
        Ok(h) => h,
        Err(e) => {
            outcome = Err(Problem::Corrupt(format!("cannot read the layer: {e}")));
            Vec::new()
        }
    };
    let compression = if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else {
        Compression::None
    };
    let other = if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some("zstd")
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Some("xz")
    } else if head.starts_with(b"BZh") {
        Some("bzip2")
    } else {
        None
    };
    if let (Some(kind), Ok(())) = (other, &outcome) {
        outcome = Err(Problem::Compression(kind.to_string()));
    }
    let mut src = Cursor::new(head).chain(&mut raw);
    let mut counts = Counts::default();
    let (diff_id, uncompressed_size) = {
        let plain: Box<dyn Read + '_> = match compression {
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(BufReader::new(
                &mut src,
            ))),
            Compression::None => Box::new(&mut src),
        };
        let mut u = hash_read(CappedReader::new(
            plain,
            compressed.clone(),
            rules.limits,
            hit.clone(),
        ));
        if outcome.is_ok() {
            outcome = walk(&mut u, rules, sink, &mut counts);
        }
        if hit.get().is_none() {
            if let Err(e) = io::copy(&mut u, &mut io::sink()) {
                if outcome.is_ok() && hit.get().is_none() {
                    outcome = Err(Problem::Corrupt(match compression {
                        Compression::Gzip => format!("gzip: {e}"),
                        Compression::None => format!("cannot read the layer: {e}"),
                    }));
                }
            }
        }
        if let Some(cap) = hit.get() {
            outcome = Err(Problem::Cap(cap));
        }
        (Sha256(u.h.finalize().into()), u.n)
    };
    if hit.get().is_none() {
        if let Err(e) = io::copy(&mut src, &mut io::sink()) {
            if outcome.is_ok() {
                outcome = Err(Problem::Corrupt(format!("cannot read the layer: {e}")));
            }
        }
    }
    Scan {
        digest: Sha256(raw.h.finalize().into()),
        diff_id,
        size: raw.n,
        uncompressed_size,
        compression,
        counts,
        outcome,
        limits: rules.limits,
    }
}

fn walk<R: Read>(
    r: R,
    rules: &Rules,
    mut sink: Option<&mut dyn Sink>,
    counts: &mut Counts,
) -> Result<(), Problem> {
    let mut t = TarReader::new(r);
    let mut files: HashSet<Vec<u8>> = HashSet::new();
    let mut meter = Meter::default();
    loop {
        crate::host::interrupt::check().map_err(|e| Problem::Write(e.into()))?;
        let e = match t.next_entry() {
            Ok(Some(e)) => e,
            Ok(None) => return Ok(()),
            Err(e) => return Err(Problem::Corrupt(e.to_string())),
        };
        meter.entry(&rules.limits).map_err(Problem::Cap)?;
        meter.file(e.size, &rules.limits).map_err(Problem::Cap)?;
        let c = check_entry(&e, rules, &files).map_err(Problem::Refused)?;
        match &c.what {
            What::File { .. } | What::Hardlink { .. } => {
                files.insert(c.path.clone());
            }
            _ => {
                files.remove(&c.path);
            }
        }
        match &c.what {
            What::File { .. } => counts.files += 1,
            What::Dir => counts.dirs += 1,
            What::Symlink { .. } => counts.symlinks += 1,
            What::Hardlink { .. } => counts.hardlinks += 1,
            What::Whiteout { .. } | What::Opaque { .. } => counts.whiteouts += 1,
            What::Skip => {}
        }
        if let Some(s) = sink.as_deref_mut() {
            s.apply(&c, &mut t.data()).map_err(Problem::Write)?;
        }
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Whether a relative symlink target climbs above the image root when
/// resolved from the folder holding the link (`depth` = that folder's depth).
fn escapes(depth: usize, target: &[u8]) -> bool {
    if target.starts_with(b"/") {
        return false; // in-image absolute path
    }
    let mut d = depth as i64;
    for c in target.split(|c| *c == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                d -= 1;
                if d < 0 {
                    return true;
                }
            }
            _ => d += 1,
        }
    }
    false
}

fn check_entry(e: &RawEntry, rules: &Rules, files: &HashSet<Vec<u8>>) -> Result<Checked, Refusal> {
    let policy = &rules.policy;
    let shown = lossy(&e.name);
    let parts = match split_name(&e.name) {
        Name::Absolute => return Err(Refusal::AbsolutePath { path: shown }),
        Name::DotDot => return Err(Refusal::DotDot { path: shown }),
        Name::Nul => return Err(Refusal::NulInName { path: shown }),
        Name::Parts(p) => p,
    };
    let path = join(&parts);
    let mode = if rules.strip_setid && e.kind == Kind::File {
        e.mode & !0o6000
    } else {
        e.mode
    };
    let done = |what| {
        Ok(Checked {
            path: path.clone(),
            what,
            mode,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
        })
    };
    if parts.is_empty() {
        return match e.kind {
            Kind::Dir => done(What::Skip),
            _ => Err(Refusal::RootNotFolder { path: shown }),
        };
    }
    let base = parts[parts.len() - 1];
    let parent = join(&parts[..parts.len() - 1]);
    if !rules.whiteouts && base.starts_with(b".wh.") {
        return Err(Refusal::WhiteoutOutsideLayer { path: shown });
    }
    if base == b".wh..wh..opq" {
        return done(What::Opaque { dir: parent });
    }
    if base.starts_with(b".wh..wh.") {
        return done(What::Skip); // aufs metadata; runtimes ignore it
    }
    if let Some(victim) = base.strip_prefix(b".wh.") {
        if victim.is_empty() || victim == b"." || victim == b".." {
            return Err(Refusal::BadWhiteout { path: shown });
        }
        let mut v = parent;
        if !v.is_empty() {
            v.push(b'/');
        }
        v.extend_from_slice(victim);
        return done(What::Whiteout { victim: v });
    }
    match e.kind {
        Kind::Dir => done(What::Dir),
        Kind::File => {
            if !policy.allow_setuid && !rules.strip_setid {
                if e.mode & 0o6000 != 0 {
                    return Err(Refusal::SetId {
                        path: shown,
                        mode: e.mode,
                    });
                }
                if e.xattrs.iter().any(|(k, _)| k == b"security.capability") {
                    return Err(Refusal::Capabilities { path: shown });
                }
            }
            done(What::File { size: e.size })
        }
        Kind::Symlink => {
            if e.link.is_empty() {
                return Err(Refusal::EmptySymlink { path: shown });
            }
            if e.link.contains(&0) || escapes(parts.len() - 1, &e.link) {
                return Err(Refusal::SymlinkEscapes {
                    path: shown,
                    target: lossy(&e.link),
                });
            }
            done(What::Symlink {
                target: e.link.clone(),
            })
        }
        Kind::Hardlink => {
            let target = lossy(&e.link);
            let t = match split_name(&e.link) {
                Name::Parts(p) if !p.is_empty() => join(&p),
                _ => {
                    return Err(Refusal::HardlinkOutside {
                        path: shown,
                        target,
                    })
                }
            };
            if !files.contains(&t) || t == path {
                return Err(Refusal::HardlinkDangling {
                    path: shown,
                    target,
                });
            }
            done(What::Hardlink { target: t })
        }
        Kind::Char => Err(Refusal::CharDevice { path: shown }),
        Kind::Block => Err(Refusal::BlockDevice { path: shown }),
        Kind::Fifo => Err(Refusal::Fifo { path: shown }),
        Kind::Other(k) => Err(Refusal::UnsupportedType {
            path: shown,
            kind: k as char,
        }),
    }
}

/// Checks one layer blob (gzip or plain tar, told apart by magic bytes)
/// against `policy`. The reader is always read to its end: the summary's
/// `digest` is the blob's digest and `diff_id` the uncompressed tar's, and
/// every refusal names the layer by that digest and the entry by its path.
pub fn check_layer<R: Read>(layer: R, policy: &LayerPolicy) -> Result<LayerSummary, OciError> {
    check_layer_with(layer, policy, &Limits::default())
}

/// `check_layer` with caps other than the defaults.
pub fn check_layer_with<R: Read>(
    layer: R,
    policy: &LayerPolicy,
    limits: &Limits,
) -> Result<LayerSummary, OciError> {
    scan(layer, &Rules::layer(policy, limits), None).into_result()
}

/// Applies one layer blob onto `dest`, checking every entry first (a
/// refused entry is never written; entries before it may have been).
/// Every write resolves its path with `stagepath`, so nothing lands
/// outside `dest`.
pub fn unpack_layer<R: Read>(layer: R, dest: &Path, policy: &LayerPolicy) -> Result<LayerSummary> {
    unpack_with(layer, dest, &Rules::layer(policy, &Limits::default()))
}

/// Unpacks a rootfs tarball (gzip or plain tar) into `dest` with the layer
/// policy: no `..`, no absolute names, no symlink climbing out, hardlinks
/// only to files earlier in it, no device nodes, fifos or whiteouts;
/// set-id files refused, stripped or kept as `limits.base_setuid` says;
/// every cap checked while it streams. A refusal is an `InputError` naming
/// the tarball, the entry and the rule; nothing it refused was written.
pub fn unpack_base_tarball(path: &Path, dest: &Path, limits: &Limits) -> Result<LayerSummary> {
    let f = crate::host::tree::open_regular(path)
        .map_err(|e| crate::InputError(format!("base tarball {}: {e:#}", path.display())))?;
    let rules = Rules {
        policy: LayerPolicy {
            allow_setuid: limits.base_setuid == SetIdRule::Keep,
        },
        strip_setid: limits.base_setuid == SetIdRule::Strip,
        whiteouts: false,
        limits: *limits,
    };
    unpack_with(BufReader::with_capacity(1 << 20, f), dest, &rules).map_err(|e| {
        if e.downcast_ref::<crate::host::interrupt::Interrupted>().is_some() {
            return e;
        }
        let msg = match e.downcast_ref::<OciError>() {
            Some(OciError::LayerRefused { refusal, .. }) => refusal.to_string(),
            Some(OciError::LayerCorrupt { message, .. }) => {
                format!("not a valid tar stream: {message}")
            }
            Some(OciError::LayerCap { message, .. }) => message.clone(),
            Some(OciError::UnsupportedCompression { kind, .. }) => {
                format!("{kind} compression is not supported; recompress it with gzip or leave it uncompressed")
            }
            _ => return e.context(format!("compose: base tarball {}", path.display())),
        };
        let hint = if msg.contains("set-uid") {
            " (set `[limits] base_setuid = \"strip\"` or \"keep\" in the recipe to accept it)"
        } else {
            ""
        };
        crate::InputError(format!(
            "base tarball {}: {msg}{hint}",
            path.display()
        ))
        .into()
    })
}

fn unpack_with<R: Read>(layer: R, dest: &Path, rules: &Rules) -> Result<LayerSummary> {
    std::fs::create_dir_all(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let mut u = Unpacker {
        root: dest.to_path_buf(),
        this_layer: HashSet::new(),
        dir_modes: Vec::new(),
        chown: unsafe { libc::geteuid() } == 0,
    };
    let s = scan(layer, rules, Some(&mut u));
    let layer = s.digest;
    if let Err(Problem::Write(e)) = s.outcome {
        if e.downcast_ref::<crate::host::interrupt::Interrupted>()
            .is_some()
        {
            return Err(e);
        }
        return Err(e.context(format!("layer {}: cannot unpack", super::Oci(&layer))));
    }
    let summary = s.into_result()?;
    for (p, mode) in u.dir_modes.iter().rev() {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(*mode))
            .with_context(|| format!("cannot chmod {}", p.display()))?;
    }
    Ok(summary)
}

/// Flattens the image's layers, in order, into `dest`, honouring OCI
/// whiteouts (`.wh.NAME` deletes NAME from lower layers, `.wh..wh..opq`
/// empties the folder of lower layers' entries).
/// Every cap of `limits` holds again while they stream (the recipe's,
/// which the archive was loaded with).
pub fn unpack_layers(img: &LoadedImage, dest: &Path, limits: &Limits) -> Result<()> {
    for l in &img.layers {
        let f = std::fs::File::open(l.blob_path())
            .with_context(|| format!("cannot open layer {}", l.blob_path().display()))?;
        let s = unpack_with(
            BufReader::with_capacity(1 << 20, f),
            dest,
            &Rules::layer(&img.policy, limits),
        )?;
        if s.digest != l.summary.digest {
            bail!(
                "layer {} changed on disk since it was loaded",
                super::Oci(&l.summary.digest)
            );
        }
    }
    Ok(())
}

struct Unpacker {
    root: PathBuf,
    this_layer: HashSet<Vec<u8>>,
    dir_modes: Vec<(PathBuf, u32)>,
    chown: bool,
}

fn rel(b: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(b))
}

fn remove_any(p: &Path) -> Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            std::fs::remove_dir_all(p).with_context(|| format!("cannot remove {}", p.display()))
        }
        Ok(_) => std::fs::remove_file(p).with_context(|| format!("cannot remove {}", p.display())),
        Err(_) => Ok(()),
    }
}

impl Unpacker {
    /// The real parent folder (created, inside the root) and the entry's
    /// path in it; the last component is never followed.
    fn place(&self, path: &[u8]) -> Result<PathBuf> {
        let r = rel(path);
        let parent = r.parent().unwrap_or(Path::new(""));
        let name = r.file_name().context("entry without a name")?;
        let dir = create_dirs_in_root(&self.root, parent)?;
        Ok(dir.join(name))
    }

    fn owner(&self, p: &Path, e: &Checked) -> Result<()> {
        if self.chown {
            let uid = u32::try_from(e.uid).ok();
            let gid = u32::try_from(e.gid).ok();
            std::os::unix::fs::lchown(p, uid, gid)
                .with_context(|| format!("cannot chown {}", p.display()))?;
        }
        Ok(())
    }

    fn times(&self, p: &Path, e: &Checked) {
        let t = filetime::FileTime::from_unix_time(i64::try_from(e.mtime).unwrap_or(0), 0);
        // Times are cosmetic here (normalise fixes them); ignore failures.
        let _ = filetime::set_symlink_file_times(p, t, t);
    }

    /// Removes what lower layers put under `real` (= `relp` in the image),
    /// keeping this layer's own entries.
    fn prune(&self, real: &Path, relp: &[u8]) -> Result<()> {
        let rd =
            std::fs::read_dir(real).with_context(|| format!("cannot list {}", real.display()))?;
        for child in rd {
            let child = child?;
            let name = child.file_name();
            let mut r = relp.to_vec();
            if !r.is_empty() {
                r.push(b'/');
            }
            r.extend_from_slice(name.as_bytes());
            let p = real.join(&name);
            if self.this_layer.contains(&r) {
                if std::fs::symlink_metadata(&p)?.is_dir() {
                    self.prune(&p, &r)?;
                }
            } else {
                remove_any(&p)?;
            }
        }
        Ok(())
    }
}

impl Sink for Unpacker {
    fn apply(&mut self, e: &Checked, data: &mut dyn Read) -> Result<()> {
        match &e.what {
            What::Skip => return Ok(()),
            What::Whiteout { victim } => {
                let p = resolve_in_root(&self.root, rel(victim))?;
                if p != self.root {
                    remove_any(&p)?;
                }
                return Ok(());
            }
            What::Opaque { dir } => {
                let d = if dir.is_empty() {
                    self.root.clone()
                } else {
                    resolve_in_root_follow(&self.root, rel(dir))?
                };
                if std::fs::symlink_metadata(&d)
                    .map(|m| m.is_dir())
                    .unwrap_or(false)
                {
                    self.prune(&d, dir)?;
                }
                return Ok(());
            }
            What::Dir => {
                let p = self.place(&e.path)?;
                match std::fs::symlink_metadata(&p) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        remove_any(&p)?;
                        std::fs::create_dir(&p)
                            .with_context(|| format!("cannot create {}", p.display()))?;
                    }
                    Err(_) => std::fs::create_dir(&p)
                        .with_context(|| format!("cannot create {}", p.display()))?,
                }
                self.owner(&p, e)?;
                self.dir_modes.push((p, e.mode & 0o7777));
            }
            What::File { size } => {
                let p = self.place(&e.path)?;
                remove_any(&p)?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&p)
                    .with_context(|| format!("cannot create {}", p.display()))?;
                let n = io::copy(data, &mut f)
                    .with_context(|| format!("cannot write {}", p.display()))?;
                if n != *size {
                    bail!("{}: short data ({n} of {size} bytes)", lossy(&e.path));
                }
                drop(f);
                self.owner(&p, e)?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode & 0o7777))?;
                self.times(&p, e);
            }
            What::Symlink { target } => {
                let p = self.place(&e.path)?;
                remove_any(&p)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(target), &p)
                    .with_context(|| format!("cannot create link {}", p.display()))?;
                self.owner(&p, e)?;
                self.times(&p, e);
            }
            What::Hardlink { target } => {
                let src = resolve_in_root(&self.root, rel(target))?;
                let p = self.place(&e.path)?;
                if !std::fs::symlink_metadata(&src)
                    .map(|m| m.is_file())
                    .unwrap_or(false)
                {
                    bail!(
                        "hardlink {:?} -> {:?}: the target is not a regular file in the tree",
                        lossy(&e.path),
                        lossy(target)
                    );
                }
                if src != p {
                    remove_any(&p)?;
                    std::fs::hard_link(&src, &p)
                        .with_context(|| format!("cannot link {}", p.display()))?;
                }
            }
        }
        self.this_layer.insert(e.path.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_rule() {
        assert!(!escapes(0, b"/etc/passwd"));
        assert!(!escapes(0, b"usr/bin"));
        assert!(escapes(0, b"../x"));
        assert!(!escapes(2, b"../../x"));
        assert!(escapes(2, b"../../../x"));
        assert!(escapes(1, b"a/../../.."));
        assert!(!escapes(1, b"./.././x"));
    }

    fn setuid_tarball(dir: &Path) -> PathBuf {
        let mut w = super::super::tarfmt::TarWriter::new(Vec::new(), 1);
        w.dir(b"usr", 0o755, 0, 0).unwrap();
        w.file(b"usr/su", 0o4755, (0, 0), 2, &b"su"[..]).unwrap();
        let p = dir.join("base.tar");
        std::fs::write(&p, w.finish().unwrap()).unwrap();
        p
    }

    #[test]
    fn base_setuid_is_refused_stripped_or_kept_as_the_recipe_says() {
        let d = tempfile::tempdir().unwrap();
        let t = setuid_tarball(d.path());
        let run = |rule: SetIdRule, name: &str| {
            let dest = d.path().join(name);
            let limits = Limits {
                base_setuid: rule,
                ..Limits::default()
            };
            unpack_base_tarball(&t, &dest, &limits).map(|_| dest)
        };
        let e = run(SetIdRule::Refuse, "refuse").unwrap_err();
        assert!(e.downcast_ref::<crate::InputError>().is_some(), "{e:#}");
        assert!(e.to_string().contains("\"usr/su\" is set-uid"), "{e}");
        assert!(e.to_string().contains("base_setuid"), "{e}");
        assert!(!d.path().join("refuse/usr/su").exists());
        let dest = run(SetIdRule::Strip, "strip").unwrap();
        let mode = std::fs::metadata(dest.join("usr/su"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
        let dest = run(SetIdRule::Keep, "keep").unwrap();
        let mode = std::fs::metadata(dest.join("usr/su"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o4755);
    }

    use proptest::prelude::*;

    fn tiny() -> Rules {
        Rules {
            policy: LayerPolicy::default(),
            strip_setid: true,
            whiteouts: true,
            limits: Limits {
                max_bytes: 1 << 20,
                max_entries: 50,
                max_ratio: 50,
                max_file_bytes: 64 << 10,
                base_setuid: SetIdRule::Strip,
            },
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: super::super::tarfmt::tests::fuzz_cases(),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Whatever the bytes (plain or gzip-wrapped), a scan ends in a
        /// summary or an error, never a panic, and never unpacks past a cap.
        #[test]
        fn fuzz_layer_scan_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4000), gz in any::<bool>()) {
            let input = if gz {
                let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                std::io::Write::write_all(&mut w, &bytes).unwrap();
                w.finish().unwrap()
            } else {
                bytes
            };
            let s = scan(&input[..], &tiny(), None);
            prop_assert!(s.uncompressed_size <= (1 << 20) + (1 << 16));
            let _ = s.into_result();
        }
    }
}
