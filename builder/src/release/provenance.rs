//! provenance.json: an in-toto Statement v1 carrying SLSA Provenance v1 for
//! an output folder, so standard tooling can read what was built from what.
//! Invariant: made only from the manifest and the subjects' digests; nothing
//! depends on the build host's paths, names or clock (no startedOn or
//! finishedOn: SOURCE_DATE_EPOCH is when the *sources* are dated, not when
//! the build ran, and claiming it as a run time would be false).

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};

use crate::host::digest::Sha256;
use crate::release::manifest::{Input, Manifest};

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// Names how a cairn recipe becomes an image; versioned with the schema of
/// `externalParameters`. Defined by docs/build-type.md in cairn's own source
/// tree (the revision in `runDetails.builder.version.git`): a name this
/// project owns, not a web address someone else may hold.
pub const BUILD_TYPE: &str = "urn:cairn:build-type:recipe:v1";
/// Where the build type is defined, relative to cairn's source tree.
pub const BUILD_TYPE_DOC: &str = "docs/build-type.md";
/// The builder's identity: the same on every host. A name this project
/// owns (defined in docs/build-type.md), not a web address: cairn runs on
/// the user's own build host, and `builder.version` names the release.
pub const BUILDER_ID: &str = "urn:cairn:builder:cli:v1";
/// The conventional file name beside manifest.json.
pub const FILE_NAME: &str = "provenance.json";

/// The Statement for `m`, naming `subjects` (file name, digest) sorted by name.
pub fn statement(m: &Manifest, subjects: &[(String, Sha256)]) -> Value {
    let mut subjects: Vec<&(String, Sha256)> = subjects.iter().collect();
    subjects.sort();
    let subject: Vec<Value> = subjects
        .iter()
        .map(|(name, d)| json!({"name": name, "digest": {"sha256": d.hex()}}))
        .collect();

    let mut recipe = Map::new();
    recipe.insert("digest".into(), json!({"sha256": m.recipe.sha256.hex()}));
    if let Some(source) = m.inputs.iter().find(|i| i.kind == "recipe") {
        recipe.insert("name".into(), json!(source.source));
    }
    if let Some(lock) = m.recipe.lock_sha256 {
        recipe.insert("lockDigest".into(), json!({"sha256": lock.hex()}));
    }

    let mut st = json!({
        "_type": STATEMENT_TYPE,
        "subject": subject,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "recipe": Value::Object(recipe),
                    "image": {"name": m.image.name, "version": m.image.version},
                    "sourceDateEpoch": m.source_date_epoch,
                },
                "internalParameters": {
                    "manifestSchema": m.schema,
                    "sourceDateEpochFrom": m.source_date_epoch_from,
                    "flags": m.flags,
                    "network": m.network,
                    "kernel": {"version": m.kernel.version, "cmdline": m.kernel.cmdline},
                },
                "resolvedDependencies": m.inputs.iter().map(dependency).collect::<Vec<_>>(),
            },
            "runDetails": {
                "builder": {
                    "id": BUILDER_ID,
                    "version": {
                        "cairn": m.builder.cairn_version,
                        "git": m.builder.git_revision,
                    },
                },
                "metadata": {
                    "invocationId": invocation_id(m),
                },
                "byproducts": [{
                    "name": "dm-verity root hash",
                    "digest": {"sha256": m.verity.root_hash.hex()},
                    "annotations": {"hashAlgorithm": m.verity.hash_algorithm},
                }],
            },
        },
    });
    // `[audit]` (docs/audit.md): present only when the image keeps a trail.
    if let Some(a) = &m.audit {
        st["predicate"]["buildDefinition"]["internalParameters"]["audit"] = json!({
            "partition": a.partition,
            "size": a.size,
            "keyDigest": {"sha256": a.key_sha256.hex()},
            "record": a.record,
            "onFull": a.on_full,
        });
    }
    st
}

/// `urn:cairn:manifest:sha256:HEX`, HEX the digest of the manifest as
/// `manifest::write` writes it (so, of manifest.json): the same build
/// inputs give the same id, and the id leads to the manifest.
pub fn invocation_id(m: &Manifest) -> String {
    // Serialising plain structs of strings and numbers cannot fail; if it
    // ever did, the digest of nothing is still deterministic.
    let mut bytes = serde_json::to_vec_pretty(m).unwrap_or_default();
    bytes.push(b'\n');
    format!("urn:cairn:manifest:sha256:{}", Sha256::of_bytes(&bytes))
}

/// A manifest input as an in-toto ResourceDescriptor: a `uri` when the
/// source is a URL (a Debian mirror), else a `urn:cairn:input:` name; the
/// digest when pinned; the kind and the full source as annotations.
fn dependency(input: &Input) -> Value {
    let first = input.source.split_whitespace().next().unwrap_or_default();
    let uri = if first.contains("://") {
        first.to_string()
    } else {
        format!(
            "urn:cairn:input:{}:{}",
            urn_escape(&input.kind),
            urn_escape(&input.source)
        )
    };
    let mut d = Map::new();
    d.insert("name".into(), json!(input.source));
    d.insert("uri".into(), json!(uri));
    if let Some(sha) = input.sha256 {
        d.insert("digest".into(), json!({"sha256": sha.hex()}));
    }
    d.insert(
        "annotations".into(),
        json!({"kind": input.kind, "source": input.source}),
    );
    Value::Object(d)
}

/// Percent-encodes everything but unreserved URI characters.
fn urn_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Writes `value` as pretty JSON and a newline.
pub fn write(path: &Path, value: &Value) -> Result<()> {
    let mut s = serde_json::to_string_pretty(value)?;
    s.push('\n');
    std::fs::write(path, s).with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../../tests/fixtures/manifest-a.json");

    fn manifest() -> Manifest {
        serde_json::from_str(FIXTURE).expect("fixture is a manifest")
    }

    fn subjects() -> Vec<(String, Sha256)> {
        vec![
            ("x.raw".into(), Sha256::of_bytes(b"raw")),
            ("manifest.json".into(), Sha256::of_bytes(FIXTURE.as_bytes())),
        ]
    }

    #[test]
    fn deterministic_bytes() {
        let d = tempfile::tempdir().unwrap();
        let (p1, p2) = (d.path().join("1.json"), d.path().join("2.json"));
        write(&p1, &statement(&manifest(), &subjects())).unwrap();
        let mut reversed = subjects();
        reversed.reverse();
        write(&p2, &statement(&manifest(), &reversed)).unwrap();
        let (b1, b2) = (std::fs::read(&p1).unwrap(), std::fs::read(&p2).unwrap());
        assert_eq!(b1, b2);
        assert!(b1.ends_with(b"}\n"));
        // Control: a different manifest gives a different statement.
        let mut other = manifest();
        other.image.version.push_str("-other");
        assert_ne!(
            statement(&other, &subjects()),
            statement(&manifest(), &subjects())
        );
        assert_ne!(invocation_id(&other), invocation_id(&manifest()));
    }

    #[test]
    fn statement_shape_and_subjects() {
        let m = manifest();
        let text = serde_json::to_string(&statement(&m, &subjects())).unwrap();
        let v: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(v["_type"], STATEMENT_TYPE);
        assert_eq!(v["predicateType"], PREDICATE_TYPE);
        let subject = v["subject"].as_array().unwrap();
        assert_eq!(subject.len(), 2);
        assert_eq!(subject[0]["name"], "manifest.json");
        assert_eq!(subject[1]["name"], "x.raw");
        assert_eq!(
            subject[1]["digest"]["sha256"],
            Sha256::of_bytes(b"raw").hex()
        );
        let p = &v["predicate"];
        assert_eq!(p["buildDefinition"]["buildType"], BUILD_TYPE);
        // The definition the build type names exists, and names it.
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(BUILD_TYPE_DOC),
        )
        .expect("docs/build-type.md");
        assert!(
            doc.contains(BUILD_TYPE),
            "{BUILD_TYPE_DOC} must define {BUILD_TYPE}"
        );
        assert_eq!(
            p["buildDefinition"]["externalParameters"]["recipe"]["digest"]["sha256"],
            m.recipe.sha256.hex()
        );
        let deps = p["buildDefinition"]["resolvedDependencies"]
            .as_array()
            .unwrap();
        assert_eq!(deps.len(), m.inputs.len());
        for d in deps {
            let uri = d["uri"].as_str().unwrap();
            assert!(!uri.contains(' '), "{uri}");
        }
        assert_eq!(deps[1]["uri"], "http://deb.debian.org/debian");
        let b = &p["runDetails"]["builder"];
        assert_eq!(b["version"]["cairn"], m.builder.cairn_version);
        assert_eq!(b["version"]["git"], m.builder.git_revision);
        let id = p["runDetails"]["metadata"]["invocationId"]
            .as_str()
            .unwrap();
        assert!(id.starts_with("urn:cairn:manifest:sha256:"));
        assert!(p["runDetails"]["metadata"].get("startedOn").is_none());
    }

    #[test]
    fn invocation_id_is_digest_of_written_manifest() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("manifest.json");
        let m = manifest();
        crate::release::manifest::write(&m, &p).unwrap();
        assert_eq!(
            invocation_id(&m),
            format!("urn:cairn:manifest:sha256:{}", Sha256::of_file(&p).unwrap())
        );
    }
}
