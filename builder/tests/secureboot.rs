//! `cairn verify` on Secure Boot releases: a copy of the qemu-test image
//! whose UKI is signed as `cairn build --sb-key` signs it (sbsign, the
//! certificate shipped as secure-boot.crt, its fingerprint in the manifest)
//! verifies; a changed signature, certificate or fingerprint, a wrong
//! PCR 11 prediction, and an unaccepted BIOS path in production do not;
//! nor do unsigned UKIs in production, unless the recipe accepted them.
//! With shim in front (`[boot] shim`, laid out as the build lays it out):
//! shim and MokManager are checked by digest and the UKI behind them as
//! before; another shim, a missing MokManager, or a manifest that does not
//! match the layout fail.

use std::path::Path;

use cairn::host::digest::Sha256;
use cairn::pipeline::sbsign::{self, SbKey};
use cairn::release::secureboot::CERT_FILE;
use cairn::release::verify::{self, VerifyError, VerifyReport};

mod common;
use common::{signed_folder, Signed, RAW};

fn mtools(args: &[&std::ffi::OsStr]) {
    let mut cmd = cairn::host::runner::command("mcopy");
    cmd.env("MTOOLS_SKIP_CHECK", "1").args(args);
    cairn::host::runner::output("test", cmd).unwrap_or_else(|e| panic!("{e:#}"));
}

fn esp_offset(dir: &Path) -> u64 {
    let m = cairn::release::manifest::read(&dir.join("manifest.json")).unwrap();
    m.partitions
        .iter()
        .find(|p| p.label == cairn::media::disk::LABEL_ESP)
        .unwrap()
        .offset
}

fn edit_manifest(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("manifest.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap() + "\n").unwrap();
}

fn new_key(dir: &Path, name: &str) -> SbKey {
    let prefix = dir.join(name);
    cairn::release::secureboot::keygen(&prefix).unwrap();
    SbKey::load(
        &dir.join(format!("{name}.sb.key")),
        &dir.join(format!("{name}.sb.crt")),
    )
    .unwrap()
}

/// Swaps the raw's UKI for `edit(uki)`, then records the raw's new digest
/// and size in the manifest and re-signs SHA256 (as the signer would).
fn replace_uki(s: &Signed, edit: impl FnOnce(&Path)) {
    let fat = format!("{}@@{}", s.raw().display(), esp_offset(&s.dir));
    let uki = s.tmp.path().join("BOOTX64.EFI");
    let _ = std::fs::remove_file(&uki);
    mtools(&[
        "-n".as_ref(),
        "-i".as_ref(),
        fat.as_ref(),
        "::/EFI/BOOT/BOOTX64.EFI".as_ref(),
        uki.as_os_str(),
    ]);
    edit(&uki);
    mtools(&[
        "-o".as_ref(),
        "-i".as_ref(),
        fat.as_ref(),
        uki.as_os_str(),
        "::/EFI/BOOT/BOOTX64.EFI".as_ref(),
    ]);
    let digest = Sha256::of_file(&s.raw()).unwrap();
    let size = std::fs::metadata(s.raw()).unwrap().len();
    edit_manifest(&s.dir, |v| {
        for o in v["outputs"].as_array_mut().unwrap() {
            if o["file"] == RAW {
                o["sha256"] = digest.hex().into();
                o["size"] = size.into();
            }
        }
    });
    resign(s, Some(digest));
}

fn resign(s: &Signed, raw: Option<Sha256>) {
    let mut names = vec![RAW, "manifest.json"];
    if s.dir.join(CERT_FILE).is_file() {
        names.push(CERT_FILE);
    }
    let raw = raw.unwrap_or_else(|| s.manifest_raw_digest());
    s.resign(&names, Some(raw));
}

/// The test image, its UKI signed with a fresh key, as a `--sb-key`
/// build ships it.
fn secure_boot_folder() -> (Signed, SbKey) {
    let s = signed_folder();
    let key = new_key(s.tmp.path(), "site");
    let k2 = key.clone();
    replace_uki(&s, |uki| sbsign::sign_efi(&k2, uki, 1_735_689_600).unwrap());
    std::fs::copy(&key.cert, s.dir.join(CERT_FILE)).unwrap();
    let fp = sbsign::cert_fingerprint(&key.cert).unwrap();
    edit_manifest(&s.dir, |v| {
        v["boot"]["secure_boot_cert_sha256"] = fp.hex().into()
    });
    resign(&s, None);
    (s, key)
}

fn verify(s: &Signed, production: bool) -> Result<VerifyReport, VerifyError> {
    verify::verify(&s.dir, &s.pubkey, production)
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

#[test]
fn a_signed_release_verifies_and_a_changed_signature_does_not() {
    let (s, _key) = secure_boot_folder();
    let r = verify(&s, false).unwrap();
    let text = r.to_string();
    println!("{text}");
    assert!(
        text.contains("signature verifies with secure-boot.crt; its signed command line carries the root hash"),
        "{text}"
    );
    assert!(
        text.contains("pcr 11: cairn-test-1.raw: UKI measures to the predicted"),
        "{text}"
    );
    // The signature's last byte changed (SHA256 re-signed by the signify
    // key holder, so only the Secure Boot check can catch it).
    replace_uki(&s, |uki| {
        let mut d = std::fs::read(uki).unwrap();
        let n = d.len();
        d[n - 20] ^= 0x01;
        std::fs::write(uki, d).unwrap();
    });
    let m = failed(verify(&s, false));
    assert!(
        m.contains("BOOTX64.EFI is not signed by secure-boot.crt"),
        "{m}"
    );
}

#[test]
fn a_uki_signed_by_another_key_or_a_changed_fingerprint_is_rejected() {
    let (s, _key) = secure_boot_folder();
    let other = new_key(s.tmp.path(), "other");
    let other_fp = sbsign::cert_fingerprint(&other.cert).unwrap();
    // 1. The manifest names another certificate.
    let good = std::fs::read(s.dir.join("manifest.json")).unwrap();
    edit_manifest(&s.dir, |v| {
        v["boot"]["secure_boot_cert_sha256"] = other_fp.hex().into()
    });
    resign(&s, None);
    let m = failed(verify(&s, false));
    assert!(
        m.contains("manifest says") && m.contains(&other_fp.hex()),
        "{m}"
    );
    // 2. ... and ships it: the UKI's signature is not that key's.
    std::fs::copy(&other.cert, s.dir.join(CERT_FILE)).unwrap();
    resign(&s, None);
    let m = failed(verify(&s, false));
    assert!(m.contains("is not signed by secure-boot.crt"), "{m}");
    // Control: the original manifest and certificate pass again.
    std::fs::write(s.dir.join("manifest.json"), good).unwrap();
    std::fs::copy(s.tmp.path().join("site.sb.crt"), s.dir.join(CERT_FILE)).unwrap();
    resign(&s, None);
    verify(&s, false).unwrap();
    // 3. An unsigned UKI where the manifest promises a signature.
    let fp = sbsign::cert_fingerprint(&s.dir.join(CERT_FILE)).unwrap();
    replace_uki(&s, |uki| {
        let mut cmd = cairn::host::runner::command("sbattach");
        cmd.arg("--remove").arg(uki);
        cairn::host::runner::output("test", cmd).unwrap_or_else(|e| panic!("{e:#}"));
    });
    let m = failed(verify(&s, false));
    assert!(m.contains("is not signed by"), "{m} ({fp})");
}

#[test]
fn a_wrong_pcr11_prediction_is_rejected() {
    let s = signed_folder();
    verify(&s, false).unwrap();
    edit_manifest(&s.dir, |v| {
        v["boot"]["pcr11_sha256"] = Sha256::of_bytes(b"another").hex().into()
    });
    resign(&s, None);
    let m = failed(verify(&s, false));
    assert!(
        m.contains("pcr 11: cairn-test-1.raw: its UKI measures to"),
        "{m}"
    );
}

#[test]
fn production_refuses_an_unaccepted_bios_path() {
    let s = signed_folder();
    // Not the debug console: only the BIOS path is in question here.
    edit_manifest(&s.dir, |v| {
        v["flags"]["debug_console"] = false.into();
        v["boot"]["bios_boot"] = true.into();
        v["boot"]["allow_bios"] = false.into();
        // Unsigned UKIs, accepted: only the BIOS path is in question.
        v["boot"]["allow_unsigned"] = true.into();
    });
    resign(&s, None);
    let m = failed(verify(&s, true));
    assert!(
        m.starts_with("production: the ISO boots legacy BIOS"),
        "{m}"
    );
    assert!(m.contains("allow_bios = true"), "{m}");
    // Control: the recipe's explicit opt-in is accepted, and inspect says so.
    edit_manifest(&s.dir, |v| v["boot"]["allow_bios"] = true.into());
    resign(&s, None);
    let r = verify(&s, true).unwrap();
    assert!(r.to_string().contains("BIOS path on, accepted"), "{r}");
    let text = cairn::release::inspect::inspect(&s.dir)
        .unwrap()
        .render_text();
    assert!(text.contains("bios boot    ON, UNVERIFIED"), "{text}");
    assert!(text.contains("accepted by [boot] allow_bios"), "{text}");
    assert!(text.contains("pcr 11       "), "{text}");
}

/// Runs mtools' `tool` with `args` on the raw's ESP (`fat` is
/// `image@@offset`).
fn mtool(tool: &str, args: &[&std::ffi::OsStr]) {
    let mut cmd = cairn::host::runner::command(tool);
    cmd.env("MTOOLS_SKIP_CHECK", "1").args(args);
    cairn::host::runner::output("test", cmd).unwrap_or_else(|e| panic!("{e:#}"));
}

/// Records the raw's new digest and size in the manifest and re-signs.
fn raw_changed(s: &Signed) {
    let digest = Sha256::of_file(&s.raw()).unwrap();
    let size = std::fs::metadata(s.raw()).unwrap().len();
    edit_manifest(&s.dir, |v| {
        for o in v["outputs"].as_array_mut().unwrap() {
            if o["file"] == RAW {
                o["sha256"] = digest.hex().into();
                o["size"] = size.into();
            }
        }
    });
    resign(s, Some(digest));
}

/// The signed test image laid out as a `[boot] shim` build lays out its
/// ESP: the host's shim as BOOTX64.EFI, MokManager beside it, the signed
/// UKI as grubx64.efi; the manifest's `boot.shim` names them.
fn shim_folder() -> Signed {
    use cairn::pipeline::shim::{HOST_MOK_MANAGER, HOST_SHIM};
    testkit::file(HOST_SHIM, "shim-signed");
    let (s, _key) = secure_boot_folder();
    let fat = format!("{}@@{}", s.raw().display(), esp_offset(&s.dir));
    let uki = s.tmp.path().join("uki.efi");
    mtool(
        "mcopy",
        &[
            "-n".as_ref(),
            "-i".as_ref(),
            fat.as_ref(),
            "::/EFI/BOOT/BOOTX64.EFI".as_ref(),
            uki.as_os_str(),
        ],
    );
    // shim over the UKI first: the ESP holds one UKI.
    for (from, to) in [
        (Path::new(HOST_SHIM), "::/EFI/BOOT/BOOTX64.EFI"),
        (Path::new(HOST_MOK_MANAGER), "::/EFI/BOOT/mmx64.efi"),
        (uki.as_path(), "::/EFI/BOOT/grubx64.efi"),
    ] {
        mtool(
            "mcopy",
            &[
                "-o".as_ref(),
                "-i".as_ref(),
                fat.as_ref(),
                from.as_os_str(),
                to.as_ref(),
            ],
        );
    }
    let digest = |p: &str| Sha256::of_file(Path::new(p)).unwrap().hex();
    let (shim, mm) = (digest(HOST_SHIM), digest(HOST_MOK_MANAGER));
    edit_manifest(&s.dir, |v| {
        v["boot"]["shim"] = serde_json::json!({
            "shim": {"path": "EFI/BOOT/BOOTX64.EFI", "sha256": shim,
                     "package": "shim-signed", "version": "1.51"},
            "mok_manager": {"path": "EFI/BOOT/mmx64.efi", "sha256": mm,
                            "package": "shim-helpers-amd64-signed", "version": "1"},
            "uki": "EFI/BOOT/grubx64.efi",
        })
    });
    raw_changed(&s);
    s
}

#[test]
fn with_shim_verify_checks_its_digests_and_finds_the_signed_uki_behind_it() {
    let s = shim_folder();
    let text = verify(&s, false).unwrap().to_string();
    println!("{text}");
    for want in [
        "shim: cairn-test-1.raw: EFI/BOOT/BOOTX64.EFI is shim-signed 1.51 and EFI/BOOT/mmx64.efi is shim-helpers-amd64-signed 1, by digest; the UKI is EFI/BOOT/grubx64.efi",
        "secure boot: cairn-test-1.raw: grubx64.efi signature verifies with secure-boot.crt; its signed command line carries the root hash",
        "uki: cairn-test-1.raw: grubx64.efi command line carries cairn.roothash",
        "pcr 11: cairn-test-1.raw: UKI measures to the predicted",
    ] {
        assert!(text.contains(want), "{want:?} missing: {text}");
    }
    let inspect = cairn::release::inspect::inspect(&s.dir)
        .unwrap()
        .render_text();
    assert!(
        inspect.contains("shim         shim-signed 1.51 (sha256 ")
            && inspect.contains(
                "starts the UKI at EFI/BOOT/grubx64.efi only if its signer is enrolled as a MOK"
            ),
        "{inspect}"
    );

    // The manifest without shim: BOOTX64.EFI is then read as the UKI,
    // and shim is no UKI.
    let good = std::fs::read(s.dir.join("manifest.json")).unwrap();
    edit_manifest(&s.dir, |v| {
        v["boot"].as_object_mut().unwrap().remove("shim");
    });
    resign(&s, None);
    let m = failed(verify(&s, false));
    assert!(m.contains("BOOTX64.EFI"), "{m}");
    // A shim chain with no certificate: shim would start nothing.
    std::fs::write(s.dir.join("manifest.json"), &good).unwrap();
    edit_manifest(&s.dir, |v| {
        v["boot"]["secure_boot_cert_sha256"] = serde_json::Value::Null
    });
    resign(&s, None);
    let m = failed(verify(&s, false));
    assert!(m.contains("names no Secure Boot certificate"), "{m}");
    // Control: the manifest as it was verifies again.
    std::fs::write(s.dir.join("manifest.json"), &good).unwrap();
    resign(&s, None);
    verify(&s, false).unwrap();
}

#[test]
fn with_shim_another_shim_or_a_missing_mok_manager_is_rejected() {
    let s = shim_folder();
    let fat = format!("{}@@{}", s.raw().display(), esp_offset(&s.dir));
    // Another EFI binary where shim should be (MokManager, also signed).
    let mm = Path::new(cairn::pipeline::shim::HOST_MOK_MANAGER);
    mtool(
        "mcopy",
        &[
            "-o".as_ref(),
            "-i".as_ref(),
            fat.as_ref(),
            mm.as_os_str(),
            "::/EFI/BOOT/BOOTX64.EFI".as_ref(),
        ],
    );
    raw_changed(&s);
    let m = failed(verify(&s, false));
    assert!(
        m.contains("shim: cairn-test-1.raw: EFI/BOOT/BOOTX64.EFI has sha256")
            && m.contains("manifest says")
            && m.contains("(shim-signed 1.51)"),
        "{m}"
    );
    // shim back, MokManager gone: enrolment could not run.
    let shim = Path::new(cairn::pipeline::shim::HOST_SHIM);
    mtool(
        "mcopy",
        &[
            "-o".as_ref(),
            "-i".as_ref(),
            fat.as_ref(),
            shim.as_os_str(),
            "::/EFI/BOOT/BOOTX64.EFI".as_ref(),
        ],
    );
    mtool(
        "mdel",
        &[
            "-i".as_ref(),
            fat.as_ref(),
            "::/EFI/BOOT/mmx64.efi".as_ref(),
        ],
    );
    raw_changed(&s);
    let m = failed(verify(&s, false));
    assert!(
        m.contains("shim: cairn-test-1.raw: cannot extract EFI/BOOT/mmx64.efi"),
        "{m}"
    );
    // Control: MokManager back, and the release verifies.
    mtool(
        "mcopy",
        &[
            "-o".as_ref(),
            "-i".as_ref(),
            fat.as_ref(),
            mm.as_os_str(),
            "::/EFI/BOOT/mmx64.efi".as_ref(),
        ],
    );
    raw_changed(&s);
    verify(&s, false).unwrap();
}

/// `cairn verify --production` as a user runs it: (exit code, stdout, stderr).
fn verify_cli(s: &Signed) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("verify")
        .arg(&s.dir)
        .arg("--pubkey")
        .arg(&s.pubkey)
        .arg("--production")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn production_refuses_unsigned_ukis_unless_the_recipe_accepts_them() {
    // No debug console, no BIOS path: only the signature is in question.
    let production = |v: &mut serde_json::Value| {
        v["flags"]["debug_console"] = false.into();
        v["boot"]["bios_boot"] = false.into();
    };
    let s = signed_folder();
    edit_manifest(&s.dir, production);
    resign(&s, None);
    // Without --production the unsigned release verifies (a test build).
    verify(&s, false).unwrap();
    let (code, out, err) = verify_cli(&s);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("production: the UKIs are not Secure-Boot signed"),
        "{err}"
    );
    assert!(err.contains("--sb-key"), "{err}");
    assert!(err.contains("[boot] allow_unsigned = true"), "{err}");
    assert_eq!(
        failed(verify(&s, true)),
        cairn::release::secureboot::UNSIGNED_REFUSAL
    );

    // Control: the same release signed passes production, with no warning.
    let (signed, _key) = secure_boot_folder();
    edit_manifest(&signed.dir, production);
    resign(&signed, None);
    let (code, out, err) = verify_cli(&signed);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("WARNING"), "{out}");

    // The recipe's explicit opt-in: passes, and says so loudly.
    edit_manifest(&s.dir, |v| v["boot"]["allow_unsigned"] = true.into());
    resign(&s, None);
    let (code, out, err) = verify_cli(&s);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("note  WARNING: production: the UKIs are NOT Secure-Boot signed"),
        "{out}"
    );
    let text = cairn::release::inspect::inspect(&s.dir)
        .unwrap()
        .render_text();
    assert!(
        text.contains("WARNING: accepted in production by [boot] allow_unsigned"),
        "{text}"
    );
}

#[test]
fn without_mok_manager_verify_requires_the_esp_to_hold_none() {
    // `[boot] mok_manager = false`: the manifest says null.
    let s = shim_folder();
    edit_manifest(&s.dir, |v| {
        v["boot"]["shim"]["mok_manager"] = serde_json::Value::Null
    });
    resign(&s, None);
    // The attack the setting is for: MokManager still on the stick, which
    // the manifest says has none.
    let m = failed(verify(&s, false));
    assert!(
        m.contains("shim: cairn-test-1.raw: the ESP holds EFI/BOOT/mmx64.efi but the manifest says the stick has no MokManager"),
        "{m}"
    );
    // As the build writes it: no MokManager on the ESP, and verify says so.
    let fat = format!("{}@@{}", s.raw().display(), esp_offset(&s.dir));
    mtool(
        "mdel",
        &[
            "-i".as_ref(),
            fat.as_ref(),
            "::/EFI/BOOT/mmx64.efi".as_ref(),
        ],
    );
    raw_changed(&s);
    let text = verify(&s, false).unwrap().to_string();
    assert!(
        text.contains(
            "EFI/BOOT/BOOTX64.EFI is shim-signed 1.51 and no MokManager at EFI/BOOT/mmx64.efi"
        ),
        "{text}"
    );
    let inspect = cairn::release::inspect::inspect(&s.dir)
        .unwrap()
        .render_text();
    assert!(
        inspect.contains("no MokManager on the stick ([boot] mok_manager = false)"),
        "{inspect}"
    );
}
