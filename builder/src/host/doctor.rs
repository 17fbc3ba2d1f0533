//! `cairn doctor`: every host tool a build or a boot test needs, found or
//! missing, with the Debian package that provides it.

use std::path::PathBuf;

pub struct Tool {
    pub name: &'static str,
    pub package: &'static str,
    pub needed_for: &'static str,
}

pub const TOOLS: &[Tool] = &[
    Tool {
        name: "nft",
        package: "nftables",
        needed_for: "checking generated firewall rulesets (tests)",
    },
    Tool {
        name: "mmdebstrap",
        package: "mmdebstrap",
        needed_for: "Debian base trees",
    },
    Tool {
        name: "tar",
        package: "tar",
        needed_for: "the stage cache of Debian base trees (base tarballs are read by cairn itself)",
    },
    Tool {
        name: "depmod",
        package: "kmod",
        needed_for: "pruned kernel module indexes",
    },
    Tool {
        name: "mksquashfs",
        package: "squashfs-tools",
        needed_for: "the read-only root",
    },
    Tool {
        name: "veritysetup",
        package: "cryptsetup-bin",
        needed_for: "the dm-verity hash tree",
    },
    Tool {
        name: "objcopy",
        package: "binutils",
        needed_for: "the UKI",
    },
    Tool {
        name: "mkfs.vfat",
        package: "dosfstools",
        needed_for: "the ESP",
    },
    Tool {
        name: "mmd",
        package: "mtools",
        needed_for: "the ESP",
    },
    Tool {
        name: "mcopy",
        package: "mtools",
        needed_for: "the ESP",
    },
    Tool {
        name: "sfdisk",
        package: "fdisk",
        needed_for: "the GPT of the raw disk",
    },
    Tool {
        name: "qemu-img",
        package: "qemu-utils",
        needed_for: "qcow2 media",
    },
    Tool {
        name: "xorriso",
        package: "xorriso",
        needed_for: "hybrid ISO media",
    },
    Tool {
        name: "qemu-system-x86_64",
        package: "qemu-system-x86",
        needed_for: "cairn run and boot tests",
    },
    Tool {
        name: "sbsign",
        package: "sbsigntool",
        needed_for: "Secure Boot signatures (build --sb-key)",
    },
    Tool {
        name: "sbverify",
        package: "sbsigntool",
        needed_for: "Secure Boot checks (verify)",
    },
    Tool {
        name: "faketime",
        package: "faketime",
        needed_for: "reproducible Secure Boot signatures",
    },
    Tool {
        name: "openssl",
        package: "openssl",
        needed_for: "Secure Boot keys and certificates",
    },
    Tool {
        name: "cert-to-efi-sig-list",
        package: "efitools",
        needed_for: "keygen --secure-boot enrolment lists",
    },
    Tool {
        name: "sign-efi-sig-list",
        package: "efitools",
        needed_for: "keygen --secure-boot enrolment updates",
    },
    Tool {
        name: "swtpm",
        package: "swtpm",
        needed_for: "measured-boot tests (software TPM)",
    },
    Tool {
        name: "swtpm_setup",
        package: "swtpm-tools",
        needed_for: "measured-boot tests (TPM state setup, optional)",
    },
    Tool {
        name: "tpm2_pcrread",
        package: "tpm2-tools",
        needed_for: "reading PCRs on a host with a TPM (optional)",
    },
    Tool {
        name: "virt-fw-vars",
        package: "python3-virt-firmware",
        needed_for: "shim boot tests (a MOK in the OVMF variable store; bookworm-backports)",
    },
    Tool {
        name: "signify-openbsd",
        package: "signify-openbsd",
        needed_for: "interop tests (optional)",
    },
];

pub const FILES: &[(&str, &str, &str)] = &[
    (
        "/usr/share/mmdebstrap/hooks/merged-usr/setup00.sh",
        "mmdebstrap",
        "Debian trees without usrmerge and perl (mmdebstrap's merged-usr hook)",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "ovmf",
        "UEFI boots (cairn run, tests)",
    ),
    (
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
        "ovmf",
        "UEFI boots (cairn run, tests)",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
        "ovmf",
        "Secure Boot tests",
    ),
    (
        "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd",
        "ovmf",
        "Secure Boot tests (snakeoil db)",
    ),
    (
        "/usr/lib/systemd/systemd-measure",
        "systemd",
        "PCR 11 cross-check in the unit tests",
    ),
    (
        "/usr/lib/shim/shimx64.efi.signed",
        "shim-signed",
        "[boot] shim: Microsoft-signed shim for stock Secure Boot machines",
    ),
    (
        "/usr/lib/shim/mmx64.efi.signed",
        "shim-helpers-amd64-signed",
        "[boot] shim: MokManager beside shim",
    ),
    (
        "/usr/share/OVMF/OVMF_VARS_4M.ms.fd",
        "ovmf",
        "shim boot tests (Microsoft's keys)",
    ),
];

/// Where programs are looked for: the `PATH` the CLI hands over
/// ([`set_search_path`]), else the usual system folders.
static SEARCH_PATH: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();

/// Sets the programs' search path once (the CLI, from `PATH`).
pub fn set_search_path(path: Option<std::ffi::OsString>) {
    if let Some(p) = path {
        let _ = SEARCH_PATH.set(std::env::split_paths(&p).collect());
    }
}

pub fn find(name: &str) -> Option<PathBuf> {
    let default = || {
        ["/usr/local/sbin", "/usr/local/bin", "/usr/bin", "/bin"]
            .iter()
            .map(PathBuf::from)
            .collect::<Vec<_>>()
    };
    SEARCH_PATH
        .get()
        .cloned()
        .unwrap_or_else(default)
        .into_iter()
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// One tool or file `cairn doctor` looks for, and whether it was found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Item {
    /// The program's name, or the file's path.
    pub name: String,
    pub found: bool,
    /// Needed for a build or boot test (not marked optional).
    pub required: bool,
    pub package: &'static str,
    pub needed_for: &'static str,
}

/// Every tool and file, looked up now.
pub fn survey() -> Vec<Item> {
    let tools = TOOLS.iter().map(|t| Item {
        name: t.name.to_string(),
        found: find(t.name).is_some(),
        required: !t.needed_for.contains("optional"),
        package: t.package,
        needed_for: t.needed_for,
    });
    let files = FILES.iter().map(|(f, pkg, why)| Item {
        name: f.to_string(),
        found: std::path::Path::new(f).is_file(),
        required: !why.contains("optional"),
        package: pkg,
        needed_for: why,
    });
    tools.chain(files).collect()
}

/// The Debian packages that bring the missing required items, sorted.
pub fn missing_packages(items: &[Item]) -> Vec<&'static str> {
    let mut missing: Vec<&str> = items
        .iter()
        .filter(|i| !i.found && i.required)
        .map(|i| i.package)
        .collect();
    missing.sort();
    missing.dedup();
    missing
}

/// Prints the report; returns how many required packages are missing.
pub fn report() -> usize {
    let items = survey();
    println!(
        "{:<22} {:<8} {:<18} needed for",
        "tool", "status", "debian package"
    );
    for i in &items {
        let status = if i.found { "found" } else { "MISSING" };
        println!(
            "{:<22} {:<8} {:<18} {}",
            i.name.rsplit('/').next().unwrap_or(&i.name),
            status,
            i.package,
            i.needed_for
        );
    }
    let missing = missing_packages(&items);
    if missing.is_empty() {
        println!("\nall host tools present");
    } else {
        println!(
            "\n{} missing; install with: apt-get install {}   (or `make deps`)",
            missing.len(),
            missing.join(" ")
        );
    }
    missing.len()
}
