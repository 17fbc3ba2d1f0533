//! The `cairn` command line: parses arguments, calls the library, reports
//! errors. Exit codes: 0 success, 1 a check failed or a build step failed,
//! 2 bad input (recipe, pins, arguments, keys).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "Build immutable, signed, bootable appliance images from TOML recipes",
    long_about = "cairn turns a TOML recipe into a read-only appliance image: a Debian root \
tree packed as squashfs, protected by dm-verity, booted by a UKI whose command line \
carries the root hash, written as a raw GPT disk (no loop devices, no mounts).\n\n\
Quick start (as root on Debian bookworm):\n  make deps && make image\n  cairn run out/field-ai-0.1.0/field-ai-0.1.0.raw"
)]
struct Cli {
    /// Print every host command cairn runs.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a recipe into out/NAME-VERSION/ (raw disk + manifest.json).
    ///
    /// Stages print as they run, with their durations. A bad recipe or a
    /// pin mismatch stops the build before anything is written (exit 2);
    /// a failed or interrupted build leaves nothing under the output
    /// folder that looks finished.
    Build {
        /// The recipe file (see docs/recipe.md).
        recipe: PathBuf,
        /// Output folder; the image lands in DIR/NAME-VERSION/.
        #[arg(short, long, default_value = "out")]
        out: PathBuf,
        /// Folder that recipe paths may point into (default: the recipe's
        /// folder). Recipes cannot widen it themselves.
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// Check a recipe without building it: every problem, with file:line:col.
    Check {
        recipe: PathBuf,
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// List the host tools cairn needs, found or missing, with Debian packages.
    Doctor,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cairn::runner::set_verbose(cli.verbose);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if let Some(r) = e.downcast_ref::<cairn::recipe::RecipeError>() {
                for p in &r.problems {
                    eprintln!("error: {p}");
                }
                return ExitCode::from(2);
            }
            if e.downcast_ref::<cairn::InputError>().is_some() {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Build { recipe, out, root } => {
            let r = cairn::recipe::load(&recipe, root.as_deref())?;
            let res = cairn::build::build(&r, &cairn::build::BuildOptions { out_dir: out })?;
            println!("{}", res.raw.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { recipe, root } => {
            let r = cairn::recipe::load(&recipe, root.as_deref())?;
            println!("{}: ok ({} {})", recipe.display(), r.name, r.version);
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor => {
            let missing = cairn::doctor::report();
            Ok(if missing == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
