//! Shared helpers for the boot tests live in `cairn::qemu`; this crate only holds tests.
