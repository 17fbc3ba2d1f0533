//! Recipes: the TOML file a platform team writes, parsed into typed structs.
//! `settings` declares every key once (type, default, help), `schema` is the
//! serde view of the file, `validate` checks it table by table into the
//! resolved `Recipe`, and `reference` writes docs/recipe.md's tables.
//!
//! Invariant: a `Recipe` that leaves `load` has passed validation: every path
//! in it is resolved, exists and stays inside the recipe root; every problem
//! found is reported at once, each with `file:line:col`.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use crate::host::digest::Sha256;

pub mod audit;
pub mod epoch;
pub mod governance;
pub mod network;
pub mod packages;
pub mod reference;
pub mod schema;
pub mod settings;
pub mod site;
pub mod template;
pub mod url;
pub mod validate;
pub mod workloads;

pub use schema::RecipeFile;

/// Where the recipe's own inputs may live: its folder, or a wider root the
/// operator names with `--root`. A recipe can never widen it by itself.
#[derive(Debug, Clone)]
pub struct RecipeSource {
    pub path: PathBuf,
    pub text: String,
    pub root: PathBuf,
    pub env: LoadEnv,
    /// Set when `text` is a template and a team recipe merged (template.rs).
    pub merged: Option<governance::Merged>,
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
    /// How a team recipe's template signature is checked (None: team
    /// recipes are refused).
    pub verify_signature: Option<governance::SignatureCheck>,
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
    pub source_date_epoch_from: epoch::EpochSource,
    pub base: Base,
    pub kernel_package: String,
    pub extra_modules: Vec<String>,
    pub overlays: Vec<PathBuf>,
    pub cmdline_extra: Vec<String>,
    /// The words of `cmdline_extra` that open a shell or bypass the init,
    /// let in by `[debug] cmdline` (the manifest records them).
    pub debug_cmdline: Vec<String>,
    pub disk_size: u64,
    pub state_size: u64,
    pub debug_console: bool,
    pub debug_unencrypted_state: bool,
    /// `[boot] allow_bios`.
    pub allow_bios: bool,
    /// `[boot] shim = true`: where it is written (`file:line:col`), for the
    /// build's error when no Secure Boot key is given. None: no shim.
    pub shim: Option<String>,
    /// `[boot] allow_unsigned`.
    pub allow_unsigned: bool,
    /// `[boot] mok_manager` (default true): MokManager beside shim.
    pub mok_manager: bool,
    pub state_mode: StateMode,
    /// `[state] grow`: the initramfs grows the state partition to the end
    /// of the disk.
    pub state_grow: bool,
    pub ram_size: String,
    pub network: crate::recipe::network::NetworkPolicy,
    pub workloads: crate::recipe::workloads::Workloads,
    /// `[site]`: what a site file may set and the key that signs it.
    pub site: Option<crate::recipe::site::SiteDeclaration>,
    /// URL inputs (their paths above point into the cache), sorted by URL.
    pub downloads: Vec<Download>,
    /// `[limits]`: caps on base tarballs, image archives and layers.
    pub limits: crate::host::limits::Limits,
    /// The signed template a team recipe was built on (template.rs).
    pub template: Option<governance::TemplateUse>,
    /// `[audit]`: the sealed audit trail, if any (docs/audit.md).
    pub audit: Option<crate::recipe::audit::AuditDeclaration>,
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
        merged: None,
    };
    parse(&src)
}

/// Parses and validates recipe text; `src.path` is used for messages and
/// (its folder) for resolving relative paths.
pub fn parse(src: &RecipeSource) -> Result<Recipe, RecipeError> {
    if src.merged.is_none() && template::names_a_template(&src.text) {
        return template::load_team(src);
    }
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
    validate::Validator::new(src).run(file)
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
    use crate::recipe::validate::tests::src;

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
