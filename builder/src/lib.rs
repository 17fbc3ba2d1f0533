//! cairn: builds immutable, signed, bootable appliance images from TOML
//! recipes. `build::build` is the whole pipeline; each stage is a module.
//!
//! The folders are layers; imports point down this list, never up:
//! `cli` (arguments and the environment) → `build` (the pipeline driver)
//! and `field` (flash) → `release` → `media`
//! → `pipeline` → `inputs` → `recipe` → `host`. `vm` (QEMU) sits beside
//! them and uses only `host`.

pub mod build;
pub mod cli;
pub mod field;
pub mod host;
pub mod inputs;
pub mod media;
pub mod pipeline;
pub mod recipe;
pub mod release;
pub mod vm;
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
