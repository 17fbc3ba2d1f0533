//! `[audit]`: each refusal at its line:col, and the valid forms resolved.

use super::tests::src;
use crate::recipe::audit::OnFull;
use crate::recipe::parse;

const HEAD: &str = "[image]\nname = \"t\"\nversion = \"1\"\n[base.debian]\n";
const KEY: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\n";

fn refused(text: &str, key: &str, line: usize, col: usize, start: &str) {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("audit.pub"), key).unwrap();
    let e = match parse(&src(d.path(), text)) {
        Ok(_) => panic!("want a refusal, got ok:\n{text}"),
        Err(e) => e,
    };
    assert_eq!(e.problems.len(), 1, "want one problem, got: {e}\n{text}");
    let p = &e.problems[0];
    assert_eq!((p.line, p.col), (line, col), "{p}\n{text}");
    assert!(p.message.starts_with(start), "want {start:?}, got: {p}");
}

#[test]
fn audit_defaults_and_choices_resolve() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("audit.pub"), KEY).unwrap();
    let r = parse(&src(
        d.path(),
        &format!("{HEAD}[audit]\nkey = \"audit.pub\"\n"),
    ))
    .unwrap();
    let a = r.audit.expect("audit declaration");
    assert_eq!(a.size, 16 << 20);
    assert_eq!(a.recipient, KEY.trim());
    assert_eq!(a.record, ["boot", "cluster-api", "firewall", "service"]);
    assert_eq!(a.on_full, OnFull::Stop);
    let text = format!(
        "{HEAD}[audit]\nkey = \"audit.pub\"\nsize = \"4M\"\nrecord = [\"service\"]\non_full = \"halt\"\n"
    );
    let a = parse(&src(d.path(), &text)).unwrap().audit.unwrap();
    assert_eq!((a.size, a.on_full), (4 << 20, OnFull::Halt));
    // boot is always recorded: it carries the boot's signing key.
    assert_eq!(a.record, ["boot", "service"]);
    // Control: no [audit], no declaration (and no partition).
    assert!(parse(&src(d.path(), HEAD)).unwrap().audit.is_none());
}

#[test]
fn audit_refusals_name_their_place() {
    let base = format!("{HEAD}[audit]\nkey = \"audit.pub\"\n");
    refused(
        &format!("{base}size = \"512K\"\n"),
        KEY,
        7,
        8,
        "[audit] size must be 1M to 1G",
    );
    refused(
        &format!("{base}size = \"2G\"\n"),
        KEY,
        7,
        8,
        "[audit] size must be 1M to 1G",
    );
    refused(
        &format!("{base}size = \"1536K\"\n"),
        KEY,
        7,
        8,
        "[audit] size must be a whole number",
    );
    refused(
        &format!("{base}size = \"lots\"\n"),
        KEY,
        7,
        8,
        "audit size \"lots\" is not a size",
    );
    refused(
        &format!("{base}record = [\"boot\", \"dns\"]\n"),
        KEY,
        7,
        19,
        "[audit] record names \"dns\"",
    );
    refused(
        &format!("{base}record = [\"service\", \"service\"]\n"),
        KEY,
        7,
        22,
        "\"service\" is listed twice",
    );
    refused(
        &format!("{base}on_full = \"wrap\"\n"),
        KEY,
        7,
        11,
        "[audit] on_full \"wrap\" is not one of",
    );
    refused(
        &format!("{base}colour = 1\n"),
        KEY,
        7,
        1,
        "unknown field `colour`",
    );
    refused(
        &base,
        "AGE-SECRET-KEY-1QQQ\n",
        6,
        7,
        "audit key \"audit.pub\" is an age SECRET key",
    );
    refused(
        &base,
        "untrusted comment: signify\nRWQ\n",
        6,
        7,
        "audit key \"audit.pub\" must hold exactly one line",
    );
    refused(
        &format!("{HEAD}[audit]\nkey = \"nope.pub\"\n"),
        KEY,
        6,
        7,
        "audit key \"nope.pub\" not found",
    );
    refused(
        &format!("{HEAD}[audit]\nsize = \"4M\"\n"),
        KEY,
        5,
        1,
        "missing field `key`",
    );
}
