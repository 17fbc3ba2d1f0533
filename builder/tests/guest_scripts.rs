//! The guest scripts where a boot cannot show a behaviour (a corruption
//! the kernel log line missed, a disk read error, a random pool that never
//! fills): the verity watcher run on the host with busybox, a fake kernel
//! log and a fake veritysetup; the init's text for the rest. Each with a
//! control showing the check would see the fault.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const WATCH: &str = include_str!("../guest/verity-watch");
const INIT: &str = include_str!("../guest/init");

fn exe(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A watcher over `devices`, its kernel log fed by the test (stdin, kept
/// open), veritysetup answering `status`, a busybox whose `halt` only
/// leaves a mark. Returns the child (its own process group) and the folder.
fn watcher(devices: &str, status: &str) -> (Child, tempfile::TempDir) {
    let d = tempfile::tempdir().unwrap();
    let w = d.path();
    std::fs::write(w.join("devices"), devices).unwrap();
    exe(
        &w.join("busybox"),
        "#!/bin/sh\ncase \"$1\" in halt) echo halted >> \"${0%/*}/halted\"; exit 0 ;; esac\nexec busybox \"$@\"\n",
    );
    exe(
        &w.join("veritysetup"),
        &format!(
            "#!/bin/sh\necho \"/dev/mapper/$2 is active.\"\necho \"  status:      {status}\"\n"
        ),
    );
    std::fs::write(w.join("verity-watch"), WATCH).unwrap();
    let mut cmd = cairn::host::runner::command("busybox");
    cmd.arg("sh")
        .arg("-c")
        .arg("exec 3<&0 4>\"$1/console\" 5>/dev/null; exec busybox sh \"$1/verity-watch\" \"$1\" \"$1/sysrq\" \"$1/veritysetup\" 1")
        .arg("sh")
        .arg(w)
        .stdin(Stdio::piped())
        .process_group(0);
    (cmd.spawn().expect("busybox (package busybox)"), d)
}

/// Whether the watcher halted within `secs`; stops it either way.
fn halted_within(mut child: Child, w: &Path, secs: u64) -> (bool, String) {
    let start = Instant::now();
    let mut halted = false;
    while start.elapsed() < Duration::from_secs(secs) {
        if w.join("halted").exists() {
            halted = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut kill = cairn::host::runner::command("kill");
    kill.args(["-9", "--", &format!("-{}", child.id())]);
    let _ = kill.status();
    let _ = child.wait();
    let console = std::fs::read_to_string(w.join("console")).unwrap_or_default();
    (halted, console)
}

/// One device under cairn-root: vda2, sectors 4096..8191 of vda; the
/// state's dm-crypt mapping on vda3 after it.
const DEVICES: &str =
    "254:2 cairn-root vda2 vda 4096 4096 dm-0\n254:3 cairn-state vda3 vda 8192 4096 dm-1\n";

#[test]
fn the_watcher_halts_when_a_poll_reports_corruption() {
    let (child, d) = watcher(DEVICES, "corrupted");
    let (halted, console) = halted_within(child, d.path(), 10);
    assert!(halted, "no halt: {console}");
    assert!(
        console.contains("cairn: FATAL verity: cairn-root reports corrupted data"),
        "{console}"
    );
    // Control: a verified mapping, the same watcher, no halt.
    let (child, d) = watcher(DEVICES, "verified");
    let (halted, console) = halted_within(child, d.path(), 4);
    assert!(!halted, "halted on a verified mapping: {console}");
}

#[test]
fn the_watcher_halts_on_a_read_error_under_a_verity_mapping_only() {
    let run = |line: &str| {
        let (mut child, d) = watcher(DEVICES, "verified");
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "3,512,1000,-;{line}").unwrap();
        let r = halted_within(child, d.path(), 4);
        drop(stdin);
        r
    };
    let (halted, console) =
        run("I/O error, dev vda, sector 5000 op 0x0:(READ) flags 0x0 phys_seg 1 prio class 2");
    assert!(halted, "{console}");
    assert!(
        console.contains("FATAL verity: I/O error on vda2 (sector 5000 of vda) under cairn-root"),
        "{console}"
    );
    let (halted, console) = run("Buffer I/O error on dev dm-0, logical block 12, async page read");
    assert!(halted, "{console}");
    // Controls: the same errors on the state (not verity) do not halt.
    let (halted, console) =
        run("I/O error, dev vda, sector 9000 op 0x0:(READ) flags 0x0 phys_seg 1 prio class 2");
    assert!(!halted, "{console}");
    let (halted, console) = run("Buffer I/O error on dev dm-1, logical block 12, async page read");
    assert!(!halted, "{console}");
}

/// The line of the init that mounts the RAM state.
#[test]
fn ram_state_is_mounted_nosuid_nodev() {
    let ram = INIT
        .lines()
        .find(|l| l.contains("cairn-state \"$S\"") && l.contains("tmpfs"))
        .expect("the RAM state mount");
    assert!(ram.contains("nosuid,nodev"), "{ram}");
    // Control: every tmpfs and the overlays on the state say so as well.
    for l in INIT
        .lines()
        .filter(|l| l.trim_start().starts_with("mount -t tmpfs") || l.contains("upperdir=$S"))
    {
        assert!(l.contains("nosuid,nodev"), "{l}");
    }
}

/// The state's key (read from /dev/urandom, which never blocks) is made
/// only after the kernel's random pool is ready: the init waits for a
/// byte of /dev/random first, bounded, with a FATAL line if it never is.
#[test]
fn the_state_key_waits_for_the_random_pool() {
    let wait = INIT
        .find("\n            wait_for_crng\n")
        .expect("the wait");
    let key = INIT.find("--key-file /dev/urandom").expect("the key");
    assert!(wait < key, "the key is read before the wait");
    let f = &INIT[INIT.find("wait_for_crng() {").expect("the function")..];
    let f = &f[..f.find("\n}\n").unwrap()];
    assert!(f.contains("head -c 1 /dev/random"), "{f}");
    assert!(f.contains("fatal \"state: the kernel's random pool"), "{f}");
    // Control: the RAM state makes no key and does not wait.
    let ram =
        &INIT[INIT.find("    ram)\n").unwrap()..INIT.find("    disk|disk-unencrypted)").unwrap()];
    assert!(!ram.contains("wait_for_crng"), "{ram}");
}

// ---------- readiness probes (cairn-probe, run by cairn-ready) ----------

/// A one-shot HTTP server on 127.0.0.1 answering every request with
/// `status`; returns its port.
fn answering(status: &'static str) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::Read;
        for s in l.incoming().flatten() {
            let mut s = s;
            // Read the whole request head before answering, and drain what
            // is left before closing: closing with unread bytes makes the
            // kernel send a reset, which can discard the answer before the
            // probe reads it.
            let mut got = Vec::new();
            let mut buf = [0u8; 512];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(s, "{status}\r\nContent-Length: 0\r\n\r\n");
            let _ = s.shutdown(std::net::Shutdown::Write);
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        }
    });
    port
}

fn probe(args: &[&str]) -> bool {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/cairn-probe");
    let out = cairn::host::runner::command("timeout")
        .arg("10")
        .arg("bash")
        .arg(p)
        .args(args)
        .output()
        .unwrap();
    out.status.success()
}

#[test]
fn the_readiness_probe_passes_only_on_an_answer_in_the_2xx_range() {
    let ok = answering("HTTP/1.0 200 OK").to_string();
    assert!(probe(&["http", &ok, "/healthz"]));
    assert!(probe(&["tcp", &ok, ""]));
    // Controls: a server that answers 503, and a port nobody listens on.
    let busy = answering("HTTP/1.1 503 Service Unavailable").to_string();
    assert!(!probe(&["http", &busy, "/healthz"]));
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port().to_string()
    };
    assert!(!probe(&["http", &closed, "/healthz"]));
    assert!(!probe(&["tcp", &closed, ""]));
}

#[test]
fn cairn_ready_waits_for_the_checks_and_names_a_service_that_never_passes() {
    let ready =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/cairn-ready"))
            .unwrap();
    // The announcement comes after the checks' loop, and a failed check
    // exits before it.
    let checks = ready.find("/etc/cairn/ready-checks").unwrap();
    let announce = ready.rfind("cairn-say ready").unwrap();
    assert!(checks < announce, "ready is said before the checks");
    assert!(
        ready.contains("FATAL service $name: not ready after"),
        "{ready}"
    );
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/cairn-ready.service"),
    )
    .unwrap();
    assert!(
        unit.contains("TimeoutStartSec=infinity"),
        "systemd's 90 s start timeout would cut a longer check short"
    );
}
