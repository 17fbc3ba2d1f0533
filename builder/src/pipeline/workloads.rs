//! Workloads: the pinned OCI images, model data, policy bundle and
//! supervised services the appliance exists for. Everything is placed in the
//! verity-protected root (models: their own volumes) at build time, so the
//! digest the manifest names is the one that runs. For containerd each
//! image is unpacked there at build time and every service runs from its
//! image's root (`ctr run --rootfs`: nothing imported, nothing copied to
//! the state), read-only, with no capabilities unless listed, no network
//! unless listed, resource limits and read-only model mounts. k3s gets
//! OCI tarballs, which it imports itself.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::host::digest::Sha256;

pub use crate::recipe::workloads::{
    ImageSource, Model, Runtime, Service, WorkloadImage, Workloads,
};

/// What the manifest records about the workloads.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Installed {
    pub runtime: Runtime,
    pub images: Vec<InstalledImage>,
    pub models: Vec<InstalledModel>,
    pub policy: Option<InstalledPolicy>,
    pub services: Vec<String>,
    /// `runtime = "kubernetes"`: what the cluster stage built, for the
    /// SBOMs and provenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::pipeline::cluster::Installed>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstalledImage {
    pub name: String,
    /// The reference containerd knows it by.
    pub reference: String,
    /// The image manifest's digest: what runs.
    pub digest: Sha256,
    pub source: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstalledModel {
    pub name: String,
    pub sha256: Sha256,
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstalledPolicy {
    pub sha256: Sha256,
    pub files: Vec<String>,
}

struct BuiltDigest {
    manifest_digest: Sha256,
}

/// Where things live in the image.
pub const IMAGES_DIR: &str = "usr/lib/cairn/images";
pub use crate::pipeline::volumes::MODELS_DIR;
pub const POLICY_DIR: &str = "usr/lib/cairn/policy";
/// k3s imports image tarballs from here at start (its air-gap convention).
pub const K3S_IMAGES_DIR: &str = crate::pipeline::k3s::IMAGES_DIR;
pub const CONTAINERD_NAMESPACE: &str = "cairn";

pub use crate::recipe::workloads::reference;

pub use crate::recipe::workloads::runtime_packages;

pub use crate::host::digest::tree_or_file_digest as model_digest;

/// Places images, models and policy into the tree and writes the units.
/// What pinned images may unpack to at boot: the state partition's size
/// when state is on disk and does not grow (RAM state and grown partitions
/// are only known at boot). containerd services run from roots unpacked at
/// build time, which take no state; k3s imports its tarballs at boot.
fn image_budget(recipe: &crate::recipe::Recipe) -> Option<u64> {
    (!unpacks_at_build(recipe.workloads.runtime)
        && recipe.state_mode == crate::recipe::StateMode::Disk
        && !recipe.state_grow)
        .then_some(recipe.state_size)
}

/// Whether the runtime runs images from roots unpacked at build time
/// (containerd's services; the Kubernetes node's containerd, through the
/// store `pipeline::kube_store` writes) rather than from OCI tarballs.
pub fn unpacks_at_build(r: Runtime) -> bool {
    matches!(r, Runtime::Containerd | Runtime::Kubernetes)
}

/// Where an image's unpacked root lives in the system tree (containerd).
/// The mode of `IMAGES_DIR/NAME`: root only.
pub const IMAGE_FOLDER_MODE: u32 = 0o700;

pub fn rootfs_dir(name: &str) -> String {
    format!("{IMAGES_DIR}/{name}/rootfs")
}

/// How a containerd service starts its image: from the root unpacked at
/// build time, with the image's configuration spelled out for `ctr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRun {
    /// Absolute, in the running system.
    pub rootfs: String,
    /// The image's configuration.
    pub config: crate::pipeline::oci::rootfs::RunConfig,
    /// The image's user, resolved in its own /etc/passwd (root if unset).
    pub uid_gid: (u32, u32),
}

/// The guest script that starts a service as its image's user (see
/// `builder/guest/cairn-service-run`).
pub const SERVICE_RUN: &str = "/usr/lib/cairn/cairn-service-run";

/// The guest script that lays a service's writable layer over its image
/// root (see `builder/guest/cairn-service-layer`).
pub const SERVICE_LAYER: &str = "/usr/lib/cairn/cairn-service-layer";

/// Where a service with a writable layer finds its root: the image root
/// with the layer (on the state) over it, mounted by [`SERVICE_LAYER`].
pub fn layered_root(service: &str) -> String {
    format!("/run/cairn/services/{service}/rootfs")
}

/// Unpacks a verified image's layers into [`rootfs_dir`] and reads what
/// `ctr run --rootfs` needs from its configuration.
fn unpack(
    tree: &Path,
    work: &Path,
    name: &str,
    loaded: &crate::pipeline::oci::LoadedImage,
    plan: &crate::inputs::plan::Plan,
) -> Result<ImageRun> {
    let staged = stage_root(work, name, loaded, plan)?;
    place_root(tree, name, staged)
}

/// An image root unpacked outside the tree ([`stage_root`]), to be moved
/// into it ([`place_root`]).
#[derive(Debug)]
pub struct StagedRoot {
    dir: tempfile::TempDir,
    digest: Sha256,
    config: crate::pipeline::oci::rootfs::RunConfig,
    uid_gid: (u32, u32),
    /// What containerd's store needs of the image (Kubernetes).
    store: crate::pipeline::kube_store::StoreImage,
}

/// The part of [`unpack`] that needs nothing of the tree: the layers into
/// a fresh folder under `work` (on the tree's file system, so placing it
/// is a rename, unless the tree is in memory), the configuration and the user read from them. Compose
/// runs it while the base tree is being made or unpacked.
pub fn stage_root(
    work: &Path,
    name: &str,
    loaded: &crate::pipeline::oci::LoadedImage,
    plan: &crate::inputs::plan::Plan,
) -> Result<StagedRoot> {
    use crate::pipeline::oci::rootfs;
    let rel = rootfs_dir(name);
    let dir = tempfile::Builder::new()
        .prefix(".image-root-")
        .tempdir_in(work)
        .with_context(|| format!("image {name}: a staging folder in {}", work.display()))?;
    let root = dir.path().join("rootfs");
    std::fs::create_dir(&root).with_context(|| format!("image {name}: {}", root.display()))?;
    crate::pipeline::oci::unpack_layers(loaded, &root, &plan.recipe.limits)
        .with_context(|| format!("image {name}: unpack into /{rel}"))?;
    let bad = |e: anyhow::Error| crate::InputError(format!("image {name}: {e:#}"));
    let config = rootfs::run_config(&loaded.config).map_err(bad)?;
    let uid_gid = match &config.user {
        Some(u) => rootfs::resolve_user(&root, u).map_err(bad)?,
        None => (0, 0),
    };
    for p in rootfs::RUNTIME_MOUNT_POINTS {
        rootfs::add_mount_point(&root, p, rootfs::MountPoint::Folder)
            .with_context(|| format!("image {name}: mount point /{p}"))?;
    }
    Ok(StagedRoot {
        dir,
        digest: loaded.manifest_digest,
        config,
        uid_gid,
        store: crate::pipeline::kube_store::StoreImage::of(loaded, &reference(name), &rel),
    })
}

/// Moves a staged image root to [`rootfs_dir`] in the tree (the folders
/// above it made and resolved inside the tree).
fn place_root(tree: &Path, name: &str, staged: StagedRoot) -> Result<ImageRun> {
    let rel = rootfs_dir(name);
    let folder_rel = Path::new(&rel)
        .parent()
        .context("image rootfs has no parent folder")?;
    let folder = crate::host::tree::create_dirs_in_root(tree, folder_rel)?;
    let root = folder.join("rootfs");
    if std::fs::symlink_metadata(&root).is_ok() {
        bail!("image {name}: /{rel} already exists in the tree");
    }
    // A rename, or a copy when the tree is in memory (`host::scratch`).
    crate::host::scratch::move_tree(&staged.dir.path().join("rootfs"), &root)
        .with_context(|| format!("image {name}: move the unpacked root to /{rel}"))?;
    // Only root (containerd and runc) may enter the image's folder: the
    // appliance's own users cannot reach the image's files, set-id ones
    // (`allow_setuid`) among them, outside the container.
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(IMAGE_FOLDER_MODE))
        .with_context(|| format!("image {name}: chmod {}", folder.display()))?;
    crate::say!(
        "        image {name}: {} unpacked -> /{rel} (runs from there, nothing imported at boot)",
        staged.digest
    );
    Ok(ImageRun {
        rootfs: format!("/{rel}"),
        config: staged.config,
        uid_gid: staged.uid_gid,
    })
}

/// The images, installed in the base tree ([`install_images`]) before the
/// rest of the workloads ([`install`]).
#[derive(Debug, Default)]
pub struct InstalledImages {
    images: Vec<InstalledImage>,
    runs: std::collections::BTreeMap<String, ImageRun>,
    /// Kubernetes: the images for containerd's store.
    store: Vec<crate::pipeline::kube_store::StoreImage>,
}

/// Puts every pinned image in the tree: unpacked for containerd and
/// Kubernetes, as an OCI tarball for k3s (and with no runtime). They go in the base volume
/// (`pipeline::layers`): an image shares most of its files with the
/// Debian base (libc and the rest of the essential set), which one
/// squashfs stores once.
pub fn install_images(
    plan: &crate::inputs::plan::Plan,
    tree: &Path,
    work: &Path,
    mut built: std::collections::BTreeMap<String, Prebuilt>,
) -> Result<InstalledImages> {
    let w = &plan.recipe.workloads;
    let epoch = plan.recipe.source_date_epoch;
    let mut out = InstalledImages::default();
    let images_dir = match w.runtime {
        Runtime::K3s => K3S_IMAGES_DIR,
        _ => IMAGES_DIR,
    };
    let mut runs = std::collections::BTreeMap::new();
    let mut store = Vec::new();
    for img in &w.images {
        let dest_rel = format!("{images_dir}/{}.tar", img.name);
        // k3s imports the tarballs itself and needs the full reference; a
        // tarball without a runtime keeps the plain tag (containerd images
        // are unpacked, so no reference is used).
        let ref_name = match w.runtime {
            Runtime::K3s | Runtime::Kubernetes => reference(&img.name),
            _ => "pinned".to_string(),
        };
        let load = |path: &Path, pin: &Sha256| load_image(plan, img, work, path, pin);
        // Where the OCI tarball goes for k3s (and with no runtime).
        let tarball = || -> Result<PathBuf> {
            Ok(
                crate::host::tree::create_dirs_in_root(tree, Path::new(images_dir))?
                    .join(format!("{}.tar", img.name)),
            )
        };
        let (digest, source) = match &img.source {
            ImageSource::Archive(path) => {
                let pin = img
                    .pin
                    .with_context(|| format!("image {}: no digest pin", img.name))?;
                let loaded = load(path, &pin)?;
                if unpacks_at_build(w.runtime) {
                    store.push(crate::pipeline::kube_store::StoreImage::of(
                        &loaded,
                        &reference(&img.name),
                        &rootfs_dir(&img.name),
                    ));
                    runs.insert(
                        img.name.clone(),
                        unpack(tree, work, &img.name, &loaded, plan)?,
                    );
                } else {
                    let dest = tarball()?;
                    crate::pipeline::oci::write_oci_archive(&loaded, &ref_name, epoch, &dest)
                        .with_context(|| format!("image {}: write into the root", img.name))?;
                    crate::say!(
                        "        image {}: {} -> /{dest_rel}",
                        img.name,
                        loaded.manifest_digest
                    );
                }
                let name = path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (loaded.manifest_digest, format!("archive {name}"))
            }
            ImageSource::Build { packages, .. } => {
                let pre = built
                    .remove(&img.name)
                    .with_context(|| format!("image {}: was not built before install", img.name))?;
                if unpacks_at_build(w.runtime) {
                    let staged = pre.staged.with_context(|| {
                        format!("image {}: was not unpacked before install", img.name)
                    })?;
                    store.push(staged.store.clone());
                    runs.insert(img.name.clone(), place_root(tree, &img.name, staged)?);
                } else {
                    let dest = tarball()?;
                    std::fs::rename(&pre.archive, &dest)
                        .or_else(|_| std::fs::copy(&pre.archive, &dest).map(|_| ()))
                        .with_context(|| format!("image {}: move into the root", img.name))?;
                    crate::host::tree::set_plain_mode(&dest)?;
                    crate::say!("        image {}: {} -> /{dest_rel}", img.name, pre.digest);
                }
                (
                    pre.digest,
                    format!("built from Debian packages: {}", packages.join(" ")),
                )
            }
        };
        out.images.push(InstalledImage {
            name: img.name.clone(),
            reference: reference(&img.name),
            digest,
            source,
        });
    }
    out.runs = runs;
    out.store = store;
    Ok(out)
}

/// The rest of the workloads, on the tree [`install_images`] filled: the
/// models' mount points, the policy bundle and the runtime's units.
pub fn install(
    plan: &crate::inputs::plan::Plan,
    tree: &Path,
    images: InstalledImages,
) -> Result<Installed> {
    let w = &plan.recipe.workloads;
    let runs = images.runs;
    let mut out = Installed {
        runtime: w.runtime,
        images: images.images,
        ..Default::default()
    };
    // Models are volumes of their own (pipeline::volumes); the root holds
    // only their mount points, which the initramfs mounts them on.
    for m in &w.models {
        let rel = format!("{MODELS_DIR}/{}", m.name);
        let mount = crate::pipeline::volumes::mount_point(m);
        crate::host::tree::create_dirs_in_root(tree, Path::new(&mount))?;
        if mount != rel {
            // A single file: its path is a link into its volume.
            crate::host::tree::create_dirs_in_root(tree, Path::new(MODELS_DIR))?;
            crate::host::tree::link_in_tree(
                tree,
                &rel,
                &format!("../../../lib/cairn/volumes/{0}/{0}", m.name),
            )?;
        }
        out.models.push(InstalledModel {
            name: m.name.clone(),
            sha256: m.sha256,
            path: format!("/{rel}"),
        });
    }
    if let Some(p) = &w.policy {
        copy_read_only(p, tree, POLICY_DIR)?;
        let mut files: Vec<String> = walkdir::WalkDir::new(p)
            .min_depth(1)
            .sort_by_file_name()
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_file())
            .filter_map(|e| {
                e.path()
                    .strip_prefix(p)
                    .ok()
                    .map(|r| r.display().to_string())
            })
            .collect();
        files.sort();
        out.policy = Some(InstalledPolicy {
            sha256: crate::host::digest::tree_digest(p)?,
            files,
        });
    }
    match w.runtime {
        Runtime::Containerd => write_containerd_units(w, &out, &runs, tree)?,
        Runtime::K3s => crate::pipeline::k3s::write_layout(w, tree, image_budget(plan.recipe))?,
        Runtime::Kubernetes => {
            let sources = w.kubernetes.as_ref().context(
                "kubernetes runtime without sources (recipe validation should have refused this)",
            )?;
            let built = crate::pipeline::cluster::build(
                &plan.cache,
                plan.stage_cache,
                &sources.module,
                plan.offline,
            )?;
            crate::pipeline::kubernetes::write_layout(w, &built, tree)?;
            crate::pipeline::kube_store::write(
                &built,
                tree,
                images.store,
                crate::pipeline::kube_store::SandboxRoot {
                    rootfs: &rootfs_dir("pause"),
                    folder_mode: IMAGE_FOLDER_MODE,
                },
                plan.recipe.source_date_epoch,
                &plan.recipe.limits,
            )?;
            out.cluster = Some(crate::pipeline::cluster::Installed::of(&built));
        }
        Runtime::None => {}
    }
    out.services = w.services.iter().map(|s| s.name.clone()).collect();
    Ok(out)
}

/// An image built from Debian packages ahead of [`install`]: its archive in
/// the work folder and its manifest digest.
#[derive(Debug)]
pub struct Prebuilt {
    pub archive: PathBuf,
    pub digest: Sha256,
    /// With containerd: the image's root, already unpacked (and the
    /// archive removed), ready to be placed in the tree.
    pub staged: Option<StagedRoot>,
}

/// Loads and checks an image archive against its pin, under the image's
/// layer policy and the recipe's limits.
fn load_image(
    plan: &crate::inputs::plan::Plan,
    img: &WorkloadImage,
    work: &Path,
    path: &Path,
    pin: &Sha256,
) -> Result<crate::pipeline::oci::LoadedImage> {
    crate::pipeline::oci::load_archive_with(
        path,
        pin,
        &crate::pipeline::oci::LoadOptions {
            policy: crate::pipeline::oci::LayerPolicy {
                allow_setuid: img.allow_setuid,
            },
            scratch: Some(work.to_path_buf()),
            limits: plan.recipe.limits,
            unpack_budget: image_budget(plan.recipe),
        },
    )
    .map_err(|e| crate::InputError(format!("image {} ({}): {e}", img.name, path.display())).into())
}

/// Builds `img` from Debian packages (or takes it from the stage cache)
/// into `work/built-NAME.tar`; `None` for an image that is not built. It
/// needs nothing of the root tree, so compose runs it while the base is
/// made. The recipe's pin, if any, is checked here.
/// `memory`: the build's memory folder (`host::scratch`), where the root
/// is staged when it fits.
pub fn prebuild(
    plan: &crate::inputs::plan::Plan,
    img: &WorkloadImage,
    work: &Path,
    memory: Option<&Path>,
    repos: &std::collections::BTreeMap<String, crate::inputs::debrepo::LocalRepo>,
) -> Result<Option<Prebuilt>> {
    let ImageSource::Build {
        packages,
        files,
        entrypoint,
        cmd,
        env,
        user,
        workdir,
        ports,
        essential,
    } = &img.source
    else {
        return Ok(None);
    };
    let w = &plan.recipe.workloads;
    let epoch = plan.recipe.source_date_epoch;
    let (suite, mirror) = crate::recipe::packages::image_source(plan.recipe);
    let (suite, mirror) = (suite.as_str(), mirror.as_str());
    let (cache, stage_cache) = (&plan.cache, plan.stage_cache);
    let ref_name = match w.runtime {
        Runtime::K3s | Runtime::Kubernetes => reference(&img.name),
        _ => "pinned".to_string(),
    };
    let dest = work.join(format!("built-{}.tar", img.name));
    let spec = crate::pipeline::oci::BuildSpec {
        name: ref_name.clone(),
        packages: packages.clone(),
        essential: *essential,
        files: files.clone(),
        entrypoint: entrypoint.clone(),
        cmd: cmd.clone(),
        env: env.clone(),
        user: user.clone(),
        workdir: workdir.clone(),
        exposed_ports: ports.clone(),
        epoch,
        suite: suite.into(),
        mirror: mirror.into(),
        repo: repos.get(&img.name).cloned(),
    };
    // Built images depend on the spec and the files' contents.
    let mut inputs = vec![format!(
        "{:?}",
        (
            &spec.name,
            &spec.packages,
            &spec.entrypoint,
            &spec.cmd,
            &spec.env,
            &spec.user,
            &spec.workdir,
            &spec.exposed_ports,
            spec.epoch,
            &spec.suite,
            &spec.mirror,
        )
    )];
    for (src, dest, mode) in files {
        inputs.push(format!("file {dest} {mode:o} {}", Sha256::of_file(src)?));
    }
    inputs.extend(
        crate::inputs::debrepo::Variant::image(*essential)
            .args()
            .into_iter()
            .map(|a| a.to_string()),
    );
    // Locked: the exact packages (online or offline alike).
    if let Some(r) = &spec.repo {
        inputs.extend(
            r.packages
                .iter()
                .map(|p| format!("deb {} {}", p.spec(), p.sha256)),
        );
    }
    let key = crate::inputs::stagecache::key("oci-build", &inputs);
    let built_digest =
        match crate::inputs::stagecache::lookup(cache, stage_cache, "oci-build", &key)
            .and_then(|(blob, extra)| Sha256::from_hex(extra.trim()).ok().map(|d| (blob, d)))
        {
            Some((blob, digest)) => {
                crate::say!(
                    "        image {}: inputs unchanged, reusing the cached build",
                    img.name
                );
                std::fs::copy(&blob, &dest).context("copy the cached image")?;
                crate::host::tree::set_plain_mode(&dest)?;
                digest
            }
            None => {
                let bwork = work.join(format!("image-{}", img.name));
                std::fs::create_dir_all(&bwork)?;
                if let Some(r) = &spec.repo {
                    r.write(cache).with_context(|| {
                        format!("image {}: the locked packages' local repository", img.name)
                    })?;
                }
                let built = crate::pipeline::oci::build_image(&spec, &bwork, &dest)
                    .with_context(|| format!("image {}: build from Debian packages", img.name))?;
                std::fs::remove_dir_all(&bwork).ok();
                if stage_cache {
                    crate::inputs::stagecache::store(
                        cache,
                        "oci-build",
                        &key,
                        &dest,
                        &built.manifest_digest.hex(),
                    )?;
                }
                built.manifest_digest
            }
        };
    let built = BuiltDigest {
        manifest_digest: built_digest,
    };
    if let Some(pin) = img.pin {
        if pin != built.manifest_digest {
            return Err(crate::InputError(format!(
                "image {}: built manifest digest is {}, but the recipe pins {pin}; update the pin if the change is intended",
                img.name, built.manifest_digest
            ))
            .into());
        }
    }
    // With containerd the image runs from its unpacked root: unpack it
    // now, while the base tree is still being made or unpacked.
    let staged = if unpacks_at_build(w.runtime) {
        let loaded = load_image(plan, img, work, &dest, &built.manifest_digest)?;
        // Unpacked, its layers take at most a few times the archive.
        let bytes = std::fs::metadata(&dest)
            .map(|m| m.len())
            .unwrap_or(u64::MAX);
        let at = crate::host::scratch::staging_folder(memory, work, bytes.saturating_mul(3));
        let staged = stage_root(at, &img.name, &loaded, plan)?;
        drop(loaded);
        std::fs::remove_file(&dest).ok();
        Some(staged)
    } else {
        None
    };
    Ok(Some(Prebuilt {
        archive: dest,
        digest: built.manifest_digest,
        staged,
    }))
}

/// Copies a file or folder into the tree, root-owned, writable by nobody.
fn copy_read_only(src: &Path, tree: &Path, rel: &str) -> Result<()> {
    if src.is_dir() {
        let tmp = tempfile::tempdir()?;
        let stage = tmp.path().join("x");
        std::fs::create_dir_all(&stage)?;
        // Place under `rel` by mirroring the folder structure.
        let dest_parent = Path::new(rel);
        for e in walkdir::WalkDir::new(src).sort_by_file_name() {
            let e = e?;
            let r = e.path().strip_prefix(src)?;
            let target = stage.join(dest_parent).join(r);
            let ft = e.path().symlink_metadata()?.file_type();
            if ft.is_dir() {
                std::fs::create_dir_all(&target)?;
            } else if ft.is_file() {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::copy(e.path(), &target)?;
                set_mode(&target, 0o444)?;
            } else {
                bail!(
                    "{}: only files and folders are allowed in model data and policy bundles",
                    e.path().display()
                );
            }
        }
        crate::host::tree::apply_overlay(&stage, tree)
    } else {
        let data = std::fs::read(src).with_context(|| format!("read {}", src.display()))?;
        crate::host::tree::write_in_tree(tree, rel, &data, 0o444)
    }
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The capabilities runc grants by default; services drop all of them and
/// add back only what the recipe lists.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
];

/// systemd quoting for one ExecStart word: the word reaches the program
/// byte for byte. `%` would start a specifier (`%h` is a home folder) and
/// `$` a variable, so they are doubled; a backslash or a quote is escaped;
/// a newline or any other control character would end or break the line,
/// so it is written as a C escape (`\n`, `\xNN`), which systemd decodes in
/// a quoted ExecStart word.
fn quote(w: &str) -> String {
    if !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@".contains(c))
    {
        return w.to_string();
    }
    let mut q = String::from("\"");
    for c in w.chars() {
        match c {
            '\\' => q.push_str("\\\\"),
            '"' => q.push_str("\\\""),
            '%' => q.push_str("%%"),
            '$' => q.push_str("$$"),
            '\n' => q.push_str("\\n"),
            c if c.is_control() && (c as u32) < 0x80 => {
                let _ = write!(q, "\\x{:02x}", c as u32);
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// The `ctr run` command line of a service: its image's root unpacked at
/// build time (`--rootfs`, nothing imported), read-only, the image's
/// environment with the recipe's entries over it, its working folder and
/// user, the recipe's arguments instead of the image's when it gives any.
///
/// An image that names a user other than root starts through
/// [`SERVICE_RUN`]: `ctr containers create` with the same flags makes the
/// spec containerd would use (its defaults, seccomp profile and all), the
/// script sets the image's user in it and runs it (`ctr run --config`),
/// since containerd 1.6's `ctr` has no `--user`.
pub fn service_command(s: &Service, run: &ImageRun) -> Vec<String> {
    let (uid, gid) = run.uid_gid;
    let as_root = run.uid_gid == (0, 0);
    let mut c: Vec<String> = if as_root {
        vec![
            "/usr/bin/ctr".into(),
            "-n".into(),
            CONTAINERD_NAMESPACE.into(),
            "run".into(),
            "--rm".into(),
        ]
    } else {
        // `ctr containers create` has no --cpus: the script sets the CFS
        // quota in the spec, as `ctr run --cpus` would.
        let quota = s
            .cpus
            .map(|c| ((c * 100_000.0) as i64).to_string())
            .unwrap_or_else(|| "-".into());
        vec![
            SERVICE_RUN.into(),
            s.name.clone(),
            uid.to_string(),
            gid.to_string(),
            quota,
        ]
    };
    if s.read_only {
        c.push("--read-only".into());
    }
    c.push("--seccomp".into());
    for cap in DEFAULT_CAPS {
        if !s.capabilities.iter().any(|k| k == cap) {
            c.push("--cap-drop".into());
            c.push((*cap).into());
        }
    }
    for cap in &s.capabilities {
        if !DEFAULT_CAPS.contains(&cap.as_str()) {
            c.push("--cap-add".into());
            c.push(cap.clone());
        }
    }
    if s.host_network {
        c.push("--net-host".into());
    }
    if let Some(m) = s.memory {
        c.push("--memory-limit".into());
        c.push(m.to_string());
    }
    if let (Some(cpus), true) = (s.cpus, as_root) {
        c.push("--cpus".into());
        c.push(format!("{cpus}"));
    }
    // A site-settable variable reaches the container only: ctr reads the
    // file the initramfs wrote (the recipe's default, or the site file's
    // value) into the container's spec. It is never in the unit's
    // environment, where root's sh and ctr run on the host. ctr applies
    // --env after --env-file, so these variables are left out of --env.
    for e in crate::pipeline::oci::rootfs::merge_env(&run.config.env, &s.env) {
        if e.split_once('=')
            .is_some_and(|(var, _)| s.site_env.iter().any(|v| v == var))
        {
            continue;
        }
        c.push("--env".into());
        c.push(e);
    }
    if !s.site_env.is_empty() {
        c.push("--env-file".into());
        c.push(site_env_file(&s.name));
    }
    if let Some(cwd) = &run.config.cwd {
        c.push("--cwd".into());
        c.push(cwd.clone());
    }
    for m in &s.models {
        c.push("--mount".into());
        c.push(format!(
            "type=bind,src=/{MODELS_DIR}/{m},dst=/models/{m},options=rbind:ro"
        ));
    }
    c.push("--rootfs".into());
    c.push(if s.read_only {
        run.rootfs.clone()
    } else {
        layered_root(&s.name)
    });
    if as_root {
        c.push(format!("cairn-{}", s.name));
        c.extend(process_args(s, run).iter().cloned());
    } else {
        // The container the script makes only to read its spec; the
        // process arguments go into the spec from `args_path` (`ctr
        // containers create` takes `-c` of `sh -c` for its own --config).
        c.push(format!("cairn-{}-spec", s.name));
    }
    c
}

/// What the service runs: the recipe's `args`, else the image's
/// entrypoint and cmd (as `ctr run IMAGE ID ARGS` did).
fn process_args<'a>(s: &'a Service, run: &'a ImageRun) -> &'a [String] {
    if s.args.is_empty() {
        &run.config.args
    } else {
        &s.args
    }
}

/// Where [`SERVICE_RUN`] finds a service's process arguments: one line,
/// `"args": [...],`, the JSON member it puts into the spec.
pub fn args_path(service: &str) -> String {
    format!("/usr/lib/cairn/services/{service}.args")
}

fn args_line(s: &Service, run: &ImageRun) -> String {
    format!(
        "\"args\": {},\n",
        serde_json::to_string(process_args(s, run)).unwrap_or_else(|_| "[]".into())
    )
}

/// The site-settable variable an `env` entry sets, if it is one.
fn site_var<'s>(s: &'s Service, entry: &str) -> Option<&'s str> {
    let (var, _) = entry.split_once('=')?;
    s.site_env.iter().find(|v| *v == var).map(String::as_str)
}

/// A service's site-settable variables: the recipe's defaults in the
/// image (`env_file`), and the container's environment file the initramfs
/// makes from them and the site file's values on /run, which lasts one
/// boot (`site_env_file`, guest/init service_env; ctr --env-file).
pub fn env_file(service: &str) -> String {
    format!("/etc/cairn/env/{service}.env")
}
pub fn site_env_file(service: &str) -> String {
    format!("/run/cairn/site/env/{service}.env")
}

/// The recipe's defaults of a service's site-settable variables, one
/// `VAR=value` a line, as ctr's --env-file reads them (the line as it
/// is; validation keeps control characters out of values).
pub fn env_file_text(s: &Service) -> String {
    let mut t =
        String::from("# Generated by cairn: the recipe's defaults; a site file may set these.\n");
    for e in &s.env {
        if let (Some(var), Some((_, value))) = (site_var(s, e), e.split_once('=')) {
            let _ = writeln!(t, "{var}={value}");
        }
    }
    t
}

pub fn service_unit(s: &Service, run: &ImageRun) -> String {
    let cmd: Vec<String> = service_command(s, run).iter().map(|w| quote(w)).collect();
    // No EnvironmentFile: site values go to the container only (--env-file).
    let env_files = String::new();
    let layer = if s.read_only {
        String::new()
    } else {
        format!(
            "# The image root stays read-only; writes go to a fresh layer on the state.\nExecStartPre={SERVICE_LAYER} up {name} {lower}\nExecStopPost={SERVICE_LAYER} down {name}\n",
            name = s.name,
            lower = run.rootfs,
        )
    };
    let mut u = String::new();
    let _ = write!(
        u,
        "# Generated by cairn: the {name} service, a supervised container.\n[Unit]\nDescription=cairn service {name} (image {image})\nRequires=cairn-images.service\nAfter=cairn-images.service\n\n[Service]\n# A container left by a crash would block the name; none is expected.\nExecStartPre=-/bin/sh -c \"exec >/dev/null 2>&1; /usr/bin/ctr -n {ns} tasks kill -s SIGKILL cairn-{name}; /usr/bin/ctr -n {ns} containers rm cairn-{name}\"\n{layer}{env_files}ExecStart={cmd}\nExecStartPost=/usr/lib/cairn/cairn-say \"service {name} started\"\nRestart=on-failure\nRestartSec=2\nKillMode=mixed\n# A failing service says why on the console, where field teams look.\nStandardError=journal+console\n\n[Install]\nWantedBy=cairn.target\n",
        name = s.name,
        image = s.image,
        ns = CONTAINERD_NAMESPACE,
        cmd = cmd.join(" "),
    );
    u
}

const IMAGES_SCRIPT: &str = include_str!("../../guest/cairn-images");
const IMAGES_SERVICE: &str = include_str!("../../guest/cairn-images.service");
const SERVICE_RUN_SCRIPT: &str = include_str!("../../guest/cairn-service-run");
const SERVICE_LAYER_SCRIPT: &str = include_str!("../../guest/cairn-service-layer");

/// containerd's configuration, in place of Debian's: services run through
/// `ctr` from roots unpacked at build time, so the Kubernetes CRI plugin
/// (and its CNI set-up and image-pull machinery) never serves anything; it
/// is not loaded, which also takes its start off the boot.
pub const CONTAINERD_CONFIG_PATH: &str = crate::recipe::validate::CONTAINERD_CONFIG;
pub const CONTAINERD_CONFIG: &str = "# Generated by cairn: services run through ctr from image roots unpacked at\n# build time; nothing uses Kubernetes' CRI, so its plugin is not loaded.\nversion = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\n[plugins]\n  [plugins.\"io.containerd.internal.v1.opt\"]\n    path = \"/var/lib/containerd/opt\"\n";

fn write_containerd_units(
    w: &Workloads,
    inst: &Installed,
    runs: &std::collections::BTreeMap<String, ImageRun>,
    tree: &Path,
) -> Result<()> {
    use crate::host::tree::write_in_tree;
    use crate::pipeline::oci::rootfs::{add_mount_point, MountPoint};
    write_in_tree(
        tree,
        "usr/lib/cairn/cairn-images",
        IMAGES_SCRIPT.as_bytes(),
        0o755,
    )?;
    write_in_tree(
        tree,
        SERVICE_RUN.trim_start_matches('/'),
        SERVICE_RUN_SCRIPT.as_bytes(),
        0o755,
    )?;
    write_in_tree(
        tree,
        SERVICE_LAYER.trim_start_matches('/'),
        SERVICE_LAYER_SCRIPT.as_bytes(),
        0o755,
    )?;
    write_in_tree(
        tree,
        CONTAINERD_CONFIG_PATH,
        CONTAINERD_CONFIG.as_bytes(),
        0o644,
    )?;
    write_in_tree(
        tree,
        "usr/lib/systemd/system/cairn-images.service",
        IMAGES_SERVICE.as_bytes(),
        0o644,
    )?;
    let mut list = String::new();
    for i in &inst.images {
        let run = runs
            .get(&i.name)
            .with_context(|| format!("image {}: was not unpacked", i.name))?;
        let _ = writeln!(list, "{} {} sha256:{}", i.name, run.rootfs, i.digest);
    }
    write_in_tree(tree, "usr/lib/cairn/images.list", list.as_bytes(), 0o644)?;
    crate::host::tree::link_in_tree(
        tree,
        "usr/lib/systemd/system/cairn.target.wants/cairn-images.service",
        "../cairn-images.service",
    )?;
    crate::host::tree::link_in_tree(
        tree,
        "usr/lib/systemd/system/cairn.target.wants/containerd.service",
        "../containerd.service",
    )?;
    for s in &w.services {
        if !s.site_env.is_empty() {
            write_in_tree(
                tree,
                env_file(&s.name).trim_start_matches('/'),
                env_file_text(s).as_bytes(),
                0o644,
            )?;
        }
        let run = runs
            .get(&s.image)
            .with_context(|| format!("service {}: image {} was not unpacked", s.name, s.image))?;
        if s.args.is_empty() && run.config.args.is_empty() {
            return Err(crate::InputError(format!(
                "service {}: image {} has no Entrypoint or Cmd and the service sets no `args`; give it `args = [\"/path/to/program\", ...]`",
                s.name, s.image
            ))
            .into());
        }
        // The runtime cannot make mount points on the read-only root.
        let root = crate::host::tree::resolve_in_root(
            tree,
            Path::new(run.rootfs.trim_start_matches('/')),
        )?;
        let mut points = Vec::new();
        for m in &s.models {
            let dir = w
                .models
                .iter()
                .find(|x| &x.name == m)
                .map_or(true, |x| x.path.is_dir());
            points.push((
                format!("models/{m}"),
                if dir {
                    MountPoint::Folder
                } else {
                    MountPoint::File
                },
            ));
        }
        if s.host_network {
            // --net-host binds the host's /etc/hosts and /etc/resolv.conf.
            points.push(("etc/hosts".into(), MountPoint::File));
            points.push(("etc/resolv.conf".into(), MountPoint::File));
        }
        for (p, kind) in points {
            add_mount_point(&root, &p, kind).with_context(|| {
                format!("service {}: mount point /{p} in image {}", s.name, s.image)
            })?;
        }
        if run.uid_gid != (0, 0) {
            write_in_tree(
                tree,
                args_path(&s.name).trim_start_matches('/'),
                args_line(s, run).as_bytes(),
                0o644,
            )?;
        }
        let unit = format!("cairn-service-{}.service", s.name);
        write_in_tree(
            tree,
            &format!("usr/lib/systemd/system/{unit}"),
            service_unit(s, run).as_bytes(),
            0o644,
        )?;
        crate::host::tree::link_in_tree(
            tree,
            &format!("usr/lib/systemd/system/cairn.target.wants/{unit}"),
            &format!("../{unit}"),
        )?;
    }
    // cairn: ready waits for the workloads.
    let mut dropin =
        String::from("[Unit]\nAfter=cairn-images.service\nRequires=cairn-images.service\n");
    for s in &w.services {
        let _ = writeln!(dropin, "After=cairn-service-{}.service", s.name);
    }
    write_in_tree(
        tree,
        "usr/lib/systemd/system/cairn-ready.service.d/workloads.conf",
        dropin.as_bytes(),
        0o644,
    )?;
    let checks = ready_checks(&w.services);
    if !checks.is_empty() {
        write_in_tree(tree, "etc/cairn/ready-checks", checks.as_bytes(), 0o644)?;
    }
    Ok(())
}

/// /etc/cairn/ready-checks: one line per service with a readiness check,
/// in the recipe's order (`cairn-ready` waits for each in turn).
fn ready_checks(services: &[Service]) -> String {
    services
        .iter()
        .filter_map(|s| s.ready.as_ref().map(|r| r.line(&s.name) + "\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> Service {
        Service {
            name: "inference".into(),
            image: "inference".into(),
            args: vec!["--port".into(), "8080".into()],
            env: vec!["A=b c".into()],
            host_network: true,
            capabilities: vec![],
            memory: Some(512 << 20),
            cpus: Some(1.0),
            models: vec!["iris".into()],
            read_only: false,
            site_env: vec![],
            ready: None,
        }
    }

    fn run() -> ImageRun {
        ImageRun {
            rootfs: format!("/{}", rootfs_dir("inference")),
            config: crate::pipeline::oci::rootfs::RunConfig {
                args: vec!["/usr/bin/python3".into(), "/app/serve.py".into()],
                env: vec!["PATH=/usr/bin:/bin".into(), "A=from-image".into()],
                cwd: Some("/app".into()),
                user: Some("app".into()),
            },
            uid_gid: (1000, 1000),
        }
    }

    #[test]
    fn site_variables_come_from_the_env_files() {
        let mut s = svc();
        s.env = vec!["A=b c".into(), "SITE_LABEL=none".into()];
        s.site_env = vec!["SITE_LABEL".into()];
        crate::assert_golden(
            "cairn-service-inference-site.service",
            &service_unit(&s, &run()),
        );
        assert_eq!(
            env_file_text(&s),
            "# Generated by cairn: the recipe's defaults; a site file may set these.\nSITE_LABEL=none\n"
        );
        let c = service_command(&s, &run());
        assert!(c.windows(2).any(|w| w[0] == "--env" && w[1] == "A=b c"));
        assert!(c
            .windows(2)
            .any(|w| w[0] == "--env-file" && w[1] == "/run/cairn/site/env/inference.env"));
        // The site variable is never in --env (which ctr applies after the
        // file) and never in the unit's environment, where root's sh and
        // ctr run on the host.
        assert!(!c.iter().any(|w| w.starts_with("SITE_LABEL")), "{c:?}");
        let unit = service_unit(&s, &run());
        assert!(!unit.contains("EnvironmentFile"), "{unit}");
        assert!(!unit.contains("Environment="), "{unit}");
        assert!(!unit.contains("${"), "{unit}");
        // Control: without the declaration the recipe's value is on the line.
        s.site_env.clear();
        assert!(!service_unit(&s, &run()).contains("--env-file"));
        assert!(service_unit(&s, &run()).contains("SITE_LABEL=none"));
    }

    /// An image that brings its own /etc (and a file at the firewall's
    /// path) keeps it inside its root: the host's /etc and ruleset are
    /// what the tree held (a team image cannot reach a fixed value this
    /// way, docs/templates.md).
    #[test]
    fn an_images_own_etc_stays_in_its_root() {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::create_dir_all(tree.join("usr/lib/cairn")).unwrap();
        std::fs::write(tree.join("etc/nftables.conf"), b"host\n").unwrap();
        std::fs::write(tree.join("usr/lib/cairn/firewall.nft"), b"ruleset\n").unwrap();
        let dir = tempfile::tempdir_in(d.path()).unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("usr/lib/cairn")).unwrap();
        std::fs::write(root.join("etc/nftables.conf"), b"flush ruleset\n").unwrap();
        std::fs::write(root.join("usr/lib/cairn/firewall.nft"), b"flush ruleset\n").unwrap();
        let staged = StagedRoot {
            dir,
            digest: Sha256::of_bytes(b"image"),
            config: crate::pipeline::oci::rootfs::RunConfig {
                args: vec!["/bin/app".into()],
                env: vec![],
                cwd: None,
                user: None,
            },
            uid_gid: (0, 0),
            store: crate::pipeline::kube_store::StoreImage {
                reference: "cairn.local/team:1".into(),
                manifest_media_type: String::new(),
                manifest: vec![],
                config: vec![],
                rootfs: rootfs_dir("team"),
                pinned: false,
            },
        };
        let run = place_root(&tree, "team", staged).unwrap();
        assert_eq!(run.rootfs, "/usr/lib/cairn/images/team/rootfs");
        let read = |p: &str| std::fs::read_to_string(tree.join(p)).unwrap();
        assert_eq!(read("etc/nftables.conf"), "host\n");
        assert_eq!(read("usr/lib/cairn/firewall.nft"), "ruleset\n");
        // Control: the image's files are there, inside its root.
        assert_eq!(
            read("usr/lib/cairn/images/team/rootfs/etc/nftables.conf"),
            "flush ruleset\n"
        );
        assert_eq!(
            read("usr/lib/cairn/images/team/rootfs/usr/lib/cairn/firewall.nft"),
            "flush ruleset\n"
        );
    }

    #[test]
    fn services_run_from_the_unpacked_root_with_the_image_config() {
        let mut s = svc();
        let c = service_command(&s, &run());
        let rootfs = c.iter().position(|w| w == "--rootfs").expect("--rootfs");
        // The image root with the service's writable layer over it; the
        // unit lays the layer over the unpacked root.
        assert_eq!(c[rootfs + 1], "/run/cairn/services/inference/rootfs");
        assert!(!c.contains(&"--read-only".to_string()), "{c:?}");
        let unit = service_unit(&s, &run());
        assert!(unit.contains(
            "ExecStartPre=/usr/lib/cairn/cairn-service-layer up inference /usr/lib/cairn/images/inference/rootfs\n"
        ));
        assert!(unit.contains("ExecStopPost=/usr/lib/cairn/cairn-service-layer down inference\n"));
        // Control: read_only runs from the unpacked root itself, read-only.
        s.read_only = true;
        let ro = service_command(&s, &run());
        let i = ro.iter().position(|w| w == "--rootfs").expect("--rootfs");
        assert_eq!(ro[i + 1], "/usr/lib/cairn/images/inference/rootfs");
        assert!(ro.contains(&"--read-only".to_string()));
        assert!(!service_unit(&s, &run()).contains("cairn-service-layer"));
        s.read_only = false;
        // The recipe's args replace the image's entrypoint and cmd, as
        // `ctr run IMAGE ID ARGS` did; as another user, from the args file.
        assert_eq!(c.len(), rootfs + 3, "{c:?}");
        assert_eq!(args_line(&s, &run()), "\"args\": [\"--port\",\"8080\"],\n");
        // The image's environment, the recipe's entries over it, each once.
        let env: Vec<&str> = c
            .windows(2)
            .filter(|w| w[0] == "--env")
            .map(|w| w[1].as_str())
            .collect();
        assert_eq!(env, ["PATH=/usr/bin:/bin", "A=b c"]);
        assert!(c.windows(2).any(|w| w[0] == "--cwd" && w[1] == "/app"));
        // A user other than root: through the script, which sets it.
        assert_eq!(c[..5], [SERVICE_RUN, "inference", "1000", "1000", "100000"]);
        assert!(!c.contains(&"--cpus".to_string()), "{c:?}");
        assert_eq!(c[rootfs + 2], "cairn-inference-spec");
        // Control: without args of its own, the image's command runs.
        s.args.clear();
        assert_eq!(
            args_line(&s, &run()),
            "\"args\": [\"/usr/bin/python3\",\"/app/serve.py\"],\n"
        );
        // No image reference: nothing is looked up in containerd's store.
        assert!(!c.iter().any(|w| w.contains("cairn.local/")), "{c:?}");
        // Control: an image run as root starts with ctr run directly.
        let mut r = run();
        r.uid_gid = (0, 0);
        let c = service_command(&s, &r);
        assert_eq!(c[..5], ["/usr/bin/ctr", "-n", "cairn", "run", "--rm"]);
        assert!(c.windows(2).any(|w| w[0] == "--cpus" && w[1] == "1"));
        let i = c.iter().position(|w| w == "--rootfs").expect("--rootfs");
        assert_eq!(c[i + 2], "cairn-inference");
        assert_eq!(c[i + 3..], ["/usr/bin/python3", "/app/serve.py"]);
    }

    #[test]
    fn service_unit_golden() {
        crate::assert_golden(
            "cairn-service-inference.service",
            &service_unit(&svc(), &run()),
        );
    }

    /// A `%` in an argument reaches the program as `%`, not as a systemd
    /// specifier (`%h` would become /root); newlines, quotes, backslashes
    /// and `$` cannot end the line or change the words either.
    #[test]
    fn unit_words_escape_specifiers_and_line_breaks() {
        let mut s = svc();
        s.args = vec![
            "--home=%h".into(),
            "a\nExecStartPost=/bin/evil".into(),
            "q\"uote\\ $HOME\t".into(),
        ];
        // As root, the arguments are on the ExecStart line itself.
        let mut r = run();
        r.uid_gid = (0, 0);
        let exec = service_unit(&s, &r)
            .lines()
            .find(|l| l.starts_with("ExecStart="))
            .expect("ExecStart")
            .to_string();
        assert!(
            exec.ends_with(
                " \"--home=%%h\" \"a\\nExecStartPost=/bin/evil\" \"q\\\"uote\\\\ $$HOME\\x09\""
            ),
            "{exec}"
        );
        assert!(!service_unit(&s, &r)
            .lines()
            .any(|l| l.starts_with("ExecStartPost=/bin/evil")));
        // Every `%` in the unit is doubled or a specifier cairn does not use.
        assert!(!exec.replace("%%", "").contains('%'), "{exec}");
        // Control: without the `%`, the word is not quoted at all.
        s.args = vec!["--home=/root".into()];
        let exec = service_unit(&s, &r);
        assert!(exec.contains(" --home=/root\n"), "{exec}");
    }

    #[test]
    fn every_default_capability_is_dropped_unless_listed() {
        let c = service_command(&svc(), &run());
        for cap in DEFAULT_CAPS {
            assert!(
                c.windows(2).any(|w| w[0] == "--cap-drop" && w[1] == *cap),
                "{cap}"
            );
        }
        let mut s = svc();
        s.capabilities = vec!["CAP_NET_BIND_SERVICE".into()];
        let c = service_command(&s, &run());
        assert!(!c
            .windows(2)
            .any(|w| w[0] == "--cap-drop" && w[1] == "CAP_NET_BIND_SERVICE"));
        // No network unless listed.
        s.host_network = false;
        assert!(!service_command(&s, &run()).contains(&"--net-host".to_string()));
    }
}
