//! runtime = "kubernetes": recipes/field-ai-kube.toml (field-ai's iris
//! classifier as a Deployment on a single-node cluster cairn built from
//! pinned Go modules) boots under QEMU with restrict=on user networking,
//! a hostfwd to the NodePort and a guestfwd to a listener of this test.
//! One boot carries every control (the CI budget has room for one):
//!
//! - ready: `cairn: ready` (printed only once NetworkPolicy enforcement is
//!   on, cluster DNS answers, the node is Ready and the Deployment
//!   Available) and a prediction answered from the host via the NodePort;
//! - cluster DNS: the workload resolves the kube-dns Service's name, and
//!   (control) not a name outside the cluster (no upstream resolver);
//! - NetworkPolicy: without the workload's allow, the default deny stops
//!   the same request from the host; once the default deny is removed it
//!   is answered again (control);
//! - PodSecurity: the API server refuses a privileged pod in the
//!   restricted namespace and (control) accepts it in a namespace labelled
//!   privileged;
//! - an unpinned image: a pod naming a registry at the guestfwd address
//!   never runs, the listener receives nothing, and the firewall's denial
//!   of that address shows on the serial console (the attempt was made);
//!   control: with one accept for that address, the node reaches it.
//!
//! Acting in the guest goes through the debug console (the recipe's
//! `[debug] console`, recorded in the manifest, never in a production
//! image): kubectl with this boot's admin kubeconfig. The verdicts are
//! judged outside where a packet can be: the hostfwd, the listener, the
//! serial console; PodSecurity's is the API server's answer.
//! - close_ingress: the site set's element (the initramfs's line for a
//!   site file's `close_ingress`) stops the NodePort; removed, it answers.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use cairn::vm::qemu::{BootSpec, Firmware, Vm};
use qemu_tests::*;

const PREDICT: &str = "/predict?x=5.1,3.5,1.4,0.2";
const REGISTRY_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
const KUBECTL: &str = "KUBECONFIG=/run/cairn/kubernetes/pki/admin.kubeconfig kubectl";

fn kubectl(vm: &mut Vm, args: &str) -> (i32, String) {
    vm.console_run(&format!("{KUBECTL} {args} 2>&1"), console_timeout())
        .expect("debug console")
}

/// Asks the NodePort from the host until `want` (answered or not) holds,
/// for at most `within`; returns the last answer.
fn nodeport_until(port: u16, want_answer: bool, within: Duration) -> String {
    let end = Instant::now() + within;
    loop {
        let a = http_get_path(port, PREDICT, Duration::from_secs(8));
        if a.contains("\"class\"") == want_answer || Instant::now() >= end {
            return a;
        }
        std::thread::sleep(Duration::from_secs(3));
    }
}

#[test]
fn kubernetes_node_serves_enforces_policies_and_pulls_nothing() {
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
    let listener = Listener::start();
    let port = free_port();
    // The image's audit trail is read on the host after the boot: a copy,
    // written in place.
    let dir = tempfile::tempdir().expect("tempdir");
    let img = copy_image(&b.raw, dir.path(), "field-ai-kube.raw");
    let mut spec = BootSpec::new(
        &img,
        cairn::media::RAW.qemu,
        Firmware::Uefi,
        log_path("field-ai-kube"),
    );
    spec.network = true;
    spec.debug_console = true;
    spec.snapshot = false;
    spec.memory_mib = 3072;
    spec.cpus = 2;
    spec.forwards = vec![(port, 8080)];
    spec.guestfwds = vec![(REGISTRY_IP, 8080, listener.addr)];
    let mut vm = Vm::start(&spec).expect("start qemu");
    vm.wait_for_line("cairn: ready", boot_timeout() * 4)
        .unwrap_or_else(|e| panic!("field-ai-kube not ready: {e:#}"));
    let serial = vm.serial_text();
    for word in [
        "cairn: cluster: NetworkPolicy enforcement on (kube-network-policies)",
        "cairn: cluster: cluster DNS ready",
        "cairn: cluster: node Ready, workloads Available (cairn/inference)",
    ] {
        assert!(serial.contains(word), "ready without `{word}`: {serial}");
    }
    // The first request after ready is answered: the readiness probe passed.
    let answer = http_get_path(port, PREDICT, Duration::from_secs(30));
    if !answer.contains("\"class\": \"setosa\"") {
        diagnose(&mut vm);
    }
    assert!(answer.contains("\"class\": \"setosa\""), "{answer}");
    pinned_images_stay_off_the_state(&mut vm);

    // Cluster DNS, from the workload's own pod (its image has python3).
    let resolve = |vm: &mut Vm, name: &str| {
        kubectl(
            vm,
            &format!("-n cairn exec deploy/inference -- python3 -c \"import socket; print('ADDR', socket.gethostbyname('{name}'))\""),
        )
    };
    let (rc, out) = resolve(&mut vm, "kube-dns.kube-system.svc.cluster.local");
    assert!(rc == 0 && out.contains("ADDR 10.43.0.10"), "rc {rc}: {out}");
    let (rc, out) = resolve(&mut vm, "deb.debian.org");
    assert!(
        rc != 0 && !out.contains("ADDR"),
        "a name outside the cluster resolved: {out}"
    );

    // NetworkPolicy: the namespace denies by default; the workload's allow
    // is what lets the NodePort in.
    let (rc, out) = kubectl(&mut vm, "-n cairn delete networkpolicy inference-ingress");
    assert_eq!(rc, 0, "{out}");
    let denied = nodeport_until(port, false, Duration::from_secs(120));
    assert!(
        !denied.contains("\"class\""),
        "the default deny let the request in: {denied}"
    );
    let (rc, out) = kubectl(&mut vm, "-n cairn delete networkpolicy default-deny");
    assert_eq!(rc, 0, "{out}");
    let allowed = nodeport_until(port, true, Duration::from_secs(120));
    assert!(
        allowed.contains("\"class\": \"setosa\""),
        "control: with no policy left the request is still not answered: {allowed:?}"
    );

    // A site file's close_ingress closes the NodePort: the exact line the
    // initramfs writes for `close_ingress = ["8080/tcp"]` (the site boot
    // test shows a site file filling that set), then removed (control).
    let rule = cairn::recipe::network::parse_ingress("8080/tcp").expect("ingress rule");
    let close = cairn::pipeline::firewall::site_close_elements(&[rule]);
    let (rc, out) = vm
        .console_run(
            &format!("printf '%s' '{}' | nft -f - 2>&1", close.trim_end()),
            console_timeout(),
        )
        .expect("console");
    assert_eq!(rc, 0, "{close}: {out}");
    let closed = nodeport_until(port, false, Duration::from_secs(60));
    assert!(
        !closed.contains("\"class\""),
        "close_ingress left the NodePort open: {closed}"
    );
    let (rc, out) = vm
        .console_run(
            "nft delete element inet cairn site_closed_tcp '{ 8080 }' 2>&1",
            console_timeout(),
        )
        .expect("console");
    assert_eq!(rc, 0, "{out}");
    let open = nodeport_until(port, true, Duration::from_secs(60));
    assert!(
        open.contains("\"class\": \"setosa\""),
        "control: with the port open again the request is not answered: {open:?}"
    );

    // PodSecurity: restricted in `cairn`; the control namespace allows it.
    let privileged = "run priv-check --image=cairn.local/pause:pinned --image-pull-policy=Never --privileged --restart=Never --dry-run=server -o name";
    let (rc, out) = kubectl(&mut vm, &format!("-n cairn {privileged}"));
    assert!(
        rc != 0 && out.contains("violates PodSecurity"),
        "a privileged pod was not refused in the restricted namespace: rc {rc}: {out}"
    );
    let (rc, out) = kubectl(
        &mut vm,
        "create namespace cairn-test-open && KUBECONFIG=/run/cairn/kubernetes/pki/admin.kubeconfig kubectl label namespace cairn-test-open pod-security.kubernetes.io/enforce=privileged",
    );
    assert_eq!(rc, 0, "{out}");
    let (rc, out) = kubectl(&mut vm, &format!("-n cairn-test-open {privileged}"));
    assert!(
        rc == 0 && out.contains("pod/priv-check"),
        "control: the privileged namespace refused it too: rc {rc}: {out}"
    );

    // An image that is not pinned, from a "registry" at the guestfwd.
    let (rc, out) = kubectl(
        &mut vm,
        &format!("-n cairn-test-open run unpinned --image={REGISTRY_IP}:8080/cairn-test/unpinned:1 --image-pull-policy=Always --restart=Never"),
    );
    assert_eq!(rc, 0, "{out}");
    let end = Instant::now() + Duration::from_secs(300);
    let state = loop {
        let (_, out) = kubectl(
            &mut vm,
            "-n cairn-test-open get pod unpinned -o jsonpath='STATE {.status.phase} {.status.containerStatuses[0].state.waiting.reason}'",
        );
        if out.contains("ImagePull") || Instant::now() >= end {
            break out;
        }
        std::thread::sleep(Duration::from_secs(5));
    };
    assert!(
        state.contains("STATE Pending") && state.contains("ImagePull"),
        "the unpinned pod is not stuck pulling: {state}"
    );
    // The firewall logged the attempt: the pull was tried, and stopped.
    let end = Instant::now() + Duration::from_secs(60);
    let wanted = format!("DST={REGISTRY_IP} ");
    while !vm
        .serial_text()
        .lines()
        .any(|l| l.contains("cairn-egress-denied: ") && l.contains(&wanted))
    {
        assert!(
            Instant::now() < end,
            "no egress denial of {REGISTRY_IP} on the console: was a pull tried?"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    assert_eq!(
        listener.received(),
        "",
        "the listener behind the registry address received bytes"
    );
    // Control, in this boot: the pod gone, one accept for that address in
    // the node's output chain, and the same path reaches the listener.
    let (rc, out) = kubectl(
        &mut vm,
        "-n cairn-test-open delete pod unpinned --wait=true --timeout=120s",
    );
    assert_eq!(rc, 0, "{out}");
    let (rc, out) = vm
        .console_run(
            &format!("nft insert rule inet cairn output ip daddr {REGISTRY_IP} tcp dport 8080 accept && timeout 10 bash -c 'exec 3<>/dev/tcp/{REGISTRY_IP}/8080; printf cairn-control >&3' 2>&1"),
            console_timeout(),
        )
        .expect("console");
    assert_eq!(
        rc, 0,
        "control: the node could not reach the listener with the firewall open: {out}"
    );
    let end = Instant::now() + Duration::from_secs(20);
    while listener.received() != "cairn-control" && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        listener.received(),
        "cairn-control",
        "control: the listener did not receive the node's bytes once the firewall let them out"
    );
    let serial = vm.serial_text();
    assert!(!serial.contains("cairn: FATAL"), "{serial}");
    // Enforcement held the whole boot: the controller never crashed (a
    // restart drops its queue's packets and its verdicts for a while).
    let (rc, out) = vm
        .console_run(
            "systemctl show -p NRestarts --value cairn-kube-network-policies cairn-coredns",
            console_timeout(),
        )
        .expect("console");
    assert!(
        rc == 0 && out.split_whitespace().all(|n| n == "0"),
        "the node services restarted: {out:?}"
    );
    cluster_api_is_in_the_audit_trail(&mut vm, &img, dir.path());
}

/// `[audit]` (docs/audit.md): the API server's audit events of this boot
/// (the test's own kubectl deletes above) are in the sealed trail, read on
/// the host with the platform's key after a hard power-off; the trail
/// verifies.
fn cluster_api_is_in_the_audit_trail(vm: &mut Vm, img: &std::path::Path, dir: &std::path::Path) {
    // The recorder flushes every 30 s; cluster.recorded counts what it wrote.
    let (rc, out) = vm
        .console_run(
            "i=0; while [ \"$(cat /run/cairn/audit/cluster.recorded 2>/dev/null || echo 0)\" -lt 1 ] && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done; cat /run/cairn/audit/cluster.recorded",
            Duration::from_secs(180),
        )
        .expect("console");
    eprintln!("cluster.recorded ({rc}): {out}");
    vm.kill();
    let key = dir.join("audit.sec");
    std::fs::write(&key, AUDIT_TEST_SECRET).expect("key");
    let t = cairn::release::audit::read(img, &key).unwrap_or_else(|e| panic!("{e:#}"));
    let text = t.render_text();
    eprintln!("{text}");
    assert!(t.first_bad.is_none(), "{text}");
    let events: Vec<&str> = t
        .boots
        .iter()
        .flat_map(|b| &b.records)
        .filter(|r| r.kind == "cluster-api")
        .flat_map(|r| r.fields.iter().filter(|(k, _)| k.starts_with("event.")))
        .map(|(_, v)| v.as_str())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e.contains(" delete networkpolicies cairn inference-ingress ")),
        "no record of the test's own delete: {events:?}\n{text}"
    );
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

/// On a failed request: what the guest's network and cluster look like,
/// printed for the test log (the verdict stays the host's).
fn diagnose(vm: &mut Vm) {
    for cmd in [
        &format!("{KUBECTL} get pods,svc,endpointslices,networkpolicies -A -o wide"),
        "nft list ruleset",
        "cat /proc/net/netfilter/nfnetlink_queue",
        "cat /proc/net/route; cat /proc/net/fib_trie | head -40",
        &format!(
            "for ip in $({KUBECTL} -n cairn get pods -o jsonpath='{{.items[*].status.podIP}}') 10.0.2.15; do echo \"== $ip\"; timeout 6 bash -c \"exec 3<>/dev/tcp/$ip/8080; printf 'GET {PREDICT} HTTP/1.0\\\\r\\\\n\\\\r\\\\n' >&3; cat <&3\"; done"
        ),
        "journalctl -b --no-pager -n 80 -u cairn-kube-network-policies -u cairn-kube-proxy",
    ] {
        match vm.console_run(&format!("{cmd} 2>&1"), console_timeout()) {
            Ok((rc, out)) => eprintln!("diagnose: $ {cmd}\n(rc {rc})\n{out}"),
            Err(e) => eprintln!("diagnose: $ {cmd}: {e:#}"),
        }
    }
}
