//! `cairn inspect`: what is inside an output folder, in the order a security
//! reviewer reads it: identity, signer, root hash, kernel, flags, outputs,
//! packages. Invariant: read-only and offline; nothing here verifies the
//! signature (that is `cairn verify`), so the text says so.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::host::digest::Sha256;
use crate::host::untrusted::{self, Links};
use crate::pipeline::compose::Package;
use crate::release::manifest::{Manifest, Output};
use crate::release::sign::{SIG, SUMS};

/// The manifest's file name inside an output folder.
pub const MANIFEST: &str = "manifest.json";
/// SHA256 and SHA256.sig are small text files; refuse to slurp anything bigger.
const MAX_SUMS_FILE: u64 = 1 << 20;
/// manifest.json carries the package list; generous but bounded.
const MAX_MANIFEST: u64 = 64 << 20;

/// Everything `cairn inspect` shows; `--json` prints it as is.
#[derive(Debug, Serialize)]
pub struct Inspection {
    pub name: String,
    pub version: String,
    pub source_date_epoch: u64,
    /// SOURCE_DATE_EPOCH as UTC ISO-8601 (`2025-01-01T00:00:00Z`).
    pub build_date: String,
    /// Where SOURCE_DATE_EPOCH came from, in words (None: not recorded).
    pub source_date_epoch_from: Option<String>,
    pub cairn_version: String,
    pub git_revision: String,
    pub recipe_sha256: Sha256,
    pub signature: SignatureInfo,
    pub root_hash: Sha256,
    /// Every volume (base, apps, models): name, mount, size, root hash,
    /// inputs.
    pub volumes: Vec<crate::release::manifest::VolumeInfo>,
    pub kernel_version: String,
    pub kernel_cmdline: String,
    pub debug_console: bool,
    pub state_mode: String,
    pub firewall: String,
    /// Every entry of the manifest's `flags` object, the three above
    /// included, as text; later manifests may add flags.
    pub flags: BTreeMap<String, Value>,
    /// Other `debug_*` flags that are on (e.g. `debug_unencrypted_state`).
    pub debug_flags: Vec<String>,
    pub package_count: usize,
    pub output_count: usize,
    pub outputs: Vec<Output>,
    pub packages: Vec<Package>,
    /// `sbom.images`, if the manifest has it.
    pub oci_images: Vec<OciImage>,
    /// `sbom.policy`, if the manifest has it, as written.
    pub policy: Option<Value>,
    /// `sbom.policy`'s digest (its `digest` or `sha256` field, or the value
    /// itself when it is a string).
    pub policy_digest: Option<String>,
    /// `network`, if the manifest has it, as written.
    pub network: Option<Value>,
    /// Secure Boot certificate, predicted PCR 11, BIOS path.
    pub boot: crate::release::manifest::BootInfo,
    /// `[site]`: the site key, what a site file may set, whether one is
    /// required and the lowest serial taken.
    pub site: Option<crate::recipe::site::SiteDeclaration>,
    /// The signed template a team recipe was built on, and the team's text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<crate::recipe::governance::TemplateUse>,
    /// `[audit]`: the audit partition and the key its records are sealed to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<crate::recipe::audit::AuditInfo>,
}

/// What SHA256.sig says, without checking it against any key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum SignatureInfo {
    /// No SHA256.sig in the folder.
    Unsigned,
    /// SHA256.sig parses; `key_id` is the key number it names (hex).
    Signed {
        key_id: String,
        /// The SHA256 file in the folder equals the copy embedded in the
        /// signature (None when the folder has no SHA256 file).
        sums_file_matches: Option<bool>,
        /// manifest.json's digest equals its entry in the signed list
        /// (None when the list does not name manifest.json or does not parse).
        manifest_matches: Option<bool>,
    },
    /// SHA256.sig exists but cannot be read or parsed.
    Unreadable { error: String },
}

/// One entry of `sbom.images`: a name and a digest, whatever the other
/// fields are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OciImage {
    pub name: String,
    pub digest: Option<String>,
}

impl SignatureInfo {
    /// The signer's key id, or "unsigned" / "unreadable".
    pub fn signer(&self) -> &str {
        match self {
            SignatureInfo::Unsigned => "unsigned",
            SignatureInfo::Signed { key_id, .. } => key_id,
            SignatureInfo::Unreadable { .. } => "unreadable",
        }
    }
}

/// Reads `dir`'s manifest.json (and SHA256 / SHA256.sig when present).
/// The manifest is read once, bounded, and parsed twice from those bytes:
/// as `Manifest` (same errors as `manifest::read`) and as raw JSON for the
/// sections this version of cairn does not model. The folder is input:
/// any failure to read it is bad input (exit 2), with the whole reason.
pub fn inspect(dir: &Path) -> Result<Inspection, crate::InputError> {
    read_folder(dir).map_err(|e| crate::InputError(format!("{e:#}")))
}

fn read_folder(dir: &Path) -> Result<Inspection> {
    let manifest_path = dir.join(MANIFEST);
    // A release folder is hostile: no symlink out of it, no FIFO that
    // blocks the read, no file bigger than a manifest can be.
    let bytes = untrusted::read(&manifest_path, Links::Refuse, MAX_MANIFEST)?;
    let text = String::from_utf8(bytes)
        .with_context(|| format!("{} is not UTF-8 text", manifest_path.display()))?;
    let m: Manifest = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a cairn manifest", manifest_path.display()))?;
    let raw: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON", manifest_path.display()))?;
    let signature = signature_info(dir, &Sha256::of_bytes(text.as_bytes()));
    Ok(from_parts(m, &raw, signature))
}

/// An inspection of a manifest alone (no folder: unsigned).
pub fn from_manifest(m: Manifest, raw: &Value) -> Inspection {
    from_parts(m, raw, SignatureInfo::Unsigned)
}

fn from_parts(m: Manifest, raw: &Value, signature: SignatureInfo) -> Inspection {
    let flags: BTreeMap<String, Value> = match raw.get("flags") {
        Some(Value::Object(map)) => map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        _ => BTreeMap::from([
            ("debug_console".into(), Value::Bool(m.flags.debug_console)),
            ("firewall".into(), Value::String(m.flags.firewall.clone())),
            (
                "state_mode".into(),
                Value::String(m.flags.state_mode.clone()),
            ),
        ]),
    };
    let debug_flags = flags
        .iter()
        .filter(|(k, v)| {
            k.starts_with("debug_") && *k != "debug_console" && **v == Value::Bool(true)
        })
        .map(|(k, _)| k.clone())
        .collect();
    let policy = raw
        .pointer("/sbom/policy")
        .filter(|v| !v.is_null())
        .cloned();
    let policy_digest = policy.as_ref().and_then(digest_of);
    let base = crate::release::manifest::base_volume(&m);
    Inspection {
        build_date: iso8601_utc(m.source_date_epoch),
        source_date_epoch: m.source_date_epoch,
        source_date_epoch_from: m.source_date_epoch_from.map(|s| s.describe().to_string()),
        name: m.image.name,
        version: m.image.version,
        cairn_version: m.builder.cairn_version,
        git_revision: m.builder.git_revision,
        recipe_sha256: m.recipe.sha256,
        signature,
        root_hash: m.verity.root_hash,
        volumes: std::iter::once(base).chain(m.volumes).collect(),
        kernel_version: m.kernel.version,
        kernel_cmdline: m.kernel.cmdline,
        debug_console: m.flags.debug_console,
        state_mode: m.flags.state_mode,
        firewall: m.flags.firewall,
        flags,
        debug_flags,
        package_count: m.sbom.packages.len(),
        output_count: m.outputs.len(),
        outputs: m.outputs,
        packages: m.sbom.packages,
        oci_images: oci_images(raw),
        policy,
        policy_digest,
        network: raw
            .get("network")
            .filter(|v| !v.is_null())
            .cloned()
            .map(network_view),
        boot: m.boot,
        site: m.site,
        template: m.template,
        audit: m.audit,
    }
}

/// The manifest's network section as a reader writes addresses: the
/// static `address` ([ADDRESS, PREFIX] in the manifest) as `10.0.2.15/24`.
fn network_view(mut v: Value) -> Value {
    if let Some(a) = v.get_mut("address") {
        if let Some([Value::String(ip), Value::Number(n)]) = a.as_array().map(Vec::as_slice) {
            *a = Value::String(format!("{ip}/{n}"));
        }
    }
    v
}

/// The wide egress rules the recipe accepted, as `NET/PREFIX:PORT/PROTO`.
fn wide_egress(network: &Value) -> Vec<String> {
    let Some(rules) = network.get("wide_egress").and_then(Value::as_array) else {
        return Vec::new();
    };
    rules
        .iter()
        .map(|r| {
            let s = |k: &str| match r.get(k) {
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => "?".into(),
            };
            format!("{}/{}:{}/{}", s("net"), s("prefix"), s("port"), s("proto"))
        })
        .collect()
}

fn signature_info(dir: &Path, manifest_digest: &Sha256) -> SignatureInfo {
    let sig_path = dir.join(SIG);
    if !sig_path.exists() {
        return SignatureInfo::Unsigned;
    }
    let unreadable = |error: String| SignatureInfo::Unreadable { error };
    let data = match read_bounded(&sig_path) {
        Ok(d) => d,
        Err(e) => return unreadable(format!("{SIG}: {e:#}")),
    };
    let (sig, signed) = match crate::release::signify::Signature::parse_embedded(&data) {
        Ok(v) => v,
        Err(e) => return unreadable(format!("{SIG}: {e}")),
    };
    let sums_path = dir.join(SUMS);
    let sums_file_matches = if sums_path.is_file() {
        Some(read_bounded(&sums_path).is_ok_and(|s| s == signed))
    } else {
        None
    };
    let manifest_matches = crate::release::verify::parse_sums(signed)
        .ok()
        .and_then(|list| list.get(MANIFEST).copied())
        .map(|listed| listed == *manifest_digest);
    SignatureInfo::Signed {
        key_id: hex::encode(sig.keynum),
        sums_file_matches,
        manifest_matches,
    }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    Ok(untrusted::read(path, Links::Refuse, MAX_SUMS_FILE)?)
}

/// `sbom.images` entries as name + digest. Entries may be objects (`name`,
/// `ref`, `reference` or `image` for the name; `digest` or `sha256` for the
/// digest) or plain strings (`name@sha256:...`). Sorted by name.
pub fn oci_images(raw: &Value) -> Vec<OciImage> {
    let Some(Value::Array(items)) = raw.pointer("/sbom/images") else {
        return Vec::new();
    };
    let mut out: Vec<OciImage> = items
        .iter()
        .filter_map(|item| match item {
            Value::String(s) => Some(match s.split_once('@') {
                Some((n, d)) => OciImage {
                    name: n.to_string(),
                    digest: Some(d.to_string()),
                },
                None => OciImage {
                    name: s.clone(),
                    digest: None,
                },
            }),
            Value::Object(o) => {
                let name = ["name", "ref", "reference", "image"]
                    .iter()
                    .find_map(|k| o.get(*k).and_then(Value::as_str))
                    .map(str::to_string)
                    .unwrap_or_else(|| scalar_text(item));
                Some(OciImage {
                    name,
                    digest: digest_of(item),
                })
            }
            _ => None,
        })
        .collect();
    out.sort_by(|a, b| (&a.name, &a.digest).cmp(&(&b.name, &b.digest)));
    out
}

/// A digest out of a JSON value: a string is its own digest; an object's
/// `digest` or `sha256` field (a string, or `{ "sha256": hex }`).
pub fn digest_of(v: &Value) -> Option<String> {
    // cairn's manifest writes bare hex; show it as "sha256:HEX".
    let norm = |s: &str| {
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            format!("sha256:{s}")
        } else {
            s.to_string()
        }
    };
    match v {
        Value::String(s) => Some(norm(s)),
        Value::Object(o) => ["digest", "sha256"].iter().find_map(|k| match o.get(*k) {
            Some(Value::String(s)) => Some(norm(s)),
            Some(Value::Object(d)) => d
                .get("sha256")
                .and_then(Value::as_str)
                .map(|h| format!("sha256:{h}")),
            _ => None,
        }),
        _ => None,
    }
}

/// A JSON value as one line: strings without quotes, the rest as JSON.
pub(crate) fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (proleptic
/// Gregorian, UTC).
pub fn iso8601_utc(epoch: u64) -> String {
    crate::host::time::rfc3339(epoch)
}

/// Bytes in binary units, one decimal: `1.0 GiB`, `512 B`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// The loud line a debug image gets, near the top of the text.
pub const DEBUG_WARNING: &str =
    "!!! WARNING: DEBUG CONSOLE ENABLED: root shell on ttyS1; not for production use !!!";

impl Inspection {
    /// Text for humans: identity and trust first, then contents.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        // Every line is escaped as a whole (host::shown): a manifest
        // string holding a newline or a terminal escape stays inside its
        // own line and cannot fake another one.
        let mut line = |l: String| {
            s.push_str(&crate::host::shown::shown(&l));
            s.push('\n');
        };
        line(format!("image        {} {}", self.name, self.version));
        if self.debug_console {
            line(DEBUG_WARNING.to_string());
        }
        for f in &self.debug_flags {
            line(format!(
                "!!! WARNING: DEBUG FLAG {f} IS ON; not for production use !!!"
            ));
        }
        line(format!(
            "build date   {} (SOURCE_DATE_EPOCH {})",
            self.build_date, self.source_date_epoch
        ));
        line(format!(
            "  dated by   {}",
            self.source_date_epoch_from
                .as_deref()
                .unwrap_or("(not recorded: a manifest older than format 2)")
        ));
        line(format!(
            "built by     cairn {} (git {})",
            self.cairn_version, self.git_revision
        ));
        line(format!("recipe       sha256 {}", self.recipe_sha256));
        match &self.signature {
            SignatureInfo::Unsigned => {
                line("signer       unsigned (no SHA256.sig)".into());
            }
            SignatureInfo::Signed {
                key_id,
                sums_file_matches,
                manifest_matches,
            } => {
                line(format!(
                    "signer       key id {key_id} (not checked here: run `cairn verify DIR --pubkey KEY.pub`)"
                ));
                if *sums_file_matches == Some(false) {
                    line(
                        "!!! WARNING: SHA256 differs from the copy signed in SHA256.sig !!!".into(),
                    );
                }
                match manifest_matches {
                    Some(true) => {}
                    Some(false) => line(
                        "!!! WARNING: manifest.json does not match its digest in the signed list !!!"
                            .into(),
                    ),
                    None => line(
                        "!!! WARNING: the signed list does not cover manifest.json (or does not parse) !!!".into(),
                    ),
                }
            }
            SignatureInfo::Unreadable { error } => {
                line(format!("signer       UNREADABLE signature: {error}"));
            }
        }
        line(format!(
            "root hash    {} (the base volume's)",
            self.root_hash
        ));
        if !self.volumes.is_empty() {
            line(format!("volumes ({})", self.volumes.len()));
            for l in volume_lines(&self.volumes) {
                line(l);
            }
        }
        line(format!("kernel       {}", self.kernel_version));
        line(format!("cmdline      {}", self.kernel_cmdline));
        for l in crate::release::secureboot::inspect_lines(&self.boot) {
            line(l);
        }
        line("flags".into());
        for (k, v) in &self.flags {
            line(format!("  {k:<24} {}", scalar_text(v)));
        }
        line(format!(
            "counts       {} packages, {} outputs, {} OCI images",
            self.package_count,
            self.output_count,
            self.oci_images.len()
        ));
        line("outputs".into());
        let w = self.outputs.iter().map(|o| o.file.len()).max().unwrap_or(0);
        for o in &self.outputs {
            line(format!(
                "  {:<w$}  {:>10}  {:>14} bytes  sha256 {}",
                o.file,
                human_size(o.size),
                o.size,
                o.sha256
            ));
        }
        if !self.oci_images.is_empty() {
            line("OCI images".into());
            let w = self
                .oci_images
                .iter()
                .map(|i| i.name.len())
                .max()
                .unwrap_or(0);
            for i in &self.oci_images {
                line(format!(
                    "  {:<w$}  {}",
                    i.name,
                    i.digest.as_deref().unwrap_or("(no digest)")
                ));
            }
        }
        if let Some(p) = &self.policy {
            line(format!(
                "policy       {}",
                self.policy_digest.as_deref().unwrap_or("(no digest)")
            ));
            render_value(p, 1, &mut line);
        }
        if let Some(a) = &self.audit {
            // Debug quoting: manifest strings never reach the terminal raw.
            line(format!(
                "audit        partition {:?}, {} MiB; records {:?}; when full: {:?}; key sha256 {}; \
                 disk media only (an ISO boot records nothing)",
                a.partition,
                a.size >> 20,
                a.record,
                a.on_full,
                a.key_sha256.hex()
            ));
        }
        if let Some(d) = &self.site {
            // Debug quoting: manifest strings never reach the terminal raw.
            line(format!(
                "site         key id {:?}; site file {}; min_serial {}",
                d.key_id,
                if d.required {
                    "REQUIRED (the image halts without one)"
                } else {
                    "optional"
                },
                d.min_serial
            ));
            if !d.image.is_empty() {
                line(format!(
                    "  bound to   image {:?} version {:?}",
                    d.image, d.version
                ));
            }
            line(format!("  allow      {:?}", d.allow));
            if d.allow.iter().any(|a| a == "role") {
                line(format!(
                    "  roles      {:?}: the role a site file may set (none set: \"server\")",
                    d.roles
                ));
            }
        }
        if let Some(t) = &self.template {
            // Debug quoting: manifest strings never reach the terminal raw.
            line(format!(
                "template     {:?} {:?}, signed by key {:?}, sha256 {:?}",
                t.name, t.version, t.key_id, t.sha256
            ));
            line(format!(
                "team         recipe sha256 {:?}, the team's part:",
                t.team_sha256
            ));
            for l in t.team.lines().filter(|l| !l.trim().is_empty()) {
                line(format!("  {l:?}"));
            }
        }
        if let Some(n) = &self.network {
            line("network".into());
            render_value(n, 1, &mut line);
            for w in wide_egress(n) {
                line(format!("  WIDE egress (allowed by allow_wide = true): {w}"));
            }
        }
        line(format!("packages ({})", self.package_count));
        let wn = self
            .packages
            .iter()
            .map(|p| p.name.len())
            .max()
            .unwrap_or(0);
        let wv = self
            .packages
            .iter()
            .map(|p| p.version.len())
            .max()
            .unwrap_or(0);
        for p in &self.packages {
            line(format!(
                "  {:<wn$}  {:<wv$}  {}",
                p.name, p.version, p.architecture
            ));
        }
        s
    }
}

/// One line per volume (name, kind, mount, size, compression, root hash)
/// and one per input it is made from; `diff` uses the same words.
pub fn volume_lines(vols: &[crate::release::manifest::VolumeInfo]) -> Vec<String> {
    let w = vols.iter().map(|v| v.name.len()).max().unwrap_or(0);
    let mut out = Vec::new();
    for v in vols {
        out.push(format!(
            "  {:<w$}  {} {}  {:>10}  {}  root hash {}",
            v.name,
            v.kind,
            v.mount,
            human_size(v.data_size),
            v.compression,
            v.root_hash
        ));
        for i in &v.inputs {
            out.push(format!(
                "  {:<w$}    from {} {} sha256 {}",
                "",
                i.kind,
                i.source,
                i.sha256.map(|d| d.hex()).unwrap_or_else(|| "-".into())
            ));
        }
    }
    out
}

/// Any JSON as indented `key: value` / `- item` lines, so manifest sections
/// this version of cairn does not know still read sensibly.
fn render_value(v: &Value, depth: usize, line: &mut dyn FnMut(String)) {
    let pad = "  ".repeat(depth);
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let empty = match v {
                    Value::Object(m) => m.is_empty(),
                    Value::Array(a) => a.is_empty(),
                    _ => true,
                };
                if !empty {
                    line(format!("{pad}{k}:"));
                    render_value(v, depth + 1, line);
                } else {
                    line(format!("{pad}{k}: {}", scalar_text(v)));
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::Object(m) if !m.is_empty() => {
                        // YAML style: the first field shares the `- ` line.
                        let mut first = true;
                        render_value(item, depth + 1, &mut |l: String| {
                            if first {
                                first = false;
                                line(format!("{pad}- {}", l.trim_start()));
                            } else {
                                line(l);
                            }
                        });
                    }
                    Value::Array(a) if !a.is_empty() => {
                        line(format!("{pad}-"));
                        render_value(item, depth + 1, line);
                    }
                    other => line(format!("{pad}- {}", scalar_text(other))),
                }
            }
        }
        other => line(format!("{pad}{}", scalar_text(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A release folder is hostile: a FIFO or a symlink named manifest.json
    /// is refused at once (never waited on, never followed); control: the
    /// same bytes as a regular file are read.
    #[test]
    fn manifest_that_is_a_fifo_or_symlink_is_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(MANIFEST);
        crate::host::sys::mkfifo(&path, 0o600).unwrap();
        let e = format!("{:#}", inspect(d.path()).unwrap_err());
        assert!(e.contains("manifest.json"), "{e}");
        std::fs::remove_file(&path).unwrap();
        let outside = d.path().join("elsewhere.json");
        std::fs::write(&outside, "{}").unwrap();
        std::os::unix::fs::symlink(&outside, &path).unwrap();
        let e = format!("{:#}", inspect(d.path()).unwrap_err());
        assert!(e.contains("symlink") || e.contains("link"), "{e}");
        // Control: a regular file gets as far as parsing.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "{}").unwrap();
        let e = format!("{:#}", inspect(d.path()).unwrap_err());
        assert!(e.contains("is not a cairn manifest"), "{e}");
    }

    /// The manifest records `[site] required` and `min_serial`; inspect
    /// shows them (and an old manifest without them reads as optional, 0).
    #[test]
    fn site_requirement_and_serial_floor_are_shown() {
        let fresh = || -> Manifest {
            serde_json::from_str(include_str!("../../tests/fixtures/manifest-a.json")).unwrap()
        };
        let mut m = fresh();
        let mut d = crate::recipe::site::SiteDeclaration {
            allow: vec!["hostname".into()],
            ingress: vec![],
            key_id: "0102030405060708".into(),
            public_key: String::new(),
            key_path: Default::default(),
            required: true,
            min_serial: 7,
            image: "tiny".into(),
            version: "1.2.0".into(),
            roles: crate::recipe::site::default_roles(),
        };
        m.site = Some(d.clone());
        let raw = serde_json::to_value(&m).unwrap();
        assert_eq!(raw["site"]["required"], true);
        assert_eq!(raw["site"]["min_serial"], 7);
        let text = from_manifest(m, &raw).render_text();
        assert!(
            text.contains("site         key id \"0102030405060708\"; site file REQUIRED (the image halts without one); min_serial 7"),
            "{text}"
        );
        assert!(
            text.contains("  bound to   image \"tiny\" version \"1.2.0\""),
            "{text}"
        );
        // Control: not required.
        d.required = false;
        let mut m = fresh();
        m.site = Some(d.clone());
        let text = from_manifest(m, &raw).render_text();
        assert!(text.contains("site file optional; min_serial 7"), "{text}");
        // No `role` in allow: no roles line (control for the one below).
        assert!(!text.contains("  roles "), "{text}");
        d.allow.push("role".into());
        d.roles = vec!["server".into(), "agent".into()];
        let mut m = fresh();
        m.site = Some(d);
        let raw_roles = serde_json::to_value(&m).unwrap();
        assert_eq!(
            raw_roles["site"]["roles"],
            serde_json::json!(["server", "agent"])
        );
        let text = from_manifest(m, &raw_roles).render_text();
        assert!(
            text.contains("  roles      [\"server\", \"agent\"]: the role a site file may set"),
            "{text}"
        );
        // An older manifest's [site] without the new fields still reads.
        let mut old = raw.clone();
        for k in ["required", "min_serial", "image", "version", "roles"] {
            old["site"].as_object_mut().unwrap().remove(k);
        }
        let back: Manifest = serde_json::from_value(old).unwrap();
        let s = back.site.unwrap();
        assert!(!s.required);
        assert_eq!(s.min_serial, 0);
        assert_eq!(s.roles, ["server"]);
    }

    /// An `[audit]` image's manifest shows its trail; one without shows none.
    #[test]
    fn audit_partition_is_shown() {
        let mut m: Manifest =
            serde_json::from_str(include_str!("../../tests/fixtures/manifest-a.json")).unwrap();
        let raw = serde_json::to_value(&m).unwrap();
        // Control: no [audit], no line and no JSON key.
        assert!(!from_manifest(m, &raw).render_text().contains("audit "));
        assert!(raw.get("audit").is_none());
        m = serde_json::from_value(raw.clone()).unwrap();
        m.audit = Some(crate::recipe::audit::AuditInfo {
            partition: "cairn-audit".into(),
            size: 16 << 20,
            recipient: "age1x".into(),
            key_sha256: Sha256::of_bytes(b"age1x"),
            record: vec!["boot".into(), "service".into()],
            on_full: "halt".into(),
        });
        let raw = serde_json::to_value(&m).unwrap();
        assert_eq!(raw["audit"]["on_full"], "halt");
        let text = from_manifest(m, &raw).render_text();
        assert!(
            text.contains("audit        partition \"cairn-audit\", 16 MiB; records [\"boot\", \"service\"]; when full: \"halt\""),
            "{text}"
        );
    }

    #[test]
    fn wide_egress_is_marked() {
        let n = serde_json::json!({"egress": [], "wide_egress": [{"net": "0.0.0.0", "prefix": 0, "port": 443, "proto": "tcp"}]});
        assert_eq!(wide_egress(&n), vec!["0.0.0.0/0:443/tcp".to_string()]);
        // Control: no wide rule, no mark.
        assert!(wide_egress(&serde_json::json!({"egress": []})).is_empty());
    }

    #[test]
    fn network_address_reads_as_cidr() {
        let v = serde_json::json!({"address": ["10.0.2.15", 24], "gateway": "10.0.2.2", "egress": [], "ingress": []});
        let mut m: Manifest =
            serde_json::from_str(include_str!("../../tests/fixtures/manifest-a.json")).unwrap();
        m.network.address = Some(("10.0.2.15".parse().unwrap(), 24));
        let mut raw = serde_json::to_value(&m).unwrap();
        raw["network"] = v;
        let i = from_manifest(m, &raw);
        assert_eq!(i.network.as_ref().unwrap()["address"], "10.0.2.15/24");
        let text = i.render_text();
        assert!(text.contains("address: 10.0.2.15/24"), "{text}");
        assert!(!text.contains("- 24"), "{text}");
        assert!(text.contains("  dated by   (not recorded"), "{text}");
        // Control: no address stays null.
        assert_eq!(
            network_view(serde_json::json!({"address": null}))["address"],
            Value::Null
        );
    }

    #[test]
    fn iso8601_known_dates() {
        assert_eq!(iso8601_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601_utc(1_735_689_600), "2025-01-01T00:00:00Z");
        assert_eq!(iso8601_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601_utc(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(iso8601_utc(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(1 << 30), "1.0 GiB");
    }

    #[test]
    fn images_from_objects_and_strings() {
        let raw = serde_json::json!({"sbom": {"images": [
            {"name": "b", "digest": "sha256:bb", "size": 3},
            "a@sha256:aa",
            {"ref": "c", "sha256": {"sha256": "cc"}},
            42
        ]}});
        let got = oci_images(&raw);
        let names: Vec<_> = got
            .iter()
            .map(|i| (i.name.as_str(), i.digest.as_deref()))
            .collect();
        assert_eq!(
            names,
            [
                ("a", Some("sha256:aa")),
                ("b", Some("sha256:bb")),
                ("c", Some("sha256:cc"))
            ]
        );
        assert!(oci_images(&serde_json::json!({"sbom": {}})).is_empty());
    }
}
