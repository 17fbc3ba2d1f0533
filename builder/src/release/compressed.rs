//! `NAME.raw.zst`: the raw disk compressed with zstd, an optional output.
//! SHA256 signs the compressed file's digest; the signed data map
//! (`NAME.raw.map`) carries the uncompressed size and digest, so both are
//! signed. `cairn verify` and `cairn flash` read it as a stream (no
//! temporary copy).
//! Invariant: a reader never yields more than the map's size: a stream
//! that decompresses to more (or less) is refused.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use sha2::Digest as _;

use crate::host::digest::Sha256;

/// The compressed file's name for the raw disk `NAME.raw`.
pub fn zst_name(raw: &str) -> String {
    format!("{raw}.zst")
}

/// The raw disk's name for `NAME.raw.zst`, if it is one.
pub fn raw_name(zst: &str) -> Option<&str> {
    zst.strip_suffix(".zst").filter(|r| r.ends_with(".raw"))
}

/// Writes `raw.zst` beside the raw disk at `raw` (zstd level 3: the
/// state partition's zeros cost nothing; the data compresses little).
pub fn write_zst(raw: &Path) -> Result<PathBuf> {
    let mut name = raw.file_name().unwrap_or_default().to_os_string();
    name.push(".zst");
    let out = raw.with_file_name(name);
    crate::media::zst::write_zst_to(raw, &out)?;
    Ok(out)
}

/// Reads a file from an offset of its own (several sticks decompress the
/// same open file at once; a shared file offset would mix them).
pub struct At<'a> {
    file: &'a File,
    pos: u64,
}

impl<'a> At<'a> {
    /// `file` from its start.
    pub fn new(file: &'a File) -> At<'a> {
        At { file, pos: 0 }
    }
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// A decompressing reader over `file` from its start.
pub fn decoder(file: &File) -> io::Result<zstd::Decoder<'static, io::BufReader<At<'_>>>> {
    zstd::Decoder::new(At { file, pos: 0 })
}

/// Decompresses `file` and hashes the result, reading at most
/// `size + 1` bytes: `(digest, length)`. A stream that is not zstd is an error.
pub fn digest_of(file: &File, size: u64) -> io::Result<(Sha256, u64)> {
    let mut r = decoder(file)?.take(size + 1);
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
    Ok((Sha256(h.finalize().into()), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raw_round_trips_through_zst_and_a_bad_byte_is_seen() {
        let d = tempfile::tempdir().unwrap();
        let raw = d.path().join("a.raw");
        let f = File::create(&raw).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(b"hello", 3 << 20).unwrap();
        let z = write_zst(&raw).unwrap();
        assert_eq!(z, d.path().join("a.raw.zst"));
        assert!(std::fs::metadata(&z).unwrap().len() < 4096);
        let want = Sha256::of_file(&raw).unwrap();
        let (got, len) = digest_of(&File::open(&z).unwrap(), 8 << 20).unwrap();
        assert_eq!((got, len), (want, 8 << 20));
        // A smaller expected size: one byte more is read, never all.
        assert_eq!(digest_of(&File::open(&z).unwrap(), 10).unwrap().1, 11);
        // Control: a changed byte in the frame is an error or another digest.
        let mut bytes = std::fs::read(&z).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        std::fs::write(&z, &bytes).unwrap();
        if let Ok((d, _)) = digest_of(&File::open(&z).unwrap(), 8 << 20) {
            assert_ne!(d, want);
        }
        assert_eq!(raw_name("a.raw.zst"), Some("a.raw"));
        assert_eq!(raw_name("a.iso.zst"), None);
        assert_eq!(zst_name("a.raw"), "a.raw.zst");
    }
}
