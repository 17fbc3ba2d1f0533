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
    let w = d.path().to_path_buf();
    // No audit trail open: no writer, no key.
    let child = watcher_in(
        &w,
        devices,
        status,
        &w.join("no-writer"),
        &w.join("no-audit"),
    );
    (child, d)
}

/// [`watcher`] in folder `w`, with the audit writer `writer` and its run
/// folder `audit_run` (verity-watch's fifth and sixth arguments).
fn watcher_in(w: &Path, devices: &str, status: &str, writer: &Path, audit_run: &Path) -> Child {
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
        .arg("exec 3<&0 4>\"$1/console\" 5>/dev/null; exec busybox sh \"$1/verity-watch\" \"$1\" \"$1/sysrq\" \"$1/veritysetup\" 1 \"$2\" \"$3\"")
        .arg("sh")
        .arg(w)
        .arg(writer)
        .arg(audit_run)
        .stdin(Stdio::piped())
        .process_group(0);
    cmd.spawn().expect("busybox (package busybox)")
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

/// With the audit trail open (the real writer, age and openssl of the
/// host), a corruption line is followed by a `verity-failure` record
/// naming the volume, its device and the line, then the halt; the trail
/// reads back with the boot halted on that volume. Controls: a writer that
/// fails still halts (the record never holds the node up), and a boot
/// whose trail is not open writes nothing.
#[test]
fn the_watcher_records_a_verity_failure_before_the_halt() {
    let (d, part, key, run) = open_trail();
    let w = d.path();
    let writer = guest("cairn-audit");
    // The watcher runs the writer, which reads these from its environment.
    std::env::set_var("CAIRN_AUDIT_RECIPIENT", w.join("audit.pub"));
    std::env::set_var("CAIRN_AUDIT_TPM_DEV", w.join("no-tpm"));

    let line = "device-mapper: verity: 254:2: data block 7 is corrupted";
    let watch_with = |status: &str, writer: &Path, run: &Path| {
        let wd = tempfile::tempdir_in(w).unwrap();
        let mut child = watcher_in(wd.path(), DEVICES, status, writer, run);
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "3,512,1000,-;{line}").unwrap();
        let r = halted_within(child, wd.path(), 20);
        drop(stdin);
        r
    };
    let watch = |writer: &Path, run: &Path| watch_with("verified", writer, run);
    let (halted, console) = watch(&writer, &run);
    assert!(halted, "{console}");
    assert!(
        console.contains("FATAL verity: corrupted data block 7 on cairn-root"),
        "{console}"
    );
    assert!(
        console.contains("cairn: audit: the verity failure is recorded"),
        "{console}"
    );
    let t = cairn::release::audit::read(&part, &key).unwrap();
    let text = t.render_text();
    assert!(t.first_bad.is_none(), "{text}");
    let b = &t.boots[0];
    let r = b.records.last().unwrap();
    assert_eq!(r.kind, "verity-failure", "{text}");
    assert_eq!(r.get("volume"), Some("base"), "{text}");
    assert_eq!(r.get("mapping"), Some("cairn-root"), "{text}");
    assert_eq!(r.get("device"), Some("vda2 254:2"), "{text}");
    assert_eq!(r.get("seen"), Some(line), "{text}");
    assert_eq!((b.halted.as_deref(), b.closed), (Some("base"), false));

    // Control: a writer that fails does not hold the halt back.
    let failing = w.join("failing-writer");
    exe(&failing, "#!/bin/sh\nexit 1\n");
    let (halted, console) = watch(&failing, &run);
    assert!(halted, "{console}");
    assert!(
        console.contains("the verity failure could not be recorded"),
        "{console}"
    );
    // Control: no trail open this boot (no key in the run folder): no
    // record, no audit line, the same halt.
    let frames = t.frames;
    let (halted, console) = watch(&writer, &w.join("not-open"));
    assert!(halted, "{console}");
    assert!(!console.contains("audit"), "{console}");
    assert_eq!(
        cairn::release::audit::read(&part, &key).unwrap().frames,
        frames
    );
    // A slow writer: the poll (every second here) sees the same
    // corruption while the record is written, and still there is one
    // FATAL line and one halt.
    let slow = w.join("slow-writer");
    exe(&slow, "#!/bin/sh\nsleep 3\n");
    let (halted, console) = watch_with("corrupted", &slow, &run);
    assert!(halted, "{console}");
    assert_eq!(console.matches("FATAL").count(), 1, "{console}");
}

/// A fresh audit partition opened by the real writer (age and openssl of
/// the host): (folder, partition, secret key, the writer's run folder).
fn open_trail() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    testkit::tool("age", "age");
    testkit::tool("openssl", "openssl");
    let d = tempfile::tempdir().unwrap();
    let w = d.path();
    let key = w.join("audit.sec");
    let keygen = |args: &[&std::ffi::OsStr]| {
        let mut c = cairn::host::runner::command("age-keygen");
        c.args(args);
        cairn::host::runner::output("test: age-keygen", c).unwrap()
    };
    keygen(&["-o".as_ref(), key.as_os_str()]);
    let public = keygen(&["-y".as_ref(), key.as_os_str()]);
    std::fs::write(w.join("audit.pub"), public.stdout).unwrap();
    let part = w.join("audit.part");
    let mut h = b"cairn-audit v1\n".to_vec();
    h.resize(1 << 20, 0);
    std::fs::write(&part, h).unwrap();
    let run = w.join("audit-run");
    let mut open = cairn::host::runner::command("sh");
    open.arg(guest("cairn-audit"))
        .arg("open")
        .arg(&part)
        .arg("release=t");
    open.env("CAIRN_AUDIT_RUN", &run)
        .env("CAIRN_AUDIT_RECIPIENT", w.join("audit.pub"))
        .env("CAIRN_AUDIT_TPM_DEV", w.join("no-tpm"));
    cairn::host::runner::output("test: cairn-audit open", open).unwrap();
    (d, part, key, run)
}

fn guest(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("guest")
        .join(name)
}

/// One audit event as kube-apiserver writes it (Go's encoding/json field
/// order), `body` as its requestObject.
fn kube_event(
    stage: &str,
    verb: &str,
    user: &str,
    reference: &str,
    code: u16,
    body: &str,
) -> String {
    format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Request","auditID":"5b1c","stage":"{stage}","requestURI":"/api/v1/namespaces/default/configmaps?fieldManager=kubectl","verb":"{verb}","user":{{"username":"{user}","groups":["system:masters","system:authenticated"]}},"impersonatedUser":{{"username":"someone-else"}},"sourceIPs":["10.0.2.15"],"userAgent":"kubectl/v1.37.2","objectRef":{reference},"responseStatus":{{"metadata":{{}},"code":{code}}},"requestObject":{body},"requestReceivedTimestamp":"2026-12-07T19:00:00.000000Z","stageTimestamp":"2026-12-07T19:00:00.010000Z","annotations":{{"authorization.k8s.io/decision":"allow"}}}}"#
    )
}

/// The cluster API recorder (guest/cairn-audit-cluster) keeps user, verb,
/// resource, namespace, name and response code of writes and refusals,
/// never a body; at most 16 samples a record, and at most CAP records a
/// boot. Controls: reads and unfinished stages are not recorded, a batch
/// under the bounds keeps every event, and the body's text is findable
/// in the input.
#[test]
fn the_cluster_recorder_keeps_who_did_what_never_the_body_and_is_bounded() {
    let (d, part, key, run) = open_trail();
    let cm =
        r#"{"resource":"configmaps","namespace":"default","name":"web-config","apiVersion":"v1"}"#;
    let body = r#"{"kind":"ConfigMap","metadata":{"name":"decoy-name","namespace":"decoy-ns"},"data":{"password":"s3cret-body-text","code":599}}"#;
    let lines = [
        kube_event(
            "ResponseComplete",
            "create",
            "kubernetes-admin",
            cm,
            201,
            body,
        ),
        // A read: not recorded.
        kube_event("ResponseComplete", "get", "system:node:n1", cm, 200, "null"),
        // An unfinished stage: not recorded (the completed one is).
        kube_event(
            "ResponseStarted",
            "delete",
            "kubernetes-admin",
            cm,
            200,
            "null",
        ),
        // A refused read: recorded.
        kube_event(
            "ResponseComplete",
            "list",
            "system:anonymous",
            r#"{"resource":"secrets","namespace":"kube-system","apiVersion":"v1"}"#,
            403,
            "null",
        ),
        kube_event(
            "ResponseComplete",
            "patch",
            "system:node:n1",
            r#"{"resource":"nodes","name":"n1","apiVersion":"v1","subresource":"status"}"#,
            200,
            body,
        ),
        // A user name with an escaped quote: cut there (its backslash
        // replaced), never read past.
        kube_event(
            "ResponseComplete",
            "delete",
            "ev\\\"il\\u0007x",
            cm,
            200,
            "null",
        ),
    ];
    let input = d.path().join("audit.log");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    // Control: the body's text is in the input.
    assert!(std::fs::read_to_string(&input)
        .unwrap()
        .contains("s3cret-body-text"));
    let batch = |file: &Path, cap: &str| {
        let mut c = cairn::host::runner::command("sh");
        c.arg(guest("cairn-audit-cluster")).arg("batch").arg(file);
        c.env("CAIRN_AUDIT_RUN", &run)
            .env("CAIRN_AUDIT_RECIPIENT", d.path().join("audit.pub"))
            .env("CAIRN_AUDIT_WRITER", guest("cairn-audit"))
            .env("CAIRN_AUDIT_KINDS", "service firewall cluster-api")
            .env("CAIRN_AUDIT_CLUSTER_CAP", cap);
        cairn::host::runner::output("test: cairn-audit-cluster", c).unwrap();
    };
    batch(&input, "3");
    let t = cairn::release::audit::read(&part, &key).unwrap();
    let text = t.render_text();
    assert!(t.first_bad.is_none(), "{text}");
    let r = t.boots[0].records.last().unwrap();
    assert_eq!(r.kind, "cluster-api", "{text}");
    assert_eq!(
        (r.get("events"), r.get("refused")),
        (Some("4"), Some("1")),
        "{text}"
    );
    assert_eq!(
        r.get("event.0"),
        Some("kubernetes-admin create configmaps default web-config 201"),
        "{text}"
    );
    assert_eq!(
        r.get("event.1"),
        Some("system:anonymous list secrets kube-system - 403"),
        "{text}"
    );
    assert_eq!(
        r.get("event.2"),
        Some("system:node:n1 patch nodes/status - n1 200"),
        "{text}"
    );
    assert_eq!(
        r.get("event.3"),
        Some("ev_ delete configmaps default web-config 200"),
        "{text}"
    );
    assert_eq!((r.get("omitted"), r.get("capped")), (None, None), "{text}");
    for clear in ["s3cret", "decoy", "599", "someone-else", "10.0.2.15"] {
        assert!(!text.contains(clear), "{clear}: {text}");
    }

    // 40 writes with a 300-character name: 16 samples, each cut.
    let long = "n".repeat(300);
    let many: Vec<String> = (0..40)
        .map(|i| {
            let reference = format!(r#"{{"resource":"pods","namespace":"ns{i}","name":"{long}"}}"#);
            kube_event(
                "ResponseComplete",
                "create",
                "kubernetes-admin",
                &reference,
                201,
                "null",
            )
        })
        .collect();
    let many_file = d.path().join("many.log");
    std::fs::write(&many_file, many.join("\n") + "\n").unwrap();
    for _ in 0..4 {
        batch(&many_file, "3");
    }
    let t = cairn::release::audit::read(&part, &key).unwrap();
    let text = t.render_text();
    assert!(t.first_bad.is_none(), "{text}");
    let recs: Vec<_> = t.boots[0]
        .records
        .iter()
        .filter(|r| r.kind == "cluster-api")
        .collect();
    // The cap (3 here) counts every cluster-api record of the boot: the
    // first batch and two of the four; the last one says so.
    assert_eq!(recs.len(), 3, "{text}");
    let big = recs[1];
    assert_eq!(
        (big.get("events"), big.get("omitted")),
        (Some("40"), Some("24")),
        "{text}"
    );
    let samples: Vec<_> = big
        .fields
        .iter()
        .filter(|(k, _)| k.starts_with("event."))
        .collect();
    assert_eq!(samples.len(), 16, "{text}");
    assert!(samples.iter().all(|(_, v)| v.len() <= 180), "{text}");
    assert_eq!(recs[1].get("capped"), None, "{text}");
    assert_eq!(recs[2].get("capped"), Some("1"), "{text}");
    let recorded = std::fs::read_to_string(run.join("cluster.recorded")).unwrap();
    assert_eq!(recorded.trim(), "84");
}
