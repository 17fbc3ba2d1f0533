//! Site files: one signed release, two signed site files, two boots with
//! different host names and addresses (seen on the serial console's
//! `cairn: site NAME (key ID)` line and from the debug console). Controls:
//! a site file with one byte changed, one signed by another key and one
//! setting a key the recipe does not allow each halt the boot with
//! `cairn: FATAL site: ...`; with no site file the recipe's defaults apply.
//! The same boots show a service variable a site file sets reaching the
//! service (north sets it; south and the boot without a site file see the
//! recipe's default). Every site file goes onto a copy of the site test
//! image's raw disk (tiny-svc: tiny with one containerd service).
//! Binding (issue 31): tiny-svc requires a site file (`[site] required`)
//! and sets `min_serial = 2`: the image without a site file, a signed file
//! with serial 1 (an older one replayed) and a signed file for another
//! image each halt with `cairn: FATAL site: ...`; the good files (serial 2
//! and 3) reach ready. A site variable reaches the container's process
//! only: `ctr` on the host runs without it. A site file's `close_ingress`
//! fills the firewall's site set (north closes 7001; south, the control,
//! closes nothing).

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn::release::site::{self, SignedSite};
use cairn::vm::qemu::{BootSpec, Firmware, Vm};
use qemu_tests::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write site file");
    p
}

/// Boots `img` with the debug console; returns the VM once ready.
fn boot_to_ready(img: &Path, log: &str) -> Vm {
    let mut spec = BootSpec::new(img, cairn::media::RAW.qemu, Firmware::Uefi, log_path(log));
    spec.debug_console = true;
    spec.network = true;
    let mut vm = Vm::start(&spec).expect("start qemu");
    let (i, line) = vm
        .wait_for_any(&["cairn: ready", "cairn: FATAL"], boot_timeout())
        .unwrap_or_else(|e| panic!("{log}: no verdict: {e:#}"));
    assert_eq!(i, 0, "{log}: {line}\n{}", vm.serial_text());
    vm
}

/// (host name, IPv4 addresses with prefix) as the guest reports them.
fn identity(vm: &mut Vm) -> (String, String) {
    let t = console_timeout();
    let (rc, host) = vm
        .console_run("cat /proc/sys/kernel/hostname", t)
        .expect("console");
    assert_eq!(rc, 0, "{host}");
    // networkd may still be bringing the link up when ready is printed.
    let mut addrs = String::new();
    for _ in 0..30 {
        let (rc, out) = vm
            .console_run("busybox ip -4 addr show", t)
            .expect("console");
        assert_eq!(rc, 0, "{out}");
        addrs = out;
        if addrs.contains("inet 10.") {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    (host.trim().to_string(), addrs)
}

/// What the greeter service printed about its variables, once it has.
/// (It may print before `cairn: ready`, which the wait has passed.)
fn service_says(vm: &mut Vm, log: &str) -> String {
    const SAYS: &str = "cairn-test service: ";
    let serial = vm.serial_text();
    let line = match serial.lines().find(|l| l.contains(SAYS)) {
        Some(l) => l.to_string(),
        None => vm
            .wait_for_line(SAYS, console_timeout())
            .unwrap_or_else(|e| panic!("{log}: the service printed nothing: {e:#}")),
    };
    line[line.find(SAYS).unwrap_or(0)..].trim_end().to_string()
}

/// Boots `img` and expects the initramfs to halt on the site file.
fn assert_halts_on_site(img: &Path, log: &str, why: &str) {
    let spec = BootSpec::new(img, cairn::media::RAW.qemu, Firmware::Uefi, log_path(log));
    let mut vm = Vm::start(&spec).expect("start qemu");
    let (i, line) = vm
        .wait_for_any(&["cairn: ready", "cairn: FATAL"], boot_timeout())
        .unwrap_or_else(|e| panic!("{log}: no verdict: {e:#}"));
    assert_eq!(i, 1, "{log}: the bad site file reached ready: {line}");
    assert!(line.contains("cairn: FATAL site: "), "{log}: {line}");
    assert!(line.contains(why), "{log}: {line}");
    std::thread::sleep(Duration::from_secs(5));
    let serial = vm.serial_text();
    assert!(!serial.contains("cairn: ready"), "{serial}");
    assert!(!serial.contains("cairn: starting systemd"), "{serial}");
}

#[test]
fn two_site_files_give_two_identities_and_bad_ones_halt() {
    let b = built("tiny-svc");
    let tmp = tempfile::tempdir().expect("tempdir");
    let key = site_test_key();
    let decl = site::declaration_beside(&b.raw).expect("the test release takes site files");
    let id = key.public().key_id();
    assert_eq!(decl.key_id, id);

    // Two sites from one release.
    for (name, host, addr, env, label) in [
        (
            "north",
            "north-depot",
            "10.0.2.21",
            "env.greeter.SITE_LABEL = \"north depot, bay 4\"\nclose_ingress = [\"7001/tcp\"]\n",
            "north depot, bay 4",
        ),
        // Control: no variable set, the recipe's default; no port closed.
        ("south", "south-post", "10.0.2.22", "", "unassigned"),
    ] {
        let serial = if name == "north" { 2 } else { 3 };
        let text = format!(
            "# site {name}\nname = \"{name}\"\nserial = \"{serial}\"\nhostname = \"{host}\"\naddress = \"{addr}/24\"\ngateway = \"10.0.2.2\"\n{env}"
        );
        let file = write(tmp.path(), &format!("{name}.toml"), &text);
        site::sign(&file, &key, &decl).expect("sign");
        let img = tmp.path().join(format!("{name}.raw"));
        site::apply(&b.raw, &file, &img, site::ReleaseTrust::Unverified).expect("apply");
        let mut vm = boot_to_ready(&img, &format!("site-{name}"));
        let serial = vm.serial_text();
        assert!(
            serial.contains(&format!("cairn: site {name} (key {id}), serial ")),
            "{serial}"
        );
        let (h, addrs) = identity(&mut vm);
        assert_eq!(h, host);
        assert!(addrs.contains(&format!("inet {addr}/24")), "{addrs}");
        assert!(!addrs.contains("10.0.2.15/"), "{addrs}");
        // close_ingress fills the firewall's site set, which every path
        // to a port reads (the kubernetes boot test judges a NodePort
        // behind the same set from the host).
        let (rc, set) = vm
            .console_run("nft list set inet cairn site_closed_tcp", console_timeout())
            .expect("console");
        assert_eq!(rc, 0, "{set}");
        let closed = set.contains("elements = { 7001 }");
        assert_eq!(closed, name == "north", "{name}: {set}");
        assert!(!set.contains("7002"), "{name}: {set}");
        let said = service_says(&mut vm, &format!("site-{name}"));
        assert_eq!(
            said,
            format!("cairn-test service: SITE_LABEL=[{label}] OTHER=[fixed]")
        );
        // The value is in the container's process (control: the test sees
        // SITE_LABEL where it is) and not in ctr's, which runs as root on
        // the host (nor anywhere in the unit's environment).
        let (rc, envs) = vm
            .console_run(
                "for d in /proc/[0-9]*; do c=$(cat $d/comm 2>/dev/null); case $c in ctr|sleep) echo \"== $c\"; tr '\\0' '\\n' < $d/environ | grep -E '^(SITE_LABEL|PATH)=';; esac; done; echo end",
                console_timeout(),
            )
            .expect("console");
        assert_eq!(rc, 0, "{envs}");
        let block = |comm: &str| {
            envs.split("== ")
                .filter(|b| b.starts_with(&format!("{comm}\n")))
                .collect::<Vec<_>>()
                .join("")
        };
        let (ctr, sleep) = (block("ctr"), block("sleep"));
        assert!(ctr.contains("PATH="), "no ctr process seen: {envs}");
        assert!(
            !ctr.contains("SITE_LABEL"),
            "site value in ctr's environment: {envs}"
        );
        assert!(sleep.contains(&format!("SITE_LABEL={label}")), "{envs}");
        drop(vm);
        std::fs::remove_file(&img).expect("remove the copy");
    }

    // Controls. Each is put on the ESP directly: `site apply` refuses them
    // on the host (checked first), the boot must refuse them on its own.
    let file = write(
        tmp.path(),
        "east.toml",
        "name = \"east\"\nhostname = \"east-gate\"\nserial = \"2\"\n",
    );
    let signed = site::sign(&file, &key, &decl).expect("sign");
    // As signed: with the image and version sign added.
    let good = String::from_utf8(signed.text.clone()).expect("utf-8");
    let good = good.as_str();
    assert!(good.contains("image = \"cairn-test-svc\"\n"), "{good}");
    // Signed by the site key, but not as `cairn site sign` would (which
    // refuses them): what a site signer's older file or another image's
    // file looks like.
    let signed_as = |text: String| SignedSite {
        sig: key
            .sign(text.as_bytes())
            .to_file_text("sites.pub")
            .into_bytes(),
        text: text.into_bytes(),
        ..signed.clone()
    };
    let controls: Vec<(&str, SignedSite, &str)> = vec![
        (
            "changed-byte",
            SignedSite {
                text: good.replace("east-gate", "east-gatf").into_bytes(),
                ..signed.clone()
            },
            "signature does not verify",
        ),
        (
            "other-key",
            {
                let other = cairn::release::signify::generate();
                SignedSite {
                    sig: other
                        .sign(good.as_bytes())
                        .to_file_text("other.pub")
                        .into_bytes(),
                    ..signed.clone()
                }
            },
            "signature does not verify",
        ),
        (
            "not-allowed",
            signed_as(format!("{good}env.greeter.OTHER = \"x\"\n")),
            "`env.greeter.OTHER` is not allowed",
        ),
        (
            "old-serial",
            signed_as(good.replace("serial = \"2\"", "serial = \"1\"")),
            "serial 1 is below this image's min_serial 2",
        ),
        (
            "other-image",
            signed_as(good.replace("image = \"cairn-test-svc\"", "image = \"cairn-test\"")),
            "the site file is for image cairn-test, not cairn-test-svc",
        ),
    ];
    for (name, bad, why) in controls {
        // The host refuses it too.
        let f = write(
            tmp.path(),
            &format!("{name}.toml"),
            &String::from_utf8_lossy(&bad.text),
        );
        std::fs::write(site::sig_path(&f), &bad.sig).expect("write sig");
        assert!(
            site::apply(
                &b.raw,
                &f,
                &tmp.path().join(format!("{name}.raw")),
                site::ReleaseTrust::Unverified
            )
            .is_err(),
            "{name}: site apply accepted it"
        );
        let img = copy_image(&b.raw, tmp.path(), &format!("{name}.raw"));
        site::write_to_medium(&img, &bad).expect("write to the ESP");
        assert_halts_on_site(&img, &format!("site-{name}"), why);
        std::fs::remove_file(&img).expect("remove the copy");
    }

    // No site file: the image requires one, so the boot halts (deleting
    // the site file does not bring the recipe's defaults back).
    assert_halts_on_site(&b.raw, "site-none", "this image requires a site file");
}

/// ISO mode takes exactly one medium, as disk mode does: the ISO as a CD
/// and a second device holding a cairn ISO (a stick with the same image,
/// which could carry an older site file) halt the boot naming both,
/// instead of taking whichever appears first. Control: the CD alone is
/// taken (`cairn: found ISO medium /dev/sr0`).
#[test]
fn two_iso_media_halt_the_boot() {
    let b = built("tiny");
    let iso = b.raw.with_extension("iso");
    assert!(iso.is_file(), "the test build made no {}", iso.display());
    let tmp = tempfile::tempdir().expect("tempdir");
    let second = copy_image(&iso, tmp.path(), "second.iso");

    let mut spec = BootSpec::new(
        &iso,
        cairn::media::ISO.qemu,
        Firmware::Uefi,
        log_path("iso-two-media"),
    );
    spec.bus = cairn::vm::qemu::DiskBus::Cdrom;
    spec.extra_args = vec![
        "-drive".into(),
        format!(
            "file={},format=raw,if=none,id=disk1,readonly=on",
            second.display()
        ),
        "-device".into(),
        "virtio-blk-pci,drive=disk1".into(),
    ];
    let mut vm = Vm::start(&spec).expect("start qemu");
    let (i, line) = vm
        .wait_for_any(&["cairn: found ISO medium", "cairn: FATAL"], boot_timeout())
        .unwrap_or_else(|e| panic!("iso-two-media: no verdict: {e:#}"));
    assert_eq!(i, 1, "a medium was taken with two attached: {line}");
    assert!(
        line.contains("all hold a cairn ISO: two media are attached"),
        "{line}"
    );
    drop(vm);

    // Control: the CD alone is found.
    let mut spec = BootSpec::new(
        &iso,
        cairn::media::ISO.qemu,
        Firmware::Uefi,
        log_path("iso-one-medium"),
    );
    spec.bus = cairn::vm::qemu::DiskBus::Cdrom;
    let mut vm = Vm::start(&spec).expect("start qemu");
    let (i, line) = vm
        .wait_for_any(&["cairn: found ISO medium", "cairn: FATAL"], boot_timeout())
        .unwrap_or_else(|e| panic!("iso-one-medium: no verdict: {e:#}"));
    assert_eq!(i, 0, "{line}\n{}", vm.serial_text());
}
