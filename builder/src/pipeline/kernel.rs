//! Kernel modules: prunes the kernel package's module tree to the appliance
//! set plus recipe extras, closed over `modules.dep`, and lists the modules
//! the initramfs loads, in dependency order.
//! Invariant: every kept module's dependencies are kept too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::host::tree::{
    read_in_tree, read_in_tree_opt, remove_in_tree, resolve_in_root_follow, special_below,
};

/// Module folders (under `kernel/`) an appliance keeps by default: storage
/// and USB boot media, the filesystems cairn uses, device-mapper, virtio,
/// common NICs, netfilter (firewall and cluster networking) and crypto.
pub const DEFAULT_KEEP: &[&str] = &[
    "arch/x86/crypto",
    "crypto",
    "lib",
    "fs/squashfs",
    "fs/overlayfs",
    "fs/ext4",
    "fs/jbd2",
    "fs/mbcache.ko",
    "fs/fat",
    "fs/isofs",
    "fs/nls",
    "fs/efivarfs",
    "drivers/virtio",
    "drivers/block/virtio_blk.ko",
    "drivers/block/loop.ko",
    "drivers/scsi",
    "drivers/cdrom",
    "drivers/ata",
    "drivers/nvme",
    "drivers/md",
    "drivers/usb/storage",
    "drivers/usb/host",
    "drivers/usb/common",
    "drivers/hid",
    "drivers/input",
    // ACPI power button, battery, thermal: a field box must power off cleanly.
    "drivers/acpi",
    "drivers/char/hw_random",
    "drivers/char/virtio_console.ko",
    "drivers/net/virtio_net.ko",
    "drivers/net/net_failover.ko",
    "net/core",
    "drivers/net/ethernet/intel",
    "drivers/net/ethernet/realtek",
    "drivers/net/veth.ko",
    "drivers/net/vxlan",
    "drivers/net/tun.ko",
    "drivers/net/dummy.ko",
    "net/netfilter",
    "net/ipv4",
    "net/ipv6",
    "net/bridge",
    "net/802",
    "net/llc",
    "net/sched",
    "net/packet",
];

/// Modules the initramfs loads (if the kernel has them as modules), and
/// whether a load failure is tolerated (CPU-feature-specific ones).
pub const INITRAMFS_MODULES: &[(&str, bool)] = &[
    ("virtio_pci", false),
    ("virtio_blk", false),
    ("virtio_scsi", false),
    ("sd_mod", false),
    ("sr_mod", false),
    ("isofs", false),
    ("ahci", false),
    ("nvme", false),
    ("xhci_pci", false),
    ("ehci_pci", false),
    ("ohci_pci", false),
    ("uhci_hcd", false),
    ("usb_storage", false),
    ("uas", false),
    ("loop", false),
    ("dm_verity", false),
    ("dm_crypt", false),
    ("squashfs", false),
    ("overlay", false),
    ("crc32c_generic", false),
    ("crc32c_intel", true),
    ("ext4", false),
    // The ESP, where a site file lives (FAT and its code pages).
    ("vfat", false),
    ("nls_cp437", true),
    ("nls_ascii", true),
    ("nls_utf8", true),
    ("ecb", false),
    ("xts", false),
    ("aesni_intel", true),
    // A hardware RNG (QEMU's virtio-rng-pci) fills the kernel's random pool
    // at once: the init waits for that pool before making the state's key.
    ("virtio_rng", false),
];

/// `modules.dep` parsed: module name -> (path relative to the version
/// folder, direct dependencies' paths).
#[derive(Debug, Default)]
pub struct ModuleDeps {
    pub by_name: BTreeMap<String, PathBuf>,
    pub deps: BTreeMap<PathBuf, Vec<PathBuf>>,
}

pub fn module_name(path: &Path) -> String {
    let file = path.file_name().and_then(|f| f.to_str()).unwrap_or("");
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

pub fn parse_modules_dep(text: &str) -> Result<ModuleDeps> {
    let mut md = ModuleDeps::default();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (m, rest) = line
            .split_once(':')
            .with_context(|| format!("modules.dep line {} has no ':'", n + 1))?;
        let m = PathBuf::from(m.trim());
        if m.is_absolute() || m.components().any(|c| c.as_os_str() == "..") {
            bail!(
                "modules.dep line {} names {:?} outside the module tree",
                n + 1,
                m
            );
        }
        let deps: Vec<PathBuf> = rest.split_whitespace().map(PathBuf::from).collect();
        if deps
            .iter()
            .any(|d| d.is_absolute() || d.components().any(|c| c.as_os_str() == ".."))
        {
            bail!(
                "modules.dep line {} has a dependency outside the module tree",
                n + 1
            );
        }
        md.by_name.insert(module_name(&m), m.clone());
        md.deps.insert(m, deps);
    }
    Ok(md)
}

impl ModuleDeps {
    /// `start` and everything it depends on, transitively.
    pub fn closure(&self, start: &BTreeSet<PathBuf>) -> BTreeSet<PathBuf> {
        let mut out = BTreeSet::new();
        let mut stack: Vec<PathBuf> = start.iter().cloned().collect();
        while let Some(m) = stack.pop() {
            if out.insert(m.clone()) {
                if let Some(ds) = self.deps.get(&m) {
                    stack.extend(ds.iter().cloned());
                }
            }
        }
        out
    }

    /// Dependencies before dependants (modules.dep lists deps in load order
    /// reversed; a DFS post-order is always valid).
    pub fn load_order(&self, wanted: &[PathBuf]) -> Vec<PathBuf> {
        fn visit(
            md: &ModuleDeps,
            m: &PathBuf,
            seen: &mut BTreeSet<PathBuf>,
            out: &mut Vec<PathBuf>,
        ) {
            if !seen.insert(m.clone()) {
                return;
            }
            if let Some(ds) = md.deps.get(m) {
                for d in ds {
                    visit(md, d, seen, out);
                }
            }
            out.push(m.clone());
        }
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for m in wanted {
            visit(self, m, &mut seen, &mut out);
        }
        out
    }
}

/// The module folder of `version` in the tree, resolved as the image
/// would (so `/usr/lib/modules/V -> /somewhere` stays inside the tree).
pub fn modules_dir(tree: &Path, version: &str) -> Result<PathBuf> {
    let d = resolve_in_root_follow(tree, &modules_rel(version))?;
    if !std::fs::symlink_metadata(&d)
        .map(|m| m.is_dir())
        .unwrap_or(false)
    {
        return Err(crate::InputError(format!(
            "kernel: no module folder /usr/lib/modules/{version} in the root tree; install the kernel's modules with it"
        ))
        .into());
    }
    Ok(d)
}

/// `usr/lib/modules/VERSION`, the in-image path of a module tree.
fn modules_rel(version: &str) -> PathBuf {
    Path::new("usr/lib/modules").join(version)
}

/// Reads the tree's `modules.dep` for `version`, in-image paths only.
fn read_modules_dep(tree: &Path, version: &str) -> Result<ModuleDeps> {
    let text = read_in_tree(tree, &modules_rel(version).join("modules.dep"))
        .context("kernel: read modules.dep")?;
    parse_modules_dep(&String::from_utf8_lossy(&text))
        .map_err(|e| crate::InputError(format!("kernel: /usr/lib/modules/{version}/{e:#}")).into())
}

fn builtin_names(tree: &Path, version: &str) -> Result<BTreeSet<String>> {
    let text =
        read_in_tree_opt(tree, &modules_rel(version).join("modules.builtin"))?.unwrap_or_default();
    Ok(String::from_utf8_lossy(&text)
        .lines()
        .map(|l| module_name(Path::new(l.trim())))
        .collect())
}

/// A module tree holds folders and regular files only: depmod and the
/// pruning walk it with the host's rules, so a link (to a host folder or
/// file) or a fifo in it is refused, naming the entry. Debian's `build` and
/// `source` links (to kernel headers, absent from an appliance) are dropped.
pub fn check_module_tree(tree: &Path, version: &str) -> Result<()> {
    let rel = modules_rel(version);
    modules_dir(tree, version)?;
    for name in ["build", "source"] {
        let p = resolve_in_root_follow(tree, &rel)?.join(name);
        if std::fs::symlink_metadata(&p)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false)
        {
            std::fs::remove_file(&p).with_context(|| format!("remove {}", p.display()))?;
        }
    }
    if let Some((p, what)) = special_below(tree, &rel)?.into_iter().next() {
        return Err(crate::InputError(format!(
            "kernel: /{} is {what}; a module tree may hold only folders and regular files (fix the base tarball)",
            p.display()
        ))
        .into());
    }
    Ok(())
}

#[derive(Debug)]
pub struct Pruned {
    pub kept: usize,
    pub removed: usize,
}

/// Deletes every module outside the default set, the recipe's extras and
/// their dependencies; then regenerates the depmod indexes.
pub fn prune(tree: &Path, version: &str, extra: &[String]) -> Result<Pruned> {
    let pruned = prune_files(tree, version, extra)?;
    depmod(tree, version)?;
    Ok(pruned)
}

/// What a tree whose modules were already pruned keeps (nothing removed,
/// depmod not run again).
pub fn already_pruned(tree: &Path, version: &str) -> Result<Pruned> {
    check_module_tree(tree, version)?;
    Ok(Pruned {
        kept: read_modules_dep(tree, version)?.deps.len(),
        removed: 0,
    })
}

/// Runs `depmod` on the tree's module folder without letting it resolve
/// any path of the tree on the host: the folder (found with in-image
/// resolution, checked to hold no links) is moved into a fresh base folder
/// of cairn's own for the run, and moved back afterwards.
fn depmod(tree: &Path, version: &str) -> Result<()> {
    check_module_tree(tree, version)?;
    let real = modules_dir(tree, version)?;
    let parent = tree
        .parent()
        .context("kernel: the tree has no parent folder")?;
    let base = tempfile::Builder::new()
        .prefix(".depmod-")
        .tempdir_in(parent)
        .context("kernel: create the depmod folder")?;
    let lib = base.path().join("lib/modules");
    std::fs::create_dir_all(&lib)?;
    // kmod 31+ may look under usr/lib/modules instead: both lead to `lib`.
    std::fs::create_dir_all(base.path().join("usr/lib"))?;
    std::os::unix::fs::symlink("../../lib/modules", base.path().join("usr/lib/modules"))?;
    let staged = lib.join(version);
    std::fs::rename(&real, &staged)
        .with_context(|| format!("kernel: move {} for depmod", real.display()))?;
    let sh = crate::host::runner::shell()?;
    let b = base.path();
    let ran = crate::host::runner::run(
        "kernel: depmod",
        xshell::cmd!(sh, "depmod -b {b} {version}"),
    );
    std::fs::rename(&staged, &real)
        .with_context(|| format!("kernel: move {} back after depmod", real.display()))?;
    ran?;
    Ok(())
}

/// The file part of `prune`: removes the modules outside the kept set.
pub fn prune_files(tree: &Path, version: &str, extra: &[String]) -> Result<Pruned> {
    check_module_tree(tree, version)?;
    let dir = modules_dir(tree, version)?;
    let md = read_modules_dep(tree, version)?;
    let builtin = builtin_names(tree, version)?;
    let mut start = BTreeSet::new();
    for m in md.deps.keys() {
        let rel = m.strip_prefix("kernel").unwrap_or(m);
        if DEFAULT_KEEP.iter().any(|k| rel.starts_with(k)) {
            start.insert(m.clone());
        }
    }
    let mut unknown = Vec::new();
    for name in extra {
        match md.by_name.get(name) {
            Some(p) => {
                start.insert(p.clone());
            }
            None if builtin.contains(name) => {}
            None => unknown.push(name.clone()),
        }
    }
    if !unknown.is_empty() {
        bail!(
            "kernel: [kernel] modules names {} that kernel {version} does not have; check `modinfo` names",
            unknown.join(", ")
        );
    }
    let keep = md.closure(&start);
    let mut removed = 0;
    for m in md.deps.keys() {
        if !keep.contains(m) && remove_in_tree(tree, &modules_rel(version).join(m))? {
            removed += 1;
        }
    }
    let kernel = dir.join("kernel");
    if std::fs::symlink_metadata(&kernel)
        .map(|m| m.is_dir())
        .unwrap_or(false)
    {
        remove_empty_dirs(&kernel)?;
    }
    Ok(Pruned {
        kept: keep.len(),
        removed,
    })
}

fn remove_empty_dirs(dir: &Path) -> Result<bool> {
    let mut empty = true;
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if e.file_type()?.is_dir() {
            if remove_empty_dirs(&e.path())? {
                std::fs::remove_dir(e.path())?;
            } else {
                empty = false;
            }
        } else {
            empty = false;
        }
    }
    Ok(empty)
}

/// The initramfs's modules in load order: (may fail, path relative to the
/// version folder). Built-in ones are skipped.
pub fn initramfs_modules(tree: &Path, version: &str) -> Result<Vec<(bool, PathBuf)>> {
    check_module_tree(tree, version)?;
    let md = read_modules_dep(tree, version)?;
    let builtin = builtin_names(tree, version)?;
    let mut wanted = Vec::new();
    let mut optional = BTreeSet::new();
    for (name, may_fail) in INITRAMFS_MODULES {
        match md.by_name.get(*name) {
            Some(p) => {
                wanted.push(p.clone());
                if *may_fail {
                    optional.insert(p.clone());
                }
            }
            None if builtin.contains(*name) => {}
            None if *may_fail => {}
            None => bail!("kernel: {version} has no module {name}, needed at boot; use a Debian linux-image kernel"),
        }
    }
    Ok(md
        .load_order(&wanted)
        .into_iter()
        .map(|p| (optional.contains(&p), p))
        .collect())
}

/// Reads one module (a path from `initramfs_modules`) out of the tree.
pub fn read_module(tree: &Path, version: &str, rel: &Path) -> Result<Vec<u8>> {
    read_in_tree(tree, &modules_rel(version).join(rel))
        .with_context(|| format!("initramfs: module {}", rel.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko kernel/lib/reed_solomon/reed_solomon.ko\nkernel/drivers/md/dm-bufio.ko: kernel/drivers/md/dm-mod.ko\nkernel/drivers/md/dm-mod.ko:\nkernel/lib/reed_solomon/reed_solomon.ko:\nkernel/sound/x.ko:\n";

    #[test]
    fn closure_and_order_put_dependencies_first() {
        let md = parse_modules_dep(DEP).unwrap();
        let v = md.by_name["dm_verity"].clone();
        let c = md.closure(&[v.clone()].into_iter().collect());
        assert_eq!(c.len(), 4);
        let order = md.load_order(std::slice::from_ref(&v));
        let pos = |n: &str| order.iter().position(|p| module_name(p) == n).unwrap();
        assert!(pos("dm_mod") < pos("dm_bufio"));
        assert!(pos("dm_bufio") < pos("dm_verity"));
        assert!(pos("reed_solomon") < pos("dm_verity"));
    }

    #[test]
    fn hostile_paths_are_refused() {
        assert!(parse_modules_dep("../../etc/passwd:\n").is_err());
        assert!(parse_modules_dep("kernel/a.ko: /etc/x.ko\n").is_err());
    }

    #[test]
    fn prune_keeps_defaults_and_extras_with_deps() {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path();
        let dir = tree.join("usr/lib/modules/6.1.0-t");
        for m in DEP.lines().map(|l| l.split(':').next().unwrap()) {
            let p = dir.join(m);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "x").unwrap();
        }
        std::fs::write(dir.join("modules.dep"), DEP).unwrap();
        std::fs::write(dir.join("modules.builtin"), "").unwrap();
        // An unknown extra is one clear error, and nothing is removed.
        let e = prune_files(tree, "6.1.0-t", &["nosuchmod".into()]).unwrap_err();
        assert!(e.to_string().contains("nosuchmod"), "{e}");
        assert!(dir.join("kernel/sound/x.ko").exists());
        let p = prune_files(tree, "6.1.0-t", &[]).unwrap();
        assert_eq!(p.removed, 1);
        assert!(!dir.join("kernel/sound").exists());
        assert!(dir.join("kernel/drivers/md/dm-verity.ko").exists());
        // Pruning a pruned tree (the stage cache keeps the base tree
        // pruned; the pipeline prunes it again) keeps the same set.
        let again = prune_files(tree, "6.1.0-t", &[]).unwrap();
        assert_eq!((again.kept, again.removed), (p.kept, 0));
        assert!(dir.join("kernel/drivers/md/dm-verity.ko").exists());
    }

    #[test]
    fn links_in_the_module_tree_are_refused_and_the_host_is_untouched() {
        let d = tempfile::tempdir().unwrap();
        let host = d.path().join("host");
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("victim.ko"), "v").unwrap();
        let tree = d.path().join("tree");
        let dir = tree.join("usr/lib/modules/6.1.0-t");
        std::fs::create_dir_all(dir.join("kernel")).unwrap();
        std::os::unix::fs::symlink(&host, dir.join("kernel/evil")).unwrap();
        std::fs::write(dir.join("modules.dep"), "kernel/evil/victim.ko:\n").unwrap();
        let e = prune_files(&tree, "6.1.0-t", &[]).unwrap_err();
        assert!(e.downcast_ref::<crate::InputError>().is_some(), "{e:#}");
        assert!(e.to_string().contains("kernel/evil is a symlink"), "{e}");
        assert!(host.join("victim.ko").exists());
        let e = depmod(&tree, "6.1.0-t").unwrap_err();
        assert!(e.to_string().contains("is a symlink"), "{e}");
        // A module folder that is itself a link to the host resolves inside
        // the tree (where there is none): refused, nothing written outside.
        let tree2 = d.path().join("tree2");
        std::fs::create_dir_all(tree2.join("usr/lib/modules")).unwrap();
        std::os::unix::fs::symlink(&host, tree2.join("usr/lib/modules/6.1.0-t")).unwrap();
        let e = depmod(&tree2, "6.1.0-t").unwrap_err();
        assert!(e.to_string().contains("no module folder"), "{e}");
        let names: Vec<_> = std::fs::read_dir(&host)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("victim.ko")]);
    }

    #[test]
    fn depmod_writes_only_inside_the_tree() {
        if !["/usr/sbin/depmod", "/sbin/depmod"]
            .iter()
            .any(|p| Path::new(p).exists())
        {
            panic!("depmod (kmod) is not installed; `make deps` installs it");
        }
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        let dir = tree.join("usr/lib/modules/6.1.0-t");
        std::fs::create_dir_all(dir.join("kernel")).unwrap();
        for f in ["modules.order", "modules.builtin"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        // Debian's merged /usr: lib -> usr/lib, relative, inside the tree.
        std::os::unix::fs::symlink("usr/lib", tree.join("lib")).unwrap();
        depmod(&tree, "6.1.0-t").unwrap();
        assert!(dir.join("modules.dep").is_file());
        assert!(dir.join("modules.alias").is_file());
        // The scratch base folder is gone; nothing else appeared beside the tree.
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("tree")]);
    }
}
