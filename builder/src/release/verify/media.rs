//! Per-medium checks: what each medium claims, recomputed from the medium
//! itself. The raw disk: GPT where the manifest says, the root's dm-verity
//! root hash, the UKI's command line. The ISO: the root file's root hash
//! and its UKI. The qcow2: its content equals the (checked) raw's, or, with
//! no raw beside it, its content converted and checked as a raw.
//! Invariant: every medium is read through the handle whose digest was
//! checked, except where a tool (mtools, xorriso, qemu-img) needs a path.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::gpt::{read_gpt, GptPartition};
use super::verity::{verity_root_hash, verity_salt};
use super::{failed, VerifyError, MANIFEST};
use crate::media::disk::{LABEL_ESP, LABEL_ROOT};
use crate::release::manifest::Manifest;

/// The raw disk at `path`, open as `f` (`len` bytes).
pub(super) fn check_raw(
    path: &Path,
    mut f: &File,
    len: u64,
    name: &str,
    manifest: &Manifest,
    checks: &mut Vec<String>,
) -> Result<(), VerifyError> {
    let v = &manifest.verity;
    let salt = verity_salt(manifest)?;
    let parts = read_gpt(&mut f, len).map_err(|e| failed(format!("partitions: {name}: {e}")))?;
    let find = |label: &str| -> Result<&GptPartition, VerifyError> {
        let mut it = parts.iter().filter(|p| p.name == label);
        let p = it
            .next()
            .ok_or_else(|| failed(format!("partitions: {name}: no {label} partition")))?;
        if it.next().is_some() {
            return Err(failed(format!(
                "partitions: {name}: more than one {label} partition"
            )));
        }
        Ok(p)
    };
    let root = find(LABEL_ROOT)?.clone();
    let esp = find(LABEL_ESP)?.clone();
    for p in &parts {
        if let Some(m) = manifest.partitions.iter().find(|m| m.label == p.name) {
            if (m.offset, m.size) != (p.offset, p.size) {
                return Err(failed(format!(
                    "partitions: {name}: {} is at {}+{} in the GPT but {}+{} in {MANIFEST}",
                    p.name, p.offset, p.size, m.offset, m.size
                )));
            }
        }
    }
    checks.push(format!(
        "partitions: {name}: GPT has {LABEL_ESP} and {LABEL_ROOT} where {MANIFEST} says"
    ));

    if v.data_size > root.size {
        return Err(failed(format!(
            "root hash: {name}: verity data size {} exceeds the {LABEL_ROOT} partition ({} bytes)",
            v.data_size, root.size
        )));
    }
    f.seek(SeekFrom::Start(root.offset))
        .map_err(|e| failed(format!("root hash: {name}: {e}")))?;
    let got = verity_root_hash(&mut f, v.data_size, &salt)
        .map_err(|e| failed(format!("root hash: {name}: {e}")))?;
    if got != v.root_hash {
        return Err(failed(format!(
            "root hash: {name}: image computes {got}, manifest says {}",
            v.root_hash
        )));
    }
    checks.push(format!("root hash: {name}: recomputed {got}"));
    for vol in &manifest.volumes {
        let data = find(&vol.partition)?;
        let _hash = find(&vol.hash_partition)?;
        check_volume(&mut f, data.offset, data.size, vol, name, checks)?;
    }

    let uki_path = uki_path(manifest);
    let uki = extract_uki(path, esp.offset, uki_path)
        .map_err(|e| failed(format!("uki: {name}: cannot extract {uki_path}: {e}")))?;
    check_uki_cmdline(
        &uki,
        name,
        manifest,
        Some(&manifest.kernel.cmdline),
        "kernel.cmdline",
        checks,
    )
}

/// A model volume's root hash, recomputed from `data_size` bytes of the
/// medium at `offset` (the volume's partition or file, `room` bytes).
fn check_volume(
    f: &mut &File,
    offset: u64,
    room: u64,
    vol: &crate::release::manifest::VolumeInfo,
    name: &str,
    checks: &mut Vec<String>,
) -> Result<(), VerifyError> {
    let what = format!("volume {}", vol.name);
    if vol.hash_algorithm != "sha256"
        || u64::from(vol.data_block_size) != super::verity::VERITY_BLOCK
        || u64::from(vol.hash_block_size) != super::verity::VERITY_BLOCK
    {
        return Err(failed(format!(
            "{what}: {MANIFEST} describes verity {} with {}/{}-byte blocks; only sha256 with 4096-byte blocks is supported",
            vol.hash_algorithm, vol.data_block_size, vol.hash_block_size
        )));
    }
    let salt = hex::decode(&vol.salt)
        .map_err(|_| failed(format!("{what}: {MANIFEST} verity salt is not valid hex")))?;
    if vol.data_size > room {
        return Err(failed(format!(
            "{what}: {name}: verity data size {} exceeds its place on the medium ({room} bytes)",
            vol.data_size
        )));
    }
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| failed(format!("{what}: {name}: {e}")))?;
    let got = verity_root_hash(&mut *f, vol.data_size, &salt)
        .map_err(|e| failed(format!("{what}: {name}: {e}")))?;
    if got != vol.root_hash {
        return Err(failed(format!(
            "{what}: {name}: the medium computes root hash {got}, manifest says {}",
            vol.root_hash
        )));
    }
    checks.push(format!("{what}: {name}: recomputed root hash {got}"));
    Ok(())
}

/// The UKI's command line must carry the manifest's root hashes (the
/// root's and every volume's) and be the command line the manifest
/// records for this medium.
fn check_uki_cmdline(
    uki: &[u8],
    name: &str,
    manifest: &Manifest,
    recorded: Option<&String>,
    field: &str,
    checks: &mut Vec<String>,
) -> Result<(), VerifyError> {
    let file = crate::release::secureboot::file_name(uki_path(manifest));
    let cmdline = crate::pipeline::uki::read_cmdline(uki)
        .map_err(|e| failed(format!("uki: {name}: {file}: {e:#}")))?;
    let mut wants = vec![format!("cairn.roothash={}", manifest.verity.root_hash)];
    for v in &manifest.volumes {
        let kind = crate::pipeline::volumes::Kind::parse(&v.kind).ok_or_else(|| {
            failed(format!(
                "volume {}: {MANIFEST} names kind {:?}; this cairn knows \"apps\" and \"model\"",
                v.name, v.kind
            ))
        })?;
        wants.push(crate::pipeline::volumes::cmdline_word(
            kind,
            &v.name,
            &v.root_hash,
        ));
    }
    for want in wants {
        if !cmdline.split_ascii_whitespace().any(|t| t == want) {
            return Err(failed(format!(
                "uki: {name}: {file} command line lacks {want}: {cmdline:?}"
            )));
        }
    }
    if Some(&cmdline) != recorded {
        return Err(failed(format!(
            "uki: {name}: {file} command line {cmdline:?} differs from manifest {field} {recorded:?}"
        )));
    }
    checks.push(format!(
        "uki: {name}: {file} command line carries cairn.roothash and every volume's root hash (cairn.apps=, cairn.volume.NAME=) and matches {MANIFEST}"
    ));
    Ok(())
}

/// The ISO: the root file's dm-verity root hash, recomputed from its extent
/// on the medium, and the command line of the UKI in the El Torito EFI image.
pub(super) fn check_iso(
    path: &Path,
    mut f: &File,
    len: u64,
    name: &str,
    manifest: &Manifest,
    checks: &mut Vec<String>,
) -> Result<(), VerifyError> {
    let v = &manifest.verity;
    let salt = verity_salt(manifest)?;
    let files = crate::media::iso::list_iso(path)
        .map_err(|e| failed(format!("iso: {name}: cannot read its file table: {e:#}")))?;
    let root = files
        .iter()
        .find(|f| f.path == crate::media::iso::ISO_ROOT)
        .ok_or_else(|| failed(format!("iso: {name}: no {}", crate::media::iso::ISO_ROOT)))?;
    if !root.contiguous || v.data_size > root.size || root.offset.saturating_add(root.size) > len {
        return Err(failed(format!(
            "root hash: {name}: {} is not one extent of at least {} bytes inside the medium",
            crate::media::iso::ISO_ROOT,
            v.data_size
        )));
    }
    f.seek(SeekFrom::Start(root.offset))
        .map_err(|e| failed(format!("root hash: {name}: {e}")))?;
    let got = verity_root_hash(&mut f, v.data_size, &salt)
        .map_err(|e| failed(format!("root hash: {name}: {e}")))?;
    if got != v.root_hash {
        return Err(failed(format!(
            "root hash: {name}: image computes {got}, manifest says {}",
            v.root_hash
        )));
    }
    checks.push(format!(
        "root hash: {name}: recomputed {got} from {}",
        crate::media::iso::ISO_ROOT
    ));
    for vol in &manifest.volumes {
        let file = files
            .iter()
            .find(|f| f.path == vol.iso_image)
            .ok_or_else(|| failed(format!("volume {}: {name}: no {}", vol.name, vol.iso_image)))?;
        if !files.iter().any(|f| f.path == vol.iso_hash) {
            return Err(failed(format!(
                "volume {}: {name}: no {}",
                vol.name, vol.iso_hash
            )));
        }
        // Over 4 GiB a file is several extents; xorriso writes them one
        // after the other, which is what the initramfs' loop device reads.
        if !file.contiguous || file.offset.saturating_add(file.size) > len {
            return Err(failed(format!(
                "volume {}: {name}: {} is not one run of blocks inside the medium",
                vol.name, vol.iso_image
            )));
        }
        check_volume(&mut f, file.offset, file.size, vol, name, checks)?;
    }
    let dir = tempfile::tempdir().map_err(|e| failed(format!("iso: temporary folder: {e}")))?;
    let efi = dir.path().join("efi.img");
    crate::media::iso::read_file_from_iso(path, crate::media::iso::ISO_EFI_IMG, &efi).map_err(
        |e| {
            failed(format!(
                "uki: {name}: cannot extract {}: {e:#}",
                crate::media::iso::ISO_EFI_IMG
            ))
        },
    )?;
    let uki_path = uki_path(manifest);
    let uki = extract_uki(&efi, 0, uki_path)
        .map_err(|e| failed(format!("uki: {name}: cannot extract {uki_path}: {e}")))?;
    check_uki_cmdline(
        &uki,
        name,
        manifest,
        manifest.kernel.iso_cmdline.as_ref(),
        "kernel.iso_cmdline",
        checks,
    )
}

/// Where the UKI is on the medium's ESP: the boot path, or behind shim.
fn uki_path(manifest: &Manifest) -> &'static str {
    crate::media::esp::uki_path(manifest.boot.shim.is_some())
}

/// Copy the UKI at `esp_path` out of the FAT ESP at `offset` with mtools.
fn extract_uki(image: &Path, offset: u64, esp_path: &str) -> Result<Vec<u8>, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let dest = dir.path().join("uki.efi");
    let src = format!("{}@@{offset}", image.display());
    let from = format!("::/{esp_path}");
    let sh = crate::host::runner::shell().map_err(|e| e.to_string())?;
    sh.set_var("MTOOLS_SKIP_CHECK", "1");
    crate::host::runner::run("uki", xshell::cmd!(sh, "mcopy -n -i {src} {from} {dest}")).map_err(
        |e| {
            format!("{e:#}")
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("; ")
        },
    )?;
    std::fs::read(&dest).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------
// qcow2
// ---------------------------------------------------------------------------

pub use crate::host::qcow2::Qcow2Header;

/// The incompatible-feature bit saying the header has a compression type
/// field (byte 104); the only one cairn writes (zstd clusters).
pub const QCOW2_COMPRESSION_TYPE_BIT: u64 = crate::host::qcow2::COMPRESSION_TYPE_BIT;

/// The head of a qcow2 file: the shared check that it stands alone
/// (`host::qcow2`: no backing file, no external data file), then what
/// cairn never writes: encryption, any incompatible feature but the
/// compression type, a compression type other than zstd.
pub fn read_qcow2_header(head: &[u8]) -> Result<Qcow2Header, String> {
    let h = crate::host::qcow2::check_standalone(head)?;
    if h.crypt_method != 0 {
        return Err(format!(
            "is encrypted (method {}); cairn writes plain qcow2",
            h.crypt_method
        ));
    }
    let others = h.incompatible_features & !QCOW2_COMPRESSION_TYPE_BIT;
    if others != 0 {
        return Err(format!(
            "uses incompatible qcow2 features {others:#x} (dirty, corrupt, extended L2, ...) that cairn never writes",
        ));
    }
    if h.incompatible_features & QCOW2_COMPRESSION_TYPE_BIT != 0 && h.compression_type != 1 {
        return Err(format!(
            "compression type {} is not zstd (1), the only one cairn writes",
            h.compression_type
        ));
    }
    Ok(h)
}

/// The qcow2 at `path` (open as `f`). With `raw` (a raw disk of the same
/// image, already checked in this run) its content must equal the raw's,
/// byte for byte (`qemu-img compare`); without, it is converted to a
/// temporary raw that gets the raw checks.
/// A fixed VHD: its footer checked strictly (`media::vhd::parse_footer`:
/// any other disk type, size or field is refused), then the bytes before
/// it compared with the raw disk of the same stem, byte for byte; without
/// one, checked as a raw disk themselves.
pub(super) fn check_vhd(
    path: &Path,
    f: &File,
    len: u64,
    name: &str,
    raw: Option<(&Path, &str, u64)>,
    manifest: &Manifest,
    checks: &mut Vec<String>,
) -> Result<(), VerifyError> {
    use std::os::unix::fs::FileExt as _;
    let at = len
        .checked_sub(crate::media::vhd::FOOTER)
        .ok_or_else(|| failed(format!("vhd: {name}: {len} bytes holds no footer")))?;
    let mut footer = vec![0u8; crate::media::vhd::FOOTER as usize];
    f.read_exact_at(&mut footer, at)
        .map_err(|e| failed(format!("vhd: {name}: {e}")))?;
    let footer = crate::media::vhd::parse_footer(&footer, len)
        .map_err(|e| failed(format!("vhd: {name}: {e}")))?;
    let Some((raw_path, raw_name, raw_len)) = raw else {
        check_raw(path, f, footer.size, name, manifest, checks)?;
        checks.push(format!("vhd: {name}: fixed footer checked"));
        return Ok(());
    };
    if footer.size != raw_len {
        return Err(failed(format!(
            "vhd: {name}: its disk is {} bytes, {raw_name} is {raw_len}",
            footer.size
        )));
    }
    let r = File::open(raw_path).map_err(|e| failed(format!("vhd: {raw_name}: {e}")))?;
    const PIECE: u64 = 4 << 20;
    let (mut a, mut b) = (vec![0u8; PIECE as usize], vec![0u8; PIECE as usize]);
    let mut done = 0u64;
    while done < footer.size {
        let n = (footer.size - done).min(PIECE) as usize;
        f.read_exact_at(&mut a[..n], done)
            .map_err(|e| failed(format!("vhd: {name}: {e}")))?;
        r.read_exact_at(&mut b[..n], done)
            .map_err(|e| failed(format!("vhd: {raw_name}: {e}")))?;
        if a[..n] != b[..n] {
            let i = a[..n]
                .iter()
                .zip(&b[..n])
                .position(|(x, y)| x != y)
                .unwrap_or(0);
            return Err(failed(format!(
                "vhd: {name}: content differs from {raw_name} at byte {}",
                done + i as u64
            )));
        }
        done += n as u64;
    }
    checks.push(format!(
        "vhd: {name}: content equals {raw_name}; fixed footer checked"
    ));
    Ok(())
}

pub(super) fn check_qcow2(
    path: &Path,
    mut f: &File,
    name: &str,
    raw: Option<(&Path, &str, u64)>,
    manifest: &Manifest,
    checks: &mut Vec<String>,
) -> Result<(), VerifyError> {
    let mut head = Vec::new();
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.take(crate::host::qcow2::HEAD_MAX).read_to_end(&mut head))
        .map_err(|e| failed(format!("qcow2: {name}: {e}")))?;
    let h = read_qcow2_header(&head).map_err(|e| failed(format!("qcow2: {name}: {e}")))?;
    // qemu-img opens it as qcow2 with no backing chain, whatever it says.
    let source = crate::host::qcow2::qemu_img_source(path)
        .map_err(|e| failed(format!("qcow2: {name}: {e}")))?;
    same_content(
        crate::media::QCOW2.name,
        &source,
        name,
        h.virtual_size,
        raw,
        manifest,
        checks,
    )
}

/// A stream-optimised VMDK: its header and embedded descriptor checked
/// strictly (`media::vmdk`: one extent, the file itself, no parent), then
/// its content compared with the raw disk of the same stem through
/// qemu-img with no backing chain; without one, converted and checked as
/// a raw disk.
pub(super) fn check_vmdk(
    path: &Path,
    f: &File,
    len: u64,
    name: &str,
    raw: Option<(&Path, &str, u64)>,
    manifest: &Manifest,
    checks: &mut Vec<String>,
) -> Result<(), VerifyError> {
    use std::os::unix::fs::FileExt as _;
    let mut head = vec![0u8; 512];
    f.read_exact_at(&mut head, 0)
        .map_err(|e| failed(format!("vmdk: {name}: {e}")))?;
    let h = crate::media::vmdk::check_header(&head, len)
        .map_err(|e| failed(format!("vmdk: {name}: {e}")))?;
    let mut d = vec![0u8; h.descriptor.1 as usize];
    f.read_exact_at(&mut d, h.descriptor.0)
        .map_err(|e| failed(format!("vmdk: {name}: {e}")))?;
    crate::media::vmdk::check_descriptor(&d, h.size, name)
        .map_err(|e| failed(format!("vmdk: {name}: {e}")))?;
    let source = crate::media::vmdk::qemu_img_source(path)
        .map_err(|e| failed(format!("vmdk: {name}: {e}")))?;
    same_content(
        crate::media::VMDK.name,
        &source,
        name,
        h.size,
        raw,
        manifest,
        checks,
    )?;
    if let Some(c) = checks.last_mut() {
        c.push_str("; header and descriptor checked");
    }
    Ok(())
}

/// A GCE-style tarball: read with cairn's tar reader
/// (`media::gce::read_disk`: one regular member, `disk.raw`), its bytes
/// compared with the raw disk of the same stem as they are decompressed;
/// without one, unpacked to a temporary file and checked as a raw disk.
pub(super) fn check_tarball(
    f: &File,
    name: &str,
    raw: Option<(&Path, &str, u64)>,
    manifest: &Manifest,
    checks: &mut Vec<String>,
) -> Result<(), VerifyError> {
    use std::os::unix::fs::FileExt as _;
    let at = |e: String| failed(format!("gce: {name}: {e}"));
    let stream = std::io::BufReader::with_capacity(1 << 20, crate::release::compressed::At::new(f));
    let member = crate::media::gce::MEMBER;
    let Some((raw_path, raw_name, raw_len)) = raw else {
        let dir = tempfile::tempdir().map_err(|e| at(format!("temporary folder: {e}")))?;
        let tmp = dir.path().join(crate::media::RAW.file("disk"));
        let mut w = File::create(&tmp).map_err(|e| at(e.to_string()))?;
        crate::media::gce::read_disk(stream, None, |r, _| {
            std::io::copy(r, &mut w)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .map_err(at)?;
        let t = File::open(&tmp).map_err(|e| at(e.to_string()))?;
        let len = t.metadata().map_err(|e| at(e.to_string()))?.len();
        check_raw(&tmp, &t, len, name, manifest, checks)?;
        checks.push(format!("gce: {name}: one member, {member}"));
        return Ok(());
    };
    let r = File::open(raw_path).map_err(|e| failed(format!("gce: {raw_name}: {e}")))?;
    crate::media::gce::read_disk(stream, Some(raw_len), |data, size| {
        const PIECE: u64 = 4 << 20;
        let (mut a, mut b) = (vec![0u8; PIECE as usize], vec![0u8; PIECE as usize]);
        let mut done = 0u64;
        while done < size {
            let n = (size - done).min(PIECE) as usize;
            data.read_exact(&mut a[..n])
                .map_err(|e| format!("{member}: {e}"))?;
            r.read_exact_at(&mut b[..n], done)
                .map_err(|e| format!("{raw_name}: {e}"))?;
            if let Some(i) = a[..n].iter().zip(&b[..n]).position(|(x, y)| x != y) {
                return Err(format!(
                    "{member} differs from {raw_name} at byte {}",
                    done + i as u64
                ));
            }
            done += n as u64;
        }
        Ok(())
    })
    .map_err(at)?;
    checks.push(format!(
        "gce: {name}: one member, {member}, equal to {raw_name}"
    ));
    Ok(())
}

/// A disk image qemu-img reads as `source` (its header already checked):
/// with `raw` (a raw disk of the same image, checked in this run) its
/// content must equal the raw's, byte for byte (`qemu-img compare`);
/// without, it is converted to a temporary raw that gets the raw checks.
fn same_content(
    kind: &str,
    source: &str,
    name: &str,
    virtual_size: u64,
    raw: Option<(&Path, &str, u64)>,
    manifest: &Manifest,
    checks: &mut Vec<String>,
) -> Result<(), VerifyError> {
    let sh = crate::host::runner::shell().map_err(|e| failed(format!("{kind}: {name}: {e}")))?;
    match raw {
        Some((raw_path, raw_name, raw_len)) => {
            if virtual_size != raw_len {
                return Err(failed(format!(
                    "{kind}: {name}: its disk is {} bytes, {raw_name} is {raw_len}",
                    virtual_size
                )));
            }
            let (code, out, err) = crate::host::runner::run_code(
                &format!("verify: {kind}"),
                xshell::cmd!(sh, "qemu-img compare -f raw {raw_path} {source}"),
            )
            .map_err(|e| failed(format!("{kind}: {name}: {e:#}")))?;
            let said = |s: &str| s.lines().next().unwrap_or("").trim().to_string();
            match code {
                0 => {}
                1 => {
                    return Err(failed(format!(
                        "{kind}: {name}: content differs from {raw_name} ({})",
                        said(&out)
                    )))
                }
                _ => {
                    return Err(failed(format!(
                        "{kind}: {name}: qemu-img compare failed (exit {code}): {}",
                        said(&err)
                    )))
                }
            }
            checks.push(format!(
                "{kind}: {name}: content equals {raw_name} (qemu-img compare)"
            ));
        }
        None => {
            // The conversion writes the whole disk (sparsely): only the
            // size the manifest's partitions describe, never a claimed one.
            let end = manifest
                .partitions
                .iter()
                .map(|p| p.offset.saturating_add(p.size))
                .max()
                .unwrap_or(0);
            if end == 0 || virtual_size < end || virtual_size > end.saturating_add(2 << 20) {
                return Err(failed(format!(
                    "{kind}: {name}: its disk is {} bytes, but the partitions in {MANIFEST} end at {end}",
                    virtual_size
                )));
            }
            let dir = tempfile::tempdir()
                .map_err(|e| failed(format!("{kind}: temporary folder: {e}")))?;
            let tmp = dir.path().join(crate::media::RAW.file("disk"));
            crate::host::runner::run(
                &format!("verify: {kind}"),
                xshell::cmd!(sh, "qemu-img convert -q -O raw {source} {tmp}"),
            )
            .map_err(|e| failed(format!("{kind}: {name}: cannot read its content: {e:#}")))?;
            let t = File::open(&tmp).map_err(|e| failed(format!("{kind}: {name}: {e}")))?;
            let len = t
                .metadata()
                .map_err(|e| failed(format!("{kind}: {name}: {e}")))?
                .len();
            check_raw(&tmp, &t, len, name, manifest, checks)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(version: u32, backing: u64, crypt: u32, incompat: u64) -> Vec<u8> {
        let mut h = vec![0u8; 120];
        h[100..104].copy_from_slice(&112u32.to_be_bytes());
        h[104] = 1;
        h[..4].copy_from_slice(b"QFI\xfb");
        h[4..8].copy_from_slice(&version.to_be_bytes());
        h[8..16].copy_from_slice(&backing.to_be_bytes());
        h[24..32].copy_from_slice(&(72u64 << 20).to_be_bytes());
        h[32..36].copy_from_slice(&crypt.to_be_bytes());
        h[72..80].copy_from_slice(&incompat.to_be_bytes());
        h
    }

    #[test]
    fn qcow2_headers_cairn_never_writes_are_refused() {
        let ok = read_qcow2_header(&header(3, 0, 0, 0)).unwrap();
        assert_eq!(ok.virtual_size, 72 << 20);
        assert!(read_qcow2_header(&header(2, 0, 0, 0)).is_ok());
        // What cairn writes: zstd clusters.
        let zstd = read_qcow2_header(&header(3, 0, 0, 8)).unwrap();
        assert_eq!(zstd.compression_type, 1);
        for (h, why) in [
            (header(3, 512, 0, 0), "backing file"),
            (header(3, 0, 1, 0), "encrypted"),
            (header(3, 0, 0, 4), "external data file"),
            (header(3, 0, 0, 4 | 8), "external data file"),
            (header(3, 0, 0, 1 | 8), "features 0x1 "),
            (
                {
                    let mut h = header(3, 0, 0, 8);
                    h[104] = 2;
                    h
                },
                "compression type 2",
            ),
            (
                {
                    let mut h = header(3, 0, 0, 8);
                    h[100..104].copy_from_slice(&104u32.to_be_bytes());
                    h
                },
                "needs 105",
            ),
            (header(3, 0, 0, 8)[..104].to_vec(), "truncated"),
            (header(4, 0, 0, 0), "version 4"),
            (b"QFI".to_vec(), "magic"),
            (header(3, 0, 0, 0)[..50].to_vec(), "truncated"),
        ] {
            let e = read_qcow2_header(&h).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::release::signify::fuzz_cases(2000)))]
        #[test]
        fn qcow2_header_junk_never_panics(data in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = read_qcow2_header(&data);
            let mut d = b"QFI\xfb\0\0\0\x03".to_vec();
            d.extend_from_slice(&data);
            let _ = read_qcow2_header(&d);
        }
    }
}
