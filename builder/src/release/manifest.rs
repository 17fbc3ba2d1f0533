//! manifest.json: what a reviewer needs to judge an image: inputs, outputs,
//! root hash, kernel and command line, the package list, the flags.
//! Invariant: nothing in it depends on the build host's paths, names or
//! clock; the same inputs give the same bytes.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::host::digest::Sha256;
use crate::media::disk::Layout;
use crate::pipeline::compose::{ComposedRoot, Package};
use crate::pipeline::verity::VerityTree;
use crate::recipe::{Base, Recipe};

/// The format of manifest.json (docs/manifest.schema.json): raise it with every
/// change of a field, and the schema file with it.
pub const SCHEMA: u32 = 9;

#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: u32,
    pub image: ImageInfo,
    pub builder: BuilderInfo,
    pub recipe: RecipeInfo,
    pub source_date_epoch: u64,
    /// Where `source_date_epoch` came from (None: a manifest older than
    /// format 2 does not say).
    #[serde(default)]
    pub source_date_epoch_from: Option<crate::recipe::epoch::EpochSource>,
    pub inputs: Vec<Input>,
    pub outputs: Vec<Output>,
    pub verity: VerityInfo,
    /// The model volumes: each its own file system image, hash tree and
    /// root hash (format 4; older manifests have none).
    #[serde(default)]
    pub volumes: Vec<VolumeInfo>,
    pub kernel: KernelInfo,
    pub flags: Flags,
    pub sbom: Sbom,
    pub partitions: Vec<PartitionInfo>,
    #[serde(default)]
    pub network: crate::pipeline::firewall::NetworkPolicy,
    /// Trusted boot: Secure Boot certificate, predicted PCR 11, BIOS path.
    #[serde(default)]
    pub boot: BootInfo,
    /// `[site]`: what a site file may set and the site key (id and text);
    /// absent when the recipe takes no site files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<crate::recipe::site::SiteDeclaration>,
    /// What each service may do beyond a plain container (format 7; older
    /// manifests have none): the capabilities it keeps and whether it
    /// shares the node's network.
    #[serde(default)]
    pub services: Vec<ServiceInfo>,
    /// The signed template a team recipe was built on (docs/templates.md);
    /// absent for a plain recipe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<crate::recipe::governance::TemplateUse>,
    /// `[audit]`: the sealed audit trail's partition and key (docs/audit.md);
    /// absent without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<crate::recipe::audit::AuditInfo>,
}

/// One service's privileges, as its unit starts it: every default
/// capability is dropped except those listed, and those are the only ones
/// it holds (pipeline::workloads::service_command).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub name: String,
    pub image: String,
    pub capabilities: Vec<String>,
    pub host_network: bool,
    /// Its ceilings (format 8), re-checked against a template's
    /// `max_memory` and `max_cpus` by `cairn verify --template-key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
}

/// Capabilities that reach the node's own network when the service shares
/// it: raw packets (any address, bypassing the service's sockets) and
/// interface, route and firewall changes.
const HOST_NETWORK_RISKY_CAPS: &[&str] = &["CAP_NET_RAW", "CAP_NET_ADMIN"];

/// The services' privileges, in the recipe's order.
pub fn service_infos(services: &[crate::recipe::workloads::Service]) -> Vec<ServiceInfo> {
    services
        .iter()
        .map(|s| ServiceInfo {
            name: s.name.clone(),
            image: s.image.clone(),
            capabilities: s.capabilities.clone(),
            host_network: s.host_network,
            memory: s.memory,
            cpus: s.cpus,
        })
        .collect()
}

/// The build's warnings about services: NET_RAW or NET_ADMIN on the host
/// network lets the service send any packet as the node or change the
/// node's interfaces and firewall (within what nftables, loaded first,
/// still drops on the wire: NET_ADMIN can flush it).
pub fn service_warnings(services: &[ServiceInfo]) -> Vec<String> {
    let mut w = Vec::new();
    for s in services.iter().filter(|s| s.host_network) {
        // Validation keeps capability names in their CAP_ form.
        for cap in &s.capabilities {
            if HOST_NETWORK_RISKY_CAPS.contains(&cap.as_str()) {
                w.push(format!(
                    "warning: service {}: {cap} with host_network = true acts on the node's own network ({}); drop the capability or the host network if the service can do without",
                    s.name,
                    if cap == "CAP_NET_ADMIN" {
                        "interfaces, routes and the firewall itself"
                    } else {
                        "raw packets from the node's addresses"
                    }
                ));
            }
        }
    }
    w
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ImageInfo {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BuilderInfo {
    pub cairn_version: String,
    pub git_revision: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RecipeInfo {
    pub sha256: Sha256,
    pub lock_sha256: Option<Sha256>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Input {
    pub kind: String,
    pub source: String,
    pub sha256: Option<Sha256>,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct Output {
    pub file: String,
    pub size: u64,
    pub sha256: Sha256,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct VerityInfo {
    pub root_hash: Sha256,
    pub salt: String,
    pub uuid: String,
    pub hash_algorithm: String,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub data_size: u64,
    pub hash_size: u64,
}

/// One volume besides the base (the root): what it holds, where it is
/// mounted, how it is stored, its dm-verity parameters and where each
/// medium carries it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VolumeInfo {
    pub name: String,
    /// `apps` (the root's layer over the base) or `model`.
    pub kind: String,
    /// Where the running image mounts it, read-only (`/` for apps:
    /// overlayfs stacks it over the base).
    pub mount: String,
    /// `none` or `zstd`.
    pub compression: String,
    /// What it is made from: the model, by its pinned digest; for apps,
    /// the digest of its tree (overlays, configuration, images).
    pub inputs: Vec<Input>,
    pub root_hash: Sha256,
    pub salt: String,
    pub uuid: String,
    pub hash_algorithm: String,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    /// The file system image's size (the verity data size).
    pub data_size: u64,
    pub hash_size: u64,
    /// Its partitions on the raw disk (and qcow2), by GPT name.
    pub partition: String,
    pub hash_partition: String,
    /// Its files on the ISO.
    pub iso_image: String,
    pub iso_hash: String,
}

/// The base volume (the root: the Debian tree and its kernel modules) in
/// the form of the other volumes, for `inspect` and `diff`: made from the
/// manifest's base inputs (the Debian packages or the tarball).
pub fn base_volume(m: &Manifest) -> VolumeInfo {
    let (iso_image, iso_hash) = (
        crate::media::iso::ISO_ROOT.to_string(),
        crate::media::iso::ISO_VERITY.to_string(),
    );
    let inputs = m
        .inputs
        .iter()
        .filter(|i| i.kind == "debian-base" || i.kind == "rootfs-tarball")
        .cloned()
        .chain((!m.sbom.packages.is_empty()).then(|| Input {
            kind: "packages".into(),
            source: format!("{} Debian packages", m.sbom.packages.len()),
            sha256: None,
        }))
        .collect();
    VolumeInfo {
        name: "base".into(),
        kind: "base".into(),
        mount: "/".into(),
        compression: "zstd".into(),
        inputs,
        root_hash: m.verity.root_hash,
        salt: m.verity.salt.clone(),
        uuid: m.verity.uuid.clone(),
        hash_algorithm: m.verity.hash_algorithm.clone(),
        data_block_size: m.verity.data_block_size,
        hash_block_size: m.verity.hash_block_size,
        data_size: m.verity.data_size,
        hash_size: m.verity.hash_size,
        partition: crate::media::disk::LABEL_ROOT.into(),
        hash_partition: crate::media::disk::LABEL_VERITY.into(),
        iso_image,
        iso_hash,
    }
}

/// The manifest's entry for each volume.
pub fn volumes(vols: &[crate::pipeline::volumes::Volume], layout: &Layout) -> Vec<VolumeInfo> {
    vols.iter()
        .zip(&layout.volumes)
        .map(|(v, p)| {
            let (partition, hash_partition) = p.labels();
            let (iso_image, iso_hash) = crate::media::iso::volume_paths(v.kind, &v.name);
            let input = match v.kind {
                crate::pipeline::volumes::Kind::Apps => Input {
                    kind: "tree".into(),
                    source: "overlays, configuration, policy".into(),
                    sha256: Some(v.model_sha256),
                },
                crate::pipeline::volumes::Kind::Model => Input {
                    kind: "model".into(),
                    source: v.name.clone(),
                    sha256: Some(v.model_sha256),
                },
            };
            VolumeInfo {
                name: v.name.clone(),
                kind: v.kind.as_str().into(),
                mount: v.mount.clone(),
                compression: v.compression.as_str().into(),
                inputs: vec![input],
                root_hash: v.verity.root_hash,
                salt: v.verity.salt.clone(),
                uuid: v.verity.uuid.clone(),
                hash_algorithm: v.verity.hash_algorithm.into(),
                data_block_size: v.verity.data_block_size,
                hash_block_size: v.verity.hash_block_size,
                data_size: v.verity.data_size,
                hash_size: v.verity.hash_size,
                partition,
                hash_partition,
                iso_image,
                iso_hash,
            }
        })
        .collect()
}

#[derive(Debug, Serialize, Deserialize)]
pub struct KernelInfo {
    pub version: String,
    /// The raw and qcow2 media's command line (in their UKI).
    pub cmdline: String,
    /// The ISO's command line (its UKI and GRUB's config): RAM state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iso_cmdline: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Flags {
    pub debug_console: bool,
    /// Test control: disk state without encryption.
    #[serde(default)]
    pub debug_unencrypted_state: bool,
    /// `[debug] cmdline`: shell-opening command-line words the recipe let
    /// through (every `[debug]` flag is in the signed manifest).
    #[serde(default)]
    pub debug_cmdline: Vec<String>,
    pub state_mode: String,
    pub firewall: String,
    /// Cluster runtime: none, containerd or k3s.
    #[serde(default)]
    pub runtime: crate::pipeline::workloads::Runtime,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Sbom {
    pub packages: Vec<Package>,
    /// Pinned OCI images: name, reference, manifest digest, source.
    #[serde(default)]
    pub images: Vec<crate::pipeline::workloads::InstalledImage>,
    #[serde(default)]
    pub models: Vec<crate::pipeline::workloads::InstalledModel>,
    /// The policy bundle's digest and files.
    #[serde(default)]
    pub policy: Option<crate::pipeline::workloads::InstalledPolicy>,
    /// The standard-format SBOMs beside the manifest (SPDX 2.3 and
    /// CycloneDX 1.6 JSON), by file name, size and digest.
    #[serde(default)]
    pub documents: Vec<Output>,
    /// `runtime = "kubernetes"`: the Go toolchain and every Go module of
    /// each cluster binary (`go version -m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::pipeline::cluster::Installed>,
}

/// What the firmware and the TPM will see (filled by
/// `release::secureboot::boot_info`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct BootInfo {
    /// sha256 of the DER certificate whose key signed every shipped UKI
    /// (shipped beside the media as `secure-boot.crt`); None: unsigned.
    #[serde(default)]
    pub secure_boot_cert_sha256: Option<Sha256>,
    /// PCR 11 (sha256 bank) after systemd-stub measured the raw disk's UKI.
    #[serde(default)]
    pub pcr11_sha256: Option<Sha256>,
    /// The same for the ISO's UKI (another command line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iso_pcr11_sha256: Option<Sha256>,
    /// The ISO boots legacy BIOS machines through GRUB: firmware verifies
    /// nothing on that path.
    #[serde(default)]
    pub bios_boot: bool,
    /// The recipe accepts that (`[boot] allow_bios`).
    #[serde(default)]
    pub allow_bios: bool,
    /// `[boot] shim` (format 5): Debian's Microsoft-signed shim in front of
    /// the UKI on every ESP, the UKI at shim's second-stage path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shim: Option<ShimInfo>,
    /// The recipe accepts UKIs without a Secure Boot signature in
    /// production (`[boot] allow_unsigned`). Written only when true, so
    /// manifests without it read as before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_unsigned: bool,
}

/// The shim chain on the ESP (the raw disk's and the ISO's EFI image).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShimInfo {
    /// shim, signed by Microsoft's UEFI CA, at the boot path.
    pub shim: EspBinary,
    /// MokManager beside it (shim starts it to enrol a MOK); null:
    /// `[boot] mok_manager = false`, none on the ESP (the key is always
    /// written, so a manifest cannot just leave MokManager out).
    pub mok_manager: Option<EspBinary>,
    /// Where the UKI is (shim's second stage).
    pub uki: String,
}

/// An EFI binary cairn ships but did not build: where it is on the ESP,
/// its digest, and the build host's Debian package it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EspBinary {
    pub path: String,
    pub sha256: Sha256,
    pub package: String,
    pub version: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PartitionInfo {
    pub label: String,
    pub offset: u64,
    pub size: u64,
}

impl Manifest {
    pub fn new(
        recipe: &Recipe,
        composed: &ComposedRoot,
        verity: &VerityTree,
        cmdline: &str,
        layout: &Layout,
        media: &Path,
        hashed: &std::collections::BTreeMap<String, Sha256>,
    ) -> Result<Manifest> {
        let mut inputs = vec![Input {
            kind: "recipe".into(),
            source: recipe
                .file
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            sha256: Some(recipe.recipe_sha256),
        }];
        match &recipe.base {
            Base::Debian { suite, mirror, .. } => inputs.push(Input {
                kind: "debian-base".into(),
                source: format!("{mirror} {suite}"),
                sha256: None,
            }),
            Base::Tarball { path, sha256, .. } => inputs.push(Input {
                kind: "rootfs-tarball".into(),
                source: path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                sha256: Some(*sha256),
            }),
        }
        for o in &recipe.overlays {
            inputs.push(Input {
                kind: "overlay".into(),
                source: o
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                sha256: Some(crate::host::digest::tree_digest(o)?),
            });
        }
        for i in &composed.workloads.images {
            inputs.push(Input {
                kind: "oci-image".into(),
                source: format!("{} ({})", i.name, i.source),
                sha256: Some(i.digest),
            });
        }
        for m in &composed.workloads.models {
            inputs.push(Input {
                kind: "model".into(),
                source: m.name.clone(),
                sha256: Some(m.sha256),
            });
        }
        if let Some(p) = &composed.workloads.policy {
            inputs.push(Input {
                kind: "policy-bundle".into(),
                source: "policy".into(),
                sha256: Some(p.sha256),
            });
        }
        if let Some(k) = &recipe.workloads.k3s {
            for (what, d) in [
                ("k3s-binary", k.binary_sha256),
                ("k3s-airgap-images", k.images_sha256),
            ] {
                inputs.push(Input {
                    kind: what.into(),
                    source: what.into(),
                    sha256: Some(d),
                });
            }
        }
        // runtime = "kubernetes": what the cluster binaries are built from
        // (go.sum pins every module) and with (the Go toolchain).
        if let Some(k) = &recipe.workloads.kubernetes {
            inputs.push(Input {
                kind: "go-sum".into(),
                source: "cluster/go.sum".into(),
                sha256: Some(crate::host::digest::Sha256::of_file(
                    &k.module.join("go.sum"),
                )?),
            });
        }
        if let Some(c) = &composed.workloads.cluster {
            inputs.push(Input {
                kind: "go-toolchain".into(),
                source: c.go_version.clone(),
                sha256: None,
            });
        }
        let services = service_infos(&recipe.workloads.services);
        for w in service_warnings(&services) {
            eprintln!("{w}");
        }
        let mut outputs = Vec::new();
        let mut names: Vec<_> = std::fs::read_dir(media)?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            let p = media.join(&name);
            outputs.push(Output {
                size: std::fs::metadata(&p)?.len(),
                // Media are hashed as soon as each is written, beside the
                // others (`hashed`); anything else here, now.
                sha256: match hashed.get(&name) {
                    Some(d) => *d,
                    None => Sha256::of_file_with_progress(&p, &format!("hash {name}"))?,
                },
                file: name,
            });
        }
        Ok(Manifest {
            schema: SCHEMA,
            image: ImageInfo {
                name: recipe.name.clone(),
                version: recipe.version.clone(),
            },
            builder: BuilderInfo {
                cairn_version: env!("CARGO_PKG_VERSION").into(),
                git_revision: env!("CAIRN_GIT_REV").into(),
            },
            recipe: RecipeInfo {
                sha256: recipe.recipe_sha256,
                lock_sha256: {
                    let lock = crate::inputs::lock::lock_path(&recipe.file);
                    if lock.is_file() {
                        Some(Sha256::of_file(&lock)?)
                    } else {
                        None
                    }
                },
            },
            source_date_epoch: recipe.source_date_epoch,
            source_date_epoch_from: Some(recipe.source_date_epoch_from),
            inputs,
            outputs,
            verity: VerityInfo {
                root_hash: verity.root_hash,
                salt: verity.salt.clone(),
                uuid: verity.uuid.clone(),
                hash_algorithm: verity.hash_algorithm.into(),
                data_block_size: verity.data_block_size,
                hash_block_size: verity.hash_block_size,
                data_size: verity.data_size,
                hash_size: verity.hash_size,
            },
            volumes: Vec::new(),
            kernel: KernelInfo {
                version: composed.kernel_version.clone(),
                cmdline: cmdline.into(),
                iso_cmdline: None,
            },
            flags: Flags {
                debug_console: recipe.debug_console,
                debug_unencrypted_state: recipe.debug_unencrypted_state,
                debug_cmdline: recipe.debug_cmdline.clone(),
                state_mode: recipe.state_mode.as_str().into(),
                firewall: if recipe.network.egress.is_empty() && recipe.network.ingress.is_empty() {
                    "deny-all".into()
                } else {
                    "default-deny+rules".into()
                },
                runtime: recipe.workloads.runtime,
            },
            sbom: Sbom {
                packages: composed.packages.clone(),
                images: composed.workloads.images.clone(),
                models: composed.workloads.models.clone(),
                policy: composed.workloads.policy.clone(),
                documents: Vec::new(),
                cluster: composed.workloads.cluster.clone(),
            },
            partitions: [
                (crate::media::disk::LABEL_ESP.to_string(), layout.esp),
                (crate::media::disk::LABEL_ROOT.to_string(), layout.root),
                (crate::media::disk::LABEL_VERITY.to_string(), layout.verity),
            ]
            .into_iter()
            .chain(layout.volumes.iter().flat_map(|v| {
                let (d, h) = v.labels();
                [(d, v.data), (h, v.hash)]
            }))
            .chain(
                layout
                    .audit
                    .map(|a| (crate::media::disk::LABEL_AUDIT.to_string(), a)),
            )
            .chain(std::iter::once((
                crate::media::disk::LABEL_STATE.to_string(),
                layout.state,
            )))
            .map(|(label, (offset, size))| PartitionInfo {
                label,
                offset,
                size,
            })
            .collect(),
            network: recipe.network.clone(),
            boot: BootInfo::default(),
            site: recipe.site.clone(),
            services,
            template: recipe.template.clone(),
            audit: recipe
                .audit
                .as_ref()
                .map(|a| a.info(crate::media::disk::LABEL_AUDIT)),
        })
    }
}

pub fn write(m: &Manifest, path: &Path) -> Result<()> {
    let mut s = serde_json::to_string_pretty(m)?;
    s.push('\n');
    std::fs::write(path, s).with_context(|| format!("write {}", path.display()))
}

pub fn read(path: &Path) -> Result<Manifest> {
    let s = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&s).with_context(|| format!("{} is not a cairn manifest", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(caps: &[&str], host_network: bool) -> ServiceInfo {
        ServiceInfo {
            name: "probe".into(),
            image: "probe".into(),
            capabilities: caps.iter().map(|c| c.to_string()).collect(),
            host_network,
            memory: None,
            cpus: None,
        }
    }

    #[test]
    fn net_raw_and_net_admin_on_the_host_network_warn() {
        let w = service_warnings(&[svc(&["CAP_NET_RAW", "CAP_NET_ADMIN"], true)]);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("service probe: CAP_NET_RAW"), "{w:?}");
        assert!(w[1].contains("CAP_NET_ADMIN"), "{w:?}");
        // Controls: the same capabilities in the service's own network
        // namespace, and a harmless capability on the host network.
        assert!(service_warnings(&[svc(&["CAP_NET_RAW", "CAP_NET_ADMIN"], false)]).is_empty());
        assert!(service_warnings(&[svc(&["CAP_NET_BIND_SERVICE"], true)]).is_empty());
    }

    #[test]
    fn services_are_recorded_and_older_manifests_still_read() {
        let s = svc(&["CAP_NET_BIND_SERVICE"], true);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"name": "probe", "image": "probe", "capabilities": ["CAP_NET_BIND_SERVICE"], "host_network": true})
        );
        // A format-6 manifest has no services: read as none.
        let old: Manifest =
            serde_json::from_str(include_str!("../../tests/fixtures/manifest-a.json")).unwrap();
        assert!(old.services.is_empty());
    }
}
