//! Field media: the hybrid ISO boots as a CD under SeaBIOS and OVMF (no
//! site file: the recipe's defaults) and, written by `cairn flash
//! --to-file --site`, as a USB stick that applies its site file (read from
//! the ISO's EFI image); the qcow2 boots under OVMF; a flipped byte in the
//! ISO's root file stops the boot at dm-verity; the fixed VHD boots
//! under OVMF, and so do the stream-optimised VMDK and the GCE tarball's
//! disk.raw.

use std::path::{Path, PathBuf};

use cairn::vm::qemu::{BootSpec, DiskBus, Firmware, ImageFormat, Vm};
use qemu_tests::*;

fn media(ext: &str) -> PathBuf {
    let b = built("tiny");
    let p = b.raw.with_extension(ext);
    assert!(p.is_file(), "the test build made no {}", p.display());
    p
}

fn boot_to_ready(image: &Path, format: ImageFormat, fw: Firmware, bus: DiskBus, log: &str) -> Vm {
    let mut spec = BootSpec::new(image, format, fw, log_path(log));
    spec.bus = bus;
    spec.debug_console = true;
    let mut vm = Vm::start(&spec).expect("start qemu");
    vm.wait_for_line("cairn: ready", boot_timeout())
        .unwrap_or_else(|e| panic!("{log}: not ready: {e:#}"));
    vm
}

#[test]
fn iso_as_cdrom_reaches_ready_under_seabios_and_ovmf() {
    let iso = media("iso");
    for (fw, log) in [
        (Firmware::Bios, "iso-seabios-cd"),
        (Firmware::Uefi, "iso-ovmf-cd"),
    ] {
        let mut vm = boot_to_ready(&iso, cairn::media::ISO.qemu, fw, DiskBus::Cdrom, log);
        let serial = vm.serial_text();
        assert!(
            serial.contains("cairn: found ISO medium"),
            "{log}: {serial}"
        );
        assert!(
            serial.contains("cairn: state: RAM"),
            "{log}: ISO media keep state in RAM"
        );
        assert!(
            serial.contains("cairn: site: no site file on the medium; the recipe's defaults apply"),
            "{log}: {serial}"
        );
        crate::boot::raw::assert_read_only_root(&mut vm);
    }
}

#[test]
fn qcow2_reaches_ready_under_ovmf() {
    let q = media("qcow2");
    let mut vm = boot_to_ready(
        &q,
        cairn::media::QCOW2.qemu,
        Firmware::Uefi,
        DiskBus::Virtio,
        "qcow2-ovmf",
    );
    let (rc, out) = vm
        .console_run("cryptsetup status cairn-state | head -1", console_timeout())
        .expect("console");
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("is active"), "{out}");
}

#[test]
fn iso_flashed_to_a_file_boots_as_a_usb_stick() {
    let b = built("tiny");
    let tmp = tempfile::tempdir().expect("tempdir");
    // A signed copy of the output folder, as a field team receives it.
    let dir = tmp.path().join("release");
    std::fs::create_dir(&dir).expect("mkdir");
    for f in ["iso", "raw", "qcow2", "raw.map"] {
        copy_image(&b.raw.with_extension(f), &dir, &format!("cairn-test-1.{f}"));
    }
    std::fs::copy(b.dir.join("manifest.json"), dir.join("manifest.json")).expect("copy manifest");
    std::fs::copy(b.dir.join("provenance.json"), dir.join("provenance.json"))
        .expect("copy provenance");
    let key = cairn::release::signify::generate();
    let pubkey = tmp.path().join("test.pub");
    std::fs::write(&pubkey, key.public().to_file_text("test public key")).expect("pubkey");
    cairn::release::sign::sign_dir(&dir, &key, "test.pub").expect("sign");

    // A site file, signed with the test image's site key, goes into the
    // ISO's EFI partition on the stick.
    let site = tmp.path().join("depot.toml");
    std::fs::write(
        &site,
        "name = \"depot\"\nhostname = \"iso-depot\"\nserial = \"1\"\n",
    )
    .expect("site file");
    let decl = cairn::release::site::declaration_beside(&dir.join("cairn-test-1.iso"))
        .expect("the test release takes site files");
    cairn::release::site::sign(&site, &site_test_key(), &decl).expect("sign");

    let stick = tmp.path().join("stick.img");
    let report = cairn::field::flash::flash(&cairn::field::flash::FlashOptions {
        image: dir.join("cairn-test-1.iso"),
        device: stick.clone(),
        pubkey: pubkey.clone(),
        yes: true,
        to_file: true,
        max_size: None,
        site: Some(site),
        write: Default::default(),
        allow_fixed: false,
        allow_large: false,
        discard_audit: false,
    })
    .unwrap_or_else(|e| panic!("flash --to-file --site failed: {e}"));
    eprintln!("{report}");
    assert!(report.site.is_some(), "{report}");
    let mut vm = boot_to_ready(
        &stick,
        cairn::media::RAW.qemu,
        Firmware::Uefi,
        DiskBus::UsbStorage,
        "iso-usb-stick",
    );
    let serial = vm.serial_text();
    assert!(serial.contains("cairn: found ISO medium"), "{serial}");
    assert!(
        serial.contains(&format!("cairn: site depot (key {})", decl.key_id)),
        "{serial}"
    );
    let (rc, host) = vm
        .console_run("cat /proc/sys/kernel/hostname", console_timeout())
        .expect("console");
    assert_eq!((rc, host.trim()), (0, "iso-depot"));
}

#[test]
fn one_flipped_byte_in_the_iso_root_file_stops_the_boot() {
    let iso = media("iso");
    let files = cairn::media::iso::list_iso(&iso).expect("list ISO");
    let root = files
        .iter()
        .find(|f| f.path == cairn::media::iso::ISO_ROOT)
        .expect("root file on the ISO");
    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = copy_image(&iso, tmp.path(), "flipped.iso");
    // Inside the first 4 KiB block of the squashfs: its superblock, which
    // mounting reads, so dm-verity must check it.
    flip_byte(&bad, root.offset + 1000);
    let spec = BootSpec::new(
        &bad,
        cairn::media::ISO.qemu,
        Firmware::Uefi,
        log_path("iso-flipped"),
    );
    let mut spec = spec;
    spec.bus = DiskBus::Cdrom;
    let mut vm = Vm::start(&spec).expect("start qemu");
    let (i, line) = vm
        .wait_for_any(&["cairn: ready", "cairn: FATAL"], boot_timeout())
        .expect("a verdict on the console");
    assert_eq!(i, 1, "the tampered ISO reached ready: {line}");
    assert!(line.contains("verity"), "{line}");
}

/// The VHD row: the raw disk's fixed VHD (as `--format vhd` writes it)
/// boots under OVMF, opened as the row says (QEMU's vpc driver).
#[test]
fn vhd_reaches_ready_under_ovmf() {
    let b = built("tiny");
    let d = tempfile::tempdir().expect("temporary folder");
    let vhd = d.path().join(cairn::media::VHD.file("tiny"));
    cairn::media::vhd::write_vhd(&b.raw, &vhd, "tiny", 1).expect("write the VHD");
    let mut vm = boot_to_ready(
        &vhd,
        cairn::media::VHD.qemu,
        Firmware::Uefi,
        DiskBus::Virtio,
        "vhd-ovmf",
    );
    crate::boot::raw::assert_read_only_root(&mut vm);
}

/// The VMDK and GCE rows, in one test (one image, two boots, to keep CI
/// short): the raw disk's stream-optimised VMDK (as `--format vmdk` writes
/// it) boots under OVMF opened as its row says (QEMU's vmdk driver, after
/// the stand-alone check `cairn run` makes); the GCE tarball's `disk.raw`,
/// unpacked by cairn's reader as GCE would, boots as a raw disk.
#[test]
fn vmdk_and_gce_tarball_reach_ready_under_ovmf() {
    let b = built("tiny");
    let d = tempfile::tempdir().expect("temporary folder");
    let vmdk = d.path().join(cairn::media::VMDK.file("tiny"));
    cairn::media::vmdk::write_vmdk(&b.raw, &vmdk, "tiny", 1).expect("write the VMDK");
    cairn::host::vmdk::check_file(&vmdk).expect("the VMDK stands alone");
    let mut vm = boot_to_ready(
        &vmdk,
        cairn::media::VMDK.qemu,
        Firmware::Uefi,
        DiskBus::Virtio,
        "vmdk-ovmf",
    );
    crate::boot::raw::assert_read_only_root(&mut vm);
    drop(vm);
    std::fs::remove_file(&vmdk).expect("remove the VMDK");

    let tar = d.path().join(cairn::media::GCE.file("tiny"));
    cairn::media::gce::write_gce(&b.raw, &tar, 1).expect("write the tarball");
    let disk = d.path().join(cairn::media::gce::MEMBER);
    cairn::media::gce::unpack(&tar, &disk).expect("unpack disk.raw");
    let mut vm = boot_to_ready(
        &disk,
        cairn::media::GCE.qemu,
        Firmware::Uefi,
        DiskBus::Virtio,
        "gce-ovmf",
    );
    crate::boot::raw::assert_read_only_root(&mut vm);
}
