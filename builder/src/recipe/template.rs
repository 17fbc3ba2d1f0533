//! Team recipes on governed templates: a team recipe names a template
//! signed by the platform key (`[template]`); it is checked, merged into
//! the template, validated as one recipe and held to the template's
//! `[governance]` rules.
//!
//! Invariant: a team recipe loads only if the template's signature
//! verifies with the key it names, its version is accepted, and no rule is
//! broken; every problem is reported at once, at the team recipe's
//! `file:line:col`, naming the rule and the template line that set it.
//!
//! How spans work: the merged text is the template's text, a newline, then
//! the team's. The team's tables are parsed from a copy whose template
//! part is blanked (newlines kept), so every span is an offset into the
//! merged text and `locate` tells which file it is in.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::IgnoredAny;
use serde::Deserialize;
use toml::Spanned;

use crate::host::digest::Sha256;
use crate::recipe::governance::{locate, GovernanceSection, Merged, TemplateRef, TemplateUse};
use crate::recipe::schema::{ImageEntry, ImageSection, ModelEntry, RecipeFile, ServiceEntry};
use crate::recipe::{line_col, Recipe, RecipeError, RecipeProblem, RecipeSource};

/// What a team recipe may add (`[governance] allow`).
pub const ALLOWABLE: &[&str] = &[
    "images", "models", "services", "ingress", "egress", "overlays",
];

/// Whether a recipe's text has a top-level `[template]` table.
pub fn names_a_template(text: &str) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        template: Option<IgnoredAny>,
    }
    matches!(
        toml::from_str::<Probe>(text),
        Ok(Probe { template: Some(_) })
    )
}

/// The team's parts, read from the blanked copy (spans: merged offsets).
#[derive(Deserialize)]
struct TeamFile {
    image: Option<ImageSection>,
    #[serde(default)]
    images: Vec<ImageEntry>,
    #[serde(default)]
    models: Vec<ModelEntry>,
    #[serde(default)]
    services: Vec<ServiceEntry>,
    #[serde(default)]
    overlays: Vec<Spanned<String>>,
    network: Option<TeamNetwork>,
}

#[derive(Deserialize, Default)]
struct TeamNetwork {
    #[serde(default)]
    ingress: Vec<Spanned<String>>,
    #[serde(default)]
    egress: Vec<Spanned<toml::Value>>,
}

/// Problems collected against the merged source.
struct Problems<'a> {
    src: &'a RecipeSource,
    list: Vec<RecipeProblem>,
}

impl Problems<'_> {
    fn at(&mut self, offset: usize, message: String) {
        let (file, line, col) = locate(self.src, offset);
        self.list.push(RecipeProblem {
            file,
            line,
            col,
            message,
        });
    }

    /// A broken rule: the message, the rule's name and where the template
    /// set it.
    fn rule(&mut self, offset: usize, rule: &str, set: Range<usize>, message: String) {
        let (file, line, col) = locate(self.src, set.start);
        self.at(
            offset,
            format!(
                "{message} (template rule `{rule}`, set at {}:{line}:{col})",
                file.display()
            ),
        );
    }
}

/// Loads a team recipe (`src.text` has `[template]`): checks the template's
/// digest, signature and version, merges, validates and checks the rules.
pub fn load_team(team: &RecipeSource) -> Result<Recipe, RecipeError> {
    let fail = |offset: usize, message: String| {
        let (line, col) = line_col(&team.text, offset);
        RecipeError {
            problems: vec![RecipeProblem {
                file: team.path.clone(),
                line,
                col,
                message,
            }],
        }
    };
    let head: TeamHead = toml::from_str(&team.text).map_err(|e| {
        let at = e.span().map(|s| s.start).unwrap_or(0);
        fail(at, format!("[template]: {}", e.message().trim()))
    })?;
    let tref = head.template;
    let (template_path, template_text, signature, key_id) = read_signed(team, &tref, &fail)?;

    // The merged text, and the team's copy with the template part blanked.
    let team_start = template_text.len() + 1;
    let merged_text = format!("{template_text}\n{}", team.text);
    let blank: String = template_text
        .bytes()
        .map(|b| if b == b'\n' { '\n' } else { ' ' })
        .collect();
    let team_copy = format!("{blank}\n{}", team.text);
    let template_folder = template_path
        .parent()
        .unwrap_or(Path::new("/"))
        .to_path_buf();
    let src = RecipeSource {
        path: team.path.clone(),
        text: merged_text,
        root: team.root.clone(),
        env: team.env.clone(),
        merged: Some(Merged {
            team_start,
            team_first_line: template_text.matches('\n').count() + 2,
            template_path: template_path.clone(),
            template_folder,
        }),
    };
    let mut problems = Problems {
        src: &src,
        list: Vec::new(),
    };
    let parse_error = |problems: &mut Problems, e: toml::de::Error| {
        let at = e.span().map(|s| s.start).unwrap_or(team_start);
        problems.at(at, e.message().trim().replace('\n', " "));
    };

    let mut file: RecipeFile = match toml::from_str(&template_text) {
        Ok(f) => f,
        Err(e) => {
            parse_error(&mut problems, e);
            return Err(RecipeError {
                problems: problems.list,
            });
        }
    };
    let Some(gov) = file.governance.take() else {
        return Err(fail(
            tref.path.span().start,
            format!(
                "{} has no [governance] table, so it is not a template",
                template_path.display()
            ),
        ));
    };
    check_version(&tref, &gov, &src, &fail)?;

    let team_file: TeamFile = match toml::from_str(&team_copy) {
        Ok(t) => t,
        Err(e) => {
            parse_error(&mut problems, e);
            return Err(RecipeError {
                problems: problems.list,
            });
        }
    };
    check_keys(&team_copy, team_start, &gov, &mut problems);
    check_rules(&team_file, &gov, &mut problems);

    // Merge: the team's additions after the template's own.
    let template_overlays = file.overlays.len();
    let team_names = TeamNames {
        images: team_file
            .images
            .iter()
            .map(|m| m.name.get_ref().clone())
            .collect(),
        models: team_file
            .models
            .iter()
            .map(|m| m.name.get_ref().clone())
            .collect(),
    };
    let team_overlays = team_file.overlays.clone();
    if let Some(image) = team_file.image {
        file.image = image;
    }
    file.images.extend(team_file.images);
    file.models.extend(team_file.models);
    file.services.extend(team_file.services);
    file.overlays.extend(team_file.overlays);
    if let Some(n) = team_file.network {
        file.network.ingress.extend(n.ingress);
        file.network.egress.extend(n.egress);
    }

    let validated = crate::recipe::validate::Validator::new(&src).run(file);
    let mut recipe = match validated {
        Ok(r) => Some(r),
        Err(e) => {
            problems.list.extend(e.problems);
            None
        }
    };
    if let Some(r) = &recipe {
        check_sizes(r, &team_names, &gov, &mut problems);
        let overlays = r.overlays.get(template_overlays..).unwrap_or(&[]);
        check_overlays(overlays, &team_overlays, &gov, &mut problems);
    }
    if !problems.list.is_empty() {
        problems
            .list
            .sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
        problems.list.dedup();
        return Err(RecipeError {
            problems: problems.list,
        });
    }
    let mut r = recipe
        .take()
        .ok_or_else(|| RecipeError { problems: vec![] })?;
    r.file = team.path.clone();
    r.template = Some(TemplateUse {
        name: gov.name.get_ref().clone(),
        version: gov.version.get_ref().clone(),
        sha256: Sha256::of_bytes(template_text.as_bytes()).hex(),
        key_id,
        team_sha256: Sha256::of_bytes(team.text.as_bytes()).hex(),
        text: template_text,
        signature,
        team: team.text.clone(),
    });
    Ok(r)
}

/// The names of what the team added, for checks after validation.
struct TeamNames {
    images: Vec<String>,
    models: Vec<String>,
}

#[derive(Deserialize)]
struct TeamHead {
    template: TemplateRef,
}

/// Reads the template the team names, checks its pin and its signature:
/// (its path, text, signature text, the signer's key id).
fn read_signed(
    team: &RecipeSource,
    tref: &TemplateRef,
    fail: &dyn Fn(usize, String) -> RecipeError,
) -> Result<(PathBuf, String, String, String), RecipeError> {
    let folder = std::fs::canonicalize(&team.path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| team.root.clone());
    let resolve = |p: &Spanned<String>, what: &str| -> Result<PathBuf, RecipeError> {
        let joined = folder.join(p.get_ref());
        match std::fs::canonicalize(&joined) {
            Ok(real) if real.starts_with(&team.root) => Ok(real),
            Ok(real) => Err(fail(
                p.span().start,
                format!(
                    "{what} {} is outside the recipe root {}; pass a wider --root",
                    real.display(),
                    team.root.display()
                ),
            )),
            Err(e) => Err(fail(
                p.span().start,
                format!("{what} {:?}: {e}; fix the path", p.get_ref()),
            )),
        }
    };
    let path = resolve(&tref.path, "template")?;
    let key_path = resolve(&tref.key, "platform key")?;
    let read = |p: &Path, at: usize, what: &str| -> Result<Vec<u8>, RecipeError> {
        // Templates and keys are small text files; a cap keeps a hostile
        // path (a device, a huge file) from being read whole.
        const MAX: u64 = 1 << 20;
        let meta =
            std::fs::metadata(p).map_err(|e| fail(at, format!("{what} {}: {e}", p.display())))?;
        if !meta.is_file() || meta.len() > MAX {
            return Err(fail(
                at,
                format!("{what} {} is not a file of at most 1 MiB", p.display()),
            ));
        }
        std::fs::read(p).map_err(|e| fail(at, format!("{what} {}: {e}", p.display())))
    };
    let at = tref.path.span().start;
    let bytes = read(&path, at, "template")?;
    if let Some(pin) = &tref.sha256 {
        let want = Sha256::from_hex(pin.get_ref())
            .map_err(|e| fail(pin.span().start, format!("template sha256: {e}")))?;
        let got = Sha256::of_bytes(&bytes);
        if got != want {
            return Err(fail(
                pin.span().start,
                format!(
                    "template {} has sha256 {got}, but the recipe pins {want}; the template changed: review it and update the pin",
                    path.display()
                ),
            ));
        }
    } else if tref.versions.is_none() {
        return Err(fail(
            at,
            "[template] needs sha256 (with `version`) or a signed range `versions`".into(),
        ));
    }
    let mut sig_path = path.clone().into_os_string();
    sig_path.push(".sig");
    let sig_path = PathBuf::from(sig_path);
    let sig = read(&sig_path, at, "template signature")?;
    let key = read(&key_path, tref.key.span().start, "platform key")?;
    let check = team.env.verify_signature.ok_or_else(|| {
        fail(
            at,
            "this command cannot check template signatures; use cairn check or cairn build".into(),
        )
    })?;
    let sig = String::from_utf8_lossy(&sig).into_owned();
    let key_id = check(&bytes, &sig, &String::from_utf8_lossy(&key)).map_err(|e| {
        fail(
            tref.key.span().start,
            format!(
                "template {} does not verify with {}: {e}; the template was changed after signing or signed by another key",
                path.display(),
                key_path.display()
            ),
        )
    })?;
    let text = String::from_utf8(bytes)
        .map_err(|_| fail(at, format!("template {} is not UTF-8", path.display())))?;
    Ok((path, text, sig, key_id))
}

/// Dotted numbers: "1.2" -> [1, 2].
pub fn parse_version(v: &str) -> Option<Vec<u64>> {
    let parts: Option<Vec<u64>> = v.trim().split('.').map(|p| p.parse().ok()).collect();
    parts.filter(|p| !p.is_empty())
}

/// Whether `v` is inside `range` (">=1.0, <2": comparators, comma-joined).
pub fn version_in(v: &[u64], range: &str) -> Result<bool, String> {
    let mut ok = true;
    for c in range.split(',') {
        let c = c.trim();
        let (op, rest) = [">=", "<=", ">", "<", "="]
            .iter()
            .find_map(|op| c.strip_prefix(op).map(|r| (*op, r)))
            .ok_or_else(|| format!("{c:?} is not a comparison (>=, >, <=, <, = VERSION)"))?;
        let want = parse_version(rest).ok_or_else(|| format!("{rest:?} is not a version"))?;
        let ord = v.cmp(&want[..]);
        ok &= match op {
            ">=" => ord.is_ge(),
            "<=" => ord.is_le(),
            ">" => ord.is_gt(),
            "<" => ord.is_lt(),
            _ => ord.is_eq(),
        };
    }
    Ok(ok)
}

fn check_version(
    tref: &TemplateRef,
    gov: &GovernanceSection,
    src: &RecipeSource,
    fail: &dyn Fn(usize, String) -> RecipeError,
) -> Result<(), RecipeError> {
    let have = gov.version.get_ref();
    let Some(v) = parse_version(have) else {
        let (file, line, col) = locate(src, gov.version.span().start);
        return Err(fail(
            tref.path.span().start,
            format!(
                "the template's version {have:?} ({}:{line}:{col}) is not dotted numbers",
                file.display()
            ),
        ));
    };
    match (&tref.version, &tref.versions) {
        (Some(want), None) => {
            if parse_version(want.get_ref()) != Some(v) {
                return Err(fail(
                    want.span().start,
                    format!("the template is version {have}, but the recipe wants {}; update `version` after reviewing the template", want.get_ref()),
                ));
            }
        }
        (None, Some(range)) => match version_in(&v, range.get_ref()) {
            Ok(true) => {}
            Ok(false) => {
                return Err(fail(
                    range.span().start,
                    format!(
                        "the template is version {have}, outside the accepted range {:?}",
                        range.get_ref()
                    ),
                ))
            }
            Err(e) => return Err(fail(range.span().start, format!("versions: {e}"))),
        },
        _ => {
            return Err(fail(
                tref.path.span().start,
                "[template] needs exactly one of `version` (one version) or `versions` (a range)"
                    .into(),
            ))
        }
    }
    Ok(())
}

fn allowed(gov: &GovernanceSection, what: &str) -> bool {
    gov.allow.iter().any(|a| a.get_ref() == what)
}

/// Where the `allow` rule is set (or the governance name, without one).
fn allow_span(gov: &GovernanceSection) -> Range<usize> {
    gov.allow
        .first()
        .map(|a| a.span())
        .unwrap_or_else(|| gov.name.span())
}

/// Every key the team writes must be one the template lets it write.
fn check_keys(team_copy: &str, team_start: usize, gov: &GovernanceSection, p: &mut Problems) {
    let Ok(keys) = toml::from_str::<std::collections::BTreeMap<String, IgnoredAny>>(team_copy)
    else {
        return;
    };
    let team_text = &team_copy[team_start..];
    let key_at = |key: &str| -> usize {
        // The line that opens the table or sets the key.
        let mut offset = team_start;
        for line in team_text.split_inclusive('\n') {
            let t = line.trim_start_matches('[').trim_start();
            let rest = t.strip_prefix(key).unwrap_or("-");
            if rest.starts_with([']', '.', '=', ' ']) {
                return offset;
            }
            offset += line.len();
        }
        team_start
    };
    let mut may = vec!["template", "image"];
    for a in ["images", "models", "services", "overlays"] {
        if allowed(gov, a) {
            may.push(a);
        }
    }
    if allowed(gov, "ingress") || allowed(gov, "egress") {
        may.push("network");
    }
    for key in keys.keys() {
        if !may.contains(&key.as_str()) {
            p.rule(
                key_at(key),
                "fixed",
                allow_span(gov),
                format!(
                    "`{key}` is fixed by the template; a team recipe may set only {}",
                    may.join(", ")
                ),
            );
        }
    }
    #[derive(Deserialize)]
    struct NetKeys {
        network: Option<std::collections::BTreeMap<String, IgnoredAny>>,
    }
    if let Ok(NetKeys { network: Some(n) }) = toml::from_str::<NetKeys>(team_copy) {
        for key in n.keys() {
            if !(["ingress", "egress"].contains(&key.as_str()) && allowed(gov, key)) {
                let at = team_text
                    .find(&format!("\n{key}"))
                    .map(|i| team_start + i + 1)
                    .unwrap_or_else(|| key_at("network"));
                p.rule(
                    at,
                    "fixed",
                    allow_span(gov),
                    format!("[network] `{key}` is fixed by the template"),
                );
            }
        }
    }
}

/// The count, ingress, egress, service and image rules.
fn check_rules(t: &TeamFile, gov: &GovernanceSection, p: &mut Problems) {
    let count =
        |p: &mut Problems, n: &Option<Spanned<u64>>, names: Vec<Range<usize>>, what: &str| {
            if let Some(max) = n {
                for at in names.iter().skip(*max.get_ref() as usize) {
                    p.rule(
                        at.start,
                        &format!("max_{what}"),
                        max.span(),
                        format!("a team recipe may add at most {} {what}", max.get_ref()),
                    );
                }
            }
        };
    count(
        p,
        &gov.max_images,
        t.images.iter().map(|i| i.name.span()).collect(),
        "images",
    );
    count(
        p,
        &gov.max_models,
        t.models.iter().map(|i| i.name.span()).collect(),
        "models",
    );
    count(
        p,
        &gov.max_services,
        t.services.iter().map(|i| i.name.span()).collect(),
        "services",
    );

    if let Some(n) = &t.network {
        if let Some(range) = &gov.ingress_ports {
            let bounds = range.get_ref().split_once('-').and_then(|(a, b)| {
                Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?))
            });
            for i in &n.ingress {
                let port = crate::recipe::network::parse_ingress(i.get_ref()).map(|r| r.port);
                match (bounds, port) {
                    (Some((lo, hi)), Ok(port)) if port < lo || port > hi => p.rule(
                        i.span().start,
                        "ingress_ports",
                        range.span(),
                        format!("ingress port {port} is outside {lo}-{hi}"),
                    ),
                    (None, _) => p.rule(
                        i.span().start,
                        "ingress_ports",
                        range.span(),
                        format!("the template's range {:?} is not LOW-HIGH", range.get_ref()),
                    ),
                    _ => {}
                }
            }
        }
        for e in &n.egress {
            let rule = e.get_ref().as_str().unwrap_or("");
            if !gov.egress.iter().any(|g| g.get_ref() == rule) {
                let set = gov
                    .egress
                    .first()
                    .map(|g| g.span())
                    .unwrap_or(allow_span(gov));
                let allowed: Vec<&str> = gov.egress.iter().map(|g| g.get_ref().as_str()).collect();
                p.rule(
                    e.span().start,
                    "egress",
                    set,
                    format!(
                        "egress {} is not in the template's set [{}]; write one of those rules as it is",
                        e.get_ref(),
                        allowed.join(", ")
                    ),
                );
            }
        }
    }

    for s in &t.services {
        let name = s.name.get_ref();
        if s.host_network && !gov.host_network.as_ref().is_some_and(|h| *h.get_ref()) {
            let set = gov
                .host_network
                .as_ref()
                .map(|h| h.span())
                .unwrap_or(gov.name.span());
            p.rule(
                s.name.span().start,
                "host_network",
                set,
                format!(
                    "service {name:?} asks for the host's network; the template does not allow it"
                ),
            );
        }
        for c in &s.capabilities {
            if !gov.capabilities.iter().any(|g| g.get_ref() == c.get_ref()) {
                let set = gov
                    .capabilities
                    .first()
                    .map(|g| g.span())
                    .unwrap_or(gov.name.span());
                p.rule(
                    c.span().start,
                    "capabilities",
                    set,
                    format!(
                        "service {name:?} keeps {}, which the template does not allow",
                        c.get_ref()
                    ),
                );
            }
        }
        if let Some(max) = &gov.max_memory {
            let cap = crate::recipe::parse_size(max.get_ref()).unwrap_or(0);
            match &s.memory {
                None => p.rule(
                    s.name.span().start,
                    "max_memory",
                    max.span(),
                    format!(
                        "service {name:?} must set `memory` (at most {})",
                        max.get_ref()
                    ),
                ),
                Some(m) if crate::recipe::parse_size(m.get_ref()).is_some_and(|v| v > cap) => p
                    .rule(
                        m.span().start,
                        "max_memory",
                        max.span(),
                        format!(
                            "service {name:?} memory {} is above {}",
                            m.get_ref(),
                            max.get_ref()
                        ),
                    ),
                _ => {}
            }
        }
        if let Some(max) = &gov.max_cpus {
            match &s.cpus {
                None => p.rule(
                    s.name.span().start,
                    "max_cpus",
                    max.span(),
                    format!(
                        "service {name:?} must set `cpus` (at most {})",
                        max.get_ref()
                    ),
                ),
                Some(c) if *c.get_ref() > *max.get_ref() => p.rule(
                    c.span().start,
                    "max_cpus",
                    max.span(),
                    format!(
                        "service {name:?} cpus {} is above {}",
                        c.get_ref(),
                        max.get_ref()
                    ),
                ),
                _ => {}
            }
        }
    }

    for i in &t.images {
        let (kind, a_kind) = if i.build.is_some() {
            ("build", "a build")
        } else {
            ("archive", "an archive")
        };
        if let Some(sources) = &gov.image_sources {
            if !sources.iter().any(|s| s.get_ref() == kind) {
                let set = sources.first().map(|s| s.span()).unwrap_or(gov.name.span());
                p.rule(
                    i.name.span().start,
                    "image_sources",
                    set,
                    format!(
                        "image {:?} is {a_kind} image, which the template does not allow",
                        i.name.get_ref()
                    ),
                );
            }
        }
        if let (Some(prefixes), Some(archive)) = (&gov.archive_urls, &i.archive) {
            if !prefixes
                .iter()
                .any(|p| archive.get_ref().starts_with(p.get_ref().as_str()))
            {
                let set = prefixes
                    .first()
                    .map(|s| s.span())
                    .unwrap_or(gov.name.span());
                p.rule(
                    archive.span().start,
                    "archive_urls",
                    set,
                    format!(
                        "archive {:?} is not from a source the template allows",
                        archive.get_ref()
                    ),
                );
            }
        }
    }
}

/// Model and archive sizes (the files are known after validation).
fn check_sizes(r: &Recipe, team: &TeamNames, gov: &GovernanceSection, p: &mut Problems) {
    if let Some(max) = &gov.max_archive_size {
        let cap = crate::recipe::parse_size(max.get_ref()).unwrap_or(0);
        for i in r
            .workloads
            .images
            .iter()
            .filter(|i| team.images.contains(&i.name))
        {
            let crate::recipe::workloads::ImageSource::Archive(path) = &i.source else {
                continue;
            };
            // URL archives land in the cache later; `[limits]` caps them.
            if path.starts_with(&p.src.env.cache_root) {
                continue;
            }
            let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            if size > cap {
                p.rule(
                    name_offset(p.src, "images", &i.name),
                    "max_archive_size",
                    max.span(),
                    format!(
                        "image {:?}'s archive is {size} bytes, above {}",
                        i.name,
                        max.get_ref()
                    ),
                );
            }
        }
    }
    let team_models = &team.models;
    let Some(max) = &gov.max_model_size else {
        return;
    };
    let cap = crate::recipe::parse_size(max.get_ref()).unwrap_or(0);
    for m in r
        .workloads
        .models
        .iter()
        .filter(|m| team_models.contains(&m.name))
    {
        let size: u64 = walkdir::WalkDir::new(&m.path)
            .into_iter()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .filter(|md| md.is_file())
            .map(|md| md.len())
            .sum();
        if size > cap {
            let offset = name_offset(p.src, "models", &m.name);
            p.rule(
                offset,
                "max_model_size",
                max.span(),
                format!(
                    "model {:?} is {size} bytes, above {}",
                    m.name,
                    max.get_ref()
                ),
            );
        }
    }
}

/// The offset of `name = "NAME"` in the team's part, for problems found
/// after validation (which keeps paths, not spans).
fn name_offset(src: &RecipeSource, _table: &str, name: &str) -> usize {
    let start = src.merged.as_ref().map(|m| m.team_start).unwrap_or(0);
    src.text[start..]
        .find(&format!("\"{name}\""))
        .map(|i| start + i)
        .unwrap_or(start)
}

/// A team overlay may write only under the template's `overlay_paths`.
fn check_overlays(
    resolved: &[PathBuf],
    spans: &[Spanned<String>],
    gov: &GovernanceSection,
    p: &mut Problems,
) {
    let prefixes: Vec<String> = gov
        .overlay_paths
        .iter()
        .map(|s| s.get_ref().trim_end_matches('/').to_string())
        .collect();
    let set = gov
        .overlay_paths
        .first()
        .map(|s| s.span())
        .unwrap_or(allow_span(gov));
    for (dir, span) in resolved.iter().zip(spans) {
        let mut walk = walkdir::WalkDir::new(dir)
            .sort_by_file_name()
            .min_depth(1)
            .into_iter();
        while let Some(Ok(e)) = walk.next() {
            let Ok(rel) = e.path().strip_prefix(dir) else {
                continue;
            };
            let image_path = format!("/{}", rel.display());
            let under = prefixes
                .iter()
                .any(|pre| image_path == *pre || image_path.starts_with(&format!("{pre}/")));
            let above = e.file_type().is_dir()
                && prefixes
                    .iter()
                    .any(|pre| pre.starts_with(&format!("{image_path}/")));
            // A link under an allowed path must point under one too: a
            // later overlay writing through it would land where the link
            // points (the tree resolves links as the image would).
            let escapes = under
                && e.path_is_symlink()
                && std::fs::read_link(e.path()).is_ok_and(|t| {
                    let target = lexical_image_path(&image_path, &t);
                    !prefixes
                        .iter()
                        .any(|pre| target == *pre || target.starts_with(&format!("{pre}/")))
                });
            if escapes {
                p.rule(
                    span.span().start,
                    "overlay_paths",
                    set.clone(),
                    format!(
                        "overlay {:?} holds a link {image_path} pointing outside the paths the template lets a team write ({}); make it a file or point it inside",
                        span.get_ref(),
                        prefixes.join(", ")
                    ),
                );
            }
            if !under && !above {
                p.rule(
                    span.span().start,
                    "overlay_paths",
                    set.clone(),
                    format!(
                        "overlay {:?} writes {image_path}, outside the paths the template lets a team write ({})",
                        span.get_ref(),
                        if prefixes.is_empty() { "none".to_string() } else { prefixes.join(", ") }
                    ),
                );
                if e.file_type().is_dir() {
                    // One problem per refused folder, not one per file in it.
                    walk.skip_current_dir();
                }
            }
        }
    }
}

/// Where a link at `link` (an image path) pointing to `target` lands,
/// lexically: relative targets from the link's folder, `.` and `..`
/// folded (never above `/`).
fn lexical_image_path(link: &str, target: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    if target.is_relative() {
        parts.extend(
            Path::new(link)
                .parent()
                .into_iter()
                .flat_map(|p| p.components())
                .filter_map(|c| match c {
                    std::path::Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
                    _ => None,
                }),
        );
    }
    for c in target.components() {
        match c {
            std::path::Component::Normal(n) => parts.push(n.to_string_lossy().into_owned()),
            std::path::Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    format!("/{}", parts.join("/"))
}
