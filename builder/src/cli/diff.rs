//! `cairn diff`: two output folders compared.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::Env;

/// Compare two output folders: packages added/removed/changed, OCI images,
/// policy, flags, kernel command line, output sizes. Exit 0 when they are
/// the same, 1 when they differ.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  cairn diff out/field-ai-0.1.0 out/field-ai-0.2.0\n  cairn diff old/ new/ && echo same"
)]
pub struct Args {
    /// The older output folder.
    a: PathBuf,
    /// The newer output folder.
    b: PathBuf,
}

pub fn exec(a: Args, _env: &Env) -> Result<ExitCode> {
    let d = crate::release::diff::diff(&a.a, &a.b)?;
    print!("{}", d.render_text());
    Ok(if d.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
