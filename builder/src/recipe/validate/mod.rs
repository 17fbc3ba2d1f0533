//! The validation pass: turns the schema's tables into a `Recipe`, one file
//! per table. Every problem is collected with its span (never just the
//! first); `cairn check`, `cairn lock` and `cairn build` all run this pass,
//! so what one refuses, all refuse.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use crate::host::digest::Sha256;
use crate::recipe::schema::RecipeFile;
use crate::recipe::{Download, Recipe, RecipeError, RecipeProblem, RecipeSource};

mod audit;
mod base;
pub mod boot;
mod disk;
mod image;
mod limits;
mod network;
mod site;
mod trees;
pub use trees::{CAIRN_FOLDER, CONTAINERD_CONFIG, GENERATED_FILES};
mod workloads;

pub use boot::{refused_cmdline_word, REFUSED_CMDLINE};
pub use workloads::CAPABILITIES;

pub(crate) struct Validator<'a> {
    src: &'a RecipeSource,
    folder: PathBuf,
    problems: Vec<RecipeProblem>,
    downloads: Vec<Download>,
}

impl<'a> Validator<'a> {
    pub(crate) fn new(src: &'a RecipeSource) -> Self {
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
        let (file, line, col) = crate::recipe::governance::locate(self.src, span.start);
        self.problems.push(RecipeProblem {
            file,
            line,
            col,
            message: message.into(),
        });
    }

    /// `file:line:col` of a span, for values that carry where they were written.
    fn at(&self, span: Range<usize>) -> String {
        let (file, line, col) = crate::recipe::governance::locate(self.src, span.start);
        format!("{}:{line}:{col}", file.display())
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
        // A template's own paths resolve in the template's folder.
        let (folder, root) = match &self.src.merged {
            // (The template itself lies inside the root: template.rs.)
            Some(m) if span.start < m.team_start => {
                (m.template_folder.clone(), self.src.root.clone())
            }
            _ => (self.folder.clone(), self.src.root.clone()),
        };
        let root = &root;
        let joined = folder.join(rel);
        let lexical = crate::recipe::normalize_lexically(&joined);
        if !lexical.starts_with(root) {
            self.problem(
                span,
                format!(
                    "{what} path {raw:?} leaves the recipe root {}; keep inputs inside it or pass a wider --root",
                    root.display()
                ),
            );
            return None;
        }
        match std::fs::canonicalize(&joined) {
            Ok(real) if real.starts_with(root) => Some(real),
            Ok(real) => {
                self.problem(
                    span,
                    format!(
                        "{what} path {raw:?} resolves through a symlink to {}, outside the recipe root {}",
                        real.display(),
                        root.display()
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
                at: self.at(p.span()),
            });
        }
        Some(crate::host::digest::blob_path(cache, &sha256))
    }

    fn size(&mut self, s: &Spanned<String>, what: &str) -> u64 {
        match crate::recipe::parse_size(s.get_ref()) {
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

    /// Refuses a name that is not `name_rule!()`; true when it is fine.
    fn name(&mut self, n: &Spanned<String>, what: &str) -> bool {
        if is_safe_name(n.get_ref()) {
            return true;
        }
        self.problem(
            n.span(),
            format!(
                "{what} name {:?} must be {}",
                n.get_ref(),
                crate::recipe::settings::name_rule!().replace('`', "")
            ),
        );
        false
    }

    /// Refuses a package name that is not a Debian package name.
    fn package(&mut self, p: &Spanned<String>, what: &str) -> bool {
        if is_package_name(p.get_ref()) {
            return true;
        }
        self.problem(
            p.span(),
            format!(
                "{what} {:?} is not a Debian package name ({}); write the package's name as `apt-cache show` knows it",
                p.get_ref(),
                crate::recipe::settings::package_rule!().replace('`', "")
            ),
        );
        false
    }

    pub(crate) fn run(mut self, f: RecipeFile) -> Result<Recipe, RecipeError> {
        let (name, version) = self.image(&f.image);
        let mut workloads = self.workloads(&f);
        let base = self.base(&f.base);
        let (kernel_package, extra_modules) = self.kernel(&f.kernel);
        let overlays = self.overlays(&f.overlays, workloads.runtime);
        let cmdline = self.cmdline(&f.boot, &f.debug);
        let state = self.state(&f.state);
        let network = self.network(&f.network);
        let (disk_size, state_size) = self.disk(&f.disk);
        let limits = self.limits(&f.limits);
        let audit = f.audit.as_ref().and_then(|a| self.audit(a));
        let roles = self.cluster_roles(&f.cluster, workloads.runtime);
        let site = f.site.as_ref().and_then(|s| {
            let image = (
                f.image.name.get_ref().as_str(),
                f.image.version.get_ref().as_str(),
            );
            self.site(s, image, &network, &workloads, &roles)
        });
        if let Some(d) = &site {
            for s in &mut workloads.services {
                s.site_env = d.env_vars(&s.name);
            }
        }

        if !self.problems.is_empty() {
            return Err(RecipeError {
                problems: self.problems,
            });
        }
        let base = base.ok_or_else(|| RecipeError { problems: vec![] })?;
        let epoch =
            crate::recipe::epoch::choose(self.src.env.source_date_epoch, f.image.source_date_epoch);
        Ok(Recipe {
            file: self.src.path.clone(),
            recipe_sha256: Sha256::of_bytes(self.src.text.as_bytes()),
            name,
            version,
            source_date_epoch: epoch.0,
            source_date_epoch_from: epoch.1,
            base,
            kernel_package,
            extra_modules,
            overlays,
            cmdline_extra: cmdline.words,
            debug_cmdline: cmdline.debug_allowed,
            disk_size,
            state_size,
            debug_console: f.debug.console,
            debug_unencrypted_state: f.debug.unencrypted_state,
            allow_bios: f.boot.allow_bios,
            shim: f
                .boot
                .shim
                .as_ref()
                .filter(|s| *s.get_ref())
                .map(|s| self.at(s.span())),
            allow_unsigned: f.boot.allow_unsigned,
            mok_manager: f.boot.mok_manager.unwrap_or(true),
            state_mode: state.mode,
            state_grow: state.grow,
            ram_size: state.ram_size,
            network,
            workloads,
            site,
            downloads: {
                let mut d = self.downloads;
                d.sort_by(|a, b| a.url.cmp(&b.url));
                d
            },
            limits,
            template: None,
            audit,
        })
    }
}

/// Whether `n` follows `name_rule!()`.
pub fn is_safe_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.starts_with(|c: char| c.is_ascii_lowercase())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Whether `p` follows `package_rule!()`: what mmdebstrap and apt take as
/// a package and nothing they could read as an option.
pub fn is_package_name(p: &str) -> bool {
    p.len() >= 2
        && p.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && p.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

/// The first character of `s` that is a control character (a newline
/// included), if any.
fn control_char(s: &str) -> Option<char> {
    s.chars().find(|c| c.is_control())
}

#[cfg(test)]
mod audit_tests;
#[cfg(test)]
mod kube_tests;
#[cfg(test)]
mod site_role_tests;
#[cfg(test)]
pub(crate) mod tests;
