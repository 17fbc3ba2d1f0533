//! `boot-phases IMAGE.raw [--logs DIR]`: boots a cairn raw image once under
//! QEMU and prints where the boot's time goes (`cairn::vm::phases`, from
//! the host's time of each console line and the guest's uptime on it),
//! then boots the image's own kernel with a tiny busybox initramfs (print
//! one line, power off) under the same QEMU, for the total to compare
//! with. Run by `make bench` (qemu-tests/bench.sh); it prints figures and
//! asserts nothing about them. Exit 2 on bad arguments, 1 when a boot fails.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cairn::host::cpio::{Archive, Entry};
use cairn::host::runner;
use cairn::vm::phases;
use cairn::vm::qemu::{BootSpec, Firmware, Vm};

/// The line the bare init prints; the bare boot's total ends there.
const BARE_LINE: &str = "cairn-bare: init up";
/// Host busybox (Debian package busybox-static): one static binary.
const BUSYBOX: &str = "/usr/bin/busybox";

const USAGE: &str = "usage: boot-phases IMAGE.raw [--logs DIR] [--memory MIB] [--cpus N] [--timeout SECONDS]\n  (a cluster image: --memory 3072 --cpus 2 --timeout 1800)";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut image = None;
    let mut logs = PathBuf::from("target/bench-out");
    let mut opts = Opts::default();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--logs" => match args.next() {
                Some(d) => logs = PathBuf::from(d),
                None => return usage("--logs needs a folder"),
            },
            "--memory" | "--cpus" | "--timeout" => {
                let Some(n) = args
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .filter(|n| *n > 0)
                else {
                    return usage(&format!("{a} needs a positive number"));
                };
                match a.as_str() {
                    "--memory" => opts.memory_mib = Some(n),
                    "--cpus" => opts.cpus = Some(n),
                    _ => opts.timeout = Some(Duration::from_secs(n)),
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ if image.is_none() && !a.starts_with('-') => image = Some(PathBuf::from(a)),
            _ => return usage(&format!("unexpected argument {a:?}")),
        }
    }
    let Some(image) = image else {
        return usage("no image given");
    };
    if cairn::media::Format::of_path(&image) != Some(&cairn::media::RAW) || !image.is_file() {
        return usage(&format!(
            "{}: not a raw image file (build one with `make image`)",
            image.display()
        ));
    }
    match run(&image, &logs, &opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("boot-phases: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!("boot-phases: {why}\n{USAGE}");
    ExitCode::from(2)
}

/// QEMU settings other than the defaults (a cluster image needs more).
#[derive(Default)]
struct Opts {
    memory_mib: Option<u64>,
    cpus: Option<u64>,
    timeout: Option<Duration>,
}

fn run(image: &Path, logs: &Path, opts: &Opts) -> Result<()> {
    qemu_tests::configure_qemu();
    std::fs::create_dir_all(logs).with_context(|| format!("creating {}", logs.display()))?;
    // QEMU runs in its own workdir: paths it opens must be absolute.
    let logs = &std::fs::canonicalize(logs).with_context(|| format!("{}", logs.display()))?;
    let timeout = opts.timeout.unwrap_or_else(qemu_tests::boot_timeout);
    let accel = Vm::accel();

    // 1. The image, to cairn: ready.
    let log = logs.join("boot-phases.serial.log");
    let mut spec = BootSpec::new(image, cairn::media::RAW.qemu, Firmware::Uefi, &log);
    spec.network = true;
    if let Some(m) = opts.memory_mib {
        spec.memory_mib = m as _;
    }
    if let Some(c) = opts.cpus {
        spec.cpus = c as _;
    }
    println!(
        "bench: booting {} once ({accel} accel, {} MiB, {} vCPU; serial log {})",
        image.display(),
        spec.memory_mib,
        spec.cpus,
        log.display()
    );
    let mut vm = Vm::start(&spec)?;
    vm.wait_for_any(&["cairn: ready", "cairn: FATAL"], timeout)?;
    let lines = vm.timed_lines();
    vm.kill();
    let b = phases::boot_phases(&lines).with_context(|| format!("serial log {}", log.display()))?;

    // 2. The same kernel, a tiny init, the same QEMU settings.
    let work = tempfile::Builder::new()
        .prefix("cairn-bare-")
        .tempdir()
        .context("creating a scratch folder")?;
    let (kernel, console) = uki_kernel(image, work.path())?;
    let initrd = work.path().join("bare.cpio");
    bare_initramfs(&initrd)?;
    let disk = work.path().join("empty.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).context("writing an empty disk")?;
    let bare_log = logs.join("boot-phases-bare.serial.log");
    let mut bare = BootSpec::new(&disk, cairn::media::RAW.qemu, Firmware::Uefi, &bare_log);
    bare.memory_mib = spec.memory_mib;
    bare.cpus = spec.cpus;
    bare.network = spec.network;
    bare.extra_args = vec![
        "-kernel".into(),
        kernel.display().to_string(),
        "-initrd".into(),
        initrd.display().to_string(),
        "-append".into(),
        console,
    ];
    println!(
        "bench: booting its kernel with a busybox init that prints one line (serial log {})",
        bare_log.display()
    );
    let t0 = Instant::now();
    let mut vm = Vm::start(&bare)?;
    vm.wait_for_line(BARE_LINE, timeout)?;
    let bare_lines = vm.timed_lines();
    let _ = vm.wait_exit(Duration::from_secs(30));
    vm.kill();
    let bare_total = bare_lines
        .iter()
        .find(|l| l.text.contains(BARE_LINE))
        .map(|l| l.at)
        .unwrap_or_else(|| t0.elapsed());
    let bare_fw = phases::kernel_start(&bare_lines).unwrap_or_default();

    println!(
        "bench: boot phases of {} (host time from QEMU's start; uptime: the guest's clock)",
        image.display()
    );
    print!("{}", phases::render(&b, Some((bare_total, bare_fw))));
    Ok(())
}

/// The kernel out of the image's UKI (`EFI/BOOT/BOOTX64.EFI` on its ESP)
/// and the `console=` words of the UKI's command line.
fn uki_kernel(image: &Path, dir: &Path) -> Result<(PathBuf, String)> {
    let offset = cairn::release::site::esp_offset(image)?;
    let uki = dir.join("uki.efi");
    let mut mcopy = runner::command("mcopy");
    mcopy
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-n")
        .arg("-i")
        .arg(format!("{}@@{offset}", image.display()))
        .arg("::/EFI/BOOT/BOOTX64.EFI")
        .arg(&uki);
    runner::output("bench: UKI", mcopy)?;
    let kernel = dir.join("vmlinuz");
    let cmdline = dir.join("cmdline");
    let mut objcopy = runner::command("objcopy");
    objcopy
        .arg(format!("--dump-section=.linux={}", kernel.display()))
        .arg(format!("--dump-section=.cmdline={}", cmdline.display()))
        .arg(&uki)
        .arg(dir.join("uki.copy"));
    runner::output("bench: UKI sections", objcopy)?;
    let words = std::fs::read_to_string(&cmdline).context("reading the UKI's .cmdline")?;
    let console: Vec<&str> = words
        .trim_end_matches('\0')
        .split_whitespace()
        .filter(|w| w.starts_with("console="))
        .collect();
    if console.is_empty() {
        bail!("the UKI's command line has no console= word: {words:?}");
    }
    Ok((kernel, console.join(" ")))
}

/// /init (busybox sh: print the uptime line, power off), busybox and
/// /dev/console, as a newc cpio.
fn bare_initramfs(out: &Path) -> Result<()> {
    let busybox = std::fs::read(BUSYBOX)
        .with_context(|| format!("reading {BUSYBOX}: install the Debian package busybox-static"))?;
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t proc proc /proc\n\
         read -r up _ </proc/uptime\n\
         /bin/busybox printf '[%8s] {BARE_LINE}\\n' \"$up\" > /dev/console\n\
         /bin/busybox poweroff -f\n"
    );
    let mut a = Archive::new();
    a.add(
        "init",
        Entry::File {
            mode: 0o755,
            data: init.into_bytes(),
        },
    )?;
    a.add(
        "bin/busybox",
        Entry::File {
            mode: 0o755,
            data: busybox,
        },
    )?;
    a.add("proc", Entry::Dir { mode: 0o755 })?;
    a.add(
        "dev/console",
        Entry::CharDev {
            mode: 0o600,
            major: 5,
            minor: 1,
        },
    )?;
    let mut f =
        std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    a.write(&mut f, 0)?;
    Ok(())
}
