//! The format table drives the CLI: `--format` and `cairn run` refuse a
//! name or extension that is no row, listing the rows (bad input, exit 2).

use std::process::Command;

fn cairn(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .output()
        .expect("run cairn");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_formats_are_refused_naming_the_table() {
    let d = tempfile::tempdir().unwrap();
    let vmdk = d.path().join("x.vmdk");
    std::fs::write(&vmdk, b"").unwrap();
    let (code, err) = cairn(&["run", vmdk.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("cannot tell the format; expected .raw, .iso, .qcow2 or .vhd (or .img)"),
        "{err}"
    );
    let (code, err) = cairn(&["build", "r.toml", "--format", "raw,vmdk"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("choose from raw, iso, qcow2, vhd"), "{err}");
}
