//! `cairn::release::inspect` and `cairn::release::diff` on fake output folders: a real
//! manifest (tests/fixtures/manifest-a.json, from the qemu-test image) edited
//! as JSON, written beside a small stand-in medium, signed or not.

use std::path::Path;

use cairn::release::diff::diff;
use cairn::release::inspect::{inspect, SignatureInfo, DEBUG_WARNING};
use serde_json::{json, Value};

const FIXTURE: &str = include_str!("fixtures/manifest-a.json");

fn fixture() -> Value {
    serde_json::from_str(FIXTURE).expect("fixture is JSON")
}

/// Writes `manifest` and a stand-in medium into a new temp folder.
fn folder(manifest: &Value) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let text = serde_json::to_string_pretty(manifest).unwrap() + "\n";
    std::fs::write(d.path().join("manifest.json"), text).unwrap();
    std::fs::write(d.path().join("cairn-test-1.raw"), b"not really a disk").unwrap();
    d
}

fn set_debug(m: &mut Value, on: bool) {
    m["flags"]["debug_console"] = json!(on);
}

fn packages(m: &mut Value) -> &mut Vec<Value> {
    m["sbom"]["packages"].as_array_mut().unwrap()
}

fn sign(dir: &Path) -> String {
    let key = cairn::release::signify::generate();
    let id = cairn::release::sign::sign_dir(dir, &key, "throwaway.pub").unwrap();
    assert_eq!(id, key.public().key_id());
    id
}

#[test]
fn signed_debug_image_shows_key_root_hash_flags_counts_and_warning() {
    let mut m = fixture();
    set_debug(&mut m, true);
    let d = folder(&m);
    let key_id = sign(d.path());

    let i = inspect(d.path()).unwrap();
    assert_eq!(
        i.signature,
        SignatureInfo::Signed {
            key_id: key_id.clone(),
            sums_file_matches: Some(true),
            manifest_matches: Some(true),
        }
    );
    let root = m["verity"]["root_hash"].as_str().unwrap();
    let n = m["sbom"]["packages"].as_array().unwrap().len();
    assert_eq!(i.package_count, n);
    assert_eq!(i.build_date, "2025-01-01T00:00:00Z");

    let text = i.render_text();
    assert!(text.contains(&format!("key id {key_id}")), "{text}");
    assert!(text.contains(&format!("root hash    {root}")), "{text}");
    assert!(text.contains(&format!("{n} packages, 1 outputs")), "{text}");
    for flag in ["debug_console", "state_mode", "firewall"] {
        assert!(text.contains(flag), "{flag} missing:\n{text}");
    }
    assert!(text.contains(DEBUG_WARNING), "{text}");
    assert!(text.contains("2025-01-01T00:00:00Z"), "{text}");
    assert!(text.contains("cairn-test-1.raw"), "{text}");
    assert!(text.contains("1.0 GiB"), "{text}");
    assert!(text.contains(m["kernel"]["cmdline"].as_str().unwrap()));
    assert!(text.contains("  adduser"), "{text}");
    assert!(!text.contains("WARNING: manifest.json"), "{text}");

    let json: Value = serde_json::to_value(&i).unwrap();
    assert_eq!(json["signature"]["status"], "signed");
    assert_eq!(json["signature"]["key_id"], key_id.as_str());
    assert_eq!(json["root_hash"], root);
    assert_eq!(json["flags"]["debug_console"], true);
    assert_eq!(json["package_count"], n);
}

#[test]
fn unsigned_production_image_says_unsigned_and_has_no_debug_warning() {
    let mut m = fixture();
    set_debug(&mut m, false);
    let d = folder(&m);
    let i = inspect(d.path()).unwrap();
    assert_eq!(i.signature, SignatureInfo::Unsigned);
    assert_eq!(i.signature.signer(), "unsigned");
    let text = i.render_text();
    assert!(text.contains("signer       unsigned"), "{text}");
    assert!(!text.contains(DEBUG_WARNING), "{text}");
    assert!(!text.contains("WARNING"), "{text}");
    let json: Value = serde_json::to_value(&i).unwrap();
    assert_eq!(json["signature"]["status"], "unsigned");
}

#[test]
fn other_debug_flags_are_loud_too() {
    let mut m = fixture();
    set_debug(&mut m, false);
    m["flags"]["debug_unencrypted_state"] = json!(true);
    let text = inspect(folder(&m).path()).unwrap().render_text();
    assert!(
        text.contains("WARNING: DEBUG FLAG debug_unencrypted_state IS ON"),
        "{text}"
    );
    assert!(!text.contains(DEBUG_WARNING), "{text}");
    // Control: the flag present but off is not a warning.
    m["flags"]["debug_unencrypted_state"] = json!(false);
    let text = inspect(folder(&m).path()).unwrap().render_text();
    assert!(!text.contains("WARNING"), "{text}");
}

#[test]
fn manifest_edited_after_signing_is_called_out() {
    let d = folder(&fixture());
    sign(d.path());
    let mut m = fixture();
    set_debug(&mut m, false);
    std::fs::write(
        d.path().join("manifest.json"),
        serde_json::to_string_pretty(&m).unwrap(),
    )
    .unwrap();
    let i = inspect(d.path()).unwrap();
    assert!(matches!(
        i.signature,
        SignatureInfo::Signed {
            manifest_matches: Some(false),
            ..
        }
    ));
    assert!(i
        .render_text()
        .contains("manifest.json does not match its digest in the signed list"));
}

#[test]
fn garbled_signature_is_unreadable_not_an_error() {
    let d = folder(&fixture());
    std::fs::write(d.path().join("SHA256.sig"), "garbage\n").unwrap();
    let i = inspect(d.path()).unwrap();
    assert!(matches!(i.signature, SignatureInfo::Unreadable { .. }));
    assert!(i.render_text().contains("UNREADABLE signature"));
}

#[test]
fn missing_or_bad_manifest_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    assert!(inspect(d.path()).is_err());
    std::fs::write(d.path().join("manifest.json"), "{\"schema\": 1}").unwrap();
    let e = inspect(d.path()).unwrap_err();
    assert!(format!("{e:#}").contains("not a cairn manifest"), "{e:#}");
}

/// Sections later manifests may carry: rendered from the raw JSON.
/// Digests as the manifest writes them (bare hex); `tag` picks one.
fn hex(tag: &str) -> String {
    tag.trim_start_matches("sha256:")
        .chars()
        .next()
        .unwrap_or('0')
        .to_string()
        .repeat(64)
}

fn with_extras(m: &mut Value, image_digest: &str, policy_digest: &str, egress: &str) {
    m["sbom"]["images"] = json!([
        {"name": "registry.local/model-runtime", "reference": "cairn.local/model-runtime:pinned", "digest": hex(image_digest), "source": "archive x.tar"},
        {"name": "registry.local/pause", "reference": "cairn.local/pause:pinned", "digest": hex("0"), "source": "archive p.tar"},
    ]);
    m["sbom"]["policy"] = json!({"sha256": hex(policy_digest), "files": ["00-namespace.yaml"]});
    m["network"] = json!({
        "egress": [{"net": egress, "prefix": 32, "port": 443, "proto": "tcp"}],
        "ingress": [],
        "address": null,
        "gateway": null,
    });
}

#[test]
fn extras_render_from_raw_json() {
    let mut m = fixture();
    with_extras(&mut m, "sha256:aaaa", "sha256:1", "10.0.0.1");
    m["flags"]["ssh"] = json!(false);
    let d = folder(&m);
    let i = inspect(d.path()).unwrap();
    assert_eq!(i.oci_images.len(), 2);
    assert_eq!(i.policy_digest, Some(format!("sha256:{}", hex("1"))));
    let text = i.render_text();
    assert!(
        text.contains(&format!(
            "registry.local/model-runtime  sha256:{}",
            hex("a")
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("policy       sha256:{}", hex("1"))),
        "{text}"
    );
    assert!(
        text.contains("    - net: 10.0.0.1\n      port: 443"),
        "{text}"
    );
    assert!(text.contains("  ingress: []"), "{text}");
    assert!(text.contains("  ssh"), "{text}");
    // Control: without them there is no such section.
    let plain = inspect(folder(&fixture()).path()).unwrap().render_text();
    assert!(!plain.contains("\nOCI images\n") && !plain.contains("\nnetwork\n"));
}

#[test]
fn diff_shows_packages_flags_kernel_images_policy_network_and_sizes() {
    let mut a = fixture();
    with_extras(&mut a, "sha256:aaaa", "sha256:1", "10.0.0.1");
    let mut b = a.clone();
    // Removed: adduser; added: zz-new; changed: apt.
    packages(&mut b).retain(|p| p["name"] != "adduser");
    packages(&mut b).push(json!({"name": "zz-new", "version": "1.0", "architecture": "amd64"}));
    for p in packages(&mut b).iter_mut() {
        if p["name"] == "apt" {
            p["version"] = json!("2.6.2");
        }
    }
    set_debug(&mut b, false);
    b["outputs"][0]["size"] = json!(1073741824u64 + 4096);
    b["kernel"]["cmdline"] = json!(format!(
        "{} quiet",
        a["kernel"]["cmdline"].as_str().unwrap()
    ));
    with_extras(&mut b, "sha256:bbbb", "sha256:2", "10.0.0.2");

    let (da, db) = (folder(&a), folder(&b));
    let d = diff(da.path(), db.path()).unwrap();
    assert!(!d.is_empty());
    let added: Vec<_> = d.packages_added.iter().map(|p| p.name.as_str()).collect();
    let removed: Vec<_> = d.packages_removed.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(added, ["zz-new"]);
    assert_eq!(removed, ["adduser"]);
    assert_eq!(d.packages_changed.len(), 1);
    assert_eq!(
        (
            d.packages_changed[0].name.as_str(),
            d.packages_changed[0].a.as_str(),
            d.packages_changed[0].b.as_str()
        ),
        ("apt", "2.6.1", "2.6.2")
    );
    assert_eq!(d.flags.len(), 1);
    assert_eq!(d.flags[0].field, "debug_console");
    assert_eq!(d.outputs.len(), 1);
    assert_eq!(d.outputs[0].delta, 4096);
    assert!(d.kernel_cmdline.is_some());
    assert!(d.kernel_version.is_none());
    assert_eq!(d.images_changed.len(), 1);
    assert!(d.images_added.is_empty() && d.images_removed.is_empty());
    assert!(d.policy_digest.is_some());
    assert_eq!(d.network.len(), 1);
    assert!(d.root_hash.is_none());

    let text = d.render_text();
    let image_change = format!(
        "  ~ registry.local/model-runtime sha256:{} -> sha256:{}",
        hex("a"),
        hex("b")
    );
    let policy_change = format!("  digest: sha256:{} -> sha256:{}", hex("1"), hex("2"));
    for want in [
        "  + zz-new 1.0 amd64",
        "  - adduser 3.134 all",
        "  ~ apt 2.6.1 -> 2.6.2 amd64",
        "  debug_console: true -> false",
        "cairn-test-1.raw  1.0 GiB  1.0 GiB  +4.0 KiB (+4096 bytes)",
        "kernel cmdline:",
        image_change.as_str(),
        policy_change.as_str(),
        "  egress.0.net: 10.0.0.1 -> 10.0.0.2",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    // Sorted: packages added/removed/changed lists come out in name order.
    assert!(serde_json::to_value(&d).is_ok());
}

#[test]
fn diff_of_a_folder_with_itself_is_empty() {
    let mut a = fixture();
    with_extras(&mut a, "sha256:aaaa", "sha256:1", "10.0.0.1");
    let da = folder(&a);
    sign(da.path());
    let d = diff(da.path(), da.path()).unwrap();
    assert!(d.is_empty(), "{}", d.render_text());
    assert!(d.render_text().contains("no differences"));
}

#[test]
fn diff_matches_outputs_across_versions_and_sees_signer_and_root_changes() {
    let a = fixture();
    let mut b = fixture();
    b["image"]["version"] = json!("2");
    b["outputs"][0]["file"] = json!("cairn-test-2.raw");
    b["verity"]["root_hash"] = json!("11".repeat(32));
    let (da, db) = (folder(&a), folder(&b));
    sign(db.path());
    let d = diff(da.path(), db.path()).unwrap();
    assert!(d.image.is_some());
    assert!(d.root_hash.is_some());
    assert_eq!(d.signer.as_ref().map(|c| c.a.as_str()), Some("unsigned"));
    // Same size and digest under a new name: paired, so not an output change.
    assert!(d.outputs.is_empty(), "{:?}", d.outputs);
}

/// Runs the cairn binary; (exit code, stdout bytes, stderr bytes).
fn cairn_cmd(args: &[&std::ffi::OsStr]) -> (i32, Vec<u8>, Vec<u8>) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), out.stdout, out.stderr)
}

/// Strings a hostile manifest may hold to fake a line or reorder one:
/// (input, how it must print).
const HOSTILE: &[(&str, &str)] = &[
    ("\u{1b}[2K\rverify: ok", "\\x1b[2K\\rverify: ok"),
    ("x\nOK field-ai 9", "x\\nOK field-ai 9"),
    ("\u{9b}2Kcsi", "\\u{9b}2Kcsi"),
    ("abc\u{202e}lave", "abc\\u{202e}lave"),
];

fn has_raw_controls(b: &[u8]) -> bool {
    let t = String::from_utf8_lossy(b);
    t.chars()
        .any(|c| (c.is_control() && c != '\n') || ('\u{202a}'..='\u{202e}').contains(&c))
}

#[test]
fn inspect_prints_manifest_escapes_escaped_and_plain_strings_as_they_are() {
    for (evil, shown) in HOSTILE {
        let mut m = fixture();
        m["image"]["name"] = json!(evil);
        m["kernel"]["cmdline"] = json!(format!("console=ttyS0 {evil}"));
        packages(&mut m)[0]["version"] = json!(evil);
        let d = folder(&m);
        let text = inspect(d.path()).unwrap().render_text();
        assert!(!has_raw_controls(text.as_bytes()), "{evil:?}: {text}");
        assert!(text.contains(&format!("image        {shown} ")), "{text}");
        assert!(text.contains(&format!("console=ttyS0 {shown}")), "{text}");
        // The binary prints the same; --json keeps serde's own escaping.
        let (code, out, _) = cairn_cmd(&["inspect".as_ref(), d.path().as_os_str()]);
        assert_eq!(code, 0);
        assert!(!out.contains(&0x1b), "{evil:?}");
        assert!(!has_raw_controls(&out), "{evil:?}");
        assert!(String::from_utf8_lossy(&out).contains(shown), "{evil:?}");
        let (code, out, _) =
            cairn_cmd(&["inspect".as_ref(), d.path().as_os_str(), "--json".as_ref()]);
        assert_eq!(code, 0);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["name"], json!(evil), "JSON round-trips the string");
        assert!(!out.contains(&0x1b));
    }
    // Control: a plain name prints as it is.
    let mut m = fixture();
    m["image"]["name"] = json!("verify: ok");
    let d = folder(&m);
    let (_, out, _) = cairn_cmd(&["inspect".as_ref(), d.path().as_os_str()]);
    assert!(String::from_utf8_lossy(&out).contains("image        verify: ok "));
}

#[test]
fn diff_prints_manifest_escapes_escaped_and_plain_strings_as_they_are() {
    for (evil, shown) in HOSTILE {
        let a = fixture();
        let mut b = fixture();
        b["kernel"]["cmdline"] = json!(evil);
        packages(&mut b)[0]["version"] = json!(evil);
        let (da, db) = (folder(&a), folder(&b));
        let text = diff(da.path(), db.path()).unwrap().render_text();
        assert!(!has_raw_controls(text.as_bytes()), "{evil:?}: {text}");
        assert!(text.contains(&format!("  + {shown}")), "{text}");
        let (code, out, _) = cairn_cmd(&[
            "diff".as_ref(),
            da.path().as_os_str(),
            db.path().as_os_str(),
        ]);
        assert_eq!(code, 1);
        assert!(!out.contains(&0x1b) && !has_raw_controls(&out), "{evil:?}");
        assert!(String::from_utf8_lossy(&out).contains(shown));
    }
    // Control: a plain command line prints as it is.
    let a = fixture();
    let mut b = fixture();
    b["kernel"]["cmdline"] = json!("verify: ok");
    let (da, db) = (folder(&a), folder(&b));
    let (_, out, _) = cairn_cmd(&[
        "diff".as_ref(),
        da.path().as_os_str(),
        db.path().as_os_str(),
    ]);
    assert!(String::from_utf8_lossy(&out).contains("  + verify: ok\n"));
}
