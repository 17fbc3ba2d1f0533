//! The production gate: an image without `[debug]` runs no getty or login
//! prompt on any console, and its manifest says it has no debug flag.
//! Control: the debug test image's serial console does show `login:`.

use std::time::Duration;

use cairn::vm::qemu::{BootSpec, Firmware, Vm};
use qemu_tests::*;

#[test]
fn a_production_console_shows_no_login_prompt() {
    let prod = built("tiny-prod");
    let debug = built("tiny");
    let flags = |dir: &std::path::Path| {
        let m = cairn::release::manifest::read(&dir.join("manifest.json")).expect("manifest");
        (m.flags.debug_console, m.flags.debug_unencrypted_state)
    };
    assert_eq!(flags(&prod.dir), (false, false));
    assert_eq!(flags(&debug.dir), (true, false));

    let mut p = Vm::start(&BootSpec::new(
        &prod.raw,
        cairn::media::RAW.qemu,
        Firmware::Uefi,
        log_path("production"),
    ))
    .expect("start qemu");
    let mut d = Vm::start(&BootSpec::new(
        &debug.raw,
        cairn::media::RAW.qemu,
        Firmware::Uefi,
        log_path("production-control"),
    ))
    .expect("start qemu");
    p.wait_for_line("cairn: ready", boot_timeout())
        .expect("production image ready");
    d.wait_for_line("cairn: ready", boot_timeout())
        .expect("debug image ready");
    // Control: the debug image starts gettys (systemd reports "Getty on
    // tty1" and "Serial Getty on ttyS0" on the serial console, and the
    // serial one prompts "login:" once its tty device is up).
    d.wait_for_any(&["login:", "Getty on"], console_timeout())
        .expect("the debug image starts a getty");
    // The production image had the same time, and more, to show one.
    std::thread::sleep(Duration::from_secs(
        20 * cairn::vm::qemu::timeout_scale() as u64,
    ));
    let serial = p.serial_text();
    assert!(!serial.contains("login:"), "{serial}");
    assert!(!serial.to_lowercase().contains("getty"), "{serial}");
}
