//! Air-gap: QEMU user networking with restrict=on, a guestfwd to a listener
//! this test runs on 127.0.0.1, and hostfwds to guest ports. The default
//! image reaches nothing and is reachable on no port; the control image,
//! which lists that address in egress and one ingress port, does connect,
//! and only its listed port answers. The default image's refusal shows on
//! the serial console as a `cairn-egress-denied:` kernel log line naming the
//! destination (the positive control for every test that asserts that line
//! is absent); the control image logs no denial for its listed address.

use std::net::Ipv4Addr;
use std::time::Duration;

use cairn::vm::qemu::{BootSpec, Firmware, Vm};
use qemu_tests::*;

const GUEST_FWD_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
/// The prefix of the firewall's log line for refused egress.
const DENIED: &str = "cairn-egress-denied: ";

struct Net {
    vm: Vm,
    listener: Listener,
    port_9000: u16,
    port_9001: u16,
}

fn boot_networked(name: &str, log: &str) -> Net {
    let b = built(name);
    let listener = Listener::start();
    let (port_9000, port_9001) = (free_port(), free_port());
    let mut spec = BootSpec::new(
        &b.raw,
        cairn::media::RAW.qemu,
        Firmware::Uefi,
        log_path(log),
    );
    spec.debug_console = true;
    spec.network = true;
    spec.guestfwds = vec![(GUEST_FWD_IP, 8080, listener.addr)];
    spec.forwards = vec![(port_9000, 9000), (port_9001, 9001)];
    let mut vm = Vm::start(&spec).expect("start qemu");
    vm.wait_for_line("cairn: ready", boot_timeout())
        .unwrap_or_else(|e| panic!("{log}: not ready: {e:#}"));
    let serial = vm.serial_text();
    assert!(serial.contains("cairn: firewall loaded"), "{serial}");
    // Web servers on two ports, so the firewall alone decides what answers.
    let (rc, out) = vm
        .console_run(
            "mkdir -p /tmp/www && echo cairn-ingress-ok > /tmp/www/index.html && busybox httpd -p 9000 -h /tmp/www && busybox httpd -p 9001 -h /tmp/www && echo started",
            console_timeout(),
        )
        .expect("console");
    assert_eq!(rc, 0, "{out}");
    Net {
        vm,
        listener,
        port_9000,
        port_9001,
    }
}

fn try_egress(vm: &mut Vm, word: &str) -> (i32, String) {
    vm.console_run(
        &format!("timeout 20 bash -c 'echo {word} > /dev/tcp/10.0.2.100/8080'"),
        console_timeout(),
    )
    .expect("console")
}

#[test]
fn default_image_reaches_nothing_and_answers_nothing() {
    let mut n = boot_networked("tiny", "airgap-default");
    let word = marker("egress-denied");
    let (rc, out) = try_egress(&mut n.vm, &word);
    assert_ne!(rc, 0, "the guest connected out: {out}");
    // The firewall's log rule saw the attempt, and its line reaches the
    // serial console: `cairn-egress-denied` can appear when egress is denied.
    let line =
        n.vm.wait_for_line(DENIED, console_timeout())
            .unwrap_or_else(|e| panic!("no {DENIED} line after a denied connection: {e:#}"));
    assert!(
        line.contains("DST=10.0.2.100") && line.contains("DPT=8080"),
        "the denial names another destination: {line}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !n.listener.received().contains(&word),
        "the listener saw the guest's data"
    );
    // The guest itself can reach its own web server (it runs), but the
    // host cannot, on either port.
    let (rc, out) =
        n.vm.console_run(
            "busybox wget -q -O - http://127.0.0.1:9000/",
            console_timeout(),
        )
        .expect("console");
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("cairn-ingress-ok"), "{out}");
    for port in [n.port_9000, n.port_9001] {
        let got = http_get(port, Duration::from_secs(10));
        assert!(!got.contains("cairn-ingress-ok"), "port answered: {got}");
    }
    // The image runs nothing that reaches out by itself.
    let (_rc, out) = n
        .vm
        .console_run(
            "systemctl list-units --all --no-legend 'apt-daily*' 'systemd-timesyncd*' | grep -v masked | grep -c running; grep -q '^nameserver' /etc/resolv.conf && echo has-resolver || echo no-resolver",
            console_timeout(),
        )
        .expect("console");
    assert!(out.contains("no-resolver"), "{out}");
    assert!(
        out.lines().next().map(|l| l.trim() == "0").unwrap_or(false),
        "{out}"
    );
}

#[test]
fn control_listed_egress_connects_and_only_listed_ingress_answers() {
    let mut n = boot_networked("tiny-open", "airgap-open");
    let word = marker("egress-allowed");
    let (rc, out) = try_egress(&mut n.vm, &word);
    assert_eq!(rc, 0, "the listed egress failed: {out}");
    let mut seen = false;
    for _ in 0..20 {
        if n.listener.received().contains(&word) {
            seen = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        seen,
        "the listener never saw {word}: {:?}",
        n.listener.received()
    );
    let serial = n.vm.serial_text();
    assert!(
        !serial
            .lines()
            .any(|l| l.contains(DENIED) && l.contains("DST=10.0.2.100 ")),
        "the listed egress was logged as denied: {serial}"
    );
    let got = http_get(n.port_9000, Duration::from_secs(20));
    assert!(
        got.contains("cairn-ingress-ok"),
        "listed ingress 9000 did not answer: {got:?}"
    );
    let got = http_get(n.port_9001, Duration::from_secs(10));
    assert!(
        !got.contains("cairn-ingress-ok"),
        "unlisted port 9001 answered: {got}"
    );
    // RAM state mode: the state is a size-limited tmpfs, and the root is
    // read-only here too.
    let (rc, out) =
        n.vm.console_run("grep ' /run/cairn/state ' /proc/mounts", console_timeout())
            .expect("console");
    assert_eq!(rc, 0, "{out}");
    assert!(
        out.starts_with("cairn-state /run/cairn/state tmpfs"),
        "{out}"
    );
    crate::boot::raw::assert_read_only_root(&mut n.vm);
}
