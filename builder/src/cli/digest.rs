//! `cairn digest`: the sha256 a recipe pins for a file or folder.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::{bad_input, Env};

/// Print the sha256 a recipe pins for a file or folder (model data,
/// policy bundles): a file's plain sha256, or a folder's tree digest
/// (sorted paths, modes, contents; symlinks as their target text).
#[derive(clap::Args)]
#[command(after_help = after_help!("  cairn digest models/tiny.gguf\n  cairn digest policy/"))]
pub struct Args {
    /// The file or folder to digest.
    path: PathBuf,
}

pub fn exec(a: Args, _env: &Env) -> Result<ExitCode> {
    let d = crate::pipeline::workloads::model_digest(&a.path)
        .map_err(|e| bad_input(e.context(a.path.display().to_string())))?;
    println!("{d}");
    Ok(ExitCode::SUCCESS)
}
