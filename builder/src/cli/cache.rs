//! `cairn cache`: move cached inputs between machines, or prune the cache.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use super::Env;
use crate::inputs::cache::GcKeep;

/// Move cached inputs between machines, or prune the cache.
#[derive(clap::Args)]
#[command(
    after_help = after_help!("  cairn cache export inputs.tar --recipe recipes/field-ai.toml\n  cairn cache import inputs.tar\n  cairn cache gc --keep-recipe recipes/field-ai.toml")
)]
pub struct Args {
    #[command(subcommand)]
    op: Op,
}

#[derive(Subcommand)]
enum Op {
    /// Write exactly the files RECIPE.lock needs to FILE (a tar with a
    /// DIGESTS list), and for `runtime = "kubernetes"` the Go module files
    /// `cairn fetch` downloaded.
    #[command(
        after_help = after_help!("  cairn cache export inputs.tar --recipe recipes/field-ai.toml")
    )]
    Export {
        /// The tar to write.
        file: PathBuf,
        /// The recipe whose lock names the files.
        #[arg(long)]
        recipe: PathBuf,
        /// Folder that recipe paths may point into (default: the
        /// recipe's folder), as for `cairn build`.
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
    },
    /// Add the files of an export to this machine's cache; every file is
    /// checked against the list and its own name first.
    #[command(
        after_help = after_help!("  cairn cache import inputs.tar\n  cairn build recipes/field-ai.toml --offline")
    )]
    Import {
        /// A tar written by `cairn cache export`.
        file: PathBuf,
    },
    /// Remove everything the given recipes' locks do not name (`--all`:
    /// everything). One of the two is required.
    #[command(
        after_help = after_help!("  cairn cache gc --keep-recipe a.toml --keep-recipe b.toml\n  cairn cache gc --all")
    )]
    Gc {
        /// Keep the files RECIPE's lock names (repeatable).
        #[arg(long = "keep-recipe", required_unless_present = "all")]
        recipes: Vec<PathBuf>,
        /// Empty the cache: keep no recipe's inputs.
        #[arg(long, conflicts_with = "recipes")]
        all: bool,
    },
}

pub fn exec(a: Args, env: &Env) -> Result<ExitCode> {
    let cache = env.settings()?.open_cache()?;
    match a.op {
        Op::Export { file, recipe, root } => {
            // runtime = "kubernetes": the Go modules `cairn fetch` downloaded.
            let settings = env.settings()?;
            // A team recipe loads through its template signature check.
            let r = crate::recipe::load(&recipe, root.as_deref(), &super::recipe_env(&settings))?;
            let n = cache.export_recipe(&recipe, &file, r.workloads.kubernetes.is_some())?;
            println!("wrote {} ({n} files)", file.display());
        }
        Op::Import { file } => {
            let rep = cache.import_file(&file)?;
            print!("{} files added, {} already present", rep.added, rep.present);
            if rep.go_added > 0 {
                print!("; {} Go module files placed", rep.go_added);
            }
            println!();
        }
        Op::Gc { recipes, all } => {
            let (n, bytes) = cache.gc(&GcKeep::for_recipes(&recipes, all)?)?;
            println!("removed {n} files, {bytes} bytes");
        }
    }
    Ok(ExitCode::SUCCESS)
}
