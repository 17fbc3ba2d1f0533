//! The cluster stage of `runtime = "kubernetes"`: runs the Go module's
//! `build.sh OUT_DIR` (upstream Kubernetes, containerd, runc, CNI plugins
//! and cairn's node helpers, from the modules `go.sum` pins) and keeps its
//! output in cairn's cache under a key over every input of the build: each
//! file of the module that Go or the script reads (`go.mod`, `go.sum`,
//! `*.go`, `*.sh`, `*.s`, `*.c`, `*.h`), the toolchain (`go version`) and
//! the environment set here. A warm rebuild reads the stored folder (each
//! file checked against the digest list stored with it) and never starts
//! the Go compiler.
//!
//! The Go caches live in cairn's cache folder (`go/mod`, `go/build`), so
//! `cairn fetch` fills them ([`download`]) and an offline build
//! (`GOPROXY=off`) finds them. Each binary's Go modules (`go version -m`)
//! are kept beside it for the SBOMs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::host::digest::Sha256;
use crate::inputs::cache::Cache;

/// The stage's name in the build log and its folder in the cache.
pub const STAGE: &str = "cluster";
/// The list of the stored files and their digests, in a stored folder.
const DIGESTS: &str = "CAIRN-DIGESTS";
/// Each Go binary's modules, in a stored folder (see [`GoModule::line`]).
const MODULES: &str = "CAIRN-MODULES";
/// The toolchain that built a stored folder.
const TOOLCHAIN: &str = "CAIRN-GO";

/// What this stage sets in the build's environment (part of the key).
/// `GOPROXY=off` offline is not: it changes where modules come from, not
/// what is built (go.sum pins them either way).
const BUILD_ENV: &[(&str, &str)] = &[
    ("GOTOOLCHAIN", "local"),
    ("GOFLAGS", "-mod=readonly"),
    ("GOOS", "linux"),
    ("GOARCH", "amd64"),
    ("GOAMD64", "v1"),
    ("GOEXPERIMENT", ""),
    ("GOSUMDB", "sum.golang.org"),
];

/// Where the Go caches live, under cairn's cache root.
#[derive(Debug, Clone)]
pub struct GoEnv {
    pub mod_cache: PathBuf,
    pub build_cache: PathBuf,
    /// `cairn build --offline`: the proxy is never reached.
    pub offline: bool,
}

impl GoEnv {
    pub fn new(cache_root: &Path, offline: bool) -> GoEnv {
        GoEnv {
            mod_cache: cache_root.join("go").join("mod"),
            build_cache: cache_root.join("go").join("build"),
            offline,
        }
    }

    /// A `go` (or build.sh) command with these caches and the fixed
    /// environment; the caller's GOPATH, GOFLAGS and the like are replaced.
    fn command(&self, program: &str, module: &Path) -> std::process::Command {
        let mut c = crate::host::runner::command(program);
        c.current_dir(module)
            .env("GOMODCACHE", &self.mod_cache)
            .env("GOCACHE", &self.build_cache)
            .env("GOPATH", self.mod_cache.join("gopath"))
            .env_remove("GOENV")
            .env("GOENV", "off");
        for (k, v) in BUILD_ENV {
            c.env(k, v);
        }
        if self.offline {
            c.env("GOPROXY", "off");
        }
        c.stdin(std::process::Stdio::null());
        c
    }
}

/// One Go module linked into a binary, as `go version -m` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoModule {
    pub path: String,
    pub version: String,
    /// The `h1:` sum from go.sum (empty for the main module).
    pub sum: String,
}

impl GoModule {
    /// `pkg:golang/PATH@VERSION`, the path's segments percent-encoded as
    /// the purl spec asks (lower-case, as Go's proxy paths are written).
    pub fn purl(&self) -> String {
        let enc = |s: &str| {
            s.bytes()
                .map(|b| match b {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'~' | b'/' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        };
        format!(
            "pkg:golang/{}@{}",
            enc(&self.path.to_lowercase()),
            enc(&self.version)
        )
    }

    /// `BINARY PATH VERSION SUM` (SUM `-` when empty): one line of MODULES.
    fn line(&self, binary: &str) -> String {
        let sum = if self.sum.is_empty() { "-" } else { &self.sum };
        format!("{binary} {} {} {sum}", self.path, self.version)
    }
}

/// A Go binary of the stage's output and its modules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoBinary {
    /// Its file name in the output folder.
    pub name: String,
    /// The main package path (`go version -m`'s `path`).
    pub main: String,
    pub modules: Vec<GoModule>,
}

/// The stage's result: its folder (read-only, in the cache), the toolchain
/// and each Go binary's modules.
#[derive(Debug, Clone)]
pub struct Built {
    pub dir: PathBuf,
    pub key: Sha256,
    /// `go version`'s output, e.g. "go version go1.26.8 linux/amd64".
    pub go_version: String,
    pub binaries: Vec<GoBinary>,
    /// Whether it came from the cache (no compiler ran).
    pub cached: bool,
}

/// What the manifest, SBOMs and provenance record of the stage: the
/// toolchain and each Go binary's modules.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Installed {
    pub go_version: String,
    pub stage_key: String,
    /// (binary, [(module path, version, h1 sum)]).
    pub binaries: Vec<InstalledBinary>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InstalledBinary {
    pub name: String,
    pub main: String,
    pub modules: Vec<(String, String, String)>,
}

impl Installed {
    pub fn of(b: &Built) -> Installed {
        Installed {
            go_version: b.go_version.clone(),
            stage_key: b.key.hex(),
            binaries: b
                .binaries
                .iter()
                .map(|x| InstalledBinary {
                    name: x.name.clone(),
                    main: x.main.clone(),
                    modules: x
                        .modules
                        .iter()
                        .map(|m| (m.path.clone(), m.version.clone(), m.sum.clone()))
                        .collect(),
                })
                .collect(),
        }
    }
}

/// The files of the module the key covers: everything Go or the script
/// reads to build (tests and documentation do not change the output).
fn keyed(rel: &Path) -> bool {
    let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let go_test = name.ends_with("_test.go");
    !go_test
        && (matches!(
            name,
            "go.mod" | "go.sum" | "go.work" | "go.work.sum" | "VERSIONS"
        ) || [".go", ".sh", ".s", ".c", ".h", ".toml", ".json", ".yaml"]
            .iter()
            .any(|e| name.ends_with(e)))
}

/// The stage key: the module's keyed files (path, mode's executable bit and
/// sha256, sorted), the toolchain and the fixed environment.
pub fn key(module: &Path, toolchain: &str) -> Result<Sha256> {
    let mut lines = Vec::new();
    for e in walkdir::WalkDir::new(module).sort_by_file_name() {
        let e = e.with_context(|| format!("{STAGE}: reading {}", module.display()))?;
        let rel = e.path().strip_prefix(module).unwrap_or(e.path());
        if e.file_type().is_dir() || !keyed(rel) {
            continue;
        }
        let d = Sha256::of_file(e.path())
            .with_context(|| format!("{STAGE}: reading {}", e.path().display()))?;
        let exec = {
            use std::os::unix::fs::PermissionsExt as _;
            e.metadata().map(|m| m.permissions().mode() & 0o111 != 0)?
        };
        lines.push(format!("file {} {d} {exec}", rel.display()));
    }
    if lines.is_empty() {
        bail!("{STAGE}: {} holds no Go module files", module.display());
    }
    lines.push(format!("toolchain {toolchain}"));
    for (k, v) in BUILD_ENV {
        lines.push(format!("env {k}={v}"));
    }
    Ok(crate::inputs::stagecache::key(STAGE, &lines))
}

/// `go version`, run as the build runs it (the local toolchain only).
pub fn go_version(env: &GoEnv, module: &Path) -> Result<String> {
    let mut cmd = env.command("go", module);
    cmd.arg("version");
    let out = crate::host::runner::output(STAGE, cmd)
        .context("cluster: the Go toolchain is needed to build runtime = \"kubernetes\" (install Go, e.g. golang-go, or put go on PATH)")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The C compiler and libseccomp that link runc (cgo): their versions are
/// inputs too. Unknown ones key as such (the build then says what fails).
fn c_toolchain() -> String {
    let first = |program: &str, args: &[&str]| -> String {
        let mut c = crate::host::runner::command(program);
        c.args(args).stdin(std::process::Stdio::null());
        crate::host::runner::output(STAGE, c)
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_else(|_| "unknown".into())
    };
    format!(
        "cc {}; libseccomp-dev {}",
        first("cc", &["--version"]),
        first("dpkg-query", &["-W", "-f=${Version}", "libseccomp-dev"])
    )
}

/// The folder a key's output is stored in.
pub fn stored_dir(cache: &Cache, key: &Sha256) -> PathBuf {
    cache.root().join(STAGE).join(key.hex())
}

/// Runs the stage: the stored output when the key matches (and the stage
/// cache is on), else `build.sh` into the cache.
pub fn build(cache: &Cache, enabled: bool, module: &Path, offline: bool) -> Result<Built> {
    let env = GoEnv::new(cache.root(), offline);
    let go_version = go_version(&env, module)?;
    let key = key(module, &format!("{go_version}; {}", c_toolchain()))?;
    let dir = stored_dir(cache, &key);
    if enabled && dir.join(DIGESTS).is_file() {
        check_stored(&dir)?;
        crate::host::progress::say(&format!(
            "    cluster binaries unchanged: reusing the cached ones (stage key {key})"
        ));
        return read_built(dir, key, true);
    }
    for d in [&env.mod_cache, &env.build_cache] {
        std::fs::create_dir_all(d).with_context(|| format!("{STAGE}: create {}", d.display()))?;
    }
    let parent = dir.parent().context("cluster: cache folder")?;
    std::fs::create_dir_all(parent)
        .with_context(|| format!("{STAGE}: create {}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}-", key.hex()))
        .tempdir_in(parent)
        .with_context(|| format!("{STAGE}: temporary folder in {}", parent.display()))?;
    let out = tmp.path().join("out");
    crate::host::progress::say(&format!(
        "    cluster binaries: building {} with {go_version}{}",
        module.display(),
        if offline {
            " (offline: GOPROXY=off)"
        } else {
            ""
        }
    ));
    let mut cmd = env.command("sh", module);
    cmd.arg(module.join("build.sh"))
        .arg(&out)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    crate::host::runner::run_streaming(STAGE, cmd).with_context(|| {
        if offline {
            format!("{STAGE}: {}/build.sh failed offline; run `cairn fetch RECIPE` online first so the Go module cache holds every module", module.display())
        } else {
            format!("{STAGE}: {}/build.sh failed", module.display())
        }
    })?;
    let binaries = go_binaries(&env, &out)?;
    let mut modules = String::new();
    for b in &binaries {
        modules.push_str(&format!("{} main {}\n", b.name, b.main));
        for m in &b.modules {
            modules.push_str(&m.line(&b.name));
            modules.push('\n');
        }
    }
    std::fs::write(out.join(MODULES), modules)?;
    std::fs::write(out.join(TOOLCHAIN), format!("{go_version}\n"))?;
    std::fs::write(out.join(DIGESTS), digests(&out)?)?;
    make_read_only(&out)?;
    match std::fs::rename(&out, &dir) {
        Ok(()) => {}
        // The key was stored before (the stage cache is off, or another
        // build stored it meanwhile): the same inputs must have given the
        // same bytes, so this build is checked against it rather than
        // silently swapped for it (which would hide a build that is not
        // reproducible, e.g. from `make repro`, whose builds run with the
        // stage cache off).
        Err(_) if dir.join(DIGESTS).is_file() => {
            same_as_stored(&dir, &out)?;
            crate::host::progress::say(
                "    cluster binaries: the same bytes as the stored build of this key",
            );
        }
        Err(e) => {
            return Err(e).with_context(|| format!("{STAGE}: store {}", dir.display()));
        }
    }
    let mut b = read_built(dir, key, false)?;
    b.go_version = go_version;
    Ok(b)
}

/// `cairn fetch`: fills the Go module cache with every module go.sum pins
/// (`go mod download`), so `cairn build --offline` builds.
pub fn download(cache_root: &Path, module: &Path) -> Result<()> {
    let env = GoEnv::new(cache_root, false);
    std::fs::create_dir_all(&env.mod_cache)
        .with_context(|| format!("{STAGE}: create {}", env.mod_cache.display()))?;
    let mut cmd = env.command("go", module);
    cmd.args(["mod", "download", "-x"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    crate::host::runner::run_streaming(STAGE, cmd)
        .with_context(|| format!("{STAGE}: go mod download in {}", module.display()))
}

/// Every regular file and link of `dir` (but the digest list), sorted:
/// `sha256 PATH` or `link PATH TARGET`.
fn digests(dir: &Path) -> Result<String> {
    let mut s = String::new();
    for e in walkdir::WalkDir::new(dir).min_depth(1).sort_by_file_name() {
        let e = e?;
        let rel = e.path().strip_prefix(dir).unwrap_or(e.path());
        if rel == Path::new(DIGESTS) {
            continue;
        }
        if e.path_is_symlink() {
            let t = std::fs::read_link(e.path())?;
            s.push_str(&format!("link {} {}\n", rel.display(), t.display()));
        } else if e.file_type().is_file() {
            s.push_str(&format!(
                "{} {}\n",
                Sha256::of_file(e.path())?,
                rel.display()
            ));
        }
    }
    Ok(s)
}

/// A fresh build (`fresh`, its digest list written) gives the bytes the
/// stored build of the same key (`stored`) has; else names the files that
/// differ (the first few) and keeps both folders' paths in the message.
fn same_as_stored(stored: &Path, fresh: &Path) -> Result<()> {
    let read = |d: &Path| {
        std::fs::read_to_string(d.join(DIGESTS))
            .with_context(|| format!("{STAGE}: read {}", d.join(DIGESTS).display()))
    };
    let (want, got) = (read(stored)?, read(fresh)?);
    if want == got {
        return Ok(());
    }
    let name = |l: &str| l.split(' ').nth(1).unwrap_or(l).to_string();
    let want_lines: std::collections::BTreeSet<&str> = want.lines().collect();
    let mut differ: Vec<String> = got
        .lines()
        .filter(|l| !want_lines.contains(l))
        .chain(want.lines().filter(|l| !got.lines().any(|g| g == *l)))
        .map(name)
        .collect();
    differ.sort();
    differ.dedup();
    let shown = differ
        .iter()
        .take(5)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    bail!(
        "{STAGE}: not reproducible: this build of the same inputs gave other bytes than the stored one in {} ({} file(s) differ: {shown}); compare with `go version -m` and cmp, or remove that folder if it came from another toolchain",
        stored.display(),
        differ.len()
    )
}

/// A stored folder is what its digest list says, and nothing more.
fn check_stored(dir: &Path) -> Result<()> {
    let want = std::fs::read_to_string(dir.join(DIGESTS))
        .with_context(|| format!("{STAGE}: read {}", dir.join(DIGESTS).display()))?;
    let got = digests(dir)?;
    if want != got {
        bail!(
            "{STAGE}: the stored binaries in {} differ from their digest list (a damaged cache); remove that folder and build again",
            dir.display()
        );
    }
    Ok(())
}

fn make_read_only(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    for e in walkdir::WalkDir::new(dir).min_depth(1) {
        let e = e?;
        if e.file_type().is_file() {
            let m = e.metadata()?.permissions().mode();
            std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(m & 0o555))?;
        }
    }
    Ok(())
}

/// The Go binaries of `out` (regular files `go version -m` reads) and
/// their modules.
fn go_binaries(env: &GoEnv, out: &Path) -> Result<Vec<GoBinary>> {
    let mut found = Vec::new();
    for e in walkdir::WalkDir::new(out).min_depth(1).sort_by_file_name() {
        let e = e?;
        if !e.file_type().is_file() {
            continue;
        }
        // Only ELF files: `go version -m` fails on anything else, and a
        // C program (pause) is an ELF file it fails on too.
        let mut magic = [0u8; 4];
        let elf = std::fs::File::open(e.path())
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok()
            && magic == *b"\x7fELF";
        if !elf {
            continue;
        }
        let sh = crate::host::runner::shell()?;
        let path = e.path();
        let (code, stdout, _) = crate::host::runner::run_code(
            STAGE,
            xshell::cmd!(sh, "go version -m {path}")
                .env("GOTOOLCHAIN", "local")
                .env("GOMODCACHE", &env.mod_cache)
                .env("GOCACHE", &env.build_cache)
                .quiet(),
        )?;
        if code != 0 || stdout.trim().is_empty() {
            continue; // not a Go binary (the pause program, a config file)
        }
        let rel = e.path().strip_prefix(out).unwrap_or(e.path());
        if let Some(b) = parse_version_m(&rel.display().to_string(), &stdout) {
            found.push(b);
        }
    }
    Ok(found)
}

/// Parses `go version -m`: `path`, `mod` and `dep` lines (a `=>` line
/// replaces the module before it).
pub fn parse_version_m(name: &str, text: &str) -> Option<GoBinary> {
    let mut main = None;
    let mut modules: Vec<GoModule> = Vec::new();
    for l in text.lines() {
        let f: Vec<&str> = l
            .split('\t')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        match f.as_slice() {
            ["path", p, ..] => main = Some(p.to_string()),
            ["mod" | "dep", p, v, rest @ ..] => modules.push(GoModule {
                path: p.to_string(),
                version: v.to_string(),
                sum: rest.first().map(|s| s.to_string()).unwrap_or_default(),
            }),
            ["=>", p, v, rest @ ..] => {
                if let Some(last) = modules.last_mut() {
                    *last = GoModule {
                        path: p.to_string(),
                        version: v.to_string(),
                        sum: rest.first().map(|s| s.to_string()).unwrap_or_default(),
                    };
                }
            }
            _ => {}
        }
    }
    Some(GoBinary {
        name: name.to_string(),
        main: main?,
        modules,
    })
}

/// Reads a stored folder's toolchain and module lists.
fn read_built(dir: PathBuf, key: Sha256, cached: bool) -> Result<Built> {
    let go_version = std::fs::read_to_string(dir.join(TOOLCHAIN))
        .unwrap_or_default()
        .trim()
        .to_string();
    let text = std::fs::read_to_string(dir.join(MODULES))
        .with_context(|| format!("{STAGE}: read {}", dir.join(MODULES).display()))?;
    let mut binaries: Vec<GoBinary> = Vec::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        match f.as_slice() {
            [name, "main", main] => binaries.push(GoBinary {
                name: name.to_string(),
                main: main.to_string(),
                modules: Vec::new(),
            }),
            [name, path, version, sum] => {
                if let Some(b) = binaries.iter_mut().find(|b| b.name == *name) {
                    b.modules.push(GoModule {
                        path: path.to_string(),
                        version: version.to_string(),
                        sum: if *sum == "-" {
                            String::new()
                        } else {
                            sum.to_string()
                        },
                    });
                }
            }
            _ => bail!(
                "{STAGE}: {} line {l:?} is not understood",
                dir.join(MODULES).display()
            ),
        }
    }
    Ok(Built {
        dir,
        key,
        go_version,
        binaries,
        cached,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(dir: &Path) {
        std::fs::create_dir_all(dir.join("cmd/kube")).unwrap();
        std::fs::write(dir.join("go.mod"), "module x\n").unwrap();
        std::fs::write(dir.join("go.sum"), "a v1 h1:aaa=\n").unwrap();
        std::fs::write(dir.join("build.sh"), "#!/bin/sh\n").unwrap();
        std::fs::write(dir.join("cmd/kube/main.go"), "package main\n").unwrap();
    }

    #[test]
    fn a_fresh_build_must_give_the_stored_bytes_of_its_key() {
        let stored = tempfile::tempdir().unwrap();
        let fresh = tempfile::tempdir().unwrap();
        for d in [stored.path(), fresh.path()] {
            std::fs::create_dir_all(d.join("bin")).unwrap();
            std::fs::write(d.join("bin/kube"), "same bytes").unwrap();
            std::fs::write(d.join("bin/runc"), "runc").unwrap();
            std::fs::write(d.join(DIGESTS), digests(d).unwrap()).unwrap();
        }
        same_as_stored(stored.path(), fresh.path()).unwrap();
        // Control: one byte of one binary differs (a build id or a path
        // that leaked in): the build fails naming that file only.
        std::fs::write(fresh.path().join("bin/kube"), "same bytez").unwrap();
        std::fs::write(fresh.path().join(DIGESTS), digests(fresh.path()).unwrap()).unwrap();
        let e = format!(
            "{:#}",
            same_as_stored(stored.path(), fresh.path()).unwrap_err()
        );
        assert!(
            e.contains("not reproducible") && e.contains("1 file(s) differ: bin/kube"),
            "{e}"
        );
        assert!(!e.contains("runc"), "{e}");
    }

    #[test]
    fn the_key_changes_with_go_sum_and_not_with_an_unrelated_file() {
        let d = tempfile::tempdir().unwrap();
        module(d.path());
        let base = key(d.path(), "go version go1.26.8 linux/amd64").unwrap();
        // Control: documentation and tests do not change what is built.
        std::fs::write(d.path().join("README.md"), "notes").unwrap();
        std::fs::write(d.path().join("cmd/kube/main_test.go"), "package main").unwrap();
        assert_eq!(
            key(d.path(), "go version go1.26.8 linux/amd64").unwrap(),
            base
        );
        std::fs::write(d.path().join("go.sum"), "a v1 h1:bbb=\n").unwrap();
        let sum = key(d.path(), "go version go1.26.8 linux/amd64").unwrap();
        assert_ne!(sum, base, "go.sum is an input");
        std::fs::write(d.path().join("cmd/kube/main.go"), "package main // x\n").unwrap();
        let src = key(d.path(), "go version go1.26.8 linux/amd64").unwrap();
        assert_ne!(src, sum, "a .go file is an input");
        assert_ne!(
            key(d.path(), "go version go1.26.9 linux/amd64").unwrap(),
            src,
            "the toolchain is an input"
        );
    }

    #[test]
    fn a_folder_without_module_files_has_no_key() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("README.md"), "x").unwrap();
        assert!(key(d.path(), "go").is_err());
    }

    #[test]
    fn go_version_m_lists_modules_with_sums_and_replacements() {
        let text = "/o/kube: go1.26.8\n\tpath\tcairn.dev/cluster/cmd/kube\n\tmod\tcairn.dev/cluster\t(devel)\t\n\tdep\tk8s.io/kubernetes\tv1.37.2\th1:abc=\n\tdep\tgithub.com/Foo/bar\tv0.1.0\th1:def=\n\t=>\tgithub.com/foo/bar\tv0.2.0\th1:ghi=\n\tbuild\t-trimpath=true\n";
        let b = parse_version_m("kube", text).unwrap();
        assert_eq!(b.main, "cairn.dev/cluster/cmd/kube");
        assert_eq!(b.modules.len(), 3);
        assert_eq!(b.modules[1].purl(), "pkg:golang/k8s.io/kubernetes@v1.37.2");
        assert_eq!(b.modules[1].sum, "h1:abc=");
        assert_eq!(b.modules[2].path, "github.com/foo/bar");
        assert_eq!(b.modules[2].version, "v0.2.0");
        assert!(parse_version_m("x", "not go\n").is_none());
    }

    #[test]
    fn a_stored_folder_that_changed_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("kube"), "binary").unwrap();
        std::os::unix::fs::symlink("kube", d.path().join("kubelet")).unwrap();
        std::fs::write(d.path().join(DIGESTS), digests(d.path()).unwrap()).unwrap();
        check_stored(d.path()).unwrap();
        std::fs::write(d.path().join("kube"), "binarY").unwrap();
        assert!(check_stored(d.path()).is_err());
    }
}
