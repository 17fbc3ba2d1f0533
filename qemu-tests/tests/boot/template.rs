//! Governed templates (#34): the example team recipe, recipes/team-ai.toml,
//! loaded through the same template signature check as `cairn build`
//! (`built` uses `cairn::cli::recipe_env`), built, and booted once. From
//! the host: the release's manifest names the template (name, version,
//! digest of the signed file, the platform key's id); `cairn verify
//! --template-key keys/platform-example.pub` passes on it and a wrong
//! platform key fails (the control); the node serves both models, the
//! platform's on 8080 and the team's on 8081, each through its own
//! service, and each answers a prediction from the model data pinned.

use std::time::Duration;

use cairn::host::digest::Sha256;
use cairn::vm::qemu::{BootSpec, Firmware, Vm};
use qemu_tests::*;

fn get(port: u16, path: &str) -> String {
    http_get_path(port, path, Duration::from_secs(30))
}

#[test]
fn team_ai_on_its_signed_template_serves_both_models_and_proves_its_template() {
    let b = built("recipes/team-ai.toml");
    let ws = workspace();
    let m = cairn::release::manifest::read(&b.dir.join("manifest.json")).expect("manifest");

    // The manifest names the template as signed, and the team recipe.
    let t = m
        .template
        .as_ref()
        .expect("the team release's manifest names its template");
    let platform_key = ws.join("keys/platform-example.pub");
    let key = cairn::release::signify::PublicKey::read(&platform_key).expect("platform key");
    let template_text =
        std::fs::read_to_string(ws.join("recipes/platform-ai.toml")).expect("template");
    let team_text = std::fs::read_to_string(ws.join("recipes/team-ai.toml")).expect("team recipe");
    assert_eq!(
        (t.name.as_str(), t.version.as_str()),
        ("platform-ai", "1.0")
    );
    assert_eq!(t.key_id, key.key_id());
    assert_eq!(t.sha256, Sha256::of_bytes(template_text.as_bytes()).hex());
    assert_eq!(t.team_sha256, Sha256::of_bytes(team_text.as_bytes()).hex());
    assert_eq!(
        m.recipe.sha256,
        Sha256::of_bytes(format!("{template_text}\n{team_text}").as_bytes()),
        "the build did not read the template with the team recipe"
    );
    // The team's parts and the platform's are both in it.
    let names: Vec<&str> = m.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["inference", "inference-team"], "{names:?}");
    let models: Vec<&str> = m.sbom.models.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(models, ["iris", "iris-team"], "{models:?}");

    // `cairn verify --template-key` on the release, signed as `cairn build
    // --key` signs it (the test holds a throwaway release key).
    let tmp = tempfile::tempdir().expect("tempdir");
    let release_key = cairn::release::signify::generate();
    let pubkey = tmp.path().join("release.pub");
    std::fs::write(
        &pubkey,
        release_key.public().to_file_text("test release key"),
    )
    .expect("pubkey");
    for f in ["SHA256", "SHA256.sig"] {
        let _ = std::fs::remove_file(b.dir.join(f));
    }
    cairn::release::sign::sign_dir(&b.dir, &release_key, "release.pub").expect("sign");
    let report = cairn::release::template::verify(&b.dir, &pubkey, false, &platform_key)
        .unwrap_or_else(|e| panic!("verify --template-key keys/platform-example.pub: {e}"));
    let text = report.to_string();
    eprintln!("{text}");
    assert!(
        report.checks.iter().any(|c| c
            == &format!(
                "template: template platform-ai 1.0 signed by key {}",
                key.key_id()
            )),
        "{:?}",
        report.checks
    );
    assert!(
        report
            .checks
            .iter()
            .any(|c| c == "template: contents keep the template's rules"),
        "{:?}",
        report.checks
    );
    // Control: another platform's key refuses the same release, naming
    // the template check.
    let other = tmp.path().join("other-platform.pub");
    std::fs::write(
        &other,
        cairn::release::signify::generate()
            .public()
            .to_file_text("another platform"),
    )
    .expect("other key");
    match cairn::release::template::verify(&b.dir, &pubkey, false, &other) {
        Err(cairn::release::verify::VerifyError::Failed(e)) => {
            assert!(e.starts_with("template: template platform-ai 1.0"), "{e}")
        }
        Err(e) => panic!("a wrong platform key must fail the template check, not: {e}"),
        Ok(r) => panic!("a wrong platform key passed: {r}"),
    }

    // One boot: both services ready, each model answered on its own port.
    let (p1, p2) = (free_port(), free_port());
    let mut spec = BootSpec::new(
        &b.raw,
        cairn::media::RAW.qemu,
        Firmware::Uefi,
        log_path("team-ai"),
    );
    spec.network = true;
    spec.forwards = vec![(p1, 8080), (p2, 8081)];
    let mut vm = Vm::start(&spec).expect("start qemu");
    vm.wait_for_line("cairn: ready", boot_timeout() * 2)
        .unwrap_or_else(|e| panic!("team-ai not ready: {e:#}"));
    let serial = vm.serial_text();
    for want in [
        "cairn: service inference: ready (http 127.0.0.1:8080/healthz)",
        "cairn: service inference-team: ready (http 127.0.0.1:8081/healthz)",
    ] {
        assert!(serial.contains(want), "{want} missing:\n{serial}");
    }
    // Both model folders hold the same iris tree (the team's stands in for
    // its own weights). The team's service reads
    // /models/iris-team/iris-tree.json (its `env`): it answers only if its
    // own model volume is mounted into it.
    let data = Sha256::of_file(&ws.join("recipes/field-ai/model/iris-tree.json")).expect("model");
    for (port, model) in [(p1, "iris"), (p2, "iris-team")] {
        let a = get(port, "/predict?x=6.7,3.0,5.2,2.3");
        assert!(
            a.contains("\"class\": \"virginica\""),
            "{model} on {port}: {a}"
        );
        assert!(
            a.contains(&format!("\"model_sha256\": \"{data}\"")),
            "{model}: {a}"
        );
        let a = get(port, "/predict?x=5.1,3.5,1.4,0.2");
        assert!(a.contains("\"class\": \"setosa\""), "{model}: {a}");
    }
    assert!(!vm.serial_text().contains("cairn: FATAL"), "{serial}");
}
