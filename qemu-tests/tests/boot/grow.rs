//! `[state] grow`: the raw image written to a disk twice its size boots,
//! and the initramfs grows the state partition to the disk's end. Judged
//! from outside: the partition table on the host (sfdisk) has partition 4
//! reaching the end, the backup GPT at the end and no errors; partitions 1-3
//! are as built and the root and hash tree partitions are byte for byte
//! unchanged; the guest's dm-crypt state device has the new size. Control:
//! the same disk with an image built from `tiny-nogrow` (tiny.toml with
//! `grow = false` and its own name, nothing else) keeps its table.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cairn::host::digest::Sha256;
use cairn::vm::qemu::{BootSpec, Firmware, Vm};
use qemu_tests::*;

const DISK: u64 = 2 << 30;

/// `sfdisk -d` lines for the partitions (device names cut off).
fn table(img: &Path) -> Vec<String> {
    let out = Command::new("sfdisk")
        .arg("-d")
        .arg(img)
        .output()
        .expect("sfdisk");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(" : ").map(|(_, rest)| rest.to_string()))
        .collect()
}

fn region_digest(img: &Path, (offset, size): (u64, u64)) -> Sha256 {
    let mut f = std::fs::File::open(img).expect("open");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    let mut buf = Vec::with_capacity(size as usize);
    f.take(size).read_to_end(&mut buf).expect("read");
    assert_eq!(buf.len() as u64, size);
    Sha256::of_bytes(&buf)
}

/// A sparse copy of `raw` extended to DISK bytes, booted to ready and
/// powered off; returns (serial, state device size seen by the guest).
fn boot_on_bigger_disk(raw: &Path, dir: &Path, log: &str) -> (std::path::PathBuf, String, u64) {
    let img = copy_image(raw, dir, &format!("{log}.raw"));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .and_then(|f| f.set_len(DISK))
        .expect("extend the disk");
    let mut spec = BootSpec::new(&img, cairn::media::RAW.qemu, Firmware::Uefi, log_path(log));
    spec.debug_console = true;
    spec.snapshot = false; // the table is judged on the host afterwards
    let mut vm = Vm::start(&spec).expect("start qemu");
    vm.wait_for_line("cairn: ready", boot_timeout())
        .unwrap_or_else(|e| panic!("{log}: not ready: {e:#}"));
    let (rc, out) = vm
        .console_run(
            "blockdev --getsize64 $(findmnt -n -o SOURCE /run/cairn/state)",
            console_timeout(),
        )
        .expect("console");
    assert_eq!(rc, 0, "{out}");
    let size: u64 = out.trim().parse().unwrap_or_else(|_| panic!("{out}"));
    let serial = vm.serial_text();
    vm.powerdown(Duration::from_secs(
        180 * cairn::vm::qemu::timeout_scale() as u64,
    ))
    .expect("clean power-off");
    (img, serial, size)
}

#[test]
fn state_grows_to_the_end_of_a_larger_disk_and_nothing_else_changes() {
    let b = built("tiny");
    let tmp = tempfile::tempdir().expect("tempdir");
    let built_table = table(&b.raw);
    let root = partition(&b.dir, "cairn-root");
    let verity = partition(&b.dir, "cairn-verity");
    let root_digest = region_digest(&b.raw, root);
    let verity_digest = region_digest(&b.raw, verity);

    let (img, serial, size) = boot_on_bigger_disk(&b.raw, tmp.path(), "grow");
    let state = partition_number(&b.dir, "cairn-state");
    assert!(
        serial.contains(&format!("cairn: state: grew /dev/vda{state} from")),
        "{serial}"
    );
    assert!(size > DISK - (200 << 20), "state device is {size} bytes");

    let t = table(&img);
    // The state partition is the last one; every other is unchanged.
    let n = built_table.len();
    assert_eq!(t.len(), n, "{t:?}");
    assert_eq!(
        t[..n - 1],
        built_table[..n - 1],
        "partitions before the state changed"
    );
    let field = |line: &str, key: &str| -> u64 {
        line.split(',')
            .find_map(|f| f.trim().strip_prefix(key))
            .and_then(|v| v.trim_start_matches('=').trim().parse().ok())
            .unwrap_or_else(|| panic!("{key} in {line}"))
    };
    let (start, sectors) = (field(&t[n - 1], "start"), field(&t[n - 1], "size"));
    assert_eq!(start, field(&built_table[n - 1], "start"));
    assert!((start + sectors) * 512 >= DISK - (1 << 20), "{}", t[n - 1]);
    let v = Command::new("sfdisk")
        .arg("--verify")
        .arg(&img)
        .output()
        .expect("sfdisk");
    let vt = String::from_utf8_lossy(&v.stdout).to_string() + &String::from_utf8_lossy(&v.stderr);
    assert!(vt.contains("No errors detected"), "{vt}");
    assert!(!vt.contains("backup GPT table is not on the end"), "{vt}");
    assert_eq!(
        region_digest(&img, root),
        root_digest,
        "root partition changed"
    );
    assert_eq!(
        region_digest(&img, verity),
        verity_digest,
        "hash tree changed"
    );

    // Control: built without `grow`, the same larger disk keeps its table.
    let plain = built("tiny-nogrow");
    let plain_table = table(&plain.raw);
    let (img, serial, size) = boot_on_bigger_disk(&plain.raw, tmp.path(), "grow-control");
    assert!(!serial.contains("state: grew"), "{serial}");
    assert!(size < (1 << 30), "state device is {size} bytes");
    assert_eq!(table(&img), plain_table);
}

/// The control recipe must differ from tiny in `grow` alone (and the name,
/// which picks the output folder), so the control shows what grow does.
#[test]
fn grow_control_recipe_is_tiny_without_grow() {
    let dir = workspace().join("qemu-tests/recipes");
    let env = cairn::recipe::LoadEnv {
        cache_root: workspace().join("target/qemu-tests/unused-cache"),
        source_date_epoch: None,
        verify_signature: None,
    };
    let load = |name: &str| {
        cairn::recipe::load(&dir.join(format!("{name}.toml")), None, &env)
            .unwrap_or_else(|e| panic!("{name}.toml: {e}"))
    };
    let (tiny, control) = (load("tiny"), load("tiny-nogrow"));
    assert!(tiny.state_grow, "tiny.toml must grow its state");
    assert!(!control.state_grow, "tiny-nogrow.toml must not grow");
    assert_ne!(
        tiny.name, control.name,
        "the two need their own output folders"
    );
    // Every resolved setting but those four is the same.
    let mut same = control.clone();
    same.file = tiny.file.clone();
    same.recipe_sha256 = tiny.recipe_sha256;
    same.name = tiny.name.clone();
    same.state_grow = tiny.state_grow;
    // A site file is bound to its image's name.
    if let (Some(s), Some(t)) = (same.site.as_mut(), tiny.site.as_ref()) {
        s.image = t.image.clone();
    }
    // A model's `at` names the file its pin is written in.
    for (m, t) in same.workloads.models.iter_mut().zip(&tiny.workloads.models) {
        m.at = t.at.clone();
    }
    assert_eq!(
        format!("{same:#?}"),
        format!("{tiny:#?}"),
        "tiny-nogrow.toml differs from tiny.toml in more than grow"
    );
}
