//! The whole pipeline, in order: resolve → compose → kernel modules →
//! normalise → squashfs → verity → initramfs → UKI → media → manifest.
//! Outputs are written to a hidden folder beside the final one and renamed
//! into place only when every stage succeeded.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::host::digest::Sha256;
use crate::release::manifest::{self, Manifest};
use crate::recipe::{Base, Recipe};

/// Which media to write. The raw disk is always made (qcow2 is converted
/// from it); it is published only when asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Formats {
    pub raw: bool,
    pub iso: bool,
    pub qcow2: bool,
}

impl Default for Formats {
    fn default() -> Self {
        Formats {
            raw: true,
            iso: true,
            qcow2: true,
        }
    }
}

impl Formats {
    /// Parses "raw,iso,qcow2" (any subset, at least one).
    pub fn parse(s: &str) -> Result<Formats, String> {
        let mut f = Formats {
            raw: false,
            iso: false,
            qcow2: false,
        };
        for w in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match w {
                "raw" => f.raw = true,
                "iso" => f.iso = true,
                "qcow2" => f.qcow2 = true,
                other => {
                    return Err(format!(
                        "unknown format {other:?}; choose from raw, iso, qcow2"
                    ))
                }
            }
        }
        if !(f.raw || f.iso || f.qcow2) {
            return Err("no format given; choose from raw, iso, qcow2".into());
        }
        Ok(f)
    }
}

/// The medium a UKI boots from: the raw disk's partitions or the ISO's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Medium {
    Disk,
    Iso,
}

pub struct BuildOptions {
    pub out_dir: PathBuf,
    pub formats: Formats,
    /// Use nothing but the cache (needs RECIPE.lock).
    pub offline: bool,
    /// Re-resolve the lock when it disagrees with the recipe.
    pub update_lock: bool,
    /// Sign the outputs (SHA256 + SHA256.sig) with this key.
    pub key: Option<crate::release::sign::SigningKey>,
}

pub struct BuildResult {
    pub dir: PathBuf,
    pub raw: PathBuf,
    pub root_hash: Sha256,
}

/// Prints each stage as it starts and its duration when it ends.
struct Stages {
    n: usize,
    total: usize,
    started: Instant,
    times: Vec<(String, f64)>,
}

impl Stages {
    fn run<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.n += 1;
        eprintln!("[{:>2}/{}] {name} ...", self.n, self.total);
        let t = Instant::now();
        let v = f()?;
        let secs = t.elapsed().as_secs_f64();
        eprintln!("[{:>2}/{}] {name} done in {secs:.1}s", self.n, self.total);
        self.times.push((name.to_string(), secs));
        Ok(v)
    }
}

/// Removes the in-progress folder unless the build finished.
struct InProgress(PathBuf);

impl Drop for InProgress {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The kernel command line: cairn's words, then the recipe's extras.
/// cairn owns verity in its initramfs, so it passes `cairn.roothash=`,
/// never systemd's `roothash=` (whose generator would act on it too).
pub fn kernel_cmdline(recipe: &Recipe, root_hash: &Sha256, medium: Medium) -> String {
    let state = match (medium, recipe.state_mode, recipe.debug_unencrypted_state) {
        // ISO media have no state partition: RAM.
        (Medium::Iso, _, _) => "ram",
        (Medium::Disk, crate::recipe::StateMode::Ram, _) => "ram",
        (Medium::Disk, crate::recipe::StateMode::Disk, false) => "disk",
        (Medium::Disk, crate::recipe::StateMode::Disk, true) => "disk-unencrypted",
    };
    let mut words = vec![
        "console=tty0".to_string(),
        "console=ttyS0,115200".to_string(),
        format!("cairn.roothash={root_hash}"),
        format!(
            "cairn.medium={}",
            match medium {
                Medium::Disk => "disk",
                Medium::Iso => "iso",
            }
        ),
        format!("cairn.state={state}"),
        format!("cairn.ram_size={}", recipe.ram_size),
        "systemd.gpt_auto=0".to_string(),
        "systemd.firstboot=0".to_string(),
    ];
    if recipe.state_grow && medium == Medium::Disk {
        words.push("cairn.state_grow=1".to_string());
    }
    words.extend(recipe.cmdline_extra.iter().cloned());
    words.join(" ")
}

pub fn build(recipe: &Recipe, opts: &BuildOptions) -> Result<BuildResult> {
    let started = Instant::now();
    // Inputs are checked before anything is printed or created, so bad
    // input is one line of error and an untouched output folder.
    let locked = resolve_lock(recipe, opts)?;
    ensure_cached(recipe, locked.as_ref(), opts)?;
    resolve(recipe)?;
    let key = match &opts.key {
        Some(k) => Some(crate::release::sign::load_key(k)?),
        None => None,
    };
    let mut st = Stages {
        n: 1,
        total: 10
            + usize::from(key.is_some())
            + usize::from(opts.formats.iso)
            + usize::from(opts.formats.qcow2),
        started,
        times: vec![("resolve inputs".into(), started.elapsed().as_secs_f64())],
    };
    eprintln!(
        "cairn: building {} {} from {}",
        recipe.name,
        recipe.version,
        recipe.file.display()
    );

    eprintln!(
        "[ 1/{}] resolve inputs done in {:.1}s",
        st.total, st.times[0].1
    );
    std::fs::create_dir_all(&opts.out_dir)
        .with_context(|| format!("cannot create output folder {}", opts.out_dir.display()))?;
    // Absolute from here on: some tools run in their own folders.
    let out_dir = std::fs::canonicalize(&opts.out_dir)
        .with_context(|| format!("cannot resolve output folder {}", opts.out_dir.display()))?;
    clean_stale(&out_dir);
    let stem = recipe.stem();
    let tmp = out_dir.join(format!(".{stem}.building-{}", std::process::id()));
    let _guard = InProgress(tmp.clone());
    let work = tmp.join("work");
    let media = tmp.join("media");
    std::fs::create_dir_all(&work)?;
    std::fs::create_dir_all(&media)?;

    let repos = local_repos(locked.as_ref(), &work.join("repo"))?;
    let composed = st.run("compose root tree", || {
        crate::pipeline::compose::compose(recipe, &work, &repos)
    })?;
    let pruned = st.run("prune kernel modules", || {
        crate::pipeline::kernel::prune(
            &composed.tree,
            &composed.kernel_version,
            &recipe.extra_modules,
        )
    })?;
    eprintln!(
        "        kernel {}: kept {} modules, removed {}",
        composed.kernel_version, pruned.kept, pruned.removed
    );
    let osrel = work.join("os-release");
    std::fs::copy(
        crate::host::tree::resolve_in_root_follow(&composed.tree, Path::new("etc/os-release"))?,
        &osrel,
    )
    .context("copy os-release for the UKI")?;
    let stub = work.join("linuxx64.efi.stub");
    std::fs::copy(crate::pipeline::uki::stub_path(&composed.tree)?, &stub)?;
    let initrd = st.run("initramfs", || {
        crate::pipeline::initramfs::make_initramfs(
            &composed.tree,
            recipe.state_grow,
            &composed.kernel_version,
            &work.join("initramfs.cpio"),
            recipe.source_date_epoch,
        )
    })?;
    eprintln!(
        "        {} modules, {:.1} MiB",
        initrd.modules,
        initrd.size as f64 / 1048576.0
    );
    st.run("normalise", || {
        crate::pipeline::normalise::normalise(&composed.tree, recipe.source_date_epoch)
    })?;
    let root = st.run("squashfs root", || {
        crate::pipeline::squashfs::make_squashfs(
            &composed.tree,
            &work.join("root.squashfs"),
            recipe.source_date_epoch,
        )
    })?;
    eprintln!("        {:.1} MiB", root.size as f64 / 1048576.0);
    // The tree is no longer needed; free the space before writing media.
    std::fs::remove_dir_all(&composed.tree).ok();
    let verity = st.run("dm-verity hash tree", || {
        crate::pipeline::verity::make_verity(&root.path, &work.join("root.verity"))
    })?;
    eprintln!("        root hash {}", verity.root_hash);
    let cmdline = kernel_cmdline(recipe, &verity.root_hash, Medium::Disk);
    let uki = st.run("UKI", || {
        crate::pipeline::uki::make_uki(
            &crate::pipeline::uki::UkiInputs {
                stub: &stub,
                kernel: &composed.vmlinuz,
                initrd: &initrd.path,
                os_release: &osrel,
                cmdline: &cmdline,
                epoch: recipe.source_date_epoch,
            },
            &work,
            &work.join("uki.efi"),
        )
    })?;
    let raw_path = if opts.formats.raw {
        media.join(format!("{stem}.raw"))
    } else {
        work.join(format!("{stem}.raw"))
    };
    let raw = st.run("raw disk", || {
        crate::media::disk::write_raw(
            &crate::media::disk::DiskInputs {
                uki: &uki.path,
                root: &root.path,
                verity: &verity.hash_path,
                root_hash: &verity.root_hash,
                disk_size: recipe.disk_size,
                min_state_size: recipe.state_size,
                epoch: recipe.source_date_epoch,
            },
            &work,
            &raw_path,
        )
    })?;
    let iso_cmdline = kernel_cmdline(recipe, &verity.root_hash, Medium::Iso);
    if opts.formats.iso {
        st.run("hybrid ISO", || {
            let uki_iso = crate::pipeline::uki::make_uki(
                &crate::pipeline::uki::UkiInputs {
                    stub: &stub,
                    kernel: &composed.vmlinuz,
                    initrd: &initrd.path,
                    os_release: &osrel,
                    cmdline: &iso_cmdline,
                    epoch: recipe.source_date_epoch,
                },
                &work,
                &work.join("uki-iso.efi"),
            )?;
            let iso_work = work.join("iso");
            std::fs::create_dir_all(&iso_work)?;
            crate::media::iso::write_iso(
                &crate::media::iso::IsoInputs {
                    uki: &uki_iso.path,
                    kernel: &composed.vmlinuz,
                    initrd: &initrd.path,
                    cmdline: &iso_cmdline,
                    root: &root.path,
                    verity: &verity.hash_path,
                    volume_id: &crate::media::iso::volume_id(&recipe.name, &recipe.version),
                    epoch: recipe.source_date_epoch,
                },
                &iso_work,
                &media.join(format!("{stem}.iso")),
            )
        })?;
    }
    if opts.formats.qcow2 {
        st.run("qcow2", || {
            crate::media::qcow2::write_qcow2(&raw_path, &media.join(format!("{stem}.qcow2")))
        })?;
    }
    st.run("manifest", || {
        let mut m = Manifest::new(recipe, &composed, &verity, &cmdline, &raw.layout, &media)?;
        if opts.formats.iso {
            m.kernel.iso_cmdline = Some(iso_cmdline.clone());
        }
        manifest::write(&m, &media.join("manifest.json"))?;
        // The in-toto/SLSA statement names every output by digest.
        let subjects: Vec<(String, Sha256)> = m
            .outputs
            .iter()
            .map(|o| (o.file.clone(), o.sha256))
            .chain(std::iter::once((
                "manifest.json".to_string(),
                Sha256::of_file(&media.join("manifest.json"))?,
            )))
            .collect();
        crate::release::provenance::write(
            &media.join(crate::release::provenance::FILE_NAME),
            &crate::release::provenance::statement(&m, &subjects),
        )
    })?;
    if let (Some(key), Some(k)) = (&key, &opts.key) {
        let pub_name = k
            .path
            .with_extension("pub")
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "key.pub".into());
        let id = st.run("sign", || crate::release::sign::sign_dir(&media, key, &pub_name))?;
        eprintln!("        signed with key id {id} (verify with {pub_name})");
    }

    // Publish: the finished folder appears in one rename.
    let final_dir = out_dir.join(&stem);
    if final_dir.exists() {
        let old = out_dir.join(format!(".{stem}.old-{}", std::process::id()));
        std::fs::rename(&final_dir, &old)
            .with_context(|| format!("cannot move the previous {} aside", final_dir.display()))?;
        std::fs::remove_dir_all(&old).ok();
    }
    std::fs::rename(&media, &final_dir)
        .with_context(|| format!("cannot publish {}", final_dir.display()))?;
    let total = st.started.elapsed().as_secs_f64();
    eprintln!("cairn: stage times:");
    for (name, secs) in &st.times {
        eprintln!(
            "        {name:<24} {secs:>7.1}s {:>5.1}%",
            100.0 * secs / total.max(0.001)
        );
    }
    eprintln!("cairn: built {} in {total:.1}s", final_dir.display());
    Ok(BuildResult {
        raw: final_dir.join(format!("{stem}.raw")),
        dir: final_dir,
        root_hash: verity.root_hash,
    })
}

/// The recipe's lock, checked against the recipe. None: no lock, and
/// either online (mmdebstrap resolves against the mirror) or the recipe
/// needs none (a tarball base and no built image: its own sha256 pins
/// cover every input).
fn resolve_lock(recipe: &Recipe, opts: &BuildOptions) -> Result<Option<crate::inputs::lock::Lock>> {
    use crate::inputs::lock::{check_recipe, image_requests, lock_path, Lock};
    let needs_lock =
        matches!(recipe.base, Base::Debian { .. }) || !image_requests(recipe).is_empty();
    let path = lock_path(&recipe.file);
    let lock = Lock::read_if_exists(&path)
        .map_err(|e| crate::InputError(format!("{}: {e:#}", path.display())))?;
    Ok(match lock {
        Some(l) => match check_recipe(&l, recipe) {
            Ok(()) => Some(l),
            Err(_) if opts.update_lock && !opts.offline => {
                eprintln!(
                    "cairn: {} disagrees with the recipe; updating it",
                    path.display()
                );
                Some(crate::inputs::lock::lock_recipe(recipe)?)
            }
            Err(m) => {
                return Err(crate::InputError(format!("{}: {m}", path.display())).into());
            }
        },
        None if !needs_lock => None,
        None if opts.offline => {
            return Err(crate::InputError(format!(
            "--offline needs {}; run `cairn lock {}` and `cairn fetch {}` on a connected machine",
            path.display(),
            recipe.file.display(),
            recipe.file.display()
        ))
            .into())
        }
        None if opts.update_lock => Some(crate::inputs::lock::lock_recipe(recipe)?),
        None => None,
    })
}

/// Puts every pinned input in the cache: the lock's packages (base and
/// built images) and the recipe's URL inputs, downloading what is missing
/// unless offline. Offline, one error lists everything missing.
fn ensure_cached(
    recipe: &Recipe,
    lock: Option<&crate::inputs::lock::Lock>,
    opts: &BuildOptions,
) -> Result<()> {
    let cache = crate::inputs::cache::Cache::default_location()?;
    if !opts.offline {
        let work = tempfile::tempdir()?;
        crate::inputs::lock::fetch_inputs(lock, &recipe.downloads, &cache, work.path())?;
    }
    let all: Vec<crate::inputs::lock::LockedPackage> = lock
        .map(|l| l.package_sets())
        .unwrap_or_default()
        .into_iter()
        .flat_map(|(_, p)| p.iter().cloned())
        .collect();
    let mut missing = match crate::inputs::debrepo::check_cached(&all, &cache) {
        Ok(()) => Vec::new(),
        Err(m) => m.missing,
    };
    missing.dedup();
    let packages = missing.len();
    missing.extend(
        recipe
            .downloads
            .iter()
            .filter(|d| !cache.contains(&d.sha256))
            .map(|d| format!("{} ({}, sha256 {}, {})", d.url, d.what, d.sha256, d.at)),
    );
    if missing.is_empty() {
        return Ok(());
    }
    Err(crate::InputError(format!(
        "offline build: {} input(s) are not in the cache {} ({packages} locked package(s), {} URL input(s)):\n    {}\nfetch them with `cairn fetch {}` on a connected machine (or `cairn cache import FILE` with an export that has them)",
        missing.len(),
        cache.root().display(),
        missing.len() - packages,
        missing.join("\n    "),
        recipe.file.display()
    ))
    .into())
}

/// Local repositories for every package set of the lock, under `dir`.
fn local_repos(lock: Option<&crate::inputs::lock::Lock>, dir: &Path) -> Result<crate::pipeline::compose::Repos> {
    let mut repos = crate::pipeline::compose::Repos::default();
    let Some(lock) = lock else {
        return Ok(repos);
    };
    let cache = crate::inputs::cache::Cache::default_location()?;
    if let Some(b) = &lock.base {
        repos.base = Some(crate::inputs::debrepo::local_repo(
            &b.suite,
            &b.packages,
            &cache,
            &dir.join("base"),
        )?);
    }
    for (n, img) in lock.images.iter().enumerate() {
        // Image names are checked by the recipe, but a folder name from a
        // number needs no check at all.
        let repo = crate::inputs::debrepo::local_repo(
            &img.suite,
            &img.packages,
            &cache,
            &dir.join(format!("image{n}")),
        )
        .with_context(|| format!("image {}", img.name))?;
        repos.images.insert(img.name.clone(), repo);
    }
    Ok(repos)
}

/// Checks every pinned input before the build writes anything.
fn resolve(recipe: &Recipe) -> Result<()> {
    crate::pipeline::workloads::check_pins(&recipe.workloads)?;
    if let Base::Tarball { path, sha256, at } = &recipe.base {
        crate::pipeline::compose::check_pin(path, sha256, at)
            .map_err(|e| anyhow::Error::new(crate::InputError(e.to_string())))?;
    }
    Ok(())
}

/// Removes in-progress folders left by builds that were killed.
fn clean_stale(out: &Path) {
    let Ok(rd) = std::fs::read_dir(out) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .rsplit_once(".building-")
            .or_else(|| name.rsplit_once(".old-"))
            .and_then(|(_, p)| p.parse::<u32>().ok());
        if let (true, Some(pid)) = (name.starts_with('.'), pid) {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}
