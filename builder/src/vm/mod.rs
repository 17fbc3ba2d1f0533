//! QEMU: the one boot helper used by `cairn run` and the boot tests.

pub mod phases;
pub mod qemu;
pub mod run;
pub mod trusted;
