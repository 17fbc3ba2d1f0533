//! The steps of `build()`, one function each: every one takes the build
//! context and plain values, calls into its stage module and returns plain
//! values. Where a step runs things at once, it says so here (the jobs of
//! `schedule::Stages::run_together`), so `build()` stays a sequence.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use super::schedule::{Gate, Job};
use super::{BuildContext, BuildOptions, BuildResult, Medium, Step};
use crate::host::digest::Sha256;
use crate::inputs::plan::Plan;
use crate::pipeline::compose::{BaseTree, ComposedRoot};
use crate::pipeline::initramfs::Initramfs;
use crate::pipeline::volume::Built;
use crate::pipeline::volumes::Volume;
use crate::recipe::Recipe;

/// Step 1: Checks what can be checked before anything is fetched (the output
/// folder, `[boot] shim`), then resolves every input: bad input is one
/// line of error and an untouched output folder.
pub(super) fn resolve_inputs<'r>(recipe: &'r Recipe, opts: &BuildOptions) -> Result<Plan<'r>> {
    super::check_out_dir(&opts.out_dir)?;
    super::check_shim(recipe, opts)?;
    super::check_audit_media(recipe, opts)?;
    // Tool times count from here (printed against the wall time at the end).
    crate::host::runner::take_tool_times();
    crate::inputs::plan::resolve(
        recipe,
        &opts.settings,
        crate::inputs::plan::ResolveOptions {
            offline: opts.offline,
            update_lock: opts.update_lock,
        },
    )
}

/// Step 2: The base tree (the Debian tree or a tarball, its kernel taken out)
/// and the model volumes, at once: they share nothing, and a model's
/// volume is disk work while the base is mmdebstrap's or tar's.
pub(super) fn compose_base_and_models(cx: &mut BuildContext) -> Result<(BaseTree, Vec<Volume>)> {
    let repos = cx.plan.local_repos(&cx.work.join("repo"))?;
    let (mut base, mut models) = (None, None);
    {
        let (base, models) = (&mut base, &mut models);
        let (work, plan, repos) = (&cx.work, &cx.plan, &repos);
        cx.stages.run_together(
            Step::ComposeBase,
            vec![
                Job {
                    name: "compose base tree",
                    after: None,
                    run: Box::new(move || {
                        *base = Some(crate::pipeline::compose::compose_base(plan, work, repos)?);
                        Ok(())
                    }),
                },
                Job {
                    name: "model volumes",
                    after: None,
                    run: Box::new(move || {
                        *models = Some(crate::pipeline::volumes::make_model_volumes(plan, work)?);
                        Ok(())
                    }),
                },
            ],
        )?;
    }
    Ok((
        base.context("compose base tree: no result")?,
        models.context("model volumes: no result")?,
    ))
}

/// Step 3: The kernel's modules cut to the appliance's set (a Debian base from
/// the stage cache was pruned before it was stored: only counted).
pub(super) fn prune_kernel_modules(cx: &mut BuildContext, base: &BaseTree) -> Result<()> {
    let extra = &cx.recipe.extra_modules;
    let pruned = cx
        .stages
        .run(Step::PruneModules, "prune kernel modules", || {
            match base.modules_pruned {
                true => crate::pipeline::kernel::already_pruned(&base.tree, &base.kernel_version),
                false => crate::pipeline::kernel::prune(&base.tree, &base.kernel_version, extra),
            }
        })?;
    crate::say!(
        "        kernel {}: kept {} modules, removed {}",
        base.kernel_version,
        pruned.kept,
        pruned.removed
    );
    Ok(())
}

/// Step 4: The initramfs, from the base alone.
pub(super) fn initramfs(cx: &mut BuildContext, base: &BaseTree) -> Result<Initramfs> {
    let (recipe, out) = (cx.recipe, cx.work.join("initramfs.cpio"));
    let initrd = cx.stages.run(Step::Initramfs, "initramfs", || {
        crate::pipeline::initramfs::make_initramfs(
            &base.tree,
            recipe.state_grow,
            recipe.site.as_ref(),
            &base.kernel_version,
            &out,
            recipe.source_date_epoch,
        )
    })?;
    crate::say!(
        "        {} modules, {:.1} MiB",
        initrd.modules,
        initrd.size as f64 / 1048576.0
    );
    Ok(initrd)
}

/// Step 5: The base normalised (pruned, stamped), then a snapshot of every
/// entry: what the apps steps change after it goes to the apps volume.
pub(super) fn normalise_base(
    cx: &mut BuildContext,
    base: &BaseTree,
) -> Result<crate::pipeline::layers::Snapshot> {
    let epoch = cx.recipe.source_date_epoch;
    let norm = cx.stages.run(Step::NormaliseBase, "normalise base", || {
        crate::pipeline::normalise::normalise(&base.tree, epoch)
    })?;
    crate::say!(
        "        pruned {} entries (docs but copyright, man, locales, apt, dpkg's database but status)",
        norm.pruned
    );
    crate::pipeline::layers::Snapshot::take(&base.tree)
}

/// Starts the UKI templates ([`crate::pipeline::uki::Ahead`]) on a thread
/// of their own, to run while the base is compressed: one per command-line
/// length the media need (root hashes have a fixed length), from the stub
/// and os-release the base holds now (used only if the finished tree holds
/// the same bytes). None when the tree has no stub yet: step 9 then says
/// what is missing.
pub(super) fn uki_templates_ahead(
    cx: &BuildContext,
    base: &BaseTree,
    initrd: &Path,
    models: &[Volume],
) -> Result<Option<crate::pipeline::uki::Ahead>> {
    use crate::pipeline::volumes::{cmdline_word, Kind, APPS};
    let recipe = cx.recipe;
    let Ok(stub) =
        crate::host::tree::read_in_tree(&base.tree, Path::new(crate::pipeline::uki::STUB_IN_TREE))
    else {
        return Ok(None);
    };
    let osrel = crate::pipeline::compose::os_release(recipe, &base.tree)?;
    // Any hash has the length of the one to come.
    let any = Sha256::of_bytes(b"");
    let salt = "0".repeat(64);
    let params = |key: &str| crate::pipeline::verity::params_word(key, &salt, 0);
    let mut words = vec![
        params("root"),
        cmdline_word(Kind::Apps, APPS, &any),
        params("apps"),
    ];
    for m in models {
        words.push(m.cmdline_word());
        words.push(params(&super::cmdline::verity_key(m.kind, &m.name)));
    }
    let of = |medium| super::cmdline::cmdline_of_words(recipe, &any, words.clone(), medium).len();
    let mut lens = vec![of(Medium::Disk)];
    if cx.opts.formats.wants(&crate::media::ISO) {
        lens.push(of(Medium::Iso));
    }
    lens.sort_unstable();
    lens.dedup();
    crate::pipeline::uki::Ahead::start(
        &cx.work.join("uki-ahead"),
        &stub,
        osrel.as_bytes(),
        &base.vmlinuz,
        initrd,
        recipe.source_date_epoch,
        lens,
        cx.plan
            .stage_cache
            .then(|| cx.plan.cache.root().to_path_buf()),
    )
    .map(Some)
}

/// Step 6: The base volume: squashfs and its dm-verity hash tree, made by
/// the volume stage inside its stage-cache wrapper (both taken from the
/// cache when the tree mksquashfs would read is the same as a build's
/// before: any rebuild whose Debian packages did not change).
pub(super) fn base_volume(cx: &mut BuildContext, base: &BaseTree) -> Result<Built> {
    use crate::pipeline::volume;
    let (plan, work, epoch) = (&cx.plan, &cx.work, cx.recipe.source_date_epoch);
    let root = cx.stages.run(Step::BaseVolume, "base volume", || {
        // Without the stage cache the key, a read of the whole tree, is
        // not made.
        let key = match plan.stage_cache {
            true => {
                let t = Instant::now();
                let key = crate::pipeline::squashfs::input_key(&base.tree, epoch)?;
                crate::host::progress::say(&format!(
                    "        base tree digest {} in {:.1}s",
                    &key.hex()[..16],
                    t.elapsed().as_secs_f64()
                ));
                Some(key)
            }
            false => None,
        };
        volume::cached(&plan.cache, &volume::ROOT, key.as_ref(), None, || {
            let image = work.join("root.squashfs");
            let pack = crate::pipeline::squashfs::root_pack(&base.tree, None);
            let size = volume::squashfs(&pack, &image, epoch)?;
            crate::say!("        squashfs {:.1} MiB", size as f64 / 1048576.0);
            let t = Instant::now();
            let seed = volume::Seed::Image("verity: hash the root");
            let made = volume::hash_tree(&image, seed, &work.join("root.verity"))?;
            let secs = t.elapsed().as_secs_f64();
            crate::say!("        dm-verity hash tree in {secs:.1}s");
            Ok(made)
        })
    })?;
    crate::say!(
        "        {:.1} MiB, root hash {}{}",
        root.verity.data_size as f64 / 1048576.0,
        root.verity.root_hash,
        if root.cached {
            ": unchanged, reusing the cached base image and hash tree"
        } else {
            ""
        }
    );
    Ok(root)
}

/// The stub and os-release the UKIs are made from, copied out of the
/// finished tree (the templates made ahead are checked against them).
pub(super) struct UkiInputs {
    stub: PathBuf,
    os_release: PathBuf,
}

pub(super) fn take_uki_inputs(cx: &BuildContext, composed: &ComposedRoot) -> Result<UkiInputs> {
    let i = UkiInputs {
        stub: cx.work.join("linuxx64.efi.stub"),
        os_release: cx.work.join("os-release"),
    };
    crate::pipeline::uki::take_inputs(&composed.tree, &i.stub, &i.os_release)?;
    Ok(i)
}

/// The tree is no longer needed once the apps volume is made: it is moved
/// aside (so nothing finds it) and removed on a thread while the UKIs and
/// the media are made; publishing waits for it.
pub(super) fn remove_tree_behind(
    tree: &Path,
) -> Result<std::thread::JoinHandle<std::io::Result<()>>> {
    let trash = tree.with_extension("removing");
    std::fs::rename(tree, &trash)
        .with_context(|| format!("build: move {} aside", tree.display()))?;
    Ok(std::thread::spawn(move || std::fs::remove_dir_all(&trash)))
}

/// What boots: the UKIs (one per medium kind: their command lines differ),
/// signed for Secure Boot when asked, and shim when the recipe wants it.
pub(super) struct Boot {
    pub cmdline: String,
    pub iso_cmdline: String,
    pub uki: crate::pipeline::uki::Uki,
    pub uki_iso: Option<crate::pipeline::uki::Uki>,
    pub shim: Option<crate::pipeline::shim::Shim>,
}

/// Step 9: The UKIs, from the templates made ahead when they fit (the two made
/// at once otherwise); Secure Boot signatures; `[boot] shim`'s files.
pub(super) fn ukis(
    cx: &mut BuildContext,
    ahead: Option<crate::pipeline::uki::Ahead>,
    inputs: &UkiInputs,
    composed: &ComposedRoot,
    initrd: &Path,
    root: &Built,
    volumes: &[Volume],
) -> Result<Boot> {
    let recipe = cx.recipe;
    let cmdline = super::kernel_cmdline(recipe, &root.verity, volumes, Medium::Disk);
    let iso_cmdline = super::kernel_cmdline(recipe, &root.verity, volumes, Medium::Iso);
    let (work, plan, want_iso) = (
        &cx.work,
        &cx.plan,
        cx.opts.formats.wants(&crate::media::ISO),
    );
    let (uki, uki_iso) = cx.stages.run(Step::Uki, "UKI", || {
        let templates = match ahead {
            Some(a) => a.take(&inputs.stub, &inputs.os_release)?,
            None => Vec::new(),
        };
        // Each UKI in a folder of its own (make_uki writes its command
        // line file there), so the two objcopy runs go at once.
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
                    stub: &inputs.stub,
                    kernel: &composed.vmlinuz,
                    initrd,
                    os_release: &inputs.os_release,
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
    if let Some(sb) = &cx.opts.secure_boot {
        for u in std::iter::once(&uki).chain(uki_iso.as_ref()) {
            crate::pipeline::sbsign::sign_efi(sb, &u.path, recipe.source_date_epoch)?;
        }
    }
    // `[boot] shim`: the host's Microsoft-signed shim goes in front of
    // every signed UKI.
    let shim = match recipe.shim {
        Some(_) => Some(crate::pipeline::shim::take_host_shim(
            &cx.work,
            recipe.mok_manager,
        )?),
        None => None,
    };
    Ok(Boot {
        cmdline,
        iso_cmdline,
        uki,
        uki_iso,
        shim,
    })
}

/// What step 10 made: the raw disk's partitions and each output's digest,
/// by file name.
pub(super) struct Media {
    pub layout: crate::media::disk::Layout,
    pub hashed: std::collections::BTreeMap<String, Sha256>,
}

/// Step 10: Every medium at once: the raw disk (always: the qcow2 and the
/// manifest derive from it; published only when asked for), its digest
/// taken while it is written, and one job per row of `media::FORMATS`
/// asked for. A row that reads the raw disk starts when all of it but the
/// models' partitions is written (it takes those from their volume files);
/// each output is hashed as soon as it is written.
pub(super) fn write_media(
    cx: &mut BuildContext,
    boot: &Boot,
    composed: &ComposedRoot,
    initrd: &Path,
    root: &Built,
    volumes: &[Volume],
) -> Result<Media> {
    let (recipe, opts, work, media, stem) = (cx.recipe, cx.opts, &cx.work, &cx.media, &cx.stem);
    let raw_path = match opts.formats.wants(&crate::media::RAW) {
        true => media.join(crate::media::RAW.file(stem)),
        false => work.join(crate::media::RAW.file(stem)),
    };
    let layout = std::sync::OnceLock::new();
    // The GPT written (the disk's digest may be taken), all of the raw
    // disk but its models' partitions, then all of it.
    let laid_out = std::sync::OnceLock::<crate::media::disk::RawDisk>::new();
    let (raw_laid_out, raw_system, raw_done) = (Gate::default(), Gate::default(), Gate::default());
    let volume_id = crate::media::iso::volume_id(&recipe.name, &recipe.version);
    let media_inputs = crate::media::MediaInputs {
        raw: &raw_path,
        layout: &layout,
        uki_iso: boot.uki_iso.as_ref().unwrap_or(&boot.uki).path.as_path(),
        shim: boot.shim.as_ref(),
        kernel: &composed.vmlinuz,
        initrd,
        iso_cmdline: &boot.iso_cmdline,
        root: &root.image,
        verity: &root.verity.hash_path,
        volumes,
        volume_id: &volume_id,
        epoch: recipe.source_date_epoch,
        work,
    };
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
        let (raw_path, layout, laid_out) = (&raw_path, &layout, &laid_out);
        let (raw_laid_out, raw_system, raw_done) = (&raw_laid_out, &raw_system, &raw_done);
        jobs.push(Job {
            name: "raw disk",
            after: None,
            run: Box::new(move || {
                // Open their gates either way: on an error the waiting rows
                // end at once (the error is this job's).
                let (laid, system, done) = (
                    raw_laid_out.opener(),
                    raw_system.opener(),
                    raw_done.opener(),
                );
                let inputs = crate::media::disk::DiskInputs {
                    uki: &boot.uki.path,
                    shim: boot.shim.as_ref(),
                    root: &root.image,
                    verity: &root.verity.hash_path,
                    root_hash: &root.verity.root_hash,
                    volumes,
                    disk_size: recipe.disk_size,
                    min_state_size: recipe.state_size,
                    epoch: recipe.source_date_epoch,
                    audit_size: recipe.audit.as_ref().map_or(0, |a| a.size),
                };
                let raw = crate::media::disk::write_raw_system(&inputs, work, raw_path, |r| {
                    layout.get_or_init(|| r.layout.clone());
                    let _ = laid_out.set(r.clone());
                    laid.succeed();
                })?;
                system.succeed();
                crate::media::disk::write_raw_models(&raw, raw_path)?;
                done.succeed();
                Ok(())
            }),
        });
    }
    if opts.formats.wants(&crate::media::RAW) {
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
                // The data map flash writes by (signed with the folder):
                // each range's digest, and the gaps proved zero (the
                // ranges and gaps are read; no whole-image hash).
                crate::release::datamap::DataMap::of_file(
                    raw_path,
                    &name,
                    raw.layout.disk_size,
                    d,
                    &raw.data_ranges()?,
                )?
                .write_beside(raw_path)?;
                hash_into(raw_path, Some(d))
            }),
        });
    }
    for f in crate::media::FORMATS
        .iter()
        .filter(|f| opts.formats.wants(f))
    {
        use crate::media::Write;
        let (write, after) = match f.write {
            Write::Raw => continue,
            Write::Beside(w) => (w, None),
            Write::FromRaw(w) => (w, Some(&raw_system)),
            Write::AfterRaw(w) => (w, Some(&raw_done)),
        };
        let out = media.join(f.file(stem));
        let (media_inputs, hash_into) = (&media_inputs, &hash_into);
        jobs.push(Job {
            name: f.stage,
            after,
            run: Box::new(move || {
                let known = write(media_inputs, &out)?;
                hash_into(&out, known)
            }),
        });
    }
    cx.stages.run_together(Step::Media, jobs)?;
    Ok(Media {
        layout: layout
            .into_inner()
            .context("raw disk: no layout (the raw disk was not written)")?,
        hashed: hashed.into_inner().unwrap_or_else(|e| e.into_inner()),
    })
}

/// Step 11: manifest.json, the SBOMs and the provenance statement. Each output
/// is hashed once: the manifest's digests (and the manifest's own) are
/// returned for the SHA256 list.
pub(super) fn manifest(
    cx: &mut BuildContext,
    composed: &ComposedRoot,
    contents: &crate::release::sbom::Contents,
    root: &Built,
    volumes: &[Volume],
    boot: &Boot,
    media: &Media,
) -> Result<std::collections::BTreeMap<String, Sha256>> {
    use crate::release::manifest::{self, Manifest};
    let (recipe, opts, dir) = (cx.recipe, cx.opts, &cx.media);
    cx.stages.run(Step::Manifest, "manifest", || {
        let mut m = Manifest::new(
            recipe,
            composed,
            &root.verity,
            &boot.cmdline,
            &media.layout,
            dir,
            &media.hashed,
        )?;
        m.volumes = manifest::volumes(volumes, &media.layout);
        if opts.formats.wants(&crate::media::ISO) {
            m.kernel.iso_cmdline = Some(boot.iso_cmdline.clone());
        }
        m.boot = crate::release::secureboot::boot_info(
            recipe.allow_bios,
            recipe.allow_unsigned,
            opts.secure_boot.as_ref(),
            boot.shim.as_ref(),
            &boot.uki.path,
            boot.uki_iso.as_ref().map(|u| u.path.as_path()),
            dir,
        )?;
        m.sbom.documents = crate::release::sbom::write(&m, contents, dir)?;
        manifest::write(&m, &dir.join("manifest.json"))?;
        // The in-toto/SLSA statement names every output by digest.
        let subjects: Vec<(String, Sha256)> = m
            .outputs
            .iter()
            .chain(&m.sbom.documents)
            .map(|o| (o.file.clone(), o.sha256))
            .chain(std::iter::once((
                "manifest.json".to_string(),
                Sha256::of_file(&dir.join("manifest.json"))?,
            )))
            .collect();
        crate::release::provenance::write(
            &dir.join(crate::release::provenance::FILE_NAME),
            &crate::release::provenance::statement(&m, &subjects),
        )?;
        Ok(subjects.into_iter().collect())
    })
}

/// Step 12: SHA256 and SHA256.sig, when a key was given.
pub(super) fn sign(
    cx: &mut BuildContext,
    known: &std::collections::BTreeMap<String, Sha256>,
) -> Result<()> {
    let (Some(key), Some(k)) = (&cx.key, &cx.opts.key) else {
        return Ok(());
    };
    let pub_name = k
        .path
        .with_extension("pub")
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "key.pub".into());
    let dir = &cx.media;
    let id = cx.stages.run(Step::Sign, "sign", || {
        crate::release::sign::sign_dir_known(dir, key, &pub_name, known)
    })?;
    crate::say!("        signed with key id {id} (verify with {pub_name})");
    Ok(())
}

/// The finished folder appears in one rename (after the tree's removal);
/// then the stage and tool times.
pub(super) fn publish(
    cx: BuildContext,
    removing: std::thread::JoinHandle<std::io::Result<()>>,
    root_hash: Sha256,
) -> Result<BuildResult> {
    // An error here leaves the folder to the build's own cleanup.
    let _ = removing.join();
    let final_dir = cx.out_dir.join(&cx.stem);
    if final_dir.exists() {
        let old = cx
            .out_dir
            .join(format!(".{}.old-{}", cx.stem, std::process::id()));
        std::fs::rename(&final_dir, &old)
            .with_context(|| format!("cannot move the previous {} aside", final_dir.display()))?;
        std::fs::remove_dir_all(&old).ok();
    }
    std::fs::rename(&cx.media, &final_dir)
        .with_context(|| format!("cannot publish {}", final_dir.display()))?;
    let total = cx.stages.report();
    crate::say!("cairn: built {} in {total:.1}s", final_dir.display());
    Ok(BuildResult {
        raw: final_dir.join(crate::media::RAW.file(&cx.stem)),
        dir: final_dir,
        root_hash,
    })
}
