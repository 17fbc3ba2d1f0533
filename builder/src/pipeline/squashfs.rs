//! Squashfs: packs the normalised tree into the read-only root filesystem
//! (zstd). mksquashfs ≥ 4.4 is reproducible given fixed times.

use std::path::{Path, PathBuf};

use anyhow::Result;

pub struct RootImage {
    pub path: PathBuf,
    pub size: u64,
}

pub fn make_squashfs(tree: &Path, out: &Path, epoch: u64) -> Result<RootImage> {
    let sh = xshell::Shell::new()?;
    let epoch = epoch.to_string();
    crate::host::runner::run(
        "squashfs",
        xshell::cmd!(
            sh,
            "mksquashfs {tree} {out} -noappend -comp zstd -Xcompression-level 15 -all-time {epoch} -mkfs-time {epoch} -no-progress -quiet"
        ),
    )?;
    let size = std::fs::metadata(out)?.len();
    Ok(RootImage {
        path: out.to_path_buf(),
        size,
    })
}
