//! `[audit]`: the sealed audit trail, judged on the host after the guest
//! is gone (docs/audit.md). tiny-audit boots, its service starts, the
//! guest tries an egress connection, and the machine is powered off
//! hard. Then the raw disk's audit partition: `cairn audit read` with the
//! platform's key shows the boot, the service start and the refusals
//! (counted, sampled); a wrong key reads nothing; the partition holds none of the image's names
//! or the refused address in the clear; `cairn audit verify` passes; the
//! boot shows as not closed. Control: a second boot of the same disk shut
//! down cleanly is closed, and the first boot's records still verify.
//! The TPM boot ends on a corrupted root block: its trail's last record is
//! the verity failure, written just before the halt.

use std::path::Path;
use std::time::Duration;

use cairn::host::digest::Sha256;
use cairn::release::audit_tpm::{first_bad_boot, Tpm};
use cairn::vm::qemu::{BootSpec, Firmware, Vm};
use cairn::vm::trusted::{self, Swtpm};
use qemu_tests::*;

/// Boots `img` to ready; `forwards`: host ports to guest ports.
fn boot(img: &Path, log: &str, forwards: Vec<(u16, u16)>) -> Vm {
    let mut spec = BootSpec::new(img, cairn::media::RAW.qemu, Firmware::Uefi, log_path(log));
    spec.debug_console = true;
    // The trail is judged on the host afterwards.
    spec.snapshot = false;
    // A NIC (restrict=on: QEMU forwards nothing out): without one the
    // guest has no route, connect() fails before the ruleset sees a
    // packet, and there is no refusal to record.
    spec.network = true;
    spec.forwards = forwards;
    let mut vm = Vm::start(&spec).expect("start qemu");
    vm.wait_for_line("cairn: ready", boot_timeout())
        .unwrap_or_else(|e| panic!("{log}: not ready: {e:#}"));
    vm
}

#[test]
fn the_audit_trail_survives_a_hard_power_off_sealed_and_verifiable() {
    let b = built("tiny-audit");
    let dir = tempfile::tempdir().expect("tempdir");
    let img = copy_image(&b.raw, dir.path(), "audit.raw");
    let key = dir.path().join("audit.sec");
    std::fs::write(&key, AUDIT_TEST_SECRET).expect("key");

    // Guest port 9000 is not in tiny-audit's ingress: the host's request
    // to it is refused.
    let port = free_port();
    let mut vm = boot(&img, "audit-hard", vec![(port, 9000)]);
    let got = http_get(port, Duration::from_secs(10));
    assert!(!got.contains("HTTP/"), "port 9000 answered: {got}");
    // Three egress connections the ruleset refuses (bash's /dev/tcp:
    // Debian's essential set has no other client), under nft's log limit
    // (5/minute). Then wait, in the guest, until the recorder has written
    // its firewall record (it flushes every 30 s; fw.recorded counts the
    // refusals recorded), so the hard power-off cannot beat it.
    let wait = 120 * cairn::vm::qemu::timeout_scale() as u64;
    let (rc, out) = vm
        .console_run(
            &format!(
                "for i in 1 2 3; do timeout 5 bash -c 'echo refused-request-text > /dev/tcp/10.0.2.2/9999'; done; \
                 i=0; while [ \"$(cat /run/cairn/audit/fw.recorded 2>/dev/null || echo 0)\" -lt 4 ] && [ $i -lt {wait} ]; do sleep 1; i=$((i+1)); done; \
                 echo recorded=$(cat /run/cairn/audit/fw.recorded 2>/dev/null); dmesg | grep -c -e cairn-egress-denied -e cairn-ingress-denied"
            ),
            Duration::from_secs(wait + 60),
        )
        .expect("console");
    eprintln!("guest ({rc}):\n{out}");
    vm.kill();

    use cairn::release::audit;
    let t = audit::read(&img, &key).unwrap_or_else(|e| panic!("{e:#}"));
    let text = t.render_text();
    eprintln!("{text}");
    assert!(t.first_bad.is_none(), "verify fails: {text}");
    assert_eq!(t.boots.len(), 1, "{text}");
    let b1 = &t.boots[0];
    assert!(
        !b1.closed,
        "a hard power-off is a boot without close: {text}"
    );
    assert_eq!(b1.records[0].kind, "boot");
    // No TPM attached: reported as such, and not a failure even against
    // the manifest (the swtpm test below is the quoted case).
    assert_eq!(b1.tpm, Some(Tpm::None), "{text}");
    assert!(text.contains("no TPM"), "{text}");
    let m = cairn::release::manifest::read(&b.dir.join("manifest.json")).expect("manifest");
    let predicted = m.boot.pcr11_sha256.expect("a predicted PCR 11");
    assert_eq!(first_bad_boot(&t, Some(&predicted)), None);
    assert!(
        b1.records[0].get("root").is_some_and(|r| r.len() == 64),
        "{text}"
    );
    assert!(
        b1.records.iter().any(|r| r.kind == "service"
            && r.get("unit") == Some("greeter")
            && r.get("event") == Some("start")),
        "{text}"
    );
    // The refusals: counted, and sampled (at most 8) by protocol,
    // addresses and port, never by content.
    let fw: Vec<_> = b1.records.iter().filter(|r| r.kind == "firewall").collect();
    let refused: u64 = fw
        .iter()
        .filter_map(|r| r.get("refused").and_then(|n| n.parse::<u64>().ok()))
        .sum();
    assert!(refused >= 4, "four refusals, {refused} recorded: {text}");
    let sum = |k: &str| -> u64 {
        fw.iter()
            .filter_map(|r| r.get(k).and_then(|n| n.parse::<u64>().ok()))
            .sum()
    };
    assert!(sum("egress") >= 3 && sum("ingress") >= 1, "{text}");
    for r in &fw {
        let n = r
            .fields
            .iter()
            .filter(|(k, _)| k.starts_with("sample."))
            .count();
        assert!(n <= 8, "{n} samples: {text}");
    }
    let sampled = |want: &str| {
        fw.iter().any(|r| {
            r.fields
                .iter()
                .any(|(k, v)| k.starts_with("sample.") && v == want)
        })
    };
    assert!(
        sampled("TCP 10.0.2.15 10.0.2.2 9999"),
        "no sample of the refused connection: {text}"
    );
    assert!(
        sampled("TCP 10.0.2.2 10.0.2.15 9000"),
        "no sample of the refused ingress: {text}"
    );

    // A wrong key reads nothing (an input error: exit 2 from the CLI).
    let other = dir.path().join("other.sec");
    let mut g = cairn::host::runner::command("age-keygen");
    g.arg("-o").arg(&other);
    cairn::host::runner::output("test: keygen", g).expect("age-keygen");
    let e = audit::read(&img, &other).unwrap_err();
    assert!(e.downcast_ref::<cairn::InputError>().is_some(), "{e:#}");

    // Nothing in the clear on the partition.
    let (_, off, size) = audit::locate(&img).expect("the audit partition");
    let raw = std::fs::read(&img).unwrap();
    let region = &raw[off as usize..(off + size) as usize];
    for clear in [
        "greeter",
        "cairn-test-audit",
        "refused-request-text",
        "10.0.2.2",
    ] {
        assert!(
            !region.windows(clear.len()).any(|w| w == clear.as_bytes()),
            "{clear} in the clear"
        );
    }
    // Control: the search finds what is there in the clear.
    assert!(region.starts_with(b"cairn-audit v1\n"));

    // Control: the next boot, shut down cleanly, is closed.
    let mut vm = boot(&img, "audit-clean", Vec::new());
    vm.powerdown(Duration::from_secs(
        180 * cairn::vm::qemu::timeout_scale() as u64,
    ))
    .expect("clean power-off");
    let t = audit::read(&img, &key).unwrap_or_else(|e| panic!("{e:#}"));
    let text = t.render_text();
    assert!(t.first_bad.is_none(), "{text}");
    assert_eq!(t.boots.len(), 2, "{text}");
    assert!(!t.boots[0].closed && t.boots[1].closed, "{text}");
    // Control for the TPM test's halt: boots that saw no corruption have
    // no verity-failure record.
    assert!(t.boots.iter().all(|b| b.halted.is_none()), "{text}");
    assert!(!text.contains("verity-failure"), "{text}");
}

/// With a TPM (swtpm): the boot record carries a quote of PCR 7 and 11
/// whose nonce is the boot key; it verifies, and its PCR 11 is the one
/// the signed manifest predicts for this UKI. Control: judged against
/// another prediction (a trail written by another UKI), the boot is named.
/// The same boot then reads a root block flipped under it: the watcher's
/// `verity-failure` record (volume, device, the kernel's line) is the last
/// of the trail, written before the halt, and the boot verifies as halted
/// (the hard power-off and clean boots above are the controls).
#[test]
fn with_a_tpm_the_boot_record_quotes_the_manifests_pcr11() {
    let b = built("tiny-audit");
    let dir = tempfile::tempdir().expect("tempdir");
    let img = copy_image(&b.raw, dir.path(), "audit-tpm.raw");
    let key = dir.path().join("audit.sec");
    std::fs::write(&key, AUDIT_TEST_SECRET).expect("key");
    let tpm = Swtpm::start(dir.path()).expect("swtpm");
    let log = "audit-tpm";
    let mut spec = BootSpec::new(&img, cairn::media::RAW.qemu, Firmware::Bios, log_path(log));
    spec.debug_console = true;
    spec.snapshot = false;
    spec.extra_args = trusted::uefi_args(dir.path()).expect("firmware");
    spec.extra_args.extend(tpm.qemu_args().expect("tpm args"));
    let mut vm = Vm::start(&spec).expect("start qemu");
    vm.wait_for_line("cairn: ready", boot_timeout())
        .unwrap_or_else(|e| panic!("{log}: not ready: {e:#}"));
    let m = cairn::release::manifest::read(&b.dir.join("manifest.json")).expect("manifest");
    // As failclosed.rs: a block in the middle of the root, read with
    // O_DIRECT after the byte under it flipped.
    let block = m.verity.data_size / 4096 / 2;
    let (root_offset, _) = partition(&b.dir, cairn::media::disk::LABEL_ROOT);
    let serial = corrupted_read_after_boot_halts(&mut vm, &img, "cairn-root", root_offset, block);
    assert!(
        serial.contains("cairn: audit: the verity failure is recorded"),
        "{serial}"
    );
    vm.kill();

    use cairn::release::audit;
    let t = audit::read(&img, &key).unwrap_or_else(|e| panic!("{e:#}"));
    let text = t.render_text();
    eprintln!("{text}");
    assert!(t.first_bad.is_none(), "{text}");
    let last = t.boots[0].records.last().expect("records");
    assert_eq!(last.kind, "verity-failure", "{text}");
    assert_eq!(last.get("volume"), Some("base"), "{text}");
    assert_eq!(last.get("mapping"), Some("cairn-root"), "{text}");
    assert!(
        last.get("seen")
            .is_some_and(|s| s.contains(&format!("data block {block} is corrupted"))),
        "{text}"
    );
    assert_eq!(t.boots[0].halted.as_deref(), Some("base"), "{text}");
    assert!(
        text.contains("HALTED on a verity failure of volume base"),
        "{text}"
    );
    let predicted = m.boot.pcr11_sha256.expect("a predicted PCR 11");
    match &t.boots[0].tpm {
        Some(Tpm::Quoted { pcr11, .. }) => assert_eq!(*pcr11, predicted, "{text}"),
        other => panic!("no verified quote: {other:?}\n{text}"),
    }
    assert_eq!(first_bad_boot(&t, Some(&predicted)), None);
    let why = first_bad_boot(&t, Some(&Sha256::of_bytes(b"another UKI")))
        .expect("another PCR 11 is named");
    assert!(why.contains("another UKI"), "{why}");
}
