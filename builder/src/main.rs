//! The `cairn` program: parses the command line, runs the command's
//! `exec` (one module per command under `cli/`), and turns an error into
//! an exit code in one place (`cli::report_error`). Exit codes: 0 success,
//! 1 a check failed or a build step failed, 2 bad input (recipe, pins,
//! arguments, keys), 128+N interrupted by signal N.

use std::process::ExitCode;

use cairn::cli::{self, Cli, Command, Env};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = Env::read();
    cli::setup(&cli, &env);
    match exec(cli.command, &env) {
        Ok(code) => code,
        Err(e) => ExitCode::from(cli::report_error(&e)),
    }
}

fn exec(command: Command, env: &Env) -> anyhow::Result<ExitCode> {
    match command {
        Command::Build(a) => cli::build::exec(a, env),
        Command::Lock(a) => cli::lock::exec(a, env),
        Command::Fetch(a) => cli::fetch::exec(a, env),
        Command::Cache(a) => cli::cache::exec(a, env),
        Command::Keygen(a) => cli::keygen::exec(a, env),
        Command::Verify(a) => cli::verify::exec(a, env),
        Command::Inspect(a) => cli::inspect::exec(a, env),
        Command::Diff(a) => cli::diff::exec(a, env),
        Command::Flash(a) => cli::flash::exec(a, env),
        Command::Site(a) => cli::site::exec(a, env),
        Command::Template(a) => cli::template::exec(a, env),
        Command::New(a) => cli::new::exec(a, env),
        Command::Run(a) => cli::run::exec(a, env),
        Command::Digest(a) => cli::digest::exec(a, env),
        Command::Check(a) => cli::check::exec(a, env),
        Command::Doctor(a) => cli::doctor::exec(a, env),
        Command::Completions(a) => cli::completions::exec(a, env),
        Command::Man(a) => cli::man::exec(a, env),
        Command::Audit(a) => cli::audit::exec(a, env),
    }
}
