//! The OCI / Docker JSON documents cairn reads and writes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::OciError;
use crate::host::digest::Sha256;

/// Media types cairn knows.
pub mod media_types {
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// The ref name annotation (`org.opencontainers.image.ref.name`).
    pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
}
use media_types as mt;

pub(crate) fn is_manifest(m: &str) -> bool {
    m == mt::OCI_MANIFEST || m == mt::DOCKER_MANIFEST
}

pub(crate) fn is_index(m: &str) -> bool {
    m == mt::OCI_INDEX || m == mt::DOCKER_LIST
}

/// Whether a layer media type is supported, and whether it says gzip.
pub(crate) fn layer_gzip(m: &str) -> Option<bool> {
    match m {
        mt::OCI_LAYER | mt::DOCKER_LAYER => Some(false),
        mt::OCI_LAYER_GZIP | mt::DOCKER_LAYER_GZIP => Some(true),
        _ => None,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: &Sha256, size: u64) -> Self {
        Descriptor {
            media_type: media_type.to_string(),
            digest: format!("sha256:{}", digest.hex()),
            size,
            urls: Vec::new(),
            platform: None,
            annotations: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
pub(crate) struct Index {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize, Serialize)]
pub(crate) struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    pub rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
pub(crate) struct DockerEntry {
    #[serde(rename = "Config")]
    pub config: String,
    #[serde(rename = "Layers", default)]
    pub layers: Vec<String>,
    #[serde(rename = "RepoTags", default)]
    pub repo_tags: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct OciLayout {
    #[serde(rename = "imageLayoutVersion")]
    pub version: String,
}

/// `sha256:` + 64 lowercase hex digits, nothing else.
pub(crate) fn parse_digest(what: &str, s: &str) -> Result<Sha256, OciError> {
    let bad = || OciError::UnsupportedDigest {
        what: what.to_string(),
        digest: s.chars().take(100).collect(),
    };
    let hex = s.strip_prefix("sha256:").ok_or_else(bad)?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(bad());
    }
    Sha256::from_hex(hex).map_err(|_| bad())
}

pub(crate) fn parse<T: serde::de::DeserializeOwned>(what: &str, b: &[u8]) -> Result<T, OciError> {
    serde_json::from_slice(b).map_err(|e| OciError::BadJson {
        what: what.to_string(),
        message: e.to_string(),
    })
}

pub(crate) fn to_vec<T: Serialize>(what: &str, v: &T) -> Result<Vec<u8>, OciError> {
    serde_json::to_vec(v).map_err(|e| OciError::Invalid(format!("cannot write {what}: {e}")))
}
