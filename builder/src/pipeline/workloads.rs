//! Workloads: the pinned OCI images, model data, policy bundle and
//! supervised services the appliance exists for. Everything is placed in the
//! verity-protected root (models: their own volumes) at build time, so the digest the manifest names is
//! the one that runs; at boot containerd imports the images from there and
//! runs each service with a read-only root, no capabilities unless listed,
//! no network unless listed, resource limits and read-only model mounts.

use std::fmt::Write as _;
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
pub const K3S_IMAGES_DIR: &str = "var/lib/rancher/k3s/agent/images";
/// k3s auto-deploys manifests from here.
pub const K3S_MANIFESTS_DIR: &str = "var/lib/rancher/k3s/server/manifests";
pub const CONTAINERD_NAMESPACE: &str = "cairn";

/// The reference an image is imported under.
pub fn reference(name: &str) -> String {
    format!("cairn.local/{name}:pinned")
}

pub use crate::recipe::workloads::runtime_packages;

pub use crate::host::digest::tree_or_file_digest as model_digest;

/// Places images, models and policy into the tree and writes the units.
/// What pinned images may unpack to at boot: the state partition's size
/// when state is on disk and does not grow (RAM state and grown partitions
/// are only known at boot).
fn image_budget(recipe: &crate::recipe::Recipe) -> Option<u64> {
    (recipe.state_mode == crate::recipe::StateMode::Disk && !recipe.state_grow)
        .then_some(recipe.state_size)
}

pub fn install(
    plan: &crate::inputs::plan::Plan,
    tree: &Path,
    work: &Path,
    built: &std::collections::BTreeMap<String, Prebuilt>,
) -> Result<Installed> {
    let w = &plan.recipe.workloads;
    let epoch = plan.recipe.source_date_epoch;
    let mut out = Installed {
        runtime: w.runtime,
        ..Default::default()
    };
    let images_dir = match w.runtime {
        Runtime::K3s => K3S_IMAGES_DIR,
        _ => IMAGES_DIR,
    };
    for img in &w.images {
        let dest_rel = format!("{images_dir}/{}.tar", img.name);
        let dest = crate::host::tree::create_dirs_in_root(tree, Path::new(images_dir))?
            .join(format!("{}.tar", img.name));
        // ctr imports with --base-name, so a tag is enough; k3s imports the
        // tarballs itself and needs the full reference.
        let ref_name = match w.runtime {
            Runtime::K3s => reference(&img.name),
            _ => "pinned".to_string(),
        };
        let (digest, source) = match &img.source {
            ImageSource::Archive(path) => {
                let pin = img
                    .pin
                    .with_context(|| format!("image {}: no digest pin", img.name))?;
                let loaded = crate::pipeline::oci::load_archive_with(
                    path,
                    &pin,
                    &crate::pipeline::oci::LoadOptions {
                        policy: crate::pipeline::oci::LayerPolicy {
                            allow_setuid: img.allow_setuid,
                        },
                        scratch: Some(work.to_path_buf()),
                        limits: plan.recipe.limits,
                        unpack_budget: image_budget(plan.recipe),
                    },
                )
                .map_err(|e| {
                    crate::InputError(format!("image {} ({}): {e}", img.name, path.display()))
                })?;
                crate::pipeline::oci::write_oci_archive(&loaded, &ref_name, epoch, &dest)
                    .with_context(|| format!("image {}: write into the root", img.name))?;
                let name = path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (loaded.manifest_digest, format!("archive {name}"))
            }
            ImageSource::Build { packages, .. } => {
                let pre = built
                    .get(&img.name)
                    .with_context(|| format!("image {}: was not built before install", img.name))?;
                std::fs::rename(&pre.archive, &dest)
                    .or_else(|_| std::fs::copy(&pre.archive, &dest).map(|_| ()))
                    .with_context(|| format!("image {}: move into the root", img.name))?;
                crate::host::tree::set_plain_mode(&dest)?;
                (
                    pre.digest,
                    format!("built from Debian packages: {}", packages.join(" ")),
                )
            }
        };
        eprintln!("        image {}: {digest} -> /{dest_rel}", img.name);
        out.images.push(InstalledImage {
            name: img.name.clone(),
            reference: reference(&img.name),
            digest,
            source,
        });
    }
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
        if w.runtime == Runtime::K3s {
            copy_read_only(p, tree, K3S_MANIFESTS_DIR)?;
        }
        out.policy = Some(InstalledPolicy {
            sha256: crate::host::digest::tree_digest(p)?,
            files,
        });
    }
    match w.runtime {
        Runtime::Containerd => write_containerd_units(w, &out, tree)?,
        Runtime::K3s => crate::pipeline::k3s::write_layout(w, tree)?,
        Runtime::None => {}
    }
    out.services = w.services.iter().map(|s| s.name.clone()).collect();
    Ok(out)
}

/// An image built from Debian packages ahead of [`install`]: its archive in
/// the work folder and its manifest digest.
#[derive(Debug, Clone)]
pub struct Prebuilt {
    pub archive: PathBuf,
    pub digest: Sha256,
}

/// Builds `img` from Debian packages (or takes it from the stage cache)
/// into `work/built-NAME.tar`; `None` for an image that is not built. It
/// needs nothing of the root tree, so compose runs it while the base is
/// made. The recipe's pin, if any, is checked here.
pub fn prebuild(
    plan: &crate::inputs::plan::Plan,
    img: &WorkloadImage,
    work: &Path,
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
        Runtime::K3s => reference(&img.name),
        _ => "pinned".to_string(),
    };
    let dest = work.join(format!("built-{}.tar", img.name));
    let spec = crate::pipeline::oci::BuildSpec {
        name: ref_name.clone(),
        packages: packages.clone(),
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
        crate::inputs::debrepo::Variant::Image
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
                eprintln!(
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
    Ok(Some(Prebuilt {
        archive: dest,
        digest: built.manifest_digest,
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

/// systemd quoting for one ExecStart word.
fn quote(w: &str) -> String {
    if !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        w.to_string()
    } else {
        format!(
            "\"{}\"",
            w.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('%', "%%")
                .replace('$', "$$")
        )
    }
}

/// The `ctr run` command line of a service.
pub fn service_command(s: &Service) -> Vec<String> {
    let mut c: Vec<String> = vec![
        "/usr/bin/ctr".into(),
        "-n".into(),
        CONTAINERD_NAMESPACE.into(),
        "run".into(),
        "--rm".into(),
        "--read-only".into(),
        "--seccomp".into(),
    ];
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
    if let Some(cpus) = s.cpus {
        c.push("--cpus".into());
        c.push(format!("{cpus}"));
    }
    for e in &s.env {
        c.push("--env".into());
        // A site-settable variable comes from the unit's environment files
        // (the recipe's default, then the site file's value): systemd puts
        // `${VAR}` in place as one word.
        match site_var(s, e) {
            Some(var) => c.push(format!("{var}=${{{var}}}")),
            None => c.push(e.clone()),
        }
    }
    for m in &s.models {
        c.push("--mount".into());
        c.push(format!(
            "type=bind,src=/{MODELS_DIR}/{m},dst=/models/{m},options=rbind:ro"
        ));
    }
    c.push(reference(&s.image));
    c.push(format!("cairn-{}", s.name));
    c.extend(s.args.iter().cloned());
    c
}

/// The site-settable variable an `env` entry sets, if it is one.
fn site_var<'s>(s: &'s Service, entry: &str) -> Option<&'s str> {
    let (var, _) = entry.split_once('=')?;
    s.site_env.iter().find(|v| *v == var).map(String::as_str)
}

/// Where a service's site-settable variables are read from: the recipe's
/// defaults in the image, then what the site file set (written by the
/// initramfs on /run, which lasts one boot).
pub fn env_file(service: &str) -> String {
    format!("/etc/cairn/env/{service}.env")
}
pub fn site_env_file(service: &str) -> String {
    format!("/run/cairn/site/env/{service}.env")
}

/// The recipe's defaults of a service's site-settable variables, as a
/// systemd environment file (validation keeps quotes, `$` and backslashes out).
pub fn env_file_text(s: &Service) -> String {
    let mut t =
        String::from("# Generated by cairn: the recipe's defaults; a site file may set these.\n");
    for e in &s.env {
        if let (Some(var), Some((_, value))) = (site_var(s, e), e.split_once('=')) {
            let _ = writeln!(t, "{var}=\"{value}\"");
        }
    }
    t
}

pub fn service_unit(s: &Service) -> String {
    let cmd: Vec<String> = service_command(s)
        .iter()
        .map(|w| {
            let site = w
                .split_once('=')
                .filter(|(var, rest)| {
                    s.site_env.iter().any(|v| v == var) && *rest == format!("${{{var}}}")
                })
                .is_some();
            if site {
                format!("\"{w}\"")
            } else {
                quote(w)
            }
        })
        .collect();
    let env_files = if s.site_env.is_empty() {
        String::new()
    } else {
        format!(
            "# The variables a site file may set: the recipe's defaults, then the site's.\nEnvironmentFile={}\nEnvironmentFile=-{}\n",
            env_file(&s.name),
            site_env_file(&s.name)
        )
    };
    let mut u = String::new();
    let _ = write!(
        u,
        "# Generated by cairn: the {name} service, a supervised container.\n[Unit]\nDescription=cairn service {name} (image {image})\nRequires=cairn-images.service\nAfter=cairn-images.service\n\n[Service]\n# A container left by a crash would block the name; none is expected.\nExecStartPre=-/bin/sh -c \"exec >/dev/null 2>&1; /usr/bin/ctr -n {ns} tasks kill -s SIGKILL cairn-{name}; /usr/bin/ctr -n {ns} containers rm cairn-{name}\"\n{env_files}ExecStart={cmd}\nExecStartPost=/usr/lib/cairn/cairn-say \"service {name} started\"\nRestart=on-failure\nRestartSec=2\nKillMode=mixed\n# A failing service says why on the console, where field teams look.\nStandardError=journal+console\n\n[Install]\nWantedBy=cairn.target\n",
        name = s.name,
        image = s.image,
        ns = CONTAINERD_NAMESPACE,
        cmd = cmd.join(" "),
    );
    u
}

const IMPORT_SCRIPT: &str = include_str!("../../guest/cairn-import-images");
const IMAGES_SERVICE: &str = include_str!("../../guest/cairn-images.service");

fn write_containerd_units(w: &Workloads, inst: &Installed, tree: &Path) -> Result<()> {
    use crate::host::tree::write_in_tree;
    write_in_tree(
        tree,
        "usr/lib/cairn/cairn-import-images",
        IMPORT_SCRIPT.as_bytes(),
        0o755,
    )?;
    write_in_tree(
        tree,
        "usr/lib/systemd/system/cairn-images.service",
        IMAGES_SERVICE.as_bytes(),
        0o644,
    )?;
    let mut list = String::new();
    for i in &inst.images {
        let _ = writeln!(list, "{} {} sha256:{}", i.name, i.reference, i.digest);
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
        let unit = format!("cairn-service-{}.service", s.name);
        write_in_tree(
            tree,
            &format!("usr/lib/systemd/system/{unit}"),
            service_unit(s).as_bytes(),
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
    Ok(())
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
            site_env: vec![],
        }
    }

    #[test]
    fn site_variables_come_from_the_env_files() {
        let mut s = svc();
        s.env = vec!["A=b c".into(), "SITE_LABEL=none".into()];
        s.site_env = vec!["SITE_LABEL".into()];
        crate::assert_golden("cairn-service-inference-site.service", &service_unit(&s));
        assert_eq!(
            env_file_text(&s),
            "# Generated by cairn: the recipe's defaults; a site file may set these.\nSITE_LABEL=\"none\"\n"
        );
        let c = service_command(&s);
        assert!(c.windows(2).any(|w| w[0] == "--env" && w[1] == "A=b c"));
        assert!(c
            .windows(2)
            .any(|w| w[0] == "--env" && w[1] == "SITE_LABEL=${SITE_LABEL}"));
        // Control: without the declaration the recipe's value is on the line.
        s.site_env.clear();
        assert!(!service_unit(&s).contains("EnvironmentFile"));
        assert!(service_unit(&s).contains("SITE_LABEL=none"));
    }

    #[test]
    fn service_unit_golden() {
        crate::assert_golden("cairn-service-inference.service", &service_unit(&svc()));
    }

    #[test]
    fn every_default_capability_is_dropped_unless_listed() {
        let c = service_command(&svc());
        for cap in DEFAULT_CAPS {
            assert!(
                c.windows(2).any(|w| w[0] == "--cap-drop" && w[1] == *cap),
                "{cap}"
            );
        }
        let mut s = svc();
        s.capabilities = vec!["CAP_NET_BIND_SERVICE".into()];
        let c = service_command(&s);
        assert!(!c
            .windows(2)
            .any(|w| w[0] == "--cap-drop" && w[1] == "CAP_NET_BIND_SERVICE"));
        // No network unless listed.
        s.host_network = false;
        assert!(!service_command(&s).contains(&"--net-host".to_string()));
        assert!(service_command(&s).contains(&"--read-only".to_string()));
    }
}
