//! Trusted boot under real firmware: OVMF with Secure Boot enforcing and
//! Debian's snakeoil db runs a UKI signed with the snakeoil key (raw disk,
//! ISO as a CD and as a USB stick) and refuses the unsigned UKI and one
//! with another root hash signed by an untrusted key; with swtpm attached,
//! the PCR 11 the guest reads is the manifest's prediction, no unit fails
//! (systemd's PCR phase units are masked), and a build with one
//! command-line word changed predicts and reads another value. A boot
//! entry's options (systemd-boot, signed, in front of the UKI) are ignored
//! under Secure Boot and replace the command line without it.
//! The shared test images are re-signed here rather than rebuilt: the
//! build's own `--sb-key` path is covered by the verify tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use cairn::host::digest::Sha256;
use cairn::pipeline::sbsign::SbKey;
use cairn::vm::qemu::{BootSpec, DiskBus, Firmware, ImageFormat, Vm};
use cairn::vm::trusted::{self, Swtpm};
use qemu_tests::*;

/// What the firmware prints when it refuses an image.
const REFUSALS: [&str; 2] = ["Access Denied", "Security Violation"];
/// Anything that shows the kernel (or cairn's init) ran.
const KERNEL_RAN: [&str; 2] = ["Linux version", "cairn:"];

fn run(cmd: Command) {
    cairn::host::runner::output("test", cmd).unwrap_or_else(|e| panic!("{e:#}"));
}

/// The snakeoil key, decrypted into `dir` (sbsign reads no passphrase).
fn snakeoil(dir: &Path) -> SbKey {
    let key = dir.join("snakeoil.key");
    let mut cmd = cairn::host::runner::command("openssl");
    cmd.args(["pkey", "-in", trusted::SNAKEOIL_KEY, "-passin"])
        .arg(format!("pass:{}", trusted::SNAKEOIL_PASSPHRASE))
        .arg("-out")
        .arg(&key);
    run(cmd);
    SbKey::load(&key, Path::new(trusted::SNAKEOIL_CERT)).expect("snakeoil key")
}

/// A fresh key pair no firmware trusts.
fn untrusted(dir: &Path) -> SbKey {
    let name = dir.join("untrusted");
    cairn::release::secureboot::keygen(&name).expect("keygen --secure-boot");
    SbKey::load(&dir.join("untrusted.sb.key"), &dir.join("untrusted.sb.crt")).expect("key")
}

fn mcopy(args: &[&std::ffi::OsStr]) {
    let mut cmd = cairn::host::runner::command("mcopy");
    cmd.env("MTOOLS_SKIP_CHECK", "1").args(args);
    run(cmd);
}

/// Replaces EFI/BOOT/BOOTX64.EFI in the FAT image at `offset` of `image`
/// with the same UKI signed by `key` (after `edit`, if any).
fn resign(image: &Path, offset: u64, key: &SbKey, work: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
    let fat = format!("{}@@{offset}", image.display());
    let uki = work.join("BOOTX64.EFI");
    let _ = std::fs::remove_file(&uki);
    mcopy(&[
        "-n".as_ref(),
        "-i".as_ref(),
        fat.as_ref(),
        "::/EFI/BOOT/BOOTX64.EFI".as_ref(),
        uki.as_os_str(),
    ]);
    let mut data = std::fs::read(&uki).expect("read UKI");
    edit(&mut data);
    std::fs::write(&uki, &data).expect("write UKI");
    cairn::pipeline::sbsign::sign_efi(key, &uki, 1_735_689_600).expect("sbsign");
    cairn::pipeline::sbsign::verify_efi(&uki, &key.cert).expect("sbverify");
    mcopy(&[
        "-o".as_ref(),
        "-i".as_ref(),
        fat.as_ref(),
        uki.as_os_str(),
        "::/EFI/BOOT/BOOTX64.EFI".as_ref(),
    ]);
}

/// A copy of `raw` whose UKI is signed by `key`.
fn signed_raw(
    b: &Built,
    key: &SbKey,
    dir: &Path,
    name: &str,
    edit: impl FnOnce(&mut Vec<u8>),
) -> PathBuf {
    let (esp, _) = partition(&b.dir, cairn::media::disk::LABEL_ESP);
    let raw = copy_image(&b.raw, dir, name);
    resign(&raw, esp, key, dir, edit);
    raw
}

fn manifest(b: &Built) -> cairn::release::manifest::Manifest {
    cairn::release::manifest::read(&b.dir.join("manifest.json")).expect("manifest")
}

/// Boots `image` under Secure Boot (or plain OVMF) with a TPM, to ready,
/// and returns the guest's PCR 11 (sha256 bank) and the serial log.
fn boot_and_read_pcr11(
    image: &Path,
    format: ImageFormat,
    bus: DiskBus,
    secure_boot: bool,
    log: &str,
) -> (Sha256, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let tpm = Swtpm::start(dir.path()).expect("swtpm");
    let mut spec = BootSpec::new(image, format, Firmware::Bios, log_path(log));
    spec.bus = bus;
    spec.debug_console = true;
    spec.extra_args = if secure_boot {
        trusted::secure_boot_args(dir.path())
    } else {
        trusted::uefi_args(dir.path())
    }
    .expect("firmware");
    spec.extra_args.extend(tpm.qemu_args().expect("tpm args"));
    let mut vm = Vm::start(&spec).expect("start qemu");
    vm.wait_for_line("cairn: ready", boot_timeout())
        .unwrap_or_else(|e| panic!("{log}: not ready: {e:#}"));
    let (rc, out) = vm
        .console_run("cat /sys/class/tpm/tpm0/pcr-sha256/11", console_timeout())
        .expect("console");
    assert_eq!(rc, 0, "{log}: {out}");
    assert_clean_tpm_boot(&mut vm, log);
    let hex = out
        .split_whitespace()
        .find(|w| w.len() == 64)
        .unwrap_or_else(|| panic!("{log}: no PCR value in {out:?}"))
        .to_ascii_lowercase();
    (Sha256::from_hex(&hex).expect("hex"), vm.serial_text())
}

/// With a TPM attached, the boot is clean: no unit failed (systemd's PCR
/// phase units, which would fail without a TPM software stack in the
/// image, are masked, so PCR 11 keeps what the stub measured). Control:
/// the TPM really is there, and the stub really told systemd it measured
/// into PCR 11, so without the masks those units would have run.
fn assert_clean_tpm_boot(vm: &mut Vm, log: &str) {
    let serial = vm.serial_text();
    let failed: Vec<&str> = serial.lines().filter(|l| l.contains("FAILED")).collect();
    assert!(failed.is_empty(), "{log}: failed units: {failed:#?}");
    let (rc, out) = vm
        .console_run(
            "ls /sys/firmware/efi/efivars/ | grep -c '^StubPcrKernelImage-'; ls /dev/tpmrm0; \
             systemctl show -p LoadState systemd-pcrphase.service systemd-pcrphase-sysinit.service; \
             systemctl --failed --no-legend | wc -l",
            console_timeout(),
        )
        .expect("console");
    assert_eq!(rc, 0, "{log}: {out}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert!(lines.contains(&"/dev/tpmrm0"), "{log}: no TPM: {out}");
    assert_eq!(
        lines.first(),
        Some(&"1"),
        "{log}: no StubPcrKernelImage: {out}"
    );
    assert_eq!(
        lines.iter().filter(|l| **l == "LoadState=masked").count(),
        2,
        "{log}: {out}"
    );
    assert_eq!(lines.last(), Some(&"0"), "{log}: failed units: {out}");
}

/// Boots `image` under Secure Boot and returns the firmware's refusal.
fn refused(image: &Path, log: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = BootSpec::new(image, cairn::media::RAW.qemu, Firmware::Bios, log_path(log));
    spec.extra_args = trusted::secure_boot_args(dir.path()).expect("firmware");
    let mut vm = Vm::start(&spec).expect("start qemu");
    let patterns: Vec<&str> = REFUSALS.iter().chain(KERNEL_RAN.iter()).copied().collect();
    let (i, line) = vm
        .wait_for_any(&patterns, boot_timeout())
        .unwrap_or_else(|e| panic!("{log}: neither refused nor booted: {e:#}"));
    assert!(i < REFUSALS.len(), "{log}: the kernel ran: {line}");
    // Give a kernel that would run anyway the time to say so.
    let later = vm.wait_for_any(&KERNEL_RAN, std::time::Duration::from_secs(20));
    assert!(
        later.is_err(),
        "{log}: the kernel ran after the refusal: {later:?}"
    );
    line
}

#[test]
fn secure_boot_runs_the_signed_raw_uki_and_pcr11_is_the_manifests() {
    let b = built("tiny");
    let m = manifest(b);
    let tmp = tempfile::tempdir().expect("tempdir");
    let key = snakeoil(tmp.path());
    let raw = signed_raw(b, &key, tmp.path(), "signed.raw", |_| {});
    let (pcr, serial) = boot_and_read_pcr11(
        &raw,
        cairn::media::RAW.qemu,
        DiskBus::Virtio,
        true,
        "sb-raw",
    );
    assert!(
        serial.contains("secureboot: Secure boot enabled"),
        "the kernel did not see Secure Boot on: {serial}"
    );
    assert_eq!(
        Some(pcr),
        m.boot.pcr11_sha256,
        "the guest's PCR 11 is not the manifest's prediction"
    );
    // The signature does not change what the stub measures.
    assert_eq!(
        Some(
            cairn::pipeline::measure::predict_pcr11(
                &std::fs::read(tmp.path().join("BOOTX64.EFI")).unwrap()
            )
            .unwrap()
        ),
        m.boot.pcr11_sha256
    );
}

#[test]
fn secure_boot_refuses_the_unsigned_uki_and_an_untrusted_signature() {
    let b = built("tiny");
    let line = refused(&b.raw, "sb-unsigned");
    eprintln!("unsigned UKI: firmware said {line:?}");
    // Another root hash, signed by a key the firmware does not trust.
    let tmp = tempfile::tempdir().expect("tempdir");
    let key = untrusted(tmp.path());
    let root = manifest(b).verity.root_hash.hex();
    let raw = signed_raw(b, &key, tmp.path(), "untrusted.raw", |uki| {
        let needle = format!("cairn.roothash={root}");
        let at = uki
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .expect("the UKI holds the root hash");
        let c = &mut uki[at + needle.len() - 1];
        *c = if *c == b'0' { b'1' } else { b'0' };
    });
    let line = refused(&raw, "sb-untrusted");
    eprintln!("untrusted signature: firmware said {line:?}");
}

#[test]
fn secure_boot_runs_the_signed_iso_uki_and_its_pcr11_is_the_manifests() {
    let b = built("tiny");
    let m = manifest(b);
    let tmp = tempfile::tempdir().expect("tempdir");
    let key = snakeoil(tmp.path());
    let iso = tmp.path().join("signed.iso");
    std::fs::copy(b.raw.with_extension("iso"), &iso).expect("copy the ISO");
    let efi = cairn::media::iso::list_iso(&iso)
        .expect("ISO file table")
        .into_iter()
        .find(|f| f.path == cairn::media::iso::ISO_EFI_IMG)
        .expect("the ISO has its EFI image");
    assert!(efi.contiguous);
    resign(&iso, efi.offset, &key, tmp.path(), |_| {});
    let (pcr, _) = boot_and_read_pcr11(
        &iso,
        cairn::media::ISO.qemu,
        DiskBus::Cdrom,
        true,
        "sb-iso-cd",
    );
    assert_eq!(Some(pcr), m.boot.iso_pcr11_sha256);
    assert_ne!(m.boot.iso_pcr11_sha256, m.boot.pcr11_sha256);
    // The same ISO written to a USB stick (the hybrid image byte for byte,
    // attached as usb-storage, not as a CD): the firmware finds the EFI
    // image through the ISO's GPT and checks its signature just the same.
    let (pcr, serial) = boot_and_read_pcr11(
        &iso,
        cairn::media::RAW.qemu,
        DiskBus::UsbStorage,
        true,
        "sb-iso-usb",
    );
    assert!(
        serial.contains("secureboot: Secure boot enabled"),
        "{serial}"
    );
    assert!(serial.contains("cairn: found ISO medium"), "{serial}");
    assert_eq!(Some(pcr), m.boot.iso_pcr11_sha256);
}

#[test]
fn one_changed_cmdline_word_predicts_and_reads_another_pcr11() {
    // tiny-plain differs from tiny in its command line (cairn.state=).
    let a = manifest(built("tiny"));
    let b = built("tiny-plain");
    let mb = manifest(b);
    let (wa, wb) = (&a.kernel.cmdline, &mb.kernel.cmdline);
    let differ: Vec<(&str, &str)> = wa
        .split_whitespace()
        .zip(wb.split_whitespace())
        .filter(|(x, y)| x != y && !x.starts_with("cairn.roothash="))
        .collect();
    assert!(!differ.is_empty(), "{wa} / {wb}");
    assert_ne!(a.boot.pcr11_sha256, mb.boot.pcr11_sha256);
    // Secure Boot off here: the prediction does not depend on it.
    let (pcr, _) = boot_and_read_pcr11(
        &b.raw,
        cairn::media::RAW.qemu,
        DiskBus::Virtio,
        false,
        "tpm-plain",
    );
    assert_eq!(Some(pcr), mb.boot.pcr11_sha256);
    assert_ne!(Some(pcr), a.boot.pcr11_sha256);
}

/// Where Debian's systemd-boot-efi puts the boot manager.
const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
/// What a boot entry tries: the initramfs' busybox as PID 1, running a
/// shell instead of cairn's init (words without `=` become init's
/// arguments; the initramfs has no /bin/sh until cairn's init makes it).
const ATTACK_OPTIONS: &str = "console=ttyS0,115200 rdinit=/bin/busybox sh";

/// A copy of the raw disk whose ESP starts systemd-boot (signed by `key`)
/// with one boot entry: the UKI (signed by `key`, moved to
/// EFI/cairn/cairn.efi) with [`ATTACK_OPTIONS`] as its options, which
/// systemd-boot hands to the stub as the image's load options.
fn sd_boot_raw(b: &Built, key: &SbKey, dir: &Path, name: &str) -> PathBuf {
    testkit::file(SYSTEMD_BOOT, "systemd-boot-efi");
    let raw = signed_raw(b, key, dir, name, |_| {});
    let (esp, _) = partition(&b.dir, cairn::media::disk::LABEL_ESP);
    let fat = format!("{}@@{esp}", raw.display());
    let uki = dir.join("BOOTX64.EFI");
    let sdboot = dir.join("systemd-bootx64.efi");
    std::fs::copy(SYSTEMD_BOOT, &sdboot).expect("copy systemd-boot");
    cairn::pipeline::sbsign::sign_efi(key, &sdboot, 1_735_689_600).expect("sbsign");
    let conf = dir.join("loader.conf");
    std::fs::write(&conf, "default attack.conf\ntimeout 0\neditor no\n").expect("loader.conf");
    let entry = dir.join("attack.conf");
    std::fs::write(
        &entry,
        format!("title loader-supplied command line\nefi /EFI/cairn/cairn.efi\noptions {ATTACK_OPTIONS}\n"),
    )
    .expect("entry");
    let mut cmd = cairn::host::runner::command("mmd");
    cmd.env("MTOOLS_SKIP_CHECK", "1").args([
        "-i",
        &fat,
        "::/EFI/cairn",
        "::/loader",
        "::/loader/entries",
    ]);
    run(cmd);
    // systemd-boot over the UKI first: the ESP has room for one UKI.
    let copies: [(&Path, &str); 4] = [
        (&sdboot, "::/EFI/BOOT/BOOTX64.EFI"),
        (&uki, "::/EFI/cairn/cairn.efi"),
        (&conf, "::/loader/loader.conf"),
        (&entry, "::/loader/entries/attack.conf"),
    ];
    for (from, to) in copies {
        mcopy(&[
            "-o".as_ref(),
            "-i".as_ref(),
            fat.as_ref(),
            from.as_os_str(),
            to.as_ref(),
        ]);
    }
    raw
}

/// The kernel's "Kernel command line:" line of a boot.
fn kernel_cmdline(vm: &mut Vm, log: &str) -> String {
    vm.wait_for_line("Kernel command line:", boot_timeout())
        .unwrap_or_else(|e| panic!("{log}: the kernel did not start: {e:#}"))
}

#[test]
fn under_secure_boot_a_boot_entrys_command_line_is_ignored() {
    let b = built("tiny");
    let m = manifest(b);
    let tmp = tempfile::tempdir().expect("tempdir");
    let key = snakeoil(tmp.path());
    let raw = sd_boot_raw(b, &key, tmp.path(), "sd-boot.raw");

    // Secure Boot on: the stub keeps the signed command line, the node
    // reaches ready, and it was systemd-boot's entry that started it.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = BootSpec::new(
        &raw,
        cairn::media::RAW.qemu,
        Firmware::Bios,
        log_path("sb-entry"),
    );
    spec.debug_console = true;
    spec.extra_args = trusted::secure_boot_args(dir.path()).expect("firmware");
    let mut vm = Vm::start(&spec).expect("start qemu");
    let line = kernel_cmdline(&mut vm, "sb-entry");
    assert!(
        line.contains(&m.kernel.cmdline) && !line.contains("rdinit="),
        "sb-entry: {line}"
    );
    vm.wait_for_line("cairn: ready", boot_timeout())
        .unwrap_or_else(|e| panic!("sb-entry: not ready: {e:#}"));
    let serial = vm.serial_text();
    assert!(
        serial.contains("secureboot: Secure boot enabled"),
        "{serial}"
    );
    let (rc, out) = vm
        .console_run(
            "cat /proc/cmdline; tr -d '\\000' < /sys/firmware/efi/efivars/LoaderEntrySelected-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f; echo",
            console_timeout(),
        )
        .expect("console");
    assert_eq!(rc, 0, "{out}");
    assert!(
        out.contains("attack.conf"),
        "systemd-boot's entry did not start the UKI: {out}"
    );
    assert!(
        out.contains(&m.kernel.cmdline) && !out.contains("rdinit="),
        "{out}"
    );
    drop(vm);

    // Control, Secure Boot off, the same disk: the entry's options replace
    // the command line, and the shell runs instead of cairn's init.
    let mut spec = BootSpec::new(
        &raw,
        cairn::media::RAW.qemu,
        Firmware::Uefi,
        log_path("entry-nosb"),
    );
    spec.debug_console = false;
    let mut vm = Vm::start(&spec).expect("start qemu");
    let line = kernel_cmdline(&mut vm, "entry-nosb");
    assert!(
        line.contains(ATTACK_OPTIONS) && !line.contains("cairn.roothash="),
        "entry-nosb: {line}"
    );
    vm.wait_for_line("job control turned off", boot_timeout())
        .unwrap_or_else(|e| panic!("entry-nosb: no shell as PID 1: {e:#}"));
    assert!(!vm.serial_text().contains("cairn: initramfs started"));
}
