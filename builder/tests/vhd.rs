//! The VHD row: `cairn verify` checks a fixed VHD against the raw disk of
//! its folder, byte for byte, and refuses a footer it does not expect, on
//! the qemu-test image (signed copies; see `common`).

use std::path::Path;

use cairn::host::digest::Sha256;
use cairn::release::verify::{self, VerifyError};

mod common;
use common::{flip_byte, signed_folder, Signed, RAW};

const VHD: &str = "cairn-test-1.vhd";

/// Writes `from`'s VHD into the folder, lists it in the manifest and signs
/// the folder again.
fn put_vhd(s: &Signed, from: &Path) {
    let out = s.dir.join(VHD);
    let _ = std::fs::remove_file(&out);
    cairn::media::vhd::write_vhd(from, &out, "cairn-test-1", 1).unwrap();
    record(s);
}

fn record(s: &Signed) {
    let out = s.dir.join(VHD);
    let path = s.dir.join("manifest.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let outs = v["outputs"].as_array_mut().unwrap();
    outs.retain(|o| o["file"] != VHD);
    outs.push(serde_json::json!({
        "file": VHD,
        "size": std::fs::metadata(&out).unwrap().len(),
        "sha256": Sha256::of_file(&out).unwrap().hex(),
    }));
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap() + "\n").unwrap();
    s.resign(&[RAW, "manifest.json", VHD], None);
}

fn failed(s: &Signed) -> String {
    match verify::verify(&s.dir, &s.pubkey, false) {
        Err(VerifyError::Failed(m)) => m,
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[test]
fn a_vhd_differing_from_the_raw_by_one_byte_is_refused() {
    testkit::tool("qemu-img", "qemu-utils");
    let s = signed_folder();
    // Control: the raw disk's own VHD passes, compared byte for byte.
    put_vhd(&s, &s.raw());
    let r = verify::verify(&s.dir, &s.pubkey, false).unwrap();
    assert!(
        r.checks
            .iter()
            .any(|c| c
                == "vhd: cairn-test-1.vhd: content equals cairn-test-1.raw; fixed footer checked"),
        "{:?}",
        r.checks
    );
    // One byte of the VHD's data changed (then listed and signed, so only
    // the comparison can notice).
    let at = std::fs::metadata(s.raw()).unwrap().len() / 2 + 7;
    flip_byte(&s.dir.join(VHD), at);
    record(&s);
    let msg = failed(&s);
    assert_eq!(
        msg,
        format!("vhd: {VHD}: content differs from {RAW} at byte {at}"),
    );
}

#[test]
fn a_vhd_with_an_unexpected_footer_is_refused() {
    testkit::tool("qemu-img", "qemu-utils");
    let s = signed_folder();
    put_vhd(&s, &s.raw());
    // The disk type made dynamic (byte 63 of the footer), signed.
    let len = std::fs::metadata(s.dir.join(VHD)).unwrap().len();
    flip_byte(&s.dir.join(VHD), len - 512 + 63);
    record(&s);
    let msg = failed(&s);
    assert!(
        msg.starts_with("vhd: cairn-test-1.vhd: footer: unexpected"),
        "{msg}"
    );
}
