//! `cairn::field::flash`: a signed copy of the qemu-test image is written with
//! `to_file` (no loop devices), and every refusal leaves the target
//! untouched. Fails when the test image has not been built (the boot tests
//! build it; `make test` runs them first).

use std::fs::OpenOptions;
use std::path::Path;

use cairn::field::flash::{flash, FlashError, FlashOptions};
use cairn::host::digest::Sha256;
use cairn::release::signify;

mod common;
use common::{flip_byte, signed_folder, Signed, RAW};

trait Flash {
    fn opts(&self, device: &Path) -> FlashOptions;
}

impl Flash for Signed {
    fn opts(&self, device: &Path) -> FlashOptions {
        FlashOptions {
            image: self.raw(),
            device: device.to_path_buf(),
            pubkey: self.pubkey.clone(),
            yes: true,
            to_file: true,
            max_size: None,
            site: None,
            write: Default::default(),
            allow_fixed: false,
            allow_large: false,
            discard_audit: false,
        }
    }
}

fn refused(r: Result<cairn::field::flash::FlashReport, FlashError>) -> String {
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
    let s = signed_folder();
    let target = s.tmp.path().join("stick.img");
    let r = flash(&s.opts(&target)).unwrap_or_else(|e| panic!("{e}"));
    println!("{r}");
    assert_eq!(r.sha256, s.manifest_raw_digest());
    assert_eq!(r.key_id, s.key.public().key_id());
    assert_eq!(r.bytes, std::fs::metadata(s.raw()).unwrap().len());
    assert_eq!(Sha256::of_file(&target).unwrap(), s.manifest_raw_digest());

    // Overwriting a larger existing file leaves exactly the image.
    let f = OpenOptions::new().write(true).open(&target).unwrap();
    f.set_len(r.bytes + 12345).unwrap();
    drop(f);
    flip_byte(&target, 4096);
    flash(&s.opts(&target)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(std::fs::metadata(&target).unwrap().len(), r.bytes);
    assert_eq!(Sha256::of_file(&target).unwrap(), s.manifest_raw_digest());
}

#[test]
fn flash_refuses_a_tampered_image_and_writes_nothing() {
    let s = signed_folder();
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
    let s = signed_folder();
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
    let s = signed_folder();
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
    let s = signed_folder();
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

#[test]
fn flash_with_a_site_file_puts_it_on_the_esp_and_refuses_a_bad_one_first() {
    let s = signed_folder();
    // A site key of this test's own, declared in the (re-signed) manifest.
    let site_key = signify::generate();
    let path = s.dir.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let public = site_key.public();
    m["site"] = serde_json::json!({
        "allow": ["hostname"],
        "ingress": [],
        "key_id": public.key_id(),
        "public_key": public.to_file_text("sites public key"),
    });
    std::fs::write(&path, serde_json::to_string_pretty(&m).unwrap() + "\n").unwrap();
    s.resign(&[RAW, "manifest.json"], None);
    let decl = cairn::release::site::declaration_beside(&s.raw()).unwrap();
    let site = s.tmp.path().join("north.toml");
    std::fs::write(
        &site,
        "name = \"north\"\nhostname = \"north-1\"\nserial = \"1\"\n",
    )
    .unwrap();
    let signed = cairn::release::site::sign(&site, &site_key, &decl).unwrap();

    let target = s.tmp.path().join("stick.img");
    let mut o = s.opts(&target);
    o.site = Some(site.clone());
    let r = flash(&o).unwrap_or_else(|e| panic!("{e}"));
    println!("{r}");
    assert_eq!(
        r.site.as_deref(),
        Some(format!("north (key {})", public.key_id()).as_str())
    );
    assert_eq!(r.site_role.as_deref(), Some("role server, node north-1"));
    assert!(
        r.to_string()
            .contains("written to the ESP and read back; role server, node north-1"),
        "{r}"
    );
    cairn::release::site::read_back(&target, &signed).unwrap();

    // Control: a changed byte is refused before anything is written.
    // The signed text (with the image and version sign added), one byte changed.
    let changed = std::fs::read_to_string(&site)
        .unwrap()
        .replace("north-1", "north-2");
    std::fs::write(&site, changed).unwrap();
    let fresh = s.tmp.path().join("fresh.img");
    let mut o = s.opts(&fresh);
    o.site = Some(site);
    match flash(&o) {
        Err(e @ FlashError::BadInput(_)) => {
            assert!(e.to_string().contains("does not verify"), "{e}")
        }
        other => panic!("expected BadInput, got {other:?}"),
    }
    assert!(!fresh.exists(), "the target was written");
}

#[test]
fn site_file_on_the_iso_lands_in_its_efi_image() {
    let d = tempfile::tempdir().unwrap();
    let src = testkit::test_image(
        Path::new(common::TEST_IMAGE),
        &["cairn-test-1.iso", "manifest.json"],
    );
    let iso = d.path().join("cairn-test-1.iso");
    std::fs::copy(src.join("cairn-test-1.iso"), &iso).unwrap();
    // The declaration of this test's own site key in the manifest beside it.
    let site_key = signify::generate();
    let public = site_key.public();
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("manifest.json")).unwrap()).unwrap();
    m["site"] = serde_json::json!({
        "allow": ["hostname"],
        "ingress": [],
        "key_id": public.key_id(),
        "public_key": public.to_file_text("sites public key"),
    });
    std::fs::write(d.path().join("manifest.json"), m.to_string()).unwrap();
    let decl = cairn::release::site::declaration_beside(&iso).unwrap();
    let site = d.path().join("depot.toml");
    std::fs::write(
        &site,
        "name = \"depot\"\nhostname = \"depot-1\"\nserial = \"1\"\n",
    )
    .unwrap();
    let signed = cairn::release::site::sign(&site, &site_key, &decl).unwrap();

    let out = d.path().join("depot.iso");
    cairn::release::site::apply(
        &iso,
        &site,
        &out,
        cairn::release::site::ReleaseTrust::Unverified,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    // The GPT's EFI partition is the ISO's /boot/efi.img, byte for byte.
    let efi = cairn::media::iso::list_iso(&out)
        .unwrap()
        .into_iter()
        .find(|f| f.path == cairn::media::iso::ISO_EFI_IMG)
        .expect("the ISO has its EFI image");
    assert_eq!(cairn::release::site::esp_offset(&out).unwrap(), efi.offset);
    cairn::release::site::read_back(&out, &signed).unwrap();
    // What the initramfs reads: the site file inside the EFI image file.
    let img = d.path().join("efi.img");
    cairn::media::iso::read_file_from_iso(&out, cairn::media::iso::ISO_EFI_IMG, &img).unwrap();
    let back = d.path().join("back.toml");
    let st = std::process::Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-n", "-i"])
        .arg(&img)
        .arg("::/cairn/site.toml")
        .arg(&back)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(std::fs::read(&back).unwrap(), signed.text);
    // Control: the release's ISO itself is unchanged and holds no site file.
    assert_eq!(
        Sha256::of_file(&iso).unwrap(),
        Sha256::of_file(&src.join("cairn-test-1.iso")).unwrap()
    );
    let other = cairn::release::site::SignedSite {
        text: b"name = \"south\"\n".to_vec(),
        ..signed
    };
    assert!(cairn::release::site::read_back(&out, &other).is_err());
    assert!(cairn::release::site::read_back(&iso, &other).is_err());
}
