//! `cairn keygen`: a signify key pair, or a Secure Boot key set.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::{Env, PassArgs};
use crate::release::signify::PassphraseSource;

/// Make a signing key pair NAME.pub / NAME.sec in OpenBSD signify format.
///
/// The secret key is encrypted under a passphrase (asked on the terminal,
/// or read from --passphrase-file / --passphrase-env; never from the
/// command line), unless --no-passphrase. Existing files are never
/// overwritten.
#[derive(clap::Args)]
#[command(
    after_help = after_help!("  cairn keygen keys/release\n  cairn keygen keys/ci --no-passphrase\n  cairn keygen keys/fleet --secure-boot")
)]
pub struct Args {
    /// Path prefix: NAME.pub and NAME.sec are written.
    name: PathBuf,
    /// Leave the secret key unencrypted (CI and throwaway keys only).
    #[arg(long)]
    no_passphrase: bool,
    /// Make a Secure Boot key instead: NAME.sb.key (PEM, unencrypted,
    /// 0600), NAME.sb.crt/.sb.cer (X.509), and PK/KEK/db enrolment
    /// files NAME.{PK,KEK,db}.{esl,auth} (docs/secure-boot.md).
    #[arg(long, conflicts_with = "no_passphrase")]
    secure_boot: bool,
    #[command(flatten)]
    pass: PassArgs,
}

pub fn exec(a: Args, env: &Env) -> Result<ExitCode> {
    if a.secure_boot {
        for f in crate::release::secureboot::keygen(&a.name)? {
            println!("{}", f.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let passphrase = if a.no_passphrase {
        None
    } else {
        // No source given: ask on the terminal, twice.
        Some(
            a.pass
                .source(env)
                .unwrap_or(PassphraseSource::Prompt { confirm: true }),
        )
    };
    let k = crate::release::sign::keygen(&a.name, passphrase)?;
    println!(
        "public key: {}\nsecret key: {}\nkey id:     {}",
        k.public.display(),
        k.secret.display(),
        k.key_id
    );
    Ok(ExitCode::SUCCESS)
}
