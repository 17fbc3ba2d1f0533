//! An OCI image holding one static program and nothing else (the
//! Kubernetes sandbox image, from the cluster stage's `pause`): one layer,
//! every byte fixed by the program and the epoch.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use super::archive::{write_layout, BlobSrc};
use super::json::{media_types as mt, Descriptor};
use crate::host::digest::Sha256;
use crate::host::tar::TarWriter;

/// Writes `/NAME` (mode 0755, root-owned) from `program` as an image whose
/// entrypoint it is, running as `user`, to the OCI layout tarball `out`
/// named `ref_name`. Returns the manifest digest.
pub fn program_image(
    program: &Path,
    name: &str,
    user: &str,
    ref_name: &str,
    epoch: u64,
    out: &Path,
) -> Result<Sha256> {
    let data =
        std::fs::read(program).with_context(|| format!("oci: read {}", program.display()))?;
    let mut layer = Vec::new();
    {
        let mut w = TarWriter::new(&mut layer, epoch);
        w.file(name.as_bytes(), 0o755, (0, 0), data.len() as u64, &data[..])?;
        w.finish()?;
    }
    let layer_digest = Sha256::of_bytes(&layer);
    let created = super::debian::rfc3339(epoch);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": { "Entrypoint": [format!("/{name}")], "User": user },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{}", layer_digest.hex())] },
        "history": [{ "created": created, "created_by": format!("cairn: /{name}") }],
    }))?;
    let config_digest = Sha256::of_bytes(&config);
    let manifest = serde_json::to_vec(&super::json::Manifest {
        schema_version: 2,
        media_type: Some(mt::OCI_MANIFEST.to_string()),
        config: Descriptor::new(mt::OCI_CONFIG, &config_digest, config.len() as u64),
        layers: vec![Descriptor::new(
            mt::OCI_LAYER,
            &layer_digest,
            layer.len() as u64,
        )],
    })?;
    let blobs = [
        (config_digest, BlobSrc::Bytes(&config)),
        (layer_digest, BlobSrc::Bytes(&layer)),
    ];
    write_layout(out, epoch, ref_name, mt::OCI_MANIFEST, &manifest, &blobs)
        .with_context(|| format!("oci: write {}", out.display()))?;
    Ok(Sha256::of_bytes(&manifest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_loads_under_its_digest_and_is_reproducible() {
        let d = tempfile::tempdir().unwrap();
        let prog = d.path().join("pause");
        std::fs::write(&prog, b"\x7fELF not really").unwrap();
        let a = d.path().join("a.tar");
        let b = d.path().join("b.tar");
        let da = program_image(
            &prog,
            "pause",
            "65535:65535",
            "cairn.local/pause:pinned",
            1,
            &a,
        )
        .unwrap();
        let db = program_image(
            &prog,
            "pause",
            "65535:65535",
            "cairn.local/pause:pinned",
            1,
            &b,
        )
        .unwrap();
        assert_eq!(da, db);
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let img = crate::pipeline::oci::load_archive(&a, &da).unwrap();
        assert_eq!(img.manifest_digest, da);
        // Control: another program is another image.
        std::fs::write(&prog, b"\x7fELF other").unwrap();
        let dc = program_image(
            &prog,
            "pause",
            "65535:65535",
            "cairn.local/pause:pinned",
            1,
            &b,
        )
        .unwrap();
        assert_ne!(dc, da);
    }
}
