//! The raw disk: reaches ready with a verified, read-only root (the apps
//! volume over the base); a flipped byte in the root partition (the base)
//! or in the apps volume stops the boot at dm-verity, naming the volume.

use std::time::Duration;

use cairn::vm::qemu::{BootSpec, Firmware, Vm};
use qemu_tests::*;

/// Checks that / and /usr refuse writes and that writable state does work.
pub fn assert_read_only_root(vm: &mut Vm) {
    let t = console_timeout();
    let (rc, mounts) = vm.console_run("cat /proc/mounts", t).expect("console");
    assert_eq!(rc, 0, "{mounts}");
    let root = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/"))
        .unwrap_or_else(|| panic!("no / in /proc/mounts: {mounts}"));
    // The root is the apps volume stacked over the base by overlayfs, no
    // upper layer; each layer its own verity mapping, kept visible at
    // /run/cairn/{apps,base}.
    assert!(root.starts_with("cairn-root / overlay ro,"), "{root}");
    assert!(
        root.contains("lowerdir=/run/cairn/apps:/run/cairn/base") && !root.contains("upperdir"),
        "{root}"
    );
    for (dev, at) in [
        ("/dev/mapper/cairn-root", "/run/cairn/base"),
        ("/dev/mapper/cairn-apps", "/run/cairn/apps"),
    ] {
        assert!(
            mounts
                .lines()
                .any(|l| l.starts_with(&format!("{dev} {at} squashfs ro,"))),
            "{dev} is not mounted read-only at {at}: {mounts}"
        );
    }
    // What the node writes can be neither a setuid program nor a device
    // node: every writable mount is nosuid,nodev. (Control: the root
    // itself is not, or its setuid programs would not work.)
    for at in ["/etc", "/var", "/tmp", "/run", "/run/cairn/state"] {
        let l = mounts
            .lines()
            .rfind(|l| l.split_whitespace().nth(1) == Some(at))
            .unwrap_or_else(|| panic!("no {at} in /proc/mounts: {mounts}"));
        let opts = l.split_whitespace().nth(3).unwrap_or("");
        assert!(
            opts.split(',').any(|o| o == "nosuid") && opts.split(',').any(|o| o == "nodev"),
            "{at} is not nosuid,nodev: {l}"
        );
    }
    assert!(!root.contains("nosuid"), "{root}");
    let (rc, out) = vm
        .console_run("echo x > /usr/cairn-write-test", t)
        .expect("console");
    assert_ne!(rc, 0, "writing to /usr succeeded: {out}");
    assert!(out.contains("Read-only file system"), "{out}");
    let (rc, out) = vm
        .console_run("touch /cairn-write-test", t)
        .expect("console");
    assert_ne!(rc, 0, "writing to / succeeded: {out}");
    // Control: the console and writable state work, so the failures above
    // are the read-only root, not a broken shell.
    let (rc, out) = vm
        .console_run(
            "echo x > /var/cairn-write-test && cat /var/cairn-write-test",
            t,
        )
        .expect("console");
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains('x'), "{out}");
}

#[test]
fn raw_image_reaches_ready_with_a_read_only_root() {
    let b = built("tiny");
    let mut spec = BootSpec::new(
        &b.raw,
        cairn::media::RAW.qemu,
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
    // The disk state's key was made after the random pool was ready.
    assert!(
        serial.contains("cairn: state: the kernel's random pool is ready"),
        "{serial}"
    );
    assert_read_only_root(&mut vm);
    let t = console_timeout();
    for map in ["cairn-root", "cairn-apps"] {
        let (rc, out) = vm
            .console_run(&format!("veritysetup status {map}"), t)
            .expect("console");
        assert_eq!(rc, 0, "{out}");
        assert!(out.contains("verified"), "{map}: {out}");
    }
    // A file cairn writes (apps) and one of Debian's (base) are both in
    // the one root, as the build composed it.
    let (rc, out) = vm
        .console_run(
            "ls /usr/lib/cairn/firewall.nft /run/cairn/apps/usr/lib/cairn/firewall.nft /usr/bin/ls /run/cairn/base/usr/bin/ls && ls /run/cairn/base/usr/lib/cairn/firewall.nft",
            t,
        )
        .expect("console");
    assert_ne!(rc, 0, "{out}");
    assert!(
        out.contains("'/run/cairn/base/usr/lib/cairn/firewall.nft': No such file"),
        "cairn's ruleset should be in apps only: {out}"
    );
    // The base is merged-/usr by mmdebstrap's hook, not by the usrmerge
    // package (which pulls in perl): the links are there in the running
    // root, and the manifest lists usr-is-merged, not usrmerge or perl.
    let (rc, out) = vm
        .console_run("readlink /bin /sbin /lib /run/cairn/base/lib", t)
        .expect("console");
    assert_eq!(rc, 0, "{out}");
    let links: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(
        links,
        ["usr/bin", "usr/sbin", "usr/lib", "usr/lib"],
        "merged /usr links: {out}"
    );
    let m = cairn::release::manifest::read(&b.dir.join("manifest.json")).expect("manifest");
    let names: Vec<&str> = m.sbom.packages.iter().map(|p| p.name.as_str()).collect();
    // Control: the list is the base's (perl-base is essential and stays).
    for want in ["usr-is-merged", "perl-base", "init-system-helpers"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for gone in ["usrmerge", "perl", "perl-modules-5.36"] {
        assert!(!names.contains(&gone), "{gone} is in the base: {names:?}");
    }
    // The watcher's poll (every 5 s, by now several times) reads each
    // verity mapping's status from the running root.
    let serial = vm.serial_text();
    assert!(
        !serial.contains("verity: cannot read the status"),
        "{serial}"
    );
}

#[test]
fn one_flipped_byte_in_the_root_partition_stops_the_boot() {
    let b = built("tiny");
    let (offset, _size) = partition(&b.dir, cairn::media::disk::LABEL_ROOT);
    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = copy_image(&b.raw, tmp.path(), "flipped.raw");
    // Byte 1000 of the root lies in its first 4 KiB block, which holds the
    // squashfs superblock: mounting must read it, so dm-verity must see it.
    // (dm-verity checks blocks when they are read; a flip in a block the
    // boot never reads is caught when something reads it.)
    flip_byte(&bad, offset + 1000);
    assert_ne!(
        cairn::host::digest::Sha256::of_file(&bad).expect("hash"),
        cairn::host::digest::Sha256::of_file(&b.raw).expect("hash")
    );
    let spec = BootSpec::new(
        &bad,
        cairn::media::RAW.qemu,
        Firmware::Uefi,
        log_path("raw-flipped"),
    );
    let mut vm = Vm::start(&spec).expect("start qemu");
    let (i, line) = vm
        .wait_for_any(&["cairn: ready", "cairn: FATAL"], boot_timeout())
        .expect("a verdict on the console");
    assert_eq!(i, 1, "the tampered image reached ready: {line}");
    assert!(line.contains("cairn: FATAL volume base: verity:"), "{line}");
    // It halts: no shell, no systemd, and no ready later either.
    std::thread::sleep(Duration::from_secs(10));
    let serial = vm.serial_text();
    assert!(!serial.contains("cairn: ready"), "{serial}");
    assert!(!serial.contains("cairn: starting systemd"), "{serial}");
}

#[test]
fn one_flipped_byte_in_the_apps_volume_stops_the_boot_naming_it() {
    let b = built("tiny");
    let (offset, _size) = partition(&b.dir, cairn::media::disk::LABEL_APPS);
    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = copy_image(&b.raw, tmp.path(), "flipped-apps.raw");
    // In the apps volume's first 4 KiB block (its squashfs superblock),
    // which mounting reads. The untouched image reads it fine
    // (raw_image_reaches_ready_with_a_read_only_root).
    flip_byte(&bad, offset + 1000);
    let spec = BootSpec::new(
        &bad,
        cairn::media::RAW.qemu,
        Firmware::Uefi,
        log_path("raw-flipped-apps"),
    );
    let mut vm = Vm::start(&spec).expect("start qemu");
    let (i, line) = vm
        .wait_for_any(&["cairn: ready", "cairn: FATAL"], boot_timeout())
        .expect("a verdict on the console");
    assert_eq!(i, 1, "the tampered apps volume reached ready: {line}");
    assert!(line.contains("cairn: FATAL volume apps: verity:"), "{line}");
    std::thread::sleep(Duration::from_secs(10));
    let serial = vm.serial_text();
    assert!(serial.contains("cairn: volume base verified"), "{serial}");
    assert!(!serial.contains("cairn: starting systemd"), "{serial}");
    assert!(!serial.contains("cairn: ready"), "{serial}");
}
