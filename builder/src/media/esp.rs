//! What an EFI system partition holds, for the raw disk's ESP and the
//! ISO's EFI image alike: the UKI alone at the removable-media boot path,
//! or (`[boot] shim`) Debian's shim there, its MokManager beside it and the
//! UKI where shim looks for its next stage. `cairn verify` finds the UKI
//! by the same rule ([`uki_path`]), from what the manifest says.

use std::path::Path;

use anyhow::Result;

use crate::pipeline::shim::Shim;

/// The removable-media boot path firmware starts on x86-64.
pub const BOOT_PATH: &str = "EFI/BOOT/BOOTX64.EFI";
/// Where shim looks for MokManager: beside itself.
pub const MOK_MANAGER_PATH: &str = "EFI/BOOT/mmx64.efi";
/// Where shim looks for the loader it starts (its default second stage).
pub const SHIM_NEXT_PATH: &str = "EFI/BOOT/grubx64.efi";

/// The ESP path of the UKI: the boot path, or shim's second stage.
pub fn uki_path(shim: bool) -> &'static str {
    if shim {
        SHIM_NEXT_PATH
    } else {
        BOOT_PATH
    }
}

/// One file of an ESP: where it comes from, where it goes.
#[derive(Debug, Clone, Copy)]
pub struct EspFile<'a> {
    pub src: &'a Path,
    pub dest: &'static str,
}

/// The files of an ESP, in the order they are copied.
pub fn files<'a>(uki: &'a Path, shim: Option<&'a Shim>) -> Vec<EspFile<'a>> {
    match shim {
        None => vec![EspFile {
            src: uki,
            dest: BOOT_PATH,
        }],
        Some(s) => {
            let mut v = vec![EspFile {
                src: &s.shim.path,
                dest: BOOT_PATH,
            }];
            if let Some(mm) = &s.mok_manager {
                v.push(EspFile {
                    src: &mm.path,
                    dest: MOK_MANAGER_PATH,
                });
            }
            v.push(EspFile {
                src: uki,
                dest: SHIM_NEXT_PATH,
            });
            v
        }
    }
}

/// Bytes of the files, for sizing the FAT image.
pub fn payload_size(files: &[EspFile]) -> Result<u64> {
    let mut n = 0;
    for f in files {
        n += std::fs::metadata(f.src)
            .map_err(|e| anyhow::anyhow!("ESP: {}: {e}", f.src.display()))?
            .len();
    }
    Ok(n)
}

/// Makes `EFI/BOOT` in the FAT image `image` and copies `files` in (mtools,
/// which stamps them with the shell's SOURCE_DATE_EPOCH).
pub fn fill(sh: &xshell::Shell, stage: &str, image: &Path, files: &[EspFile]) -> Result<()> {
    crate::host::runner::run(stage, xshell::cmd!(sh, "mmd -i {image} ::/EFI ::/EFI/BOOT"))?;
    for f in files {
        let (src, dest) = (f.src, format!("::/{}", f.dest));
        crate::host::runner::run(stage, xshell::cmd!(sh, "mcopy -i {image} {src} {dest}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::digest::Sha256;
    use crate::pipeline::shim::ShimFile;

    #[test]
    fn with_shim_the_uki_is_shims_second_stage() {
        let f = |p: &str| ShimFile {
            path: p.into(),
            sha256: Sha256::of_bytes(p.as_bytes()),
            package: "x",
            version: "1".into(),
        };
        let shim = Shim {
            shim: f("/w/shimx64.efi"),
            mok_manager: Some(f("/w/mmx64.efi")),
        };
        let uki = Path::new("/w/uki.efi");
        let plain = files(uki, None);
        assert_eq!(plain.len(), 1);
        assert_eq!((plain[0].src, plain[0].dest), (uki, uki_path(false)));
        let chain = files(uki, Some(&shim));
        let dests: Vec<&str> = chain.iter().map(|f| f.dest).collect();
        assert_eq!(dests, [BOOT_PATH, MOK_MANAGER_PATH, SHIM_NEXT_PATH]);
        assert_eq!(chain[0].src, Path::new("/w/shimx64.efi"));
        assert_eq!(chain[2].src, uki);
        assert_eq!(uki_path(true), SHIM_NEXT_PATH);
        // `[boot] mok_manager = false`: shim and the UKI only.
        let bare = Shim {
            mok_manager: None,
            ..shim.clone()
        };
        let dests: Vec<&str> = files(uki, Some(&bare)).iter().map(|f| f.dest).collect();
        assert_eq!(dests, [BOOT_PATH, SHIM_NEXT_PATH]);
    }
}
