//! Governed templates, as serde reads them: a template's `[governance]`
//! table (what a team recipe may add, and the limits on it) and a team
//! recipe's `[template]` table (which signed template it builds on).
//! `template.rs` merges and checks; this file only declares.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::recipe::{line_col, RecipeSource};

/// `[governance]` in a template. Each key is a rule; a team recipe that
/// breaks one is refused naming the key and where the template set it.
/// Whatever a team may not add (`allow`) is fixed by the template.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovernanceSection {
    /// The template's name and version (dotted numbers, "1.2").
    pub name: Spanned<String>,
    pub version: Spanned<String>,
    /// What a team recipe may add: "images", "models", "services",
    /// "ingress", "egress", "overlays". Everything else is fixed.
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    /// Ports a team may open for ingress, "LOW-HIGH".
    pub ingress_ports: Option<Spanned<String>>,
    /// How many images, models, services a team may add.
    pub max_images: Option<Spanned<u64>>,
    pub max_models: Option<Spanned<u64>>,
    pub max_services: Option<Spanned<u64>>,
    /// The largest team model (file or folder, all its files), e.g. "64M".
    pub max_model_size: Option<Spanned<String>>,
    /// The largest image archive a team brings, e.g. "512M".
    pub max_archive_size: Option<Spanned<String>>,
    /// Memory and CPU ceilings per team service: a team service must set
    /// `memory` and `cpus`, at most these.
    pub max_memory: Option<Spanned<String>>,
    pub max_cpus: Option<Spanned<f64>>,
    /// Capabilities a team service may keep (default: none).
    #[serde(default)]
    pub capabilities: Vec<Spanned<String>>,
    /// Whether a team service may share the host's network (default: no).
    pub host_network: Option<Spanned<bool>>,
    /// Where team images may come from: "build" (from Debian packages),
    /// "archive" (a pinned archive). Default: both.
    pub image_sources: Option<Vec<Spanned<String>>>,
    /// With "archive": URL prefixes a team archive must start with (local
    /// archives are refused when this is set).
    pub archive_urls: Option<Vec<Spanned<String>>>,
    /// With "egress" allowed: the only egress rules a team may add
    /// (written as in `[network] egress`). Empty: none.
    #[serde(default)]
    pub egress: Vec<Spanned<String>>,
    /// With "overlays" allowed: the image paths a team overlay may write
    /// under (e.g. "/opt/team/"). Empty: none.
    #[serde(default)]
    pub overlay_paths: Vec<Spanned<String>>,
}

/// `[template]` in a team recipe.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateRef {
    /// The template file, relative to the team recipe; its signature is
    /// `PATH.sig` beside it.
    pub path: Spanned<String>,
    /// The template file's sha256: required with `version`; with
    /// `versions` the signature alone binds it.
    pub sha256: Option<Spanned<String>>,
    /// The platform's public key (signify `.pub`), relative to the recipe.
    pub key: Spanned<String>,
    /// One version, exactly.
    pub version: Option<Spanned<String>>,
    /// A range of signed versions, e.g. ">=1.0, <2".
    pub versions: Option<Spanned<String>>,
}

/// What a release records of the template a team recipe was built on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TemplateUse {
    pub name: String,
    pub version: String,
    /// sha256 of the template file as signed.
    pub sha256: String,
    /// The platform key's id (signify key number, hex).
    pub key_id: String,
    /// sha256 of the team recipe file.
    pub team_sha256: String,
    /// The template's text and its signature file's text, and the team
    /// recipe's text: a release can be re-checked against them, offline.
    pub text: String,
    pub signature: String,
    pub team: String,
}

/// Checks a detached signify signature (`sig`, the `.sig` file's text)
/// over `msg` with the public key `key` (a `.pub` file's text) and returns
/// the key id. Given by the caller (release::signify): the recipe layer
/// holds no crypto of its own.
pub type SignatureCheck = fn(msg: &[u8], sig: &str, key: &str) -> Result<String, String>;

/// Where the template ends and the team recipe starts in a merged text.
#[derive(Debug, Clone)]
pub struct Merged {
    /// Byte offset of the team's first byte.
    pub team_start: usize,
    /// Line of the merged text that is the team's line 1.
    pub team_first_line: usize,
    pub template_path: PathBuf,
    pub template_folder: PathBuf,
}

/// The file, line and column of a byte offset of `src.text`.
pub fn locate(src: &RecipeSource, offset: usize) -> (PathBuf, usize, usize) {
    let (line, col) = line_col(&src.text, offset);
    match &src.merged {
        Some(m) if offset < m.team_start => (m.template_path.clone(), line, col),
        Some(m) => (src.path.clone(), line + 1 - m.team_first_line, col),
        None => (src.path.clone(), line, col),
    }
}
