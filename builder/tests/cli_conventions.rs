//! The command-line conventions of issue #36 run as the binary: `--json`
//! on check, verify, inspect, diff and doctor parses as one JSON document
//! on stdout (text otherwise), `-q` silences progress, completions and
//! man pages are generated from the CLI definition. The releases are the
//! small real ones of tests/common/mini.rs (no image build); `build
//! --json` is covered by the offline build test (tests/offline.rs).

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

mod common;
use common::mini::{self, mini, Media, Run, RAW};

const LIMIT: Duration = Duration::from_secs(120);

fn cairn(args: &[&str]) -> Run {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    mini::cairn(&args, LIMIT)
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// stdout as exactly one JSON document (fails the test otherwise).
fn json(r: &Run) -> Value {
    serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {r:?}"))
}

const TARBALL_RECIPE: &str = "[image]\nname = \"t\"\nversion = \"1\"\n\n[base.tarball]\npath = \"root.tar\"\nsha256 = \"SHA\"\n";

fn tarball_recipe() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let tar = b"not really a tarball";
    std::fs::write(d.path().join("root.tar"), tar).unwrap();
    let sha = cairn::host::digest::Sha256::of_bytes(tar).hex();
    std::fs::write(d.path().join("r.toml"), TARBALL_RECIPE.replace("SHA", &sha)).unwrap();
    d
}

#[test]
fn check_json_and_summary() {
    let d = tarball_recipe();
    let r = d.path().join("r.toml");
    let out = cairn(&["check", p(&r), "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let v = json(&out);
    assert_eq!(v["ok"], true);
    assert_eq!(
        (v["name"].as_str(), v["version"].as_str()),
        (Some("t"), Some("1"))
    );
    assert!(v.get("summary").is_none(), "no summary unless asked: {v}");

    // --summary: defaults filled in (the recipe sets no [disk]).
    let v = json(&cairn(&["check", p(&r), "--summary", "--json"]));
    let s = &v["summary"];
    assert_eq!(s["sizes"]["disk_bytes"], 2u64 << 30, "{s}");
    assert_eq!(s["sizes"]["state_bytes"], 256u64 << 20, "{s}");
    assert_eq!(s["settings"]["kernel_package"], "linux-image-amd64");
    assert_eq!(
        s["packages"],
        Value::Null,
        "a tarball's packages are its own"
    );
    assert_eq!(s["outputs"]["media"][0], "t-1.raw");
    // The text form says the same for people.
    let t = cairn(&["check", p(&r), "--summary"]);
    assert!(
        t.stdout.contains("disk: 2.0 GiB") && t.stdout.contains("t-1.raw"),
        "{t:?}"
    );
    assert!(serde_json::from_str::<Value>(&t.stdout).is_err());

    // A Debian base: the package set is the recipe's plus cairn's own.
    std::fs::write(
        d.path().join("deb.toml"),
        "[image]\nname = \"d\"\nversion = \"2\"\n\n[base.debian]\npackages = [\"curl\"]\n\n[disk]\nsize = \"1G\"\nstate_size = \"128M\"\n",
    )
    .unwrap();
    let v = json(&cairn(&[
        "check",
        p(&d.path().join("deb.toml")),
        "--summary",
        "--json",
    ]));
    let pkgs: Vec<&str> = v["summary"]["packages"]
        .as_array()
        .expect("a package list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        pkgs.contains(&"curl") && pkgs.contains(&"systemd"),
        "{pkgs:?}"
    );
    assert_eq!(v["summary"]["sizes"]["state_bytes"], 128u64 << 20);

    // Bad input: exit 2, the error on stderr, nothing on stdout.
    std::fs::write(d.path().join("bad.toml"), "[image]\nname = 1\n").unwrap();
    let bad = cairn(&["check", p(&d.path().join("bad.toml")), "--json"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(
        bad.stdout.is_empty() && bad.stderr.contains("bad.toml:2"),
        "{bad:?}"
    );
}

#[test]
fn verify_json_ok_and_failed_and_report_still_written() {
    let m = mini(Media::RawAndQcow2);
    let report = m.tmp.path().join("evidence.json");
    let out = cairn(&[
        "verify",
        p(&m.dir),
        "--pubkey",
        p(&m.pubkey),
        "--json",
        "--report",
        p(&report),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let v = json(&out);
    assert_eq!(v["result"], "ok");
    assert_eq!(v["image"]["name"], "mini");
    assert!(v["files"].as_array().is_some_and(|f| !f.is_empty()), "{v}");
    // --report keeps working beside --json: the same evidence.
    let filed: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(filed["files"], v["files"]);

    // Control: one flipped byte of the raw is a failed check, still JSON.
    common::flip_byte(&m.dir.join(RAW), 4096);
    let out = cairn(&["verify", p(&m.dir), "--pubkey", p(&m.pubkey), "--json"]);
    assert_eq!(out.code, 1, "{out:?}");
    let v = json(&out);
    assert_eq!(v["result"], "failed");
    assert!(out.stderr.starts_with("FAILED "), "{out:?}");
}

#[test]
fn inspect_and_diff_json() {
    let a = mini(Media::None);
    let v = json(&cairn(&["inspect", p(&a.dir), "--json"]));
    assert_eq!(v["name"], "mini", "{v}");

    // The same folder twice: no difference, exit 0.
    let same = cairn(&["diff", p(&a.dir), p(&a.dir), "--json"]);
    assert_eq!(same.code, 0, "{same:?}");
    let d = json(&same);
    assert_eq!(d["image"], Value::Null);

    // A newer version: exit 1 (they differ), and the JSON says how.
    let mut b = mini(Media::None);
    b.manifest["image"]["version"] = "2".into();
    b.write_manifest();
    let differ = cairn(&["diff", p(&a.dir), p(&b.dir), "--json"]);
    assert_eq!(differ.code, 1, "{differ:?}");
    let d = json(&differ);
    assert_eq!(d["image"]["b"], "mini 2", "{d}");
}

#[test]
fn doctor_json_agrees_with_its_exit_code() {
    let out = cairn(&["doctor", "--json"]);
    let v = json(&out);
    let items = v["items"].as_array().expect("items");
    assert!(items.iter().any(|i| i["name"] == "mksquashfs"), "{v}");
    let missing = items
        .iter()
        .any(|i| i["found"] == false && i["required"] == true);
    assert_eq!(v["ok"], !missing);
    assert_eq!(out.code, if missing { 1 } else { 0 }, "{out:?}");
}

/// `cairn [FLAGS] flash RAW TARGET --to-file`: a job with progress.
fn flash(m: &mini::Mini, flags: &[&str], target: &str) -> Run {
    let raw = m.dir.join(RAW);
    let target = m.tmp.path().join(target);
    let args = [
        "flash",
        p(&raw),
        p(&target),
        "--to-file",
        "--yes",
        "--pubkey",
        p(&m.pubkey),
    ];
    cairn(&[flags, &args[..]].concat())
}

#[test]
fn quiet_silences_progress_and_plain_logs_only_summaries_of_short_jobs() {
    let m = mini(Media::RawAndQcow2);
    // Off a terminal (a pipe here): the write and the read-back each end
    // with a summary, and a job shorter than 10 s logs no percentages
    // (the old display logged every 10 %).
    let plain = flash(&m, &["--progress", "plain"], "a.img");
    assert_eq!(plain.code, 0, "{plain:?}");
    assert!(plain.stderr.contains(" in 0:0"), "{plain:?}");
    assert!(!plain.stderr.contains('%'), "{plain:?}");
    // none: the summaries only, as plain for a short job.
    let none = flash(&m, &["--progress", "none"], "b.img");
    assert_eq!(none.code, 0, "{none:?}");
    assert!(
        none.stderr.contains(" in 0:0") && !none.stderr.contains('%'),
        "{none:?}"
    );
    // -q: nothing on stderr; the result on stdout is unchanged.
    let quiet = flash(&m, &["-q"], "c.img");
    assert_eq!(quiet.code, 0, "{quiet:?}");
    assert_eq!(quiet.stderr, "", "-q printed progress");
    assert_eq!(
        quiet.stdout.lines().count(),
        plain.stdout.lines().count(),
        "{quiet:?}"
    );
    let bad = cairn(&["--progress", "sometimes", "doctor"]);
    assert_eq!(bad.code, 2, "{bad:?}");
}

#[test]
fn completions_and_man_pages_come_from_the_cli_definition() {
    for (shell, mark) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef cairn"),
        ("fish", "complete -c cairn"),
    ] {
        let out = cairn(&["completions", shell]);
        assert_eq!(out.code, 0, "{out:?}");
        assert!(
            out.stdout.contains(mark),
            "{shell}: {}",
            &out.stdout[..200.min(out.stdout.len())]
        );
        // Every command and a command's flag are offered.
        for word in ["flash", "verify", "check", "summary"] {
            assert!(out.stdout.contains(word), "{shell} lacks {word}");
        }
    }
    let bad = cairn(&["completions", "tcsh"]);
    assert_eq!(bad.code, 2, "{bad:?}");

    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("man");
    let out = cairn(&["man", "--out", p(&dir)]);
    assert_eq!(out.code, 0, "{out:?}");
    let main = std::fs::read_to_string(dir.join("cairn.1")).unwrap();
    assert!(
        main.contains(".TH cairn 1") && main.contains("\\-\\-progress"),
        "{main}"
    );
    let build = std::fs::read_to_string(dir.join("cairn-build.1")).unwrap();
    assert!(
        build.contains("\\-\\-json") && build.contains("Exit codes"),
        "{build}"
    );
    assert!(dir.join("cairn-flash.1").is_file());
    let stdout = cairn(&["man"]);
    assert_eq!(stdout.stdout, main, "cairn man prints cairn.1");
}

#[test]
fn quiet_silences_a_builds_stage_lines_but_not_its_error() {
    let d = tarball_recipe();
    let build = |flags: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(flags)
            .args(["build", "r.toml", "-o", "out", "--format", "raw"])
            .current_dir(d.path())
            .env("CAIRN_CACHE", d.path().join("cache"))
            .output()
            .expect("run cairn");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The stand-in tarball passes its pin and fails to unpack: the build
    // has printed its first stages by then.
    let (code, loud) = build(&[]);
    assert_eq!(code, Some(2), "{loud}");
    assert!(
        loud.contains("cairn: building t 1") && loud.contains("[ 1/"),
        "{loud}"
    );
    let (code, quiet) = build(&["-q"]);
    assert_eq!(code, Some(2), "{quiet}");
    assert!(!quiet.is_empty());
    assert!(
        quiet.lines().all(|l| l.starts_with("error: ")),
        "-q left more than the error: {quiet}"
    );
}

/// A reader that closes the pipe early (`cairn doctor --json | head -c0`):
/// the JSON is not wanted any more, which is neither a panic nor a failure.
#[test]
fn json_to_a_closed_pipe_is_not_a_panic() {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["doctor", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cairn");
    // Closed before doctor has probed its tools and printed.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait for cairn");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{:?}: {stderr}",
        out.status
    );
}
