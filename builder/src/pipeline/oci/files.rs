//! Reads a few named files (the dpkg status database, os-release) out of a
//! loaded image's layers without unpacking them, as the flattened image
//! would show them: the highest layer that has a file wins; a whiteout of
//! the file or of a folder above it, or an opaque folder above it, hides
//! it from the layers below. Invariant: reads only, writes nothing, and
//! no file is read past `cap` bytes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};

use anyhow::{bail, Context, Result};

use super::LoadedImage;

/// The files of `wanted` (paths relative to the image root, no leading
/// `/`) that the flattened image has as regular files, by path.
pub fn read_files(
    img: &LoadedImage,
    wanted: &[&str],
    cap: u64,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut found: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for layer in &img.layers {
        let blob = layer.blob_path();
        let f = std::fs::File::open(blob)
            .with_context(|| format!("cannot open layer {}", blob.display()))?;
        let mut r = BufReader::new(f);
        let gzip = r.fill_buf()?.starts_with(&[0x1f, 0x8b]);
        let stream: Box<dyn Read> = if gzip {
            Box::new(flate2::bufread::MultiGzDecoder::new(r))
        } else {
            Box::new(r)
        };
        let mut this_layer: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut hidden: Vec<String> = Vec::new();
        let mut archive = tar::Archive::new(stream);
        let entries = archive
            .entries()
            .with_context(|| format!("layer {}: not a tar stream", layer.digest()))?;
        for entry in entries {
            let mut entry =
                entry.with_context(|| format!("layer {}: bad tar entry", layer.digest()))?;
            let path = entry
                .path()
                .with_context(|| format!("layer {}: bad entry name", layer.digest()))?
                .to_string_lossy()
                .into_owned();
            let path = normal(&path);
            let (dir, base) = match path.rsplit_once('/') {
                Some((d, b)) => (d.to_string(), b.to_string()),
                None => (String::new(), path.clone()),
            };
            if base == ".wh..wh..opq" {
                // Opaque folder: its lower-layer contents are hidden.
                hidden.extend(
                    wanted
                        .iter()
                        .filter(|w| under(w, &dir))
                        .map(|w| w.to_string()),
                );
                continue;
            }
            if let Some(victim) = base.strip_prefix(".wh.") {
                let gone = join(&dir, victim);
                hidden.extend(
                    wanted
                        .iter()
                        .filter(|w| **w == gone || under(w, &gone))
                        .map(|w| w.to_string()),
                );
                continue;
            }
            if !wanted.contains(&path.as_str()) {
                continue;
            }
            if !entry.header().entry_type().is_file() {
                // A link or folder in its place hides a lower regular file.
                hidden.push(path);
                continue;
            }
            let size = entry.header().size().unwrap_or(u64::MAX);
            if size > cap {
                bail!(
                    "layer {}: {path} is {size} bytes, more than the {cap}-byte limit",
                    layer.digest()
                );
            }
            let mut bytes = Vec::new();
            (&mut entry)
                .take(cap)
                .read_to_end(&mut bytes)
                .with_context(|| format!("layer {}: read {path}", layer.digest()))?;
            this_layer.insert(path, bytes);
        }
        for h in hidden {
            found.remove(&h);
        }
        found.extend(this_layer);
    }
    Ok(found)
}

/// `./a/b/` -> `a/b`.
fn normal(p: &str) -> String {
    p.trim_start_matches("./")
        .trim_start_matches('/')
        .trim_end_matches('/')
        .to_string()
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Whether `path` lies inside folder `dir` ("" is the root).
fn under(path: &str, dir: &str) -> bool {
    dir.is_empty() || path.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(normal("./var/lib/dpkg/status"), "var/lib/dpkg/status");
        assert_eq!(normal("var/lib/"), "var/lib");
        assert!(under("var/lib/dpkg/status", "var/lib"));
        assert!(under("var/lib/dpkg/status", ""));
        assert!(!under("var/library/x", "var/lib"));
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("var", "a"), "var/a");
    }
}
