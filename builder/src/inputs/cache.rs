//! A content-addressed cache of build inputs (Debian packages, downloaded
//! files), shared by builds and carried to offline machines.
//!
//! Layout: `ROOT/sha256/ab/abcdef…` holds the blob whose sha256 is
//! `abcdef…`. Writes go to a temporary file in the blob's own folder, are
//! fsynced, then renamed into place, so a reader never sees a half-written
//! blob and two builds writing the same digest at once are harmless (the
//! content is identical). Blobs are re-hashed the first time a process
//! reads them (and again whenever their size or mtime changed since); a
//! blob whose content no longer matches its name is moved to
//! `ROOT/quarantine/` with a warning and treated as missing.
//!
//! `ROOT/volumes/` holds the stage cache's volume images that are not
//! blobs (`stagecache::store_volume_image`: checked by their dm-verity
//! root hash, not their sha256); `gc` empties it.
//!
//! `export` writes a tar of chosen blobs plus a `DIGESTS` list; `import`
//! checks every member against that list and its own name before adding
//! anything, and refuses extra members, links and odd paths.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use sha2::Digest;

use crate::host::digest::Sha256;
use crate::host::tar::{split_name, Kind, Name, RawEntry, TarReader};

/// Name of the digest list inside an exported cache tar.
pub const DIGESTS_MEMBER: &str = "DIGESTS";

/// The folder of the stage cache's volume images
/// (`stagecache::volume_image_path`), which `gc` empties.
pub const VOLUMES: &str = "volumes";

/// Temporary files older than this are debris from a crashed writer; `gc`
/// removes them. Younger ones may belong to a build running right now.
const STALE_TEMP: Duration = Duration::from_secs(24 * 3600);

/// What a blob looked like when this process last verified it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    ino: u64,
    mtime_ns: i128,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        Stamp {
            len: meta.len(),
            ino: meta.ino(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

/// The cache. Cheap to open; safe to share between threads and processes.
#[derive(Debug)]
pub struct Cache {
    root: PathBuf,
    verified: Mutex<HashMap<Sha256, Stamp>>,
}

/// What `import` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImportReport {
    /// Blobs that were not in the cache before.
    pub added: usize,
    /// Blobs the cache already held (verified, left as they were).
    pub present: usize,
    /// Go module files placed in the module cache's download folder.
    pub go_added: usize,
}

/// What [`Cache::gc`] keeps. Keeping nothing is a case of its own, so an
/// empty list of recipes never means "delete everything" by accident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GcKeep {
    /// The blobs these digests name (the inputs of the recipes given).
    Named(BTreeSet<Sha256>),
    /// Nothing: every blob goes (`cairn cache gc --all`).
    Nothing,
}

impl GcKeep {
    /// `cairn cache gc`: with `all`, nothing; else every input the locks of
    /// `recipes` pin. A lock that cannot be read is bad input (exit 2), and
    /// nothing is removed.
    pub fn for_recipes(recipes: &[PathBuf], all: bool) -> Result<GcKeep, crate::InputError> {
        if all {
            return Ok(GcKeep::Nothing);
        }
        let mut keep = BTreeSet::new();
        for r in recipes {
            keep.extend(
                crate::inputs::lock::Lock::read_input(&crate::inputs::lock::lock_path(r))?
                    .digests(),
            );
        }
        Ok(GcKeep::Named(keep))
    }
}

impl Cache {
    /// `cairn cache export`: the inputs `recipe`'s lock pins, written to
    /// `file` as [`Cache::export`] does. Returns how many files it holds.
    /// With `go_modules` (`runtime = "kubernetes"`), the Go module files
    /// `cairn fetch` downloaded go along ([`crate::inputs::gomod`]).
    pub fn export_recipe(&self, recipe: &Path, file: &Path, go_modules: bool) -> Result<usize> {
        let lock = crate::inputs::lock::Lock::read_input(&crate::inputs::lock::lock_path(recipe))?;
        let digests = lock.digests();
        let mut go = Vec::new();
        if go_modules {
            let files = crate::inputs::gomod::files(&self.root)?;
            if files.is_empty() {
                bail!(
                    "cache export: no Go module files in {}: run `cairn fetch {}` first",
                    crate::inputs::gomod::download_dir(&self.root).display(),
                    recipe.display()
                );
            }
            for (rel, path) in files {
                let d = Sha256::of_file(&path)
                    .with_context(|| format!("cache export: hashing {}", path.display()))?;
                go.push((d, rel, path));
            }
        }
        self.export_with(&digests, &go, file)?;
        Ok(digests.len() + go.len())
    }

    /// `cairn cache import`: [`Cache::import`] of a file the user named;
    /// any refusal is bad input (exit 2), naming the file.
    pub fn import_file(&self, file: &Path) -> Result<ImportReport, crate::InputError> {
        self.import(file)
            .map_err(|e| crate::InputError(format!("{}: {e:#}", file.display())))
    }

    /// Opens (creating if needed) the cache rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Cache> {
        let root = root.into();
        let blobs = root.join("sha256");
        std::fs::create_dir_all(&blobs)
            .with_context(|| format!("cache: cannot create {}", blobs.display()))?;
        let root = root
            .canonicalize()
            .with_context(|| format!("cache: cannot resolve {}", root.display()))?;
        Ok(Cache {
            root,
            verified: Mutex::new(HashMap::new()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob `d` lives (whether or not it is there).
    pub fn blob_path(&self, d: &Sha256) -> PathBuf {
        Cache::blob_path_in(&self.root, d)
    }

    /// Where the blob `d` lives in the cache rooted at `root`.
    pub fn blob_path_in(root: &Path, d: &Sha256) -> PathBuf {
        crate::host::digest::blob_path(root, d)
    }

    fn remember(&self, d: Sha256, meta: &std::fs::Metadata) {
        if let Ok(mut v) = self.verified.lock() {
            v.insert(d, Stamp::of(meta));
        }
    }

    fn forget(&self, d: &Sha256) {
        if let Ok(mut v) = self.verified.lock() {
            v.remove(d);
        }
    }

    /// Stores the file at `src`; returns its digest.
    pub fn put_file(&self, src: &Path) -> Result<Sha256> {
        let f = File::open(src)
            .with_context(|| format!("cache: cannot open {} to store it", src.display()))?;
        self.put_reader(f, None)
            .with_context(|| format!("cache: storing {}", src.display()))
    }

    /// Stores the file at `src`, whose sha256 the caller has just computed,
    /// by moving it in: a rename, no copy (a copy, checked against
    /// `digest`, when `src` is on another file system). For big build
    /// results the build would delete anyway. Returns the blob's path.
    pub fn put_moved(&self, src: &Path, digest: &Sha256) -> Result<PathBuf> {
        let dest = self.blob_path(digest);
        let dir = self.blob_dir(digest)?;
        std::fs::set_permissions(src, std::fs::Permissions::from_mode(0o444))
            .with_context(|| format!("cache: chmod {}", src.display()))?;
        File::open(src)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cache: fsync {}", src.display()))?;
        match std::fs::rename(src, &dest) {
            Ok(()) => sync_dir(&dir),
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                let f = File::open(src)
                    .with_context(|| format!("cache: cannot open {} to store it", src.display()))?;
                self.put_reader(f, Some(*digest))
                    .with_context(|| format!("cache: storing {}", src.display()))?;
                std::fs::remove_file(src).ok();
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "cache: cannot move {} into {}",
                        src.display(),
                        dest.display()
                    )
                })
            }
        }
        if let Ok(meta) = std::fs::metadata(&dest) {
            self.remember(*digest, &meta);
        }
        Ok(dest)
    }

    /// Stores everything `r` yields. With `expected`, content with another
    /// digest is refused (nothing is stored) and the error names both.
    pub fn put_reader(&self, mut r: impl Read, expected: Option<Sha256>) -> Result<Sha256> {
        // The temp file goes in the destination folder (same filesystem, so
        // the rename is atomic). Without a known digest, stage it in the
        // blob root first and move it to its folder once it is known.
        let stage_dir = match &expected {
            Some(d) => self.blob_dir(d)?,
            None => self.root.join("sha256"),
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&stage_dir)
            .with_context(|| format!("cache: cannot create a file in {}", stage_dir.display()))?;
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        {
            let mut w = BufWriter::new(tmp.as_file_mut());
            loop {
                let n = match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e).context("cache: reading the input"),
                };
                h.update(&buf[..n]);
                w.write_all(&buf[..n]).context("cache: writing a blob")?;
            }
            w.flush().context("cache: writing a blob")?;
        }
        let got = Sha256(h.finalize().into());
        if let Some(want) = expected {
            if want != got {
                bail!("cache: content has sha256 {got}, expected {want}; not stored");
            }
        }
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o444))
            .context("cache: chmod blob")?;
        tmp.as_file().sync_all().context("cache: fsync blob")?;
        let dest = self.blob_path(&got);
        let dir = self.blob_dir(&got)?;
        tmp.persist(&dest)
            .map_err(|e| e.error)
            .with_context(|| format!("cache: cannot rename into {}", dest.display()))?;
        sync_dir(&dir);
        if dir != stage_dir {
            sync_dir(&stage_dir);
        }
        if let Ok(meta) = std::fs::metadata(&dest) {
            self.remember(got, &meta);
        }
        Ok(got)
    }

    fn blob_dir(&self, d: &Sha256) -> Result<PathBuf> {
        let dir = self.root.join("sha256").join(&d.hex()[..2]);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cache: cannot create {}", dir.display()))?;
        Ok(dir)
    }

    /// The path of blob `d` if the cache holds it with the right content.
    /// A blob whose content does not match is quarantined (with a warning)
    /// and reported missing.
    pub fn get(&self, d: &Sha256) -> Option<PathBuf> {
        let p = self.blob_path(d);
        let meta = match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => m,
            Ok(_) => {
                self.quarantine(d, &p, "is not a regular file");
                return None;
            }
            Err(_) => {
                self.forget(d);
                return None;
            }
        };
        let known = self
            .verified
            .lock()
            .ok()
            .and_then(|v| v.get(d).copied())
            .is_some_and(|s| s == Stamp::of(&meta));
        if known {
            return Some(p);
        }
        match Sha256::of_file(&p) {
            Ok(got) if got == *d => {
                self.remember(*d, &meta);
                Some(p)
            }
            Ok(got) => {
                self.quarantine(d, &p, &format!("has content with sha256 {got}"));
                None
            }
            Err(e) => {
                eprintln!("warning: cache: cannot read {}: {e:#}", p.display());
                None
            }
        }
    }

    /// Whether the cache holds blob `d` (verified).
    pub fn contains(&self, d: &Sha256) -> bool {
        self.get(d).is_some()
    }

    fn quarantine(&self, d: &Sha256, p: &Path, why: &str) {
        self.forget(d);
        let qdir = self.root.join("quarantine");
        let dest = qdir.join(format!(
            "{}.{}.{}",
            d.hex(),
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|t| t.as_nanos())
                .unwrap_or(0)
        ));
        let moved = std::fs::create_dir_all(&qdir).is_ok() && std::fs::rename(p, &dest).is_ok();
        if moved {
            eprintln!(
                "warning: cache: blob {} {why}; moved to {} and treated as missing",
                d.hex(),
                dest.display()
            );
        } else {
            let _ = std::fs::remove_file(p);
            eprintln!(
                "warning: cache: blob {} {why}; removed and treated as missing",
                d.hex()
            );
        }
    }

    /// Every digest stored (not re-verified), sorted.
    pub fn list(&self) -> Result<Vec<Sha256>> {
        let mut out = Vec::new();
        for (d, _) in self.scan()?.0 {
            out.push(d);
        }
        out.sort();
        Ok(out)
    }

    /// (blobs by digest with their paths, other files: temp debris or junk).
    #[allow(clippy::type_complexity)]
    fn scan(&self) -> Result<(Vec<(Sha256, PathBuf)>, Vec<PathBuf>)> {
        let base = self.root.join("sha256");
        let mut blobs = Vec::new();
        let mut other = Vec::new();
        for e in walkdir::WalkDir::new(&base)
            .min_depth(1)
            .max_depth(2)
            .sort_by_file_name()
        {
            let e = e.with_context(|| format!("cache: cannot list {}", base.display()))?;
            if e.file_type().is_dir() {
                continue;
            }
            let name = e.file_name().to_string_lossy();
            let parent_ok = e.depth() == 2
                && e.path()
                    .parent()
                    .and_then(|p| p.file_name())
                    .is_some_and(|p| name.len() == 64 && name.starts_with(&*p.to_string_lossy()));
            match Sha256::from_hex(&name) {
                Ok(d) if parent_ok && !name.starts_with("sha256:") => {
                    blobs.push((d, e.path().to_path_buf()))
                }
                _ => other.push(e.path().to_path_buf()),
            }
        }
        Ok((blobs, other))
    }

    /// Writes a tar holding exactly the blobs `digests` (as
    /// `sha256/ab/abcd…`) after a `DIGESTS` member listing them, one hex
    /// digest a line, sorted. Every blob must be present and intact.
    pub fn export(&self, digests: &BTreeSet<Sha256>, file: &Path) -> Result<()> {
        self.export_with(digests, &[], file)
    }

    /// [`Cache::export`], plus the Go module files `go` (digest, download
    /// path, file): listed in DIGESTS like every blob, indexed by the
    /// second member, [`crate::inputs::gomod::MEMBER`].
    fn export_with(
        &self,
        digests: &BTreeSet<Sha256>,
        go: &[(Sha256, String, PathBuf)],
        file: &Path,
    ) -> Result<()> {
        let mut paths = Vec::new();
        let mut missing = Vec::new();
        for d in digests {
            match self.get(d) {
                Some(p) => paths.push((*d, p)),
                None => missing.push(d.hex()),
            }
        }
        if !missing.is_empty() {
            bail!(
                "cache export: {} blob(s) missing from the cache {}:\n    {}\nrun `cairn fetch RECIPE` first",
                missing.len(),
                self.root.display(),
                missing.join("\n    ")
            );
        }
        let dir = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".cairn-export-")
            .tempfile_in(&dir)
            .with_context(|| format!("cache export: cannot write in {}", dir.display()))?;
        {
            let mut b = tar::Builder::new(BufWriter::new(tmp.as_file()));
            let mut all = digests.clone();
            // A module file whose bytes are already a member (another
            // file's, or a blob's) is not written twice.
            for (d, _, p) in go {
                if all.insert(*d) {
                    paths.push((*d, p.clone()));
                }
            }
            let list: String = all.iter().map(|d| format!("{}\n", d.hex())).collect();
            append(&mut b, DIGESTS_MEMBER, list.len() as u64, list.as_bytes())?;
            if !go.is_empty() {
                let pairs: Vec<(Sha256, String)> =
                    go.iter().map(|(d, r, _)| (*d, r.clone())).collect();
                let index = crate::inputs::gomod::index(&pairs);
                append(
                    &mut b,
                    crate::inputs::gomod::MEMBER,
                    index.len() as u64,
                    index.as_bytes(),
                )?;
            }
            for (d, p) in &paths {
                let f = File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
                let len = f.metadata()?.len();
                append(&mut b, &member_name(d), len, BufReader::new(f))?;
            }
            let w = b.into_inner().context("cache export: finishing the tar")?;
            w.into_inner()
                .map_err(|e| e.into_error())
                .context("cache export: writing")?;
        }
        tmp.as_file().sync_all().context("cache export: fsync")?;
        tmp.persist(file)
            .map_err(|e| e.error)
            .with_context(|| format!("cache export: cannot write {}", file.display()))?;
        Ok(())
    }

    /// Adds the blobs of a tar made by `export`. Everything is checked
    /// before anything is added: the first member is `DIGESTS`; every other
    /// member is a regular file named `sha256/ab/abcd…` for a digest on that
    /// list, appears once and has exactly that content; every listed digest
    /// is present. Anything else refuses the whole file.
    pub fn import(&self, file: &Path) -> Result<ImportReport> {
        let (listed, go) = check_export(file)
            .with_context(|| format!("cache import: {} refused", file.display()))?;
        let mut ar = open_tar(file)?;
        let mut report = ImportReport::default();
        while let Some(entry) = next_member(&mut ar).context("cache import: reading the tar")? {
            let name = String::from_utf8_lossy(&entry.name).into_owned();
            if name == DIGESTS_MEMBER || name == crate::inputs::gomod::MEMBER {
                continue;
            }
            let d = parse_member_name(&name)
                .with_context(|| format!("cache import: {name:?} changed while importing"))?;
            if !listed.contains(&d) {
                bail!("cache import: {name:?} changed while importing");
            }
            if self.contains(&d) {
                report.present += 1;
                continue;
            }
            self.put_reader(ar.data(), Some(d))
                .with_context(|| format!("cache import: {name}"))?;
            report.added += 1;
        }
        // Go module files: each from its (now verified) blob to its path.
        for (d, rel) in &go {
            let blob = self
                .get(d)
                .with_context(|| format!("cache import: {rel}: blob {d} is not in the cache"))?;
            if crate::inputs::gomod::place(&self.root, rel, &blob)? {
                report.go_added += 1;
            }
        }
        Ok(report)
    }

    /// Removes every blob `keep` does not name, temp files left by crashed
    /// writers (older than a day), quarantined blobs and the stage cache's
    /// volume images. Returns (files
    /// removed, bytes freed).
    pub fn gc(&self, keep: &GcKeep) -> Result<(usize, u64)> {
        let nothing = BTreeSet::new();
        let keep = match keep {
            GcKeep::Named(k) => k,
            GcKeep::Nothing => &nothing,
        };
        let (blobs, other) = self.scan()?;
        let mut removed = 0usize;
        let mut freed = 0u64;
        let mut rm = |p: &Path| -> Result<()> {
            let len = std::fs::symlink_metadata(p).map(|m| m.len()).unwrap_or(0);
            match std::fs::remove_file(p) {
                Ok(()) => {
                    removed += 1;
                    freed += len;
                    Ok(())
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => {
                    Err(e).with_context(|| format!("cache gc: cannot remove {}", p.display()))
                }
            }
        };
        for (d, p) in &blobs {
            if !keep.contains(d) {
                rm(p)?;
                self.forget(d);
            }
        }
        let now = SystemTime::now();
        let is_old = |p: &Path| {
            std::fs::symlink_metadata(p)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > STALE_TEMP)
        };
        let is_temp = |p: &Path| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".tmp-"))
        };
        for p in &other {
            // Unknown files that are not our temps are left alone: the
            // user may have put them there.
            if is_temp(p) && is_old(p) {
                rm(p)?;
            }
        }
        // Quarantined blobs, and the stage cache's volume images (stage
        // results, like the stage blobs above that no recipe names).
        for folder in ["quarantine", VOLUMES] {
            if let Ok(rd) = std::fs::read_dir(self.root.join(folder)) {
                for e in rd.flatten() {
                    let p = e.path();
                    if e.file_type().map(|t| t.is_file()).unwrap_or(false)
                        && (!is_temp(&p) || is_old(&p))
                    {
                        rm(&p)?;
                    }
                }
            }
        }
        Ok((removed, freed))
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn member_name(d: &Sha256) -> String {
    let h = d.hex();
    format!("sha256/{}/{}", &h[..2], h)
}

/// The digest a member name stands for, if it is exactly `sha256/ab/abcd…`
/// in lower-case hex.
fn parse_member_name(name: &str) -> Option<Sha256> {
    let rest = name.strip_prefix("sha256/")?;
    let (dir, hex) = rest.split_once('/')?;
    let lower = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if dir.len() != 2 || hex.len() != 64 || !hex.starts_with(dir) || !lower(hex) {
        return None;
    }
    Sha256::from_hex(hex).ok()
}

fn append<W: Write>(b: &mut tar::Builder<W>, name: &str, len: u64, data: impl Read) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(len);
    h.set_mode(0o444);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    b.append_data(&mut h, name, data)
        .with_context(|| format!("cache export: writing {name}"))
}

/// First pass of `import`: returns the listed digests if the whole file is
/// a faithful export.
fn check_export(file: &Path) -> Result<(BTreeSet<Sha256>, crate::inputs::gomod::Index)> {
    let mut ar = open_tar(file)?;
    let mut listed: Option<BTreeSet<Sha256>> = None;
    let mut seen = BTreeSet::new();
    let mut go: Option<crate::inputs::gomod::Index> = None;
    while let Some(entry) = next_member(&mut ar)? {
        let name = String::from_utf8_lossy(&entry.name).into_owned();
        if name == crate::inputs::gomod::MEMBER {
            // Only right after DIGESTS, once.
            let (Some(list), None, true) = (&listed, &go, seen.is_empty()) else {
                bail!("member {name:?} must come once, right after {DIGESTS_MEMBER}");
            };
            if entry.size > crate::inputs::gomod::MAX_INDEX {
                bail!(
                    "{name} is {} bytes (limit {})",
                    entry.size,
                    crate::inputs::gomod::MAX_INDEX
                );
            }
            let mut text = String::new();
            ar.data()
                .read_to_string(&mut text)
                .with_context(|| format!("{name} is not text"))?;
            let index = crate::inputs::gomod::parse_index(&text)?;
            if let Some((d, p)) = index.iter().find(|(d, _)| !list.contains(d)) {
                bail!("{name}: {p} has digest {d}, which DIGESTS does not list");
            }
            go = Some(index);
            continue;
        }
        let Some(list) = &listed else {
            if name != DIGESTS_MEMBER {
                bail!("the first member is {name:?}, not {DIGESTS_MEMBER}");
            }
            if entry.size > MAX_DIGESTS {
                bail!("DIGESTS is {} bytes (limit {MAX_DIGESTS})", entry.size);
            }
            let mut text = String::new();
            ar.data()
                .read_to_string(&mut text)
                .context("DIGESTS is not text")?;
            let mut set = BTreeSet::new();
            for (i, line) in text.lines().enumerate() {
                let d = Sha256::from_hex(line.trim())
                    .with_context(|| format!("DIGESTS line {}: {line:?}", i + 1))?;
                if !set.insert(d) {
                    bail!("DIGESTS line {}: {line:?} is listed twice", i + 1);
                }
            }
            listed = Some(set);
            continue;
        };
        let Some(d) = parse_member_name(&name) else {
            bail!("member {name:?} is not named sha256/ab/abcd… (64 lower-case hex digits)");
        };
        if !list.contains(&d) {
            bail!("member {name:?} is not listed in DIGESTS");
        }
        if !seen.insert(d) {
            bail!("member {name:?} appears twice");
        }
        let mut h = sha2::Sha256::new();
        std::io::copy(&mut ar.data(), &mut HashWriter(&mut h))
            .with_context(|| format!("reading member {name:?}"))?;
        let got = Sha256(h.finalize().into());
        if got != d {
            bail!("member {name:?} has content with sha256 {got}, expected {d}");
        }
    }
    let Some(list) = listed else {
        bail!("no {DIGESTS_MEMBER} member: not a cairn cache export");
    };
    let absent: Vec<String> = list.difference(&seen).map(|d| d.hex()).collect();
    if !absent.is_empty() {
        bail!(
            "{} digest(s) listed in DIGESTS have no member:\n    {}",
            absent.len(),
            absent.join("\n    ")
        );
    }
    Ok((list, go.unwrap_or_default()))
}

/// The most DIGESTS may hold: a million digests (65 bytes a line).
const MAX_DIGESTS: u64 = 65 << 20;

/// `file` opened with cairn's bounded tar reader.
fn open_tar(file: &Path) -> Result<TarReader<BufReader<File>>> {
    let f = File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    Ok(TarReader::new(BufReader::new(f)))
}

/// The next member of an export: a regular file with a plain relative
/// name (no `..`, no leading `/`), or an error naming it. Nothing is ever
/// written under a member's name: [`parse_member_name`] turns it into a
/// digest, and the blob is stored under that.
fn next_member(ar: &mut TarReader<BufReader<File>>) -> Result<Option<RawEntry>> {
    let Some(entry) = ar
        .next_entry()
        .map_err(|e| anyhow!("damaged tar file: {e}"))?
    else {
        return Ok(None);
    };
    let name = String::from_utf8_lossy(&entry.name).into_owned();
    match split_name(&entry.name) {
        Name::Parts(_) => {}
        Name::Absolute => bail!("member {name:?} is an absolute path"),
        Name::DotDot => bail!("member {name:?} climbs out with \"..\""),
        Name::Nul => bail!("member {name:?} has a NUL byte in its name"),
    }
    if entry.kind != Kind::File {
        bail!("member {name:?} is a {:?}, not a regular file", entry.kind);
    }
    Ok(Some(entry))
}

struct HashWriter<'a>(&'a mut sha2::Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flip_byte(p: &Path) {
        // Cached blobs are read-only; the shared helper writes in place.
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
        testkit::flip_byte(p, 0);
    }

    #[test]
    fn put_moved_renames_the_file_in_and_get_checks_it() {
        let t = tempfile::tempdir().unwrap();
        let c = Cache::open(t.path().join("c")).unwrap();
        let src = t.path().join("volume.img");
        std::fs::write(&src, b"a big volume").unwrap();
        let d = Sha256::of_bytes(b"a big volume");
        let ino = std::fs::metadata(&src).unwrap().ino();
        let blob = c.put_moved(&src, &d).unwrap();
        assert!(!src.exists(), "moved, not copied");
        assert_eq!(blob, c.blob_path(&d));
        assert_eq!(std::fs::metadata(&blob).unwrap().ino(), ino);
        assert_eq!(
            std::fs::metadata(&blob).unwrap().permissions().mode() & 0o777,
            0o444
        );
        assert_eq!(c.get(&d), Some(blob.clone()));
        // Control: a blob whose bytes are not its name is not handed out.
        flip_byte(&blob);
        let fresh = Cache::open(t.path().join("c")).unwrap();
        assert_eq!(fresh.get(&d), None);
    }

    #[test]
    fn put_get_layout_and_no_temp_left() {
        let t = tempfile::tempdir().unwrap();
        let c = Cache::open(t.path().join("c")).unwrap();
        let src = t.path().join("f");
        std::fs::write(&src, b"hello").unwrap();
        let d = c.put_file(&src).unwrap();
        assert_eq!(d, Sha256::of_bytes(b"hello"));
        let p = c.get(&d).unwrap();
        let h = d.hex();
        assert!(p.ends_with(format!("sha256/{}/{}", &h[..2], h)));
        assert_eq!(std::fs::read(&p).unwrap(), b"hello");
        // Storing again (as a concurrent writer would) is harmless.
        assert_eq!(c.put_reader(&b"hello"[..], Some(d)).unwrap(), d);
        let leftovers: Vec<_> = walkdir::WalkDir::new(c.root())
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        assert_eq!(c.list().unwrap(), vec![d]);
    }

    #[test]
    fn expected_digest_mismatch_stores_nothing() {
        let t = tempfile::tempdir().unwrap();
        let c = Cache::open(t.path()).unwrap();
        let want = Sha256::of_bytes(b"good");
        let e = c.put_reader(&b"evil"[..], Some(want)).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains(&want.hex()), "{msg}");
        assert!(msg.contains(&Sha256::of_bytes(b"evil").hex()), "{msg}");
        assert!(!c.contains(&want));
        assert!(c.list().unwrap().is_empty());
    }

    #[test]
    fn concurrent_writers_of_one_digest() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let want = Sha256::of_bytes(&data);
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let root = root.clone();
                let data = data.clone();
                std::thread::spawn(move || {
                    let c = Cache::open(root).unwrap();
                    c.put_reader(&data[..], Some(want)).unwrap()
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), want);
        }
        let c = Cache::open(&root).unwrap();
        assert!(c.contains(&want));
        assert_eq!(c.list().unwrap(), vec![want]);
    }

    #[test]
    fn flipped_byte_is_missing_and_quarantined() {
        let t = tempfile::tempdir().unwrap();
        let c = Cache::open(t.path()).unwrap();
        let d = c.put_reader(&b"precious bytes"[..], None).unwrap();
        assert!(c.contains(&d));
        flip_byte(&c.blob_path(&d));
        // Same process, same Cache: the changed file is re-hashed.
        assert_eq!(c.get(&d), None);
        assert!(!c.blob_path(&d).exists());
        let q: Vec<_> = std::fs::read_dir(c.root().join("quarantine"))
            .unwrap()
            .collect();
        assert_eq!(q.len(), 1);
        // A fresh process (new Cache) sees the same.
        let d2 = c.put_reader(&b"other"[..], None).unwrap();
        flip_byte(&c.blob_path(&d2));
        let fresh = Cache::open(t.path()).unwrap();
        assert!(!fresh.contains(&d2));
    }

    #[test]
    fn export_import_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let a = Cache::open(t.path().join("a")).unwrap();
        let d1 = a.put_reader(&b"one"[..], None).unwrap();
        let d2 = a.put_reader(&b"two"[..], None).unwrap();
        let d3 = a.put_reader(&b"not exported"[..], None).unwrap();
        let want: BTreeSet<_> = [d1, d2].into_iter().collect();
        let tar1 = t.path().join("x.tar");
        a.export(&want, &tar1).unwrap();
        // Deterministic: the same set gives the same bytes.
        let tar2 = t.path().join("y.tar");
        a.export(&want, &tar2).unwrap();
        assert_eq!(std::fs::read(&tar1).unwrap(), std::fs::read(&tar2).unwrap());

        let b = Cache::open(t.path().join("b")).unwrap();
        let r = b.import(&tar1).unwrap();
        assert_eq!(
            r,
            ImportReport {
                added: 2,
                present: 0,
                go_added: 0
            }
        );
        assert_eq!(b.list().unwrap(), want.iter().copied().collect::<Vec<_>>());
        assert!(!b.contains(&d3));
        assert_eq!(std::fs::read(b.get(&d1).unwrap()).unwrap(), b"one");
        let r = b.import(&tar1).unwrap();
        assert_eq!(
            r,
            ImportReport {
                added: 0,
                present: 2,
                go_added: 0
            }
        );

        // Exporting something absent names it.
        let absent = Sha256::of_bytes(b"absent");
        let e = b
            .export(&[absent].into_iter().collect(), &t.path().join("z.tar"))
            .unwrap_err();
        assert!(format!("{e:#}").contains(&absent.hex()));
    }

    /// runtime = "kubernetes": the Go module files ride along, content
    /// addressed, and land under their download paths on import; a file
    /// already there is left alone; the index cannot name a path outside
    /// the download folder, a digest DIGESTS lacks, or come late.
    #[test]
    fn go_module_files_travel_in_an_export() {
        let t = tempfile::tempdir().unwrap();
        let a = Cache::open(t.path().join("a")).unwrap();
        let dl = crate::inputs::gomod::download_dir(a.root());
        let files = [
            ("example.com/m/@v/v1.0.0.zip", b"zip bytes".as_slice()),
            ("example.com/m/@v/v1.0.0.mod", b"module example.com/m\n"),
            (
                "example.com/!upper/@v/v0.1.0.mod",
                b"module example.com/Upper\n",
            ),
            // Not carried: a version list and the checksum database.
            ("example.com/m/@v/list", b"v1.0.0\n"),
            ("sumdb/sum.golang.org/latest", b"tree"),
        ];
        for (rel, bytes) in files {
            let p = dl.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, bytes).unwrap();
        }
        let lock = t.path().join("r.lock");
        std::fs::write(&lock, "").unwrap();
        let tar = t.path().join("go.tar");
        let go: Vec<(Sha256, String, PathBuf)> = crate::inputs::gomod::files(a.root())
            .unwrap()
            .into_iter()
            .map(|(r, p)| (Sha256::of_file(&p).unwrap(), r, p))
            .collect();
        assert_eq!(go.len(), 3);
        a.export_with(&BTreeSet::new(), &go, &tar).unwrap();
        let b = Cache::open(t.path().join("b")).unwrap();
        let r = b.import(&tar).unwrap();
        assert_eq!(r.go_added, 3);
        let bdl = crate::inputs::gomod::download_dir(b.root());
        assert_eq!(
            std::fs::read(bdl.join("example.com/m/@v/v1.0.0.zip")).unwrap(),
            b"zip bytes"
        );
        assert!(!bdl.join("example.com/m/@v/list").exists());
        assert!(!bdl.join("sumdb").exists());
        assert_eq!(b.import(&tar).unwrap().go_added, 0);

        // Hostile indexes: refused, and nothing placed.
        let d = Sha256::of_bytes(b"x");
        let list = format!("{d}\n");
        let reg = tar::EntryType::Regular;
        let m = member_name(&d);
        let gm = crate::inputs::gomod::MEMBER;
        let climb = format!("{d} ../../../etc/@v/v1.zip\n");
        let unlisted = format!("{} a.b/m/@v/v1.zip\n", Sha256::of_bytes(b"y"));
        let fine = format!("{d} a.b/m/@v/v1.zip\n");
        type Members<'a> = Vec<(&'a str, &'a [u8])>;
        let cases: Vec<(&str, Members)> = vec![
            (
                "climbs",
                vec![
                    (DIGESTS_MEMBER, list.as_bytes()),
                    (gm, climb.as_bytes()),
                    (&m, b"x"),
                ],
            ),
            (
                "unlisted",
                vec![
                    (DIGESTS_MEMBER, list.as_bytes()),
                    (gm, unlisted.as_bytes()),
                    (&m, b"x"),
                ],
            ),
            (
                "late",
                vec![
                    (DIGESTS_MEMBER, list.as_bytes()),
                    (&m, b"x"),
                    (gm, fine.as_bytes()),
                ],
            ),
        ];
        for (what, members) in cases {
            let p = t.path().join(format!("{what}.tar"));
            let ms: Vec<(&str, &[u8], tar::EntryType)> =
                members.iter().map(|(n, d)| (*n, *d, reg)).collect();
            raw_tar(&p, &ms);
            let c = Cache::open(t.path().join(format!("c-{what}"))).unwrap();
            assert!(c.import(&p).is_err(), "{what}: accepted");
            assert!(c.list().unwrap().is_empty(), "{what}: added a blob");
            assert!(
                !crate::inputs::gomod::download_dir(c.root()).exists(),
                "{what}"
            );
        }
        // Control: the same index in its place is accepted.
        let p = t.path().join("fine.tar");
        raw_tar(
            &p,
            &[
                (DIGESTS_MEMBER, list.as_bytes(), reg),
                (gm, fine.as_bytes(), reg),
                (&m, b"x", reg),
            ],
        );
        let c = Cache::open(t.path().join("c-fine")).unwrap();
        assert_eq!(c.import(&p).unwrap().go_added, 1);
    }

    /// Builds a tar from (name, content, type) members.
    fn raw_tar(path: &Path, members: &[(&str, &[u8], tar::EntryType)]) {
        let mut b = tar::Builder::new(File::create(path).unwrap());
        for (name, data, ty) in members {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*ty);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            // Bypass the builder's path checks: write the name raw.
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.finish().unwrap();
    }

    #[test]
    fn import_refuses_tampered_or_tricky_tars() {
        let t = tempfile::tempdir().unwrap();
        let good = b"good".as_slice();
        let d = Sha256::of_bytes(good);
        let list = format!("{}\n", d.hex());
        let m = member_name(&d);
        let reg = tar::EntryType::Regular;
        type Member = (String, Vec<u8>, tar::EntryType);
        let cases: Vec<(&str, Vec<Member>)> = vec![
            (
                "content changed",
                vec![
                    (DIGESTS_MEMBER.into(), list.clone().into(), reg),
                    (m.clone(), b"evil".to_vec(), reg),
                ],
            ),
            (
                "extra member",
                vec![
                    (DIGESTS_MEMBER.into(), list.clone().into(), reg),
                    (m.clone(), good.to_vec(), reg),
                    ("sha256/../../etc/x".into(), good.to_vec(), reg),
                ],
            ),
            (
                "path trick",
                vec![
                    (DIGESTS_MEMBER.into(), list.clone().into(), reg),
                    (format!("./{m}"), good.to_vec(), reg),
                ],
            ),
            (
                "symlink",
                vec![
                    (DIGESTS_MEMBER.into(), list.clone().into(), reg),
                    (m.clone(), Vec::new(), tar::EntryType::Symlink),
                ],
            ),
            (
                "listed but absent",
                vec![(DIGESTS_MEMBER.into(), list.clone().into(), reg)],
            ),
            ("no DIGESTS", vec![(m.clone(), good.to_vec(), reg)]),
            (
                "unlisted blob",
                vec![
                    (DIGESTS_MEMBER.into(), Vec::new(), reg),
                    (m.clone(), good.to_vec(), reg),
                ],
            ),
        ];
        for (what, members) in cases {
            let p = t.path().join("bad.tar");
            let ms: Vec<(&str, &[u8], tar::EntryType)> = members
                .iter()
                .map(|(n, d, ty)| (n.as_str(), d.as_slice(), *ty))
                .collect();
            raw_tar(&p, &ms);
            let c = Cache::open(t.path().join(format!("c-{}", what.replace(' ', "-")))).unwrap();
            let e = c.import(&p);
            assert!(e.is_err(), "{what}: accepted");
            assert!(c.list().unwrap().is_empty(), "{what}: added something");
        }
        // A tar with a good blob first and a bad one after adds nothing.
        let d2 = Sha256::of_bytes(b"second");
        let list2 = format!("{}\n{}\n", d.hex(), d2.hex());
        let p = t.path().join("half.tar");
        let m2 = member_name(&d2);
        raw_tar(
            &p,
            &[
                (DIGESTS_MEMBER, list2.as_bytes(), reg),
                (&m, good, reg),
                (&m2, b"tampered", reg),
            ],
        );
        let c = Cache::open(t.path().join("half")).unwrap();
        let e = c.import(&p).unwrap_err();
        assert!(format!("{e:#}").contains(&d2.hex()), "{e:#}");
        assert!(c.list().unwrap().is_empty());
    }

    #[test]
    fn gc_keeps_only_the_kept() {
        let t = tempfile::tempdir().unwrap();
        let c = Cache::open(t.path()).unwrap();
        let keep = c.put_reader(&b"keep me"[..], None).unwrap();
        let drop1 = c.put_reader(&b"drop me"[..], None).unwrap();
        let drop2 = c.put_reader(&b"drop me too!"[..], None).unwrap();
        // A fresh temp file (a writer in flight) survives gc.
        let inflight = c.root().join("sha256").join(".tmp-inflight");
        std::fs::write(&inflight, b"x").unwrap();
        // An old one is debris.
        let stale = c.root().join("sha256").join(".tmp-stale");
        std::fs::write(&stale, b"yz").unwrap();
        filetime::set_file_mtime(&stale, filetime::FileTime::from_unix_time(1_000_000, 0)).unwrap();
        // A stage volume image goes; one being copied in right now stays.
        let vols = c.root().join(VOLUMES);
        std::fs::create_dir_all(&vols).unwrap();
        std::fs::write(vols.join("model-volume-ab"), b"vol").unwrap();
        std::fs::write(vols.join(".tmp-copying"), b"v").unwrap();
        let (n, bytes) = c.gc(&GcKeep::Named([keep].into_iter().collect())).unwrap();
        assert_eq!(n, 4);
        assert_eq!(bytes, 7 + 12 + 2 + 3);
        assert!(!vols.join("model-volume-ab").exists() && vols.join(".tmp-copying").exists());
        assert!(c.contains(&keep));
        assert!(!c.contains(&drop1) && !c.contains(&drop2));
        assert!(inflight.exists() && !stale.exists());
        assert_eq!(
            c.gc(&GcKeep::Named([keep].into_iter().collect())).unwrap(),
            (0, 0)
        );
    }

    #[test]
    fn gc_keeping_nothing_empties_the_cache() {
        let t = tempfile::tempdir().unwrap();
        let c = Cache::open(t.path()).unwrap();
        let a = c.put_reader(&b"one"[..], None).unwrap();
        let b = c.put_reader(&b"two!"[..], None).unwrap();
        assert_eq!(c.gc(&GcKeep::Nothing).unwrap(), (2, 3 + 4));
        assert!(!c.contains(&a) && !c.contains(&b));
        assert!(c.list().unwrap().is_empty());
    }
}
