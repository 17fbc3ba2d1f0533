//! The release's evidence read by reviewers' own tools: the SPDX SBOM by
//! spdx-tools (`pyspdxtools -i`), the CycloneDX SBOM by cyclonedx-python-lib
//! (its bundled 1.6 schema) and packageurl-python, provenance.json by the
//! in-toto Statement v1 and SLSA Provenance v1 schemas in docs/schemas, and
//! manifest.json by docs/manifest.schema.json (check-jsonschema). The tools
//! are installed by qemu-tests/validators.sh into target/venv (PyPI). Each
//! check has a control: a removed required field or a broken purl fails it.
//! Fixture documents, and the qemu-test image's (the boot tests build it;
//! without it the test fails).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use cairn::host::digest::Sha256;
use cairn::release::manifest::Manifest;
use cairn::release::sbom::{self, Contents, ImageContents, LockedIndex};
use serde_json::Value;

const FIXTURE: &str = include_str!("fixtures/manifest-a.json");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// target/venv/bin, installed once per test run.
fn venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let out = Command::new("bash")
            .arg(root().join("qemu-tests/validators.sh"))
            .output()
            .expect("run qemu-tests/validators.sh");
        assert!(
            out.status.success(),
            "qemu-tests/validators.sh failed (needs python3-venv and PyPI):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        root().join("target/venv/bin")
    })
}

/// Runs a validator; Ok(output) when it accepts, Err(output) when not.
fn run(tool: &str, args: &[&Path]) -> Result<String, String> {
    let out = Command::new(venv().join(tool))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("run {tool}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

fn spdx_ok(p: &Path) -> Result<String, String> {
    run("pyspdxtools", &[Path::new("-i"), p])
}

fn cdx_ok(p: &Path) -> Result<String, String> {
    run("python", &[&root().join("qemu-tests/check_cdx.py"), p])
}

fn schema_ok(schema: &str, p: &Path) -> Result<String, String> {
    run(
        "check-jsonschema",
        &[Path::new("--schemafile"), &root().join(schema), p],
    )
}

const PROVENANCE_SCHEMA: &str = "docs/schemas/slsa-provenance-v1.schema.json";
const MANIFEST_SCHEMA: &str = "docs/manifest.schema.json";

fn write_json(dir: &Path, name: &str, v: &Value) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string_pretty(v).unwrap() + "\n").unwrap();
    p
}

const STATUS: &str = "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc\nVersion: 2.36-9+deb12u7\n\nPackage: bsdutils\nStatus: install ok installed\nArchitecture: amd64\nSource: util-linux (2.38.1-5+deb12u3)\nVersion: 1:2.38.1-5+deb12u3\n\nPackage: libstdc++6\nStatus: install ok installed\nArchitecture: amd64\nSource: gcc-12\nVersion: 12.2.0-14\n";
const IMAGE_STATUS: &str = "Package: python3\nStatus: install ok installed\nArchitecture: amd64\nSource: python3-defaults\nVersion: 3.11.2-1+b1\n\nPackage: python3.11\nStatus: install ok installed\nArchitecture: amd64\nVersion: 3.11.2-6+deb12u6\n";

/// A manifest (the fixture, in today's format) with an image, a model and
/// a policy bundle, and what the tree held.
fn fixture() -> (Manifest, Contents) {
    let mut m: Manifest = serde_json::from_str(FIXTURE).unwrap();
    m.schema = cairn::release::manifest::SCHEMA;
    // The fixture predates the firewall's names; today's writer says this.
    m.flags.firewall = "deny-all".into();
    m.source_date_epoch_from = Some(cairn::recipe::epoch::EpochSource::Default);
    m.sbom
        .images
        .push(cairn::pipeline::workloads::InstalledImage {
            name: "inference".into(),
            reference: "cairn.local/inference:pinned".into(),
            digest: Sha256::of_bytes(b"image"),
            source: "built from Debian packages: python3".into(),
        });
    m.sbom
        .models
        .push(cairn::pipeline::workloads::InstalledModel {
            name: "iris".into(),
            sha256: Sha256::of_bytes(b"model"),
            path: "/usr/share/cairn/models/iris".into(),
        });
    m.sbom.policy = Some(cairn::pipeline::workloads::InstalledPolicy {
        sha256: Sha256::of_bytes(b"policy"),
        files: vec!["00-namespace.yaml".into()],
    });
    // `[boot] shim`: shim and MokManager from the host's packages, in the
    // manifest and both SBOMs.
    let bin = |path: &str, package: &str, version: &str| cairn::release::manifest::EspBinary {
        path: path.into(),
        sha256: Sha256::of_bytes(package.as_bytes()),
        package: package.into(),
        version: version.into(),
    };
    m.boot.shim = Some(cairn::release::manifest::ShimInfo {
        shim: bin(
            "EFI/BOOT/BOOTX64.EFI",
            "shim-signed",
            "1.51~1+deb12u1+16.1-2~deb12u1",
        ),
        mok_manager: Some(bin(
            "EFI/BOOT/mmx64.efi",
            "shim-helpers-amd64-signed",
            "1+16.1+2~deb12u1",
        )),
        uki: "EFI/BOOT/grubx64.efi".into(),
    });
    let distro = sbom::parse_os_release(Some("ID=debian\nVERSION_ID=\"12\"\n"));
    let mut locked = LockedIndex::new();
    locked.insert(
        ("libc6".into(), "2.36-9+deb12u7".into(), "amd64".into()),
        (
            Sha256::of_bytes(b"deb"),
            "http://deb.debian.org/debian/pool/main/g/glibc/libc6_2.36-9+deb12u7_amd64.deb".into(),
        ),
    );
    let c = Contents {
        base: sbom::parse_dpkg_status(STATUS, &locked),
        kernel_sha256: Sha256::of_bytes(b"vmlinuz"),
        kernel_package: Some("linux-image-6.1.0-50-amd64".into()),
        images: vec![ImageContents {
            name: "inference".into(),
            distro: distro.clone(),
            packages: sbom::parse_dpkg_status(IMAGE_STATUS, &LockedIndex::new()),
        }],
        distro,
    };
    (m, c)
}

fn find_purl<'a>(v: &'a mut Value, needle: &str) -> &'a mut Value {
    fn walk<'a>(v: &'a mut Value, needle: &str) -> Option<&'a mut Value> {
        match v {
            Value::String(s) if s.contains(needle) => Some(v),
            Value::Array(a) => a.iter_mut().find_map(|x| walk(x, needle)),
            Value::Object(o) => o.values_mut().find_map(|x| walk(x, needle)),
            _ => None,
        }
    }
    walk(v, needle).unwrap_or_else(|| panic!("no {needle} in the document"))
}

#[test]
fn fixture_spdx_is_accepted_by_spdx_tools_and_controls_fail() {
    let d = tempfile::tempdir().unwrap();
    let (m, c) = fixture();
    let doc = sbom::spdx(&m, &c);
    let good = write_json(d.path(), "good.spdx.json", &doc);
    spdx_ok(&good).unwrap_or_else(|e| panic!("pyspdxtools refused the SBOM:\n{e}"));

    // Control 1: a package without its required name.
    let mut bad = doc.clone();
    bad["packages"][1].as_object_mut().unwrap().remove("name");
    let p = write_json(d.path(), "noname.spdx.json", &bad);
    assert!(
        spdx_ok(&p).is_err(),
        "pyspdxtools accepted a package without name"
    );
    // Control 2: a purl without its scheme and type.
    let mut bad = doc.clone();
    *find_purl(&mut bad, "pkg:deb/debian/python3@") = Value::String("python3 3.11.2".into());
    let p = write_json(d.path(), "badpurl.spdx.json", &bad);
    let e = spdx_ok(&p).expect_err("pyspdxtools accepted a broken purl");
    assert!(e.contains("purl"), "{e}");
}

#[test]
fn fixture_cyclonedx_is_accepted_by_cyclonedx_lib_and_controls_fail() {
    let d = tempfile::tempdir().unwrap();
    let (m, c) = fixture();
    let doc = sbom::cyclonedx(&m, &c);
    let good = write_json(d.path(), "good.cdx.json", &doc);
    cdx_ok(&good).unwrap_or_else(|e| panic!("CycloneDX validation refused the SBOM:\n{e}"));

    // Control 1: no bomFormat (required by the 1.6 schema).
    let mut bad = doc.clone();
    bad.as_object_mut().unwrap().remove("bomFormat");
    let p = write_json(d.path(), "noformat.cdx.json", &bad);
    assert!(cdx_ok(&p).is_err(), "accepted a BOM without bomFormat");
    // Control 2: a component without its required name.
    let mut bad = doc.clone();
    bad["components"][0].as_object_mut().unwrap().remove("name");
    let p = write_json(d.path(), "noname.cdx.json", &bad);
    assert!(cdx_ok(&p).is_err(), "accepted a component without name");
    // Control 3: a broken purl inside the image.
    let mut bad = doc.clone();
    *find_purl(&mut bad, "pkg:deb/debian/python3@") = Value::String("pkg:python3".into());
    let p = write_json(d.path(), "badpurl.cdx.json", &bad);
    let e = cdx_ok(&p).expect_err("accepted a broken purl");
    assert!(e.contains("purl"), "{e}");
}

#[test]
fn fixture_provenance_and_manifest_match_their_schemas_and_controls_fail() {
    let d = tempfile::tempdir().unwrap();
    let (m, _) = fixture();
    let subjects = vec![("cairn-test-1.raw".to_string(), Sha256::of_bytes(b"raw"))];
    let st = cairn::release::provenance::statement(&m, &subjects);
    let p = write_json(d.path(), "provenance.json", &st);
    schema_ok(PROVENANCE_SCHEMA, &p).unwrap_or_else(|e| panic!("{e}"));
    for (what, edit) in [
        ("no buildType", "/predicate/buildDefinition/buildType"),
        ("no builder id", "/predicate/runDetails/builder/id"),
        ("no subject digest", "/subject/0/digest"),
    ] {
        let mut bad = st.clone();
        let (parent, key) = edit.rsplit_once('/').unwrap();
        match bad.pointer_mut(parent).unwrap() {
            Value::Object(o) => {
                o.remove(key);
            }
            Value::Array(a) => {
                a.remove(key.parse().unwrap());
            }
            _ => unreachable!(),
        }
        let p = write_json(d.path(), "bad-provenance.json", &bad);
        assert!(schema_ok(PROVENANCE_SCHEMA, &p).is_err(), "accepted {what}");
    }

    // The manifest as cairn writes it today.
    let mp = d.path().join("manifest.json");
    cairn::release::manifest::write(&m, &mp).unwrap();
    schema_ok(MANIFEST_SCHEMA, &mp).unwrap_or_else(|e| panic!("{e}"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&mp).unwrap()).unwrap();
    let mut bad = v.clone();
    bad.as_object_mut().unwrap().remove("verity");
    let p = write_json(d.path(), "bad-manifest.json", &bad);
    assert!(
        schema_ok(MANIFEST_SCHEMA, &p).is_err(),
        "accepted no verity"
    );
    // A shim chain whose UKI is elsewhere, or without MokManager, is not
    // what cairn writes.
    let mut bad = v.clone();
    assert_eq!(bad["boot"]["shim"]["uki"], "EFI/BOOT/grubx64.efi");
    bad["boot"]["shim"]["uki"] = Value::from("EFI/BOOT/other.efi");
    let p = write_json(d.path(), "bad-shim.json", &bad);
    assert!(
        schema_ok(MANIFEST_SCHEMA, &p).is_err(),
        "accepted another UKI path"
    );
    let mut bad = v.clone();
    bad["boot"]["shim"]
        .as_object_mut()
        .unwrap()
        .remove("mok_manager");
    let p = write_json(d.path(), "bad-shim2.json", &bad);
    assert!(
        schema_ok(MANIFEST_SCHEMA, &p).is_err(),
        "accepted no MokManager"
    );
    // A manifest of another format version is not this schema's.
    let mut bad = v.clone();
    bad["schema"] = Value::from(1);
    let p = write_json(d.path(), "old-manifest.json", &bad);
    assert!(schema_ok(MANIFEST_SCHEMA, &p).is_err(), "accepted schema 1");
}

/// The qemu-test image's own files (built by the boot tests).
#[test]
fn test_image_evidence_is_accepted_by_standard_tools() {
    let dir = testkit::test_image(
        Path::new(common::TEST_IMAGE),
        &[
            "manifest.json",
            "provenance.json",
            "cairn-test-1.spdx.json",
            "cairn-test-1.cdx.json",
        ],
    );
    let spdx = dir.join("cairn-test-1.spdx.json");
    let cdx = dir.join("cairn-test-1.cdx.json");
    spdx_ok(&spdx).unwrap_or_else(|e| panic!("{}: {e}", spdx.display()));
    cdx_ok(&cdx).unwrap_or_else(|e| panic!("{}: {e}", cdx.display()));
    schema_ok(PROVENANCE_SCHEMA, &dir.join("provenance.json")).unwrap_or_else(|e| panic!("{e}"));
    schema_ok(MANIFEST_SCHEMA, &dir.join("manifest.json")).unwrap_or_else(|e| panic!("{e}"));

    // The manifest lists both SBOMs by digest, and they list the base's
    // packages with purls and .deb digests where the lock pins them.
    let m = cairn::release::manifest::read(&dir.join("manifest.json")).unwrap();
    for p in [&spdx, &cdx] {
        let name = p.file_name().unwrap().to_string_lossy();
        let listed = m.sbom.documents.iter().find(|d| d.file == name).unwrap();
        assert_eq!(listed.sha256, Sha256::of_file(p).unwrap(), "{name}");
    }
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&cdx).unwrap()).unwrap();
    let pk = sbom::cdx_packages(&doc);
    assert_eq!(
        pk.len(),
        m.sbom.packages.len(),
        "every dpkg package of the base is in the CycloneDX SBOM"
    );
    let text = std::fs::read_to_string(&spdx).unwrap();
    assert!(
        text.contains("pkg:deb/debian/busybox-static@1:1.35.0-4"),
        "busybox-static's purl"
    );
    assert!(text.contains("distro=debian-12"));
}

/// The kubernetes boot test's image (recipes/field-ai-kube.toml, built by
/// the boot tests): its SBOMs pass the same validators and list the Go
/// modules of the cluster binaries with versions (control: the containerd
/// test image lists none).
#[test]
fn kubernetes_image_sboms_are_accepted_and_list_the_kubernetes_modules() {
    let dir = testkit::test_image(
        &Path::new(common::TEST_IMAGE).with_file_name("field-ai-kube-0.1.0"),
        &[
            "manifest.json",
            "provenance.json",
            "field-ai-kube-0.1.0.spdx.json",
            "field-ai-kube-0.1.0.cdx.json",
        ],
    );
    let spdx = dir.join("field-ai-kube-0.1.0.spdx.json");
    let cdx = dir.join("field-ai-kube-0.1.0.cdx.json");
    spdx_ok(&spdx).unwrap_or_else(|e| panic!("{}: {e}", spdx.display()));
    cdx_ok(&cdx).unwrap_or_else(|e| panic!("{}: {e}", cdx.display()));
    schema_ok(PROVENANCE_SCHEMA, &dir.join("provenance.json")).unwrap_or_else(|e| panic!("{e}"));
    schema_ok(MANIFEST_SCHEMA, &dir.join("manifest.json")).unwrap_or_else(|e| panic!("{e}"));
    for p in [&spdx, &cdx] {
        let text = std::fs::read_to_string(p).unwrap();
        for module in [
            "pkg:golang/k8s.io/kubernetes@v1.",
            "pkg:golang/github.com/containerd/containerd/v2@v2.",
            "pkg:golang/github.com/opencontainers/runc@v1.",
            "pkg:golang/go.etcd.io/etcd/server/v3@v3.",
        ] {
            assert!(text.contains(module), "{}: no {module}", p.display());
        }
    }
    let provenance = std::fs::read_to_string(dir.join("provenance.json")).unwrap();
    assert!(
        provenance.contains("go1."),
        "provenance names the Go toolchain"
    );
    let control = testkit::test_image(Path::new(common::TEST_IMAGE), &["cairn-test-1.spdx.json"]);
    let control = std::fs::read_to_string(control.join("cairn-test-1.spdx.json")).unwrap();
    assert!(
        !control.contains("pkg:golang/"),
        "the containerd image has no Go modules"
    );
}

/// One package version changed inside an image: both SBOMs change, both
/// still validate, and `cairn diff` names the package.
#[test]
fn a_changed_image_package_changes_both_sboms_and_the_diff_says_so() {
    let d = tempfile::tempdir().unwrap();
    let (m, c) = fixture();
    let mut c2 = c.clone();
    let py = c2.images[0]
        .packages
        .iter_mut()
        .find(|p| p.name == "python3")
        .unwrap();
    py.version = "3.11.2-1+b2".into();
    let mut dirs = Vec::new();
    for (label, c) in [("a", &c), ("b", &c2)] {
        let dir = d.path().join(label);
        std::fs::create_dir(&dir).unwrap();
        cairn::release::manifest::write(&m, &dir.join("manifest.json")).unwrap();
        let docs = sbom::write(&m, c, &dir).unwrap();
        assert_eq!(docs.len(), 2);
        for doc in &docs {
            let p = dir.join(&doc.file);
            if doc.file.ends_with(sbom::SPDX_SUFFIX) {
                spdx_ok(&p).unwrap_or_else(|e| panic!("{e}"));
            } else {
                cdx_ok(&p).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        dirs.push((dir, docs));
    }
    for i in 0..2 {
        assert_ne!(
            dirs[0].1[i].sha256, dirs[1].1[i].sha256,
            "{}",
            dirs[0].1[i].file
        );
    }
    let diff = cairn::release::diff::diff(&dirs[0].0, &dirs[1].0).unwrap();
    assert_eq!(diff.sbom.len(), 1, "{:?}", diff.sbom);
    let text = diff.render_text();
    assert!(
        text.contains("~ [image inference] python3 3.11.2-1+b1 -> 3.11.2-1+b2 amd64"),
        "{text}"
    );
    // Control: the same contents give the same bytes and no SBOM difference.
    let again = d.path().join("a2");
    std::fs::create_dir(&again).unwrap();
    cairn::release::manifest::write(&m, &again.join("manifest.json")).unwrap();
    assert_eq!(sbom::write(&m, &c, &again).unwrap(), dirs[0].1);
    assert!(cairn::release::diff::diff(&dirs[0].0, &again)
        .unwrap()
        .is_empty());
}

/// `[audit]`: the audit partition is named in the provenance's
/// internalParameters and as properties of the CycloneDX release
/// component, and both still validate, as does the manifest. Control:
/// the same fixture without `[audit]` mentions no audit anywhere.
#[test]
fn an_audit_partition_is_in_the_manifest_provenance_and_cyclonedx() {
    let d = tempfile::tempdir().unwrap();
    let (mut m, c) = fixture();
    let subjects = vec![("cairn-test-1.raw".to_string(), Sha256::of_bytes(b"raw"))];
    let without = (
        cairn::release::provenance::statement(&m, &subjects),
        sbom::cyclonedx(&m, &c),
    );
    for doc in [&without.0, &without.1] {
        assert!(!doc.to_string().contains("audit"), "{doc}");
    }
    let key = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
    m.audit = Some(cairn::recipe::audit::AuditInfo {
        partition: "cairn-audit".into(),
        size: 16 << 20,
        recipient: key.into(),
        key_sha256: Sha256::of_bytes(key.as_bytes()),
        record: vec!["boot".into(), "cluster-api".into(), "service".into()],
        on_full: "halt".into(),
    });
    let st = cairn::release::provenance::statement(&m, &subjects);
    let a = &st["predicate"]["buildDefinition"]["internalParameters"]["audit"];
    assert_eq!(a["partition"], "cairn-audit", "{st}");
    assert_eq!(a["size"], 16 << 20);
    assert_eq!(
        a["keyDigest"]["sha256"],
        Sha256::of_bytes(key.as_bytes()).hex()
    );
    assert_eq!(a["onFull"], "halt");
    let p = write_json(d.path(), "provenance.json", &st);
    schema_ok(PROVENANCE_SCHEMA, &p).unwrap_or_else(|e| panic!("{e}"));

    let doc = sbom::cyclonedx(&m, &c);
    let props = doc["metadata"]["component"]["properties"]
        .as_array()
        .unwrap();
    let prop = |k: &str| {
        props
            .iter()
            .find(|p| p["name"] == k)
            .map(|p| p["value"].clone())
    };
    assert_eq!(
        prop("cairn:audit:partition"),
        Some(Value::from("cairn-audit"))
    );
    assert_eq!(prop("cairn:audit:size"), Some(Value::from("16777216")));
    assert_eq!(
        prop("cairn:audit:record"),
        Some(Value::from("boot cluster-api service"))
    );
    let p = write_json(d.path(), "audit.cdx.json", &doc);
    cdx_ok(&p).unwrap_or_else(|e| panic!("CycloneDX validation refused the SBOM:\n{e}"));

    let mp = d.path().join("manifest.json");
    cairn::release::manifest::write(&m, &mp).unwrap();
    schema_ok(MANIFEST_SCHEMA, &mp).unwrap_or_else(|e| panic!("{e}"));
    // inspect shows it (the line and the JSON); the control is the
    // fixture's own inspect tests, which have no audit line.
    std::fs::write(d.path().join("cairn-test-1.raw"), b"stand-in").unwrap();
    let i = cairn::release::inspect::inspect(d.path()).unwrap();
    assert!(
        i.render_text()
            .contains("audit        partition \"cairn-audit\", 16 MiB"),
        "{}",
        i.render_text()
    );
}
