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
use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::{bail, Context, Result};
use sha2::Digest;

use super::{LoadedImage, OciError, Refusal};
use crate::host::digest::Sha256;
use crate::host::inode;
use crate::host::limits::{Cap, CappedReader, CountingReader, Limits, Meter, SetIdRule};
use crate::host::tar::{join, split_name, Kind, Name, RawEntry, TarReader};
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
    let compression = if crate::host::is_gzip(&head) {
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
            s.apply(&c, &mut t.data())
                .map_err(|e| match e.downcast::<Refusal>() {
                    Ok(r) => Problem::Refused(r),
                    Err(e) => Problem::Write(e),
                })?;
        }
    }
}

/// Linux's limits on one name and on a whole path (less its NUL).
const NAME_MAX: usize = 255;
const PATH_MAX: usize = 4095;

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
    // The file system's own limits, checked here so that an entry it would
    // refuse is named as bad input, not reported as a failed write.
    if let Some(p) = parts.iter().find(|p| p.len() > NAME_MAX) {
        return Err(Refusal::NameTooLong {
            path: shown,
            len: p.len(),
        });
    }
    if let Some(len) = [path.len(), e.link.len()]
        .into_iter()
        .find(|l| *l > PATH_MAX)
    {
        return Err(Refusal::PathTooLong { path: shown, len });
    }
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
        dirs_made: HashSet::new(),
        dir_modes: Vec::new(),
        chown: crate::host::sys::is_root(),
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
    // Folder modes last (a read-only folder would refuse its children),
    // deepest first, each on the folder the tree holds: the walk from the
    // root follows no link, so a folder that was swapped for a link is an
    // error, never a chmod of what the link names.
    for (rel, shown, mode) in u.dir_modes.iter().rev() {
        inode::open_dir_beneath(&u.root, rel)
            .and_then(|f| inode::set_mode(&f, *mode))
            .map_err(|_| OciError::LayerRefused {
                layer,
                refusal: Refusal::ReplacesFolder { path: lossy(shown) },
            })?;
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

/// The files of `wanted` (paths inside the image, no leading `/`) that the
/// image holds as regular files, read as the image will be: its layers
/// unpacked by this module's one reader (the one that checked them, with
/// the caps it was loaded with) into a scratch folder under `scratch` (the
/// system's temporary folder when `None`), then read with in-image link
/// resolution. No second tar parser sees the layers, so nothing can be
/// listed that the image does not hold. A file over `cap` bytes is an error.
pub fn read_files(
    img: &LoadedImage,
    wanted: &[&str],
    cap: u64,
    scratch: Option<&Path>,
) -> Result<std::collections::BTreeMap<String, Vec<u8>>> {
    let b = tempfile::Builder::new().prefix("cairn-read-").to_owned();
    let tmp = match scratch {
        Some(s) => b.tempdir_in(s),
        None => b.tempdir(),
    }
    .context("cannot make a scratch folder")?;
    let root = tmp.path().join("rootfs");
    unpack_layers(img, &root, &img.limits)?;
    let mut found = std::collections::BTreeMap::new();
    for rel in wanted {
        if let Some(v) = crate::host::tree::read_in_tree_capped(&root, Path::new(rel), cap)? {
            found.insert(rel.to_string(), v);
        }
    }
    Ok(found)
}

struct Unpacker {
    root: PathBuf,
    this_layer: HashSet<Vec<u8>>,
    /// Real paths of the folders this archive made: nothing later in the
    /// same archive may remove or replace them.
    dirs_made: HashSet<PathBuf>,
    /// (path below the root, entry name, mode) of each folder made, applied
    /// at the end.
    dir_modes: Vec<(PathBuf, Vec<u8>, u32)>,
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

fn uid_gid(e: &Checked) -> (u32, u32) {
    (
        u32::try_from(e.uid).unwrap_or(0),
        u32::try_from(e.gid).unwrap_or(0),
    )
}

/// A host error on a path in the tree, with the path.
fn at<'a>(p: &'a Path, what: &str) -> impl FnOnce(io::Error) -> anyhow::Error + 'a {
    let what = what.to_string();
    move |e| anyhow::Error::new(e).context(format!("cannot {what} {}", p.display()))
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

    /// `p` below the root (`place` and `resolve_in_root` only give such).
    fn below<'a>(&self, p: &'a Path) -> Result<&'a Path> {
        p.strip_prefix(&self.root)
            .with_context(|| format!("{} is outside the tree", p.display()))
    }

    /// The folder holding `p`, opened without following a link on the way.
    fn parent_of(&self, p: &Path) -> Result<std::fs::File> {
        let parent = self.below(p)?.parent().unwrap_or(Path::new(""));
        inode::open_dir_beneath(&self.root, parent).map_err(at(p, "open the folder of"))
    }

    /// Removes whatever is at `p`, unless it is (or holds) a folder this
    /// archive made: a later entry replacing such a folder is how a link
    /// would be slipped under a path whose metadata is still to be set.
    fn remove(&self, p: &Path, entry: &[u8]) -> Result<()> {
        let is_dir = std::fs::symlink_metadata(p)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        if is_dir && self.dirs_made.iter().any(|d| d.starts_with(p)) {
            return Err(Refusal::ReplacesFolder { path: lossy(entry) }.into());
        }
        remove_any(p)
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
                self.remove(&p, &r)?;
            }
        }
        Ok(())
    }
}

impl Sink for Unpacker {
    fn apply(&mut self, e: &Checked, data: &mut dyn Read) -> Result<()> {
        let (uid, gid) = uid_gid(e);
        let mtime = i64::try_from(e.mtime).unwrap_or(0);
        match &e.what {
            What::Skip => return Ok(()),
            What::Whiteout { victim } => {
                let p = resolve_in_root(&self.root, rel(victim))?;
                if p != self.root {
                    self.remove(&p, &e.path)?;
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
                        self.remove(&p, &e.path)?;
                        std::fs::create_dir(&p)
                            .with_context(|| format!("cannot create {}", p.display()))?;
                    }
                    Err(_) => std::fs::create_dir(&p)
                        .with_context(|| format!("cannot create {}", p.display()))?,
                }
                let below = self.below(&p)?.to_path_buf();
                if self.chown {
                    inode::open_dir_beneath(&self.root, &below)
                        .and_then(|f| inode::set_owner(&f, uid, gid))
                        .map_err(at(&p, "chown"))?;
                }
                self.dir_modes
                    .push((below, e.path.clone(), e.mode & 0o7777));
                self.dirs_made.insert(p);
            }
            What::File { size } => {
                let p = self.place(&e.path)?;
                self.remove(&p, &e.path)?;
                let name = p.file_name().context("entry without a name")?;
                let dir = self.parent_of(&p)?;
                let mut f = inode::create_file_at(&dir, name, 0o600).map_err(at(&p, "create"))?;
                let n = io::copy(data, &mut f)
                    .with_context(|| format!("cannot write {}", p.display()))?;
                if n != *size {
                    bail!("{}: short data ({n} of {size} bytes)", lossy(&e.path));
                }
                // On the descriptor just written: what the tree holds.
                if self.chown {
                    inode::set_owner(&f, uid, gid).map_err(at(&p, "chown"))?;
                }
                inode::set_mode(&f, e.mode).map_err(at(&p, "chmod"))?;
                // Times are cosmetic here (normalise fixes them).
                let _ = inode::set_mtime(&f, mtime);
            }
            What::Symlink { target } => {
                let p = self.place(&e.path)?;
                self.remove(&p, &e.path)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(target), &p)
                    .with_context(|| format!("cannot create link {}", p.display()))?;
                let name = p.file_name().context("entry without a name")?;
                let dir = self.parent_of(&p)?;
                if self.chown {
                    inode::set_owner_at(&dir, name, uid, gid).map_err(at(&p, "chown"))?;
                }
                let _ = inode::set_mtime_at(&dir, name, mtime);
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
                    self.remove(&p, &e.path)?;
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
    use std::os::unix::fs::PermissionsExt;

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
        let mut w = crate::host::tar::TarWriter::new(Vec::new(), 1);
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

    /// A host folder outside the tree, its file and sub-folder at known
    /// modes and times: what a hostile archive aims at.
    struct Sentinel {
        _d: tempfile::TempDir,
        dir: PathBuf,
    }

    impl Sentinel {
        fn new() -> Sentinel {
            let d = tempfile::tempdir().unwrap();
            let dir = d.path().join("sentinel");
            std::fs::create_dir_all(dir.join("sub")).unwrap();
            std::fs::write(dir.join("key"), b"secret").unwrap();
            std::fs::set_permissions(dir.join("key"), std::fs::Permissions::from_mode(0o600))
                .unwrap();
            std::fs::set_permissions(dir.join("sub"), std::fs::Permissions::from_mode(0o700))
                .unwrap();
            let t = filetime::FileTime::from_unix_time(1_000_000, 0);
            for p in [dir.join("key"), dir.join("sub")] {
                filetime::set_file_times(&p, t, t).unwrap();
            }
            Sentinel { _d: d, dir }
        }

        /// Mode, owner, mtime and ctime of each entry (a chmod or chown
        /// changes the ctime even when it sets the same values).
        fn state(&self) -> Vec<(u32, u32, u32, i64, i64, i64)> {
            use std::os::unix::fs::MetadataExt;
            [self.dir.join("key"), self.dir.join("sub")]
                .iter()
                .map(|p| {
                    let m = std::fs::symlink_metadata(p).unwrap();
                    (
                        m.mode(),
                        m.uid(),
                        m.gid(),
                        m.mtime(),
                        m.ctime(),
                        m.ctime_nsec(),
                    )
                })
                .collect()
        }
    }

    fn tarball(
        dir: &Path,
        build: impl FnOnce(&mut crate::host::tar::TarWriter<Vec<u8>>),
    ) -> PathBuf {
        let mut w = crate::host::tar::TarWriter::new(Vec::new(), 1);
        build(&mut w);
        let p = dir.join("base.tar");
        std::fs::write(&p, w.finish().unwrap()).unwrap();
        p
    }

    fn unpack(t: &Path, dest: &Path) -> Result<LayerSummary> {
        let limits = Limits {
            base_setuid: SetIdRule::Keep,
            ..Limits::default()
        };
        unpack_base_tarball(t, dest, &limits)
    }

    #[test]
    fn a_folder_swapped_for_a_link_never_passes_its_mode_to_the_host() {
        let s = Sentinel::new();
        let before = s.state();
        let key = s.dir.join("key");
        let sub = s.dir.join("sub");
        let d = tempfile::tempdir().unwrap();
        // The reproduced attack: folders with wide modes, then links in
        // their place to a host file and a host folder.
        let t = tarball(d.path(), |w| {
            w.dir(b"f", 0o6777, 0, 0).unwrap();
            w.dir(b"g", 0o6777, 0, 0).unwrap();
            w.symlink(b"f", key.as_os_str().as_bytes(), 0, 0).unwrap();
            w.symlink(b"g", sub.as_os_str().as_bytes(), 0, 0).unwrap();
        });
        let e = unpack(&t, &d.path().join("tree")).unwrap_err();
        assert!(e.downcast_ref::<crate::InputError>().is_some(), "{e:#}");
        assert!(
            e.to_string().contains("\"f\" would replace a folder"),
            "{e}"
        );
        assert_eq!(s.state(), before, "a host file's metadata changed");

        // The same through an alias of the folder (`c` -> `a`, then `c/d`
        // put where `a/d` was made) and through a file in its place.
        for (i, names) in [(&b"c/d"[..], true), (&b"a/d"[..], false)]
            .iter()
            .enumerate()
        {
            let t = tarball(d.path(), |w| {
                w.dir(b"a", 0o755, 0, 0).unwrap();
                w.dir(b"a/d", 0o6777, 0, 0).unwrap();
                w.symlink(b"c", b"a", 0, 0).unwrap();
                if names.1 {
                    w.symlink(names.0, key.as_os_str().as_bytes(), 0, 0)
                        .unwrap();
                } else {
                    w.file(names.0, 0o644, (0, 0), 1, &b"x"[..]).unwrap();
                }
            });
            let e = unpack(&t, &d.path().join(format!("alias{i}"))).unwrap_err();
            assert!(e.to_string().contains("would replace a folder"), "{e}");
        }
        assert_eq!(s.state(), before, "a host file's metadata changed");

        // Control 1: the detector sees the attack: a chmod by path, as
        // metadata used to be applied, does reach the host file.
        let tree = d.path().join("control");
        std::fs::create_dir_all(&tree).unwrap();
        std::os::unix::fs::symlink(&key, tree.join("f")).unwrap();
        std::fs::set_permissions(tree.join("f"), std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_ne!(s.state(), before, "the sentinel cannot see a chmod");

        // Control 2: folders and links that do not collide unpack, and the
        // folders get their modes.
        let t = tarball(d.path(), |w| {
            w.dir(b"f", 0o2775, 0, 0).unwrap();
            w.symlink(b"f2", key.as_os_str().as_bytes(), 0, 0).unwrap();
            w.dir(b"f/inner", 0o700, 0, 0).unwrap();
        });
        let tree = d.path().join("ok");
        unpack(&t, &tree).unwrap();
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&tree.join("f")), 0o2775);
        assert_eq!(mode(&tree.join("f/inner")), 0o700);
        assert!(std::fs::symlink_metadata(tree.join("f2"))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn a_whiteout_may_not_remove_a_folder_its_layer_made() {
        let s = Sentinel::new();
        let before = s.state();
        let d = tempfile::tempdir().unwrap();
        let mut w = crate::host::tar::TarWriter::new(Vec::new(), 1);
        w.dir(b"a", 0o755, 0, 0).unwrap();
        w.dir(b"a/b", 0o6777, 0, 0).unwrap();
        w.file(b".wh.a", 0o644, (0, 0), 0, &b""[..]).unwrap();
        w.symlink(b"a", s.dir.as_os_str().as_bytes(), 0, 0).unwrap();
        let layer = w.finish().unwrap();
        let e =
            unpack_layer(&layer[..], &d.path().join("tree"), &LayerPolicy::default()).unwrap_err();
        assert!(format!("{e:#}").contains("would replace a folder"), "{e:#}");
        assert_eq!(s.state(), before);
        // Control: a whiteout of a lower layer's folder still works.
        let tree = d.path().join("t2");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        let mut w = crate::host::tar::TarWriter::new(Vec::new(), 1);
        w.file(b".wh.a", 0o644, (0, 0), 0, &b""[..]).unwrap();
        unpack_layer(&w.finish().unwrap()[..], &tree, &LayerPolicy::default()).unwrap();
        assert!(!tree.join("a").exists());
    }

    #[test]
    fn names_longer_than_the_file_system_allows_are_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let long = vec![b'n'; 256];
        let t = tarball(d.path(), |w| {
            w.dir(b"usr", 0o755, 0, 0).unwrap();
            let mut name = b"usr/".to_vec();
            name.extend_from_slice(&long);
            w.file(&name, 0o644, (0, 0), 1, &b"x"[..]).unwrap();
        });
        let e = unpack(&t, &d.path().join("tree")).unwrap_err();
        assert!(e.downcast_ref::<crate::InputError>().is_some(), "{e:#}");
        assert!(e.to_string().contains("256 bytes"), "{e}");
        assert!(e.to_string().contains("at most 255"), "{e}");
        let deep: Vec<u8> = std::iter::repeat(&b"abcdefgh/"[..])
            .take(460)
            .flatten()
            .copied()
            .collect();
        let t = tarball(d.path(), |w| {
            w.file(&[&deep[..], b"f"].concat(), 0o644, (0, 0), 1, &b"x"[..])
                .unwrap();
        });
        let e = unpack(&t, &d.path().join("tree2")).unwrap_err();
        assert!(e.to_string().contains("at most 4095"), "{e}");
        // Control: 255 bytes is fine.
        let t = tarball(d.path(), |w| {
            w.file(&long[..255], 0o644, (0, 0), 1, &b"x"[..]).unwrap();
        });
        unpack(&t, &d.path().join("tree3")).unwrap();
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
            cases: crate::host::tar::tests::fuzz_cases(),
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
