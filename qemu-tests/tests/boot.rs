//! Boot tests for the raw disk: build the test recipe once per run, boot the
//! real image under QEMU with OVMF, judge from the serial console and the
//! debug console (ttyS1), never by trusting the guest's own verdict alone.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use cairn::qemu::{BootSpec, Firmware, ImageFormat, Vm};

/// The test image, built once per test process.
struct Built {
    dir: PathBuf,
    raw: PathBuf,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn built() -> &'static Built {
    static B: OnceLock<Result<Built, String>> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let r = B.get_or_init(|| {
        let ws = workspace();
        let recipe = ws.join("qemu-tests/recipes/tiny.toml");
        let out = ws.join("target/qemu-tests/out");
        let r = cairn::recipe::load(&recipe, Some(&ws)).map_err(|e| e.to_string())?;
        eprintln!("qemu-tests: building {} (once per run)", recipe.display());
        let res = cairn::build::build(
            &r,
            &cairn::build::BuildOptions {
                out_dir: out,
                key: None,
            },
        )
        .map_err(|e| format!("{e:#}"))?;
        Ok(Built {
            dir: res.dir,
            raw: res.raw,
        })
    });
    match r {
        Ok(b) => b,
        Err(e) => panic!("building the test image failed: {e}"),
    }
}

/// Under TCG a boot to ready takes a minute or two; allow for a loaded CI.
fn boot_timeout() -> Duration {
    Duration::from_secs(420 * cairn::qemu::timeout_scale() as u64)
}

fn log_path(name: &str) -> PathBuf {
    let d = workspace().join("target/qemu-tests/logs");
    std::fs::create_dir_all(&d).expect("log folder");
    d.join(format!("{name}.serial.log"))
}

fn partition(dir: &Path, label: &str) -> (u64, u64) {
    let m = cairn::manifest::read(&dir.join("manifest.json")).expect("manifest");
    let p = m
        .partitions
        .iter()
        .find(|p| p.label == label)
        .unwrap_or_else(|| panic!("no partition {label} in the manifest"));
    (p.offset, p.size)
}

#[test]
fn raw_image_reaches_ready_with_a_read_only_root() {
    let b = built();
    let mut spec = BootSpec::new(
        &b.raw,
        ImageFormat::Raw,
        Firmware::Uefi,
        log_path("raw-ovmf"),
    );
    spec.debug_console = true;
    let mut vm = Vm::start(&spec).expect("start qemu");
    eprintln!("accelerator: {:?}", vm.vm_accel());
    vm.wait_for_line("cairn: ready", boot_timeout())
        .expect("the untouched image reaches ready");
    let serial = vm.serial_text();
    assert!(
        serial.contains("cairn: root verified by dm-verity"),
        "{serial}"
    );
    assert!(!serial.contains("cairn: FATAL"), "{serial}");

    let t = Duration::from_secs(120);
    let (rc, mounts) = vm.console_run("cat /proc/mounts", t).expect("console");
    assert_eq!(rc, 0, "{mounts}");
    let root = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/"))
        .unwrap_or_else(|| panic!("no / in /proc/mounts: {mounts}"));
    assert!(
        root.starts_with("/dev/mapper/cairn-root / squashfs ro,"),
        "{root}"
    );

    let (rc, out) = vm
        .console_run("echo x > /usr/cairn-write-test", t)
        .expect("console");
    assert_ne!(rc, 0, "writing to /usr succeeded: {out}");
    assert!(out.contains("Read-only file system"), "{out}");
    let (rc, out) = vm
        .console_run("touch /cairn-write-test", t)
        .expect("console");
    assert_ne!(rc, 0, "writing to / succeeded: {out}");

    // Control: the console and writable state do work, so the failures
    // above are the read-only root, not a broken shell.
    let (rc, out) = vm
        .console_run(
            "echo x > /var/cairn-write-test && cat /var/cairn-write-test",
            t,
        )
        .expect("console");
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains('x'), "{out}");
    let (rc, out) = vm
        .console_run("veritysetup status cairn-root", t)
        .expect("console");
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("verified"), "{out}");
}

#[test]
fn one_flipped_byte_in_the_root_partition_stops_the_boot() {
    let b = built();
    let (offset, _size) = partition(&b.dir, cairn::disk::LABEL_ROOT);
    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = tmp.path().join("flipped.raw");
    let st = std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(&b.raw)
        .arg(&bad)
        .status()
        .expect("cp");
    assert!(st.success());
    // Byte 1000 of the root lies in its first 4 KiB block, which holds the
    // squashfs superblock: mounting must read it, so dm-verity must see it.
    // (dm-verity checks blocks when they are read; a flip in a block the
    // boot never reads is caught when something reads it.)
    flip_byte(&bad, offset + 1000);
    assert_ne!(
        cairn::digest::Sha256::of_file(&bad).unwrap(),
        cairn::digest::Sha256::of_file(&b.raw).unwrap()
    );
    let spec = BootSpec::new(
        &bad,
        ImageFormat::Raw,
        Firmware::Uefi,
        log_path("raw-flipped"),
    );
    let mut vm = Vm::start(&spec).expect("start qemu");
    let (i, line) = vm
        .wait_for_any(&["cairn: ready", "cairn: FATAL"], boot_timeout())
        .expect("a verdict on the console");
    assert_eq!(i, 1, "the tampered image reached ready: {line}");
    assert!(line.contains("verity"), "{line}");
    // It halts: no shell, no systemd, and no ready later either.
    std::thread::sleep(Duration::from_secs(10));
    let serial = vm.serial_text();
    assert!(!serial.contains("cairn: ready"), "{serial}");
    assert!(!serial.contains("cairn: starting systemd"), "{serial}");
}

fn flip_byte(path: &Path, at: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open image");
    let mut b = [0u8];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= 0x01;
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&b).unwrap();
}
