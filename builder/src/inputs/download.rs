//! Downloads into the content-addressed cache, pinned by sha256.
//!
//! One path for every fetched input (locked .debs, URL inputs of a
//! recipe): curl writes into a temporary file beside the cache, then the
//! cache stores it only if its sha256 is the pinned one. Only http and
//! https are allowed, for the first request and for redirects. Failures
//! are collected by the caller, so one run lists everything that could not
//! be fetched.

pub use crate::recipe::url::{check_url, is_url};
use std::io::IsTerminal;
use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, Result};

use crate::host::digest::Sha256;
use crate::inputs::cache::Cache;

/// Downloads `url` into `cache` unless the cache already holds `sha256`.
/// Returns the bytes downloaded (0 when it was cached). `work` holds the
/// temporary file. A file whose sha256 differs is not stored, and the
/// error names both digests.
pub fn fetch_to_cache(url: &str, sha256: &Sha256, cache: &Cache, work: &Path) -> Result<u64> {
    if cache.contains(sha256) {
        return Ok(0);
    }
    check_url(url).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(work).with_context(|| format!("cannot create {}", work.display()))?;
    let tmp = tempfile::NamedTempFile::new_in(work)
        .with_context(|| format!("cannot create a file in {}", work.display()))?;
    let mut cmd = crate::host::runner::command("curl");
    cmd.args([
        "--fail",
        "--location",
        "--show-error",
        "--retry",
        "3",
        "--proto",
        "=http,https",
        "--proto-redir",
        "=http,https",
    ]);
    if std::io::stderr().is_terminal() {
        // curl's own progress bar: large inputs (k3s images) take a while.
        cmd.arg("--progress-bar").stderr(Stdio::inherit());
    } else {
        cmd.arg("--silent").stderr(Stdio::piped());
    }
    cmd.arg("--output")
        .arg(tmp.path())
        .arg("--")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    crate::host::runner::output(&format!("download {url}"), cmd)?;
    let got = Sha256::of_file(tmp.path())?;
    if got != *sha256 {
        return Err(PinMismatch {
            url: url.to_string(),
            pinned: *sha256,
            got,
        }
        .into());
    }
    let f = std::fs::File::open(tmp.path())
        .with_context(|| format!("download {url}: cannot open {}", tmp.path().display()))?;
    let size = f
        .metadata()
        .with_context(|| format!("download {url}: cannot stat {}", tmp.path().display()))?
        .len();
    cache
        .put_reader(f, Some(*sha256))
        .with_context(|| format!("{url}: cannot store the download in the cache"))?;
    Ok(size)
}

/// A download whose content is not what its pin says (nothing is stored).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url}: the download has sha256 {got}, the pin is {pinned}; nothing was stored (a changed or tampered file, or a wrong pin)")]
pub struct PinMismatch {
    pub url: String,
    pub pinned: Sha256,
    pub got: Sha256,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert!(
            check_url("https://github.com/k3s-io/k3s/releases/download/v1.31.4%2Bk3s1/k3s").is_ok()
        );
        assert!(check_url("http://127.0.0.1:8000/x.tar").is_ok());
        for (bad, why) in [
            ("ftp://example.org/x", "must start with"),
            ("file:///etc/passwd", "must start with"),
            ("https:///x", "no host"),
            ("https://a b/x", "contains ' '"),
            ("https://example.org/x\ny", "contains '\\n'"),
            ("https://user:secret@example.org/x", "credentials"),
            ("https://example.org/'x", "contains"),
        ] {
            let e = check_url(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(is_url("https://x") && is_url("http://x") && !is_url("files/x"));
    }

    #[test]
    fn a_cached_input_is_not_downloaded_again() {
        let t = tempfile::tempdir().unwrap();
        let cache = Cache::open(t.path().join("c")).unwrap();
        let d = cache.put_reader(&b"hello"[..], None).unwrap();
        // An unreachable URL: the cache answers first.
        let n = fetch_to_cache("http://127.0.0.1:9/x", &d, &cache, t.path()).unwrap();
        assert_eq!(n, 0);
        // Not cached: curl fails, the error names the URL.
        let other = Sha256::of_bytes(b"other");
        let e = fetch_to_cache("http://127.0.0.1:9/x", &other, &cache, t.path()).unwrap_err();
        assert!(format!("{e:#}").contains("http://127.0.0.1:9/x"), "{e:#}");
        assert!(!cache.contains(&other));
    }
}
