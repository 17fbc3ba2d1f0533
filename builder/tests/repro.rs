//! `make repro` on the small test recipe: two builds from its lock, in two
//! folders, over a minute apart, with a different TMPDIR and host name,
//! must give bit-identical raw, ISO and qcow2 images, SBOMs, manifest, provenance;
//! so must two more with the stage cache on (the second takes its root
//! image from the cache).
//! (Runs qemu-tests/repro.sh, the script `make repro` runs.)

use std::path::Path;
use std::process::Command;

#[test]
fn two_builds_a_minute_apart_are_bit_identical() {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace");
    testkit::tool("mmdebstrap", "mmdebstrap");
    testkit::tool("unshare", "util-linux");
    // A copy of the test recipe, so its lock does not land in the source tree.
    let dir = ws.join("target/repro-test");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        ws.join("qemu-tests/recipes/tiny.toml"),
        dir.join("tiny.toml"),
    )
    .unwrap();
    // The recipe's [site] key, named beside it.
    std::fs::copy(
        ws.join("qemu-tests/recipes/sites-test.pub"),
        dir.join("sites-test.pub"),
    )
    .unwrap();
    // Its model volume's data, named beside it too.
    std::fs::create_dir_all(dir.join("tiny-model")).unwrap();
    for e in std::fs::read_dir(ws.join("qemu-tests/recipes/tiny-model")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join("tiny-model").join(e.file_name())).unwrap();
    }
    let cache = dir.join("cache");
    let out = Command::new("bash")
        .arg(ws.join("qemu-tests/repro.sh"))
        .arg("target/repro-test/tiny.toml")
        .current_dir(ws)
        .env("CAIRN", env!("CARGO_BIN_EXE_cairn"))
        .env("CAIRN_CACHE", &cache)
        .env("CAIRN_NO_STAGE_CACHE", "1")
        .output()
        .expect("run repro.sh");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    println!("{text}");
    assert!(out.status.success(), "{text}");
    assert!(text.contains("repro: bit-identical"), "{text}");
    // A stored and a cached root image give the same outputs as a cold build.
    assert!(
        text.contains(
            "repro: with the stage cache on (a stored and a cached root), bit-identical to A"
        ),
        "{text}"
    );
    for f in [
        "cairn-test-1.raw",
        "cairn-test-1.iso",
        "cairn-test-1.qcow2",
        "cairn-test-1.spdx.json",
        "cairn-test-1.cdx.json",
        "manifest.json",
        "provenance.json",
    ] {
        assert!(text.contains(f), "{f} was not compared: {text}");
    }
}
