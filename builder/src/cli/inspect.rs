//! `cairn inspect`: what a reviewer reads first about a release folder.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::{Env, JsonArg};

/// What a reviewer reads first: name, version, build date, signer key id,
/// root hash, kernel and command line, flags, network rules, outputs with
/// digests and the package list. Does not verify: use `cairn verify`.
#[derive(clap::Args)]
#[command(
    after_help = after_help!("  cairn inspect out/field-ai-0.1.0\n  cairn inspect out/field-ai-0.1.0 --json | jq .packages")
)]
pub struct Args {
    /// An output folder (out/NAME-VERSION).
    dir: PathBuf,
    #[command(flatten)]
    json: JsonArg,
}

pub fn exec(a: Args, _env: &Env) -> Result<ExitCode> {
    let i = crate::release::inspect::inspect(&a.dir)?;
    if a.json.json {
        super::print_json(&i)?;
    } else {
        print!("{}", i.render_text());
    }
    Ok(ExitCode::SUCCESS)
}
