//! Stock machines (`[boot] shim`): under OVMF with Secure Boot enforcing
//! and only Microsoft's keys (`OVMF_VARS_4M.ms.fd`), the image built with
//! `[boot] shim = true` and `--sb-key` (the snakeoil key) boots through
//! Debian's Microsoft-signed shim to `cairn: ready` once the key's
//! certificate is enrolled as a MOK, on the raw disk and the ISO (as a
//! CD). Control: the same disk without the MOK is refused by shim (its
//! message on the console), and the kernel never runs.
//! One extra build (tiny-shim), signed by the build itself; `cairn verify`
//! checks that release (shim's digests, the UKI behind it) first.

use std::path::Path;
use std::time::Duration;

use cairn::vm::qemu::{BootSpec, DiskBus, Firmware, ImageFormat, Vm};
use cairn::vm::trusted;
use qemu_tests::*;

/// What shim prints when the UKI's signer is not trusted.
const SHIM_REFUSAL: &str = "Verification failed";
/// Anything that shows the kernel (or cairn's init) ran.
const KERNEL_RAN: [&str; 2] = ["Linux version", "cairn:"];

/// Boots `image` on a stock Secure Boot machine, the snakeoil certificate
/// enrolled as a MOK when `mok`.
fn start(
    image: &Path,
    format: ImageFormat,
    bus: DiskBus,
    mok: bool,
    log: &str,
) -> (Vm, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = Path::new(trusted::SNAKEOIL_CERT);
    let moks: &[&Path] = if mok { &[cert] } else { &[] };
    let mut spec = BootSpec::new(image, format, Firmware::Bios, log_path(log));
    spec.bus = bus;
    spec.debug_console = mok;
    spec.extra_args = trusted::stock_secure_boot_args(dir.path(), moks).expect("firmware");
    (Vm::start(&spec).expect("start qemu"), dir)
}

/// The node reached ready through shim: Secure Boot on, and the kernel
/// loaded the enrolled certificate from shim's MokListRT (the MOKvar table
/// only shim installs), the firmware's db holding Microsoft's
/// certificates only.
fn assert_ready_through_shim(vm: &mut Vm, log: &str) {
    vm.wait_for_line("cairn: ready", boot_timeout())
        .unwrap_or_else(|e| panic!("{log}: not ready: {e:#}"));
    let serial = vm.serial_text();
    assert!(
        serial.contains("secureboot: Secure boot enabled"),
        "{log}: the kernel did not see Secure Boot on: {serial}"
    );
    assert!(
        !serial.contains(SHIM_REFUSAL),
        "{log}: shim refused something: {serial}"
    );
    let (rc, out) = vm
        .console_run("dmesg | grep 'integrity: Load'", console_timeout())
        .expect("console");
    assert_eq!(rc, 0, "{log}: {out}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    // Each "Loaded X.509 cert 'NAME: ...'" line follows the "Loading X.509
    // certificate: SOURCE" line it came from.
    let mut source = "";
    let mut loaded: Vec<(&str, &str)> = Vec::new();
    for l in &lines {
        if let Some((_, src)) = l.split_once("Loading X.509 certificate: ") {
            source = src;
        } else if let Some((_, cert)) = l.split_once("Loaded X.509 cert '") {
            loaded.push((source, cert));
        }
    }
    let snakeoil: Vec<&str> = loaded
        .iter()
        .filter(|(_, c)| c.starts_with("SnakeOil"))
        .map(|(s, _)| *s)
        .collect();
    assert!(
        !snakeoil.is_empty() && snakeoil.iter().all(|s| s.starts_with("UEFI:MokListRT")),
        "{log}: the enrolled certificate came from {snakeoil:?}, not shim's MokListRT: {out}"
    );
    assert!(
        loaded
            .iter()
            .any(|(s, c)| *s == "UEFI:db" && c.starts_with("Microsoft")),
        "{log}: {out}"
    );
}

#[test]
fn shim_boots_the_uki_signed_by_an_enrolled_mok_and_refuses_it_without() {
    let sb = built_secure_boot("tiny-shim");
    let b = &sb.built;
    // The release as built: verify checks shim, MokManager and the UKI
    // behind them; inspect names shim.
    let report = cairn::release::verify::verify(&b.dir, &sb.pubkey, false)
        .unwrap_or_else(|e| panic!("verify: {e}"))
        .to_string();
    for want in [
        "shim: cairn-test-shim-1.raw: EFI/BOOT/BOOTX64.EFI is shim-signed",
        "shim: cairn-test-shim-1.iso: EFI/BOOT/BOOTX64.EFI is shim-signed",
        "secure boot: cairn-test-shim-1.raw: grubx64.efi signature verifies with secure-boot.crt",
        "uki: cairn-test-shim-1.raw: grubx64.efi command line carries cairn.roothash",
    ] {
        assert!(report.contains(want), "verify lacks {want:?}: {report}");
    }
    let inspect = cairn::release::inspect::inspect(&b.dir)
        .expect("inspect")
        .render_text();
    assert!(inspect.contains("shim         shim-signed"), "{inspect}");

    let tmp = tempfile::tempdir().expect("tempdir");
    let raw = copy_image(&b.raw, tmp.path(), "shim.raw");
    // Control first (it writes nothing): no MOK, so shim finds the UKI's
    // signer in neither db, MokList nor its own vendor certificate.
    let (mut vm, _d) = start(
        &raw,
        cairn::media::RAW.qemu,
        DiskBus::Virtio,
        false,
        "shim-no-mok",
    );
    let mut patterns = vec![SHIM_REFUSAL];
    patterns.extend(KERNEL_RAN);
    let (i, line) = vm
        .wait_for_any(&patterns, boot_timeout())
        .unwrap_or_else(|e| panic!("shim-no-mok: neither refused nor booted: {e:#}"));
    assert_eq!(i, 0, "shim-no-mok: the kernel ran: {line}");
    let at = line.find(SHIM_REFUSAL).unwrap_or(0);
    let said: String = line[at..]
        .chars()
        .take_while(|c| !c.is_control() && *c != '\u{fffd}')
        .collect();
    eprintln!("without the MOK, shim said {:?}", said.trim());
    let later = vm.wait_for_any(&KERNEL_RAN, Duration::from_secs(30));
    assert!(
        later.is_err(),
        "shim-no-mok: the kernel ran after the refusal: {later:?}"
    );
    drop(vm);

    // The certificate enrolled as a MOK: shim starts the UKI, to ready.
    let (mut vm, _d) = start(
        &raw,
        cairn::media::RAW.qemu,
        DiskBus::Virtio,
        true,
        "shim-mok",
    );
    assert_ready_through_shim(&mut vm, "shim-mok");
}

#[test]
fn shim_boots_the_iso_as_a_cd_with_the_mok_enrolled() {
    let sb = built_secure_boot("tiny-shim");
    let iso = sb.built.raw.with_extension("iso");
    let (mut vm, _d) = start(
        &iso,
        cairn::media::ISO.qemu,
        DiskBus::Cdrom,
        true,
        "shim-iso-cd",
    );
    assert_ready_through_shim(&mut vm, "shim-iso-cd");
    assert!(vm.serial_text().contains("cairn: found ISO medium"));
}

/// Debian's GRUB, signed by Debian's CA (package `grub-efi-amd64-signed`):
/// shim trusts it through the Debian certificate built into shim.
const DEBIAN_SIGNED_GRUB: &str = "/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed";
/// What the attacker's initramfs prints as PID 1.
const ATTACK_RAN: &str = "ATTACKER-INITRAMFS-RAN";

/// The kernel inside the built image's UKI (`.linux`): Debian's, signed by
/// Debian's Secure Boot signer.
fn debian_kernel_of(b: &Built, dir: &Path) -> std::path::PathBuf {
    let esp = dir.join("esp.img");
    extract_region(
        &b.raw,
        partition(&b.dir, cairn::media::disk::LABEL_ESP),
        &esp,
    );
    let uki = dir.join("uki.efi");
    let mut cmd = cairn::host::runner::command("mcopy");
    cmd.env("MTOOLS_SKIP_CHECK", "1")
        .arg("-n")
        .arg("-i")
        .arg(&esp)
        .arg(format!("::/{}", cairn::media::esp::BOOT_PATH))
        .arg(&uki);
    cairn::host::runner::output("test", cmd).unwrap_or_else(|e| panic!("{e:#}"));
    let kernel = dir.join("vmlinuz");
    let mut dump = cairn::host::runner::command("objcopy");
    dump.arg("--dump-section")
        .arg(format!(".linux={}", kernel.display()))
        .arg(&uki)
        .arg(dir.join("uki-rest.efi"));
    cairn::host::runner::output("objcopy", dump).unwrap_or_else(|e| panic!("{e:#}"));
    kernel
}

/// An attacker's stick: Debian's shim, Debian's signed GRUB as shim's
/// next stage, this image's Debian-signed kernel, and the attacker's own
/// initramfs and command line (nothing cairn signed). A GPT disk with one
/// ESP, written as files.
fn attacker_stick(kernel: &Path, dir: &Path) -> std::path::PathBuf {
    let run = |what: &str, mut cmd: std::process::Command| {
        cairn::host::runner::output(what, {
            cmd.env("MTOOLS_SKIP_CHECK", "1");
            cmd
        })
        .unwrap_or_else(|e| panic!("{what}: {e:#}"))
    };
    // The initramfs: static busybox, and an /init that proves it ran as
    // PID 1 (a shell could run there as well).
    let root = dir.join("initrd-root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy(
        testkit::file("/bin/busybox", "busybox-static"),
        root.join("bin/busybox"),
    )
    .unwrap();
    let init = root.join("init");
    std::fs::write(
        &init,
        format!(
            "#!/bin/busybox sh\n/bin/busybox echo {ATTACK_RAN} as pid $$\n/bin/busybox sleep 600\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
    let initrd = dir.join("initrd");
    let mut cpio = cairn::host::runner::command("sh");
    cpio.arg("-c")
        .arg("cd \"$1\" && printf 'init\\nbin\\nbin/busybox\\n' | cpio -o -H newc --quiet > \"$2\"")
        .arg("sh")
        .arg(&root)
        .arg(&initrd);
    run("cpio", cpio);
    let cfg = dir.join("grub.cfg");
    std::fs::write(
        &cfg,
        "set timeout=0\nlinux /vmlinuz console=ttyS0,115200 rdinit=/init cairn.attack=1\ninitrd /initrd\nboot\n",
    )
    .unwrap();
    // The FAT file system, then a GPT disk around it at 1 MiB.
    let fat = dir.join("attack-esp.img");
    let mut mkfs = cairn::host::runner::command("mkfs.vfat");
    mkfs.arg("-C").arg(&fat).arg("65536");
    run("mkfs.vfat", mkfs);
    let mut mmd = cairn::host::runner::command("mmd");
    mmd.arg("-i")
        .arg(&fat)
        .args(["::/EFI", "::/EFI/BOOT", "::/EFI/debian"]);
    run("mmd", mmd);
    for (src, dest) in [
        (
            Path::new(cairn::pipeline::shim::HOST_SHIM),
            "EFI/BOOT/BOOTX64.EFI",
        ),
        (Path::new(DEBIAN_SIGNED_GRUB), "EFI/BOOT/grubx64.efi"),
        (cfg.as_path(), "EFI/BOOT/grub.cfg"),
        (cfg.as_path(), "EFI/debian/grub.cfg"),
        (kernel, "vmlinuz"),
        (initrd.as_path(), "initrd"),
    ] {
        let mut c = cairn::host::runner::command("mcopy");
        c.arg("-i").arg(&fat).arg(src).arg(format!("::/{dest}"));
        run("mcopy", c);
    }
    let disk = dir.join("attack.raw");
    let fat_bytes = std::fs::read(&fat).unwrap();
    let f = std::fs::File::create(&disk).unwrap();
    f.set_len((1 << 20) + fat_bytes.len() as u64 + (1 << 20))
        .unwrap();
    drop(f);
    let mut sfdisk = cairn::host::runner::command("sh");
    sfdisk
        .arg("-c")
        .arg("printf 'label: gpt\\nstart=2048, size=131072, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\\n' | sfdisk --quiet \"$1\"")
        .arg("sh")
        .arg(&disk);
    run("sfdisk", sfdisk);
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.seek(SeekFrom::Start(1 << 20)).unwrap();
    f.write_all(&fat_bytes).unwrap();
    disk
}

/// The residual risk of shim mode, shown: on a stock machine (Microsoft's
/// keys, no MOK at all), Debian's shim starts Debian's signed GRUB, which
/// starts this image's Debian-signed kernel with an initramfs and command
/// line nobody signed. Control: the same stick on an own-key machine
/// (the snakeoil db, no Microsoft CA) is refused by the firmware and the
/// kernel never runs.
#[test]
fn shim_mode_cannot_stop_debians_signed_grub_and_kernel_but_own_key_mode_does() {
    testkit::file(DEBIAN_SIGNED_GRUB, "grub-efi-amd64-signed");
    let b = built("tiny");
    let tmp = tempfile::tempdir().expect("tempdir");
    let kernel = debian_kernel_of(b, tmp.path());
    let mut sbverify = cairn::host::runner::command("sbverify");
    sbverify.arg("--list").arg(&kernel);
    let list = cairn::host::runner::output("sbverify", sbverify).expect("sbverify");
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.contains("Debian Secure Boot"),
        "not Debian-signed: {list}"
    );
    let disk = attacker_stick(&kernel, tmp.path());

    // Own-key machine first (the control): the firmware refuses shim.
    let own = tempfile::tempdir().expect("tempdir");
    let mut spec = BootSpec::new(
        &disk,
        cairn::media::RAW.qemu,
        Firmware::Bios,
        log_path("attack-own-key"),
    );
    spec.extra_args = trusted::secure_boot_args(own.path()).expect("firmware");
    let mut vm = Vm::start(&spec).expect("start qemu");
    let r = vm.wait_for_any(&["Linux version", ATTACK_RAN], boot_timeout() / 2);
    assert!(r.is_err(), "attack-own-key: the kernel ran: {r:?}");
    let serial = vm.serial_text();
    assert!(
        serial.contains("Access Denied") || serial.contains("Security Violation"),
        "attack-own-key: no refusal on the console: {serial}"
    );
    drop(vm);

    // Stock machine, shim mode's premise: it runs.
    let stock = tempfile::tempdir().expect("tempdir");
    let mut spec = BootSpec::new(
        &disk,
        cairn::media::RAW.qemu,
        Firmware::Bios,
        log_path("attack-shim"),
    );
    spec.extra_args = trusted::stock_secure_boot_args(stock.path(), &[]).expect("firmware");
    let mut vm = Vm::start(&spec).expect("start qemu");
    vm.wait_for_line(ATTACK_RAN, boot_timeout())
        .unwrap_or_else(|e| panic!("attack-shim: the attacker's initramfs did not run: {e:#}"));
    let serial = vm.serial_text();
    assert!(
        serial.contains("secureboot: Secure boot enabled"),
        "{serial}"
    );
    assert!(serial.contains("cairn.attack=1"), "{serial}");
    eprintln!(
        "shim mode: Debian's signed GRUB ran this image's kernel with the attacker's initramfs"
    );
}
