//! `RECIPE.lock`: the exact inputs a recipe resolved to, pinned by sha256,
//! written beside the recipe (`field-ai.toml` → `field-ai.lock`).
//!
//! The lock records what was *asked* (suite, mirror, the sorted package
//! list) and what that *gave* (every .deb with name, version, architecture,
//! pool path, size and sha256), plus pinned URLs. It does not record a
//! digest of the recipe text: editing an unrelated part of the recipe (disk
//! size, overlays) leaves the lock valid. `check_matches` compares the
//! asked part with the recipe and names any difference.
//!
//! The file is TOML, written deterministically (sorted, no timestamps), so
//! a lock under version control changes only when the inputs do.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::host::digest::Sha256;

/// The lock format version this cairn writes and reads.
pub const LOCK_VERSION: u32 = 1;

const HEADER: &str = "# Written by `cairn lock`; pins every input of the recipe by sha256.\n\
# Do not edit by hand: run `cairn lock RECIPE` (or `cairn build --update-lock`).\n\n";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub version: u32,
    /// When the inputs were resolved (or the recipe's or environment's
    /// SOURCE_DATE_EPOCH, if set at lock time): the date of builds from
    /// this lock whose recipe and environment set none.
    pub source_date_epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<LockedBase>,
    /// OCI images cairn builds from Debian packages (`[images.build]`),
    /// one `[[image]]` table each, sorted by name.
    #[serde(default, rename = "image", skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<LockedImage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<LockedUrl>,
}

/// A built image's Debian root: what was asked and what it resolved to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedImage {
    /// The recipe's `[[images]]` name.
    pub name: String,
    pub suite: String,
    pub mirror: String,
    /// The image's `packages`, sorted.
    pub packages_requested: Vec<String>,
    /// Whether Debian's essential set was resolved with them (locks made
    /// before the setting existed always did).
    #[serde(default = "essential_by_default")]
    pub essential: bool,
    /// Everything the image installs (the essential set included when
    /// `essential`).
    #[serde(default)]
    pub packages: Vec<LockedPackage>,
}

fn essential_by_default() -> bool {
    true
}

/// What the recipe asks for one built image (for `check_images`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRequest {
    pub name: String,
    pub suite: String,
    pub mirror: String,
    pub packages: Vec<String>,
    pub essential: bool,
}

/// The Debian base: what was asked and every package it resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedBase {
    pub suite: String,
    pub mirror: String,
    /// The packages the recipe asked for (with cairn's required ones and
    /// the kernel), sorted and deduplicated.
    pub packages_requested: Vec<String>,
    /// Everything installed (requested packages, dependencies, the
    /// essential set), sorted by name, architecture, version.
    #[serde(default)]
    pub packages: Vec<LockedPackage>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    pub name: String,
    /// Debian version, with its epoch (`1:1.35.0-4+b3`).
    pub version: String,
    pub architecture: String,
    /// Path relative to the mirror (`pool/main/b/busybox/…_amd64.deb`), as
    /// the archive's Packages index gives it; `cairn fetch` downloads
    /// `MIRROR/FILENAME`.
    pub filename: String,
    /// The archive's priority for it (its Packages index, which may differ
    /// from the .deb's own control field): decides what minbase installs.
    pub priority: String,
    pub sha256: Sha256,
    pub size: u64,
}

impl LockedPackage {
    /// `name=version`, as apt and error messages write it.
    pub fn spec(&self) -> String {
        format!("{}={}", self.name, self.version)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedUrl {
    pub url: String,
    pub sha256: Sha256,
}

/// How a lock differs from what the recipe asks for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockMismatch {
    #[error("the lock has no Debian base, the recipe asks for one; {FIX}")]
    NoBase,
    #[error("the lock has a Debian base, the recipe's base is a tarball; {FIX}")]
    NotDebian,
    #[error("the lock was made for suite {lock:?}, the recipe asks for {recipe:?}; {FIX}")]
    Suite { lock: String, recipe: String },
    #[error("the lock was made for mirror {lock:?}, the recipe asks for {recipe:?}; {FIX}")]
    Mirror { lock: String, recipe: String },
    #[error(
        "the lock was made for packages [{}], the recipe asks for [{}] ({}); {FIX}",
        lock.join(", "),
        recipe.join(", "),
        describe_change(lock, recipe)
    )]
    Packages {
        lock: Vec<String>,
        recipe: Vec<String>,
    },
    #[error("the recipe downloads {0}, the lock has no [[urls]] entry for it; {FIX}")]
    UrlMissing(String),
    #[error("the lock has a [[urls]] entry for {0}, the recipe does not download it; {FIX}")]
    UrlExtra(String),
    #[error("{url}: the lock pins sha256 {lock}, the recipe pins {recipe}; {FIX}")]
    UrlPin {
        url: String,
        lock: Sha256,
        recipe: Sha256,
    },
    #[error("the recipe builds image {0:?}, the lock has no [[image]] for it; {FIX}")]
    ImageMissing(String),
    #[error("the lock has an [[image]] {0:?}, the recipe builds no such image; {FIX}")]
    ImageExtra(String),
    #[error(
        "image {name:?}: the lock was made for suite {lock:?} and mirror {lock_mirror:?}, \
         the recipe asks for {recipe:?} and {recipe_mirror:?}; {FIX}"
    )]
    ImageSource {
        name: String,
        lock: String,
        lock_mirror: String,
        recipe: String,
        recipe_mirror: String,
    },
    #[error(
        "image {name:?}: the lock was made for packages [{}], the recipe asks for [{}] ({}); {FIX}",
        lock.join(", "),
        recipe.join(", "),
        describe_change(lock, recipe)
    )]
    ImagePackages {
        name: String,
        lock: Vec<String>,
        recipe: Vec<String>,
    },
    #[error(
        "image {name:?}: the lock was made {}, the recipe asks for essential = {recipe}; {FIX}",
        if *recipe { "without Debian's essential set" } else { "with Debian's essential set" }
    )]
    ImageEssential { name: String, recipe: bool },
}

const FIX: &str = "run `cairn build --update-lock` or `cairn lock RECIPE`";

fn describe_change(lock: &[String], recipe: &[String]) -> String {
    let l: BTreeSet<&String> = lock.iter().collect();
    let r: BTreeSet<&String> = recipe.iter().collect();
    let added: Vec<&str> = r.difference(&l).map(|s| s.as_str()).collect();
    let removed: Vec<&str> = l.difference(&r).map(|s| s.as_str()).collect();
    let mut parts = Vec::new();
    if !added.is_empty() {
        parts.push(format!("added: {}", added.join(", ")));
    }
    if !removed.is_empty() {
        parts.push(format!("removed: {}", removed.join(", ")));
    }
    if parts.is_empty() {
        "same names, different list".into()
    } else {
        parts.join("; ")
    }
}

/// `dir/NAME.toml` → `dir/NAME.lock` (any other name gets `.lock` added).
pub fn lock_path(recipe: &Path) -> PathBuf {
    match recipe.extension() {
        Some(e) if e == "toml" => recipe.with_extension("lock"),
        _ => {
            let mut s = recipe.as_os_str().to_owned();
            s.push(".lock");
            PathBuf::from(s)
        }
    }
}

fn sorted_dedup(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v.dedup();
    v
}

fn norm_mirror(m: &str) -> &str {
    m.trim_end_matches('/')
}

impl Lock {
    /// An empty lock (no base, no URLs).
    pub fn new(source_date_epoch: u64) -> Lock {
        Lock {
            version: LOCK_VERSION,
            source_date_epoch,
            base: None,
            images: Vec::new(),
            urls: Vec::new(),
        }
    }

    /// The locked image of this name.
    pub fn image(&self, name: &str) -> Option<&LockedImage> {
        self.images.iter().find(|i| i.name == name)
    }

    /// Every locked package with the mirror it comes from (base first,
    /// then images), for fetching and cache checks.
    pub fn package_sets(&self) -> Vec<(&str, &[LockedPackage])> {
        let mut v: Vec<(&str, &[LockedPackage])> = Vec::new();
        if let Some(b) = &self.base {
            v.push((&b.mirror, &b.packages));
        }
        for i in &self.images {
            v.push((&i.mirror, &i.packages));
        }
        v
    }

    /// Puts lists in their canonical order (what `write` does too).
    pub fn normalise(&mut self) {
        if let Some(b) = &mut self.base {
            b.packages_requested = sorted_dedup(&b.packages_requested);
            b.packages.sort();
            b.packages.dedup();
        }
        for i in &mut self.images {
            i.packages_requested = sorted_dedup(&i.packages_requested);
            i.packages.sort();
            i.packages.dedup();
        }
        self.images.sort();
        self.urls.sort();
        self.urls.dedup();
    }

    pub fn from_toml(text: &str) -> Result<Lock> {
        let mut lock: Lock = toml::from_str(text)?;
        if lock.version != LOCK_VERSION {
            bail!(
                "lock format version {} is not {LOCK_VERSION}, the one this cairn reads; \
                 run `cairn lock RECIPE` to rewrite it",
                lock.version
            );
        }
        lock.validate()?;
        lock.normalise();
        Ok(lock)
    }

    pub fn to_toml(&self) -> Result<String> {
        let mut l = self.clone();
        l.normalise();
        let body = toml::to_string(&l).context("lock: cannot serialise")?;
        Ok(format!("{HEADER}{body}"))
    }

    fn validate(&self) -> Result<()> {
        let mut names = BTreeSet::new();
        for i in &self.images {
            if !names.insert(&i.name) {
                bail!("image {:?} is locked twice", i.name);
            }
        }
        for (_, pkgs) in self.package_sets() {
            let mut seen = BTreeSet::new();
            for p in pkgs {
                let bad = |s: &str| s.is_empty() || s.chars().any(|c| c.is_whitespace());
                if bad(&p.name)
                    || bad(&p.version)
                    || bad(&p.architecture)
                    || bad(&p.filename)
                    || bad(&p.priority)
                {
                    bail!("package entry {p:?}: empty field or white space");
                }
                if p.filename.split('/').any(|c| c == ".." || c.is_empty())
                    || p.filename.starts_with('/')
                {
                    bail!(
                        "package {}: filename {:?} must be a plain path under the mirror",
                        p.spec(),
                        p.filename
                    );
                }
                if !seen.insert((&p.name, &p.architecture)) {
                    bail!("package {} ({}) is locked twice", p.name, p.architecture);
                }
            }
        }
        Ok(())
    }

    /// Reads and checks a lock file.
    pub fn read(path: &Path) -> Result<Lock> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the lock {}", path.display()))?;
        Lock::from_toml(&text).with_context(|| format!("{}: bad lock file", path.display()))
    }

    /// [`Lock::read`] for a lock the user named: any failure is bad input
    /// (exit 2), with the whole reason.
    pub fn read_input(path: &Path) -> Result<Lock, crate::InputError> {
        Lock::read(path).map_err(|e| crate::InputError(format!("{e:#}")))
    }

    /// The lock of `recipe` as `cairn fetch` needs it: present (else the
    /// fix is `cairn lock`) and made for this recipe. Bad input otherwise.
    pub fn for_recipe(recipe: &crate::recipe::Recipe) -> Result<Lock, crate::InputError> {
        let path = lock_path(&recipe.file);
        let lock = Lock::read(&path).map_err(|e| {
            crate::InputError(format!(
                "{}: {e:#}; run `cairn lock {}` first",
                path.display(),
                recipe.file.display()
            ))
        })?;
        check_recipe(&lock, recipe)
            .map_err(|m| crate::InputError(format!("{}: {m}", path.display())))?;
        Ok(lock)
    }

    /// Reads the lock if the file exists.
    pub fn read_if_exists(path: &Path) -> Result<Option<Lock>> {
        match std::fs::symlink_metadata(path) {
            Ok(_) => Lock::read(path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read the lock {}", path.display())),
        }
    }

    /// Writes the lock atomically (temp file in the same folder, fsync,
    /// rename). The bytes depend only on the lock's content.
    pub fn write(&self, path: &Path) -> Result<()> {
        self.validate()?;
        let text = self.to_toml()?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(".cairn-lock-")
            .tempfile_in(&dir)
            .with_context(|| format!("cannot write in {}", dir.display()))?;
        use std::io::Write;
        tmp.write_all(text.as_bytes())?;
        tmp.as_file().sync_all()?;
        {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644))?;
        }
        tmp.persist(path)
            .map_err(|e| e.error)
            .with_context(|| format!("cannot write the lock {}", path.display()))?;
        Ok(())
    }

    /// Every digest the lock pins (for `cache export` and `cache gc`).
    pub fn digests(&self) -> BTreeSet<Sha256> {
        let mut s: BTreeSet<Sha256> = self.urls.iter().map(|u| u.sha256).collect();
        for (_, pkgs) in self.package_sets() {
            s.extend(pkgs.iter().map(|p| p.sha256));
        }
        s
    }
}

/// Whether `lock` was made for this suite, mirror and package list (the
/// list as `recipe::packages::package_list` gives it; order and duplicates do not
/// matter). Mirrors compare without trailing slashes.
pub fn check_matches(
    lock: &Lock,
    requested_suite: &str,
    mirror: &str,
    requested_packages: &[String],
) -> Result<(), LockMismatch> {
    let Some(b) = &lock.base else {
        return Err(LockMismatch::NoBase);
    };
    if b.suite != requested_suite {
        return Err(LockMismatch::Suite {
            lock: b.suite.clone(),
            recipe: requested_suite.to_string(),
        });
    }
    if norm_mirror(&b.mirror) != norm_mirror(mirror) {
        return Err(LockMismatch::Mirror {
            lock: b.mirror.clone(),
            recipe: mirror.to_string(),
        });
    }
    let want = sorted_dedup(requested_packages);
    let have = sorted_dedup(&b.packages_requested);
    if want != have {
        return Err(LockMismatch::Packages {
            lock: have,
            recipe: want,
        });
    }
    Ok(())
}

/// What the recipe asks for each image it builds from Debian packages,
/// sorted by name.
pub fn image_requests(recipe: &crate::recipe::Recipe) -> Vec<ImageRequest> {
    let (suite, mirror) = crate::recipe::packages::image_source(recipe);
    let mut v: Vec<ImageRequest> = recipe
        .workloads
        .images
        .iter()
        .filter_map(|img| match &img.source {
            crate::recipe::workloads::ImageSource::Build {
                packages,
                essential,
                ..
            } => Some(ImageRequest {
                name: img.name.clone(),
                suite: suite.clone(),
                mirror: mirror.clone(),
                packages: sorted_dedup(packages),
                essential: *essential,
            }),
            _ => None,
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Whether the lock's `[[image]]` tables are exactly the recipe's built
/// images, each with the same suite, mirror and package list.
pub fn check_images(lock: &Lock, wanted: &[ImageRequest]) -> Result<(), LockMismatch> {
    for w in wanted {
        let Some(l) = lock.image(&w.name) else {
            return Err(LockMismatch::ImageMissing(w.name.clone()));
        };
        if l.suite != w.suite || norm_mirror(&l.mirror) != norm_mirror(&w.mirror) {
            return Err(LockMismatch::ImageSource {
                name: w.name.clone(),
                lock: l.suite.clone(),
                lock_mirror: l.mirror.clone(),
                recipe: w.suite.clone(),
                recipe_mirror: w.mirror.clone(),
            });
        }
        let have = sorted_dedup(&l.packages_requested);
        let want = sorted_dedup(&w.packages);
        if have != want {
            return Err(LockMismatch::ImagePackages {
                name: w.name.clone(),
                lock: have,
                recipe: want,
            });
        }
        if l.essential != w.essential {
            return Err(LockMismatch::ImageEssential {
                name: w.name.clone(),
                recipe: w.essential,
            });
        }
    }
    if let Some(extra) = lock
        .images
        .iter()
        .find(|l| !wanted.iter().any(|w| w.name == l.name))
    {
        return Err(LockMismatch::ImageExtra(extra.name.clone()));
    }
    Ok(())
}

/// Whether the lock fits the whole recipe: its Debian base (if it has
/// one) and every image it builds.
pub fn check_recipe(lock: &Lock, recipe: &crate::recipe::Recipe) -> Result<(), LockMismatch> {
    if let crate::recipe::Base::Debian {
        suite,
        mirror,
        packages,
    } = &recipe.base
    {
        let requested = crate::recipe::packages::package_list(recipe, packages);
        check_matches(lock, suite, mirror, &requested)?;
    } else if lock.base.is_some() {
        return Err(LockMismatch::NotDebian);
    }
    check_images(lock, &image_requests(recipe))?;
    check_urls(lock, &recipe.downloads)
}

/// Whether the lock's `[[urls]]` are exactly the recipe's URL inputs,
/// with the same pins.
pub fn check_urls(lock: &Lock, downloads: &[crate::recipe::Download]) -> Result<(), LockMismatch> {
    for d in downloads {
        match lock.urls.iter().find(|u| u.url == d.url) {
            None => return Err(LockMismatch::UrlMissing(d.url.clone())),
            Some(u) if u.sha256 != d.sha256 => {
                return Err(LockMismatch::UrlPin {
                    url: d.url.clone(),
                    lock: u.sha256,
                    recipe: d.sha256,
                })
            }
            Some(_) => {}
        }
    }
    match lock
        .urls
        .iter()
        .find(|u| !downloads.iter().any(|d| d.url == u.url))
    {
        Some(extra) => Err(LockMismatch::UrlExtra(extra.url.clone())),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, version: &str) -> LockedPackage {
        LockedPackage {
            name: name.into(),
            version: version.into(),
            architecture: "amd64".into(),
            filename: format!(
                "pool/main/{}/{name}/{name}_{}_amd64.deb",
                &name[..1],
                version.replace(':', "%3a")
            ),
            priority: "optional".into(),
            sha256: Sha256::of_bytes(name.as_bytes()),
            size: name.len() as u64,
        }
    }

    fn sample() -> Lock {
        Lock {
            version: LOCK_VERSION,
            source_date_epoch: 1_735_689_600,
            base: Some(LockedBase {
                suite: "bookworm".into(),
                mirror: "http://deb.debian.org/debian".into(),
                packages_requested: vec!["systemd".into(), "busybox-static".into()],
                packages: vec![
                    pkg("systemd", "252.36-1~deb12u1"),
                    pkg("busybox-static", "1:1.35.0-4+b3"),
                    pkg("bash", "5.2.15-2+b7"),
                ],
            }),
            images: vec![LockedImage {
                name: "inference".into(),
                suite: "bookworm".into(),
                mirror: "http://deb.debian.org/debian".into(),
                packages_requested: vec!["python3".into()],
                essential: false,
                packages: vec![pkg("python3", "3.11.2-1+b1"), pkg("bash", "5.2.15-2+b7")],
            }],
            urls: vec![
                LockedUrl {
                    url: "https://example.org/z".into(),
                    sha256: Sha256::of_bytes(b"z"),
                },
                LockedUrl {
                    url: "https://example.org/a".into(),
                    sha256: Sha256::of_bytes(b"a"),
                },
            ],
        }
    }

    #[test]
    fn write_read_round_trip_is_deterministic() {
        let t = tempfile::tempdir().unwrap();
        let p1 = t.path().join("one.lock");
        let p2 = t.path().join("two.lock");
        let l = sample();
        l.write(&p1).unwrap();
        // Same content in another order gives the same bytes.
        let mut shuffled = sample();
        shuffled.urls.reverse();
        if let Some(b) = &mut shuffled.base {
            b.packages.reverse();
            b.packages_requested.push("systemd".into());
        }
        shuffled.write(&p2).unwrap();
        let a = std::fs::read_to_string(&p1).unwrap();
        assert_eq!(a, std::fs::read_to_string(&p2).unwrap());
        let back = Lock::read(&p1).unwrap();
        let mut want = sample();
        want.normalise();
        assert_eq!(back, want);
        // Rewriting what was read changes nothing.
        back.write(&p2).unwrap();
        assert_eq!(a, std::fs::read_to_string(&p2).unwrap());
        // Sorted in the file, epochs kept.
        let bash = a.find("name = \"bash\"").unwrap();
        let sd = a.find("name = \"systemd\"").unwrap();
        assert!(bash < sd, "{a}");
        assert!(a.contains("version = \"1:1.35.0-4+b3\""), "{a}");
        assert!(
            a.contains("packages_requested = [\"busybox-static\", \"systemd\"]"),
            "{a}"
        );
        // bash is in the base and the image: one blob.
        assert_eq!(back.digests().len(), 6);
        assert!(a.contains("[[image]]\nname = \"inference\""), "{a}");
    }

    #[test]
    fn read_refuses_bad_locks() {
        let mut l = sample();
        l.version = 7;
        let text = toml::to_string(&l).unwrap();
        let e = Lock::from_toml(&text).unwrap_err();
        assert!(format!("{e:#}").contains("version 7"), "{e:#}");

        let text = toml::to_string(&sample()).unwrap().replace("suite", "suit");
        assert!(Lock::from_toml(&text).is_err());

        let mut l = sample();
        if let Some(b) = &mut l.base {
            b.packages[0].filename = "../../etc/passwd".into();
        }
        assert!(Lock::from_toml(&toml::to_string(&l).unwrap()).is_err());

        let text = toml::to_string(&sample()).unwrap().replacen(
            &Sha256::of_bytes(b"bash").hex(),
            "123",
            1,
        );
        assert!(Lock::from_toml(&text).is_err());
    }

    #[test]
    fn mismatch_messages_name_the_difference() {
        let l = sample();
        let pk = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let m = "http://deb.debian.org/debian";
        check_matches(
            &l,
            "bookworm",
            m,
            &pk(&["systemd", "busybox-static", "systemd"]),
        )
        .unwrap();
        check_matches(
            &l,
            "bookworm",
            "http://deb.debian.org/debian/",
            &pk(&["busybox-static", "systemd"]),
        )
        .unwrap();

        let e = check_matches(
            &l,
            "bookworm",
            m,
            &pk(&["busybox-static", "systemd", "curl"]),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "the lock was made for packages [busybox-static, systemd], the recipe asks for \
             [busybox-static, curl, systemd] (added: curl); run `cairn build --update-lock` \
             or `cairn lock RECIPE`"
        );
        let e = check_matches(&l, "bookworm", m, &pk(&["systemd"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("(removed: busybox-static)"), "{e}");
        let e = check_matches(&l, "trixie", m, &pk(&["busybox-static", "systemd"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("suite \"bookworm\", the recipe asks for \"trixie\""),
            "{e}"
        );
        let e = check_matches(
            &l,
            "bookworm",
            "http://mirror.example/debian",
            &pk(&["systemd"]),
        )
        .unwrap_err();
        assert!(matches!(e, LockMismatch::Mirror { .. }), "{e}");
        let e = check_matches(&Lock::new(0), "bookworm", m, &[]).unwrap_err();
        assert_eq!(e, LockMismatch::NoBase);
    }

    #[test]
    fn image_mismatches_name_the_image_and_the_difference() {
        let l = sample();
        let req = |name: &str, pkgs: &[&str]| ImageRequest {
            name: name.into(),
            suite: "bookworm".into(),
            mirror: "http://deb.debian.org/debian/".into(),
            packages: pkgs.iter().map(|s| s.to_string()).collect(),
            essential: false,
        };
        check_images(&l, &[req("inference", &["python3"])]).unwrap();
        let e = check_images(&l, &[req("inference", &["python3", "curl"])])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("image \"inference\": the lock was made for packages [python3]")
                && e.contains("(added: curl)")
                && e.contains("cairn build --update-lock"),
            "{e}"
        );
        let e = check_images(&l, &[req("inference", &["python3"]), req("web", &[])]).unwrap_err();
        assert_eq!(e, LockMismatch::ImageMissing("web".into()));
        assert!(e.to_string().contains("no [[image]] for it"), "{e}");
        let e = check_images(&l, &[]).unwrap_err();
        assert_eq!(e, LockMismatch::ImageExtra("inference".into()));
        let mut other = req("inference", &["python3"]);
        other.suite = "trixie".into();
        let e = check_images(&l, &[other]).unwrap_err();
        assert!(matches!(e, LockMismatch::ImageSource { .. }), "{e}");
        // Asking for the essential set needs a new resolution.
        let mut with_essential = req("inference", &["python3"]);
        with_essential.essential = true;
        let e = check_images(&l, &[with_essential]).unwrap_err().to_string();
        assert!(
            e.contains("made without Debian's essential set")
                && e.contains("essential = true")
                && e.contains("cairn lock"),
            "{e}"
        );
        // A lock written before the setting existed was resolved with the
        // essential set.
        let old = "name = \"x\"\nsuite = \"bookworm\"\nmirror = \"m\"\npackages_requested = []\n";
        let li: LockedImage = toml::from_str(old).unwrap();
        assert!(li.essential);
    }

    #[test]
    fn url_mismatches_name_the_url() {
        let l = sample();
        let dl = |url: &str, body: &[u8]| crate::recipe::Download {
            url: url.into(),
            sha256: Sha256::of_bytes(body),
            what: "k3s binary".into(),
            at: "r.toml:3:14".into(),
        };
        let a = dl("https://example.org/a", b"a");
        let z = dl("https://example.org/z", b"z");
        check_urls(&l, &[a.clone(), z.clone()]).unwrap();
        let e = check_urls(&l, std::slice::from_ref(&a)).unwrap_err();
        assert_eq!(e, LockMismatch::UrlExtra("https://example.org/z".into()));
        let e = check_urls(&l, &[a.clone(), z, dl("https://example.org/new", b"n")]).unwrap_err();
        assert_eq!(
            e,
            LockMismatch::UrlMissing("https://example.org/new".into())
        );
        let e = check_urls(&l, &[dl("https://example.org/a", b"changed"), a])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("https://example.org/a: the lock pins sha256 ")
                && e.contains(&format!("the recipe pins {}", Sha256::of_bytes(b"changed"))),
            "{e}"
        );
    }

    #[test]
    fn an_image_locked_twice_or_with_an_escaping_path_is_refused() {
        let mut l = sample();
        l.images.push(l.images[0].clone());
        assert!(Lock::from_toml(&toml::to_string(&l).unwrap()).is_err());
        let mut l = sample();
        l.images[0].packages[0].filename = "pool/../../x.deb".into();
        let e = Lock::from_toml(&toml::to_string(&l).unwrap()).unwrap_err();
        assert!(
            format!("{e:#}").contains("plain path under the mirror"),
            "{e:#}"
        );
    }

    #[test]
    fn lock_path_is_beside_the_recipe() {
        assert_eq!(
            lock_path(Path::new("r/field-ai.toml")),
            PathBuf::from("r/field-ai.lock")
        );
        assert_eq!(
            lock_path(Path::new("r/recipe")),
            PathBuf::from("r/recipe.lock")
        );
    }
}
