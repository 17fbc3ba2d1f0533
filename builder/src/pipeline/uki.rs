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

/// The systemd-stub major version whose measurements cairn predicts.
pub const PREDICTED_STUB_MAJOR: u32 = 252;

/// The version in a stub's (or UKI's) `.sdmagic` section, as in
/// `#### LoaderInfo: systemd-stub 252.39-1~deb12u2 ####`.
pub fn stub_version(pe: &[u8]) -> Result<String> {
    let file = object::File::parse(pe).context("systemd-stub: not a PE file")?;
    let data = file
        .section_by_name(".sdmagic")
        .context("systemd-stub: no .sdmagic section, so its version (and what it measures into PCR 11) is unknown")?
        .data()
        .context("systemd-stub: .sdmagic")?;
    let text = String::from_utf8_lossy(data);
    let version = text
        .split_once("systemd-stub ")
        .map(|(_, v)| v.trim_end_matches(['\0', ' ', '#']).trim())
        .and_then(|v| v.split_whitespace().next())
        .filter(|v| !v.is_empty())
        .with_context(|| {
            format!(
                "systemd-stub: .sdmagic {:?} names no systemd-stub version",
                text.trim_end_matches('\0')
            )
        })?;
    Ok(version.to_string())
}

/// Refuses a stub (or a UKI built on one) whose PCR 11 measurements cairn
/// does not predict (`pipeline::measure` knows systemd 252's only); Ok: its version.
pub fn check_stub(pe: &[u8]) -> Result<String> {
    let version = stub_version(pe)?;
    let major: Option<u32> = version
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|m| m.parse().ok());
    if major != Some(PREDICTED_STUB_MAJOR) {
        anyhow::bail!(
            "pcr 11: the UKI's stub is systemd-stub {version}; cairn predicts PCR 11 only for systemd-stub {PREDICTED_STUB_MAJOR}.x (Debian bookworm's systemd-boot-efi), whose measured sections it knows; newer stubs measure more (.sbat, .uname, .ucode, .profile, ...). Build on a bookworm base (base.debian suite = \"bookworm\") or with a {PREDICTED_STUB_MAJOR}.x stub"
        );
    }
    Ok(version)
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
    // A stub whose PCR 11 cairn cannot predict is refused before the
    // build spends time on volumes (bad input: the recipe's base chose it).
    let bytes = std::fs::read(stub).context("uki: read the stub")?;
    check_stub(&bytes).map_err(|e| crate::InputError(format!("/{STUB_IN_TREE}: {e:#}")))?;
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
    let sh = crate::host::runner::shell()?;
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
    let pe = pe_header(&data)?;
    let stamp = u32::try_from(epoch).unwrap_or(u32::MAX).to_le_bytes();
    data[pe + 8..pe + 12].copy_from_slice(&stamp);
    set_checksum(&mut data)?;
    std::fs::write(path, data).context("uki: write the UKI")?;
    Ok(())
}

/// The offset of the PE signature, its header checked to be whole.
fn pe_header(data: &[u8]) -> Result<usize> {
    let pe = data
        .get(0x3c..0x40)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .context("uki: not a PE file")?;
    if data.get(pe..pe + 4) != Some(b"PE\0\0".as_slice()) {
        bail!("uki: no PE signature");
    }
    if data.len() < pe + 24 + 64 + 4 {
        bail!("uki: truncated PE header");
    }
    Ok(pe)
}

/// Recomputes the PE image checksum in place.
fn set_checksum(data: &mut [u8]) -> Result<()> {
    let sum_at = pe_header(data)? + 24 + 64;
    data[sum_at..sum_at + 4].copy_from_slice(&[0; 4]);
    let sum = pe_checksum(data);
    data[sum_at..sum_at + 4].copy_from_slice(&sum.to_le_bytes());
    Ok(())
}

/// The PE image checksum: 16-bit one's-complement-style sum of the file
/// (the checksum field read as zero), folded, plus the file length.
fn pe_checksum(data: &[u8]) -> u32 {
    let mut sum: u64 = 0;
    for chunk in data.chunks(2) {
        let w = u64::from(chunk[0]) | (u64::from(*chunk.get(1).unwrap_or(&0)) << 8);
        sum += w;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(data.len() as u32)
}

/// The stage-cache name of UKI templates.
const STAGE_TEMPLATE: &str = "uki-template";

/// Like [`make_uki`], the same bytes, with objcopy's work kept in the
/// stage cache (`cache`, when it is on): objcopy makes a template whose
/// `.cmdline` holds a placeholder of the command line's length, cached by
/// the digest of every other input (stub, kernel, initramfs, os-release,
/// epoch, objcopy's version); the UKI is the template with the command
/// line written over the placeholder and the checksum made again. Same
/// length, same layout: the result is what objcopy makes from the real
/// command line (a test compares them). A rebuild whose root hashes
/// changed but nothing else takes the template and runs no objcopy.
pub fn make_uki_cached(
    inputs: &UkiInputs,
    work: &Path,
    out: &Path,
    cache: Option<&crate::inputs::cache::Cache>,
) -> Result<Uki> {
    if cache.is_none() {
        return make_uki(inputs, work, out);
    }
    let template = make_template(inputs, inputs.cmdline.len(), work, cache)?;
    from_template(&template, inputs.cmdline, out)
}

/// The placeholder a template's `.cmdline` holds for a command line of
/// `len` bytes.
fn placeholder(len: usize) -> String {
    "#".repeat(len)
}

/// A UKI of `inputs` but with a placeholder command line of `len` bytes:
/// from the stage cache when `cache` has it, else made by objcopy in
/// `work` (and stored when `cache` is given). `inputs.cmdline` is not used.
pub fn make_template(
    inputs: &UkiInputs,
    len: usize,
    work: &Path,
    cache: Option<&crate::inputs::cache::Cache>,
) -> Result<PathBuf> {
    let placeholder = placeholder(len);
    let inputs = UkiInputs {
        cmdline: &placeholder,
        ..*inputs
    };
    let key = match cache {
        Some(c) => {
            let key = template_key(&inputs)?;
            if let Some((blob, _)) =
                crate::inputs::stagecache::lookup(c, true, STAGE_TEMPLATE, &key)
            {
                return Ok(blob);
            }
            Some((c, key))
        }
        None => None,
    };
    let t = work.join(format!("template-{len}.efi"));
    make_uki(&inputs, work, &t)?;
    if let Some((c, key)) = key {
        crate::inputs::stagecache::store(c, STAGE_TEMPLATE, &key, &t, "")?;
    }
    Ok(t)
}

/// The UKI for `cmdline` from a template made for its length.
pub fn from_template(template: &Path, cmdline: &str, out: &Path) -> Result<Uki> {
    if cmdline.contains('\0') {
        bail!("uki: the command line holds a NUL byte");
    }
    let mut data = std::fs::read(template)
        .with_context(|| format!("uki: read the template {}", template.display()))?;
    fill_cmdline(&mut data, &placeholder(cmdline.len()), cmdline)?;
    std::fs::write(out, &data).with_context(|| format!("uki: write {}", out.display()))?;
    Ok(Uki {
        path: out.to_path_buf(),
        size: data.len() as u64,
    })
}

/// Templates made ahead, on their own thread, from inputs known before the
/// root is compressed: the stub and os-release as the finished tree is
/// expected to hold them, and the command lines' lengths (root hashes
/// have a fixed length). [`Ahead::take`] hands a template out only if the
/// finished tree's stub and os-release are those bytes and the length is
/// one made; otherwise the UKI is made as without it.
pub struct Ahead {
    dir: PathBuf,
    job: std::thread::JoinHandle<Result<Vec<(usize, PathBuf)>>>,
}

impl Ahead {
    /// Starts objcopy for each length in `lens` on a thread. `stub` and
    /// `os_release` are the expected bytes (copied into `dir`, created).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        dir: &Path,
        stub: &[u8],
        os_release: &[u8],
        kernel: &Path,
        initrd: &Path,
        epoch: u64,
        lens: Vec<usize>,
        cache_root: Option<PathBuf>,
    ) -> Result<Ahead> {
        std::fs::create_dir_all(dir).with_context(|| format!("uki: create {}", dir.display()))?;
        let (stub_path, osrel_path) = (dir.join("stub"), dir.join("os-release"));
        std::fs::write(&stub_path, stub)?;
        std::fs::write(&osrel_path, os_release)?;
        let (dir_owned, kernel, initrd) = (
            dir.to_path_buf(),
            kernel.to_path_buf(),
            initrd.to_path_buf(),
        );
        let job = std::thread::spawn(move || {
            let cache = cache_root
                .map(crate::inputs::cache::Cache::open)
                .transpose()?;
            let inputs = UkiInputs {
                stub: &stub_path,
                kernel: &kernel,
                initrd: &initrd,
                os_release: &osrel_path,
                cmdline: "",
                epoch,
            };
            let mut out = Vec::new();
            for len in lens {
                let work = dir_owned.join(len.to_string());
                std::fs::create_dir_all(&work)?;
                out.push((len, make_template(&inputs, len, &work, cache.as_ref())?));
            }
            Ok(out)
        });
        Ok(Ahead {
            dir: dir.to_path_buf(),
            job,
        })
    }

    /// Waits for the templates; keeps those that fit the finished tree's
    /// `stub` and `os_release` files: (command-line length, template).
    pub fn take(self, stub: &Path, os_release: &Path) -> Result<Vec<(usize, PathBuf)>> {
        let made = self
            .job
            .join()
            .map_err(|_| anyhow::anyhow!("uki: the template thread panicked"))??;
        let same = |a: &Path, b: &Path| -> Result<bool> {
            Ok(
                std::fs::read(a).with_context(|| format!("uki: read {}", a.display()))?
                    == std::fs::read(b).with_context(|| format!("uki: read {}", b.display()))?,
            )
        };
        if same(&self.dir.join("stub"), stub)? && same(&self.dir.join("os-release"), os_release)? {
            Ok(made)
        } else {
            Ok(Vec::new())
        }
    }
}

/// The template's stage key: everything objcopy's output depends on but
/// the command line's bytes.
fn template_key(inputs: &UkiInputs) -> Result<crate::host::digest::Sha256> {
    let sh = crate::host::runner::shell()?;
    let version = crate::host::runner::run(
        "uki: objcopy --version",
        xshell::cmd!(sh, "objcopy --version"),
    )?;
    let mut parts = vec![
        format!("objcopy {}", version.lines().next().unwrap_or("")),
        format!("epoch {}", inputs.epoch),
        format!("cmdline length {}", inputs.cmdline.len()),
    ];
    for (name, file) in [
        ("stub", inputs.stub),
        ("kernel", inputs.kernel),
        ("initrd", inputs.initrd),
        ("osrel", inputs.os_release),
    ] {
        let d = crate::host::digest::Sha256::of_file(file)
            .with_context(|| format!("uki: hash the {name}"))?;
        parts.push(format!("{name} {d}"));
    }
    Ok(crate::inputs::stagecache::key(STAGE_TEMPLATE, &parts))
}

/// Writes `cmdline` over `placeholder` in the `.cmdline` section (checked
/// to hold exactly the placeholder and its NUL), then the checksum.
fn fill_cmdline(data: &mut [u8], placeholder: &str, cmdline: &str) -> Result<()> {
    let (at, size) = {
        let file = object::File::parse(&*data).context("uki: the template is not a PE file")?;
        let sec = file
            .section_by_name(".cmdline")
            .context("uki: the template has no .cmdline section")?;
        sec.file_range()
            .context("uki: the template's .cmdline has no data")?
    };
    let (at, size) = (usize::try_from(at)?, usize::try_from(size)?);
    let n = placeholder.len();
    let held = data
        .get(at..at + size)
        .context("uki: the template's .cmdline lies past its end")?;
    if n != cmdline.len() || held.len() <= n || &held[..n] != placeholder.as_bytes() || held[n] != 0
    {
        bail!("uki: the template's .cmdline does not hold the placeholder");
    }
    data[at..at + n].copy_from_slice(cmdline.as_bytes());
    set_checksum(data)
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

    /// The build takes the stub from the image's tree: a stub of another
    /// systemd is bad input (exit 2) naming the file and its version;
    /// the host's (bookworm's 252) is taken.
    #[test]
    fn a_tree_whose_stub_cairn_cannot_predict_is_refused_as_bad_input() {
        testkit::file(HOST_STUB, "systemd-boot-efi");
        let mut stub = std::fs::read(HOST_STUB).unwrap();
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("usr/lib/systemd/boot/efi")).unwrap();
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/os-release"), "ID=debian\n").unwrap();
        let (out_stub, out_osrel) = (d.path().join("stub"), d.path().join("osrel"));
        // Control: the real stub is taken.
        std::fs::write(tree.join(STUB_IN_TREE), &stub).unwrap();
        take_inputs(&tree, &out_stub, &out_osrel).unwrap();
        // The same bytes claiming systemd 258.
        let from = b"systemd-stub 252";
        let at = stub.windows(from.len()).position(|w| w == from).unwrap();
        stub[at + 13..at + 16].copy_from_slice(b"258");
        std::fs::write(tree.join(STUB_IN_TREE), &stub).unwrap();
        let e = take_inputs(&tree, &out_stub, &out_osrel).unwrap_err();
        let input = e
            .downcast_ref::<crate::InputError>()
            .unwrap_or_else(|| panic!("not bad input: {e:#}"));
        assert!(
            input.0.starts_with(&format!("/{STUB_IN_TREE}: ")),
            "{input}"
        );
        assert!(input.0.contains("systemd-stub 258."), "{input}");
        assert!(input.0.contains("252.x"), "{input}");
    }

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

    /// UKI inputs on the host's stub at a fixed epoch.
    fn host_stub_inputs<'a>(
        kernel: &'a Path,
        initrd: &'a Path,
        os_release: &'a Path,
        cmdline: &'a str,
    ) -> UkiInputs<'a> {
        UkiInputs {
            stub: Path::new(HOST_STUB),
            kernel,
            initrd,
            os_release,
            cmdline,
            epoch: 1_735_689_600,
        }
    }

    #[test]
    fn a_uki_from_a_cached_template_is_the_one_objcopy_makes() {
        testkit::file(HOST_STUB, "systemd-boot-efi");
        let d = tempfile::tempdir().unwrap();
        let cache = crate::inputs::cache::Cache::open(d.path().join("cache")).unwrap();
        let (kernel, initrd, osrel) = (d.path().join("k"), d.path().join("i"), d.path().join("o"));
        std::fs::write(&kernel, vec![1u8; 10001]).unwrap();
        std::fs::write(&initrd, vec![2u8; 5003]).unwrap();
        std::fs::write(&osrel, "ID=test\n").unwrap();
        let inputs = |cmdline: &'static str| host_stub_inputs(&kernel, &initrd, &osrel, cmdline);
        let templates = || {
            std::fs::read_dir(d.path().join("cache/stages"))
                .map(|r| r.count())
                .unwrap_or(0)
        };
        let n = std::sync::atomic::AtomicUsize::new(0);
        let both = |cmdline: &'static str| {
            let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let work = d.path().join(format!("w{i}"));
            std::fs::create_dir_all(&work).unwrap();
            let direct = make_uki(&inputs(cmdline), &work, &work.join("direct.efi")).unwrap();
            let cached = make_uki_cached(
                &inputs(cmdline),
                &work,
                &work.join("cached.efi"),
                Some(&cache),
            )
            .unwrap();
            let (a, b) = (
                std::fs::read(direct.path).unwrap(),
                std::fs::read(cached.path).unwrap(),
            );
            assert!(
                a == b,
                "{cmdline}: the templated UKI differs from objcopy's"
            );
            assert_eq!(cached.size, a.len() as u64);
            assert_eq!(read_cmdline(&b).unwrap(), cmdline);
        };
        both("console=ttyS0 cairn.roothash=aaaa");
        assert_eq!(templates(), 1);
        // The same length: the template is taken from the cache.
        both("console=ttyS0 cairn.roothash=bbbb");
        assert_eq!(templates(), 1);
        // Control: another length is another template.
        both("console=ttyS0 cairn.roothash=cccccc");
        assert_eq!(templates(), 2);
        // A template whose .cmdline is not the placeholder is refused.
        let mut t = std::fs::read(d.path().join("w0/direct.efi")).unwrap();
        let err =
            fill_cmdline(&mut t, &"#".repeat(34), "console=ttyS0 cairn.roothash=dddd").unwrap_err();
        assert!(err.to_string().contains("placeholder"), "{err:#}");
    }

    #[test]
    fn templates_made_ahead_are_used_only_for_the_stub_and_os_release_they_were_made_of() {
        testkit::file(HOST_STUB, "systemd-boot-efi");
        let d = tempfile::tempdir().unwrap();
        let (kernel, initrd, osrel) = (d.path().join("k"), d.path().join("i"), d.path().join("o"));
        std::fs::write(&kernel, vec![1u8; 7001]).unwrap();
        std::fs::write(&initrd, vec![2u8; 3001]).unwrap();
        std::fs::write(&osrel, "ID=test\nIMAGE_ID=a\n").unwrap();
        let stub = std::fs::read(HOST_STUB).unwrap();
        let cmdline = "console=ttyS0 cairn.roothash=0123";
        let start = |name: &str| {
            Ahead::start(
                &d.path().join(name),
                &stub,
                b"ID=test\nIMAGE_ID=a\n",
                &kernel,
                &initrd,
                1_735_689_600,
                vec![cmdline.len(), 5],
                None,
            )
            .unwrap()
        };
        let made = start("a").take(Path::new(HOST_STUB), &osrel).unwrap();
        assert_eq!(
            made.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
            [cmdline.len(), 5]
        );
        let from = from_template(&made[0].1, cmdline, &d.path().join("from.efi")).unwrap();
        let direct = make_uki(
            &host_stub_inputs(&kernel, &initrd, &osrel, cmdline),
            d.path(),
            &d.path().join("direct.efi"),
        )
        .unwrap();
        assert!(std::fs::read(from.path).unwrap() == std::fs::read(direct.path).unwrap());
        // Control: the finished tree's os-release is another: none is used.
        let other = d.path().join("o2");
        std::fs::write(&other, "ID=test\nIMAGE_ID=b\n").unwrap();
        assert!(start("b")
            .take(Path::new(HOST_STUB), &other)
            .unwrap()
            .is_empty());
    }
}
