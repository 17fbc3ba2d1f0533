//! The running VM: QEMU started through the runner and watched from
//! outside (serial log, debug console on ttyS1, QMP). Invariant: QEMU dies
//! with its [`Vm`] (SIGKILL on drop) before the workdir is removed.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::accel::{detected_accel, tcg_cpu_max_ok};
use super::cmdline::{build_command_line, copy_vars, ovmf_paths};
use super::console::{
    console_input, find_line, nonce, parse_console_output, stamp_lines, tail_lines, timed_lines,
    TimedLine,
};
use super::{
    Accel, BootSpec, Firmware, CONSOLE_SOCK, POLL, QEMU, QMP_SOCK, STDERR_FILE, TAIL_LINES,
};
use crate::host::runner::{self, Process};

/// A running QEMU (SIGKILLed on drop) and its private workdir (OVMF vars
/// copy, console and QMP sockets, `qemu.stderr`), removed on drop.
pub struct Vm {
    /// First field: dropped (QEMU killed and reaped) before `workdir` goes.
    child: Process,
    workdir: tempfile::TempDir,
    args: Vec<String>,
    accel: Accel,
    serial_log: PathBuf,
    log_file: Option<File>,
    log_buf: Vec<u8>,
    /// When QEMU was started: the zero of every line's time.
    started: Instant,
    /// Offset of each `\n` in `log_buf` and when it was first read.
    line_ends: Vec<(usize, Duration)>,
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
            .with_context(|| format!("qemu: disk image {}", spec.image.display()))?;
        let mut spec = spec.clone();
        spec.image = image;
        super::refuse_linked_qcow2(&spec)?;

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
            copy_vars(&vars, &wd)?;
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
        let mut cmd = runner::command(QEMU);
        cmd.args(&args)
            .current_dir(&wd)
            .stdin(Stdio::null())
            .stdout(outf)
            .stderr(errf);
        let started = Instant::now();
        let child = runner::spawn("qemu", cmd)?;
        let mut vm = Vm {
            child,
            workdir,
            args,
            accel,
            serial_log: spec.serial_log.clone(),
            log_file: None,
            log_buf: Vec::new(),
            started,
            line_ends: Vec::new(),
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
            let old = self.log_buf.len();
            let _ = f.read_to_end(&mut self.log_buf);
            if self.log_buf.len() > old {
                let at = self.started.elapsed();
                stamp_lines(&self.log_buf[old..], old, at, &mut self.line_ends);
            }
        }
    }

    /// Every complete serial-log line so far with the time, from QEMU's
    /// start, at which the host first read it. The log is read while a
    /// `wait_for_*` call polls (every 50 ms) and here, so a line's time is
    /// accurate to the poll while a wait is running, and says "by now" for
    /// lines that arrived between waits.
    pub fn timed_lines(&mut self) -> Vec<TimedLine> {
        self.refresh_log();
        timed_lines(&self.log_buf, &self.line_ends)
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
            let exited = self.child.try_wait()?;
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
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let deadline = Instant::now() + timeout;
        if let Err(e) = self.qmp_execute("system_powerdown", deadline) {
            // QEMU may have exited between the check and the command.
            if let Some(status) = self.child.try_wait()? {
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
        self.child.kill();
    }

    /// Waits up to `timeout` for QEMU to exit; `Ok(None)` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        self.child.wait_timeout(timeout, Duration::from_millis(20))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::vm::qemu::{timeout_scale, DiskBus, QemuConfig, VARS_FILE};

    /// The test knobs of `make test` (the harness's job; the library reads
    /// no environment).
    pub(crate) fn configure_from_env() {
        let var = |k: &str| std::env::var(k).ok();
        crate::vm::qemu::configure(QemuConfig::from_env_values(
            var(QemuConfig::ACCEL_VAR).as_deref(),
            var(QemuConfig::TIMEOUT_SCALE_VAR).as_deref(),
        ))
        .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Without QEMU these tests fail, naming the package; they never skip.
    pub(crate) fn need_qemu() {
        testkit::tool(QEMU, "qemu-system-x86");
    }

    /// Boots OVMF with an empty disk under the detected accelerator and
    /// checks that serial capture, the log-tail error, QMP and kill work.
    #[test]
    fn qemu_boots_ovmf_without_a_disk() {
        configure_from_env();
        need_qemu();
        testkit::file(crate::vm::qemu::OVMF_CODE, "ovmf");
        testkit::file(crate::vm::qemu::OVMF_VARS, "ovmf");
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("empty.raw");
        fs::write(&img, vec![0u8; 1 << 20]).unwrap();
        let mut s = BootSpec::new(
            &img,
            crate::vm::qemu::cmdline::test_formats::RAW,
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
        configure_from_env();
        need_qemu();
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("empty.raw");
        fs::write(&img, vec![0u8; 1 << 20]).unwrap();
        let mut s = BootSpec::new(
            &img,
            crate::vm::qemu::cmdline::test_formats::RAW,
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
            crate::vm::qemu::cmdline::test_formats::RAW,
            Firmware::Bios,
            "x.log",
        );
        assert!(Vm::start(&missing).is_err());
    }

    /// QEMU accepts the device wiring of every bus (start() waits for QMP,
    /// i.e. for device creation to succeed).
    #[test]
    fn qemu_every_bus_starts() {
        configure_from_env();
        need_qemu();
        let dir = tempfile::tempdir().unwrap();
        for (bus, format, name) in [
            (
                DiskBus::Virtio,
                crate::vm::qemu::cmdline::test_formats::RAW,
                "d.raw",
            ),
            (
                DiskBus::UsbStorage,
                crate::vm::qemu::cmdline::test_formats::RAW,
                "d.raw",
            ),
            (
                DiskBus::Cdrom,
                crate::vm::qemu::cmdline::test_formats::ISO,
                "d.iso",
            ),
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
    #[ignore = "needs a kernel and a busybox initrd: CAIRN_TEST_KERNEL=... CAIRN_TEST_INITRD=... cargo test -p cairn --lib -- --ignored qemu_console_run_against_a_kernel"]
    fn qemu_console_run_against_a_kernel() {
        configure_from_env();
        let how = "set CAIRN_TEST_KERNEL and CAIRN_TEST_INITRD (see the test's comment)";
        let kernel = testkit::env("CAIRN_TEST_KERNEL", how);
        let initrd = testkit::env("CAIRN_TEST_INITRD", how);
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("empty.raw");
        fs::write(&img, vec![0u8; 1 << 20]).unwrap();
        let mut s = BootSpec::new(
            &img,
            crate::vm::qemu::cmdline::test_formats::RAW,
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
