//! `cairn flash`: an image to USB sticks or disks, verified first and
//! read back after.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;

use super::Env;
use crate::field::flash::{
    flash_devices, list_targets, Flashed, ManyOptions, ManyReport, WriteMode,
};
use crate::host::progress::human_bytes;

/// Write an image to a USB stick or disk, verified first and read back after.
///
/// The image's signature and digests are checked against KEY.pub before a
/// byte is written; the device must not be mounted, must not hold the
/// running system and must be large enough. The first MiB is written last,
/// so an interrupted write leaves the device unbootable rather than
/// half-right. A regular file is accepted as DEVICE only with --to-file.
/// With the release's signed data map (NAME.raw.map) only the ranges
/// holding data are written, each checked against its signed digest as it
/// is read (the first MiB is written only if all match) and read back;
/// the rest is zeroed by the device (BLKZEROOUT), so nothing left on the
/// stick looks like part of the image. A device that is not removable (nor on USB/MMC), or larger
/// than 64 GiB, needs --allow-fixed / --allow-large; --list shows them.
#[derive(clap::Args)]
#[command(
    after_help = after_help!("  cairn flash out/field-ai-0.1.0/field-ai-0.1.0.raw /dev/sdb --pubkey release.pub\n  cairn flash out/field-ai-0.1.0/field-ai-0.1.0.raw /dev/sdb /dev/sdc --pubkey release.pub --receipts receipts.jsonl --site site.toml\n  cairn flash out/field-ai-0.1.0/field-ai-0.1.0.raw /dev/sdb --pubkey release.pub --json | jq .result", "  1    a device was refused (mounted, the running system, too small) or a write or\n       read-back failed; with several devices the worst decides (signal, then 1, then 2)\n")
)]
pub struct Args {
    /// The .raw, .raw.zst or .iso to write (its SHA256, SHA256.sig and manifest.json beside it).
    #[arg(required_unless_present = "list")]
    image: Option<PathBuf>,
    /// The target block device(s) (e.g. /dev/sdb), or files with --to-file.
    /// Several devices are written at once, each read back.
    #[arg(required_unless_present = "list", num_args = 1.., value_name = "DEVICE")]
    devices: Vec<PathBuf>,
    /// The signer's public key: the image is checked with it before writing.
    #[arg(long, value_name = "KEY.pub", required_unless_present = "list")]
    pubkey: Option<PathBuf>,
    /// List the disks that could be written (device, /dev/disk/by-id
    /// link, removable, bus, model, size, flags needed) and exit.
    #[arg(long, exclusive = true)]
    list: bool,
    /// Write and read back every byte of the image, not only the ranges
    /// of its data map.
    #[arg(long, conflicts_with = "write_zeros")]
    full: bool,
    /// Write the zeros between the data map's ranges instead of asking
    /// the device to zero them (BLKZEROOUT).
    #[arg(long)]
    write_zeros: bool,
    /// Allow a device that is neither removable nor on USB/MMC (a fixed
    /// disk; a loop device).
    #[arg(long)]
    allow_fixed: bool,
    /// Allow a device larger than 64 GiB.
    #[arg(long)]
    allow_large: bool,
    /// Overwrite a stick whose sealed audit trail holds records not yet
    /// saved with `cairn audit collect` (docs/audit.md): they are lost.
    /// Without it such a stick is refused (exit 2).
    #[arg(long)]
    discard_audit: bool,
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
    /// Print one JSON document on stdout instead of the text: `result`
    /// (the worst stick's), `image`, `key_id`, `bytes` and `sticks`, one
    /// receipt per device (as --receipts writes them).
    #[arg(long)]
    json: bool,
}

/// A refused or failed flash is a `FlashError` (its own exit code); with
/// several sticks, the exit code says how the worst one ended.
pub fn exec(a: Args, _env: &Env) -> Result<ExitCode> {
    if a.list {
        list();
        return Ok(ExitCode::SUCCESS);
    }
    // clap requires both unless --list.
    let (Some(image), Some(pubkey)) = (a.image, a.pubkey) else {
        return Err(crate::InputError("flash: give IMAGE, DEVICE and --pubkey".into()).into());
    };
    let opts = ManyOptions {
        image,
        devices: a.devices,
        pubkey,
        yes: a.yes,
        to_file: a.to_file,
        max_size: None,
        receipts: a.receipts,
        site: a.site,
        write: if a.full {
            WriteMode::Full
        } else if a.write_zeros {
            WriteMode::WriteZeros
        } else {
            WriteMode::Auto
        },
        allow_fixed: a.allow_fixed,
        allow_large: a.allow_large,
        discard_audit: a.discard_audit,
    };
    let image = opts.image.clone();
    let receipts = opts.receipts.clone();
    if a.json {
        // Every stick gets a receipt, so one device takes the same path.
        let report = crate::field::flash::flash_many(&opts)?;
        super::print_json(&json_document(&image, &report))?;
        return Ok(ExitCode::from(
            u8::try_from(report.exit_code()).unwrap_or(1),
        ));
    }
    let report = match flash_devices(opts)? {
        Flashed::One(report) => {
            println!("{report}");
            return Ok(ExitCode::SUCCESS);
        }
        Flashed::Many(report) => report,
    };
    println!("{}", report.heading(&image));
    if let Some(site) = &report.site {
        println!("flash: site {site}, on every stick");
    }
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

/// The `--json` document: the worst outcome first (`ok`, `interrupted`,
/// `failed`, `refused`, `bad-input`), then every stick's receipt.
fn json_document(image: &Path, report: &ManyReport) -> serde_json::Value {
    let words: Vec<&str> = report
        .sticks
        .iter()
        .map(|s| s.receipt.result.as_str())
        .collect();
    let result = ["interrupted", "failed", "refused", "bad-input"]
        .into_iter()
        .find(|w| words.contains(w))
        .unwrap_or("ok");
    let sticks: Vec<&crate::field::flash::Receipt> =
        report.sticks.iter().map(|s| &s.receipt).collect();
    serde_json::json!({
        "result": result,
        "image": image.display().to_string(),
        "key_id": report.key_id,
        "bytes": report.bytes,
        "sticks": sticks,
    })
}

/// `--list`: one line per disk, a header first.
fn list() {
    let cands = list_targets(Path::new("/sys"), Path::new("/dev/disk/by-id"));
    println!(
        "{:<14} {:<9} {:<8} {:>10}  {:<24} {:<14} by-id",
        "DEVICE", "REMOVABLE", "BUS", "SIZE", "MODEL", "NEEDS"
    );
    for c in &cands {
        println!(
            "{:<14} {:<9} {:<8} {:>10}  {:<24} {:<14} {}",
            c.device,
            if c.removable { "yes" } else { "no" },
            c.bus,
            human_bytes(c.size),
            if c.model.is_empty() { "-" } else { &c.model },
            if c.needs.is_empty() {
                "-".to_string()
            } else {
                c.needs.join(" ")
            },
            c.by_id.as_deref().unwrap_or("-")
        );
    }
}
