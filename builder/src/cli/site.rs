//! `cairn site`: per-site settings for one signed release.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use super::{Env, PassArgs};
use crate::host::shown::{self, Shown};
use crate::release::site::{self as site_file, ReleaseTrust};

/// Site files: per-site settings for one signed release (see
/// docs/recipe.md, `[site]`).
#[derive(clap::Args)]
#[command(
    after_help = after_help!("  cairn site token --days 14\n  cairn site sign site.toml --key sites.sec --recipe recipes/field-ai.toml\n  cairn site apply out/field-ai-0.1.0/field-ai-0.1.0.qcow2 site.toml -o vm.qcow2 --pubkey release.pub")
)]
pub struct Args {
    #[command(subcommand)]
    op: Op,
}

#[derive(Subcommand)]
enum Op {
    /// Check a site file against the recipe's [site] table and sign it:
    /// writes SITE.toml.sig. An unknown key, a key the recipe does not allow
    /// or a bad value: exit 2 with file:line:col, nothing written.
    #[command(
        after_help = after_help!("  cairn site sign site.toml --key sites.sec --recipe recipes/field-ai.toml\n  cairn site sign site.toml --key sites.sec --recipe recipes/field-ai.toml --passphrase-file pw.txt")
    )]
    Sign {
        /// The site file to check and sign.
        site: PathBuf,
        /// The site key's secret half (signify format), not the release key.
        #[arg(long, value_name = "sites.sec")]
        key: PathBuf,
        /// The recipe whose [site] table the file must follow.
        #[arg(long)]
        recipe: PathBuf,
        /// Folder that recipe paths may point into (default: the recipe's folder).
        #[arg(long)]
        root: Option<PathBuf>,
        #[command(flatten)]
        pass: PassArgs,
    },
    /// Write a copy of a raw, qcow2 or ISO image (for VMs) with a signed
    /// site file on its ESP (the ISO's: its EFI image). The site file is
    /// checked against the release's manifest and its signature verified
    /// first; the image is not changed.
    #[command(
        after_help = after_help!("  cairn site apply out/field-ai-0.1.0/field-ai-0.1.0.qcow2 site.toml -o vm.qcow2 --pubkey release.pub\n  cairn site apply field-ai-0.1.0.raw site.toml -o test.raw --unverified")
    )]
    Apply {
        /// The .raw, .qcow2 or .iso, in its release folder (manifest.json beside it).
        image: PathBuf,
        /// The site file; SITE.toml.sig must be beside it.
        site: PathBuf,
        /// The copy to write (must not exist).
        #[arg(short, long)]
        out: PathBuf,
        /// The signer's public key: SHA256.sig, the manifest's and the
        /// image's digests are checked before the manifest's site key is
        /// trusted. Required unless --unverified.
        #[arg(long, value_name = "KEY.pub")]
        pubkey: Option<PathBuf>,
        /// Trust the release folder as it is (no signature check).
        #[arg(long)]
        unverified: bool,
    },
    /// Print a fresh bootstrap token for the site files of one cluster
    /// (from the system's random source) and when it stops working, as
    /// two lines to paste into them: `join_token = "..."` and
    /// `join_expires = "..."` (UTC). Every agent's file and the server's
    /// carry the same two lines; the token is a secret (whoever holds a
    /// stick can read it): keep the expiry short.
    #[command(
        after_help = after_help!("  cairn site token\n  cairn site token --days 7 >> north-agent.toml")
    )]
    Token {
        /// Days until the token expires (1 to 365).
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=365))]
        days: u32,
    },
}

pub fn exec(a: Args, env: &Env) -> Result<ExitCode> {
    match a.op {
        Op::Sign {
            site,
            key,
            recipe,
            root,
            pass,
        } => {
            let r = crate::recipe::load(
                &recipe,
                root.as_deref(),
                &super::recipe_env(&env.settings()?),
            )?;
            let key = crate::release::sign::SigningKey {
                path: key,
                passphrase: pass.source(env),
            };
            let s = site_file::sign_for_recipe(&site, &r, &key)?;
            println!(
                "site {} (key {}): wrote {}; {}",
                Shown(&s.name),
                s.key_id,
                site_file::sig_path(&site).display(),
                s.role_text()
            );
        }
        Op::Apply {
            image,
            site,
            out,
            pubkey,
            unverified,
        } => {
            let trust = ReleaseTrust::from_args(pubkey.as_deref(), unverified)?;
            let applied = site_file::apply(&image, &site, &out, trust)?;
            println!(
                "site {} (key {}): wrote {} (read back{}); {}",
                Shown(&applied.site.name),
                applied.site.key_id,
                shown::path(&applied.out),
                if unverified {
                    "; release not verified"
                } else {
                    ""
                },
                applied.site.role_text()
            );
        }
        Op::Token { days } => print!("{}", site_file::token_lines(days)?),
    }
    Ok(ExitCode::SUCCESS)
}
