//! `cairn::flash`: a signed copy of the qemu-test image is written with
//! `to_file` (no loop devices), and every refusal leaves the target
//! untouched. Skipped when the test image has not been built, unless
//! CAIRN_REQUIRE_TEST_IMAGE is set.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use cairn::digest::Sha256;
use cairn::flash::{flash, FlashError, FlashOptions};
use cairn::signify::{self, SecretKey};

const TEST_IMAGE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../target/qemu-tests/out/cairn-test-1"
);
const RAW: &str = "cairn-test-1.raw";

struct Signed {
    tmp: tempfile::TempDir,
    dir: PathBuf,
    key: SecretKey,
    pubkey: PathBuf,
    raw_digest: Sha256,
}

impl Signed {
    fn raw(&self) -> PathBuf {
        self.dir.join(RAW)
    }

    fn opts(&self, device: &Path) -> FlashOptions {
        FlashOptions {
            image: self.raw(),
            device: device.to_path_buf(),
            pubkey: self.pubkey.clone(),
            yes: true,
            to_file: true,
            max_size: None,
        }
    }
}

/// The test image is built in every format; these tests work on a copy
/// whose manifest lists only the media copied (as a `--format` build would).
fn keep_outputs(dir: &Path, keep: &[&str]) {
    let path = dir.join("manifest.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    if let Some(outs) = v["outputs"].as_array_mut() {
        outs.retain(|o| keep.iter().any(|k| o["file"].as_str() == Some(k)));
    }
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap() + "\n").unwrap();
}

/// Copies the qemu-test image (sparsely) and signs it with a throwaway key.
fn signed_folder() -> Option<Signed> {
    let src = Path::new(TEST_IMAGE);
    if !src.join(RAW).is_file() || !src.join("manifest.json").is_file() {
        if std::env::var_os("CAIRN_REQUIRE_TEST_IMAGE").is_some() {
            panic!("no test image at {TEST_IMAGE}; run make qemu-test first");
        }
        println!("skipped: no test image; run make qemu-test first");
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cairn-test-1");
    std::fs::create_dir(&dir).unwrap();
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(src.join(RAW))
        .arg(src.join("manifest.json"))
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success());
    keep_outputs(&dir, &[RAW]);
    let m = cairn::manifest::read(&dir.join("manifest.json")).unwrap();
    let raw_digest = m.outputs.iter().find(|o| o.file == RAW).unwrap().sha256;
    let key = signify::generate();
    let pubkey = tmp.path().join("test.pub");
    std::fs::write(&pubkey, key.public().to_file_text("test public key")).unwrap();
    let mut names = [RAW, "manifest.json"];
    names.sort();
    let mut sums = String::new();
    for n in names {
        let d = if n == RAW {
            raw_digest
        } else {
            Sha256::of_file(&dir.join(n)).unwrap()
        };
        sums.push_str(&format!("SHA256 ({n}) = {d}\n"));
    }
    std::fs::write(dir.join("SHA256"), &sums).unwrap();
    let sig = key.sign(sums.as_bytes());
    std::fs::write(
        dir.join("SHA256.sig"),
        sig.to_embedded_file_bytes("test.pub", sums.as_bytes()),
    )
    .unwrap();
    Some(Signed {
        tmp,
        dir,
        key,
        pubkey,
        raw_digest,
    })
}

fn flip_byte(path: &Path, offset: u64) {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= 0x01;
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&b).unwrap();
}

fn refused(r: Result<cairn::flash::FlashReport, FlashError>) -> String {
    match r {
        Err(e @ FlashError::Refused(_)) => {
            assert_eq!(e.exit_code(), 1);
            let m = e.to_string();
            assert!(!m.contains('\n'), "one line: {m}");
            m
        }
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[test]
fn flash_to_file_writes_the_image_and_reads_it_back() {
    let Some(s) = signed_folder() else { return };
    let target = s.tmp.path().join("stick.img");
    let r = flash(&s.opts(&target)).unwrap_or_else(|e| panic!("{e}"));
    println!("{r}");
    assert_eq!(r.sha256, s.raw_digest);
    assert_eq!(r.key_id, s.key.public().key_id());
    assert_eq!(r.bytes, std::fs::metadata(s.raw()).unwrap().len());
    assert_eq!(Sha256::of_file(&target).unwrap(), s.raw_digest);

    // Overwriting a larger existing file leaves exactly the image.
    let f = OpenOptions::new().write(true).open(&target).unwrap();
    f.set_len(r.bytes + 12345).unwrap();
    drop(f);
    flip_byte(&target, 4096);
    flash(&s.opts(&target)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(std::fs::metadata(&target).unwrap().len(), r.bytes);
    assert_eq!(Sha256::of_file(&target).unwrap(), s.raw_digest);
}

#[test]
fn flash_refuses_a_tampered_image_and_writes_nothing() {
    let Some(s) = signed_folder() else { return };
    flip_byte(&s.raw(), 3 << 20);
    let target = s.tmp.path().join("stick.img");
    let msg = refused(flash(&s.opts(&target)));
    println!("{msg}");
    assert!(msg.starts_with("flash: refusing: "), "{msg}");
    assert!(msg.contains("digest") && msg.contains(RAW), "{msg}");
    assert!(!target.exists(), "a target was created");
    // An existing target stays as it was.
    std::fs::write(&target, b"precious").unwrap();
    refused(flash(&s.opts(&target)));
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
}

#[test]
fn flash_refuses_the_wrong_key() {
    let Some(s) = signed_folder() else { return };
    let other = s.tmp.path().join("other.pub");
    std::fs::write(
        &other,
        signify::generate().public().to_file_text("other key"),
    )
    .unwrap();
    let target = s.tmp.path().join("stick.img");
    let mut o = s.opts(&target);
    o.pubkey = other;
    let msg = refused(flash(&o));
    println!("{msg}");
    assert!(msg.contains("signature"), "{msg}");
    assert!(!target.exists());
}

#[test]
fn flash_refuses_a_too_small_target() {
    let Some(s) = signed_folder() else { return };
    let target = s.tmp.path().join("stick.img");
    std::fs::write(&target, b"old").unwrap();
    let mut o = s.opts(&target);
    o.max_size = Some(512 << 20);
    let msg = refused(flash(&o));
    println!("{msg}");
    assert!(msg.contains("too small"), "{msg}");
    assert_eq!(std::fs::read(&target).unwrap(), b"old");
}

#[test]
fn flash_refuses_a_regular_file_without_to_file() {
    let Some(s) = signed_folder() else { return };
    let target = s.tmp.path().join("stick.img");
    std::fs::write(&target, b"old").unwrap();
    let mut o = s.opts(&target);
    o.to_file = false;
    match flash(&o) {
        Err(e @ FlashError::BadInput(_)) => {
            assert_eq!(e.exit_code(), 2);
            assert!(e.to_string().contains("--to-file"), "{e}");
        }
        other => panic!("expected BadInput, got {other:?}"),
    }
    assert_eq!(std::fs::read(&target).unwrap(), b"old");
    // A missing target without --to-file is bad input too, and not created.
    let mut o = s.opts(&s.tmp.path().join("nope.img"));
    o.to_file = false;
    assert!(matches!(flash(&o), Err(FlashError::BadInput(_))));
    assert!(!s.tmp.path().join("nope.img").exists());
}
