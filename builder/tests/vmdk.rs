//! The VMDK row: `cairn verify` checks a stream-optimised VMDK against the
//! raw disk of its folder (qemu-img compare, no backing chain) and refuses
//! a descriptor naming a parent, on the qemu-test image (signed copies;
//! see `common`).

use std::path::Path;

use cairn::host::digest::Sha256;
use cairn::release::verify::{self, VerifyError};

mod common;
use common::{flip_byte, signed_folder, Signed, RAW};

const VMDK: &str = "cairn-test-1.vmdk";

/// Writes `from`'s VMDK into the folder, lists it in the manifest and
/// signs the folder again.
fn put_vmdk(s: &Signed, from: &Path) {
    let out = s.dir.join(VMDK);
    cairn::media::vmdk::write_vmdk(from, &out, "cairn-test-1", 1).unwrap();
    record(s);
}

fn record(s: &Signed) {
    let out = s.dir.join(VMDK);
    let path = s.dir.join("manifest.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let outs = v["outputs"].as_array_mut().unwrap();
    outs.retain(|o| o["file"] != VMDK);
    outs.push(serde_json::json!({
        "file": VMDK,
        "size": std::fs::metadata(&out).unwrap().len(),
        "sha256": Sha256::of_file(&out).unwrap().hex(),
    }));
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap() + "\n").unwrap();
    s.resign(&[RAW, "manifest.json", VMDK], None);
}

fn failed(s: &Signed) -> String {
    match verify::verify(&s.dir, &s.pubkey, false) {
        Err(VerifyError::Failed(m)) => m,
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[test]
fn a_vmdk_differing_from_the_raw_by_one_byte_is_refused() {
    testkit::tool("qemu-img", "qemu-utils");
    let s = signed_folder();
    // Control: the raw disk's own VMDK passes.
    put_vmdk(&s, &s.raw());
    let r = verify::verify(&s.dir, &s.pubkey, false).unwrap();
    assert!(
        r.checks.iter().any(|c| c
            == "vmdk: cairn-test-1.vmdk: content equals cairn-test-1.raw (qemu-img compare); header and descriptor checked"),
        "{:?}",
        r.checks
    );
    // The VMDK of a copy of the raw with one byte changed (grains are
    // compressed: the change is made before), listed and signed, so only
    // the comparison can notice.
    let other = s.dir.join("other.img");
    std::fs::copy(s.raw(), &other).unwrap();
    let at = std::fs::metadata(s.raw()).unwrap().len() / 2 + 7;
    flip_byte(&other, at);
    put_vmdk(&s, &other);
    std::fs::remove_file(&other).unwrap();
    let msg = failed(&s);
    assert!(
        msg.starts_with(&format!("vmdk: {VMDK}: content differs from {RAW}")),
        "{msg}"
    );
}

#[test]
fn a_vmdk_naming_a_parent_is_refused() {
    testkit::tool("qemu-img", "qemu-utils");
    let s = signed_folder();
    put_vmdk(&s, &s.raw());
    // "parentCID=ffffffff" made "parentCID=fffffffe" in the descriptor
    // (sector 1 on), signed.
    let out = s.dir.join(VMDK);
    let mut b = std::fs::read(&out).unwrap();
    let at = b
        .windows(18)
        .position(|w| w == b"parentCID=ffffffff")
        .unwrap();
    b[at + 17] = b'e';
    std::fs::write(&out, &b).unwrap();
    record(&s);
    let msg = failed(&s);
    assert!(
        msg.starts_with("vmdk: cairn-test-1.vmdk: descriptor line") && msg.contains("parent"),
        "{msg}"
    );
}
