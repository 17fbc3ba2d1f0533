//! `runtime = "kubernetes"`: the containerd root the node boots with,
//! written at build time by the cluster stage's `cairn-kube-store`
//! (cluster/internal/kubestore, containerd's own stores used in-process: no
//! daemon, no mount). Each pinned image is an image record in the CRI's
//! namespace, its manifest and config, and one committed overlayfs
//! snapshot whose folder is a link to the root cairn unpacked with its own
//! layer reader into the verified root. At boot `cairn-kube-images` copies
//! the small files (two bolt files, the JSON blobs, the links) to the
//! state: the images' bytes are read in place, never imported.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

/// The containerd root in the image; the guest copies it to
/// /var/lib/containerd (containerd.toml's root) before containerd starts.
pub const STORE_DIR: &str = "usr/lib/cairn/kubernetes/containerd-root";
/// The tool, in the cluster stage's output (run here, not in the image).
pub const TOOL: &str = "host/cairn-kube-store";

/// One image for the store: what the CRI reads (reference, manifest,
/// config) and where its unpacked root is in the running system.
#[derive(Debug, Clone)]
pub struct StoreImage {
    pub reference: String,
    pub manifest_media_type: String,
    pub manifest: Vec<u8>,
    pub config: Vec<u8>,
    pub rootfs: String,
    /// The CRI's pinned label (the sandbox image).
    pub pinned: bool,
}

impl StoreImage {
    /// `rootfs`: the image root's path in the tree (relative).
    pub fn of(
        loaded: &crate::pipeline::oci::LoadedImage,
        reference: &str,
        rootfs: &str,
    ) -> StoreImage {
        StoreImage {
            reference: reference.into(),
            manifest_media_type: loaded.manifest_media_type.clone(),
            manifest: loaded.manifest.clone(),
            config: loaded.config.clone(),
            rootfs: format!("/{rootfs}"),
            pinned: false,
        }
    }
}

#[derive(Serialize)]
struct SpecImage {
    name: String,
    manifest: String,
    manifest_media_type: String,
    config: String,
    rootfs: String,
    pinned: bool,
}

#[derive(Serialize)]
struct Spec {
    epoch: u64,
    images: Vec<SpecImage>,
}

/// The tool's input: the images in reference order, their blobs as files
/// in `work`.
fn spec(images: &[StoreImage], epoch: u64, work: &Path) -> Result<String> {
    let mut sorted: Vec<&StoreImage> = images.iter().collect();
    sorted.sort_by(|a, b| a.reference.cmp(&b.reference));
    let mut out = Vec::new();
    for (i, img) in sorted.into_iter().enumerate() {
        let manifest = work.join(format!("{i}.manifest"));
        let config = work.join(format!("{i}.config"));
        std::fs::write(&manifest, &img.manifest)?;
        std::fs::write(&config, &img.config)?;
        out.push(SpecImage {
            name: img.reference.clone(),
            manifest: manifest.display().to_string(),
            manifest_media_type: img.manifest_media_type.clone(),
            config: config.display().to_string(),
            rootfs: img.rootfs.clone(),
            pinned: img.pinned,
        });
    }
    Ok(serde_json::to_string_pretty(&Spec { epoch, images: out })? + "\n")
}

/// Where the sandbox image's root goes in the tree (relative) and the mode
/// of its folder: the workloads stage's layout for every image root.
pub struct SandboxRoot<'a> {
    pub rootfs: &'a str,
    pub folder_mode: u32,
}

/// Builds the sandbox image from the stage's static `pause`, unpacks it
/// (cairn's layer reader) into its image root and writes [`STORE_DIR`]
/// with it and `images` (already unpacked by the workloads stage).
pub fn write(
    built: &crate::pipeline::cluster::Built,
    tree: &Path,
    mut images: Vec<StoreImage>,
    sandbox: SandboxRoot<'_>,
    epoch: u64,
    limits: &crate::host::limits::Limits,
) -> Result<()> {
    let work = tempfile::Builder::new()
        .prefix(".kube-store-")
        .tempdir_in(tree.parent().unwrap_or(Path::new("/tmp")))
        .context("kube store: a work folder")?;
    let tar = work.path().join("pause.tar");
    let pin = crate::pipeline::oci::program_image(
        &built.dir.join("pause"),
        "pause",
        "65535:65535",
        crate::pipeline::kubernetes::SANDBOX_IMAGE,
        epoch,
        &tar,
    )
    .context("kubernetes: the sandbox image")?;
    let loaded = crate::pipeline::oci::load_archive_with(
        &tar,
        &pin,
        &crate::pipeline::oci::LoadOptions {
            policy: crate::pipeline::oci::LayerPolicy {
                allow_setuid: false,
            },
            scratch: Some(work.path().to_path_buf()),
            limits: *limits,
            unpack_budget: None,
        },
    )
    .map_err(|e| anyhow::anyhow!("kubernetes: the sandbox image: {e}"))?;
    if tree.join(sandbox.rootfs).symlink_metadata().is_ok() {
        return Err(crate::InputError(format!(
            "kubernetes: /{} is the sandbox image's root; rename the recipe's image that uses it",
            sandbox.rootfs
        ))
        .into());
    }
    let root = crate::host::tree::create_dirs_in_root(tree, Path::new(sandbox.rootfs))?;
    crate::pipeline::oci::unpack_layers(&loaded, &root, limits)
        .context("kubernetes: unpack the sandbox image")?;
    if let Some(folder) = root.parent() {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(folder, std::fs::Permissions::from_mode(sandbox.folder_mode))?;
    }
    let mut pause = StoreImage::of(
        &loaded,
        crate::pipeline::kubernetes::SANDBOX_IMAGE,
        sandbox.rootfs,
    );
    pause.pinned = true;
    images.push(pause);
    let spec_path = work.path().join("spec.json");
    std::fs::write(&spec_path, spec(&images, epoch, work.path())?)?;
    let parent = Path::new(STORE_DIR)
        .parent()
        .context("kube store: folder")?;
    let out = crate::host::tree::create_dirs_in_root(tree, parent)?.join("containerd-root");
    let mut cmd = crate::host::runner::command(&built.dir.join(TOOL).display().to_string());
    cmd.arg(&spec_path).arg(&out);
    crate::host::runner::output("kube-store", cmd)
        .context("kubernetes: write containerd's root with the pinned images")?;
    crate::say!(
        "        {} pinned image(s) -> /{STORE_DIR} (containerd's root; the images are read in place at boot)",
        images.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(reference: &str, name: &str) -> StoreImage {
        StoreImage {
            reference: reference.into(),
            manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            manifest: format!("{{\"m\":\"{name}\"}}").into_bytes(),
            config: format!("{{\"c\":\"{name}\"}}").into_bytes(),
            rootfs: format!("/usr/lib/cairn/images/{name}/rootfs"),
            pinned: false,
        }
    }

    #[test]
    fn the_spec_lists_images_in_reference_order_with_their_blobs() {
        let d = tempfile::tempdir().unwrap();
        let text = spec(
            &[
                img("cairn.local/web:pinned", "web"),
                img("cairn.local/api:pinned", "api"),
            ],
            7,
            d.path(),
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["epoch"], 7);
        assert_eq!(v["images"][0]["name"], "cairn.local/api:pinned");
        assert_eq!(v["images"][0]["rootfs"], "/usr/lib/cairn/images/api/rootfs");
        let config = v["images"][1]["config"].as_str().unwrap();
        assert_eq!(std::fs::read(config).unwrap(), b"{\"c\":\"web\"}");
        // The same images in another order: the same spec.
        let d2 = tempfile::tempdir().unwrap();
        let again = spec(
            &[
                img("cairn.local/api:pinned", "api"),
                img("cairn.local/web:pinned", "web"),
            ],
            7,
            d2.path(),
        )
        .unwrap();
        assert_eq!(
            text.replace(&d.path().display().to_string(), ""),
            again.replace(&d2.path().display().to_string(), "")
        );
    }
}
