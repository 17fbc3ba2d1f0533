//! Compose: turns the recipe's base (Debian via mmdebstrap, or a pinned
//! rootfs tarball), kernel, overlays and cairn's generated config into one
//! root tree in the staging folder. Invariant: nothing is ever written
//! outside `tree` (every path goes through `stagepath`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub use crate::host::tree::{apply_overlay, link_in_tree, set_plain_mode, write_in_tree};
use crate::host::tree::{copy_out_of_tree, read_in_tree_opt, resolve_in_root_follow};
use crate::inputs::plan::Plan;
use crate::recipe::{Base, Recipe};

pub use crate::recipe::packages::REQUIRED_PACKAGES;

/// Units that would reach out or change the image by themselves: masked.
pub const MASKED_UNITS: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "apt-daily.service",
    "apt-daily-upgrade.service",
    "systemd-timesyncd.service",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "man-db.timer",
    "systemd-resolved.service",
    "getty-static.service",
];

/// systemd's boot-phase measurements into PCR 11 (`sysinit`, `ready`,
/// `shutdown`, `final`): masked, so PCR 11 holds exactly what systemd-stub
/// measured (the UKI's sections, which the manifest predicts) from the
/// stub until power-off, whenever it is read. Debian's image has no TPM
/// software stack (libtss2), so these units could only fail; a later
/// sealing feature that wants phase barriers installs it and extends the
/// prediction by the phase words instead.
pub const PCR_PHASE_UNITS: &[&str] = &[
    "systemd-pcrphase-initrd.service",
    "systemd-pcrphase-sysinit.service",
    "systemd-pcrphase.service",
];

/// Masked in production images (no `[debug] console`): every way systemd
/// starts a login prompt. Masking the templates masks every instance the
/// getty generator would add for `console=` words; getty.target too.
pub const PRODUCTION_MASKED_UNITS: &[&str] = &[
    "getty.target",
    "getty@.service",
    "serial-getty@.service",
    "autovt@.service",
    "console-getty.service",
    "container-getty@.service",
    // systemd's own ways to a root shell on a failed boot or on request
    // (emergency/rescue ask for root's password, which is locked, but
    // `systemd.unit=rescue.target` or a failed mount would still start
    // them; debug-shell.service is a passwordless root shell on tty9).
    "emergency.target",
    "rescue.target",
    "emergency.service",
    "rescue.service",
    "debug-shell.service",
];

/// A Debian package installed in the image (for the SBOM).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub architecture: String,
}

#[derive(Debug, Clone)]
pub struct ComposedRoot {
    pub tree: PathBuf,
    /// The kernel image, moved out of the tree's /boot.
    pub vmlinuz: PathBuf,
    pub kernel_version: String,
    pub packages: Vec<Package>,
    pub workloads: crate::pipeline::workloads::Installed,
}

pub use crate::inputs::plan::Repos;

/// The base tree, before the apps steps ([`compose_apps`]): the Debian
/// tree (or tarball) with its kernel taken out of /boot, and the pinned
/// images (those built from Debian packages made at the same time as the
/// base). At `work/root`, or in memory (`host::scratch`) when it comes
/// from the stage cache and fits.
pub struct BaseTree {
    pub tree: PathBuf,
    /// The kernel image, moved out of the tree's /boot.
    pub vmlinuz: PathBuf,
    pub kernel_version: String,
    /// The kernel modules were pruned (with the recipe's extras) and
    /// depmod run before the tree was cached: a Debian base, made now or
    /// taken from the stage cache (its key names the extras).
    pub modules_pruned: bool,
    images: crate::pipeline::workloads::InstalledImages,
    /// The memory folder holding the tree, removed when dropped.
    pub memory: Option<crate::host::interrupt::FolderGuard>,
}

/// Makes the base tree (and prebuilds the images).
pub fn compose_base(plan: &Plan, work: &Path, repos: &Repos) -> Result<BaseTree> {
    let recipe = plan.recipe;
    // A Debian base from the stage cache: its size is known before it is
    // unpacked, so it may go to memory. The size is read from the cache's
    // index; the tarballs are checked when they are unpacked (below, while
    // the images are prepared).
    let key = match &recipe.base {
        Base::Debian {
            suite,
            mirror,
            packages,
        } if plan.stage_cache => Some(base_key(plan, suite, mirror, packages, repos.base.as_ref())),
        _ => None,
    };
    let in_memory = key
        .as_ref()
        .filter(|_| !plan.trees_on_disk)
        .and_then(|k| crate::inputs::stagecache::tree_size(&plan.cache, true, "debian-base", k))
        .and_then(crate::host::scratch::memory_folder);
    let memory = in_memory
        .as_ref()
        .map(|m| crate::host::interrupt::remove_on_exit(m));
    let tree = match &in_memory {
        Some(m) => m.join("root"),
        None => work.join("root"),
    };
    let make_base = || {
        let cached = key.as_ref().and_then(|k| {
            crate::inputs::stagecache::lookup_tree(&plan.cache, true, "debian-base", k)
                .map(|blobs| (k, blobs))
        });
        match (cached, &recipe.base) {
            (Some((key, blobs)), _) => {
                crate::say!(
                    "    base tree unchanged: reusing the cached one (stage key {}){}",
                    &key.hex()[..16],
                    match &in_memory {
                        Some(m) => format!(
                            ", unpacked in memory at {} ({} to keep it on disk)",
                            m.display(),
                            crate::host::scratch::DISK_HINT
                        ),
                        None => String::new(),
                    }
                );
                crate::inputs::stagecache::unpack_trees(&blobs, &tree).map(|()| true)
            }
            (
                None,
                Base::Debian {
                    suite,
                    mirror,
                    packages,
                },
            ) => mmdebstrap(plan, suite, mirror, packages, &tree, repos.base.as_ref()),
            (None, Base::Tarball { path, .. }) => {
                extract_tarball(path, &tree, &recipe.limits).map(|()| false)
            }
        }
    };
    // The base and each image built from Debian packages need nothing of
    // one another: they run at once, each on its own thread, and their
    // streamed lines say which they belong to. Each result is as if made
    // alone (nothing they write is shared), so outputs stay bit-identical.
    let memory_dir = in_memory.as_deref();
    let (base, images) = std::thread::scope(|s| {
        let handles: Vec<_> = recipe
            .workloads
            .images
            .iter()
            .filter(|img| {
                matches!(
                    img.source,
                    crate::pipeline::workloads::ImageSource::Build { .. }
                )
            })
            .map(|img| {
                let label = format!("image {}", img.name);
                s.spawn(move || {
                    yield_to_the_base();
                    crate::host::runner::with_label(&label, || {
                        crate::pipeline::workloads::prebuild(
                            plan,
                            img,
                            work,
                            memory_dir,
                            &repos.images,
                        )
                        .map(|b| b.map(|b| (img.name.clone(), b)))
                    })
                })
            })
            .collect();
        let base = crate::host::runner::with_label("base", make_base);
        let images: Vec<Result<Option<_>>> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect();
        (base, images)
    });
    let modules_pruned = base?;
    let mut built = std::collections::BTreeMap::new();
    for r in images {
        if let Some((name, b)) = r? {
            built.insert(name, b);
        }
    }
    let (vmlinuz, kernel_version) = take_kernel(&tree, work)?;
    let images = crate::pipeline::workloads::install_images(plan, &tree, work, built)?;
    Ok(BaseTree {
        tree,
        vmlinuz,
        kernel_version,
        modules_pruned,
        images,
        memory,
    })
}

/// Lowers the calling thread's CPU priority (nice 10), and so that of every
/// tool it starts (a child inherits its thread's nice value). An image
/// built beside the base has time to spare (it takes a third of the
/// base's time): when both want a core, the base, on the build's critical
/// path, gets it. Best effort: a failure leaves the priority as it was.
fn yield_to_the_base() {
    crate::host::sys::nice_this_thread(10);
}

/// The os-release the image ships: the tree's as it is now, without
/// `\r` and with the recipe's IMAGE_ID and IMAGE_VERSION (any others
/// dropped). Also read before the apps steps, to make the UKI ahead.
pub fn os_release(recipe: &Recipe, tree: &Path) -> Result<String> {
    let mut osrel = read_in_tree_opt(tree, Path::new("etc/os-release"))
        .map_err(|e| crate::InputError(format!("compose: {e:#}")))?
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    osrel.retain(|c| c != '\r');
    let mut osrel: String = osrel
        .lines()
        .filter(|l| !l.starts_with("IMAGE_ID=") && !l.starts_with("IMAGE_VERSION="))
        .map(|l| format!("{l}\n"))
        .collect();
    osrel.push_str(&format!(
        "IMAGE_ID={}\nIMAGE_VERSION={}\n",
        recipe.name, recipe.version
    ));
    Ok(osrel)
}

/// The apps steps on the base tree: the recipe's overlays, cairn's own
/// configuration, the models' mount points, the policy and the runtime's
/// units.
pub fn compose_apps(plan: &Plan, base: BaseTree) -> Result<ComposedRoot> {
    let recipe = plan.recipe;
    let tree = base.tree;
    for overlay in &recipe.overlays {
        apply_overlay(overlay, &tree)
            .with_context(|| format!("compose: overlay {}", overlay.display()))?;
    }
    configure(recipe, &tree)?;
    let workloads = crate::pipeline::workloads::install(plan, &tree, base.images)?;
    let packages = installed_packages(&tree)?;
    Ok(ComposedRoot {
        tree,
        vmlinuz: base.vmlinuz,
        kernel_version: base.kernel_version,
        packages,
        workloads,
    })
}

/// The stage key of the Debian base tree: it depends on these inputs only
/// (a tree cached under it is reused when they match). Cached in two parts
/// unpacked at once (`stagecache::store_tree`).
fn base_key(
    plan: &Plan,
    suite: &str,
    mirror: &str,
    packages: &[String],
    repo: Option<&crate::inputs::debrepo::LocalRepo>,
) -> crate::host::digest::Sha256 {
    let recipe = plan.recipe;
    let include = crate::recipe::packages::package_list(recipe, packages);
    let mut inputs: Vec<String> = crate::inputs::debrepo::Variant::Base
        .args()
        .iter()
        .map(|a| a.to_string())
        .collect();
    inputs.extend([
        format!("suite {suite}"),
        format!("mirror {mirror}"),
        format!("include {}", include.join(",")),
        format!("epoch {}", recipe.source_date_epoch),
        // The cached tree holds only the kernel modules kept for these
        // extras (see mmdebstrap).
        format!(
            "kernel modules pruned, extras {}",
            recipe.extra_modules.join(",")
        ),
    ]);
    if let Some(r) = repo {
        inputs.extend(
            r.packages
                .iter()
                .map(|p| format!("deb {} {}", p.spec(), p.sha256)),
        );
    }
    crate::inputs::stagecache::key("debian-base", &inputs)
}

fn mmdebstrap(
    plan: &Plan,
    suite: &str,
    mirror: &str,
    packages: &[String],
    tree: &Path,
    repo: Option<&crate::inputs::debrepo::LocalRepo>,
) -> Result<bool> {
    let recipe = plan.recipe;
    let cache = &plan.cache;
    let include = crate::recipe::packages::package_list(recipe, packages);
    // With a lock, packages come from a local repository of the locked,
    // cached .debs: the same bytes online and offline.
    let (mirror_arg, extra) = match repo {
        Some(r) => {
            let mut extra = r.mmdebstrap_args();
            extra.push(crate::inputs::debrepo::sources_list_hook(
                crate::inputs::debrepo::Variant::Base,
                suite,
                mirror,
            )?);
            (r.mmdebstrap_mirror(), extra)
        }
        None => (mirror.to_string(), Vec::new()),
    };
    let key = base_key(plan, suite, mirror, packages, repo);
    if let Some(r) = repo {
        r.write(cache)
            .context("compose: the locked packages' local repository")?;
    }
    let cmd = crate::inputs::debrepo::mmdebstrap_command(
        crate::inputs::debrepo::Variant::Base,
        suite,
        tree,
        &mirror_arg,
        &include,
        recipe.source_date_epoch,
        "directory",
        &extra,
    );
    crate::host::runner::run_streaming("compose: mmdebstrap", cmd)?;
    // The kernel package brings its whole module tree (about 390 MB), of
    // which the appliance keeps a few MB: prune it before the tree is
    // cached, so a rebuild does not unpack what it deletes. Without one
    // kernel the tree is left as it is: take_kernel reports that.
    let pruned = match kernel_in_boot(tree) {
        Ok((_, version)) => {
            let p = crate::pipeline::kernel::prune(tree, &version, &recipe.extra_modules)?;
            crate::say!(
                "    kernel {version}: kept {} modules, removed {} before caching the base tree",
                p.kept,
                p.removed
            );
            true
        }
        Err(_) => false,
    };
    if plan.stage_cache {
        crate::inputs::stagecache::store_tree(
            cache,
            "debian-base",
            &key,
            tree,
            &tree.with_extension("base"),
        )?;
    }
    Ok(pruned)
}

/// Unpacks the base tarball with cairn's own bounded tar reader and the
/// layer policy (see `pipeline::oci::unpack_base_tarball`): no host tool
/// reads it, nothing it names lands outside `tree`, no device node or fifo
/// is ever created, and every cap of `[limits]` holds while it streams.
fn extract_tarball(path: &Path, tree: &Path, limits: &crate::host::limits::Limits) -> Result<()> {
    std::fs::create_dir_all(tree).with_context(|| format!("cannot create {}", tree.display()))?;
    crate::pipeline::oci::unpack_base_tarball(path, tree, limits)?;
    Ok(())
}

/// Moves /boot/vmlinuz-VERSION out of the tree (it goes into the UKI) and
/// empties /boot. The kernel must be a regular file of the tree: a link
/// (even one that resolves inside it) or anything else is refused.
fn take_kernel(tree: &Path, work: &Path) -> Result<(PathBuf, String)> {
    let (boot, version) = kernel_in_boot(tree)?;
    let rel = Path::new("boot").join(format!("vmlinuz-{version}"));
    let meta = std::fs::symlink_metadata(boot.join(format!("vmlinuz-{version}")))
        .context("compose: /boot/vmlinuz")?;
    if !meta.file_type().is_file() {
        return Err(crate::InputError(format!(
            "compose: /boot/vmlinuz-{version} is not a regular file (a link or special file); the kernel must be the file itself"
        ))
        .into());
    }
    let vmlinuz = work.join("vmlinuz");
    copy_out_of_tree(tree, &rel, &vmlinuz).context("compose: copy the kernel out of /boot")?;
    for e in std::fs::read_dir(&boot)?.flatten() {
        let p = e.path();
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    // Debian's /vmlinuz and /initrd.img convenience links now dangle.
    for l in ["vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old"] {
        crate::host::tree::remove_in_tree(tree, Path::new(l))?;
    }
    Ok((vmlinuz, version))
}

/// The tree's /boot folder (resolved inside the tree) and the version of
/// its one kernel, /boot/vmlinuz-VERSION.
fn kernel_in_boot(tree: &Path) -> Result<(PathBuf, String)> {
    let boot = resolve_in_root_follow(tree, Path::new("boot"))?;
    if !std::fs::symlink_metadata(&boot)
        .map(|m| m.is_dir())
        .unwrap_or(false)
    {
        return Err(crate::InputError(
            "compose: the root tree has no /boot folder; add a linux-image package ([kernel] package)".into(),
        )
        .into());
    }
    let mut kernels: Vec<String> = std::fs::read_dir(&boot)
        .with_context(|| format!("compose: cannot list /boot ({})", boot.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .filter_map(|n| n.strip_prefix("vmlinuz-").map(String::from))
        .collect();
    kernels.sort();
    let version = match kernels.as_slice() {
        [one] => one.clone(),
        [] => return Err(crate::InputError("compose: no /boot/vmlinuz-* in the root tree; add a linux-image package ([kernel] package)".into()).into()),
        many => return Err(crate::InputError(format!("compose: several kernels in /boot ({}); install exactly one", many.join(", "))).into()),
    };
    if version.is_empty() || version.contains('/') || version.starts_with('.') {
        return Err(crate::InputError(format!(
            "compose: kernel version {version:?} is not a plain name"
        ))
        .into());
    }
    Ok((boot, version))
}

const READY_SCRIPT: &str = include_str!("../../guest/cairn-ready");
const READY_SERVICE: &str = include_str!("../../guest/cairn-ready.service");
const CAIRN_TARGET: &str = include_str!("../../guest/cairn.target");
const DEBUG_SHELL_SERVICE: &str = include_str!("../../guest/cairn-debug-shell.service");
const SAY_SCRIPT: &str = include_str!("../../guest/cairn-say");
const PROBE_SCRIPT: &str = include_str!("../../guest/cairn-probe");
const FIREWALL_SERVICE: &str = include_str!("../../guest/cairn-firewall.service");
const FIREWALL_MISSING_SERVICE: &str = include_str!("../../guest/cairn-firewall-missing.service");
const NETWORKD_DROPIN: &str = include_str!("../../guest/networkd-requires-firewall.conf");
const STATE_DISCARD: &str = include_str!("../../guest/cairn-state-discard");

/// cairn's own files in the image: identity, the ready unit, the default
/// target, and the debug shell when the recipe asks for it.
fn configure(recipe: &Recipe, tree: &Path) -> Result<()> {
    // After the overlays (compose_apps applies them first): an overlay or a
    // package hook that set a root password is refused here.
    check_root_locked(tree)?;
    write_in_tree(
        tree,
        "etc/hostname",
        format!("{}\n", recipe.name).as_bytes(),
        0o644,
    )?;
    // No resolver: nothing in the appliance can look a name up outside.
    // (The file exists because container runtimes bind-mount it.)
    write_in_tree(
        tree,
        "etc/resolv.conf",
        b"# cairn: air-gapped appliance, no DNS resolver.\n",
        0o644,
    )?;
    write_in_tree(
        tree,
        "etc/hosts",
        format!(
            "127.0.0.1\tlocalhost\n127.0.1.1\t{0}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
            recipe.name
        )
        .as_bytes(),
        0o644,
    )?;
    // Empty: systemd makes a fresh one in RAM at every boot.
    write_in_tree(tree, "etc/machine-id", b"", 0o444)?;
    let osrel_path = resolve_in_root_follow(tree, Path::new("etc/os-release"))?;
    let osrel = os_release(recipe, tree)?;
    let osrel_rel = osrel_path
        .strip_prefix(tree)
        .context("os-release outside the tree")?
        .to_string_lossy()
        .into_owned();
    write_in_tree(tree, &osrel_rel, osrel.as_bytes(), 0o644)?;

    write_in_tree(
        tree,
        "usr/lib/cairn/cairn-ready",
        READY_SCRIPT.as_bytes(),
        0o755,
    )?;
    write_in_tree(
        tree,
        "usr/lib/cairn/cairn-say",
        SAY_SCRIPT.as_bytes(),
        0o755,
    )?;
    write_in_tree(
        tree,
        "usr/lib/cairn/cairn-probe",
        PROBE_SCRIPT.as_bytes(),
        0o755,
    )?;
    crate::pipeline::audit::install(recipe, tree)?;

    // Air-gap: the ruleset sits in the verity-protected root; the unit loads
    // it before networking, and networkd cannot start without it.
    write_in_tree(
        tree,
        "usr/lib/cairn/firewall.nft",
        crate::pipeline::firewall::ruleset(&recipe.network, recipe.workloads.runtime).as_bytes(),
        0o644,
    )?;
    write_in_tree(
        tree,
        "usr/lib/systemd/system/cairn-firewall.service",
        FIREWALL_SERVICE.as_bytes(),
        0o644,
    )?;
    link_in_tree(
        tree,
        "usr/lib/systemd/system/sysinit.target.wants/cairn-firewall.service",
        "../cairn-firewall.service",
    )?;
    write_in_tree(
        tree,
        "usr/lib/systemd/system/cairn-firewall-missing.service",
        FIREWALL_MISSING_SERVICE.as_bytes(),
        0o644,
    )?;
    link_in_tree(
        tree,
        "usr/lib/systemd/system/sysinit.target.wants/cairn-firewall-missing.service",
        "../cairn-firewall-missing.service",
    )?;
    write_in_tree(
        tree,
        "usr/lib/systemd/system/systemd-networkd.service.d/cairn-firewall.conf",
        NETWORKD_DROPIN.as_bytes(),
        0o644,
    )?;
    // Debian's own nftables.service would load /etc/nftables.conf over ours.
    link_in_tree(tree, "etc/systemd/system/nftables.service", "/dev/null")?;
    let network =
        crate::pipeline::firewall::network_files(&recipe.network, recipe.workloads.runtime);
    for (path, content) in &network {
        write_in_tree(tree, path, content.as_bytes(), 0o644)?;
    }
    if !network.is_empty() {
        link_in_tree(
            tree,
            "usr/lib/systemd/system/cairn.target.wants/systemd-networkd.service",
            "../systemd-networkd.service",
        )?;
    }
    for unit in MASKED_UNITS.iter().chain(PCR_PHASE_UNITS) {
        link_in_tree(tree, &format!("etc/systemd/system/{unit}"), "/dev/null")?;
    }
    write_in_tree(
        tree,
        "usr/lib/systemd/system-shutdown/cairn-state-discard",
        STATE_DISCARD.as_bytes(),
        0o755,
    )?;
    write_in_tree(
        tree,
        "usr/lib/systemd/system/cairn-ready.service",
        READY_SERVICE.as_bytes(),
        0o644,
    )?;
    write_in_tree(
        tree,
        "usr/lib/systemd/system/cairn.target",
        CAIRN_TARGET.as_bytes(),
        0o644,
    )?;
    link_in_tree(
        tree,
        "usr/lib/systemd/system/cairn.target.wants/cairn-ready.service",
        "../cairn-ready.service",
    )?;
    link_in_tree(
        tree,
        "etc/systemd/system/default.target",
        "/usr/lib/systemd/system/cairn.target",
    )?;
    if !recipe.debug_console {
        // Production: no login prompt on any console (serial, VT, container
        // console). Root is locked anyway; the prompt is attack surface and
        // tells a field team there is something to log in to.
        for unit in PRODUCTION_MASKED_UNITS {
            link_in_tree(tree, &format!("etc/systemd/system/{unit}"), "/dev/null")?;
        }
    }
    if recipe.debug_console {
        write_in_tree(
            tree,
            "usr/lib/systemd/system/cairn-debug-shell.service",
            DEBUG_SHELL_SERVICE.as_bytes(),
            0o644,
        )?;
        link_in_tree(
            tree,
            "usr/lib/systemd/system/cairn.target.wants/cairn-debug-shell.service",
            "../cairn-debug-shell.service",
        )?;
        // The login prompt would compete with the shell for the port.
        link_in_tree(
            tree,
            "etc/systemd/system/serial-getty@ttyS1.service",
            "/dev/null",
        )?;
    }
    Ok(())
}

/// Refuses a tree whose root account can log in with a password: root's
/// password field in /etc/shadow must be locked (`*`, or `!` first) and
/// /etc/passwd must not carry a password of its own (`x` sends to shadow).
/// Debian's debootstrap leaves root as `root:*:`.
fn check_root_locked(tree: &Path) -> Result<()> {
    let read = |rel: &str| -> Result<String> {
        let path = resolve_in_root_follow(tree, Path::new(rel))?;
        std::fs::read_to_string(&path).map_err(|e| {
            crate::InputError(format!(
                "compose: cannot read {rel} of the image ({e}); the build must see that root's password is locked"
            ))
            .into()
        })
    };
    let field = |text: &str| -> Option<String> {
        text.lines()
            .find(|l| l.split(':').next() == Some("root"))
            .map(|l| l.split(':').nth(1).unwrap_or("").to_string())
    };
    let passwd = read("etc/passwd")?;
    match field(&passwd).as_deref() {
        Some("x") | None => {}
        Some(_) => {
            return Err(crate::InputError(
                "compose: /etc/passwd of the image gives root a password of its own (field 2 is not `x`); \
                 an appliance's root is locked: remove it from the overlay or package that sets it"
                    .into(),
            )
            .into())
        }
    }
    let shadow = read("etc/shadow")?;
    match field(&shadow) {
        Some(p) if p == "*" || p.starts_with('!') => Ok(()),
        Some(_) => Err(crate::InputError(
            "compose: root's password in /etc/shadow of the image is not locked (field 2 is neither `*` nor `!...`); \
             an appliance's root has no password: remove the overlay or package step that sets one"
                .into(),
        )
        .into()),
        None => Err(crate::InputError(
            "compose: /etc/shadow of the image has no root entry; cannot show that root is locked".into(),
        )
        .into()),
    }
}

/// Reads the dpkg database of the tree: every installed package.
pub fn installed_packages(tree: &Path) -> Result<Vec<Package>> {
    // A tarball base may have no dpkg.
    let Some(bytes) = read_in_tree_opt(tree, Path::new("var/lib/dpkg/status"))
        .map_err(|e| crate::InputError(format!("compose: {e:#}")))?
    else {
        return Ok(Vec::new());
    };
    Ok(parse_dpkg_status(&String::from_utf8_lossy(&bytes)))
}

pub fn parse_dpkg_status(text: &str) -> Vec<Package> {
    let mut out: Vec<Package> = crate::host::deb822::paragraphs(text)
        .into_iter()
        .filter(|p| p.get("Status").is_some_and(|s| s.ends_with(" installed")))
        .filter_map(|p| {
            Some(Package {
                name: p.get("Package")?.to_string(),
                version: p.get("Version")?.to_string(),
                architecture: p.get("Architecture")?.to_string(),
            })
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// `configure` on a tree of `recipe_text` holding os-release and the
    /// given passwd and shadow files; the folder, and what configure said.
    fn configure_tree(
        recipe_text: &str,
        shadow: &str,
        passwd: &str,
    ) -> (tempfile::TempDir, Result<()>) {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("r.toml");
        std::fs::write(&path, recipe_text).unwrap();
        let recipe = crate::recipe::parse(&crate::recipe::RecipeSource {
            path,
            text: recipe_text.into(),
            root: std::fs::canonicalize(d.path()).unwrap(),
            env: Default::default(),
            merged: None,
        })
        .unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/os-release"), "ID=debian\n").unwrap();
        std::fs::write(tree.join("etc/passwd"), passwd).unwrap();
        std::fs::write(tree.join("etc/shadow"), shadow).unwrap();
        let r = configure(&recipe, &tree);
        (d, r)
    }

    fn configured(recipe_text: &str) -> tempfile::TempDir {
        let (d, r) = configure_tree(
            recipe_text,
            "root:*:19000:0:99999:7:::\n",
            "root:x:0:0:root:/root:/bin/bash\n",
        );
        r.unwrap();
        d
    }

    fn configure_with(shadow: &str, passwd: &str) -> Result<()> {
        configure_tree(RECIPE, shadow, passwd).1
    }

    #[test]
    fn a_root_password_is_refused_and_a_locked_root_passes() {
        let pw = "root:x:0:0:root:/root:/bin/bash\n";
        // Controls: Debian's `*` and passwd -l's `!` pass.
        configure_with("root:*:19000:0:99999:7:::\n", pw).unwrap();
        configure_with("root:!$y$j9T$abc$def:19000:0:99999:7:::\n", pw).unwrap();
        for shadow in [
            "root:$y$j9T$abc$def:19000:0:99999:7:::\n",
            "root::19000:0:99999:7:::\n",
            "daemon:*:1::::::\n",
        ] {
            let e = configure_with(shadow, pw).unwrap_err();
            assert!(e.downcast_ref::<crate::InputError>().is_some(), "{e:#}");
            assert!(format!("{e:#}").contains("/etc/shadow"), "{e:#}");
        }
        let e = configure_with(
            "root:*:19000:0:99999:7:::\n",
            "root:$1$salt$hash:0:0:root:/root:/bin/bash\n",
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("/etc/passwd"), "{e:#}");
    }

    const RECIPE: &str = "[image]\nname = \"t\"\nversion = \"1\"\n[base.debian]\npackages = []\n";

    #[test]
    fn production_images_mask_every_getty_and_debug_images_keep_them() {
        let is_masked = |d: &tempfile::TempDir, unit: &str| {
            std::fs::read_link(d.path().join("tree/etc/systemd/system").join(unit))
                .map(|t| t == Path::new("/dev/null"))
                .unwrap_or(false)
        };
        let prod = configured(RECIPE);
        let debug = configured(&format!("{RECIPE}[debug]\nconsole = true\n"));
        for unit in PRODUCTION_MASKED_UNITS {
            assert!(is_masked(&prod, unit), "{unit} not masked in production");
            assert!(
                !is_masked(&debug, unit),
                "{unit} masked with [debug] console"
            );
        }
    }

    /// The files `cairn check` refuses in overlays are the ones configure
    /// writes (else the refusal would be for nothing, or a replaced file
    /// would go unreported).
    #[test]
    fn the_files_check_refuses_in_overlays_are_the_ones_cairn_writes() {
        let d = configured(RECIPE);
        let tree = d.path().join("tree");
        for (rel, _) in crate::recipe::validate::GENERATED_FILES {
            assert!(tree.join(rel).is_file(), "configure does not write {rel}");
        }
        assert!(tree.join(crate::recipe::validate::CAIRN_FOLDER).is_dir());
    }

    #[test]
    fn pcr_phase_units_are_masked_in_every_image() {
        for d in [
            configured(RECIPE),
            configured(&format!("{RECIPE}[debug]\nconsole = true\n")),
        ] {
            for unit in PCR_PHASE_UNITS {
                let t = std::fs::read_link(d.path().join("tree/etc/systemd/system").join(unit));
                assert_eq!(t.ok().as_deref(), Some(Path::new("/dev/null")), "{unit}");
            }
        }
    }

    #[test]
    fn the_firewall_fails_closed() {
        let d = configured(RECIPE);
        let units = d.path().join("tree/usr/lib/systemd/system");
        let fw = std::fs::read_to_string(units.join("cairn-firewall.service")).unwrap();
        assert!(
            fw.contains("AssertPathExists=/usr/lib/cairn/firewall.nft"),
            "{fw}"
        );
        assert!(!fw.contains("ConditionPathExists"), "{fw}");
        let missing =
            std::fs::read_to_string(units.join("cairn-firewall-missing.service")).unwrap();
        assert!(missing.contains("ConditionPathExists=!/usr/lib/cairn/firewall.nft"));
        assert!(missing.contains("FATAL") && missing.contains("systemctl --no-block halt"));
        assert!(units
            .join("sysinit.target.wants/cairn-firewall-missing.service")
            .symlink_metadata()
            .is_ok());
        let ready = std::fs::read_to_string(units.join("cairn-ready.service")).unwrap();
        assert!(ready.contains("Requires=cairn-firewall.service"), "{ready}");
    }

    #[test]
    fn an_image_thread_and_the_tools_it_starts_yield_to_the_base() {
        let niceness = || {
            let mut cmd = crate::host::runner::command("nice");
            cmd.stdin(std::process::Stdio::null());
            let out = crate::host::runner::output("test: nice", cmd).unwrap();
            String::from_utf8(out.stdout)
                .unwrap()
                .trim()
                .parse::<i32>()
                .unwrap()
        };
        let before = std::thread::spawn(niceness).join().unwrap();
        let after = std::thread::spawn(move || {
            yield_to_the_base();
            niceness()
        })
        .join()
        .unwrap();
        assert_eq!(after, (before + 10).min(19));
        // Control: only that thread was lowered, not the rest of the process.
        assert_eq!(std::thread::spawn(niceness).join().unwrap(), before);
        assert_eq!(niceness(), before);
    }

    #[test]
    fn dpkg_status_lists_installed_only() {
        let text = "Package: a\nStatus: install ok installed\nVersion: 1\nArchitecture: amd64\n\nPackage: b\nStatus: deinstall ok config-files\nVersion: 2\nArchitecture: all\n";
        let p = parse_dpkg_status(text);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].name, "a");
    }

    #[test]
    fn overlay_cannot_write_through_an_escaping_link() {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        let outside = d.path().join("outside");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        // The tree has a link pointing at a host folder by absolute path.
        std::os::unix::fs::symlink(&outside, tree.join("etc")).unwrap();
        let ov = d.path().join("ov");
        std::fs::create_dir_all(ov.join("etc")).unwrap();
        std::fs::write(ov.join("etc/x"), "hi").unwrap();
        apply_overlay(&ov, &tree).unwrap();
        assert!(
            std::fs::read_dir(&outside).unwrap().next().is_none(),
            "wrote outside"
        );
        // Control: the file landed inside the tree, under the link's in-root meaning.
        let inside = tree.join(outside.strip_prefix("/").unwrap()).join("x");
        assert_eq!(std::fs::read_to_string(inside).unwrap(), "hi");
    }

    #[test]
    fn overlay_refuses_setuid() {
        let d = tempfile::tempdir().unwrap();
        let ov = d.path().join("ov");
        std::fs::create_dir_all(&ov).unwrap();
        std::fs::write(ov.join("s"), "x").unwrap();
        std::fs::set_permissions(ov.join("s"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        let e = apply_overlay(&ov, &d.path().join("t")).unwrap_err();
        assert!(e.to_string().contains("set-uid"), "{e}");
    }
}
