//! `cairn build`: a recipe into out/NAME-VERSION/.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::{Env, JsonArg, PassArgs, RecipeArgs};
use crate::build::{BuildOptions, Formats};
use crate::release::sign::SigningKey;

/// The environment `cairn build` reads, for `cairn build --help`.
const ENV_HELP: &str = "Environment:
  CAIRN_CACHE           the cache (downloads, stage results): default $XDG_CACHE_HOME/cairn,
                        else ~/.cache/cairn
  CAIRN_NO_STAGE_CACHE  set (to any value) for a cold build: no stage result is reused or stored
  CAIRN_TREES=disk      keep root trees in the output folder; by default a rebuild unpacks the
                        cached base tree in a /dev/shm folder when it fits with room to spare
                        (the outputs are the same bytes either way)
  SOURCE_DATE_EPOCH     the release date (first match: this, the recipe's [image] source_date_epoch,
                        the lock's date, 2025-01-01)

Rebuilds reuse what did not change (the stage cache): an overlay change rebuilds the apps
volume and the media, a model change that model's volume and the media.

Examples:
  cairn build recipes/field-ai.toml --key release.sec
  cairn build recipes/field-ai.toml --format raw --offline
  cairn build recipes/field-ai.toml -q --json | jq -r .raw

Exit codes:
  0    success
  1    a build step failed (the error names the stage and the tool)
  2    bad input (recipe, pins, keys): file:line:col and the fix; nothing written
  130  interrupted by SIGINT (128+N for signal N: 129 SIGHUP, 143 SIGTERM)";

/// Build a recipe into out/NAME-VERSION/ (raw disk + manifest.json).
///
/// Stages print as they run, with their durations. A bad recipe or a
/// pin mismatch stops the build before anything is written (exit 2);
/// a failed or interrupted build leaves nothing under the output
/// folder that looks finished.
#[derive(clap::Args)]
#[command(
    after_help = after_help!(
        "  cairn build recipes/field-ai.toml --key release.sec\n  cairn build recipes/field-ai.toml --format raw --offline\n  cairn build recipes/field-ai.toml -q --json | jq -r .raw",
        "  1    a build step failed (the error names the stage and the tool)\n"
    ),
    after_long_help = ENV_HELP
)]
pub struct Args {
    #[command(flatten)]
    recipe: RecipeArgs,
    /// Output folder; the image lands in DIR/NAME-VERSION/.
    #[arg(short, long, default_value = "out", value_name = "DIR")]
    out: PathBuf,
    /// Media to write, comma-separated: raw, iso, qcow2.
    #[arg(long, default_value_t = Formats::default(), value_parser = Formats::parse)]
    format: Formats,
    /// Sign the outputs with this signify secret key: writes SHA256 and
    /// SHA256.sig beside the media (`signify -C` and `cairn verify` read them).
    #[arg(long, value_name = "NAME.sec")]
    key: Option<PathBuf>,
    #[command(flatten)]
    pass: PassArgs,
    /// Secure Boot: sign every UKI cairn ships (the raw disk's and the
    /// ISO's) with this PEM key (unencrypted); a recipe with `[boot]
    /// shim = true` needs it (shim starts only a UKI signed by a key
    /// enrolled as a MOK). See docs/secure-boot.md.
    #[arg(long, value_name = "KEY", requires = "sb_cert")]
    sb_key: Option<PathBuf>,
    /// The X.509 certificate (PEM) of --sb-key; shipped as secure-boot.crt
    /// and its sha256 fingerprint recorded in the manifest.
    #[arg(long, value_name = "CERT", requires = "sb_key")]
    sb_cert: Option<PathBuf>,
    /// Use nothing but cairn's cache: needs RECIPE.lock with every
    /// package cached (`cairn fetch`); lists what is missing otherwise.
    #[arg(long)]
    offline: bool,
    /// Re-resolve RECIPE.lock when it disagrees with the recipe (or
    /// create it).
    #[arg(long)]
    update_lock: bool,
    #[command(flatten)]
    json: JsonArg,
}

/// `cairn build --json`: where the release is and what identifies it.
#[derive(serde::Serialize)]
struct Built {
    name: String,
    version: String,
    dir: PathBuf,
    raw: PathBuf,
    root_hash: String,
    /// Every file of the release folder, sorted.
    files: Vec<String>,
}

pub fn exec(a: Args, env: &Env) -> Result<ExitCode> {
    let settings = env.settings()?;
    let r = a.recipe.load(&settings)?;
    let secure_boot = match (&a.sb_key, &a.sb_cert) {
        (Some(k), Some(c)) => Some(crate::pipeline::sbsign::SbKey::load(k, c)?),
        _ => None,
    };
    let passphrase = a.pass.source(env);
    let key = a.key.map(|path| SigningKey { path, passphrase });
    let res = crate::build::build(
        &r,
        &BuildOptions {
            out_dir: a.out,
            settings,
            formats: a.format,
            key,
            offline: a.offline,
            update_lock: a.update_lock,
            secure_boot,
        },
    )?;
    if a.json.json {
        let mut files: Vec<String> = std::fs::read_dir(&res.dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        super::print_json(&Built {
            name: r.name.clone(),
            version: r.version.clone(),
            dir: res.dir,
            raw: res.raw,
            root_hash: res.root_hash.hex(),
            files,
        })?;
    } else {
        println!("{}", res.raw.display());
    }
    Ok(ExitCode::SUCCESS)
}
