//! Offline builds: a recipe locked and fetched on a "connected" machine
//! builds with the package archive unreachable (the base and an image built
//! from Debian packages); without the fetch it fails listing what is
//! missing; a lock that disagrees with the recipe is refused, naming the
//! difference; a cache carried by export/import gives the identical image.
//! Downloads from the Debian archive (as `make deps` does).

use std::path::Path;
use std::process::{Command, Output};

const RECIPE: &str = r#"
[image]
name = "offline-test"
version = "1"

[base.debian]
packages = []

[disk]
size = "1G"
state_size = "128M"

# An image built from Debian packages: its packages are locked, fetched
# and installed offline too. GNU hello is in no base package set.
[[images]]
name = "hello"
[images.build]
packages = ["hello"]
entrypoint = ["/usr/bin/hello"]
"#;

fn cairn(dir: &Path, cache: &Path, offline_net: bool, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
    c.args(args)
        .current_dir(dir)
        .env("CAIRN_CACHE", cache)
        // Every build starts from packages, not from a cached tree.
        .env("CAIRN_NO_STAGE_CACHE", "1");
    if offline_net {
        // A broken mirror route: any download attempt fails at once.
        for v in [
            "http_proxy",
            "https_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
        ] {
            c.env(v, "http://127.0.0.1:9");
        }
    }
    c.output().expect("run cairn")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn offline_build_needs_the_fetch_and_a_carried_cache_gives_the_same_image() {
    if !have("mmdebstrap") || !have("mksquashfs") {
        if std::env::var_os("CAIRN_REQUIRE_TEST_IMAGE").is_some() {
            panic!("host tools missing; run make deps");
        }
        println!("skipped: mmdebstrap/mksquashfs not installed");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    std::fs::write(dir.join("r.toml"), RECIPE).unwrap();
    let online_cache = dir.join("cache-online");

    // Lock on the "connected" machine (fills its cache as a side effect).
    let o = cairn(dir, &online_cache, false, &["lock", "r.toml"]);
    assert!(o.status.success(), "{}", text(&o));
    let lock = std::fs::read_to_string(dir.join("r.lock")).unwrap();
    assert!(lock.contains("[[image]]\nname = \"hello\""), "{lock}");
    assert!(lock.contains("name = \"hello\"\nversion = "), "{lock}");

    // Offline with an empty cache: refused, listing every missing package.
    let empty = dir.join("cache-empty");
    let o = cairn(
        dir,
        &empty,
        true,
        &[
            "build",
            "r.toml",
            "-o",
            "out-a",
            "--offline",
            "--format",
            "raw,iso",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("not in the cache"), "{t}");
    assert!(t.contains("systemd="), "{t}");
    assert!(
        t.contains("hello="),
        "the image's packages are listed too: {t}"
    );
    assert!(t.contains("cairn fetch"), "{t}");
    assert!(!dir.join("out-a/offline-test-1").exists());

    // A recipe whose image asks for other packages than the lock: refused
    // before anything runs, naming the image and the change.
    let changed = RECIPE.replace(
        r#"packages = ["hello"]"#,
        r#"packages = ["hello", "cowsay"]"#,
    );
    std::fs::write(dir.join("changed.toml"), changed).unwrap();
    std::fs::copy(dir.join("r.lock"), dir.join("changed.lock")).unwrap();
    let o = cairn(
        dir,
        &online_cache,
        true,
        &["build", "changed.toml", "-o", "out-c", "--offline"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("image \"hello\"") && t.contains("(added: cowsay)"),
        "{t}"
    );
    assert!(!dir.join("out-c/offline-test-1").exists());

    // After the fetch, offline with the mirror unreachable: builds.
    let o = cairn(dir, &online_cache, false, &["fetch", "r.toml"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = cairn(
        dir,
        &online_cache,
        true,
        &[
            "build",
            "r.toml",
            "-o",
            "out-a",
            "--offline",
            "--format",
            "raw,iso",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("image hello: ") && t.contains("/usr/lib/cairn/images/hello.tar"),
        "{t}"
    );

    // Carry the cache to an "air-gapped" machine: export, import into an
    // empty cache, build offline there: identical outputs.
    let o = cairn(
        dir,
        &online_cache,
        false,
        &["cache", "export", "carry.tar", "--recipe", "r.toml"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let airgapped = dir.join("cache-airgapped");
    let o = cairn(dir, &airgapped, true, &["cache", "import", "carry.tar"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = cairn(
        dir,
        &airgapped,
        true,
        &[
            "build",
            "r.toml",
            "-o",
            "out-b",
            "--offline",
            "--format",
            "raw,iso",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    // (A relative -o folder, as people type it, for every medium.)
    for f in ["offline-test-1.raw", "offline-test-1.iso", "manifest.json"] {
        let a = cairn::digest::Sha256::of_file(&dir.join("out-a/offline-test-1").join(f)).unwrap();
        let b = cairn::digest::Sha256::of_file(&dir.join("out-b/offline-test-1").join(f)).unwrap();
        println!("{f}: {a} {b}");
        assert_eq!(a, b, "{f} differs between the two offline builds");
    }
}
