//! `cairn audit`: read and verify an image's sealed audit trail with the
//! platform's secret key (docs/audit.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use super::{Env, JsonArg};
use crate::release::verify::VerifyError;

/// The sealed audit trail: what each boot of an image recorded, readable
/// only with the platform's age secret key.
#[derive(clap::Args)]
#[command(
    after_help = after_help!("  cairn audit read field-ai-0.1.0.raw --key audit.sec\n  cairn audit verify /dev/sdb --key audit.sec --json")
)]
pub struct Args {
    #[command(subcommand)]
    op: Op,
}

#[derive(Subcommand)]
enum Op {
    /// List the boots and their records (a bad frame is named at the end).
    #[command(after_help = after_help!(
        "  cairn audit read field-ai-0.1.0.raw --key audit.sec\n  cairn audit read /dev/sdb --key audit.sec --json"
    ))]
    Read(Common),
    /// Check every record: it decrypts, its signature by its boot's key,
    /// the chain and sequence, each boot's TPM quote (tpm2_checkquote) and,
    /// with --manifest, its PCR 11 against the release's prediction. Exit 0
    /// when all hold (a boot without a closing record, or without a TPM,
    /// is reported, not failed), 1 naming the first bad frame or boot, 2 on
    /// bad input.
    #[command(after_help = after_help!(
        "  cairn audit verify field-ai-0.1.0.raw --key audit.sec --manifest manifest.json\n  cairn audit verify /dev/sdb --key audit.sec --json",
        "  1    a record is bad (the first bad frame is named), or a boot's TPM quote does not\n       verify or quotes another PCR 11 than the manifest's\n"
    ))]
    Verify {
        #[command(flatten)]
        common: Common,
        /// The release's manifest.json: each quoted boot's PCR 11 must be
        /// its predicted `boot.pcr11_sha256` (verify the release first).
        #[arg(long, value_name = "manifest.json")]
        manifest: Option<PathBuf>,
    },
    /// Save the trail's encrypted records (no key needed) and a receipt
    /// into DIR, then mark them collected on the medium, so `cairn flash`
    /// may overwrite it. Read the saved trail later with `cairn audit read
    /// DIR/cairn-audit-*.trail --key audit.sec`.
    #[command(after_help = after_help!(
        "  cairn audit collect /dev/sdb --out trails/\n  cairn audit collect field-ai-0.1.0.raw --out trails/ --json"
    ))]
    Collect(CollectArgs),
}

#[derive(clap::Args)]
struct CollectArgs {
    /// A raw disk image or device holding a cairn-audit partition.
    medium: PathBuf,
    /// The folder the trail and its receipt are saved in (made if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    #[command(flatten)]
    json: JsonArg,
}

#[derive(clap::Args)]
struct Common {
    /// A raw disk image or device holding a cairn-audit partition, or the
    /// partition itself.
    medium: PathBuf,
    /// The platform's age secret key (`age-keygen` output).
    #[arg(long, value_name = "audit.sec")]
    key: PathBuf,
    #[command(flatten)]
    json: JsonArg,
}

pub fn exec(a: Args, _env: &Env) -> Result<ExitCode> {
    let (c, verify, manifest) = match a.op {
        Op::Read(c) => (c, false, None),
        Op::Verify { common, manifest } => (common, true, manifest),
        Op::Collect(c) => return collect(c),
    };
    let predicted = match &manifest {
        Some(m) => Some(
            crate::release::audit_tpm::predicted_pcr11(m)?.ok_or_else(|| {
                crate::InputError(format!(
                    "{}: no boot.pcr11_sha256 (a release without a UKI?); verify without --manifest",
                    m.display()
                ))
            })?,
        ),
        None => None,
    };
    let t = crate::release::audit::read(&c.medium, &c.key)?;
    if c.json.json {
        super::print_json(&t)?;
    } else {
        print!("{}", crate::host::shown::ShownLines(&t.render_text()));
    }
    if !verify {
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(p) = &t.first_bad {
        return Err(VerifyError::Failed(format!(
            "audit: frame {} at byte {} of the trail: {}",
            p.index, p.offset, p.why
        ))
        .into());
    }
    if let Some(why) = crate::release::audit_tpm::first_bad_boot(&t, predicted.as_ref()) {
        return Err(VerifyError::Failed(format!("audit: {why}")).into());
    }
    Ok(ExitCode::SUCCESS)
}

fn collect(c: CollectArgs) -> Result<ExitCode> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let done = crate::release::audit_collect::collect(&c.medium, &c.out, now)?;
    if c.json.json {
        super::print_json(&done)?;
    } else {
        let r = &done.receipt;
        println!(
            "audit: collected {} records ({} new) from {} into {}\naudit: receipt {} (sha256 {})\naudit: {} marked collected up to record {}",
            r.frames,
            r.frames - r.previously_collected,
            c.medium.display(),
            done.trail_path.display(),
            done.receipt_path.display(),
            done.receipt_sha256.hex(),
            c.medium.display(),
            r.frames
        );
    }
    Ok(ExitCode::SUCCESS)
}
