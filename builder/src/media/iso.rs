//! Hybrid ISO: one ISO 9660 image that boots from CD/DVD and, written raw
//! to a USB stick or disk, on both UEFI and legacy BIOS. Made with xorriso
//! from files (no loop devices, no mounts).
//!
//! Layout (the grub-mkrescue scheme, which boots in QEMU under OVMF and
//! SeaBIOS as CD-ROM, virtio disk and USB stick):
//!
//! ```text
//! /boot/boot.cat                     El Torito catalog
//! /boot/efi.img                      FAT image: EFI/BOOT/BOOTX64.EFI = the UKI
//!                                    (or shim, mmx64.efi and the UKI as
//!                                    grubx64.efi: `media::esp`)
//!                                    (El Torito UEFI entry; also the GPT
//!                                    "EFI System" partition 2 for USB boot)
//! /boot/grub/i386-pc/eltorito.img    GRUB core (cdboot + core, modules embedded)
//! /boot/grub/grub.cfg                serial+console, linux /cairn/vmlinuz CMDLINE, initrd
//! /cairn/vmlinuz  /cairn/initrd      the UKI's kernel and initramfs, for BIOS
//! /cairn/root.squashfs /cairn/root.verity
//! /cairn/apps.squashfs /cairn/apps.verity                  the apps volume (over the root)
//! /cairn/models/NAME.squashfs /cairn/models/NAME.verity   one pair per model volume
//! MBR: GRUB boot_hybrid.img (BIOS boot from USB), protective MBR + GPT
//! ```
//!
//! The EFI image lives once, inside the ISO tree; El Torito points at it for
//! CD boot and a GPT entry exposes the same blocks for USB boot. (An EFI
//! image *appended* after the ISO volume with a 0 sector count did not boot
//! from CD under OVMF, which sizes such images from the ISO volume end.)
//!
//! Reproducible: SOURCE_DATE_EPOCH, `--modification-date`,
//! `--set_all_file_dates`, `-r` (uid/gid 0, normalised modes), the GPT disk
//! GUID from the modification date, `mkfs.vfat --invariant` with a derived
//! serial, and no xorriso/mkisofs startup files.
//!
//! `-iso-level 3`: a file over 4 GiB (a model volume) is stored as several
//! consecutive extents of one file, which Linux's iso9660 reads as one.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::Digest as _;

use crate::host::digest::Sha256;

/// The SeaBIOS/PC-BIOS hybrid MBR and the GRUB module directory (Debian
/// package `grub-pc-bin`).
pub const GRUB_I386_PC: &str = "/usr/lib/grub/i386-pc";
/// Path of the root image inside the ISO; the initramfs finds the medium by it.
pub const ISO_ROOT: &str = "/cairn/root.squashfs";
pub const ISO_VERITY: &str = "/cairn/root.verity";
/// Folder of the model volumes: `NAME.squashfs` and `NAME.verity` each.
pub const ISO_MODELS: &str = "/cairn/models";

/// The apps volume's image and hash tree on the ISO.
pub const ISO_APPS: &str = "/cairn/apps.squashfs";
pub const ISO_APPS_VERITY: &str = "/cairn/apps.verity";

/// The ISO paths of a model volume's image and hash tree.
pub fn model_paths(name: &str) -> (String, String) {
    (
        format!("{ISO_MODELS}/{name}.squashfs"),
        format!("{ISO_MODELS}/{name}.verity"),
    )
}

/// The ISO paths of a volume's image and hash tree.
pub fn volume_paths(kind: crate::pipeline::volumes::Kind, name: &str) -> (String, String) {
    match kind {
        crate::pipeline::volumes::Kind::Apps => (ISO_APPS.into(), ISO_APPS_VERITY.into()),
        crate::pipeline::volumes::Kind::Model => model_paths(name),
    }
}
pub const ISO_KERNEL: &str = "/cairn/vmlinuz";
pub const ISO_INITRD: &str = "/cairn/initrd";
pub const ISO_GRUB_CFG: &str = "/boot/grub/grub.cfg";
pub const ISO_EFI_IMG: &str = "/boot/efi.img";
const ISO_ELTORITO: &str = "/boot/grub/i386-pc/eltorito.img";
const ISO_CATALOG: &str = "/boot/boot.cat";
/// FAT label of the EFI image.
pub const EFI_LABEL: &str = "CAIRN-EFI";

/// GRUB modules built into the BIOS core image (no module directory on
/// the ISO: everything grub.cfg needs is embedded).
const GRUB_MODULES: &[&str] = &[
    "biosdisk",
    "iso9660",
    "part_msdos",
    "part_gpt",
    "normal",
    "configfile",
    "linux",
    "echo",
    "serial",
    "terminal",
    "test",
    "search",
    "search_fs_file",
];

pub struct IsoInputs<'a> {
    /// UKI whose cmdline has `cairn.roothash=… cairn.medium=iso cairn.state=ram`.
    pub uki: &'a Path,
    /// `[boot] shim`: shim and MokManager in front of the UKI.
    pub shim: Option<&'a crate::pipeline::shim::Shim>,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    /// The same command line, used by GRUB for BIOS boot.
    pub cmdline: &'a str,
    /// The squashfs root.
    pub root: &'a Path,
    /// Its dm-verity hash tree.
    pub verity: &'a Path,
    /// The model volumes.
    pub volumes: &'a [crate::pipeline::volumes::Volume],
    /// ISO 9660 volume ID (1-32 of `A-Z a-z 0-9 _ - .`); see [`volume_id`].
    pub volume_id: &'a str,
    pub epoch: u64,
}

/// A volume ID for an image: upper case, other characters as `_`, at most
/// 32 characters (`cairn-test` `1` -> `CAIRN_TEST_1`).
pub fn volume_id(name: &str, version: &str) -> String {
    let s: String = format!("{name}_{version}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .take(32)
        .collect();
    if s.is_empty() {
        "CAIRN".to_string()
    } else {
        s
    }
}

fn check_volume_id(v: &str) -> Result<()> {
    if v.is_empty()
        || v.len() > 32
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        bail!(
            "iso: volume id {v:?} must be 1-32 characters of A-Z a-z 0-9 _ - . \
             (cairn::media::iso::volume_id makes one)"
        );
    }
    Ok(())
}

/// `YYYYMMDDhhmmss00` (UTC) for `epoch`, as xorriso's `--modification-date=`.
pub fn iso_timestamp(epoch: u64) -> String {
    crate::host::time::Utc::from_epoch(epoch).iso9660()
}

/// One GRUB word, single-quoted when it holds anything but safe characters.
fn grub_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"=,._-:/+@%".contains(&b))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// The GRUB configuration for BIOS boot: console on screen and ttyS0, then
/// straight into the kernel (no menu: an appliance has one entry).
pub fn grub_cfg(cmdline: &str) -> String {
    let words: Vec<String> = cmdline.split_whitespace().map(grub_quote).collect();
    format!(
        "serial --unit=0 --speed=115200\n\
         terminal_input console serial\n\
         terminal_output console serial\n\
         echo 'cairn: GRUB (BIOS) loading the kernel'\n\
         linux {ISO_KERNEL} {}\n\
         initrd {ISO_INITRD}\n\
         boot\n",
        words.join(" ")
    )
}

/// A graft-point source path for xorriso (`=` and `\` escaped).
fn graft(iso_path: &str, src: &Path) -> Result<String> {
    let s = src
        .to_str()
        .with_context(|| format!("iso: path {} is not UTF-8", src.display()))?;
    Ok(format!(
        "{iso_path}={}",
        s.replace('\\', "\\\\").replace('=', "\\=")
    ))
}

/// The EFI image size for its files: 1/8 slack plus 2 MiB for FAT
/// metadata, rounded up to a MiB.
fn efi_image_size(payload: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    (payload + payload / 8 + 2 * MIB).div_ceil(MIB) * MIB
}

/// Writes the hybrid ISO at `out`, using `work` for intermediate files,
/// and returns its sha256. xorriso writes it into a pipe; cairn hashes it
/// on the way and writes it around the page cache
/// ([`crate::host::direct`]): an ISO of many GB of models is neither read
/// back to hash it nor held in memory.
pub fn write_iso(inp: &IsoInputs, work: &Path, out: &Path) -> Result<Sha256> {
    write_iso_through(inp, work, out, true)
}

/// [`write_iso`]; `piped: false` lets xorriso write `out` itself (a test
/// compares the two).
fn write_iso_through(inp: &IsoInputs, work: &Path, out: &Path, piped: bool) -> Result<Sha256> {
    check_volume_id(inp.volume_id)?;
    for (what, p) in [
        ("UKI", inp.uki),
        ("kernel", inp.kernel),
        ("initrd", inp.initrd),
        ("root", inp.root),
        ("verity", inp.verity),
    ] {
        if !p.is_file() {
            bail!("iso: {what} {} is not a file", p.display());
        }
    }
    let hybrid_mbr = Path::new(GRUB_I386_PC).join("boot_hybrid.img");
    if !hybrid_mbr.is_file() {
        bail!(
            "iso: {} not found; install the Debian package grub-pc-bin",
            hybrid_mbr.display()
        );
    }
    let dir = work.join("iso");
    std::fs::create_dir_all(&dir).with_context(|| format!("iso: create {}", dir.display()))?;
    let dir =
        std::fs::canonicalize(&dir).with_context(|| format!("iso: resolve {}", dir.display()))?;
    let epoch = inp.epoch.to_string();
    let sh = crate::host::runner::shell()?;
    sh.change_dir(&dir);
    sh.set_var("SOURCE_DATE_EPOCH", &epoch);
    sh.set_var("TZ", "UTC");
    // xorriso -as mkisofs reads ./.mkisofsrc, then $MKISOFSRC: an empty
    // file stops the search before $HOME's.
    let rc = dir.join("empty.mkisofsrc");
    std::fs::write(&rc, "").with_context(|| format!("iso: write {}", rc.display()))?;
    sh.set_var("MKISOFSRC", &rc);
    sh.set_var("HOME", &dir);

    // 1. The EFI image: the UKI as the removable-media boot path (or shim
    // there, in front of it).
    let efi = dir.join("efi.img");
    let _ = std::fs::remove_file(&efi);
    let files = super::esp::files(inp.uki, inp.shim);
    let payload = super::esp::payload_size(&files)?;
    let serial =
        &Sha256::of_bytes(format!("cairn iso efi {} {epoch}", inp.volume_id).as_bytes()).hex()[..8];
    let kib = (efi_image_size(payload) / 1024).to_string();
    crate::host::runner::run(
        "iso: EFI image",
        xshell::cmd!(
            sh,
            "mkfs.vfat --invariant -i {serial} -n {EFI_LABEL} -C {efi} {kib}"
        ),
    )?;
    super::esp::fill(&sh, "iso: EFI image", &efi, &files)?;

    // 2. GRUB for BIOS: core image with its modules embedded, and grub.cfg.
    let eltorito = dir.join("eltorito.img");
    let modules = GRUB_MODULES;
    let grub_dir = GRUB_I386_PC;
    crate::host::runner::run(
        "iso: GRUB core",
        xshell::cmd!(
            sh,
            "grub-mkimage -O i386-pc-eltorito -d {grub_dir} -p /boot/grub -o {eltorito} {modules...}"
        ),
    )?;
    let cfg = dir.join("grub.cfg");
    std::fs::write(&cfg, grub_cfg(inp.cmdline))
        .with_context(|| format!("iso: write {}", cfg.display()))?;

    // 3. The ISO.
    if out.exists() {
        std::fs::remove_file(out).with_context(|| format!("iso: remove old {}", out.display()))?;
    }
    let date = format!("--modification-date={}", iso_timestamp(inp.epoch));
    let all_dates = format!("={epoch}");
    let vol = inp.volume_id;
    let mut grafts = vec![
        graft(ISO_EFI_IMG, &efi)?,
        graft(ISO_ELTORITO, &eltorito)?,
        graft(ISO_GRUB_CFG, &cfg)?,
        graft(ISO_KERNEL, inp.kernel)?,
        graft(ISO_INITRD, inp.initrd)?,
        graft(ISO_ROOT, inp.root)?,
        graft(ISO_VERITY, inp.verity)?,
    ];
    let mut sources: Vec<&Path> = vec![
        &efi, &eltorito, &cfg, inp.kernel, inp.initrd, inp.root, inp.verity,
    ];
    for v in inp.volumes {
        let (image, hash) = volume_paths(v.kind, &v.name);
        grafts.push(graft(&image, &v.image)?);
        grafts.push(graft(&hash, &v.verity.hash_path)?);
        sources.push(&v.image);
        sources.push(&v.verity.hash_path);
    }
    // The ISO is about the sum of what goes in; its size as xorriso writes
    // it front to back is the progress.
    let mut total = 0u64;
    for src in &sources {
        total += std::fs::metadata(src)
            .with_context(|| format!("iso: stat {}", src.display()))?
            .len();
    }
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned());
    // /dev/fd/0, not `-o -`: xorriso takes stdout only as its first
    // argument, and -no_rc must be that. The bytes are the same as with a
    // file (a test compares them).
    let dest = if piped { Path::new("/dev/fd/0") } else { out };
    let xorriso = std::process::Command::from(xshell::cmd!(
        sh,
        "xorriso -no_rc -as mkisofs -o {dest} -V {vol} -r -iso-level 3
             {date} --set_all_file_dates {all_dates} --gpt_disk_guid modification-date
             -b {ISO_ELTORITO} -no-emul-boot -boot-load-size 4 -boot-info-table
             --grub2-boot-info --grub2-mbr {hybrid_mbr}
             -c {ISO_CATALOG}
             -eltorito-alt-boot -e {ISO_EFI_IMG} -no-emul-boot
             -efi-boot-part --efi-boot-image --protective-msdos-label
             -graft-points {grafts...}"
    ));
    if !piped {
        crate::host::runner::output("iso: xorriso", xorriso)?;
        return Sha256::of_file(out);
    }
    let mut file = crate::host::direct::Writer::create(out).context("iso")?;
    let mut hash = sha2::Sha256::new();
    let written = crate::host::runner::run_piping_output(
        "iso: xorriso",
        xorriso,
        &format!("iso {}", name.unwrap_or_default()),
        total,
        |piece, at| {
            hash.update(piece);
            file.write_at(piece, at).context("iso")
        },
    )?;
    if written == 0 {
        bail!(
            "iso: xorriso reported success but wrote nothing for {}",
            out.display()
        );
    }
    Ok(Sha256(hash.finalize().into()))
}

fn iso_path_arg(iso: &Path) -> Result<PathBuf> {
    if !iso.is_file() {
        bail!("iso: {} is not a file", iso.display());
    }
    Ok(iso.to_path_buf())
}

/// Extracts one file of the ISO to `dest` (replaced if present).
pub fn read_file_from_iso(iso: &Path, path_in_iso: &str, dest: &Path) -> Result<()> {
    let iso = iso_path_arg(iso)?;
    if dest.exists() {
        std::fs::remove_file(dest).with_context(|| format!("iso: remove {}", dest.display()))?;
    }
    let sh = crate::host::runner::shell()?;
    crate::host::runner::run(
        "iso: extract",
        xshell::cmd!(
            sh,
            "xorriso -no_rc -osirrox on -indev {iso} -extract {path_in_iso} {dest}"
        ),
    )?;
    if !dest.is_file() {
        bail!("iso: {} has no file {path_in_iso}", iso.display());
    }
    Ok(())
}

/// One file in an ISO: its path and where its data lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoFile {
    pub path: String,
    /// Byte offset of the data in the ISO (first extent).
    pub offset: u64,
    /// File size in bytes: the whole file's, also for a multi-extent
    /// file (xorriso's Filesize column repeats it on every extent's line).
    pub size: u64,
    /// How many extents hold it: 1 below 4 GiB; with `-iso-level 3` a
    /// bigger file is several, each at most 4 GiB - 2 KiB.
    pub extents: u32,
    /// Whether the data is one run of blocks: one extent (files < 4 GiB),
    /// or extents that follow each other (xorriso's multi-extent files).
    pub contiguous: bool,
}

/// Lists the regular files of an ISO with their data offsets (xorriso
/// `-find / -type f -exec report_lba`). The offsets let the initramfs or
/// `verify` read `/cairn/root.squashfs` straight off the block device.
pub fn list_iso(iso: &Path) -> Result<Vec<IsoFile>> {
    let iso = iso_path_arg(iso)?;
    let sh = crate::host::runner::shell()?;
    let out = crate::host::runner::run(
        "iso: list",
        xshell::cmd!(
            sh,
            "xorriso -no_rc -indev {iso} -find / -type f -exec report_lba --"
        ),
    )?;
    parse_report_lba(&out)
}

/// Parses `File data lba:  xt , startlba , blocks , filesize , 'path'` lines.
pub fn parse_report_lba(text: &str) -> Result<Vec<IsoFile>> {
    let mut files: Vec<IsoFile> = Vec::new();
    // Where each file's last extent ends, in blocks.
    let mut ends: Vec<u64> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("File data lba:") else {
            continue;
        };
        let mut parts = rest.splitn(5, ',');
        let mut num = || -> Result<u64> {
            let p = parts.next().context("iso: short report_lba line")?;
            p.trim()
                .parse::<u64>()
                .with_context(|| format!("iso: bad number in report_lba line {line:?}"))
        };
        let xt = num()?;
        let lba = num()?;
        let blocks = num()?;
        let size = num()?;
        let path = parts
            .next()
            .map(|p| p.trim().trim_matches('\'').to_string())
            .context("iso: report_lba line without a path")?;
        if xt == 0 {
            files.push(IsoFile {
                path,
                offset: lba * 2048,
                size,
                extents: 1,
                contiguous: true,
            });
            ends.push(lba.saturating_add(blocks));
        } else if let Some(i) = files.iter().position(|f| f.path == path) {
            if ends[i] != lba || files[i].size != size {
                files[i].contiguous = false;
            }
            files[i].extents = files[i].extents.saturating_add(1);
            ends[i] = lba.saturating_add(blocks);
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_timestamp_is_utc_civil_time() {
        assert_eq!(iso_timestamp(0), "1970010100000000");
        assert_eq!(iso_timestamp(1_700_000_000), "2023111422132000");
        assert_eq!(iso_timestamp(951_782_400), "2000022900000000");
    }

    #[test]
    fn iso_volume_ids() {
        assert_eq!(volume_id("cairn-test", "1"), "CAIRN_TEST_1");
        assert_eq!(volume_id(&"x".repeat(40), "1").len(), 32);
        assert!(check_volume_id("CAIRN_TEST_1").is_ok());
        assert!(check_volume_id("").is_err());
        assert!(check_volume_id("a b").is_err());
        assert!(check_volume_id(&"A".repeat(33)).is_err());
    }

    #[test]
    fn iso_grub_cfg_quotes_odd_words() {
        let c = grub_cfg("console=ttyS0,115200 cairn.roothash=ab x=\"y z\" it's");
        assert!(c.contains("linux /cairn/vmlinuz console=ttyS0,115200 cairn.roothash=ab"));
        assert!(c.contains("'x=\"y'"), "{c}");
        assert!(c.contains("'it'\\''s'"), "{c}");
        assert!(c.contains("initrd /cairn/initrd\n"));
    }

    #[test]
    fn iso_parse_report_lba() {
        let t = "Report layout: xt , Startlba ,   Blocks , Filesize , ISO image path\n\
                 File data lba:  0 ,       32 ,    17804 , 36461568 , '/boot/efi.img'\n\
                 File data lba:  0 ,    28773 ,        2 ,     4096 , '/cairn/root.squashfs'\n\
                 File data lba:  1 ,    40000 ,        2 ,     4096 , '/cairn/root.squashfs'\n";
        let v = parse_report_lba(t).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].offset, 32 * 2048);
        assert_eq!(v[0].size, 36461568);
        assert!(v[0].contiguous);
        assert_eq!(v[1].path, "/cairn/root.squashfs");
        assert!(!v[1].contiguous);
        assert!(parse_report_lba("File data lba: x , 1 , 2 , 3 , 'a'").is_err());
        // A multi-extent file whose extents follow each other is one run.
        // These lines are xorriso 1.5.4's own (`-as mkisofs -iso-level 3`,
        // a file of 4 GiB + 1 MiB + 123 bytes and a small one after it):
        // the first extent is 4 GiB - 2 KiB, and Filesize is the whole
        // file's on both lines.
        let t = "Report layout: xt , Startlba ,   Blocks , Filesize , ISO image path\n\
                 File data lba:  0 ,       33 ,  2097151 , 4296015995 , '/a/big.bin'\n\
                 File data lba:  1 ,  2097184 ,      514 , 4296015995 , '/a/big.bin'\n\
                 File data lba:  0 ,  2097698 ,        1 ,        3 , '/a/small.txt'\n";
        let v = parse_report_lba(t).unwrap();
        assert_eq!(v.len(), 2);
        assert!(v[0].contiguous, "{v:?}");
        assert_eq!(
            (v[0].offset, v[0].size, v[0].extents),
            (33 * 2048, 4296015995, 2)
        );
        assert_eq!((v[1].size, v[1].extents), (3, 1));
        // A gap between extents, or a second extent with another size, is
        // not one run.
        let gap = t.replace("2097184 ,      514", "2097185 ,      514");
        assert!(!parse_report_lba(&gap).unwrap()[0].contiguous);
        let other = t.replace("514 , 4296015995", "514 , 1050747");
        assert!(!parse_report_lba(&other).unwrap()[0].contiguous);
    }

    const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

    /// Builds a small ISO twice from fake inputs; checks the listing, the
    /// extraction, the boot records and bit-for-bit reproducibility.
    #[test]
    fn iso_small_is_listed_extracted_and_reproducible() {
        for (tool, package) in [
            ("xorriso", "xorriso"),
            ("mksquashfs", "squashfs-tools"),
            ("mkfs.vfat", "dosfstools"),
            ("mcopy", "mtools"),
            ("grub-mkimage", "grub-common"),
        ] {
            testkit::tool(tool, package);
        }
        testkit::file(STUB, "systemd-boot-efi");
        testkit::file(GRUB_I386_PC, "grub-pc-bin");
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::create_dir_all(p.join("tree/etc")).unwrap();
        std::fs::write(p.join("tree/etc/hello"), "hello\n").unwrap();
        let sq = p.join("root.squashfs");
        let mut mk = crate::host::runner::command("mksquashfs");
        mk.arg(p.join("tree"))
            .arg(&sq)
            .args(["-noappend", "-quiet", "-mkfs-time", "0", "-all-time", "0"])
            .env_remove("SOURCE_DATE_EPOCH")
            .stdout(std::process::Stdio::null());
        crate::host::runner::output("iso test: mksquashfs", mk).unwrap_or_else(|e| panic!("{e:#}"));
        std::fs::write(p.join("root.verity"), vec![7u8; 8192]).unwrap();
        std::fs::write(p.join("vmlinuz"), vec![1u8; 5000]).unwrap();
        std::fs::write(p.join("initrd"), vec![2u8; 3000]).unwrap();
        let inp = IsoInputs {
            uki: Path::new(STUB),
            shim: None,
            kernel: &p.join("vmlinuz"),
            initrd: &p.join("initrd"),
            cmdline: "console=ttyS0 cairn.roothash=00 cairn.medium=iso cairn.state=ram",
            root: &sq,
            verity: &p.join("root.verity"),
            volumes: &[],
            volume_id: "CAIRN_UNIT_1",
            epoch: 1_700_000_000,
        };
        let a = p.join("a.iso");
        let da = write_iso(&inp, &p.join("work-a"), &a).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(da, Sha256::of_file(&a).unwrap(), "the digest is the file's");
        let b = p.join("b.iso");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        write_iso(&inp, &p.join("work-b"), &b).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "two builds differ"
        );
        // Written by xorriso itself, not through the pipe: the same bytes.
        let c = p.join("c.iso");
        let dc = write_iso_through(&inp, &p.join("work-c"), &c, false)
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(dc, da, "xorriso's own file differs from the piped one");

        let files = list_iso(&a).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        for want in [
            ISO_ROOT,
            ISO_VERITY,
            ISO_KERNEL,
            ISO_INITRD,
            ISO_GRUB_CFG,
            ISO_EFI_IMG,
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        // The squashfs sits contiguously at its reported offset.
        let root = files.iter().find(|f| f.path == ISO_ROOT).unwrap();
        let iso_bytes = std::fs::read(&a).unwrap();
        let sq_bytes = std::fs::read(&sq).unwrap();
        assert_eq!(root.size, sq_bytes.len() as u64);
        let at = root.offset as usize;
        assert_eq!(&iso_bytes[at..at + sq_bytes.len()], &sq_bytes[..]);
        // Volume ID in the primary volume descriptor (sector 16, byte 40).
        assert_eq!(&iso_bytes[16 * 2048 + 40..16 * 2048 + 52], b"CAIRN_UNIT_1");
        // GRUB hybrid MBR boot signature and the GPT header.
        assert_eq!(&iso_bytes[510..512], &[0x55, 0xAA]);
        assert_eq!(&iso_bytes[512..520], b"EFI PART");

        let out = p.join("grub.cfg");
        read_file_from_iso(&a, ISO_GRUB_CFG, &out).unwrap();
        let cfg = std::fs::read_to_string(&out).unwrap();
        assert!(cfg.contains("cairn.medium=iso"), "{cfg}");
        read_file_from_iso(&a, ISO_EFI_IMG, &p.join("efi.img")).unwrap();
        let uki_out = p.join("uki.efi");
        let mut mc = crate::host::runner::command("mcopy");
        mc.arg("-i")
            .arg(p.join("efi.img"))
            .arg("::/EFI/BOOT/BOOTX64.EFI")
            .arg(&uki_out);
        crate::host::runner::output("iso test: mcopy", mc).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            std::fs::read(&uki_out).unwrap(),
            std::fs::read(STUB).unwrap()
        );
        assert!(read_file_from_iso(&a, "/no/such/file", &p.join("x")).is_err());

        // El Torito: a BIOS and a UEFI entry.
        let mut xo = crate::host::runner::command("xorriso");
        xo.args(["-no_rc", "-indev"])
            .arg(&a)
            .args(["-report_el_torito", "plain"]);
        let rep = crate::host::runner::output("iso test: xorriso report", xo)
            .unwrap_or_else(|e| panic!("{e:#}"));
        let rep = String::from_utf8_lossy(&rep.stdout);
        assert!(rep.contains("BIOS") && rep.contains("UEFI"), "{rep}");

        // Bad volume id refused before anything is written.
        let mut bad = IsoInputs { ..inp };
        bad.volume_id = "has space";
        assert!(write_iso(&bad, &p.join("work-d"), &p.join("d.iso")).is_err());
        assert!(!p.join("d.iso").exists());
    }
}
