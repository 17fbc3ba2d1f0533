//! `cairn man`: the manual pages, generated from the clap definition
//! (cairn.1 and one cairn-COMMAND.1 per command), so they say what
//! `--help` says.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::CommandFactory;

use super::{Cli, Env};

/// Write the manual pages (cairn.1, cairn-COMMAND.1) into a folder, or
/// print cairn.1 on stdout.
#[derive(clap::Args)]
#[command(after_help = after_help!(
    "  cairn man --out target/man && man -l target/man/cairn.1\n  cairn man | man -l -"
))]
pub struct Args {
    /// The folder to write the pages into (created if missing); without
    /// it, cairn.1 goes to stdout.
    #[arg(long, short, value_name = "DIR")]
    out: Option<PathBuf>,
}

pub fn exec(a: Args, _env: &Env) -> Result<ExitCode> {
    match &a.out {
        Some(dir) => {
            for f in write_pages(dir)? {
                println!("{}", f.display());
            }
        }
        None => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(Cli::command()).render(&mut out)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes cairn.1 and a page per command (cairn-build.1, ...) into `dir`;
/// returns the files written.
pub fn write_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = Cli::command();
    // Subcommands' pages name themselves `cairn-build`, as git's do.
    cmd.build();
    let mut written = Vec::new();
    let mut page = |c: &clap::Command, name: &str| -> Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(c.clone())
            .title(name)
            .render(&mut buf)?;
        std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
        Ok(())
    };
    page(&cmd, "cairn")?;
    for s in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        page(s, &format!("cairn-{}", s.get_name()))?;
    }
    Ok(written)
}
