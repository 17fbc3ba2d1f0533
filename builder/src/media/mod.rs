//! The media writers, as a table: the raw GPT disk is always written (the
//! qcow2 is converted from it, the manifest reads its layout); every other
//! format is one row of [`WRITERS`], so adding a format is adding a row.
//! Every writer takes the same [`MediaInputs`] and writes one file; a row
//! that reads the raw disk says so ([`Writer::needs_raw`]) and starts once
//! it is written, the others start beside it.

use std::path::Path;

use anyhow::Result;

use crate::host::digest::Sha256;

pub mod disk;
pub mod esp;
pub mod iso;
pub mod qcow2;

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Iso,
    Qcow2,
}

/// What every medium is made from: the stages' outputs.
pub struct MediaInputs<'a> {
    /// The raw disk (written but its models when a row with
    /// [`Writer::needs_raw`] runs).
    pub raw: &'a Path,
    /// The raw disk's partitions, set when it is written.
    pub layout: &'a std::sync::OnceLock<disk::Layout>,
    /// The UKI for ISO media (its command line says `cairn.medium=iso`).
    pub uki_iso: &'a Path,
    /// `[boot] shim`: shim and MokManager in front of the UKI.
    pub shim: Option<&'a crate::pipeline::shim::Shim>,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub iso_cmdline: &'a str,
    pub root: &'a Path,
    pub verity: &'a Path,
    /// The model volumes (files under /cairn/models/ on the ISO).
    pub volumes: &'a [crate::pipeline::volumes::Volume],
    pub volume_id: &'a str,
    pub epoch: u64,
    /// A scratch folder the writer may use.
    pub work: &'a Path,
}

/// One derived medium: its format, stage name, file extension and writer.
pub struct Writer {
    pub format: Format,
    pub stage: &'static str,
    pub extension: &'static str,
    /// Whether it reads the raw disk (and its layout): it starts when all
    /// of it but the model volumes' partitions is written
    /// (`disk::write_raw_system`) and reads those from the volume files.
    pub needs_raw: bool,
    /// Writes the medium; returns its sha256 when it was taken while
    /// writing (the build hashes the file otherwise).
    pub write: fn(&MediaInputs, &Path) -> Result<Option<Sha256>>,
}

/// The media written from the raw disk and the stage outputs, in order.
pub const WRITERS: &[Writer] = &[
    Writer {
        format: Format::Iso,
        stage: "hybrid ISO",
        extension: "iso",
        needs_raw: false,
        write: write_iso_row,
    },
    Writer {
        format: Format::Qcow2,
        stage: "qcow2",
        extension: "qcow2",
        needs_raw: true,
        write: write_qcow2_row,
    },
];

fn write_iso_row(m: &MediaInputs, out: &Path) -> Result<Option<Sha256>> {
    let work = m.work.join("iso");
    std::fs::create_dir_all(&work)
        .map_err(|e| anyhow::anyhow!("hybrid ISO: cannot create {}: {e}", work.display()))?;
    iso::write_iso(
        &iso::IsoInputs {
            uki: m.uki_iso,
            shim: m.shim,
            kernel: m.kernel,
            initrd: m.initrd,
            cmdline: m.iso_cmdline,
            root: m.root,
            verity: m.verity,
            volumes: m.volumes,
            volume_id: m.volume_id,
            epoch: m.epoch,
        },
        &work,
        out,
    )
    .map(Some)
}

fn write_qcow2_row(m: &MediaInputs, out: &Path) -> Result<Option<Sha256>> {
    let layout = m
        .layout
        .get()
        .ok_or_else(|| anyhow::anyhow!("qcow2: the raw disk is not written yet"))?;
    // The model volumes (data and hash tree) are stored as they are (they
    // do not compress), from their files: the raw disk's copy of them may
    // still be being written.
    let mut stored: Vec<(u64, &Path)> = Vec::new();
    for (v, p) in m.volumes.iter().zip(&layout.volumes) {
        if v.kind == crate::pipeline::volumes::Kind::Model {
            stored.push((p.data.0, v.image.as_path()));
            stored.push((p.hash.0, v.verity.hash_path.as_path()));
        }
    }
    qcow2::write_qcow2(m.raw, out, &stored)?;
    Ok(None)
}
