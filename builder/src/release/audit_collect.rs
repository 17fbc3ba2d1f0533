//! `cairn audit collect` and the check `cairn flash` makes before it
//! overwrites a stick (docs/audit.md): the trail's encrypted frames are
//! saved (no key needed) with a receipt, and the medium's header sector
//! records the high-water mark `collected frames=N last=H receipt=R`.
//! Invariant: a mark counts only while it matches the medium (N frames,
//! the N-th hashing to H); anything else is "not collected", so a stale,
//! altered or forged mark never lets flash destroy unsaved records, and
//! one forged from scratch names a receipt digest the platform never had.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use super::audit::{frames, locate, Frame, HEADER};
use crate::host::digest::Sha256;
use crate::InputError;

/// The header sector holds the header line and, once collected, the mark.
const SECTOR: usize = 512;
const MARK: &str = "collected ";

/// A high-water mark as read from the header sector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub frames: usize,
    pub last: Sha256,
    pub receipt: Sha256,
}

impl Mark {
    fn line(&self) -> String {
        format!(
            "{MARK}frames={} last={} receipt={}\n",
            self.frames,
            self.last.hex(),
            self.receipt.hex()
        )
    }

    /// The mark in a header sector, if one parses (a malformed one is
    /// no mark: nothing counts as collected).
    fn parse(sector: &[u8]) -> Option<Mark> {
        let rest = sector.get(HEADER.len()..)?;
        let end = rest.iter().position(|b| *b == b'\n')?;
        let line = std::str::from_utf8(&rest[..end]).ok()?;
        let mut frames = None;
        let (mut last, mut receipt) = (None, None);
        for kv in line.strip_prefix(MARK)?.split(' ') {
            match kv.split_once('=')? {
                ("frames", v) => frames = v.parse().ok(),
                ("last", v) => last = Sha256::from_hex(v).ok(),
                ("receipt", v) => receipt = Sha256::from_hex(v).ok(),
                _ => return None,
            }
        }
        Some(Mark {
            frames: frames?,
            last: last?,
            receipt: receipt?,
        })
    }
}

/// How much of a medium's trail is saved.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Frames on the medium (up to the first that is not one).
    pub frames: usize,
    /// Frames covered by a mark that matches the medium.
    pub collected: usize,
    /// A mark that does not match the medium (altered, or the trail was).
    pub mark_mismatch: bool,
    /// Something after the last frame that starts like a frame.
    pub bad_frame: bool,
}

impl Status {
    /// Records a flash would destroy unsaved.
    pub fn uncollected(&self) -> usize {
        self.frames - self.collected + usize::from(self.bad_frame)
    }
}

struct Scan {
    file: std::fs::File,
    base: u64,
    size: u64,
    frames: Vec<Frame>,
    status: Status,
    sector: Vec<u8>,
}

fn scan(path: &Path) -> Result<Scan> {
    let (mut file, base, size) = locate(path)?;
    let found = frames(&mut file, base, size)?;
    let mut sector = vec![0u8; SECTOR];
    file.read_exact_at(&mut sector, base)
        .with_context(|| format!("{}: read the audit header", path.display()))?;
    let mark = Mark::parse(&sector);
    let matches = mark.as_ref().is_some_and(|m| {
        m.frames <= found.frames.len()
            && (m.frames == 0 || Sha256::of_bytes(&found.frames[m.frames - 1].bytes) == m.last)
    });
    let status = Status {
        frames: found.frames.len(),
        collected: if matches {
            mark.as_ref().map_or(0, |m| m.frames)
        } else {
            0
        },
        mark_mismatch: mark.is_some() && !matches,
        bad_frame: found.bad.is_some(),
    };
    Ok(Scan {
        file,
        base,
        size,
        frames: found.frames,
        status,
        sector,
    })
}

/// The trail's state on `path`, or `None` when it holds no audit
/// partition (or one without its header: nothing to lose).
pub fn status(path: &Path) -> Result<Option<Status>> {
    match locate(path) {
        Err(e) if e.downcast_ref::<InputError>().is_some() => return Ok(None),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    Ok(Some(scan(path)?.status))
}

/// What one collection saved: written beside the trail as JSON, its
/// digest in the medium's mark.
#[derive(Debug, Clone, Serialize)]
pub struct Receipt {
    pub medium: String,
    pub collected_at: String,
    /// Byte offset of the audit partition on the medium.
    pub partition_offset: u64,
    pub frames: usize,
    /// Frames an earlier collection had saved (its mark matched).
    pub previously_collected: usize,
    /// The saved file: the header sector and every frame, as on the medium.
    pub file: String,
    pub bytes: u64,
    pub sha256: Sha256,
    /// The hash of the last frame (what the next frame's `prev` names).
    pub last_frame_sha256: Sha256,
    pub cairn_version: String,
}

/// What `collect` did.
#[derive(Debug, Clone, Serialize)]
pub struct Collected {
    pub receipt: Receipt,
    pub receipt_path: PathBuf,
    pub receipt_sha256: Sha256,
    pub trail_path: PathBuf,
}

/// Saves `medium`'s trail into `out` (created if missing) and marks it
/// collected on the medium. `now` is seconds since 1970 (the caller's
/// clock). An empty trail is an input error: there is nothing to collect.
pub fn collect(medium: &Path, out: &Path, now: u64) -> Result<Collected> {
    let Scan {
        file,
        base,
        size,
        frames,
        status,
        mut sector,
    } = scan(medium)?;
    let Some(last) = frames.last() else {
        return Err(InputError(format!(
            "{}: its audit trail holds no records; nothing to collect",
            medium.display()
        ))
        .into());
    };
    if status.bad_frame {
        // Saved anyway (the platform wants what is there), but said.
        eprintln!(
            "audit: warning: {}: a damaged frame follows the {} readable ones; `cairn audit verify` on the saved copy names it",
            medium.display(),
            frames.len()
        );
    }
    let mut end = (last.offset + last.bytes.len() as u64).div_ceil(SECTOR as u64) * SECTOR as u64;
    if status.bad_frame {
        // Keep the damaged sector too, so verify on the copy names it.
        end = (end + SECTOR as u64).min(size);
    }
    let mut trail = vec![0u8; end as usize];
    file.read_exact_at(&mut trail, base)
        .with_context(|| format!("{}: read the audit trail", medium.display()))?;
    let last_hash = Sha256::of_bytes(&last.bytes);
    std::fs::create_dir_all(out)
        .map_err(|e| InputError(format!("{}: cannot create: {e}", out.display())))?;
    let stem = format!("cairn-audit-{}", &last_hash.hex()[..16]);
    let trail_path = out.join(format!("{stem}.trail"));
    write_new(&trail_path, &trail)?;
    let receipt = Receipt {
        medium: medium.display().to_string(),
        collected_at: crate::host::time::rfc3339(now),
        partition_offset: base,
        frames: frames.len(),
        previously_collected: status.collected,
        file: format!("{stem}.trail"),
        bytes: trail.len() as u64,
        sha256: Sha256::of_bytes(&trail),
        last_frame_sha256: last_hash,
        cairn_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let mut json = serde_json::to_vec_pretty(&receipt)?;
    json.push(b'\n');
    let receipt_path = out.join(format!("{stem}.receipt.json"));
    write_new(&receipt_path, &json)?;
    let receipt_sha256 = Sha256::of_bytes(&json);
    // Only now, with both files on disk, the medium says "collected".
    let mark = Mark {
        frames: frames.len(),
        last: last_hash,
        receipt: receipt_sha256,
    };
    sector[HEADER.len()..].fill(0);
    let line = mark.line();
    sector[HEADER.len()..HEADER.len() + line.len()].copy_from_slice(line.as_bytes());
    drop(file);
    let w = OpenOptions::new()
        .write(true)
        .open(medium)
        .map_err(|e| InputError(format!("{}: cannot open to mark the trail collected: {e} (the records are saved in {}; run as a user who may write the device)", medium.display(), out.display())))?;
    w.write_all_at(&sector, base)
        .and_then(|_| w.sync_all())
        .with_context(|| format!("{}: write the collected mark", medium.display()))?;
    let after = status_of_written(medium)?;
    if after.collected != frames.len() {
        anyhow::bail!(
            "{}: the collected mark did not read back (it says {} of {} frames)",
            medium.display(),
            after.collected,
            frames.len()
        );
    }
    Ok(Collected {
        receipt,
        receipt_path,
        receipt_sha256,
        trail_path,
    })
}

fn status_of_written(medium: &Path) -> Result<Status> {
    Ok(scan(medium)?.status)
}

/// Writes `bytes` to `path` through a temporary name and fsync, so a
/// crash never leaves half a trail under the final name.
fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("part");
    let f = std::fs::File::create(&tmp)
        .map_err(|e| InputError(format!("{}: cannot create: {e}", tmp.display())))?;
    f.write_all_at(bytes, 0)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_reads_back_and_a_malformed_one_is_none() {
        let m = Mark {
            frames: 7,
            last: Sha256::of_bytes(b"a"),
            receipt: Sha256::of_bytes(b"b"),
        };
        let mut sector = HEADER.to_vec();
        sector.extend(m.line().as_bytes());
        sector.resize(SECTOR, 0);
        assert_eq!(Mark::parse(&sector), Some(m.clone()));
        // Control: any change to the line's shape is no mark.
        for bad in [
            m.line().replace("frames=7", "frames=x"),
            m.line().replace("last=", "lost="),
            m.line().replace('\n', ""),
        ] {
            let mut s = HEADER.to_vec();
            s.extend(bad.as_bytes());
            s.resize(SECTOR, 0);
            assert_eq!(Mark::parse(&s), None, "{bad}");
        }
    }
}
