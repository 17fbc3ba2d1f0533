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
    /// the chain and sequence. Exit 0 when all hold (a boot without a
    /// closing record is reported, not failed), 1 naming the first bad
    /// frame, 2 on bad input.
    #[command(after_help = after_help!(
        "  cairn audit verify field-ai-0.1.0.raw --key audit.sec\n  cairn audit verify /dev/sdb --key audit.sec --json",
        "  1    a record is bad: the first bad frame is named\n"
    ))]
    Verify(Common),
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
    let (c, verify) = match a.op {
        Op::Read(c) => (c, false),
        Op::Verify(c) => (c, true),
    };
    let t = crate::release::audit::read(&c.medium, &c.key)?;
    if c.json.json {
        super::print_json(&t)?;
    } else {
        print!("{}", crate::host::shown::ShownLines(&t.render_text()));
    }
    match (&t.first_bad, verify) {
        (Some(p), true) => Err(VerifyError::Failed(format!(
            "audit: frame {} at byte {} of the trail: {}",
            p.index, p.offset, p.why
        ))
        .into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}
