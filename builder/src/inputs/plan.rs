//! Resolve, then build: a recipe becomes a [`Plan`] (its lock checked
//! against it, every pinned input present in the cache and matching its
//! pin) before the first stage runs. The cheap local pin checks come
//! first, downloads after them; bad input is an `InputError` (exit 2).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::inputs::cache::Cache;
use crate::inputs::lock::{image_requests, lock_path, Lock, LockedBase, LockedImage, LockedUrl};
use crate::recipe::{Base, Recipe};

/// What the build's environment decides, given once by the caller (the
/// CLI reads it from the process environment; nothing below it does).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The content-addressed cache (absolute).
    pub cache_root: PathBuf,
    /// Reuse the Debian base tree and built images when their inputs are
    /// unchanged (off: `CAIRN_NO_STAGE_CACHE=1`).
    pub stage_cache: bool,
    /// `SOURCE_DATE_EPOCH` when the operator sets it.
    pub source_date_epoch: Option<u64>,
    /// Keep root trees on disk, never in memory (`CAIRN_TREES=disk`).
    pub trees_on_disk: bool,
}

impl Settings {
    /// What recipe loading needs of these settings.
    pub fn recipe_env(&self) -> crate::recipe::LoadEnv {
        crate::recipe::LoadEnv {
            cache_root: self.cache_root.clone(),
            source_date_epoch: self.source_date_epoch,
            verify_signature: None,
        }
    }

    pub fn open_cache(&self) -> Result<Cache> {
        Cache::open(&self.cache_root)
    }
}

/// A recipe with every input resolved: what the stages build from.
pub struct Plan<'r> {
    pub recipe: &'r Recipe,
    /// RECIPE.lock, checked against the recipe (None: no lock needed or
    /// an online build without one).
    pub lock: Option<Lock>,
    pub cache: Cache,
    pub stage_cache: bool,
    /// Root trees stay on disk (`Settings::trees_on_disk`).
    pub trees_on_disk: bool,
    /// `--offline`: tools that could reach a network are told not to (the
    /// cluster stage's Go proxy).
    pub offline: bool,
}

/// How to resolve.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResolveOptions {
    /// Use nothing but the cache (needs RECIPE.lock).
    pub offline: bool,
    /// Re-resolve the lock when it disagrees with the recipe.
    pub update_lock: bool,
}

/// Resolves `recipe`: pins of local inputs first, then the lock, then the
/// cache filled (or, offline, checked) for every locked package and URL.
pub fn resolve<'r>(
    recipe: &'r Recipe,
    settings: &Settings,
    opts: ResolveOptions,
) -> Result<Plan<'r>> {
    check_local_pins(recipe)?;
    let cache = settings.open_cache()?;
    let lock = resolve_lock(recipe, &cache, opts)?;
    ensure_cached(recipe, lock.as_ref(), &cache, opts)?;
    Ok(Plan {
        recipe,
        lock,
        cache,
        stage_cache: settings.stage_cache,
        trees_on_disk: settings.trees_on_disk,
        offline: opts.offline,
    })
}

impl Plan<'_> {
    /// Local repositories for every package set of the lock, under `dir`.
    pub fn local_repos(&self, dir: &Path) -> Result<Repos> {
        local_repos(self.lock.as_ref(), &self.cache, dir)
    }
}

/// Local apt repositories the base and built images install from, planned
/// (written by whoever runs mmdebstrap with one: `LocalRepo::write`).
#[derive(Debug, Clone, Default)]
pub struct Repos {
    pub base: Option<crate::inputs::debrepo::LocalRepo>,
    pub images: std::collections::BTreeMap<String, crate::inputs::debrepo::LocalRepo>,
}

/// Verifies a pinned file's digest, naming where the pin was written.
pub fn check_pin(path: &Path, want: &crate::host::digest::Sha256, at: &str) -> Result<()> {
    let got = crate::host::digest::Sha256::of_file(path)
        .with_context(|| format!("{at}: cannot read {}", path.display()))?;
    if &got != want {
        bail!(
            "{at}: sha256 of {} is {got}, but the recipe pins {want}; if the new file is trusted, update the pin",
            path.display()
        );
    }
    Ok(())
}

/// The recipe's lock, checked against the recipe. None: no lock, and
/// either online (mmdebstrap resolves against the mirror) or the recipe
/// needs none (a tarball base and no built image: its own sha256 pins
/// cover every input).
fn resolve_lock(recipe: &Recipe, cache: &Cache, opts: ResolveOptions) -> Result<Option<Lock>> {
    use crate::inputs::lock::check_recipe;
    let needs_lock =
        matches!(recipe.base, Base::Debian { .. }) || !image_requests(recipe).is_empty();
    let path = lock_path(&recipe.file);
    let lock = Lock::read_if_exists(&path)
        .map_err(|e| crate::InputError(format!("{}: {e:#}", path.display())))?;
    Ok(match lock {
        Some(l) => match check_recipe(&l, recipe) {
            Ok(()) => Some(l),
            Err(_) if opts.update_lock && !opts.offline => {
                crate::say!(
                    "cairn: {} disagrees with the recipe; updating it",
                    path.display()
                );
                Some(lock_recipe(recipe, cache)?)
            }
            Err(m) => {
                return Err(crate::InputError(format!("{}: {m}", path.display())).into());
            }
        },
        None if !needs_lock => None,
        None if opts.offline => {
            return Err(crate::InputError(format!(
            "--offline needs {}; run `cairn lock {}` and `cairn fetch {}` on a connected machine",
            path.display(),
            recipe.file.display(),
            recipe.file.display()
        ))
            .into())
        }
        None if opts.update_lock => Some(lock_recipe(recipe, cache)?),
        None => None,
    })
}

/// Puts every pinned input in the cache: the lock's packages (base and
/// built images) and the recipe's URL inputs, downloading what is missing
/// unless offline. Offline, one error lists everything missing.
fn ensure_cached(
    recipe: &Recipe,
    lock: Option<&crate::inputs::lock::Lock>,
    cache: &Cache,
    opts: ResolveOptions,
) -> Result<()> {
    if !opts.offline {
        let work = tempfile::tempdir()?;
        fetch_inputs(lock, &recipe.downloads, cache, work.path())?;
    }
    let all: Vec<crate::inputs::lock::LockedPackage> = lock
        .map(|l| l.package_sets())
        .unwrap_or_default()
        .into_iter()
        .flat_map(|(_, p)| p.iter().cloned())
        .collect();
    let mut missing = match crate::inputs::debrepo::check_cached(&all, cache) {
        Ok(()) => Vec::new(),
        Err(m) => m.missing,
    };
    missing.dedup();
    let packages = missing.len();
    missing.extend(
        recipe
            .downloads
            .iter()
            .filter(|d| !cache.contains(&d.sha256))
            .map(|d| format!("{} ({}, sha256 {}, {})", d.url, d.what, d.sha256, d.at)),
    );
    if missing.is_empty() {
        return Ok(());
    }
    Err(crate::InputError(format!(
        "offline build: {} input(s) are not in the cache {} ({packages} locked package(s), {} URL input(s)):\n    {}\nfetch them with `cairn fetch {}` on a connected machine (or `cairn cache import FILE` with an export that has them)",
        missing.len(),
        cache.root().display(),
        missing.len() - packages,
        missing.join("\n    "),
        recipe.file.display()
    ))
    .into())
}

/// Local repositories for every package set of the lock, under `dir`.
fn local_repos(lock: Option<&Lock>, cache: &Cache, dir: &Path) -> Result<Repos> {
    let mut repos = Repos::default();
    let Some(lock) = lock else {
        return Ok(repos);
    };
    if let Some(b) = &lock.base {
        repos.base = Some(crate::inputs::debrepo::planned_repo(
            &b.suite,
            &b.packages,
            cache,
            &dir.join("base"),
        )?);
    }
    for (n, img) in lock.images.iter().enumerate() {
        // Image names are checked by the recipe, but a folder name from a
        // number needs no check at all.
        let repo = crate::inputs::debrepo::planned_repo(
            &img.suite,
            &img.packages,
            cache,
            &dir.join(format!("image{n}")),
        )
        .with_context(|| format!("image {}", img.name))?;
        repos.images.insert(img.name.clone(), repo);
    }
    Ok(repos)
}

/// Checks every pinned local input before anything is fetched or written,
/// but a model that is one file: its volume's stage checks that
/// (`pipeline::volumes`: while packing it, the one read of a file of
/// many GB, or while the stage cache checks the cached volume).
fn check_local_pins(recipe: &Recipe) -> Result<()> {
    for m in &recipe.workloads.models {
        if !m.path.is_dir() {
            if let Err(e) = std::fs::metadata(&m.path) {
                return Err(crate::InputError(format!("{}: {e}", m.unreadable())).into());
            }
            continue;
        }
        let got =
            crate::host::digest::tree_or_file_digest(&m.path).with_context(|| m.unreadable())?;
        if got != m.sha256 {
            return Err(m.pin_error(&got).into());
        }
    }
    if let Base::Tarball { path, sha256, at } = &recipe.base {
        check_pin(path, sha256, at)
            .map_err(|e| anyhow::Error::new(crate::InputError(e.to_string())))?;
    }
    Ok(())
}

/// What `cairn fetch` brought in.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    /// The locked packages: downloaded, already cached, bytes.
    pub packages: crate::inputs::debrepo::FetchReport,
    /// Bytes downloaded for the recipe's URL inputs.
    pub url_bytes: u64,
}

/// `cairn fetch`: every input `lock` and the recipe's URL inputs name, in
/// `cache` (downloads go through a scratch folder removed afterwards).
pub fn fetch_locked(
    recipe: &crate::recipe::Recipe,
    lock: &Lock,
    cache: &crate::inputs::cache::Cache,
) -> Result<Fetched> {
    let work = tempfile::tempdir()?;
    let (packages, url_bytes) = fetch_inputs(Some(lock), &recipe.downloads, cache, work.path())?;
    Ok(Fetched {
        packages,
        url_bytes,
    })
}

/// Fills the cache with every locked package (base and images, from
/// their mirrors) and every URL input. Returns the packages' report and
/// the URL bytes downloaded.
pub fn fetch_inputs(
    lock: Option<&Lock>,
    downloads: &[crate::recipe::Download],
    cache: &crate::inputs::cache::Cache,
    work: &Path,
) -> Result<(crate::inputs::debrepo::FetchReport, u64)> {
    let mut total = crate::inputs::debrepo::FetchReport::default();
    for (mirror, pkgs) in lock.map(|l| l.package_sets()).unwrap_or_default() {
        let rep = crate::inputs::debrepo::fetch_locked(pkgs, mirror, cache, work)?;
        total.downloaded += rep.downloaded;
        total.bytes += rep.bytes;
        total.already += rep.already;
    }
    let url_bytes = fetch_downloads(downloads, cache, work)?;
    Ok((total, url_bytes))
}

/// Downloads every URL input the cache lacks, checking each against its
/// pin; lists every failure at once.
pub fn fetch_downloads(
    downloads: &[crate::recipe::Download],
    cache: &crate::inputs::cache::Cache,
    work: &Path,
) -> Result<u64> {
    let mut failed = Vec::new();
    let mut tampered = false;
    let mut bytes = 0;
    for d in downloads {
        if !cache.contains(&d.sha256) {
            crate::say!("cairn: downloading {} ({})", d.url, d.what);
        }
        match crate::inputs::download::fetch_to_cache(&d.url, &d.sha256, cache, work) {
            Ok(n) => bytes += n,
            Err(e) => {
                if e.downcast_ref::<crate::inputs::download::PinMismatch>()
                    .is_some()
                {
                    tampered = true;
                    failed.push(format!("{} ({}, pinned at {}): {e:#}", d.url, d.what, d.at));
                } else {
                    failed.push(format!("{} ({}, {}): {e:#}", d.url, d.what, d.at));
                }
            }
        }
    }
    if failed.is_empty() {
        return Ok(bytes);
    }
    let msg = format!(
        "{} URL input(s) could not be fetched:\n    {}",
        failed.len(),
        failed.join("\n    ")
    );
    if tampered {
        // Content that is not what the recipe pins: bad input, not a
        // network hiccup.
        return Err(crate::InputError(msg).into());
    }
    bail!(msg)
}

/// Resolves a recipe's Debian base and the Debian roots of the images it
/// builds against their mirror, stores every .deb in the cache and writes
/// `RECIPE.lock`. Returns the lock.
pub fn lock_recipe(recipe: &crate::recipe::Recipe, cache: &Cache) -> Result<Lock> {
    let images = image_requests(recipe);
    let base = match &recipe.base {
        crate::recipe::Base::Debian {
            suite,
            mirror,
            packages,
        } => Some((
            suite,
            mirror,
            crate::recipe::packages::package_list(recipe, packages),
        )),
        crate::recipe::Base::Tarball { .. } => None,
    };
    if base.is_none() && images.is_empty() && recipe.downloads.is_empty() {
        return Err(crate::InputError(format!(
            "{}: nothing to lock: the base is a pinned tarball, no image is built from \
             Debian packages and no input is a URL (the recipe's sha256 pins cover it all)",
            recipe.file.display()
        ))
        .into());
    }
    let work = tempfile::tempdir()?;
    let mut lock = Lock::new(crate::recipe::epoch::for_lock(recipe));
    // URL inputs first: a wrong pin fails in seconds, not after mmdebstrap.
    fetch_downloads(&recipe.downloads, cache, work.path())?;
    lock.urls = recipe
        .downloads
        .iter()
        .map(|d| LockedUrl {
            url: d.url.clone(),
            sha256: d.sha256,
        })
        .collect();
    if let Some((suite, mirror, requested)) = base {
        crate::say!(
            "cairn: resolving {} requested packages against {mirror} {suite}",
            requested.len()
        );
        let pkgs = crate::inputs::debrepo::resolve_and_download(
            suite,
            mirror,
            &requested,
            recipe.source_date_epoch,
            work.path(),
            cache,
        )?;
        lock.base = Some(LockedBase {
            suite: suite.clone(),
            mirror: mirror.clone(),
            packages_requested: requested,
            packages: pkgs,
        });
    }
    for img in images {
        let variant = crate::inputs::debrepo::Variant::image(img.essential);
        crate::say!(
            "cairn: resolving image {} ({} + {} packages) against {} {}",
            img.name,
            variant.describe(),
            img.packages.len(),
            img.mirror,
            img.suite
        );
        let pkgs = crate::inputs::debrepo::resolve_and_download_for(
            variant,
            &img.suite,
            &img.mirror,
            &img.packages,
            recipe.source_date_epoch,
            work.path(),
            cache,
        )
        .with_context(|| format!("lock: image {}", img.name))?;
        lock.images.push(LockedImage {
            name: img.name,
            suite: img.suite,
            mirror: img.mirror,
            packages_requested: img.packages,
            essential: img.essential,
            packages: pkgs,
        });
    }
    lock.normalise();
    let path = lock_path(&recipe.file);
    lock.write(&path)?;
    let n: usize = lock.package_sets().iter().map(|(_, p)| p.len()).sum();
    crate::say!(
        "cairn: wrote {} ({} packages{}, {} URL input(s), cached in {})",
        path.display(),
        n,
        if lock.images.is_empty() {
            String::new()
        } else {
            format!(" for the base and {} image(s)", lock.images.len())
        },
        lock.urls.len(),
        cache.root().display()
    );
    Ok(lock)
}
