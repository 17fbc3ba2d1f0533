//! One module per build stage, each with one public entry function that
//! takes plain inputs (the resolved recipe, paths) and returns plain
//! outputs. `crate::build` drives them in order.

pub mod audit;
pub mod cluster;
pub mod compose;
pub mod firewall;
pub mod initramfs;
pub mod k3s;
pub mod kernel;
pub mod kube_objects;
pub mod kube_store;
pub mod kubernetes;
pub mod layers;
pub mod measure;
pub mod normalise;
pub mod oci;
pub mod sbsign;
pub mod shim;
pub mod squashfs;
pub mod uki;
pub mod verity;
pub mod volume;
pub mod volumes;
pub mod workloads;
