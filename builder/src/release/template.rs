//! Governed templates, the signing side: `cairn template sign` signs a
//! template with the platform key (signify, detached `TEMPLATE.sig`, as
//! site files are signed), and `verify_signature` is the check the recipe
//! layer is handed to load team recipes.
//!
//! Invariant: a template is signed only if it parses as a template (a
//! recipe with `[governance]`); one crypto path, `release::signify`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::recipe::governance::GovernanceSection;
use crate::release::signify::{PublicKey, SecretKey, Signature};

/// `TEMPLATE.sig` beside `TEMPLATE`.
pub fn sig_path(template: &Path) -> PathBuf {
    let mut s = template.as_os_str().to_owned();
    s.push(".sig");
    PathBuf::from(s)
}

/// A template as signed: its name, version and signer.
pub struct SignedTemplate {
    pub name: String,
    pub version: String,
    pub key_id: String,
    pub sig: PathBuf,
}

/// The `[governance]` table of a template's text (parse errors are bad
/// input, with line and column).
pub fn governance_of(path: &Path, text: &str) -> Result<GovernanceSection> {
    #[derive(serde::Deserialize)]
    struct Gov {
        governance: Option<GovernanceSection>,
    }
    let g: Gov = toml::from_str(text).map_err(|e| {
        let (line, col) = e
            .span()
            .map(|s| crate::recipe::line_col(text, s.start))
            .unwrap_or((1, 1));
        crate::InputError(format!(
            "{}:{line}:{col}: {}",
            path.display(),
            e.message().trim()
        ))
    })?;
    g.governance.ok_or_else(|| {
        crate::InputError(format!(
            "{}: no [governance] table, so it is not a template (see docs/templates.md)",
            path.display()
        ))
        .into()
    })
}

/// Signs `template` with `key`; writes `TEMPLATE.sig`. `pub_name` goes in
/// the signature's comment.
pub fn sign(template: &Path, key: &SecretKey, pub_name: &str) -> Result<SignedTemplate> {
    let text = std::fs::read_to_string(template).map_err(|e| {
        crate::InputError(format!(
            "{}: cannot read the template: {e}",
            template.display()
        ))
    })?;
    let gov = governance_of(template, &text)?;
    if crate::recipe::template::parse_version(gov.version.get_ref()).is_none() {
        return Err(crate::InputError(format!(
            "{}: [governance] version {:?} is not dotted numbers (\"1.2\")",
            template.display(),
            gov.version.get_ref()
        ))
        .into());
    }
    let sig = key.sign(text.as_bytes());
    let out = sig_path(template);
    std::fs::write(&out, sig.to_file_text(pub_name))
        .with_context(|| format!("write {}", out.display()))?;
    Ok(SignedTemplate {
        name: gov.name.get_ref().clone(),
        version: gov.version.get_ref().clone(),
        key_id: key.public().key_id(),
        sig: out,
    })
}

/// The recipe layer's `SignatureCheck`: `sig` (a `.sig` file's text) over
/// `msg`, with the public key `key` (a `.pub` file's text); the key id.
pub fn verify_signature(msg: &[u8], sig: &str, key: &str) -> Result<String, String> {
    let key = PublicKey::parse(key).map_err(|e| format!("the key: {e}"))?;
    let sig = Signature::parse(sig).map_err(|e| format!("the signature: {e}"))?;
    sig.verify(&key, msg).map_err(|e| e.to_string())?;
    Ok(key.key_id())
}

#[cfg(test)]
#[path = "template_tests.rs"]
mod tests;
