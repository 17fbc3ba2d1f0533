//! The command line: one file per command (`build.rs`, `verify.rs`, ...),
//! each with its clap `Args` and an `exec` that turns the arguments into
//! library calls and prints the outcome (as cargo's `commands/*.rs`).
//! The work itself lives in the layers below. This is also the only
//! place that reads the process environment ([`Env`], read once), and
//! [`report_error`] is the one place an error becomes an exit code.
//!
//! Exit codes: 0 success, 1 a check failed or a build step failed, 2 bad
//! input (recipe, pins, arguments, keys), 128+N interrupted by signal N.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::host::shown::{Shown, ShownLines};

/// The quick start of `cairn --help`, the same two commands as the
/// README's (a test holds them equal).
macro_rules! quick_start {
    () => {
        "  make image\n  target/release/cairn run --scratch out/field-ai-0.1.0/field-ai-0.1.0.raw"
    };
}

/// A command's `after_help`: its examples, then its exit codes (the
/// usual 0/1/2/interrupted lines unless the command gives its own 1).
macro_rules! after_help {
    ($examples:literal) => {
        after_help!(
            $examples,
            "  1    a step failed (the error line says which)\n"
        )
    };
    ($examples:literal, $one:literal) => {
        concat!(
            "Examples:\n",
            $examples,
            "\n\nExit codes:\n  0    success\n",
            $one,
            "  2    bad input (arguments, recipe, keys, files): the error names it and the fix\n",
            "  130  interrupted by SIGINT (128+N for signal N: 129 SIGHUP, 143 SIGTERM)"
        )
    };
}

pub mod audit;
pub mod build;
pub mod cache;
pub mod check;
pub mod completions;
pub mod diff;
pub mod digest;
pub mod doctor;
mod env;
pub mod fetch;
pub mod flash;
pub mod inspect;
pub mod keygen;
pub mod lock;
pub mod man;
pub mod new;
pub mod run;
pub mod site;
pub mod template;
pub mod verify;

pub use env::{
    cache_root_from_env, passphrase_from_env, qemu_config_from_env, settings_from_env,
    tool_path_from_env, Env,
};

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "Build immutable, signed, bootable appliance images from TOML recipes",
    long_about = concat!("cairn turns a TOML recipe into a read-only appliance image: a Debian root \
tree packed as squashfs, protected by dm-verity, booted by a UKI whose command line \
carries the root hash, written as a raw GPT disk (no loop devices, no mounts).\n\n\
Quick start (as root on Debian bookworm, in cairn's source tree):\n", quick_start!()),
    after_help = after_help!(
        "  cairn build recipes/field-ai.toml --key release.sec\n  cairn verify out/field-ai-0.1.0 --pubkey release.pub --json\n  cairn completions bash > /etc/bash_completion.d/cairn\n\n\
`cairn COMMAND --help` shows each command's options, examples and exit codes;\n\
`cairn man` writes the manual page."
    )
)]
pub struct Cli {
    /// Print every host command cairn runs.
    #[arg(short, long, global = true, conflicts_with = "quiet", help_heading = GLOBAL)]
    pub verbose: bool,
    /// Print only results and errors: no progress, no stage messages.
    #[arg(short, long, global = true, help_heading = GLOBAL)]
    pub quiet: bool,
    /// How progress shows on stderr: bars on a terminal and timed plain
    /// lines elsewhere (auto), timed plain lines always (plain), or none
    /// (only each job's summary).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = ProgressArg::Auto,
        value_name = "WHEN",
        help_heading = GLOBAL
    )]
    pub progress: ProgressArg,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the flags every command takes are listed in `--help`.
const GLOBAL: &str = "Global options";

/// `--progress`'s values.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ProgressArg {
    /// Bars on a terminal, timed plain lines elsewhere.
    Auto,
    /// Timed plain lines (at most one per bar every 10 s).
    Plain,
    /// No progress; each job's summary line only.
    None,
}

/// Every command; `main` dispatches each to its module's `exec`.
#[derive(Subcommand)]
pub enum Command {
    Build(build::Args),
    Lock(lock::Args),
    Fetch(fetch::Args),
    Cache(cache::Args),
    Keygen(keygen::Args),
    Verify(verify::Args),
    Inspect(inspect::Args),
    Diff(diff::Args),
    Flash(flash::Args),
    Site(site::Args),
    Template(template::Args),
    New(new::Args),
    Run(run::Args),
    Digest(digest::Args),
    Check(check::Args),
    Doctor(doctor::Args),
    Completions(completions::Args),
    Man(man::Args),
    Audit(audit::Args),
}

/// What every command sets up before it runs: the runner's verbosity, the
/// progress display, the programs' search path, the SIGINT/SIGTERM handlers.
pub fn setup(cli: &Cli, env: &Env) {
    use crate::host::progress::{configure, Display};
    crate::host::runner::set_verbose(cli.verbose);
    let display = match cli.progress {
        ProgressArg::Auto if env.dumb_terminal() => Display::Plain,
        ProgressArg::Auto => Display::Auto,
        ProgressArg::Plain => Display::Plain,
        ProgressArg::None => Display::None,
    };
    configure(display, cli.quiet);
    if let Some(every) = env.progress_every() {
        crate::host::progress::set_plain_every(every);
    }
    crate::host::doctor::set_search_path(env.tool_path());
    crate::host::interrupt::install();
}

/// Prints `e` the way its kind asks and returns the process exit code:
/// the one place an error becomes an exit code. The kind comes from the
/// error's type, set where the error arose:
/// - `FlashError`: its own code (1, 2, or 130 for a write stopped by SIGINT);
/// - `VerifyError`: `FAILED` and the check, 1; bad input 2;
/// - a SIGINT/SIGTERM received: 128+N, with the one "interrupted" line;
/// - `RecipeError`: 2, every problem on its own line;
/// - `InputError` (anywhere in the chain): 2;
/// - anything else: 1, with its whole context chain.
///
/// Messages quote inputs (file names, manifest strings, tools' words about
/// hostile files): they go through `ShownLines`, so no terminal control
/// gets through.
pub fn report_error(e: &anyhow::Error) -> u8 {
    // Before the signal check: a flash owns its interrupt (the device was
    // left unbootable on purpose) and says so itself.
    if let Some(f) = e.downcast_ref::<crate::field::flash::FlashError>() {
        eprintln!("error: {}", ShownLines(&f.to_string()));
        return u8::try_from(f.exit_code()).unwrap_or(1);
    }
    // Likewise a verify verdict: the line says which check failed.
    if let Some(v) = e.downcast_ref::<crate::release::verify::VerifyError>() {
        use crate::release::verify::VerifyError;
        return match v {
            VerifyError::BadInput(m) => {
                eprintln!("error: {}", Shown(m));
                2
            }
            VerifyError::Failed(m) => {
                eprintln!("FAILED {}", Shown(m));
                1
            }
        };
    }
    if let Some(sig) = crate::host::interrupt::signalled() {
        crate::host::interrupt::report(sig);
        return 128u8.saturating_add(u8::try_from(sig).unwrap_or(0x7f));
    }
    if let Some(r) = e.downcast_ref::<crate::recipe::RecipeError>() {
        for p in &r.problems {
            eprintln!("error: {}", ShownLines(&p.to_string()));
        }
        return 2;
    }
    if e.downcast_ref::<crate::InputError>().is_some() {
        eprintln!("error: {}", ShownLines(&e.to_string()));
        return 2;
    }
    eprintln!("error: {}", ShownLines(&format!("{e:#}")));
    1
}

/// For a library call whose every failure is the input's fault (a release
/// folder or a path the user named, read with the hostile-input checks):
/// the whole reason, as bad input (exit 2).
pub fn bad_input(e: anyhow::Error) -> anyhow::Error {
    crate::InputError(format!("{e:#}")).into()
}

/// The recipe a command reads and the folder its paths may point into
/// (shared by build, check, lock and fetch).
#[derive(clap::Args)]
pub struct RecipeArgs {
    /// The recipe file (see docs/recipe.md).
    pub recipe: PathBuf,
    /// Folder that recipe paths may point into (default: the recipe's
    /// folder). Recipes cannot widen it themselves.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

impl RecipeArgs {
    /// The recipe, loaded and checked with the environment's settings.
    pub fn load(
        &self,
        settings: &crate::inputs::plan::Settings,
    ) -> Result<crate::recipe::Recipe, crate::recipe::RecipeError> {
        crate::recipe::load(&self.recipe, self.root.as_deref(), &recipe_env(settings))
    }

    pub fn path(&self) -> &Path {
        &self.recipe
    }
}

/// The recipe layer's settings, with the template signature check (the
/// recipe layer holds no crypto; team recipes need it).
pub fn recipe_env(settings: &crate::inputs::plan::Settings) -> crate::recipe::LoadEnv {
    crate::recipe::LoadEnv {
        verify_signature: Some(crate::release::template::verify_signature),
        ..settings.recipe_env()
    }
}

/// `--json`, spelled and described the same on every command that has it.
#[derive(clap::Args)]
pub struct JsonArg {
    /// Print the result as JSON on stdout (one document) instead of text;
    /// progress and errors stay on stderr.
    #[arg(long)]
    pub json: bool,
}

/// Prints `v` as one pretty JSON document on stdout.
/// A reader that closed the pipe early (`cairn inspect --json DIR | head`)
/// has what it wanted: that is not an error, and never a panic.
pub fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    use std::io::Write;
    let text = serde_json::to_string_pretty(v)?;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// Where a secret key's passphrase comes from (shared by `build`, `keygen`
/// and `site sign`). Never the command line itself: argv is visible to
/// every user via /proc.
#[derive(clap::Args)]
pub struct PassArgs {
    /// Read the key passphrase from the first line of this file.
    #[arg(long, value_name = "FILE", conflicts_with = "passphrase_env")]
    passphrase_file: Option<PathBuf>,
    /// Read the key passphrase from this environment variable.
    #[arg(long, value_name = "VAR")]
    passphrase_env: Option<String>,
}

impl PassArgs {
    /// The source given, if any (`None`: ask on the terminal if needed).
    pub fn source(&self, env: &Env) -> Option<crate::release::signify::PassphraseSource> {
        use crate::release::signify::PassphraseSource;
        match (&self.passphrase_file, &self.passphrase_env) {
            (Some(f), _) => Some(PassphraseSource::File(f.clone())),
            (None, Some(v)) => Some(env.passphrase(v)),
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// What `cairn C --help` lacks, for `c` and its subcommands: an about
    /// line, a flag's or positional's help, a leaf command's examples and
    /// exit codes (issue #36).
    fn help_gaps(c: &clap::Command, path: &str, gaps: &mut Vec<String>) {
        let name = format!("{path} {}", c.get_name());
        if c.get_about().is_none() {
            gaps.push(format!("{name}: no about"));
        }
        let after = c
            .get_after_help()
            .map(|h| h.to_string())
            .unwrap_or_default();
        if c.get_subcommands().next().is_none() {
            if !after.contains("Examples:\n  cairn ") {
                gaps.push(format!("{name}: no examples in after_help"));
            }
            if !after.contains("Exit codes:\n  0    success") {
                gaps.push(format!("{name}: no exit codes in after_help"));
            }
        }
        for a in c.get_arguments() {
            let id = a.get_id().as_str();
            if id != "help" && id != "version" && a.get_help().is_none() {
                gaps.push(format!("{name} {id}: no help text"));
            }
        }
        for s in c.get_subcommands() {
            help_gaps(s, &name, gaps);
        }
    }

    #[test]
    fn every_command_and_flag_has_help_and_examples() {
        // From the top: the global flags, every command, every subcommand.
        let mut gaps = Vec::new();
        help_gaps(&Cli::command(), "", &mut gaps);
        assert!(gaps.is_empty(), "{gaps:#?}");
        // Control: a command without them is seen.
        // (clap's parser type, not a process.)
        let bare = clap::Command::default()
            .name("bare")
            .arg(clap::Arg::new("x").long("x"))
            .arg(clap::Arg::new("file"));
        let mut gaps = Vec::new();
        help_gaps(&bare, "cairn", &mut gaps);
        assert_eq!(
            gaps,
            [
                "cairn bare: no about",
                "cairn bare: no examples in after_help",
                "cairn bare: no exit codes in after_help",
                "cairn bare x: no help text",
                "cairn bare file: no help text",
            ]
        );
        // Control: one real flag losing its description is seen.
        let cmd = Cli::command()
            .mut_subcommand("build", |b| b.mut_arg("offline", |a| a.help(None::<&str>)));
        let build = cmd.find_subcommand("build").expect("build");
        let mut gaps = Vec::new();
        help_gaps(build, "cairn", &mut gaps);
        assert_eq!(gaps, ["cairn build offline: no help text"]);
    }

    fn code(e: anyhow::Error) -> u8 {
        report_error(&e)
    }

    #[test]
    fn the_readme_and_help_give_one_quick_start() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("## Quick start").expect("a quick start");
        let block = &readme[start..];
        let block = &block[block.find("```sh\n").expect("a sh block") + 6..];
        let block = &block[..block.find("```").expect("closed")];
        let help: Vec<&str> = quick_start!().lines().map(str::trim).collect();
        let readme: Vec<&str> = block.lines().map(str::trim).collect();
        assert_eq!(help, readme);
        let long = Cli::command().get_long_about().map(|a| a.to_string());
        assert!(long.is_some_and(|a| a.contains(quick_start!())));
    }

    #[test]
    fn error_kinds_map_to_exit_codes() {
        use crate::field::flash::FlashError;
        assert_eq!(code(crate::InputError("bad".into()).into()), 2);
        // The kind survives context added on the way up.
        let e = anyhow::Error::new(crate::InputError("bad".into())).context("while x");
        assert_eq!(code(e), 2);
        assert_eq!(code(anyhow::anyhow!("tool failed")), 1);
        assert_eq!(code(FlashError::BadInput("no tty".into()).into()), 2);
        assert_eq!(code(FlashError::Failed("read back".into()).into()), 1);
        assert_eq!(code(FlashError::Interrupted("SIGINT".into()).into()), 130);
        use crate::release::verify::VerifyError;
        assert_eq!(code(VerifyError::BadInput("no key".into()).into()), 2);
        assert_eq!(code(VerifyError::Failed("digest".into()).into()), 1);
    }
}
