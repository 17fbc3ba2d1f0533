//! k3s: runs only when the k3s artifacts are on this machine (this one
//! cannot download them): `k3s` and `k3s-airgap-images-amd64.tar.zst` (or
//! `.tar`) in recipes/k3s-artifacts/ or $CAIRN_K3S_ARTIFACTS (see
//! recipes/k3s-airgap.toml for where they come from). The test stores them
//! in cairn's cache, where the recipe's URL inputs resolve by sha256, then
//! builds recipes/k3s-airgap.toml pinned to those files (with the debug
//! console on), boots it and checks from outside: the node is Ready, the inference
//! pod from the pinned image is Running, and the default-deny egress
//! NetworkPolicy is enforced (a probe pod in the workload namespace cannot
//! reach the service; the same probe in a namespace without the policy can).
//! Without the artifacts it says `skipped: k3s artifacts not in cache`.

use std::path::PathBuf;
use std::time::Duration;

use cairn::vm::qemu::{BootSpec, Firmware, ImageFormat, Vm};
use qemu_tests::*;

fn artifacts() -> Option<(PathBuf, PathBuf)> {
    let dir = std::env::var_os("CAIRN_K3S_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("recipes/k3s-artifacts"));
    let bin = dir.join("k3s");
    let images = [
        "k3s-airgap-images-amd64.tar",
        "k3s-airgap-images-amd64.tar.zst",
    ]
    .iter()
    .map(|n| dir.join(n))
    .find(|p| p.is_file())?;
    bin.is_file().then_some((bin, images))
}

#[test]
fn k3s_node_ready_pod_running_and_network_policy_enforced() {
    let Some((bin, images)) = artifacts() else {
        println!("skipped: k3s artifacts not in cache");
        return;
    };
    // The committed recipe, pinned to the artifacts found (the operator
    // checked them against the release's sha256sum-amd64.txt).
    let ws = workspace();
    let text = std::fs::read_to_string(ws.join("recipes/k3s-airgap.toml")).expect("recipe");
    // The recipe names the release URLs; the cache answers for them, so
    // nothing is downloaded.
    let cache =
        cairn::inputs::cache::Cache::open(cairn::cli::cache_root_from_env().expect("cache path"))
            .expect("cache");
    let pin = |p: &PathBuf| cache.put_file(p).expect("store artifact").hex();
    let mut lines: Vec<String> = Vec::new();
    for l in text.lines() {
        let l = if l.starts_with("k3s_binary_sha256") {
            format!("k3s_binary_sha256 = \"{}\"", pin(&bin))
        } else if l.starts_with("k3s_images_sha256") {
            format!("k3s_images_sha256 = \"{}\"", pin(&images))
        } else if l == "console = false" {
            "console = true".to_string()
        } else {
            l.to_string()
        };
        lines.push(l);
    }
    let mut text = lines.join("\n") + "\n";
    if !text.contains("[debug]") {
        text.push_str("\n[debug]\nconsole = true\n");
    }
    // Beside the original, so its relative paths hold (ignored by git).
    let recipe = ws.join("recipes/.k3s-airgap-test.toml");
    std::fs::write(&recipe, text).expect("write recipe");
    let b = built("recipes/.k3s-airgap-test.toml");

    let mut spec = BootSpec::new(&b.raw, ImageFormat::Raw, Firmware::Uefi, log_path("k3s"));
    spec.debug_console = true;
    spec.memory_mib = 4096;
    spec.cpus = 2;
    let mut vm = Vm::start(&spec).expect("start qemu");
    vm.wait_for_line("cairn: ready", boot_timeout() * 3)
        .unwrap_or_else(|e| panic!("k3s image not ready: {e:#}"));
    let t = Duration::from_secs(900);
    let (rc, out) = vm
        .console_run(
            "k3s kubectl wait --for=condition=Ready node --all --timeout=900s",
            t,
        )
        .expect("console");
    assert_eq!(rc, 0, "node not Ready: {out}");
    let (rc, out) = vm
        .console_run(
            "k3s kubectl -n field-ai wait --for=condition=Ready pod -l app=inference --timeout=900s && k3s kubectl -n field-ai get pods -o wide",
            t,
        )
        .expect("console");
    assert_eq!(rc, 0, "inference pod not Running: {out}");
    assert!(out.contains("Running"), "{out}");
    let probe = |ns: &str| {
        format!(
            "k3s kubectl create namespace {ns} 2>/dev/null; k3s kubectl -n {ns} run probe --rm -i --restart=Never --image=cairn.local/inference:pinned --image-pull-policy=Never --command -- /usr/bin/python3 -c \"import urllib.request; print(urllib.request.urlopen('http://inference.field-ai.svc:8080/healthz', timeout=10).read())\""
        )
    };
    let (rc, out) = vm.console_run(&probe("field-ai"), t).expect("console");
    assert_ne!(rc, 0, "default-deny egress did not stop the probe: {out}");
    // Control: the same probe from a namespace without the policy connects.
    let (rc, out) = vm.console_run(&probe("probe-control"), t).expect("console");
    assert_eq!(rc, 0, "control probe failed: {out}");
    assert!(out.contains("ok"), "{out}");
}
