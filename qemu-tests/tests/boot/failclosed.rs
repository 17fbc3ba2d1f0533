//! Fail closed: an image whose air-gap ruleset is missing never announces
//! ready and says why; data corrupted after boot halts the node with one
//! `cairn: FATAL verity:` line (dm-verity's I/O error and kernel log line,
//! turned into a halt by the initramfs' watcher) instead of becoming an
//! I/O error a program could shrug off.

use std::time::{Duration, Instant};

use cairn::media::disk::LABEL_ROOT;
use cairn::vm::qemu::{BootSpec, Firmware, Vm};
use qemu_tests::*;

const RULESET: &str = "usr/lib/cairn/firewall.nft";

#[test]
fn an_image_without_its_ruleset_never_announces_ready_and_says_why() {
    let b = built("tiny");
    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = rebuild_raw(b, tmp.path(), "no-ruleset", |tree| {
        std::fs::remove_file(tree.join(RULESET)).expect("the built tree has the ruleset");
    });
    // Control: the same rebuild with nothing removed boots to ready, so
    // it is the missing file, not the rebuilding, that stops the other.
    let good = rebuild_raw(b, tmp.path(), "rebuilt", |tree| {
        assert!(tree.join(RULESET).is_file());
    });
    let mut bad_vm = Vm::start(&BootSpec::new(
        &bad,
        cairn::media::RAW.qemu,
        Firmware::Uefi,
        log_path("failclosed-no-ruleset"),
    ))
    .expect("start qemu");
    let mut good_vm = Vm::start(&BootSpec::new(
        &good,
        cairn::media::RAW.qemu,
        Firmware::Uefi,
        log_path("failclosed-rebuilt"),
    ))
    .expect("start qemu");

    let (i, line) = bad_vm
        .wait_for_any(&["cairn: ready", "cairn: FATAL"], boot_timeout())
        .expect("a verdict on the console");
    assert_eq!(i, 1, "the image without a ruleset reached ready: {line}");
    assert!(
        line.contains("firewall") && line.contains("missing"),
        "{line}"
    );
    // It halts, and ready never follows.
    bad_vm
        .wait_for_line("System halted", boot_timeout())
        .expect("the node halts");
    let serial = bad_vm.serial_text();
    assert!(!serial.contains("cairn: ready"), "{serial}");
    assert!(!serial.contains("cairn: firewall loaded"), "{serial}");
    assert_eq!(serial.matches("cairn: FATAL").count(), 1, "{serial}");

    good_vm
        .wait_for_line("cairn: ready", boot_timeout())
        .expect("the rebuilt image with its ruleset reaches ready");
    let serial = good_vm.serial_text();
    assert!(serial.contains("cairn: firewall loaded"), "{serial}");
    assert!(!serial.contains("cairn: FATAL"), "{serial}");
}

#[test]
fn a_corrupted_block_read_after_boot_halts_the_node() {
    let b = built("tiny");
    let m = cairn::release::manifest::read(&b.dir.join("manifest.json")).expect("manifest");
    let tmp = tempfile::tempdir().expect("tempdir");
    let img = copy_image(&b.raw, tmp.path(), "late-corruption.raw");
    let mut spec = BootSpec::new(
        &img,
        cairn::media::RAW.qemu,
        Firmware::Uefi,
        log_path("failclosed-late"),
    );
    spec.debug_console = true;
    // The guest reads the image file itself, so a byte flipped on the host
    // after boot is what the next read sees.
    spec.snapshot = false;
    let mut vm = Vm::start(&spec).expect("start qemu");
    vm.wait_for_line("cairn: ready", boot_timeout())
        .expect("the untouched image reaches ready");
    assert!(
        vm.serial_text()
            .contains("cairn: verity: a corrupted block read later halts the node"),
        "{}",
        vm.serial_text()
    );
    // A block in the middle of the root, read straight from the verity
    // device (O_DIRECT: no page cache between the read and dm-verity).
    let block = m.verity.data_size / 4096 / 2;
    let (root_offset, _) = partition(&b.dir, LABEL_ROOT);
    let serial = corrupted_read_after_boot_halts(&mut vm, &img, "cairn-root", root_offset, block);
    assert!(serial.contains("is corrupted"), "{serial}");
    assert!(!serial.contains("Kernel panic"), "{serial}");
    // Halted: the debug shell is gone for good.
    let t = Instant::now();
    let r = vm.console_run(
        "echo alive",
        Duration::from_secs(20 * cairn::vm::qemu::timeout_scale() as u64),
    );
    assert!(
        r.is_err(),
        "the node still answers after {:?}: {r:?}",
        t.elapsed()
    );
}
