//! Recipes: the TOML file a platform team writes, parsed into typed structs.
//!
//! Invariant: a `Recipe` that leaves `load` has passed validation: every path
//! in it is resolved, exists and stays inside the recipe root; every problem
//! found is reported at once, each with `file:line:col`.

use std::fmt;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::host::digest::Sha256;

pub mod network;
pub mod packages;
pub mod url;
pub mod workloads;

/// Where the recipe's own inputs may live: its folder, or a wider root the
/// operator names with `--root`. A recipe can never widen it by itself.
#[derive(Debug, Clone)]
pub struct RecipeSource {
    pub path: PathBuf,
    pub text: String,
    pub root: PathBuf,
    pub env: LoadEnv,
}

/// What a recipe's meaning depends on besides its text, given by the
/// caller (the CLI reads it from the environment; nothing in the library
/// does): where URL inputs land, and an override of the build date.
#[derive(Debug, Clone, Default)]
pub struct LoadEnv {
    /// The content-addressed cache's root (absolute): a URL input's path
    /// is the cache blob of its pin.
    pub cache_root: PathBuf,
    /// `SOURCE_DATE_EPOCH`, when the operator sets it.
    pub source_date_epoch: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeFile {
    pub image: ImageSection,
    pub base: BaseSection,
    #[serde(default)]
    pub kernel: KernelSection,
    #[serde(default)]
    pub overlays: Vec<Spanned<String>>,
    #[serde(default)]
    pub boot: BootSection,
    #[serde(default)]
    pub disk: DiskSection,
    #[serde(default)]
    pub debug: DebugSection,
    #[serde(default)]
    pub state: StateSection,
    #[serde(default)]
    pub network: NetworkSection,
    #[serde(default)]
    pub cluster: ClusterSection,
    #[serde(default)]
    pub images: Vec<ImageEntry>,
    #[serde(default)]
    pub models: Vec<ModelEntry>,
    #[serde(default)]
    pub services: Vec<ServiceEntry>,
    #[serde(default)]
    pub policy: PolicySection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// "none" (default), "containerd" or "k3s".
    pub runtime: Option<Spanned<String>>,
    /// k3s only: the k3s binary and its air-gap images bundle, pinned.
    pub k3s_binary: Option<Spanned<String>>,
    pub k3s_binary_sha256: Option<Spanned<String>>,
    pub k3s_images: Option<Spanned<String>>,
    pub k3s_images_sha256: Option<Spanned<String>>,
    /// k3s components to disable on top of traefik, servicelb, metrics-server.
    #[serde(default)]
    pub disable: Vec<String>,
}

/// An OCI image pinned by manifest digest: from an archive on disk, or
/// built by cairn from Debian packages and files.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEntry {
    pub name: Spanned<String>,
    /// OCI layout tarball or `docker save` archive.
    pub archive: Option<Spanned<String>>,
    /// The image manifest's digest ("sha256:..."): required for archives;
    /// for built images, checked when given.
    pub digest: Option<Spanned<String>>,
    /// The archive file's sha256: required when `archive` is a URL (it
    /// pins the download; `digest` still pins the image).
    pub archive_sha256: Option<Spanned<String>>,
    pub build: Option<ImageBuild>,
    /// Allow set-uid/set-gid files in the layers.
    #[serde(default)]
    pub allow_setuid: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageBuild {
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default)]
    pub files: Vec<ImageFile>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    #[serde(default)]
    pub ports: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageFile {
    pub src: Spanned<String>,
    pub dest: Spanned<String>,
    /// Octal permission bits as a string, e.g. "0644".
    #[serde(default = "default_file_mode")]
    pub mode: Spanned<String>,
}

fn default_file_mode() -> Spanned<String> {
    Spanned::new(0..0, "0644".into())
}

/// Model data: a file or folder pinned by sha256 (a folder's digest is
/// `cairn digest PATH`), placed read-only in the verity-protected root.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub name: Spanned<String>,
    pub path: Spanned<String>,
    pub sha256: Spanned<String>,
}

/// A supervised container (containerd runtime).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceEntry {
    pub name: Spanned<String>,
    pub image: Spanned<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    /// Share the host's network (the firewall still applies). Default: the
    /// container has only loopback.
    #[serde(default)]
    pub host_network: bool,
    /// Capabilities kept (e.g. "CAP_NET_BIND_SERVICE"); all others dropped.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Memory limit, e.g. "512M".
    pub memory: Option<Spanned<String>>,
    /// CPU limit in cores, e.g. 1.5.
    pub cpus: Option<f64>,
    /// Models mounted read-only at /models/NAME.
    #[serde(default)]
    pub models: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// A folder of Kubernetes manifests (k3s auto-deploys them).
    pub bundle: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSection {
    /// "disk" (default for raw/qcow2) or "ram". ISO media always use RAM.
    pub mode: Option<Spanned<String>>,
    /// Upper bound of the RAM state (tmpfs size): "512M" or "50%".
    pub ram_size: Option<Spanned<String>>,
    /// Disk state only: at boot, the state partition takes the free space
    /// after it (a raw image written to a larger stick).
    pub grow: Option<Spanned<bool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    /// "CIDR:PORT" or "CIDR:PORT/udp": the only destinations the appliance
    /// may reach. Default: none.
    #[serde(default)]
    pub egress: Vec<Spanned<String>>,
    /// "PORT/tcp" or "PORT/udp": the only ports reachable from outside.
    #[serde(default)]
    pub ingress: Vec<Spanned<String>>,
    /// Static IPv4 address with prefix for the wired interfaces, e.g.
    /// "10.0.2.15/24". Without it no interface is configured.
    pub address: Option<Spanned<String>>,
    pub gateway: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSection {
    pub name: Spanned<String>,
    pub version: Spanned<String>,
    /// Seconds since 1970 stamped on every file; overridable by the
    /// SOURCE_DATE_EPOCH environment variable of the build.
    #[serde(default = "default_epoch")]
    pub source_date_epoch: u64,
}

fn default_epoch() -> u64 {
    // 2025-01-01T00:00:00Z: fixed so an unconfigured build is reproducible.
    1_735_689_600
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseSection {
    pub debian: Option<DebianBase>,
    pub tarball: Option<TarballBase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebianBase {
    #[serde(default = "default_suite")]
    pub suite: String,
    #[serde(default = "default_mirror")]
    pub mirror: String,
    #[serde(default)]
    pub packages: Vec<String>,
}

fn default_suite() -> String {
    "bookworm".into()
}
fn default_mirror() -> String {
    "http://deb.debian.org/debian".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TarballBase {
    pub path: Spanned<String>,
    pub sha256: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelSection {
    /// The Debian package that provides /boot/vmlinuz-*.
    #[serde(default = "default_kernel_package")]
    pub package: String,
    /// Modules kept on top of the default appliance set (names, `-` or `_`).
    #[serde(default)]
    pub modules: Vec<Spanned<String>>,
}

impl Default for KernelSection {
    fn default() -> Self {
        KernelSection {
            package: default_kernel_package(),
            modules: Vec::new(),
        }
    }
}

fn default_kernel_package() -> String {
    "linux-image-amd64".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSection {
    /// Extra kernel command-line words, appended after cairn's own.
    #[serde(default)]
    pub cmdline: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSection {
    /// Total size of the raw disk, e.g. "2G" or "1536M".
    #[serde(default = "default_disk_size")]
    pub size: Spanned<String>,
    /// Size of the state partition, e.g. "256M".
    #[serde(default = "default_state_size")]
    pub state_size: Spanned<String>,
}

impl Default for DiskSection {
    fn default() -> Self {
        DiskSection {
            size: default_disk_size(),
            state_size: default_state_size(),
        }
    }
}

fn default_disk_size() -> Spanned<String> {
    Spanned::new(0..0, "2G".into())
}
fn default_state_size() -> Spanned<String> {
    Spanned::new(0..0, "256M".into())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebugSection {
    /// A root shell on the second serial port (ttyS1). For tests only; the
    /// manifest records it so reviewers see it.
    #[serde(default)]
    pub console: bool,
    /// Test control only: the disk state partition without encryption, so
    /// a test can show a marker *would* be found on disk. Recorded in the
    /// manifest; never ship it.
    #[serde(default)]
    pub unencrypted_state: bool,
}

/// One problem in a recipe, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipeProblem {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for RecipeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// Every problem found in a recipe; shown one per line.
#[derive(Debug, thiserror::Error)]
pub struct RecipeError {
    pub problems: Vec<RecipeProblem>,
}

impl fmt::Display for RecipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.problems.iter().map(|p| p.to_string()).collect();
        write!(f, "{}", lines.join("\n"))
    }
}

/// Where the base root tree comes from, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    Debian {
        suite: String,
        mirror: String,
        packages: Vec<String>,
    },
    Tarball {
        path: PathBuf,
        sha256: Sha256,
        /// Where the digest was written, for mismatch errors.
        at: String,
    },
}

/// An input a recipe names by URL (`https://` or `http://`), pinned by the
/// recipe's sha256. Its path in the recipe is the cache blob it lands in:
/// `cairn fetch` or an online build downloads it there first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    pub url: String,
    pub sha256: Sha256,
    /// What it is, for messages ("k3s binary").
    pub what: String,
    /// Where the URL is written (`file:line:col`).
    pub at: String,
}

/// A validated recipe: paths absolute, sizes in bytes.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub file: PathBuf,
    pub recipe_sha256: Sha256,
    pub name: String,
    pub version: String,
    pub source_date_epoch: u64,
    pub base: Base,
    pub kernel_package: String,
    pub extra_modules: Vec<String>,
    pub overlays: Vec<PathBuf>,
    pub cmdline_extra: Vec<String>,
    pub disk_size: u64,
    pub state_size: u64,
    pub debug_console: bool,
    pub debug_unencrypted_state: bool,
    pub state_mode: StateMode,
    /// `[state] grow`: the initramfs grows the state partition to the end
    /// of the disk.
    pub state_grow: bool,
    pub ram_size: String,
    pub network: crate::recipe::network::NetworkPolicy,
    pub workloads: crate::recipe::workloads::Workloads,
    /// URL inputs (their paths above point into the cache), sorted by URL.
    pub downloads: Vec<Download>,
}

/// Where the writable state lives at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateMode {
    /// tmpfs, size-limited.
    Ram,
    /// The state partition under plain dm-crypt with a key drawn at every
    /// boot and never stored; a fresh filesystem every boot.
    Disk,
}

impl StateMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            StateMode::Ram => "ram",
            StateMode::Disk => "disk",
        }
    }
}

impl Recipe {
    /// `NAME-VERSION`, the stem of every output file.
    pub fn stem(&self) -> String {
        format!("{}-{}", self.name, self.version)
    }
}

/// Reads, parses and validates a recipe. `root` widens the folder that
/// recipe paths may point into (default: the recipe's own folder).
pub fn load(path: &Path, root: Option<&Path>, env: &LoadEnv) -> Result<Recipe, RecipeError> {
    let one = |message: String| RecipeError {
        problems: vec![RecipeProblem {
            file: path.to_path_buf(),
            line: 1,
            col: 1,
            message,
        }],
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| one(format!("cannot read recipe: {e}; check the path")))?;
    let abs =
        std::fs::canonicalize(path).map_err(|e| one(format!("cannot resolve recipe path: {e}")))?;
    let folder = abs.parent().unwrap_or(Path::new("/")).to_path_buf();
    let root = match root {
        Some(r) => {
            let r = std::fs::canonicalize(r)
                .map_err(|e| one(format!("cannot resolve --root {}: {e}", r.display())))?;
            if !folder.starts_with(&r) {
                return Err(one(format!(
                    "--root {} does not contain the recipe; pass a folder above it",
                    r.display()
                )));
            }
            r
        }
        None => folder,
    };
    let src = RecipeSource {
        path: path.to_path_buf(),
        text,
        root,
        env: env.clone(),
    };
    parse(&src)
}

/// Parses and validates recipe text; `src.path` is used for messages and
/// (its folder) for resolving relative paths.
pub fn parse(src: &RecipeSource) -> Result<Recipe, RecipeError> {
    let file: RecipeFile = toml::from_str(&src.text).map_err(|e| {
        let (line, col) = e
            .span()
            .map(|s| line_col(&src.text, s.start))
            .unwrap_or((1, 1));
        let message = e.message().trim().replace('\n', " ");
        RecipeError {
            problems: vec![RecipeProblem {
                file: src.path.clone(),
                line,
                col,
                message: explain_parse_error(&message),
            }],
        }
    })?;
    Validator::new(src).run(file)
}

fn explain_parse_error(message: &str) -> String {
    if message.starts_with("unknown field") {
        format!("{message}; remove it or fix its spelling (see docs/recipe.md)")
    } else if message.starts_with("invalid type") {
        format!("{message}; see docs/recipe.md for the field's type")
    } else if message.starts_with("missing field") {
        format!("{message}; add it (see docs/recipe.md)")
    } else {
        message.to_string()
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

struct Validator<'a> {
    src: &'a RecipeSource,
    folder: PathBuf,
    problems: Vec<RecipeProblem>,
    downloads: Vec<Download>,
}

impl<'a> Validator<'a> {
    fn new(src: &'a RecipeSource) -> Self {
        let folder = std::fs::canonicalize(&src.path)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| src.root.clone());
        Validator {
            src,
            folder,
            problems: Vec::new(),
            downloads: Vec::new(),
        }
    }

    fn problem(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, col) = line_col(&self.src.text, span.start);
        self.problems.push(RecipeProblem {
            file: self.src.path.clone(),
            line,
            col,
            message: message.into(),
        });
    }

    fn section_span(&self, header: &str) -> Range<usize> {
        let at = self.src.text.find(header).unwrap_or(0);
        at..at
    }

    /// Resolves a recipe path: relative to the recipe, must exist, must stay
    /// inside the recipe root even after following symlinks.
    fn path(&mut self, p: &Spanned<String>, what: &str) -> Option<PathBuf> {
        let raw = p.get_ref();
        let span = p.span();
        if raw.is_empty() {
            self.problem(span, format!("{what} path is empty"));
            return None;
        }
        let rel = Path::new(raw);
        if rel.is_absolute() {
            self.problem(
                span,
                format!("{what} path {raw:?} is absolute; write it relative to the recipe file"),
            );
            return None;
        }
        let joined = self.folder.join(rel);
        let lexical = normalize_lexically(&joined);
        if !lexical.starts_with(&self.src.root) {
            self.problem(
                span,
                format!(
                    "{what} path {raw:?} leaves the recipe root {}; keep inputs inside it or pass a wider --root",
                    self.src.root.display()
                ),
            );
            return None;
        }
        match std::fs::canonicalize(&joined) {
            Ok(real) if real.starts_with(&self.src.root) => Some(real),
            Ok(real) => {
                self.problem(
                    span,
                    format!(
                        "{what} path {raw:?} resolves through a symlink to {}, outside the recipe root {}",
                        real.display(),
                        self.src.root.display()
                    ),
                );
                None
            }
            Err(_) => {
                self.problem(
                    span,
                    format!(
                        "{what} {raw:?} not found (looked for {}); create it or fix the path",
                        lexical.display()
                    ),
                );
                None
            }
        }
    }

    /// A pinned file input: a path (as `path`) or an http(s) URL, which
    /// needs its sha256 `pin` and resolves to the cache blob of that pin.
    fn file_input(
        &mut self,
        p: &Spanned<String>,
        pin: Option<Sha256>,
        what: &str,
    ) -> Option<PathBuf> {
        let raw = p.get_ref();
        if !crate::recipe::url::is_url(raw) {
            return self.path(p, what);
        }
        if let Err(e) = crate::recipe::url::check_url(raw) {
            self.problem(p.span(), format!("{what}: {e}"));
            return None;
        }
        let Some(sha256) = pin else {
            // A pin that is present but malformed is reported on its own.
            return None;
        };
        let cache = &self.src.env.cache_root;
        if !cache.is_absolute() {
            self.problem(
                p.span(),
                format!("{what}: a URL input lands in cairn's cache, and the cache path {} is not absolute", cache.display()),
            );
            return None;
        }
        let (line, col) = line_col(&self.src.text, p.span().start);
        if !self
            .downloads
            .iter()
            .any(|d| d.url == *raw && d.sha256 == sha256)
        {
            if let Some(other) = self.downloads.iter().find(|d| d.url == *raw) {
                let msg = format!(
                    "{what}: {raw} is also named at {} with another sha256; one URL has one content",
                    other.at
                );
                self.problem(p.span(), msg);
                return None;
            }
            self.downloads.push(Download {
                url: raw.clone(),
                sha256,
                what: what.to_string(),
                at: format!("{}:{line}:{col}", self.src.path.display()),
            });
        }
        Some(crate::host::digest::blob_path(cache, &sha256))
    }

    fn size(&mut self, s: &Spanned<String>, what: &str) -> u64 {
        match parse_size(s.get_ref()) {
            Some(n) => n,
            None => {
                self.problem(
                    s.span(),
                    format!(
                        "{what} {:?} is not a size; write a number with a K, M or G suffix, e.g. \"2G\"",
                        s.get_ref()
                    ),
                );
                0
            }
        }
    }

    fn digest(&mut self, s: &Spanned<String>, what: &str) -> Option<Sha256> {
        match Sha256::from_hex(s.get_ref()) {
            Ok(d) => Some(d),
            Err(_) => {
                self.problem(
                    s.span(),
                    format!("{what} must be a sha256 digest (64 hex digits, \"sha256:\" prefix optional)"),
                );
                None
            }
        }
    }

    fn workloads(&mut self, f: &RecipeFile) -> crate::recipe::workloads::Workloads {
        use crate::recipe::workloads::{
            ImageSource, Model, Runtime, Service, WorkloadImage, Workloads,
        };
        let runtime = match f
            .cluster
            .runtime
            .as_ref()
            .map(|r| (r.get_ref().as_str(), r.span()))
        {
            None | Some(("none", _)) => Runtime::None,
            Some(("containerd", _)) => Runtime::Containerd,
            Some(("k3s", _)) => Runtime::K3s,
            Some((other, span)) => {
                self.problem(
                    span,
                    format!(
                        "cluster runtime {other:?} is not one of \"none\", \"containerd\", \"k3s\""
                    ),
                );
                Runtime::None
            }
        };
        let mut w = Workloads {
            runtime,
            ..Default::default()
        };
        if runtime == Runtime::K3s {
            let c = &f.cluster;
            let need = |v: &Option<Spanned<String>>| v.is_none();
            if need(&c.k3s_binary)
                || need(&c.k3s_binary_sha256)
                || need(&c.k3s_images)
                || need(&c.k3s_images_sha256)
            {
                let span = c.runtime.as_ref().map(|r| r.span()).unwrap_or(0..0);
                self.problem(span, format!("runtime \"k3s\" needs k3s_binary, k3s_binary_sha256, k3s_images and k3s_images_sha256 in [cluster]; {}", crate::recipe::workloads::K3S_WHERE_FROM));
            } else if let (Some(b), Some(bs), Some(i), Some(is)) = (
                &c.k3s_binary,
                &c.k3s_binary_sha256,
                &c.k3s_images,
                &c.k3s_images_sha256,
            ) {
                let bsha = self.digest(bs, "k3s_binary_sha256");
                let bin = self.file_input(b, bsha, "k3s binary");
                let isha = self.digest(is, "k3s_images_sha256");
                let img = self.file_input(i, isha, "k3s air-gap images");
                if let (Some(binary), Some(binary_sha256), Some(images), Some(images_sha256)) =
                    (bin, bsha, img, isha)
                {
                    w.k3s = Some(crate::recipe::workloads::K3sArtifacts {
                        binary,
                        binary_sha256,
                        images,
                        images_sha256,
                        disable: c.disable.clone(),
                        node_name: f.image.name.get_ref().clone(),
                    });
                }
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for i in &f.images {
            let name = i.name.get_ref().clone();
            if !is_safe_name(&name) {
                self.problem(
                    i.name.span(),
                    format!(
                        "image name {name:?} must be 1-64 of [a-z0-9-], starting with a letter"
                    ),
                );
                continue;
            }
            if !names.insert(name.clone()) {
                self.problem(i.name.span(), format!("image {name:?} is listed twice"));
            }
            let pin = i
                .digest
                .as_ref()
                .and_then(|d| self.digest(d, "image digest"));
            let source = match (&i.archive, &i.build) {
                (Some(a), None) => {
                    if pin.is_none() && i.digest.is_none() {
                        self.problem(a.span(), format!("image {name:?}: an archive must be pinned: add digest = \"sha256:...\" (the image manifest's digest)"));
                    }
                    let url = crate::recipe::url::is_url(a.get_ref());
                    let file_pin = match &i.archive_sha256 {
                        Some(s) if url => self.digest(s, "archive_sha256"),
                        Some(s) => {
                            self.problem(s.span(), format!("image {name:?}: archive_sha256 pins a downloaded archive; a local archive is pinned by its digest alone: remove archive_sha256"));
                            None
                        }
                        None if url => {
                            self.problem(a.span(), format!("image {name:?}: an archive URL needs archive_sha256 = \"...\" (the file's sha256, e.g. from `cairn digest` on a trusted copy)"));
                            None
                        }
                        None => None,
                    };
                    self.file_input(a, file_pin, "image archive")
                        .map(ImageSource::Archive)
                }
                (None, Some(b)) => {
                    let mut files = Vec::new();
                    for file in &b.files {
                        let mode =
                            u32::from_str_radix(file.mode.get_ref().trim_start_matches("0o"), 8);
                        let dest = file.dest.get_ref();
                        if !dest.starts_with('/') || dest.split('/').any(|c| c == "..") {
                            self.problem(file.dest.span(), format!("image file dest {dest:?} must be an absolute path without `..`"));
                            continue;
                        }
                        match mode {
                            Ok(m) if m <= 0o777 => {}
                            _ => {
                                self.problem(
                                    file.mode.span(),
                                    format!(
                                        "mode {:?} must be octal permission bits like \"0644\"",
                                        file.mode.get_ref()
                                    ),
                                );
                                continue;
                            }
                        }
                        if let Some(src) = self.path(&file.src, "image file") {
                            if src.is_file() {
                                files.push((src, dest.clone(), mode.unwrap_or(0o644)));
                            } else {
                                self.problem(file.src.span(), "image file src must be a file");
                            }
                        }
                    }
                    for p in &b.packages {
                        if !is_package_name(p) {
                            let span = self.section_span("packages");
                            self.problem(span, format!("{p:?} is not a Debian package name"));
                        }
                    }
                    Some(ImageSource::Build {
                        packages: b.packages.clone(),
                        files,
                        entrypoint: b.entrypoint.clone(),
                        cmd: b.cmd.clone(),
                        env: b.env.clone(),
                        user: b.user.clone(),
                        workdir: b.workdir.clone(),
                        ports: b.ports.clone(),
                    })
                }
                _ => {
                    self.problem(
                        i.name.span(),
                        format!("image {name:?} needs exactly one of `archive` or [images.build]"),
                    );
                    None
                }
            };
            if let Some(source) = source {
                w.images.push(WorkloadImage {
                    name,
                    source,
                    pin,
                    allow_setuid: i.allow_setuid,
                });
            }
        }
        for m in &f.models {
            let name = m.name.get_ref().clone();
            if !is_safe_name(&name) {
                self.problem(
                    m.name.span(),
                    format!(
                        "model name {name:?} must be 1-64 of [a-z0-9-], starting with a letter"
                    ),
                );
                continue;
            }
            let path = self.path(&m.path, "model");
            let sha = self.digest(&m.sha256, "model sha256");
            if let (Some(path), Some(sha256)) = (path, sha) {
                let (line, col) = line_col(&self.src.text, m.sha256.span().start);
                w.models.push(Model {
                    name,
                    path,
                    sha256,
                    at: format!("{}:{line}:{col}", self.src.path.display()),
                });
            }
        }
        for s in &f.services {
            let name = s.name.get_ref().clone();
            if !is_safe_name(&name) {
                self.problem(
                    s.name.span(),
                    format!(
                        "service name {name:?} must be 1-64 of [a-z0-9-], starting with a letter"
                    ),
                );
                continue;
            }
            if !names.contains(s.image.get_ref()) {
                self.problem(
                    s.image.span(),
                    format!(
                        "service {name:?} runs image {:?}, which no [[images]] entry names",
                        s.image.get_ref()
                    ),
                );
            }
            for m in &s.models {
                if !f.models.iter().any(|x| x.name.get_ref() == m.get_ref()) {
                    self.problem(
                        m.span(),
                        format!(
                            "service {name:?} mounts model {:?}, which no [[models]] entry names",
                            m.get_ref()
                        ),
                    );
                }
            }
            for c in &s.capabilities {
                if !c.starts_with("CAP_")
                    || !c[4..]
                        .chars()
                        .all(|ch| ch.is_ascii_uppercase() || ch == '_')
                {
                    let span = s.name.span();
                    self.problem(
                        span,
                        format!("capability {c:?} must look like \"CAP_NET_BIND_SERVICE\""),
                    );
                }
            }
            let memory = s
                .memory
                .as_ref()
                .and_then(|m| match parse_size(m.get_ref()) {
                    Some(b) => Some(b),
                    None => {
                        self.problem(
                            m.span(),
                            format!("memory {:?} is not a size like \"512M\"", m.get_ref()),
                        );
                        None
                    }
                });
            if runtime != Runtime::Containerd {
                self.problem(s.name.span(), "[[services]] need [cluster] runtime = \"containerd\" (k3s runs workloads from the policy bundle)");
            }
            w.services.push(Service {
                name,
                image: s.image.get_ref().clone(),
                args: s.args.clone(),
                env: s.env.clone(),
                host_network: s.host_network,
                capabilities: s.capabilities.clone(),
                memory,
                cpus: s.cpus,
                models: s.models.iter().map(|m| m.get_ref().clone()).collect(),
            });
        }
        if let Some(b) = &f.policy.bundle {
            if let Some(p) = self.path(b, "policy bundle") {
                if p.is_dir() {
                    w.policy = Some(p);
                } else {
                    self.problem(b.span(), "policy bundle must be a folder of manifests");
                }
            }
        }
        w
    }

    fn run(mut self, f: RecipeFile) -> Result<Recipe, RecipeError> {
        let name = f.image.name.get_ref().clone();
        if !is_safe_name(&name) {
            self.problem(
                f.image.name.span(),
                format!("image name {name:?} must be 1-64 of [a-z0-9-], starting with a letter"),
            );
        }
        let version = f.image.version.get_ref().clone();
        if version.is_empty()
            || version.len() > 64
            || !version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".+~_".contains(c))
        {
            self.problem(
                f.image.version.span(),
                format!("image version {version:?} must be 1-64 of [A-Za-z0-9.+~_]"),
            );
        }

        let workloads = self.workloads(&f);
        let base = match (f.base.debian, f.base.tarball) {
            (Some(d), None) => {
                for p in &d.packages {
                    if !is_package_name(p) {
                        let span = self.section_span("packages");
                        self.problem(span, format!("{p:?} is not a Debian package name"));
                    }
                }
                Some(Base::Debian {
                    suite: d.suite,
                    mirror: d.mirror,
                    packages: d.packages,
                })
            }
            (None, Some(t)) => {
                let (line, col) = line_col(&self.src.text, t.sha256.span().start);
                let sha = match Sha256::from_hex(t.sha256.get_ref()) {
                    Ok(s) => Some(s),
                    Err(_) => {
                        self.problem(
                            t.sha256.span(),
                            "base tarball sha256 must be 64 hex digits (run `sha256sum` on the file)",
                        );
                        None
                    }
                };
                let path = self.file_input(&t.path, sha, "base tarball");
                match (path, sha) {
                    (Some(path), Some(sha256)) => Some(Base::Tarball {
                        path,
                        sha256,
                        at: format!("{}:{line}:{col}", self.src.path.display()),
                    }),
                    _ => None,
                }
            }
            (Some(_), Some(_)) => {
                let span = self.section_span("[base");
                self.problem(
                    span,
                    "[base] has both `debian` and `tarball`; choose one source for the root tree",
                );
                None
            }
            (None, None) => {
                let span = self.section_span("[base");
                self.problem(span, "[base] needs either [base.debian] or [base.tarball]");
                None
            }
        };

        let mut extra_modules = Vec::new();
        for m in &f.kernel.modules {
            let n = m.get_ref();
            if n.is_empty()
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                self.problem(m.span(), format!("{n:?} is not a kernel module name"));
            } else {
                extra_modules.push(n.replace('-', "_"));
            }
        }

        let mut overlays = Vec::new();
        for o in &f.overlays {
            if let Some(p) = self.path(o, "overlay") {
                if p.is_dir() {
                    overlays.push(p);
                } else {
                    self.problem(
                        o.span(),
                        format!("overlay {:?} is not a folder", o.get_ref()),
                    );
                }
            }
        }

        let mut cmdline_extra = Vec::new();
        for w in &f.boot.cmdline {
            let word = w.get_ref();
            if word.is_empty() || word.chars().any(|c| c.is_whitespace() || c.is_control()) {
                self.problem(
                    w.span(),
                    format!(
                        "cmdline word {word:?} must be one non-empty word; list words separately"
                    ),
                );
            } else if word.starts_with("cairn.") || word.starts_with("roothash=") {
                self.problem(
                    w.span(),
                    format!("cmdline word {word:?} is reserved: cairn sets it from the build"),
                );
            } else {
                cmdline_extra.push(word.clone());
            }
        }

        let state_mode = match f
            .state
            .mode
            .as_ref()
            .map(|m| (m.get_ref().as_str(), m.span()))
        {
            None | Some(("disk", _)) => StateMode::Disk,
            Some(("ram", _)) => StateMode::Ram,
            Some((other, span)) => {
                self.problem(
                    span,
                    format!("state mode {other:?} is not one of \"disk\", \"ram\""),
                );
                StateMode::Disk
            }
        };
        let state_grow = match &f.state.grow {
            Some(g) if *g.get_ref() && state_mode != StateMode::Disk => {
                self.problem(
                    g.span(),
                    "state grow = true needs mode = \"disk\" (RAM state has no partition to grow)",
                );
                false
            }
            Some(g) => *g.get_ref(),
            None => false,
        };
        let ram_size = match &f.state.ram_size {
            None => "50%".to_string(),
            Some(v) => {
                let t = v.get_ref().trim();
                let pct_ok = t
                    .strip_suffix('%')
                    .and_then(|n| n.parse::<u32>().ok())
                    .map(|n| (1..=90).contains(&n))
                    .unwrap_or(false);
                if pct_ok {
                    t.to_string()
                } else if let Some(b) = parse_size(t) {
                    format!("{}k", b.div_ceil(1024))
                } else {
                    self.problem(
                        v.span(),
                        format!("state ram_size {t:?} must be a size like \"512M\" or a share like \"50%\" (1-90%)"),
                    );
                    String::new()
                }
            }
        };
        let mut network = crate::recipe::network::NetworkPolicy::default();
        for e in &f.network.egress {
            match crate::recipe::network::parse_egress(e.get_ref()) {
                Ok(r) => network.egress.push(r),
                Err(m) => self.problem(e.span(), m),
            }
        }
        for i in &f.network.ingress {
            match crate::recipe::network::parse_ingress(i.get_ref()) {
                Ok(r) => network.ingress.push(r),
                Err(m) => self.problem(i.span(), m),
            }
        }
        if let Some(a) = &f.network.address {
            match crate::recipe::network::parse_address(a.get_ref()) {
                Ok(v) => network.address = Some(v),
                Err(m) => self.problem(a.span(), m),
            }
        }
        if let Some(g) = &f.network.gateway {
            match g.get_ref().parse::<std::net::Ipv4Addr>() {
                Ok(v) if network.address.is_some() => network.gateway = Some(v),
                Ok(_) => self.problem(
                    g.span(),
                    "network gateway needs an address; add network.address",
                ),
                Err(_) => self.problem(
                    g.span(),
                    format!("gateway {:?} is not an IPv4 address", g.get_ref()),
                ),
            }
        }
        let disk_size = self.size(&f.disk.size, "disk size");
        let state_size = self.size(&f.disk.state_size, "state size");
        if disk_size > 0 && state_size > 0 && state_size + (64 << 20) >= disk_size {
            self.problem(
                f.disk.state_size.span(),
                "state size leaves no room for the ESP and root on the disk; raise disk.size",
            );
        }

        if !self.problems.is_empty() {
            return Err(RecipeError {
                problems: self.problems,
            });
        }
        let base = base.ok_or_else(|| RecipeError { problems: vec![] })?;
        Ok(Recipe {
            file: self.src.path.clone(),
            recipe_sha256: Sha256::of_bytes(self.src.text.as_bytes()),
            name,
            version,
            source_date_epoch: self
                .src
                .env
                .source_date_epoch
                .unwrap_or(f.image.source_date_epoch),
            base,
            kernel_package: f.kernel.package,
            extra_modules,
            overlays,
            cmdline_extra,
            disk_size,
            state_size,
            debug_console: f.debug.console,
            debug_unencrypted_state: f.debug.unencrypted_state,
            state_mode,
            state_grow,
            ram_size,
            network,
            workloads,
            downloads: {
                let mut d = self.downloads;
                d.sort_by(|a, b| a.url.cmp(&b.url));
                d
            },
        })
    }
}

/// Removes `.` and resolves `..` without touching the file system.
pub fn normalize_lexically(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn is_safe_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.starts_with(|c: char| c.is_ascii_lowercase())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn is_package_name(p: &str) -> bool {
    p.len() >= 2
        && p.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && p.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c) || c == ':')
}

/// "2G" -> bytes. Suffixes K, M, G, T (powers of 1024); a bare number is bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'K') | (i, 'k') => (&s[..i], 1u64 << 10),
        (i, 'M') | (i, 'm') => (&s[..i], 1 << 20),
        (i, 'G') | (i, 'g') => (&s[..i], 1 << 30),
        (i, 'T') | (i, 't') => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    let n: u64 = num.parse().ok()?;
    let v = n.checked_mul(mult)?;
    (v > 0).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(dir: &Path, text: &str) -> RecipeSource {
        let path = dir.join("r.toml");
        std::fs::write(&path, text).unwrap();
        RecipeSource {
            path,
            text: text.into(),
            root: std::fs::canonicalize(dir).unwrap(),
            env: LoadEnv {
                cache_root: std::fs::canonicalize(dir).unwrap().join("cache"),
                source_date_epoch: None,
            },
        }
    }

    const GOOD: &str = r#"
[image]
name = "t"
version = "1"
[base.debian]
packages = ["nftables"]
"#;

    #[test]
    fn good_recipe_parses_with_defaults() {
        let d = tempfile::tempdir().unwrap();
        let r = parse(&src(d.path(), GOOD)).unwrap();
        assert_eq!(r.stem(), "t-1");
        assert_eq!(r.disk_size, 2 << 30);
        assert!(!r.debug_console);
    }

    #[test]
    fn url_inputs_resolve_into_the_cache_and_need_their_pins() {
        let d = tempfile::tempdir().unwrap();
        let sha = "ab".repeat(32);
        let md = "cd".repeat(32);
        let text = format!(
            "{GOOD}[[images]]\nname = \"web\"\narchive = \"https://example.org/web.tar\"\n\
             digest = \"sha256:{md}\"\narchive_sha256 = \"{sha}\"\n"
        );
        let r = parse(&src(d.path(), &text)).unwrap();
        assert_eq!(r.downloads.len(), 1);
        let dl = &r.downloads[0];
        assert_eq!(dl.url, "https://example.org/web.tar");
        assert_eq!(dl.sha256.hex(), sha);
        assert!(dl.at.ends_with(":9:11"), "{}", dl.at);
        let crate::recipe::workloads::ImageSource::Archive(p) = &r.workloads.images[0].source
        else {
            panic!("an archive");
        };
        let cache = std::fs::canonicalize(d.path()).unwrap().join("cache");
        assert_eq!(*p, crate::host::digest::blob_path(&cache, &dl.sha256));

        // Without the file pin: one error at the URL, naming the fix.
        let no_pin = text.replace(&format!("archive_sha256 = \"{sha}\"\n"), "");
        let e = parse(&src(d.path(), &no_pin)).unwrap_err();
        assert_eq!(e.problems.len(), 1, "{e}");
        assert_eq!((e.problems[0].line, e.problems[0].col), (9, 11), "{e}");
        assert!(
            e.problems[0].message.contains("needs archive_sha256"),
            "{e}"
        );

        // A local archive carries no file pin.
        std::fs::write(d.path().join("web.tar"), b"x").unwrap();
        let local = text.replace("https://example.org/web.tar", "web.tar");
        let e = parse(&src(d.path(), &local)).unwrap_err();
        assert!(e.to_string().contains("remove archive_sha256"), "{e}");

        // Credentials and non-http schemes are refused.
        let creds = text.replace("https://", "https://user:pw@");
        let e = parse(&src(d.path(), &creds)).unwrap_err();
        assert!(e.to_string().contains("credentials"), "{e}");
        let bad = text.replace("https://example.org/web.tar", "https://exa mple.org/x");
        let e = parse(&src(d.path(), &bad)).unwrap_err();
        assert!(e.to_string().contains("percent-encode"), "{e}");
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let d = tempfile::tempdir().unwrap();
        let text = "[image]\nname = \"t\"\nversion = \"1\"\ncolour = 3\n[base.debian]\n";
        let e = parse(&src(d.path(), text)).unwrap_err();
        assert_eq!(e.problems.len(), 1);
        let p = &e.problems[0];
        assert_eq!((p.line, p.col), (4, 1), "{p}");
        assert!(p.message.contains("unknown field `colour`"), "{p}");
    }

    #[test]
    fn wrong_type_is_reported_at_the_value() {
        let d = tempfile::tempdir().unwrap();
        let text =
            "[image]\nname = \"t\"\nversion = \"1\"\n[base.debian]\n[debug]\nconsole = \"yes\"\n";
        let e = parse(&src(d.path(), text)).unwrap_err();
        let p = &e.problems[0];
        assert_eq!(p.line, 6, "{p}");
        assert!(p.message.contains("invalid type"), "{p}");
    }

    #[test]
    fn missing_overlay_and_escape_are_each_reported() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("recipes");
        std::fs::create_dir(&sub).unwrap();
        std::fs::create_dir(d.path().join("outside")).unwrap();
        let text = format!("overlays = [\"nope\", \"../outside\"]\n{GOOD}");
        let mut s = src(&sub, &text);
        s.root = std::fs::canonicalize(&sub).unwrap();
        let e = parse(&s).unwrap_err();
        assert_eq!(e.problems.len(), 2, "{e}");
        assert!(e.problems[0].message.contains("not found"), "{e}");
        assert!(
            e.problems[1].message.contains("leaves the recipe root"),
            "{e}"
        );
        // Control: a wider root accepts the same path.
        s.root = std::fs::canonicalize(d.path()).unwrap();
        let e = parse(&s).unwrap_err();
        assert_eq!(e.problems.len(), 1, "{e}");
    }

    #[test]
    fn symlink_escape_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("r");
        std::fs::create_dir(&sub).unwrap();
        std::os::unix::fs::symlink("/etc", sub.join("ov")).unwrap();
        let text = format!("overlays = [\"ov\"]\n{GOOD}");
        let e = parse(&src(&sub, &text)).unwrap_err();
        assert!(e.problems[0].message.contains("through a symlink"), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("1536M"), Some(1536 << 20));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("99999999999T"), None);
    }

    #[test]
    fn reserved_cmdline_words_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let text = format!("{GOOD}[boot]\ncmdline = [\"cairn.roothash=00\"]\n");
        let e = parse(&src(d.path(), &text)).unwrap_err();
        assert!(e.problems[0].message.contains("reserved"), "{e}");
    }
}
