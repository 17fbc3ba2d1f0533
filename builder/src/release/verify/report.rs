//! `cairn verify --report FILE.json`: what verify checked, as evidence a
//! reviewer can file. Deterministic apart from `verified_at` (the caller
//! passes the time): same release, key and options, same bytes.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::{VerifyError, VerifyReport};

/// Report format; changes when the fields do.
pub const REPORT_SCHEMA: u32 = 1;

/// The report for one verify run (`Ok` or the error it ended with).
pub fn report_json(
    target: &Path,
    pubkey: &Path,
    production: bool,
    outcome: &Result<VerifyReport, VerifyError>,
    verified_at: &str,
) -> Value {
    let mut v = json!({
        "schema": REPORT_SCHEMA,
        "tool": format!("cairn {}", env!("CARGO_PKG_VERSION")),
        "verified_at": verified_at,
        "target": target.display().to_string(),
        "pubkey": pubkey.display().to_string(),
        "production": production,
    });
    match outcome {
        Ok(r) => {
            v["result"] = json!("ok");
            v["image"] = json!({ "name": r.name, "version": r.version });
            v["key_id"] = json!(r.key_id);
            v["root_hash_recomputed"] = json!(r.root_hash.hex());
            v["sha256_file"] = json!(r.sums_sha256.hex());
            v["files"] = r
                .signed
                .iter()
                .map(|(name, d)| json!({ "file": name, "sha256": d.hex(), "signature": "ok" }))
                .collect();
            v["checks"] = json!(r.checks);
            v["notes"] = json!(r.notes);
        }
        Err(e) => {
            v["result"] = json!(match e {
                VerifyError::BadInput(_) => "refused",
                _ => "failed",
            });
            v["error"] = json!(e.to_string());
        }
    }
    v
}

/// The report of this run stamped with the wall clock (the one time
/// stamp: when the evidence was taken); `cairn verify --json` prints it.
pub fn report_now(
    target: &Path,
    pubkey: &Path,
    production: bool,
    outcome: &Result<VerifyReport, VerifyError>,
) -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    report_json(
        target,
        pubkey,
        production,
        outcome,
        &crate::host::time::rfc3339(now),
    )
}

/// `cairn verify --report`: [`report_now`] written to `path` as
/// [`write_report`] does. A path it may not write is bad input.
pub fn write_now(
    path: &Path,
    target: &Path,
    pubkey: &Path,
    production: bool,
    outcome: &Result<VerifyReport, VerifyError>,
) -> Result<(), crate::InputError> {
    let v = report_now(target, pubkey, production, outcome);
    write_report(path, target, &v).map_err(|e| crate::InputError(format!("{e:#}")))
}

/// Writes the report atomically; refuses a path inside the verified folder
/// (it would become an unlisted file of the release).
pub fn write_report(path: &Path, target: &Path, report: &Value) -> Result<()> {
    let folder = if target.is_dir() {
        target.to_path_buf()
    } else {
        target.parent().unwrap_or(Path::new(".")).to_path_buf()
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let (Ok(folder), Ok(parent_abs)) = (folder.canonicalize(), parent.canonicalize()) else {
        bail!("--report {}: its folder does not exist", path.display());
    };
    if parent_abs.starts_with(&folder) {
        bail!(
            "--report {}: inside the release folder it would become an unlisted file; write it elsewhere",
            path.display()
        );
    }
    let mut text = serde_json::to_string_pretty(report).context("report")?;
    text.push('\n');
    let tmp = parent_abs.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    std::fs::write(&tmp, text)
        .with_context(|| format!("--report: cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("--report: cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::digest::Sha256;

    fn report() -> VerifyReport {
        VerifyReport {
            key_id: "0123456789abcdef".into(),
            name: "t".into(),
            version: "1".into(),
            root_hash: Sha256::of_bytes(b"root"),
            checks: vec!["signature".into()],
            notes: vec![],
            signed: [("t-1.raw".to_string(), Sha256::of_bytes(b"raw"))]
                .into_iter()
                .collect(),
            sums_sha256: Sha256::of_bytes(b"sums"),
        }
    }

    #[test]
    fn report_is_deterministic_apart_from_its_time() {
        let (t, k) = (Path::new("rel"), Path::new("k.pub"));
        let a = report_json(t, k, true, &Ok(report()), "2026-12-01T00:00:00Z");
        let b = report_json(t, k, true, &Ok(report()), "2026-12-02T00:00:00Z");
        assert_ne!(a, b);
        let strip = |mut v: Value| {
            v["verified_at"] = Value::Null;
            v
        };
        assert_eq!(strip(a.clone()), strip(b));
        assert_eq!(a["files"][0]["file"], "t-1.raw");
        assert_eq!(a["files"][0]["sha256"], Sha256::of_bytes(b"raw").hex());
        assert_eq!(a["result"], "ok");
        // Control: a failed run says so and carries the error.
        let f = report_json(t, k, false, &Err(VerifyError::BadInput("x".into())), "t");
        assert_eq!(f["result"], "refused");
        assert!(f.get("files").is_none());
    }

    #[test]
    fn report_inside_the_release_folder_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let rel = d.path().join("rel");
        std::fs::create_dir(&rel).unwrap();
        let v = json!({});
        assert!(write_report(&rel.join("r.json"), &rel, &v).is_err());
        assert!(!rel.join("r.json").exists());
        // Control: beside it is fine.
        write_report(&d.path().join("r.json"), &rel, &v).unwrap();
        assert!(d.path().join("r.json").exists());
    }
}
