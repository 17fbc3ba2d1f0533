//! Interoperability of `cairn::release::signify` with Debian's `signify-openbsd`.
//! Every test fails when the tool is not installed (`make deps` installs it).

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use cairn::release::signify::{self, PublicKey, SecretKey, Signature, SignifyError};
use sha2::{Digest as _, Sha256};

const SIGNIFY: &str = "/usr/bin/signify-openbsd";

/// Without the tool these tests fail (naming the package); they never skip.
fn need_signify() {
    testkit::file(SIGNIFY, "signify-openbsd");
}

/// Run signify in `dir`, feeding `stdin` (a pipe, never a TTY, so signify
/// reads any passphrase from it).
fn run(dir: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(SIGNIFY)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn signify-openbsd");
    {
        let mut input = child.stdin.take().expect("stdin");
        // signify may exit before reading; a broken pipe is fine.
        let _ = input.write_all(stdin);
    }
    child.wait_with_output().expect("wait signify-openbsd")
}

fn run_ok(dir: &Path, args: &[&str], stdin: &[u8]) -> String {
    let out = run(dir, args, stdin);
    assert!(
        out.status.success(),
        "signify-openbsd {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn signify_key_cairn_signs_signify_verifies() {
    need_signify();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_ok(d, &["-G", "-n", "-p", "x.pub", "-s", "x.sec"], b"");

    let sk = SecretKey::read(&d.join("x.sec"), None).unwrap();
    let pk = PublicKey::read(&d.join("x.pub")).unwrap();
    assert_eq!(sk.public(), pk, "cairn derives the same public key");

    let msg = b"an appliance image manifest\n\x00\xffbinary tail";
    std::fs::write(d.join("f"), msg).unwrap();
    let sig = sk.sign(msg);
    std::fs::write(d.join("f.sig"), sig.to_file_text("x.pub")).unwrap();
    let out = run_ok(d, &["-V", "-p", "x.pub", "-x", "f.sig", "-m", "f"], b"");
    assert!(out.contains("Signature Verified"), "{out}");

    // And signify rejects a tampered message, as cairn does.
    std::fs::write(d.join("f"), b"tampered").unwrap();
    let out = run(d, &["-V", "-p", "x.pub", "-x", "f.sig", "-m", "f"], b"");
    assert!(!out.status.success());
    assert!(matches!(
        sig.verify(&pk, b"tampered"),
        Err(SignifyError::BadSignature)
    ));
}

#[test]
fn signify_encrypted_key_reads_in_cairn() {
    need_signify();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // With stdin not a TTY, signify -G reads the passphrase from it.
    run_ok(
        d,
        &["-G", "-p", "e.pub", "-s", "e.sec"],
        b"hunter2 hunter2\n",
    );
    let sec = d.join("e.sec");
    assert!(matches!(
        SecretKey::read(&sec, None),
        Err(SignifyError::PassphraseRequired)
    ));
    assert!(matches!(
        SecretKey::read(&sec, Some(b"hunter3")),
        Err(SignifyError::WrongPassphrase)
    ));
    let sk = SecretKey::read(&sec, Some(b"hunter2 hunter2")).unwrap();
    let pk = PublicKey::read(&d.join("e.pub")).unwrap();
    assert_eq!(sk.public(), pk);

    std::fs::write(d.join("m"), b"msg").unwrap();
    std::fs::write(d.join("m.sig"), sk.sign(b"msg").to_file_text("e.pub")).unwrap();
    run_ok(d, &["-V", "-p", "e.pub", "-x", "m.sig", "-m", "m"], b"");
}

#[test]
fn cairn_key_signify_signs_cairn_verifies() {
    need_signify();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let msg = b"payload for signify to sign\n";
    std::fs::write(d.join("f"), msg).unwrap();

    // Unencrypted cairn key.
    let (p, s) = signify::keygen(&d.join("plain"), None, "plain").unwrap();
    assert_eq!(p, d.join("plain.pub"));
    assert_eq!(s, d.join("plain.sec"));
    run_ok(d, &["-S", "-s", "plain.sec", "-m", "f", "-x", "f.sig"], b"");
    let sig_text = std::fs::read_to_string(d.join("f.sig")).unwrap();
    assert!(sig_text.starts_with("untrusted comment: verify with plain.pub\n"));
    let pk = PublicKey::read(&p).unwrap();
    let sig = Signature::read(&d.join("f.sig")).unwrap();
    sig.verify(&pk, msg).unwrap();
    // cairn's own signature is byte-identical (Ed25519 is deterministic).
    let sk = SecretKey::read(&s, None).unwrap();
    assert_eq!(sk.sign(msg).to_file_text("plain.pub"), sig_text);

    // signify's embedded form (-e) parses too.
    run_ok(
        d,
        &["-S", "-e", "-s", "plain.sec", "-m", "f", "-x", "f.esig"],
        b"",
    );
    let (esig, body) = Signature::read_embedded(&d.join("f.esig")).unwrap();
    assert_eq!(body, msg);
    esig.verify(&pk, &body).unwrap();

    // Passphrase-protected cairn key: cairn reads it back, and signify
    // (passphrase on its non-TTY stdin) decrypts it and signs.
    let (p2, s2) = signify::keygen(&d.join("enc"), Some(b"open sesame"), "enc").unwrap();
    assert!(matches!(
        SecretKey::read(&s2, None),
        Err(SignifyError::PassphraseRequired)
    ));
    assert!(matches!(
        SecretKey::read(&s2, Some(b"open sesame!")),
        Err(SignifyError::WrongPassphrase)
    ));
    let sk2 = SecretKey::read(&s2, Some(b"open sesame")).unwrap();
    let pk2 = PublicKey::read(&p2).unwrap();
    assert_eq!(sk2.public(), pk2);
    run_ok(
        d,
        &["-S", "-s", "enc.sec", "-m", "f", "-x", "f2.sig"],
        b"open sesame\n",
    );
    let sig2 = Signature::read(&d.join("f2.sig")).unwrap();
    sig2.verify(&pk2, msg).unwrap();
    let out = run(
        d,
        &["-S", "-s", "enc.sec", "-m", "f", "-x", "f3.sig"],
        b"wrong\n",
    );
    assert!(!out.status.success(), "signify accepted a wrong passphrase");

    // A signature by one key against the other is a key mismatch.
    assert!(matches!(
        sig2.verify(&pk, msg),
        Err(SignifyError::KeyMismatch { .. })
    ));
}

#[test]
fn cairn_signed_sha256_list_checks_with_signify() {
    need_signify();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (p, s) = signify::keygen(&d.join("release"), None, "release").unwrap();
    let sk = SecretKey::read(&s, None).unwrap();

    let files: [(&str, &[u8]); 3] = [
        ("image.raw", b"pretend disk image\x00\x01\x02"),
        ("vmlinuz.efi", b"pretend UKI"),
        ("manifest.json", b"{}\n"),
    ];
    let mut list = String::new();
    for (name, data) in files {
        std::fs::write(d.join(name), data).unwrap();
        list.push_str(&format!(
            "SHA256 ({name}) = {}\n",
            hex::encode(Sha256::digest(data))
        ));
    }
    // `signify -C` wants the list embedded after the signature, the same
    // shape as OpenBSD's SHA256.sig.
    let sig = sk.sign(list.as_bytes());
    std::fs::write(
        d.join("SHA256.sig"),
        sig.to_embedded_file_bytes("release.pub", list.as_bytes()),
    )
    .unwrap();

    let out = run_ok(d, &["-C", "-p", "release.pub", "-x", "SHA256.sig"], b"");
    assert!(out.contains("Signature Verified"), "{out}");
    for (name, _) in files {
        assert!(out.contains(&format!("{name}: OK")), "{out}");
    }

    // cairn reads the same file back.
    let (back, body) = Signature::read_embedded(&d.join("SHA256.sig")).unwrap();
    back.verify(&PublicKey::read(&p).unwrap(), &body).unwrap();
    assert_eq!(body, list.as_bytes());

    // A modified file fails the check.
    std::fs::write(d.join("vmlinuz.efi"), b"evil UKI").unwrap();
    let out = run(d, &["-C", "-p", "release.pub", "-x", "SHA256.sig"], b"");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("vmlinuz.efi"));
}
