//! VHD (fixed), as Hyper-V and Azure take a disk: the raw disk's bytes
//! followed by a 512-byte footer. Written by `qemu-img convert -O vpc -o
//! subformat=fixed,force_size=on` from the finished raw disk (the size kept
//! exactly, not rounded to a CHS geometry). qemu-img stamps the footer
//! with its clock and a random UUID; both are then set from the epoch and
//! the image's name, and the checksum recomputed, so the file is
//! reproducible. [`parse_footer`] is strict: `cairn verify` refuses any
//! footer but a fixed disk's of exactly the data before it.

use std::os::unix::fs::FileExt as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::host::digest::Sha256;

/// The footer's length, at the end of the file.
pub const FOOTER: u64 = 512;
/// VHD time stamps count from 2000-01-01 00:00:00 UTC.
const VHD_EPOCH: u64 = 946_684_800;

/// What a checked footer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    /// The disk's size: the bytes before the footer.
    pub size: u64,
}

/// The footer's checksum: the ones' complement of the sum of its bytes,
/// the checksum field (64..68) counted as zero.
fn checksum(b: &[u8]) -> u32 {
    let sum = b
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .fold(0u32, |s, (_, &x)| s.wrapping_add(u32::from(x)));
    !sum
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

/// Checks the last 512 bytes of a file of `file_len` bytes as a fixed
/// disk's footer: the cookie, features, version, no dynamic header, disk
/// type fixed, both sizes equal to the data before it, the checksum, and
/// nothing in the saved-state flag or the reserved bytes.
pub fn parse_footer(b: &[u8], file_len: u64) -> Result<Footer, String> {
    if b.len() as u64 != FOOTER {
        return Err(format!("footer is {} bytes, not {FOOTER}", b.len()));
    }
    let size = file_len
        .checked_sub(FOOTER)
        .filter(|s| *s > 0 && s % 512 == 0)
        .ok_or_else(|| format!("{file_len} bytes is no whole disk and footer"))?;
    let want = |what: &str, ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(format!("footer: unexpected {what}"))
        }
    };
    want("cookie (not conectix)", &b[0..8] == b"conectix")?;
    want("features", be32(b, 8) == 2)?;
    want("format version", be32(b, 12) == 0x0001_0000)?;
    want("data offset (not a fixed disk)", be64(b, 16) == u64::MAX)?;
    want("disk type (not fixed)", be32(b, 60) == 2)?;
    want(
        "disk size (not the data before the footer)",
        be64(b, 40) == size && be64(b, 48) == size,
    )?;
    want("checksum", be32(b, 64) == checksum(b))?;
    want(
        "saved state or reserved bytes",
        b[84..].iter().all(|&x| x == 0),
    )?;
    Ok(Footer { size })
}

/// Writes the VHD of the finished raw disk `raw` to `out`; its footer's
/// time is `epoch`, its UUID made from `seed` (the image's name).
pub fn write_vhd(raw: &Path, out: &Path, seed: &str, epoch: u64) -> Result<()> {
    let sh = crate::host::runner::shell()?;
    crate::host::runner::run(
        "vhd",
        xshell::cmd!(
            sh,
            "qemu-img convert -q -f raw -O vpc -o subformat=fixed,force_size=on {raw} {out}"
        ),
    )?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(out)
        .with_context(|| format!("vhd: open {}", out.display()))?;
    let len = f.metadata()?.len();
    let at = len
        .checked_sub(FOOTER)
        .context("vhd: qemu-img wrote no footer")?;
    let mut b = vec![0u8; FOOTER as usize];
    f.read_exact_at(&mut b, at)
        .with_context(|| format!("vhd: read the footer of {}", out.display()))?;
    // What qemu-img wrote is checked as verify checks it.
    parse_footer(&b, len).map_err(|e| anyhow::anyhow!("vhd: qemu-img's {e}"))?;
    let stamp = u32::try_from(epoch.saturating_sub(VHD_EPOCH)).unwrap_or(u32::MAX);
    b[24..28].copy_from_slice(&stamp.to_be_bytes());
    let uuid = Sha256::of_bytes(format!("cairn vhd uuid {seed} {epoch}").as_bytes());
    b[68..84].copy_from_slice(&uuid.0[..16]);
    let sum = checksum(&b);
    b[64..68].copy_from_slice(&sum.to_be_bytes());
    f.write_all_at(&b, at)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("vhd: write the footer of {}", out.display()))?;
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

    /// The VHD is the raw disk's bytes and a checked footer, the same
    /// bytes every time (qemu-img's time and UUID replaced).
    #[test]
    fn a_vhd_is_the_raw_disk_and_a_fixed_footer_and_reproducible() {
        testkit::tool("qemu-img", "qemu-utils");
        let d = tempfile::tempdir().unwrap();
        let raw = disk(d.path());
        let (a, b) = (d.path().join("a.vhd"), d.path().join("b.vhd"));
        write_vhd(&raw, &a, "x-1", 1_700_000_000).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        write_vhd(&raw, &b, "x-1", 1_700_000_000).unwrap();
        let (va, vb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert!(va == vb, "two writes differ");
        let data = std::fs::read(&raw).unwrap();
        assert_eq!(va.len(), data.len() + FOOTER as usize);
        assert!(va[..data.len()] == data[..], "the data is not the raw disk");
        let f = parse_footer(&va[data.len()..], va.len() as u64).unwrap();
        assert_eq!(f.size, data.len() as u64);
        // Another epoch: another footer, the same data.
        write_vhd(&raw, &b, "x-1", 1_700_000_001).unwrap();
        assert_ne!(std::fs::read(&b).unwrap(), va);
    }

    /// Every field the parser checks is refused when changed (the
    /// checksum recomputed, so the field itself is what is caught), and a
    /// bad checksum alone too. Control: the untouched footer passes.
    #[test]
    fn unexpected_footers_are_refused() {
        testkit::tool("qemu-img", "qemu-utils");
        let d = tempfile::tempdir().unwrap();
        let raw = disk(d.path());
        let v = d.path().join("a.vhd");
        write_vhd(&raw, &v, "x-1", 7).unwrap();
        let all = std::fs::read(&v).unwrap();
        let len = all.len() as u64;
        let good = all[all.len() - 512..].to_vec();
        assert!(parse_footer(&good, len).is_ok());
        let resum = |mut b: Vec<u8>| {
            let s = checksum(&b);
            b[64..68].copy_from_slice(&s.to_be_bytes());
            b
        };
        for (at, what) in [
            (0, "cookie"),
            (11, "features"),
            (13, "format version"),
            (16, "data offset"),
            (63, "disk type"),
            (47, "disk size"),
            (55, "disk size"),
            (84, "saved state"),
            (300, "reserved"),
        ] {
            let mut b = good.clone();
            b[at] ^= 0x10;
            let e = parse_footer(&resum(b), len).unwrap_err();
            assert!(e.contains(what), "byte {at}: {e}");
        }
        let mut b = good.clone();
        b[70] ^= 1; // the UUID, covered by the checksum only
        assert!(parse_footer(&b, len).unwrap_err().contains("checksum"));
        // A footer claiming another length than the file's.
        assert!(parse_footer(&good, len + 512).is_err());
        assert!(parse_footer(&good, 512).is_err());
        assert!(parse_footer(&good[1..], len).is_err());
    }
}
