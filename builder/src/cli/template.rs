//! `cairn template`: the platform team's side of governed templates.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use super::{Env, PassArgs};
use crate::host::shown::Shown;

/// Governed templates: recipes with a [governance] table that team recipes
/// build on (see docs/templates.md).
#[derive(clap::Args)]
#[command(
    after_help = after_help!("  cairn template sign recipes/platform.toml --key platform.sec")
)]
pub struct Args {
    #[command(subcommand)]
    op: Op,
}

#[derive(Subcommand)]
enum Op {
    /// Sign a template with the platform key: writes TEMPLATE.sig. A file
    /// without [governance] or with a bad version: exit 2, nothing written.
    #[command(
        after_help = after_help!("  cairn template sign recipes/platform.toml --key platform.sec\n  cairn template sign platform.toml --key platform.sec --passphrase-file pw.txt")
    )]
    Sign {
        /// The template to sign.
        template: PathBuf,
        /// The platform key's secret half (signify format).
        #[arg(long, value_name = "platform.sec")]
        key: PathBuf,
        #[command(flatten)]
        pass: PassArgs,
    },
}

pub fn exec(a: Args, env: &Env) -> Result<ExitCode> {
    match a.op {
        Op::Sign {
            template,
            key,
            pass,
        } => {
            // The template is checked before the passphrase is asked for.
            let text = std::fs::read_to_string(&template).map_err(|e| {
                crate::InputError(format!("{}: cannot read: {e}", template.display()))
            })?;
            crate::release::template::governance_of(&template, &text)?;
            let pub_name = key
                .with_extension("pub")
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "platform.pub".into());
            let secret = crate::release::sign::load_key(&crate::release::sign::SigningKey {
                path: key,
                passphrase: pass.source(env),
            })?;
            let s = crate::release::template::sign(&template, &secret, &pub_name)?;
            println!(
                "template {} {} (key {}): wrote {}",
                Shown(&s.name),
                Shown(&s.version),
                s.key_id,
                s.sig.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
