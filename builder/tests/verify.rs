//! `cairn::release::verify`: signed folders made from the qemu-test image (the
//! tests fail when it has not been built), the verity computation against
//! `veritysetup`, and GPT parsing of junk.

use std::fs::File;
use std::io::{Cursor, Write};
use std::path::Path;
use std::process::Command;

use cairn::host::digest::Sha256;
use cairn::release::signify;
use cairn::release::verify::{self, VerifyError, VerifyReport};

mod common;
use common::{flip_byte, keep_outputs, signed_folder, write_pubkey, Signed, RAW, TEST_IMAGE};

trait Verify {
    fn verify(&self) -> Result<VerifyReport, VerifyError>;
}

impl Verify for Signed {
    fn verify(&self) -> Result<VerifyReport, VerifyError> {
        verify::verify(&self.dir, &self.pubkey, false)
    }
}

fn failed(r: Result<VerifyReport, VerifyError>) -> String {
    match r {
        Err(VerifyError::Failed(m)) => {
            assert!(!m.contains('\n'), "one line: {m}");
            m
        }
        other => panic!("expected Failed, got {other:?}"),
    }
}

fn bad_input(r: Result<VerifyReport, VerifyError>) -> String {
    match r {
        Err(VerifyError::BadInput(m)) => {
            assert!(!m.contains('\n'), "one line: {m}");
            m
        }
        other => panic!("expected BadInput, got {other:?}"),
    }
}

fn root_offset(s: &Signed) -> u64 {
    let m = cairn::release::manifest::read(&s.dir.join("manifest.json")).unwrap();
    m.partitions
        .iter()
        .find(|p| p.label == "cairn-root")
        .unwrap()
        .offset
}

#[test]
fn untouched_folder_passes() {
    let s = signed_folder();
    let started = std::time::Instant::now();
    let r = s.verify().unwrap();
    println!("verified in {:.1}s", started.elapsed().as_secs_f64());
    let m = cairn::release::manifest::read(&s.dir.join("manifest.json")).unwrap();
    assert_eq!(r.key_id, s.key.public().key_id());
    assert_eq!(r.name, "cairn-test");
    assert_eq!(r.version, "1");
    assert_eq!(r.root_hash, m.verity.root_hash);
    let all = r.checks.join("\n");
    for want in [
        "signature:",
        "digest: cairn-test-1.raw",
        "digest: manifest.json",
        "root hash: cairn-test-1.raw",
        "uki: cairn-test-1.raw",
    ] {
        assert!(all.contains(want), "{want} missing from:\n{all}");
    }

    // The medium alone verifies too, with other listed media absent.
    let r = verify::verify(&s.raw(), &s.pubkey, false).unwrap();
    assert_eq!(r.root_hash, m.verity.root_hash);
}

#[test]
fn single_medium_ignores_absent_other_media() {
    let s = signed_folder();
    // List an ISO that is not there: the folder fails, the .raw alone passes
    // the listing checks (and fails only at the manifest, which does not
    // know the ISO).
    let mut sums = std::fs::read_to_string(s.dir.join("SHA256")).unwrap();
    sums.insert_str(
        0,
        &format!("SHA256 (cairn-test-1.iso) = {}\n", "0".repeat(64)),
    );
    s.write_signed(sums.as_bytes());
    assert_eq!(failed(s.verify()), "missing: cairn-test-1.iso");
    let msg = failed(verify::verify(&s.raw(), &s.pubkey, false));
    assert!(
        msg.starts_with("manifest:") && msg.contains("cairn-test-1.iso"),
        "{msg}"
    );
}

#[test]
fn flipped_byte_in_root_partition_fails_digest() {
    let s = signed_folder();
    flip_byte(&s.raw(), root_offset(&s) + 4096 * 3 + 17);
    let msg = failed(s.verify());
    assert!(
        msg.starts_with("digest: cairn-test-1.raw: expected "),
        "{msg}"
    );
    assert!(msg.contains(" got "), "{msg}");
}

#[test]
fn flipped_byte_in_manifest_fails_digest() {
    let s = signed_folder();
    flip_byte(&s.dir.join("manifest.json"), 10);
    let msg = failed(s.verify());
    assert!(msg.starts_with("digest: manifest.json: expected "), "{msg}");
}

#[test]
fn flipped_byte_in_sha256_fails() {
    let s = signed_folder();
    flip_byte(&s.dir.join("SHA256"), 20);
    let msg = failed(s.verify());
    assert_eq!(msg, "SHA256 differs from the signed copy in SHA256.sig");
}

#[test]
fn flipped_byte_in_signature_fails() {
    let s = signed_folder();
    let sig = s.dir.join("SHA256.sig");
    // A byte of the embedded copy of SHA256 (after the two header lines).
    let text = std::fs::read(&sig).unwrap();
    let body = text
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(1)
        .unwrap()
        .0
        + 30;
    flip_byte(&sig, body as u64);
    let msg = failed(s.verify());
    assert!(
        msg.starts_with("signature: SHA256.sig does not verify"),
        "{msg}"
    );

    // A flipped bit inside the base64 signature itself.
    s.resign(&[RAW, "manifest.json"], None);
    let mut text = std::fs::read(&sig).unwrap();
    let nl = text.iter().position(|b| *b == b'\n').unwrap();
    let at = nl + 60;
    text[at] = if text[at] == b'A' { b'B' } else { b'A' };
    std::fs::write(&sig, &text).unwrap();
    let msg = failed(s.verify());
    assert!(
        msg.starts_with("signature: SHA256.sig does not verify"),
        "{msg}"
    );
}

#[test]
fn wrong_public_key_fails_naming_both_keys() {
    let s = signed_folder();
    let other = signify::generate();
    let other_pub = write_pubkey(s.tmp.path(), &other, "other.pub");
    let msg = failed(verify::verify(&s.dir, &other_pub, false));
    assert!(msg.starts_with("signature: "), "{msg}");
    assert!(msg.contains(&s.key.public().key_id()), "{msg}");
    assert!(msg.contains(&other.public().key_id()), "{msg}");
}

#[test]
fn bad_key_and_truncated_signature_are_bad_input() {
    let s = signed_folder();
    let missing = s.tmp.path().join("missing.pub");
    assert!(bad_input(verify::verify(&s.dir, &missing, false)).contains("public key"));
    let junk = s.tmp.path().join("junk.pub");
    std::fs::write(&junk, "not a key\n").unwrap();
    assert!(bad_input(verify::verify(&s.dir, &junk, false)).contains("public key"));

    let sig = s.dir.join("SHA256.sig");
    let text = std::fs::read(&sig).unwrap();
    std::fs::write(&sig, &text[..50]).unwrap();
    let msg = bad_input(s.verify());
    assert!(msg.contains("SHA256.sig"), "{msg}");

    std::fs::remove_file(&sig).unwrap();
    let msg = bad_input(s.verify());
    assert!(msg.contains("SHA256.sig"), "{msg}");

    let nowhere = s.tmp.path().join("nowhere");
    bad_input(verify::verify(&nowhere, &s.pubkey, false));
}

#[test]
fn missing_output_fails() {
    let s = signed_folder();
    std::fs::remove_file(s.raw()).unwrap();
    assert_eq!(failed(s.verify()), "missing: cairn-test-1.raw");
    std::fs::remove_file(s.dir.join("SHA256")).unwrap();
    assert_eq!(failed(s.verify()), "missing: SHA256");
}

#[test]
fn unlisted_image_fails() {
    let s = signed_folder();
    std::fs::write(s.dir.join("evil.img"), b"boot me").unwrap();
    assert_eq!(failed(s.verify()), "unlisted: evil.img is not in SHA256");
    std::fs::remove_file(s.dir.join("evil.img")).unwrap();
    std::fs::write(s.dir.join("provenance.json"), b"{}").unwrap();
    assert_eq!(
        failed(s.verify()),
        "unlisted: provenance.json is not in SHA256"
    );
    // Once listed (and signed), it is fine.
    s.resign(&[RAW, "manifest.json", "provenance.json"], None);
    s.verify().unwrap();
}

#[test]
fn sha256_line_escaping_the_folder_fails() {
    let s = signed_folder();
    let mut sums = std::fs::read_to_string(s.dir.join("SHA256")).unwrap();
    sums.insert_str(0, &format!("SHA256 (../x) = {}\n", "0".repeat(64)));
    s.write_signed(sums.as_bytes());
    let msg = failed(s.verify());
    assert!(
        msg.starts_with("SHA256: line 1") && msg.contains("../x"),
        "{msg}"
    );

    s.resign(&[RAW, "manifest.json"], None);
    let sums = std::fs::read_to_string(s.dir.join("SHA256")).unwrap();
    let dup = format!("{sums}{}", sums.lines().nth(1).unwrap()) + "\n";
    s.write_signed(dup.as_bytes());
    let msg = failed(s.verify());
    assert!(msg.contains("second time"), "{msg}");
}

#[test]
fn manifest_root_hash_not_matching_image_fails_recompute() {
    let s = signed_folder();
    let path = s.dir.join("manifest.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let real = v["verity"]["root_hash"].as_str().unwrap().to_string();
    let fake = Sha256::of_bytes(b"not the root").hex();
    v["verity"]["root_hash"] = serde_json::Value::String(fake.clone());
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap() + "\n").unwrap();
    s.resign(&[RAW, "manifest.json"], None);
    let msg = failed(s.verify());
    assert_eq!(
        msg,
        format!("root hash: cairn-test-1.raw: image computes {real}, manifest says {fake}")
    );
}

#[test]
fn production_refuses_debug_image() {
    let s = signed_folder();
    let msg = failed(verify::verify(&s.dir, &s.pubkey, true));
    assert_eq!(msg, "production: image has the debug console enabled");
}

// ---------------------------------------------------------------------------
// verity against veritysetup
// ---------------------------------------------------------------------------

fn veritysetup_root(data: &Path, salt: &str) -> String {
    let hash = data.with_extension("hash");
    let out = Command::new("veritysetup")
        .arg("format")
        .arg(data)
        .arg(&hash)
        .args([
            "--data-block-size=4096",
            "--hash-block-size=4096",
            "--hash=sha256",
            &format!("--salt={salt}"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn verity_matches_veritysetup() {
    testkit::tool("veritysetup", "cryptsetup-bin");
    let dir = tempfile::tempdir().unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for (i, blocks) in [1u64, 2, 127, 128, 129, 128 * 128, 128 * 128 + 1]
        .into_iter()
        .enumerate()
    {
        let mut data = vec![0u8; (blocks * 4096) as usize];
        for b in data.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            b.copy_from_slice(&state.to_le_bytes());
        }
        let path = dir.path().join(format!("data{i}"));
        std::fs::write(&path, &data).unwrap();
        for salt in [Sha256::of_bytes(&blocks.to_le_bytes()).hex(), "00ff".into()] {
            let want = veritysetup_root(&path, &salt);
            let got =
                verify::verity_root_hash(&data[..], blocks * 4096, &hex::decode(&salt).unwrap())
                    .unwrap();
            assert_eq!(got.hex(), want, "{blocks} blocks, salt {salt}");
        }
        // Only the first data_size bytes count.
        let mut longer = data.clone();
        longer.extend_from_slice(b"trailing");
        assert_eq!(
            verify::verity_root_hash(&longer[..], blocks * 4096, b"s").unwrap(),
            verify::verity_root_hash(&data[..], blocks * 4096, b"s").unwrap()
        );
    }
    assert!(verify::verity_root_hash(&[0u8; 4096][..], 8192, b"").is_err());
    assert!(verify::verity_root_hash(&[0u8; 4096][..], 4095, b"").is_err());
    assert!(verify::verity_root_hash(&[0u8; 4096][..], 0, b"").is_err());
}

// ---------------------------------------------------------------------------
// GPT
// ---------------------------------------------------------------------------

/// A small sparse disk with a GPT made by sfdisk.
fn small_gpt_disk(dir: &Path) -> Vec<u8> {
    testkit::tool("sfdisk", "fdisk");
    let path = dir.join("disk.raw");
    File::create(&path).unwrap().set_len(8 << 20).unwrap();
    let script = "label: gpt\nunit: sectors\nfirst-lba: 2048\nsector-size: 512\n\
        start=2048, size=4096, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"cairn-esp\"\n\
        start=6144, size=2048, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=\"cairn-root\"\n";
    let mut child = Command::new("sfdisk")
        .args(["--no-reread", "--no-tell-kernel", "--quiet"])
        .arg(&path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    std::fs::read(&path).unwrap()
}

#[test]
fn gpt_parses_sfdisk_output() {
    let dir = tempfile::tempdir().unwrap();
    let disk = small_gpt_disk(dir.path());
    let parts = verify::read_gpt(&mut Cursor::new(&disk), disk.len() as u64).unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0].name, "cairn-esp");
    assert_eq!((parts[0].offset, parts[0].size), (2048 * 512, 4096 * 512));
    assert_eq!(parts[1].name, "cairn-root");
    assert_eq!((parts[1].offset, parts[1].size), (6144 * 512, 2048 * 512));
    // The file must hold the partitions.
    let short = &disk[..(4 << 20) - 512];
    assert!(verify::read_gpt(&mut Cursor::new(short), short.len() as u64).is_err());
}

#[test]
fn gpt_junk_does_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // Pure junk of assorted sizes.
    for len in [0usize, 1, 511, 512, 1023, 1024, 4096, 9000, 70_000] {
        let junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        assert!(verify::read_gpt(&mut Cursor::new(&junk), len as u64).is_err());
        // A lying length must not make it read or allocate absurdly.
        let _ = verify::read_gpt(&mut Cursor::new(&junk), u64::MAX);
    }
    let disk = small_gpt_disk(dir.path());
    let head = disk[..34 * 512].to_vec();
    // Every truncation of the GPT area, claimed at the real length and at
    // its own length.
    for n in (0..head.len()).step_by(97) {
        let _ = verify::read_gpt(&mut Cursor::new(&head[..n]), n as u64);
        let _ = verify::read_gpt(&mut Cursor::new(&head[..n]), disk.len() as u64);
    }
    // Random mutations of the header and entries, with the CRCs both left
    // stale and fixed up so the field checks are reached.
    for round in 0..3000 {
        let mut d = head.clone();
        let at = 512 + (next() as usize % (33 * 512));
        let v = next();
        match round % 3 {
            0 => d[at] = v as u8,
            1 => {
                let at = (at & !7).min(d.len() - 8);
                d[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
            _ => {
                let at = (at & !3).min(d.len() - 4);
                d[at..at + 4].copy_from_slice(&(v as u32).to_le_bytes());
            }
        }
        if round % 2 == 0 {
            fix_crcs(&mut d);
        }
        let len = if round % 5 == 0 {
            u64::MAX
        } else {
            disk.len() as u64
        };
        let _ = verify::read_gpt(&mut Cursor::new(&d), len);
    }
    // Targeted absurd fields.
    for (off, val) in [
        (512 + 80, u32::MAX as u64), // entry count
        (512 + 84, 0),               // entry size
        (512 + 84, u32::MAX as u64), // entry size
        (512 + 72, u64::MAX),        // entry array LBA
        (512 + 12, 0),               // header size
        (512 + 12, u32::MAX as u64), // header size
        (1024 + 32, u64::MAX),       // first LBA of entry 1
        (1024 + 40, u64::MAX),       // last LBA of entry 1
    ] {
        let mut d = head.clone();
        if off == 512 + 72 || off >= 1024 {
            d[off..off + 8].copy_from_slice(&val.to_le_bytes());
        } else {
            d[off..off + 4].copy_from_slice(&(val as u32).to_le_bytes());
        }
        fix_crcs(&mut d);
        assert!(
            verify::read_gpt(&mut Cursor::new(&d), disk.len() as u64).is_err(),
            "offset {off}"
        );
    }
}

fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// Recompute the entry-array and header CRCs of a 512-byte-sector GPT
/// (as far as the possibly mangled header fields allow).
fn fix_crcs(d: &mut [u8]) {
    let u32_at = |d: &[u8], o: usize| u32::from_le_bytes(d[o..o + 4].try_into().unwrap());
    let count = u32_at(d, 512 + 80) as usize;
    let size = u32_at(d, 512 + 84) as usize;
    let lba = u64::from_le_bytes(d[512 + 72..512 + 80].try_into().unwrap());
    if let (Some(len), Ok(start)) = (count.checked_mul(size), usize::try_from(lba)) {
        if let Some(start) = start.checked_mul(512) {
            if let Some(arr) = start
                .checked_add(len)
                .and_then(|end| d.get(start..end))
                .filter(|_| len > 0)
            {
                let c = crc32(arr);
                d[512 + 88..512 + 92].copy_from_slice(&c.to_le_bytes());
            }
        }
    }
    let hsize = (u32_at(d, 512 + 12) as usize).clamp(92, 512);
    d[512 + 16..512 + 20].fill(0);
    let c = crc32(&d[512..512 + hsize]);
    d[512 + 16..512 + 20].copy_from_slice(&c.to_le_bytes());
}

// ---------------------------------------------------------------------------
// cairn's own signing, read by the real OpenBSD signify
// ---------------------------------------------------------------------------

#[test]
fn signify_openbsd_checks_a_folder_cairn_signed() {
    let s = signed_folder();
    testkit::tool("signify-openbsd", "signify-openbsd");
    // Sign through the build's own code path, not the test helper.
    std::fs::remove_file(s.dir.join("SHA256")).unwrap();
    std::fs::remove_file(s.dir.join("SHA256.sig")).unwrap();
    cairn::release::sign::sign_dir(&s.dir, &s.key, "test.pub").unwrap();
    let run = || {
        Command::new("signify-openbsd")
            .args(["-C", "-p"])
            .arg(&s.pubkey)
            .args(["-x", "SHA256.sig"])
            .current_dir(&s.dir)
            .output()
            .unwrap()
    };
    let out = run();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    for f in [RAW, "manifest.json"] {
        assert!(text.contains(&format!("{f}: OK")), "{text}");
    }
    s.verify().unwrap();
    // Control: signify notices a changed file.
    flip_byte(&s.dir.join("manifest.json"), 10);
    let out = run();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("manifest.json: FAIL"), "{text}");
}

#[test]
fn iso_root_hash_is_recomputed_from_the_medium() {
    let s = signed_folder();
    let iso_src =
        testkit::test_image(Path::new(TEST_IMAGE), &["cairn-test-1.iso"]).join("cairn-test-1.iso");
    let iso = s.dir.join("cairn-test-1.iso");
    std::fs::copy(&iso_src, &iso).unwrap();
    std::fs::copy(
        Path::new(TEST_IMAGE).join("manifest.json"),
        s.dir.join("manifest.json"),
    )
    .unwrap();
    keep_outputs(&s.dir, &[RAW, "cairn-test-1.iso"]);
    s.resign(&[RAW, "manifest.json", "cairn-test-1.iso"], None);
    let r = s.verify().unwrap();
    assert!(
        r.checks
            .iter()
            .any(|c| c.contains("cairn-test-1.iso: recomputed")),
        "{:?}",
        r.checks
    );
    // A flipped byte in the ISO's root file, with SHA256 re-signed to match,
    // is caught only by the recomputation.
    let files = cairn::media::iso::list_iso(&iso).unwrap();
    let root = files
        .iter()
        .find(|f| f.path == cairn::media::iso::ISO_ROOT)
        .unwrap();
    flip_byte(&iso, root.offset + root.size / 2);
    // The signer (us) also records the new digest in the manifest, so only
    // the recomputation can notice.
    let path = s.dir.join("manifest.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let new = Sha256::of_file(&iso).unwrap().hex();
    for o in v["outputs"].as_array_mut().unwrap() {
        if o["file"] == "cairn-test-1.iso" {
            o["sha256"] = serde_json::Value::String(new.clone());
        }
    }
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap() + "\n").unwrap();
    s.resign(&[RAW, "manifest.json", "cairn-test-1.iso"], None);
    let msg = failed(s.verify());
    assert!(
        msg.starts_with("root hash: cairn-test-1.iso: image computes"),
        "{msg}"
    );
}

#[test]
fn qcow2_of_another_raw_fails_on_the_test_image() {
    let s = signed_folder();
    // A qcow2 of the raw with one byte of the root changed, recorded in the
    // manifest and signed: only comparing it with the raw can notice.
    let other = s.tmp.path().join("other.raw");
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(s.raw())
        .arg(&other)
        .status()
        .unwrap();
    assert!(st.success());
    flip_byte(&other, root_offset(&s) + 4096 * 5 + 3);
    let qcow2 = s.dir.join("cairn-test-1.qcow2");
    let convert = |from: &Path| {
        let _ = std::fs::remove_file(&qcow2);
        let st = Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(from)
            .arg(&qcow2)
            .status()
            .unwrap();
        assert!(st.success());
        let path = s.dir.join("manifest.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let outs = v["outputs"].as_array_mut().unwrap();
        outs.retain(|o| o["file"] != "cairn-test-1.qcow2");
        outs.push(serde_json::json!({
            "file": "cairn-test-1.qcow2",
            "size": std::fs::metadata(&qcow2).unwrap().len(),
            "sha256": Sha256::of_file(&qcow2).unwrap().hex(),
        }));
        std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap() + "\n").unwrap();
        s.resign(&[RAW, "manifest.json", "cairn-test-1.qcow2"], None);
    };
    // Control: a qcow2 of the raw itself passes.
    convert(&s.raw());
    let r = s.verify().unwrap();
    assert!(
        r.checks.iter().any(|c| c
            == "qcow2: cairn-test-1.qcow2: content equals cairn-test-1.raw (qemu-img compare)"),
        "{:?}",
        r.checks
    );
    convert(&other);
    let msg = failed(s.verify());
    assert!(
        msg.starts_with("qcow2: cairn-test-1.qcow2: content differs from cairn-test-1.raw"),
        "{msg}"
    );
}
