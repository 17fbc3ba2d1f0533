//! The data map of a raw disk, `NAME.raw.map`: the byte ranges of the
//! image that hold data (GPTs, the ESP, root, hash trees, volumes); every
//! byte outside them is zero (the empty state partition, the alignment
//! gaps). The build writes it beside the raw, so SHA256 lists it and the
//! release signature covers it; `cairn flash` writes and reads back only
//! these ranges and zeroes the rest on the stick.
//! Version 2 carries the sha256 of each range (signed with the map), so
//! a flash checks each range as it reads it, bmaptool's trust model, with
//! no whole-image hash pass; the builder ([`DataMap::of_file`]) proves the
//! gaps are zero before it writes the map, and `cairn verify` keeps the
//! whole-image digest.
//! Invariant: a parsed map is sorted, non-overlapping, 4 KiB aligned,
//! inside the image, and (version 2) has one digest per range.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::host::digest::Sha256;

/// Ranges start and end on this boundary (or at the image's end).
pub const BLOCK: u64 = 4096;
/// The map of a map file is small: a few ranges per partition.
pub const MAX_MAP_FILE: u64 = 1 << 20;

/// `NAME.raw.map`, as written and parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataMap {
    /// Format version.
    pub cairn_data_map: u32,
    /// The raw disk's file name (a map is for one image only).
    pub image: String,
    /// The image's size and digest: a map beside another image is refused.
    pub size: u64,
    pub sha256: Sha256,
    pub block_size: u64,
    /// `[start, end)` byte offsets, sorted, disjoint.
    pub ranges: Vec<(u64, u64)>,
    /// Version 2: the sha256 of each range's bytes, in the same order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub range_sha256: Vec<Sha256>,
}

/// The map file's path for the raw disk at `raw`.
pub fn path_for(raw: &Path) -> PathBuf {
    let mut name = raw.file_name().unwrap_or_default().to_os_string();
    name.push(".map");
    raw.with_file_name(name)
}

impl DataMap {
    /// The map of `image` (`size` bytes, `sha256`) from the ranges the
    /// builder wrote (any order, may overlap or touch): merged, widened to
    /// [`BLOCK`]s, clipped to the image.
    pub fn new(image: &str, size: u64, sha256: Sha256, ranges: &[(u64, u64)]) -> DataMap {
        let mut r: Vec<(u64, u64)> = ranges
            .iter()
            .map(|(s, e)| {
                (
                    (*s / BLOCK) * BLOCK,
                    e.div_ceil(BLOCK).saturating_mul(BLOCK).min(size),
                )
            })
            .filter(|(s, e)| s < e)
            .collect();
        r.sort();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (s, e) in r {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        DataMap {
            cairn_data_map: 1,
            image: image.to_string(),
            size,
            sha256,
            block_size: BLOCK,
            ranges: merged,
            range_sha256: Vec::new(),
        }
    }

    /// As [`DataMap::new`] for the raw disk at `raw`, with the digest of
    /// each range (version 2), read from the file. Every byte outside the
    /// ranges is read too and must be zero: a map that misses data (a
    /// builder bug) is an error here, never a signed map that flashes a
    /// wrong stick.
    pub fn of_file(
        raw: &Path,
        image: &str,
        size: u64,
        sha256: Sha256,
        ranges: &[(u64, u64)],
    ) -> Result<DataMap> {
        let mut m = DataMap::new(image, size, sha256, ranges);
        let f = std::fs::File::open(raw)
            .with_context(|| format!("data map: open {}", raw.display()))?;
        m.range_sha256 = m
            .scan(&f)
            .map_err(|e| anyhow::anyhow!("data map of {image} ({}): {e}", raw.display()))?;
        m.cairn_data_map = 2;
        Ok(m)
    }

    /// `cairn verify`: the image open as `f` is what this map says: every
    /// byte outside the ranges is zero and (version 2) each range has its
    /// digest. The error names the byte or the range.
    pub fn check_file(&self, f: &std::fs::File) -> Result<(), String> {
        self.check_digests(&self.scan(f)?)
    }

    /// The range digests `got` (from a [`MapScan`]) are the map's.
    pub fn check_digests(&self, got: &[Sha256]) -> Result<(), String> {
        if self.range_sha256.is_empty() {
            return Ok(());
        }
        for (i, (g, w)) in got.iter().zip(&self.range_sha256).enumerate() {
            if g != w {
                let (s, e) = self.ranges[i];
                return Err(format!(
                    "range {i} [{s}, {e}) has sha256 {g}, the map says {w}"
                ));
            }
        }
        Ok(())
    }

    /// Reads `f` once in order (holes as zeros, unread): the gaps must be
    /// zero; returns each range's digest.
    fn scan(&self, f: &std::fs::File) -> Result<Vec<Sha256>, String> {
        let file = f.try_clone().map_err(|e| format!("cannot read: {e}"))?;
        let mut r = crate::host::direct::Reader::buffered(file);
        let mut scan = MapScan::new(self);
        crate::host::digest::Spliced::with_tap(&mut scan)
            .range(&mut r, Path::new(&self.image), 0, self.size)
            .map_err(|e| format!("{e:#}"))?;
        scan.finish()
    }

    /// The bytes the ranges cover.
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }

    /// Writes the map beside the raw disk at `raw` (see [`path_for`]).
    pub fn write_beside(&self, raw: &Path) -> Result<PathBuf> {
        let p = path_for(raw);
        let mut text = serde_json::to_string(self).context("data map: serialise")?;
        text.push('\n');
        std::fs::write(&p, text).with_context(|| format!("data map: write {}", p.display()))?;
        Ok(p)
    }

    /// Parses a map file's bytes (already checked against the signed
    /// SHA256) and checks it describes `image` of `size` bytes with digest
    /// `sha256`. The error names the rule broken.
    pub fn parse(bytes: &[u8], image: &str, size: u64, sha256: Sha256) -> Result<DataMap, String> {
        let m: DataMap =
            serde_json::from_slice(bytes).map_err(|e| format!("does not parse: {e}"))?;
        match (m.cairn_data_map, m.range_sha256.len()) {
            (1, 0) => {}
            (2, n) if n == m.ranges.len() => {}
            (2, n) => {
                return Err(format!(
                    "has {n} range digests for {} ranges",
                    m.ranges.len()
                ))
            }
            (1, _) => return Err("version 1 has no range digests".into()),
            (v, _) => return Err(format!("version {v} is not 1 or 2")),
        }
        if m.image != image || m.size != size || m.sha256 != sha256 {
            return Err(format!(
                "is for {} ({} bytes, sha256 {}), not {image} ({size} bytes, sha256 {sha256})",
                m.image, m.size, m.sha256
            ));
        }
        if m.block_size != BLOCK {
            return Err(format!("block size {} is not {BLOCK}", m.block_size));
        }
        let mut prev_end = 0u64;
        for (i, (s, e)) in m.ranges.iter().enumerate() {
            if s >= e || *e > size {
                return Err(format!(
                    "range {i} [{s}, {e}) is empty or past the image's end"
                ));
            }
            if i > 0 && *s <= prev_end {
                return Err(format!(
                    "range {i} [{s}, {e}) overlaps or touches the one before"
                ));
            }
            if s % BLOCK != 0 || (e % BLOCK != 0 && *e != size) {
                return Err(format!("range {i} [{s}, {e}) is not {BLOCK}-byte aligned"));
            }
            prev_end = *e;
        }
        Ok(m)
    }

    /// The gaps: `[start, end)` ranges of the image outside the map.
    pub fn gaps(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut pos = 0;
        for (s, e) in &self.ranges {
            if *s > pos {
                out.push((pos, *s));
            }
            pos = *e;
        }
        if pos < self.size {
            out.push((pos, self.size));
        }
        out
    }
}

/// A data map checked as the image streams past (a [`Tap`] on the
/// digest's read): the bytes outside the ranges must be zero, and each
/// range's digest is taken. Offsets must arrive in order, covering the
/// image from 0 to its size.
///
/// [`Tap`]: crate::host::digest::Tap
pub struct MapScan {
    /// `[start, end)`, is data; sorted, covering `[0, size)`.
    pieces: Vec<(u64, u64, bool)>,
    next: usize,
    h: sha2::Sha256,
    digests: Vec<Sha256>,
    error: Option<String>,
}

impl MapScan {
    pub fn new(map: &DataMap) -> MapScan {
        let mut pieces: Vec<(u64, u64, bool)> =
            map.ranges.iter().map(|(s, e)| (*s, *e, true)).collect();
        pieces.extend(map.gaps().into_iter().map(|(s, e)| (s, e, false)));
        pieces.sort();
        MapScan {
            pieces,
            next: 0,
            h: sha2::Sha256::default(),
            digests: Vec::new(),
            error: None,
        }
    }

    /// Closes every piece that ends at or before `offset`.
    fn close_to(&mut self, offset: u64) {
        use sha2::Digest as _;
        while let Some(&(_, e, data)) = self.pieces.get(self.next) {
            if e > offset {
                break;
            }
            if data {
                let h = std::mem::take(&mut self.h);
                self.digests.push(Sha256(h.finalize().into()));
            }
            self.next += 1;
        }
    }

    /// Feeds `n` bytes at `offset` (`bytes`, or zeros when `None`).
    fn feed(&mut self, mut offset: u64, bytes: Option<&[u8]>, n: u64) {
        use sha2::Digest as _;
        static ZEROS: [u8; 64 << 10] = [0u8; 64 << 10];
        let (start, end) = (offset, offset + n);
        while offset < end && self.error.is_none() {
            self.close_to(offset);
            let Some(&(_, e, data)) = self.pieces.get(self.next) else {
                self.error = Some(format!("byte {offset} is past the map's image size"));
                return;
            };
            let k = (end - offset).min(e - offset);
            match bytes {
                Some(b) => {
                    let from = (offset - start) as usize;
                    let chunk = &b[from..from + k as usize];
                    if data {
                        self.h.update(chunk);
                    } else if let Some(i) = chunk.iter().position(|x| *x != 0) {
                        self.error = Some(format!(
                            "byte {} holds data outside every range (the map misses data)",
                            offset + i as u64
                        ));
                    }
                }
                None if data => {
                    let mut left = k;
                    while left > 0 {
                        let z = left.min(ZEROS.len() as u64) as usize;
                        self.h.update(&ZEROS[..z]);
                        left -= z as u64;
                    }
                }
                None => {}
            }
            offset += k;
        }
        self.close_to(offset);
    }

    /// Each range's digest, or the first byte that broke the map.
    pub fn finish(self) -> Result<Vec<Sha256>, String> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.next != self.pieces.len() {
            return Err("the image ended before the map's size".into());
        }
        Ok(self.digests)
    }
}

impl crate::host::digest::Tap for MapScan {
    fn data(&mut self, offset: u64, bytes: &[u8]) {
        self.feed(offset, Some(bytes), bytes.len() as u64);
    }
    fn zeros(&mut self, offset: u64, n: u64) {
        self.feed(offset, None, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_map_merges_aligns_and_round_trips() {
        let d = Sha256::of_bytes(b"x");
        let m = DataMap::new(
            "a.raw",
            1 << 20,
            d,
            &[
                (8192, 9000),
                (0, 512),
                (9000, 12000),
                (1_040_000, 1 << 20),
                (5, 6),
            ],
        );
        assert_eq!(
            m.ranges,
            vec![(0, 4096), (8192, 12288), (1_036_288, 1 << 20)]
        );
        assert_eq!(m.gaps(), vec![(4096, 8192), (12288, 1_036_288)]);
        assert_eq!(m.mapped_bytes(), 4096 + 4096 + 12288);
        let text = serde_json::to_vec(&m).unwrap();
        assert_eq!(DataMap::parse(&text, "a.raw", 1 << 20, d).unwrap(), m);
        // Another image, size or digest: refused.
        let e = DataMap::parse(&text, "b.raw", 1 << 20, d).unwrap_err();
        assert!(e.contains("not b.raw"), "{e}");
        assert!(DataMap::parse(&text, "a.raw", 2 << 20, d).is_err());
        assert!(DataMap::parse(&text, "a.raw", 1 << 20, Sha256::of_bytes(b"y")).is_err());
    }

    /// The builder's map: one digest per range, parsed back as version 2;
    /// a byte of data outside the ranges is an error (control: the same
    /// file without it maps fine).
    #[test]
    fn a_data_map_of_a_file_has_range_digests_and_proves_the_gaps_zero() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("a.raw");
        let mut bytes = vec![0u8; 64 << 10];
        bytes[10..20].copy_from_slice(b"0123456789");
        std::fs::write(&raw, &bytes).unwrap();
        let d = Sha256::of_bytes(&bytes);
        let m = DataMap::of_file(&raw, "a.raw", 64 << 10, d, &[(0, 20)]).unwrap();
        assert_eq!(m.cairn_data_map, 2);
        assert_eq!(m.range_sha256, vec![Sha256::of_bytes(&bytes[..4096])]);
        let text = serde_json::to_vec(&m).unwrap();
        assert_eq!(DataMap::parse(&text, "a.raw", 64 << 10, d).unwrap(), m);
        // Digests that do not pair with the ranges: refused.
        let mut short = m.clone();
        short.range_sha256.clear();
        let e =
            DataMap::parse(&serde_json::to_vec(&short).unwrap(), "a.raw", 64 << 10, d).unwrap_err();
        assert!(e.contains("0 range digests"), "{e}");
        bytes[40000] = 1;
        std::fs::write(&raw, &bytes).unwrap();
        let e = DataMap::of_file(&raw, "a.raw", 64 << 10, d, &[(0, 20)]).unwrap_err();
        assert!(format!("{e:#}").contains("byte 40000 holds data"), "{e:#}");
    }

    #[test]
    fn a_streamed_map_check_sees_holes_as_zeros_and_finds_stray_data() {
        use crate::host::digest::Tap as _;
        // A sparse file: data, a hole inside the second range, a hole gap.
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("s.raw");
        let size: u64 = 4 << 20;
        let f = std::fs::File::create(&raw).unwrap();
        f.set_len(size).unwrap();
        use std::os::unix::fs::FileExt as _;
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"tail", (2 << 20) + 8192).unwrap();
        let bytes = std::fs::read(&raw).unwrap();
        let d = Sha256::of_bytes(&bytes);
        let ranges = [(0, 4096), (1 << 20, (2 << 20) + 12288)];
        let m = DataMap::of_file(&raw, "s.raw", size, d, &ranges).unwrap();
        let want: Vec<Sha256> = m
            .ranges
            .iter()
            .map(|(s, e)| Sha256::of_bytes(&bytes[*s as usize..*e as usize]))
            .collect();
        assert_eq!(m.range_sha256, want);
        m.check_file(&std::fs::File::open(&raw).unwrap()).unwrap();
        // Fed by hand in odd pieces (data spanning a range's end, zeros
        // spanning a gap and a range): the same digests.
        let mut scan = MapScan::new(&m);
        scan.data(0, &bytes[..5000]);
        scan.zeros(5000, (1 << 20) + 10 - 5000);
        scan.data((1 << 20) + 10, &bytes[(1 << 20) + 10..(3 << 20)]);
        scan.zeros(3 << 20, size - (3 << 20));
        assert_eq!(scan.finish().unwrap(), want);
        // Control: one stray byte in the gap is named.
        let mut scan = MapScan::new(&m);
        let mut stray = bytes.clone();
        stray[3 << 20] = 7;
        scan.data(0, &stray);
        let e = scan.finish().unwrap_err();
        assert!(e.contains(&format!("byte {} holds data", 3 << 20)), "{e}");
        // A stream that stops short is not a whole image.
        let mut scan = MapScan::new(&m);
        scan.data(0, &bytes[..4096]);
        assert!(scan.finish().unwrap_err().contains("ended before"));
    }

    #[test]
    fn a_data_map_with_bad_ranges_is_refused() {
        let d = Sha256::of_bytes(b"x");
        let with = |ranges: Vec<(u64, u64)>| {
            let mut m = DataMap::new("a.raw", 1 << 20, d, &[]);
            m.ranges = ranges;
            DataMap::parse(&serde_json::to_vec(&m).unwrap(), "a.raw", 1 << 20, d)
        };
        assert!(with(vec![(0, 4096), (8192, 16384)]).is_ok());
        for (bad, why) in [
            (vec![(8192, 16384), (0, 4096)], "overlaps"),
            (vec![(0, 8192), (4096, 16384)], "overlaps"),
            (vec![(0, 4096), (4096, 8192)], "touches"),
            (vec![(4096, 4096)], "empty"),
            (vec![(0, (1 << 20) + 4096)], "past"),
            (vec![(100, 4096)], "aligned"),
        ] {
            let e = with(bad.clone()).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(DataMap::parse(b"{\"x\":1}", "a.raw", 1, d).is_err());
    }
}
