//! The kernel command line each medium's UKI carries: cairn's words (every
//! root hash, the medium, the state mode), then the recipe's extras.

use crate::host::digest::Sha256;
use crate::recipe::Recipe;

use super::Medium;

/// The kernel command line: cairn's words, then the recipe's extras.
/// cairn owns verity in its initramfs, so it passes `cairn.roothash=`,
/// never systemd's `roothash=` (whose generator would act on it too).
/// Each model volume's root hash rides along as `cairn.volume.NAME=HASH`.
/// Each volume's verity parameters too (`cairn.verity.KEY=`): the init
/// opens the trees without their superblocks.
pub fn kernel_cmdline(
    recipe: &Recipe,
    root: &crate::pipeline::verity::VerityTree,
    volumes: &[crate::pipeline::volumes::Volume],
    medium: Medium,
) -> String {
    let mut words = vec![root.params_word("root")];
    for v in volumes {
        words.push(v.cmdline_word());
        words.push(v.verity.params_word(&verity_key(v.kind, &v.name)));
    }
    cmdline_of_words(recipe, &root.root_hash, words, medium)
}

/// The key of a volume's `cairn.verity.` word: its mapping in the init.
pub(crate) fn verity_key(kind: crate::pipeline::volumes::Kind, name: &str) -> String {
    match kind {
        crate::pipeline::volumes::Kind::Apps => "apps".into(),
        crate::pipeline::volumes::Kind::Model => format!("model-{name}"),
    }
}

/// [`kernel_cmdline`] from the volumes' words.
pub(crate) fn cmdline_of_words(
    recipe: &Recipe,
    root_hash: &Sha256,
    volume_words: Vec<String>,
    medium: Medium,
) -> String {
    let state = match (medium, recipe.state_mode, recipe.debug_unencrypted_state) {
        // ISO media have no state partition: RAM.
        (Medium::Iso, _, _) => "ram",
        (Medium::Disk, crate::recipe::StateMode::Ram, _) => "ram",
        (Medium::Disk, crate::recipe::StateMode::Disk, false) => "disk",
        (Medium::Disk, crate::recipe::StateMode::Disk, true) => "disk-unencrypted",
    };
    let mut words = vec![
        "console=tty0".to_string(),
        "console=ttyS0,115200".to_string(),
        format!("cairn.roothash={root_hash}"),
    ];
    words.extend(volume_words);
    words.extend([
        format!(
            "cairn.medium={}",
            match medium {
                Medium::Disk => "disk",
                Medium::Iso => crate::media::ISO.name,
            }
        ),
        format!("cairn.state={state}"),
        format!("cairn.ram_size={}", recipe.ram_size),
        "systemd.gpt_auto=0".to_string(),
        "systemd.firstboot=0".to_string(),
        // A kernel panic (dm-verity reading a corrupted block) halts for
        // good: no reboot into the same corruption.
        "panic=0".to_string(),
        // Skip the IO-APIC timer sanity check: under software emulation
        // (QEMU TCG on a busy host) it misfires and panics the kernel 0.05 s
        // into boot ("IO-APIC + timer doesn't work!"); cloud images set it
        // for the same reason. Hardware with a working timer is unaffected.
        "no_timer_check".to_string(),
    ]);
    if recipe.state_grow && medium == Medium::Disk {
        words.push("cairn.state_grow=1".to_string());
    }
    words.extend(recipe.cmdline_extra.iter().cloned());
    words.join(" ")
}
