//! Governed templates: each rule refuses a team recipe that breaks it
//! (file:line:col, the rule named, the template line that set it) and
//! lets the same recipe through within it; signatures, pins and versions.

use std::path::PathBuf;

use crate::recipe::{parse, LoadEnv, Recipe, RecipeError, RecipeSource};
use crate::release::signify::{self, SecretKey};

const TEMPLATE: &str = r#"[image]
name = "platform"
version = "1"

[base.debian]
packages = ["nftables"]

[cluster]
runtime = "containerd"

[governance]
name = "field-platform"
version = "1.2"
allow = ["images", "models", "services", "ingress", "egress", "overlays"]
ingress_ports = "8000-8999"
max_images = 2
max_models = 2
max_services = 2
max_model_size = "1K"
max_memory = "512M"
max_cpus = 1.0
capabilities = ["CAP_NET_BIND_SERVICE"]
host_network = false
image_sources = ["build"]
egress = ["10.0.0.0/8:443"]
overlay_paths = ["/opt/team"]
"#;

/// The team's part after `[template]`: one image, model and service, all
/// within the rules.
const TEAM: &str = r#"
[image]
name = "team"
version = "0.1"

[network]
ingress = ["8080/tcp"]

[[images]]
name = "web"
[images.build]
packages = ["python3"]

[[models]]
name = "small"
path = "model.bin"
sha256 = "@MODEL@"

[[services]]
name = "web"
image = "web"
memory = "256M"
cpus = 0.5
models = ["small"]
"#;

struct Fixture {
    dir: tempfile::TempDir,
    key: SecretKey,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let key = signify::generate();
        std::fs::write(dir.path().join("model.bin"), b"weights").unwrap();
        let f = Fixture { dir, key };
        f.template(TEMPLATE);
        f
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes and signs the template, and the platform's public key.
    fn template(&self, text: &str) {
        std::fs::write(self.path("platform.toml"), text).unwrap();
        std::fs::write(
            self.path("platform.pub"),
            self.key.public().to_file_text("platform public key"),
        )
        .unwrap();
        super::sign(&self.path("platform.toml"), &self.key, "platform.pub").unwrap();
    }

    /// A team recipe: its `[template]` table pinning the template as it is
    /// now, then `body`.
    fn team(&self, body: &str) -> String {
        self.team_with("", body)
    }

    /// As `team`, with top-level keys `top` before `[template]`.
    fn team_with(&self, top: &str, body: &str) -> String {
        let sha = crate::host::digest::Sha256::of_file(&self.path("platform.toml")).unwrap();
        let model = crate::host::digest::Sha256::of_file(&self.path("model.bin")).unwrap();
        format!(
            "{top}[template]\npath = \"platform.toml\"\nsha256 = \"{}\"\nkey = \"platform.pub\"\nversion = \"1.2\"\n{}",
            sha.hex(),
            body.replace("@MODEL@", &model.hex())
        )
    }

    fn load(&self, text: &str) -> Result<Recipe, RecipeError> {
        let path = self.path("team.toml");
        std::fs::write(&path, text).unwrap();
        let root = std::fs::canonicalize(self.dir.path()).unwrap();
        parse(&RecipeSource {
            path,
            text: text.into(),
            root: root.clone(),
            env: LoadEnv {
                cache_root: root.join("cache"),
                source_date_epoch: None,
                verify_signature: Some(super::verify_signature),
            },
            merged: None,
        })
    }

    /// Refused: exactly the problems' (line, rule) pairs, each in team.toml.
    fn refused(&self, text: &str, want: &[(usize, &str)]) -> RecipeError {
        let e = self.load(text).expect_err("want a refusal");
        let got: Vec<(usize, String)> = e
            .problems
            .iter()
            .map(|p| {
                assert_eq!(p.file, self.path("team.toml"), "{e}");
                (p.line, p.message.clone())
            })
            .collect();
        assert_eq!(got.len(), want.len(), "{e}");
        for ((line, msg), (want_line, rule)) in got.iter().zip(want) {
            assert_eq!(line, want_line, "{e}");
            assert!(msg.contains(&format!("template rule `{rule}`")), "{e}");
            // The template line that set it.
            assert!(msg.contains("platform.toml:"), "{e}");
        }
        e
    }
}

fn line_of(text: &str, needle: &str) -> usize {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle} in {text}"));
    text[..at].matches('\n').count() + 1
}

#[test]
fn a_team_recipe_within_the_rules_loads_and_names_its_template() {
    let f = Fixture::new();
    let r = f.load(&f.team(TEAM)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.stem(), "team-0.1");
    assert_eq!(r.workloads.services.len(), 1);
    let t = r.template.expect("template recorded");
    assert_eq!(
        (t.name.as_str(), t.version.as_str()),
        ("field-platform", "1.2")
    );
    assert_eq!(t.key_id, f.key.public().key_id());
    // The template's base and runtime are the image's.
    assert!(matches!(r.base, crate::recipe::Base::Debian { .. }));
}

#[test]
fn every_violation_is_reported_at_once_with_line_and_column() {
    let f = Fixture::new();
    let text = f.team(&format!(
        "{TEAM}\n[debug]\nconsole = true\n[state]\nmode = \"ram\"\n"
    ));
    let text = text.replace("cpus = 0.5", "cpus = 2.0");
    let e = f.refused(
        &text,
        &[
            (line_of(&text, "cpus = 2.0"), "max_cpus"),
            (line_of(&text, "[debug]"), "fixed"),
            (line_of(&text, "[state]"), "fixed"),
        ],
    );
    let p = &e.problems[0];
    assert_eq!(p.col, 8, "{e}");
    // The rule's own line in the template.
    let set = format!("platform.toml:{}:", line_of(TEMPLATE, "max_cpus ="));
    assert!(p.message.contains(&set), "{e}");
}

#[test]
fn fixed_values_cannot_be_set_by_the_team() {
    let f = Fixture::new();
    for table in [
        "[base.debian]\npackages = [\"curl\"]\n",
        "[kernel]\npackage = \"linux-image-rt-amd64\"\n",
        "[boot]\nallow_unsigned = true\n",
        "[policy]\nbundle = \"p\"\n",
        "[cluster]\nruntime = \"k3s\"\n",
    ] {
        let text = f.team(&format!("{TEAM}{table}"));
        let first = table.lines().next().unwrap();
        f.refused(&text, &[(line_of(&text, first), "fixed")]);
    }
    // [network] beyond ingress and egress is the template's.
    let text = f.team(&TEAM.replace(
        "ingress = [\"8080/tcp\"]",
        "ingress = [\"8080/tcp\"]\naddress = \"10.0.2.15/24\"",
    ));
    f.refused(&text, &[(line_of(&text, "address"), "fixed")]);
}

#[test]
fn a_table_the_template_does_not_allow_is_fixed() {
    let f = Fixture::new();
    f.template(&TEMPLATE.replace(
        "allow = [\"images\", \"models\", \"services\", \"ingress\", \"egress\", \"overlays\"]",
        "allow = [\"images\", \"services\", \"ingress\"]",
    ));
    let text = f.team(&TEAM.replace("models = [\"small\"]\n", ""));
    f.refused(&text, &[(line_of(&text, "[[models]]"), "fixed")]);
    // Control: without the model, it loads.
    let no_model = text.replace(
        &text[text.find("[[models]]").unwrap()..text.find("[[services]]").unwrap()],
        "",
    );
    f.load(&no_model).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn ingress_ports_outside_the_range_are_refused() {
    let f = Fixture::new();
    let text = f.team(&TEAM.replace("8080/tcp", "22/tcp"));
    f.refused(&text, &[(line_of(&text, "22/tcp"), "ingress_ports")]);
    let text = f.team(&TEAM.replace("8080/tcp", "8999/tcp"));
    f.load(&text).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn egress_only_inside_the_templates_set() {
    let f = Fixture::new();
    let add = |rule: &str| {
        f.team(&TEAM.replace(
            "ingress = [\"8080/tcp\"]",
            &format!("ingress = [\"8080/tcp\"]\negress = [\"{rule}\"]"),
        ))
    };
    let text = add("192.168.1.0/24:443");
    f.refused(&text, &[(line_of(&text, "egress"), "egress")]);
    f.load(&add("10.0.0.0/8:443"))
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn counts_are_capped() {
    let f = Fixture::new();
    let extra = "\n[[services]]\nname = \"b\"\nimage = \"web\"\nmemory = \"16M\"\ncpus = 0.1\n\
                 \n[[services]]\nname = \"c\"\nimage = \"web\"\nmemory = \"16M\"\ncpus = 0.1\n";
    let text = f.team(&format!("{TEAM}{extra}"));
    f.refused(&text, &[(line_of(&text, "name = \"c\""), "max_services")]);
    let two = extra.split("\n\n").next().unwrap();
    f.load(&f.team(&format!("{TEAM}{two}\n")))
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn memory_ceiling_and_missing_memory() {
    let f = Fixture::new();
    let text = f.team(&TEAM.replace("256M", "1G"));
    f.refused(&text, &[(line_of(&text, "memory = \"1G\""), "max_memory")]);
    let text = f.team(&TEAM.replace("memory = \"256M\"\n", ""));
    f.refused(
        &text,
        &[(line_of(&text, "name = \"web\"\nimage"), "max_memory")],
    );
}

#[test]
fn capabilities_and_host_network_need_the_template() {
    let f = Fixture::new();
    let text = f.team(&TEAM.replace(
        "cpus = 0.5",
        "cpus = 0.5\ncapabilities = [\"CAP_SYS_ADMIN\"]",
    ));
    f.refused(&text, &[(line_of(&text, "capabilities"), "capabilities")]);
    let ok = f.team(&TEAM.replace(
        "cpus = 0.5",
        "cpus = 0.5\ncapabilities = [\"CAP_NET_BIND_SERVICE\"]",
    ));
    f.load(&ok).unwrap_or_else(|e| panic!("{e}"));

    let text = f.team(&TEAM.replace("cpus = 0.5", "cpus = 0.5\nhost_network = true"));
    f.refused(
        &text,
        &[(line_of(&text, "name = \"web\"\nimage"), "host_network")],
    );
    f.template(&TEMPLATE.replace("host_network = false", "host_network = true"));
    let text = f.team(&TEAM.replace("cpus = 0.5", "cpus = 0.5\nhost_network = true"));
    f.load(&text).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn image_sources_are_the_templates() {
    let f = Fixture::new();
    let archive = "[[images]]\nname = \"web\"\narchive = \"https://example.org/web.tar\"\n\
                   digest = \"sha256:@D@\"\narchive_sha256 = \"@D@\"\n";
    let team = TEAM.replace(
        "[[images]]\nname = \"web\"\n[images.build]\npackages = [\"python3\"]\n",
        &archive.replace("@D@", &"ab".repeat(32)),
    );
    let text = f.team(&team);
    f.refused(
        &text,
        &[(line_of(&text, "name = \"web\"\narchive"), "image_sources")],
    );
    f.template(&TEMPLATE.replace(
        "image_sources = [\"build\"]",
        "image_sources = [\"build\", \"archive\"]\narchive_urls = [\"https://registry.example.org/\"]",
    ));
    let text = f.team(&team);
    f.refused(&text, &[(line_of(&text, "archive = "), "archive_urls")]);
    let text = f.team(&team.replace("example.org", "registry.example.org"));
    f.load(&text).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn model_size_is_capped() {
    let f = Fixture::new();
    std::fs::write(f.path("model.bin"), vec![7u8; 2048]).unwrap();
    let text = f.team(TEAM);
    f.refused(
        &text,
        &[(line_of(&text, "name = \"small\""), "max_model_size")],
    );
    std::fs::write(f.path("model.bin"), vec![7u8; 1024]).unwrap();
    f.load(&f.team(TEAM)).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn an_overlay_may_not_write_the_templates_files() {
    let f = Fixture::new();
    let ov = f.path("ov");
    std::fs::create_dir_all(ov.join("opt/team")).unwrap();
    std::fs::write(ov.join("opt/team/app.conf"), b"x").unwrap();
    let text = f.team_with("overlays = [\"ov\"]\n", TEAM);
    f.load(&text).unwrap_or_else(|e| panic!("{e}"));
    // The second path to the firewall: refused.
    std::fs::create_dir_all(ov.join("etc/nftables.d")).unwrap();
    std::fs::write(ov.join("etc/nftables.d/open.nft"), b"flush ruleset").unwrap();
    let e = f.refused(&text, &[(1, "overlay_paths")]);
    assert!(e.problems[0].message.contains("/etc"), "{e}");
}

/// The second path to the firewall through a link: a team overlay puts a
/// link under the allowed path that points at `/etc`, and a later overlay
/// writes "under the allowed path" through it. The tree would get the
/// file in `/etc` (shown with the overlay writer itself); the recipe is
/// refused. A link that stays inside loads (the control).
#[test]
fn an_overlay_link_may_not_lead_out_of_the_allowed_paths() {
    let f = Fixture::new();
    let (a, b) = (f.path("ov1"), f.path("ov2"));
    std::fs::create_dir_all(a.join("opt/team")).unwrap();
    std::fs::create_dir_all(b.join("opt/team/etc/nftables.d")).unwrap();
    std::fs::write(b.join("opt/team/etc/nftables.d/open.nft"), b"flush ruleset").unwrap();
    let text = f.team_with("overlays = [\"ov1\", \"ov2\"]\n", TEAM);
    for target in ["/etc", "../../etc", "/opt/team/../../etc"] {
        let link = a.join("opt/team/etc");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link).unwrap();
        let tree = f.path("tree");
        let _ = std::fs::remove_dir_all(&tree);
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        for ov in [&a, &b] {
            crate::host::tree::apply_overlay(ov, &tree).unwrap();
        }
        assert!(
            tree.join("etc/nftables.d/open.nft").is_file(),
            "{target}: the attack does not reach /etc, so this test shows nothing"
        );
        let e = f.refused(&text, &[(1, "overlay_paths")]);
        assert!(
            e.problems[0]
                .message
                .contains("holds a link /opt/team/etc pointing outside"),
            "{e}"
        );
    }
    // Control: a link that stays under /opt/team.
    let link = a.join("opt/team/etc");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("conf", &link).unwrap();
    f.load(&text).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn image_and_model_counts_are_capped() {
    let f = Fixture::new();
    let images = "\n[[images]]\nname = \"b\"\n[images.build]\npackages = [\"curl\"]\n\
                  \n[[images]]\nname = \"c\"\n[images.build]\npackages = [\"curl\"]\n";
    let text = f.team(&format!("{TEAM}{images}"));
    f.refused(&text, &[(line_of(&text, "name = \"c\""), "max_images")]);
    let one = images.split("\n\n").next().unwrap();
    f.load(&f.team(&format!("{TEAM}{one}\n")))
        .unwrap_or_else(|e| panic!("{e}"));

    std::fs::write(f.path("b.bin"), b"b").unwrap();
    std::fs::write(f.path("c.bin"), b"c").unwrap();
    let model = |n: &str| {
        let d = crate::host::digest::Sha256::of_file(&f.path(&format!("{n}.bin"))).unwrap();
        format!(
            "\n[[models]]\nname = \"{n}\"\npath = \"{n}.bin\"\nsha256 = \"{}\"\n",
            d.hex()
        )
    };
    let text = f.team(&format!("{TEAM}{}{}", model("b"), model("c")));
    f.refused(&text, &[(line_of(&text, "name = \"c\""), "max_models")]);
    f.load(&f.team(&format!("{TEAM}{}", model("b"))))
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_local_archive_above_max_archive_size_is_refused() {
    let f = Fixture::new();
    f.template(&TEMPLATE.replace(
        "image_sources = [\"build\"]",
        "image_sources = [\"build\", \"archive\"]\nmax_archive_size = \"1K\"",
    ));
    let team = TEAM.replace(
        "[[images]]\nname = \"web\"\n[images.build]\npackages = [\"python3\"]\n",
        &format!(
            "[[images]]\nname = \"web\"\narchive = \"web.tar\"\ndigest = \"sha256:{}\"\n",
            "ab".repeat(32)
        ),
    );
    std::fs::write(f.path("web.tar"), vec![0u8; 2048]).unwrap();
    let text = f.team(&team);
    f.refused(
        &text,
        &[(line_of(&text, "\"web\"\narchive"), "max_archive_size")],
    );
    std::fs::write(f.path("web.tar"), vec![0u8; 1024]).unwrap();
    f.load(&text).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_changed_byte_a_bad_signature_or_another_key_is_refused() {
    let f = Fixture::new();
    let text = f.team(TEAM);
    f.load(&text).unwrap_or_else(|e| panic!("{e}"));

    // One byte changed after signing, pin updated: the signature fails.
    let changed = TEMPLATE.replace("max_cpus = 1.0", "max_cpus = 9.0");
    std::fs::write(f.path("platform.toml"), &changed).unwrap();
    let e = f.load(&f.team(TEAM)).unwrap_err();
    assert!(e.to_string().contains("does not verify"), "{e}");
    assert!(e.to_string().contains("team.toml:4:7"), "{e}");
    // The pin catches the change first when the recipe keeps its old pin.
    let e = f.load(&text).unwrap_err();
    assert!(e.to_string().contains("the template changed"), "{e}");

    // Signed by another platform's key.
    let other = signify::generate();
    f.template(TEMPLATE);
    super::sign(&f.path("platform.toml"), &other, "other.pub").unwrap();
    let e = f.load(&f.team(TEAM)).unwrap_err();
    assert!(e.to_string().contains("does not verify"), "{e}");

    // A garbled signature file.
    f.template(TEMPLATE);
    std::fs::write(f.path("platform.toml.sig"), "untrusted comment: x\nAAAA\n").unwrap();
    let e = f.load(&f.team(TEAM)).unwrap_err();
    assert!(e.to_string().contains("does not verify"), "{e}");
}

#[test]
fn versions_pin_or_range_and_a_tightened_rule_names_itself() {
    let f = Fixture::new();
    let team = f.team(TEAM);
    let e = f
        .load(&team.replace("version = \"1.2\"", "version = \"1.1\""))
        .unwrap_err();
    assert!(e.to_string().contains("wants 1.1"), "{e}");

    // A range accepts a newer signed template without a digest pin.
    let ranged = |t: &str| {
        let start = t.find("sha256 =").unwrap();
        let end = start + t[start..].find('\n').unwrap() + 1;
        format!("{}{}", &t[..start], &t[end..])
            .replace("version = \"1.2\"", "versions = \">=1.2, <2\"")
    };
    f.load(&ranged(&team)).unwrap_or_else(|e| panic!("{e}"));
    // Version 1.3 tightens max_memory: the old team recipe now fails, on the
    // new rule.
    f.template(
        &TEMPLATE
            .replace("version = \"1.2\"", "version = \"1.3\"")
            .replace("max_memory = \"512M\"", "max_memory = \"128M\""),
    );
    let text = ranged(&f.team(TEAM));
    f.refused(
        &text,
        &[(line_of(&text, "memory = \"256M\""), "max_memory")],
    );
    // Version 2 is outside the range.
    f.template(&TEMPLATE.replace("version = \"1.2\"", "version = \"2.0\""));
    let e = f.load(&ranged(&f.team(TEAM))).unwrap_err();
    assert!(e.to_string().contains("outside the accepted range"), "{e}");
}

#[test]
fn without_a_signature_check_a_team_recipe_is_refused() {
    let f = Fixture::new();
    let text = f.team(TEAM);
    let path = f.path("team.toml");
    std::fs::write(&path, &text).unwrap();
    let root = std::fs::canonicalize(f.dir.path()).unwrap();
    let e = parse(&RecipeSource {
        path,
        text,
        root: root.clone(),
        env: LoadEnv {
            cache_root: root.join("cache"),
            source_date_epoch: None,
            verify_signature: None,
        },
        merged: None,
    })
    .unwrap_err();
    assert!(
        e.to_string().contains("cannot check template signatures"),
        "{e}"
    );
}

/// A manifest as a build of `r` would record it (the parts the template
/// check reads), on a real manifest's other fields.
fn manifest_of(r: &Recipe) -> crate::release::manifest::Manifest {
    let text = include_str!("../../tests/fixtures/manifest-a.json");
    let mut m: crate::release::manifest::Manifest = serde_json::from_str(text).unwrap();
    m.recipe.sha256 = r.recipe_sha256;
    m.flags.debug_console = r.debug_console;
    m.flags.state_mode = r.state_mode.as_str().into();
    m.services = crate::release::manifest::service_infos(&r.workloads.services);
    m.network = r.network.clone();
    m.template = r.template.clone();
    m.sbom.models = r
        .workloads
        .models
        .iter()
        .map(|x| crate::pipeline::workloads::InstalledModel {
            name: x.name.clone(),
            sha256: x.sha256,
            path: format!("/usr/share/cairn/models/{}", x.name),
        })
        .collect();
    m.sbom.images = r
        .workloads
        .images
        .iter()
        .map(|i| crate::pipeline::workloads::InstalledImage {
            name: i.name.clone(),
            reference: format!("cairn.local/{}:1", i.name),
            digest: crate::host::digest::Sha256::of_bytes(i.name.as_bytes()),
            source: "build".into(),
        })
        .collect();
    m
}

#[test]
fn a_release_proves_its_template_and_keeps_its_rules() {
    let f = Fixture::new();
    let r = f.load(&f.team(TEAM)).unwrap_or_else(|e| panic!("{e}"));
    let key = f.key.public();
    let m = manifest_of(&r);
    let passed = super::check_release(&m, &key).unwrap_or_else(|e| panic!("{e}"));
    assert!(passed[0].contains("field-platform 1.2"), "{passed:?}");

    // Built from a plain recipe: no template in the manifest.
    let mut plain = manifest_of(&r);
    plain.template = None;
    let e = super::check_release(&plain, &key).unwrap_err();
    assert!(e.contains("not built from a template"), "{e}");

    // A plain build's manifest edited to claim the template (record copied
    // from a real team build): its recipe digest gives it away.
    let mut claimed = manifest_of(&r);
    claimed.recipe.sha256 = crate::host::digest::Sha256::of_bytes(b"[image]\nname = \"team\"\n");
    let e = super::check_release(&claimed, &key).unwrap_err();
    assert!(e.contains("not built from them"), "{e}");

    // Another platform's key.
    let other = signify::generate().public();
    let e = super::check_release(&m, &other).unwrap_err();
    assert!(e.contains("field-platform 1.2"), "{e}");

    // Contents re-checked, not trusted: a capability, a debug flag, a port.
    let mut caps = manifest_of(&r);
    caps.services[0].capabilities = vec!["CAP_SYS_ADMIN".into()];
    let e = super::check_release(&caps, &key).unwrap_err();
    assert!(e.contains("`capabilities`"), "{e}");
    let mut debug = manifest_of(&r);
    debug.flags.debug_console = true;
    let e = super::check_release(&debug, &key).unwrap_err();
    assert!(e.contains("`fixed`"), "{e}");
    // Ceilings (format 8 records them): above, or gone.
    let mut memory = manifest_of(&r);
    assert_eq!(memory.services[0].memory, Some(256 << 20));
    memory.services[0].memory = Some(1 << 30);
    let e = super::check_release(&memory, &key).unwrap_err();
    assert!(e.contains("`max_memory`"), "{e}");
    memory.services[0].memory = None;
    let e = super::check_release(&memory, &key).unwrap_err();
    assert!(e.contains("`max_memory`"), "{e}");
    let mut cpus = manifest_of(&r);
    cpus.services[0].cpus = Some(2.0);
    let e = super::check_release(&cpus, &key).unwrap_err();
    assert!(e.contains("`max_cpus`"), "{e}");
    let mut port = manifest_of(&r);
    port.network.ingress[0].port = 22;
    let e = super::check_release(&port, &key).unwrap_err();
    assert!(e.contains("`ingress_ports`"), "{e}");
    // Counts: a third team model, a third team image (the template allows
    // two of each).
    let mut models = manifest_of(&r);
    for n in ["b", "c"] {
        models
            .sbom
            .models
            .push(crate::pipeline::workloads::InstalledModel {
                name: n.into(),
                sha256: crate::host::digest::Sha256::of_bytes(n.as_bytes()),
                path: format!("/usr/share/cairn/models/{n}"),
            });
    }
    let e = super::check_release(&models, &key).unwrap_err();
    assert!(
        e.contains("3 team models, above 2 (template rule `max_models`)"),
        "{e}"
    );
    let mut images = manifest_of(&r);
    for n in ["b", "c"] {
        images
            .sbom
            .images
            .push(crate::pipeline::workloads::InstalledImage {
                name: n.into(),
                reference: format!("cairn.local/{n}:1"),
                digest: crate::host::digest::Sha256::of_bytes(n.as_bytes()),
                source: "build".into(),
            });
    }
    let e = super::check_release(&images, &key).unwrap_err();
    assert!(
        e.contains("3 team images, above 2 (template rule `max_images`)"),
        "{e}"
    );
}

#[test]
fn inspect_shows_the_template_and_the_teams_part() {
    let f = Fixture::new();
    let r = f.load(&f.team(TEAM)).unwrap_or_else(|e| panic!("{e}"));
    let d = tempfile::tempdir().unwrap();
    crate::release::manifest::write(&manifest_of(&r), &d.path().join("manifest.json")).unwrap();
    let text = crate::release::inspect::inspect(d.path())
        .unwrap()
        .render_text();
    assert!(
        text.contains("template     \"field-platform\" \"1.2\""),
        "{text}"
    );
    assert!(text.contains("  \"name = \\\"web\\\"\""), "{text}");
}

#[test]
fn cairn_new_writes_a_team_recipe_that_checks() {
    let f = Fixture::new();
    let team_dir = f.path("vision");
    let out = super::new_team_recipe(&f.path("platform.toml"), &f.path("platform.pub"), &team_dir)
        .unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("path = \"../platform.toml\""), "{text}");
    assert!(text.contains("# Services: at most 2"), "{text}");
    // It loads as it is (the template in a folder above: a wider root).
    let root = std::fs::canonicalize(f.dir.path()).unwrap();
    let r = parse(&RecipeSource {
        path: out.clone(),
        text: text.clone(),
        root: root.clone(),
        env: LoadEnv {
            cache_root: root.join("cache"),
            source_date_epoch: None,
            verify_signature: Some(super::verify_signature),
        },
        merged: None,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.name, "vision");
    // Never overwrites; refuses a template signed by another key.
    assert!(
        super::new_team_recipe(&f.path("platform.toml"), &f.path("platform.pub"), &team_dir)
            .is_err()
    );
    super::sign(&f.path("platform.toml"), &signify::generate(), "x.pub").unwrap();
    let e = super::new_team_recipe(
        &f.path("platform.toml"),
        &f.path("platform.pub"),
        &f.path("o"),
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("does not verify"), "{e:#}");
}

/// The example pair in recipes/ checks, and the example team recipe is
/// refused once it sets a fixed value (the control).
#[test]
fn the_example_team_recipe_checks() {
    let ws = std::fs::canonicalize(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).unwrap();
    let path = ws.join("recipes/team-ai.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let load = |text: &str| {
        parse(&RecipeSource {
            path: path.clone(),
            text: text.into(),
            root: ws.clone(),
            env: LoadEnv {
                cache_root: ws.join("target/unused-cache"),
                source_date_epoch: None,
                verify_signature: Some(super::verify_signature),
            },
            merged: None,
        })
    };
    let r = load(&text).unwrap_or_else(|e| panic!("{e}"));
    let t = r.template.as_ref().unwrap();
    assert_eq!(
        (t.name.as_str(), t.version.as_str()),
        ("platform-ai", "1.0")
    );
    assert_eq!(r.workloads.models.len(), 2);
    assert_eq!(r.workloads.services.len(), 2);
    let e = load(&format!("{text}\n[debug]\nconsole = true\n")).unwrap_err();
    assert!(e.to_string().contains("template rule `fixed`"), "{e}");
    // The team cannot replace the platform's own service, model or image
    // by reusing its name: each is listed twice.
    for (from, to, what) in [
        (
            "name = \"inference-team\"",
            "name = \"inference\"",
            "service \"inference\" is listed twice",
        ),
        (
            "name = \"iris-team\"",
            "name = \"iris\"",
            "model \"iris\" is listed twice",
        ),
    ] {
        let e = load(&text.replace(from, to)).unwrap_err();
        assert!(e.to_string().contains(what), "{e}");
        assert!(e.to_string().contains("team-ai.toml:"), "{e}");
    }
    let e = load(&format!(
        "{text}\n[[images]]\nname = \"inference\"\n[images.build]\npackages = [\"curl\"]\n"
    ))
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("image \"inference\" is listed twice"),
        "{e}"
    );
    // An image named to climb out of the images folder is refused.
    let e = load(&format!(
        "{text}\n[[images]]\nname = \"../../../etc\"\n[images.build]\npackages = [\"curl\"]\n"
    ))
    .unwrap_err();
    assert!(e.to_string().contains("../../../etc"), "{e}");
}
