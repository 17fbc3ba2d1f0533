//! The one way cairn runs a host tool: through `xshell::cmd!`, logged,
//! timed, and turned into an error that names the stage, the command line
//! and the tail of its stderr when it fails.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use xshell::Cmd;

/// Whether to echo each command line (set by `--verbose`).
static VERBOSE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_verbose(v: bool) {
    VERBOSE.store(v, std::sync::atomic::Ordering::Relaxed);
}

pub fn verbose() -> bool {
    VERBOSE.load(std::sync::atomic::Ordering::Relaxed)
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = v.len().saturating_sub(lines);
    v[start..].join("\n    ")
}

/// Runs `cmd` for `stage`, returning its stdout.
pub fn run(stage: &str, cmd: Cmd<'_>) -> Result<String> {
    let line = cmd.to_string();
    if verbose() {
        eprintln!("  $ {line}");
    }
    let started = Instant::now();
    let out = cmd.ignore_status().quiet().output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            bail!("{stage}: cannot run `{line}`: {e}; run `cairn doctor` to check host tools")
        }
    };
    if verbose() {
        eprintln!("    ({:.1}s)", started.elapsed().as_secs_f64());
    }
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut msg = format!("{stage}: `{line}` failed ({})", out.status);
        let t = tail(&stderr, 8);
        if !t.is_empty() {
            msg.push_str(&format!("\n    {t}"));
        } else {
            let t = tail(&stdout, 8);
            if !t.is_empty() {
                msg.push_str(&format!("\n    {t}"));
            }
        }
        bail!(msg);
    }
    Ok(stdout)
}

/// Runs a long tool that is not built with `cmd!` (it needs its own
/// environment and piped stderr): echoes its `I:` progress lines (all lines
/// with --verbose) and keeps the tail of its output for the error.
pub fn run_streaming(stage: &str, mut cmd: std::process::Command) -> Result<()> {
    let line = format!("{cmd:?}");
    if verbose() {
        eprintln!("  $ {line}");
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("{stage}: cannot start {line}; run `cairn doctor`"))?;
    let mut tail: Vec<String> = Vec::new();
    if let Some(err) = child.stderr.take() {
        for l in std::io::BufRead::lines(std::io::BufReader::new(err)) {
            let l = l.unwrap_or_default();
            if l.starts_with("I: ") || verbose() {
                eprintln!("    {}", l.trim_start_matches("I: "));
            }
            tail.push(l);
            if tail.len() > 15 {
                tail.remove(0);
            }
        }
    }
    let status = child.wait().with_context(|| format!("{stage}: waiting"))?;
    if !status.success() {
        bail!(
            "{stage}: {line} failed ({status})\n    {}",
            tail.join("\n    ")
        );
    }
    Ok(())
}
