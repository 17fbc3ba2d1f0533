//! `cairn flash`: an image to USB sticks or disks, verified first and
//! read back after.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::Env;
use crate::field::flash::{flash_devices, Flashed, ManyOptions};

/// Write an image to a USB stick or disk, verified first and read back after.
///
/// The image's signature and digests are checked against KEY.pub before a
/// byte is written; the device must not be mounted, must not hold the
/// running system and must be large enough. The first MiB is written last,
/// so an interrupted write leaves the device unbootable rather than
/// half-right. A regular file is accepted as DEVICE only with --to-file.
#[derive(clap::Args)]
#[command(
    after_help = after_help!("  cairn flash out/field-ai-0.1.0/field-ai-0.1.0.raw /dev/sdb --pubkey release.pub\n  cairn flash out/field-ai-0.1.0/field-ai-0.1.0.raw /dev/sdb /dev/sdc --pubkey release.pub --receipts receipts.jsonl --site site.toml", "  1    a device was refused (mounted, the running system, too small) or a write or\n       read-back failed; with several devices the worst decides (signal, then 1, then 2)\n")
)]
pub struct Args {
    /// The .raw or .iso to write (its SHA256, SHA256.sig and manifest.json beside it).
    image: PathBuf,
    /// The target block device(s) (e.g. /dev/sdb), or files with --to-file.
    /// Several devices are written at once, each read back.
    #[arg(required = true, num_args = 1.., value_name = "DEVICE")]
    devices: Vec<PathBuf>,
    /// The signer's public key: the image is checked with it before writing.
    #[arg(long, value_name = "KEY.pub")]
    pubkey: PathBuf,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
    /// Write to a regular file instead of a block device (tests, staging).
    #[arg(long)]
    to_file: bool,
    /// Append one receipt per device (JSON lines: device, model, serial,
    /// size, release, digests, times, result) to FILE.
    #[arg(long, value_name = "FILE")]
    receipts: Option<PathBuf>,
    /// A signed site file (SITE.toml.sig beside it) to put on each
    /// stick's ESP after the image; checked before anything is written,
    /// read back with the image, its digest in the receipts.
    #[arg(long, value_name = "SITE.toml")]
    site: Option<PathBuf>,
}

/// A refused or failed flash is a `FlashError` (its own exit code); with
/// several sticks, the exit code says how the worst one ended.
pub fn exec(a: Args, _env: &Env) -> Result<ExitCode> {
    let opts = ManyOptions {
        image: a.image,
        devices: a.devices,
        pubkey: a.pubkey,
        yes: a.yes,
        to_file: a.to_file,
        max_size: None,
        receipts: a.receipts,
        site: a.site,
    };
    let image = opts.image.clone();
    let receipts = opts.receipts.clone();
    let report = match flash_devices(opts)? {
        Flashed::One(report) => {
            println!("{report}");
            return Ok(ExitCode::SUCCESS);
        }
        Flashed::Many(report) => report,
    };
    println!("{}", report.heading(&image));
    for (s, line) in report.sticks.iter().zip(report.lines()) {
        if s.result.is_ok() {
            println!("{line}");
        } else {
            eprintln!("error: {line}");
        }
    }
    if let Some(log) = &receipts {
        println!(
            "flash: {} receipt(s) appended to {}",
            report.sticks.len(),
            log.display()
        );
    }
    Ok(ExitCode::from(
        u8::try_from(report.exit_code()).unwrap_or(1),
    ))
}
