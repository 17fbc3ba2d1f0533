//! Secure Boot signature: an Authenticode signature on each EFI binary cairn
//! ships (sbsign), made with the user's X.509 key and certificate.
//! Invariant: the same UKI, key and SOURCE_DATE_EPOCH give the same signed
//! bytes: sbsign stamps the PKCS#7 signing time with the clock, so it runs
//! under faketime frozen at the epoch (RSA PKCS#1 v1.5 is deterministic).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::host::digest::Sha256;
use crate::host::runner::run;

/// The Secure Boot signing key and its certificate (PEM files). The secret
/// key is named on the command line, never in the recipe.
#[derive(Debug, Clone)]
pub struct SbKey {
    pub key: PathBuf,
    pub cert: PathBuf,
}

fn input_error(msg: String) -> anyhow::Error {
    anyhow::Error::new(crate::InputError(msg))
}

/// The tool's own complaint: the last line of the runner's error.
fn complaint(e: &anyhow::Error) -> String {
    format!("{e:#}")
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_default()
        .to_string()
}

impl SbKey {
    /// Checks, before the build writes anything, that the certificate
    /// parses, the key is an unencrypted PEM key, and the two belong
    /// together. Any problem is bad input (exit 2).
    pub fn load(key: &Path, cert: &Path) -> Result<SbKey> {
        let sh = crate::host::runner::shell()?;
        let cert_pub = run(
            "secure boot key",
            xshell::cmd!(sh, "openssl x509 -in {cert} -noout -pubkey"),
        )
        .map_err(|e| {
            input_error(format!(
                "--sb-cert {}: not a PEM X.509 certificate (openssl: {}); make one with `cairn keygen --secure-boot NAME`",
                cert.display(),
                complaint(&e)
            ))
        })?;
        // -passin pass: makes an encrypted key fail instead of prompting:
        // the build runs unattended.
        let key_pub = run(
            "secure boot key",
            xshell::cmd!(sh, "openssl pkey -in {key} -passin pass: -pubout"),
        )
        .map_err(|e| {
            input_error(format!(
                "--sb-key {}: not an unencrypted PEM private key (openssl: {}); decrypt it with `openssl pkey -in KEY -out KEY.plain`",
                key.display(),
                complaint(&e)
            ))
        })?;
        if cert_pub.trim() != key_pub.trim() {
            return Err(input_error(format!(
                "--sb-key {} does not belong to --sb-cert {} (their public keys differ)",
                key.display(),
                cert.display()
            )));
        }
        Ok(SbKey {
            key: key.to_path_buf(),
            cert: cert.to_path_buf(),
        })
    }
}

/// The certificate's fingerprint: sha256 of its DER encoding (what
/// `openssl x509 -fingerprint -sha256` prints, and what firmware db
/// entries hold).
pub fn cert_fingerprint(cert: &Path) -> Result<Sha256> {
    let der = cert_der(cert)?;
    Ok(Sha256::of_bytes(&der))
}

/// The certificate in DER form (PEM is converted with openssl).
pub fn cert_der(cert: &Path) -> Result<Vec<u8>> {
    let dir = tempfile::tempdir().context("secure boot: temporary folder")?;
    let der = dir.path().join("cert.der");
    let sh = crate::host::runner::shell()?;
    run(
        "secure boot",
        xshell::cmd!(sh, "openssl x509 -in {cert} -outform DER -out {der}"),
    )?;
    std::fs::read(&der).with_context(|| format!("secure boot: read {}", der.display()))
}

/// Signs the EFI binary at `path` in place (sbsign, signing time frozen at
/// `epoch`).
pub fn sign_efi(sb: &SbKey, path: &Path, epoch: u64) -> Result<()> {
    let signed = path.with_extension("signed");
    let sh = crate::host::runner::shell()?;
    sh.set_var("FAKETIME_FMT", "%s");
    let at = epoch.to_string();
    let (key, cert) = (&sb.key, &sb.cert);
    run(
        "secure boot signature",
        xshell::cmd!(
            sh,
            "faketime -f {at} sbsign --key {key} --cert {cert} --output {signed} {path}"
        ),
    )?;
    std::fs::rename(&signed, path)
        .with_context(|| format!("secure boot signature: replace {}", path.display()))
}

/// Whether `efi` carries an Authenticode signature that verifies with
/// `cert` (sbverify). Err names sbverify's complaint.
pub fn verify_efi(efi: &Path, cert: &Path) -> Result<()> {
    let sh = crate::host::runner::shell()?;
    run(
        "secure boot",
        xshell::cmd!(sh, "sbverify --cert {cert} {efi}"),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

    /// A throwaway key and self-signed certificate.
    fn test_key(dir: &Path, name: &str) -> SbKey {
        let key = dir.join(format!("{name}.key"));
        let cert = dir.join(format!("{name}.crt"));
        let sh = crate::host::runner::shell().unwrap();
        let subj = format!("/CN={name}/");
        run(
            "test",
            xshell::cmd!(
                sh,
                "openssl req -new -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -subj {subj} -keyout {key} -out {cert}"
            ),
        )
        .unwrap();
        SbKey::load(&key, &cert).unwrap()
    }

    #[test]
    fn signatures_are_reproducible_and_verify_only_with_their_certificate() {
        assert!(Path::new(STUB).is_file(), "install systemd-boot-efi");
        let d = tempfile::tempdir().unwrap();
        let k = test_key(d.path(), "a");
        let other = test_key(d.path(), "b");
        let sign = |name: &str| {
            let p = d.path().join(name);
            std::fs::copy(STUB, &p).unwrap();
            sign_efi(&k, &p, 1_735_689_600).unwrap();
            std::fs::read(&p).unwrap()
        };
        let a = sign("1.efi");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let b = sign("2.efi");
        assert!(a == b, "two signatures of the same file 1 s apart differ");
        verify_efi(&d.path().join("1.efi"), &k.cert).unwrap();
        // Control: another certificate, and the unsigned stub, fail.
        assert!(verify_efi(&d.path().join("1.efi"), &other.cert).is_err());
        assert!(verify_efi(Path::new(STUB), &k.cert).is_err());
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_bad_input() {
        let d = tempfile::tempdir().unwrap();
        let a = test_key(d.path(), "a");
        let b = test_key(d.path(), "b");
        let e = SbKey::load(&a.key, &b.cert).unwrap_err();
        assert!(e.downcast_ref::<crate::InputError>().is_some(), "{e:#}");
        assert!(format!("{e}").contains("does not belong"), "{e:#}");
        let e = SbKey::load(&a.cert, &a.cert).unwrap_err();
        assert!(format!("{e}").contains("--sb-key"), "{e:#}");
    }

    #[test]
    fn fingerprint_is_the_sha256_of_the_der_certificate() {
        let d = tempfile::tempdir().unwrap();
        let a = test_key(d.path(), "a");
        let sh = crate::host::runner::shell().unwrap();
        let cert = &a.cert;
        let out = run(
            "test",
            xshell::cmd!(sh, "openssl x509 -in {cert} -noout -fingerprint -sha256"),
        )
        .unwrap();
        let want = out
            .trim()
            .rsplit('=')
            .next()
            .unwrap()
            .replace(':', "")
            .to_lowercase();
        assert_eq!(cert_fingerprint(cert).unwrap().hex(), want);
    }
}
