//! The write and the read-back: boot sector last, each piece (the whole
//! image, or each range of the signed data map) hashed while it is read
//! and checked against its signed digest, the head written only once all
//! matched, then flushed past the page cache and read back piece by piece.
//! Invariant: an interrupted or failed write leaves the target with a zero
//! first MiB (unbootable), never a half-written disk that looks bootable.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::Digest as _;

use super::target::block_size_of;
use super::{failed, refused, FlashError, CHUNK, HEAD};
use crate::host::digest::Sha256;
use crate::host::progress::{human_bytes, Progress};

/// Where the image's bytes come from: the `.raw` itself, or a `.raw.zst`
/// decompressed as a stream (each stick its own decoder).
pub(super) enum Source<'a> {
    File(&'a File),
    Zst {
        r: zstd::Decoder<'static, std::io::BufReader<crate::release::compressed::At<'a>>>,
        /// The uncompressed offset the decoder is at.
        pos: u64,
    },
}

impl Source<'_> {
    /// Fills `buf` from the image at `off` (fewer bytes only at its end).
    /// A stream only moves forward: it skips to `off` (the gaps of the
    /// data map are decompressed and dropped, never written).
    fn read_at(&mut self, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
        use std::io::Read as _;
        match self {
            Source::File(f) => crate::host::read_full_at(f, buf, off),
            Source::Zst { r, pos } => {
                if off < *pos {
                    return Err(std::io::Error::other(
                        "a compressed image is read forward only",
                    ));
                }
                let skip = off - *pos;
                let skipped = std::io::copy(&mut r.by_ref().take(skip), &mut std::io::sink())?;
                *pos += skipped;
                if skipped < skip {
                    return Ok(0);
                }
                let n = crate::host::read_full(r, buf)?;
                *pos += n as u64;
                Ok(n)
            }
        }
    }
}

/// Whether SIGINT, SIGTERM or SIGHUP arrived (`host::interrupt`: the
/// caller holds its [`crate::host::interrupt::hold`], so the process lives
/// on to leave every stick unbootable and write the receipts).
pub(super) fn interrupted() -> bool {
    crate::host::interrupt::signalled().is_some()
}

/// Zeroes the first MiB of the written `device` and flushes: a stick whose
/// site file could not be put on it must not boot without it.
pub(super) fn make_unbootable(device: &Path, is_block: bool) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new().write(true).open(device)?;
    f.write_all_at(&vec![0u8; HEAD as usize], 0)?;
    flush(&f, is_block)
}

/// fsync, then (block devices) BLKFLSBUF, then drop cached pages so the
/// read-back reaches the medium.
pub(super) fn flush(f: &File, block: bool) -> std::io::Result<()> {
    f.sync_all()?;
    if block {
        crate::host::sys::flush_block_buffers(f)?;
    }
    crate::host::sys::drop_cached_pages(f);
    Ok(())
}

/// How the bytes outside the data map reach the stick as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gaps {
    /// BLKZEROOUT: the kernel zeroes them (the device's WRITE ZEROES where
    /// it has one, else zero pages the kernel writes).
    ZeroOut,
    /// cairn writes zeros (`--write-zeros`).
    Write,
    /// A file target, truncated and sized: its holes read as zeros.
    NewFile,
}

/// What is written: every byte, or the data map's ranges and zeroed gaps.
#[derive(Debug, Clone, Copy)]
pub(super) enum Plan<'a> {
    Full,
    Sparse {
        map: &'a crate::release::datamap::DataMap,
        gaps: Gaps,
    },
}

impl Plan<'_> {
    /// The word receipts record.
    pub(super) fn mode(&self) -> &'static str {
        match self {
            Plan::Full => "full",
            Plan::Sparse {
                gaps: Gaps::ZeroOut,
                ..
            } => "sparse-zeroout",
            Plan::Sparse {
                gaps: Gaps::Write, ..
            } => "sparse-zeros-written",
            Plan::Sparse {
                gaps: Gaps::NewFile,
                ..
            } => "sparse-new-file",
        }
    }

    /// `[start, end, digest)` pieces of the image of `size` bytes, in
    /// order: a piece with a digest is copied from the image and must hash
    /// to it (the whole image and its signed digest when `Full`, a map
    /// range and its signed digest when sparse); the rest is zeroed.
    fn segments(&self, size: u64, want: Sha256) -> Vec<(u64, u64, Option<Sha256>)> {
        match self {
            Plan::Full => vec![(0, size, Some(want))],
            Plan::Sparse { map, .. } => {
                let mut v: Vec<(u64, u64, Option<Sha256>)> = map
                    .ranges
                    .iter()
                    .zip(&map.range_sha256)
                    .map(|((s, e), d)| (*s, *e, Some(*d)))
                    .collect();
                v.extend(map.gaps().into_iter().map(|(s, e)| (s, e, None)));
                v.sort();
                v
            }
        }
    }
}

/// Gaps are zeroed this much at a time, so a signal is seen between calls.
const ZERO_STEP: u64 = 64 << 20;

/// Writes `size` bytes of `src` (the image at `image`) to `dst` (a block
/// device if `is_block`, else a file) as `plan` says, head last, and reads
/// back every byte written. Each piece copied is hashed as it is read and
/// must match its signed digest (`want` for the whole image, or the map's
/// range digest) before anything after it is written; the head (first
/// MiB, kept in memory) is written only once every piece matched, so a
/// changed image never makes a stick that boots. The read-back hashes
/// each piece again from the target against the same digest. Returns
/// `want` once it matched. The caller holds a
/// [`crate::host::interrupt::hold`] and owns the bar.
#[allow(clippy::too_many_arguments)]
pub(super) fn write_and_read_back(
    src: &mut Source<'_>,
    image: &Path,
    dst: &File,
    device: &Path,
    size: u64,
    is_block: bool,
    want: Sha256,
    plan: Plan<'_>,
    progress: &mut Progress,
) -> Result<Sha256, FlashError> {
    let dev = device.display().to_string();
    let io = |what: &str, e: std::io::Error| failed(format!("{what} {dev}: {e}"));
    // (c) write: head zeroed first, body, head last.
    let head_len = size.min(HEAD);
    let zeros = vec![0u8; CHUNK];
    if is_block {
        dst.write_all_at(&zeros[..head_len as usize], 0)
            .map_err(|e| io("zeroing the first MiB of", e))?;
        // A stale backup GPT at the end of a larger device is cleared too.
        if let Ok(cap) = block_size_of(dst) {
            if cap >= size + HEAD {
                dst.write_all_at(&zeros[..HEAD as usize], cap - HEAD)
                    .map_err(|e| io("zeroing the last MiB of", e))?;
            }
        }
    } else {
        dst.set_len(size).map_err(|e| io("sizing", e))?;
    }
    flush(dst, is_block).map_err(|e| io("flushing", e))?;

    let mut head = vec![0u8; head_len as usize];
    let n = src
        .read_at(&mut head, 0)
        .map_err(|e| failed(format!("reading {}: {e}", image.display())))?;
    if n as u64 != head_len {
        return Err(refused(format!(
            "{} shrank while flashing",
            image.display()
        )));
    }

    progress.update(0);
    let segments = plan.segments(size, want);
    let stop = |off: u64, progress: &mut Progress| {
        progress.abandon();
        let _ = dst.sync_all();
        FlashError::Interrupted(format!(
            "flash: interrupted after {} of {}: {dev} was left unbootable on purpose \
             (its first MiB is zero); run cairn flash again",
            human_bytes(off),
            human_bytes(size)
        ))
    };
    let left_unbootable = "it was left unbootable (first MiB zero)";
    let mut buf = vec![0u8; CHUNK];
    for (i, &(start, end, digest)) in segments.iter().enumerate() {
        // The part inside the head is in memory, written last.
        let in_head = &head[(start.min(head_len) as usize)..(end.min(head_len) as usize)];
        let mut off = start.max(head_len);
        let Some(digest) = digest else {
            // A gap: zero on the stick, so zero in the image's head too.
            if let Some(k) = in_head.iter().position(|b| *b != 0) {
                progress.abandon();
                return Err(refused(format!(
                    "{} holds data at byte {} outside its signed data map; {dev}: {left_unbootable}",
                    image.display(),
                    start + k as u64
                )));
            }
            while off < end {
                if interrupted() {
                    return Err(stop(off, progress));
                }
                let step = (end - off).min(ZERO_STEP);
                match plan {
                    Plan::Sparse {
                        gaps: Gaps::ZeroOut,
                        ..
                    } => crate::host::sys::zero_out_range(dst, off, step).map_err(|e| {
                        progress.abandon();
                        failed(format!(
                            "zeroing {dev} at byte {off} (BLKZEROOUT): {e}; {left_unbootable}; \
                             try --write-zeros"
                        ))
                    })?,
                    Plan::Sparse {
                        gaps: Gaps::Write, ..
                    } => {
                        let mut at = off;
                        while at < off + step {
                            let len = ((off + step - at) as usize).min(CHUNK);
                            dst.write_all_at(&zeros[..len], at).map_err(|e| {
                                progress.abandon();
                                failed(format!(
                                    "writing {dev} at byte {at}: {e}; {left_unbootable}"
                                ))
                            })?;
                            at += len as u64;
                        }
                    }
                    _ => {}
                }
                off += step;
                progress.update(off);
            }
            continue;
        };
        let mut hasher = sha2::Sha256::new();
        hasher.update(in_head);
        while off < end {
            if interrupted() {
                return Err(stop(off, progress));
            }
            let want_len = ((end - off) as usize).min(CHUNK);
            let n = src.read_at(&mut buf[..want_len], off).map_err(|e| {
                progress.abandon();
                failed(format!(
                    "reading {}: {e}; {dev}: {left_unbootable}",
                    image.display()
                ))
            })?;
            if n != want_len {
                progress.abandon();
                return Err(failed(format!(
                    "{} shrank while flashing; {dev}: {left_unbootable}",
                    image.display()
                )));
            }
            hasher.update(&buf[..n]);
            // A fresh file is already zero; a device is not.
            if is_block || buf[..n].iter().any(|b| *b != 0) {
                dst.write_all_at(&buf[..n], off).map_err(|e| {
                    progress.abandon();
                    failed(format!(
                        "writing {dev} at byte {off}: {e}; {left_unbootable}"
                    ))
                })?;
            }
            off += n as u64;
            progress.update(off);
        }
        let got = Sha256(hasher.finalize().into());
        if got != digest {
            progress.abandon();
            let what = match plan {
                Plan::Full => format!("{} changed after it was verified", image.display()),
                Plan::Sparse { .. } => format!(
                    "{} is not the signed image: bytes [{start}, {end}) (range {} of its data \
                     map) have sha256 {got}, the signed map {digest}",
                    image.display(),
                    i
                ),
            };
            return Err(refused(format!(
                "{what}; nothing more was written and {dev}: {left_unbootable}"
            )));
        }
    }
    flush(dst, is_block).map_err(|e| io("flushing", e))?;
    if interrupted() {
        progress.abandon();
        return Err(FlashError::Interrupted(format!(
            "flash: interrupted before the boot sector was written: {dev} was left unbootable on purpose; run cairn flash again"
        )));
    }
    dst.write_all_at(&head, 0)
        .map_err(|e| io("writing the first MiB of", e))?;
    // (d) flush
    flush(dst, is_block).map_err(|e| io("flushing", e))?;
    progress.finish();

    // (e) read back every byte written: the head, compared with what was
    // written, and each piece hashed against its signed digest.
    let mut back = vec![0u8; head_len as usize];
    let n = crate::host::read_full_at(dst, &mut back, 0).map_err(|e| io("reading back", e))?;
    if n != head.len() || back != head {
        return Err(failed(format!(
            "read-back of the first MiB of {dev} does not match what was written; the medium may be faulty"
        )));
    }
    for &(start, end, digest) in &segments {
        let Some(digest) = digest else { continue };
        let mut h = sha2::Sha256::new();
        h.update(&head[(start.min(head_len) as usize)..(end.min(head_len) as usize)]);
        let mut off = start.max(head_len);
        while off < end {
            let len = ((end - off) as usize).min(CHUNK);
            let n = crate::host::read_full_at(dst, &mut buf[..len], off)
                .map_err(|e| io("reading back", e))?;
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
        if got != digest {
            return Err(failed(format!(
                "read-back of {dev} bytes [{start}, {end}) does not match: expected sha256 {digest}, got {got}; the medium may be faulty"
            )));
        }
    }
    Ok(want)
}
