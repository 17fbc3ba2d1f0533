//! Debian's Microsoft-signed shim, for `[boot] shim = true`: stock
//! machines trust Microsoft's UEFI CA, which signed shim; shim then starts
//! the UKI only if its signature verifies with a key the machine owner
//! enrolled (a MOK). The files come from the build host's packages, like
//! the ISO's GRUB, copied into the build's work folder once and hashed
//! there, so what is shipped is what the manifest names.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::host::digest::Sha256;
use crate::host::runner::run;

/// shim signed by Microsoft's UEFI CA (Debian package `shim-signed`).
pub const HOST_SHIM: &str = "/usr/lib/shim/shimx64.efi.signed";
/// MokManager, signed by Debian (package `shim-helpers-amd64-signed`,
/// which `shim-signed` depends on): shim starts it to enrol a MOK.
pub const HOST_MOK_MANAGER: &str = "/usr/lib/shim/mmx64.efi.signed";
pub const SHIM_PACKAGE: &str = "shim-signed";
pub const MOK_MANAGER_PACKAGE: &str = "shim-helpers-amd64-signed";

/// One shipped file of the shim chain: where it is in this build's work
/// folder, its digest, and the host package (and version) it came from.
#[derive(Debug, Clone)]
pub struct ShimFile {
    pub path: PathBuf,
    pub sha256: Sha256,
    pub package: &'static str,
    pub version: String,
}

/// shim and MokManager, ready to go on an ESP in front of the UKI.
#[derive(Debug, Clone)]
pub struct Shim {
    pub shim: ShimFile,
    /// None: `[boot] mok_manager = false`, the stick enrols nothing.
    pub mok_manager: Option<ShimFile>,
}

/// Whether the build host has the shim files (checked before the build
/// writes anything). Err names the Debian package.
pub fn check_host() -> Result<()> {
    for (p, package) in [
        (HOST_SHIM, SHIM_PACKAGE),
        (HOST_MOK_MANAGER, MOK_MANAGER_PACKAGE),
    ] {
        if !Path::new(p).is_file() {
            bail!("[boot] shim: {p} not found; install the Debian package {package} (make deps)");
        }
    }
    Ok(())
}

/// Copies the host's shim (and MokManager, when `mok_manager`) into `work`
/// and hashes the copies.
pub fn take_host_shim(work: &Path, mok_manager: bool) -> Result<Shim> {
    check_host()?;
    let take = |src: &str, name: &str, package: &'static str| -> Result<ShimFile> {
        let path = work.join(name);
        std::fs::copy(src, &path)
            .with_context(|| format!("shim: copy {src} to {}", path.display()))?;
        Ok(ShimFile {
            sha256: Sha256::of_file(&path)?,
            path,
            package,
            version: package_version(package)?,
        })
    };
    Ok(Shim {
        shim: take(HOST_SHIM, "shimx64.efi", SHIM_PACKAGE)?,
        mok_manager: if mok_manager {
            Some(take(HOST_MOK_MANAGER, "mmx64.efi", MOK_MANAGER_PACKAGE)?)
        } else {
            None
        },
    })
}

/// The installed version of a host package (dpkg-query).
fn package_version(package: &str) -> Result<String> {
    let sh = crate::host::runner::shell()?;
    let format = "${Version}";
    let v = run(
        "shim",
        xshell::cmd!(sh, "dpkg-query -W -f {format} {package}"),
    )?;
    let v = v.trim().to_string();
    if v.is_empty() {
        bail!("shim: dpkg-query names no installed version of {package}");
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_shim_is_microsoft_signed_and_taken_with_its_digest_and_version() {
        testkit::file(HOST_SHIM, SHIM_PACKAGE);
        testkit::tool("sbverify", "sbsigntool");
        let d = tempfile::tempdir().unwrap();
        let s = take_host_shim(d.path(), true).unwrap();
        let mm = s.mok_manager.as_ref().unwrap();
        assert_eq!(
            s.shim.sha256,
            Sha256::of_file(Path::new(HOST_SHIM)).unwrap()
        );
        assert_eq!(
            mm.sha256,
            Sha256::of_file(Path::new(HOST_MOK_MANAGER)).unwrap()
        );
        assert!(s.shim.version.chars().any(|c| c.is_ascii_digit()), "{s:?}");
        assert_eq!(mm.package, MOK_MANAGER_PACKAGE);
        // Without MokManager: shim only.
        let d2 = tempfile::tempdir().unwrap();
        assert!(take_host_shim(d2.path(), false)
            .unwrap()
            .mok_manager
            .is_none());
        assert!(!d2.path().join("mmx64.efi").exists());
        // What firmware with only Microsoft's keys will accept.
        let sh = crate::host::runner::shell().unwrap();
        let p = &s.shim.path;
        let list = run("test", xshell::cmd!(sh, "sbverify --list {p}")).unwrap();
        assert!(
            list.contains("Microsoft Corporation UEFI CA 2011"),
            "{list}"
        );
    }
}
