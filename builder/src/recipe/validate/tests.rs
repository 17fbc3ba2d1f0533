//! Hostile recipes, one refusal each: where it is reported (line:col) and
//! the message's first words; and controls that the valid forms pass.

use std::path::Path;

use crate::recipe::{parse, LoadEnv, Recipe, RecipeError, RecipeSource};

/// A recipe source for `text`, written as `dir/r.toml` (shared by the
/// recipe tests).
pub(crate) fn src(dir: &Path, text: &str) -> RecipeSource {
    let path = dir.join("r.toml");
    std::fs::write(&path, text).unwrap();
    RecipeSource {
        path,
        text: text.into(),
        root: std::fs::canonicalize(dir).unwrap(),
        env: LoadEnv {
            cache_root: std::fs::canonicalize(dir).unwrap().join("cache"),
            source_date_epoch: None,
            verify_signature: None,
        },
        merged: None,
    }
}

const HEAD: &str = "[image]\nname = \"t\"\nversion = \"1\"\n";

fn ok_in(dir: &Path, text: &str) -> Recipe {
    parse(&src(dir, text)).unwrap_or_else(|e| panic!("want ok, got: {e}\n{text}"))
}

fn ok(text: &str) -> Recipe {
    let d = tempfile::tempdir().unwrap();
    ok_in(d.path(), text)
}

fn err_in(dir: &Path, text: &str) -> RecipeError {
    match parse(&src(dir, text)) {
        Ok(_) => panic!("want a refusal, got ok:\n{text}"),
        Err(e) => e,
    }
}

/// The one problem of `text`: at `line:col`, its message starting with `start`.
fn refused_in(dir: &Path, text: &str, line: usize, col: usize, start: &str) {
    let e = err_in(dir, text);
    assert_eq!(e.problems.len(), 1, "want one problem, got: {e}\n{text}");
    let p = &e.problems[0];
    assert_eq!((p.line, p.col), (line, col), "{p}\n{text}");
    assert!(
        p.message.starts_with(start),
        "want a message starting with {start:?}, got: {p}"
    );
}

fn refused(text: &str, line: usize, col: usize, start: &str) {
    let d = tempfile::tempdir().unwrap();
    refused_in(d.path(), text, line, col, start);
}

fn debian(body: &str) -> String {
    format!("{HEAD}[base.debian]\n{body}")
}

// ---- [base.debian]: mirror and suite reach mmdebstrap as arguments ----

#[test]
fn mirror_that_reads_as_an_option_is_refused() {
    refused(
        &debian("mirror = \"--setup-hook=id > /tmp/x\"\n"),
        5,
        10,
        "[base.debian] mirror \"--setup-hook=id > /tmp/x\" is not an http:// or https:// URL",
    );
}

#[test]
fn mirror_with_a_newline_is_refused() {
    refused(
        &debian("mirror = \"http://deb.debian.org/debian\\ndeb file:/ x main\"\n"),
        5,
        10,
        "[base.debian] mirror: URL",
    );
}

#[test]
fn mirror_naming_a_host_file_or_file_url_is_refused() {
    for m in [
        "/etc/shadow",
        "file:///etc",
        "deb [trusted=yes] http://x/ y main",
    ] {
        refused(
            &debian(&format!("mirror = {m:?}\n")),
            5,
            10,
            "[base.debian] mirror",
        );
    }
}

#[test]
fn mirror_with_brackets_or_credentials_is_refused() {
    refused(
        &debian("mirror = \"http://x/[trusted=yes]\"\n"),
        5,
        10,
        "[base.debian] mirror \"http://x/[trusted=yes]\" contains '['",
    );
    refused(
        &debian("mirror = \"https://u:p@mirror.example/debian\"\n"),
        5,
        10,
        "[base.debian] mirror: URL \"https://u:p@mirror.example/debian\" carries credentials",
    );
}

#[test]
fn suite_that_is_not_a_plain_name_is_refused() {
    for s in [
        "--include=x",
        "bookworm main",
        "bookworm\nx",
        "../etc",
        "Bookworm",
    ] {
        refused(
            &debian(&format!("suite = {s:?}\n")),
            5,
            9,
            "[base.debian] suite",
        );
    }
}

#[test]
fn control_plain_mirror_and_suite_pass() {
    let r = ok(&debian(
        "suite = \"bookworm-backports\"\nmirror = \"https://mirror.example:8443/debian/\"\n",
    ));
    let crate::recipe::Base::Debian { suite, mirror, .. } = &r.base else {
        panic!("debian");
    };
    assert_eq!(suite, "bookworm-backports");
    assert_eq!(mirror, "https://mirror.example:8443/debian/");
}

#[test]
fn package_names_that_are_not_debian_names_are_refused_at_the_entry() {
    refused(
        &debian("packages = [\"curl\", \"--allow-downgrades\"]\n"),
        5,
        21,
        "[base.debian] package \"--allow-downgrades\" is not a Debian package name",
    );
    refused(
        &debian("packages = [\"Curl\"]\n"),
        5,
        13,
        "[base.debian] package \"Curl\" is not",
    );
}

#[test]
fn kernel_package_that_reads_as_an_option_is_refused() {
    refused(
        &format!("{}[kernel]\npackage = \"-oAPT::x=1\"\n", debian("")),
        6,
        11,
        "[kernel] package \"-oAPT::x=1\" is not a Debian package name",
    );
    // Control: a real kernel package.
    let r = ok(&format!(
        "{}[kernel]\npackage = \"linux-image-6.1.0-28-amd64\"\n",
        debian("")
    ));
    assert_eq!(r.kernel_package, "linux-image-6.1.0-28-amd64");
}

#[test]
fn built_image_packages_are_checked_at_the_entry() {
    let text = format!(
        "{}[[images]]\nname = \"a\"\n[images.build]\npackages = [\"python3\", \"x y\"]\n",
        debian("")
    );
    refused(
        &text,
        8,
        24,
        "image \"a\": package \"x y\" is not a Debian package name",
    );
}

#[test]
fn a_built_image_with_nothing_in_it_is_refused_at_its_name() {
    let text = format!(
        "{}[[images]]\nname = \"a\"\n[images.build]\nentrypoint = [\"/bin/sh\"]\n",
        debian("")
    );
    refused(
        &text,
        6,
        8,
        "image \"a\": [images.build] has no packages and essential = false",
    );
    // Control: the essential set alone is an image (a shell, coreutils).
    let text = format!(
        "{}[[images]]\nname = \"a\"\n[images.build]\nentrypoint = [\"/bin/sh\"]\nessential = true\n",
        debian("")
    );
    let r = ok(&text);
    assert!(matches!(
        &r.workloads.images[0].source,
        crate::recipe::workloads::ImageSource::Build {
            essential: true,
            ..
        }
    ));
}

// ---- [[services]] ----

fn services(extra_image: &str, body: &str) -> String {
    format!(
        "{}[cluster]\nruntime = \"containerd\"\n[[images]]\nname = \"web\"\n[images.build]\npackages = [\"busybox\"]\n{extra_image}{body}",
        debian("")
    )
}

const SVC: &str = "[[services]]\nname = \"web\"\nimage = \"web\"\n";

#[test]
fn service_env_with_a_newline_is_refused() {
    let text = services(
        "",
        &format!("{SVC}env = [\"A=1\\nExecStartPre=/bin/sh\"]\n"),
    );
    refused(&text, 14, 8, "service \"web\": env entry");
}

#[test]
fn service_args_with_a_control_character_is_refused() {
    let text = services("", &format!("{SVC}args = [\"--x\", \"a\\u0007b\"]\n"));
    refused(&text, 14, 16, "service \"web\": args entry");
}

#[test]
fn service_env_that_is_not_key_value_is_refused() {
    let text = services("", &format!("{SVC}env = [\"no-equals\"]\n"));
    refused(
        &text,
        14,
        8,
        "service \"web\": env entry \"no-equals\" is not KEY=VALUE",
    );
}

#[test]
fn two_services_with_one_name_are_refused_at_the_second() {
    let text = services("", &format!("{SVC}{SVC}"));
    refused(&text, 15, 8, "service \"web\" is listed twice (first at ");
}

#[test]
fn two_images_with_one_name_are_refused_at_the_second() {
    let text = services(
        "[[images]]\nname = \"web\"\n[images.build]\npackages = [\"curl\"]\n",
        "",
    );
    refused(&text, 12, 8, "image \"web\" is listed twice (first at ");
}

#[test]
fn two_models_with_one_name_are_refused_at_the_second() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("m.bin"), b"m").unwrap();
    let sha = crate::host::digest::Sha256::of_bytes(b"m").hex();
    let model = format!("[[models]]\nname = \"m\"\npath = \"m.bin\"\nsha256 = \"{sha}\"\n");
    let text = format!("{}{model}{model}", debian(""));
    refused_in(d.path(), &text, 10, 8, "model \"m\" is listed twice");
}

#[test]
fn a_model_named_like_the_apps_volume_is_refused() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("m.bin"), b"m").unwrap();
    let sha = crate::host::digest::Sha256::of_bytes(b"m").hex();
    let model =
        |n: &str| format!("[[models]]\nname = \"{n}\"\npath = \"m.bin\"\nsha256 = \"{sha}\"\n");
    let text = format!("{}{}", debian(""), model("apps"));
    refused_in(
        d.path(),
        &text,
        6,
        8,
        "model name \"apps\" is the root's apps volume",
    );
    // Control: another name is fine.
    let text = format!("{}{}", debian(""), model("apps2"));
    ok_in(d.path(), &text);
}

#[test]
fn unknown_capability_is_refused_with_the_list() {
    let text = services(
        "",
        &format!("{SVC}capabilities = [\"CAP_NET_BIND_SERVICE\", \"CAP_ROOT\"]\n"),
    );
    refused(
        &text,
        14,
        41,
        "service \"web\": capability \"CAP_ROOT\" is not a Linux capability",
    );
    let e = err_in(tempfile::tempdir().unwrap().path(), &text);
    assert!(
        e.problems[0]
            .message
            .contains("CAP_SYS_ADMIN, CAP_SYS_BOOT"),
        "{e}"
    );
}

#[test]
fn zero_negative_and_absurd_cpus_are_refused() {
    for (v, col) in [("0", 8), ("-1.5", 8), ("100000", 8), ("nan", 8), ("inf", 8)] {
        let text = services("", &format!("{SVC}cpus = {v}\n"));
        refused(&text, 14, col, "service \"web\": cpus");
    }
}

#[test]
fn tiny_memory_is_refused() {
    let text = services("", &format!("{SVC}memory = \"1K\"\n"));
    refused(
        &text,
        14,
        10,
        "service \"web\": memory \"1K\" is below the minimum of 16 MiB",
    );
}

#[test]
fn control_sane_service_passes() {
    let text = services(
        "",
        &format!(
            "{SVC}env = [\"PORT=8080\", \"_X=a=b\"]\nargs = [\"--port\", \"8080\"]\n\
             capabilities = [\"CAP_NET_BIND_SERVICE\"]\ncpus = 1.5\nmemory = \"16M\"\n"
        ),
    );
    let r = ok(&text);
    let s = &r.workloads.services[0];
    assert_eq!(s.cpus, Some(1.5));
    assert_eq!(s.memory, Some(16 << 20));
    assert_eq!(s.capabilities, ["CAP_NET_BIND_SERVICE"]);
    let r = ok(&services("", &format!("{SVC}cpus = 2\n")));
    assert_eq!(r.workloads.services[0].cpus, Some(2.0));
}

#[test]
fn k3s_disable_entry_with_a_newline_is_refused() {
    refused(
        &format!(
            "{}[cluster]\ndisable = [\"traefik\", \"x\\nkube-apiserver-arg:\"]\n",
            debian("")
        ),
        6,
        23,
        "[cluster] disable entry \"x\\nkube-apiserver-arg:\" is not a k3s component name",
    );
}

#[test]
fn k3s_disable_entry_k3s_does_not_know_is_refused() {
    // k3s ignores a name it does not know: "traefk" would leave traefik on.
    refused(
        &format!(
            "{}[cluster]\ndisable = [\"local-storage\", \"traefk\"]\n",
            debian("")
        ),
        6,
        29,
        "[cluster] disable entry \"traefk\" is not a component k3s can disable; use one of coredns, servicelb, traefik,",
    );
    // Control: every name k3s knows is accepted.
    ok(&format!(
        "{}[cluster]\ndisable = [{}]\n",
        debian(""),
        crate::recipe::workloads::K3S_COMPONENTS
            .iter()
            .map(|c| format!("{c:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
}

fn k3s_release_recipe(binary: &str, images: &str) -> String {
    format!(
        "{}[cluster]\nruntime = \"k3s\"\nk3s_binary = \"https://github.com/k3s-io/k3s/releases/download/{binary}/k3s\"\nk3s_binary_sha256 = \"{}\"\nk3s_images = \"https://github.com/k3s-io/k3s/releases/download/{images}/k3s-airgap-images-amd64.tar.zst\"\nk3s_images_sha256 = \"{}\"\n",
        debian(""),
        "a".repeat(64),
        "b".repeat(64)
    )
}

#[test]
fn k3s_binary_and_images_of_two_releases_are_refused() {
    refused(
        &k3s_release_recipe("v1.31.4%2Bk3s1", "v1.30.2%2Bk3s1"),
        9,
        14,
        "k3s_images is from k3s release v1.30.2+k3s1 but k3s_binary from v1.31.4+k3s1",
    );
    // Control: one release passes.
    let r = ok(&k3s_release_recipe("v1.31.4%2Bk3s1", "v1.31.4+k3s1"));
    assert!(r.workloads.k3s.is_some());
    assert_eq!(
        crate::recipe::workloads::k3s_release("recipes/k3s-artifacts/k3s-v1.31.4+k3s1/k3s"),
        Some("v1.31.4+k3s1".into())
    );
    assert_eq!(crate::recipe::workloads::k3s_release("k3s/k3s"), None);
}

#[test]
fn k3s_runs_services_as_kubernetes_does_never_on_the_host_network() {
    // The same Deployments as runtime = "kubernetes" (pipeline::kube_objects):
    // the readiness check is the pod's probe, not the node's 127.0.0.1.
    let text = format!(
        "{}[[images]]\nname = \"i\"\n[images.build]\npackages = []\nessential = true\n[[services]]\nname = \"s\"\nimage = \"i\"\nready = \"http:8080/healthz\"\n",
        k3s_release_recipe("v1.31.4%2Bk3s1", "v1.31.4+k3s1")
    );
    let r = ok(&text);
    assert_eq!(r.workloads.services[0].ready.as_ref().unwrap().port, 8080);
    // Control: host_network, which PodSecurity "restricted" refuses.
    refused(
        &format!("{text}host_network = true\n"),
        17,
        8,
        "service \"s\": host_network is not for runtime = \"k3s\"",
    );
}

// ---- [network] egress width ----

#[test]
fn egress_to_everything_needs_allow_wide() {
    refused(
        &format!("{}[network]\negress = [\"0.0.0.0/0:443\"]\n", debian("")),
        6,
        11,
        "egress rule \"0.0.0.0/0:443\" opens /0 (wider than /8)",
    );
}

#[test]
fn egress_wider_than_the_recipe_limit_needs_allow_wide() {
    let text = format!(
        "{}[network]\nwide_prefix = 16\negress = [\"10.0.0.0/8:443\"]\n",
        debian("")
    );
    refused(
        &text,
        7,
        11,
        "egress rule \"10.0.0.0/8:443\" opens /8 (wider than /16)",
    );
    // Control: /8 is within the default limit.
    let r = ok(&format!(
        "{}[network]\negress = [\"10.0.0.0/8:443\"]\n",
        debian("")
    ));
    assert!(r.network.wide_egress.is_empty());
}

#[test]
fn allow_wide_accepts_and_records_the_rule() {
    let r = ok(&format!(
        "{}[network]\negress = [\"10.1.2.0/24:80\", {{ rule = \"0.0.0.0/0:443\", allow_wide = true }}]\n",
        debian("")
    ));
    assert_eq!(r.network.egress.len(), 2);
    assert_eq!(r.network.wide_egress.len(), 1);
    assert_eq!(r.network.wide_egress[0].prefix, 0);
    // The manifest carries the policy as is: the wide rule is marked there,
    // and a policy without one serializes as before (no new key).
    let json = serde_json::to_value(&r.network).unwrap();
    assert_eq!(json["wide_egress"][0]["prefix"], 0, "{json}");
    let narrow = ok(&format!(
        "{}[network]\negress = [\"10.1.2.0/24:80\"]\n",
        debian("")
    ));
    let json = serde_json::to_value(&narrow.network).unwrap();
    assert!(json.get("wide_egress").is_none(), "{json}");
    // The table form without the flag is still refused.
    refused(
        &format!(
            "{}[network]\negress = [{{ rule = \"0.0.0.0/0:443\" }}]\n",
            debian("")
        ),
        6,
        11,
        "egress rule \"0.0.0.0/0:443\" opens /0",
    );
}

#[test]
fn egress_table_with_an_unknown_key_or_bad_types_is_refused() {
    refused(
        &format!(
            "{}[network]\negress = [{{ rule = \"10.0.0.1:1\", wide = true }}]\n",
            debian("")
        ),
        6,
        11,
        "egress entry has an unknown key `wide`",
    );
    refused(
        &format!(
            "{}[network]\negress = [{{ allow_wide = true }}]\n",
            debian("")
        ),
        6,
        11,
        "egress entry needs `rule`",
    );
    refused(
        &format!("{}[network]\negress = [443]\n", debian("")),
        6,
        11,
        "egress entry is a integer",
    );
}

#[test]
fn wide_prefix_out_of_range_is_refused() {
    refused(
        &format!("{}[network]\nwide_prefix = 0\n", debian("")),
        6,
        15,
        "[network] wide_prefix 0 is not 1-32",
    );
}

// ---- [boot] cmdline ----

fn cmdline(words: &str, debug: &str) -> String {
    format!("{}[boot]\ncmdline = [{words}]\n{debug}", debian(""))
}

#[test]
fn shell_opening_cmdline_words_are_refused() {
    for w in [
        "init=/bin/sh",
        "rdinit=/bin/sh",
        "systemd.debug_shell",
        "systemd.debug-shell=tty1",
        "rd.break",
        "rd.break=pre-mount",
        "rd.shell",
        "rd.emergency=reboot",
        "systemd.unit=emergency.target",
        "systemd.unit=rescue.target",
        "rd.systemd.unit=emergency.target",
        "emergency",
        "rescue",
        "single",
        "S",
        "s",
        "1",
        "-b",
        "break=top",
        "break",
        "systemd.confirm_spawn=1",
        "systemd.wants=debug-shell.service",
        "systemd.mask=cairn-firewall.service",
        "systemd.run=/bin/sh",
        "systemd.gpt_auto=1",
    ] {
        refused(
            &cmdline(&format!("\"quiet\", {w:?}"), ""),
            6,
            21,
            &format!("cmdline word {w:?} is refused in a production image"),
        );
    }
}

#[test]
fn cairn_words_stay_reserved_even_with_debug() {
    refused(
        &cmdline("\"cairn.state=ram\"", "[debug]\ncmdline = true\n"),
        6,
        12,
        "cmdline word \"cairn.state=ram\" is reserved",
    );
}

#[test]
fn control_harmless_words_pass_and_debug_lets_named_words_in() {
    for w in [
        "quiet",
        "loglevel=3",
        "console=ttyS1",
        "init_on_free=1",
        "2",
        "single-user-ish",
        "systemd.log_level=debug",
    ] {
        let r = ok(&cmdline(&format!("{w:?}"), ""));
        assert_eq!(r.cmdline_extra, [w]);
        assert!(r.debug_cmdline.is_empty());
    }
    let r = ok(&cmdline(
        "\"rd.break\", \"quiet\"",
        "[debug]\ncmdline = [\"rd.break\"]\n",
    ));
    assert_eq!(r.cmdline_extra, ["rd.break", "quiet"]);
    assert_eq!(r.debug_cmdline, ["rd.break"]);
    let r = ok(&cmdline(
        "\"init=/bin/sh\", \"S\"",
        "[debug]\ncmdline = true\n",
    ));
    assert_eq!(r.debug_cmdline, ["init=/bin/sh", "S"]);
    // A list allows exactly the words it names.
    refused(
        &cmdline(
            "\"rd.break\", \"rd.shell\"",
            "[debug]\ncmdline = [\"rd.break\"]\n",
        ),
        6,
        24,
        "cmdline word \"rd.shell\" is refused",
    );
    // `false` allows nothing.
    refused(
        &cmdline("\"rd.break\"", "[debug]\ncmdline = false\n"),
        6,
        12,
        "cmdline word \"rd.break\" is refused",
    );
}

#[test]
fn debug_cmdline_of_the_wrong_type_is_refused() {
    refused(
        &cmdline("\"quiet\"", "[debug]\ncmdline = \"yes\"\n"),
        8,
        11,
        "[debug] cmdline is a string;",
    );
}

// ---- folders a recipe names ----

#[test]
fn overlay_with_a_setuid_file_is_refused_at_the_entry() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let ov = d.path().join("ov/usr/bin");
    std::fs::create_dir_all(&ov).unwrap();
    std::fs::write(ov.join("su"), b"x").unwrap();
    std::fs::set_permissions(ov.join("su"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    let text = format!("overlays = [\"ok\", \"ov\"]\n{}", debian(""));
    std::fs::create_dir(d.path().join("ok")).unwrap();
    refused_in(
        d.path(),
        &text,
        1,
        19,
        "overlay \"ov\": usr/bin/su is set-uid/set-gid",
    );
    // Control: the same file without the bit passes; links are fine in overlays.
    std::fs::set_permissions(ov.join("su"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", ov.join("link")).unwrap();
    let r = ok_in(d.path(), &text);
    assert_eq!(r.overlays.len(), 2);
}

/// An overlay may not carry a file cairn writes itself (it would be
/// replaced without a word). Control: the same overlay without it passes,
/// and containerd's config is cairn's only with the containerd runtime.
#[test]
fn overlay_with_a_file_cairn_writes_is_refused_at_the_entry() {
    let d = tempfile::tempdir().unwrap();
    let ov = d.path().join("ov");
    std::fs::create_dir_all(ov.join("etc/containerd")).unwrap();
    std::fs::write(ov.join("etc/motd"), b"hi\n").unwrap();
    let text = format!("overlays = [\"ov\"]\n{}", debian(""));
    assert_eq!(ok_in(d.path(), &text).overlays.len(), 1, "control");
    for (rel, start) in [
        (
            "etc/hostname",
            "overlay \"ov\": etc/hostname would be replaced: cairn writes it from [image] name",
        ),
        ("etc/hosts", "overlay \"ov\": etc/hosts would be replaced"),
        (
            "etc/resolv.conf",
            "overlay \"ov\": etc/resolv.conf would be replaced",
        ),
        (
            "etc/machine-id",
            "overlay \"ov\": etc/machine-id would be replaced",
        ),
        (
            "usr/lib/cairn/x",
            "overlay \"ov\": usr/lib/cairn is cairn's own folder",
        ),
    ] {
        let f = ov.join(rel);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, b"x\n").unwrap();
        refused_in(d.path(), &text, 1, 13, start);
        std::fs::remove_file(&f).unwrap();
    }
    std::fs::remove_dir_all(ov.join("usr")).unwrap();
    std::fs::write(ov.join("etc/containerd/config.toml"), b"version = 2\n").unwrap();
    // No runtime: containerd's config is the overlay's to give.
    assert_eq!(ok_in(d.path(), &text).overlays.len(), 1);
    let text = format!(
        "overlays = [\"ov\"]\n{}\n[cluster]\nruntime = \"containerd\"\n",
        debian("")
    );
    refused_in(
        d.path(),
        &text,
        1,
        13,
        "overlay \"ov\": etc/containerd/config.toml would be replaced: cairn writes containerd's configuration",
    );
}

fn mkfifo(p: &Path) {
    crate::host::sys::mkfifo(p, 0o644).unwrap_or_else(|e| panic!("mkfifo {}: {e}", p.display()));
}

#[test]
fn overlay_with_a_fifo_is_refused_at_the_entry() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("ov/etc")).unwrap();
    mkfifo(&d.path().join("ov/etc/pipe"));
    let text = format!("overlays = [\"ov\"]\n{}", debian(""));
    refused_in(d.path(), &text, 1, 13, "overlay \"ov\": etc/pipe is a fifo");
}

#[test]
fn model_folder_with_a_link_out_is_refused_at_the_entry() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("model")).unwrap();
    std::fs::write(d.path().join("model/weights"), b"w").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", d.path().join("model/leak")).unwrap();
    let text = format!(
        "{}[[models]]\nname = \"m\"\npath = \"model\"\nsha256 = \"{}\"\n",
        debian(""),
        "ab".repeat(32)
    );
    refused_in(
        d.path(),
        &text,
        7,
        8,
        "model folder \"model\": leak is a link to /etc/passwd (out of the folder)",
    );
    // Control: without the link the folder passes.
    std::fs::remove_file(d.path().join("model/leak")).unwrap();
    let r = ok_in(d.path(), &text);
    assert_eq!(r.workloads.models.len(), 1);
}

#[test]
fn policy_bundle_with_a_fifo_is_refused_at_the_entry() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("policy")).unwrap();
    mkfifo(&d.path().join("policy/p"));
    let text = format!("{}[policy]\nbundle = \"policy\"\n", debian(""));
    refused_in(
        d.path(),
        &text,
        6,
        10,
        "policy bundle \"policy\": p is a fifo",
    );
}

// ---- declarations ----

/// serde's list of a table's fields, read from its unknown-field error.
fn schema_fields(text: &str) -> Vec<String> {
    let d = tempfile::tempdir().unwrap();
    let e = err_in(d.path(), text);
    let m = &e.problems[0].message;
    let m = m.strip_prefix("[template]: ").unwrap_or(m);
    assert!(m.starts_with("unknown field `zz_unknown`"), "{m}\n{text}");
    m.split('`')
        .skip(1)
        .step_by(2)
        .filter(|f| *f != "zz_unknown")
        .map(str::to_string)
        .collect()
}

#[test]
fn every_schema_field_is_declared_once_and_every_declaration_exists() {
    use crate::recipe::settings::ALL;
    let deb = debian("");
    let img = format!("{deb}[[images]]\nname = \"a\"\n");
    let cases: Vec<(&str, String)> = vec![
        ("", format!("zz_unknown = 1\n{deb}")),
        (
            "image",
            "[image]\nzz_unknown = 1\nname = \"t\"\nversion = \"1\"\n[base.debian]\n".into(),
        ),
        ("base.debian", format!("{deb}zz_unknown = 1\n")),
        (
            "base.tarball",
            format!("{HEAD}[base.tarball]\nzz_unknown = 1\n"),
        ),
        ("kernel", format!("{deb}[kernel]\nzz_unknown = 1\n")),
        ("boot", format!("{deb}[boot]\nzz_unknown = 1\n")),
        ("disk", format!("{deb}[disk]\nzz_unknown = 1\n")),
        ("state", format!("{deb}[state]\nzz_unknown = 1\n")),
        ("network", format!("{deb}[network]\nzz_unknown = 1\n")),
        ("cluster", format!("{deb}[cluster]\nzz_unknown = 1\n")),
        ("images", format!("{img}zz_unknown = 1\n")),
        (
            "images.build",
            format!("{img}[images.build]\nzz_unknown = 1\n"),
        ),
        (
            "images.build.files",
            format!("{img}[images.build]\nfiles = [{{ zz_unknown = 1 }}]\n"),
        ),
        ("models", format!("{deb}[[models]]\nzz_unknown = 1\n")),
        ("services", format!("{deb}[[services]]\nzz_unknown = 1\n")),
        ("policy", format!("{deb}[policy]\nzz_unknown = 1\n")),
        ("debug", format!("{deb}[debug]\nzz_unknown = 1\n")),
        ("limits", format!("{deb}[limits]\nzz_unknown = 1\n")),
        ("site", format!("{deb}[site]\nzz_unknown = 1\n")),
        ("governance", format!("{deb}[governance]\nzz_unknown = 1\n")),
        // A team recipe's table, read before the template is.
        ("template", "[template]\nzz_unknown = 1\n".into()),
        ("audit", format!("{deb}[audit]\nzz_unknown = 1\n")),
    ];
    let mut tables_seen = vec!["network.egress"];
    for (table, text) in &cases {
        tables_seen.push(table);
        let mut schema = schema_fields(text);
        let mut declared: Vec<String> = ALL
            .iter()
            .filter(|s| s.table == *table)
            .map(|s| s.key.to_string())
            .collect();
        if table.is_empty() {
            // Top level: tables are fields too.
            schema.retain(|f| {
                !ALL.iter()
                    .any(|s| s.table.split('.').next() == Some(f.as_str()))
            });
        }
        schema.sort();
        declared.sort();
        let n = declared.len();
        declared.dedup();
        assert_eq!(n, declared.len(), "[{table}] declares a key twice");
        assert_eq!(schema, declared, "[{table}]: schema fields vs declarations");
    }
    for s in ALL {
        assert!(
            tables_seen.contains(&s.table),
            "{} is in no table the test knows",
            s.name()
        );
    }
}

#[test]
fn declared_defaults_are_the_resolved_defaults() {
    use crate::recipe::settings::*;
    let r = ok(&debian(""));
    assert_eq!(r.source_date_epoch, IMAGE_EPOCH.int());
    assert_eq!(r.kernel_package, KERNEL_PACKAGE.text());
    assert_eq!(
        r.disk_size,
        crate::recipe::parse_size(DISK_SIZE.text()).unwrap()
    );
    assert_eq!(
        r.state_size,
        crate::recipe::parse_size(DISK_STATE_SIZE.text()).unwrap()
    );
    assert_eq!(r.ram_size, STATE_RAM_SIZE.text());
    assert_eq!(r.state_mode.as_str(), STATE_MODE.text());
    let crate::recipe::Base::Debian {
        suite,
        mirror,
        packages,
    } = &r.base
    else {
        panic!("debian");
    };
    assert_eq!(suite, DEBIAN_SUITE.text());
    assert_eq!(mirror, DEBIAN_MIRROR.text());
    assert!(packages.is_empty());
    assert_eq!(r.workloads.runtime, crate::recipe::workloads::Runtime::None);
    assert_eq!(CLUSTER_RUNTIME.text(), "none");
    for s in ALL {
        if let DefaultValue::Text(t) = s.default {
            assert!(!t.is_empty(), "{}", s.name());
        }
    }
}

// ---- the parser never panics ----

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    /// Fragments of recipe text, so the generator reaches the validators
    /// and not only TOML syntax errors.
    fn fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("[image]\nname = \"t\"\nversion = \"1\"\n".to_string()),
            Just("[base.debian]\n".to_string()),
            Just("[base.tarball]\npath = \"x\"\nsha256 = \"00\"\n".to_string()),
            Just("[network]\n".to_string()),
            Just(
                "egress = [\"0.0.0.0/0:1\", { rule = \"1.2.3.4:5\", allow_wide = true }]\n"
                    .to_string()
            ),
            Just("[boot]\ncmdline = [\"init=/x\", \"\"]\n".to_string()),
            Just("[debug]\ncmdline = [1, true]\n".to_string()),
            Just("[[services]]\nname = \"a\"\nimage = \"b\"\ncpus = -1e309\n".to_string()),
            Just(
                "[[images]]\nname = \"b\"\n[images.build]\nfiles = [{src=\"\", dest=\"/\"}]\n"
                    .to_string()
            ),
            Just("[state]\nram_size = \"99999999999999999999%\"\n".to_string()),
            Just("[disk]\nsize = \"18446744073709551615T\"\n".to_string()),
            Just("overlays = [\"..\", \"/\", \"\"]\n".to_string()),
            "[a-z_.\\[\\]\"=, 0-9{}\n\\\\-]{0,40}",
            any::<String>(),
        ]
    }

    proptest! {
        // A few seconds in `make test`; `make fuzz` sets CAIRN_FUZZ_CASES higher.
        #![proptest_config(ProptestConfig {
            cases: std::env::var("CAIRN_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(400),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        #[test]
        fn recipe_parser_never_panics(parts in proptest::collection::vec(fragment(), 0..8)) {
            let d = tempfile::tempdir().unwrap();
            let text = parts.concat();
            let _ = parse(&src(d.path(), &text));
        }
    }
}

// ---- [site] ----

#[test]
fn site_allow_names_only_settings_a_site_can_set() {
    let d = tempfile::tempdir().unwrap();
    let key = crate::recipe::site::tests_support::pub_key_text();
    std::fs::write(d.path().join("sites.pub"), key).unwrap();
    let text = debian("[site]\nallow = [\"hostname\", \"kernel\"]\nkey = \"sites.pub\"\n");
    refused_in(d.path(), &text, 6, 22, "[site] allow names \"kernel\"");
    // Control: known names pass and are recorded sorted, with the key id.
    let good = text.replace(", \"kernel\"", ", \"address\"");
    // An address needs the recipe's default to replace.
    refused_in(
        d.path(),
        &good,
        6,
        22,
        "a site can set \"address\" only when",
    );
    let good = format!("{good}[network]\naddress = \"10.0.2.15/24\"\n");
    let r = ok_in(d.path(), &good);
    let s = r.site.expect("site declaration");
    assert_eq!(s.allow, ["address", "hostname"]);
    assert_eq!(s.key_id, "0102030405060708");
}

#[test]
fn site_key_that_is_not_a_public_key_is_refused_at_the_key() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("sites.sec"), "untrusted comment: x\nAAAA\n").unwrap();
    let text = debian("[site]\nallow = []\nkey = \"sites.sec\"\n");
    refused_in(
        d.path(),
        &text,
        7,
        7,
        "site key \"sites.sec\" is not a signify",
    );
    let missing = debian("[site]\nallow = []\n");
    refused_in(d.path(), &missing, 5, 1, "missing field `key`");
}

#[test]
fn site_env_names_a_service_variable_with_a_default() {
    let d = tempfile::tempdir().unwrap();
    let key = crate::recipe::site::tests_support::pub_key_text();
    std::fs::write(d.path().join("sites.pub"), key).unwrap();
    let with = |allow: &str, env: &str| {
        services(
            "",
            &format!("{SVC}env = [{env}]\n[site]\nallow = [{allow}]\nkey = \"sites.pub\"\n"),
        )
    };
    let good = with(
        "\"hostname\", \"env.web.SITE_LABEL\"",
        "\"PORT=80\", \"SITE_LABEL=none\"",
    );
    let r = ok_in(d.path(), &good);
    assert_eq!(
        r.site.expect("site declaration").allow,
        ["env.web.SITE_LABEL", "hostname"]
    );
    assert_eq!(r.workloads.services[0].site_env, ["SITE_LABEL"]);
    // No such service, no default, a default a site file could not hold,
    // a malformed name: each refused at the allow entry.
    refused_in(
        d.path(),
        &with("\"env.db.SITE_LABEL\"", "\"SITE_LABEL=none\""),
        16,
        10,
        "\"env.db.SITE_LABEL\": the recipe has no [[services]] entry \"db\"",
    );
    refused_in(
        d.path(),
        &with("\"env.web.SITE_LABEL\"", "\"PORT=80\""),
        16,
        10,
        "\"env.web.SITE_LABEL\": service \"web\" sets no SITE_LABEL",
    );
    refused_in(
        d.path(),
        &with("\"env.web.SITE_LABEL\"", "\"SITE_LABEL=$HOME\""),
        16,
        10,
        "\"env.web.SITE_LABEL\": the service's default SITE_LABEL holds '$'",
    );
    refused_in(
        d.path(),
        &with("\"env.web.1X\"", "\"SITE_LABEL=none\""),
        16,
        10,
        "[site] allow names \"env.web.1X\": write env.SERVICE.VAR",
    );
    // Control: without the declaration the service reads no env file.
    let r = ok_in(d.path(), &with("\"hostname\"", "\"SITE_LABEL=none\""));
    assert!(r.workloads.services[0].site_env.is_empty());
}

#[test]
fn boot_allow_unsigned_and_mok_manager_are_read_with_safe_defaults() {
    let base = debian("packages = []\n");
    let r = ok(&base);
    assert!(
        !r.allow_unsigned,
        "unsigned UKIs are not accepted by default"
    );
    assert!(r.mok_manager, "MokManager ships with shim by default");
    let r = ok(&format!(
        "{base}[boot]\nallow_unsigned = true\nmok_manager = false\n"
    ));
    assert!(r.allow_unsigned && !r.mok_manager);
    // Not a bool: refused where it is written.
    let d = tempfile::tempdir().unwrap();
    let e = err_in(
        d.path(),
        &format!("{base}[boot]\nallow_unsigned = \"yes\"\n"),
    );
    assert_eq!(e.problems[0].line, 7, "{e}");
}

// ---- [site] required, min_serial, variable names (issue 31) ----

#[test]
fn site_required_and_min_serial_are_read_and_bound_to_the_image() {
    let d = tempfile::tempdir().unwrap();
    let key = crate::recipe::site::tests_support::pub_key_text();
    std::fs::write(d.path().join("sites.pub"), key).unwrap();
    let text = debian("[site]\nallow = []\nkey = \"sites.pub\"\nrequired = true\nmin_serial = 7\n");
    let s = ok_in(d.path(), &text).site.expect("site declaration");
    assert!(s.required);
    assert_eq!(s.min_serial, 7);
    assert!(!s.image.is_empty() && !s.version.is_empty());
    assert!(
        s.bind_text().contains("required 1\nmin_serial 7\n")
            || s.bind_text().contains("min_serial 7\nrequired 1\n")
    );
    // Control: unset, a site file is optional and every serial passes.
    let plain = ok_in(
        d.path(),
        &debian("[site]\nallow = []\nkey = \"sites.pub\"\n"),
    )
    .site
    .unwrap();
    assert!(!plain.required);
    assert_eq!(plain.min_serial, 0);
    // Hostile: a floor the guest's awk cannot compare exactly, a string.
    refused_in(
        d.path(),
        &debian("[site]\nallow = []\nkey = \"sites.pub\"\nmin_serial = 9999999999999999\n"),
        8,
        14,
        "min_serial must be at most",
    );
    refused_in(
        d.path(),
        &debian("[site]\nallow = []\nkey = \"sites.pub\"\nrequired = \"yes\"\n"),
        8,
        12,
        "invalid type",
    );
}

#[test]
fn site_env_names_that_steer_the_host_are_refused_at_the_allow_entry() {
    let d = tempfile::tempdir().unwrap();
    let key = crate::recipe::site::tests_support::pub_key_text();
    std::fs::write(d.path().join("sites.pub"), key).unwrap();
    let with = |var: &str| {
        services(
            "",
            &format!(
                "{SVC}env = [\"{var}=x\", \"SITE_LABEL=none\"]\n[site]\nallow = [\"env.web.{var}\"]\nkey = \"sites.pub\"\n"
            ),
        )
    };
    for (var, why) in [
        ("PATH", "chooses which programs run"),
        ("LD_PRELOAD", "steers the dynamic loader"),
        ("BASH_ENV", "makes bash run a file"),
        ("GLIBC_TUNABLES", "steers libc"),
        ("lower", "is not an upper-case name"),
    ] {
        let t = with(var);
        let e = parse(&src(d.path(), &t)).unwrap_err();
        let p = &e.problems[0];
        assert!(p.message.contains(why), "{var}: {e}");
        assert_eq!(p.line, 16, "{var}: {e}");
        assert_eq!(p.col, 10, "{var}: {e}");
    }
    // Control: the service's own setting passes.
    ok_in(d.path(), &with("SITE_LABEL"));
}

// ---- [[services]] ready (issue 37: honest readiness) ----

#[test]
fn a_readiness_check_is_read_and_bad_ones_are_refused_where_written() {
    use crate::recipe::workloads::{Probe, ReadyCheck};
    let with = |body: &str| services("", &format!("{SVC}host_network = true\n{body}"));
    let r = ok(&with("ready = \"http:8080/healthz\"\nready_timeout = 30\n"));
    assert_eq!(
        r.workloads.services[0].ready,
        Some(ReadyCheck {
            probe: Probe::Http("/healthz".into()),
            port: 8080,
            timeout: 30
        })
    );
    let r = ok(&with("ready = \"tcp:9000\"\n"));
    let c = r.workloads.services[0].ready.clone().unwrap();
    assert_eq!((c.probe, c.port, c.timeout), (Probe::Tcp, 9000, 120));
    // Control: without `ready`, nothing to wait for.
    assert_eq!(ok(&with("")).workloads.services[0].ready, None);
    for (body, col, start) in [
        (
            "ready = \"udp:53\"\n",
            9,
            "service \"web\": readiness check \"udp:53\" is not",
        ),
        (
            "ready = \"tcp:0\"\n",
            9,
            "service \"web\": readiness check \"tcp:0\": the port",
        ),
        (
            "ready = \"http:80/a b\"\n",
            9,
            "service \"web\": readiness check \"http:80/a b\": the path",
        ),
        (
            "ready = \"http:80\"\n",
            9,
            "service \"web\": readiness check \"http:80\": the path",
        ),
        (
            "ready = \"tcp:80\"\nready_timeout = 0\n",
            17,
            "service \"web\": ready_timeout 0",
        ),
    ] {
        let line = if body.contains("ready_timeout") {
            16
        } else {
            15
        };
        refused(&with(body), line, col, start);
    }
    // Without host_network the node's 127.0.0.1 is not the service's.
    refused(
        &services("", &format!("{SVC}ready = \"tcp:80\"\n")),
        14,
        9,
        "service \"web\": a readiness check probes the node's 127.0.0.1",
    );
}
