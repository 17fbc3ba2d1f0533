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
        ImageFormat::Raw,
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
    let (mut vm, _d) = start(&raw, ImageFormat::Raw, DiskBus::Virtio, true, "shim-mok");
    assert_ready_through_shim(&mut vm, "shim-mok");
}

#[test]
fn shim_boots_the_iso_as_a_cd_with_the_mok_enrolled() {
    let sb = built_secure_boot("tiny-shim");
    let iso = sb.built.raw.with_extension("iso");
    let (mut vm, _d) = start(&iso, ImageFormat::Iso, DiskBus::Cdrom, true, "shim-iso-cd");
    assert_ready_through_shim(&mut vm, "shim-iso-cd");
    assert!(vm.serial_text().contains("cairn: found ISO medium"));
}
