//! The command-line contract for bad input: one line naming the problem and
//! its place, exit code 2, nothing under the output folder.

use std::path::Path;
use std::process::Command;

fn cairn(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run cairn");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = "[image]\nname = \"t\"\nversion = \"1\"\n\n[base.tarball]\npath = \"root.tar\"\nsha256 = \"SHA\"\n";

fn setup() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("root.tar"), b"not really a tarball").unwrap();
    d
}

fn build_fails(text: &str, want_place: &str, want_words: &str) {
    let d = setup();
    std::fs::write(d.path().join("r.toml"), text).unwrap();
    let (code, _out, err) = cairn(&["build", "r.toml", "-o", "out"], d.path());
    assert_eq!(code, 2, "stderr: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "want one line, got: {err}");
    assert!(lines[0].contains(want_place), "want {want_place} in: {err}");
    assert!(lines[0].contains(want_words), "want {want_words} in: {err}");
    let out = d.path().join("out");
    let leftovers = std::fs::read_dir(&out).map(|r| r.count()).unwrap_or(0);
    assert_eq!(leftovers, 0, "something was written under out/");
}

fn good_sha() -> String {
    cairn::host::digest::Sha256::of_bytes(b"not really a tarball").hex()
}

#[test]
fn unknown_key() {
    let text = GOOD
        .replace("SHA", &good_sha())
        .replace("version = \"1\"\n", "version = \"1\"\ncolour = \"red\"\n");
    build_fails(&text, "r.toml:4:1", "unknown field `colour`");
}

#[test]
fn wrong_type() {
    let text = GOOD
        .replace("SHA", &good_sha())
        .replace("version = \"1\"", "version = 1");
    build_fails(&text, "r.toml:3:11", "invalid type");
}

#[test]
fn missing_file() {
    let text = GOOD
        .replace("SHA", &good_sha())
        .replace("root.tar", "gone.tar");
    build_fails(&text, "r.toml:6:8", "not found");
}

#[test]
fn digest_mismatch() {
    let text = GOOD.replace("SHA", &"0".repeat(64));
    build_fails(&text, "r.toml:7:10", "but the recipe pins");
}

#[test]
fn control_the_same_recipe_with_the_right_pin_checks_clean() {
    let d = setup();
    std::fs::write(d.path().join("r.toml"), GOOD.replace("SHA", &good_sha())).unwrap();
    let (code, out, err) = cairn(&["check", "r.toml"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn doctor_names_packages() {
    let d = tempfile::tempdir().unwrap();
    let (_code, out, _err) = cairn(&["doctor"], d.path());
    for pkg in [
        "mmdebstrap",
        "squashfs-tools",
        "cryptsetup-bin",
        "mtools",
        "fdisk",
        "ovmf",
    ] {
        assert!(out.contains(pkg), "doctor does not name {pkg}: {out}");
    }
}

/// `cairn cache gc` with CAIRN_CACHE pointing at `cache`.
fn gc(args: &[&str], cache: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["cache", "gc"])
        .args(args)
        .env("CAIRN_CACHE", cache)
        .output()
        .expect("run cairn");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn cache_gc_needs_a_recipe_or_all() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("cache");
    let cache = cairn::inputs::cache::Cache::open(&root).unwrap();
    let blob = cache.put_reader(&b"a cached input"[..], None).unwrap();

    // Bare `gc` used to empty the cache; now it is a usage error.
    let (code, text) = gc(&[], &root);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("--keep-recipe"), "{text}");
    assert!(cache.contains(&blob), "bare gc removed a blob");
    let (code, text) = gc(&["--all", "--keep-recipe", "r.toml"], &root);
    assert_eq!(code, 2, "{text}");
    assert!(cache.contains(&blob), "a refused gc removed a blob");

    // A recipe without a lock is refused before anything is removed.
    let (code, text) = gc(&["--keep-recipe", "/nonexistent/r.toml"], &root);
    assert_eq!(code, 2, "{text}");
    assert!(cache.contains(&blob));

    // `--all` says so, and empties it.
    let (code, text) = gc(&["--all"], &root);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("removed 1 files"), "{text}");
    assert!(!cache.contains(&blob));
}

#[test]
fn out_naming_a_file_is_refused_and_the_file_kept() {
    let d = setup();
    std::fs::write(d.path().join("r.toml"), GOOD.replace("SHA", &good_sha())).unwrap();
    std::fs::write(d.path().join("out"), b"keep me").unwrap();
    let (code, _out, err) = cairn(&["build", "r.toml", "-o", "out"], d.path());
    assert_eq!(code, 2, "stderr: {err}");
    let first = err.lines().next().unwrap_or("");
    assert!(
        first.contains("-o out: exists and is not a folder"),
        "{err}"
    );
    assert_eq!(std::fs::read(d.path().join("out")).unwrap(), b"keep me");
}

#[test]
fn shim_without_a_secure_boot_key_is_bad_input_and_with_one_gets_past_it() {
    let text = GOOD.replace("SHA", &good_sha()) + "\n[boot]\nshim = true\n";
    build_fails(
        &text,
        "r.toml:10:8",
        "[boot] shim = true needs --sb-key KEY --sb-cert CERT",
    );
    // Control: `check` needs no key, and a build with one goes on to the
    // next step (here the fake base tarball, which it cannot read).
    let d = setup();
    std::fs::write(d.path().join("r.toml"), &text).unwrap();
    let (code, _out, err) = cairn(&["check", "r.toml"], d.path());
    assert_eq!(code, 0, "{err}");
    let (code, _out, err) = cairn(&["keygen", "--secure-boot", "sb"], d.path());
    assert_eq!(code, 0, "{err}");
    let (code, _out, err) = cairn(
        &[
            "build",
            "r.toml",
            "-o",
            "out",
            "--sb-key",
            "sb.sb.key",
            "--sb-cert",
            "sb.sb.crt",
        ],
        d.path(),
    );
    assert_ne!(code, 0);
    assert!(!err.contains("[boot] shim"), "{err}");
}

#[test]
fn build_help_names_the_environment_it_reads() {
    let d = tempfile::tempdir().unwrap();
    let (code, out, err) = cairn(&["build", "--help"], d.path());
    assert_eq!(code, 0, "{err}");
    for var in [
        "CAIRN_CACHE",
        "CAIRN_NO_STAGE_CACHE",
        "CAIRN_TREES=disk",
        "SOURCE_DATE_EPOCH",
    ] {
        assert!(
            out.contains(var),
            "`cairn build --help` does not name {var}:\n{out}"
        );
    }
    // Control: the short help stays short.
    let (_, short, _) = cairn(&["build", "-h"], d.path());
    assert!(!short.contains("CAIRN_TREES"), "{short}");
}

/// `[audit]` on the read-only ISO (docs/audit.md): an ISO-only build is
/// refused (the trail would be on no medium), so is an ISO of an
/// `on_full = "halt"` recipe (it would halt at every boot), each at its
/// line:col, exit 2, nothing written. Controls: `check` passes (it does not
/// know the formats), and with a disk format (halt: without the ISO) the
/// build gets past this check to the next step.
#[test]
fn audit_on_the_iso_alone_or_with_halt_is_refused_at_its_line() {
    let key = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\n";
    let stop = GOOD.replace("SHA", &good_sha()) + "\n[audit]\nkey = \"audit.pub\"\n";
    let halt = stop.clone() + "on_full = \"halt\"\n";
    let run = |text: &str, args: &[&str]| {
        let d = setup();
        std::fs::write(d.path().join("audit.pub"), key).unwrap();
        std::fs::write(d.path().join("r.toml"), text).unwrap();
        let (code, _out, err) = cairn(&["check", "r.toml"], d.path());
        assert_eq!(code, 0, "check: {err}");
        let mut all = vec!["build", "r.toml", "-o", "out"];
        all.extend(args);
        let (code, _out, err) = cairn(&all, d.path());
        let leftovers = std::fs::read_dir(d.path().join("out"))
            .map(|r| r.count())
            .unwrap_or(0);
        (code, err, leftovers)
    };
    let (code, err, left) = run(&stop, &["--format", "iso"]);
    assert_eq!((code, left), (2, 0), "{err}");
    assert!(
        err.contains("r.toml:10:7: [audit] keeps its trail in a partition of the disk media"),
        "{err}"
    );
    let (code, err, left) = run(&halt, &[]);
    assert_eq!((code, left), (2, 0), "{err}");
    assert!(
        err.contains("r.toml:11:11: [audit] on_full = \"halt\" halts a node that cannot record"),
        "{err}"
    );
    // Controls: a disk beside the ISO (stop), and halt without the ISO,
    // get past this check.
    for (text, args) in [
        (&stop, &["--format", "raw,iso"]),
        (&halt, &["--format", "raw,qcow2"]),
    ] {
        let (code, err, _) = run(text, args);
        assert_ne!(code, 0);
        assert!(!err.contains("[audit]"), "{err}");
    }
}

/// `cairn site token`: two TOML lines, a bootstrap token
/// (`[a-z0-9]{6}.[a-z0-9]{16}`) and its expiry `--days` ahead (UTC,
/// `YYYY-MM-DDTHH:MM:SSZ`); a fresh token each run; days outside 1-365
/// refused with exit 2. `--help` shows an example.
#[test]
fn site_token_prints_a_token_and_its_expiry() {
    let d = tempfile::tempdir().unwrap();
    let token = |args: &[&str]| {
        let (code, out, err) = cairn(args, d.path());
        assert_eq!(code, 0, "{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        let t = lines[0]
            .strip_prefix("join_token = \"")
            .and_then(|l| l.strip_suffix('"'))
            .unwrap_or_else(|| panic!("{out}"));
        let (id, secret) = t.split_once('.').unwrap_or_else(|| panic!("{out}"));
        let lower = |s: &str| {
            s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        };
        assert!(
            id.len() == 6 && secret.len() == 16 && lower(id) && lower(secret),
            "{out}"
        );
        let e = lines[1]
            .strip_prefix("join_expires = \"")
            .and_then(|l| l.strip_suffix("Z\""))
            .unwrap_or_else(|| panic!("{out}"));
        assert_eq!(e.len(), 19, "{out}");
        (t.to_string(), e.to_string())
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (a, expires) = token(&["site", "token", "--days", "7"]);
    let (b, _) = token(&["site", "token"]);
    assert_ne!(a, b, "two runs gave the same token");
    // The expiry is 7 days ahead: its date is that of now + 7 days (or the
    // next, across midnight while the test ran).
    let days = |t: u64| {
        let out = Command::new("date")
            .args(["-u", "-d", &format!("@{t}"), "+%Y-%m-%d"])
            .output()
            .expect("date");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let date = &expires[..10];
    assert!(
        date == days(now + 7 * 86_400) || date == days(now + 7 * 86_400 + 60),
        "{expires}"
    );
    // Control for the range: 0 and 366 days are refused.
    for bad in ["0", "366"] {
        let (code, _, err) = cairn(&["site", "token", "--days", bad], d.path());
        assert_eq!(code, 2, "{err}");
    }
    let (code, help, _) = cairn(&["site", "token", "--help"], d.path());
    assert_eq!(code, 0);
    assert!(help.contains("cairn site token --days 7"), "{help}");
}

/// `cairn site sign` of a cluster node's file (issue 33): a `join_expires`
/// already past is refused at its line, exit 2, no signature; control: a
/// later one is signed and the node's role and name printed; a role the
/// recipe's `[cluster] roles` lacks is refused at its line.
#[test]
fn site_sign_refuses_an_expired_token_and_prints_the_role() {
    let d = setup();
    let good = GOOD.replace("SHA", &good_sha());
    let m = d.path().join("mod");
    std::fs::create_dir(&m).unwrap();
    for f in ["go.mod", "go.sum", "build.sh"] {
        std::fs::write(m.join(f), "x").unwrap();
    }
    let (code, _, err) = cairn(&["keygen", "--no-passphrase", "sites"], d.path());
    assert_eq!(code, 0, "{err}");
    let recipe = |roles: &str| {
        format!(
            "{good}[cluster]\nruntime = \"kubernetes\"\nsources = \"mod\"\nroles = {roles}\n\
             [site]\nallow = [\"hostname\", \"role\", \"server\", \"join_token\", \"join_expires\"]\n\
             key = \"sites.pub\"\n"
        )
    };
    std::fs::write(d.path().join("r.toml"), recipe("[\"server\", \"agent\"]")).unwrap();
    let site = |expires: &str| {
        std::fs::write(
            d.path().join("a.toml"),
            format!(
                "name = \"a\"\nserial = \"1\"\nhostname = \"agent-1\"\nrole = \"agent\"\n\
                 server = \"10.0.0.2\"\njoin_token = \"abcdef.0123456789abcdef\"\n\
                 join_expires = \"{expires}\"\n"
            ),
        )
        .unwrap();
    };
    let sign = || {
        cairn(
            &[
                "site",
                "sign",
                "a.toml",
                "--key",
                "sites.sec",
                "--recipe",
                "r.toml",
            ],
            d.path(),
        )
    };
    site("2001-01-01T00:00:00Z");
    let (code, _, err) = sign();
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("a.toml:7:16: join_expires \"2001-01-01T00:00:00Z\" is in the past"),
        "{err}"
    );
    assert!(!d.path().join("a.toml.sig").exists());
    // Control: a future expiry is signed; the role and node are printed.
    site("2999-01-01T00:00:00Z");
    let (code, out, err) = sign();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("; role agent, node agent-1"), "{out}");
    assert!(d.path().join("a.toml.sig").exists());
    // The recipe lists server only: the agent's file is refused at its role.
    std::fs::write(d.path().join("r.toml"), recipe("[\"server\"]")).unwrap();
    let (code, _, err) = sign();
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("a.toml:4:8: role `agent` is not one of this release's [cluster] roles"),
        "{err}"
    );
}
