//! `cairn lock`: resolve the recipe's packages into RECIPE.lock.

use std::process::ExitCode;

use anyhow::Result;

use super::{Env, RecipeArgs};

/// Resolve the recipe's Debian packages and write RECIPE.lock (name,
/// version, architecture, .deb sha256 of every package; the epoch).
///
/// Covers the base (kernel included) and every image built from Debian
/// packages (`[images.build]`, one `[[image]]` table each). The .debs
/// land in the cache ($CAIRN_CACHE, default ~/.cache/cairn). Commit the
/// lock beside the recipe: builds then install exactly these files.
#[derive(clap::Args)]
#[command(
    after_help = after_help!("  cairn lock recipes/field-ai.toml\n  git add recipes/field-ai.lock")
)]
pub struct Args {
    #[command(flatten)]
    recipe: RecipeArgs,
}

pub fn exec(a: Args, env: &Env) -> Result<ExitCode> {
    let settings = env.settings()?;
    let r = a.recipe.load(&settings)?;
    crate::inputs::plan::lock_recipe(&r, &settings.open_cache()?)?;
    Ok(ExitCode::SUCCESS)
}
