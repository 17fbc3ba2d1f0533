//! The media formats, as one table ([`FORMATS`]): each row carries a
//! format's name (`--format`), file extension, writer, how `cairn verify`
//! checks it, how QEMU boots it and where its ESP is; the build, `cairn
//! run`, `verify`, the Secure Boot checks and `site apply` read the row, so
//! adding a format is adding a row (docs/formats.md). A format name or
//! extension is spelled nowhere else (`.ci/layers.py` checks it). The raw
//! GPT disk is always written first (the others may read it, the manifest
//! reads its layout); every writer takes the same [`MediaInputs`] and
//! writes one file.

use std::path::Path;

use anyhow::Result;

use crate::host::digest::Sha256;

pub mod disk;
pub mod esp;
pub mod gce;
pub mod iso;
pub mod qcow2;
pub mod vhd;
pub mod vmdk;
pub mod zst;

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

/// Writes a medium; returns its sha256 when it was taken while writing
/// (the build hashes the file otherwise).
pub type WriteFn = fn(&MediaInputs, &Path) -> Result<Option<Sha256>>;

/// How a medium is written.
#[derive(Clone, Copy)]
pub enum Write {
    /// The raw disk: written first, by the build itself
    /// (`disk::write_raw_system`, then its models), published when asked.
    Raw,
    /// Written beside the raw disk, from the stage outputs.
    Beside(WriteFn),
    /// Reads the raw disk (and its layout): starts when all of it but the
    /// model volumes' partitions is written and reads those from the
    /// volume files.
    FromRaw(WriteFn),
    /// Reads the whole raw disk: starts once it is written.
    AfterRaw(WriteFn),
}

/// How `cairn verify` recomputes what a medium claims
/// (`release::verify::media`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// The GPT disk: its partitions, ESP and root hash.
    Disk,
    /// The hybrid ISO: its files against the manifest.
    Iso,
    /// Content equal, byte for byte, to the raw disk of the same stem
    /// (checked before it).
    SameAsRaw,
    /// The raw disk's bytes and a fixed VHD footer (`vhd::parse_footer`):
    /// equal to the raw disk of the same stem, or checked as one.
    RawAndFooter,
    /// A stream-optimised VMDK (`vmdk::check_header`,
    /// `vmdk::check_descriptor`: one extent, itself, no parent), then
    /// content equal to the raw disk of the same stem, or checked as one.
    Vmdk,
    /// A gzip'd tar of one regular member `disk.raw` (`gce::read_disk`),
    /// its bytes equal to the raw disk of the same stem, or checked as
    /// one.
    Tarball,
    /// The raw disk zstd-compressed: decompressed as a stream against the
    /// signed data map's digest (`release::compressed`).
    Compressed,
}

/// Where a medium's ESP is (what the Secure Boot checks read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Esp {
    /// The GPT's EFI partition, at the offset the manifest's layout gives;
    /// it boots the disk UKI.
    Partition,
    /// The ISO's El Torito image; it boots the ISO UKI.
    IsoImage,
    /// The raw disk's, which the medium holds byte for byte (checked
    /// there).
    OfRaw,
}

/// One output format: a row of [`FORMATS`].
pub struct Format {
    /// Its word in `--format`.
    pub name: &'static str,
    pub extension: &'static str,
    /// Further extensions `cairn run` boots as this format (an image from
    /// elsewhere); `verify` checks only the digest of such a file.
    pub aliases: &'static [&'static str],
    /// The build's stage line.
    pub stage: &'static str,
    /// Written when `--format` is not given.
    pub by_default: bool,
    pub write: Write,
    pub verify: Verify,
    pub qemu: crate::host::drive::Drive,
    pub esp: Esp,
    /// `cairn run` boots the file itself (a tarball or compressed disk
    /// is unpacked first).
    pub runs: bool,
    /// Kernel modules the image keeps when this format is asked for (the
    /// platform's disk, network and guest drivers), beside `[kernel]
    /// modules`.
    pub modules: &'static [&'static str],
}

impl PartialEq for Format {
    fn eq(&self, other: &Format) -> bool {
        self.name == other.name
    }
}

impl std::fmt::Debug for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

pub const RAW: Format = Format {
    name: "raw",
    extension: "raw",
    aliases: &["img"],
    stage: "raw disk",
    by_default: true,
    write: Write::Raw,
    verify: Verify::Disk,
    qemu: crate::host::drive::Drive {
        driver: "raw",
        cdrom: false,
        standalone_check: false,
    },
    esp: Esp::Partition,
    runs: true,
    modules: &[],
};

pub const ISO: Format = Format {
    name: "iso",
    extension: "iso",
    aliases: &[],
    stage: "hybrid ISO",
    by_default: true,
    write: Write::Beside(write_iso_row),
    verify: Verify::Iso,
    qemu: crate::host::drive::Drive {
        driver: "raw",
        cdrom: true,
        standalone_check: false,
    },
    esp: Esp::IsoImage,
    runs: true,
    modules: &[],
};

pub const QCOW2: Format = Format {
    name: "qcow2",
    extension: "qcow2",
    aliases: &[],
    stage: "qcow2",
    by_default: true,
    write: Write::FromRaw(write_qcow2_row),
    verify: Verify::SameAsRaw,
    qemu: crate::host::drive::Drive {
        driver: "qcow2",
        cdrom: false,
        standalone_check: true,
    },
    esp: Esp::OfRaw,
    runs: true,
    modules: &[],
};

pub const VHD: Format = Format {
    name: "vhd",
    extension: "vhd",
    aliases: &[],
    stage: "VHD",
    by_default: false,
    write: Write::AfterRaw(write_vhd_row),
    verify: Verify::RawAndFooter,
    qemu: crate::host::drive::Drive {
        driver: "vpc",
        cdrom: false,
        standalone_check: false,
    },
    esp: Esp::OfRaw,
    runs: true,
    modules: &["hv_vmbus", "hv_storvsc", "hv_netvsc", "hv_utils"],
};

pub const VMDK: Format = Format {
    name: "vmdk",
    extension: "vmdk",
    aliases: &[],
    stage: "VMDK",
    by_default: false,
    write: Write::AfterRaw(write_vmdk_row),
    verify: Verify::Vmdk,
    qemu: crate::host::drive::Drive {
        driver: crate::host::vmdk::DRIVER,
        cdrom: false,
        standalone_check: true,
    },
    esp: Esp::OfRaw,
    runs: true,
    modules: &["vmw_pvscsi", "vmxnet3", "vmw_balloon"],
};

pub const GCE: Format = Format {
    name: "gce",
    extension: "tar.gz",
    aliases: &[],
    stage: "GCE tarball",
    by_default: false,
    write: Write::AfterRaw(write_gce_row),
    verify: Verify::Tarball,
    // Its unpacked disk.raw.
    qemu: RAW.qemu,
    esp: Esp::OfRaw,
    runs: false,
    modules: &["virtio_scsi", "gve", "nvme"],
};

pub const ZST: Format = Format {
    name: "zst",
    extension: "raw.zst",
    aliases: &[],
    stage: "raw.zst",
    by_default: false,
    write: Write::AfterRaw(write_zst_row),
    verify: Verify::Compressed,
    qemu: RAW.qemu,
    esp: Esp::OfRaw,
    runs: false,
    modules: &[],
};

/// Every format, in the order they are checked (the raw disk first: the
/// others are compared with it).
pub const FORMATS: &[&Format] = &[&RAW, &ISO, &QCOW2, &VHD, &VMDK, &GCE, &ZST];

impl Format {
    /// The row named `name` in `--format`.
    pub fn by_name(name: &str) -> Option<&'static Format> {
        FORMATS.iter().copied().find(|f| f.name == name)
    }

    /// The row of a file name by its extension (any case; aliases too;
    /// the longest that matches: `x.raw.zst` is compressed, not raw).
    pub fn of_file(name: &str) -> Option<&'static Format> {
        Format::matched(name).map(|(f, _)| f)
    }

    /// The row of `name` and the extension of it that matched.
    fn matched(name: &str) -> Option<(&'static Format, &'static str)> {
        let lower = name.to_ascii_lowercase();
        let ends = |e: &str| {
            lower.len() > e.len() + 1
                && lower.ends_with(e)
                && lower.as_bytes()[lower.len() - e.len() - 1] == b'.'
        };
        FORMATS
            .iter()
            .flat_map(|f| {
                std::iter::once(f.extension)
                    .chain(f.aliases.iter().copied())
                    .map(move |e| (*f, e))
            })
            .filter(|(_, e)| ends(e))
            .max_by_key(|(_, e)| e.len())
    }

    /// The row of a path's file name.
    pub fn of_path(path: &Path) -> Option<&'static Format> {
        Format::of_file(path.file_name()?.to_str()?)
    }

    /// Whether `name` carries this format's own extension (not an alias).
    pub fn is_file(&self, name: &str) -> bool {
        Format::matched(name).is_some_and(|(f, e)| f == self && e == self.extension)
    }

    /// The stem of `name`, a file of this row (`x-1` of `x-1.tar.gz`).
    pub fn stem<'a>(&self, name: &'a str) -> &'a str {
        name.get(..name.len().saturating_sub(self.extension.len() + 1))
            .unwrap_or("")
    }

    /// Its file name for an image stem (`NAME-VERSION.EXT`).
    pub fn file(&self, stem: &str) -> String {
        format!("{stem}.{}", self.extension)
    }
}

/// The formats' names as a message lists them: `raw, iso, qcow2`.
pub fn names() -> String {
    FORMATS
        .iter()
        .map(|f| f.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The extensions of the rows `keep` keeps, as a message lists them:
/// `.raw, .iso or .qcow2`.
pub fn extensions(keep: impl Fn(&Format) -> bool) -> String {
    let e: Vec<String> = FORMATS
        .iter()
        .filter(|f| keep(f))
        .map(|f| format!(".{}", f.extension))
        .collect();
    match e.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => last.clone(),
        None => String::new(),
    }
}

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

fn write_vhd_row(m: &MediaInputs, out: &Path) -> Result<Option<Sha256>> {
    vhd::write_vhd(m.raw, out, m.volume_id, m.epoch)?;
    Ok(None)
}

fn write_vmdk_row(m: &MediaInputs, out: &Path) -> Result<Option<Sha256>> {
    vmdk::write_vmdk(m.raw, out, m.volume_id, m.epoch)?;
    Ok(None)
}

fn write_gce_row(m: &MediaInputs, out: &Path) -> Result<Option<Sha256>> {
    gce::write_gce(m.raw, out, m.epoch)?;
    Ok(None)
}

fn write_zst_row(m: &MediaInputs, out: &Path) -> Result<Option<Sha256>> {
    zst::write_zst_to(m.raw, out)?;
    Ok(None)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row is found by its name and by its file name (any case), no
    /// two rows share a name or an extension, and the raw disk, which the
    /// others are written from and checked against, comes first.
    #[test]
    fn each_format_is_one_row_found_by_name_and_file() {
        let (mut names_seen, mut seen) = (
            std::collections::BTreeSet::new(),
            std::collections::BTreeSet::new(),
        );
        for f in FORMATS {
            assert_eq!(Format::by_name(f.name), Some(*f));
            assert_eq!(Format::of_file(&f.file("x-1.0")), Some(*f));
            assert!(f.is_file(&f.file("X").to_uppercase()));
            assert_eq!(Format::of_path(Path::new(&f.file("/o/x"))), Some(*f));
            assert!(names_seen.insert(f.name), "{} twice", f.name);
            for e in std::iter::once(&f.extension).chain(f.aliases) {
                assert!(seen.insert(e), "extension {e} twice");
            }
        }
        assert_eq!(FORMATS[0], &RAW);
        let raws = FORMATS
            .iter()
            .filter(|f| matches!(f.write, Write::Raw))
            .count();
        assert_eq!(raws, 1, "one row is the raw disk every other derives from");
        // An alias finds its row but is not the row's own file (verify
        // checks only its digest).
        let alias = format!("x.{}", RAW.aliases[0]);
        assert_eq!(Format::of_file(&alias), Some(&RAW));
        assert!(!RAW.is_file(&alias));
        for none in ["x", ".qcow2x", "x.vmdkx", ""] {
            assert_eq!(Format::of_file(none), None, "{none}");
        }
        assert_eq!(Format::of_file(".iso"), None, "a dot file has no stem");
        // Double extensions: the longest wins; the stem is what is left.
        assert_eq!(Format::of_file("x-1.RAW.zst"), Some(&ZST));
        assert_eq!(Format::of_file("x-1.raw"), Some(&RAW));
        assert_eq!(Format::of_file("x-1.tar.gz"), Some(&GCE));
        assert_eq!(Format::of_file(".raw.zst"), None);
        assert_eq!(Format::of_file("x.zst"), None);
        assert!(!RAW.is_file("x-1.raw.zst") && ZST.is_file("x-1.raw.zst"));
        assert_eq!(GCE.stem("x-1.tar.gz"), "x-1");
        assert_eq!(RAW.stem("x-1.raw"), "x-1");
        assert_eq!(
            extensions(|_| true),
            ".raw, .iso, .qcow2, .vhd, .vmdk, .tar.gz or .raw.zst"
        );
        assert_eq!(extensions(|f| f.esp != Esp::OfRaw), ".raw or .iso");
        assert_eq!(names(), "raw, iso, qcow2, vhd, vmdk, gce, zst");
    }
}
