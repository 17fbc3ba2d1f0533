//! VMDK (stream-optimised), as VMware (ESXi, Workstation, OVA) imports a
//! disk: a sparse extent with deflate-compressed grains and its descriptor
//! embedded. Written by `qemu-img convert -O vmdk -o
//! subformat=streamOptimized` from the finished raw disk. qemu-img's only
//! varying byte is the descriptor's random content ID (`CID`); it is set
//! from the image's name and epoch so the file is reproducible (the extent
//! line names the output's own file name, fixed by the build).
//! `cairn verify` checks it as an untrusted file (`host::vmdk`).

use std::os::unix::fs::FileExt as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::host::digest::Sha256;

pub use crate::host::vmdk::{check_descriptor, check_header, qemu_img_source, Header};

/// Writes the stream-optimised VMDK of the finished raw disk `raw` to
/// `out`; its content ID is made from `seed` (the image's name) and
/// `epoch`.
pub fn write_vmdk(raw: &Path, out: &Path, seed: &str, epoch: u64) -> Result<()> {
    if out.exists() {
        std::fs::remove_file(out).with_context(|| format!("vmdk: remove {}", out.display()))?;
    }
    let sh = crate::host::runner::shell()?;
    crate::host::runner::run(
        "vmdk",
        xshell::cmd!(
            sh,
            "qemu-img convert -q -f raw -O vmdk -o subformat=streamOptimized {raw} {out}"
        ),
    )?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(out)
        .with_context(|| format!("vmdk: open {}", out.display()))?;
    let len = f.metadata()?.len();
    let mut head = vec![0u8; 512];
    f.read_exact_at(&mut head, 0)
        .with_context(|| format!("vmdk: read the header of {}", out.display()))?;
    // What qemu-img wrote is checked as verify checks it.
    let h = check_header(&head, len).map_err(|e| anyhow::anyhow!("vmdk: qemu-img's {e}"))?;
    let mut d = vec![0u8; h.descriptor.1 as usize];
    f.read_exact_at(&mut d, h.descriptor.0)
        .with_context(|| format!("vmdk: read the descriptor of {}", out.display()))?;
    // qemu-img prints the CID without leading zeros (1 to 8 digits): the
    // line is rewritten with 8, the descriptor's zero padding taking up
    // the difference.
    let end = d.iter().position(|&c| c == 0).unwrap_or(d.len());
    let text = std::str::from_utf8(&d[..end]).context("vmdk: qemu-img's descriptor is not text")?;
    let digest = Sha256::of_bytes(format!("cairn vmdk cid {seed} {epoch}").as_bytes());
    let cid = u32::from_be_bytes([digest.0[0], digest.0[1], digest.0[2], digest.0[3]]);
    let mut found = false;
    let mut fixed = String::with_capacity(text.len() + 8);
    for line in text.split_inclusive('\n') {
        if line.starts_with("CID=") {
            fixed.push_str(&format!("CID={cid:08x}\n"));
            found = true;
        } else {
            fixed.push_str(line);
        }
    }
    anyhow::ensure!(found, "vmdk: qemu-img's descriptor has no CID line");
    anyhow::ensure!(
        fixed.len() < d.len(),
        "vmdk: qemu-img's descriptor leaves no room for the CID"
    );
    d.fill(0);
    d[..fixed.len()].copy_from_slice(fixed.as_bytes());
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .context("vmdk: the output's name is not UTF-8")?;
    check_descriptor(&d, h.size, name).map_err(|e| anyhow::anyhow!("vmdk: qemu-img's {e}"))?;
    f.write_all_at(&d, h.descriptor.0)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("vmdk: write the descriptor of {}", out.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(dir: &Path) -> std::path::PathBuf {
        let raw = dir.join("d.img");
        let mut data = vec![0u8; 3 << 20];
        for (i, b) in data.iter_mut().enumerate().skip(4096).take(70_000) {
            *b = (i % 251) as u8;
        }
        std::fs::write(&raw, &data).unwrap();
        raw
    }

    fn head_and_descriptor(v: &[u8]) -> (Header, Vec<u8>) {
        let h = check_header(&v[..512], v.len() as u64).unwrap();
        let (at, len) = (h.descriptor.0 as usize, h.descriptor.1 as usize);
        (h, v[at..at + len].to_vec())
    }

    /// Two writes give the same bytes (qemu-img's random CID replaced),
    /// the header and descriptor pass the checks verify makes, and the
    /// content is the raw disk's.
    #[test]
    fn a_vmdk_is_stream_optimised_reproducible_and_the_raw_disk() {
        testkit::tool("qemu-img", "qemu-utils");
        let d = tempfile::tempdir().unwrap();
        let raw = disk(d.path());
        let (a, b) = (d.path().join("x.vmdk"), d.path().join("y").join("x.vmdk"));
        std::fs::create_dir(d.path().join("y")).unwrap();
        write_vmdk(&raw, &a, "x-1", 1_700_000_000).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        write_vmdk(&raw, &b, "x-1", 1_700_000_000).unwrap();
        let va = std::fs::read(&a).unwrap();
        assert!(va == std::fs::read(&b).unwrap(), "two writes differ");
        let (h, desc) = head_and_descriptor(&va);
        assert_eq!(h.size, 3 << 20);
        check_descriptor(&desc, h.size, "x.vmdk").unwrap();
        let mut cmp = crate::host::runner::command("qemu-img");
        cmp.args(["compare", "-q", "-f", "raw"])
            .arg(&raw)
            .arg(qemu_img_source(&a).unwrap());
        crate::host::runner::output("vmdk test: compare", cmp).unwrap();
        // Another epoch: another CID.
        write_vmdk(&raw, &b, "x-1", 1_700_000_001).unwrap();
        assert_ne!(std::fs::read(&b).unwrap(), va);
    }

    /// Each header field checked is refused when changed; control: the
    /// untouched header passes.
    #[test]
    fn unexpected_headers_are_refused() {
        testkit::tool("qemu-img", "qemu-utils");
        let d = tempfile::tempdir().unwrap();
        let raw = disk(d.path());
        let v = d.path().join("x.vmdk");
        write_vmdk(&raw, &v, "x-1", 7).unwrap();
        let all = std::fs::read(&v).unwrap();
        let len = all.len() as u64;
        assert!(check_header(&all[..512], len).is_ok());
        for (at, value, what) in [
            (0usize, 0u8, "magic"),
            (4, 1, "version"),
            (10, 0, "flags"),
            (12, 0, "capacity"),
            (20, 64, "grain size"),
            (36, 0, "descriptor place"),
            (35, 1, "descriptor place"),
            (72, 1, "unclean-shutdown"),
            (75, b'x', "new-line"),
            (77, 0, "compression"),
        ] {
            let mut b = all[..512].to_vec();
            if at == 12 {
                b[12..20].copy_from_slice(&[0; 8]);
            } else {
                b[at] = value;
            }
            let e = check_header(&b, len).unwrap_err();
            assert!(e.contains(what), "byte {at}: {e}");
        }
        assert!(check_header(&all[..100], len).is_err());
    }

    /// Every seed's CID is written as 8 digits, whatever qemu-img chose
    /// (it drops leading zeros): many seeds, each descriptor checked.
    #[test]
    fn the_cid_is_always_eight_digits() {
        testkit::tool("qemu-img", "qemu-utils");
        let d = tempfile::tempdir().unwrap();
        let raw = disk(d.path());
        let v = d.path().join("x.vmdk");
        for epoch in 0..48 {
            write_vmdk(&raw, &v, "x-1", epoch).unwrap_or_else(|e| panic!("{epoch}: {e:#}"));
            let all = std::fs::read(&v).unwrap();
            let (h, desc) = head_and_descriptor(&all);
            check_descriptor(&desc, h.size, "x.vmdk").unwrap();
        }
    }
}
