//! Team recipes on a signed template through the command line: `cairn
//! template sign`, then `cairn check`, `cairn lock` and `cairn build`
//! refuse a broken rule with exit 2 and `team.toml:LINE:COL`, naming the
//! rule; the same recipe within the rule checks (the control).

use std::path::Path;
use std::process::Command;

fn cairn(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .current_dir(cwd)
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

const TEMPLATE: &str =
    "[image]\nname = \"p\"\nversion = \"1\"\n[base.debian]\npackages = [\"nftables\"]\n\
[cluster]\nruntime = \"containerd\"\n[governance]\nname = \"p\"\nversion = \"1.0\"\n\
allow = [\"images\", \"services\"]\nmax_cpus = 1.0\n";

#[test]
fn a_broken_rule_is_refused_by_check_lock_and_build() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    std::fs::write(dir.join("platform.toml"), TEMPLATE).unwrap();
    let (code, _, err) = cairn(&["keygen", "platform", "--no-passphrase"], dir);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cairn(
        &["template", "sign", "platform.toml", "--key", "platform.sec"],
        dir,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("template p 1.0"), "{out}");
    let sha = cairn::host::digest::Sha256::of_file(&dir.join("platform.toml")).unwrap();
    let team = format!(
        "[template]\npath = \"platform.toml\"\nsha256 = \"{}\"\nkey = \"platform.pub\"\nversion = \"1.0\"\n\
         [image]\nname = \"team\"\nversion = \"1\"\n[[images]]\nname = \"web\"\n[images.build]\n\
         packages = [\"python3\"]\n[[services]]\nname = \"web\"\nimage = \"web\"\ncpus = 4.0\n",
        sha.hex()
    );
    std::fs::write(dir.join("team.toml"), &team).unwrap();
    for args in [
        &["check", "team.toml"][..],
        &["lock", "team.toml"][..],
        &["build", "team.toml", "-o", "out"][..],
    ] {
        let (code, out, err) = cairn(args, dir);
        assert_eq!(code, 2, "cairn {args:?}: {out} {err}");
        assert!(
            err.starts_with("error: team.toml:16:8: service \"web\" cpus 4 is above 1 (template rule `max_cpus`, set at "),
            "cairn {args:?}: {err}"
        );
    }
    // Control: within the rule it checks.
    std::fs::write(
        dir.join("team.toml"),
        team.replace("cpus = 4.0", "cpus = 1.0"),
    )
    .unwrap();
    let (code, out, err) = cairn(&["check", "team.toml"], dir);
    assert_eq!(code, 0, "{out} {err}");
    // `cache export` loads a team recipe as build does (its template
    // checked), and goes on to the lock the export needs.
    let (code, _, err) = cairn(&["cache", "export", "x.tar", "--recipe", "team.toml"], dir);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("team.lock"), "{err}");
    // A changed byte in the template, pin updated: the signature refuses it.
    std::fs::write(
        dir.join("platform.toml"),
        TEMPLATE.replace("1.0\n", "9.0\n"),
    )
    .unwrap();
    let sha2 = cairn::host::digest::Sha256::of_file(&dir.join("platform.toml")).unwrap();
    std::fs::write(
        dir.join("team.toml"),
        team.replace(&sha.hex(), &sha2.hex())
            .replace("cpus = 4.0", "cpus = 1.0"),
    )
    .unwrap();
    let (code, _, err) = cairn(&["check", "team.toml"], dir);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("team.toml:4:7:") && err.contains("does not verify"),
        "{err}"
    );
}
