//! `cairn doctor`: the host tools cairn needs.

use std::process::ExitCode;

use anyhow::Result;

use super::{Env, JsonArg};

/// List the host tools cairn needs, found or missing, with Debian packages.
#[derive(clap::Args)]
#[command(after_help = after_help!(
    "  cairn doctor\n  cairn doctor || sudo make deps\n  cairn doctor --json | jq -r '.missing_packages[]'",
    "  1    a required tool or file is missing (the last line says what to install)\n"
))]
pub struct Args {
    #[command(flatten)]
    json: JsonArg,
}

/// `cairn doctor --json`.
#[derive(serde::Serialize)]
struct Doctor {
    ok: bool,
    missing_packages: Vec<&'static str>,
    items: Vec<crate::host::doctor::Item>,
}

/// Exit 1 when a tool is missing.
pub fn exec(a: Args, _env: &Env) -> Result<ExitCode> {
    let missing = if a.json.json {
        let items = crate::host::doctor::survey();
        let missing_packages = crate::host::doctor::missing_packages(&items);
        let n = missing_packages.len();
        super::print_json(&Doctor {
            ok: n == 0,
            missing_packages,
            items,
        })?;
        n
    } else {
        crate::host::doctor::report()
    };
    Ok(if missing == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
