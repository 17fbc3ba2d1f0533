//! Trusted boot in a release: the Secure Boot key pair and its firmware
//! enrolment material (`cairn keygen --secure-boot`), what the manifest
//! records (certificate fingerprint, predicted PCR 11, BIOS path, shim),
//! and the checks `cairn verify` runs on each shipped ESP and UKI.
//! Invariant: a UKI counts as signed only if sbverify accepts it with the
//! certificate whose fingerprint the signed manifest holds; shim and
//! MokManager count only if their digests are the manifest's.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::host::digest::Sha256;
use crate::host::runner::run;
use crate::media::esp;
use crate::pipeline::sbsign::SbKey;
use crate::pipeline::shim::{Shim, ShimFile};
use crate::release::manifest::{BootInfo, EspBinary, Manifest, ShimInfo};

/// The certificate shipped beside the media (PEM), for sbverify and for
/// enrolment.
pub const CERT_FILE: &str = "secure-boot.crt";

/// Fills the manifest's trusted-boot block from the shipped UKIs, the
/// shim chain in front of them (if any) and the recipe's
/// `[boot] allow_bios` and `allow_unsigned`; copies
/// the certificate (only the certificate, never a key bundled with it)
/// into the release folder `media`.
pub fn boot_info(
    allow_bios: bool,
    allow_unsigned: bool,
    sb: Option<&SbKey>,
    shim: Option<&Shim>,
    uki: &Path,
    iso_uki: Option<&Path>,
    media: &Path,
) -> Result<BootInfo> {
    if shim.is_some() && sb.is_none() {
        anyhow::bail!("secure boot: shim without a Secure Boot key would start no UKI");
    }
    let pcr = |p: &Path| -> Result<Sha256> {
        let data = std::fs::read(p).with_context(|| format!("pcr 11: read {}", p.display()))?;
        crate::pipeline::measure::predict_pcr11(&data)
    };
    let cert_sha256 = match sb {
        Some(k) => {
            let sh = crate::host::runner::shell()?;
            let (cert, out) = (&k.cert, media.join(CERT_FILE));
            run(
                "secure boot",
                xshell::cmd!(sh, "openssl x509 -in {cert} -outform PEM -out {out}"),
            )?;
            Some(crate::pipeline::sbsign::cert_fingerprint(&out)?)
        }
        None => None,
    };
    Ok(BootInfo {
        secure_boot_cert_sha256: cert_sha256,
        pcr11_sha256: Some(pcr(uki)?),
        iso_pcr11_sha256: iso_uki.map(pcr).transpose()?,
        // The ISO always carries GRUB for BIOS machines.
        bios_boot: iso_uki.is_some(),
        allow_bios,
        shim: shim.map(shim_info),
        allow_unsigned,
    })
}

fn shim_info(s: &Shim) -> ShimInfo {
    let bin = |f: &ShimFile, path: &str| EspBinary {
        path: path.into(),
        sha256: f.sha256,
        package: f.package.into(),
        version: f.version.clone(),
    };
    ShimInfo {
        shim: bin(&s.shim, esp::BOOT_PATH),
        mok_manager: s
            .mok_manager
            .as_ref()
            .map(|m| bin(m, esp::MOK_MANAGER_PATH)),
        uki: esp::SHIM_NEXT_PATH.into(),
    }
}

/// The manifest's shim chain, if its paths are the ones cairn writes
/// (verify reads the ESP by those, never by a path the manifest makes up).
fn shim_layout(boot: &BootInfo) -> Result<Option<&ShimInfo>, String> {
    let Some(s) = &boot.shim else {
        return Ok(None);
    };
    let want = (esp::BOOT_PATH, esp::MOK_MANAGER_PATH, esp::SHIM_NEXT_PATH);
    // No MokManager: nothing to place; verify checks the ESP has none.
    let mm = s
        .mok_manager
        .as_ref()
        .map_or(esp::MOK_MANAGER_PATH, |m| m.path.as_str());
    if (s.shim.path.as_str(), mm, s.uki.as_str()) != want {
        return Err(format!(
            "shim: the manifest places shim, MokManager and the UKI at {}, {}, {}; cairn writes {}, {}, {}",
            s.shim.path, mm, s.uki, want.0, want.1, want.2
        ));
    }
    Ok(Some(s))
}

/// shim and MokManager on the ESP in `image` at `offset` have the
/// manifest's digests.
fn check_shim_files(
    image: &Path,
    offset: u64,
    name: &str,
    shim: &ShimInfo,
    dir: &Path,
) -> Result<String, String> {
    for (i, bin) in std::iter::once(&shim.shim)
        .chain(shim.mok_manager.as_ref())
        .enumerate()
    {
        let dest = dir.join(format!("{name}.shim{i}.efi"));
        mcopy_file(image, offset, &bin.path, &dest)
            .map_err(|e| format!("shim: {name}: cannot extract {}: {e}", bin.path))?;
        let got = Sha256::of_file(&dest).map_err(|e| format!("shim: {name}: {}", one_line(&e)))?;
        if got != bin.sha256 {
            return Err(format!(
                "shim: {name}: {} has sha256 {got}, manifest says {} ({} {})",
                bin.path, bin.sha256, bin.package, bin.version
            ));
        }
    }
    let mm = match &shim.mok_manager {
        Some(m) => format!("{} is {} {}", m.path, m.package, m.version),
        None => {
            // The manifest says no MokManager: the ESP must hold none.
            let dest = dir.join(format!("{name}.mm.efi"));
            if mcopy_file(image, offset, esp::MOK_MANAGER_PATH, &dest).is_ok() {
                return Err(format!(
                    "shim: {name}: the ESP holds {} but the manifest says the stick has no MokManager ([boot] mok_manager = false)",
                    esp::MOK_MANAGER_PATH
                ));
            }
            format!("no MokManager at {}", esp::MOK_MANAGER_PATH)
        }
    };
    Ok(format!(
        "shim: {name}: {} is {} {} and {mm}, by digest; the UKI is {}",
        shim.shim.path, shim.shim.package, shim.shim.version, shim.uki
    ))
}

/// The checks on each medium in `media` (already digest-checked): with
/// shim, shim and MokManager on the ESP have the manifest's digests and
/// the UKI is read from shim's second-stage path; the
/// UKI's PCR 11 is the manifest's; when the manifest names a certificate,
/// the shipped certificate has that fingerprint, sbverify accepts the UKI
/// with it, and the signed UKI's command line carries the root hash. With
/// `production`, unsigned UKIs and an unaccepted BIOS path are refused
/// unless the recipe accepted them. Err: one line.
pub fn check(
    folder: &Path,
    media: &[String],
    manifest: &Manifest,
    production: bool,
) -> Result<Vec<String>, String> {
    let boot = &manifest.boot;
    let mut checks = Vec::new();
    let cert = match &boot.secure_boot_cert_sha256 {
        Some(want) => {
            let path = folder.join(CERT_FILE);
            if !path.is_file() {
                return Err(format!(
                    "secure boot: manifest names certificate {want} but {CERT_FILE} is missing"
                ));
            }
            let got = crate::pipeline::sbsign::cert_fingerprint(&path)
                .map_err(|e| format!("secure boot: {CERT_FILE}: {}", one_line(&e)))?;
            if got != *want {
                return Err(format!(
                    "secure boot: {CERT_FILE} has fingerprint {got}, manifest says {want}"
                ));
            }
            checks.push(format!("secure boot: {CERT_FILE} has fingerprint {got}"));
            Some(path)
        }
        None => None,
    };
    let shim = shim_layout(boot)?;
    if shim.is_some() && cert.is_none() {
        return Err(
            "shim: the manifest puts shim in front of the UKI but names no Secure Boot certificate; shim starts no unsigned UKI"
                .into(),
        );
    }
    let uki_path = esp::uki_path(shim.is_some());
    let dir = tempfile::tempdir().map_err(|e| format!("secure boot: temporary folder: {e}"))?;
    for name in media {
        use crate::media::Esp;
        let esp = match crate::media::Format::of_file(name) {
            Some(f) if f.is_file(name) => f.esp,
            _ => continue,
        };
        let want_pcr = match esp {
            Esp::Partition => boot.pcr11_sha256,
            Esp::IsoImage => boot.iso_pcr11_sha256,
            // Checked in the raw disk it holds byte for byte.
            Esp::OfRaw => continue,
        };
        // A manifest from before trusted boot claims nothing to check.
        if want_pcr.is_none() && cert.is_none() {
            continue;
        }
        let (image, offset) = match esp {
            Esp::Partition => raw_esp(folder, name, manifest)?,
            Esp::IsoImage => (iso_esp(folder, name, dir.path())?, 0),
            Esp::OfRaw => continue,
        };
        if let Some(s) = shim {
            checks.push(check_shim_files(&image, offset, name, s, dir.path())?);
        }
        let uki = dir.path().join(format!("{name}.efi"));
        mcopy_file(&image, offset, uki_path, &uki)
            .map_err(|e| format!("uki: {name}: cannot extract {uki_path}: {e}"))?;
        let data = std::fs::read(&uki).map_err(|e| format!("uki: {name}: {e}"))?;
        if let Some(want) = want_pcr {
            let got = crate::pipeline::measure::predict_pcr11(&data)
                .map_err(|e| format!("pcr 11: {name}: {}", one_line(&e)))?;
            if got != want {
                return Err(format!(
                    "pcr 11: {name}: its UKI measures to {got}, manifest predicts {want}"
                ));
            }
            checks.push(format!(
                "pcr 11: {name}: UKI measures to the predicted {got}"
            ));
        }
        if let Some(cert) = &cert {
            crate::pipeline::sbsign::verify_efi(&uki, cert).map_err(|e| {
                format!(
                    "secure boot: {name}: {} is not signed by {CERT_FILE}: {}",
                    file_name(uki_path),
                    one_line(&e)
                )
            })?;
            // The command line sbverify just covered: the root hash the
            // firmware-checked UKI hands the initramfs.
            let cmdline = crate::pipeline::uki::read_cmdline(&data)
                .map_err(|e| format!("secure boot: {name}: {}", one_line(&e)))?;
            let want = format!("cairn.roothash={}", manifest.verity.root_hash);
            if !cmdline.split_ascii_whitespace().any(|w| w == want) {
                return Err(format!(
                    "secure boot: {name}: the signed UKI's command line lacks {want}"
                ));
            }
            checks.push(format!(
                "secure boot: {name}: {} signature verifies with {CERT_FILE}; its signed command line carries the root hash",
                file_name(uki_path)
            ));
        }
    }
    if production {
        if cert.is_none() && !boot.allow_unsigned {
            return Err(UNSIGNED_REFUSAL.into());
        }
        if boot.bios_boot && !boot.allow_bios {
            return Err(
                "production: the ISO boots legacy BIOS machines through GRUB, which no firmware verifies; set [boot] allow_bios = true in the recipe to accept that"
                    .into(),
            );
        }
        checks.push(if boot.bios_boot {
            "production: BIOS path on, accepted by the recipe ([boot] allow_bios)".into()
        } else {
            "production: no unverified BIOS path".into()
        });
    }
    Ok(checks)
}

/// `verify --production` on a release whose UKIs carry no Secure Boot
/// signature: no firmware checks them, so any boot loader (or the UEFI
/// shell) can start them with `rdinit=/bin/sh`.
pub const UNSIGNED_REFUSAL: &str = "production: the UKIs are not Secure-Boot signed, so any boot loader's rdinit= or init= opens a shell; build with --sb-key and --sb-cert, or set [boot] allow_unsigned = true in the recipe to accept that";

/// What `verify --production` prints (a note) for unsigned UKIs the
/// recipe accepted.
pub const UNSIGNED_WARNING: &str = "WARNING: production: the UKIs are NOT Secure-Boot signed (accepted by [boot] allow_unsigned): any boot loader's rdinit= or init= opens a shell on this image";

/// The notes `verify` adds for what `check` accepted but a reviewer must
/// see (production only).
pub fn notes(manifest: &Manifest, production: bool) -> Vec<String> {
    let boot = &manifest.boot;
    if production && boot.secure_boot_cert_sha256.is_none() && boot.allow_unsigned {
        vec![UNSIGNED_WARNING.into()]
    } else {
        Vec::new()
    }
}

/// `cairn inspect`'s trusted-boot lines.
pub fn inspect_lines(boot: &BootInfo) -> Vec<String> {
    let mut v = vec![match &boot.secure_boot_cert_sha256 {
        Some(fp) => format!("secure boot  UKIs signed; certificate {CERT_FILE} sha256 {fp}"),
        None if boot.allow_unsigned => "secure boot  UNSIGNED UKIs: firmware with Secure Boot on refuses them; WARNING: accepted in production by [boot] allow_unsigned".into(),
        None => "secure boot  UNSIGNED UKIs: firmware with Secure Boot on refuses them; `verify --production` refuses them".into(),
    }];
    if let Some(p) = &boot.pcr11_sha256 {
        v.push(format!(
            "pcr 11       {p} (sha256 bank, raw/qcow2 UKI measured by systemd-stub)"
        ));
    }
    if let Some(p) = &boot.iso_pcr11_sha256 {
        v.push(format!(
            "iso pcr 11   {p} (sha256 bank, ISO UKI measured by systemd-stub)"
        ));
    }
    v.push(match &boot.shim {
        Some(s) => format!(
            "shim         {} {} (sha256 {}) at {} starts the UKI at {} only if its signer is enrolled as a MOK (or is Microsoft's or Debian's: see docs/secure-boot.md); {}",
            s.shim.package,
            s.shim.version,
            s.shim.sha256,
            s.shim.path,
            s.uki,
            match &s.mok_manager {
                Some(m) => format!(
                    "MokManager {} {} at {} (enrols with physical presence; set a MOK password)",
                    m.package, m.version, m.path
                ),
                None => "no MokManager on the stick ([boot] mok_manager = false)".into(),
            }
        ),
        None => format!(
            "shim         none: the firmware starts the UKI at {} itself (its db must trust the certificate)",
            esp::BOOT_PATH
        ),
    });
    v.push(match (boot.bios_boot, boot.allow_bios) {
        (false, _) => "bios boot    off: every boot path is firmware-verified UEFI".into(),
        (true, true) => "bios boot    ON, UNVERIFIED: the ISO boots BIOS machines through GRUB, which no firmware checks (accepted by [boot] allow_bios)".into(),
        (true, false) => "bios boot    ON, UNVERIFIED: the ISO boots BIOS machines through GRUB, which no firmware checks; `verify --production` refuses it".into(),
    });
    v
}

fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}")
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The last part of an ESP path (`BOOTX64.EFI`, `grubx64.efi`), for messages.
pub fn file_name(esp_path: &str) -> &str {
    esp_path.rsplit('/').next().unwrap_or(esp_path)
}

/// mcopy `esp_path` out of the FAT image at `offset` of `image`.
fn mcopy_file(image: &Path, offset: u64, esp_path: &str, dest: &Path) -> Result<(), String> {
    let src = format!("{}@@{offset}", image.display());
    let from = format!("::/{esp_path}");
    let sh = crate::host::runner::shell().map_err(|e| e.to_string())?;
    sh.set_var("MTOOLS_SKIP_CHECK", "1");
    run("uki", xshell::cmd!(sh, "mcopy -n -i {src} {from} {dest}"))
        .map(|_| ())
        .map_err(|e| one_line(&e))
}

/// The raw disk's ESP, where the manifest (checked against the GPT by
/// verify) puts it.
fn raw_esp(folder: &Path, name: &str, manifest: &Manifest) -> Result<(PathBuf, u64), String> {
    let esp = manifest
        .partitions
        .iter()
        .find(|p| p.label == crate::media::disk::LABEL_ESP)
        .ok_or_else(|| format!("uki: {name}: the manifest has no ESP partition"))?;
    Ok((folder.join(name), esp.offset))
}

/// The ISO's El Torito EFI image, extracted into `dir`.
fn iso_esp(folder: &Path, name: &str, dir: &Path) -> Result<PathBuf, String> {
    let efi = dir.join(format!("{name}.efi.img"));
    crate::media::iso::read_file_from_iso(&folder.join(name), crate::media::iso::ISO_EFI_IMG, &efi)
        .map_err(|e| {
            format!(
                "uki: {name}: cannot extract {}: {}",
                crate::media::iso::ISO_EFI_IMG,
                one_line(&e)
            )
        })?;
    Ok(efi)
}

/// The files `keygen` writes for prefix `name`.
pub fn keygen_files(name: &Path) -> Vec<PathBuf> {
    let with = |suffix: &str| {
        let mut s = name.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    [
        ".sb.key",
        ".sb.crt",
        ".sb.cer",
        ".PK.esl",
        ".PK.auth",
        ".KEK.esl",
        ".KEK.auth",
        ".db.esl",
        ".db.auth",
    ]
    .iter()
    .map(|s| with(s))
    .collect()
}

/// `cairn keygen --secure-boot NAME`: an RSA-2048 key (NAME.sb.key, PEM,
/// unencrypted, mode 0600) and a self-signed X.509 certificate
/// (NAME.sb.crt PEM, NAME.sb.cer DER for firmware menus and MOK), plus
/// the same certificate as a PK, KEK and db signature list (.esl) and as
/// signed update (.auth, PK self-signed, KEK signed by PK, db by KEK) for
/// enrolling in setup mode. Writes nothing if any file exists.
pub fn keygen(name: &Path) -> Result<Vec<PathBuf>> {
    let files = keygen_files(name);
    if let Some(f) = files.iter().find(|f| f.exists()) {
        return Err(anyhow::Error::new(crate::InputError(format!(
            "keygen: {} exists; cairn never overwrites keys (choose another NAME)",
            f.display()
        ))));
    }
    let stem = name
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| crate::InputError(format!("keygen: {} has no file name", name.display())))?;
    let parent = match name.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Made in a temporary folder beside the target, moved in at the end.
    let tmp = tempfile::Builder::new()
        .prefix(".cairn-keygen")
        .tempdir_in(&parent)
        .with_context(|| format!("keygen: cannot write in {}", parent.display()))?;
    let t = |s: &str| tmp.path().join(s);
    let (key, crt, cer) = (t("sb.key"), t("sb.crt"), t("sb.cer"));
    // Only printable ASCII in the subject: it is a file name, not input
    // to a shell, but openssl parses "/" and "=" in it.
    let cn: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let subj = format!("/CN={cn} Secure Boot signing key/");
    let sh = crate::host::runner::shell()?;
    run(
        "keygen",
        xshell::cmd!(
            sh,
            "openssl req -new -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -subj {subj} -keyout {key} -out {crt}"
        ),
    )?;
    run(
        "keygen",
        xshell::cmd!(sh, "openssl x509 -in {crt} -outform DER -out {cer}"),
    )?;
    // The signature-list owner GUID derives from the certificate.
    let fp = crate::pipeline::sbsign::cert_fingerprint(&crt)?.hex();
    let guid = format!(
        "{}-{}-{}-{}-{}",
        &fp[0..8],
        &fp[8..12],
        &fp[12..16],
        &fp[16..20],
        &fp[20..32]
    );
    // One key plays PK, KEK and db: the user's own, signing each update.
    for var in ["PK", "KEK", "db"] {
        let (esl, auth) = (t(&format!("{var}.esl")), t(&format!("{var}.auth")));
        run(
            "keygen",
            xshell::cmd!(sh, "cert-to-efi-sig-list -g {guid} {crt} {esl}"),
        )?;
        run(
            "keygen",
            xshell::cmd!(
                sh,
                "sign-efi-sig-list -g {guid} -k {key} -c {crt} {var} {esl} {auth}"
            ),
        )?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    let made = [
        "sb.key", "sb.crt", "sb.cer", "PK.esl", "PK.auth", "KEK.esl", "KEK.auth", "db.esl",
        "db.auth",
    ];
    for (src, dst) in made.iter().zip(&files) {
        std::fs::rename(t(src), dst).with_context(|| format!("keygen: write {}", dst.display()))?;
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

    /// A small UKI on the host's stub, signed with `key` when given.
    fn uki(dir: &Path, name: &str, cmdline: &str, key: Option<&SbKey>) -> PathBuf {
        let (k, i, o) = (dir.join("k"), dir.join("i"), dir.join("o"));
        std::fs::write(&k, vec![1u8; 9000]).unwrap();
        std::fs::write(&i, vec![2u8; 3000]).unwrap();
        std::fs::write(&o, "ID=test\n").unwrap();
        let out = dir.join(name);
        crate::pipeline::uki::make_uki(
            &crate::pipeline::uki::UkiInputs {
                stub: Path::new(STUB),
                kernel: &k,
                initrd: &i,
                os_release: &o,
                cmdline,
                epoch: 1_735_689_600,
            },
            dir,
            &out,
        )
        .unwrap();
        if let Some(key) = key {
            crate::pipeline::sbsign::sign_efi(key, &out, 1_735_689_600).unwrap();
        }
        out
    }

    #[test]
    fn boot_info_records_the_certificate_and_both_predictions() {
        let d = tempfile::tempdir().unwrap();
        keygen(&d.path().join("k")).unwrap();
        let key = SbKey::load(&d.path().join("k.sb.key"), &d.path().join("k.sb.crt")).unwrap();
        let raw = uki(d.path(), "raw.efi", "cairn.medium=disk", Some(&key));
        let iso = uki(d.path(), "iso.efi", "cairn.medium=iso", Some(&key));
        let media = d.path().join("media");
        std::fs::create_dir(&media).unwrap();
        let b = boot_info(false, false, Some(&key), None, &raw, Some(&iso), &media).unwrap();
        assert_eq!(
            b.secure_boot_cert_sha256,
            Some(crate::pipeline::sbsign::cert_fingerprint(&key.cert).unwrap())
        );
        // The shipped copy is the certificate and nothing else.
        let shipped = std::fs::read_to_string(media.join(CERT_FILE)).unwrap();
        assert!(shipped.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(!shipped.contains("PRIVATE KEY"));
        assert!(b.bios_boot && !b.allow_bios);
        assert_ne!(b.pcr11_sha256, b.iso_pcr11_sha256);
        // The signature does not change the prediction.
        let unsigned = uki(d.path(), "plain.efi", "cairn.medium=disk", None);
        let p = crate::pipeline::measure::predict_pcr11(&std::fs::read(unsigned).unwrap()).unwrap();
        assert_eq!(b.pcr11_sha256, Some(p));
        // Without a key or an ISO: unsigned, no BIOS path.
        let media2 = d.path().join("media2");
        std::fs::create_dir(&media2).unwrap();
        let b = boot_info(false, false, None, None, &raw, None, &media2).unwrap();
        assert_eq!(b.secure_boot_cert_sha256, None);
        assert!(!b.bios_boot && b.iso_pcr11_sha256.is_none());
        assert!(!media2.join(CERT_FILE).exists());
        let lines = inspect_lines(&b).join("\n");
        assert!(lines.contains("UNSIGNED UKIs"), "{lines}");
        assert!(lines.contains("bios boot    off"), "{lines}");
    }

    #[test]
    fn keygen_makes_a_working_key_and_enrolment_material_and_never_overwrites() {
        let d = tempfile::tempdir().unwrap();
        let name = d.path().join("site");
        let files = keygen(&name).unwrap();
        for f in &files {
            assert!(std::fs::metadata(f).unwrap().len() > 0, "{}", f.display());
        }
        let key = d.path().join("site.sb.key");
        let crt = d.path().join("site.sb.crt");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // The pair loads as a signing key.
        SbKey::load(&key, &crt).unwrap();
        // The subject is the name, nothing from the host.
        let sh = crate::host::runner::shell().unwrap();
        let subj = run(
            "test",
            xshell::cmd!(sh, "openssl x509 -in {crt} -noout -subject"),
        )
        .unwrap();
        assert!(subj.contains("CN = site Secure Boot signing key"), "{subj}");
        // The .esl holds the DER certificate; the .auth wraps a signed .esl.
        let der = std::fs::read(d.path().join("site.sb.cer")).unwrap();
        let esl = std::fs::read(d.path().join("site.db.esl")).unwrap();
        assert!(esl.windows(der.len()).any(|w| w == der.as_slice()));
        let auth = std::fs::read(d.path().join("site.db.auth")).unwrap();
        assert!(auth.len() > esl.len() && auth.ends_with(&esl));
        // Control: a second run refuses and leaves the key as it was.
        let before = std::fs::read(&key).unwrap();
        let e = keygen(&name).unwrap_err();
        assert!(e.downcast_ref::<crate::InputError>().is_some(), "{e:#}");
        assert_eq!(std::fs::read(&key).unwrap(), before);
    }
}
