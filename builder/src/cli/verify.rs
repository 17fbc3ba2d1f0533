//! `cairn verify`: an output folder checked against a public key, offline.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::Env;

/// Verify an output folder (or one .raw beside its SHA256, SHA256.sig and
/// manifest.json) against a public key, offline. Exit 0 only if every
/// check passes; 1 if one fails (one line says which); 2 for bad input.
#[derive(clap::Args)]
#[command(
    after_help = after_help!(
        "  cairn verify out/field-ai-0.1.0 --pubkey release.pub\n  cairn verify out/field-ai-0.1.0/field-ai-0.1.0.raw --pubkey release.pub --production --report evidence.json\n  cairn verify out/field-ai-0.1.0 --pubkey release.pub --json | jq .result",
        "  1    a check failed: `FAILED` and which check (the --json/--report result is \"failed\")\n"
    )
)]
pub struct Args {
    /// The output folder, or a .raw/.iso file in it.
    target: PathBuf,
    /// The signer's public key (signify format).
    #[arg(long, value_name = "KEY.pub")]
    pubkey: PathBuf,
    /// The platform key (signify `.pub`): also require that the release
    /// was built from a template it signed, and that the manifest's
    /// contents keep that template's rules (docs/templates.md).
    #[arg(long, value_name = "platform.pub")]
    template_key: Option<PathBuf>,
    /// Also refuse images whose flags say debug (debug console on).
    #[arg(long)]
    production: bool,
    /// Write what was checked (each file and digest, key id, root
    /// hashes recomputed, production checks) as JSON evidence, also when
    /// verification fails; deterministic apart from its time stamp.
    #[arg(long, value_name = "FILE.json")]
    report: Option<PathBuf>,
    /// Print that same evidence as JSON on stdout instead of the text
    /// line, also when verification fails (`result`: ok, failed or
    /// refused; the exit code says the same).
    #[arg(long)]
    json: bool,
}

/// A failed check is a `VerifyError` (`report_error` prints `FAILED ...`,
/// exit 1; bad input exit 2), after the evidence was written.
pub fn exec(a: Args, _env: &Env) -> Result<ExitCode> {
    let outcome = match &a.template_key {
        Some(k) => crate::release::template::verify(&a.target, &a.pubkey, a.production, k),
        None => crate::release::verify::verify(&a.target, &a.pubkey, a.production),
    };
    if let Some(path) = &a.report {
        crate::release::verify::report::write_now(
            path,
            &a.target,
            &a.pubkey,
            a.production,
            &outcome,
        )?;
    }
    if a.json {
        let v = crate::release::verify::report::report_now(
            &a.target,
            &a.pubkey,
            a.production,
            &outcome,
        );
        super::print_json(&v)?;
        outcome?;
    } else {
        println!("{}", outcome?);
    }
    Ok(ExitCode::SUCCESS)
}
