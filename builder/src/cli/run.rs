//! `cairn run`: boot an image in QEMU on this machine.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::Env;
use crate::host::shown::{self, Shown};
use crate::vm::qemu::Firmware;

fn parse_forward(s: &str) -> Result<(u16, u16), String> {
    crate::vm::run::parse_forward(s).map_err(|e| format!("{e:#}"))
}

/// Boot a raw, qcow2 or ISO image in QEMU on this machine, serial console on
/// the terminal (Ctrl-A x quits). Networking is user-mode with restrict=on:
/// the guest reaches nothing; --forward exposes its ingress ports on
/// 127.0.0.1. KVM when it works, else TCG.
#[derive(clap::Args)]
#[command(
    after_help = after_help!("  cairn run out/field-ai-0.1.0/field-ai-0.1.0.raw --scratch\n  cairn run out/field-ai-0.1.0/field-ai-0.1.0.qcow2 --forward 8080:80 --pubkey release.pub", "  N    otherwise QEMU's own exit code (1: QEMU failed to start)\n")
)]
pub struct Args {
    /// The .raw, .qcow2 or .iso to boot.
    image: PathBuf,
    /// Boot with SeaBIOS (legacy BIOS) instead of OVMF (UEFI).
    #[arg(long)]
    bios: bool,
    /// HOSTPORT:GUESTPORT, repeatable: 127.0.0.1:HOSTPORT reaches the guest's port.
    #[arg(long, value_name = "HOST:GUEST", value_parser = parse_forward)]
    forward: Vec<(u16, u16)>,
    /// Boot a throwaway copy: the image file is never written.
    #[arg(long)]
    scratch: bool,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 2048)]
    memory: u32,
    /// Check the image's release folder first (SHA256.sig with this
    /// key, the image's digest) and boot only if it passes.
    #[arg(long, value_name = "KEY.pub")]
    pubkey: Option<PathBuf>,
}

/// Exits with QEMU's exit code.
pub fn exec(a: Args, env: &Env) -> Result<ExitCode> {
    // QEMU opens the image as its row of the format table says.
    let format = crate::media::Format::of_path(&a.image).ok_or_else(|| {
        crate::InputError(format!(
            "run: {}: cannot tell the format; expected {} (or .{})",
            shown::path(&a.image),
            crate::media::extensions(|_| true),
            crate::media::RAW.aliases.join(", .")
        ))
    })?;
    if !format.runs {
        return Err(crate::InputError(format!(
            "run: {}: a .{} file is not booted as it is; unpack its disk first (`cairn verify` checks it)",
            shown::path(&a.image),
            format.extension
        ))
        .into());
    }
    if let Some(key) = &a.pubkey {
        // Any failed check refuses the boot as bad input (exit 2), saying
        // which image and key.
        let c = crate::release::verify::check_release(&a.image, key).map_err(|e| {
            crate::InputError(format!(
                "run: {}: the release does not check with {}: {}",
                shown::path(&a.image),
                shown::path(key),
                Shown(&e.to_string())
            ))
        })?;
        eprintln!(
            "cairn run: {} {} verified with key {}",
            Shown(&c.manifest.image.name),
            Shown(&c.manifest.image.version),
            c.key_id
        );
    }
    let opts = crate::vm::run::RunOptions {
        firmware: if a.bios {
            Firmware::Bios
        } else {
            Firmware::Uefi
        },
        forwards: a.forward,
        scratch: a.scratch,
        memory_mib: a.memory,
        ..Default::default()
    };
    crate::vm::qemu::configure(env.qemu_config())?;
    let code = crate::vm::run::run_image(&a.image, format.qemu, opts)?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
