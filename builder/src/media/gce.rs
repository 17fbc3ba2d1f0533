//! The GCE-style tarball, as Google Compute Engine imports a disk
//! (`gcloud compute images create --source-uri`): a gzip'd tar holding one
//! member, `disk.raw`, the raw disk. Written with cairn's tar writer (GNU
//! headers, the oldgnu layout GCE documents; sizes past 8 GiB in GNU's
//! base-256 form), mode 0644, owner 0:0, mtime the epoch, and gzip with
//! no name and no time stamp (`gzip -n`), so the file is reproducible. The
//! member is not a GNU sparse entry: GCE does not need one, the state
//! partition's zeros cost little once gzip'd, and cairn's one tar reader
//! refuses sparse entries (one parser fewer for untrusted input).
//!
//! [`read_disk`] is what `cairn verify` reads it with: cairn's tar reader,
//! exactly one member, named `disk.raw`, a regular file; anything else is
//! refused.

use std::io::{self, Read, Write};
use std::path::Path;

use anyhow::{Context, Result};

use crate::host::tar::{Kind, TarReader, TarWriter};

/// The one member's name, which GCE requires.
pub const MEMBER: &str = "disk.raw";

/// Writes the tarball of the finished raw disk `raw` to `out`.
pub fn write_gce(raw: &Path, out: &Path, epoch: u64) -> Result<()> {
    let src = std::fs::File::open(raw).with_context(|| format!("gce: open {}", raw.display()))?;
    let size = src.metadata()?.len();
    let dst =
        std::fs::File::create(out).with_context(|| format!("gce: create {}", out.display()))?;
    // No name, mtime 0: as `gzip -n`. Level 1: the disk holds squashfs
    // (compressed already) and zeros, where higher levels cost time and
    // save little.
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(io::BufWriter::new(dst), flate2::Compression::fast());
    let mut t = TarWriter::new(gz, epoch);
    t.file(
        MEMBER.as_bytes(),
        0o644,
        (0, 0),
        size,
        io::BufReader::with_capacity(4 << 20, src),
    )
    .with_context(|| format!("gce: archive {}", raw.display()))?;
    let w = t
        .finish()?
        .finish()
        .with_context(|| format!("gce: write {}", out.display()))?;
    w.into_inner()
        .map_err(|e| anyhow::anyhow!("gce: write {}: {}", out.display(), e.error()))?
        .sync_all()?;
    Ok(())
}

/// Reads the tarball `r` (gzip'd) and hands `disk.raw`'s bytes, which
/// must be `size` bytes when given, to `take`; refuses any other member,
/// a second member, a non-regular file or another size. Returns its size.
pub fn read_disk(
    r: impl Read,
    size: Option<u64>,
    take: impl FnOnce(&mut dyn Read, u64) -> Result<(), String>,
) -> Result<u64, String> {
    let mut t = TarReader::new(flate2::read::GzDecoder::new(r));
    let e = t
        .next_entry()
        .map_err(|e| format!("tar: {e}"))?
        .ok_or("tar: no member (expected disk.raw)")?;
    if e.name != MEMBER.as_bytes() {
        return Err(format!(
            "tar: its member is {:?}, not {MEMBER}",
            crate::host::shown::Shown(&String::from_utf8_lossy(&e.name)).to_string()
        ));
    }
    if e.kind != Kind::File {
        return Err(format!(
            "tar: {MEMBER} is not a regular file ({:?})",
            e.kind
        ));
    }
    if let Some(want) = size.filter(|w| *w != e.size) {
        return Err(format!(
            "tar: {MEMBER} is {} bytes, the raw disk {want}",
            e.size
        ));
    }
    let mut data = t.data();
    take(&mut data, e.size)?;
    // Whatever `take` left unread is read here: the member must be whole.
    io::copy(&mut data, &mut io::sink()).map_err(|e| format!("tar: {MEMBER}: {e}"))?;
    if let Some(other) = t.next_entry().map_err(|e| format!("tar: {e}"))? {
        return Err(format!(
            "tar: a second member {:?} (expected {MEMBER} only)",
            crate::host::shown::Shown(&String::from_utf8_lossy(&other.name)).to_string()
        ));
    }
    Ok(e.size)
}

/// Unpacks `disk.raw` of the tarball at `tar` to `out` (through
/// [`read_disk`]'s checks).
pub fn unpack(tar: &Path, out: &Path) -> Result<u64> {
    let f = std::fs::File::open(tar).with_context(|| format!("gce: open {}", tar.display()))?;
    let mut w = std::fs::File::create(out).with_context(|| format!("gce: {}", out.display()))?;
    read_disk(io::BufReader::new(f), None, |r, _| {
        io::copy(r, &mut w).map(|_| ()).map_err(|e| e.to_string())
    })
    .map_err(|e| anyhow::anyhow!("gce: {}: {e}", tar.display()))?;
    w.flush()?;
    Ok(std::fs::metadata(out)?.len())
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

    fn gz_tar(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&b.into_inner().unwrap()).unwrap();
        gz.finish().unwrap()
    }

    /// The tarball is reproducible, GNU tar and gzip read it (GCE's
    /// layout: one member disk.raw, oldgnu headers, no gzip name), and
    /// cairn's reader gives back the raw disk.
    #[test]
    fn a_gce_tarball_is_one_disk_raw_and_reproducible() {
        let d = tempfile::tempdir().unwrap();
        let raw = disk(d.path());
        let (a, b) = (d.path().join("a.tar.gz"), d.path().join("b.tar.gz"));
        write_gce(&raw, &a, 1_700_000_000).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        write_gce(&raw, &b, 1_700_000_000).unwrap();
        let va = std::fs::read(&a).unwrap();
        assert!(va == std::fs::read(&b).unwrap(), "two writes differ");
        // gzip header: no FNAME flag, mtime 0.
        assert_eq!(&va[..2], b"\x1f\x8b");
        assert_eq!(va[3] & 0x08, 0, "a name in the gzip header");
        assert_eq!(&va[4..8], &[0, 0, 0, 0]);
        let out = d.path().join("disk.raw");
        assert_eq!(unpack(&a, &out).unwrap(), 3 << 20);
        assert!(std::fs::read(&out).unwrap() == std::fs::read(&raw).unwrap());
        let mut tar = crate::host::runner::command("tar");
        tar.args(["-tvzf"]).arg(&a);
        let listed = crate::host::runner::output("gce test: tar", tar).unwrap();
        let listed = String::from_utf8_lossy(&listed.stdout).to_string();
        assert!(
            listed.trim_end().ends_with(" disk.raw") && listed.lines().count() == 1,
            "{listed}"
        );
        assert!(listed.contains("-rw-r--r-- 0/0"), "{listed}");
    }

    /// Another name, a second member, a folder, a link: refused. Control:
    /// one regular disk.raw passes.
    #[test]
    fn other_members_are_refused() {
        let read = |v: Vec<u8>| read_disk(&v[..], None, |_, _| Ok(()));
        use tar::EntryType as T;
        assert_eq!(read(gz_tar(&[("disk.raw", T::Regular, b"abc")])), Ok(3));
        for (entries, why) in [
            (vec![("disk.img", T::Regular, &b"abc"[..])], "not disk.raw"),
            (
                vec![
                    ("disk.raw", T::Regular, &b"abc"[..]),
                    ("x", T::Regular, b""),
                ],
                "a second member",
            ),
            (
                vec![
                    ("disk.raw", T::Regular, &b"abc"[..]),
                    ("disk.raw", T::Regular, b"d"),
                ],
                "a second member",
            ),
            (
                vec![("disk.raw", T::Directory, &b""[..])],
                "not a regular file",
            ),
            (vec![("disk.raw", T::Fifo, &b""[..])], "not a regular file"),
            (vec![], "no member"),
        ] {
            let e = read(gz_tar(&entries)).unwrap_err();
            assert!(e.contains(why), "{why}: {e}");
        }
        let good = gz_tar(&[("disk.raw", T::Regular, b"abc")]);
        assert!(read_disk(&good[..], Some(4), |_, _| Ok(()))
            .unwrap_err()
            .contains("is 3 bytes"));
        assert!(read(good[..good.len() / 2].to_vec()).is_err());
        assert!(read(b"not gzip".to_vec()).is_err());
    }
}
