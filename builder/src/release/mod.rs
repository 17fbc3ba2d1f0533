//! A release folder: manifest, SBOMs, provenance, SHA256 + signature, and the
//! reviewer's views of it (verify, inspect, diff).

pub mod audit;
pub mod audit_collect;
pub mod audit_tpm;
pub mod compressed;
pub mod datamap;
pub mod diff;
pub mod diff_team;
pub mod inspect;
pub mod manifest;
pub mod provenance;
pub mod sbom;
pub mod secureboot;
pub mod sign;
pub mod signify;
pub mod site;
pub mod template;
pub mod verify;
