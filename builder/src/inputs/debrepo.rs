//! Debian packages for reproducible, offline builds.
//!
//! `resolve_and_download` runs mmdebstrap exactly as compose does (same
//! variant, dpkg path filters, INITRD=No, SOURCE_DATE_EPOCH) but keeps the
//! .debs it downloaded and the archive's Packages index, puts every .deb in
//! the content-addressed cache and returns them as lock entries (name,
//! version, architecture, pool path, priority, size, sha256).
//!
//! `local_repo` turns locked packages in the cache into a flat apt
//! repository (symlinks to the blobs, a `Packages` index and a `Release`
//! file written by cairn, no extra host tool) that mmdebstrap installs from
//! with no network: mirror `deb [trusted=yes] copy:///ABS/DIR/ ./`. The
//! `copy:` method makes apt copy each .deb into the chroot's archive cache
//! (so no bind mount is needed, unlike `file:`), and apt checks each file's
//! SHA256 against the index on the way. The `Release` file carries
//! `Suite:`/`Codename:` because mmdebstrap selects the essential and
//! required sets with `?archive(^SUITE$)`/`?codename(^SUITE$)`, and each
//! stanza carries the archive's `Priority:` (recorded in the lock), which
//! is not always the one inside the .deb (bookworm: apt, debconf, zlib1g,
//! libbz2-1.0, libdb5.3 differ) and decides what minbase installs.
//!
//! `fetch_locked` downloads missing locked packages by pool path
//! (`download::fetch_to_cache`), checking each against its pinned sha256.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::host::digest::Sha256;
use crate::inputs::cache::Cache;
use crate::inputs::lock::LockedPackage;

/// mmdebstrap's own merged-/usr hook (from its Debian package): it makes
/// the /bin, /lib, /sbin links itself and installs `usr-is-merged`, so the
/// essential `init-system-helpers` (Depends: usrmerge | usr-is-merged) is
/// satisfied without `usrmerge`, which would pull in perl and its modules
/// (about 50 MB of files an appliance never runs).
pub const MERGED_USR_HOOK_DIR: &str = "/usr/share/mmdebstrap/hooks/merged-usr";

/// `--hook-dir=` [`MERGED_USR_HOOK_DIR`]: for the roots that install
/// (minbase, essential). The lock's resolution runs with the same options,
/// so the lock pins `usr-is-merged`, not `usrmerge`. A constant path of
/// the host's mmdebstrap package, never recipe text (a unit test keeps the
/// two equal).
const MERGED_USR_ARG: &str = "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr";

/// For an image without the essential set (`--variant=extract`: packages
/// unpacked, no maintainer script run, nothing registered with dpkg):
/// writes dpkg's status from the control files of the .debs that were
/// unpacked, each `Status: install ok unpacked` (which is what they are),
/// so the image's SBOM lists them as for any other image. Runs on the
/// host, over the .debs apt checked against the archive's (or the lock's)
/// digests; a constant command, no recipe text. An extract hook: the
/// extract variant runs no customize hook (see [`Variant::late_hook`]).
const UNPACKED_STATUS_HOOK: &str = "--extract-hook=for d in \"$1\"/var/cache/apt/archives/*.deb; do dpkg-deb --field \"$d\" && printf 'Status: install ok unpacked\\n\\n' || exit 1; done > \"$1/var/lib/dpkg/status\"";

/// For the roots that run dpkg (minbase, essential): dpkg unpacks without
/// syncing each file (`force-unsafe-io`) while mmdebstrap builds the tree,
/// and the setting is gone from the finished tree (the customize hook
/// removes it): the tree is the same, only made faster. A staging tree
/// needs no durability: a build that stops is started again.
const UNSAFE_IO_ON: &str = "--setup-hook=mkdir -p \"$1/etc/dpkg/dpkg.cfg.d\" && echo force-unsafe-io > \"$1/etc/dpkg/dpkg.cfg.d/00cairn-unsafe-io\"";
const UNSAFE_IO_OFF: &str = "--customize-hook=rm -f \"$1/etc/dpkg/dpkg.cfg.d/00cairn-unsafe-io\"";

/// The mmdebstrap options after `--variant=`, the same for every Debian
/// root cairn makes (before `--format`, `--include`, SUITE, TARGET, MIRROR).
const COMMON_ARGS: &[&str] = &["--mode=auto", "--aptopt=Acquire::Retries \"3\""];

/// dpkg's path rules (the two forms below spell them): no manual pages, translations, documentation (but
/// each package's copyright) or info pages are unpacked.
#[cfg(test)]
const PATH_RULES: &[&str] = &[
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/info/*",
];

/// The path rules as `--dpkgopt=` options, for the images. mmdebstrap
/// then also pipes each essential package it extracts itself through its
/// Python tar filter, which costs about 5 s of a base's 22.
const PATH_RULES_DPKGOPTS: &[&str] = &[
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/info/*",
];

/// For the base: the same path rules in the same file mmdebstrap writes
/// for `--dpkgopt` (`99mmdebstrap`, so the finished tree has the same
/// file), written by an extract hook instead: after mmdebstrap has
/// extracted the essential packages, before dpkg installs any package.
/// When that file exists during the extraction, mmdebstrap pipes each
/// package through its Python tar filter (about 6 s of the base's 23);
/// without it the extraction takes about 2 s. The hook then removes what
/// the filter would have left out (dpkg's own rule: no file or link under
/// the manual, translation and info folders; no file under the
/// documentation folder but a copyright), so the tree dpkg installs over
/// is the filtered one and the finished tree is the same file for file
/// (update-alternatives, for one, adds links to the manual pages it finds).
const PATH_RULES_HOOK: &str = "--extract-hook=cd \"$1\" && mkdir -p etc/dpkg/dpkg.cfg.d && printf '%s\\n' 'path-exclude=/usr/share/man/*' 'path-exclude=/usr/share/locale/*' 'path-exclude=/usr/share/doc/*' 'path-include=/usr/share/doc/*/copyright' 'path-exclude=/usr/share/info/*' > etc/dpkg/dpkg.cfg.d/99mmdebstrap && for d in usr/share/man usr/share/locale usr/share/info; do if [ -d \"$d\" ]; then find \"./$d\" -mindepth 1 ! -type d -delete || exit 1; fi; done && if [ -d usr/share/doc ]; then find ./usr/share/doc -mindepth 1 -type f ! -path './usr/share/doc/*/copyright' -delete; fi";

/// Which Debian root a package set is for: the appliance's base (minbase)
/// or a built OCI image (`oci::build_image`): with the essential set
/// (`essential = true`) or only its packages and their dependencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Base,
    Image,
    ImageMinimal,
}

impl Variant {
    /// The variant of an image built with or without the essential set.
    pub fn image(essential: bool) -> Variant {
        if essential {
            Variant::Image
        } else {
            Variant::ImageMinimal
        }
    }

    /// The mmdebstrap options, in order: the variant, then the rest.
    pub fn args(self) -> Vec<&'static str> {
        let installs: &[&'static str] = &[MERGED_USR_ARG, UNSAFE_IO_ON, UNSAFE_IO_OFF];
        let (variant, before, rules, after): (_, &[&'static str], &[&'static str], _) = match self {
            Variant::Base => ("--variant=minbase", installs, &[PATH_RULES_HOOK], None),
            Variant::Image => ("--variant=essential", installs, PATH_RULES_DPKGOPTS, None),
            Variant::ImageMinimal => (
                "--variant=extract",
                &[],
                PATH_RULES_DPKGOPTS,
                Some(UNPACKED_STATUS_HOOK),
            ),
        };
        std::iter::once(variant)
            .chain(before.iter().copied())
            .chain(COMMON_ARGS.iter().copied())
            .chain(rules.iter().copied())
            .chain(after)
            .collect()
    }

    /// The last hook mmdebstrap runs for this variant, with the tree and
    /// the downloaded .debs in place: `--customize-hook` (after install),
    /// or `--extract-hook` for the extract variant, which runs no other.
    pub fn late_hook(self) -> &'static str {
        match self {
            Variant::ImageMinimal => "--extract-hook",
            Variant::Base | Variant::Image => "--customize-hook",
        }
    }

    /// What the variant installs, for messages and the image's history.
    pub fn describe(self) -> &'static str {
        match self {
            Variant::Base => "minbase",
            Variant::Image => "essential set",
            Variant::ImageMinimal => "no essential set",
        }
    }
}

/// The mmdebstrap command compose runs: `format` is `directory` for a
/// root tree (`null` while resolving), `mirror` a URL or a full
/// sources.list line, `extra` further options (hooks, --skip) placed
/// before the positional arguments. Environment: INITRD=No (the kernel's
/// hooks build no initrd: cairn writes its own), SOURCE_DATE_EPOCH,
/// LC_ALL=C.UTF-8; stdin is null. `variant`: which kind of Debian root.
#[allow(clippy::too_many_arguments)]
pub fn mmdebstrap_command(
    variant: Variant,
    suite: &str,
    target: &Path,
    mirror: &str,
    include: &[String],
    epoch: u64,
    format: &str,
    extra: &[String],
) -> Command {
    let mut cmd = crate::host::runner::command("mmdebstrap");
    cmd.args(variant.args())
        .arg(format!("--format={format}"))
        .args(extra);
    if !include.is_empty() {
        cmd.arg(format!("--include={}", include.join(",")));
    }
    cmd.arg(suite)
        .arg(target)
        .arg(mirror)
        .env("INITRD", "No")
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// A customize hook that writes the sources.list an online build has
/// (`deb MIRROR SUITE main`), so a tree built from a local repository does
/// not carry the repository's host path and equals the online one.
pub fn sources_list_hook(variant: Variant, suite: &str, mirror: &str) -> Result<String> {
    check_word("suite", suite)?;
    check_word("mirror", mirror)?;
    Ok(format!(
        "{}=printf 'deb %s %s main\\n' '{mirror}' '{suite}' > \"$1/etc/apt/sources.list\"",
        variant.late_hook()
    ))
}

/// Refuses values that could change the meaning of a command line or a
/// sources.list line.
fn check_word(what: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/:._+~-=@%".contains(&b));
    if !ok {
        bail!("{what} {s:?}: only letters, digits and / : . _ + ~ - = @ % are allowed");
    }
    Ok(())
}

fn check_package_name(p: &str) -> Result<()> {
    let ok = p.len() >= 2
        && p.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    if !ok {
        bail!("package {p:?} is not a Debian package name");
    }
    Ok(())
}

/// Control fields of a .deb, in file order (`dpkg-deb --field`). Values
/// keep their continuation lines.
pub fn deb_control(deb: &Path) -> Result<crate::host::deb822::Paragraph> {
    let mut cmd = crate::host::runner::command("dpkg-deb");
    cmd.arg("--field").arg(deb).stdin(Stdio::null());
    let out = crate::host::runner::output("debrepo: dpkg-deb --field", cmd)?;
    let text = String::from_utf8(out.stdout)
        .with_context(|| format!("{}: control fields are not UTF-8", deb.display()))?;
    Ok(crate::host::deb822::paragraphs(&text)
        .into_iter()
        .next()
        .unwrap_or_default())
}

/// What the archive index says about one package version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub filename: String,
    pub sha256: Option<Sha256>,
    pub size: Option<u64>,
    pub priority: Option<String>,
}

/// Reads an apt `Packages` index, keeping only packages named in `names`:
/// (name, version, architecture) → entry.
pub fn read_index(
    r: impl BufRead,
    names: &BTreeSet<String>,
) -> Result<BTreeMap<(String, String, String), IndexEntry>> {
    let mut out = BTreeMap::new();
    crate::host::deb822::for_each_paragraph(r, |p| {
        let Some(n) = p.get("Package").filter(|n| names.contains(*n)) else {
            return;
        };
        if let (Some(v), Some(a), Some(fname)) =
            (p.get("Version"), p.get("Architecture"), p.get("Filename"))
        {
            out.insert(
                (n.to_string(), v.to_string(), a.to_string()),
                IndexEntry {
                    filename: fname.to_string(),
                    sha256: p.get("SHA256").and_then(|h| Sha256::from_hex(h).ok()),
                    size: p.get("Size").and_then(|s| s.parse().ok()),
                    priority: p.get("Priority").map(String::from),
                },
            );
        }
    })
    .context("reading a Packages index")?;
    Ok(out)
}

/// A fresh, empty folder (removing an old one of that name).
fn fresh_dir(p: &Path) -> Result<()> {
    if std::fs::symlink_metadata(p).is_ok() {
        std::fs::remove_dir_all(p).with_context(|| format!("cannot remove {}", p.display()))?;
    }
    std::fs::create_dir_all(p).with_context(|| format!("cannot create {}", p.display()))
}

/// Resolves `packages` (the full list compose installs, e.g.
/// `recipe::packages::package_list`) against `mirror`/`suite` with mmdebstrap, as
/// compose would, and stores every downloaded .deb in `cache`. `work` is a
/// scratch folder (cleared). Returns the lock entries, sorted.
pub fn resolve_and_download(
    suite: &str,
    mirror: &str,
    packages: &[String],
    epoch: u64,
    work: &Path,
    cache: &Cache,
) -> Result<Vec<LockedPackage>> {
    resolve_and_download_for(Variant::Base, suite, mirror, packages, epoch, work, cache)
}

/// `resolve_and_download` for either kind of Debian root.
pub fn resolve_and_download_for(
    variant: Variant,
    suite: &str,
    mirror: &str,
    packages: &[String],
    epoch: u64,
    work: &Path,
    cache: &Cache,
) -> Result<Vec<LockedPackage>> {
    check_word("suite", suite)?;
    check_word("mirror", mirror)?;
    for p in packages {
        check_package_name(p)?;
    }
    let work = {
        std::fs::create_dir_all(work)
            .with_context(|| format!("cannot create {}", work.display()))?;
        work.canonicalize()?
    };
    let debs = work.join("resolve-debs");
    let lists = work.join("resolve-lists");
    fresh_dir(&debs)?;
    fresh_dir(&lists)?;
    for d in [&debs, &lists] {
        // mmdebstrap's special hooks split on white space.
        check_word("work folder", &d.to_string_lossy())?;
    }
    let extra = vec![
        // Keep the essential set's .debs (the rest stay until cleanup).
        "--skip=essential/unlink".to_string(),
        format!(
            "{}=sync-out /var/cache/apt/archives {}",
            variant.late_hook(),
            debs.display()
        ),
        format!(
            "{}=sync-out /var/lib/apt/lists {}",
            variant.late_hook(),
            lists.display()
        ),
    ];
    let cmd = mmdebstrap_command(
        variant,
        suite,
        Path::new("/dev/null"),
        mirror,
        packages,
        epoch,
        "null",
        &extra,
    );
    crate::host::runner::run_streaming("lock: mmdebstrap (resolve and download)", cmd)?;

    let mut found = Vec::new();
    for e in std::fs::read_dir(&debs)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "deb") && p.is_file() {
            found.push(p);
        }
    }
    found.sort();
    if found.is_empty() {
        bail!("lock: mmdebstrap kept no .deb files in {}", debs.display());
    }
    let mut controls = Vec::new();
    let mut names = BTreeSet::new();
    for p in &found {
        let c = deb_control(p)?;
        let get = |k: &str| {
            c.get(k)
                .map(String::from)
                .with_context(|| format!("{}: no {k} field", p.display()))
        };
        let (n, v, a) = (get("Package")?, get("Version")?, get("Architecture")?);
        names.insert(n.clone());
        controls.push((p.clone(), n, v, a, c.get("Priority").map(String::from)));
    }
    let mut index = BTreeMap::new();
    for e in std::fs::read_dir(&lists)? {
        let p = e?.path();
        if p.file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with("_Packages"))
        {
            let f = std::fs::File::open(&p)?;
            index.extend(read_index(BufReader::new(f), &names)?);
        }
    }
    let mut out = Vec::new();
    for (p, name, version, arch, deb_priority) in controls {
        let key = (name.clone(), version.clone(), arch.clone());
        let Some(entry) = index.get(&key) else {
            bail!(
                "lock: {name}={version} ({arch}) was downloaded but is not in the archive's \
                 Packages index; is the mirror consistent?"
            );
        };
        let sha256 = cache.put_file(&p)?;
        let size = std::fs::metadata(&p)?.len();
        if entry.sha256.is_some_and(|d| d != sha256) || entry.size.is_some_and(|s| s != size) {
            bail!(
                "lock: {name}={version}: downloaded file has sha256 {sha256} ({size} bytes), \
                 the archive index says {:?} ({:?} bytes)",
                entry.sha256,
                entry.size
            );
        }
        let priority = entry
            .priority
            .clone()
            .or(deb_priority)
            .unwrap_or_else(|| "optional".into());
        out.push(LockedPackage {
            name,
            version,
            architecture: arch,
            filename: entry.filename.clone(),
            priority,
            sha256,
            size,
        });
    }
    out.sort();
    let _ = std::fs::remove_dir_all(&debs);
    let _ = std::fs::remove_dir_all(&lists);
    Ok(out)
}

/// Locked packages that the cache does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} locked package(s) missing from the cache {}:\n    {}\nrun `cairn fetch RECIPE` on a connected machine (or `cairn cache import FILE` with an export that has them)",
    missing.len(),
    cache.display(),
    missing.join("\n    ")
)]
pub struct MissingPackages {
    /// `name=version (arch, sha256 HEX)`, sorted.
    pub missing: Vec<String>,
    pub cache: PathBuf,
}

/// A flat apt repository made from cached packages.
#[derive(Debug, Clone)]
pub struct LocalRepo {
    /// Absolute.
    pub dir: PathBuf,
    pub suite: String,
    pub packages: Vec<LockedPackage>,
}

impl LocalRepo {
    /// The MIRROR argument for mmdebstrap (a full sources.list line).
    pub fn mmdebstrap_mirror(&self) -> String {
        format!("deb [trusted=yes] copy://{}/ ./", self.dir.display())
    }

    /// Options to add to mmdebstrap with this mirror. None are needed for
    /// apt to use it (no translations or signatures are asked for with
    /// `trusted=yes`); `--skip=check/signed-by` only avoids a needless
    /// keyring look-up.
    pub fn mmdebstrap_args(&self) -> Vec<String> {
        vec!["--skip=check/signed-by".to_string()]
    }
}

/// The file name apt gives a .deb: epoch colon as `%3a`.
pub fn deb_file_name(p: &LockedPackage) -> String {
    format!(
        "{}_{}_{}.deb",
        p.name,
        p.version.replace(':', "%3a"),
        p.architecture
    )
}

/// Checks that every locked package is in the cache; lists all that are not.
pub fn check_cached(pkgs: &[LockedPackage], cache: &Cache) -> Result<(), MissingPackages> {
    let mut missing: Vec<String> = pkgs
        .iter()
        .filter(|p| !cache.contains(&p.sha256))
        .map(|p| format!("{} ({}, sha256 {})", p.spec(), p.architecture, p.sha256))
        .collect();
    missing.sort();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(MissingPackages {
            missing,
            cache: cache.root().to_path_buf(),
        })
    }
}

/// Builds a flat repository in `dir` (which must be absent or empty) from
/// the locked packages in `cache`: links to the verified blobs, a
/// `Packages` index (the .deb's control fields with the locked priority,
/// then Filename, Size, SHA256) and a `Release` naming `suite`.
pub fn local_repo(
    suite: &str,
    pkgs: &[LockedPackage],
    cache: &Cache,
    dir: &Path,
) -> Result<LocalRepo> {
    let repo = planned_repo(suite, pkgs, cache, dir)?;
    repo.write(cache)?;
    Ok(repo)
}

/// The repository [`local_repo`] makes, its folder created empty and the
/// packages checked to be in the cache, but not written yet
/// ([`LocalRepo::write`]): a build whose base tree and images come from
/// the stage cache never reads a .deb.
pub fn planned_repo(
    suite: &str,
    pkgs: &[LockedPackage],
    cache: &Cache,
    dir: &Path,
) -> Result<LocalRepo> {
    check_word("suite", suite)?;
    check_cached(pkgs, cache)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    check_word("local repository folder", &dir.to_string_lossy())?;
    if std::fs::read_dir(&dir)?.next().is_some() {
        bail!("local repository folder {} is not empty", dir.display());
    }
    let mut sorted = pkgs.to_vec();
    sorted.sort();
    sorted.dedup();
    Ok(LocalRepo {
        dir,
        suite: suite.to_string(),
        packages: sorted,
    })
}

impl LocalRepo {
    /// Writes the planned repository into its (empty) folder.
    pub fn write(&self, cache: &Cache) -> Result<()> {
        write_repo(&self.dir, &self.suite, &self.packages, cache)
    }
}

fn write_repo(dir: &Path, suite: &str, sorted: &[LockedPackage], cache: &Cache) -> Result<()> {
    if std::fs::read_dir(dir)?.next().is_some() {
        bail!("local repository folder {} is not empty", dir.display());
    }
    let mut index = String::new();
    for p in sorted {
        let blob = cache
            .get(&p.sha256)
            .ok_or_else(|| anyhow::anyhow!("{} vanished from the cache", p.spec()))?;
        let control = deb_control(&blob)?;
        for (k, want) in [
            ("Package", &p.name),
            ("Version", &p.version),
            ("Architecture", &p.architecture),
        ] {
            let got = control.get(k).unwrap_or("");
            if got != want {
                bail!(
                    "lock entry {} says {k} {want:?}, the .deb with sha256 {} says {got:?}; \
                     the lock was edited: run `cairn lock RECIPE`",
                    p.spec(),
                    p.sha256
                );
            }
        }
        let name = deb_file_name(p);
        check_word("package file name", &name)?;
        std::os::unix::fs::symlink(&blob, dir.join(&name))
            .with_context(|| format!("cannot link {name} in {}", dir.display()))?;
        let mut has_priority = false;
        for (k, v) in control.fields() {
            if k.eq_ignore_ascii_case("Priority") {
                index.push_str(&format!("Priority: {}\n", p.priority));
                has_priority = true;
            } else {
                index.push_str(&format!("{k}: {v}\n"));
            }
        }
        if !has_priority {
            index.push_str(&format!("Priority: {}\n", p.priority));
        }
        index.push_str(&format!(
            "Filename: ./{name}\nSize: {}\nSHA256: {}\n\n",
            p.size, p.sha256
        ));
    }
    std::fs::write(dir.join("Packages"), &index)?;
    let release = format!(
        "Origin: cairn\nLabel: cairn\nSuite: {suite}\nCodename: {suite}\nSHA256:\n {} {} Packages\n",
        Sha256::of_bytes(index.as_bytes()),
        index.len()
    );
    std::fs::write(dir.join("Release"), release)?;
    Ok(())
}

/// What `fetch_locked` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FetchReport {
    pub downloaded: usize,
    pub already: usize,
    pub bytes: u64,
}

/// Downloads (with curl) every locked package the cache lacks from
/// `MIRROR/FILENAME`, checking each against its pinned sha256. All
/// failures are listed together.
pub fn fetch_locked(
    pkgs: &[LockedPackage],
    mirror: &str,
    cache: &Cache,
    work: &Path,
) -> Result<FetchReport> {
    check_word("mirror", mirror)?;
    std::fs::create_dir_all(work).with_context(|| format!("cannot create {}", work.display()))?;
    let mut report = FetchReport::default();
    let mut failed = Vec::new();
    for p in pkgs {
        if cache.contains(&p.sha256) {
            report.already += 1;
            continue;
        }
        if p.filename.split('/').any(|c| c == ".." || c.is_empty()) {
            failed.push(format!("{}: bad filename {:?}", p.spec(), p.filename));
            continue;
        }
        let url = format!("{}/{}", mirror.trim_end_matches('/'), p.filename);
        match crate::inputs::download::fetch_to_cache(&url, &p.sha256, cache, work) {
            Ok(_) => {
                report.downloaded += 1;
                report.bytes += p.size;
            }
            Err(e) => failed.push(format!("{}: {e:#}", p.spec())),
        }
    }
    if !failed.is_empty() {
        bail!(
            "fetch: {} package(s) could not be fetched:\n    {}",
            failed.len(),
            failed.join("\n    ")
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanza_and_index_parsing() {
        let s =
            "Package: busybox-static\nVersion: 1:1.35.0-4+b3\nDescription: x\n more\n .\n end\n";
        let f = &crate::host::deb822::paragraphs(s)[0];
        assert_eq!(f.get("version"), Some("1:1.35.0-4+b3"));
        assert_eq!(f.get("Description"), Some("x"));
        let whole: Vec<(&str, &str)> = f.fields().collect();
        assert_eq!(whole[2], ("Description", "x\n more\n .\n end"));

        let idx = "Package: a\nVersion: 1\nArchitecture: amd64\nPriority: required\n\
                   Filename: pool/main/a/a/a_1_amd64.deb\nSize: 3\nSHA256: "
            .to_string()
            + &"ab".repeat(32)
            + "\nDescription: d\n long\n\nPackage: b\nVersion: 2\nArchitecture: all\n\
               Filename: pool/main/b/b/b_2_all.deb\n";
        let names: BTreeSet<String> = ["a".to_string()].into_iter().collect();
        let m = read_index(idx.as_bytes(), &names).unwrap();
        assert_eq!(m.len(), 1);
        let e = &m[&("a".into(), "1".into(), "amd64".into())];
        assert_eq!(e.filename, "pool/main/a/a/a_1_amd64.deb");
        assert_eq!(e.size, Some(3));
        assert_eq!(e.priority.as_deref(), Some("required"));
        assert!(e.sha256.is_some());
    }

    #[test]
    fn every_debian_root_uses_the_merged_usr_hook_that_the_host_has() {
        let want = format!("--hook-dir={MERGED_USR_HOOK_DIR}");
        for v in [Variant::Base, Variant::Image] {
            let args = v.args();
            assert!(args.contains(&want.as_str()), "{v:?}: {args:?}");
        }
        // An extracted image runs no hook's apt-get: it gets none (the
        // hook would leave its dummy package registered), and its status
        // is written from the .debs instead.
        let minimal = Variant::ImageMinimal.args();
        assert!(!minimal.contains(&want.as_str()), "{minimal:?}");
        assert_eq!(minimal[0], "--variant=extract");
        assert!(minimal.contains(&UNPACKED_STATUS_HOOK), "{minimal:?}");
        assert_eq!(Variant::image(true), Variant::Image);
        assert_eq!(Variant::image(false), Variant::ImageMinimal);
        // mmdebstrap runs these two scripts from the folder; without them
        // it would fail the build (and `cairn doctor` names the package).
        for s in ["setup00.sh", "essential00.sh"] {
            let p = Path::new(MERGED_USR_HOOK_DIR).join(s);
            assert!(
                p.is_file(),
                "{} is missing: apt-get install mmdebstrap",
                p.display()
            );
        }
    }

    #[test]
    fn dpkg_runs_without_syncing_and_the_setting_leaves_the_tree() {
        for v in [Variant::Base, Variant::Image] {
            let args = v.args();
            assert!(args.contains(&UNSAFE_IO_ON) && args.contains(&UNSAFE_IO_OFF));
        }
        assert!(!Variant::ImageMinimal.args().contains(&UNSAFE_IO_ON));
        // The hooks as mmdebstrap runs them: `sh -c HOOK exec TREE`.
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree with space");
        std::fs::create_dir_all(tree.join("etc/dpkg/dpkg.cfg.d")).unwrap();
        std::fs::write(tree.join("etc/dpkg/dpkg.cfg.d/99mmdebstrap"), "x\n").unwrap();
        let run = |hook: &str, prefix: &str| {
            let script = hook.strip_prefix(prefix).unwrap();
            let mut c = crate::host::runner::command("sh");
            c.args(["-c", script, "exec"]).arg(&tree);
            crate::host::runner::output("hook test", c).unwrap();
        };
        let cfg = tree.join("etc/dpkg/dpkg.cfg.d/00cairn-unsafe-io");
        run(UNSAFE_IO_ON, "--setup-hook=");
        assert_eq!(std::fs::read_to_string(&cfg).unwrap(), "force-unsafe-io\n");
        run(UNSAFE_IO_OFF, "--customize-hook=");
        assert!(!cfg.exists());
        // Control: mmdebstrap's own file stays.
        assert!(tree.join("etc/dpkg/dpkg.cfg.d/99mmdebstrap").exists());
    }

    #[test]
    fn the_base_writes_the_path_rules_mmdebstrap_would() {
        // The images pass them as options; the base writes the same file
        // from a setup hook, so mmdebstrap's tar filter is not used.
        for v in [Variant::Image, Variant::ImageMinimal] {
            let args = v.args();
            assert!(
                PATH_RULES_DPKGOPTS.iter().all(|o| args.contains(o)),
                "{args:?}"
            );
            assert!(!args.contains(&PATH_RULES_HOOK));
        }
        let base = Variant::Base.args();
        assert!(base.contains(&PATH_RULES_HOOK), "{base:?}");
        assert!(!base.iter().any(|a| a.starts_with("--dpkgopt")), "{base:?}");
        // The hook as mmdebstrap runs it writes what mmdebstrap writes for
        // the options: one rule per line, in order.
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree with space [*]");
        for p in [
            "usr/share/man/man1/ls.1.gz",
            "usr/share/locale/de/LC_MESSAGES/x.mo",
            "usr/share/info/dir",
            "usr/share/doc/bash/README",
            "usr/share/doc/bash/examples/x",
            "usr/share/doc/bash/copyright",
            "usr/share/doc/libc6/copyright",
            "usr/bin/ls",
            "usr/share/zoneinfo/UTC",
        ] {
            std::fs::create_dir_all(tree.join(p).parent().unwrap()).unwrap();
            std::fs::write(tree.join(p), "x").unwrap();
        }
        std::os::unix::fs::symlink("libc6", tree.join("usr/share/doc/libgcc-s1")).unwrap();
        std::os::unix::fs::symlink("mawk.1.gz", tree.join("usr/share/man/man1/awk.1.gz")).unwrap();
        let mut c = crate::host::runner::command("sh");
        c.args([
            "-c",
            PATH_RULES_HOOK.strip_prefix("--extract-hook=").unwrap(),
            "exec",
        ])
        .arg(&tree);
        crate::host::runner::output("hook test", c).unwrap();
        let written =
            std::fs::read_to_string(tree.join("etc/dpkg/dpkg.cfg.d/99mmdebstrap")).unwrap();
        let want: String = PATH_RULES.iter().map(|r| format!("{r}\n")).collect();
        assert_eq!(written, want);
        // What the extraction left that the rules exclude is gone; the
        // copyrights, the folders and the links in the documentation
        // folder stay (as the filter keeps them).
        for (p, gone) in [
            ("usr/share/man/man1/ls.1.gz", true),
            ("usr/share/locale/de/LC_MESSAGES/x.mo", true),
            ("usr/share/info/dir", true),
            ("usr/share/doc/bash/README", true),
            ("usr/share/doc/bash/examples/x", true),
            ("usr/share/doc/bash/copyright", false),
            ("usr/share/doc/libc6/copyright", false),
            ("usr/bin/ls", false),
            ("usr/share/zoneinfo/UTC", false),
        ] {
            assert_eq!(!tree.join(p).exists(), gone, "{p}");
        }
        assert!(tree.join("usr/share/man/man1").is_dir());
        assert!(
            std::fs::symlink_metadata(tree.join("usr/share/doc/libgcc-s1"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(std::fs::symlink_metadata(tree.join("usr/share/man/man1/awk.1.gz")).is_err());
        // Control: the options say the same rules.
        let opts: Vec<String> = PATH_RULES
            .iter()
            .map(|r| format!("--dpkgopt={r}"))
            .collect();
        assert_eq!(opts, PATH_RULES_DPKGOPTS);
    }

    #[test]
    fn file_names_and_words() {
        let p = LockedPackage {
            name: "busybox-static".into(),
            version: "1:1.35.0-4+b3".into(),
            architecture: "amd64".into(),
            filename: "pool/x.deb".into(),
            priority: "optional".into(),
            sha256: Sha256::of_bytes(b""),
            size: 0,
        };
        assert_eq!(
            deb_file_name(&p),
            "busybox-static_1%3a1.35.0-4+b3_amd64.deb"
        );
        assert!(check_word("m", "http://deb.debian.org/debian").is_ok());
        assert!(check_word("m", "http://x/ ./").is_err());
        assert!(check_word("m", "--foo").is_err());
        assert!(check_word("m", "a'b").is_err());
        assert!(check_package_name("linux-image-amd64").is_ok());
        assert!(check_package_name("a,b").is_err());
    }

    #[test]
    fn missing_packages_are_all_listed() {
        let t = tempfile::tempdir().unwrap();
        let cache = Cache::open(t.path().join("c")).unwrap();
        let mk = |n: &str| LockedPackage {
            name: n.into(),
            version: "1.0".into(),
            architecture: "amd64".into(),
            filename: format!("pool/{n}.deb"),
            priority: "optional".into(),
            sha256: Sha256::of_bytes(n.as_bytes()),
            size: 1,
        };
        let e = local_repo(
            "bookworm",
            &[mk("zz"), mk("aa")],
            &cache,
            &t.path().join("r"),
        )
        .unwrap_err();
        let m = e.downcast_ref::<MissingPackages>().unwrap();
        assert_eq!(m.missing.len(), 2);
        let s = e.to_string();
        assert!(s.contains("aa=1.0") && s.contains("zz=1.0"), "{s}");
        assert!(s.contains("cairn fetch RECIPE"), "{s}");
        assert!(s.find("aa=1.0") < s.find("zz=1.0"));
    }
}
