//! `cairn completions`: a shell's completion script, generated from the
//! same clap definition that parses the command line (never out of date).

use std::process::ExitCode;

use anyhow::Result;
use clap::CommandFactory;
use clap_complete::Shell;

use super::{Cli, Env};

/// Print the completion script for a shell on stdout.
#[derive(clap::Args)]
#[command(after_help = after_help!(
    "  cairn completions bash > /etc/bash_completion.d/cairn\n  cairn completions zsh > \"${fpath[1]}/_cairn\"\n  cairn completions fish > ~/.config/fish/completions/cairn.fish"
))]
pub struct Args {
    /// The shell: bash, zsh, fish, elvish or powershell.
    #[arg(value_enum)]
    shell: Shell,
}

pub fn exec(a: Args, _env: &Env) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    write(a.shell, &mut out);
    Ok(ExitCode::SUCCESS)
}

/// Writes `shell`'s completion script for cairn to `out`.
pub fn write(shell: Shell, out: &mut dyn std::io::Write) {
    clap_complete::generate(shell, &mut Cli::command(), "cairn", out);
}
