//! `cairn diff`: two output folders compared.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::{Env, JsonArg};

/// Compare two output folders: packages added/removed/changed, OCI images,
/// policy, flags, kernel command line, output sizes. Exit 0 when they are
/// the same, 1 when they differ.
#[derive(clap::Args)]
#[command(
    after_help = after_help!(
        "  cairn diff out/field-ai-0.1.0 out/field-ai-0.2.0\n  cairn diff old/ new/ && echo same\n  cairn diff old/ new/ --json | jq .packages",
        "  1    the folders differ (not an error)\n"
    )
)]
pub struct Args {
    /// The older output folder.
    a: PathBuf,
    /// The newer output folder.
    b: PathBuf,
    #[command(flatten)]
    json: JsonArg,
}

pub fn exec(a: Args, _env: &Env) -> Result<ExitCode> {
    let d = crate::release::diff::diff(&a.a, &a.b)?;
    if a.json.json {
        super::print_json(&d)?;
    } else {
        print!("{}", d.render_text());
    }
    Ok(if d.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
