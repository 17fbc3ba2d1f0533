//! `cairn audit verify --manifest`: a trail whose first boot was quoted by
//! a TPM (swtpm, its PCRs fresh: PCR 11 all zeros) and whose second boot
//! had none, judged against manifests that predict that PCR 11, another
//! one, or none. The trail is written by the guest's own writer
//! (builder/guest/cairn-audit) with the host's age, openssl and tpm2-tools.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn::host::digest::Sha256;
use cairn::host::runner;

mod common;
use common::mini::{self, mini, Media};

const LIMIT: Duration = Duration::from_secs(120);

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// Two free TCP ports in a row (the swtpm TCTI's control channel is the
/// server's port + 1).
fn two_ports() -> u16 {
    (0..50)
        .find_map(|_| {
            let a = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
            let p = a.local_addr().ok()?.port();
            let _b = std::net::TcpListener::bind(("127.0.0.1", p.checked_add(1)?)).ok()?;
            Some(p)
        })
        .expect("two free ports")
}

/// The partition file, the platform's secret key, and the quoted boot's id.
fn quoted_trail(dir: &Path) -> (PathBuf, PathBuf, String) {
    for (t, p) in [
        ("age", "age"),
        ("openssl", "openssl"),
        ("swtpm", "swtpm"),
        ("tpm2_quote", "tpm2-tools"),
    ] {
        testkit::tool(t, p);
    }
    let sh = runner::shell().unwrap();
    let key = dir.join("audit.sec");
    runner::run("test: keygen", xshell::cmd!(sh, "age-keygen -o {key}")).unwrap();
    let public = runner::run("test: keygen", xshell::cmd!(sh, "age-keygen -y {key}")).unwrap();
    std::fs::write(dir.join("audit.pub"), public).unwrap();
    let part = dir.join("audit.part");
    let mut h = b"cairn-audit v1\n".to_vec();
    h.resize(1 << 20, 0);
    std::fs::write(&part, h).unwrap();

    let port = two_ports();
    let state = dir.join("tpm-state");
    std::fs::create_dir(&state).unwrap();
    let mut cmd = runner::command("swtpm");
    cmd.args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
        .arg("--tpmstate")
        .arg(format!("dir={}", state.display()))
        .arg("--server")
        .arg(format!("type=tcp,port={port}"))
        .arg("--ctrl")
        .arg(format!("type=tcp,port={}", port + 1));
    let _tpm = runner::spawn("test: swtpm", cmd).unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "swtpm did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let w = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/cairn-audit");
    let boot = |run: &str, tcti: Option<String>| {
        let sh = runner::shell().unwrap();
        sh.set_var("CAIRN_AUDIT_RUN", dir.join(run));
        sh.set_var("CAIRN_AUDIT_RECIPIENT", dir.join("audit.pub"));
        sh.set_var("CAIRN_AUDIT_TPM_DEV", dir.join("no-tpm"));
        if let Some(t) = tcti {
            sh.set_var("CAIRN_AUDIT_TPM_TCTI", t);
        }
        runner::run("test: open", xshell::cmd!(sh, "sh {w} open {part}")).unwrap();
        runner::run("test: close", xshell::cmd!(sh, "sh {w} close")).unwrap();
        std::fs::read_to_string(dir.join(run).join("boot")).unwrap()
    };
    let quoted = boot("run1", Some(format!("swtpm:host=127.0.0.1,port={port}")));
    boot("run2", None);
    (part, key, quoted.trim().to_string())
}

/// The mini release's manifest with `boot` as given.
fn manifest(dir: &Path, name: &str, boot: serde_json::Value) -> PathBuf {
    let m = mini(Media::None);
    let mut v = m.manifest.clone();
    v["boot"] = boot;
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    p
}

fn verify(part: &Path, key: &Path, manifest: &Path) -> mini::Run {
    mini::cairn(
        &[
            os("audit"),
            os("verify"),
            part.as_os_str(),
            os("--key"),
            key.as_os_str(),
            os("--manifest"),
            manifest.as_os_str(),
        ],
        LIMIT,
    )
}

#[test]
fn verify_judges_each_quoted_boot_against_the_manifests_pcr11() {
    let tmp = tempfile::tempdir().unwrap();
    let (part, key, quoted) = quoted_trail(tmp.path());
    let zeros = Sha256([0u8; 32]).hex();
    let same = manifest(
        tmp.path(),
        "same.json",
        serde_json::json!({ "pcr11_sha256": zeros }),
    );
    let r = verify(&part, &key, &same);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("TPM quote verifies"), "{r:?}");
    // The boot without a TPM is reported, not failed.
    assert!(r.stdout.contains("no TPM"), "{r:?}");

    // Control: a release whose UKI predicts another PCR 11.
    let other = manifest(
        tmp.path(),
        "other.json",
        serde_json::json!({ "pcr11_sha256": Sha256::of_bytes(b"another uki").hex() }),
    );
    let r = verify(&part, &key, &other);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(&format!("boot {quoted}")) && r.stderr.contains("another UKI"),
        "{r:?}"
    );

    // A manifest that predicts nothing is bad input, not a pass.
    let none = manifest(tmp.path(), "none.json", serde_json::json!({}));
    let r = verify(&part, &key, &none);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.first_line().contains("pcr11_sha256"), "{r:?}");
}
