//! Amnesia: with disk state, what a session writes is readable only through
//! the dm-crypt device opened with this boot's key; after power-off or a
//! power cut, a scan of the whole disk image on the host finds nothing, and
//! the next boot starts clean. Control: the unencrypted debug image leaves
//! the marker on disk, so the scan would see it.

use std::path::Path;
use std::time::Duration;

use cairn::vm::qemu::{BootSpec, Firmware, Vm};
use qemu_tests::*;

fn boot_writable(image: &Path, log: &str) -> Vm {
    let mut spec = BootSpec::new(image, cairn::media::RAW.qemu, Firmware::Uefi, log_path(log));
    spec.debug_console = true;
    spec.snapshot = false; // writes must reach the image file we scan
    let mut vm = Vm::start(&spec).expect("start qemu");
    vm.wait_for_line("cairn: ready", boot_timeout())
        .unwrap_or_else(|e| panic!("{log}: not ready: {e:#}"));
    vm
}

fn run(vm: &mut Vm, cmd: &str) -> (i32, String) {
    vm.console_run(cmd, console_timeout())
        .unwrap_or_else(|e| panic!("console `{cmd}`: {e:#}"))
}

/// Writes `mark` under /var and /etc, syncs and drops caches.
fn write_marker(vm: &mut Vm, mark: &str) {
    let (rc, out) = run(
        vm,
        &format!(
            "echo {mark} > /var/cairn-marker && echo {mark} > /etc/cairn-marker && sync && echo 3 > /proc/sys/vm/drop_caches && cat /var/cairn-marker /etc/cairn-marker"
        ),
    );
    assert_eq!(rc, 0, "{out}");
    assert_eq!(out.matches(mark).count(), 2, "{out}");
}

fn state_partition_dev(vm: &mut Vm) -> String {
    let (rc, out) = run(
        vm,
        "for u in /sys/class/block/*/uevent; do grep -qx PARTNAME=cairn-state $u && sed -n 's/^DEVNAME=//p' $u; done",
    );
    assert_eq!(rc, 0, "{out}");
    let dev = out.trim().to_string();
    assert!(
        !dev.is_empty() && !dev.contains(char::is_whitespace),
        "{out}"
    );
    format!("/dev/{dev}")
}

fn assert_clean_boot(vm: &mut Vm) {
    let (rc, out) = run(vm, "cat /var/cairn-marker /etc/cairn-marker");
    assert_ne!(rc, 0, "a marker survived: {out}");
    assert!(out.contains("No such file"), "{out}");
}

#[test]
fn disk_state_is_unreadable_after_power_off_and_power_cut() {
    let b = built("tiny");
    let tmp = tempfile::tempdir().expect("tempdir");
    let img = copy_image(&b.raw, tmp.path(), "amnesia.raw");

    // Boot 1: write, prove it is on the crypt device and not on the raw
    // partition, then power off cleanly.
    let mut vm = boot_writable(&img, "amnesia-1");
    let (rc, out) = run(&mut vm, "cryptsetup status cairn-state");
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("type:    PLAIN"), "{out}");
    assert!(out.contains("aes-xts-plain64"), "{out}");
    assert!(out.contains("keysize: 512 bits"), "{out}");
    let mark = marker("poweroff");
    write_marker(&mut vm, &mark);
    let (rc, out) = run(
        &mut vm,
        &format!("grep -c -a {mark} /dev/mapper/cairn-state"),
    );
    assert_eq!(
        rc, 0,
        "the marker was not written to the state device: {out}"
    );
    let part = state_partition_dev(&mut vm);
    let (rc, out) = run(&mut vm, &format!("grep -c -a {mark} {part}"));
    assert_eq!((rc, out.trim()), (1, "0"), "plaintext on {part}");
    vm.powerdown(Duration::from_secs(
        180 * cairn::vm::qemu::timeout_scale() as u64,
    ))
    .expect("clean power-off");
    assert!(
        !file_contains(&img, mark.as_bytes()),
        "the marker is readable in the disk image after power-off"
    );

    // Boot 2: clean; write again, then cut the power.
    let mut vm = boot_writable(&img, "amnesia-2");
    assert_clean_boot(&mut vm);
    let mark2 = marker("powercut");
    write_marker(&mut vm, &mark2);
    vm.kill();
    assert!(
        !file_contains(&img, mark2.as_bytes()),
        "the marker is readable in the disk image after a power cut"
    );

    // Boot 3: clean again.
    let mut vm = boot_writable(&img, "amnesia-3");
    assert_clean_boot(&mut vm);
    crate::boot::raw::assert_read_only_root(&mut vm);
}

#[test]
fn control_unencrypted_state_does_leave_the_marker_on_disk() {
    let b = built("tiny-plain");
    let tmp = tempfile::tempdir().expect("tempdir");
    let img = copy_image(&b.raw, tmp.path(), "plain.raw");
    let mut vm = boot_writable(&img, "amnesia-plain");
    let mark = marker("plain");
    write_marker(&mut vm, &mark);
    vm.powerdown(Duration::from_secs(
        180 * cairn::vm::qemu::timeout_scale() as u64,
    ))
    .expect("clean power-off");
    assert!(
        file_contains(&img, mark.as_bytes()),
        "the host-side scan missed a marker that is on disk in plaintext"
    );
}
