//! The release's SBOMs in the two standard formats, SPDX 2.3 JSON
//! (`NAME-VERSION.spdx.json`) and CycloneDX 1.6 JSON (`NAME-VERSION.cdx.json`),
//! so scanners and reviewers' tools read them: every Debian package of the
//! base and of every OCI image whose dpkg database cairn can read (purl,
//! source package, the .deb's sha256 when the lock pins it), the kernel,
//! the images, models and policy bundle by digest, and the media.
//! Invariant: made only from the manifest and what the image contains;
//! no clock, no randomness: the SPDX namespace and the CycloneDX serial
//! number are digests of the document itself.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::host::digest::Sha256;
use crate::inputs::lock::LockedPackage;
use crate::inputs::plan::Plan;
use crate::pipeline::compose::ComposedRoot;
use crate::release::manifest::{Manifest, Output};

pub const SPDX_SUFFIX: &str = ".spdx.json";
pub const CDX_SUFFIX: &str = ".cdx.json";
/// The largest dpkg status database or os-release read from an image.
const MAX_META_BYTES: u64 = 64 << 20;
const DPKG_STATUS: &str = "var/lib/dpkg/status";
const OS_RELEASE: [&str; 2] = ["etc/os-release", "usr/lib/os-release"];

/// One installed Debian package, as the dpkg database and the lock know it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DebPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// The source package it was built from (its own name if dpkg says none).
    pub source: String,
    /// The source package's version (the binary's version if dpkg says none).
    pub source_version: String,
    /// The .deb's sha256 and where it was downloaded from, when locked.
    pub sha256: Option<Sha256>,
    pub download: Option<String>,
}

/// The distribution a package set belongs to, from os-release.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Distro {
    /// `ID` (`debian`): the purl namespace.
    pub id: String,
    /// `VERSION_ID` (`12`), empty when unknown (e.g. sid).
    pub version_id: String,
}

impl Distro {
    /// The purl `distro` qualifier: `debian-12`.
    pub fn qualifier(&self) -> Option<String> {
        (!self.version_id.is_empty()).then(|| format!("{}-{}", self.id, self.version_id))
    }
}

/// The packages inside one OCI image of the release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageContents {
    pub name: String,
    pub distro: Distro,
    pub packages: Vec<DebPackage>,
}

/// What the image tree holds beyond the manifest, read before the tree is
/// gone: the base's packages with their sources, the kernel's digest, the
/// packages inside each image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contents {
    pub distro: Distro,
    pub base: Vec<DebPackage>,
    pub kernel_sha256: Sha256,
    /// The Debian package that shipped the kernel, if any.
    pub kernel_package: Option<String>,
    pub images: Vec<ImageContents>,
}

/// The `wanted` files of an image's unpacked root (each at most
/// `MAX_META_BYTES`), keyed by their path as given; absent ones are left
/// out. Links resolve inside that root, never on the host.
fn read_unpacked(
    root: &Path,
    wanted: &[&str],
) -> Result<std::collections::BTreeMap<String, Vec<u8>>> {
    let mut found = std::collections::BTreeMap::new();
    for rel in wanted {
        if let Some(v) =
            crate::host::tree::read_in_tree_capped(root, Path::new(rel), MAX_META_BYTES)?
        {
            found.insert(rel.to_string(), v);
        }
    }
    Ok(found)
}

/// Reads the composed tree: its dpkg database and os-release, the kernel
/// image, and each installed OCI image's dpkg database (from its layers),
/// joined with the lock's .deb digests.
pub fn read_contents(composed: &ComposedRoot, plan: &Plan) -> Result<Contents> {
    let lock = plan.lock.as_ref();
    use crate::host::tree::resolve_in_root_follow;
    let tree = &composed.tree;
    let read_in_tree = |rel: &str| -> Result<Option<String>> {
        Ok(
            crate::host::tree::read_in_tree_capped(tree, Path::new(rel), MAX_META_BYTES)
                .with_context(|| format!("sbom: read /{rel}"))?
                .map(|b| String::from_utf8_lossy(&b).into_owned()),
        )
    };
    let mut os_release = None;
    for rel in OS_RELEASE {
        if let Some(t) = read_in_tree(rel)? {
            os_release = Some(t);
            break;
        }
    }
    let base_locked = lock
        .and_then(|l| l.base.as_ref())
        .map(|b| locked_index(&b.mirror, &b.packages))
        .unwrap_or_default();
    let base = read_in_tree(DPKG_STATUS)?
        .map(|t| parse_dpkg_status(&t, &base_locked))
        .unwrap_or_default();
    let kernel_package = base
        .iter()
        .find(|p| p.name == format!("linux-image-{}", composed.kernel_version))
        .map(|p| p.name.clone());

    let runtime = composed.workloads.runtime;
    let images_dir = match runtime {
        crate::pipeline::workloads::Runtime::K3s => crate::pipeline::workloads::K3S_IMAGES_DIR,
        _ => crate::pipeline::workloads::IMAGES_DIR,
    };
    let scratch = composed.tree.parent().map(Path::to_path_buf);
    let mut images = Vec::new();
    for img in &composed.workloads.images {
        let mut wanted = vec![DPKG_STATUS];
        wanted.extend(OS_RELEASE);
        let files = if crate::pipeline::workloads::unpacks_at_build(runtime) {
            // Unpacked at build time: read the image's own root.
            let root = resolve_in_root_follow(
                tree,
                Path::new(&crate::pipeline::workloads::rootfs_dir(&img.name)),
            )?;
            read_unpacked(&root, &wanted)
                .with_context(|| format!("sbom: image {} ({})", img.name, root.display()))?
        } else {
            let archive = resolve_in_root_follow(
                tree,
                &Path::new(images_dir).join(format!("{}.tar", img.name)),
            )?;
            let loaded = crate::pipeline::oci::load_archive_with(
                &archive,
                &img.digest,
                &crate::pipeline::oci::LoadOptions {
                    // Only read, never unpacked: the install step already
                    // applied the recipe's policy.
                    policy: crate::pipeline::oci::LayerPolicy { allow_setuid: true },
                    scratch: scratch.clone(),
                    // The limits the install step loaded it with.
                    limits: plan.recipe.limits,
                    unpack_budget: None,
                },
            )
            .map_err(|e| {
                anyhow::anyhow!("sbom: image {} ({}): {e}", img.name, archive.display())
            })?;
            // Read as the image will be: unpacked by cairn's one layer reader
            // (the one that checked it), never by a second parser that
            // could see other files in the same bytes.
            crate::pipeline::oci::read_files(&loaded, &wanted, MAX_META_BYTES, scratch.as_deref())
                .with_context(|| format!("sbom: image {}", img.name))?
        };
        let text = |k: &str| {
            files
                .get(k)
                .map(|b| String::from_utf8_lossy(b).into_owned())
        };
        let locked = lock
            .and_then(|l| l.images.iter().find(|i| i.name == img.name))
            .map(|i| locked_index(&i.mirror, &i.packages))
            .unwrap_or_default();
        images.push(ImageContents {
            name: img.name.clone(),
            distro: parse_os_release(
                text(OS_RELEASE[0])
                    .or_else(|| text(OS_RELEASE[1]))
                    .as_deref(),
            ),
            packages: text(DPKG_STATUS)
                .map(|t| parse_dpkg_status(&t, &locked))
                .unwrap_or_default(),
        });
    }
    Ok(Contents {
        distro: parse_os_release(os_release.as_deref()),
        base,
        kernel_sha256: Sha256::of_file(&composed.vmlinuz)?,
        kernel_package,
        images,
    })
}

pub type LockedIndex = BTreeMap<(String, String, String), (Sha256, String)>;

/// (name, version, architecture) -> (sha256, download URL).
fn locked_index(mirror: &str, packages: &[LockedPackage]) -> LockedIndex {
    packages
        .iter()
        .map(|p| {
            (
                (p.name.clone(), p.version.clone(), p.architecture.clone()),
                (
                    p.sha256,
                    format!("{}/{}", mirror.trim_end_matches('/'), p.filename),
                ),
            )
        })
        .collect()
}

/// Installed packages of a dpkg status database, sorted, with their
/// source packages and the lock's digests.
pub fn parse_dpkg_status(text: &str, locked: &LockedIndex) -> Vec<DebPackage> {
    let mut out = Vec::new();
    for f in crate::host::deb822::paragraphs(text) {
        // `unpacked`: an image built without the essential set, whose
        // packages are extracted, not configured (their files are there).
        let installed = f
            .get("Status")
            .is_some_and(|s| s.ends_with(" installed") || s.ends_with(" unpacked"));
        let (Some(name), Some(version), Some(arch), true) = (
            f.get("Package"),
            f.get("Version"),
            f.get("Architecture"),
            installed,
        ) else {
            continue;
        };
        // `Source: glibc` or `Source: glibc (2.36-9+deb12u7)`.
        let (source, source_version) = match f.get("Source") {
            Some(s) => match s.split_once('(') {
                Some((n, v)) => (n.trim(), v.trim_end_matches(')').trim()),
                None => (s.trim(), version),
            },
            None => (name, version),
        };
        let key = (name.to_string(), version.to_string(), arch.to_string());
        let pinned = locked.get(&key);
        out.push(DebPackage {
            name: key.0,
            version: key.1,
            architecture: key.2,
            source: source.to_string(),
            source_version: source_version.to_string(),
            sha256: pinned.map(|p| p.0),
            download: pinned.map(|p| p.1.clone()),
        });
    }
    out.sort();
    out
}

/// `ID` and `VERSION_ID` of an os-release file; Debian when absent.
pub fn parse_os_release(text: Option<&str>) -> Distro {
    let mut d = Distro {
        id: "debian".into(),
        version_id: String::new(),
    };
    for l in text.unwrap_or_default().lines() {
        let unquote = |v: &str| v.trim().trim_matches('"').trim_matches('\'').to_string();
        if let Some(v) = l.strip_prefix("ID=") {
            d.id = unquote(v);
        } else if let Some(v) = l.strip_prefix("VERSION_ID=") {
            d.version_id = unquote(v);
        }
    }
    d
}

/// Percent-encodes a purl component: unreserved characters stay, and `:`
/// (as the purl spec allows in versions: Debian epochs).
fn purl_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `pkg:deb/debian/NAME@VERSION?arch=ARCH&distro=debian-12[&upstream=SRC]`:
/// the form scanners match (qualifiers in the canonical sorted order;
/// `upstream` names the source package when it differs).
pub fn deb_purl(p: &DebPackage, distro: &Distro) -> String {
    let mut q = vec![format!("arch={}", purl_escape(&p.architecture))];
    if let Some(d) = distro.qualifier() {
        q.push(format!("distro={}", purl_escape(&d)));
    }
    if p.source != p.name {
        q.push(format!("upstream={}", purl_escape(&p.source)));
    }
    format!(
        "pkg:deb/{}/{}@{}?{}",
        purl_escape(&distro.id.to_ascii_lowercase()),
        purl_escape(&p.name.to_ascii_lowercase()),
        purl_escape(&p.version),
        q.join("&")
    )
}

/// `pkg:oci/NAME@sha256%3AHEX?repository_url=cairn.local%2FNAME`.
pub fn oci_purl(name: &str, digest: &Sha256) -> String {
    format!(
        "pkg:oci/{}@sha256%3A{}?repository_url={}",
        purl_escape(&name.to_ascii_lowercase()),
        digest.hex(),
        purl_escape(&format!("cairn.local/{}", name.to_ascii_lowercase()))
    )
}

/// `[A-Za-z0-9.-]` only, as SPDX identifiers require.
fn spdx_id_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Inputs that are programs run in the image but no Debian package
/// (the k3s binary and its air-gap images).
fn other_inputs(m: &Manifest) -> impl Iterator<Item = (&str, Sha256)> {
    m.inputs
        .iter()
        .filter(|i| i.kind.starts_with("k3s-"))
        .filter_map(|i| i.sha256.map(|d| (i.kind.as_str(), d)))
}

/// EFI binaries on the ESP that cairn ships but did not build: shim and
/// MokManager, from the build host's packages (`[boot] shim`).
fn esp_binaries(m: &Manifest) -> Vec<&crate::release::manifest::EspBinary> {
    m.boot
        .shim
        .iter()
        .flat_map(|s| std::iter::once(&s.shim).chain(s.mok_manager.as_ref()))
        .collect()
}

/// The purl of a build host's Debian package (amd64: the only EFI
/// architecture cairn ships).
fn host_deb_purl(b: &crate::release::manifest::EspBinary) -> String {
    format!(
        "pkg:deb/debian/{}@{}?arch=amd64",
        purl_escape(&b.package.to_ascii_lowercase()),
        purl_escape(&b.version)
    )
}

/// The SPDX 2.3 document.
pub fn spdx(m: &Manifest, c: &Contents) -> Value {
    let stem = format!("{}-{}", m.image.name, m.image.version);
    let mut packages: Vec<Value> = Vec::new();
    let mut rels: Vec<Value> = Vec::new();
    let rel = |a: &str, kind: &str, b: &str| json!({"spdxElementId": a, "relationshipType": kind, "relatedSpdxElement": b});
    let sha = |d: &Sha256| json!([{"algorithm": "SHA256", "checksumValue": d.hex()}]);
    let plain = |id: &str, name: &str, version: Option<&str>| {
        let mut p = json!({
            "SPDXID": id,
            "name": name,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
        });
        if let Some(v) = version {
            p["versionInfo"] = json!(v);
        }
        p
    };

    let release = "SPDXRef-Release";
    let mut r = plain(release, &m.image.name, Some(&m.image.version));
    r["primaryPackagePurpose"] = json!("OPERATING-SYSTEM");
    r["comment"] = json!("the appliance image cairn built; the media below hold it");
    packages.push(r);
    rels.push(rel("SPDXRef-DOCUMENT", "DESCRIBES", release));
    for (i, o) in m.outputs.iter().enumerate() {
        let id = format!("SPDXRef-Medium-{i}-{}", spdx_id_part(&o.file));
        let mut p = plain(&id, &o.file, Some(&m.image.version));
        p["packageFileName"] = json!(o.file);
        p["checksums"] = sha(&o.sha256);
        p["primaryPackagePurpose"] = json!("FILE");
        packages.push(p);
        rels.push(rel("SPDXRef-DOCUMENT", "DESCRIBES", &id));
        rels.push(rel(&id, "CONTAINS", release));
    }

    let mut k = plain("SPDXRef-Kernel", "linux", Some(&m.kernel.version));
    k["checksums"] = sha(&c.kernel_sha256);
    k["primaryPackagePurpose"] = json!("OPERATING-SYSTEM");
    if let Some(kp) = &c.kernel_package {
        k["sourceInfo"] = json!(format!("the kernel image of Debian package {kp}"));
    }
    packages.push(k);
    rels.push(rel(release, "CONTAINS", "SPDXRef-Kernel"));

    let deb = |id: &str, p: &DebPackage, distro: &Distro| {
        let mut v = plain(id, &p.name, Some(&p.version));
        if let Some(u) = &p.download {
            v["downloadLocation"] = json!(u);
        }
        if let Some(d) = &p.sha256 {
            v["checksums"] = sha(d);
        }
        v["sourceInfo"] = json!(format!(
            "built from Debian source package {} {}",
            p.source, p.source_version
        ));
        v["externalRefs"] = json!([{
            "referenceCategory": "PACKAGE-MANAGER",
            "referenceType": "purl",
            "referenceLocator": deb_purl(p, distro),
        }]);
        v
    };
    for (i, p) in c.base.iter().enumerate() {
        let id = format!("SPDXRef-Deb-{i}-{}", spdx_id_part(&p.name));
        packages.push(deb(&id, p, &c.distro));
        rels.push(rel(release, "CONTAINS", &id));
    }
    for (n, img) in m.sbom.images.iter().enumerate() {
        let id = format!("SPDXRef-Image-{n}-{}", spdx_id_part(&img.name));
        let mut v = plain(
            &id,
            &img.name,
            Some(&format!("sha256:{}", img.digest.hex())),
        );
        v["checksums"] = sha(&img.digest);
        v["primaryPackagePurpose"] = json!("CONTAINER");
        v["sourceInfo"] = json!(img.source);
        v["externalRefs"] = json!([{
            "referenceCategory": "PACKAGE-MANAGER",
            "referenceType": "purl",
            "referenceLocator": oci_purl(&img.name, &img.digest),
        }]);
        packages.push(v);
        rels.push(rel(release, "CONTAINS", &id));
        if let Some(ic) = c.images.iter().find(|i| i.name == img.name) {
            for (i, p) in ic.packages.iter().enumerate() {
                let pid = format!("SPDXRef-Image-{n}-Deb-{i}-{}", spdx_id_part(&p.name));
                packages.push(deb(&pid, p, &ic.distro));
                rels.push(rel(&id, "CONTAINS", &pid));
            }
        }
    }
    for (i, model) in m.sbom.models.iter().enumerate() {
        let id = format!("SPDXRef-Model-{i}-{}", spdx_id_part(&model.name));
        let mut v = plain(&id, &model.name, None);
        v["checksums"] = sha(&model.sha256);
        v["primaryPackagePurpose"] = json!("FILE");
        v["comment"] = json!(format!("model volume, mounted at {}", model.path));
        packages.push(v);
        rels.push(rel(release, "CONTAINS", &id));
    }
    if let Some(policy) = &m.sbom.policy {
        let mut v = plain("SPDXRef-Policy", "policy", None);
        v["checksums"] = sha(&policy.sha256);
        v["primaryPackagePurpose"] = json!("ARCHIVE");
        v["comment"] = json!(format!("policy bundle: {}", policy.files.join(", ")));
        packages.push(v);
        rels.push(rel(release, "CONTAINS", "SPDXRef-Policy"));
    }
    for (i, b) in esp_binaries(m).into_iter().enumerate() {
        let id = format!("SPDXRef-Efi-{i}-{}", spdx_id_part(&b.package));
        let mut v = plain(&id, &b.package, Some(&b.version));
        v["checksums"] = sha(&b.sha256);
        v["primaryPackagePurpose"] = json!("APPLICATION");
        v["comment"] = json!(format!(
            "{} on the ESP, from the build host's Debian package",
            b.path
        ));
        v["externalRefs"] = json!([{
            "referenceCategory": "PACKAGE-MANAGER",
            "referenceType": "purl",
            "referenceLocator": host_deb_purl(b),
        }]);
        packages.push(v);
        rels.push(rel(release, "CONTAINS", &id));
    }
    if let Some(cl) = &m.sbom.cluster {
        // One package per Go module (shared by the binaries that link it),
        // contained by each binary that does.
        let mut ids: BTreeMap<(String, String), String> = BTreeMap::new();
        for (bi, b) in cl.binaries.iter().enumerate() {
            let bid = format!("SPDXRef-Go-{bi}-{}", spdx_id_part(&b.name));
            let mut v = plain(&bid, &b.name, None);
            v["primaryPackagePurpose"] = json!("APPLICATION");
            v["comment"] = json!(format!(
                "{} ({}), built by cairn with {}",
                b.main, b.name, cl.go_version
            ));
            packages.push(v);
            rels.push(rel(release, "CONTAINS", &bid));
            for (path, version, sum) in &b.modules {
                let key = (path.clone(), version.clone());
                let n = ids.len();
                let mid = ids.entry(key).or_insert_with(|| {
                    let mid = format!("SPDXRef-GoMod-{n}-{}", spdx_id_part(path));
                    let module = crate::pipeline::cluster::GoModule {
                        path: path.clone(),
                        version: version.clone(),
                        sum: sum.clone(),
                    };
                    let mut v = plain(&mid, path, Some(version));
                    if !sum.is_empty() {
                        v["sourceInfo"] = json!(format!("Go module, go.sum {sum}"));
                    }
                    v["externalRefs"] = json!([{
                        "referenceCategory": "PACKAGE-MANAGER",
                        "referenceType": "purl",
                        "referenceLocator": module.purl(),
                    }]);
                    packages.push(v);
                    mid
                });
                rels.push(rel(&bid, "CONTAINS", mid));
            }
        }
    }
    for (kind, d) in other_inputs(m) {
        let id = format!("SPDXRef-Input-{}", spdx_id_part(kind));
        let mut v = plain(&id, kind, None);
        v["checksums"] = sha(&d);
        v["primaryPackagePurpose"] = json!("APPLICATION");
        packages.push(v);
        rels.push(rel(release, "CONTAINS", &id));
    }

    let mut doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": stem,
        "documentNamespace": "",
        "creationInfo": {
            "created": crate::host::time::rfc3339(m.source_date_epoch),
            "creators": [format!("Tool: cairn-{}", m.builder.cairn_version)],
            "comment": "created is the release's SOURCE_DATE_EPOCH, not the build's wall clock",
        },
        "packages": packages,
        "relationships": rels,
    });
    // The namespace names this exact content: the digest of the document
    // without it.
    let digest = Sha256::of_bytes(doc.to_string().as_bytes());
    doc["documentNamespace"] = json!(format!(
        "urn:cairn:spdx:{}:sha256:{}",
        spdx_id_part(&stem),
        digest.hex()
    ));
    doc
}

/// The CycloneDX 1.6 document.
pub fn cyclonedx(m: &Manifest, c: &Contents) -> Value {
    let hashes = |d: &Sha256| json!([{"alg": "SHA-256", "content": d.hex()}]);
    let prop = |k: &str, v: &str| json!({"name": k, "value": v});
    let deb = |prefix: &str, p: &DebPackage, distro: &Distro| {
        let mut v = json!({
            "type": "library",
            "bom-ref": format!("{prefix}deb:{}:{}:{}", p.name, p.architecture, p.version),
            "name": p.name,
            "version": p.version,
            "purl": deb_purl(p, distro),
            "properties": [
                prop("cairn:deb:architecture", &p.architecture),
                prop("cairn:deb:source", &p.source),
                prop("cairn:deb:source-version", &p.source_version),
            ],
        });
        if let Some(d) = &p.sha256 {
            v["hashes"] = hashes(d);
        }
        if let Some(u) = &p.download {
            v["externalReferences"] = json!([{"type": "distribution", "url": u}]);
        }
        v
    };
    let mut components: Vec<Value> = Vec::new();
    let mut contains: Vec<String> = Vec::new();
    for o in &m.outputs {
        components.push(json!({
            "type": "file",
            "bom-ref": format!("medium:{}", o.file),
            "name": o.file,
            "version": m.image.version,
            "hashes": hashes(&o.sha256),
            "properties": [prop("cairn:role", "medium"), prop("cairn:size", &o.size.to_string())],
        }));
    }
    let mut kernel = json!({
        "type": "operating-system",
        "bom-ref": "kernel",
        "name": "linux",
        "version": m.kernel.version,
        "hashes": hashes(&c.kernel_sha256),
    });
    if let Some(kp) = &c.kernel_package {
        kernel["properties"] = json!([prop("cairn:deb:package", kp)]);
    }
    components.push(kernel);
    contains.push("kernel".into());
    for p in &c.base {
        let v = deb("", p, &c.distro);
        contains.push(v["bom-ref"].as_str().unwrap_or_default().to_string());
        components.push(v);
    }
    let mut dependencies: Vec<Value> = Vec::new();
    for img in &m.sbom.images {
        let bref = format!("image:{}", img.name);
        let mut v = json!({
            "type": "container",
            "bom-ref": bref,
            "name": img.name,
            "version": format!("sha256:{}", img.digest.hex()),
            "hashes": hashes(&img.digest),
            "purl": oci_purl(&img.name, &img.digest),
            "properties": [prop("cairn:image:source", &img.source), prop("cairn:image:reference", &img.reference)],
        });
        if let Some(ic) = c
            .images
            .iter()
            .find(|i| i.name == img.name && !i.packages.is_empty())
        {
            let inner: Vec<Value> = ic
                .packages
                .iter()
                .map(|p| deb(&format!("{bref}/"), p, &ic.distro))
                .collect();
            dependencies.push(json!({
                "ref": bref,
                "dependsOn": inner.iter().map(|v| v["bom-ref"].clone()).collect::<Vec<_>>(),
            }));
            v["components"] = json!(inner);
        }
        contains.push(bref);
        components.push(v);
    }
    for model in &m.sbom.models {
        let bref = format!("model:{}", model.name);
        contains.push(bref.clone());
        components.push(json!({
            "type": "machine-learning-model",
            "bom-ref": bref,
            "name": model.name,
            "hashes": hashes(&model.sha256),
            "properties": [prop("cairn:model:path", &model.path)],
        }));
    }
    if let Some(policy) = &m.sbom.policy {
        contains.push("policy".into());
        components.push(json!({
            "type": "file",
            "bom-ref": "policy",
            "name": "policy",
            "hashes": hashes(&policy.sha256),
            "properties": [prop("cairn:role", "policy-bundle")],
        }));
    }
    for b in esp_binaries(m) {
        let bref = format!("efi:{}", b.path);
        contains.push(bref.clone());
        components.push(json!({
            "type": "application",
            "bom-ref": bref,
            "name": b.package,
            "version": b.version,
            "hashes": hashes(&b.sha256),
            "purl": host_deb_purl(b),
            "properties": [prop("cairn:esp:path", &b.path), prop("cairn:role", "boot-loader")],
        }));
    }
    for (kind, d) in other_inputs(m) {
        let bref = format!("input:{kind}");
        contains.push(bref.clone());
        components.push(json!({
            "type": "application",
            "bom-ref": bref,
            "name": kind,
            "hashes": hashes(&d),
        }));
    }
    if let Some(cl) = &m.sbom.cluster {
        let mut seen = std::collections::BTreeSet::new();
        for b in &cl.binaries {
            let bref = format!("go-binary:{}", b.name);
            contains.push(bref.clone());
            components.push(json!({
                "type": "application",
                "bom-ref": bref,
                "name": b.name,
                "properties": [prop("cairn:go:main", &b.main), prop("cairn:go:toolchain", &cl.go_version)],
            }));
            let mut deps = Vec::new();
            for (path, version, sum) in &b.modules {
                let module = crate::pipeline::cluster::GoModule {
                    path: path.clone(),
                    version: version.clone(),
                    sum: sum.clone(),
                };
                let mref = format!("go:{path}@{version}");
                deps.push(mref.clone());
                if seen.insert(mref.clone()) {
                    let mut v = json!({
                        "type": "library",
                        "bom-ref": mref,
                        "name": path,
                        "version": version,
                        "purl": module.purl(),
                    });
                    if !sum.is_empty() {
                        v["properties"] = json!([prop("cairn:go:sum", sum)]);
                    }
                    components.push(v);
                }
            }
            dependencies.push(json!({"ref": format!("go-binary:{}", b.name), "dependsOn": deps}));
        }
    }
    dependencies.insert(0, json!({"ref": "release", "dependsOn": contains}));
    let mut doc = json!({
        "$schema": "http://cyclonedx.org/schema/bom-1.6.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": "",
        "version": 1,
        "metadata": {
            "timestamp": crate::host::time::rfc3339(m.source_date_epoch),
            "tools": {"components": [{
                "type": "application",
                "name": "cairn",
                "version": m.builder.cairn_version,
            }]},
            "component": {
                "type": "operating-system",
                "bom-ref": "release",
                "name": m.image.name,
                "version": m.image.version,
            },
            "properties": [prop("cairn:timestamp", "the release's SOURCE_DATE_EPOCH, not the build's wall clock")],
        },
        "components": components,
        "dependencies": dependencies,
    });
    // `[audit]`: the release carries an audit partition (docs/audit.md),
    // a property of the operating system as shipped, not a component.
    if let Some(a) = &m.audit {
        doc["metadata"]["component"]["properties"] = json!([
            prop("cairn:audit:partition", &a.partition),
            prop("cairn:audit:size", &a.size.to_string()),
            prop("cairn:audit:key-sha256", &a.key_sha256.hex()),
            prop("cairn:audit:record", &a.record.join(" ")),
            prop("cairn:audit:on-full", &a.on_full),
        ]);
    }
    doc["serialNumber"] = json!(uuid_of(&Sha256::of_bytes(doc.to_string().as_bytes())));
    doc
}

/// A name-based (version 5 layout) UUID URN from a digest's first 16 bytes.
fn uuid_of(d: &Sha256) -> String {
    let mut b = [0u8; 16];
    b.copy_from_slice(&d.0[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Writes both SBOMs into `dir`, named after the image; returns them as
/// the manifest lists them.
pub fn write(m: &Manifest, c: &Contents, dir: &Path) -> Result<Vec<Output>> {
    let stem = format!("{}-{}", m.image.name, m.image.version);
    let mut out = Vec::new();
    for (suffix, doc) in [(SPDX_SUFFIX, spdx(m, c)), (CDX_SUFFIX, cyclonedx(m, c))] {
        let file = format!("{stem}{suffix}");
        let mut s = serde_json::to_string_pretty(&doc)?;
        s.push('\n');
        let path = dir.join(&file);
        std::fs::write(&path, &s).with_context(|| format!("sbom: write {}", path.display()))?;
        out.push(Output {
            file,
            size: s.len() as u64,
            sha256: Sha256::of_bytes(s.as_bytes()),
        });
    }
    Ok(out)
}

/// A package as `cairn diff` compares them: where it is (`base` or
/// `image NAME`), name and architecture.
pub type PackageKey = (String, String, String);

/// The Debian packages a CycloneDX SBOM lists, by where, name and
/// architecture, with their versions.
pub fn cdx_packages(doc: &Value) -> BTreeMap<PackageKey, String> {
    let mut out = BTreeMap::new();
    fn walk(list: &Value, scope: &str, out: &mut BTreeMap<PackageKey, String>) {
        for c in list.as_array().into_iter().flatten() {
            let purl = c["purl"].as_str().unwrap_or_default();
            if purl.starts_with("pkg:deb/") {
                let arch = c["properties"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| p["name"] == "cairn:deb:architecture")
                    .and_then(|p| p["value"].as_str())
                    .unwrap_or_default();
                out.insert(
                    (
                        scope.to_string(),
                        c["name"].as_str().unwrap_or_default().to_string(),
                        arch.to_string(),
                    ),
                    c["version"].as_str().unwrap_or_default().to_string(),
                );
            }
            if c["type"] == "container" {
                let inner = format!("image {}", c["name"].as_str().unwrap_or_default());
                walk(&c["components"], &inner, out);
            }
        }
    }
    walk(&doc["components"], "base", &mut out);
    out
}

/// The most a CycloneDX file is read to (a release's SBOM is a few MiB).
const MAX_SBOM: u64 = 64 << 20;

/// The CycloneDX SBOM in a release folder, if it has one.
pub fn read_cdx(dir: &Path) -> Result<Option<Value>> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(None);
    };
    let mut names: Vec<_> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(CDX_SUFFIX))
        .collect();
    names.sort();
    let Some(name) = names.first() else {
        return Ok(None);
    };
    let p = dir.join(name);
    // Inside a release folder under review: no symlink out, no FIFO, capped.
    let bytes = crate::host::untrusted::read(&p, crate::host::untrusted::Links::Refuse, MAX_SBOM)?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .with_context(|| format!("{} is not JSON", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../../tests/fixtures/manifest-a.json");

    fn manifest() -> Manifest {
        let mut m: Manifest = serde_json::from_str(FIXTURE).expect("fixture is a manifest");
        m.sbom
            .images
            .push(crate::pipeline::workloads::InstalledImage {
                name: "inference".into(),
                reference: "cairn.local/inference:pinned".into(),
                digest: Sha256::of_bytes(b"image"),
                source: "built from Debian packages: python3".into(),
            });
        m.sbom
            .models
            .push(crate::pipeline::workloads::InstalledModel {
                name: "iris".into(),
                sha256: Sha256::of_bytes(b"model"),
                path: "/usr/share/cairn/models/iris".into(),
            });
        m
    }

    const STATUS: &str = "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc\nVersion: 2.36-9+deb12u7\nDescription: x\n continued: not a field\n\nPackage: bsdutils\nStatus: install ok installed\nArchitecture: amd64\nSource: util-linux (2.38.1-5+deb12u3)\nVersion: 1:2.38.1-5+deb12u3\n\nPackage: gone\nStatus: deinstall ok config-files\nArchitecture: all\nVersion: 1\n\nPackage: python3\nStatus: install ok installed\nArchitecture: amd64\nSource: python3-defaults\nVersion: 3.11.2-1+b1\n";

    fn contents() -> Contents {
        let locked: LockedIndex = [(
            ("libc6".into(), "2.36-9+deb12u7".into(), "amd64".into()),
            (
                Sha256::of_bytes(b"deb"),
                "http://deb.debian.org/debian/pool/main/g/glibc/libc6_2.36-9+deb12u7_amd64.deb"
                    .into(),
            ),
        )]
        .into_iter()
        .collect();
        let distro = parse_os_release(Some(
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
        ));
        Contents {
            base: parse_dpkg_status(STATUS, &locked)
                .into_iter()
                .filter(|p| p.name != "python3")
                .collect(),
            kernel_sha256: Sha256::of_bytes(b"vmlinuz"),
            kernel_package: Some("linux-image-6.1.0-50-amd64".into()),
            images: vec![ImageContents {
                name: "inference".into(),
                distro: distro.clone(),
                packages: parse_dpkg_status(STATUS, &LockedIndex::new()),
            }],
            distro,
        }
    }

    #[test]
    fn dpkg_status_sources_and_lock_digests() {
        let c = contents();
        let names: Vec<&str> = c.base.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["bsdutils", "libc6"]);
        assert_eq!(c.base[0].source, "util-linux");
        assert_eq!(c.base[0].source_version, "2.38.1-5+deb12u3");
        assert_eq!(c.base[1].source, "glibc");
        assert_eq!(c.base[1].source_version, "2.36-9+deb12u7");
        assert_eq!(c.base[1].sha256, Some(Sha256::of_bytes(b"deb")));
        assert_eq!(c.base[0].sha256, None);
    }

    #[test]
    fn purls() {
        let c = contents();
        assert_eq!(
            deb_purl(&c.base[1], &c.distro),
            "pkg:deb/debian/libc6@2.36-9%2Bdeb12u7?arch=amd64&distro=debian-12&upstream=glibc"
        );
        assert_eq!(
            deb_purl(&c.base[0], &c.distro),
            "pkg:deb/debian/bsdutils@1:2.38.1-5%2Bdeb12u3?arch=amd64&distro=debian-12&upstream=util-linux"
        );
        let same = DebPackage {
            source: "apt".into(),
            name: "apt".into(),
            ..c.base[0].clone()
        };
        assert!(deb_purl(&same, &c.distro).ends_with("?arch=amd64&distro=debian-12"));
        let sid = Distro {
            id: "debian".into(),
            version_id: String::new(),
        };
        assert!(!deb_purl(&same, &sid).contains("distro="));
    }

    #[test]
    fn deterministic_and_content_named() {
        let (m, c) = (manifest(), contents());
        assert_eq!(spdx(&m, &c), spdx(&m, &c));
        assert_eq!(cyclonedx(&m, &c), cyclonedx(&m, &c));
        let serial = cyclonedx(&m, &c)["serialNumber"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(serial.starts_with("urn:uuid:"), "{serial}");
        assert_eq!(serial.len(), "urn:uuid:".len() + 36);
        // Control: one package version changes both documents and their names.
        let mut c2 = c.clone();
        c2.images[0].packages[2].version = "3.11.2-1+b2".into();
        assert_ne!(
            spdx(&m, &c)["documentNamespace"],
            spdx(&m, &c2)["documentNamespace"]
        );
        assert_ne!(
            cyclonedx(&m, &c)["serialNumber"],
            cyclonedx(&m, &c2)["serialNumber"]
        );
        let (a, b) = (
            cdx_packages(&cyclonedx(&m, &c)),
            cdx_packages(&cyclonedx(&m, &c2)),
        );
        let key = (
            "image inference".to_string(),
            "python3".to_string(),
            "amd64".to_string(),
        );
        assert_eq!(a[&key], "3.11.2-1+b1");
        assert_eq!(b[&key], "3.11.2-1+b2");
        assert_eq!(a.len(), 5, "{a:?}");
    }

    #[test]
    fn spdx_shape() {
        let (m, c) = (manifest(), contents());
        let d = spdx(&m, &c);
        assert_eq!(d["spdxVersion"], "SPDX-2.3");
        assert_eq!(d["creationInfo"]["created"], "2025-01-01T00:00:00Z");
        let pk = d["packages"].as_array().unwrap();
        let ids: Vec<&str> = pk.iter().map(|p| p["SPDXID"].as_str().unwrap()).collect();
        let mut uniq = ids.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), ids.len(), "SPDX ids are unique");
        for id in &ids {
            assert!(
                id.strip_prefix("SPDXRef-")
                    .unwrap()
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'),
                "{id}"
            );
        }
        let python = pk
            .iter()
            .find(|p| p["name"] == "python3")
            .expect("the image's python3");
        assert_eq!(
            python["externalRefs"][0]["referenceLocator"],
            "pkg:deb/debian/python3@3.11.2-1%2Bb1?arch=amd64&distro=debian-12&upstream=python3-defaults"
        );
        let rels = d["relationships"].as_array().unwrap();
        let image_id = pk.iter().find(|p| p["name"] == "inference").unwrap()["SPDXID"].clone();
        assert!(rels.iter().any(|r| r["spdxElementId"] == image_id
            && r["relationshipType"] == "CONTAINS"
            && r["relatedSpdxElement"] == python["SPDXID"]));
        assert!(rels
            .iter()
            .any(|r| r["spdxElementId"] == "SPDXRef-DOCUMENT"
                && r["relationshipType"] == "DESCRIBES"));
        let libc = pk
            .iter()
            .find(|p| {
                p["name"] == "libc6" && p["SPDXID"].as_str().unwrap().starts_with("SPDXRef-Deb-")
            })
            .unwrap();
        assert_eq!(
            libc["checksums"][0]["checksumValue"],
            Sha256::of_bytes(b"deb").hex()
        );
        assert!(libc["downloadLocation"]
            .as_str()
            .unwrap()
            .ends_with("_amd64.deb"));
    }

    #[test]
    fn shim_and_mok_manager_are_listed_by_digest_and_host_package() {
        let (mut m, c) = (manifest(), contents());
        let none = (spdx(&m, &c), cyclonedx(&m, &c));
        let bin = |path: &str, package: &str| crate::release::manifest::EspBinary {
            path: path.into(),
            sha256: Sha256::of_bytes(package.as_bytes()),
            package: package.into(),
            version: "1.51~1+deb12u1".into(),
        };
        m.boot.shim = Some(crate::release::manifest::ShimInfo {
            shim: bin("EFI/BOOT/BOOTX64.EFI", "shim-signed"),
            mok_manager: Some(bin("EFI/BOOT/mmx64.efi", "shim-helpers-amd64-signed")),
            uki: "EFI/BOOT/grubx64.efi".into(),
        });
        let d = spdx(&m, &c);
        let shim = d["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "shim-signed")
            .expect("shim in the SPDX document");
        assert_eq!(
            shim["checksums"][0]["checksumValue"],
            Sha256::of_bytes(b"shim-signed").hex()
        );
        assert_eq!(
            shim["externalRefs"][0]["referenceLocator"],
            "pkg:deb/debian/shim-signed@1.51~1%2Bdeb12u1?arch=amd64"
        );
        let x = cyclonedx(&m, &c);
        let comps = x["components"].as_array().unwrap();
        let mm = comps
            .iter()
            .find(|c| c["name"] == "shim-helpers-amd64-signed")
            .expect("MokManager in the CycloneDX document");
        assert_eq!(mm["bom-ref"], "efi:EFI/BOOT/mmx64.efi");
        assert!(x["dependencies"][0]["dependsOn"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "efi:EFI/BOOT/BOOTX64.EFI"));
        // Control: without shim, neither document names it.
        assert!(!none.0.to_string().contains("shim-signed"));
        assert!(!none.1.to_string().contains("shim-signed"));
    }

    #[test]
    fn cyclonedx_nests_image_packages() {
        let (m, c) = (manifest(), contents());
        let d = cyclonedx(&m, &c);
        let comps = d["components"].as_array().unwrap();
        let image = comps.iter().find(|c| c["type"] == "container").unwrap();
        assert!(image["components"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "python3"
                && p["purl"]
                    .as_str()
                    .unwrap()
                    .starts_with("pkg:deb/debian/python3@")));
        assert!(comps.iter().any(|c| c["type"] == "machine-learning-model"));
        let mut refs = Vec::new();
        fn collect(v: &Value, refs: &mut Vec<String>) {
            for c in v.as_array().into_iter().flatten() {
                refs.push(c["bom-ref"].as_str().unwrap().to_string());
                collect(&c["components"], refs);
            }
        }
        collect(&d["components"], &mut refs);
        let n = refs.len();
        refs.sort();
        refs.dedup();
        assert_eq!(n, refs.len(), "bom-refs are unique");
    }
}
