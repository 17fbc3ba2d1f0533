//! Which accelerator VMs use here, decided once per process: forced by the
//! caller's [`QemuConfig`], else by a KVM probe that boots the real firmware
//! (a toy guest is no evidence on this host). Also the boot-timeout scale.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::cmdline::{copy_vars, ovmf_paths, qemu_path};
use super::console::tail_lines;
use super::QEMU;
use crate::host::runner;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// How the accelerator is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelChoice {
    /// [`probe_kvm`] decides.
    #[default]
    Auto,
    Force(Accel),
}

/// The host knobs every VM of a process shares. vm/ reads no environment
/// variable: `cli::qemu_config_from_env` reads [`QemuConfig::ACCEL_VAR`]
/// and [`QemuConfig::TIMEOUT_SCALE_VAR`] into a config with
/// [`QemuConfig::from_env_values`], and `cairn run` and the test harnesses
/// pass it to [`configure`] before the first VM starts. Unconfigured, the
/// default applies (probe, scale 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QemuConfig {
    pub accel: AccelChoice,
    /// Multiplier for boot timeouts, at least 1. Timeouts in the tests are
    /// written for TCG (the normal case on this host), so KVM and TCG both
    /// default to 1; the knob is for slow or loaded machines.
    pub timeout_scale: u32,
}

impl Default for QemuConfig {
    fn default() -> Self {
        QemuConfig {
            accel: AccelChoice::Auto,
            timeout_scale: 1,
        }
    }
}

impl QemuConfig {
    /// `kvm`, `tcg` or `auto`.
    pub const ACCEL_VAR: &'static str = "CAIRN_QEMU_ACCEL";
    /// A positive integer.
    pub const TIMEOUT_SCALE_VAR: &'static str = "CAIRN_BOOT_TIMEOUT_SCALE";

    /// The config for the two variables' values (`None`: unset). A bad
    /// value is ignored with a warning, so a typo never stops a boot.
    pub fn from_env_values(accel: Option<&str>, timeout_scale: Option<&str>) -> QemuConfig {
        let accel = match accel {
            Some(v) if v.eq_ignore_ascii_case("kvm") => AccelChoice::Force(Accel::Kvm),
            Some(v) if v.eq_ignore_ascii_case("tcg") => AccelChoice::Force(Accel::Tcg),
            Some(v) if !v.is_empty() && !v.eq_ignore_ascii_case("auto") => {
                eprintln!(
                    "warning: ignoring {}={v:?} (want kvm, tcg or auto)",
                    Self::ACCEL_VAR
                );
                AccelChoice::Auto
            }
            _ => AccelChoice::Auto,
        };
        let timeout_scale = match timeout_scale {
            Some(v) => match v.trim().parse::<u32>() {
                Ok(n) if n >= 1 => n,
                _ => {
                    eprintln!(
                        "warning: ignoring {}={v:?} (want an integer >= 1)",
                        Self::TIMEOUT_SCALE_VAR
                    );
                    1
                }
            },
            None => 1,
        };
        QemuConfig {
            accel,
            timeout_scale,
        }
    }
}

static CONFIG: OnceLock<QemuConfig> = OnceLock::new();

/// Sets this process's [`QemuConfig`]. Setting the same config again is
/// fine; a different one after the first (or after a VM already used the
/// default) is an error, so no VM runs under a config it was not given.
pub fn configure(config: QemuConfig) -> Result<()> {
    let current = *CONFIG.get_or_init(|| config);
    if current != config {
        bail!("QEMU settings already fixed as {current:?}; cannot change them to {config:?}");
    }
    Ok(())
}

fn config() -> QemuConfig {
    *CONFIG.get_or_init(QemuConfig::default)
}

/// The configured boot-timeout multiplier (see [`QemuConfig`]).
pub fn timeout_scale() -> u32 {
    config().timeout_scale
}

static ACCEL: OnceLock<(Accel, String)> = OnceLock::new();
static TCG_CPU_MAX: OnceLock<bool> = OnceLock::new();

/// The accelerator every VM of this process uses, decided once: a forced
/// [`QemuConfig::accel`] wins; otherwise [`probe_kvm`] decides.
pub(super) fn detected_accel() -> &'static (Accel, String) {
    ACCEL.get_or_init(|| match config().accel {
        AccelChoice::Force(a) => (a, format!("forced by {}={a}", QemuConfig::ACCEL_VAR)),
        AccelChoice::Auto => probe_kvm(KVM_PROBE_TIMEOUT),
    })
}

/// A one-line explanation of how [`super::Vm::accel`] was decided (for `cairn doctor`
/// and test logs).
pub fn accel_detail() -> &'static str {
    &detected_accel().1
}

/// Budget for the firmware boot in the KVM probe. A working KVM gets OVMF to
/// its boot manager in well under a second; a miss only costs speed (TCG).
pub(super) const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(4);

const KVM_API_VERSION: i32 = 12;

/// Decides whether KVM really works, in two stages.
///
/// Why not just "does /dev/kvm exist": on this host it exists and opens, yet
/// guests die under it. Observed with QEMU 10.0 here: `-cpu host` aborts at
/// vCPU setup (`failed to set MSR 0x10a`, assertion in kvm_buf_set_msrs);
/// with the default CPU model SeaBIOS and a real-mode test blob run fine, but
/// OVMF stops in SEC with `KVM internal error. Suberror: 1` (emulation failure
/// on x87 init) and QEMU hangs paused. So a toy guest is not evidence; the
/// probe boots the very firmware and CPU model real VMs use:
///
/// 1. open `/dev/kvm` read-write and check `KVM_GET_API_VERSION` == 12
///    (cheap; catches missing device or permissions);
/// 2. run `qemu -accel kvm -cpu host` on OVMF with no disk and require serial
///    output (OVMF prints on serial only once it reaches BDS, i.e. after long
///    mode, SSE, MMIO flash, timers and interrupts all worked) within
///    `budget`; QEMU exiting, "KVM internal error" on stderr, or silence
///    means TCG. Without OVMF, SeaBIOS's debugcon output ("No bootable
///    device") is the weaker fallback evidence.
///
/// Returns the verdict and a human-readable reason.
pub fn probe_kvm(budget: Duration) -> (Accel, String) {
    match kvm_api_version() {
        Ok(KVM_API_VERSION) => {}
        Ok(v) => {
            return (
                Accel::Tcg,
                format!("/dev/kvm reports API version {v}, expected {KVM_API_VERSION}"),
            )
        }
        Err(e) => return (Accel::Tcg, format!("{e:#}")),
    }
    match probe_kvm_boot(budget) {
        Ok(why) => (Accel::Kvm, why),
        Err(e) => (Accel::Tcg, format!("/dev/kvm opens but {e:#}")),
    }
}

fn kvm_api_version() -> Result<i32> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/kvm")
        .context("cannot open /dev/kvm read-write")?;
    let v =
        crate::host::sys::kvm_api_version(&f).context("ioctl KVM_GET_API_VERSION on /dev/kvm")?;
    Ok(v)
}

fn probe_kvm_boot(budget: Duration) -> Result<String> {
    let dir = tempfile::Builder::new()
        .prefix("cairn-kvm-probe-")
        .tempdir()
        .context("creating a temp dir for the KVM probe")?;
    let out = dir.path().join("out.log");
    let err = dir.path().join("stderr");
    let mut args: Vec<String> = [
        "-machine",
        "q35",
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
        "256",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (what, marker): (&str, &str) = if let Ok((code, vars)) = ovmf_paths() {
        let vars_copy = copy_vars(&vars, dir.path())?;
        args.extend([
            "-drive".into(),
            format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                qemu_path(&code)?
            ),
            "-drive".into(),
            format!(
                "if=pflash,format=raw,unit=1,file={}",
                qemu_path(&vars_copy)?
            ),
            "-chardev".into(),
            format!("file,id=out,path={}", qemu_path(&out)?),
            "-serial".into(),
            "chardev:out".into(),
        ]);
        ("OVMF", "")
    } else {
        args.extend([
            "-chardev".into(),
            format!("file,id=out,path={}", qemu_path(&out)?),
            "-device".into(),
            "isa-debugcon,iobase=0x402,chardev=out".into(),
        ]);
        ("SeaBIOS", "No bootable device")
    };
    let errf = File::create(&err).context("creating the KVM probe's stderr file")?;
    let mut cmd = runner::command(QEMU);
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(errf);
    let mut child = runner::spawn("KVM probe", cmd)?;
    let started = Instant::now();
    loop {
        let text = fs::read(&out).unwrap_or_default();
        let stderr = fs::read_to_string(&err).unwrap_or_default();
        if stderr.contains("KVM internal error") {
            bail!(
                "{what} hit a KVM internal error under `-accel kvm -cpu host`:\n    {}",
                tail_lines(&stderr, 4)
            );
        }
        if !text.is_empty() && String::from_utf8_lossy(&text).contains(marker) {
            return Ok(format!(
                "{what} reached its boot manager under `-accel kvm -cpu host` in {} ms",
                started.elapsed().as_millis()
            ));
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "{what} under `-accel kvm -cpu host` exited ({status}) in {} ms:\n    {}",
                started.elapsed().as_millis(),
                tail_lines(&stderr, 4)
            );
        }
        if started.elapsed() >= budget {
            bail!(
                "{what} under `-accel kvm -cpu host` printed nothing within {} ms",
                budget.as_millis()
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A 64 KiB "BIOS" whose reset vector writes 0x2a to an `isa-debug-exit`
/// port at 0xf4: QEMU then exits with status (0x2a << 1) | 1 = 85.
fn exit_blob() -> Vec<u8> {
    let mut b = vec![0xF4u8; 0x10000]; // hlt everywhere
                                       // mov al, 0x2a ; out 0xf4, al ; hlt ; jmp $-1
    b[0xFFF0..0xFFF7].copy_from_slice(&[0xB0, 0x2A, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD]);
    b
}

/// Whether `-accel tcg -cpu max` runs here (it does with QEMU 10.0 on this
/// host; older QEMUs had TCG `max` models that warn or fail). Checked once
/// with the exit blob; on failure VMs use QEMU's default CPU model.
pub(super) fn tcg_cpu_max_ok() -> bool {
    *TCG_CPU_MAX.get_or_init(|| match run_exit_blob(&["-accel", "tcg", "-cpu", "max"]) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("note: not using `-cpu max` under TCG: {e:#}");
            false
        }
    })
}

fn run_exit_blob(accel_args: &[&str]) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("cairn-cpu-probe-")
        .tempdir()
        .context("creating a temp dir for the CPU probe")?;
    let bios = dir.path().join("exit.bin");
    fs::write(&bios, exit_blob()).context("writing the probe firmware")?;
    let mut cmd = runner::command(QEMU);
    cmd.args([
        "-machine",
        "q35",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-m",
        "16",
    ])
    .args(accel_args)
    .arg("-bios")
    .arg(&bios)
    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = runner::spawn("CPU probe", cmd)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.try_wait()? {
            let mut stderr = String::new();
            if let Some(mut e) = child.take_stderr() {
                let _ = e.read_to_string(&mut stderr);
            }
            if status.code() == Some(85) && !stderr.contains("warning") {
                return Ok(());
            }
            bail!("probe guest exited ({status}): {}", stderr.trim());
        }
        if Instant::now() >= deadline {
            bail!("probe guest did not exit within 5 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_config_from_env_values() {
        assert_eq!(
            QemuConfig::from_env_values(None, None),
            QemuConfig::default()
        );
        let c = QemuConfig::from_env_values(Some("KVM"), Some(" 3 "));
        assert_eq!(c.accel, AccelChoice::Force(Accel::Kvm));
        assert_eq!(c.timeout_scale, 3);
        let c = QemuConfig::from_env_values(Some("tcg"), Some("0"));
        assert_eq!(c.accel, AccelChoice::Force(Accel::Tcg));
        assert_eq!(c.timeout_scale, 1, "0 is refused");
        for v in ["auto", "", "vmware"] {
            assert_eq!(
                QemuConfig::from_env_values(Some(v), None).accel,
                AccelChoice::Auto
            );
        }
        assert_eq!(
            QemuConfig::from_env_values(None, Some("x")).timeout_scale,
            1
        );
    }

    #[test]
    fn qemu_kvm_probe_is_fast() {
        let t = Instant::now();
        let (accel, why) = probe_kvm(KVM_PROBE_TIMEOUT);
        let took = t.elapsed();
        println!("KVM probe: {accel} ({why}) in {} ms", took.as_millis());
        assert!(took < Duration::from_secs(6), "probe took {took:?}");
        crate::vm::qemu::machine::tests::configure_from_env();
        println!(
            "Vm::accel() = {} ({})",
            crate::vm::qemu::Vm::accel(),
            accel_detail()
        );
        crate::vm::qemu::machine::tests::need_qemu();
        println!("tcg -cpu max usable: {}", tcg_cpu_max_ok());
    }
}
