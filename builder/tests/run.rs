//! `cairn run` end to end: the qemu-test image's qcow2 boots with its
//! serial console on cairn's stdout, `Ctrl-A x` on stdin quits QEMU, and
//! `--scratch` leaves the image file bit for bit as it was. Control: the
//! same boot without `--scratch`, on a copy, changes the file (the guest
//! formats its encrypted state partition on every boot). Fails when the
//! test image has not been built (the boot tests build it).

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn::host::digest::Sha256;

mod common;

/// Kills the whole process group (cairn and its QEMU) if the test fails.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: kill(2) on our own child's process group.
            unsafe {
                libc::kill(-(self.0.id() as i32), libc::SIGKILL);
            }
            let _ = self.0.wait();
        }
    }
}

fn capture(mut r: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

fn text(b: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&b.lock().unwrap()).into_owned()
}

/// Runs `cairn run IMAGE [--scratch]`, waits for `cairn: ready` on its
/// stdout, quits with Ctrl-A x and returns cairn's stderr.
fn boot_and_quit(image: &Path, scratch: bool) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.arg("run").arg(image);
    if scratch {
        cmd.arg("--scratch");
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut g = Group(cmd.spawn().expect("start cairn run"));
    let out = capture(g.0.stdout.take().unwrap());
    let err = capture(g.0.stderr.take().unwrap());
    let mut stdin = g.0.stdin.take().unwrap();

    common::configure_qemu();
    let limit = Duration::from_secs(420 * cairn::vm::qemu::timeout_scale() as u64);
    let started = Instant::now();
    while !text(&out).contains("cairn: ready") {
        if let Ok(Some(st)) = g.0.try_wait() {
            panic!(
                "cairn run ended ({st}) before the guest was ready:\n{}\n{}",
                text(&err),
                text(&out)
            );
        }
        assert!(
            started.elapsed() < limit,
            "no `cairn: ready` on stdout after {limit:?}:\n{}\n{}",
            text(&err),
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The serial console is on stdout: the initramfs's own lines too.
    assert!(
        text(&out).contains("cairn: root verified by dm-verity"),
        "{}",
        text(&out)
    );

    // Ctrl-A x: QEMU's mux escape, then quit.
    stdin.write_all(b"\x01x").unwrap();
    stdin.flush().unwrap();
    let quit = Instant::now();
    let status = loop {
        if let Some(st) = g.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            quit.elapsed() < Duration::from_secs(60),
            "Ctrl-A x did not stop QEMU:\n{}",
            text(&err)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "{status}: {}", text(&err));
    text(&err)
}

#[test]
fn run_boots_with_the_console_on_stdio_and_scratch_keeps_the_image() {
    let qcow2 = testkit::test_image(Path::new(common::TEST_IMAGE), &["cairn-test-1.qcow2"])
        .join("cairn-test-1.qcow2");
    let before = Sha256::of_file(&qcow2).unwrap();
    let banner = boot_and_quit(&qcow2, true);
    assert!(
        banner.contains("cairn run: ")
            && banner.contains("scratch: changes are discarded")
            && banner.contains("no network"),
        "{banner}"
    );
    assert_eq!(
        Sha256::of_file(&qcow2).unwrap(),
        before,
        "--scratch must leave the image untouched"
    );

    // Control: without --scratch (on a copy) the same boot changes the file.
    let d = tempfile::tempdir().unwrap();
    let copy = d.path().join("copy.qcow2");
    std::fs::copy(&qcow2, &copy).unwrap();
    let banner = boot_and_quit(&copy, false);
    assert!(!banner.contains("scratch"), "{banner}");
    assert_ne!(
        Sha256::of_file(&copy).unwrap(),
        before,
        "a boot without --scratch writes its state partition"
    );
}
