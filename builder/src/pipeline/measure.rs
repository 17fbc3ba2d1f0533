//! Measured boot: the PCR 11 value (sha256 bank) a TPM holds once
//! systemd-stub has measured the UKI, computed from the UKI's own sections.
//! systemd-stub extends PCR 11, starting from zero, with the sha256 of each
//! section's name (with its NUL) and then of its contents, in the stub's
//! fixed section order, skipping absent sections and `.pcrsig`
//! (`systemd-measure calculate` computes the same; a test compares them).
//!
//! That order and set are systemd 252's (Debian bookworm). Later stubs
//! measure more sections, some of them carried by the stub itself (`.sbat`
//! from 254, then `.uname`, `.ucode`, `.profile`, `.dtbauto`, `.hwids`,
//! `.efifw`, ...), so the same UKI sections give another PCR 11 under them.
//! cairn reads the stub's version from its `.sdmagic` section
//! ([`crate::pipeline::uki::check_stub`]) and refuses
//! a stub it cannot predict rather than record a wrong value.

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
    crate::pipeline::uki::check_stub(uki)?;
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
    use crate::pipeline::uki::check_stub;
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
        // systemd-measure of the stub's own version: what that stub does.
        let sh = xshell::Shell::new().unwrap();
        let version =
            crate::host::runner::run("test", xshell::cmd!(sh, "{MEASURE} --version")).unwrap();
        let stub = check_stub(&std::fs::read(STUB).unwrap()).unwrap();
        let major = stub.split('.').next().unwrap();
        assert!(
            version.starts_with(&format!("systemd {major} ")),
            "systemd-measure {version:?} is not the stub's {stub}"
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

    /// The host's stub with its `.sdmagic` version replaced by `to` (same
    /// length), as a newer systemd-boot-efi would carry it.
    fn stub_claiming(from: &str, to: &str) -> Vec<u8> {
        let mut stub = std::fs::read(STUB).expect("install systemd-boot-efi");
        let at = stub
            .windows(from.len())
            .position(|w| w == from.as_bytes())
            .expect("the stub names its version");
        stub[at..at + to.len()].copy_from_slice(to.as_bytes());
        stub
    }

    #[test]
    fn a_stub_whose_measurements_are_not_known_is_refused_by_its_version() {
        let stub = std::fs::read(STUB).expect("install systemd-boot-efi");
        let v = check_stub(&stub).unwrap();
        assert!(v.starts_with("252."), "{v}");
        // A stub claiming systemd 257 (which also measures .ucode,
        // .profile, ...): refused, naming its version and what is supported.
        let newer = stub_claiming("systemd-stub 252", "systemd-stub 257");
        let e = format!("{:#}", check_stub(&newer).unwrap_err());
        assert!(e.contains("systemd-stub 257."), "{e}");
        assert!(e.contains("only for systemd-stub 252.x"), "{e}");
        assert!(e.contains("bookworm"), "{e}");
        // The same through a UKI built on it: no prediction is recorded.
        let d = tempfile::tempdir().unwrap();
        let (stub_path, out) = (d.path().join("stub"), d.path().join("u.efi"));
        std::fs::write(&stub_path, &newer).unwrap();
        let (k, i, o) = (d.path().join("k"), d.path().join("i"), d.path().join("o"));
        std::fs::write(&k, vec![7u8; 1000]).unwrap();
        std::fs::write(&i, vec![9u8; 100]).unwrap();
        std::fs::write(&o, "ID=test\n").unwrap();
        crate::pipeline::uki::make_uki(
            &crate::pipeline::uki::UkiInputs {
                stub: &stub_path,
                kernel: &k,
                initrd: &i,
                os_release: &o,
                cmdline: "x",
                epoch: 1_735_689_600,
            },
            d.path(),
            &out,
        )
        .unwrap();
        let e = format!(
            "{:#}",
            predict_pcr11(&std::fs::read(&out).unwrap()).unwrap_err()
        );
        assert!(e.contains("systemd-stub 257."), "{e}");
        // No version at all: refused too.
        let unnamed = stub_claiming("systemd-stub 252", "systemd-stab 252");
        let e = format!("{:#}", check_stub(&unnamed).unwrap_err());
        assert!(e.contains("names no systemd-stub version"), "{e}");
    }
}
