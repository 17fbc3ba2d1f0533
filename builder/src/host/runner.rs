//! The one way cairn runs a host tool. Every external command is made here
//! (`xshell::cmd!` on [`shell`] for [`run`], [`command`] for the rest) and
//! started by one of the thin adapters below over one core (`execute`),
//! which logs the command line with `--verbose`, times it into the
//! per-program totals, and turns a failure into an error that names the
//! stage, the command line and the tail of its stderr.
//!
//! - [`run`]: a `cmd!` line, output captured, stdout returned;
//! - [`run_code`]: a `cmd!` line whose exit code is an answer (`qemu-img
//!   compare`: 0 same, 1 different), code and output returned;
//! - [`output`]: a [`Command`] with its own environment or stdio, captured;
//! - [`run_streaming`]: a long tool whose progress lines are echoed;
//! - [`status`]: an interactive tool on this terminal, exit status returned;
//! - [`spawn`]: a long-running child (QEMU) as a [`Process`], killed and
//!   reaped when dropped.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, ChildStderr, Command, ExitStatus, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use xshell::Cmd;

/// Whether to echo each command line (set by `--verbose`).
static VERBOSE: AtomicBool = AtomicBool::new(false);

pub fn set_verbose(v: bool) {
    VERBOSE.store(v, Ordering::Relaxed);
}

pub fn verbose() -> bool {
    VERBOSE.load(Ordering::Relaxed)
}

/// The shell `cmd!` lines are built on (the process's working folder and
/// environment): the one place cairn makes one.
pub fn shell() -> Result<xshell::Shell> {
    xshell::Shell::new().context("cannot read the working folder to run tools in")
}

/// A new command for `program`; start it with [`output`],
/// [`run_streaming`], [`status`] or [`spawn`].
pub fn command(program: &str) -> Command {
    Command::new(program)
}

/// Whether `program` is on `PATH` (or in /usr/sbin, /sbin), without running it.
pub fn available(program: &str) -> bool {
    crate::host::doctor::find(program).is_some()
}

/// Whether `program ARGS` starts and exits 0 (output discarded), e.g. a
/// `--version` check before an optional tool is used.
pub fn succeeds(program: &str, args: &[&str]) -> bool {
    let mut cmd = command(program);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    log_start(&cmd);
    cmd.status().map(|s| s.success()).unwrap_or(false)
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = v.len().saturating_sub(lines);
    v[start..].join("\n    ")
}

/// One shell word: as is when it is plain, else single-quoted.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/:._+-=@%,".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `cmd` as a shell-like line: the variables it sets, the program, its
/// arguments (for logs and error messages).
pub fn command_line(cmd: &Command) -> String {
    let mut words: Vec<String> = Vec::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            words.push(format!(
                "{}={}",
                k.to_string_lossy(),
                shell_word(&v.to_string_lossy())
            ));
        }
    }
    words.push(shell_word(&cmd.get_program().to_string_lossy()));
    words.extend(cmd.get_args().map(|a| shell_word(&a.to_string_lossy())));
    words.join(" ")
}

fn log_start(cmd: &Command) {
    if verbose() {
        eprintln!("  $ {}", command_line(cmd));
    }
}

thread_local! {
    /// The label [`run_streaming`] puts before each echoed line on this
    /// thread (set by [`with_label`]).
    static LABEL: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with `label` before every line [`run_streaming`] echoes on this
/// thread (`[base] ...`, `[image inference] ...`), so stages running at
/// once stay readable.
pub fn with_label<T>(label: &str, f: impl FnOnce() -> T) -> T {
    let old = LABEL.with(|l| l.replace(Some(label.to_string())));
    let v = f();
    LABEL.with(|l| *l.borrow_mut() = old);
    v
}

/// `line` as [`run_streaming`] echoes it: behind this thread's label.
fn labelled(line: &str) -> String {
    LABEL.with(|l| match &*l.borrow() {
        Some(label) => format!("    [{label}] {line}"),
        None => format!("    {line}"),
    })
}

/// Seconds spent in each tool (by program name) since the last
/// [`take_tool_times`]: a build prints them against its wall time.
static TOOL_TIMES: Mutex<BTreeMap<String, f64>> = Mutex::new(BTreeMap::new());

fn log_time(program: &str, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    if verbose() {
        eprintln!("    ({secs:.1}s)");
    }
    let name = Path::new(program)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| program.to_string());
    if let Ok(mut t) = TOOL_TIMES.lock() {
        *t.entry(name).or_default() += secs;
    }
}

/// The time each tool ran since the last call (program name -> seconds,
/// summed over its runs; tools running at once each count in full), and
/// starts counting afresh.
pub fn take_tool_times() -> BTreeMap<String, f64> {
    TOOL_TIMES
        .lock()
        .map(|mut t| std::mem::take(&mut *t))
        .unwrap_or_default()
}

/// One line for [`take_tool_times`]'s answer: the tools, longest first,
/// their total, and the wall time they ran in.
pub fn tool_times_line(times: &BTreeMap<String, f64>, wall: f64) -> String {
    let mut v: Vec<(&String, &f64)> = times.iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
    let total: f64 = times.values().sum();
    let list: Vec<String> = v.iter().map(|(n, s)| format!("{n} {s:.1}s")).collect();
    format!(
        "tool time: {}; total {total:.1}s; wall {wall:.1}s",
        if list.is_empty() {
            "none".to_string()
        } else {
            list.join(", ")
        }
    )
}

/// The error for a tool that could not be started: a missing program names
/// its Debian package (from the doctor's table).
fn start_error(stage: &str, cmd: &Command, e: std::io::Error) -> anyhow::Error {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let package = crate::host::doctor::TOOLS
        .iter()
        .find(|t| t.name == program)
        .map(|t| format!("install the Debian package {}; ", t.package))
        .unwrap_or_default();
    anyhow!(
        "{stage}: cannot run `{}`: {e}; {package}run `cairn doctor` to check host tools",
        command_line(cmd)
    )
}

/// The error for a tool that exited with `status`: the last `lines`
/// lines of its stderr (of its stdout when stderr is empty).
fn failure(
    stage: &str,
    line: &str,
    status: ExitStatus,
    stderr: &str,
    stdout: &str,
    lines: usize,
) -> String {
    let mut msg = format!("{stage}: `{line}` failed ({status})");
    let t = tail(stderr, lines);
    let t = if t.is_empty() { tail(stdout, lines) } else { t };
    if !t.is_empty() {
        msg.push_str(&format!("\n    {t}"));
    }
    msg
}

/// What the runner's core makes of a tool's exit.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Judge {
    /// Anything but exit 0 is a failure.
    Success,
    /// Any exit code is an answer; only death by a signal is a failure.
    Code,
    /// The caller judges (an interactive tool); an interrupt is not
    /// checked either.
    Caller,
}

/// A tool run to its end: how it ended, what it said (for the error) and
/// what the adapter made of it.
struct Ran<T> {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    /// How many lines of its output an error quotes.
    tail: usize,
    value: T,
}

impl<T> Ran<T> {
    fn new(status: ExitStatus, stdout: String, stderr: String, value: T) -> Ran<T> {
        Ran {
            status,
            stdout,
            stderr,
            tail: 8,
            value,
        }
    }
}

/// The one core every adapter runs a tool through: logs `line` (with
/// `--verbose`), runs `go` (which starts the tool and waits for it),
/// times it into the per-program totals, stops on an interrupt, and turns
/// a failure into an error naming the stage, the command line and the
/// tail of the tool's stderr.
fn execute<T>(
    stage: &str,
    program: &str,
    line: &str,
    judge: Judge,
    go: impl FnOnce() -> Result<Ran<T>>,
) -> Result<Ran<T>> {
    if verbose() {
        eprintln!("  $ {line}");
    }
    let started = Instant::now();
    let ran = go();
    log_time(program, started);
    let ran = ran?;
    if judge == Judge::Caller {
        return Ok(ran);
    }
    // A tool stopped by a signal (`host::interrupt`) failed for that.
    crate::host::interrupt::check()?;
    let failed = match judge {
        Judge::Success => !ran.status.success(),
        _ => ran.status.code().is_none(),
    };
    if failed {
        bail!(failure(
            stage,
            line,
            ran.status,
            &ran.stderr,
            &ran.stdout,
            ran.tail
        ));
    }
    Ok(ran)
}

/// [`execute`] for a `cmd!` line, output captured.
fn execute_cmd(stage: &str, cmd: Cmd<'_>, judge: Judge) -> Result<Ran<()>> {
    let line = cmd.to_string();
    let program = line.split(' ').next().unwrap_or_default().to_string();
    execute(stage, &program, &line, judge, || {
        let out = cmd.ignore_status().quiet().output().map_err(|e| {
            anyhow!("{stage}: cannot run `{line}`: {e}; run `cairn doctor` to check host tools")
        })?;
        Ok(Ran::new(
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            (),
        ))
    })
}

/// [`execute`] for a [`Command`]: its line and program come from it.
fn execute_command<T>(
    stage: &str,
    cmd: &mut Command,
    judge: Judge,
    go: impl FnOnce(&mut Command) -> Result<Ran<T>>,
) -> Result<Ran<T>> {
    let line = command_line(cmd);
    let program = cmd.get_program().to_string_lossy().into_owned();
    execute(stage, &program, &line, judge, || go(cmd))
}

/// Runs `cmd` for `stage`, returning its stdout.
pub fn run(stage: &str, cmd: Cmd<'_>) -> Result<String> {
    Ok(execute_cmd(stage, cmd, Judge::Success)?.stdout)
}

/// Runs `cmd` for `stage` when its exit code is an answer rather than only
/// success or failure: returns the code, stdout and stderr. A tool that
/// cannot start or dies from a signal is an error, as with [`run`].
pub fn run_code(stage: &str, cmd: Cmd<'_>) -> Result<(i32, String, String)> {
    let ran = execute_cmd(stage, cmd, Judge::Code)?;
    Ok((ran.status.code().unwrap_or(-1), ran.stdout, ran.stderr))
}

/// Runs `cmd` to completion for `stage` with its output captured (stdout
/// and stderr not set by the caller are piped) and returns it; a non-zero
/// exit is an error.
pub fn output(stage: &str, mut cmd: Command) -> Result<Output> {
    let ran = execute_command(stage, &mut cmd, Judge::Success, |cmd| {
        let out = cmd.output().map_err(|e| start_error(stage, cmd, e))?;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        Ok(Ran::new(
            out.status,
            text(&out.stdout),
            text(&out.stderr),
            out,
        ))
    })?;
    Ok(ran.value)
}

/// Runs an interactive tool with the stdio the caller set (the terminal,
/// for `cairn run`) and returns its exit status without judging it.
pub fn status(stage: &str, mut cmd: Command) -> Result<ExitStatus> {
    let ran = execute_command(stage, &mut cmd, Judge::Caller, |cmd| {
        let st = cmd.status().map_err(|e| start_error(stage, cmd, e))?;
        Ok(Ran::new(st, String::new(), String::new(), ()))
    })?;
    Ok(ran.status)
}

/// Starts `cmd` in its own process group, registered with
/// `host::interrupt`: SIGINT, SIGTERM and SIGHUP stop the tool and
/// everything it started.
fn spawn_registered(
    stage: &str,
    cmd: &mut Command,
) -> Result<(Child, crate::host::interrupt::ChildGuard)> {
    std::os::unix::process::CommandExt::process_group(cmd, 0);
    let child = cmd.spawn().map_err(|e| start_error(stage, cmd, e))?;
    let registered = crate::host::interrupt::register_child(child.id(), true);
    Ok((child, registered))
}

/// Waits for `child` of `stage`.
fn wait(stage: &str, child: &mut Child, cmd: &Command) -> Result<ExitStatus> {
    child
        .wait()
        .with_context(|| format!("{stage}: waiting for `{}`", command_line(cmd)))
}

/// Runs a long tool whose stderr the caller piped (mmdebstrap): echoes its
/// `I:` progress lines (all lines with --verbose) and keeps the tail of its
/// output for the error.
pub fn run_streaming(stage: &str, mut cmd: Command) -> Result<()> {
    execute_command(stage, &mut cmd, Judge::Success, |cmd| {
        let (mut child, _registered) = spawn_registered(stage, cmd)?;
        let mut tail: Vec<String> = Vec::new();
        if let Some(err) = child.stderr.take() {
            for l in std::io::BufReader::new(err).lines() {
                let l = l.unwrap_or_default();
                if l.starts_with("I: ") || verbose() {
                    crate::host::progress::say(&labelled(l.trim_start_matches("I: ")));
                }
                tail.push(l);
                if tail.len() > 15 {
                    tail.remove(0);
                }
            }
        }
        let status = wait(stage, &mut child, cmd)?;
        Ok(Ran {
            tail: 15,
            ..Ran::new(status, String::new(), tail.join("\n"), ())
        })
    })?;
    Ok(())
}

/// [`execute`] for a tool run with a progress bar labelled `label` for
/// `total` bytes: stdin as the caller set it (or `stdin`), stdout and
/// stderr piped, its own process group, registered. `go` reads the tool's
/// output and feeds the bar, and returns its value, the bar's last
/// position, stdout and stderr; the bar is closed there on success and
/// abandoned on an error or an interrupt.
fn execute_with_bar<T>(
    stage: &str,
    cmd: &mut Command,
    stdin: Option<std::process::Stdio>,
    label: &str,
    total: u64,
    go: impl FnOnce(
        &mut Child,
        &mut crate::host::progress::Progress,
    ) -> Result<(T, u64, String, String)>,
) -> Result<T> {
    use std::process::Stdio;
    if let Some(i) = stdin {
        cmd.stdin(i);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut bar = crate::host::progress::Progress::new(label, total);
    let ran = execute_command(stage, cmd, Judge::Success, |cmd| {
        let (mut child, _registered) = spawn_registered(stage, cmd)?;
        // The tool holds a pipe's write end given as its stdin now; this
        // one, in `cmd`, is closed, or the pipe would never end.
        cmd.stdin(Stdio::null());
        let read = go(&mut child, &mut bar);
        let status = wait(stage, &mut child, cmd)?;
        let (value, done, stdout, stderr) = read?;
        Ok(Ran::new(status, stdout, stderr, (value, done)))
    });
    match ran {
        Ok(Ran {
            value: (value, done),
            ..
        }) => {
            bar.update(done);
            bar.finish();
            Ok(value)
        }
        Err(e) => {
            bar.abandon();
            Err(e)
        }
    }
}

/// Reads a pipe to its end on a thread of its own (so a full pipe never
/// blocks the tool), for the error message.
fn drain<R: std::io::Read + Send + 'static>(
    pipe: Option<R>,
) -> Option<std::thread::JoinHandle<String>> {
    pipe.map(|mut p| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = p.read_to_string(&mut s);
            s
        })
    })
}

/// What a [`drain`] read (empty if there was nothing to read).
fn drained(h: Option<std::thread::JoinHandle<String>>) -> String {
    h.and_then(|h| h.join().ok()).unwrap_or_default()
}

/// Runs a tool that reports its progress on stdout as percentages
/// (`qemu-img convert -p`: `    (12.34/100%)\r`), feeding a bar labelled
/// `label` for `total` bytes; its stderr is kept for the error. `cmd`'s
/// stdio is set here.
pub fn run_with_progress(stage: &str, mut cmd: Command, label: &str, total: u64) -> Result<()> {
    let stdin = Some(std::process::Stdio::null());
    execute_with_bar(stage, &mut cmd, stdin, label, total, |child, bar| {
        let err_reader = drain(child.stderr.take());
        let mut stdout = String::new();
        if let Some(out) = child.stdout.take() {
            let mut r = std::io::BufReader::new(out);
            let mut chunk = Vec::new();
            // Progress records end in `\r`; anything else ends in `\n`.
            while r.read_until(b'\r', &mut chunk).unwrap_or(0) > 0 {
                let text = String::from_utf8_lossy(&chunk).into_owned();
                match parse_percent(&text) {
                    Some(pct) => bar.update((total as f64 * pct / 100.0) as u64),
                    None => stdout.push_str(&text),
                }
                chunk.clear();
            }
        }
        Ok(((), total, stdout, drained(err_reader)))
    })
}

/// Runs a tool that writes one output file front to back and can be told
/// to write it to `/dev/fd/0` (xorriso): its stdin is the write end of a
/// pipe, and every byte it writes is passed on, in order, to `sink` with
/// its offset, in pieces of [`PIPED_PIECE`] bytes (the last may be
/// shorter) from an aligned buffer, so the sink can write them around the
/// page cache and hash them on the way. A bar labelled `label` for
/// `total` bytes follows. stdout and stderr are kept for the error; an
/// error from `sink` stops the tool. `cmd`'s stdio is set here.
pub fn run_piping_output(
    stage: &str,
    mut cmd: Command,
    label: &str,
    total: u64,
    mut sink: impl FnMut(&[u8], u64) -> Result<()>,
) -> Result<u64> {
    let (mut from_tool, to_file) =
        crate::host::sys::pipe().with_context(|| format!("{stage}: cannot make a pipe"))?;
    cmd.stdin(to_file);
    execute_with_bar(stage, &mut cmd, None, label, total, |child, bar| {
        let out_reader = drain(child.stdout.take());
        let err_reader = drain(child.stderr.take());
        // A bigger pipe (best effort) lets the tool run ahead between reads.
        crate::host::set_pipe_size(&from_tool, PIPE_SIZE);
        // One thread reads the pipe into pieces while this one hands the
        // piece before to `sink`: the tool is not held up while a piece is
        // hashed and written. Two pieces are in flight; the sink gives each
        // back to be filled again.
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<
            std::io::Result<(crate::host::direct::AlignedBuf, usize)>,
        >(1);
        let (empty_tx, empty_rx) = std::sync::mpsc::channel::<crate::host::direct::AlignedBuf>();
        for _ in 0..2 {
            let _ = empty_tx.send(crate::host::direct::AlignedBuf::new(PIPED_PIECE));
        }
        let copied = std::thread::scope(|s| {
            s.spawn(move || {
                while let Ok(mut buf) = empty_rx.recv() {
                    let fill = crate::host::read_full(&mut from_tool, buf.as_mut_slice());
                    let end = matches!(fill, Ok(0) | Err(_));
                    if full_tx.send(fill.map(|n| (buf, n))).is_err() || end {
                        return;
                    }
                }
            });
            let mut pos = 0u64;
            let r = loop {
                match full_rx.recv() {
                    // The reader ended (it sends its end first).
                    Err(_) | Ok(Ok((_, 0))) => break Ok(pos),
                    Ok(Ok((buf, n))) => {
                        if let Err(e) = sink(&buf.as_slice()[..n], pos) {
                            break Err(e);
                        }
                        pos += n as u64;
                        bar.update(pos.min(total));
                        let _ = empty_tx.send(buf);
                    }
                    Ok(Err(e)) => {
                        break Err(anyhow::Error::new(e).context(format!("{stage}: read the pipe")))
                    }
                }
            };
            if r.is_err() {
                // Nothing more is read: the tool must not wait on a full pipe
                // (killed, its end closes and the reader sees the end).
                let _ = child.kill();
            }
            // The reader stops at its next send or receive.
            drop(full_rx);
            drop(empty_tx);
            r
        });
        let stdout = drained(out_reader);
        let stderr = drained(err_reader);
        // A sink's error is the error, whatever the tool said after.
        let pos = copied?;
        Ok((pos, pos, stdout, stderr))
    })
}

/// The piece size of [`run_piping_output`]: 4 MiB.
pub const PIPED_PIECE: usize = 4 << 20;

/// The pipe size [`run_piping_output`] asks for: 1 MiB, Linux's default
/// most for an unprivileged process (`/proc/sys/fs/pipe-max-size`).
const PIPE_SIZE: usize = 1 << 20;

/// `12.34` from a progress record `    (12.34/100%)`.
pub fn parse_percent(record: &str) -> Option<f64> {
    let t = record.trim();
    let inner = t.strip_prefix('(')?.strip_suffix("/100%)")?;
    let v: f64 = inner.parse().ok()?;
    (0.0..=100.0).contains(&v).then_some(v)
}

/// Starts a long-running child for `stage` with the stdio the caller set.
pub fn spawn(stage: &str, mut cmd: Command) -> Result<Process> {
    log_start(&cmd);
    let child = cmd.spawn().map_err(|e| start_error(stage, &cmd, e))?;
    Ok(Process {
        child,
        stage: stage.to_string(),
        line: command_line(&cmd),
        started: Instant::now(),
        logged_exit: false,
    })
}

/// A child started by [`spawn`]: SIGKILLed and reaped when dropped, so it
/// never outlives its owner.
pub struct Process {
    child: Child,
    stage: String,
    line: String,
    started: Instant,
    logged_exit: bool,
}

impl Process {
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The command line it was started with.
    pub fn command_line(&self) -> &str {
        &self.line
    }

    /// Its stderr, if the caller piped it (once).
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }

    fn log_exit(&mut self, status: ExitStatus) {
        if !self.logged_exit && verbose() {
            eprintln!(
                "    ({}: pid {} ended after {:.1}s: {status})",
                self.stage,
                self.child.id(),
                self.started.elapsed().as_secs_f64()
            );
        }
        self.logged_exit = true;
    }

    /// Its exit status if it has exited, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        let st = self
            .child
            .try_wait()
            .with_context(|| format!("{}: checking on `{}`", self.stage, self.line))?;
        if let Some(s) = st {
            self.log_exit(s);
        }
        Ok(st)
    }

    /// Waits up to `timeout` for it to exit, polling every `poll`;
    /// `Ok(None)` if it is still running.
    pub fn wait_timeout(
        &mut self,
        timeout: Duration,
        poll: Duration,
    ) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(poll);
        }
    }

    /// SIGKILL, then waits for it to go.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        if let Ok(s) = self.child.wait() {
            self.log_exit(s);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The watched tool's output and exit decide; its stderr names the
    /// failure (control: a tool that fails is an error with its message).
    #[test]
    fn run_piping_output_passes_every_byte_in_order_and_reports_failures() {
        // 10 MiB and 5 bytes through /dev/fd/0: whole pieces, then a short
        // one, the bytes of the file the tool copies.
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        let mut ok = command("sh");
        ok.arg("-c")
            .arg("head -c 10485765 /dev/urandom > \"$1\"; cat \"$1\" > /dev/fd/0")
            .arg("sh")
            .arg(&src);
        let mut got = Vec::new();
        let mut offsets = Vec::new();
        let n = run_piping_output("test", ok, "out", 10485765, |piece, at| {
            offsets.push((at, piece.len()));
            got.extend_from_slice(piece);
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 10485765);
        assert!(got == std::fs::read(&src).unwrap(), "other bytes");
        assert_eq!(
            offsets,
            vec![
                (0, PIPED_PIECE),
                (PIPED_PIECE as u64, PIPED_PIECE),
                (2 * PIPED_PIECE as u64, 2097157)
            ]
        );
        // A failing tool: its message and the stage, whatever it wrote.
        let mut bad = command("sh");
        bad.arg("-c")
            .arg("echo partial > /dev/fd/0; echo no room on the device >&2; exit 3");
        let e = run_piping_output("test: tool", bad, "out", 1, |_, _| Ok(())).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("no room on the device") && msg.contains("test: tool"),
            "{msg}"
        );
        // A failing sink stops the tool (which would write for ever).
        let mut endless = command("sh");
        endless.arg("-c").arg("cat /dev/zero > /dev/fd/0");
        let e = run_piping_output("test: sink", endless, "out", 1, |_, at| {
            if at > 0 {
                anyhow::bail!("disk full")
            }
            Ok(())
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("disk full"), "{e:#}");
    }

    #[test]
    fn runner_progress_run_reports_failure_with_stderr() {
        let mut ok = command("sh");
        ok.args([
            "-c",
            "printf '    (50.00/100%%)\\r    (100.00/100%%)\\r\\n'",
        ]);
        run_with_progress("t", ok, "t", 100).unwrap();
        let mut bad = command("sh");
        bad.args(["-c", "printf '    (50.00/100%%)\\r'; echo oops >&2; exit 3"]);
        let e = run_with_progress("stage x", bad, "t", 100)
            .unwrap_err()
            .to_string();
        assert!(e.contains("stage x") && e.contains("oops"), "{e}");
    }

    #[test]
    fn progress_percent_records() {
        assert_eq!(parse_percent("    (12.34/100%)\r"), Some(12.34));
        assert_eq!(parse_percent("\n    (100.00/100%)\r"), Some(100.0));
        assert_eq!(parse_percent("    (0.00/100%)"), Some(0.0));
        for bad in [
            "",
            "(x/100%)",
            "(101/100%)",
            "12/100%",
            "(5/50%)",
            "Image resized.",
        ] {
            assert_eq!(parse_percent(bad), None, "{bad:?}");
        }
    }
    use std::process::Stdio;

    #[test]
    fn runner_command_line_quotes_only_what_needs_it() {
        let mut c = command("mmdebstrap");
        c.arg("--variant=minbase")
            .arg("--aptopt=Acquire::Retries \"3\"")
            .arg("it's")
            .env("INITRD", "No");
        assert_eq!(
            command_line(&c),
            r#"INITRD=No mmdebstrap --variant=minbase '--aptopt=Acquire::Retries "3"' 'it'\''s'"#
        );
    }

    #[test]
    fn runner_output_error_names_stage_command_and_stderr() {
        let mut c = command("sh");
        c.args(["-c", "echo one >&2; echo two >&2; exit 3"]);
        let e = output("unit stage", c).unwrap_err().to_string();
        assert!(e.starts_with("unit stage: `sh -c "), "{e}");
        assert!(e.contains("exit status: 3"), "{e}");
        assert!(e.contains("one\n    two"), "{e}");

        let mut ok = command("sh");
        ok.args(["-c", "printf out"]);
        assert_eq!(output("unit stage", ok).unwrap().stdout, b"out");
    }

    #[test]
    fn runner_missing_tool_names_its_package() {
        let e = output("unit stage", command("qemu-img-not-there"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unit stage: cannot run `qemu-img-not-there`"),
            "{e}"
        );
        assert!(e.contains("cairn doctor"), "{e}");
        assert!(!succeeds("qemu-img-not-there", &[]));
        assert!(succeeds("true", &[]));
        assert!(!succeeds("false", &[]));
    }

    #[test]
    fn runner_streaming_keeps_the_tail() {
        let mut c = command("sh");
        c.args(["-c", "echo 'I: step'; echo boom >&2; exit 1"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let e = run_streaming("stream", c).unwrap_err().to_string();
        assert!(e.contains("stream: `sh -c") && e.contains("boom"), "{e}");
    }

    #[test]
    fn runner_labels_lines_per_thread_and_counts_tool_time() {
        assert_eq!(labelled("x"), "    x");
        let inner = with_label("base", || {
            let here = labelled("x");
            // Another thread has its own label (none here).
            let other = std::thread::spawn(|| labelled("y")).join().unwrap();
            (here, other)
        });
        assert_eq!(inner, ("    [base] x".to_string(), "    y".to_string()));
        // The label ends with `with_label`.
        assert_eq!(labelled("x"), "    x");

        let mut c = command("sh");
        c.args(["-c", "sleep 0.2"]);
        output("unit stage", c).unwrap();
        // Other tests run tools at the same time: at least this one's time.
        let times = take_tool_times();
        assert!(times.get("sh").copied().unwrap_or(0.0) >= 0.2, "{times:?}");
        let line = tool_times_line(
            &BTreeMap::from([("a".to_string(), 1.0), ("mksquashfs".to_string(), 2.5)]),
            3.0,
        );
        assert_eq!(
            line,
            "tool time: mksquashfs 2.5s, a 1.0s; total 3.5s; wall 3.0s"
        );
    }

    #[test]
    fn runner_process_is_killed_on_drop() {
        let mut c = command("sleep");
        c.arg("60");
        let mut p = spawn("unit stage", c).unwrap();
        assert_eq!(
            p.wait_timeout(Duration::from_millis(50), Duration::from_millis(10))
                .unwrap(),
            None
        );
        let pid = p.id() as i32;
        drop(p);
        // SAFETY: signal 0 only checks whether the pid exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "child {pid} survived its Process");

        let mut c = command("sh");
        c.args(["-c", "exit 7"]);
        let mut p = spawn("unit stage", c).unwrap();
        let st = p
            .wait_timeout(Duration::from_secs(5), Duration::from_millis(10))
            .unwrap()
            .unwrap();
        assert_eq!(st.code(), Some(7));
    }
}
