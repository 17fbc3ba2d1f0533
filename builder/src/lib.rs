//! cairn: builds immutable, signed, bootable appliance images from TOML
//! recipes. `build::build` is the whole pipeline; each stage is a module.

pub mod build;
pub mod cache;
pub mod compose;
pub mod cpio;
pub mod debrepo;
pub mod diff;
pub mod digest;
pub mod disk;
pub mod doctor;
pub mod download;
pub mod firewall;
pub mod flash;
pub mod initramfs;
pub mod inspect;
pub mod iso;
pub mod k3s;
pub mod kernel;
pub mod lock;
pub mod manifest;
pub mod normalise;
pub mod oci;
pub mod progress;
pub mod provenance;
pub mod qcow2;
pub mod qemu;
pub mod qemu_run;
pub mod recipe;
pub mod runner;
pub mod sign;
pub mod signify;
pub mod squashfs;
pub mod stagecache;
pub mod stagepath;
pub mod uki;
pub mod verify;
pub mod verity;
pub mod workloads;

/// Bad input from the user (recipe, pin, key, arguments): the CLI exits 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// Golden-file comparison for generated text (units, rulesets, configs).
/// `CAIRN_UPDATE_GOLDEN=1 cargo test` rewrites the files; review the diff.
#[cfg(test)]
pub(crate) fn assert_golden(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("CAIRN_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with CAIRN_UPDATE_GOLDEN=1", path.display()));
    assert_eq!(
        actual,
        want,
        "{} differs from the golden file",
        path.display()
    );
}
