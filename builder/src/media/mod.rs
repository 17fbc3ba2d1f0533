//! The media writers: raw GPT disk, hybrid ISO, qcow2.

pub mod disk;
pub mod iso;
pub mod qcow2;
