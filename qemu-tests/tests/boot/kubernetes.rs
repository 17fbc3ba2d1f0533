//! runtime = "kubernetes": recipes/field-ai-kube.toml (field-ai's iris
//! classifier as a Deployment on a single-node cluster cairn built from
//! pinned Go modules) boots under QEMU with restrict=on user networking
//! and a hostfwd to the NodePort. Judged from outside: `cairn: ready` on
//! the console (which the guest prints only once the node is Ready and
//! the Deployment Available), and a prediction answered from the host
//! through the NodePort.

use std::time::Duration;

use cairn::vm::qemu::{BootSpec, Firmware, Vm};
use qemu_tests::*;

#[test]
#[ignore = "not in CI yet: seen passing here (389 s with a warm Go cache), but a cold Go build of the cluster (about 25 min of CPU) plus this boot is not yet fitted under the CI budget; run: cargo test -p qemu-tests --test boot kubernetes -- --ignored --nocapture"]
fn kubernetes_node_gets_ready_and_serves_a_prediction_through_its_nodeport() {
    let b = built("recipes/field-ai-kube.toml");
    let m = cairn::release::manifest::read(&b.dir.join("manifest.json")).expect("manifest");
    let cluster = m
        .sbom
        .cluster
        .as_ref()
        .expect("the manifest lists the cluster binaries");
    assert!(
        cluster
            .binaries
            .iter()
            .any(|b| b.modules.iter().any(|(p, _, _)| p == "k8s.io/kubernetes")),
        "the SBOM lists k8s.io/kubernetes"
    );
    let port = free_port();
    let mut spec = BootSpec::new(
        &b.raw,
        cairn::media::RAW.qemu,
        Firmware::Uefi,
        log_path("field-ai-kube"),
    );
    spec.network = true;
    spec.memory_mib = 3072;
    spec.cpus = 2;
    spec.forwards = vec![(port, 8080)];
    let mut vm = Vm::start(&spec).expect("start qemu");
    vm.wait_for_line("cairn: ready", boot_timeout() * 4)
        .unwrap_or_else(|e| panic!("field-ai-kube not ready: {e:#}"));
    let serial = vm.serial_text();
    assert!(
        serial.contains("cairn: cluster: node Ready, workloads Available (cairn/inference)"),
        "ready without the cluster's word: {serial}"
    );
    // The first request after ready is answered: the readiness probe passed.
    let answer = http_get_path(port, "/predict?x=5.1,3.5,1.4,0.2", Duration::from_secs(30));
    assert!(answer.contains("\"class\": \"setosa\""), "{answer}");
}
