//! Hostile release folders and key files against `cairn verify` and
//! `cairn flash`, run as the binary with a time limit (a hang fails the
//! test instead of blocking it). Each case asserts the exit code, the
//! first line of the message, and that nothing under the test's temporary
//! folder changed: not the release, not the keys, not the sentinel folder
//! of host files the hostile links point at, and nothing was written.
//! The releases are small real ones (tests/common/mini.rs), so no full
//! image build is needed; the host tools they need are in `make deps`.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

mod common;
use common::mini::{self, mini, Media, Mini, Run, QCOW2, RAW, SBOM};

const LIMIT: Duration = Duration::from_secs(120);

fn verify_at(target: &Path, pubkey: &Path) -> Run {
    mini::cairn(
        &[
            OsStr::new("verify"),
            target.as_os_str(),
            OsStr::new("--pubkey"),
            pubkey.as_os_str(),
        ],
        LIMIT,
    )
}

fn verify(m: &Mini) -> Run {
    verify_at(&m.dir, &m.pubkey)
}

fn flash_to(m: &Mini, image: &Path, target: &Path) -> Run {
    mini::cairn(
        &[
            OsStr::new("flash"),
            image.as_os_str(),
            target.as_os_str(),
            OsStr::new("--pubkey"),
            m.pubkey.as_os_str(),
            OsStr::new("--yes"),
            OsStr::new("--to-file"),
        ],
        LIMIT,
    )
}

/// Runs `run` against the (already made hostile) release `m` and checks
/// the exit code, that the first line of stderr starts with `starts` and
/// contains each of `has`, and that the whole temporary folder is as it
/// was (sentinel included; nothing created, changed or removed).
fn refuses(m: &Mini, code: i32, starts: &str, has: &[&str], run: impl FnOnce() -> Run) -> String {
    let before = m.snapshot();
    let sentinel_files = std::fs::read_dir(&m.sentinel).unwrap().count();
    assert!(sentinel_files >= 3, "the sentinel folder holds files");
    let r = run();
    let first = r.first_line().to_string();
    println!("exit {}: {first}", r.code);
    assert_eq!(r.code, code, "{r:?}");
    assert!(
        first.starts_with(starts),
        "first line {first:?} should start with {starts:?}"
    );
    for h in has {
        assert!(
            first.contains(h),
            "first line {first:?} should contain {h:?}"
        );
    }
    let after = m.snapshot();
    for (p, was) in &before {
        assert_eq!(
            after.get(p),
            Some(was),
            "{} changed or vanished",
            p.display()
        );
    }
    for p in after.keys() {
        assert!(before.contains_key(p), "{} was created", p.display());
    }
    first
}

fn replace_with_symlink(link: &Path, to: &Path) {
    std::fs::remove_file(link).unwrap();
    std::os::unix::fs::symlink(to, link).unwrap();
}

// ---------------------------------------------------------------------------
// Controls: the untouched releases pass
// ---------------------------------------------------------------------------

#[test]
fn control_untouched_releases_verify() {
    let m = mini(Media::None);
    let r = verify(&m);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with("OK mini 1"), "{r:?}");

    let m = mini(Media::RawAndQcow2);
    let r = verify(&m);
    assert_eq!(r.code, 0, "{r:?}");
    for want in [
        "root hash: mini-1.raw: recomputed",
        "volume m1: mini-1.raw: recomputed root hash",
        "uki: mini-1.raw: BOOTX64.EFI command line carries cairn.roothash and every volume's root hash",
        "qcow2: mini-1.qcow2: content equals mini-1.raw",
    ] {
        assert!(r.stdout.contains(want), "{want} missing:\n{}", r.stdout);
    }
    let r = verify_at(&m.path(RAW), &m.pubkey);
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn a_flipped_byte_in_a_model_volume_fails_verify_naming_the_volume() {
    let m = mini(Media::RawAndQcow2);
    // Only the raw, so the flipped raw is what verify judges first.
    std::fs::remove_file(m.path(QCOW2)).unwrap();
    let mut manifest = m.manifest.clone();
    manifest["outputs"]
        .as_array_mut()
        .unwrap()
        .retain(|o| o["file"] != QCOW2);
    let m = Mini { manifest, ..m };
    m.write_manifest();
    m.sign();
    // Control: the untouched volume verifies.
    let r = verify(&m);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains("volume m1: mini-1.raw: recomputed root hash"),
        "{r:?}"
    );
    let part = m.manifest["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["label"] == "cairn-model-m1")
        .unwrap()["offset"]
        .as_u64()
        .unwrap();
    // In the middle of the volume, re-signed: only the volume's own root
    // hash can catch it.
    testkit::flip_byte(&m.path(RAW), part + (128 << 10) + 7);
    let mut manifest = m.manifest.clone();
    mini::set_output(&mut manifest, &m.dir, RAW);
    let m = Mini { manifest, ..m };
    m.write_manifest();
    m.sign();
    let r = verify(&m);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("volume m1: mini-1.raw: the medium computes root hash"),
        "{r:?}"
    );
}

// ---------------------------------------------------------------------------
// FIFOs and devices: refused, never waited on
// ---------------------------------------------------------------------------

#[test]
fn fifo_signature_is_refused_not_waited_on() {
    let m = mini(Media::None);
    mini::mkfifo(&m.path("SHA256.sig"));
    refuses(
        &m,
        2,
        "error: unsafe file: ",
        &["SHA256.sig: is a FIFO (named pipe), not a regular file"],
        || verify(&m),
    );
}

#[test]
fn fifo_public_key_is_refused_not_waited_on() {
    let m = mini(Media::None);
    mini::mkfifo(&m.pubkey);
    refuses(
        &m,
        2,
        "error: public key: ",
        &["test.pub: is a FIFO (named pipe), not a regular file"],
        || verify(&m),
    );
}

#[test]
fn fifo_sha256_and_fifo_manifest_are_refused() {
    let m = mini(Media::None);
    mini::mkfifo(&m.path("SHA256"));
    refuses(
        &m,
        2,
        "error: unsafe file: ",
        &["/SHA256: is a FIFO"],
        || verify(&m),
    );
    let m = mini(Media::None);
    mini::mkfifo(&m.path("manifest.json"));
    refuses(
        &m,
        2,
        "error: unsafe file: ",
        &["manifest.json: is a FIFO"],
        || verify(&m),
    );
}

#[test]
fn character_device_as_public_key_is_refused() {
    let m = mini(Media::None);
    refuses(
        &m,
        2,
        "error: public key: /dev/zero: is a character device",
        &[],
        || verify_at(&m.dir, Path::new("/dev/zero")),
    );
}

// ---------------------------------------------------------------------------
// Links and other non-files in the release folder
// ---------------------------------------------------------------------------

#[test]
fn manifest_symlinked_to_an_identical_file_outside_is_refused() {
    let m = mini(Media::None);
    let outside = m.sentinel.join("manifest.json");
    replace_with_symlink(&m.path("manifest.json"), &outside);
    refuses(
        &m,
        2,
        "error: unsafe file: ",
        &[
            "manifest.json: is a symbolic link",
            "never followed out of the folder",
        ],
        || verify(&m),
    );
    // Control: the file it points at is exactly the signed one, so
    // following the link would have passed.
    std::fs::remove_file(m.path("manifest.json")).unwrap();
    std::fs::copy(&outside, m.path("manifest.json")).unwrap();
    assert_eq!(verify(&m).code, 0);
}

#[test]
fn symlinked_medium_is_refused_by_verify_and_flash() {
    let m = mini(Media::RawAndQcow2);
    replace_with_symlink(&m.path(RAW), &m.sentinel.join(RAW));
    refuses(
        &m,
        2,
        "error: unsafe file: ",
        &["mini-1.raw: is a symbolic link"],
        || verify(&m),
    );
    refuses(
        &m,
        2,
        "error: unsafe file: ",
        &["mini-1.raw: is a symbolic link"],
        || verify_at(&m.path(RAW), &m.pubkey),
    );
    let target = m.tmp.path().join("stick.img");
    refuses(
        &m,
        2,
        "error: flash: refusing: ",
        &["mini-1.raw: is a symbolic link"],
        || flash_to(&m, &m.path(RAW), &target),
    );
    assert!(!target.exists());
}

#[test]
fn unlisted_symlink_to_a_host_file_is_refused() {
    let m = mini(Media::None);
    std::os::unix::fs::symlink("/etc/passwd", m.path("passwd")).unwrap();
    refuses(
        &m,
        2,
        "error: unsafe file: ",
        &["/passwd: is a symbolic link"],
        || verify(&m),
    );
}

#[test]
fn socket_in_the_release_folder_is_refused() {
    let m = mini(Media::None);
    let _l = std::os::unix::net::UnixListener::bind(m.path("control.sock")).unwrap();
    refuses(
        &m,
        2,
        "error: unsafe file: ",
        &["control.sock: is a socket, not a regular file"],
        || verify(&m),
    );
}

#[test]
fn directory_in_place_of_a_listed_file_is_refused() {
    let m = mini(Media::None);
    std::fs::remove_file(m.path(SBOM)).unwrap();
    std::fs::create_dir(m.path(SBOM)).unwrap();
    std::fs::write(m.path(SBOM).join("inner"), b"x").unwrap();
    refuses(
        &m,
        2,
        "error: unsafe file: ",
        &["mini-1.spdx.json: is a directory, not a regular file"],
        || verify(&m),
    );
}

// ---------------------------------------------------------------------------
// Garbled signature, SHA256 and manifest
// ---------------------------------------------------------------------------

#[test]
fn truncated_signature_is_bad_input() {
    let m = mini(Media::None);
    let sig = std::fs::read(m.path("SHA256.sig")).unwrap();
    std::fs::write(m.path("SHA256.sig"), &sig[..60]).unwrap();
    refuses(
        &m,
        2,
        "error: signature: ",
        &["SHA256.sig", "malformed signify file"],
        || verify(&m),
    );
}

#[test]
fn junk_line_inside_the_signature_is_bad_input() {
    let m = mini(Media::None);
    let sig = std::fs::read(m.path("SHA256.sig")).unwrap();
    let nl = sig.iter().position(|b| *b == b'\n').unwrap() + 1;
    let mut junk = sig[..nl].to_vec();
    junk.extend_from_slice(b"junk\n");
    junk.extend_from_slice(&sig[nl..]);
    std::fs::write(m.path("SHA256.sig"), junk).unwrap();
    refuses(
        &m,
        2,
        "error: signature: ",
        &["SHA256.sig", "expected 74 bytes"],
        || verify(&m),
    );
}

#[test]
fn junk_appended_to_the_embedded_list_fails_the_signature() {
    let m = mini(Media::None);
    let mut sig = std::fs::read(m.path("SHA256.sig")).unwrap();
    sig.extend_from_slice(b"SHA256 (evil.raw) = 0000\n");
    std::fs::write(m.path("SHA256.sig"), sig).unwrap();
    refuses(
        &m,
        1,
        "FAILED signature: SHA256.sig does not verify with key ",
        &[],
        || verify(&m),
    );
}

#[test]
fn huge_sha256_and_huge_signature_are_refused_unread() {
    let m = mini(Media::None);
    let mut sums = std::fs::read(m.path("SHA256")).unwrap();
    let line = format!("SHA256 (pad) = {}\n", "0".repeat(64));
    while sums.len() <= 2 << 20 {
        sums.extend_from_slice(line.as_bytes());
    }
    std::fs::write(m.path("SHA256"), &sums).unwrap();
    refuses(
        &m,
        2,
        "error: unsafe file: ",
        &["/SHA256: is larger than the 1048576-byte limit"],
        || verify(&m),
    );
    m.sign_text(&sums);
    refuses(
        &m,
        2,
        "error: unsafe file: ",
        &["SHA256.sig: is larger than the 1048576-byte limit"],
        || verify(&m),
    );
}

#[test]
fn names_escaping_the_folder_are_refused_even_with_matching_digests() {
    let m = mini(Media::None);
    // A file beside the folder whose digest the list gives correctly:
    // reading it would pass.
    let beside = m.dir.parent().unwrap().join("x");
    std::fs::write(&beside, b"outside\n").unwrap();
    let sums = std::fs::read_to_string(m.path("SHA256")).unwrap();
    let evil = format!(
        "SHA256 (../x) = {}\n{sums}",
        cairn::host::digest::Sha256::of_file(&beside).unwrap()
    );
    m.sign_text(evil.as_bytes());
    refuses(
        &m,
        1,
        "FAILED SHA256: line 1 names \"../x\", which is not a plain file name in this folder",
        &[],
        || verify(&m),
    );
    let passwd = cairn::host::digest::Sha256::of_file(Path::new("/etc/passwd")).unwrap();
    let evil = format!("{sums}SHA256 (/etc/passwd) = {passwd}\n");
    m.sign_text(evil.as_bytes());
    let n = sums.lines().count() + 1;
    refuses(
        &m,
        1,
        &format!("FAILED SHA256: line {n} names \"/etc/passwd\", which is not a plain file name"),
        &[],
        || verify(&m),
    );
}

#[test]
fn extra_unlisted_file_fails() {
    let m = mini(Media::None);
    std::fs::write(m.path("notes.txt"), b"not signed\n").unwrap();
    refuses(
        &m,
        1,
        "FAILED unlisted: notes.txt is not in SHA256",
        &[],
        || verify(&m),
    );
}

#[test]
fn zero_length_signature_key_and_manifest_are_refused() {
    let m = mini(Media::None);
    std::fs::write(m.path("SHA256.sig"), b"").unwrap();
    refuses(
        &m,
        2,
        "error: signature: ",
        &["SHA256.sig", "expected two lines"],
        || verify(&m),
    );

    let m = mini(Media::None);
    std::fs::write(&m.pubkey, b"").unwrap();
    refuses(
        &m,
        2,
        "error: public key: ",
        &["test.pub", "expected two lines"],
        || verify(&m),
    );

    // An empty manifest, listed and signed with its (empty) digest.
    let m = mini(Media::None);
    std::fs::write(m.path("manifest.json"), b"").unwrap();
    m.sign();
    refuses(
        &m,
        1,
        "FAILED manifest: manifest.json does not parse",
        &[],
        || verify(&m),
    );
}

// ---------------------------------------------------------------------------
// Media that do not hold what they claim
// ---------------------------------------------------------------------------

#[test]
fn qcow2_of_another_raw_fails_though_everything_else_is_consistent() {
    let mut m = mini(Media::RawAndQcow2);
    m.swap_in_other_qcow2();
    refuses(
        &m,
        1,
        "FAILED qcow2: mini-1.qcow2: content differs from mini-1.raw",
        &[],
        || verify(&m),
    );
}

#[test]
fn qcow2_alone_is_checked_as_a_raw() {
    let mut m = mini(Media::RawAndQcow2);
    std::fs::remove_file(m.path(RAW)).unwrap();
    m.manifest["outputs"]
        .as_array_mut()
        .unwrap()
        .retain(|o| o["file"] != RAW);
    m.write_manifest();
    m.sign();
    // Control: its own qcow2 passes, recomputed.
    let r = verify(&m);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("root hash: mini-1.qcow2: recomputed"),
        "{}",
        r.stdout
    );
    m.swap_in_other_qcow2();
    refuses(
        &m,
        1,
        "FAILED root hash: mini-1.qcow2: image computes ",
        &["manifest says"],
        || verify(&m),
    );
}

#[test]
fn qcow2_alone_claiming_a_huge_disk_is_refused_unconverted() {
    let mut m = mini(Media::RawAndQcow2);
    std::fs::remove_file(m.path(RAW)).unwrap();
    std::fs::remove_file(m.path(QCOW2)).unwrap();
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(m.path(QCOW2))
        .arg("1T")
        .status()
        .unwrap();
    assert!(st.success());
    m.manifest["outputs"]
        .as_array_mut()
        .unwrap()
        .retain(|o| o["file"] != RAW);
    common::mini::set_output(&mut m.manifest, &m.dir, QCOW2);
    m.write_manifest();
    m.sign();
    refuses(
        &m,
        1,
        "FAILED qcow2: mini-1.qcow2: its disk is 1099511627776 bytes, but the partitions in manifest.json end at ",
        &[],
        || verify(&m),
    );
}

#[test]
fn qcow2_with_a_backing_file_outside_is_refused_unread() {
    let mut m = mini(Media::RawAndQcow2);
    // Its backing file is the sentinel's copy of the raw: qemu-img would
    // find the content identical, so only the header check can refuse it.
    std::fs::remove_file(m.path(QCOW2)).unwrap();
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(m.sentinel.join(RAW))
        .arg(m.path(QCOW2))
        .status()
        .unwrap();
    assert!(st.success());
    common::mini::set_output(&mut m.manifest, &m.dir, QCOW2);
    m.write_manifest();
    m.sign();
    let cmp = std::process::Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", "qcow2"])
        .arg(m.path(RAW))
        .arg(m.path(QCOW2))
        .status()
        .unwrap();
    assert!(
        cmp.success(),
        "control: through its backing file the qcow2 equals the raw"
    );
    refuses(
        &m,
        1,
        "FAILED qcow2: mini-1.qcow2: names a backing file",
        &["sentinel/mini-1.raw", "stands alone"],
        || verify(&m),
    );
}

// ---------------------------------------------------------------------------
// site apply and run: qcow2 files that name other files, unsigned manifests
// ---------------------------------------------------------------------------

/// `m` with a `[site]` declaration (a site key of its own) in its signed
/// manifest, and a site file signed with that key: (site file, site key).
fn with_site(m: &mut Mini) -> (std::path::PathBuf, cairn::release::signify::SecretKey) {
    let site_key = cairn::release::signify::generate();
    let public = site_key.public();
    m.manifest["site"] = serde_json::json!({
        "allow": ["hostname"],
        "ingress": [],
        "key_id": public.key_id(),
        "public_key": public.to_file_text("sites public key"),
    });
    m.write_manifest();
    m.sign();
    let site = m.keys.join("north.toml");
    std::fs::write(
        &site,
        "name = \"north\"\nserial = \"1\"\nhostname = \"north-1\"\n",
    )
    .unwrap();
    let decl = cairn::release::site::declaration_beside(&m.path(RAW)).unwrap();
    cairn::release::site::sign(&site, &site_key, &decl).unwrap();
    (site, site_key)
}

fn site_apply(m: &Mini, image: &Path, site: &Path, out: &Path, trust: &[&str]) -> Run {
    let mut args = vec![
        OsStr::new("site"),
        OsStr::new("apply"),
        image.as_os_str(),
        site.as_os_str(),
        OsStr::new("-o"),
        out.as_os_str(),
    ];
    for t in trust {
        args.push(OsStr::new(t));
        if *t == "--pubkey" {
            args.push(m.pubkey.as_os_str());
        }
    }
    mini::cairn(&args, LIMIT)
}

fn run_image(m: &Mini, image: &Path, pubkey: bool) -> Run {
    let mut args = vec![OsStr::new("run"), image.as_os_str()];
    if pubkey {
        args.push(OsStr::new("--pubkey"));
        args.push(m.pubkey.as_os_str());
    }
    mini::cairn(&args, LIMIT)
}

/// Replaces the release's qcow2 by `make(path)`'s, recorded in the manifest
/// and signed: only the qcow2 header check can refuse it.
fn signed_linked_qcow2(m: &mut Mini, make: impl FnOnce(&Path)) {
    std::fs::remove_file(m.path(QCOW2)).unwrap();
    make(&m.path(QCOW2));
    common::mini::set_output(&mut m.manifest, &m.dir, QCOW2);
    m.write_manifest();
    m.sign();
}

fn qemu_img_create(args: &[&OsStr], out: &Path) {
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .args(args)
        .arg(out)
        .arg("72M")
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn control_site_apply_with_the_key_writes_a_copy_of_raw_and_qcow2() {
    let mut m = mini(Media::RawAndQcow2);
    let (site, _) = with_site(&mut m);
    for (image, out) in [(RAW, "north.raw"), (QCOW2, "north.qcow2")] {
        let out = m.tmp.path().join(out);
        let r = site_apply(&m, &m.path(image), &site, &out, &["--pubkey"]);
        assert_eq!(r.code, 0, "{r:?}");
        assert!(r.stdout.contains("site north (key "), "{r:?}");
        assert!(r.stdout.contains("; role server, node north-1"), "{r:?}");
        assert!(!r.stdout.contains("not verified"), "{r:?}");
        assert!(out.is_file());
    }
}

/// A signed agent's file for a release whose manifest names no roles
/// (one from before roles: server only) is refused at its `role` line,
/// exit 2, nothing written; control: the release that lists agent takes it.
#[test]
fn site_apply_refuses_a_role_the_release_does_not_list() {
    let mut m = mini(Media::RawAndQcow2);
    let site_key = cairn::release::signify::generate();
    let public = site_key.public();
    let declare = |m: &mut Mini, roles: Option<&[&str]>| {
        m.manifest["site"] = serde_json::json!({
            "allow": ["hostname", "join_expires", "join_token", "role", "server"],
            "ingress": [],
            "key_id": public.key_id(),
            "public_key": public.to_file_text("sites public key"),
        });
        if let Some(r) = roles {
            m.manifest["site"]["roles"] = serde_json::json!(r);
        }
        m.write_manifest();
        m.sign();
    };
    declare(&mut m, None);
    let image = m.manifest["image"]["name"].as_str().unwrap().to_string();
    let version = m.manifest["image"]["version"].as_str().unwrap().to_string();
    let site = m.keys.join("agent.toml");
    let text = format!(
        "name = \"a\"\nrole = \"agent\"\nserver = \"10.0.0.2\"\n\
         join_token = \"abcdef.0123456789abcdef\"\njoin_expires = \"2999-01-01T00:00:00Z\"\n\
         image = \"{image}\"\nversion = \"{version}\"\nserial = \"1\"\n"
    );
    std::fs::write(&site, &text).unwrap();
    // Signed with the right key by hand: only the role check can refuse it.
    let sig = site_key.sign(text.as_bytes());
    let mut sig_path = site.clone().into_os_string();
    sig_path.push(".sig");
    std::fs::write(&sig_path, sig.to_file_text("sites.pub")).unwrap();
    let out = m.tmp.path().join("agent.raw");
    let r = site_apply(&m, &m.path(RAW), &site, &out, &["--pubkey"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .contains("agent.toml:2:8: role `agent` is not one of this release's [cluster] roles [\"server\"]"),
        "{r:?}"
    );
    assert!(!out.exists());
    // Control: the release lists agent.
    declare(&mut m, Some(&["server", "agent"]));
    let r = site_apply(&m, &m.path(RAW), &site, &out, &["--pubkey"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("; role agent"), "{r:?}");
    assert!(out.is_file());
}

#[test]
fn site_apply_and_run_refuse_a_qcow2_backed_by_a_host_file() {
    let mut m = mini(Media::RawAndQcow2);
    let (site, _) = with_site(&mut m);
    let secret = m.sentinel.join("secret");
    signed_linked_qcow2(&mut m, |q| {
        qemu_img_create(
            &[
                OsStr::new("-F"),
                OsStr::new("raw"),
                OsStr::new("-b"),
                secret.as_os_str(),
            ],
            q,
        )
    });
    let out = m.tmp.path().join("north.qcow2");
    let secret_s = secret.to_str().unwrap();
    for trust in [&["--pubkey"][..], &["--unverified"]] {
        refuses(
            &m,
            2,
            "error: ",
            &[
                "mini-1.qcow2: names a backing file",
                secret_s,
                "stands alone",
            ],
            || site_apply(&m, &m.path(QCOW2), &site, &out, trust),
        );
    }
    // `cairn run`: refused before QEMU starts; with a key, after the
    // release checked (its first line says so; the refusal follows).
    refuses(
        &m,
        2,
        "error: ",
        &["mini-1.qcow2: names a backing file", secret_s],
        || run_image(&m, &m.path(QCOW2), false),
    );
    refuses(&m, 2, "cairn run: mini 1 verified with key", &[], || {
        run_image(&m, &m.path(QCOW2), true)
    });
}

#[test]
fn site_apply_and_run_refuse_a_json_backing_spec() {
    let mut m = mini(Media::RawAndQcow2);
    let (site, _) = with_site(&mut m);
    let spec = format!(
        "json:{{\"driver\":\"raw\",\"file\":{{\"driver\":\"file\",\"filename\":\"{}\"}}}}",
        m.sentinel.join("secret").display()
    );
    signed_linked_qcow2(&mut m, |q| {
        qemu_img_create(
            &[
                OsStr::new("-u"),
                OsStr::new("-F"),
                OsStr::new("raw"),
                OsStr::new("-b"),
                OsStr::new(&spec),
            ],
            q,
        )
    });
    let out = m.tmp.path().join("north.qcow2");
    refuses(
        &m,
        2,
        "error: ",
        &["names a backing file \"json:{", "secret"],
        || site_apply(&m, &m.path(QCOW2), &site, &out, &["--pubkey"]),
    );
    refuses(&m, 2, "error: ", &["names a backing file \"json:{"], || {
        run_image(&m, &m.path(QCOW2), false)
    });
}

#[test]
fn site_apply_and_run_refuse_an_external_data_file() {
    let mut m = mini(Media::RawAndQcow2);
    let (site, _) = with_site(&mut m);
    // The data file is made by qemu-img; the sentinel's copy of the raw
    // would be read as the disk.
    let data = m.sentinel.join("mini-1.raw");
    let made = tempfile::tempdir().unwrap();
    let opt = format!(
        "data_file={},data_file_raw=on",
        made.path().join("d.raw").display()
    );
    signed_linked_qcow2(&mut m, |q| {
        qemu_img_create(&[OsStr::new("-o"), OsStr::new(&opt)], q);
        // Point its data-file extension at the sentinel file (same length
        // of name not needed: rewrite via qemu-img amend).
        let st = std::process::Command::new("qemu-img")
            .args(["amend", "-f", "qcow2", "-o"])
            .arg(format!("data_file={}", data.display()))
            .arg(q)
            .status()
            .unwrap();
        assert!(st.success());
    });
    let out = m.tmp.path().join("north.qcow2");
    refuses(
        &m,
        2,
        "error: ",
        &["mini-1.qcow2", "external data file"],
        || site_apply(&m, &m.path(QCOW2), &site, &out, &["--pubkey"]),
    );
    refuses(&m, 2, "error: ", &["external data file"], || {
        run_image(&m, &m.path(QCOW2), false)
    });
}

#[test]
fn site_apply_without_a_key_is_refused_with_the_fix() {
    let mut m = mini(Media::RawAndQcow2);
    let (site, _) = with_site(&mut m);
    let out = m.tmp.path().join("north.raw");
    refuses(
        &m,
        2,
        "error: the release folder's manifest.json names the site key",
        &["--pubkey KEY.pub", "--unverified"],
        || site_apply(&m, &m.path(RAW), &site, &out, &[]),
    );
    // Control: --unverified says so on its line.
    let r = site_apply(&m, &m.path(RAW), &site, &out, &["--unverified"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("release not verified"), "{r:?}");
}

#[test]
fn site_apply_refuses_a_manifest_whose_site_key_was_swapped_after_signing() {
    let mut m = mini(Media::RawAndQcow2);
    with_site(&mut m);
    // The attacker's own site key in the manifest, and a site file signed
    // with it; the release is not re-signed.
    let key = cairn::release::signify::generate();
    let public = key.public();
    let mut forged = m.manifest.clone();
    forged["site"]["key_id"] = public.key_id().into();
    forged["site"]["public_key"] = public.to_file_text("evil").into();
    std::fs::write(
        m.path("manifest.json"),
        serde_json::to_string_pretty(&forged).unwrap() + "\n",
    )
    .unwrap();
    let evil_site = m.keys.join("evil.toml");
    std::fs::write(
        &evil_site,
        "name = \"evil\"\nserial = \"1\"\nhostname = \"evil\"\n",
    )
    .unwrap();
    let decl = cairn::release::site::declaration_beside(&m.path(RAW)).unwrap();
    cairn::release::site::sign(&evil_site, &key, &decl).unwrap();
    let out = m.tmp.path().join("evil.raw");
    // Control: trusting the folder as it is, the forged site file applies.
    let r = site_apply(&m, &m.path(RAW), &evil_site, &out, &["--unverified"]);
    assert_eq!(r.code, 0, "the attack works unverified: {r:?}");
    std::fs::remove_file(&out).unwrap();
    refuses(
        &m,
        2,
        "error: ",
        &["does not check with", "digest: manifest.json: expected"],
        || site_apply(&m, &m.path(RAW), &evil_site, &out, &["--pubkey"]),
    );
    // `cairn run --pubkey` refuses it too, before QEMU starts.
    refuses(&m, 2, "error: run: ", &["digest: manifest.json"], || {
        run_image(&m, &m.path(QCOW2), true)
    });
}

#[test]
fn site_apply_and_run_refuse_a_release_signed_by_another_key() {
    let mut m = mini(Media::RawAndQcow2);
    let (site, _) = with_site(&mut m);
    // Control: the properly signed release passes `run --pubkey`'s check
    // and is stopped only by the qcow2 header check that follows.
    let secret = m.sentinel.join("secret");
    signed_linked_qcow2(&mut m, |q| {
        qemu_img_create(
            &[
                OsStr::new("-F"),
                OsStr::new("raw"),
                OsStr::new("-b"),
                secret.as_os_str(),
            ],
            q,
        )
    });
    let r = run_image(&m, &m.path(QCOW2), true);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("verified with key"), "{r:?}");
    assert!(r.stderr.contains("names a backing file"), "{r:?}");
    // Re-signed by another key: refused at the signature.
    m.key = cairn::release::signify::generate();
    m.sign();
    let out = m.tmp.path().join("north.raw");
    refuses(
        &m,
        2,
        "error: ",
        &["signature: SHA256.sig was made by key"],
        || site_apply(&m, &m.path(RAW), &site, &out, &["--pubkey"]),
    );
    refuses(
        &m,
        2,
        "error: run: ",
        &["signature: SHA256.sig was made by key"],
        || run_image(&m, &m.path(QCOW2), true),
    );
}

#[test]
fn verify_prints_a_hostile_manifest_name_escaped() {
    let mut m = mini(Media::None);
    m.manifest["image"]["name"] = "\u{1b}[2K\rverify: ok\u{202e}".into();
    m.write_manifest();
    m.sign();
    let r = verify(&m);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        !r.stdout.contains('\u{1b}') && !r.stdout.contains('\u{202e}'),
        "{r:?}"
    );
    assert!(
        r.stdout.starts_with("OK \\x1b[2K\\rverify: ok\\u{202e} 1"),
        "{r:?}"
    );
    // Control: a plain name prints as it is.
    m.manifest["image"]["name"] = "plain".into();
    m.write_manifest();
    m.sign();
    assert!(verify(&m).stdout.starts_with("OK plain 1"));
}

// ---------------------------------------------------------------------------
// flash
// ---------------------------------------------------------------------------

#[test]
fn flash_refuses_a_fifo_signature_and_a_fifo_target() {
    let m = mini(Media::RawAndQcow2);
    let target = m.tmp.path().join("stick.img");
    // Control: the untouched release flashes.
    let r = flash_to(&m, &m.path(RAW), &target);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        cairn::host::digest::Sha256::of_file(&target).unwrap(),
        cairn::host::digest::Sha256::of_file(&m.path(RAW)).unwrap()
    );
    std::fs::remove_file(&target).unwrap();

    let fifo_target = m.tmp.path().join("stick.fifo");
    mini::mkfifo(&fifo_target);
    refuses(
        &m,
        2,
        "error: flash: ",
        &["stick.fifo is neither a block device nor a regular file"],
        || flash_to(&m, &m.path(RAW), &fifo_target),
    );

    mini::mkfifo(&m.path("SHA256.sig"));
    refuses(
        &m,
        2,
        "error: flash: refusing: unsafe file: ",
        &["SHA256.sig: is a FIFO (named pipe)"],
        || flash_to(&m, &m.path(RAW), &target),
    );
    assert!(!target.exists());
}

#[test]
fn flash_refuses_the_image_itself_or_the_release_folder_as_target() {
    let m = mini(Media::RawAndQcow2);
    refuses(
        &m,
        2,
        "error: flash: ",
        &["mini-1.raw is the image itself"],
        || flash_to(&m, &m.path(RAW), &m.path(RAW)),
    );
    refuses(
        &m,
        2,
        "error: flash: ",
        &["stick.img is inside the release folder"],
        || flash_to(&m, &m.path(RAW), &m.path("stick.img")),
    );
}

#[test]
fn verify_report_files_the_evidence_and_says_when_it_failed() {
    let m = mini(Media::None);
    let report = m.tmp.path().join("evidence.json");
    let run = |m: &Mini| {
        mini::cairn(
            &[
                OsStr::new("verify"),
                m.dir.as_os_str(),
                OsStr::new("--pubkey"),
                m.pubkey.as_os_str(),
                OsStr::new("--report"),
                report.as_os_str(),
            ],
            LIMIT,
        )
    };
    let r = run(&m);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let read = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap()
    };
    let a = read();
    assert_eq!(a["result"], "ok");
    assert!(a["key_id"].as_str().is_some_and(|k| !k.is_empty()));
    let files: Vec<&str> = a["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["file"].as_str())
        .collect();
    assert!(files.contains(&"manifest.json"), "{files:?}");
    // Deterministic apart from its own time stamp.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(run(&m).code, 0);
    let (mut a2, mut b2) = (a.clone(), read());
    a2["verified_at"] = serde_json::Value::Null;
    b2["verified_at"] = serde_json::Value::Null;
    assert_eq!(a2, b2);
    // Control: a tampered release fails, and the report says so.
    let manifest = m.path("manifest.json");
    testkit::flip_byte(&manifest, 10);
    let r = run(&m);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let f = read();
    assert_eq!(f["result"], "failed");
    assert!(
        f["error"]
            .as_str()
            .is_some_and(|e| e.contains("manifest.json")),
        "{f}"
    );
    assert!(f.get("files").is_none());
}

// ---------------------------------------------------------------------------
// Site files: stripped, replayed, swapped, hostile (issue #31, items 7 and 9)
// ---------------------------------------------------------------------------

/// A site file holding exactly `text`, its `.sig` made over those bytes by
/// `key`: what a signer would have made for another image or an older
/// release, or an attacker holding some key.
fn site_signed_as_is(
    m: &Mini,
    name: &str,
    text: &str,
    key: &cairn::release::signify::SecretKey,
) -> std::path::PathBuf {
    let site = m.keys.join(name);
    std::fs::write(&site, text).unwrap();
    let sig = key.sign(text.as_bytes());
    std::fs::write(
        cairn::release::site::sig_path(&site),
        sig.to_file_text("sites.pub"),
    )
    .unwrap();
    site
}

/// The release's image name and version, as a site file binds them.
fn binding(m: &Mini) -> (String, String) {
    let s = |k: &str| m.manifest["image"][k].as_str().unwrap().to_string();
    (s("name"), s("version"))
}

/// `site apply` of `site` to the raw image, trusting the release by key.
fn apply_raw(m: &Mini, site: &Path) -> Run {
    let out = m.tmp.path().join("out.raw");
    site_apply(m, &m.path(RAW), site, &out, &["--pubkey"])
}

/// Control for the cases below: a file signed as is, naming this image and
/// version with a serial at the floor, applies; the copy is then removed.
fn applies(m: &Mini, site: &Path) {
    let r = apply_raw(m, site);
    assert_eq!(r.code, 0, "control: {r:?}");
    std::fs::remove_file(m.tmp.path().join("out.raw")).unwrap();
}

#[test]
fn a_site_file_signed_for_another_image_or_version_is_refused() {
    let mut m = mini(Media::RawAndQcow2);
    let (_, key) = with_site(&mut m);
    let (image, version) = binding(&m);
    let text = |i: &str, v: &str| {
        format!("name = \"north\"\nimage = \"{i}\"\nversion = \"{v}\"\nserial = \"1\"\nhostname = \"north\"\n")
    };
    applies(
        &m,
        &site_signed_as_is(&m, "ok.toml", &text(&image, &version), &key),
    );
    let other = site_signed_as_is(&m, "other.toml", &text("other", &version), &key);
    refuses(
        &m,
        2,
        "error: ",
        &["other.toml:2:", "is for image \"other\""],
        || apply_raw(&m, &other),
    );
    let older = site_signed_as_is(&m, "older.toml", &text(&image, "0.9"), &key);
    refuses(
        &m,
        2,
        "error: ",
        &["older.toml:3:", "is for version \"0.9\""],
        || apply_raw(&m, &older),
    );
}

#[test]
fn a_site_file_below_the_serial_floor_is_refused() {
    let mut m = mini(Media::RawAndQcow2);
    let (_, key) = with_site(&mut m);
    m.manifest["site"]["min_serial"] = 3.into();
    m.write_manifest();
    m.sign();
    let (image, version) = binding(&m);
    let text = |serial: &str| {
        format!("name = \"north\"\nimage = \"{image}\"\nversion = \"{version}\"\nserial = \"{serial}\"\n")
    };
    applies(&m, &site_signed_as_is(&m, "new.toml", &text("3"), &key));
    let old = site_signed_as_is(&m, "old.toml", &text("2"), &key);
    refuses(
        &m,
        2,
        "error: ",
        &[
            "old.toml:4:",
            "serial 2 is below the recipe's [site] min_serial 3",
        ],
        || apply_raw(&m, &old),
    );
    let no_serial = site_signed_as_is(
        &m,
        "none.toml",
        &format!("name = \"north\"\nimage = \"{image}\"\nversion = \"{version}\"\n"),
        &key,
    );
    refuses(&m, 2, "error: ", &["has no serial"], || {
        apply_raw(&m, &no_serial)
    });
}

#[test]
fn a_site_file_signed_by_another_key_or_changed_after_signing_is_refused() {
    let mut m = mini(Media::RawAndQcow2);
    let (site, key) = with_site(&mut m);
    applies(&m, &site);
    let text = std::fs::read_to_string(&site).unwrap();
    let stranger = cairn::release::signify::generate();
    let forged = site_signed_as_is(&m, "forged.toml", &text, &stranger);
    refuses(
        &m,
        2,
        "error: ",
        &["forged.toml.sig", "does not verify"],
        || apply_raw(&m, &forged),
    );
    let changed = site_signed_as_is(&m, "changed.toml", &text, &key);
    std::fs::write(&changed, text.replace("north-1", "north-2")).unwrap();
    refuses(
        &m,
        2,
        "error: ",
        &["changed.toml.sig", "does not verify"],
        || apply_raw(&m, &changed),
    );
}

#[test]
fn a_site_file_setting_what_the_release_does_not_allow_is_refused_at_its_line() {
    let mut m = mini(Media::RawAndQcow2);
    let (site, key) = with_site(&mut m);
    applies(&m, &site);
    let text = std::fs::read_to_string(&site).unwrap() + "address = \"10.1.4.20/24\"\n";
    let bad = site_signed_as_is(&m, "address.toml", &text, &key);
    let line = text.lines().count();
    refuses(
        &m,
        2,
        "error: ",
        &[
            &format!("address.toml:{line}:1"),
            "`address` is not allowed",
        ],
        || apply_raw(&m, &bad),
    );
}

#[test]
fn a_site_variable_that_steers_the_host_is_refused_even_where_the_release_allows_it() {
    let mut m = mini(Media::RawAndQcow2);
    let (site, key) = with_site(&mut m);
    // A release whose manifest allows it (signed: only the site-file check
    // stands in the way).
    m.manifest["site"]["allow"] =
        serde_json::json!(["env.web.LD_PRELOAD", "env.web.SITE_LABEL", "hostname"]);
    m.write_manifest();
    m.sign();
    let text = std::fs::read_to_string(&site).unwrap();
    // Control: the service's own variable applies.
    let label = text.clone() + "env.web.SITE_LABEL = \"north\"\n";
    applies(&m, &site_signed_as_is(&m, "label.toml", &label, &key));
    let preload = text + "env.web.LD_PRELOAD = \"/run/x.so\"\n";
    let bad = site_signed_as_is(&m, "preload.toml", &preload, &key);
    refuses(
        &m,
        2,
        "error: ",
        &["preload.toml:", "LD_PRELOAD steers the dynamic loader"],
        || apply_raw(&m, &bad),
    );
}

#[test]
fn a_site_file_closing_a_port_the_release_does_not_have_is_refused() {
    let mut m = mini(Media::RawAndQcow2);
    let (site, key) = with_site(&mut m);
    m.manifest["site"]["allow"] = serde_json::json!(["close_ingress", "hostname"]);
    m.manifest["site"]["ingress"] = serde_json::json!(["8080/tcp"]);
    m.write_manifest();
    m.sign();
    let text = std::fs::read_to_string(&site).unwrap();
    applies(
        &m,
        &site_signed_as_is(
            &m,
            "close.toml",
            &(text.clone() + "close_ingress = [\"8080/tcp\"]\n"),
            &key,
        ),
    );
    let bad = site_signed_as_is(
        &m,
        "ssh.toml",
        &(text + "close_ingress = [\"22/tcp\"]\n"),
        &key,
    );
    refuses(&m, 2, "error: ", &["ssh.toml:", "22/tcp"], || {
        apply_raw(&m, &bad)
    });
}

#[test]
fn a_site_file_with_terminal_escapes_or_a_path_for_a_name_is_refused_and_shown_escaped() {
    let mut m = mini(Media::RawAndQcow2);
    let (site, key) = with_site(&mut m);
    applies(&m, &site);
    let text = std::fs::read_to_string(&site).unwrap();
    let esc = site_signed_as_is(
        &m,
        "esc.toml",
        &text.replace(
            "hostname = \"north-1\"",
            "hostname = \"\\u001b[2K\\rsite: ok\"",
        ),
        &key,
    );
    refuses(
        &m,
        2,
        "error: ",
        &["esc.toml:3:1", "no tables, quoted keys, escapes"],
        || apply_raw(&m, &esc),
    );
    // The raw byte itself, in a value and in a comment: refused, and the
    // message that names the file never carries it to the terminal.
    for (name, line) in [
        ("rawesc.toml", "hostname = \"\u{1b}[2K\rsite: ok\"\n"),
        ("comment.toml", "# \u{1b}]0;owned\u{7}\n"),
    ] {
        let body = text.replace("hostname = \"north-1\"\n", "") + line;
        let bad = site_signed_as_is(&m, name, &body, &key);
        let r = apply_raw(&m, &bad);
        assert_eq!(r.code, 2, "{r:?}");
        assert!(r.first_line().contains(name), "{r:?}");
        assert!(
            !r.stderr.contains('\u{1b}') && !r.stdout.contains('\u{1b}'),
            "an escape reached the terminal: {r:?}"
        );
    }
    let path = site_signed_as_is(
        &m,
        "path.toml",
        &text.replace("name = \"north\"", "name = \"../../etc\""),
        &key,
    );
    refuses(
        &m,
        2,
        "error: ",
        &["path.toml:1:", "site name \"../../etc\""],
        || apply_raw(&m, &path),
    );
}

#[test]
fn a_fifo_site_file_or_signature_is_refused_not_waited_on() {
    let mut m = mini(Media::RawAndQcow2);
    let (site, _) = with_site(&mut m);
    applies(&m, &site);
    let fifo = m.keys.join("fifo.toml");
    mini::mkfifo(&fifo);
    refuses(
        &m,
        2,
        "error: ",
        &["fifo.toml: is a FIFO (named pipe)"],
        || apply_raw(&m, &fifo),
    );
    // The file is fine; its signature is a FIFO.
    let sig = cairn::release::site::sig_path(&site);
    std::fs::remove_file(&sig).unwrap();
    mini::mkfifo(&sig);
    refuses(
        &m,
        2,
        "error: ",
        &["north.toml.sig: is a FIFO (named pipe)"],
        || apply_raw(&m, &site),
    );
}

#[test]
fn a_site_signature_linked_to_a_device_is_refused_not_read() {
    let mut m = mini(Media::RawAndQcow2);
    let (site, _) = with_site(&mut m);
    let sig = cairn::release::site::sig_path(&site);
    replace_with_symlink(&sig, Path::new("/dev/zero"));
    refuses(
        &m,
        2,
        "error: ",
        &["north.toml.sig: is a character device, not a regular file"],
        || apply_raw(&m, &site),
    );
}

#[test]
fn a_huge_or_binary_site_file_is_refused_unread() {
    let mut m = mini(Media::RawAndQcow2);
    let (site, _) = with_site(&mut m);
    applies(&m, &site);
    let huge = m.keys.join("huge.toml");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    refuses(
        &m,
        2,
        "error: ",
        &["huge.toml: is larger than the 65536-byte limit"],
        || apply_raw(&m, &huge),
    );
    let binary = m.keys.join("binary.toml");
    std::fs::write(&binary, b"name = \"\xff\xfe\"\n").unwrap();
    refuses(
        &m,
        2,
        "error: ",
        &["binary.toml: the site file is not UTF-8"],
        || apply_raw(&m, &binary),
    );
}
