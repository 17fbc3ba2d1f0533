//! The whole pipeline, in order: resolve inputs → compose → prune kernel
//! modules → initramfs → normalise → squashfs → verity → model volumes →
//! UKI → raw disk →
//! the other media (one row each of `media::WRITERS`) → manifest → sign.
//! Outputs are written to a hidden folder beside the final one and renamed
//! into place only when every stage succeeded.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::host::digest::Sha256;
use crate::recipe::Recipe;
use crate::release::manifest::{self, Manifest};

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
    /// Whether `f` is one of the formats asked for.
    pub fn wants(&self, f: crate::media::Format) -> bool {
        match f {
            crate::media::Format::Raw => self.raw,
            crate::media::Format::Iso => self.iso,
            crate::media::Format::Qcow2 => self.qcow2,
        }
    }

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
    /// Cache location, stage cache, build-date override (from the caller).
    pub settings: crate::inputs::plan::Settings,
    pub formats: Formats,
    /// Use nothing but the cache (needs RECIPE.lock).
    pub offline: bool,
    /// Re-resolve the lock when it disagrees with the recipe.
    pub update_lock: bool,
    /// Sign the outputs (SHA256 + SHA256.sig) with this key.
    pub key: Option<crate::release::sign::SigningKey>,
    /// Sign every shipped EFI binary with this Secure Boot key (sbsign).
    pub secure_boot: Option<crate::pipeline::sbsign::SbKey>,
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
        crate::host::interrupt::check()?;
        eprintln!("[{:>2}/{}] {name} ...", self.n, self.total);
        let t = Instant::now();
        let v = f()?;
        crate::host::interrupt::check()?;
        let secs = t.elapsed().as_secs_f64();
        eprintln!("[{:>2}/{}] {name} done in {secs:.1}s", self.n, self.total);
        self.times.push((name.to_string(), secs));
        Ok(v)
    }

    /// Runs independent stages at once, each on its own thread: its start
    /// and end lines say which it is, its progress bars join one block, and
    /// the lines its tools print carry its name. The first error (in
    /// order) is returned once every job has ended.
    fn run_together(&mut self, jobs: Vec<Job<'_>>) -> Result<()> {
        crate::host::interrupt::check()?;
        let bars = crate::host::progress::Bars::new();
        let first = self.n + 1;
        let total = self.total;
        let results: Vec<(String, Result<f64>)> = std::thread::scope(|s| {
            let handles: Vec<_> = jobs
                .into_iter()
                .enumerate()
                .map(|(i, job)| {
                    let bars = bars.clone();
                    let n = first + i;
                    s.spawn(move || {
                        if let Some(gate) = job.after {
                            if !gate.wait() {
                                let e = anyhow::anyhow!(
                                    "{}: not started (a stage it reads failed)",
                                    job.name
                                );
                                return (job.name.to_string(), Err(e));
                            }
                        }
                        bars.enter(|| {
                            crate::host::progress::say(&format!(
                                "[{n:>2}/{total}] {} ...",
                                job.name
                            ));
                            let t = Instant::now();
                            let r = crate::host::runner::with_label(job.name, job.run);
                            let secs = t.elapsed().as_secs_f64();
                            if r.is_ok() {
                                crate::host::progress::say(&format!(
                                    "[{n:>2}/{total}] {} done in {secs:.1}s",
                                    job.name
                                ));
                            }
                            (job.name.to_string(), r.map(|()| secs))
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        self.n += results.len();
        crate::host::interrupt::check()?;
        for (name, r) in results {
            self.times.push((name, r?));
        }
        Ok(())
    }
}

/// One stage of [`Stages::run_together`].
struct Job<'a> {
    name: &'a str,
    /// A gate another stage of the same call opens: this one starts after
    /// (its start line and time count from then).
    after: Option<&'a Gate>,
    run: Box<dyn FnOnce() -> Result<()> + Send + 'a>,
}

/// What one stage of [`Stages::run_together`] makes and others read:
/// opened once, for success or failure.
#[derive(Default)]
struct Gate {
    state: std::sync::Mutex<Option<bool>>,
    opened: std::sync::Condvar,
}

impl Gate {
    /// The guard of the stage that opens it: for failure when dropped
    /// (an error or a panic), unless [`GateOpener::succeed`] came first.
    fn opener(&self) -> GateOpener<'_> {
        GateOpener(self)
    }

    fn open(&self, ok: bool) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.is_none() {
            *s = Some(ok);
        }
        self.opened.notify_all();
    }

    /// Blocks until it is opened; whether its stage succeeded.
    fn wait(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match *s {
                Some(ok) => return ok,
                None => s = self.opened.wait(s).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }
}

struct GateOpener<'a>(&'a Gate);

impl GateOpener<'_> {
    fn succeed(self) {
        self.0.open(true);
    }
}

impl Drop for GateOpener<'_> {
    fn drop(&mut self) {
        self.0.open(false);
    }
}

/// The kernel command line: cairn's words, then the recipe's extras.
/// cairn owns verity in its initramfs, so it passes `cairn.roothash=`,
/// never systemd's `roothash=` (whose generator would act on it too).
/// Each model volume's root hash rides along as `cairn.volume.NAME=HASH`.
pub fn kernel_cmdline(
    recipe: &Recipe,
    root_hash: &Sha256,
    volumes: &[crate::pipeline::volumes::Volume],
    medium: Medium,
) -> String {
    let words = volumes
        .iter()
        .map(crate::pipeline::volumes::Volume::cmdline_word)
        .collect();
    cmdline_of_words(recipe, root_hash, words, medium)
}

/// [`kernel_cmdline`] from the volumes' words.
fn cmdline_of_words(
    recipe: &Recipe,
    root_hash: &Sha256,
    volume_words: Vec<String>,
    medium: Medium,
) -> String {
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
    ];
    words.extend(volume_words);
    words.extend([
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
        // A kernel panic (dm-verity reading a corrupted block) halts for
        // good: no reboot into the same corruption.
        "panic=0".to_string(),
        // Skip the IO-APIC timer sanity check: under software emulation
        // (QEMU TCG on a busy host) it misfires and panics the kernel 0.05 s
        // into boot ("IO-APIC + timer doesn't work!"); cloud images set it
        // for the same reason. Hardware with a working timer is unaffected.
        "no_timer_check".to_string(),
    ]);
    if recipe.state_grow && medium == Medium::Disk {
        words.push("cairn.state_grow=1".to_string());
    }
    words.extend(recipe.cmdline_extra.iter().cloned());
    words.join(" ")
}

/// Starts the UKI templates ahead ([`crate::pipeline::uki::Ahead`]): one
/// per command-line length the media need (the disk's, and the ISO's when
/// one is written). None when the tree has no stub yet: the UKI stage
/// then says what is missing.
fn uki_ahead(
    recipe: &Recipe,
    plan: &crate::inputs::plan::Plan,
    base: &crate::pipeline::compose::BaseTree,
    initrd: &Path,
    models: &[crate::pipeline::volumes::Volume],
    iso: bool,
    dir: &Path,
) -> Result<Option<crate::pipeline::uki::Ahead>> {
    use crate::pipeline::volumes::{cmdline_word, Kind, APPS};
    let Ok(stub) =
        crate::host::tree::read_in_tree(&base.tree, Path::new(crate::pipeline::uki::STUB_IN_TREE))
    else {
        return Ok(None);
    };
    let osrel = crate::pipeline::compose::os_release(recipe, &base.tree)?;
    // Any hash has the length of the one to come.
    let any = Sha256::of_bytes(b"");
    let words: Vec<String> = std::iter::once(cmdline_word(Kind::Apps, APPS, &any))
        .chain(models.iter().map(|m| m.cmdline_word()))
        .collect();
    let mut lens = vec![cmdline_of_words(recipe, &any, words.clone(), Medium::Disk).len()];
    if iso {
        lens.push(cmdline_of_words(recipe, &any, words, Medium::Iso).len());
    }
    lens.sort_unstable();
    lens.dedup();
    crate::pipeline::uki::Ahead::start(
        dir,
        &stub,
        osrel.as_bytes(),
        &base.vmlinuz,
        initrd,
        recipe.source_date_epoch,
        lens,
        plan.stage_cache.then(|| plan.cache.root().to_path_buf()),
    )
    .map(Some)
}

pub fn build(recipe: &Recipe, opts: &BuildOptions) -> Result<BuildResult> {
    let started = Instant::now();
    check_out_dir(&opts.out_dir)?;
    check_shim(recipe, opts)?;
    // Tool times count from here (printed against the wall time at the end).
    crate::host::runner::take_tool_times();
    // 1. Resolve: inputs are checked (and fetched) before anything is
    // printed or created, so bad input is one line of error and an
    // untouched output folder.
    let plan = crate::inputs::plan::resolve(
        recipe,
        &opts.settings,
        crate::inputs::plan::ResolveOptions {
            offline: opts.offline,
            update_lock: opts.update_lock,
        },
    )?;
    // Dated by the lock when the recipe and environment set no date.
    let lock_date = plan.lock.as_ref().map(|l| l.source_date_epoch);
    let recipe = &crate::recipe::epoch::dated(recipe, lock_date);
    let plan = crate::inputs::plan::Plan { recipe, ..plan };
    let key = match &opts.key {
        Some(k) => Some(crate::release::sign::load_key(k)?),
        None => None,
    };
    let derived: Vec<&crate::media::Writer> = crate::media::WRITERS
        .iter()
        .filter(|w| opts.formats.wants(w.format))
        .collect();
    let mut st = Stages {
        n: 1,
        total: 13 + usize::from(key.is_some()) + derived.len() + usize::from(opts.formats.raw),
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
    crate::host::scratch::clean_stale();
    let stem = recipe.stem();
    let tmp = out_dir.join(format!(".{stem}.building-{}", std::process::id()));
    // Removed when the build ends, however it ends: an error, a panic
    // unwinding, or SIGINT/SIGTERM (`host::interrupt` stops the children
    // and removes it before the process exits).
    let _guard = crate::host::interrupt::remove_on_exit(&tmp);
    let work = tmp.join("work");
    let media = tmp.join("media");
    std::fs::create_dir_all(&work)?;
    std::fs::create_dir_all(&media)?;

    // 2. Compose the base tree: the Debian tree, its kernel taken out.
    let repos = plan.local_repos(&work.join("repo"))?;
    // The model volumes need nothing of the tree: they are made at the
    // same time (a model's volume is disk work; the base is mmdebstrap's
    // or tar's).
    let mut base_out = None;
    let mut volumes_out = None;
    {
        let (base_out, volumes_out) = (&mut base_out, &mut volumes_out);
        let (work, plan, repos) = (&work, &plan, &repos);
        st.run_together(vec![
            Job {
                name: "compose base tree",
                after: None,
                run: Box::new(move || {
                    *base_out = Some(crate::pipeline::compose::compose_base(plan, work, repos)?);
                    Ok(())
                }),
            },
            Job {
                name: "model volumes",
                after: None,
                run: Box::new(move || {
                    *volumes_out = Some(crate::pipeline::volumes::make_model_volumes(plan, work)?);
                    Ok(())
                }),
            },
        ])?;
    }
    let mut base = base_out.context("compose base tree: no result")?;
    // A tree in memory is removed when the build ends, however it ends.
    let _memory = base.memory.take();
    let models = volumes_out.context("model volumes: no result")?;
    // 3. Kernel modules, 4. initramfs, 5. normalise, 6. the base image:
    // all of the base alone (`pipeline::layers`), so the base volume does
    // not change with an overlay, an image or the configuration.
    let pruned = st.run("prune kernel modules", || match base.modules_pruned {
        true => crate::pipeline::kernel::already_pruned(&base.tree, &base.kernel_version),
        false => {
            crate::pipeline::kernel::prune(&base.tree, &base.kernel_version, &recipe.extra_modules)
        }
    })?;
    eprintln!(
        "        kernel {}: kept {} modules, removed {}",
        base.kernel_version, pruned.kept, pruned.removed
    );
    let initrd = st.run("initramfs", || {
        crate::pipeline::initramfs::make_initramfs(
            &base.tree,
            recipe.state_grow,
            recipe.site.as_ref(),
            &base.kernel_version,
            &work.join("initramfs.cpio"),
            recipe.source_date_epoch,
        )
    })?;
    eprintln!(
        "        {} modules, {:.1} MiB",
        initrd.modules,
        initrd.size as f64 / 1048576.0
    );
    let norm = st.run("normalise base", || {
        crate::pipeline::normalise::normalise(&base.tree, recipe.source_date_epoch)
    })?;
    eprintln!(
        "        pruned {} entries (docs but copyright, man, locales, apt, dpkg's database but status)",
        norm.pruned
    );
    let snapshot = crate::pipeline::layers::Snapshot::take(&base.tree)?;
    // The UKIs' objcopy runs now, on its own thread, while the root is
    // compressed: root hashes have a fixed length, so the command lines'
    // lengths are known, and the stub and os-release are what the apps
    // steps will leave (checked when the UKIs are made).
    let ahead = uki_ahead(
        recipe,
        &plan,
        &base,
        &initrd.path,
        &models,
        opts.formats.iso,
        &work.join("uki-ahead"),
    )?;
    // The base image is a function of the tree mksquashfs reads: the same
    // tree as a build before (any rebuild whose Debian packages did not
    // change) takes that build's image and hash tree from the stage cache.
    let (root_key, root_step) = st.run("squashfs base", || {
        use crate::pipeline::squashfs::{cached_root, input_key, make_squashfs, RootStep};
        // Without the stage cache nothing is looked up or stored: the key,
        // a read of the whole tree, is not made.
        let key = match plan.stage_cache {
            true => {
                let t = Instant::now();
                let key = input_key(&base.tree, recipe.source_date_epoch)?;
                let hit = cached_root(&plan.cache, true, &key);
                crate::host::progress::say(&format!(
                    "        base tree digest {} in {:.1}s{}",
                    &key.hex()[..16],
                    t.elapsed().as_secs_f64(),
                    if hit.is_some() {
                        ": unchanged, reusing the cached base image and hash tree"
                    } else {
                        ""
                    }
                ));
                if let Some(v) = hit {
                    return Ok((Some(key), RootStep::Cached(v)));
                }
                Some(key)
            }
            false => None,
        };
        let made = make_squashfs(
            &base.tree,
            &work.join("root.squashfs"),
            recipe.source_date_epoch,
            None,
        )?;
        Ok((key, RootStep::Made(made)))
    })?;
    let root_volume = match root_step {
        crate::pipeline::squashfs::RootStep::Cached(v) => {
            // The stage count stays the same either way.
            st.n += 1;
            v
        }
        crate::pipeline::squashfs::RootStep::Made(made) => {
            eprintln!("        {:.1} MiB", made.size as f64 / 1048576.0);
            st.run("dm-verity hash tree", || {
                crate::pipeline::squashfs::finish_root(
                    made,
                    &work.join("root.verity"),
                    &plan.cache,
                    root_key.as_ref(),
                )
            })?
        }
    };
    // 7. The apps steps on the same tree (links and folders resolve as on
    // the running image), then 8. what they changed becomes the apps volume.
    let composed = st.run("compose apps", || {
        crate::pipeline::compose::compose_apps(&plan, base)
    })?;
    // The SBOMs need the tree's package databases; read them while it exists.
    let contents = crate::release::sbom::read_contents(&composed, &plan)?;
    let osrel = work.join("os-release");
    let stub = work.join("linuxx64.efi.stub");
    crate::pipeline::uki::take_inputs(&composed.tree, &stub, &osrel)?;
    let apps = st.run("apps volume", || {
        crate::pipeline::layers::make_apps_volume(&composed.tree, &snapshot, &plan, &work)
    })?;
    // The tree is no longer needed: it is removed while the UKIs and the
    // media are made (removing its 350 MB took 0.2-0.5 s of a rebuild).
    // Renamed first, so nothing else finds it; the build waits for the
    // removal before it publishes.
    let trash = composed.tree.with_extension("removing");
    std::fs::rename(&composed.tree, &trash)
        .with_context(|| format!("build: move {} aside", composed.tree.display()))?;
    let removing = std::thread::spawn(move || std::fs::remove_dir_all(&trash));
    let volumes: Vec<crate::pipeline::volumes::Volume> =
        std::iter::once(apps).chain(models).collect();
    let (root, verity) = (root_volume.image, root_volume.verity);
    eprintln!(
        "        {:.1} MiB, root hash {}",
        root.size as f64 / 1048576.0,
        verity.root_hash
    );
    // 8. UKIs: one per medium kind (their command lines differ).
    let cmdline = kernel_cmdline(recipe, &verity.root_hash, &volumes, Medium::Disk);
    let iso_cmdline = kernel_cmdline(recipe, &verity.root_hash, &volumes, Medium::Iso);
    let want_iso = opts.formats.iso;
    let (uki, uki_iso) = st.run("UKI", || {
        // Each UKI in a folder of its own (make_uki writes its command
        // line file there), so the two objcopy runs go at once.
        let templates = match ahead {
            Some(a) => a.take(&stub, &osrel)?,
            None => Vec::new(),
        };
        let make = |cmdline: &str, name: &str| {
            let out = work.join(format!("{name}.efi"));
            if let Some((_, t)) = templates.iter().find(|(len, _)| *len == cmdline.len()) {
                return crate::pipeline::uki::from_template(t, cmdline, &out);
            }
            let dir = work.join(name);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("uki: create {}", dir.display()))?;
            crate::pipeline::uki::make_uki_cached(
                &crate::pipeline::uki::UkiInputs {
                    stub: &stub,
                    kernel: &composed.vmlinuz,
                    initrd: &initrd.path,
                    os_release: &osrel,
                    cmdline,
                    epoch: recipe.source_date_epoch,
                },
                &dir,
                &out,
                plan.stage_cache.then_some(&plan.cache),
            )
        };
        std::thread::scope(|s| {
            let iso = want_iso.then(|| s.spawn(|| make(&iso_cmdline, "uki-iso")));
            let disk = make(&cmdline, "uki")?;
            let iso = match iso {
                Some(h) => Some(
                    h.join()
                        .map_err(|_| anyhow::anyhow!("uki: the ISO's UKI thread panicked"))??,
                ),
                None => None,
            };
            Ok((disk, iso))
        })
    })?;
    if let Some(sb) = &opts.secure_boot {
        for u in std::iter::once(&uki).chain(uki_iso.as_ref()) {
            crate::pipeline::sbsign::sign_efi(sb, &u.path, recipe.source_date_epoch)?;
        }
    }
    // `[boot] shim`: the host's Microsoft-signed shim goes in front of
    // every signed UKI.
    let shim = match recipe.shim {
        Some(_) => Some(crate::pipeline::shim::take_host_shim(
            &work,
            recipe.mok_manager,
        )?),
        None => None,
    };
    // 9. The raw disk (always: the qcow2 and the manifest derive from it)
    // and 10. the other media, one row each.
    let raw_path = if opts.formats.raw {
        media.join(format!("{stem}.raw"))
    } else {
        work.join(format!("{stem}.raw"))
    };
    let layout = std::sync::OnceLock::new();
    // The GPT written (the disk's digest may be taken), all of the raw
    // disk but its models' partitions, then all of it.
    let laid_out = std::sync::OnceLock::<crate::media::disk::RawDisk>::new();
    let raw_laid_out = Gate::default();
    let raw_system = Gate::default();
    let raw_written = Gate::default();
    let volume_id = crate::media::iso::volume_id(&recipe.name, &recipe.version);
    let media_inputs = crate::media::MediaInputs {
        raw: &raw_path,
        layout: &layout,
        uki_iso: uki_iso
            .as_ref()
            .map(|u| u.path.as_path())
            .unwrap_or(&uki.path),
        shim: shim.as_ref(),
        kernel: &composed.vmlinuz,
        initrd: &initrd.path,
        iso_cmdline: &iso_cmdline,
        root: &root.path,
        verity: &verity.hash_path,
        volumes: &volumes,
        volume_id: &volume_id,
        epoch: recipe.source_date_epoch,
        work: &work,
    };
    // Every medium is written at once with the raw disk: the qcow2 starts
    // when all of it but the models is written (it takes those from their
    // volume files), the raw disk's hash when all is, the ISO beside it.
    // Each output is hashed as soon as it is written, while the others are
    // still being made: every output is read once more.
    let hashed = std::sync::Mutex::new(std::collections::BTreeMap::<String, Sha256>::new());
    // A digest taken while the medium was written is used as it is.
    let hash_into = |path: &Path, known: Option<Sha256>| -> Result<()> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let d = match known {
            Some(d) => d,
            None => Sha256::of_medium(path, &format!("hash {name}"))?,
        };
        hashed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, d);
        Ok(())
    };
    let mut jobs: Vec<Job<'_>> = Vec::new();
    {
        let (raw_path, layout, work, laid_out) = (&raw_path, &layout, &work, &laid_out);
        let (raw_laid_out, raw_system, raw_written) = (&raw_laid_out, &raw_system, &raw_written);
        let (uki, shim, root, verity, volumes) = (&uki, &shim, &root, &verity, &volumes);
        jobs.push(Job {
            name: "raw disk",
            after: None,
            run: Box::new(move || {
                // Open their gates either way: on an error the waiting rows
                // end at once (the error is this job's).
                let (laid, system, all) = (
                    raw_laid_out.opener(),
                    raw_system.opener(),
                    raw_written.opener(),
                );
                let inputs = crate::media::disk::DiskInputs {
                    uki: &uki.path,
                    shim: shim.as_ref(),
                    root: &root.path,
                    verity: &verity.hash_path,
                    root_hash: &verity.root_hash,
                    volumes,
                    disk_size: recipe.disk_size,
                    min_state_size: recipe.state_size,
                    epoch: recipe.source_date_epoch,
                };
                let raw = crate::media::disk::write_raw_system(&inputs, work, raw_path, |r| {
                    layout.get_or_init(|| r.layout.clone());
                    let _ = laid_out.set(r.clone());
                    laid.succeed();
                })?;
                system.succeed();
                crate::media::disk::write_raw_models(&raw, raw_path)?;
                all.succeed();
                Ok(())
            }),
        });
    }
    if opts.formats.raw {
        let (raw_path, hash_into, laid_out) = (&raw_path, &hash_into, &laid_out);
        jobs.push(Job {
            name: "hash raw disk",
            after: Some(&raw_laid_out),
            // Taken from the pieces while they are copied in (the GPT is
            // written first): the raw disk is not read back.
            run: Box::new(move || {
                let raw = laid_out
                    .get()
                    .context("hash raw disk: the raw disk was not laid out")?;
                let name = raw_path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let d = raw.digest_as_written(&format!("hash {name}"))?;
                hash_into(raw_path, Some(d))
            }),
        });
    }
    for w in &derived {
        let out = media.join(format!("{stem}.{}", w.extension));
        let (media_inputs, hash_into) = (&media_inputs, &hash_into);
        jobs.push(Job {
            name: w.stage,
            after: w.needs_raw.then_some(&raw_system),
            run: Box::new(move || {
                let known = (w.write)(media_inputs, &out)?;
                hash_into(&out, known)
            }),
        });
    }
    st.run_together(jobs)?;
    let raw_layout = layout
        .into_inner()
        .context("raw disk: no layout (the raw disk was not written)")?;
    let hashed = hashed.into_inner().unwrap_or_else(|e| e.into_inner());
    // 11. Manifest and provenance, 12. signature.
    // Each output is hashed once: the manifest's digests (and the
    // manifest's own) go on to the SHA256 list.
    let known = st.run("manifest", || {
        let mut m = Manifest::new(
            recipe,
            &composed,
            &verity,
            &cmdline,
            &raw_layout,
            &media,
            &hashed,
        )?;
        m.volumes = crate::release::manifest::volumes(&volumes, &raw_layout);
        if opts.formats.iso {
            m.kernel.iso_cmdline = Some(iso_cmdline.clone());
        }
        m.boot = crate::release::secureboot::boot_info(
            recipe.allow_bios,
            recipe.allow_unsigned,
            opts.secure_boot.as_ref(),
            shim.as_ref(),
            &uki.path,
            uki_iso.as_ref().map(|u| u.path.as_path()),
            &media,
        )?;
        m.sbom.documents = crate::release::sbom::write(&m, &contents, &media)?;
        manifest::write(&m, &media.join("manifest.json"))?;
        // The in-toto/SLSA statement names every output by digest.
        let subjects: Vec<(String, Sha256)> = m
            .outputs
            .iter()
            .chain(&m.sbom.documents)
            .map(|o| (o.file.clone(), o.sha256))
            .chain(std::iter::once((
                "manifest.json".to_string(),
                Sha256::of_file(&media.join("manifest.json"))?,
            )))
            .collect();
        crate::release::provenance::write(
            &media.join(crate::release::provenance::FILE_NAME),
            &crate::release::provenance::statement(&m, &subjects),
        )?;
        Ok(subjects
            .into_iter()
            .collect::<std::collections::BTreeMap<String, Sha256>>())
    })?;
    if let (Some(key), Some(k)) = (&key, &opts.key) {
        let pub_name = k
            .path
            .with_extension("pub")
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "key.pub".into());
        let id = st.run("sign", || {
            crate::release::sign::sign_dir_known(&media, key, &pub_name, &known)
        })?;
        eprintln!("        signed with key id {id} (verify with {pub_name})");
    }

    // An error here leaves the folder to the build's own cleanup.
    let _ = removing.join();
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
    // Tools that ran at once each count in full: a total above the wall
    // time is time saved by running stages concurrently.
    eprintln!(
        "cairn: {}",
        crate::host::runner::tool_times_line(&crate::host::runner::take_tool_times(), total)
    );
    eprintln!("cairn: built {} in {total:.1}s", final_dir.display());
    Ok(BuildResult {
        raw: final_dir.join(format!("{stem}.raw")),
        dir: final_dir,
        root_hash: verity.root_hash,
    })
}

/// `[boot] shim` needs a Secure Boot key (shim starts only a signed UKI)
/// and the host's shim files: refused before any input is fetched.
fn check_shim(recipe: &Recipe, opts: &BuildOptions) -> Result<()> {
    let Some(at) = &recipe.shim else {
        return Ok(());
    };
    if opts.secure_boot.is_none() {
        return Err(crate::InputError(format!(
            "{at}: [boot] shim = true needs --sb-key KEY --sb-cert CERT: shim starts only a UKI \
             signed with a key the machine trusts (make one with `cairn keygen --secure-boot NAME`, \
             enrol NAME.sb.cer as a MOK; docs/secure-boot.md)"
        ))
        .into());
    }
    crate::pipeline::shim::check_host()
}

/// `-o` must name a folder (or nothing yet): refused before any input is
/// fetched, so a typo costs nothing.
fn check_out_dir(out: &Path) -> Result<()> {
    match std::fs::metadata(out) {
        Ok(m) if !m.is_dir() => Err(crate::InputError(format!(
            "-o {}: exists and is not a folder; name a folder for the release (it is created if missing)",
            out.display()
        ))
        .into()),
        _ => Ok(()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gate_opens_for_its_stage_s_outcome() {
        // Success: a waiting thread starts after the opener succeeded.
        let g = Gate::default();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| g.wait());
            let o = g.opener();
            o.succeed();
            assert!(waiter.join().unwrap());
        });
        // An error (the guard dropped) or a panic opens it for failure.
        let g = Gate::default();
        drop(g.opener());
        assert!(!g.wait());
        let g = Gate::default();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _o = g.opener();
            panic!("stage panicked");
        }));
        assert!(r.is_err());
        assert!(!g.wait());
    }

    #[test]
    fn stages_after_a_failed_gate_do_not_run() {
        let g = Gate::default();
        let ran = std::sync::atomic::AtomicBool::new(false);
        let mut st = Stages {
            n: 0,
            total: 2,
            started: Instant::now(),
            times: Vec::new(),
        };
        let e = st
            .run_together(vec![
                Job {
                    name: "maker",
                    after: None,
                    run: Box::new(|| {
                        let _o = g.opener();
                        anyhow::bail!("maker failed")
                    }),
                },
                Job {
                    name: "reader",
                    after: Some(&g),
                    run: Box::new(|| {
                        ran.store(true, std::sync::atomic::Ordering::SeqCst);
                        Ok(())
                    }),
                },
            ])
            .unwrap_err();
        // The maker's own error is the one returned; the reader never ran.
        assert_eq!(e.to_string(), "maker failed");
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
        // Control: with the maker succeeding, the reader runs after it.
        let g = Gate::default();
        let order = std::sync::Mutex::new(Vec::new());
        st.run_together(vec![
            Job {
                name: "reader",
                after: Some(&g),
                run: Box::new(|| {
                    order.lock().unwrap().push("reader");
                    Ok(())
                }),
            },
            Job {
                name: "maker",
                after: None,
                run: Box::new(|| {
                    let o = g.opener();
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    order.lock().unwrap().push("maker");
                    o.succeed();
                    Ok(())
                }),
            },
        ])
        .unwrap();
        assert_eq!(*order.lock().unwrap(), ["maker", "reader"]);
    }
}
