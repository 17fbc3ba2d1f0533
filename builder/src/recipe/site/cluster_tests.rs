//! The cluster node's site settings (`role`, `server`, `join_token`,
//! `join_expires`, `peers`) and the rules between them (issue 33): every
//! refusal at its line:col, each with a control that passes.

use std::path::{Path, PathBuf};

use super::*;

fn decl(roles: &[&str]) -> SiteDeclaration {
    SiteDeclaration {
        allow: [
            "address",
            "hostname",
            "role",
            "server",
            "join_token",
            "join_expires",
            "peers",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        ingress: vec![],
        key_id: "00".repeat(8),
        public_key: String::new(),
        key_path: PathBuf::new(),
        required: false,
        min_serial: 0,
        image: "tiny".into(),
        version: "1".into(),
        roles: roles.iter().map(|s| s.to_string()).collect(),
    }
}

const BIND: &str = "image = \"tiny\"\nversion = \"1\"\nserial = \"1\"\n";
const TOKEN: &str = "abcdef.0123456789abcdef";
const BOTH: &[&str] = &["server", "agent"];

/// An agent's file that passes: lines 1-7.
fn agent() -> String {
    format!(
        "name = \"a1\"\nrole = \"agent\"\naddress = \"10.0.0.3/24\"\nserver = \"10.0.0.2\"\n\
         join_token = \"{TOKEN}\"\njoin_expires = \"2027-01-31T00:00:00Z\"\n\
         peers = [\"10.0.0.2\", \"10.0.0.3\"]\n"
    )
}

fn chk(text: &str, d: &SiteDeclaration) -> Result<SiteSettings, RecipeError> {
    check(Path::new("s.toml"), &format!("{text}{BIND}"), d)
}

/// The one problem `text` has: at `line:col`, starting with `start`.
fn refused(text: &str, roles: &[&str], line: usize, col: usize, start: &str) {
    let e = match chk(text, &decl(roles)) {
        Ok(_) => panic!("want a refusal:\n{text}"),
        Err(e) => e,
    };
    assert_eq!(e.problems.len(), 1, "{e}\n{text}");
    let p = &e.problems[0];
    assert_eq!((p.line, p.col), (line, col), "{e}\n{text}");
    assert!(p.message.starts_with(start), "{e}");
    assert!(e.to_string().starts_with(&format!("s.toml:{line}:")), "{e}");
}

#[test]
fn an_agent_file_is_read_with_every_cluster_setting() {
    let s = chk(&agent(), &decl(BOTH)).unwrap();
    assert_eq!(s.role(), "agent");
    assert_eq!(s.server.as_deref(), Some("10.0.0.2"));
    assert_eq!(s.join_token.as_deref(), Some(TOKEN));
    assert_eq!(s.join_expires.as_deref(), Some("2027-01-31T00:00:00Z"));
    assert_eq!(s.peers, ["10.0.0.2", "10.0.0.3"]);
    // A file without role is a server.
    let s = chk("name = \"s\"\n", &decl(BOTH)).unwrap();
    assert_eq!((s.role.as_deref(), s.role()), (None, "server"));
}

#[test]
fn a_role_outside_the_release_roles_is_refused_at_its_line() {
    refused(
        "name = \"a\"\nrole = \"agent\"\n",
        &["server"],
        2,
        8,
        "role `agent` is not one of this release's [cluster] roles [\"server\"]; ",
    );
    refused(
        "name = \"a\"\nrole = \"master\"\n",
        BOTH,
        2,
        8,
        "role \"master\" must be",
    );
    // Control: server is one of them.
    let s = chk("name = \"a\"\nrole = \"server\"\n", &decl(&["server"])).unwrap();
    assert_eq!(s.role(), "server");
}

#[test]
fn cluster_settings_the_recipe_does_not_allow_are_refused_at_the_key() {
    let mut d = decl(BOTH);
    d.allow.retain(|a| a != "peers");
    let e = chk("name = \"a\"\n  peers = [\"10.0.0.2\"]\n", &d).unwrap_err();
    let p = &e.problems[0];
    assert_eq!((p.line, p.col), (2, 1), "{e}");
    assert!(p.message.starts_with("`peers` is not allowed"), "{e}");
    // Control: allowed, it passes.
    chk("name = \"a\"\npeers = [\"10.0.0.2\"]\n", &decl(BOTH)).unwrap();
}

#[test]
fn server_is_a_plain_ipv4_address() {
    for bad in ["10.0.0.2/24", "10.0.0.256", "010.0.0.2", "server.local", ""] {
        refused(
            &format!("name = \"a\"\nserver = \"{bad}\"\n"),
            BOTH,
            2,
            10,
            &format!("server {bad:?} is not an IPv4 address without prefix"),
        );
    }
    chk("name = \"a\"\nserver = \"10.0.0.2\"\n", &decl(BOTH)).unwrap();
}

#[test]
fn join_token_is_a_bootstrap_token() {
    for bad in [
        "abcdef0123456789abcdef",
        "ABCDEF.0123456789abcdef",
        "abcde.0123456789abcdefg",
        "abcdef.0123456789abcde",
        "abcdef.0123456789abcdef0",
        "abcdef.01234567-9abcdef",
    ] {
        assert!(!is_join_token(bad), "{bad}");
        refused(
            &format!(
                "name = \"a\"\njoin_token = \"{bad}\"\njoin_expires = \"2027-01-01T00:00:00Z\"\n"
            ),
            BOTH,
            2,
            14,
            "join_token is not a bootstrap token",
        );
    }
    assert!(is_join_token(TOKEN));
    chk(
        &format!(
            "name = \"a\"\njoin_token = \"{TOKEN}\"\njoin_expires = \"2027-01-01T00:00:00Z\"\n"
        ),
        &decl(BOTH),
    )
    .unwrap();
}

#[test]
fn join_expires_is_an_exact_utc_time() {
    for bad in [
        "2027-01-31",
        "2027-01-31T00:00:00",
        "2027-01-31T00:00:00+00:00",
        "2027-01-31 00:00:00Z",
        "2027-1-31T00:00:00Z",
        "2027-13-01T00:00:00Z",
        "2027-00-01T00:00:00Z",
        "2027-01-32T00:00:00Z",
        "2027-01-00T00:00:00Z",
        "2027-01-31T24:00:00Z",
        "2027-01-31T00:60:00Z",
        "2027-01-31T00:00:60Z",
        "2027-01-31T00:00:0aZ",
        "2027-01-31T00:00:00z",
        "+027-01-31T00:00:00Z",
    ] {
        assert_eq!(join_expires_epoch(bad), None, "{bad}");
        refused(
            &format!("name = \"a\"\njoin_expires = \"{bad}\"\n"),
            BOTH,
            2,
            16,
            "join_expires",
        );
    }
    // The seconds agree with the formatter of host::time.
    for t in [0, 951_782_400, 1_800_000_000, 4_102_444_799] {
        let s = crate::host::time::rfc3339(t);
        assert_eq!(join_expires_epoch(&s), Some(t), "{s}");
    }
    assert_eq!(
        join_expires_epoch("2027-01-31T00:00:00Z"),
        Some(1_801_353_600)
    );
    chk(
        "name = \"a\"\njoin_expires = \"2027-01-31T23:59:59Z\"\n",
        &decl(BOTH),
    )
    .unwrap();
}

#[test]
fn peers_are_one_to_sixteen_distinct_plain_addresses() {
    refused(
        "name = \"a\"\npeers = []\n",
        BOTH,
        2,
        9,
        "peers lists 0 addresses",
    );
    let many: Vec<String> = (1..=17).map(|i| format!("\"10.0.0.{i}\"")).collect();
    refused(
        &format!("name = \"a\"\npeers = [{}]\n", many.join(", ")),
        BOTH,
        2,
        9,
        "peers lists 17 addresses",
    );
    refused(
        "name = \"a\"\npeers = [\"10.0.0.2\", \"10.0.0.2\"]\n",
        BOTH,
        2,
        22,
        "peers lists \"10.0.0.2\" twice",
    );
    refused(
        "name = \"a\"\npeers = [\"10.0.0.2\", \"10.0.0.3/24\"]\n",
        BOTH,
        2,
        22,
        "peers \"10.0.0.3/24\" is not an IPv4 address",
    );
    // Control: sixteen distinct addresses pass.
    let s = chk(
        &format!("name = \"a\"\npeers = [{}]\n", many[..16].join(", ")),
        &decl(BOTH),
    )
    .unwrap();
    assert_eq!(s.peers.len(), 16);
}

#[test]
fn an_agent_needs_its_server_and_a_token() {
    let a = agent();
    refused(
        &a.replace("server = \"10.0.0.2\"\n", ""),
        BOTH,
        2,
        8,
        "role \"agent\" needs `server`",
    );
    let e = chk(
        &a.replace(&format!("join_token = \"{TOKEN}\"\n"), ""),
        &decl(BOTH),
    )
    .unwrap_err();
    assert!(e.to_string().contains("add join_token"), "{e}");
    // Control: a server needs neither.
    chk(
        "name = \"s\"\nrole = \"server\"\npeers = [\"10.0.0.2\"]\n",
        &decl(BOTH),
    )
    .unwrap();
}

#[test]
fn a_token_needs_its_expiry() {
    refused(
        &agent().replace("join_expires = \"2027-01-31T00:00:00Z\"\n", ""),
        BOTH,
        5,
        14,
        "join_token needs `join_expires`",
    );
    // Control: the full agent file passes.
    chk(&agent(), &decl(BOTH)).unwrap();
}

#[test]
fn the_server_and_this_node_are_among_the_peers() {
    refused(
        &agent().replace("server = \"10.0.0.2\"", "server = \"10.0.0.9\""),
        BOTH,
        4,
        10,
        "server \"10.0.0.9\" is not in peers",
    );
    refused(
        &agent().replace("10.0.0.3/24", "10.0.0.4/24"),
        BOTH,
        3,
        11,
        "this node's address \"10.0.0.4\" is not in peers",
    );
    // Without peers neither rule applies (control).
    chk(
        &agent().replace("peers = [\"10.0.0.2\", \"10.0.0.3\"]\n", ""),
        &decl(BOTH),
    )
    .unwrap();
}

#[test]
fn signing_refuses_a_token_already_expired() {
    let text = format!("{}{BIND}", agent());
    let at = join_expires_epoch("2027-01-31T00:00:00Z").unwrap();
    let e = expiry_problem(Path::new("s.toml"), &text, at).unwrap();
    let p = &e.problems[0];
    assert_eq!((p.line, p.col), (6, 16), "{e}");
    assert!(
        p.message
            .starts_with("join_expires \"2027-01-31T00:00:00Z\" is in the past"),
        "{e}"
    );
    // Control: one second earlier it is still good; a comment is not the key.
    assert!(expiry_problem(Path::new("s.toml"), &text, at - 1).is_none());
    let commented = "# join_expires = \"2000-01-01T00:00:00Z\"\nname = \"a\"\n";
    assert!(expiry_problem(Path::new("s.toml"), commented, at).is_none());
}

#[test]
fn tokens_are_made_from_unbiased_random_bytes() {
    // Bytes at or above 252 are skipped (36 * 7 = 252).
    let mut bytes = [255u8, 252, 0, 1, 2, 3, 4, 5, 35, 36, 71, 251]
        .into_iter()
        .cycle();
    let t = token_from(|| bytes.next().unwrap_or(0));
    assert!(is_join_token(&t), "{t}");
    assert!(t.starts_with("abcdef.9a9"), "{t}");
    let lines = token_lines(&t, 0, 30);
    assert_eq!(
        lines,
        format!("join_token = \"{t}\"\njoin_expires = \"1970-01-31T00:00:00Z\"\n")
    );
    // What it prints is a site file's two lines that pass the checks.
    chk(&format!("name = \"a\"\n{lines}"), &decl(BOTH)).unwrap();
}

/// The guest's parser (busybox awk, as the initramfs runs it) agrees with
/// this one on every cluster rule: the same files pass, the same are
/// refused; and it prints the lines guest/init applies.
#[test]
fn the_guest_parser_agrees_on_every_cluster_rule() {
    let dir = tempfile::tempdir().unwrap();
    let awk = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/site.awk");
    let (allow, ingress, bind) = (
        dir.path().join("allow"),
        dir.path().join("ingress"),
        dir.path().join("bind"),
    );
    let run = |text: &str, roles: &[&str]| {
        let d = decl(roles);
        std::fs::write(&allow, d.allow.join("\n") + "\n").unwrap();
        std::fs::write(&ingress, "").unwrap();
        std::fs::write(&bind, d.bind_text()).unwrap();
        let site = dir.path().join("site.toml");
        std::fs::write(&site, format!("{text}{BIND}")).unwrap();
        let sh = xshell::Shell::new().unwrap();
        let (a, i, b) = (
            format!("allow={}", allow.display()),
            format!("ingress={}", ingress.display()),
            format!("bind={}", bind.display()),
        );
        let (code, out, _) = crate::host::runner::run_code(
            "test: site.awk",
            xshell::cmd!(sh, "busybox awk -v {a} -v {i} -v {b} -f {awk} {site}"),
        )
        .unwrap();
        (code, out, chk(text, &d).is_ok())
    };
    let (code, out, rust) = run(&agent(), BOTH);
    assert!(code == 0 && rust, "{out}");
    for line in [
        "role agent",
        "server 10.0.0.2",
        &format!("token {TOKEN}"),
        "expires 2027-01-31T00:00:00Z",
        "peer 10.0.0.2",
        "peer 10.0.0.3",
    ] {
        assert!(out.lines().any(|l| l == line), "{line}: {out}");
    }
    let a = agent();
    for (text, roles) in [
        (a.clone(), &["server"][..]),
        (a.replace("\"agent\"", "\"worker\""), BOTH),
        (a.replace("server = \"10.0.0.2\"\n", ""), BOTH),
        (a.replace(&format!("join_token = \"{TOKEN}\"\n"), ""), BOTH),
        (
            a.replace("join_expires = \"2027-01-31T00:00:00Z\"\n", ""),
            BOTH,
        ),
        (a.replace("abcdef.", "abcdeF."), BOTH),
        (a.replace("abcdef.", "abcde."), BOTH),
        (
            a.replace("2027-01-31T00:00:00Z", "2027-01-31 00:00:00"),
            BOTH,
        ),
        (
            a.replace("server = \"10.0.0.2\"", "server = \"10.0.0.9\""),
            BOTH,
        ),
        (
            a.replace("address = \"10.0.0.3/24\"", "address = \"10.0.0.4/24\""),
            BOTH,
        ),
        (
            a.replace(
                "[\"10.0.0.2\", \"10.0.0.3\"]",
                "[\"10.0.0.2\", \"10.0.0.3\", \"10.0.0.2\"]",
            ),
            BOTH,
        ),
        (a.replace("[\"10.0.0.2\", \"10.0.0.3\"]", "[]"), BOTH),
        (
            a.replace("server = \"10.0.0.2\"", "server = \"10.0.0.256\""),
            BOTH,
        ),
    ] {
        let (code, out, rust) = run(&text, roles);
        assert_eq!(code, 1, "awk passed:\n{text}\n{out}");
        assert!(out.lines().any(|l| l.starts_with("error ")), "{out}");
        assert!(!rust, "rust passed what awk refuses:\n{text}");
    }
    // Control: a server's file without `server` or token passes both.
    let server = "name = \"s\"\nrole = \"server\"\naddress = \"10.0.0.2/24\"\npeers = [\"10.0.0.2\", \"10.0.0.3\"]\n";
    let (code, out, rust) = run(server, &["server"]);
    assert!(code == 0 && rust, "{out}");
}
