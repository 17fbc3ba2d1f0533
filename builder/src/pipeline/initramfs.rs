//! Initramfs: a deterministic cpio holding cairn's init, busybox,
//! veritysetup with the shared libraries it links, and the boot modules.
//! Every binary is taken from the composed root tree (so it is pinned with
//! the image's packages), never from the build host.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use object::elf;
use object::read::elf::{Dyn, FileHeader, ProgramHeader};

use crate::host::cpio::{Archive, Entry};
use crate::host::tree::{is_file_in_tree, read_in_tree, read_in_tree_opt};

pub const INIT: &str = include_str!("../../guest/init");
/// The dm-verity corruption watcher the init leaves running (busybox sh).
pub const VERITY_WATCH: &str = include_str!("../../guest/verity-watch");
/// The site file parser the init runs (busybox awk).
pub const SITE_AWK: &str = include_str!("../../guest/site.awk");

pub struct Initramfs {
    pub path: PathBuf,
    pub size: u64,
    pub modules: usize,
}

const LIB_DIRS: &[&str] = &[
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "lib64",
    "usr/lib64",
    "lib",
    "usr/lib",
];

/// What an ELF file needs from the dynamic loader.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ElfNeeds {
    pub interpreter: Option<String>,
    pub needed: Vec<String>,
}

pub fn elf_needs(data: &[u8]) -> Result<ElfNeeds> {
    let header =
        elf::FileHeader64::<object::Endianness>::parse(data).context("not a 64-bit ELF file")?;
    let endian = header.endian()?;
    let mut needs = ElfNeeds::default();
    for ph in header.program_headers(endian, data)? {
        if ph.p_type(endian) == elf::PT_INTERP {
            if let Ok(bytes) = ph.data(endian, data) {
                let s = bytes.split(|b| *b == 0).next().unwrap_or(&[]);
                needs.interpreter = Some(String::from_utf8_lossy(s).into_owned());
            }
        }
    }
    let sections = header.sections(endian, data)?;
    if let Some((dynamic, index)) = sections.dynamic(endian, data)? {
        let strings = sections.strings(endian, data, index)?;
        for d in dynamic {
            if d.tag32(endian) == Some(elf::DT_NEEDED) {
                let name = d.string(endian, strings).context("bad DT_NEEDED")?;
                needs
                    .needed
                    .push(String::from_utf8_lossy(name).into_owned());
            }
        }
    }
    Ok(needs)
}

/// Adds `rel` from the tree (as a regular file at that path) and, for ELF
/// files, its interpreter and libraries, transitively.
fn add_binary(a: &mut Archive, tree: &Path, rel: &str, seen: &mut BTreeSet<String>) -> Result<()> {
    if !seen.insert(rel.to_string()) {
        return Ok(());
    }
    let data = read_in_tree(tree, Path::new(rel))
        .with_context(|| format!("initramfs: cannot take /{rel} from the root tree"))?;
    let needs = if data.starts_with(b"\x7fELF") {
        elf_needs(&data).with_context(|| format!("initramfs: cannot read ELF /{rel}"))?
    } else {
        ElfNeeds::default()
    };
    a.add(rel, Entry::File { mode: 0o755, data })?;
    if let Some(interp) = needs.interpreter {
        add_binary(a, tree, interp.trim_start_matches('/'), seen)?;
    }
    for lib in needs.needed {
        if lib.contains('/') {
            bail!("initramfs: /{rel} needs {lib:?}, a path; only library names are supported");
        }
        let src = find_library(tree, &lib).with_context(|| {
            format!("initramfs: library {lib} (needed by /{rel}) not found in the root tree")
        })?;
        add_library(a, tree, &src, &lib, seen)?;
    }
    Ok(())
}

fn find_library(tree: &Path, lib: &str) -> Option<String> {
    LIB_DIRS
        .iter()
        .map(|d| format!("{d}/{lib}"))
        .find(|p| is_file_in_tree(tree, Path::new(p)))
}

/// Libraries go where the loader looks first, whatever their path in the tree.
fn add_library(
    a: &mut Archive,
    tree: &Path,
    src: &str,
    lib: &str,
    seen: &mut BTreeSet<String>,
) -> Result<()> {
    let dest = format!("lib/x86_64-linux-gnu/{lib}");
    if !seen.insert(dest.clone()) {
        return Ok(());
    }
    let bytes = read_in_tree(tree, Path::new(src))
        .with_context(|| format!("initramfs: cannot take library /{src}"))?;
    let sub = elf_needs(&bytes).unwrap_or_default();
    a.add(
        &dest,
        Entry::File {
            mode: 0o755,
            data: bytes,
        },
    )?;
    for l in sub.needed {
        let p = find_library(tree, &l).with_context(|| {
            format!("initramfs: library {l} (needed by {lib}) not found in the root tree")
        })?;
        add_library(a, tree, &p, &l, seen)?;
    }
    Ok(())
}

/// Writes the initramfs for `kernel_version` from the tree to `out`.
pub fn make_initramfs(
    tree: &Path,
    grow_state: bool,
    site: Option<&crate::recipe::site::SiteDeclaration>,
    kernel_version: &str,
    out: &Path,
    epoch: u64,
) -> Result<Initramfs> {
    let mut a = Archive::new();
    let mut seen = BTreeSet::new();
    a.add(
        "init",
        Entry::File {
            mode: 0o755,
            data: INIT.as_bytes().to_vec(),
        },
    )?;
    a.add(
        "etc/cairn/verity-watch",
        Entry::File {
            mode: 0o644,
            data: VERITY_WATCH.as_bytes().to_vec(),
        },
    )?;
    a.add(
        "dev/console",
        Entry::CharDev {
            mode: 0o600,
            major: 5,
            minor: 1,
        },
    )?;
    for d in [
        "proc", "sys", "run", "tmp", "sysroot", "sbin", "usr/bin", "usr/sbin",
    ] {
        a.add(d, Entry::Dir { mode: 0o755 })?;
    }
    // busybox-static puts the binary in /bin (a link to usr/bin when /usr is merged).
    if !is_file_in_tree(tree, Path::new("bin/busybox")) {
        bail!("initramfs: /bin/busybox missing from the root tree; install busybox-static");
    }
    let data = read_in_tree(tree, Path::new("bin/busybox")).context("initramfs")?;
    if data.starts_with(b"\x7fELF") && !elf_needs(&data)?.needed.is_empty() {
        // A dynamic busybox works too; its libraries come along.
        add_binary(&mut a, tree, "bin/busybox", &mut seen)?;
    } else {
        a.add("bin/busybox", Entry::File { mode: 0o755, data })?;
    }
    let vs = ["usr/sbin/veritysetup", "sbin/veritysetup"]
        .into_iter()
        .find(|p| is_file_in_tree(tree, Path::new(p)))
        .context("initramfs: veritysetup missing from the root tree; install cryptsetup-bin")?;
    add_binary(&mut a, tree, vs, &mut seen)?;
    if vs != "sbin/veritysetup" {
        a.add(
            "sbin/veritysetup",
            Entry::Symlink {
                target: format!("/{vs}"),
            },
        )?;
    }

    // blkid reads partition UUIDs from the GPT (partitions are found by
    // identity). The state partition: dm-crypt and a fresh ext4 at every
    // boot; with `[state] grow`, sfdisk and resizepart to grow it.
    let mut tools = vec![
        ("blkid", "util-linux"),
        ("cryptsetup", "cryptsetup-bin"),
        ("mke2fs", "e2fsprogs"),
    ];
    if grow_state {
        tools.extend([("sfdisk", "fdisk"), ("resizepart", "util-linux")]);
    }
    for (tool, package) in tools {
        let found = [
            format!("usr/sbin/{tool}"),
            format!("sbin/{tool}"),
            format!("usr/bin/{tool}"),
        ]
        .into_iter()
        .find(|p| is_file_in_tree(tree, Path::new(p)))
        .with_context(|| {
            format!("initramfs: {tool} missing from the root tree; install {package}")
        })?;
        add_binary(&mut a, tree, &found, &mut seen)?;
        if found != format!("sbin/{tool}") {
            a.add(
                &format!("sbin/{tool}"),
                Entry::Symlink {
                    target: format!("/{found}"),
                },
            )?;
        }
    }
    if let Some(conf) = read_in_tree_opt(tree, Path::new("etc/mke2fs.conf")).context("initramfs")? {
        a.add(
            "etc/mke2fs.conf",
            Entry::File {
                mode: 0o644,
                data: conf,
            },
        )?;
    }

    if let Some(site) = site {
        add_site(&mut a, tree, site, &mut seen)?;
    }

    let mods = crate::pipeline::kernel::initramfs_modules(tree, kernel_version)?;
    let mut list = String::new();
    for (may_fail, rel) in &mods {
        let data = crate::pipeline::kernel::read_module(tree, kernel_version, rel)?;
        let dest = format!("{kernel_version}/{}", rel.display());
        a.add(
            &format!("lib/modules/{dest}"),
            Entry::File { mode: 0o644, data },
        )?;
        list.push_str(&format!("{} {dest}\n", if *may_fail { "?" } else { "!" }));
    }
    a.add(
        "etc/cairn/modules",
        Entry::File {
            mode: 0o644,
            data: list.into_bytes(),
        },
    )?;

    let mut buf = Vec::new();
    a.write(&mut buf, epoch)?;
    std::fs::write(out, &buf).with_context(|| format!("initramfs: write {}", out.display()))?;
    Ok(Initramfs {
        path: out.to_path_buf(),
        size: buf.len() as u64,
        modules: mods.len(),
    })
}

/// What the init needs to check and apply a site file: signify (from the
/// root tree, with its libraries), the site public key, its id, the
/// declaration and the parser. In the signed initramfs, so a site file
/// can only be as trusted as the key the signed image names.
fn add_site(
    a: &mut Archive,
    tree: &Path,
    site: &crate::recipe::site::SiteDeclaration,
    seen: &mut BTreeSet<String>,
) -> Result<()> {
    let signify = "usr/bin/signify-openbsd";
    if !is_file_in_tree(tree, Path::new(signify)) {
        bail!("initramfs: {signify} missing from the root tree; install signify-openbsd");
    }
    add_binary(a, tree, signify, seen)?;
    let lines = |items: &[String]| items.iter().map(|l| format!("{l}\n")).collect::<String>();
    let files = [
        ("etc/cairn/site.pub", site.public_key.clone()),
        ("etc/cairn/site.keyid", format!("{}\n", site.key_id)),
        ("etc/cairn/site.allow", lines(&site.allow)),
        ("etc/cairn/site.ingress", lines(&site.ingress)),
        ("etc/cairn/site.awk", SITE_AWK.to_string()),
        ("etc/cairn/site.bind", site.bind_text()),
    ];
    for (path, text) in files {
        a.add(
            path,
            Entry::File {
                mode: 0o644,
                data: text.into_bytes(),
            },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_needs_of_a_host_binary() {
        let data = std::fs::read("/bin/ls").unwrap();
        let n = elf_needs(&data).unwrap();
        assert!(n.interpreter.unwrap().contains("ld-linux"));
        assert!(n.needed.iter().any(|l| l.starts_with("libc.so")));
    }

    #[test]
    fn junk_is_an_error_not_a_panic() {
        assert!(elf_needs(b"\x7fELF\x02\x01\x01").is_err());
        assert!(elf_needs(b"").is_err());
    }

    /// The guest's parser (run with busybox awk, as the init does) reads
    /// what the host's check accepts the same way, and refuses what the
    /// host refuses.
    #[test]
    fn site_parser_applies_service_variables_and_refuses_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let allow = d.path().join("allow");
        let ingress = d.path().join("ingress");
        let bind = d.path().join("bind");
        std::fs::write(&allow, "hostname\nenv.web.SITE_LABEL\n").unwrap();
        std::fs::write(&ingress, "").unwrap();
        let awk = d.path().join("site.awk");
        std::fs::write(&awk, SITE_AWK).unwrap();
        let parse = |text: &str| {
            let site = d.path().join("site.toml");
            std::fs::write(&site, text).unwrap();
            let sh = crate::host::runner::shell().unwrap();
            let (a, i, b) = (
                format!("allow={}", allow.display()),
                format!("ingress={}", ingress.display()),
                format!("bind={}", bind.display()),
            );
            let (code, out, _) = crate::host::runner::run_code(
                "test: site.awk",
                xshell::cmd!(sh, "busybox awk -v {a} -v {i} -v {b} -f {awk} {site}"),
            )
            .unwrap();
            (code, out)
        };
        let good = "name = \"north\"\nenv.web.SITE_LABEL = \"north depot\"\nimage = \"t\"\nversion = \"1\"\nserial = \"1\"\n";
        let decl = crate::recipe::site::SiteDeclaration {
            allow: vec!["env.web.SITE_LABEL".into(), "hostname".into()],
            ingress: vec![],
            key_id: String::new(),
            public_key: String::new(),
            key_path: Default::default(),
            required: false,
            min_serial: 0,
            image: "t".into(),
            version: "1".into(),
            roles: crate::recipe::site::default_roles(),
        };
        std::fs::write(&bind, decl.bind_text()).unwrap();
        crate::recipe::site::check(Path::new("s.toml"), good, &decl).unwrap();
        assert_eq!(
            parse(good),
            (
                0,
                "name north\nenv web SITE_LABEL=north depot\nimage t\nversion 1\nserial 1\n"
                    .to_string()
            )
        );
        for (bad, why) in [
            ("env.web.OTHER = \"x\"", "`env.web.OTHER` is not allowed"),
            ("env.web.SITE_LABEL = \"a$b\"", "holds $ or a backtick"),
            ("env.web.SITE_LABEL = \"a \"", "starts or ends with a space"),
        ] {
            let text = format!("name = \"north\"\n{bad}\n");
            assert!(
                crate::recipe::site::check(Path::new("s.toml"), &text, &decl).is_err(),
                "{bad}"
            );
            let (code, out) = parse(&text);
            assert_eq!(code, 1, "{bad}: {out}");
            // The init reports the first `error` line.
            let e = out
                .lines()
                .find_map(|l| l.strip_prefix("error "))
                .unwrap_or("");
            assert!(e.starts_with("line 2: ") && e.contains(why), "{bad}: {out}");
        }
    }
}
