//! `[cluster] roles` and the cluster node's site settings (issue 33):
//! refusals at their line:col, and controls that the valid forms pass.

use std::path::Path;

use super::tests::src;
use crate::recipe::{parse, Recipe};

const HEAD: &str = "[image]\nname = \"t\"\nversion = \"1\"\n[base.debian]\n";

/// A folder with the Go module `runtime = "kubernetes"` needs and the
/// site key.
fn dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("mod");
    std::fs::create_dir_all(&m).unwrap();
    for f in ["go.mod", "go.sum", "build.sh"] {
        std::fs::write(m.join(f), "x").unwrap();
    }
    let key = crate::recipe::site::tests_support::pub_key_text();
    std::fs::write(d.path().join("sites.pub"), key).unwrap();
    d
}

/// `[cluster]` with `runtime` (line 6), `sources` (7) and `extra` (8 on).
fn recipe(runtime: &str, extra: &str) -> String {
    format!("{HEAD}[cluster]\nruntime = \"{runtime}\"\nsources = \"mod\"\n{extra}")
}

fn ok(dir: &Path, text: &str) -> Recipe {
    parse(&src(dir, text)).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn refused(dir: &Path, text: &str, line: usize, col: usize, start: &str) {
    let e = match parse(&src(dir, text)) {
        Ok(_) => panic!("want a refusal, got ok:\n{text}"),
        Err(e) => e,
    };
    let p = &e.problems[0];
    assert_eq!((p.line, p.col), (line, col), "{e}\n{text}");
    assert!(p.message.starts_with(start), "got: {e}");
}

const SITE: &str = "[site]\nallow = [\"role\", \"server\", \"join_token\", \"join_expires\", \"peers\"]\nkey = \"sites.pub\"\n";

#[test]
fn cluster_roles_reach_the_declaration_and_the_binding() {
    let d = dir();
    let r = ok(
        d.path(),
        &recipe(
            "kubernetes",
            &format!("roles = [\"server\", \"agent\"]\n{SITE}"),
        ),
    );
    let s = r.site.expect("site declaration");
    assert_eq!(s.roles, ["server", "agent"]);
    assert!(
        s.bind_text().ends_with("roles server agent\n"),
        "{}",
        s.bind_text()
    );
    assert_eq!(
        s.allow,
        ["join_expires", "join_token", "peers", "role", "server"]
    );
    // The recipe's order is kept.
    let r = ok(
        d.path(),
        &recipe(
            "kubernetes",
            &format!("roles = [\"agent\", \"server\"]\n{SITE}"),
        ),
    );
    assert_eq!(r.site.unwrap().roles, ["agent", "server"]);
    // Without roles: server only.
    let s = ok(d.path(), &recipe("kubernetes", SITE)).site.unwrap();
    assert_eq!(s.roles, ["server"]);
    assert!(s.bind_text().ends_with("roles server\n"));
}

#[test]
fn cluster_roles_are_refused_without_a_cluster_runtime() {
    let d = dir();
    let text = format!("{HEAD}[cluster]\nruntime = \"containerd\"\nroles = [\"server\"]\n");
    refused(
        d.path(),
        &text,
        7,
        9,
        "[cluster] roles is for runtime = \"kubernetes\" or \"k3s\"",
    );
    let text = format!("{HEAD}[cluster]\nroles = [\"server\"]\n");
    refused(d.path(), &text, 6, 9, "[cluster] roles is for runtime");
    // Control: the same list with kubernetes passes.
    ok(d.path(), &recipe("kubernetes", "roles = [\"server\"]\n"));
}

#[test]
fn cluster_roles_must_be_server_or_agent_each_once_and_not_empty() {
    let d = dir();
    for (roles, col, start) in [
        ("[]", 9, "[cluster] roles is empty"),
        (
            "[\"server\", \"master\"]",
            20,
            "[cluster] roles names \"master\"",
        ),
        ("[\"agent\", \"agent\"]", 19, "\"agent\" is listed twice"),
        ("[\"Server\"]", 10, "[cluster] roles names \"Server\""),
    ] {
        refused(
            d.path(),
            &recipe("kubernetes", &format!("roles = {roles}\n")),
            8,
            col,
            start,
        );
    }
    // Control: both, once each.
    ok(d.path(), &recipe("kubernetes", "roles = [\"agent\"]\n"));
}

#[test]
fn cluster_settings_are_refused_in_allow_without_a_cluster_runtime() {
    let d = dir();
    for (k, col) in [
        ("role", 10),
        ("server", 10),
        ("join_token", 10),
        ("peers", 10),
    ] {
        let text = format!(
            "{HEAD}[cluster]\nruntime = \"containerd\"\n[site]\nallow = [\"{k}\"]\nkey = \"sites.pub\"\n"
        );
        refused(
            d.path(),
            &text,
            8,
            col,
            &format!("a site can set \"{k}\" only for a cluster node"),
        );
    }
    // No runtime at all: the same.
    let text = format!("{HEAD}[site]\nallow = [\"role\"]\nkey = \"sites.pub\"\n");
    refused(
        d.path(),
        &text,
        6,
        10,
        "a site can set \"role\" only for a cluster node",
    );
    // Control: with a cluster runtime it is taken.
    let s = ok(
        d.path(),
        &recipe(
            "kubernetes",
            "[site]\nallow = [\"role\"]\nkey = \"sites.pub\"\n",
        ),
    )
    .site
    .unwrap();
    assert_eq!(s.allow, ["role"]);
}

#[test]
fn k3s_agents_are_refused_until_they_are_built() {
    let d = dir();
    // k3s needs its artifacts, not sources: its own [cluster] lines.
    let k3s = |roles: &str| format!("{HEAD}[cluster]\nruntime = \"k3s\"\nroles = {roles}\n");
    let e = parse(&src(d.path(), &k3s("[\"server\", \"agent\"]"))).expect_err("k3s agent");
    let p = &e
        .problems
        .iter()
        .find(|p| p.message.contains("k3s agents"))
        .unwrap_or_else(|| panic!("{e}"));
    assert_eq!((p.line, p.col), (7, 20), "{e}");
    // Control: a k3s server-only list is not refused for its roles.
    if let Err(e) = parse(&src(d.path(), &k3s("[\"server\"]"))) {
        assert!(!e.to_string().contains("roles"), "{e}");
    }
}
