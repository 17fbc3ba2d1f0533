//! `cairn fetch`: fill the cache with everything the lock names.

use std::process::ExitCode;

use anyhow::Result;

use super::{Env, RecipeArgs};

/// Fill the cache with everything RECIPE.lock names (the base's and
/// built images' packages) and the recipe's URL inputs, checking each
/// file's sha256, so `cairn build --offline` works later.
#[derive(clap::Args)]
#[command(
    after_help = after_help!("  cairn fetch recipes/field-ai.toml\n  cairn build recipes/field-ai.toml --offline")
)]
pub struct Args {
    #[command(flatten)]
    recipe: RecipeArgs,
}

pub fn exec(a: Args, env: &Env) -> Result<ExitCode> {
    let settings = env.settings()?;
    let r = a.recipe.load(&settings)?;
    let lock = crate::inputs::lock::Lock::for_recipe(&r)?;
    let cache = settings.open_cache()?;
    let f = crate::inputs::plan::fetch_locked(&r, &lock, &cache)?;
    // runtime = "kubernetes": every Go module go.sum pins, for --offline.
    if let Some(k) = &r.workloads.kubernetes {
        crate::pipeline::cluster::download(cache.root(), &k.module)?;
    }
    println!(
        "{} packages fetched ({} bytes), {} already cached; {} URL input(s) ready ({} bytes downloaded); in {}",
        f.packages.downloaded,
        f.packages.bytes,
        f.packages.already,
        r.downloads.len(),
        f.url_bytes,
        cache.root().display()
    );
    Ok(ExitCode::SUCCESS)
}
