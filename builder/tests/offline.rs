//! Offline builds: a recipe locked and fetched on a "connected" machine
//! builds with the package archive unreachable (the base, an image built
//! from Debian packages, and an image archive named by URL, served by the
//! test on 127.0.0.1); without the fetch it fails listing what is missing;
//! a lock that disagrees with the recipe is refused, naming the
//! difference; a download that does not match its pin is refused and not
//! stored; a cache carried by export/import gives the identical image.
//! Downloads from the Debian archive (as `make deps` does).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cairn::host::digest::Sha256;

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

# An image archive named by URL (the test's own server on 127.0.0.1).
[[images]]
name = "web"
archive = "http://127.0.0.1:PORT/web.oci.tar"
digest = "sha256:MANIFEST"
archive_sha256 = "ARCHIVE"
"#;

/// A small OCI layout archive (one layer, one file) and its manifest digest.
fn oci_archive() -> (Vec<u8>, Sha256) {
    fn tar(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in members {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(1_700_000_000);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }
    let d = |b: &[u8]| format!("sha256:{}", Sha256::of_bytes(b).hex());
    let layer = tar(&[("srv/index.html", b"served by a pinned image\n")]);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": [d(&layer)]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d(&layer), "size": layer.len()}],
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d(&manifest), "size": manifest.len()}],
    }))
    .unwrap();
    let blob = |b: &[u8]| format!("blobs/sha256/{}", Sha256::of_bytes(b).hex());
    let (cb, mb, lb) = (blob(&config), blob(&manifest), blob(&layer));
    let archive = tar(&[
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("index.json", &index),
        (&cb, &config),
        (&mb, &manifest),
        (&lb, &layer),
    ]);
    (archive, Sha256::of_bytes(&manifest))
}

/// Serves `files` (path → bytes) over HTTP on 127.0.0.1 and counts requests.
fn serve(files: Vec<(&'static str, Vec<u8>)>) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut line = String::new();
            let mut r = BufReader::new(conn.try_clone().unwrap());
            if r.read_line(&mut line).is_err() {
                continue;
            }
            // Skip the headers.
            let mut h = String::new();
            while r.read_line(&mut h).map(|n| n > 2).unwrap_or(false) {
                h.clear();
            }
            let path = line.split_whitespace().nth(1).unwrap_or("");
            let body = files.iter().find(|(p, _)| *p == path).map(|(_, b)| b);
            let _ = match body {
                Some(b) => conn
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            b.len()
                        )
                        .as_bytes(),
                    )
                    .and_then(|_| conn.write_all(b)),
                None => conn.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                ),
            };
        }
    });
    (port, hits)
}

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

/// `cairn build r.toml -o OUT --offline --format raw,iso --json` with the
/// package archive unreachable (stdout: the JSON of [`built`]).
fn offline_build(dir: &Path, cache: &Path, out: &str) -> Output {
    cairn(
        dir,
        cache,
        true,
        &[
            "build",
            "r.toml",
            "-o",
            out,
            "--offline",
            "--format",
            "raw,iso",
            "--json",
        ],
    )
}

/// A successful `build --json`'s stdout: one JSON document naming the
/// release folder and its files (issue #36).
fn built(o: &Output) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("build --json stdout is not JSON ({e}): {}", text(o)));
    assert_eq!(v["name"], "offline-test", "{v}");
    let raw = std::path::PathBuf::from(v["raw"].as_str().expect("raw"));
    assert!(raw.ends_with("offline-test-1/offline-test-1.raw"), "{v}");
    let files: Vec<&str> = v["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    assert!(
        files.contains(&"manifest.json") && files.contains(&"offline-test-1.iso"),
        "{v}"
    );
    assert_eq!(v["root_hash"].as_str().map(str::len), Some(64), "{v}");
    v
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

#[test]
fn offline_build_needs_the_fetch_and_a_carried_cache_gives_the_same_image() {
    testkit::tool("mmdebstrap", "mmdebstrap");
    testkit::tool("mksquashfs", "squashfs-tools");
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let (archive, manifest) = oci_archive();
    let mut tampered = archive.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let archive_sha = Sha256::of_bytes(&archive);
    let (port, hits) = serve(vec![
        ("/web.oci.tar", archive),
        ("/tampered.oci.tar", tampered),
    ]);
    let url = format!("http://127.0.0.1:{port}/web.oci.tar");
    let recipe = RECIPE
        .replace("PORT", &port.to_string())
        .replace("MANIFEST", &manifest.hex())
        .replace("ARCHIVE", &archive_sha.hex());
    std::fs::write(dir.join("r.toml"), &recipe).unwrap();
    let online_cache = dir.join("cache-online");

    // A download that is not what the recipe pins: refused (exit 2), named
    // with both digests, not stored, and nothing else runs.
    std::fs::write(
        dir.join("tampered.toml"),
        recipe.replace("/web.oci.tar", "/tampered.oci.tar"),
    )
    .unwrap();
    let t_cache = dir.join("cache-tampered");
    let o = cairn(dir, &t_cache, false, &["lock", "tampered.toml"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("/tampered.oci.tar: the download has sha256")
            && t.contains(&format!("the pin is {archive_sha}"))
            && t.contains("tampered.toml:"),
        "{t}"
    );
    assert!(
        !t.contains("mmdebstrap"),
        "nothing runs after a bad download: {t}"
    );
    assert!(!dir.join("tampered.lock").exists());
    let stored = walk_files(&t_cache.join("sha256"));
    assert!(stored.is_empty(), "stored: {stored:?}");

    // Lock on the "connected" machine (fills its cache as a side effect).
    let o = cairn(dir, &online_cache, false, &["lock", "r.toml"]);
    assert!(o.status.success(), "{}", text(&o));
    let lock = std::fs::read_to_string(dir.join("r.lock")).unwrap();
    assert!(
        lock.contains(&format!(
            "[[urls]]\nurl = \"{url}\"\nsha256 = \"{archive_sha}\""
        )),
        "{lock}"
    );
    assert!(lock.contains("[[image]]\nname = \"hello\""), "{lock}");
    assert!(lock.contains("name = \"hello\"\nversion = "), "{lock}");

    // Offline with an empty cache: refused, listing every missing package.
    let empty = dir.join("cache-empty");
    let o = offline_build(dir, &empty, "out-a");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("not in the cache"), "{t}");
    assert!(t.contains("systemd="), "{t}");
    assert!(
        t.contains("hello="),
        "the image's packages are listed too: {t}"
    );
    assert!(
        t.contains(&format!("{url} (image archive, sha256 {archive_sha}")),
        "{t}"
    );
    assert!(t.contains("cairn fetch"), "{t}");
    assert!(!dir.join("out-a/offline-test-1").exists());

    // A recipe whose image asks for other packages than the lock: refused
    // before anything runs, naming the image and the change.
    let changed = recipe.replace(
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
    let served = hits.load(Ordering::SeqCst);
    let o = offline_build(dir, &online_cache, "out-a");
    assert!(o.status.success(), "{}", text(&o));
    let a = built(&o);
    let t = text(&o);
    assert!(
        t.contains("image hello: ") && t.contains("/usr/lib/cairn/images/hello.tar"),
        "{t}"
    );
    assert!(t.contains(&format!("image web: {}", manifest.hex())), "{t}");

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
    let o = offline_build(dir, &airgapped, "out-b");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(built(&o)["root_hash"], a["root_hash"]);
    // (A relative -o folder, as people type it, for every medium.)
    for f in ["offline-test-1.raw", "offline-test-1.iso", "manifest.json"] {
        let a = cairn::host::digest::Sha256::of_file(&dir.join("out-a/offline-test-1").join(f))
            .unwrap();
        let b = cairn::host::digest::Sha256::of_file(&dir.join("out-b/offline-test-1").join(f))
            .unwrap();
        println!("{f}: {a} {b}");
        assert_eq!(a, b, "{f} differs between the two offline builds");
    }
    // Neither offline build, nor the import, asked the server for anything.
    assert_eq!(
        hits.load(Ordering::SeqCst),
        served,
        "an offline step downloaded"
    );
}

fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
