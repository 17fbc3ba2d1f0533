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
    let ova = d.path().join("x.ova");
    std::fs::write(&ova, b"").unwrap();
    let (code, err) = cairn(&["run", ova.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("cannot tell the format; expected .raw, .iso, .qcow2, .vhd, .vmdk, .tar.gz or .raw.zst (or .img)"),
        "{err}"
    );
    let (code, err) = cairn(&["build", "r.toml", "--format", "raw,ova"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("choose from raw, iso, qcow2, vhd, vmdk, gce, zst"),
        "{err}"
    );
}

/// `cairn run` boots no tarball or compressed disk as it is, and checks a
/// VMDK stands alone before QEMU opens it (exit 2, naming the file).
/// `--format zst` needs the raw disk beside it.
#[test]
fn run_refuses_tarballs_and_vmdks_naming_other_files() {
    let d = tempfile::tempdir().unwrap();
    for name in ["x.tar.gz", "x.raw.zst"] {
        let p = d.path().join(name);
        std::fs::write(&p, b"").unwrap();
        let (code, err) = cairn(&["run", p.to_str().unwrap()]);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("is not booted as it is"), "{name}: {err}");
    }
    // A KDMV header of capacity 0 (its descriptor would list other files).
    let mut h = vec![0u8; 1024];
    h[..4].copy_from_slice(b"KDMV");
    h[4] = 3;
    let p = d.path().join("x.vmdk");
    std::fs::write(&p, &h).unwrap();
    let (code, err) = cairn(&["run", p.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("x.vmdk") && err.contains("header: unexpected"),
        "{err}"
    );
    let (code, err) = cairn(&["build", "r.toml", "--format", "zst"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--format raw,zst"), "{err}");
}
