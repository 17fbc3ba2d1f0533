//! `cairn check`: a recipe checked without building it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::Env;

/// Check a recipe without building it: every problem, with file:line:col.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  cairn check recipes/field-ai.toml\n  cairn check site/kiosk.toml --root site"
)]
pub struct Args {
    /// The recipe file (see docs/recipe.md).
    recipe: PathBuf,
    /// Folder that recipe paths may point into (default: the recipe's folder).
    #[arg(long)]
    root: Option<PathBuf>,
}

pub fn exec(a: Args, env: &Env) -> Result<ExitCode> {
    let r = crate::recipe::load(&a.recipe, a.root.as_deref(), &env.settings()?.recipe_env())?;
    println!("{}: ok ({} {})", a.recipe.display(), r.name, r.version);
    Ok(ExitCode::SUCCESS)
}
