//! qcow2: the raw disk converted for VM platforms with `qemu-img convert`,
//! zstd-compressed clusters, holes and zero clusters left unallocated.
//! zstd, not zlib: the same size for an appliance disk, and about six
//! times faster on data that does not compress (model weights: measured
//! 2.6 s against 16 s per GiB on this project's 2-core builder). Readers
//! need QEMU 5.1 or later (2020), which every supported distribution has.
//!
//! Model volumes are stored, not compressed: weights do not compress (a
//! model volume is uncompressed squashfs, or zstd already), and zstd would
//! try every cluster of them. The first pass reads zeros in their place
//! (a `null-co` node: the clusters stay unallocated), the second writes
//! each volume file uncompressed into the same qcow2 through a `raw` node
//! with an offset; the raw disk's own copy of the models is not read, so
//! the qcow2 is made while it is written. All are plain qemu-img block
//! nodes, named as `json:` arguments whose file names are JSON strings
//! (never parsed as options).
//!
//! Reproducible: qcow2 headers carry no timestamps or random IDs, and
//! without `-W` (out-of-order writes) qemu-img writes clusters in order even
//! with parallel coroutines, so the same raw gives the same bytes (checked
//! by building twice). Options are spelled out so a qemu-img with other
//! defaults still produces the same layout.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// `qemu-img create -o` options for the output.
pub const QCOW2_OPTIONS: &str = "compat=1.1,cluster_size=65536,compression_type=zstd";

/// Converts the raw disk `raw` into a compressed qcow2 at `out` (replaced
/// if present) and checks the result with `qemu-img check`. `stored` are
/// files whose bytes are the raw disk's from an offset on (the model
/// volumes and their hash trees, at their partitions): written
/// uncompressed, from those files, so the raw disk's copy of them may
/// still be being written. They must lie inside the disk and not overlap.
pub fn write_qcow2(raw: &Path, out: &Path, stored: &[(u64, &Path)]) -> Result<()> {
    if !raw.is_file() {
        bail!("qcow2: {} is not a file", raw.display());
    }
    let total = std::fs::metadata(raw)
        .with_context(|| format!("qcow2: stat {}", raw.display()))?
        .len();
    let mut ranges = Vec::new();
    for (at, file) in stored {
        let len = std::fs::metadata(file)
            .with_context(|| format!("qcow2: stat {}", file.display()))?
            .len();
        ranges.push((*at, len));
    }
    let zeroed = stored_ranges(&ranges, total)?;
    // JSON names need UTF-8 paths.
    let utf8 = |p: &Path| -> Result<String> {
        p.to_str().map(str::to_string).with_context(|| {
            format!(
                "qcow2: {} is not a UTF-8 path, which qemu-img's JSON block names need; use UTF-8 names for the output folder and CAIRN_CACHE",
                p.display()
            )
        })
    };
    let names = if stored.is_empty() {
        None
    } else {
        let mut files = Vec::new();
        for ((at, file), (_, len)) in stored.iter().zip(&ranges) {
            files.push((*at, utf8(file)?, *len));
        }
        files.sort();
        Some((utf8(raw)?, utf8(out)?, files))
    };
    if out.exists() {
        std::fs::remove_file(out).with_context(|| format!("qcow2: remove {}", out.display()))?;
    }
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut convert = crate::host::runner::command("qemu-img");
    convert.args(["convert", "-p"]);
    match &names {
        Some((raw_s, _, _)) => {
            convert.args(["-O", "qcow2", "-c", "-o", QCOW2_OPTIONS]);
            for node in first_pass_sources(raw_s, &zeroed, total) {
                convert.arg(format!("json:{node}"));
            }
        }
        None => {
            convert.args(["-f", "raw", "-O", "qcow2", "-c", "-o", QCOW2_OPTIONS]);
            convert.arg(raw);
        }
    }
    convert.arg(out);
    crate::host::runner::run_with_progress("qcow2", convert, &format!("qcow2 {name}"), total)?;
    if let Some((_, out_s, files)) = &names {
        // The stored files (GBs of models) go into the qcow2 around the
        // page cache (`-t none`: O_DIRECT), where its file system allows:
        // the build hashes the qcow2 once and never reads it otherwise.
        let direct = crate::host::direct::supported(out);
        for (at, file, len) in files {
            if *len == 0 {
                continue;
            }
            let mut write = crate::host::runner::command("qemu-img");
            // The target's range reads zeros (first pass): nothing to clear.
            write.args(["convert", "-p", "-n", "--target-is-zero"]);
            if direct {
                write.args(["-t", "none"]);
            }
            write.arg(format!(
                "json:{}",
                serde_json::json!({"driver": "raw", "file": file_node(file)})
            ));
            write.arg(format!(
                "json:{}",
                slice(
                    serde_json::json!({"driver": "qcow2", "file": file_node(out_s)}),
                    *at,
                    *len
                )
            ));
            crate::host::runner::run_with_progress(
                "qcow2: stored file",
                write,
                &format!("qcow2 {name}: models, stored"),
                *len,
            )?;
        }
    }
    let sh = crate::host::runner::shell()?;
    crate::host::runner::run(
        "qcow2: check",
        xshell::cmd!(sh, "qemu-img check -q -f qcow2 {out}"),
    )?;
    // What cairn writes passes the check its readers make (verify, site
    // apply, run): a qemu-img that added a backing or data file would be
    // caught here, at build time, not by a user.
    crate::host::qcow2::check_file(out).map_err(|e| anyhow::anyhow!("qcow2: {e}"))?;
    Ok(())
}

/// The ranges sorted, empty ones dropped, touching ones merged; an error
/// for one past the end or two that overlap.
fn stored_ranges(ranges: &[(u64, u64)], total: u64) -> Result<Vec<(u64, u64)>> {
    let mut sorted: Vec<(u64, u64)> = ranges.iter().copied().filter(|r| r.1 > 0).collect();
    sorted.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (at, len) in sorted {
        let end = at
            .checked_add(len)
            .filter(|e| *e <= total)
            .with_context(|| {
                format!("qcow2: stored range {at}+{len} is past the disk's end ({total} bytes)")
            })?;
        match out.last_mut() {
            Some(last) if last.0 + last.1 > at => {
                bail!("qcow2: stored ranges overlap at byte {at}")
            }
            Some(last) if last.0 + last.1 == at => last.1 = end - last.0,
            _ => out.push((at, len)),
        }
    }
    Ok(out)
}

fn file_node(path: &str) -> serde_json::Value {
    serde_json::json!({"driver": "file", "filename": path})
}

/// `len` bytes of `file` from `at`, as a block node of their own.
fn slice(file: serde_json::Value, at: u64, len: u64) -> serde_json::Value {
    serde_json::json!({"driver": "raw", "offset": at, "size": len, "file": file})
}

/// The first pass's sources, concatenated by qemu-img: the raw disk's
/// other ranges as they are, zeros of the same length for each stored one.
fn first_pass_sources(raw: &str, stored: &[(u64, u64)], total: u64) -> Vec<serde_json::Value> {
    let mut nodes = Vec::new();
    let mut at = 0;
    for &(start, len) in stored {
        if start > at {
            nodes.push(slice(file_node(raw), at, start - at));
        }
        nodes.push(serde_json::json!({"driver": "null-co", "size": len, "read-zeroes": true}));
        at = start + len;
    }
    if at < total {
        nodes.push(slice(file_node(raw), at, total - at));
    }
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn qcow2_is_compressed_equal_and_reproducible() {
        testkit::tool("qemu-img", "qemu-utils");
        let d = tempfile::tempdir().unwrap();
        let raw = d.path().join("disk.raw");
        {
            // 64 MiB sparse with a few written regions.
            let mut f = std::fs::File::create(&raw).unwrap();
            f.set_len(64 << 20).unwrap();
            for (at, byte) in [(0u64, 0x55u8), (5 << 20, 0xAA), ((64 << 20) - 4096, 0x11)] {
                f.seek(SeekFrom::Start(at)).unwrap();
                let block: Vec<u8> = (0..4096u32).map(|i| byte ^ (i % 251) as u8).collect();
                f.write_all(&block).unwrap();
            }
        }
        let a = d.path().join("a.qcow2");
        let b = d.path().join("b.qcow2");
        write_qcow2(&raw, &a, &[]).unwrap_or_else(|e| panic!("{e:#}"));
        std::thread::sleep(std::time::Duration::from_millis(1100));
        write_qcow2(&raw, &b, &[]).unwrap_or_else(|e| panic!("{e:#}"));
        let (ab, bb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert!(ab == bb, "two conversions differ");
        assert_eq!(&ab[..4], b"QFI\xfb");
        // zstd clusters: the compression-type feature bit and type 1.
        assert_eq!(ab[79] & 8, 8, "no compression-type feature bit");
        assert_eq!(ab[104], 1, "compression type is not zstd");
        assert!(
            ab.len() < 2 << 20,
            "not sparse/compressed: {} bytes",
            ab.len()
        );
        assert_same_content(&raw, &a);
        // Overwrites an existing output.
        write_qcow2(&raw, &a, &[]).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), bb);
        assert!(write_qcow2(&d.path().join("missing.raw"), &a, &[]).is_err());
    }

    fn assert_same_content(raw: &Path, img: &Path) {
        let mut cmp = crate::host::runner::command("qemu-img");
        cmp.args(["compare", "-q", "-f", "raw", "-F", "qcow2"])
            .arg(raw)
            .arg(img);
        if let Err(e) = crate::host::runner::output("qcow2 test: compare", cmp) {
            panic!("qcow2 content differs from the raw: {e:#}");
        }
    }

    /// The clusters of `img` in `[at, at + len)` as `qemu-img map` reports
    /// them: (data, compressed) of each extent that overlaps.
    fn map(img: &Path, at: u64, len: u64) -> Vec<(bool, bool)> {
        let mut cmd = crate::host::runner::command("qemu-img");
        cmd.args(["map", "--output=json", "-f", "qcow2"]).arg(img);
        let out = crate::host::runner::output("qcow2 test: map", cmd).unwrap();
        let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        v.iter()
            .filter(|e| {
                let (s, l) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
                s < at + len && s + l > at
            })
            .map(|e| {
                (
                    e["data"].as_bool().unwrap(),
                    e["compressed"].as_bool().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn stored_files_are_written_uncompressed_and_equal() {
        testkit::tool("qemu-img", "qemu-utils");
        let d = tempfile::tempdir().unwrap();
        let raw = d.path().join("disk, with a comma.raw");
        // Compressible bytes: at 1 MiB of the disk (compressed), and in a
        // 4 MiB model file (stored) with a hole inside, which goes at
        // 8 MiB. The disk's copy of the model is written only after the
        // qcow2 is made: the qcow2 takes it from the file.
        let text: Vec<u8> = b"weights ".iter().copied().cycle().take(1 << 20).collect();
        let model = d.path().join("model.squashfs");
        {
            let mut f = std::fs::File::create(&raw).unwrap();
            f.set_len(32 << 20).unwrap();
            f.seek(SeekFrom::Start(1 << 20)).unwrap();
            f.write_all(&text).unwrap();
            let mut m = std::fs::File::create(&model).unwrap();
            m.write_all(&text).unwrap();
            m.seek(SeekFrom::Start(3 << 20)).unwrap();
            m.write_all(&text).unwrap();
        }
        let stored = [(8u64 << 20, model.as_path())];
        let a = d.path().join("a.qcow2");
        let b = d.path().join("b.qcow2");
        write_qcow2(&raw, &a, &stored).unwrap_or_else(|e| panic!("{e:#}"));
        write_qcow2(&raw, &b, &stored).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "two conversions differ"
        );
        {
            let mut f = crate::host::direct::Writer::open(&raw).unwrap();
            crate::media::disk::copy_into(&mut f, 8 << 20, &model).unwrap();
        }
        assert_same_content(&raw, &a);
        let inside = map(&a, 8 << 20, 4 << 20);
        assert!(
            inside.iter().any(|e| e.0) && inside.iter().all(|e| !e.1),
            "stored range: {inside:?}"
        );
        assert!(map(&a, 1 << 20, 1 << 20).iter().all(|e| e.0 && e.1));
        // Control: without the file, the same bytes are compressed.
        write_qcow2(&raw, &b, &[]).unwrap();
        let control = map(&b, 8 << 20, 4 << 20);
        assert!(
            control.iter().any(|e| e.0) && control.iter().filter(|e| e.0).all(|e| e.1),
            "control: {control:?}"
        );
        // Bad places are refused before the output is touched.
        let (one, two) = (d.path().join("one"), d.path().join("two"));
        std::fs::write(&one, vec![1u8; 1 << 20]).unwrap();
        std::fs::write(&two, vec![2u8; 2 << 20]).unwrap();
        for bad in [
            vec![(30u64 << 20, model.as_path())],
            vec![(1u64 << 20, two.as_path()), (2 << 20, one.as_path())],
            vec![(u64::MAX - 1, one.as_path())],
        ] {
            let e = write_qcow2(&raw, &a, &bad).unwrap_err().to_string();
            assert!(e.contains("qcow2: stored range"), "{e}");
            assert!(a.exists(), "the previous output was removed");
        }
        let missing = d.path().join("missing");
        let e = write_qcow2(&raw, &a, &[(0, missing.as_path())]).unwrap_err();
        assert!(format!("{e:#}").contains("qcow2: stat"), "{e:#}");
        assert!(a.exists());
    }

    #[test]
    fn stored_ranges_merge_and_sources_cover_the_disk() {
        assert_eq!(
            stored_ranges(&[(10, 5), (0, 0), (2, 3), (5, 5)], 20).unwrap(),
            vec![(2, 13)]
        );
        let nodes = first_pass_sources("/d.raw", &[(2, 3), (10, 5)], 20);
        let sizes: Vec<(String, u64)> = nodes
            .iter()
            .map(|n| {
                (
                    n["driver"].as_str().unwrap().to_string(),
                    n["size"].as_u64().unwrap(),
                )
            })
            .collect();
        let want: Vec<(String, u64)> = [
            ("raw", 2),
            ("null-co", 3),
            ("raw", 5),
            ("null-co", 5),
            ("raw", 5),
        ]
        .iter()
        .map(|(d, s)| (d.to_string(), *s))
        .collect();
        assert_eq!(sizes, want);
        assert_eq!(nodes[2]["offset"], 5);
        assert_eq!(nodes[2]["file"]["filename"], "/d.raw");
    }
}
