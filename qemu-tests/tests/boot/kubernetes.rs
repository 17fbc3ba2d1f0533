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
    spec.debug_console = true;
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
    pinned_images_stay_off_the_state(&mut vm);
}

/// KiB that `cmd` (a `du -sk`/`df` pipeline ending in one number) prints.
fn kib(vm: &mut Vm, cmd: &str) -> u64 {
    let (rc, out) = vm.console_run(cmd, console_timeout()).expect("console");
    assert_eq!(rc, 0, "{cmd}: {out}");
    out.split_whitespace()
        .last()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("{cmd}: {out:?}"))
}

/// The pinned images are read in place: containerd's root on the state
/// holds only their records (two bolt files, manifests, configs, links)
/// and the pods' own layers, far less than the images, which an import
/// would have copied there (content and unpacked snapshot).
fn pinned_images_stay_off_the_state(vm: &mut Vm) {
    let images = kib(vm, "du -sk /usr/lib/cairn/images | cut -f1");
    let root = "/var/lib/containerd";
    let on_state = kib(vm, &format!("du -sk {root} | cut -f1"));
    // Control: the same du, following the snapshots' links, counts the
    // images (as it would if they had been imported into the state).
    let followed = kib(
        vm,
        &format!("du -skL {root}/io.containerd.snapshotter.v1.overlayfs/snapshots | cut -f1"),
    );
    let state_used = kib(vm, "df -P -k /var | tail -n 1 | awk '{print $3}'");
    eprintln!(
        "kubernetes: pinned images {images} KiB; containerd's root on the state {on_state} KiB \
         ({followed} KiB through its links); state used {state_used} KiB"
    );
    assert!(images > 8 << 10, "the pinned images are only {images} KiB");
    assert!(
        followed >= images / 2,
        "control: du through the snapshot links sees {followed} KiB of {images} KiB of images"
    );
    assert!(
        on_state * 4 < images,
        "containerd's root on the state holds {on_state} KiB for {images} KiB of pinned images"
    );
}
