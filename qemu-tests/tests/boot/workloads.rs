//! Workloads: the default recipe, field-ai, booted with restrict=on user
//! networking and a hostfwd to its service port. A prediction request from
//! the host gets the right answer for known inputs; the image the guest
//! reports running (unpacked at build time into the verified root) has the
//! manifest's digest; the guest
//! makes no outbound connection (a guestfwd listener sees nothing and the
//! firewall logs no denied egress).

use std::net::Ipv4Addr;
use std::time::Duration;

use cairn::vm::qemu::{BootSpec, Firmware, Vm};
use qemu_tests::*;

fn get(port: u16, path: &str) -> String {
    http_get_path(port, path, Duration::from_secs(30))
}

#[test]
fn field_ai_serves_predictions_from_its_pinned_image_and_never_reaches_out() {
    let b = built("recipes/field-ai.toml");
    let m = cairn::release::manifest::read(&b.dir.join("manifest.json")).expect("manifest");
    let image = m
        .sbom
        .images
        .iter()
        .find(|i| i.name == "inference")
        .expect("the manifest lists the inference image");
    let listener = Listener::start();
    let port = free_port();
    let mut spec = BootSpec::new(
        &b.raw,
        cairn::media::RAW.qemu,
        Firmware::Uefi,
        log_path("field-ai"),
    );
    spec.network = true;
    spec.forwards = vec![(port, 8080)];
    // Anything the guest might try (an update check, a registry) would have
    // to go somewhere; this is the only somewhere there is.
    spec.guestfwds = vec![(Ipv4Addr::new(10, 0, 2, 100), 80, listener.addr)];
    let mut vm = Vm::start(&spec).expect("start qemu");
    vm.wait_for_line("cairn: ready", boot_timeout() * 2)
        .unwrap_or_else(|e| panic!("field-ai not ready: {e:#}"));
    let serial = vm.serial_text();
    let line = serial
        .lines()
        .find(|l| l.contains("cairn: image inference "))
        .unwrap_or_else(|| panic!("the guest reported no image: {serial}"));
    assert!(
        line.trim_end()
            .ends_with(&format!("sha256:{}", image.digest)),
        "the guest runs {line}, the manifest pins sha256:{}",
        image.digest
    );
    assert!(
        line.contains("/usr/lib/cairn/images/inference/rootfs"),
        "not run from its unpacked root: {line}"
    );
    // Ready means ready: the first request after `cairn: ready` is
    // answered (the recipe's `ready = "http:8080/healthz"`), no retries.
    assert!(
        serial.contains("cairn: service inference: ready (http 127.0.0.1:8080/healthz)"),
        "{serial}"
    );
    let answer = get(port, "/predict?x=5.1,3.5,1.4,0.2");
    assert!(answer.contains("\"class\": \"setosa\""), "{answer}");
    let a = get(port, "/predict?x=6.7,3.0,5.2,2.3");
    assert!(a.contains("\"class\": \"virginica\""), "{a}");
    let a = get(port, "/predict?x=5.9,3.0,4.2,1.5");
    assert!(a.contains("\"class\": \"versicolor\""), "{a}");
    // The model the service reports is the pinned data: the recipe's model
    // folder has the digest the manifest pins, and the service reports the
    // sha256 of the one file in it (it hashes what it loaded).
    let model = &m.sbom.models[0];
    let folder = workspace().join("recipes/field-ai/model");
    assert_eq!(
        cairn::host::digest::tree_digest(&folder).expect("model folder digest"),
        model.sha256,
        "recipes/field-ai/model is not the data the manifest pins"
    );
    let data = cairn::host::digest::Sha256::of_file(&folder.join("iris-tree.json"))
        .expect("model file digest");
    let h = get(port, "/healthz");
    assert!(h.contains("\"status\": \"ok\""), "{h}");
    assert!(
        h.contains(&format!("\"model_sha256\": \"{data}\"")),
        "the service does not report the pinned model ({} {}, file sha256 {data}): {h}",
        model.name,
        model.sha256
    );
    assert!(
        answer.contains(&format!("\"model_sha256\": \"{data}\"")),
        "the prediction did not come from the pinned model: {answer}"
    );
    let bad = get(port, "/predict?x=1,2");
    assert!(bad.starts_with("HTTP/1.0 400"), "{bad}");
    eprintln!("model {} {}", model.name, model.sha256);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(listener.received(), "", "the guest sent data out");
    // The firewall logs every refused connection as a cairn-egress-denied
    // line on this console (airgap's default test shows that it does).
    let serial = vm.serial_text();
    assert!(
        !serial.contains("cairn-egress-denied"),
        "something tried to reach out: {serial}"
    );
    assert!(!serial.contains("cairn: FATAL"), "{serial}");
}

/// The control of the readiness promise: a service whose check never
/// passes (nothing listens on its port) gives one FATAL line naming it
/// after its `ready_timeout`, and the node never says ready.
#[test]
fn a_service_that_never_gets_ready_is_named_and_the_node_never_says_ready() {
    let b = built("tiny-unready");
    let spec = BootSpec::new(
        &b.raw,
        cairn::media::RAW.qemu,
        Firmware::Uefi,
        log_path("tiny-unready"),
    );
    let mut vm = Vm::start(&spec).expect("start qemu");
    let line = vm
        .wait_for_any(&["cairn: ready", "cairn: FATAL"], boot_timeout() * 2)
        .unwrap_or_else(|e| panic!("neither ready nor FATAL: {e:#}"));
    let serial = vm.serial_text();
    assert!(
        serial.contains(
            "cairn: FATAL service greeter: not ready after 15s (tcp check of 127.0.0.1:8081"
        ),
        "{line:?}\n{serial}"
    );
    // Give a wrongly ordered ready the time to show up: it must not.
    std::thread::sleep(Duration::from_secs(10));
    assert!(
        !vm.serial_text().contains("cairn: ready"),
        "{}",
        vm.serial_text()
    );
}
