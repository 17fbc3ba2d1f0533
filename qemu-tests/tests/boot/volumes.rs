//! Model volumes: the shared test image's model (tiny.toml's
//! `tiny-weights`, 1 MiB, uncompressed) is its own dm-verity volume. On
//! the raw disk and on the ISO the guest reads the model file through the
//! verity device it is mounted from, and its sha256 is the pinned file's;
//! one flipped byte in the model's volume stops the boot with a
//! `cairn: FATAL volume tiny-weights` line (control: the untouched image,
//! same byte range, reads fine).

use std::time::Duration;

use cairn::vm::qemu::{BootSpec, DiskBus, Firmware, Vm};
use qemu_tests::*;

const MODEL: &str = "tiny-weights";
const FILE: &str = "/usr/share/cairn/models/tiny-weights/weights.bin";

fn pinned_file_sha256() -> String {
    cairn::host::digest::Sha256::of_file(
        &workspace().join("qemu-tests/recipes/tiny-model/weights.bin"),
    )
    .expect("model file digest")
    .hex()
}

/// The model file is on the verity device, read-only, and is the pinned data.
fn assert_model_reads_through_verity(vm: &mut Vm, what: &str) {
    let t = console_timeout();
    let serial = vm.serial_text();
    let line = serial
        .lines()
        .find(|l| l.contains(&format!("cairn: volume {MODEL} verified by dm-verity")))
        .unwrap_or_else(|| panic!("{what}: {serial}"));
    // It names the device number the kernel's corruption message would.
    let devno = line
        .split("(device ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or("");
    assert!(
        devno.split(':').count() == 2
            && devno
                .split(':')
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
        "{what}: {line}"
    );
    let (rc, mounts) = vm.console_run("cat /proc/mounts", t).expect("console");
    assert_eq!(rc, 0, "{mounts}");
    let m = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/usr/share/cairn/models/tiny-weights"))
        .unwrap_or_else(|| panic!("{what}: the model is not a mount: {mounts}"));
    assert!(
        m.starts_with(&format!(
            "/dev/mapper/cairn-model-{MODEL} /usr/share/cairn/models/{MODEL} squashfs ro,"
        )),
        "{what}: {m}"
    );
    let (rc, out) = vm
        .console_run(&format!("veritysetup status cairn-model-{MODEL}"), t)
        .expect("console");
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("verified"), "{what}: {out}");
    let (rc, out) = vm
        .console_run(&format!("sha256sum {FILE}"), t)
        .expect("console");
    assert_eq!(rc, 0, "{what}: {out}");
    assert!(
        out.contains(&pinned_file_sha256()),
        "{what}: the model file read in the guest is not the pinned data: {out}"
    );
    let (rc, out) = vm
        .console_run(&format!("touch /usr/share/cairn/models/{MODEL}/x"), t)
        .expect("console");
    assert_ne!(rc, 0, "{what}: the model volume took a write: {out}");
}

#[test]
fn the_model_is_read_through_its_own_verity_volume_on_raw_and_iso() {
    let b = built("tiny");
    let m = cairn::release::manifest::read(&b.dir.join("manifest.json")).expect("manifest");
    let v = m
        .volumes
        .iter()
        .find(|v| v.name == MODEL)
        .expect("the manifest lists the model volume");
    assert_eq!(v.compression, "none");
    assert!(m
        .kernel
        .cmdline
        .contains(&format!("cairn.volume.{MODEL}={}", v.root_hash)));
    let iso = b.raw.with_extension("iso");
    for (image, format, bus, log) in [
        (
            &b.raw,
            cairn::media::RAW.qemu,
            DiskBus::Virtio,
            "volume-raw",
        ),
        (&iso, cairn::media::ISO.qemu, DiskBus::Cdrom, "volume-iso"),
    ] {
        let mut spec = BootSpec::new(image, format, Firmware::Uefi, log_path(log));
        spec.bus = bus;
        spec.debug_console = true;
        let mut vm = Vm::start(&spec).expect("start qemu");
        vm.wait_for_line("cairn: ready", boot_timeout())
            .unwrap_or_else(|e| panic!("{log}: not ready: {e:#}"));
        assert_model_reads_through_verity(&mut vm, log);
    }
}

#[test]
fn one_flipped_byte_in_the_model_volume_stops_the_boot_naming_it() {
    let b = built("tiny");
    let m = cairn::release::manifest::read(&b.dir.join("manifest.json")).expect("manifest");
    let v = m.volumes.iter().find(|v| v.name == MODEL).expect("volume");
    let (offset, _) = partition(&b.dir, &v.partition);
    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = copy_image(&b.raw, tmp.path(), "flipped-model.raw");
    // Byte 1000 of the volume: in its first 4 KiB block, which holds the
    // squashfs superblock and, uncompressed right after it, the first bytes
    // of weights.bin. Mounting reads that block, so the boot must stop.
    flip_byte(&bad, offset + 1000);
    let spec = BootSpec::new(
        &bad,
        cairn::media::RAW.qemu,
        Firmware::Uefi,
        log_path("volume-flipped"),
    );
    let mut vm = Vm::start(&spec).expect("start qemu");
    let (i, line) = vm
        .wait_for_any(&["cairn: ready", "cairn: FATAL"], boot_timeout())
        .expect("a verdict on the console");
    assert_eq!(i, 1, "the tampered model volume reached ready: {line}");
    assert!(
        line.contains(&format!("cairn: FATAL volume {MODEL}: verity:")),
        "{line}"
    );
    std::thread::sleep(Duration::from_secs(10));
    let serial = vm.serial_text();
    assert!(!serial.contains("cairn: starting systemd"), "{serial}");
    assert!(!serial.contains("cairn: ready"), "{serial}");
}

/// A model block that goes bad after boot (the image file changed under the
/// running guest) halts the node when it is read, naming the model's
/// mapping, like the root's (failclosed.rs); control: the same block read
/// before the flip is fine and the node goes on.
#[test]
fn a_model_block_corrupted_after_boot_halts_the_node_naming_the_volume() {
    let b = built("tiny");
    let m = cairn::release::manifest::read(&b.dir.join("manifest.json")).expect("manifest");
    let v = m.volumes.iter().find(|v| v.name == MODEL).expect("volume");
    let (offset, _) = partition(&b.dir, &v.partition);
    let tmp = tempfile::tempdir().expect("tempdir");
    let img = copy_image(&b.raw, tmp.path(), "late-model.raw");
    let mut spec = BootSpec::new(
        &img,
        cairn::media::RAW.qemu,
        Firmware::Uefi,
        log_path("volume-late"),
    );
    spec.debug_console = true;
    spec.snapshot = false;
    let mut vm = Vm::start(&spec).expect("start qemu");
    vm.wait_for_line("cairn: ready", boot_timeout())
        .expect("the untouched image reaches ready");
    // A block in the middle of the 1 MiB weights (uncompressed, so file
    // data), read straight from the verity device (O_DIRECT).
    let block = 128u64;
    corrupted_read_after_boot_halts(
        &mut vm,
        &img,
        &format!("cairn-model-{MODEL}"),
        offset,
        block,
    );
}
