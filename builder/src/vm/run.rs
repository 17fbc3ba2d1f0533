//! `cairn run IMAGE`: boots an image in QEMU with its serial console on this
//! terminal.
//!
//! The command line comes from [`crate::vm::qemu::command_line`] (the one place
//! that wires firmware, disks and the `restrict=on` network), and only the
//! ttyS0 chardev is swapped: `file,id=serial0,...` becomes
//! `stdio,id=serial0,mux=on,signal=off` with a readline monitor on the same
//! mux. That is more robust than tailing the log file: keyboard input reaches
//! the guest, nothing is lost or delayed, and Ctrl-C goes to the guest
//! instead of killing QEMU. `Ctrl-A x` quits, `Ctrl-A c` toggles the monitor.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context, Result};

use crate::host::runner;
use crate::vm::qemu::{self, BootSpec, DiskBus, Firmware, ImageFormat, Vm};

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// `Firmware::Bios` for `--bios` (SeaBIOS), else OVMF.
    pub firmware: Firmware,
    /// `--forward HOST:GUEST`: tcp 127.0.0.1:HOST -> guest GUEST.
    pub forwards: Vec<(u16, u16)>,
    /// `--scratch`: writes go to a throw-away overlay (`snapshot=on`).
    pub scratch: bool,
    /// Default: CD-ROM for `.iso`, virtio otherwise.
    pub bus: Option<DiskBus>,
    pub memory_mib: u32,
    pub cpus: u32,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            firmware: Firmware::Uefi,
            forwards: Vec::new(),
            scratch: false,
            bus: None,
            memory_mib: 2048,
            cpus: 2,
        }
    }
}

/// Parses `--forward H:G` (`8080:80`).
pub fn parse_forward(s: &str) -> Result<(u16, u16)> {
    let (h, g) = s
        .split_once(':')
        .with_context(|| format!("--forward {s:?}: expected HOST:GUEST, e.g. 8080:80"))?;
    let port = |p: &str| -> Result<u16> {
        match p.trim().parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("--forward {s:?}: {p:?} is not a port number 1-65535"),
        }
    };
    Ok((port(h)?, port(g)?))
}

/// The BootSpec for `image`, opened as `format` says (its row in
/// `media::FORMATS`, which the caller looks up).
pub fn boot_spec(
    image: &Path,
    format: ImageFormat,
    opts: &RunOptions,
    serial_log: &Path,
) -> Result<BootSpec> {
    let mut spec = BootSpec::new(image, format, opts.firmware, serial_log);
    spec.bus = opts.bus.unwrap_or(if format.cdrom {
        DiskBus::Cdrom
    } else {
        DiskBus::Virtio
    });
    spec.snapshot = opts.scratch;
    spec.memory_mib = opts.memory_mib;
    spec.cpus = opts.cpus;
    spec.forwards = opts.forwards.clone();
    // restrict=on is enforced by qemu::command_line for every netdev.
    spec.network = !opts.forwards.is_empty();
    Ok(spec)
}

/// Replaces the ttyS0 file chardev by a multiplexed stdio one plus a
/// readline monitor. Fails if the expected chardev is not there (so a
/// change in qemu.rs cannot silently leave the console in a file).
pub fn serial_to_stdio(args: &mut Vec<String>) -> Result<()> {
    let i = args
        .windows(2)
        .position(|w| w[0] == "-chardev" && w[1].starts_with("file,id=serial0,"))
        .context("qemu command line has no file,id=serial0 chardev to redirect")?;
    args[i + 1] = "stdio,id=serial0,mux=on,signal=off".to_string();
    args.splice(
        i + 2..i + 2,
        [
            "-mon".to_string(),
            "chardev=serial0,mode=readline".to_string(),
        ],
    );
    Ok(())
}

/// Boots `image` with the console on this terminal; returns QEMU's exit code.
pub fn run_image(image: &Path, format: ImageFormat, opts: RunOptions) -> Result<i32> {
    let image =
        std::fs::canonicalize(image).with_context(|| format!("run: image {}", image.display()))?;
    let workdir = tempfile::Builder::new()
        .prefix("cairn-run-")
        .tempdir_in("/tmp")
        .context("creating the VM workdir")?;
    let wd: PathBuf = workdir.path().to_path_buf();
    let spec = boot_spec(&image, format, &opts, &wd.join("serial.log"))?;
    qemu::refuse_linked_qcow2(&spec)?;
    let mut args = qemu::command_line(&spec, Vm::accel(), &wd)?;
    serial_to_stdio(&mut args)?;
    if spec.firmware == Firmware::Uefi {
        let (_code, vars) = qemu::ovmf_paths()?;
        qemu::copy_vars(&vars, &wd)?;
    }
    eprintln!(
        "cairn run: {} ({:?}, {:?}, {} accel{}{}); Ctrl-A x quits",
        crate::host::shown::path(&image),
        spec.firmware,
        spec.bus,
        Vm::accel(),
        if opts.scratch {
            ", scratch: changes are discarded"
        } else {
            ""
        },
        if opts.forwards.is_empty() {
            ", no network".to_string()
        } else {
            format!(
                ", forwards {}",
                opts.forwards
                    .iter()
                    .map(|(h, g)| format!("127.0.0.1:{h}->{g}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        }
    );
    let mut cmd = runner::command(qemu::QEMU);
    cmd.args(&args)
        .current_dir(&wd)
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    let status = runner::status("run: qemu", cmd)?;
    Ok(status.code().unwrap_or(128 + 9))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_forward_parsing() {
        assert_eq!(parse_forward("8080:80").unwrap(), (8080, 80));
        assert!(parse_forward("8080").is_err());
        assert!(parse_forward("0:80").is_err());
        assert!(parse_forward("a:80").is_err());
    }

    #[test]
    fn run_command_line_has_console_on_stdio_and_restricted_net() {
        let opts = RunOptions {
            forwards: vec![(2222, 22)],
            scratch: true,
            ..RunOptions::default()
        };
        let spec = boot_spec(
            Path::new("/img/x.qcow2"),
            crate::vm::qemu::cmdline::test_formats::QCOW2,
            &opts,
            Path::new("/wd/s.log"),
        )
        .unwrap();
        assert_eq!(spec.format, crate::vm::qemu::cmdline::test_formats::QCOW2);
        assert_eq!(spec.bus, DiskBus::Virtio);
        let mut a = qemu::command_line(&spec, qemu::Accel::Tcg, Path::new("/wd")).unwrap();
        serial_to_stdio(&mut a).unwrap();
        let j = a.join(" ");
        assert!(
            j.contains(
                "-chardev stdio,id=serial0,mux=on,signal=off -mon chardev=serial0,mode=readline"
            ),
            "{j}"
        );
        assert!(!j.contains("file,id=serial0"));
        assert!(
            j.contains("restrict=on,hostfwd=tcp:127.0.0.1:2222-:22"),
            "{j}"
        );
        assert!(j.contains("snapshot=on"));

        let iso = boot_spec(
            Path::new("/img/x.iso"),
            crate::vm::qemu::cmdline::test_formats::ISO,
            &RunOptions::default(),
            Path::new("s"),
        )
        .unwrap();
        assert_eq!(iso.bus, DiskBus::Cdrom);
        assert!(!iso.network);
        let bios = RunOptions {
            firmware: Firmware::Bios,
            ..RunOptions::default()
        };
        let raw = boot_spec(
            Path::new("/img/x.raw"),
            crate::vm::qemu::cmdline::test_formats::RAW,
            &bios,
            Path::new("s"),
        )
        .unwrap();
        assert!(!raw.snapshot);
        let a = qemu::command_line(&raw, qemu::Accel::Tcg, Path::new("/wd")).unwrap();
        assert!(!a.join(" ").contains("OVMF"));
    }
}
