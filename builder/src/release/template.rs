//! Governed templates, the signing side: `cairn template sign` signs a
//! template with the platform key (signify, detached `TEMPLATE.sig`, as
//! site files are signed), and `verify_signature` is the check the recipe
//! layer is handed to load team recipes.
//!
//! Invariant: a template is signed only if it parses as a template (a
//! recipe with `[governance]`); one crypto path, `release::signify`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::host::digest::Sha256;
use crate::recipe::governance::GovernanceSection;
use crate::release::manifest::Manifest;
use crate::release::signify::{PublicKey, SecretKey, Signature};
use crate::release::verify::{VerifyError, VerifyReport};

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

/// `cairn verify --template-key`: the release verified with `pubkey` as
/// `cairn verify` does, then [`check_release`] with the platform key
/// `template_key` on the manifest that verification authenticated.
pub fn verify(
    target: &Path,
    pubkey: &Path,
    production: bool,
    template_key: &Path,
) -> Result<VerifyReport, VerifyError> {
    use crate::host::untrusted::{self, Links};
    use crate::release::verify::{MANIFEST, MAX_MANIFEST};
    let key = PublicKey::read(template_key)
        .map_err(|e| VerifyError::BadInput(format!("template key: {e}")))?;
    let mut report = crate::release::verify::verify(target, pubkey, production)?;
    let folder = if target.is_dir() {
        target
    } else {
        target.parent().unwrap_or(Path::new("."))
    };
    // Read again, and held to the digest the signature covered.
    let bytes = untrusted::read(&folder.join(MANIFEST), Links::Refuse, MAX_MANIFEST)
        .map_err(|e| VerifyError::Failed(format!("template: {MANIFEST}: {e}")))?;
    if report.signed.get(MANIFEST) != Some(&Sha256::of_bytes(&bytes)) {
        return Err(VerifyError::Failed(format!(
            "template: {MANIFEST} changed during verification"
        )));
    }
    let m: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| VerifyError::Failed(format!("template: {MANIFEST}: {e}")))?;
    let passed =
        check_release(&m, &key).map_err(|e| VerifyError::Failed(format!("template: {e}")))?;
    report
        .checks
        .extend(passed.into_iter().map(|c| format!("template: {c}")));
    Ok(report)
}

/// `cairn verify --template-key`: whether the release whose (already
/// verified) manifest is `m` was built from a template signed by `key`,
/// and whether what the manifest says it holds keeps that template's rules
/// (checked again here, not taken from the build). Ok: one line per check
/// passed; Err: the first check that failed.
pub fn check_release(m: &Manifest, key: &PublicKey) -> Result<Vec<String>, String> {
    let t = m.template.as_ref().ok_or(
        "the release was not built from a template: its manifest names none (build the team recipe, not the plain one)",
    )?;
    let mut passed = Vec::new();
    if Sha256::of_bytes(t.text.as_bytes()).hex() != t.sha256 {
        return Err("the manifest's template text does not match its recorded sha256".into());
    }
    if Sha256::of_bytes(t.team.as_bytes()).hex() != t.team_sha256 {
        return Err("the manifest's team recipe does not match its recorded sha256".into());
    }
    let signer = verify_signature(t.text.as_bytes(), &t.signature, &key.to_file_text("k"))
        .map_err(|e| format!("template {} {}: {e}", t.name, t.version))?;
    if signer != t.key_id {
        return Err(format!(
            "template signed by key {signer}, but the manifest says {}",
            t.key_id
        ));
    }
    passed.push(format!(
        "template {} {} signed by key {signer}",
        t.name, t.version
    ));
    // The recipe the build read is the template, a newline, the team's.
    let merged = Sha256::of_bytes(format!("{}\n{}", t.text, t.team).as_bytes());
    if merged != m.recipe.sha256 {
        return Err(format!(
            "the manifest's recipe digest {} is not that of template {} with the recorded team recipe ({merged}): the release was not built from them",
            m.recipe.sha256, t.name
        ));
    }
    passed.push(format!("recipe = template + team recipe ({merged})"));
    check_contents(m, t)?;
    passed.push("contents keep the template's rules".into());
    Ok(passed)
}

/// The template's own recipe and rules against the manifest's flags,
/// services and network.
fn check_contents(m: &Manifest, t: &crate::recipe::governance::TemplateUse) -> Result<(), String> {
    let file: crate::recipe::RecipeFile =
        toml::from_str(&t.text).map_err(|e| format!("the template does not parse: {e}"))?;
    let gov = file
        .governance
        .as_ref()
        .ok_or("the template has no [governance] table")?;
    let rule = |name: &str, what: String| format!("{what} (template rule `{name}`)");
    if m.flags.debug_console != file.debug.console
        || m.flags.debug_unencrypted_state != file.debug.unencrypted_state
    {
        return Err(rule(
            "fixed",
            "the release's debug flags are not the template's".into(),
        ));
    }
    if let Some(mode) = &file.state.mode {
        if m.flags.state_mode != *mode.get_ref() {
            return Err(rule(
                "fixed",
                format!(
                    "state mode {} is not the template's {}",
                    m.flags.state_mode,
                    mode.get_ref()
                ),
            ));
        }
    }
    let own: Vec<&str> = file
        .services
        .iter()
        .map(|s| s.name.get_ref().as_str())
        .collect();
    let team: Vec<_> = m
        .services
        .iter()
        .filter(|s| !own.contains(&s.name.as_str()))
        .collect();
    // Team images, models and services: those the template does not
    // define, each kind allowed at all and within its count.
    let own_images: Vec<&str> = file
        .images
        .iter()
        .map(|i| i.name.get_ref().as_str())
        .collect();
    let own_models: Vec<&str> = file
        .models
        .iter()
        .map(|i| i.name.get_ref().as_str())
        .collect();
    let team_images = m
        .sbom
        .images
        .iter()
        .filter(|i| !own_images.contains(&i.name.as_str()))
        .count();
    let team_models = m
        .sbom
        .models
        .iter()
        .filter(|i| !own_models.contains(&i.name.as_str()))
        .count();
    for (what, n, max) in [
        ("images", team_images, &gov.max_images),
        ("models", team_models, &gov.max_models),
        ("services", team.len(), &gov.max_services),
    ] {
        if n > 0 && !allowed(gov, what) {
            return Err(rule(
                "fixed",
                format!("{n} team {what}, which the template does not allow"),
            ));
        }
        if let Some(max) = max {
            if n as u64 > *max.get_ref() {
                return Err(rule(
                    &format!("max_{what}"),
                    format!("{n} team {what}, above {}", max.get_ref()),
                ));
            }
        }
    }
    for s in &team {
        if let Some(max) = &gov.max_memory {
            let cap = crate::recipe::parse_size(max.get_ref()).unwrap_or(0);
            if s.memory.map_or(true, |m| m > cap) {
                return Err(rule(
                    "max_memory",
                    format!(
                        "service {} has memory {:?}, not at most {}",
                        s.name,
                        s.memory,
                        max.get_ref()
                    ),
                ));
            }
        }
        if let Some(max) = &gov.max_cpus {
            if s.cpus.map_or(true, |c| c > *max.get_ref()) {
                return Err(rule(
                    "max_cpus",
                    format!(
                        "service {} has cpus {:?}, not at most {}",
                        s.name,
                        s.cpus,
                        max.get_ref()
                    ),
                ));
            }
        }
        if s.host_network && !gov.host_network.as_ref().is_some_and(|h| *h.get_ref()) {
            return Err(rule(
                "host_network",
                format!("service {} shares the host's network", s.name),
            ));
        }
        for c in &s.capabilities {
            if !gov.capabilities.iter().any(|g| g.get_ref() == c) {
                return Err(rule(
                    "capabilities",
                    format!("service {} keeps {c}", s.name),
                ));
            }
        }
    }
    let own_ingress: Vec<_> = file
        .network
        .ingress
        .iter()
        .filter_map(|i| crate::recipe::network::parse_ingress(i.get_ref()).ok())
        .collect();
    for i in m
        .network
        .ingress
        .iter()
        .filter(|i| !own_ingress.contains(i))
    {
        let in_range = gov
            .ingress_ports
            .as_ref()
            .map_or(allowed(gov, "ingress"), |r| {
                r.get_ref()
                    .split_once('-')
                    .and_then(|(a, b)| {
                        Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?))
                    })
                    .is_some_and(|(lo, hi)| (lo..=hi).contains(&i.port))
            });
        if !in_range || !allowed(gov, "ingress") {
            return Err(rule(
                "ingress_ports",
                format!("ingress port {} is open", i.port),
            ));
        }
    }
    let own_egress: Vec<_> = file
        .network
        .egress
        .iter()
        .filter_map(|e| {
            e.get_ref()
                .as_str()
                .and_then(|s| crate::recipe::network::parse_egress(s).ok())
        })
        .collect();
    let set: Vec<_> = gov
        .egress
        .iter()
        .filter_map(|e| crate::recipe::network::parse_egress(e.get_ref()).ok())
        .collect();
    for e in m.network.egress.iter().filter(|e| !own_egress.contains(e)) {
        if !set.contains(e) {
            return Err(rule(
                "egress",
                format!("egress to {}/{}:{} is open", e.net, e.prefix, e.port),
            ));
        }
    }
    Ok(())
}

fn allowed(gov: &GovernanceSection, what: &str) -> bool {
    gov.allow.iter().any(|a| a.get_ref() == what)
}

/// `path` relative to the folder `from` (both absolute), with `..` where
/// needed: what a recipe in `from` writes to name `path`.
fn relative_to(path: &Path, from: &Path) -> PathBuf {
    let (p, f): (Vec<_>, Vec<_>) = (path.components().collect(), from.components().collect());
    let common = p.iter().zip(&f).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &p[common..] {
        out.push(c);
    }
    out
}

/// `cairn new --template`: writes `DIR/recipe.toml`, a team recipe that
/// pins `template` (its signature checked with `key` first) and stubs, as
/// comments, what the template lets a team add. Nothing is overwritten.
pub fn new_team_recipe(template: &Path, key: &Path, dir: &Path) -> Result<PathBuf> {
    let bad = |m: String| anyhow::Error::from(crate::InputError(m));
    let text = std::fs::read_to_string(template).map_err(|e| {
        bad(format!(
            "{}: cannot read the template: {e}",
            template.display()
        ))
    })?;
    let gov = governance_of(template, &text)?;
    let sig = std::fs::read_to_string(sig_path(template)).map_err(|e| {
        bad(format!(
            "{}: {e}; sign the template first (cairn template sign)",
            sig_path(template).display()
        ))
    })?;
    let key_text = std::fs::read_to_string(key).map_err(|e| {
        bad(format!(
            "{}: cannot read the platform key: {e}",
            key.display()
        ))
    })?;
    let key_id = verify_signature(text.as_bytes(), &sig, &key_text).map_err(|e| {
        bad(format!(
            "{}: does not verify with {}: {e}",
            template.display(),
            key.display()
        ))
    })?;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let out = dir.join("recipe.toml");
    if out.exists() {
        return Err(bad(format!(
            "{} exists; cairn new never overwrites",
            out.display()
        )));
    }
    let abs =
        |p: &Path| std::fs::canonicalize(p).with_context(|| format!("resolve {}", p.display()));
    let folder = abs(dir)?;
    let name = folder
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .filter(|n| crate::recipe::validate::is_safe_name(n))
        .unwrap_or_else(|| "team".into());
    let g = |v: &Option<toml::Spanned<u64>>| {
        v.as_ref()
            .map(|v| v.get_ref().to_string())
            .unwrap_or("any".into())
    };
    let mut s = format!(
        "# A team recipe on template {:?} {} (platform key {key_id}).\n\
         # It holds only what the template allows; `cairn check` names every rule\n\
         # broken, with the template line that set it (docs/templates.md).\n\
         [template]\npath = {:?}\nsha256 = \"{}\"\nkey = {:?}\nversion = {:?}\n\n\
         [image]\nname = {name:?}\nversion = \"0.1.0\"\n",
        gov.name.get_ref(),
        gov.version.get_ref(),
        relative_to(&abs(template)?, &folder).display().to_string(),
        Sha256::of_bytes(text.as_bytes()).hex(),
        relative_to(&abs(key)?, &folder).display().to_string(),
        gov.version.get_ref(),
    );
    let allows = |w: &str| gov.allow.iter().any(|a| a.get_ref() == w);
    if allows("images") {
        let sources = gov
            .image_sources
            .as_ref()
            .map(|v| {
                v.iter()
                    .map(|s| s.get_ref().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or("build, archive".into());
        s.push_str(&format!("\n# Images: at most {}; sources: {sources}.\n# [[images]]\n# name = \"app\"\n# [images.build]\n# packages = [\"python3\"]\n", g(&gov.max_images)));
    }
    if allows("models") {
        let size = gov
            .max_model_size
            .as_ref()
            .map(|v| v.get_ref().clone())
            .unwrap_or("any size".into());
        s.push_str(&format!("\n# Models: at most {}, each at most {size}.\n# [[models]]\n# name = \"weights\"\n# path = \"model\"\n# sha256 = \"...\"   # cairn digest model\n", g(&gov.max_models)));
    }
    if allows("services") {
        let mem = gov
            .max_memory
            .as_ref()
            .map(|v| v.get_ref().clone())
            .unwrap_or("any".into());
        let cpus = gov
            .max_cpus
            .as_ref()
            .map(|v| v.get_ref().to_string())
            .unwrap_or("any".into());
        let caps: Vec<&str> = gov
            .capabilities
            .iter()
            .map(|c| c.get_ref().as_str())
            .collect();
        s.push_str(&format!(
            "\n# Services: at most {}; memory at most {mem}, cpus at most {cpus}; capabilities: [{}].\n# [[services]]\n# name = \"app\"\n# image = \"app\"\n# memory = \"256M\"\n# cpus = 0.5\n",
            g(&gov.max_services),
            caps.join(", ")
        ));
    }
    if allows("ingress") || allows("egress") {
        let ports = gov
            .ingress_ports
            .as_ref()
            .map(|v| v.get_ref().clone())
            .unwrap_or("any".into());
        s.push_str(&format!(
            "\n# Network: ingress ports {ports}.\n# [network]\n# ingress = [\"8080/tcp\"]\n"
        ));
    }
    std::fs::write(&out, s).with_context(|| format!("write {}", out.display()))?;
    Ok(out)
}

#[cfg(test)]
#[path = "template_tests.rs"]
mod tests;
