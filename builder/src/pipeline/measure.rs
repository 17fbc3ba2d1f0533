//! Measured boot: the PCR 11 value (sha256 bank) a TPM holds once
//! systemd-stub has measured the UKI, computed from the UKI's own sections.
//! systemd-stub extends PCR 11, starting from zero, with the sha256 of each
//! section's name (with its NUL) and then of its contents, in the stub's
//! fixed section order, skipping absent sections and `.pcrsig`
//! (`systemd-measure calculate` computes the same; a test compares them).

use anyhow::{Context, Result};
use object::{Object, ObjectSection};
use sha2::Digest as _;

use crate::host::digest::Sha256;

/// The sections systemd-stub measures, in the order it measures them.
pub const MEASURED_SECTIONS: [&str; 7] = [
    ".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey",
];

/// `pcr := sha256(pcr || digest)`.
fn extend(pcr: &mut [u8; 32], digest: &[u8]) {
    let mut h = sha2::Sha256::new();
    h.update(*pcr);
    h.update(digest);
    pcr.copy_from_slice(&h.finalize());
}

/// PCR 11 after systemd-stub measured these (section name, contents).
pub fn pcr11_of_sections<'a>(sections: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Sha256 {
    let mut pcr = [0u8; 32];
    for (name, data) in sections {
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        extend(&mut pcr, &sha2::Sha256::digest(&n));
        extend(&mut pcr, &sha2::Sha256::digest(data));
    }
    Sha256(pcr)
}

/// PCR 11 after systemd-stub measured `uki` (its bytes as shipped: a
/// signature does not change the sections).
pub fn predict_pcr11(uki: &[u8]) -> Result<Sha256> {
    let file = object::File::parse(uki).context("pcr 11: the UKI is not a PE file")?;
    let mut found = Vec::new();
    for name in MEASURED_SECTIONS {
        if let Some(s) = file.section_by_name(name) {
            // The PE reader returns min(VirtualSize, SizeOfRawData) bytes:
            // the section without its file-alignment padding, which is
            // what the stub measures.
            let data = s
                .data()
                .with_context(|| format!("pcr 11: UKI section {name}"))?;
            if !data.is_empty() {
                found.push((name, data));
            }
        }
    }
    if !found.iter().any(|(n, _)| *n == ".linux") {
        anyhow::bail!("pcr 11: the UKI has no .linux section");
    }
    Ok(pcr11_of_sections(found))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
    const MEASURE: &str = "/usr/lib/systemd/systemd-measure";

    #[test]
    fn prediction_matches_systemd_measure() {
        assert!(Path::new(STUB).is_file(), "install systemd-boot-efi");
        assert!(
            Path::new(MEASURE).is_file(),
            "install systemd (systemd-measure)"
        );
        let d = tempfile::tempdir().unwrap();
        let kernel = d.path().join("k");
        let initrd = d.path().join("i");
        let osrel = d.path().join("o");
        // Odd sizes: file-alignment padding must not be measured.
        std::fs::write(&kernel, vec![7u8; 10001]).unwrap();
        std::fs::write(&initrd, vec![9u8; 4099]).unwrap();
        std::fs::write(&osrel, "ID=test\n").unwrap();
        let predict = |cmdline: &str, name: &str| {
            let out = d.path().join(name);
            crate::pipeline::uki::make_uki(
                &crate::pipeline::uki::UkiInputs {
                    stub: Path::new(STUB),
                    kernel: &kernel,
                    initrd: &initrd,
                    os_release: &osrel,
                    cmdline,
                    epoch: 1_735_689_600,
                },
                d.path(),
                &out,
            )
            .unwrap();
            let ours = predict_pcr11(&std::fs::read(&out).unwrap()).unwrap();
            // make_uki leaves the .cmdline contents it used in cmdline.txt.
            let cmdfile = d.path().join("cmdline.txt");
            let sh = crate::host::runner::shell().unwrap();
            let json = crate::host::runner::run(
                "test",
                xshell::cmd!(
                    sh,
                    "{MEASURE} calculate --linux={kernel} --osrel={osrel} --cmdline={cmdfile} --initrd={initrd} --bank=sha256 --phase= --json=short"
                ),
            )
            .unwrap();
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            let theirs = v["sha256"][0]["hash"].as_str().unwrap().to_string();
            (ours, theirs)
        };
        let (a, want_a) = predict("console=ttyS0 cairn.roothash=00", "a.efi");
        assert_eq!(a.hex(), want_a);
        // Control: one word more gives another value, and still agrees.
        let (b, want_b) = predict("console=ttyS0 cairn.roothash=00 quiet", "b.efi");
        assert_eq!(b.hex(), want_b);
        assert_ne!(a, b);
    }
}
