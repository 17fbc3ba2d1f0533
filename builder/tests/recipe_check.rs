//! Hostile recipes through the command line: `cairn check`, `cairn lock`
//! and `cairn build` share one validation pass, so each refuses the same
//! recipe with exit 2 and the same first line (`error: FILE:LINE:COL: ...`),
//! before any tool runs (a hook in the mirror never fires) and with nothing
//! under `-o`.

use std::path::Path;
use std::process::Command;

fn cairn(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .current_dir(cwd)
        // The test's own cache: nothing lands in the user's.
        .env("CAIRN_CACHE", cwd.join("cache"))
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .expect("run cairn");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const HEAD: &str = "[image]\nname = \"t\"\nversion = \"1\"\n[base.debian]\n";

/// Every command that loads a recipe refuses `text` with exit 2 and a first
/// line naming `place` and starting its message with `words`.
fn refused_everywhere(text: &str, place: &str, words: &str, setup: impl Fn(&Path)) {
    let d = tempfile::tempdir().unwrap();
    setup(d.path());
    std::fs::write(d.path().join("r.toml"), text).unwrap();
    for args in [
        &["check", "r.toml"][..],
        &["lock", "r.toml"][..],
        &["build", "r.toml", "-o", "out"][..],
    ] {
        let (code, out, err) = cairn(args, d.path());
        assert_eq!(code, 2, "cairn {args:?}: stdout {out} stderr {err}");
        let first = err.lines().next().unwrap_or("");
        let want = format!("error: r.toml:{place}: {words}");
        assert!(
            first.starts_with(&want),
            "cairn {args:?}: want a first line starting with {want:?}, got: {err}"
        );
    }
    assert!(
        !d.path().join("SENTINEL").exists(),
        "a command in the recipe ran"
    );
    let leftovers = std::fs::read_dir(d.path().join("out"))
        .map(|r| r.count())
        .unwrap_or(0);
    assert_eq!(leftovers, 0, "something was written under out/");
    assert!(
        !d.path().join("r.toml.lock").exists(),
        "a lock was written for a refused recipe"
    );
}

fn nothing(_: &Path) {}

#[test]
fn mirror_with_a_setup_hook_is_refused_by_check_lock_and_build() {
    refused_everywhere(
        &format!("{HEAD}mirror = \"--setup-hook=touch SENTINEL\"\n"),
        "5:10",
        "[base.debian] mirror \"--setup-hook=touch SENTINEL\" is not an http:// or https:// URL",
        nothing,
    );
}

#[test]
fn suite_with_a_newline_is_refused_by_check_lock_and_build() {
    refused_everywhere(
        &format!("{HEAD}suite = \"bookworm\\ndeb file:/ x main\"\n"),
        "5:9",
        "[base.debian] suite",
        nothing,
    );
}

#[test]
fn shell_opening_cmdline_word_is_refused() {
    refused_everywhere(
        &format!("{HEAD}[boot]\ncmdline = [\"rdinit=/bin/sh\"]\n"),
        "6:12",
        "cmdline word \"rdinit=/bin/sh\" is refused in a production image",
        nothing,
    );
}

#[test]
fn egress_to_everything_without_allow_wide_is_refused() {
    refused_everywhere(
        &format!("{HEAD}[network]\negress = [\"0.0.0.0/0:443\"]\n"),
        "6:11",
        "egress rule \"0.0.0.0/0:443\" opens /0",
        nothing,
    );
}

#[test]
fn duplicate_service_is_refused() {
    let svc = "[[services]]\nname = \"s\"\nimage = \"web\"\n";
    refused_everywhere(
        &format!(
            "{HEAD}[cluster]\nruntime = \"containerd\"\n[[images]]\nname = \"web\"\n\
             [images.build]\npackages = [\"busybox\"]\n{svc}{svc}"
        ),
        "15:8",
        "service \"s\" is listed twice",
        nothing,
    );
}

#[test]
fn overlay_with_a_setuid_file_is_refused_at_check_time() {
    use std::os::unix::fs::PermissionsExt;
    refused_everywhere(
        &format!("overlays = [\"ov\"]\n{HEAD}"),
        "1:13",
        "overlay \"ov\": bin/su is set-uid/set-gid",
        |d| {
            std::fs::create_dir_all(d.join("ov/bin")).unwrap();
            std::fs::write(d.join("ov/bin/su"), b"x").unwrap();
            std::fs::set_permissions(d.join("ov/bin/su"), std::fs::Permissions::from_mode(0o4755))
                .unwrap();
        },
    );
}

#[test]
fn control_the_valid_forms_check_clean() {
    let d = tempfile::tempdir().unwrap();
    let text = format!(
        "{HEAD}mirror = \"http://deb.debian.org/debian\"\nsuite = \"bookworm\"\n\
         [boot]\ncmdline = [\"quiet\", \"rd.break\"]\n\
         [network]\negress = [\"10.0.0.0/8:443\", {{ rule = \"0.0.0.0/0:443\", allow_wide = true }}]\n\
         [debug]\ncmdline = [\"rd.break\"]\n"
    );
    std::fs::write(d.path().join("r.toml"), text).unwrap();
    let (code, out, err) = cairn(&["check", "r.toml"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("r.toml: ok (t 1)"), "{out}");
}
