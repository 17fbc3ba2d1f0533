//! `cairn diff A B`: what changed between two output folders, for a reviewer
//! deciding whether a new release may replace an old one: packages, OCI
//! images, policy, flags, kernel, outputs. Invariant: built only from the two
//! manifests (and signatures), so it is as fast for 10 GiB images as for 10 MiB.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;
use serde_json::Value;

use crate::pipeline::compose::Package;
use crate::release::inspect::{human_size, inspect, scalar_text, Inspection, OciImage};

/// A value that differs between A and B.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub a: String,
    pub b: String,
}

/// A named field present in A, B or both, with different values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    pub field: String,
    pub a: Option<String>,
    pub b: Option<String>,
}

/// A package (or OCI image) whose version (digest) differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionChange {
    pub name: String,
    /// The package architecture; empty for OCI images.
    pub architecture: String,
    pub a: String,
    pub b: String,
}

/// An output file whose size or digest differs, or that only one side has.
/// Files are matched by name with the `NAME-VERSION` stem taken off, so
/// `x-1.raw` in A pairs with `x-2.raw` in B.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutputChange {
    pub file_a: Option<String>,
    pub file_b: Option<String>,
    pub size_a: Option<u64>,
    pub size_b: Option<u64>,
    /// size B - size A (a missing side counts as 0).
    pub delta: i128,
    pub sha256_changed: bool,
}

#[derive(Debug, Serialize)]
pub struct Diff {
    /// `NAME VERSION` of each side.
    pub a: String,
    pub b: String,
    pub image: Option<Change>,
    pub builder: Option<Change>,
    pub recipe_sha256: Option<Change>,
    pub signer: Option<Change>,
    pub root_hash: Option<Change>,
    /// Model volumes added, removed or changed (by name); each side as
    /// `kind mount size compression root hash, from inputs`.
    pub volumes: Vec<FieldChange>,
    /// The volumes both sides have unchanged, by name.
    pub volumes_unchanged: Vec<String>,
    pub kernel_version: Option<Change>,
    pub kernel_cmdline: Option<Change>,
    pub flags: Vec<FieldChange>,
    pub packages_added: Vec<Package>,
    pub packages_removed: Vec<Package>,
    pub packages_changed: Vec<VersionChange>,
    pub images_added: Vec<OciImage>,
    pub images_removed: Vec<OciImage>,
    pub images_changed: Vec<VersionChange>,
    pub policy_digest: Option<FieldChange>,
    /// Other `sbom.policy` fields that differ (dotted paths).
    pub policy: Vec<FieldChange>,
    /// `network` fields that differ (dotted paths).
    pub network: Vec<FieldChange>,
    /// `boot` fields that differ (dotted paths): the Secure Boot
    /// certificate, the PCR 11 predictions, the BIOS path, shim's digests
    /// and versions.
    pub boot: Vec<FieldChange>,
    pub outputs: Vec<OutputChange>,
    /// Package differences of the CycloneDX SBOMs (images included).
    pub sbom: Vec<SbomChange>,
    /// Releases on governed templates: the template and the team's lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<crate::release::diff_team::TeamDiff>,
}

/// Compares the output folders `a` and `b` (their manifests and signers).
/// Both are input: a folder that cannot be read is bad input (exit 2).
pub fn diff(a: &Path, b: &Path) -> Result<Diff, crate::InputError> {
    compare_folders(a, b).map_err(|e| crate::InputError(format!("{e:#}")))
}

fn compare_folders(a: &Path, b: &Path) -> Result<Diff> {
    let mut d = compare(&inspect(a)?, &inspect(b)?);
    d.sbom = sbom_changes(
        crate::release::sbom::read_cdx(a)?.as_ref(),
        crate::release::sbom::read_cdx(b)?.as_ref(),
    );
    Ok(d)
}

/// One Debian package that differs between the two CycloneDX SBOMs: where
/// (`base` or `image NAME`), and its version on each side (None: absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SbomChange {
    pub scope: String,
    pub name: String,
    pub architecture: String,
    pub a: Option<String>,
    pub b: Option<String>,
}

/// The package differences of two CycloneDX SBOMs, the packages inside
/// OCI images included; nothing when either folder has none.
pub fn sbom_changes(a: Option<&Value>, b: Option<&Value>) -> Vec<SbomChange> {
    let (Some(a), Some(b)) = (a, b) else {
        return Vec::new();
    };
    let (a, b) = (
        crate::release::sbom::cdx_packages(a),
        crate::release::sbom::cdx_packages(b),
    );
    let keys: std::collections::BTreeSet<_> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| SbomChange {
            scope: k.0.clone(),
            name: k.1.clone(),
            architecture: k.2.clone(),
            a: a.get(k).cloned(),
            b: b.get(k).cloned(),
        })
        .collect()
}

/// Compares two inspections; `diff` without the file reading.
pub fn compare(a: &Inspection, b: &Inspection) -> Diff {
    let change = |x: String, y: String| (x != y).then_some(Change { a: x, b: y });
    let (packages_added, packages_removed, packages_changed) = packages(&a.packages, &b.packages);
    let (images_added, images_removed, images_changed) = images(&a.oci_images, &b.oci_images);
    let policy_digest = (a.policy_digest != b.policy_digest).then(|| FieldChange {
        field: "digest".into(),
        a: a.policy_digest.clone(),
        b: b.policy_digest.clone(),
    });
    let policy = field_changes(&flatten(a.policy.as_ref()), &flatten(b.policy.as_ref()))
        .into_iter()
        .filter(|c| !is_digest_path(&c.field))
        .collect();
    Diff {
        a: format!("{} {}", a.name, a.version),
        b: format!("{} {}", b.name, b.version),
        image: change(
            format!("{} {}", a.name, a.version),
            format!("{} {}", b.name, b.version),
        ),
        builder: change(
            format!("cairn {} (git {})", a.cairn_version, a.git_revision),
            format!("cairn {} (git {})", b.cairn_version, b.git_revision),
        ),
        recipe_sha256: change(a.recipe_sha256.hex(), b.recipe_sha256.hex()),
        signer: change(
            a.signature.signer().to_string(),
            b.signature.signer().to_string(),
        ),
        root_hash: change(a.root_hash.hex(), b.root_hash.hex()),
        volumes: field_changes(&volume_map(a), &volume_map(b)),
        volumes_unchanged: {
            let (ma, mb) = (volume_map(a), volume_map(b));
            ma.iter()
                .filter(|(k, v)| mb.get(*k) == Some(v))
                .map(|(k, _)| k.clone())
                .collect()
        },
        kernel_version: change(a.kernel_version.clone(), b.kernel_version.clone()),
        kernel_cmdline: change(
            cmdline_without_roothash(&a.kernel_cmdline),
            cmdline_without_roothash(&b.kernel_cmdline),
        )
        .map(|_| Change {
            a: a.kernel_cmdline.clone(),
            b: b.kernel_cmdline.clone(),
        }),
        flags: field_changes(
            &a.flags
                .iter()
                .map(|(k, v)| (k.clone(), scalar_text(v)))
                .collect(),
            &b.flags
                .iter()
                .map(|(k, v)| (k.clone(), scalar_text(v)))
                .collect(),
        ),
        packages_added,
        packages_removed,
        packages_changed,
        images_added,
        images_removed,
        images_changed,
        policy_digest,
        policy,
        network: field_changes(&flatten(a.network.as_ref()), &flatten(b.network.as_ref())),
        boot: field_changes(&boot_fields(a), &boot_fields(b)),
        outputs: outputs(a, b),
        sbom: Vec::new(),
        team: crate::release::diff_team::team_diff(a.template.as_ref(), b.template.as_ref()),
    }
}

/// Each volume as one line of text, by name.
fn volume_map(i: &Inspection) -> BTreeMap<String, String> {
    i.volumes
        .iter()
        .map(|v| {
            let inputs: Vec<String> = v
                .inputs
                .iter()
                .map(|x| {
                    format!(
                        "{} {} sha256 {}",
                        x.kind,
                        x.source,
                        x.sha256.map(|d| d.hex()).unwrap_or_else(|| "-".into())
                    )
                })
                .collect();
            (
                v.name.clone(),
                format!(
                    "{} {} {} {} root hash {}, from {}",
                    v.kind,
                    v.mount,
                    human_size(v.data_size),
                    v.compression,
                    v.root_hash,
                    inputs.join(", ")
                ),
            )
        })
        .collect()
}

/// The root hash (and each volume's) changes with any content change and
/// already has its own line; a command line that differs only there is not
/// a kernel change.
fn cmdline_without_roothash(cmdline: &str) -> String {
    cmdline
        .split_whitespace()
        .filter(|w| {
            !w.starts_with("cairn.roothash=")
                && !w.starts_with("roothash=")
                && !w.starts_with("cairn.volume.")
                && !w.starts_with("cairn.verity.")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn is_digest_path(field: &str) -> bool {
    matches!(
        field,
        "digest" | "sha256" | "digest.sha256" | "sha256.sha256"
    )
}

type PackageDiff = (Vec<Package>, Vec<Package>, Vec<VersionChange>);

/// Added, removed and re-versioned packages, keyed by (name, architecture),
/// each list sorted.
fn packages(a: &[Package], b: &[Package]) -> PackageDiff {
    let key = |p: &Package| (p.name.clone(), p.architecture.clone());
    let ma: BTreeMap<_, _> = a.iter().map(|p| (key(p), p)).collect();
    let mb: BTreeMap<_, _> = b.iter().map(|p| (key(p), p)).collect();
    let added = mb
        .iter()
        .filter(|(k, _)| !ma.contains_key(*k))
        .map(|(_, p)| (*p).clone())
        .collect();
    let removed = ma
        .iter()
        .filter(|(k, _)| !mb.contains_key(*k))
        .map(|(_, p)| (*p).clone())
        .collect();
    let changed = ma
        .iter()
        .filter_map(|(k, pa)| {
            let pb = mb.get(k)?;
            (pa.version != pb.version).then(|| VersionChange {
                name: k.0.clone(),
                architecture: k.1.clone(),
                a: pa.version.clone(),
                b: pb.version.clone(),
            })
        })
        .collect();
    (added, removed, changed)
}

type ImageDiff = (Vec<OciImage>, Vec<OciImage>, Vec<VersionChange>);

fn images(a: &[OciImage], b: &[OciImage]) -> ImageDiff {
    let ma: BTreeMap<_, _> = a.iter().map(|i| (i.name.clone(), i)).collect();
    let mb: BTreeMap<_, _> = b.iter().map(|i| (i.name.clone(), i)).collect();
    let added = mb
        .iter()
        .filter(|(k, _)| !ma.contains_key(*k))
        .map(|(_, i)| (*i).clone())
        .collect();
    let removed = ma
        .iter()
        .filter(|(k, _)| !mb.contains_key(*k))
        .map(|(_, i)| (*i).clone())
        .collect();
    let changed = ma
        .iter()
        .filter_map(|(k, ia)| {
            let ib = mb.get(k)?;
            (ia.digest != ib.digest).then(|| VersionChange {
                name: k.clone(),
                architecture: String::new(),
                a: ia.digest.clone().unwrap_or_else(|| "(no digest)".into()),
                b: ib.digest.clone().unwrap_or_else(|| "(no digest)".into()),
            })
        })
        .collect();
    (added, removed, changed)
}

fn outputs(a: &Inspection, b: &Inspection) -> Vec<OutputChange> {
    let keyed = |i: &Inspection| -> BTreeMap<String, (String, u64, crate::host::digest::Sha256)> {
        let stem = format!("{}-{}", i.name, i.version);
        i.outputs
            .iter()
            .map(|o| {
                let key = match o.file.strip_prefix(&stem) {
                    Some(rest) => format!("NAME-VERSION{rest}"),
                    None => o.file.clone(),
                };
                (key, (o.file.clone(), o.size, o.sha256))
            })
            .collect()
    };
    let (ka, kb) = (keyed(a), keyed(b));
    let mut keys: Vec<&String> = ka.keys().chain(kb.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let (oa, ob) = (ka.get(k), kb.get(k));
            let size_a = oa.map(|o| o.1);
            let size_b = ob.map(|o| o.1);
            let sha256_changed = oa.map(|o| o.2) != ob.map(|o| o.2);
            if size_a == size_b && !sha256_changed {
                return None;
            }
            Some(OutputChange {
                file_a: oa.map(|o| o.0.clone()),
                file_b: ob.map(|o| o.0.clone()),
                size_a,
                size_b,
                delta: i128::from(size_b.unwrap_or(0)) - i128::from(size_a.unwrap_or(0)),
                sha256_changed,
            })
        })
        .collect()
}

/// Any JSON as `dotted.path -> scalar text` (arrays by index).
/// An inspection's `boot` block as dotted paths (empty if it cannot be
/// represented, which a parsed manifest always can).
fn boot_fields(i: &Inspection) -> BTreeMap<String, String> {
    flatten(serde_json::to_value(&i.boot).ok().as_ref())
}

fn flatten(v: Option<&Value>) -> BTreeMap<String, String> {
    fn walk(v: &Value, path: String, out: &mut BTreeMap<String, String>) {
        let join = |k: &str| {
            if path.is_empty() {
                k.to_string()
            } else {
                format!("{path}.{k}")
            }
        };
        match v {
            Value::Object(map) if !map.is_empty() => {
                for (k, v) in map {
                    walk(v, join(k), out);
                }
            }
            Value::Array(items) if !items.is_empty() => {
                for (i, v) in items.iter().enumerate() {
                    walk(v, join(&i.to_string()), out);
                }
            }
            other => {
                out.insert(path, scalar_text(other));
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Some(v) = v {
        walk(v, String::new(), &mut out);
    }
    out
}

fn field_changes(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<FieldChange> {
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| FieldChange {
            field: k.clone(),
            a: a.get(k).cloned(),
            b: b.get(k).cloned(),
        })
        .collect()
}

fn signed_size(delta: i128) -> String {
    let sign = if delta < 0 { "-" } else { "+" };
    let mag = delta.unsigned_abs();
    let mag = u64::try_from(mag)
        .map(human_size)
        .unwrap_or_else(|_| mag.to_string());
    format!("{sign}{mag} ({delta:+} bytes)")
}

impl Diff {
    /// True when the two folders hold the same image as far as the
    /// manifests, signers and outputs tell.
    pub fn is_empty(&self) -> bool {
        self.image.is_none()
            && self.builder.is_none()
            && self.recipe_sha256.is_none()
            && self.signer.is_none()
            && self.root_hash.is_none()
            && self.volumes.is_empty()
            && self.kernel_version.is_none()
            && self.kernel_cmdline.is_none()
            && self.flags.is_empty()
            && self.packages_added.is_empty()
            && self.packages_removed.is_empty()
            && self.packages_changed.is_empty()
            && self.images_added.is_empty()
            && self.images_removed.is_empty()
            && self.images_changed.is_empty()
            && self.policy_digest.is_none()
            && self.policy.is_empty()
            && self.network.is_empty()
            && self.boot.is_empty()
            && self.outputs.is_empty()
            && self.sbom.is_empty()
            && self.team.as_ref().map_or(true, |t| t.is_empty())
    }

    /// Text for humans: `-` lines are A, `+` lines are B.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        // Every line is escaped as a whole (host::shown): a manifest
        // string holding a newline or a terminal escape stays inside its
        // own line and cannot fake another one.
        let mut line = |l: String| {
            s.push_str(&crate::host::shown::shown(&l));
            s.push('\n');
        };
        line(format!("--- a: {}", self.a));
        line(format!("+++ b: {}", self.b));
        if self.is_empty() {
            line("no differences".into());
            return s;
        }
        // On a template, the team's part first: what a reviewer of a team
        // release asks about.
        for l in self.team.iter().flat_map(|t| t.lines()) {
            line(l);
        }
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "(absent)".into());
        let mut change = |title: &str, c: &Option<Change>| {
            if let Some(c) = c {
                line(format!("{title}:"));
                line(format!("  - {}", c.a));
                line(format!("  + {}", c.b));
            }
        };
        change("image", &self.image);
        change("signer", &self.signer);
        change("builder", &self.builder);
        change("recipe sha256", &self.recipe_sha256);
        change("root hash", &self.root_hash);
        change("kernel version", &self.kernel_version);
        change("kernel cmdline", &self.kernel_cmdline);
        if !self.volumes.is_empty() {
            line("volumes:".into());
            for c in &self.volumes {
                line(format!("  {}:", c.field));
                line(format!("    - {}", opt(&c.a)));
                line(format!("    + {}", opt(&c.b)));
            }
            for n in &self.volumes_unchanged {
                line(format!("  {n}: unchanged"));
            }
        }
        let mut fields = |title: &str, changes: &[FieldChange]| {
            if !changes.is_empty() {
                line(format!("{title}:"));
                for c in changes {
                    line(format!("  {}: {} -> {}", c.field, opt(&c.a), opt(&c.b)));
                }
            }
        };
        fields("flags", &self.flags);
        fields(
            "policy",
            &self
                .policy_digest
                .iter()
                .chain(&self.policy)
                .cloned()
                .collect::<Vec<_>>(),
        );
        fields("network", &self.network);
        fields("boot", &self.boot);
        let total =
            self.packages_added.len() + self.packages_removed.len() + self.packages_changed.len();
        if total > 0 {
            line(format!(
                "packages: {} added, {} removed, {} changed",
                self.packages_added.len(),
                self.packages_removed.len(),
                self.packages_changed.len()
            ));
            for p in &self.packages_added {
                line(format!("  + {} {} {}", p.name, p.version, p.architecture));
            }
            for p in &self.packages_removed {
                line(format!("  - {} {} {}", p.name, p.version, p.architecture));
            }
            for c in &self.packages_changed {
                line(format!(
                    "  ~ {} {} -> {} {}",
                    c.name, c.a, c.b, c.architecture
                ));
            }
        }
        let total = self.images_added.len() + self.images_removed.len() + self.images_changed.len();
        if total > 0 {
            line(format!(
                "OCI images: {} added, {} removed, {} changed",
                self.images_added.len(),
                self.images_removed.len(),
                self.images_changed.len()
            ));
            for i in &self.images_added {
                line(format!("  + {} {}", i.name, opt(&i.digest)));
            }
            for i in &self.images_removed {
                line(format!("  - {} {}", i.name, opt(&i.digest)));
            }
            for c in &self.images_changed {
                line(format!("  ~ {} {} -> {}", c.name, c.a, c.b));
            }
        }
        if !self.sbom.is_empty() {
            line(format!(
                "SBOM packages (CycloneDX, images included): {} differ",
                self.sbom.len()
            ));
            for c in &self.sbom {
                let (mark, text) = match (&c.a, &c.b) {
                    (None, Some(v)) => ("+", v.clone()),
                    (Some(v), None) => ("-", v.clone()),
                    (Some(x), Some(y)) => ("~", format!("{x} -> {y}")),
                    (None, None) => ("~", String::new()),
                };
                line(format!(
                    "  {mark} [{}] {} {text} {}",
                    c.scope, c.name, c.architecture
                ));
            }
        }
        if !self.outputs.is_empty() {
            line("outputs (file, size A, size B, delta):".into());
            for o in &self.outputs {
                let file = match (&o.file_a, &o.file_b) {
                    (Some(x), Some(y)) if x != y => format!("{x} -> {y}"),
                    (Some(x), _) | (None, Some(x)) => x.clone(),
                    (None, None) => String::new(),
                };
                let size = |s: Option<u64>| s.map(human_size).unwrap_or_else(|| "(absent)".into());
                let same = if o.sha256_changed && o.delta == 0 {
                    "  (same size, content differs)"
                } else {
                    ""
                };
                line(format!(
                    "  {file}  {}  {}  {}{same}",
                    size(o.size_a),
                    size(o.size_b),
                    signed_size(o.delta)
                ));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sbom_changes_include_image_packages() {
        let doc = |v: &str| {
            serde_json::json!({"components": [
                {"type": "library", "name": "bash", "version": "5.2", "purl": "pkg:deb/debian/bash@5.2",
                 "properties": [{"name": "cairn:deb:architecture", "value": "amd64"}]},
                {"type": "container", "name": "inference", "components": [
                    {"type": "library", "name": "python3", "version": v, "purl": "pkg:deb/debian/python3@x",
                     "properties": [{"name": "cairn:deb:architecture", "value": "amd64"}]}]}]})
        };
        let (a, b) = (doc("3.11.2-1+b1"), doc("3.11.2-1+b2"));
        assert!(sbom_changes(Some(&a), Some(&a)).is_empty());
        let c = sbom_changes(Some(&a), Some(&b));
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].scope, "image inference");
        assert_eq!(c[0].name, "python3");
        assert_eq!(c[0].b.as_deref(), Some("3.11.2-1+b2"));
        assert!(sbom_changes(None, Some(&b)).is_empty());
        let d = Diff {
            sbom: c,
            ..compare_same()
        };
        let text = d.render_text();
        assert!(
            text.contains("  ~ [image inference] python3 3.11.2-1+b1 -> 3.11.2-1+b2 amd64"),
            "{text}"
        );
    }

    fn compare_same() -> Diff {
        let m: crate::release::manifest::Manifest =
            serde_json::from_str(include_str!("../../tests/fixtures/manifest-a.json")).unwrap();
        let raw: Value = serde_json::to_value(&m).unwrap();
        let i = crate::release::inspect::from_manifest(m, &raw);
        compare(&i, &i)
    }

    #[test]
    fn flatten_and_field_changes() {
        let a = serde_json::json!({"egress": ["10.0.0.1:443"], "mode": "deny"});
        let b = serde_json::json!({"egress": ["10.0.0.2:443"], "mode": "deny", "dns": false});
        let c = field_changes(&flatten(Some(&a)), &flatten(Some(&b)));
        assert_eq!(
            c,
            [
                FieldChange {
                    field: "dns".into(),
                    a: None,
                    b: Some("false".into())
                },
                FieldChange {
                    field: "egress.0".into(),
                    a: Some("10.0.0.1:443".into()),
                    b: Some("10.0.0.2:443".into())
                },
            ]
        );
        // Control: equal values give no changes.
        assert!(field_changes(&flatten(Some(&a)), &flatten(Some(&a))).is_empty());
    }

    #[test]
    fn cmdline_change_ignores_root_hash_only() {
        assert_eq!(
            cmdline_without_roothash("console=ttyS0 cairn.roothash=aa quiet"),
            cmdline_without_roothash("console=ttyS0 cairn.roothash=bb quiet")
        );
        assert_ne!(
            cmdline_without_roothash("console=ttyS0 cairn.roothash=aa"),
            cmdline_without_roothash("console=ttyS0 cairn.roothash=aa quiet")
        );
    }

    #[test]
    fn signed_sizes() {
        assert_eq!(signed_size(2048), "+2.0 KiB (+2048 bytes)");
        assert_eq!(signed_size(-10), "-10 B (-10 bytes)");
    }

    /// A shim (or PCR 11) change between releases is listed with both
    /// sides; control: the same boot block gives no boot lines.
    #[test]
    fn boot_changes_are_listed() {
        let load = || -> crate::release::manifest::Manifest {
            serde_json::from_str(include_str!("../../tests/fixtures/manifest-a.json")).unwrap()
        };
        let inspected = |pcr: &[u8]| {
            let mut m = load();
            m.boot.pcr11_sha256 = Some(crate::host::digest::Sha256::of_bytes(pcr));
            let raw = serde_json::to_value(&m).unwrap();
            crate::release::inspect::from_manifest(m, &raw)
        };
        let (a, b) = (inspected(b"a"), inspected(b"b"));
        assert!(compare(&a, &inspected(b"a")).boot.is_empty());
        let d = compare(&a, &b);
        assert_eq!(d.boot.len(), 1, "{:?}", d.boot);
        assert_eq!(d.boot[0].field, "pcr11_sha256");
        let text = d.render_text();
        assert!(
            text.contains("boot") && text.contains("pcr11_sha256"),
            "{text}"
        );
    }

    #[test]
    fn volumes_are_listed_and_a_changed_one_shows_both_sides() {
        let load = || -> crate::release::manifest::Manifest {
            serde_json::from_str(include_str!("../../tests/fixtures/manifest-a.json")).unwrap()
        };
        let vol = |name: &str, data: &[u8]| crate::release::manifest::VolumeInfo {
            name: name.into(),
            kind: "model".into(),
            mount: format!("/usr/share/cairn/models/{name}"),
            compression: "none".into(),
            inputs: vec![crate::release::manifest::Input {
                kind: "model".into(),
                source: name.into(),
                sha256: Some(crate::host::digest::Sha256::of_bytes(data)),
            }],
            root_hash: crate::host::digest::Sha256::of_bytes(&[data, b" root"].concat()),
            salt: "00".into(),
            uuid: "00000000-0000-4000-8000-000000000000".into(),
            hash_algorithm: "sha256".into(),
            data_block_size: 4096,
            hash_block_size: 4096,
            data_size: 5 << 20,
            hash_size: 4096,
            partition: format!("cairn-model-{name}"),
            hash_partition: format!("cairn-model-{name}-verity"),
            iso_image: format!("/cairn/models/{name}.squashfs"),
            iso_hash: format!("/cairn/models/{name}.verity"),
        };
        let inspected = |vols: Vec<crate::release::manifest::VolumeInfo>| {
            let mut m = load();
            m.volumes = vols;
            let raw = serde_json::to_value(&m).unwrap();
            crate::release::inspect::from_manifest(m, &raw)
        };
        let a = inspected(vec![vol("iris", b"v1"), vol("llm", b"w")]);
        let b = inspected(vec![vol("iris", b"v2"), vol("llm", b"w")]);
        let text = a.render_text();
        // The base (the root) is listed first, from the manifest's verity.
        assert!(text.contains("volumes (3)"), "{text}");
        assert_eq!(a.volumes[0].name, "base");
        assert!(
            text.contains(&format!(
                "base  base /    {:.1} MiB  zstd  root hash {}",
                a.volumes[0].data_size as f64 / 1048576.0,
                a.root_hash
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "iris  model /usr/share/cairn/models/iris     5.0 MiB  none  root hash {}",
                a.volumes[1].root_hash
            )),
            "{text}"
        );
        assert!(text.contains("from model iris sha256"), "{text}");
        // Control: the same volumes are no difference.
        assert!(compare(&a, &a).is_empty());
        let d = compare(&a, &b);
        assert!(!d.is_empty());
        assert_eq!(d.volumes.len(), 1, "{:?}", d.volumes);
        assert_eq!(d.volumes[0].field, "iris");
        assert_eq!(d.volumes_unchanged, ["base", "llm"]);
        let t = d.render_text();
        assert!(
            t.contains(&format!("root hash {}", b.volumes[1].root_hash)),
            "{t}"
        );
        assert!(t.contains("  llm: unchanged"), "{t}");
        // Another base: the base volume is the one that changed.
        let mut other = load();
        other.verity.root_hash = crate::host::digest::Sha256::of_bytes(b"another base");
        other.volumes = vec![vol("iris", b"v1"), vol("llm", b"w")];
        let raw = serde_json::to_value(&other).unwrap();
        let o = crate::release::inspect::from_manifest(other, &raw);
        let d = compare(&a, &o);
        assert_eq!(d.volumes.len(), 1, "{:?}", d.volumes);
        assert_eq!(d.volumes[0].field, "base");
        // A volume only B has.
        let c = inspected(vec![vol("iris", b"v1")]);
        let d = compare(&c, &a);
        assert_eq!(d.volumes[0].field, "llm");
        assert!(d.volumes[0].a.is_none());
    }
}
