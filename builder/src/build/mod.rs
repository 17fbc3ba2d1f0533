//! The whole pipeline, in order, as one sequence of named steps over one
//! [`BuildContext`] (their numbers are the progress lines' `[n/N]` and
//! ARCHITECTURE.md's). Each step is a call into its own module; what runs
//! at once is decided in `schedule` and inside the steps, never here.
//! Outputs are written to a hidden folder beside the final one and renamed
//! into place only when every step succeeded.

mod cmdline;
mod schedule;
mod steps;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::host::digest::Sha256;
use crate::inputs::plan::Plan;
use crate::recipe::Recipe;

pub use cmdline::kernel_cmdline;
use schedule::Stages;

/// The pipeline's steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    ResolveInputs = 1,
    /// The base tree and the model volumes, at once.
    ComposeBase,
    PruneModules,
    Initramfs,
    NormaliseBase,
    /// squashfs + dm-verity hash tree of the base (or both from the cache).
    BaseVolume,
    ComposeApps,
    AppsVolume,
    Uki,
    /// The raw disk, its hash and the other formats' rows, at once.
    Media,
    Manifest,
    Sign,
}

impl Step {
    pub fn number(self) -> usize {
        self as usize
    }
}

/// What every step reads: the dated recipe, its resolved plan, the
/// options, the folders of this build and the stage reporter.
pub struct BuildContext<'a> {
    pub recipe: &'a Recipe,
    pub plan: Plan<'a>,
    pub opts: &'a BuildOptions,
    /// The release signing key, loaded (asked for) before any work.
    pub key: Option<crate::release::signify::SecretKey>,
    /// The output folder (absolute) and this image's name-version.
    pub out_dir: PathBuf,
    pub stem: String,
    /// Scratch and finished outputs, both under a hidden folder of
    /// `out_dir` that is removed however the build ends.
    pub work: PathBuf,
    pub media: PathBuf,
    /// Each stage's start and end lines and its time.
    pub(crate) stages: Stages,
    _tmp: crate::host::interrupt::FolderGuard,
}

/// Which media to write: rows of `media::FORMATS`. The raw disk is always
/// made (other media are converted from it); it is published only when
/// asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Formats(Vec<&'static crate::media::Format>);

impl Default for Formats {
    /// The rows marked `by_default`.
    fn default() -> Self {
        Formats(
            crate::media::FORMATS
                .iter()
                .copied()
                .filter(|f| f.by_default)
                .collect(),
        )
    }
}

impl std::fmt::Display for Formats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|r| r.name).collect();
        f.write_str(&names.join(","))
    }
}

impl Formats {
    /// These formats.
    pub fn of(formats: &[&'static crate::media::Format]) -> Formats {
        Formats(formats.to_vec())
    }

    /// Whether `f` is one of the formats asked for.
    pub fn wants(&self, f: &crate::media::Format) -> bool {
        self.0.contains(&f)
    }

    /// `extra` (the recipe's `[kernel] modules`) and then each asked-for
    /// row's modules not already in it, in table order.
    pub fn modules(&self, extra: &[String]) -> Vec<String> {
        let mut all = extra.to_vec();
        for m in crate::media::FORMATS
            .iter()
            .filter(|f| self.wants(f))
            .flat_map(|f| f.modules.iter())
        {
            if !all.iter().any(|a| a == m) {
                all.push((*m).to_string());
            }
        }
        all
    }

    /// Parses a comma-separated list of the table's names (any subset, at
    /// least one).
    pub fn parse(s: &str) -> Result<Formats, String> {
        let mut f = Formats(Vec::new());
        for w in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match crate::media::Format::by_name(w) {
                Some(row) if !f.wants(row) => f.0.push(row),
                Some(_) => {}
                None => {
                    return Err(format!(
                        "unknown format {w:?}; choose from {}",
                        crate::media::names()
                    ))
                }
            }
        }
        if f.0.is_empty() {
            return Err(format!(
                "no format given; choose from {}",
                crate::media::names()
            ));
        }
        // Its uncompressed digest is signed in the raw disk's data map,
        // which is written with the raw disk.
        if f.wants(&crate::media::ZST) && !f.wants(&crate::media::RAW) {
            return Err(format!(
                "format {z} needs {r} too (its signed data map is the raw disk's): --format {r},{z}",
                z = crate::media::ZST.name,
                r = crate::media::RAW.name
            ));
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

pub fn build(recipe: &Recipe, opts: &BuildOptions) -> Result<BuildResult> {
    let started = Instant::now();
    // The formats' kernel modules join the recipe's before anything is
    // keyed on them (the base tree's stage-cache key names the extras).
    let mut with_modules = recipe.clone();
    with_modules.extra_modules = opts.formats.modules(&recipe.extra_modules);
    let recipe = &with_modules;
    // 1 resolve inputs; the recipe dated by the lock when nothing else dates it.
    let plan = steps::resolve_inputs(recipe, opts)?;
    let lock_date = plan.lock.as_ref().map(|l| l.source_date_epoch);
    let recipe = &crate::recipe::epoch::dated(recipe, lock_date);
    let mut cx = BuildContext::new(recipe, plan, opts, started)?;
    // 2 compose base tree (and model volumes, at once)
    let (mut base, models) = steps::compose_base_and_models(&mut cx)?;
    let _memory = base.memory.take(); // a tree in memory goes when the build ends
                                      // 3 prune kernel modules, 4 initramfs, 5 normalise base: the base alone
    steps::prune_kernel_modules(&mut cx, &base)?;
    let initrd = steps::initramfs(&mut cx, &base)?;
    let snapshot = steps::normalise_base(&mut cx, &base)?;
    let ahead = steps::uki_templates_ahead(&cx, &base, &initrd.path, &models)?;
    // 6 base volume (squashfs + dm-verity, or both from the stage cache)
    let root = steps::base_volume(&mut cx, &base)?;
    // 7 compose apps on the same tree; SBOM and UKI inputs read from it
    let composed = cx.stages.run(Step::ComposeApps, "compose apps", || {
        crate::pipeline::compose::compose_apps(&cx.plan, base)
    })?;
    let contents = crate::release::sbom::read_contents(&composed, &cx.plan)?;
    let uki_inputs = steps::take_uki_inputs(&cx, &composed)?;
    // 8 apps volume: what step 7 changed
    let apps = cx.stages.run(Step::AppsVolume, "apps volume", || {
        crate::pipeline::layers::make_apps_volume(&composed.tree, &snapshot, &cx.plan, &cx.work)
    })?;
    let removing = steps::remove_tree_behind(&composed.tree)?;
    let volumes: Vec<_> = std::iter::once(apps).chain(models).collect();
    // 9 UKI, 10 media, 11 manifest, 12 sign, then publish
    let boot = steps::ukis(
        &mut cx,
        ahead,
        &uki_inputs,
        &composed,
        &initrd.path,
        &root,
        &volumes,
    )?;
    let media = steps::write_media(&mut cx, &boot, &composed, &initrd.path, &root, &volumes)?;
    let known = steps::manifest(
        &mut cx, &composed, &contents, &root, &volumes, &boot, &media,
    )?;
    steps::sign(&mut cx, &known)?;
    steps::publish(cx, removing, root.verity.root_hash)
}

impl<'a> BuildContext<'a> {
    /// Checks the output folder, loads the signing key and makes this
    /// build's hidden folder (removed however the build ends: an error, a
    /// panic unwinding, SIGINT/SIGTERM).
    fn new(
        recipe: &'a Recipe,
        plan: Plan<'a>,
        opts: &'a BuildOptions,
        started: Instant,
    ) -> Result<Self> {
        let plan = Plan { recipe, ..plan };
        let key = match &opts.key {
            Some(k) => Some(crate::release::sign::load_key(k)?),
            None => None,
        };
        let stages = Stages {
            total: Step::Sign.number() - usize::from(key.is_none()),
            started,
            times: vec![("resolve inputs".into(), started.elapsed().as_secs_f64())],
        };
        crate::say!(
            "cairn: building {} {} from {}",
            recipe.name,
            recipe.version,
            recipe.file.display()
        );
        crate::say!(
            "[ 1/{}] resolve inputs done in {:.1}s",
            stages.total,
            stages.times[0].1
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
        let guard = crate::host::interrupt::remove_on_exit(&tmp);
        let (work, media) = (tmp.join("work"), tmp.join("media"));
        std::fs::create_dir_all(&work)?;
        std::fs::create_dir_all(&media)?;
        Ok(BuildContext {
            recipe,
            plan,
            opts,
            key,
            out_dir,
            stem,
            work,
            media,
            stages,
            _tmp: guard,
        })
    }
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

/// `[audit]` keeps its trail in a partition of the disk media (raw and
/// every format made from it); the ISO is read-only and has none
/// (docs/audit.md). Refused: an ISO-only build (the trail the recipe asks
/// for would be on no medium), and an ISO with `on_full = "halt"` (its
/// boot cannot open a trail, so it would halt every time).
fn check_audit_media(recipe: &Recipe, opts: &BuildOptions) -> Result<()> {
    let Some(a) = &recipe.audit else {
        return Ok(());
    };
    let iso = &crate::media::ISO;
    if !opts.formats.wants(iso) {
        return Ok(());
    }
    let disks = crate::media::FORMATS
        .iter()
        .any(|f| *f != iso && opts.formats.wants(f));
    let problem = if !disks {
        format!(
            "{}: [audit] keeps its trail in a partition of the disk media, and --format {} writes \
             only the ISO, which is read-only and has none: add a disk format (e.g. --format {},{}) \
             or remove [audit]",
            a.at,
            iso.name,
            crate::media::RAW.name,
            iso.name
        )
    } else if a.on_full == crate::recipe::audit::OnFull::Halt {
        format!(
            "{}: [audit] on_full = \"halt\" halts a node that cannot record, and an ISO boot has no \
             audit partition: that ISO would never boot; leave it out (e.g. --format {},{}) or use \
             on_full = \"stop\"",
            a.on_full_at.as_deref().unwrap_or(&a.at),
            crate::media::RAW.name,
            crate::media::QCOW2.name
        )
    } else {
        return Ok(());
    };
    Err(crate::InputError(problem).into())
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
    use crate::media::{ISO, QCOW2, RAW};

    /// `--format` reads the table: its names, any subset, its default
    /// every row (and prints back as it parses).
    #[test]
    fn formats_are_parsed_from_the_table() {
        let f = Formats::parse("iso, qcow2").unwrap();
        assert!(f.wants(&ISO) && f.wants(&QCOW2) && !f.wants(&RAW));
        assert_eq!(Formats::parse("raw,raw").unwrap(), Formats::of(&[&RAW]));
        let all = Formats::default();
        assert!(crate::media::FORMATS
            .iter()
            .all(|r| all.wants(r) == r.by_default));
        assert_eq!(all.to_string(), "raw,iso,qcow2", "the default is unchanged");
        assert_eq!(Formats::parse(&all.to_string()).unwrap(), all);
        let e = Formats::parse("raw,ova").unwrap_err();
        assert!(
            e.contains("\"ova\"") && e.contains(&crate::media::names()),
            "{e}"
        );
        // The compressed raw disk needs the raw disk (its data map).
        let e = Formats::parse("zst").unwrap_err();
        assert!(e.contains("--format raw,zst"), "{e}");
        assert!(Formats::parse("zst,raw").is_ok());
        assert!(Formats::parse(" , ").is_err());
    }

    /// Asking for vhd keeps the Hyper-V drivers: the prune, given the
    /// build's extras, keeps hv_netvsc and hv_utils (and hv_vmbus, which
    /// they need); control: without vhd they are removed. hv_storvsc is
    /// kept either way (drivers/scsi is in the default set).
    #[test]
    fn asking_for_vhd_keeps_the_hyper_v_drivers() {
        let recipe_extra = vec!["dm_mod".to_string()];
        let vhd = Formats::parse("raw,vhd").unwrap().modules(&recipe_extra);
        assert_eq!(
            vhd,
            ["dm_mod", "hv_vmbus", "hv_storvsc", "hv_netvsc", "hv_utils"]
        );
        assert_eq!(Formats::default().modules(&recipe_extra), recipe_extra);
        let dep = "kernel/drivers/hv/hv_vmbus.ko:
\
                   kernel/drivers/scsi/hv_storvsc.ko: kernel/drivers/hv/hv_vmbus.ko
\
                   kernel/drivers/net/hyperv/hv_netvsc.ko: kernel/drivers/hv/hv_vmbus.ko
\
                   kernel/drivers/hv/hv_utils.ko: kernel/drivers/hv/hv_vmbus.ko
\
                   kernel/drivers/md/dm-mod.ko:
";
        let kept = |extra: &[String]| {
            let d = tempfile::tempdir().unwrap();
            let dir = d.path().join("usr/lib/modules/6.1.0-t");
            for m in dep.lines().map(|l| l.split(':').next().unwrap()) {
                let p = dir.join(m);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, "x").unwrap();
            }
            std::fs::write(dir.join("modules.dep"), dep).unwrap();
            std::fs::write(dir.join("modules.builtin"), "").unwrap();
            crate::pipeline::kernel::prune_files(d.path(), "6.1.0-t", extra).unwrap();
            let ko = |p: &str| dir.join(p).exists();
            [
                ko("kernel/drivers/scsi/hv_storvsc.ko"),
                ko("kernel/drivers/net/hyperv/hv_netvsc.ko"),
                ko("kernel/drivers/hv/hv_utils.ko"),
                ko("kernel/drivers/hv/hv_vmbus.ko"),
            ]
        };
        assert_eq!(kept(&vhd), [true; 4]);
        assert_eq!(kept(&recipe_extra), [true, false, false, true], "control");
    }

    /// vm's tests (which may not read media/) boot each format as its row
    /// says.
    #[test]
    fn vm_tests_boot_formats_as_the_table_says() {
        use crate::vm::qemu::cmdline::test_formats;
        assert_eq!(test_formats::RAW, RAW.qemu);
        assert_eq!(test_formats::ISO, ISO.qemu);
        assert_eq!(test_formats::QCOW2, QCOW2.qemu);
    }
}
