//! The Debian packages a recipe implies: cairn's required set, the kernel,
//! the runtime's packages and the recipe's own, and where built images'
//! packages come from.

use crate::recipe::{Base, Recipe};

/// Packages every Debian-based image needs for cairn's boot design: systemd
/// as init, busybox + veritysetup for the initramfs, the UKI stub, kmod.
pub const REQUIRED_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "kmod",
    "busybox-static",
    "cryptsetup-bin",
    "systemd-boot-efi",
    "nftables",
    "e2fsprogs",
    // logind (which needs dbus) turns the power button into a clean shutdown.
    "dbus",
];

/// The Debian suite and mirror built images come from: the base's, or
/// bookworm from deb.debian.org for a tarball base.
pub fn image_source(recipe: &Recipe) -> (String, String) {
    match &recipe.base {
        Base::Debian { suite, mirror, .. } => (suite.clone(), mirror.clone()),
        Base::Tarball { .. } => (
            crate::recipe::settings::DEBIAN_SUITE.text().to_string(),
            crate::recipe::settings::DEBIAN_MIRROR.text().to_string(),
        ),
    }
}

/// The package list mmdebstrap installs: the recipe's, cairn's required
/// ones and the kernel package, sorted and deduplicated.
pub fn package_list(recipe: &Recipe, extra: &[String]) -> Vec<String> {
    let mut all: Vec<String> = REQUIRED_PACKAGES.iter().map(|s| s.to_string()).collect();
    all.push(recipe.kernel_package.clone());
    all.extend(
        crate::recipe::workloads::runtime_packages(recipe.workloads.runtime)
            .iter()
            .map(|s| s.to_string()),
    );
    if recipe.state_grow {
        // sfdisk, for the initramfs to grow the state partition.
        all.push("fdisk".to_string());
    }
    if recipe.site.is_some() {
        // signify, for the initramfs to verify the site file.
        all.push("signify-openbsd".to_string());
    }
    if recipe.audit.is_some() {
        // age and openssl, for the guest's audit writer (docs/audit.md).
        all.extend(crate::recipe::audit::PACKAGES.iter().map(|s| s.to_string()));
    }
    all.extend(extra.iter().cloned());
    all.sort();
    all.dedup();
    all
}
