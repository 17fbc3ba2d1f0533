//! `cairn new`: start a team recipe on a signed template.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::Env;

/// Start a team recipe on a signed template: writes DIR/recipe.toml, which
/// pins the template (path, sha256, version) and the platform key, with
/// what the template lets a team add stubbed as comments. The template's
/// signature is checked first; nothing is overwritten.
#[derive(clap::Args)]
#[command(
    after_help = after_help!("  cairn new --template recipes/platform-ai.toml --key keys/platform.pub teams/vision\n  cairn check teams/vision/recipe.toml --root .")
)]
pub struct Args {
    /// The signed template (TEMPLATE.sig beside it).
    #[arg(long, value_name = "TEMPLATE")]
    template: PathBuf,
    /// The platform's public key (signify `.pub`).
    #[arg(long, value_name = "platform.pub")]
    key: PathBuf,
    /// The folder to write recipe.toml in (made if missing).
    dir: PathBuf,
}

pub fn exec(a: Args, _env: &Env) -> Result<ExitCode> {
    let out = crate::release::template::new_team_recipe(&a.template, &a.key, &a.dir)?;
    println!("wrote {}", out.display());
    Ok(ExitCode::SUCCESS)
}
