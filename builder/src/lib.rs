//! cairn: builds immutable, signed, bootable appliance images from TOML
//! recipes. `build::build` is the whole pipeline; each stage is a module.

pub mod build;
pub mod compose;
pub mod cpio;
pub mod diff;
pub mod digest;
pub mod disk;
pub mod doctor;
pub mod firewall;
pub mod flash;
pub mod initramfs;
pub mod inspect;
pub mod iso;
pub mod kernel;
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
pub mod stagepath;
pub mod uki;
pub mod verify;
pub mod verity;

/// Bad input from the user (recipe, pin, key, arguments): the CLI exits 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);
