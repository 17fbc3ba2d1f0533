//! The Debian package (`make deb`, packaging/build-deb.sh) in a clean
//! Debian chroot made by mmdebstrap: `apt-get install ./cairn_*.deb`
//! installs it with nothing but its own dependencies (no recommends: none
//! of the builder's tools), and the field commands work there: `cairn
//! verify` on a signed release and `cairn flash` onto a loop device this
//! test attaches. Needs root, mmdebstrap, the Debian archive and loop
//! devices; without them the test fails, never skips.

use std::path::Path;
use std::process::Command;

use cairn::host::digest::Sha256;

mod common;
use common::mini::{mini, Media, RAW};

fn run(what: &str, cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}

/// Runs `script` in a private mount namespace where the chroot has the
/// host's /dev, /proc and /sys (so it sees the loop device); nothing stays
/// mounted after it.
fn in_chroot(root: &Path, script: &str) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-euc"])
        .arg(format!(
            "mount --rbind /dev \"$0/dev\"; mount -t proc proc \"$0/proc\"; \
             mount --rbind /sys \"$0/sys\"; exec chroot \"$0\" sh -euc '{script}'"
        ))
        .arg(root);
    c
}

#[test]
fn the_package_installs_in_a_clean_chroot_and_verifies_and_flashes_there() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tmp = tempfile::tempdir().unwrap();

    // The package, from the binary under test.
    let deb = run(
        "packaging/build-deb.sh",
        Command::new("bash")
            .arg(here.join("packaging/build-deb.sh"))
            .arg(env!("CARGO_BIN_EXE_cairn"))
            .arg(tmp.path().join("deb"))
            .env("SOURCE_DATE_EPOCH", "1700000000"),
    );
    let deb = Path::new(deb.trim());
    assert!(deb.is_file(), "build-deb.sh printed {deb:?}");

    // A clean Debian with apt and nothing else.
    let root = tmp.path().join("chroot");
    run(
        "mmdebstrap --variant=apt bookworm (Debian package mmdebstrap)",
        Command::new("mmdebstrap")
            .args(["--variant=apt", "--quiet", "bookworm"])
            .arg(&root),
    );
    std::fs::copy(deb, root.join("tmp/cairn.deb")).unwrap();
    let installed = run(
        "apt-get install ./cairn.deb",
        in_chroot(
            &root,
            "cd /tmp && apt-get update -qq && \
             DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ./cairn.deb",
        )
        .env("LC_ALL", "C"),
    );
    // Control: nothing but the package and mtools was installed, so what
    // follows runs without the builder's tools.
    assert!(
        installed.contains("0 upgraded, 2 newly installed"),
        "{installed}"
    );
    for tool in [
        "mksquashfs",
        "veritysetup",
        "qemu-img",
        "sfdisk",
        "xorriso",
        "objcopy",
    ] {
        let found = in_chroot(&root, &format!("command -v {tool}"))
            .output()
            .unwrap();
        assert!(!found.status.success(), "{tool} is in the chroot");
    }

    // A signed release inside the chroot, and a loop device for a stick.
    let m = mini(Media::RawAndQcow2);
    run(
        "cp -a release",
        Command::new("cp")
            .args(["-a", "--sparse=always"])
            .arg(&m.dir)
            .arg(root.join("tmp/release")),
    );
    std::fs::copy(&m.pubkey, root.join("tmp/release.pub")).unwrap();
    let raw = m.dir.join(RAW);
    let size = std::fs::metadata(&raw).unwrap().len();
    let stick = common::loopdev::Loop::attach(tmp.path(), "stick.img", size + (4 << 20), 0xa5);

    let verified = run(
        "cairn verify in the chroot",
        // The raw a field team flashes (a folder's qcow2 needs qemu-img,
        // which the package only suggests).
        &mut in_chroot(
            &root,
            &format!("cairn verify /tmp/release/{RAW} --pubkey /tmp/release.pub"),
        ),
    );
    println!("{verified}");
    let flashed = run(
        "cairn flash in the chroot",
        &mut in_chroot(
            &root,
            &format!(
                "cairn flash /tmp/release/{RAW} {} --pubkey /tmp/release.pub --yes --allow-fixed",
                stick.dev.display()
            ),
        ),
    );
    println!("{flashed}");
    assert_eq!(
        stick.digest(size),
        Sha256::of_file(&raw).unwrap(),
        "the stick holds the image"
    );
}
