//! `cairn verify --template-key` through the command line, on signed
//! release folders whose manifests say what a build of each recipe records
//! (the recipe loaded by cairn itself, as `cairn build` loads it):
//!
//! - the example team release (recipes/team-ai.toml on the signed
//!   recipes/platform-ai.toml) passes with keys/platform-example.pub (the
//!   control of every refusal below);
//! - the same recipe built without the template (template and team recipe
//!   written out as one plain recipe) is refused: no template recorded;
//! - that plain release with its manifest edited to claim the template
//!   (the record copied from the team release) and signed again with the
//!   release key is refused: its recipe digest is not template + team;
//! - a release built on another platform's template (its own key) is
//!   refused with keys/platform-example.pub, and passes with its own key.
//!
//! The boot test (qemu-tests, boot::template) runs the same check on a
//! real built team-ai release.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn::host::digest::Sha256;
use common::mini::{self, mini, Media, Mini, Run};

const LIMIT: Duration = Duration::from_secs(60);

fn ws() -> PathBuf {
    std::fs::canonicalize(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).unwrap()
}

fn platform_key() -> PathBuf {
    ws().join("keys/platform-example.pub")
}

/// A recipe loaded as `cairn build` loads it (template signature checked).
fn load(path: &Path, root: &Path) -> cairn::recipe::Recipe {
    let env = cairn::recipe::LoadEnv {
        cache_root: root.join("unused-cache"),
        source_date_epoch: None,
        verify_signature: Some(cairn::release::template::verify_signature),
    };
    cairn::recipe::load(path, Some(root), &env).unwrap_or_else(|e| panic!("{e}"))
}

/// A signed release whose manifest records what a build of `r` records
/// for the template check: recipe digest, flags, services, network and
/// the template.
fn release_of(r: &cairn::recipe::Recipe) -> Mini {
    let mut m = mini(Media::None);
    m.manifest["recipe"]["sha256"] = r.recipe_sha256.hex().into();
    m.manifest["flags"]["debug_console"] = r.debug_console.into();
    m.manifest["flags"]["state_mode"] = r.state_mode.as_str().into();
    m.manifest["services"] = serde_json::to_value(cairn::release::manifest::service_infos(
        &r.workloads.services,
    ))
    .unwrap();
    m.manifest["network"] = serde_json::to_value(&r.network).unwrap();
    m.manifest["template"] = serde_json::to_value(&r.template).unwrap();
    m.write_manifest();
    m.sign();
    m
}

fn verify(m: &Mini, template_key: &Path) -> Run {
    mini::cairn(
        &[
            OsStr::new("verify"),
            m.dir.as_os_str(),
            OsStr::new("--pubkey"),
            m.pubkey.as_os_str(),
            OsStr::new("--template-key"),
            template_key.as_os_str(),
        ],
        LIMIT,
    )
}

fn refused(r: &Run, want: &str) {
    assert_eq!(r.code, 1, "{r:?}");
    let first = r.first_line();
    println!("exit {}: {first}", r.code);
    assert!(first.starts_with("FAILED template: "), "{r:?}");
    assert!(first.contains(want), "want {want:?}: {r:?}");
}

/// The example team recipe, and the same recipe written out as one plain
/// recipe (template text without `[governance]`, then the team's tables
/// without `[template]`), beside the template so its paths resolve.
fn team_and_plain() -> (cairn::recipe::Recipe, String) {
    let ws = ws();
    let team = load(&ws.join("recipes/team-ai.toml"), &ws);
    let t = team
        .template
        .clone()
        .expect("the team recipe names its template");
    let template = &t.text[..t.text.find("[governance]").unwrap()];
    let body = &t.team[t.team.find("[image]").unwrap()..];
    // The template's [image] table gives way to the team's.
    let start = template.find("[image]").unwrap();
    let end = start + template[start..].find("\n\n").unwrap();
    // The team's ingress port joins the template's (one [network] table).
    let template = format!("{}{}", &template[..start], &template[end..]).replace(
        "ingress = [\"8080/tcp\"]",
        "ingress = [\"8080/tcp\", \"8081/tcp\"]",
    );
    let body = body.replace("[network]\ningress = [\"8081/tcp\"]\n", "");
    let plain = format!("{template}\n{body}");
    (team, plain)
}

#[test]
fn a_team_release_passes_and_the_same_recipe_without_the_template_is_refused() {
    let (team, plain_text) = team_and_plain();
    let good = release_of(&team);
    let r = verify(&good, &platform_key());
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with("OK "), "{r:?}");
    let key_id = team.template.as_ref().unwrap().key_id.clone();
    assert!(
        r.stdout.contains(&format!(
            "template: template platform-ai 1.0 signed by key {key_id}"
        )),
        "{r:?}"
    );

    // The same recipe, plain: it builds the same services and models. It
    // sits under target/ (three folders below the workspace), its paths
    // rewritten to reach the same files.
    let d = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let plain_text = plain_text
        .replace("\"../overlays/", "\"../../../overlays/")
        .replace("\"field-ai/", "\"../../../recipes/field-ai/");
    let plain_path = d.path().join("plain.toml");
    std::fs::write(&plain_path, &plain_text).unwrap();
    let plain = load(&plain_path, &ws());
    assert!(plain.template.is_none());
    assert_eq!(plain.workloads.services.len(), 2);
    assert_eq!(plain.workloads.models.len(), 2);
    let bare = release_of(&plain);
    refused(&verify(&bare, &platform_key()), "not built from a template");
    // Control: without --template-key that release verifies.
    let r = mini::cairn(
        &[
            OsStr::new("verify"),
            bare.dir.as_os_str(),
            OsStr::new("--pubkey"),
            bare.pubkey.as_os_str(),
        ],
        LIMIT,
    );
    assert_eq!(r.code, 0, "{r:?}");

    // Its manifest edited to claim the template, signed again by the
    // release key's holder.
    let mut claimed = bare;
    claimed.manifest["template"] = serde_json::to_value(&team.template).unwrap();
    claimed.write_manifest();
    claimed.sign();
    refused(
        &verify(&claimed, &platform_key()),
        "the release was not built from them",
    );
}

const OTHER_TEMPLATE: &str =
    "[image]\nname = \"other\"\nversion = \"1\"\n\n[base.debian]\npackages = [\"nftables\"]\n\n\
[cluster]\nruntime = \"containerd\"\n\n[governance]\nname = \"platform-ai\"\nversion = \"1.0\"\n\
allow = [\"images\", \"services\"]\nmax_cpus = 1.0\nmax_memory = \"512M\"\n";

#[test]
fn a_release_on_another_platforms_template_is_refused() {
    // Another platform's template, even under the same name and version,
    // signed with that platform's own key.
    let d = tempfile::tempdir().unwrap();
    let dir = std::fs::canonicalize(d.path()).unwrap();
    std::fs::write(dir.join("platform.toml"), OTHER_TEMPLATE).unwrap();
    let key = cairn::release::signify::generate();
    let other_pub = dir.join("other.pub");
    std::fs::write(&other_pub, key.public().to_file_text("other platform")).unwrap();
    cairn::release::template::sign(&dir.join("platform.toml"), &key, "other.pub").unwrap();
    let sha = Sha256::of_file(&dir.join("platform.toml")).unwrap();
    std::fs::write(
        dir.join("team.toml"),
        format!(
            "[template]\npath = \"platform.toml\"\nsha256 = \"{}\"\nkey = \"other.pub\"\nversion = \"1.0\"\n\n\
             [image]\nname = \"team-ai\"\nversion = \"0.1.0\"\n\n[[images]]\nname = \"web\"\n[images.build]\n\
             packages = [\"python3\"]\n\n[[services]]\nname = \"web\"\nimage = \"web\"\nmemory = \"256M\"\ncpus = 0.5\n",
            sha.hex()
        ),
    )
    .unwrap();
    let r = load(&dir.join("team.toml"), &dir);
    let m = release_of(&r);
    refused(&verify(&m, &platform_key()), "platform-ai 1.0");
    // Control: with its own platform's key it passes.
    let ok = verify(&m, &other_pub);
    assert_eq!(ok.code, 0, "{ok:?}");
}
