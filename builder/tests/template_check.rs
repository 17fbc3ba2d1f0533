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

/// A template with every rule kind, and a team recipe within all of them.
const RULES: &str =
    "[image]\nname = \"p\"\nversion = \"1\"\n[base.debian]\npackages = [\"nftables\"]\n\
[cluster]\nruntime = \"containerd\"\n[governance]\nname = \"p\"\nversion = \"1.0\"\n\
allow = [\"images\", \"models\", \"services\", \"ingress\", \"egress\", \"overlays\"]\n\
ingress_ports = \"8081-8099\"\nmax_images = 1\nmax_models = 1\nmax_services = 1\n\
max_model_size = \"1K\"\nmax_memory = \"512M\"\nmax_cpus = 1.0\n\
capabilities = [\"CAP_NET_BIND_SERVICE\"]\nhost_network = false\nimage_sources = [\"build\"]\n\
egress = [\"10.0.0.0/8:443\"]\noverlay_paths = [\"/opt/team\"]\n";

/// Each rule kind through `cairn check`: the team recipe that breaks it is
/// refused with exit 2, one `error: team.toml:LINE:COL:` line at the
/// offending value and the rule named; the same recipe within every rule
/// checks (the control, run first).
#[test]
fn each_rule_kind_is_refused_at_its_line_and_column() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    std::fs::write(dir.join("platform.toml"), RULES).unwrap();
    let (code, _, err) = cairn(&["keygen", "platform", "--no-passphrase"], dir);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cairn(
        &["template", "sign", "platform.toml", "--key", "platform.sec"],
        dir,
    );
    assert_eq!(code, 0, "{err}");
    let sha = |f: &str| {
        cairn::host::digest::Sha256::of_file(&dir.join(f))
            .unwrap()
            .hex()
    };
    std::fs::write(dir.join("model.bin"), b"weights").unwrap();
    std::fs::write(dir.join("m2.bin"), b"more").unwrap();
    std::fs::write(dir.join("big.bin"), vec![1u8; 2048]).unwrap();
    std::fs::write(dir.join("web.tar"), b"an archive").unwrap();
    for (ov, file) in [
        ("ov", "opt/team/app.conf"),
        ("ov2", "etc/nftables.d/open.nft"),
    ] {
        let p = dir.join(ov).join(file);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }
    let good = format!(
        "overlays = [\"ov\"]\n[template]\npath = \"platform.toml\"\nsha256 = \"{}\"\nkey = \"platform.pub\"\nversion = \"1.0\"\n\
         [image]\nname = \"team\"\nversion = \"1\"\n[network]\ningress = [\"8081/tcp\"]\negress = [\"10.0.0.0/8:443\"]\n\
         [[images]]\nname = \"web\"\n[images.build]\npackages = [\"python3\"]\n\
         [[models]]\nname = \"m\"\npath = \"model.bin\"\nsha256 = \"{}\"\n\
         [[services]]\nname = \"svc\"\nimage = \"web\"\nmemory = \"256M\"\ncpus = 1.0\nmodels = [\"m\"]\n",
        sha("platform.toml"),
        sha("model.bin")
    );
    std::fs::write(dir.join("team.toml"), &good).unwrap();
    let (code, out, err) = cairn(&["check", "team.toml"], dir);
    assert_eq!(code, 0, "the control: {out} {err}");

    let model2 = format!(
        "[[models]]\nname = \"m2\"\npath = \"m2.bin\"\nsha256 = \"{}\"\n[[services]]",
        sha("m2.bin")
    );
    let archive = format!(
        "[[images]]\nname = \"web\"\narchive = \"web.tar\"\ndigest = \"sha256:{}\"\n[[models]]",
        "ab".repeat(32)
    );
    let big = format!("path = \"big.bin\"\nsha256 = \"{}\"", sha("big.bin"));
    let small = format!("path = \"model.bin\"\nsha256 = \"{}\"", sha("model.bin"));
    let web = "[[images]]\nname = \"web\"\n[images.build]\npackages = [\"python3\"]\n[[models]]";
    // (rule, replace this, with this, where the error points)
    let cases: Vec<(&str, &str, String, &str)> = vec![
        ("fixed", "[image]", "[debug]\nconsole = true\n[image]".into(), "[debug]"),
        ("ingress_ports", "8081/tcp", "22/tcp".into(), "\"22/tcp\""),
        ("egress", "[\"10.0.0.0/8:443\"]", "[\"192.168.0.0/16:443\"]".into(), "\"192.168.0.0/16:443\""),
        ("max_images", "[[models]]", "[[images]]\nname = \"web2\"\n[images.build]\npackages = [\"curl\"]\n[[models]]".into(), "\"web2\""),
        ("max_models", "[[services]]", model2, "\"m2\""),
        ("max_services", "models = [\"m\"]\n", "models = [\"m\"]\n[[services]]\nname = \"svc2\"\nimage = \"web\"\nmemory = \"16M\"\ncpus = 0.1\n".into(), "\"svc2\""),
        ("max_model_size", &small, big, "\"m\""),
        ("max_memory", "\"256M\"", "\"1G\"".into(), "\"1G\""),
        ("max_cpus", "cpus = 1.0", "cpus = 4.0".into(), "4.0"),
        ("capabilities", "cpus = 1.0", "cpus = 1.0\ncapabilities = [\"CAP_SYS_ADMIN\"]".into(), "\"CAP_SYS_ADMIN\""),
        ("host_network", "cpus = 1.0", "cpus = 1.0\nhost_network = true".into(), "\"svc\""),
        ("image_sources", web, archive, "\"web\""),
        ("overlay_paths", "[\"ov\"]", "[\"ov2\"]".into(), "\"ov2\""),
    ];
    for (rule, from, to, at) in &cases {
        assert!(good.contains(from), "{rule}: {from}");
        let text = good.replacen(from, to, 1);
        let offset = text.find(at).unwrap();
        let line = text[..offset].matches('\n').count() + 1;
        let col = offset - text[..offset].rfind('\n').map_or(0, |i| i + 1) + 1;
        std::fs::write(dir.join("team.toml"), &text).unwrap();
        let (code, out, err) = cairn(&["check", "team.toml"], dir);
        println!("{rule}: exit {code}: {}", err.trim_end());
        assert_eq!(code, 2, "{rule}: {out} {err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(lines.len(), 1, "{rule}: one problem: {err}");
        assert!(
            lines[0].starts_with(&format!("error: team.toml:{line}:{col}: ")),
            "{rule}: want team.toml:{line}:{col}: {err}"
        );
        assert!(
            lines[0].contains(&format!("(template rule `{rule}`, set at ")),
            "{rule}: {err}"
        );
    }
}
