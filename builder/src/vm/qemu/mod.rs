//! Boots one disk image in QEMU and watches it from outside, for `cairn run` and the boot tests.
//! Invariant: QEMU dies with its [`Vm`] (SIGKILL on drop), the image is untouched unless
//! `snapshot` is off, and the only network is `restrict=on` slirp with 127.0.0.1 endpoints.
//!
//! - [`accel`]: which accelerator works here (the KVM probe) and the
//!   process's [`QemuConfig`];
//! - [`cmdline`]: what to boot ([`BootSpec`]) and the QEMU command line for
//!   it (firmware, drives, NIC, serial ports), pure;
//! - [`console`]: reading what the guest prints (serial log lines and when
//!   the host saw them, the debug console's exchange markers), pure;
//! - [`machine`]: the running [`Vm`] (start, serial waits, debug console,
//!   QMP power button, kill).
//!
//! QEMU runs through the one runner (`host::runner::spawn`). Nothing here
//! reads the environment: `cli::qemu_config_from_env` turns
//! `CAIRN_QEMU_ACCEL` and `CAIRN_BOOT_TIMEOUT_SCALE` into a [`QemuConfig`],
//! and `cairn run` and the test harnesses pass it to [`configure`]. The
//! exceptions are test knobs: the unit tests do the same themselves, and the
//! `#[ignore]`d `qemu_console_run_against_a_kernel` test reads
//! `CAIRN_TEST_KERNEL` and `CAIRN_TEST_INITRD`.

use std::time::Duration;

pub mod accel;
pub mod cmdline;
pub mod console;
pub mod machine;

pub use accel::{
    accel_detail, configure, probe_kvm, timeout_scale, Accel, AccelChoice, QemuConfig,
};
pub use cmdline::{
    command_line, copy_vars, ovmf_paths, BootSpec, DiskBus, Firmware, ImageFormat, PeerLink,
};
pub use console::TimedLine;
pub use machine::Vm;

/// The QEMU binary (Debian package `qemu-system-x86`).
pub const QEMU: &str = "qemu-system-x86_64";
/// OVMF firmware code, mapped read-only (Debian package `ovmf`).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// OVMF variable store template; every VM gets a private writable copy.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Names of the files QEMU uses inside a [`Vm`]'s workdir.
const VARS_FILE: &str = "OVMF_VARS.fd";
const CONSOLE_SOCK: &str = "console.sock";
const QMP_SOCK: &str = "qmp.sock";
const STDERR_FILE: &str = "qemu.stderr";

/// Lines of serial log quoted in timeout errors.
const TAIL_LINES: usize = 30;
/// How often log files and sockets are polled.
const POLL: Duration = Duration::from_millis(50);

/// Before QEMU opens a qcow2 disk: it must stand alone (`host::qcow2`), or
/// QEMU would read its backing or data file, a host file, as the guest's
/// disk. The drive names `format=` always, so nothing is probed; a raw or
/// ISO image is read as bytes only. Exit 2 (`InputError`) naming the file
/// and the rule.
pub fn refuse_linked_qcow2(spec: &BootSpec) -> anyhow::Result<()> {
    if spec.format.standalone_check {
        if spec.format.driver == crate::host::vmdk::DRIVER {
            crate::host::vmdk::check_file(&spec.image).map_err(crate::InputError)?;
        } else {
            crate::host::qcow2::check_file(&spec.image).map_err(crate::InputError)?;
        }
    }
    Ok(())
}
