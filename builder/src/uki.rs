//! UKI: one signed-ready EFI executable holding the kernel, the initramfs,
//! os-release and the command line with the root hash, made by adding
//! sections to systemd-stub (taken from the image's own systemd-boot-efi)
//! with objcopy. Sections are placed page-aligned after the stub's last one.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use object::{Object, ObjectSection};

use crate::stagepath::resolve_in_root_follow;

pub const STUB_IN_TREE: &str = "usr/lib/systemd/boot/efi/linuxx64.efi.stub";

pub struct UkiInputs<'a> {
    pub stub: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub os_release: &'a Path,
    pub cmdline: &'a str,
}

pub struct Uki {
    pub path: PathBuf,
    pub size: u64,
}

/// Finds the stub in the composed tree.
pub fn stub_path(tree: &Path) -> Result<PathBuf> {
    let p = resolve_in_root_follow(tree, Path::new(STUB_IN_TREE))?;
    if !p.is_file() {
        bail!("uki: /{STUB_IN_TREE} is missing from the root tree; install systemd-boot-efi");
    }
    Ok(p)
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
    crate::runner::run(
        "uki",
        xshell::cmd!(sh, "objcopy {args...} {stub_path} {out}"),
    )?;
    Ok(Uki {
        path: out.to_path_buf(),
        size: std::fs::metadata(out)?.len(),
    })
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
