//! Real boots of the hybrid ISO made by `cairn::media::iso::write_iso` from the
//! qemu-test image's own UKI, kernel and initramfs: under SeaBIOS (GRUB)
//! and OVMF (the UKI from the El Torito / GPT EFI image), as CD-ROM, virtio
//! disk and USB stick. The qemu-test initramfs looks for GPT partitions, so
//! it stops with "cairn: FATAL no partitions..."; seeing "cairn: initramfs
//! started" proves the firmware -> loader -> kernel -> initramfs path.
//! Fails when the test image is absent (the boot tests build it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use cairn::media::iso::{write_iso, IsoInputs};
use cairn::vm::qemu::{timeout_scale, BootSpec, DiskBus, Firmware, Vm};

mod common;

const TEST_IMAGE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../target/qemu-tests/out/cairn-test-1"
);
const RAW: &str = "cairn-test-1.raw";

struct Built {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    iso: PathBuf,
    cmdline: String,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn inputs(b: &Built) -> (PathBuf, PathBuf, PathBuf, PathBuf, PathBuf) {
    let d = &b.dir;
    (
        d.join("uki.efi"),
        d.join("vmlinuz"),
        d.join("initrd"),
        d.join("root.squashfs"),
        d.join("root.verity"),
    )
}

fn make_iso(b: &Built, work: &Path, out: &Path) {
    let (uki, kernel, initrd, root, verity) = inputs(b);
    write_iso(
        &IsoInputs {
            uki: &uki,
            shim: None,
            kernel: &kernel,
            initrd: &initrd,
            cmdline: &b.cmdline,
            root: &root,
            verity: &verity,
            volumes: &[],
            volume_id: "CAIRN_TEST_1",
            epoch: 1_700_000_000,
        },
        work,
        out,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
}

/// The ISO, built once per test binary from the test image's UKI.
fn built() -> &'static Built {
    static B: OnceLock<Built> = OnceLock::new();
    B.get_or_init(|| {
        let raw = testkit::test_image(Path::new(TEST_IMAGE), &[RAW]).join(RAW);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let uki = dir.join("uki.efi");
        run(Command::new("mcopy")
            .arg("-i")
            .arg(format!("{}@@1M", raw.display()))
            .arg("::/EFI/BOOT/BOOTX64.EFI")
            .arg(&uki));
        run(Command::new("objcopy")
            .arg("--dump-section")
            .arg(format!(".linux={}", dir.join("vmlinuz").display()))
            .arg("--dump-section")
            .arg(format!(".initrd={}", dir.join("initrd").display()))
            .arg(&uki)
            .arg(dir.join("uki.copy")));
        let cmdline = cairn::pipeline::uki::read_cmdline(&std::fs::read(&uki).unwrap()).unwrap();
        assert!(cmdline.contains("console=ttyS0"), "{cmdline}");
        std::fs::create_dir_all(dir.join("tree/etc")).unwrap();
        std::fs::write(dir.join("tree/etc/hello"), "hello\n").unwrap();
        run(Command::new("mksquashfs")
            .arg(dir.join("tree"))
            .arg(dir.join("root.squashfs"))
            .args(["-noappend", "-quiet", "-mkfs-time", "0", "-all-time", "0"])
            .env_remove("SOURCE_DATE_EPOCH"));
        std::fs::write(dir.join("root.verity"), vec![0u8; 4096]).unwrap();
        let mut b = Built {
            _tmp: tmp,
            iso: dir.join("cairn-test-1.iso"),
            dir,
            cmdline,
        };
        let iso = b.iso.clone();
        make_iso(&b, &b.dir.join("work"), &iso);
        b.iso = iso;
        b
    })
}

fn boot(b: &Built, firmware: Firmware, bus: DiskBus) {
    common::configure_qemu();
    let log = b.dir.join(format!("serial-{firmware:?}-{bus:?}.log"));
    let mut spec = BootSpec::new(&b.iso, cairn::media::ISO.qemu, firmware, &log);
    spec.bus = bus;
    spec.memory_mib = 1024;
    let mut vm = Vm::start(&spec).unwrap_or_else(|e| panic!("{firmware:?} {bus:?}: {e:#}"));
    let t = Duration::from_secs(180) * timeout_scale();
    let started = std::time::Instant::now();
    let line = vm
        .wait_for_line("cairn: initramfs started", t)
        .unwrap_or_else(|e| panic!("{firmware:?} {bus:?}: {e:#}"));
    println!(
        "{firmware:?} {bus:?}: {line} after {:.1}s ({} accel)",
        started.elapsed().as_secs_f64(),
        vm.vm_accel()
    );
    let text = vm.serial_text();
    if firmware == Firmware::Bios {
        assert!(
            text.contains("cairn: GRUB (BIOS) loading the kernel"),
            "{firmware:?} {bus:?}: GRUB did not run"
        );
        assert!(
            text.contains("BOOT_IMAGE=/cairn/vmlinuz"),
            "{firmware:?} {bus:?}"
        );
    } else {
        assert!(!text.contains("BOOT_IMAGE="), "UEFI went through GRUB?");
    }
    assert!(
        text.contains(&b.cmdline),
        "{firmware:?} {bus:?}: cmdline not passed"
    );
    vm.kill();
}

#[test]
fn iso_boots_under_seabios_as_cdrom_disk_and_usb() {
    let b = built();
    for bus in [DiskBus::Cdrom, DiskBus::Virtio, DiskBus::UsbStorage] {
        boot(b, Firmware::Bios, bus);
    }
}

#[test]
fn iso_boots_under_ovmf_as_cdrom_disk_and_usb() {
    let b = built();
    for bus in [DiskBus::Cdrom, DiskBus::Virtio, DiskBus::UsbStorage] {
        boot(b, Firmware::Uefi, bus);
    }
}

#[test]
fn iso_from_real_inputs_is_reproducible_and_extractable() {
    let b = built();
    let again = b.dir.join("again.iso");
    std::thread::sleep(Duration::from_millis(1100));
    make_iso(b, &b.dir.join("work-again"), &again);
    let st = Command::new("cmp")
        .arg(&b.iso)
        .arg(&again)
        .status()
        .unwrap();
    assert!(st.success(), "two ISO builds differ");
    let out = b.dir.join("vmlinuz.out");
    cairn::media::iso::read_file_from_iso(&b.iso, cairn::media::iso::ISO_KERNEL, &out).unwrap();
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(b.dir.join("vmlinuz")).unwrap()
    );
    let files = cairn::media::iso::list_iso(&b.iso).unwrap();
    let root = files
        .iter()
        .find(|f| f.path == cairn::media::iso::ISO_ROOT)
        .unwrap();
    assert!(root.contiguous && root.offset % 2048 == 0);
}
