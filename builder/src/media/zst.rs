//! `NAME.raw.zst`, the `zst` row: the raw disk zstd-compressed (level 3:
//! the state partition's zeros cost nothing; the data compresses little),
//! single-threaded so the same raw gives the same bytes. Its digests and
//! how verify and flash read it: `release::compressed`.

use std::fs::File;
use std::io;
use std::path::Path;

use anyhow::{Context, Result};

/// Writes the raw disk at `raw` zstd-compressed to `out` (the build's
/// `zst` row).
pub fn write_zst_to(raw: &Path, out: &Path) -> Result<()> {
    let src = File::open(raw).with_context(|| format!("zst: open {}", raw.display()))?;
    let dst = File::create(out).with_context(|| format!("zst: create {}", out.display()))?;
    let mut enc = zstd::Encoder::new(io::BufWriter::new(dst), 3)?;
    // The size in the frame header: a reader can tell a short stream.
    enc.set_pledged_src_size(Some(src.metadata()?.len()))?;
    io::copy(&mut io::BufReader::with_capacity(4 << 20, src), &mut enc)
        .with_context(|| format!("zst: compress {}", raw.display()))?;
    let w = enc.finish()?;
    w.into_inner()
        .map_err(|e| anyhow::anyhow!("zst: write {}: {}", out.display(), e.error()))?
        .sync_all()?;
    Ok(())
}
