//! SHA-256 digests as a type, never a bare string.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::Digest;

use crate::host::direct::{AlignedBuf, Reader};
use crate::host::progress::Progress;

/// Files at least this large get a progress bar when hashed with
/// [`Sha256::of_file_with_progress`].
pub const PROGRESS_MIN: u64 = 64 << 20;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256(pub [u8; 32]);

#[derive(Debug, thiserror::Error)]
#[error("not a sha256 digest: expected 64 hex digits")]
pub struct BadDigest;

impl Sha256 {
    pub fn from_hex(s: &str) -> Result<Self, BadDigest> {
        let s = s.strip_prefix("sha256:").unwrap_or(s);
        if s.len() != 64 {
            return Err(BadDigest);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| BadDigest)?;
        Ok(Sha256(out))
    }

    pub fn of_bytes(b: &[u8]) -> Self {
        Sha256(sha2::Sha256::digest(b).into())
    }

    /// The sha256 of each file, in order, hashed by one thread per core.
    pub fn of_files(files: &[std::path::PathBuf]) -> anyhow::Result<Vec<Sha256>> {
        crate::host::parallel::map(files, crate::host::parallel::cores(), |f| {
            Sha256::of_file(f).with_context(|| format!("hash {}", f.display()))
        })
    }

    /// Streams a file through SHA-256 with a large buffer.
    pub fn of_file(path: &Path) -> anyhow::Result<Self> {
        let f = std::fs::File::open(path)
            .with_context(|| format!("cannot open {} to hash it", path.display()))?;
        Sha256::of_open_file(Reader::buffered(f), path, None)
    }

    /// Like [`Sha256::of_file`], with a progress bar labelled `label` on
    /// stderr for a file of at least [`PROGRESS_MIN`] bytes (media, not
    /// manifests): bytes, rate and ETA on a terminal, plain lines otherwise.
    pub fn of_file_with_progress(path: &Path, label: &str) -> anyhow::Result<Self> {
        Sha256::of_large_file(path, label, false)
    }

    /// Like [`Sha256::of_file_with_progress`], for a medium this build has
    /// just written and will not read again: read around the page cache
    /// where the file system allows ([`crate::host::direct`]), so hashing
    /// GBs of media takes no memory and evicts nothing.
    pub fn of_medium(path: &Path, label: &str) -> anyhow::Result<Self> {
        Sha256::of_large_file(path, label, true)
    }

    fn of_large_file(path: &Path, label: &str, direct: bool) -> anyhow::Result<Self> {
        let (f, len) = open_to_hash(path)?;
        let r = if direct {
            Reader::new(f, path)
        } else {
            Reader::buffered(f)
        };
        if len < PROGRESS_MIN {
            return Sha256::of_open_file(r, path, None);
        }
        let mut p = Progress::new(label, len);
        let d = Sha256::of_open_file(r, path, Some(&mut p));
        match d {
            Ok(_) => p.finish(),
            Err(_) => p.abandon(),
        }
        d
    }

    /// Hashes a file. The holes of a sparse file (a raw disk is mostly
    /// holes) read as zeros by definition, so they are hashed as zeros
    /// without being read: on ext4, reading the holes of a file written a
    /// moment ago costs several times the hashing itself. Files whose
    /// holes cannot be asked for (pipes, file systems without SEEK_HOLE)
    /// are read in full.
    fn of_open_file(
        mut r: Reader,
        path: &Path,
        progress: Option<&mut Progress>,
    ) -> anyhow::Result<Self> {
        let meta = r
            .file()
            .metadata()
            .with_context(|| format!("cannot stat {}", path.display()))?;
        if !meta.is_file() {
            return Sha256::of_reader(r.into_file(), path, progress);
        }
        let len = meta.len();
        let mut s = Spliced::new(progress);
        s.range(&mut r, path, 0, len)?;
        // A file that grew while it was hashed is not the file measured.
        let now = r
            .file()
            .metadata()
            .with_context(|| format!("cannot stat {}", path.display()))?
            .len();
        if now != len {
            anyhow::bail!("{} changed size while it was hashed", path.display());
        }
        Ok(s.finish())
    }

    /// Hashes everything `r` (read from `path`, for messages) yields,
    /// reporting the bytes read to `progress`.
    pub fn of_reader(
        mut r: impl Read,
        path: &Path,
        mut progress: Option<&mut Progress>,
    ) -> anyhow::Result<Self> {
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        loop {
            let n = match r.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
            };
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            done += n as u64;
            if let Some(p) = progress.as_deref_mut() {
                p.update(done);
            }
        }
        Ok(Sha256(h.finalize().into()))
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// One SHA-256 over byte ranges of several files, in order, as if they
/// were one file: what a raw disk will hold, hashed from the files copied
/// into it (and its own bytes between them). Holes are hashed as zeros
/// without being read; data is read through a [`Reader`] (from the page
/// cache where it holds it, else around it).
pub struct Spliced<'a> {
    h: sha2::Sha256,
    /// Grown to what the largest read needs, up to [`SPLICED_READ`]: most
    /// files hashed are small (a tree's), and a zeroed buffer of MiBs for
    /// each doubled the time of a tree's key.
    buf: AlignedBuf,
    done: u64,
    progress: Option<&'a mut Progress>,
    /// Sees every byte hashed, at its offset in the file being read (the
    /// data map check of `cairn verify` rides on the digest's one read).
    tap: Option<&'a mut dyn Tap>,
}

/// What a [`Spliced`] hash passes on as it reads one file: data at an
/// offset, or a hole of `n` zero bytes (never read).
pub trait Tap {
    fn data(&mut self, offset: u64, bytes: &[u8]);
    fn zeros(&mut self, offset: u64, n: u64);
}

/// `path` opened to be hashed, and its length.
fn open_to_hash(path: &Path) -> anyhow::Result<(std::fs::File, u64)> {
    let f = std::fs::File::open(path)
        .with_context(|| format!("cannot open {} to hash it", path.display()))?;
    let len = f
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len();
    Ok((f, len))
}

/// The largest read [`Spliced`] makes.
const SPLICED_READ: usize = 4 << 20;

/// What holes are hashed from.
static ZEROS: [u8; 64 << 10] = [0u8; 64 << 10];

impl<'a> Spliced<'a> {
    pub fn new(progress: Option<&'a mut Progress>) -> Self {
        Spliced {
            h: sha2::Sha256::new(),
            buf: AlignedBuf::new(0),
            done: 0,
            progress,
            tap: None,
        }
    }

    /// As [`Spliced::new`], passing every byte of the ranges hashed to `tap`.
    pub fn with_tap(tap: &'a mut dyn Tap) -> Self {
        Spliced {
            tap: Some(tap),
            ..Spliced::new(None)
        }
    }

    fn zeros(&mut self, offset: u64, mut n: u64) {
        if let Some(t) = self.tap.as_deref_mut() {
            t.zeros(offset, n);
        }
        while n > 0 {
            let k = n.min(ZEROS.len() as u64) as usize;
            self.h.update(&ZEROS[..k]);
            n -= k as u64;
            self.advance(k as u64);
        }
    }

    fn advance(&mut self, n: u64) {
        self.done += n;
        if let Some(p) = self.progress.as_deref_mut() {
            p.update(self.done);
        }
    }

    /// Hashes bytes `[start, end)` of the file `r` reads (`path` for
    /// messages); the range must lie inside the file.
    pub fn range(
        &mut self,
        r: &mut Reader,
        path: &Path,
        start: u64,
        end: u64,
    ) -> anyhow::Result<()> {
        if end <= start {
            return Ok(());
        }
        // A file system that cannot tell its holes: all of it is data.
        let runs = crate::host::direct::data_runs(r.file(), start, end)
            .unwrap_or_else(|| vec![(start, end)]);
        let mut pos = start;
        // Each data run, after the hole before it; then the hole to the end.
        for (a, b) in runs.into_iter().chain(std::iter::once((end, end))) {
            let (a, b) = (a.max(pos), b.max(pos));
            self.zeros(pos, a - pos);
            pos = a;
            while pos < b {
                let want = (b - pos).min(SPLICED_READ as u64) as usize;
                if self.buf.len() < want {
                    self.buf = AlignedBuf::new(want);
                }
                let n = match r.read_at(&mut self.buf, want, pos) {
                    Ok(0) => anyhow::bail!("{} shrank while it was hashed", path.display()),
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(e).with_context(|| format!("cannot read {}", path.display()))
                    }
                };
                self.h.update(&self.buf.as_slice()[..n]);
                if let Some(t) = self.tap.as_deref_mut() {
                    t.data(pos, &self.buf.as_slice()[..n]);
                }
                pos += n as u64;
                self.advance(n as u64);
            }
        }
        Ok(())
    }

    /// Hashes the whole file at `path`.
    pub fn file(&mut self, path: &Path) -> anyhow::Result<u64> {
        let (f, len) = open_to_hash(path)?;
        self.range(&mut Reader::new(f, path), path, 0, len)?;
        Ok(len)
    }

    pub fn finish(self) -> Sha256 {
        Sha256(self.h.finalize().into())
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl serde::Serialize for Sha256 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> serde::Deserialize<'de> for Sha256 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Sha256::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// A digest of a folder tree: sorted relative paths, entry kinds (folder,
/// file, executable file, symlink) and contents. Like git, only the
/// executable bit of the mode counts, so a checkout's umask does not change
/// it. Symlinks are hashed as their target text, never followed.
pub fn tree_digest(dir: &Path) -> anyhow::Result<Sha256> {
    use std::os::unix::fs::PermissionsExt;
    let mut h = sha2::Sha256::new();
    for e in walkdir::WalkDir::new(dir).min_depth(1).sort_by_file_name() {
        let e = e?;
        let rel = e.path().strip_prefix(dir)?;
        let meta = e.path().symlink_metadata()?;
        h.update(rel.to_string_lossy().as_bytes());
        h.update([0]);
        let ft = meta.file_type();
        if ft.is_symlink() {
            h.update(b"link\0");
            h.update(std::fs::read_link(e.path())?.to_string_lossy().as_bytes());
        } else if ft.is_dir() {
            h.update(b"dir\0");
        } else if ft.is_file() {
            let exec = meta.permissions().mode() & 0o111 != 0;
            h.update(if exec { b"exec\0" } else { b"file\0" });
            h.update(Sha256::of_file(e.path())?.0);
        } else {
            anyhow::bail!(
                "{}: only files, folders and symlinks can be digested",
                e.path().display()
            );
        }
        h.update([0]);
    }
    Ok(Sha256(h.finalize().into()))
}

/// A digest of a model or other pinned input: the file's sha256, or the
/// tree digest of a folder.
pub fn tree_or_file_digest(path: &Path) -> anyhow::Result<Sha256> {
    if path.is_dir() {
        tree_digest(path)
    } else {
        Sha256::of_file(path)
    }
}

/// Where content with digest `d` lives in a content-addressed store
/// rooted at `root` (cairn's cache): `root/sha256/AB/ABCD...`.
pub fn blob_path(root: &Path, d: &Sha256) -> PathBuf {
    let h = d.hex();
    root.join("sha256").join(&h[..2]).join(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn of_files_hashes_each_file_in_order() {
        let d = tempfile::tempdir().unwrap();
        let files: Vec<std::path::PathBuf> = (0..37)
            .map(|n| {
                let p = d.path().join(format!("f{n}"));
                std::fs::write(&p, vec![n as u8; n * 1000]).unwrap();
                p
            })
            .collect();
        let got = Sha256::of_files(&files).unwrap();
        let want: Vec<Sha256> = files.iter().map(|f| Sha256::of_file(f).unwrap()).collect();
        assert_eq!(got, want);
        // A file that cannot be read is an error naming it, not a gap.
        let mut bad = files.clone();
        bad.insert(5, d.path().join("missing"));
        let e = format!("{:#}", Sha256::of_files(&bad).unwrap_err());
        assert!(e.contains("missing"), "{e}");
    }

    #[test]
    fn hashing_with_progress_counts_every_byte() {
        let data: Vec<u8> = (0..(3 << 20) + 17).map(|i| (i % 251) as u8).collect();
        let mut p = Progress::with_mode("hash x", data.len() as u64, false);
        let d = Sha256::of_reader(&data[..], Path::new("x"), Some(&mut p)).unwrap();
        assert_eq!(d, Sha256::of_bytes(&data));
        assert_eq!(p.done(), data.len() as u64);
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        std::fs::write(&f, &data).unwrap();
        assert_eq!(Sha256::of_file_with_progress(&f, "hash f").unwrap(), d);
        assert!(
            Sha256::of_file_with_progress(&t.path().join("nope"), "hash")
                .unwrap_err()
                .to_string()
                .contains("nope")
        );
    }

    /// Sparse files hash as their full content: holes at the start, the
    /// middle and the end, data runs not on block boundaries. Control: the
    /// same bytes written densely (no holes) and streamed give the same.
    #[test]
    fn sparse_files_hash_as_their_bytes() {
        use std::io::{Seek as _, SeekFrom, Write as _};
        let t = tempfile::tempdir().unwrap();
        let len: u64 = 9 << 20;
        let runs: [(u64, usize); 3] =
            [(3 << 20, 5000), ((5 << 20) + 123, 1 << 20), (7 << 20, 4096)];
        let sparse = t.path().join("sparse");
        let mut f = std::fs::File::create(&sparse).unwrap();
        f.set_len(len).unwrap();
        let mut dense = vec![0u8; len as usize];
        for (i, (at, n)) in runs.iter().enumerate() {
            let bytes: Vec<u8> = (0..*n).map(|k| (k % 253) as u8 ^ i as u8 ^ 0x5a).collect();
            f.seek(SeekFrom::Start(*at)).unwrap();
            f.write_all(&bytes).unwrap();
            dense[*at as usize..*at as usize + n].copy_from_slice(&bytes);
        }
        drop(f);
        let want = Sha256::of_bytes(&dense);
        assert_eq!(Sha256::of_file(&sparse).unwrap(), want);
        let mut p = Progress::with_mode("hash sparse", len, false);
        let d = Sha256::of_open_file(
            Reader::buffered(std::fs::File::open(&sparse).unwrap()),
            &sparse,
            Some(&mut p),
        );
        assert_eq!(d.unwrap(), want);
        assert_eq!(p.done(), len, "holes count as progress");
        // Read around the page cache (a medium), the same.
        assert_eq!(Sha256::of_medium(&sparse, "hash sparse").unwrap(), want);
        let full = t.path().join("dense");
        std::fs::write(&full, &dense).unwrap();
        assert_eq!(Sha256::of_file(&full).unwrap(), want);
        assert_eq!(Sha256::of_medium(&full, "hash dense").unwrap(), want);
        // An odd length: the last direct read comes back short.
        let odd = t.path().join("odd");
        std::fs::write(&odd, &dense[..(5 << 20) + 77]).unwrap();
        assert_eq!(
            Sha256::of_medium(&odd, "hash odd").unwrap(),
            Sha256::of_bytes(&dense[..(5 << 20) + 77])
        );
        assert_eq!(Sha256::of_reader(&dense[..], &full, None).unwrap(), want);
        // All hole, and empty.
        let hole = t.path().join("hole");
        std::fs::File::create(&hole)
            .unwrap()
            .set_len(3 << 20)
            .unwrap();
        assert_eq!(
            Sha256::of_file(&hole).unwrap(),
            Sha256::of_bytes(&vec![0u8; 3 << 20])
        );
        let empty = t.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(Sha256::of_file(&empty).unwrap(), Sha256::of_bytes(b""));
        // Not a regular file: streamed (here a folder, which cannot be read).
        assert!(Sha256::of_file(t.path()).is_err());
    }

    #[test]
    fn known_vector_and_roundtrip() {
        let d = Sha256::of_bytes(b"abc");
        assert_eq!(
            d.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Sha256::from_hex(&d.hex()).unwrap(), d);
        assert!(Sha256::from_hex("abc").is_err());
        assert!(Sha256::from_hex(&"g".repeat(64)).is_err());
    }
}
