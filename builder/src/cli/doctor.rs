//! `cairn doctor`: the host tools cairn needs.

use std::process::ExitCode;

use anyhow::Result;

use super::Env;

/// List the host tools cairn needs, found or missing, with Debian packages.
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  cairn doctor\n  cairn doctor || sudo make deps")]
pub struct Args {}

/// Exit 1 when a tool is missing.
pub fn exec(_a: Args, _env: &Env) -> Result<ExitCode> {
    Ok(if crate::host::doctor::report() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
