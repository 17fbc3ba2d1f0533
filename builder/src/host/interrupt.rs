//! SIGINT, SIGTERM and SIGHUP during any command (a build, a flash): the
//! signal handler only records the signal and wakes a watcher thread; the
//! watcher stops every registered child process group, lets the main
//! thread unwind (long loops call [`check`], so the build's own guards
//! remove its staging folder; a flash zeroes its sticks' first MiB and
//! writes its receipts under a [`hold`]), and if the main thread has not
//! exited after a grace period, removes every registered folder itself and
//! exits with 128 + the signal.
//! Invariant: after an interrupted command, no registered folder and no
//! registered child is left, and every holder got its grace to finish.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// The signal received (0: none).
static SIGNAL: AtomicI32 = AtomicI32::new(0);
/// Write end of the self-pipe the handler wakes the watcher with.
static WAKE: AtomicI32 = AtomicI32::new(-1);
static INSTALL: Once = Once::new();
/// Whether the one "interrupted" line was printed (by the watcher or main).
static REPORTED: AtomicBool = AtomicBool::new(false);

#[derive(Default)]
struct Registry {
    /// (id, pid, whether pid leads its own process group)
    children: Vec<(u64, i32, bool)>,
    /// (id, folder)
    folders: Vec<(u64, PathBuf)>,
    /// ids of the [`hold`]s alive
    holds: Vec<u64>,
    next: u64,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    children: Vec::new(),
    folders: Vec::new(),
    holds: Vec::new(),
    next: 0,
});

/// How long children get between SIGTERM and SIGKILL, and how long the main
/// thread gets to unwind before the watcher cleans up and exits itself.
const CHILD_GRACE: Duration = Duration::from_secs(2);
const MAIN_GRACE: Duration = Duration::from_secs(5);
/// How long a [`hold`] may keep the process alive after a signal: zeroing
/// and flushing the first MiB of a slow stick, then the receipts.
const HOLD_GRACE: Duration = Duration::from_secs(60);

/// The build was interrupted by a signal.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("interrupted by {}", signal_name(*.0))]
pub struct Interrupted(pub i32);

pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// The signal received so far, if any.
pub fn signalled() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// `Err(Interrupted)` once SIGINT, SIGTERM or SIGHUP arrived: long loops call it.
pub fn check() -> Result<(), Interrupted> {
    match signalled() {
        None => Ok(()),
        Some(s) => Err(Interrupted(s)),
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    // Async-signal-safe only: an atomic store and a write(2).
    let _ = SIGNAL.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
    let fd = WAKE.load(Ordering::SeqCst);
    if fd >= 0 {
        let b = [sig as u8];
        // SAFETY: write(2) is async-signal-safe; `b` outlives the call.
        unsafe {
            libc::write(fd, b.as_ptr().cast(), 1);
        }
    }
}

/// The signals every command handles the same way.
const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Installs the SIGINT/SIGTERM/SIGHUP handlers and the watcher thread
/// (once; the CLI calls it before any command runs).
pub fn install() {
    INSTALL.call_once(|| {
        let Ok((read_end, write_end)) = crate::host::sys::pipe() else {
            return;
        };
        // Both ends live as long as the process: the handler and the
        // watcher use them by number.
        use std::os::unix::io::IntoRawFd as _;
        WAKE.store(write_end.into_raw_fd(), Ordering::SeqCst);
        let read_fd = read_end.into_raw_fd();
        std::thread::Builder::new()
            .name("cairn-interrupt".into())
            .spawn(move || watch(read_fd))
            .ok();
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask"
        // value; the handler only does async-signal-safe work (above).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            for sig in SIGNALS {
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
    });
}

fn watch(fd: i32) {
    let mut b = [0u8; 1];
    loop {
        // SAFETY: reads at most one byte into `b`, which outlives the call.
        let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
        if n == 1 {
            break;
        }
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return;
    }
    let sig = signalled().unwrap_or(libc::SIGTERM);
    stop_children();
    // The main thread sees `check()` fail or its child die, unwinds and
    // removes its staging folder; give it a moment, then do it here.
    let t = Instant::now();
    let held = holds() > 0;
    while t.elapsed() < MAIN_GRACE || (holds() > 0 && t.elapsed() < HOLD_GRACE) {
        if registered_folders().is_empty() && holds() == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if held {
        // The holder said it ends the process itself (with its own
        // report): give it the time to return from main.
        std::thread::sleep(MAIN_GRACE);
    }
    stop_children();
    for f in registered_folders() {
        remove_folder(&f);
    }
    report(sig);
    std::process::exit(128 + sig);
}

/// Prints the one line that says the build was interrupted (once, whoever
/// gets there first: the watcher or the CLI unwinding from the error).
pub fn report(sig: i32) {
    if !REPORTED.swap(true, Ordering::SeqCst) {
        eprintln!(
            "cairn: {}; children stopped, staging folder removed",
            Interrupted(sig)
        );
    }
}

fn registered_folders() -> Vec<PathBuf> {
    match REGISTRY.lock() {
        Ok(r) => r.folders.iter().map(|(_, p)| p.clone()).collect(),
        Err(_) => Vec::new(),
    }
}

fn live_children() -> Vec<(i32, bool)> {
    match REGISTRY.lock() {
        Ok(r) => r.children.iter().map(|(_, p, g)| (*p, *g)).collect(),
        Err(_) => Vec::new(),
    }
}

fn holds() -> usize {
    REGISTRY.lock().map(|r| r.holds.len()).unwrap_or(0)
}

fn signal_child(pid: i32, group: bool, sig: i32) {
    // SAFETY: kill(2) takes plain numbers; a stale pid is at worst ESRCH.
    unsafe {
        if group {
            libc::kill(-pid, sig);
        } else {
            libc::kill(pid, sig);
        }
    }
}

fn group_alive(pid: i32, group: bool) -> bool {
    let target = if group { -pid } else { pid };
    // SAFETY: signal 0 only checks whether the process (group) exists.
    unsafe { libc::kill(target, 0) == 0 }
}

/// Every process descending from this one, read from /proc (tools run
/// through xshell are not registered one by one: they are found here).
fn descendants() -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut parent_of: Vec<(i32, i32)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // "pid (comm) state ppid ...": comm may hold spaces and parens.
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                continue;
            };
            if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![me];
    while let Some(p) = frontier.pop() {
        for (c, pp) in &parent_of {
            if *pp == p && !out.contains(c) {
                out.push(*c);
                frontier.push(*c);
            }
        }
    }
    out
}

/// SIGTERM to every registered child (its whole group) and every
/// descendant, SIGKILL to what is still there after the grace period.
fn stop_children() {
    let mut children = live_children();
    children.extend(descendants().into_iter().map(|p| (p, false)));
    if children.is_empty() {
        return;
    }
    for (pid, group) in &children {
        signal_child(*pid, *group, libc::SIGTERM);
    }
    let t = Instant::now();
    while t.elapsed() < CHILD_GRACE && children.iter().any(|(p, g)| group_alive(*p, *g)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for (pid, group) in &children {
        if group_alive(*pid, *group) {
            signal_child(*pid, *group, libc::SIGKILL);
        }
    }
    // Whatever a dying child started meanwhile.
    for pid in descendants() {
        signal_child(pid, false, libc::SIGKILL);
    }
}

fn remove_folder(p: &Path) {
    // Files may still appear while the main thread unwinds: try a few times.
    for _ in 0..5 {
        if std::fs::symlink_metadata(p).is_err() {
            return;
        }
        let _ = std::fs::remove_dir_all(p);
    }
}

/// A registered child; unregistered when dropped (after it was waited for).
pub struct ChildGuard(u64);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(mut r) = REGISTRY.lock() {
            r.children.retain(|(id, _, _)| *id != self.0);
        }
    }
}

/// Registers a running child: stopped on SIGINT/SIGTERM/SIGHUP. `own_group`: the
/// child leads its own process group (spawned with `process_group(0)`), so
/// its whole group is signalled, grandchildren included.
pub fn register_child(pid: u32, own_group: bool) -> ChildGuard {
    let mut r = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    r.next += 1;
    let id = r.next;
    r.children.push((id, pid as i32, own_group));
    ChildGuard(id)
}

/// A [`hold`]: released when dropped.
pub struct HoldGuard(u64);

impl Drop for HoldGuard {
    fn drop(&mut self) {
        if let Ok(mut r) = REGISTRY.lock() {
            r.holds.retain(|id| *id != self.0);
        }
    }
}

/// While the guard lives, a signal does not end the process at once: the
/// main thread, which polls [`signalled`], gets up to a minute to leave
/// things safe and say so itself (a flash zeroes each stick's first MiB,
/// prints one line per stick and writes the receipts), then exits with
/// 128 + the signal ([`exit_code`]).
pub fn hold() -> HoldGuard {
    let mut r = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    r.next += 1;
    let id = r.next;
    r.holds.push(id);
    HoldGuard(id)
}

/// The exit code for a command stopped by the signal received: 128 + it
/// (SIGINT, 130, when none was: an interrupt seen another way).
pub fn exit_code() -> i32 {
    128 + signalled().unwrap_or(libc::SIGINT)
}

/// A registered folder: removed on SIGINT/SIGTERM/SIGHUP, and when dropped.
pub struct FolderGuard(u64, PathBuf);

impl FolderGuard {
    pub fn path(&self) -> &Path {
        &self.1
    }
}

impl Drop for FolderGuard {
    fn drop(&mut self) {
        remove_folder(&self.1);
        if let Ok(mut r) = REGISTRY.lock() {
            r.folders.retain(|(id, _)| *id != self.0);
        }
    }
}

/// Registers a staging folder that must not outlive the build.
pub fn remove_on_exit(path: &Path) -> FolderGuard {
    let mut r = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    r.next += 1;
    let id = r.next;
    r.folders.push((id, path.to_path_buf()));
    FolderGuard(id, path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_guard_removes_its_folder_and_unregisters() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("staging");
        std::fs::create_dir_all(f.join("a/b")).unwrap();
        std::fs::write(f.join("a/b/c"), "x").unwrap();
        let g = remove_on_exit(&f);
        assert!(registered_folders().contains(&f));
        drop(g);
        assert!(!f.exists());
        assert!(!registered_folders().contains(&f));
        assert!(check().is_ok());
    }
}
