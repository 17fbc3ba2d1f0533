//! The media writers, as a table: the raw GPT disk is always written first
//! (the qcow2 is converted from it, the manifest reads its layout); every
//! other format is one row of [`WRITERS`], so adding a format is adding a
//! row. Every writer takes the same [`MediaInputs`] and writes one file.

use std::path::Path;

use anyhow::Result;

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
    /// The raw disk, already written.
    pub raw: &'a Path,
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
    pub write: fn(&MediaInputs, &Path) -> Result<()>,
}

/// The media written from the raw disk and the stage outputs, in order.
pub const WRITERS: &[Writer] = &[
    Writer {
        format: Format::Iso,
        stage: "hybrid ISO",
        extension: "iso",
        write: write_iso_row,
    },
    Writer {
        format: Format::Qcow2,
        stage: "qcow2",
        extension: "qcow2",
        write: write_qcow2_row,
    },
];

fn write_iso_row(m: &MediaInputs, out: &Path) -> Result<()> {
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
}

fn write_qcow2_row(m: &MediaInputs, out: &Path) -> Result<()> {
    qcow2::write_qcow2(m.raw, out)
}
