//! Boots one disk image in QEMU and watches it from outside, for `cairn run` and the boot tests.
//! Invariant: QEMU dies with its [`Vm`] (SIGKILL on drop), the image is untouched unless
//! `snapshot` is off, and the only network is `restrict=on` slirp with 127.0.0.1 endpoints.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// OVMF from `/usr/share/OVMF` (pflash code + private vars copy).
    Uefi,
    /// QEMU's default SeaBIOS.
    Bios,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskBus {
    /// `virtio-blk-pci`.
    Virtio,
    /// `qemu-xhci` + `usb-storage`, like a USB stick.
    UsbStorage,
    /// `ide-cd` on the q35 built-in AHCI controller (always read-only).
    Cdrom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Qcow2,
    /// An ISO 9660 image; passed to QEMU as read-only raw.
    Iso,
}

impl ImageFormat {
    /// Guesses the format from the file extension (`.img`/`.raw`, `.qcow2`, `.iso`).
    pub fn from_path(path: &Path) -> Option<ImageFormat> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "img" | "raw" => Some(ImageFormat::Raw),
            "qcow2" => Some(ImageFormat::Qcow2),
            "iso" => Some(ImageFormat::Iso),
            _ => None,
        }
    }

    fn qemu_name(self) -> &'static str {
        match self {
            ImageFormat::Raw | ImageFormat::Iso => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }
}

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

/// Everything needed to boot one image. Build with [`BootSpec::new`] and
/// adjust the public fields.
#[derive(Debug, Clone)]
pub struct BootSpec {
    pub image: PathBuf,
    pub format: ImageFormat,
    pub firmware: Firmware,
    pub bus: DiskBus,
    /// Guest RAM; default 2048.
    pub memory_mib: u32,
    /// Guest vCPUs; default 1.
    pub cpus: u32,
    /// Default true: writes go to a throw-away overlay (`snapshot=on`), the
    /// image file is never modified.
    pub snapshot: bool,
    /// The first serial port (ttyS0) is captured to this file (truncated at start).
    pub serial_log: PathBuf,
    /// The second serial port (ttyS1) becomes a unix socket for [`Vm::console_run`].
    pub debug_console: bool,
    /// `(host, guest)`: hostfwd tcp 127.0.0.1:host -> guest port. Needs `network`.
    pub forwards: Vec<(u16, u16)>,
    /// `(guest ip in 10.0.2.0/24, guest port, host listener)`: guest connections
    /// to ip:port are forwarded to the host listener, which must be on
    /// 127.0.0.1 and must already be listening when the VM starts (QEMU
    /// connects once, at startup). Needs `network`.
    pub guestfwds: Vec<(Ipv4Addr, u16, SocketAddrV4)>,
    /// A user-mode (slirp) NIC with `restrict=on`: the guest reaches nothing
    /// but the explicit forwards. Without it the guest has no NIC at all.
    pub network: bool,
    /// Appended verbatim (network options are refused).
    pub extra_args: Vec<String>,
}

impl BootSpec {
    pub fn new(
        image: impl Into<PathBuf>,
        format: ImageFormat,
        firmware: Firmware,
        serial_log: impl Into<PathBuf>,
    ) -> BootSpec {
        BootSpec {
            image: image.into(),
            format,
            firmware,
            bus: DiskBus::Virtio,
            memory_mib: 2048,
            cpus: 1,
            snapshot: true,
            serial_log: serial_log.into(),
            debug_console: false,
            forwards: Vec::new(),
            guestfwds: Vec::new(),
            network: false,
            extra_args: Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------
// Host capabilities: firmware, accelerator, timeouts
// ---------------------------------------------------------------------------

/// The OVMF code and vars-template paths, or an error naming the package.
pub fn ovmf_paths() -> Result<(PathBuf, PathBuf)> {
    let code = PathBuf::from(OVMF_CODE);
    let vars = PathBuf::from(OVMF_VARS);
    for p in [&code, &vars] {
        if !p.is_file() {
            bail!(
                "UEFI firmware {} not found; install the Debian package `ovmf` \
                 (apt-get install ovmf)",
                p.display()
            );
        }
    }
    Ok((code, vars))
}

/// Multiplier for boot timeouts: `CAIRN_BOOT_TIMEOUT_SCALE` if set to a
/// positive integer, else 1. Timeouts in the tests are written for TCG (the
/// normal case on this host), so KVM and TCG both default to 1; the knob is
/// for slow or loaded machines.
pub fn timeout_scale() -> u32 {
    match std::env::var("CAIRN_BOOT_TIMEOUT_SCALE") {
        Ok(v) => match v.trim().parse::<u32>() {
            Ok(n) if n >= 1 => n,
            _ => {
                eprintln!(
                    "warning: ignoring CAIRN_BOOT_TIMEOUT_SCALE={v:?} (want an integer >= 1)"
                );
                1
            }
        },
        Err(_) => 1,
    }
}

static ACCEL: OnceLock<(Accel, String)> = OnceLock::new();
static TCG_CPU_MAX: OnceLock<bool> = OnceLock::new();

/// The accelerator every VM of this process uses, decided once:
/// `CAIRN_QEMU_ACCEL=kvm|tcg` wins; otherwise [`probe_kvm`] decides.
fn detected_accel() -> &'static (Accel, String) {
    ACCEL.get_or_init(|| match std::env::var("CAIRN_QEMU_ACCEL") {
        Ok(v) if v.eq_ignore_ascii_case("kvm") => {
            (Accel::Kvm, "forced by CAIRN_QEMU_ACCEL=kvm".to_string())
        }
        Ok(v) if v.eq_ignore_ascii_case("tcg") => {
            (Accel::Tcg, "forced by CAIRN_QEMU_ACCEL=tcg".to_string())
        }
        Ok(v) if !v.is_empty() && !v.eq_ignore_ascii_case("auto") => {
            eprintln!("warning: ignoring CAIRN_QEMU_ACCEL={v:?} (want kvm, tcg or auto)");
            probe_kvm(KVM_PROBE_TIMEOUT)
        }
        _ => probe_kvm(KVM_PROBE_TIMEOUT),
    })
}

/// A one-line explanation of how [`Vm::accel`] was decided (for `cairn doctor`
/// and test logs).
pub fn accel_detail() -> &'static str {
    &detected_accel().1
}

/// Budget for the firmware boot in the KVM probe. A working KVM gets OVMF to
/// its boot manager in well under a second; a miss only costs speed (TCG).
const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(4);

/// `_IO(KVMIO, 0x00)`.
const KVM_GET_API_VERSION: u64 = 0xAE00;
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
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns an int.
    let v = unsafe { libc::ioctl(f.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
    if v < 0 {
        return Err(std::io::Error::last_os_error())
            .context("ioctl KVM_GET_API_VERSION on /dev/kvm");
    }
    Ok(v)
}

/// Kills and reaps a child when dropped (used by the probes).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
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
        let vars_copy = dir.path().join(VARS_FILE);
        copy_vars(&vars, &vars_copy)?;
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
    let child = Command::new(QEMU)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(errf)
        .spawn()
        .with_context(|| format!("cannot run {QEMU} (Debian package qemu-system-x86)"))?;
    let mut child = KillOnDrop(child);
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
        if let Some(status) = child.0.try_wait().context("waiting for the KVM probe")? {
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
fn tcg_cpu_max_ok() -> bool {
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
    let mut cmd = Command::new(QEMU);
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
    let mut child = KillOnDrop(cmd.spawn().with_context(|| format!("cannot run {QEMU}"))?);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.0.try_wait()? {
            let mut stderr = String::new();
            if let Some(mut e) = child.0.stderr.take() {
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

// ---------------------------------------------------------------------------
// The command line (pure)
// ---------------------------------------------------------------------------

/// A path as a QEMU option value: absolute or `./`-prefixed (so `foo:bar` is
/// never read as a protocol prefix) and with `,` doubled (QEMU's escape).
fn qemu_path(p: &Path) -> Result<String> {
    let s = p
        .to_str()
        .ok_or_else(|| anyhow!("path {} is not UTF-8; QEMU cannot be given it", p.display()))?;
    if s.is_empty() {
        bail!("empty path");
    }
    let s = if p.is_absolute() {
        s.to_string()
    } else {
        format!("./{s}")
    };
    Ok(s.replace(',', ",,"))
}

fn check_guestfwd(ip: Ipv4Addr, port: u16, target: SocketAddrV4) -> Result<()> {
    if *target.ip() != Ipv4Addr::LOCALHOST {
        bail!(
            "guestfwd {ip}:{port} -> {target} refused: the host end must be 127.0.0.1 \
             (the VM may not reach any other address)"
        );
    }
    if target.port() == 0 || port == 0 {
        bail!("guestfwd {ip}:{port} -> {target}: port 0 is not a valid forward");
    }
    let o = ip.octets();
    if o[..3] != [10, 0, 2] || matches!(o[3], 0 | 2 | 3 | 255) {
        bail!(
            "guestfwd address {ip} must be inside the user-mode network 10.0.2.0/24 and not \
             its network, gateway (.2), DNS (.3) or broadcast address"
        );
    }
    Ok(())
}

fn check_extra_arg(arg: &str) -> Result<()> {
    let name = arg.trim_start_matches('-');
    let name = name.split('=').next().unwrap_or(name);
    if arg.starts_with('-') && matches!(name, "netdev" | "nic" | "net") {
        bail!(
            "extra QEMU argument {arg:?} refused: networking is only configured through \
             BootSpec.network/forwards/guestfwds (always restrict=on)"
        );
    }
    Ok(())
}

/// The full QEMU argument list (without the binary) for `spec` under
/// `accel`, with sockets, stderr and the OVMF vars copy placed in `workdir`.
/// Pure: touches no files. Refuses specs that would give the guest a
/// non-loopback host endpoint or an unrestricted network.
pub fn command_line(spec: &BootSpec, accel: Accel, workdir: &Path) -> Result<Vec<String>> {
    build_command_line(spec, accel, true, workdir)
}

fn build_command_line(
    spec: &BootSpec,
    accel: Accel,
    tcg_cpu_max: bool,
    workdir: &Path,
) -> Result<Vec<String>> {
    if spec.memory_mib < 64 {
        bail!("memory_mib = {} is too small (minimum 64)", spec.memory_mib);
    }
    if spec.cpus == 0 {
        bail!("cpus must be at least 1");
    }
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&[
        "-machine",
        "q35",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
    ]);
    // A guest reboot ends the VM: tests see it as an exit, not a silent loop.
    push(&["-no-reboot"]);
    push(&[
        "-m",
        &spec.memory_mib.to_string(),
        "-smp",
        &spec.cpus.to_string(),
    ]);
    match accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg if tcg_cpu_max => push(&["-accel", "tcg", "-cpu", "max"]),
        Accel::Tcg => push(&["-accel", "tcg"]),
    }
    if spec.firmware == Firmware::Uefi {
        let code = qemu_path(Path::new(OVMF_CODE))?;
        let vars = qemu_path(&workdir.join(VARS_FILE))?;
        push(&[
            "-drive",
            &format!("if=pflash,format=raw,unit=0,readonly=on,file={code}"),
        ]);
        push(&[
            "-drive",
            &format!("if=pflash,format=raw,unit=1,file={vars}"),
        ]);
    }
    // Chardev forms of `-serial file:` / `-qmp unix:` so that paths with
    // commas can be escaped.
    let log = qemu_path(&spec.serial_log).context("serial_log")?;
    push(&[
        "-chardev",
        &format!("file,id=serial0,path={log}"),
        "-serial",
        "chardev:serial0",
    ]);
    if spec.debug_console {
        let sock = qemu_path(&workdir.join(CONSOLE_SOCK))?;
        push(&[
            "-chardev",
            &format!("socket,id=serial1,path={sock},server=on,wait=off"),
        ]);
        push(&["-serial", "chardev:serial1"]);
    } else {
        push(&["-serial", "null"]);
    }
    let qmp = qemu_path(&workdir.join(QMP_SOCK))?;
    push(&[
        "-chardev",
        &format!("socket,id=qmp,path={qmp},server=on,wait=off"),
    ]);
    push(&["-mon", "chardev=qmp,mode=control"]);

    let image = qemu_path(&spec.image).context("image")?;
    let mut drive = format!(
        "if=none,id=disk0,format={},file={image}",
        spec.format.qemu_name()
    );
    if spec.bus == DiskBus::Cdrom {
        drive.push_str(",media=cdrom");
    }
    if spec.bus == DiskBus::Cdrom || spec.format == ImageFormat::Iso {
        drive.push_str(",readonly=on");
    } else if spec.snapshot {
        drive.push_str(",snapshot=on");
    }
    push(&["-drive", &drive]);
    match spec.bus {
        DiskBus::Virtio => push(&["-device", "virtio-blk-pci,drive=disk0,bootindex=1"]),
        DiskBus::UsbStorage => push(&[
            "-device",
            "qemu-xhci,id=xhci",
            "-device",
            "usb-storage,bus=xhci.0,drive=disk0,bootindex=1",
        ]),
        DiskBus::Cdrom => push(&["-device", "ide-cd,bus=ide.0,drive=disk0,bootindex=1"]),
    }

    if spec.network {
        let mut nd = String::from("user,id=n0,restrict=on");
        for &(host, guest) in &spec.forwards {
            if host == 0 || guest == 0 {
                bail!("forward {host} -> {guest}: port 0 is not a valid forward");
            }
            nd.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
        }
        for &(ip, port, target) in &spec.guestfwds {
            check_guestfwd(ip, port, target)?;
            nd.push_str(&format!(
                ",guestfwd=tcp:{ip}:{port}-tcp:127.0.0.1:{}",
                target.port()
            ));
        }
        push(&["-netdev", &nd, "-device", "virtio-net-pci,netdev=n0"]);
    } else {
        if !spec.forwards.is_empty() || !spec.guestfwds.is_empty() {
            bail!("port forwards are set but network = false; set network = true");
        }
        push(&["-nic", "none"]);
    }
    for arg in &spec.extra_args {
        check_extra_arg(arg)?;
    }
    a.extend(spec.extra_args.iter().cloned());
    Ok(a)
}

fn copy_vars(template: &Path, dest: &Path) -> Result<()> {
    fs::copy(template, dest)
        .with_context(|| format!("copying {} to {}", template.display(), dest.display()))?;
    // The template is often mode 0644 root-owned or 0444; QEMU opens it rw.
    fs::set_permissions(dest, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} writable", dest.display()))
}

// ---------------------------------------------------------------------------
// Text helpers (pure)
// ---------------------------------------------------------------------------

/// Drops ANSI escape sequences and control characters other than `\n`/`\t`
/// (OVMF paints its screen with them), for readable error messages.
fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // parameters/intermediates, then one final byte 0x40..=0x7e
                for c in chars.by_ref() {
                    if ('\x40'..='\x7e').contains(&c) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c == '\n' || c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out
}

/// The last `n` non-blank lines, printable, indented for an error message.
fn tail_lines(s: &str, n: usize) -> String {
    let clean = printable(s);
    let v: Vec<&str> = clean.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = v.len().saturating_sub(n);
    if v.is_empty() {
        return "(empty)".to_string();
    }
    v[start..].join("\n    ")
}

/// First line at or after byte `*scanned` of `buf` whose [`printable`] text
/// contains any of `patterns` (a trailing line without `\n` counts: prompts
/// have none). Returns the pattern index, that text and where the next search
/// should start. `scanned` is advanced past complete non-matching lines so
/// repeated polls do not rescan them.
fn find_line(buf: &[u8], scanned: &mut usize, patterns: &[&str]) -> Option<(usize, String, usize)> {
    let mut start = *scanned;
    while start < buf.len() {
        let (end, next, complete) = match buf[start..].iter().position(|&b| b == b'\n') {
            Some(i) => (start + i, start + i + 1, true),
            None => (buf.len(), buf.len(), false),
        };
        let line = printable(&String::from_utf8_lossy(&buf[start..end]));
        for (i, p) in patterns.iter().enumerate() {
            if line.contains(p) {
                return Some((i, line, next));
            }
        }
        if !complete {
            break;
        }
        start = next;
        *scanned = next;
    }
    None
}

/// Unique-enough marker for one console exchange.
fn nonce() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let h = Sha256::digest(format!("{}:{t}:{n}", std::process::id()).as_bytes());
    hex::encode(&h[..6])
}

/// What [`Vm::console_run`] writes to the shell. The markers the shell will
/// print (`__CAIRN_BEGIN_<n>`, `__CAIRN_RC_<n>=<rc>`) are split by empty
/// quotes in the input, so an echoed copy of the input can never be mistaken
/// for them. The command sits in a `{ ...; }` group on its own line, so the
/// shell parses all of it before running any (all tty echo comes first) and a
/// trailing `#` comment cannot swallow the RC marker. Ctrl-U first discards
/// any half-typed junk line.
fn console_input(command: &str, nonce: &str) -> String {
    format!(
        "\x15echo __CAIRN_BEG''IN_{nonce}; {{ {command}\n}}; echo \"__CAIRN_RC_\"\"{nonce}=$?\"\n"
    )
}

/// Parses the console transcript of one [`console_input`] exchange: the
/// output is everything between the end of the `__CAIRN_BEGIN_<n>` line and
/// the `__CAIRN_RC_<n>=` marker, with `\r\n` turned into `\n` and trailing
/// newlines dropped (like `$(...)`). `None` until the RC line is complete.
pub(crate) fn parse_console_output(text: &str, nonce: &str) -> Option<(i32, String)> {
    let begin = format!("__CAIRN_BEGIN_{nonce}");
    let b = text.find(&begin)?;
    let out_start = b + text[b..].find('\n')? + 1;
    let rc_marker = format!("__CAIRN_RC_{nonce}=");
    let r = out_start + text[out_start..].find(&rc_marker)?;
    let after = &text[r + rc_marker.len()..];
    let eol = after.find(['\r', '\n'])?;
    let rc: i32 = after[..eol].trim().parse().ok()?;
    let out = text[out_start..r].replace("\r\n", "\n");
    Some((rc, out.trim_end_matches('\n').to_string()))
}

// ---------------------------------------------------------------------------
// The running VM
// ---------------------------------------------------------------------------

/// A running QEMU (SIGKILLed on drop) and its private workdir (OVMF vars
/// copy, console and QMP sockets, `qemu.stderr`), removed on drop.
pub struct Vm {
    child: Child,
    workdir: tempfile::TempDir,
    args: Vec<String>,
    accel: Accel,
    serial_log: PathBuf,
    log_file: Option<File>,
    log_buf: Vec<u8>,
    /// Byte offset in `log_buf` where the next `wait_for_*` starts.
    log_cursor: usize,
    debug_console: bool,
    console: Option<UnixStream>,
    console_buf: Vec<u8>,
}

impl Vm {
    /// Starts QEMU for `spec` and returns once QEMU has finished setting up
    /// (its QMP monitor answers), so bad arguments, a busy forward port or an
    /// unreachable guestfwd listener fail here with QEMU's stderr.
    pub fn start(spec: &BootSpec) -> Result<Vm> {
        let image = fs::canonicalize(&spec.image)
            .with_context(|| format!("disk image {}", spec.image.display()))?;
        let mut spec = spec.clone();
        spec.image = image;

        let mut workdir = tempfile::Builder::new()
            .prefix("cairn-qemu-")
            .tempdir()
            .context("creating the VM workdir")?;
        // Unix socket paths are limited to 108 bytes; a long $TMPDIR breaks them.
        if workdir.path().join(CONSOLE_SOCK).as_os_str().len() > 100 {
            workdir = tempfile::Builder::new()
                .prefix("cairn-qemu-")
                .tempdir_in("/tmp")
                .context("creating the VM workdir in /tmp")?;
        }
        let wd = workdir.path().to_path_buf();

        let accel = Vm::accel();
        let tcg_max = accel == Accel::Tcg && tcg_cpu_max_ok();
        let args = build_command_line(&spec, accel, tcg_max, &wd)?;

        if spec.firmware == Firmware::Uefi {
            let (_code, vars) = ovmf_paths()?;
            copy_vars(&vars, &wd.join(VARS_FILE))?;
        }
        if let Some(parent) = spec.serial_log.parent() {
            if !parent.as_os_str().is_empty() {
                fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
        }
        // Truncate now so a stale log from an earlier run is never matched.
        File::create(&spec.serial_log)
            .with_context(|| format!("creating serial log {}", spec.serial_log.display()))?;

        let stderr_path = wd.join(STDERR_FILE);
        let errf = File::create(&stderr_path)
            .with_context(|| format!("creating {}", stderr_path.display()))?;
        let outf = errf
            .try_clone()
            .context("duplicating the stderr file handle")?;
        let child = Command::new(QEMU)
            .args(&args)
            .current_dir(&wd)
            .stdin(Stdio::null())
            .stdout(outf)
            .stderr(errf)
            .spawn()
            .with_context(|| {
                format!("cannot run {QEMU}; install the Debian package qemu-system-x86")
            })?;
        let mut vm = Vm {
            child,
            workdir,
            args,
            accel,
            serial_log: spec.serial_log.clone(),
            log_file: None,
            log_buf: Vec::new(),
            log_cursor: 0,
            debug_console: spec.debug_console,
            console: None,
            console_buf: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        if let Err(e) = vm.qmp_execute("query-status", deadline) {
            let mut msg = format!("QEMU did not start: {e:#}");
            if let Ok(Some(status)) = vm.wait_exit(Duration::from_secs(2)) {
                msg = format!("QEMU exited at startup ({status})");
            }
            bail!(
                "{msg}\n  command: {QEMU} {}\n  qemu stderr:\n    {}",
                vm.args.join(" "),
                tail_lines(&vm.stderr_text(), 15)
            );
        }
        Ok(vm)
    }

    /// The accelerator VMs use in this process (probed once, see [`probe_kvm`]).
    pub fn accel() -> Accel {
        detected_accel().0
    }

    /// The accelerator this VM was started with.
    pub fn vm_accel(&self) -> Accel {
        self.accel
    }

    /// QEMU's argument list (for logs).
    pub fn args(&self) -> &[String] {
        &self.args
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The private workdir (sockets, `qemu.stderr`, OVMF vars copy).
    pub fn workdir(&self) -> &Path {
        self.workdir.path()
    }

    /// QEMU's own stdout+stderr so far.
    pub fn stderr_text(&self) -> String {
        fs::read(self.workdir.path().join(STDERR_FILE))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The whole serial log (ttyS0) so far.
    pub fn serial_text(&self) -> String {
        fs::read(&self.serial_log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn refresh_log(&mut self) {
        if self.log_file.is_none() {
            self.log_file = File::open(&self.serial_log).ok();
        }
        if let Some(f) = &mut self.log_file {
            let _ = f.read_to_end(&mut self.log_buf);
        }
    }

    /// Waits for a serial-log line containing `pattern` and returns it.
    /// Lines are compared and returned with ANSI escape sequences and control
    /// characters removed (firmware and systemd colour their output); a last
    /// line without `\n` counts (prompts). Searching starts after the line
    /// matched by the previous `wait_for_*` call (from the start of the log on
    /// the first call), so waiting twice for a pattern needs two occurrences.
    pub fn wait_for_line(&mut self, pattern: &str, timeout: Duration) -> Result<String> {
        self.wait_for_any(&[pattern], timeout).map(|(_, line)| line)
    }

    /// Like [`Vm::wait_for_line`] for several patterns: returns the index of
    /// the pattern found and its line (the earliest matching line wins).
    pub fn wait_for_any(
        &mut self,
        patterns: &[&str],
        timeout: Duration,
    ) -> Result<(usize, String)> {
        let started = Instant::now();
        let mut scanned = self.log_cursor;
        loop {
            // Check for exit before reading, so output written just before
            // QEMU exited is still searched once.
            let exited = self.child.try_wait().context("checking on QEMU")?;
            self.refresh_log();
            if let Some((i, line, next)) = find_line(&self.log_buf, &mut scanned, patterns) {
                self.log_cursor = next;
                return Ok((i, line));
            }
            if let Some(status) = exited {
                bail!(
                    "QEMU exited ({status}) after {:.1} s before the serial log showed {patterns:?}\n  \
                     qemu stderr:\n    {}\n  last {TAIL_LINES} lines of serial log {}:\n    {}",
                    started.elapsed().as_secs_f64(),
                    tail_lines(&self.stderr_text(), 15),
                    self.serial_log.display(),
                    tail_lines(&String::from_utf8_lossy(&self.log_buf), TAIL_LINES)
                );
            }
            if started.elapsed() >= timeout {
                let stderr = self.stderr_text();
                let stderr = if stderr.trim().is_empty() {
                    String::new()
                } else {
                    format!("\n  qemu stderr:\n    {}", tail_lines(&stderr, 15))
                };
                bail!(
                    "timed out after {:.1} s ({} accel) waiting for the serial log to show \
                     {patterns:?}{stderr}\n  last {TAIL_LINES} lines of serial log {}:\n    {}",
                    timeout.as_secs_f64(),
                    self.accel,
                    self.serial_log.display(),
                    tail_lines(&String::from_utf8_lossy(&self.log_buf), TAIL_LINES)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    fn exited_error(&mut self, what: &str) -> Option<anyhow::Error> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(anyhow!(
                "QEMU exited ({status}) while {what}\n  qemu stderr:\n    {}",
                tail_lines(&self.stderr_text(), 15)
            )),
            _ => None,
        }
    }

    /// Connects to a unix socket QEMU serves, retrying until `deadline`.
    fn connect(&mut self, name: &str, deadline: Instant) -> Result<UnixStream> {
        let path = self.workdir.path().join(name);
        loop {
            match UnixStream::connect(&path) {
                Ok(s) => return Ok(s),
                Err(e) => {
                    if let Some(err) = self.exited_error(&format!("connecting to {name}")) {
                        return Err(err);
                    }
                    if Instant::now() >= deadline {
                        return Err(e).with_context(|| format!("connecting to {}", path.display()));
                    }
                }
            }
            std::thread::sleep(POLL);
        }
    }

    /// Reads whatever the debug console has into `console_buf`.
    fn console_pump(&mut self) -> Result<()> {
        let Some(stream) = self.console.as_mut() else {
            bail!("debug console not connected");
        };
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => {
                self.console = None;
                bail!("QEMU closed the debug console socket");
            }
            Ok(n) => self.console_buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e).context("reading the debug console"),
        }
        Ok(())
    }

    fn console_write(&mut self, s: &str) -> Result<()> {
        let Some(stream) = self.console.as_mut() else {
            bail!("debug console not connected");
        };
        stream
            .write_all(s.as_bytes())
            .and_then(|()| stream.flush())
            .context("writing to the debug console")
    }

    fn console_tail(&self) -> String {
        tail_lines(&String::from_utf8_lossy(&self.console_buf), 15)
    }

    /// Runs `command` in the guest's root shell on ttyS1 (needs
    /// `debug_console`) and returns its exit code and combined output.
    ///
    /// First syncs with the shell (an idempotent `echo` resent every 2 s until
    /// it answers: before the guest's shell is up, bytes are lost), then
    /// sends the command once. Works whether or not the tty echoes input.
    pub fn console_run(&mut self, command: &str, timeout: Duration) -> Result<(i32, String)> {
        if !self.debug_console {
            bail!("console_run needs BootSpec.debug_console = true");
        }
        if command.trim().is_empty() {
            bail!("console_run: empty command");
        }
        let deadline = Instant::now() + timeout;
        if self.console.is_none() {
            let s = self.connect(CONSOLE_SOCK, deadline)?;
            s.set_read_timeout(Some(POLL))
                .context("setting a console read timeout")?;
            self.console = Some(s);
        }

        // 1. sync
        let n = nonce();
        let want = format!("__CAIRN_SYNC_{n}");
        let sync = format!("\x15echo __CAIRN_SY''NC_{n}\n");
        'sync: loop {
            self.console_write(&sync)?;
            let resend = Instant::now() + Duration::from_secs(2);
            loop {
                self.console_pump()?;
                let text = String::from_utf8_lossy(&self.console_buf);
                if let Some(p) = text.find(&want) {
                    if text[p + want.len()..].contains(['\r', '\n']) {
                        self.console_buf.clear();
                        break 'sync;
                    }
                }
                if let Some(err) = self.exited_error("waiting for the debug console shell") {
                    return Err(err);
                }
                if Instant::now() >= deadline {
                    bail!(
                        "no shell answered on the debug console (ttyS1) within {:.1} s; \
                         console output:\n    {}",
                        timeout.as_secs_f64(),
                        self.console_tail()
                    );
                }
                if Instant::now() >= resend {
                    continue 'sync;
                }
            }
        }

        // 2. the command, once
        let n = nonce();
        self.console_write(&console_input(command, &n))?;
        loop {
            self.console_pump()?;
            if let Some(res) = parse_console_output(&String::from_utf8_lossy(&self.console_buf), &n)
            {
                self.console_buf.clear();
                return Ok(res);
            }
            if let Some(err) = self.exited_error(&format!("running {command:?} on the console")) {
                return Err(err);
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {:.1} s running {command:?} on the debug console; \
                     console output:\n    {}",
                    timeout.as_secs_f64(),
                    self.console_tail()
                );
            }
        }
    }

    /// One QMP command on a fresh connection: greeting, `qmp_capabilities`,
    /// then `command`; returns its `return` value.
    fn qmp_execute(&mut self, command: &str, deadline: Instant) -> Result<serde_json::Value> {
        let stream = self.connect(QMP_SOCK, deadline)?;
        let mut writer = stream.try_clone().context("cloning the QMP socket")?;
        let mut reader = BufReader::new(stream);
        let read_msg = |reader: &mut BufReader<UnixStream>| -> Result<serde_json::Value> {
            let left = deadline.saturating_duration_since(Instant::now());
            reader
                .get_ref()
                .set_read_timeout(Some(left.max(Duration::from_millis(10))))
                .context("setting a QMP read timeout")?;
            let mut line = String::new();
            let n = reader.read_line(&mut line).context("reading from QMP")?;
            if n == 0 {
                bail!("QMP connection closed");
            }
            serde_json::from_str(&line).with_context(|| format!("bad QMP message {line:?}"))
        };
        let greeting = read_msg(&mut reader)?;
        if greeting.get("QMP").is_none() {
            bail!("unexpected QMP greeting {greeting}");
        }
        let mut result = serde_json::Value::Null;
        for cmd in ["qmp_capabilities", command] {
            writeln!(writer, "{}", serde_json::json!({ "execute": cmd }))
                .with_context(|| format!("sending QMP {cmd}"))?;
            loop {
                let msg = read_msg(&mut reader)?;
                if let Some(r) = msg.get("return") {
                    result = r.clone();
                    break;
                }
                if let Some(e) = msg.get("error") {
                    bail!("QMP {cmd} failed: {e}");
                }
                // anything else is an asynchronous event; skip it
            }
        }
        Ok(result)
    }

    /// ACPI power button via QMP, then waits for QEMU to exit. On timeout
    /// the VM keeps running (drop or [`Vm::kill`] ends it).
    pub fn powerdown(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait().context("checking on QEMU")? {
            return Ok(status);
        }
        let deadline = Instant::now() + timeout;
        if let Err(e) = self.qmp_execute("system_powerdown", deadline) {
            // QEMU may have exited between the check and the command.
            if let Some(status) = self.child.try_wait().context("checking on QEMU")? {
                return Ok(status);
            }
            return Err(e.context("sending system_powerdown over QMP"));
        }
        match self.wait_exit(deadline.saturating_duration_since(Instant::now()))? {
            Some(status) => Ok(status),
            None => bail!(
                "guest did not power off within {:.1} s of the ACPI power button; \
                 last {TAIL_LINES} lines of serial log:\n    {}",
                timeout.as_secs_f64(),
                tail_lines(&self.serial_text(), TAIL_LINES)
            ),
        }
    }

    /// SIGKILL, like pulling the power cord; waits for the process to go.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for QEMU to exit; `Ok(None)` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for QEMU")? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BootSpec {
        BootSpec::new(
            "/img/disk.raw",
            ImageFormat::Raw,
            Firmware::Uefi,
            "/logs/serial.log",
        )
    }

    fn cl(spec: &BootSpec) -> Vec<String> {
        match command_line(spec, Accel::Tcg, Path::new("/wd")) {
            Ok(v) => v,
            Err(e) => panic!("command_line failed: {e:#}"),
        }
    }

    fn has_pair(args: &[String], flag: &str, value: &str) -> bool {
        args.windows(2).any(|w| w[0] == flag && w[1] == value)
    }

    #[test]
    fn qemu_command_line_basics() {
        let a = cl(&spec());
        for f in ["-nodefaults", "-no-user-config", "-no-reboot"] {
            assert!(a.iter().any(|x| x == f), "{f} missing: {a:?}");
        }
        assert!(has_pair(&a, "-machine", "q35"));
        assert!(has_pair(&a, "-m", "2048"));
        assert!(has_pair(&a, "-smp", "1"));
        assert!(has_pair(&a, "-display", "none"));
        assert!(has_pair(&a, "-accel", "tcg"));
        assert!(has_pair(&a, "-cpu", "max"));
        assert!(has_pair(&a, "-nic", "none"));
        assert!(
            has_pair(&a, "-serial", "null"),
            "no debug console -> ttyS1 null"
        );
        assert!(has_pair(
            &a,
            "-chardev",
            "file,id=serial0,path=/logs/serial.log"
        ));
        assert!(has_pair(
            &a,
            "-chardev",
            "socket,id=qmp,path=/wd/qmp.sock,server=on,wait=off"
        ));
        assert!(!a.iter().any(|x| x.contains("netdev")));

        let k = command_line(&spec(), Accel::Kvm, Path::new("/wd")).unwrap();
        assert!(has_pair(&k, "-accel", "kvm"));
        assert!(has_pair(&k, "-cpu", "host"));
        let no_max = build_command_line(&spec(), Accel::Tcg, false, Path::new("/wd")).unwrap();
        assert!(!no_max.iter().any(|x| x == "-cpu"));
    }

    #[test]
    fn qemu_ovmf_vars_are_copied_not_shared() {
        let a = cl(&spec());
        assert!(has_pair(
            &a,
            "-drive",
            &format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}")
        ));
        assert!(has_pair(
            &a,
            "-drive",
            "if=pflash,format=raw,unit=1,file=/wd/OVMF_VARS.fd"
        ));
        assert!(
            !a.iter().any(|x| x.contains(OVMF_VARS)),
            "vars template referenced in place"
        );

        let mut s = spec();
        s.firmware = Firmware::Bios;
        let a = cl(&s);
        assert!(!a.iter().any(|x| x.contains("pflash") || x.contains("OVMF")));
    }

    #[test]
    fn qemu_snapshot_flag() {
        let a = cl(&spec());
        assert!(has_pair(
            &a,
            "-drive",
            "if=none,id=disk0,format=raw,file=/img/disk.raw,snapshot=on"
        ));
        let mut s = spec();
        s.snapshot = false;
        s.format = ImageFormat::Qcow2;
        let a = cl(&s);
        assert!(has_pair(
            &a,
            "-drive",
            "if=none,id=disk0,format=qcow2,file=/img/disk.raw"
        ));
    }

    #[test]
    fn qemu_bus_variants() {
        let mut s = spec();
        assert!(has_pair(
            &cl(&s),
            "-device",
            "virtio-blk-pci,drive=disk0,bootindex=1"
        ));

        s.bus = DiskBus::UsbStorage;
        let a = cl(&s);
        assert!(has_pair(&a, "-device", "qemu-xhci,id=xhci"));
        assert!(has_pair(
            &a,
            "-device",
            "usb-storage,bus=xhci.0,drive=disk0,bootindex=1"
        ));

        s.bus = DiskBus::Cdrom;
        s.format = ImageFormat::Iso;
        s.image = PathBuf::from("/img/live.iso");
        let a = cl(&s);
        assert!(has_pair(
            &a,
            "-device",
            "ide-cd,bus=ide.0,drive=disk0,bootindex=1"
        ));
        assert!(has_pair(
            &a,
            "-drive",
            "if=none,id=disk0,format=raw,file=/img/live.iso,media=cdrom,readonly=on"
        ));
    }

    #[test]
    fn qemu_paths_are_escaped() {
        let mut s = spec();
        s.image = PathBuf::from("/img/a,b.raw");
        s.serial_log = PathBuf::from("rel:log");
        let a = cl(&s);
        assert!(a.iter().any(|x| x.contains("file=/img/a,,b.raw,")), "{a:?}");
        assert!(has_pair(&a, "-chardev", "file,id=serial0,path=./rel:log"));
    }

    #[test]
    fn qemu_network_is_always_restricted() {
        let mut s = spec();
        s.network = true;
        s.forwards = vec![(2222, 22), (8080, 80)];
        s.guestfwds = vec![(
            Ipv4Addr::new(10, 0, 2, 100),
            80,
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, 40000),
        )];
        let a = cl(&s);
        assert!(has_pair(
            &a,
            "-netdev",
            "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8080-:80,\
             guestfwd=tcp:10.0.2.100:80-tcp:127.0.0.1:40000"
        ));
        assert!(has_pair(&a, "-device", "virtio-net-pci,netdev=n0"));
        assert!(!a.iter().any(|x| x == "-nic"));
        // Every netdev ever emitted is restricted.
        for w in a.windows(2).filter(|w| w[0] == "-netdev") {
            assert!(w[1].contains("restrict=on"));
        }

        s.forwards.clear();
        s.guestfwds.clear();
        let a = cl(&s);
        assert!(has_pair(&a, "-netdev", "user,id=n0,restrict=on"));
    }

    #[test]
    fn qemu_refuses_non_loopback_guestfwd() {
        let mut s = spec();
        s.network = true;
        s.guestfwds = vec![(
            Ipv4Addr::new(10, 0, 2, 100),
            80,
            SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 1), 80),
        )];
        let e = command_line(&s, Accel::Tcg, Path::new("/wd")).unwrap_err();
        assert!(format!("{e:#}").contains("127.0.0.1"), "{e:#}");

        s.guestfwds = vec![(
            Ipv4Addr::new(10, 0, 2, 100),
            80,
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80),
        )];
        assert!(command_line(&s, Accel::Tcg, Path::new("/wd")).is_err());

        // guest side outside the slirp net
        s.guestfwds = vec![(
            Ipv4Addr::new(192, 168, 0, 1),
            80,
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, 80),
        )];
        assert!(command_line(&s, Accel::Tcg, Path::new("/wd")).is_err());

        // forwards without network
        let mut s = spec();
        s.forwards = vec![(2222, 22)];
        assert!(command_line(&s, Accel::Tcg, Path::new("/wd")).is_err());

        // no smuggling a network in through extra_args
        for bad in ["-netdev", "-nic", "--net", "-netdev=user"] {
            let mut s = spec();
            s.extra_args = vec![bad.to_string(), "user,id=x".to_string()];
            assert!(
                command_line(&s, Accel::Tcg, Path::new("/wd")).is_err(),
                "{bad}"
            );
        }
        let mut s = spec();
        s.extra_args = vec!["-rtc".into(), "base=utc".into()];
        let a = cl(&s);
        assert_eq!(
            &a[a.len() - 2..],
            &["-rtc".to_string(), "base=utc".to_string()]
        );
    }

    #[test]
    fn qemu_debug_console_socket() {
        let mut s = spec();
        s.debug_console = true;
        let a = cl(&s);
        assert!(has_pair(
            &a,
            "-chardev",
            "socket,id=serial1,path=/wd/console.sock,server=on,wait=off"
        ));
        assert!(has_pair(&a, "-serial", "chardev:serial1"));
        assert!(!has_pair(&a, "-serial", "null"));
        // ttyS0 is declared before ttyS1
        let s0 = a.iter().position(|x| x == "chardev:serial0").unwrap();
        let s1 = a.iter().position(|x| x == "chardev:serial1").unwrap();
        assert!(s0 < s1);
    }

    #[test]
    fn qemu_console_parse_echo_off() {
        let n = "abc123";
        let text = "junk from before\r\n__CAIRN_BEGIN_abc123\r\nhello\r\nworld\r\n__CAIRN_RC_abc123=0\r\n# ";
        assert_eq!(
            parse_console_output(text, n),
            Some((0, "hello\nworld".to_string()))
        );
        // no output, non-zero status
        let text = "__CAIRN_BEGIN_abc123\r\n__CAIRN_RC_abc123=127\r\n";
        assert_eq!(parse_console_output(text, n), Some((127, String::new())));
        // output without a trailing newline
        let text = "__CAIRN_BEGIN_abc123\r\nfoo__CAIRN_RC_abc123=3\r\n";
        assert_eq!(parse_console_output(text, n), Some((3, "foo".to_string())));
        // incomplete: RC line not finished yet (could be "12" of "127")
        assert_eq!(
            parse_console_output("__CAIRN_BEGIN_abc123\r\nx\r\n__CAIRN_RC_abc123=12", n),
            None
        );
        assert_eq!(parse_console_output("__CAIRN_BEGIN_abc123", n), None);
        // another exchange's markers are ignored
        let text = "__CAIRN_BEGIN_other\r\nx\r\n__CAIRN_RC_other=0\r\n";
        assert_eq!(parse_console_output(text, n), None);
    }

    #[test]
    fn qemu_console_parse_echo_on() {
        let n = "f00d";
        let input = console_input("ls /nonexistent; echo done", n);
        assert!(!input.contains("__CAIRN_BEGIN_f00d"));
        assert!(!input.contains("__CAIRN_RC_f00d="));
        // What a tty with echo on shows: the prompt, the input echoed
        // (\n -> \r\n), a PS2 prompt, then the output.
        let echoed = input.trim_start_matches('\x15').replace('\n', "\r\n> ");
        let text = format!(
            "# {echoed}__CAIRN_BEGIN_f00d\r\nls: /nonexistent: No such file or directory\r\n\
             done\r\n__CAIRN_RC_f00d=0\r\n# "
        );
        assert_eq!(
            parse_console_output(&text, n),
            Some((
                0,
                "ls: /nonexistent: No such file or directory\ndone".to_string()
            ))
        );
        // Only the echo has arrived so far: not done.
        assert_eq!(parse_console_output(&format!("# {echoed}"), n), None);
    }

    #[test]
    fn qemu_console_input_shape() {
        let s = console_input("uname -a # comment", "n1");
        assert_eq!(
            s,
            "\x15echo __CAIRN_BEG''IN_n1; { uname -a # comment\n}; echo \"__CAIRN_RC_\"\"n1=$?\"\n"
        );
    }

    #[test]
    fn qemu_find_line_and_tail() {
        let buf = b"one\r\ntwo\r\nlogin: ";
        let mut scanned = 0;
        assert_eq!(
            find_line(buf, &mut scanned, &["two"]),
            Some((0, "two".to_string(), 10))
        );
        let mut scanned = 10;
        assert_eq!(
            find_line(buf, &mut scanned, &["nope", "login:"]),
            Some((1, "login: ".to_string(), 17))
        );
        let mut scanned = 0;
        assert_eq!(find_line(buf, &mut scanned, &["absent"]), None);
        assert_eq!(scanned, 10, "complete lines are not rescanned");

        let t = tail_lines("\x1b[2J\x1b[01;01Ha\r\nb\n\nc\n", 2);
        assert_eq!(t, "b\n    c");
    }

    #[test]
    fn qemu_image_format_from_path() {
        assert_eq!(
            ImageFormat::from_path(Path::new("x.ISO")),
            Some(ImageFormat::Iso)
        );
        assert_eq!(
            ImageFormat::from_path(Path::new("x.qcow2")),
            Some(ImageFormat::Qcow2)
        );
        assert_eq!(
            ImageFormat::from_path(Path::new("x.img")),
            Some(ImageFormat::Raw)
        );
        assert_eq!(ImageFormat::from_path(Path::new("x")), None);
    }

    fn have_qemu() -> bool {
        Command::new(QEMU)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    #[test]
    fn qemu_kvm_probe_is_fast() {
        let t = Instant::now();
        let (accel, why) = probe_kvm(KVM_PROBE_TIMEOUT);
        let took = t.elapsed();
        println!("KVM probe: {accel} ({why}) in {} ms", took.as_millis());
        assert!(took < Duration::from_secs(6), "probe took {took:?}");
        println!("Vm::accel() = {} ({})", Vm::accel(), accel_detail());
        if have_qemu() {
            println!("tcg -cpu max usable: {}", tcg_cpu_max_ok());
        }
    }

    /// Boots OVMF with an empty disk under the detected accelerator and
    /// checks that serial capture, the log-tail error, QMP and kill work.
    #[test]
    fn qemu_boots_ovmf_without_a_disk() {
        if !have_qemu() || ovmf_paths().is_err() {
            eprintln!("skipping: qemu or OVMF not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("empty.raw");
        fs::write(&img, vec![0u8; 1 << 20]).unwrap();
        let mut s = BootSpec::new(
            &img,
            ImageFormat::Raw,
            Firmware::Uefi,
            dir.path().join("serial.log"),
        );
        s.memory_mib = 256;
        s.debug_console = true;
        s.network = true;
        s.forwards = vec![(free_port(), 22)];
        let mut vm = Vm::start(&s).unwrap_or_else(|e| panic!("{e:#}"));
        println!("args: {}", vm.args().join(" "));
        let scale = timeout_scale();
        let line = vm
            .wait_for_line("BdsDxe", Duration::from_secs(60) * scale)
            .unwrap_or_else(|e| panic!("{e:#}"));
        println!("firmware said: {line}");
        let err = vm
            .wait_for_line("no such line, ever", Duration::from_secs(1))
            .unwrap_err();
        let msg = format!("{err:#}");
        println!("{msg}");
        assert!(
            msg.contains("timed out") && msg.contains("last 30 lines") && msg.contains("BdsDxe")
        );
        assert!(vm.serial_text().contains("BdsDxe"));
        // The image is untouched and the vars template was not used in place.
        assert!(vm.workdir().join(VARS_FILE).is_file());
        vm.kill();
        let st = vm.wait_exit(Duration::from_secs(5)).unwrap();
        assert!(st.is_some());
        let err = vm
            .wait_for_line("anything", Duration::from_secs(5))
            .unwrap_err();
        assert!(format!("{err:#}").contains("QEMU exited"), "{err:#}");
        assert_eq!(fs::read(&img).unwrap(), vec![0u8; 1 << 20]);
    }

    #[test]
    fn qemu_start_reports_bad_arguments() {
        if !have_qemu() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("empty.raw");
        fs::write(&img, vec![0u8; 1 << 20]).unwrap();
        let mut s = BootSpec::new(
            &img,
            ImageFormat::Raw,
            Firmware::Bios,
            dir.path().join("serial.log"),
        );
        s.memory_mib = 128;
        s.extra_args = vec!["-device".into(), "no-such-device".into()];
        let msg = match Vm::start(&s) {
            Ok(_) => panic!("bad device accepted"),
            Err(e) => format!("{e:#}"),
        };
        println!("{msg}");
        assert!(msg.contains("no-such-device"), "{msg}");
        let missing = BootSpec::new(
            dir.path().join("missing.raw"),
            ImageFormat::Raw,
            Firmware::Bios,
            "x.log",
        );
        assert!(Vm::start(&missing).is_err());
    }

    /// QEMU accepts the device wiring of every bus (start() waits for QMP,
    /// i.e. for device creation to succeed).
    #[test]
    fn qemu_every_bus_starts() {
        if !have_qemu() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for (bus, format, name) in [
            (DiskBus::Virtio, ImageFormat::Raw, "d.raw"),
            (DiskBus::UsbStorage, ImageFormat::Raw, "d.raw"),
            (DiskBus::Cdrom, ImageFormat::Iso, "d.iso"),
        ] {
            let img = dir.path().join(name);
            fs::write(&img, vec![0u8; 1 << 20]).unwrap();
            let mut s = BootSpec::new(&img, format, Firmware::Bios, dir.path().join("serial.log"));
            s.bus = bus;
            s.memory_mib = 128;
            let mut vm = Vm::start(&s).unwrap_or_else(|e| panic!("{bus:?}: {e:#}"));
            assert_eq!(vm.wait_exit(Duration::from_millis(200)).unwrap(), None);
            vm.kill();
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(0)
    }

    /// End-to-end console/powerdown check against a real Linux guest, run
    /// with `--ignored` and `CAIRN_TEST_KERNEL=/path/vmlinuz
    /// CAIRN_TEST_INITRD=/path/initrd`: a busybox initrd whose /init mounts
    /// devtmpfs and proc, insmods evdev.ko and button.ko, prints
    /// "cairn test init up" and runs `setsid sh -c 'exec sh -i <>/dev/ttyS1 >&0 2>&1'`.
    #[test]
    #[ignore]
    fn qemu_console_run_against_a_kernel() {
        let (Ok(kernel), Ok(initrd)) = (
            std::env::var("CAIRN_TEST_KERNEL"),
            std::env::var("CAIRN_TEST_INITRD"),
        ) else {
            eprintln!("skipping: set CAIRN_TEST_KERNEL and CAIRN_TEST_INITRD");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("empty.raw");
        fs::write(&img, vec![0u8; 1 << 20]).unwrap();
        let mut s = BootSpec::new(
            &img,
            ImageFormat::Raw,
            Firmware::Bios,
            dir.path().join("serial.log"),
        );
        s.memory_mib = 512;
        s.debug_console = true;
        s.extra_args = vec![
            "-kernel".into(),
            kernel,
            "-initrd".into(),
            initrd,
            "-append".into(),
            "console=ttyS0 panic=-1".into(),
        ];
        let mut vm = Vm::start(&s).unwrap_or_else(|e| panic!("{e:#}"));
        let t = Duration::from_secs(120) * timeout_scale();
        vm.wait_for_line("cairn test init up", t)
            .unwrap_or_else(|e| panic!("{e:#}"));
        let (rc, out) = vm
            .console_run("echo hello; echo there", t)
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!((rc, out.as_str()), (0, "hello\nthere"));
        let (rc, out) = vm
            .console_run("ls /nonexistent", t)
            .unwrap_or_else(|e| panic!("{e:#}"));
        println!("rc={rc} out={out:?}");
        assert_ne!(rc, 0);
        assert!(out.contains("nonexistent"));
        let (rc, _) = vm
            .console_run("stty echo; false # comment", t)
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(rc, 1);
        let (rc, out) = vm
            .console_run("printf 'no newline'", t)
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!((rc, out.as_str()), (0, "no newline"));
        let (_, out) = vm
            .console_run(
                "for e in /dev/input/event*; do (busybox dd if=$e of=/dev/null bs=24 count=1 \
                 && poweroff -f) & done; sleep 1; ps | grep -c 'dd if'",
                t,
            )
            .unwrap_or_else(|e| panic!("{e:#}"));
        println!("power-button watchers: {out}");
        let st = vm.powerdown(t).unwrap_or_else(|e| panic!("{e:#}"));
        println!("powerdown exit: {st}");
    }
}
