//! The GCE row: `cairn verify` reads a GCE-style tarball with cairn's tar
//! reader, compares its one member `disk.raw` with the raw disk of its
//! folder and refuses any other member, on the qemu-test image (signed
//! copies; see `common`).

use std::path::Path;

use cairn::host::digest::Sha256;
use cairn::release::verify::{self, VerifyError};

mod common;
use common::{flip_byte, signed_folder, Signed, RAW};

const TAR: &str = "cairn-test-1.tar.gz";

/// Writes `from`'s tarball into the folder, lists it in the manifest and
/// signs the folder again.
fn put_tar(s: &Signed, from: &Path) {
    let out = s.dir.join(TAR);
    cairn::media::gce::write_gce(from, &out, 1).unwrap();
    record(s);
}

fn record(s: &Signed) {
    let out = s.dir.join(TAR);
    let path = s.dir.join("manifest.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let outs = v["outputs"].as_array_mut().unwrap();
    outs.retain(|o| o["file"] != TAR);
    outs.push(serde_json::json!({
        "file": TAR,
        "size": std::fs::metadata(&out).unwrap().len(),
        "sha256": Sha256::of_file(&out).unwrap().hex(),
    }));
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap() + "\n").unwrap();
    s.resign(&[RAW, "manifest.json", TAR], None);
}

fn failed(s: &Signed) -> String {
    match verify::verify(&s.dir, &s.pubkey, false) {
        Err(VerifyError::Failed(m)) => m,
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[test]
fn a_tarball_differing_from_the_raw_by_one_byte_is_refused() {
    let s = signed_folder();
    // Control: the raw disk's own tarball passes.
    put_tar(&s, &s.raw());
    let r = verify::verify(&s.dir, &s.pubkey, false).unwrap();
    assert!(
        r.checks
            .iter()
            .any(|c| c
                == "gce: cairn-test-1.tar.gz: one member, disk.raw, equal to cairn-test-1.raw"),
        "{:?}",
        r.checks
    );
    // The tarball of a copy of the raw with one byte changed (gzip'd: the
    // change is made before), listed and signed, so only the comparison
    // can notice.
    let other = s.dir.join("other.img");
    std::fs::copy(s.raw(), &other).unwrap();
    let at = std::fs::metadata(s.raw()).unwrap().len() / 2 + 7;
    flip_byte(&other, at);
    put_tar(&s, &other);
    std::fs::remove_file(&other).unwrap();
    assert_eq!(
        failed(&s),
        format!("gce: {TAR}: disk.raw differs from {RAW} at byte {at}")
    );
}

#[test]
fn a_tarball_with_another_member_is_refused() {
    let s = signed_folder();
    // disk.raw and a second member, gzip'd, listed and signed.
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("disk.raw", std::fs::read(s.raw()).unwrap()),
        ("x", vec![1]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &b.into_inner().unwrap()).unwrap();
    std::fs::write(s.dir.join(TAR), gz.finish().unwrap()).unwrap();
    record(&s);
    let msg = failed(&s);
    assert_eq!(
        msg,
        format!("gce: {TAR}: tar: a second member \"x\" (expected disk.raw only)")
    );
}
