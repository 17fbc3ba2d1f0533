//! cairn: builds immutable, signed, bootable appliance images from TOML
//! recipes. `build::build` is the whole pipeline; each stage is a module.

pub mod build;
pub mod compose;
pub mod cpio;
pub mod digest;
pub mod disk;
pub mod doctor;
pub mod initramfs;
pub mod kernel;
pub mod manifest;
pub mod normalise;
pub mod qemu;
pub mod recipe;
pub mod runner;
pub mod signify;
pub mod squashfs;
pub mod stagepath;
pub mod uki;
pub mod verity;

/// Bad input from the user (recipe, pin, key, arguments): the CLI exits 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);
