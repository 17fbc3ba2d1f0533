//! UKI: one signed-ready EFI executable holding the kernel, the initramfs,
//! os-release and the command line with the root hash, made by adding
//! sections to systemd-stub (taken from the image's own systemd-boot-efi)
//! with objcopy. Sections are placed page-aligned after the stub's last one.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use object::{Object, ObjectSection};

use crate::host::tree::{copy_out_of_tree, is_file_in_tree, resolve_in_root_follow};

pub const STUB_IN_TREE: &str = "usr/lib/systemd/boot/efi/linuxx64.efi.stub";

pub struct UkiInputs<'a> {
    pub stub: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub os_release: &'a Path,
    pub cmdline: &'a str,
    /// SOURCE_DATE_EPOCH: objcopy stamps PE files with the clock.
    pub epoch: u64,
}

pub struct Uki {
    pub path: PathBuf,
    pub size: u64,
}

/// Finds the stub in the composed tree.
pub fn stub_path(tree: &Path) -> Result<PathBuf> {
    let p = resolve_in_root_follow(tree, Path::new(STUB_IN_TREE))?;
    if !is_file_in_tree(tree, Path::new(STUB_IN_TREE)) {
        bail!("uki: /{STUB_IN_TREE} is missing from the root tree; install systemd-boot-efi");
    }
    Ok(p)
}

/// Copies the UKI's inputs that come from the tree (the stub and
/// os-release) out of it, through the tree-access layer: a link out of the
/// tree or a fifo in their place never puts a host file in the UKI.
pub fn take_inputs(tree: &Path, stub: &Path, os_release: &Path) -> Result<()> {
    if !is_file_in_tree(tree, Path::new(STUB_IN_TREE)) {
        bail!("uki: /{STUB_IN_TREE} is missing from the root tree; install systemd-boot-efi");
    }
    copy_out_of_tree(tree, Path::new(STUB_IN_TREE), stub).context("uki: take the stub")?;
    copy_out_of_tree(tree, Path::new("etc/os-release"), os_release)
        .context("uki: take os-release")?;
    Ok(())
}

const PAGE: u64 = 4096;

fn align(v: u64) -> u64 {
    v.div_ceil(PAGE) * PAGE
}

/// Absolute VMA where a new section may start: past the stub's last one.
pub fn stub_end(stub: &[u8]) -> Result<u64> {
    let file = object::File::parse(stub).context("uki: the stub is not a PE file")?;
    let end = file
        .sections()
        .map(|s| s.address() + s.size())
        .max()
        .context("uki: the stub has no sections")?;
    Ok(align(end))
}

pub fn make_uki(inputs: &UkiInputs, work: &Path, out: &Path) -> Result<Uki> {
    let epoch = inputs.epoch;
    let stub = std::fs::read(inputs.stub).context("uki: read the stub")?;
    let cmdline_file = work.join("cmdline.txt");
    std::fs::write(&cmdline_file, format!("{}\0", inputs.cmdline))?;
    let mut at = stub_end(&stub)?;
    let mut args: Vec<String> = Vec::new();
    for (name, file) in [
        (".osrel", inputs.os_release),
        (".cmdline", cmdline_file.as_path()),
        (".linux", inputs.kernel),
        (".initrd", inputs.initrd),
    ] {
        let size = std::fs::metadata(file)
            .with_context(|| format!("uki: {}", file.display()))?
            .len();
        args.push("--add-section".into());
        args.push(format!("{name}={}", file.display()));
        args.push("--change-section-vma".into());
        args.push(format!("{name}={at:#x}"));
        at = align(at + size);
    }
    let sh = xshell::Shell::new()?;
    let stub_path = inputs.stub;
    crate::host::runner::run(
        "uki",
        xshell::cmd!(sh, "objcopy {args...} {stub_path} {out}"),
    )?;
    set_pe_timestamp(out, epoch)?;
    Ok(Uki {
        path: out.to_path_buf(),
        size: std::fs::metadata(out)?.len(),
    })
}

/// Sets the PE header's TimeDateStamp (objcopy writes the current time) and
/// recomputes the image checksum, so the same inputs give the same UKI.
pub fn set_pe_timestamp(path: &Path, epoch: u64) -> Result<()> {
    let mut data = std::fs::read(path).context("uki: read the UKI")?;
    let pe = data
        .get(0x3c..0x40)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .context("uki: not a PE file")?;
    if data.get(pe..pe + 4) != Some(b"PE\0\0".as_slice()) {
        bail!("uki: no PE signature");
    }
    let stamp = u32::try_from(epoch).unwrap_or(u32::MAX).to_le_bytes();
    let ts = pe + 8;
    let sum_at = pe + 24 + 64;
    if data.len() < sum_at + 4 {
        bail!("uki: truncated PE header");
    }
    data[ts..ts + 4].copy_from_slice(&stamp);
    data[sum_at..sum_at + 4].copy_from_slice(&[0; 4]);
    let sum = pe_checksum(&data, sum_at);
    data[sum_at..sum_at + 4].copy_from_slice(&sum.to_le_bytes());
    std::fs::write(path, data).context("uki: write the UKI")?;
    Ok(())
}

/// The PE image checksum: 16-bit one's-complement-style sum of the file
/// (the checksum field read as zero), folded, plus the file length.
fn pe_checksum(data: &[u8], _sum_at: usize) -> u32 {
    let mut sum: u64 = 0;
    for chunk in data.chunks(2) {
        let w = u64::from(chunk[0]) | (u64::from(*chunk.get(1).unwrap_or(&0)) << 8);
        sum += w;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(data.len() as u32)
}

/// Reads the `.cmdline` section back out of a UKI.
pub fn read_cmdline(uki: &[u8]) -> Result<String> {
    let file = object::File::parse(uki).context("not a PE file")?;
    let sec = file
        .section_by_name(".cmdline")
        .context("the UKI has no .cmdline section")?;
    let data = sec.data()?;
    let s = data.split(|b| *b == 0).next().unwrap_or(&[]);
    Ok(String::from_utf8_lossy(s).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

    #[test]
    fn the_same_inputs_give_the_same_uki_at_another_time() {
        testkit::file(HOST_STUB, "systemd-boot-efi");
        let d = tempfile::tempdir().unwrap();
        let kernel = d.path().join("k");
        let initrd = d.path().join("i");
        let osrel = d.path().join("o");
        std::fs::write(&kernel, vec![1u8; 10000]).unwrap();
        std::fs::write(&initrd, vec![2u8; 5000]).unwrap();
        std::fs::write(&osrel, "ID=test\n").unwrap();
        let make = |name: &str| {
            let out = d.path().join(name);
            make_uki(
                &UkiInputs {
                    stub: Path::new(HOST_STUB),
                    kernel: &kernel,
                    initrd: &initrd,
                    os_release: &osrel,
                    cmdline: "console=ttyS0 cairn.roothash=00",
                    epoch: 1_735_689_600,
                },
                d.path(),
                &out,
            )
            .unwrap();
            std::fs::read(out).unwrap()
        };
        let a = make("a.efi");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let b = make("b.efi");
        assert!(a == b, "UKIs made 1 s apart differ");
        assert_eq!(read_cmdline(&a).unwrap(), "console=ttyS0 cairn.roothash=00");
    }
}
