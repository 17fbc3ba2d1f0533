//! Raw disk: a GPT disk written as a plain file (no loop devices, no
//! mounts): an ESP made with mkfs.vfat + mtools holding the UKI as the
//! removable-media boot path, the squashfs root, its verity hash tree and
//! an empty state partition. Partitions carry fixed labels the initramfs
//! looks for; every GUID is derived from the root hash, so the same root
//! gives the same disk.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::host::digest::Sha256;
use crate::pipeline::verity::uuid_from;

pub const MIB: u64 = 1 << 20;
pub const LABEL_ESP: &str = "cairn-esp";
pub const LABEL_ROOT: &str = "cairn-root";
pub const LABEL_VERITY: &str = "cairn-verity";
pub const LABEL_STATE: &str = "cairn-state";

const TYPE_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// Discoverable Partitions Specification: root and root-verity (x86-64).
const TYPE_ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
const TYPE_ROOT_VERITY_X86_64: &str = "2C7357ED-EBD2-46D9-AEC9-CFD4F3A3C6C6";
const TYPE_LINUX_DATA: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

pub struct DiskInputs<'a> {
    pub uki: &'a Path,
    pub root: &'a Path,
    pub verity: &'a Path,
    pub root_hash: &'a Sha256,
    pub disk_size: u64,
    pub min_state_size: u64,
    pub epoch: u64,
}

/// Where each partition sits, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub esp: (u64, u64),
    pub root: (u64, u64),
    pub verity: (u64, u64),
    pub state: (u64, u64),
    pub disk_size: u64,
}

fn align_mib(v: u64) -> u64 {
    v.div_ceil(MIB) * MIB
}

/// Plans the partitions: ESP, root, verity packed from 1 MiB; state takes
/// the rest, which must be at least `min_state`. The backup GPT needs the
/// last MiB.
pub fn plan(
    uki_size: u64,
    root_size: u64,
    verity_size: u64,
    disk_size: u64,
    min_state: u64,
) -> Result<Layout> {
    let esp_size = align_mib((uki_size + uki_size / 4 + 4 * MIB).max(64 * MIB));
    let esp = (MIB, esp_size);
    let root = (esp.0 + esp.1, align_mib(root_size));
    let verity = (root.0 + root.1, align_mib(verity_size));
    let state_start = verity.0 + verity.1;
    let end = disk_size.saturating_sub(MIB);
    if end < state_start + min_state {
        bail!(
            "disk: [disk] size {} MiB is too small: ESP {} MiB + root {} MiB + verity {} MiB + state {} MiB + 2 MiB GPT need {} MiB; raise disk.size",
            disk_size / MIB,
            esp.1 / MIB,
            root.1 / MIB,
            verity.1 / MIB,
            min_state / MIB,
            (state_start + min_state + MIB).div_ceil(MIB)
        );
    }
    Ok(Layout {
        esp,
        root,
        verity,
        state: (state_start, (end - state_start) / MIB * MIB),
        disk_size,
    })
}

/// The sfdisk script for a layout.
pub fn sfdisk_script(l: &Layout, root_hash: &Sha256) -> String {
    let id = |what: &str| {
        uuid_from(&Sha256::of_bytes(
            format!("cairn {what} {root_hash}").as_bytes(),
        ))
        .to_uppercase()
    };
    let part = |(start, size): (u64, u64), ty: &str, what: &str, extra: &str| {
        format!(
            "start={}, size={}, type={ty}, uuid={}, name=\"{what}\"{extra}\n",
            start / 512,
            size / 512,
            id(what)
        )
    };
    let mut s = format!(
        "label: gpt\nlabel-id: {}\nunit: sectors\nfirst-lba: 2048\nsector-size: 512\n",
        id("disk")
    );
    s += &part(l.esp, TYPE_ESP, LABEL_ESP, "");
    // Attribute 60: read-only, a hint for tools that mount by type.
    s += &part(l.root, TYPE_ROOT_X86_64, LABEL_ROOT, ", attrs=\"GUID:60\"");
    s += &part(
        l.verity,
        TYPE_ROOT_VERITY_X86_64,
        LABEL_VERITY,
        ", attrs=\"GUID:60\"",
    );
    s += &part(l.state, TYPE_LINUX_DATA, LABEL_STATE, "");
    s
}

/// Makes the FAT ESP image holding the UKI at EFI/BOOT/BOOTX64.EFI.
pub fn make_esp(uki: &Path, out: &Path, size: u64, volume_id: &str, epoch: u64) -> Result<()> {
    let sh = xshell::Shell::new()?;
    sh.set_var("SOURCE_DATE_EPOCH", epoch.to_string());
    sh.set_var("TZ", "UTC");
    let kib = (size / 1024).to_string();
    crate::host::runner::run(
        "media: ESP",
        xshell::cmd!(
            sh,
            "mkfs.vfat -F 32 --invariant -i {volume_id} -n CAIRN-ESP -C {out} {kib}"
        ),
    )?;
    crate::host::runner::run(
        "media: ESP",
        xshell::cmd!(sh, "mmd -i {out} ::/EFI ::/EFI/BOOT"),
    )?;
    // mtools stamps files with SOURCE_DATE_EPOCH; -m would copy host mtimes.
    crate::host::runner::run(
        "media: ESP",
        xshell::cmd!(sh, "mcopy -i {out} {uki} ::/EFI/BOOT/BOOTX64.EFI"),
    )?;
    Ok(())
}

/// Copies `src` into `dst` at `offset`, leaving all-zero blocks as holes.
pub fn copy_into(dst: &mut File, offset: u64, src: &Path) -> Result<()> {
    let mut f = File::open(src).with_context(|| format!("open {}", src.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = offset;
    loop {
        let n = read_full(&mut f, &mut buf)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|b| *b != 0) {
            dst.seek(SeekFrom::Start(pos))?;
            dst.write_all(&buf[..n])?;
        }
        pos += n as u64;
    }
    Ok(())
}

fn read_full(f: &mut File, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let r = f.read(&mut buf[n..])?;
        if r == 0 {
            break;
        }
        n += r;
    }
    Ok(n)
}

pub struct RawDisk {
    pub path: PathBuf,
    pub layout: Layout,
}

/// Writes the raw disk at `out`.
pub fn write_raw(inp: &DiskInputs, work: &Path, out: &Path) -> Result<RawDisk> {
    let size = |p: &Path| -> Result<u64> { Ok(std::fs::metadata(p)?.len()) };
    let layout = plan(
        size(inp.uki)?,
        size(inp.root)?,
        size(inp.verity)?,
        inp.disk_size,
        inp.min_state_size,
    )?;
    let esp = work.join("esp.img");
    let vol = &inp.root_hash.hex()[..8];
    make_esp(inp.uki, &esp, layout.esp.1, vol, inp.epoch)?;

    {
        let f = File::create(out).with_context(|| format!("media: create {}", out.display()))?;
        f.set_len(layout.disk_size)?;
    }
    let script = sfdisk_script(&layout, inp.root_hash);
    let sh = xshell::Shell::new()?;
    crate::host::runner::run(
        "media: GPT",
        xshell::cmd!(sh, "sfdisk --no-reread --no-tell-kernel --quiet {out}").stdin(script),
    )?;
    let mut f = std::fs::OpenOptions::new().write(true).open(out)?;
    copy_into(&mut f, layout.esp.0, &esp)?;
    copy_into(&mut f, layout.root.0, inp.root)?;
    copy_into(&mut f, layout.verity.0, inp.verity)?;
    f.sync_all()?;
    Ok(RawDisk {
        path: out.to_path_buf(),
        layout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_aligned_and_state_takes_the_rest() {
        let l = plan(30 * MIB, 200 * MIB + 5, 2 * MIB, 2048 * MIB, 256 * MIB).unwrap();
        assert_eq!(l.esp.0, MIB);
        for (s, n) in [l.esp, l.root, l.verity, l.state] {
            assert_eq!(s % MIB, 0);
            assert_eq!(n % MIB, 0);
        }
        assert_eq!(l.root.1, 201 * MIB);
        assert!(l.state.0 + l.state.1 <= l.disk_size - MIB);
        let e = plan(30 * MIB, 200 * MIB, 2 * MIB, 300 * MIB, 256 * MIB).unwrap_err();
        assert!(e.to_string().contains("too small"), "{e}");
    }

    #[test]
    fn script_names_partitions_by_label() {
        let l = plan(30 * MIB, 200 * MIB, 2 * MIB, 2048 * MIB, 256 * MIB).unwrap();
        let s = sfdisk_script(&l, &Sha256::of_bytes(b"x"));
        for label in [LABEL_ESP, LABEL_ROOT, LABEL_VERITY, LABEL_STATE] {
            assert!(s.contains(&format!("name=\"{label}\"")), "{s}");
        }
        assert_eq!(s, sfdisk_script(&l, &Sha256::of_bytes(b"x")));
        assert_ne!(s, sfdisk_script(&l, &Sha256::of_bytes(b"y")));
    }
}
