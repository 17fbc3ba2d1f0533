//! Partitions by identity (Discoverable Partitions Specification): the
//! root partition's UUID is the first 128 bits of the root hash, the hash
//! tree's the last 128 bits, and the state partition's derives from the
//! root hash too. systemd's own tool finds the image by its root hash; the
//! initramfs finds exactly this image's partitions on the one disk that
//! holds its root, so another cairn stick plugged in is never written.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use cairn::host::digest::Sha256;
use cairn::media::disk::{LABEL_ROOT, LABEL_STATE, LABEL_VERITY};
use cairn::vm::qemu::{BootSpec, Firmware, Vm};
use qemu_tests::*;

fn dissect(img: &Path, hash: &str) -> (bool, String) {
    let mut cmd = cairn::host::runner::command("systemd-dissect");
    cmd.arg(format!("--root-hash={hash}"))
        .arg("--json=short")
        .arg(img);
    // Not runner::output: a refusal (non-zero exit) is what the control expects.
    let out = cmd
        .output()
        .expect("systemd-dissect (Debian package systemd-container; make deps installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn systemd_dissect_finds_the_image_by_the_manifest_root_hash() {
    let b = built("tiny");
    let m = cairn::release::manifest::read(&b.dir.join("manifest.json")).expect("manifest");
    let hash = m.verity.root_hash.hex();
    let (ok, out) = dissect(&b.raw, &hash);
    assert!(ok, "systemd-dissect refused the image: {out}");
    // systemd picked the root and root-verity partitions by the UUIDs the
    // root hash names (it ignores every other root partition).
    let root_uuid = format!(
        "\"partition_uuid\":\"{}\"",
        &cairn::media::disk::root_uuid(&m.verity.root_hash)
    );
    let verity_uuid = format!(
        "\"partition_uuid\":\"{}\"",
        &cairn::media::disk::verity_uuid(&m.verity.root_hash)
    );
    assert!(out.contains("\"designator\":\"root\""), "{out}");
    assert!(out.contains("\"designator\":\"root-verity\""), "{out}");
    assert!(out.contains(&root_uuid), "{out}");
    assert!(out.contains(&verity_uuid), "{out}");
    assert!(out.contains("\"verity\":\"yes\""), "{out}");
    // The partitions systemd picked do verify against that hash (userspace
    // veritysetup: this host has no device-mapper for systemd-dissect to
    // open the mapping itself).
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, tree) = (tmp.path().join("root"), tmp.path().join("verity"));
    let root = partition(&b.dir, LABEL_ROOT);
    extract_region(&b.raw, (root.0, m.verity.data_size), &data);
    extract_region(&b.raw, partition(&b.dir, LABEL_VERITY), &tree);
    let mut v = cairn::host::runner::command("veritysetup");
    v.arg("verify").arg(&data).arg(&tree).arg(&hash);
    cairn::host::runner::output("veritysetup verify", v).unwrap_or_else(|e| panic!("{e:#}"));

    // Control: one bit off, and systemd finds no root for it.
    let mut wrong = m.verity.root_hash;
    wrong.0[0] ^= 1;
    let (ok, out) = dissect(&b.raw, &wrong.hex());
    assert!(!ok, "systemd-dissect accepted a wrong root hash: {out}");
    assert!(
        out.contains("No root partition for specified root hash"),
        "{out}"
    );
}

const DISK: u64 = 2 << 30;

/// Where ext4 keeps its primary superblock, from the partition's start.
const SUPERBLOCK: u64 = 1024;

fn bigger_copy(raw: &Path, dir: &Path, name: &str) -> std::path::PathBuf {
    let img = copy_image(raw, dir, name);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .and_then(|f| f.set_len(DISK))
        .expect("extend the disk");
    img
}

fn write_at(img: &Path, at: u64, data: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(img)
        .expect("open");
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.write_all(data).expect("write");
}

#[test]
fn another_cairn_disk_is_left_byte_for_byte_unchanged() {
    // Ours: disk state (dm-crypt) with grow. Theirs: another cairn image
    // (its own root hash) with an unencrypted disk state partition.
    let ours = built("tiny");
    let theirs = built("tiny-plain");
    let state = partition_number(&ours.dir, LABEL_STATE);
    let their_state = partition_number(&theirs.dir, LABEL_STATE);
    let tmp = tempfile::tempdir().expect("tempdir");
    let our_img = bigger_copy(&ours.raw, tmp.path(), "ours.raw");
    let their_img = bigger_copy(&theirs.raw, tmp.path(), "theirs.raw");
    let (our_mark, their_mark) = (marker("ours"), marker("theirs"));
    // Each marker where an ext4 file system keeps its superblock (1024
    // bytes in), which mke2fs writes whatever the partition's size; at
    // 1 MiB in it writes or not by the layout (reserved GDT blocks), which
    // moves with the partition's size.
    write_at(
        &our_img,
        partition(&ours.dir, LABEL_STATE).0 + SUPERBLOCK,
        our_mark.as_bytes(),
    );
    write_at(
        &their_img,
        partition(&theirs.dir, LABEL_STATE).0 + SUPERBLOCK,
        their_mark.as_bytes(),
    );
    let their_before = Sha256::of_file(&their_img).expect("hash");

    let mut spec = BootSpec::new(
        &our_img,
        cairn::media::RAW.qemu,
        Firmware::Uefi,
        log_path("identity-two-disks"),
    );
    spec.debug_console = true;
    spec.snapshot = false;
    // Theirs on virtio-scsi: it becomes /dev/sda, which sorts before our
    // /dev/vda, so "the first partition named cairn-state" would be theirs.
    // Writable, and discards reach the file (discard=unmap).
    spec.extra_args = vec![
        "-device".into(),
        "virtio-scsi-pci,id=scsi1".into(),
        "-drive".into(),
        format!(
            "if=none,id=theirs,format=raw,file={},discard=unmap",
            their_img.display()
        ),
        "-device".into(),
        "scsi-hd,drive=theirs,bus=scsi1.0".into(),
    ];
    let mut vm = Vm::start(&spec).expect("start qemu");
    vm.wait_for_line("cairn: ready", boot_timeout())
        .unwrap_or_else(|e| panic!("not ready with a second cairn disk attached: {e:#}"));
    let (rc, out) = vm
        .console_run(
            &format!("cat /sys/class/block/sda/size && /sbin/blkid -p -s PART_ENTRY_NAME -o value /dev/sda{their_state}"),
            console_timeout(),
        )
        .expect("console");
    assert_eq!(rc, 0, "the guest does not see the second disk: {out}");
    assert!(out.contains("cairn-state"), "{out}");
    let serial = vm.serial_text();
    assert!(serial.contains("cairn: found root /dev/vda2"), "{serial}");
    assert!(
        serial.contains(&format!("cairn: state: grew /dev/vda{state} from")),
        "{serial}"
    );
    assert!(
        serial.contains(&format!("cairn: state: disk /dev/vda{state}, dm-crypt")),
        "{serial}"
    );
    // Power-off runs cairn-state-discard too.
    vm.powerdown(Duration::from_secs(
        180 * cairn::vm::qemu::timeout_scale() as u64,
    ))
    .expect("clean power-off");

    assert_eq!(
        Sha256::of_file(&their_img).expect("hash"),
        their_before,
        "the other cairn disk changed"
    );
    // Control: our own state partition was grown and formatted (under a
    // key that is gone): the marker written there before boot is gone.
    assert!(file_contains(&their_img, their_mark.as_bytes()));
    assert!(
        !file_contains(&our_img, our_mark.as_bytes()),
        "our state partition was not formatted"
    );
}
