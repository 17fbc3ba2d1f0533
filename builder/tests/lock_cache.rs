//! Reproducible, offline Debian bases: resolve a tiny package set against
//! deb.debian.org once, lock it, move the cache through export/import, then
//! build the root twice from local repositories in different folders with
//! the network made unreachable, and compare the trees with each other and
//! with an online build. Controls: a package missing from the cache is
//! named before anything runs; a repository without a needed package makes
//! the offline mmdebstrap fail (it does not reach out for it).
//!
//! Needs mmdebstrap, dpkg-deb and network access to deb.debian.org (the
//! test fails, naming the package, without the tools).

use std::path::Path;
use std::process::Command;

use cairn::host::digest::Sha256;
use cairn::inputs::cache::Cache;
use cairn::inputs::debrepo::{self, LocalRepo, MissingPackages};
use cairn::inputs::lock::{check_matches, Lock, LockedBase, LOCK_VERSION};

const EPOCH: u64 = 1_735_689_600;
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
const DEAD_PROXY: &str = "http://127.0.0.1:9";

fn requested() -> Vec<String> {
    vec!["busybox-static".to_string()]
}

/// Runs mmdebstrap as compose does, into `target`, from `mirror`.
fn mmdebstrap(target: &Path, mirror: &str, extra: &[String], offline: bool) -> (bool, String) {
    let mut cmd = debrepo::mmdebstrap_command(
        debrepo::Variant::Base,
        SUITE,
        target,
        mirror,
        &requested(),
        EPOCH,
        "directory",
        extra,
    );
    if offline {
        for k in [
            "http_proxy",
            "https_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ftp_proxy",
        ] {
            cmd.env(k, DEAD_PROXY);
        }
    }
    let out = cmd.output().expect("run mmdebstrap");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// sha256 of a tar of the tree: names sorted, numeric owners kept, every
/// mtime set to EPOCH (cairn's normalise stage does that to the image).
fn tree_tar_digest(dir: &Path, scratch: &Path) -> Sha256 {
    let tar = scratch.join(format!(
        "{}.tar",
        dir.file_name().unwrap().to_string_lossy()
    ));
    let st = Command::new("tar")
        .arg("--sort=name")
        .arg(format!("--mtime=@{EPOCH}"))
        .args(["--numeric-owner", "-C"])
        .arg(dir)
        .args(["-cf"])
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let d = Sha256::of_file(&tar).unwrap();
    std::fs::remove_file(&tar).unwrap();
    d
}

fn offline_build(repo: &LocalRepo, target: &Path) -> (bool, String) {
    let mut extra = repo.mmdebstrap_args();
    extra.push(debrepo::sources_list_hook(debrepo::Variant::Base, SUITE, MIRROR).unwrap());
    mmdebstrap(target, &repo.mmdebstrap_mirror(), &extra, true)
}

#[test]
fn offline_builds_from_the_lock_are_reproducible() {
    testkit::tool("mmdebstrap", "mmdebstrap");
    testkit::tool("dpkg-deb", "dpkg");
    let t = tempfile::tempdir().unwrap();
    let tp = t.path();

    // 1. Resolve online, fill a cache, write the lock.
    let online_cache = Cache::open(tp.join("cache-online")).unwrap();
    let pkgs = debrepo::resolve_and_download(
        SUITE,
        MIRROR,
        &requested(),
        EPOCH,
        &tp.join("work"),
        &online_cache,
    )
    .unwrap();
    eprintln!("resolved {} packages", pkgs.len());
    let bb = pkgs
        .iter()
        .find(|p| p.name == "busybox-static")
        .expect("busybox-static locked");
    assert!(
        pkgs.iter().any(|p| p.name == "dpkg"),
        "essential set locked"
    );
    for p in &pkgs {
        assert!(p.filename.starts_with("pool/"), "{p:?}");
        assert!(online_cache.contains(&p.sha256), "{p:?}");
    }
    let lock = Lock {
        version: LOCK_VERSION,
        source_date_epoch: EPOCH,
        base: Some(LockedBase {
            suite: SUITE.into(),
            mirror: MIRROR.into(),
            packages_requested: requested(),
            packages: pkgs.clone(),
        }),
        images: vec![],
        urls: vec![],
    };
    let lock_file = tp.join("tiny.lock");
    lock.write(&lock_file).unwrap();
    let lock = Lock::read(&lock_file).unwrap();
    check_matches(&lock, SUITE, MIRROR, &requested()).unwrap();
    let locked = lock.base.as_ref().unwrap().packages.clone();
    assert_eq!(locked, pkgs);

    // 2. Carry the cache: export exactly the lock's blobs, import into an
    //    empty cache (the "offline machine").
    let export = tp.join("cache.tar");
    online_cache.export(&lock.digests(), &export).unwrap();
    let cache = Cache::open(tp.join("cache-offline")).unwrap();
    let r = cache.import(&export).unwrap();
    assert_eq!(r.added, locked.len());
    std::fs::remove_file(&export).unwrap();

    // 3. Two offline builds from two repositories in different folders.
    let repo_a = debrepo::local_repo(SUITE, &locked, &cache, &tp.join("repo-a")).unwrap();
    // B is planned first (what a build does: nothing is read until
    // mmdebstrap needs it), then written.
    let repo_b = debrepo::planned_repo(SUITE, &locked, &cache, &tp.join("x/y/other-repo")).unwrap();
    assert_eq!(
        std::fs::read_dir(&repo_b.dir).unwrap().count(),
        0,
        "a planned repository is written only when needed"
    );
    repo_b.write(&cache).unwrap();
    assert_eq!(
        std::fs::read(repo_a.dir.join("Packages")).unwrap(),
        std::fs::read(repo_b.dir.join("Packages")).unwrap()
    );
    assert!(repo_b.write(&cache).is_err(), "written twice");
    assert_ne!(repo_a.mmdebstrap_mirror(), repo_b.mmdebstrap_mirror());
    let root_a = tp.join("root-a");
    let root_b = tp.join("root-b");
    let (ok, err) = offline_build(&repo_a, &root_a);
    assert!(ok, "offline build A failed:\n{err}");
    let (ok, err) = offline_build(&repo_b, &root_b);
    assert!(ok, "offline build B failed:\n{err}");
    assert!(root_a.join("usr/bin/busybox").exists());
    let sources = std::fs::read_to_string(root_a.join("etc/apt/sources.list")).unwrap();
    assert_eq!(sources, format!("deb {MIRROR} {SUITE} main\n"));
    let da = tree_tar_digest(&root_a, tp);
    let db = tree_tar_digest(&root_b, tp);
    eprintln!("offline A: {da}\noffline B: {db}");
    assert_eq!(da, db, "two offline builds from the same lock differ");
    // Installed versions are exactly the locked ones.
    let status = std::fs::read_to_string(root_a.join("var/lib/dpkg/status")).unwrap();
    let installed = cairn::pipeline::compose::parse_dpkg_status(&status);
    let mut want: Vec<(String, String)> = locked
        .iter()
        .map(|p| (p.name.clone(), p.version.clone()))
        .collect();
    want.sort();
    let mut got: Vec<(String, String)> = installed
        .iter()
        .map(|p| (p.name.clone(), p.version.clone()))
        .collect();
    got.sort();
    assert_eq!(got, want, "installed set differs from the lock");
    std::fs::remove_dir_all(&root_b).unwrap();

    // 4. The same tree as an online build (what compose does today).
    let root_on = tp.join("root-online");
    let (ok, err) = mmdebstrap(&root_on, MIRROR, &[], false);
    assert!(ok, "online build failed:\n{err}");
    let don = tree_tar_digest(&root_on, tp);
    eprintln!("online:    {don}");
    assert_eq!(da, don, "offline build differs from the online one");
    std::fs::remove_dir_all(&root_on).unwrap();
    std::fs::remove_dir_all(&root_a).unwrap();

    // Control 1: a locked package missing from the cache is named (with
    // every other missing one) before mmdebstrap runs.
    let partial = Cache::open(tp.join("cache-partial")).unwrap();
    for p in locked.iter().filter(|p| p.name != "busybox-static") {
        partial.put_file(&cache.get(&p.sha256).unwrap()).unwrap();
    }
    let e = debrepo::local_repo(SUITE, &locked, &partial, &tp.join("repo-c")).unwrap_err();
    let m = e
        .downcast_ref::<MissingPackages>()
        .expect("MissingPackages");
    assert_eq!(m.missing.len(), 1, "{e}");
    assert!(e.to_string().contains(&bb.spec()), "{e}");
    assert!(e.to_string().contains("cairn fetch RECIPE"), "{e}");

    // Control 2: a repository without busybox-static: the offline build
    // fails instead of fetching it from the network.
    let without: Vec<_> = locked
        .iter()
        .filter(|p| p.name != "busybox-static")
        .cloned()
        .collect();
    let repo_d = debrepo::local_repo(SUITE, &without, &cache, &tp.join("repo-d")).unwrap();
    let (ok, err) = offline_build(&repo_d, &tp.join("root-d"));
    assert!(!ok, "offline build without busybox-static succeeded");
    assert!(err.contains("busybox-static"), "{err}");
}
