//! What to boot ([`BootSpec`]) and the QEMU command line for it: machine,
//! accelerator, firmware, drives, NIC and serial ports. Pure (no file is
//! touched), and the one place that refuses a network that is not
//! `restrict=on` with 127.0.0.1 endpoints.

use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::{Accel, CONSOLE_SOCK, OVMF_CODE, OVMF_VARS, QMP_SOCK, VARS_FILE};

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

/// How QEMU opens the image: a row's `qemu` in `media::FORMATS` (vm reads
/// only host/, so its caller passes it).
pub use crate::host::drive::Drive as ImageFormat;

/// The table's rows as vm's tests need them (they may not read media/:
/// `media::tests` checks these equal the table's).
#[cfg(test)]
pub mod test_formats {
    use super::ImageFormat;
    pub const RAW: ImageFormat = ImageFormat {
        driver: "raw",
        cdrom: false,
        standalone_check: false,
    };
    pub const ISO: ImageFormat = ImageFormat {
        driver: "raw",
        cdrom: true,
        standalone_check: false,
    };
    pub const QCOW2: ImageFormat = ImageFormat {
        driver: "qcow2",
        cdrom: false,
        standalone_check: true,
    };
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
    /// The second serial port (ttyS1) becomes a unix socket for [`super::Vm::console_run`].
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
    /// A private link to other guests of the same test: a datagram
    /// socket between two unix socket files (no address on any host
    /// network). With `network`, the NIC, the slirp and the link share one
    /// segment (a QEMU hub), so this guest is reachable from the host's
    /// forwards and its peers; without, the NIC is on the link only.
    pub peer_link: Option<PeerLink>,
}

/// One end of a datagram link between two guests: this guest's socket
/// file, the peer's, and this guest's MAC address (each guest on one
/// segment needs its own).
#[derive(Debug, Clone)]
pub struct PeerLink {
    pub local: PathBuf,
    pub remote: PathBuf,
    pub mac: [u8; 6],
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
            peer_link: None,
        }
    }
}

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

/// A path as a QEMU option value: absolute or `./`-prefixed (so `foo:bar` is
/// never read as a protocol prefix) and with `,` doubled (QEMU's escape).
pub(super) fn qemu_path(p: &Path) -> Result<String> {
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

pub(super) fn build_command_line(
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
        spec.format.driver
    );
    if spec.bus == DiskBus::Cdrom {
        drive.push_str(",media=cdrom");
    }
    if spec.bus == DiskBus::Cdrom || spec.format.cdrom {
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

    // The guest's random pool is ready at once (the init waits for it
    // before making the state's key), from the host's getrandom.
    push(&["-device", "virtio-rng-pci"]);

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
        match &spec.peer_link {
            None => push(&["-netdev", &nd, "-device", "virtio-net-pci,netdev=n0"]),
            Some(l) => {
                push(&["-netdev", &nd, "-netdev", &dgram(l)?]);
                push(&["-netdev", "hubport,id=h0,hubid=0,netdev=n0"]);
                push(&["-netdev", "hubport,id=h1,hubid=0,netdev=p0"]);
                push(&["-netdev", "hubport,id=h2,hubid=0"]);
                push(&[
                    "-device",
                    &format!("virtio-net-pci,netdev=h2,mac={}", mac(l)),
                ]);
            }
        }
    } else if let Some(l) = &spec.peer_link {
        if !spec.forwards.is_empty() || !spec.guestfwds.is_empty() {
            bail!("port forwards are set but network = false; set network = true");
        }
        push(&["-netdev", &dgram(l)?]);
        push(&[
            "-device",
            &format!("virtio-net-pci,netdev=p0,mac={}", mac(l)),
        ]);
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

/// The peer link's netdev: unix datagram sockets only (a path with a comma
/// would split QEMU's option string, so it is refused).
fn dgram(l: &PeerLink) -> Result<String> {
    let (local, remote) = (
        l.local.display().to_string(),
        l.remote.display().to_string(),
    );
    if local.contains(',') || remote.contains(',') {
        bail!("peer link socket paths must not contain a comma: {local}, {remote}");
    }
    // QEMU binds the local path and fails if it exists (a guest restarted
    // on the same link).
    let _ = std::fs::remove_file(&l.local);
    Ok(format!(
        "dgram,id=p0,local.type=unix,local.path={local},remote.type=unix,remote.path={remote}"
    ))
}

fn mac(l: &PeerLink) -> String {
    l.mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Copies the OVMF vars `template` into `workdir` as the private, writable
/// variable store the command line names; returns its path.
pub fn copy_vars(template: &Path, workdir: &Path) -> Result<PathBuf> {
    let dest = workdir.join(VARS_FILE);
    fs::copy(template, &dest)
        .with_context(|| format!("copying {} to {}", template.display(), dest.display()))?;
    // The template is often mode 0644 root-owned or 0444; QEMU opens it rw.
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} writable", dest.display()))?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BootSpec {
        BootSpec::new(
            "/img/disk.raw",
            crate::vm::qemu::cmdline::test_formats::RAW,
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
        s.format = crate::vm::qemu::cmdline::test_formats::QCOW2;
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
        s.format = crate::vm::qemu::cmdline::test_formats::ISO;
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
        // A hardware RNG, so the init's wait for the random pool is short.
        assert!(has_pair(&a, "-device", "virtio-rng-pci"));
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
}
