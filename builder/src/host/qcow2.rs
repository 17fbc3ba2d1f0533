//! The one check every reader of a user's qcow2 makes before QEMU or
//! qemu-img opens it: the file must stand alone. A qcow2 can name a backing
//! file (a host path, or a `json:` block spec) or an external data file,
//! and QEMU would read that file as the disk: a host file in the output
//! image or in the guest. Refused here: a backing file, the "external data
//! file" feature bit, the data-file-name and backing-format header
//! extensions, and incompatible features this parser does not know.
//! Invariant: the parser reads only the bytes it is given and never panics.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::host::shown::Shown;

/// The header fields cairn's readers look at (QEMU's
/// docs/interop/qcow2.txt; big-endian).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Header {
    pub version: u32,
    pub backing_file_offset: u64,
    pub cluster_bits: u32,
    pub virtual_size: u64,
    pub crypt_method: u32,
    pub incompatible_features: u64,
    /// 0 zlib, 1 zstd (the compression type field, version 3 with the
    /// compression-type feature bit; zlib otherwise).
    pub compression_type: u8,
    /// The header extensions' types, in file order.
    pub extensions: Vec<u32>,
}

/// Incompatible feature bits (qcow2.txt): dirty, corrupt, external data
/// file, compression type, extended L2 entries.
pub const DIRTY_BIT: u64 = 1 << 0;
pub const CORRUPT_BIT: u64 = 1 << 1;
pub const EXTERNAL_DATA_FILE_BIT: u64 = 1 << 2;
pub const COMPRESSION_TYPE_BIT: u64 = 1 << 3;
pub const EXTENDED_L2_BIT: u64 = 1 << 4;
const KNOWN_BITS: u64 =
    DIRTY_BIT | CORRUPT_BIT | EXTERNAL_DATA_FILE_BIT | COMPRESSION_TYPE_BIT | EXTENDED_L2_BIT;

/// Header extension types that point outside the file.
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
pub const EXT_DATA_FILE: u32 = 0x4441_5441;

/// Extensions live in the first cluster, and a cluster is at most 2 MiB:
/// the most a reader needs to read.
pub const HEAD_MAX: u64 = 2 << 20;

/// How a qcow2 is refused: one line naming the rule, and the fix.
fn rule(what: String) -> String {
    format!("{what}; cairn reads only a qcow2 that stands alone (no backing or data file): make one with `qemu-img convert -O qcow2 IN OUT`")
}

/// Parses the head of a qcow2 (its first cluster, or the whole file if
/// shorter) and refuses any reference to another file.
pub fn check_standalone(head: &[u8]) -> Result<Qcow2Header, String> {
    let be32 = |at: usize| {
        head.get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let be64 = |at: usize| {
        head.get(at..at + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_be_bytes(a)
        })
    };
    if head.get(..4) != Some(&b"QFI\xfb"[..]) {
        return Err("not a qcow2 file (no QFI\\xfb magic)".into());
    }
    let short = || "truncated qcow2 header".to_string();
    let version = be32(4).ok_or_else(short)?;
    if version != 2 && version != 3 {
        return Err(format!("qcow2 version {version} is not 2 or 3"));
    }
    let mut h = Qcow2Header {
        version,
        backing_file_offset: be64(8).ok_or_else(short)?,
        cluster_bits: be32(20).ok_or_else(short)?,
        virtual_size: be64(24).ok_or_else(short)?,
        crypt_method: be32(32).ok_or_else(short)?,
        incompatible_features: if version == 3 {
            be64(72).ok_or_else(short)?
        } else {
            0
        },
        compression_type: 0,
        extensions: Vec::new(),
    };
    if h.backing_file_offset != 0 {
        // The name, when it is in the bytes read, says what it would read.
        let size = be32(16).unwrap_or(0) as usize;
        let name = usize::try_from(h.backing_file_offset)
            .ok()
            .and_then(|at| head.get(at..at.checked_add(size.min(1023))?))
            .map(|b| format!(" \"{}\"", Shown(&String::from_utf8_lossy(b))))
            .unwrap_or_default();
        return Err(rule(format!(
            "names a backing file{name} (offset {}), which QEMU would read as the disk",
            h.backing_file_offset
        )));
    }
    if h.incompatible_features & EXTERNAL_DATA_FILE_BIT != 0 {
        return Err(rule(
            "has the incompatible feature bit \"external data file\" (bit 2): its data is in another file".into(),
        ));
    }
    let unknown = h.incompatible_features & !KNOWN_BITS;
    if unknown != 0 {
        return Err(format!(
            "uses incompatible qcow2 features {unknown:#x} that this cairn does not know"
        ));
    }
    let header_length = if version == 3 {
        be32(100).ok_or_else(short)?
    } else {
        72
    };
    if header_length < 72 || (version == 3 && header_length < 104) {
        return Err(format!("qcow2 header length {header_length} is too short"));
    }
    if h.incompatible_features & COMPRESSION_TYPE_BIT != 0 {
        if header_length < 105 {
            return Err(format!(
                "says it has a compression type, but its header is {header_length} bytes (needs 105)"
            ));
        }
        h.compression_type = *head.get(104).ok_or_else(short)?;
    }
    // Header extensions: type, length, data padded to 8 bytes; type 0 ends.
    let mut at = header_length as usize;
    loop {
        let kind = be32(at).ok_or_else(|| "truncated qcow2 header extensions".to_string())?;
        if kind == 0 {
            break;
        }
        let len = be32(at + 4).ok_or_else(|| "truncated qcow2 header extensions".to_string())?;
        match kind {
            EXT_DATA_FILE => {
                let name = head
                    .get(at + 8..(at + 8).saturating_add(len.min(1023) as usize))
                    .map(|b| format!(" \"{}\"", Shown(&String::from_utf8_lossy(b))))
                    .unwrap_or_default();
                return Err(rule(format!(
                    "has a header extension naming an external data file{name}"
                )));
            }
            EXT_BACKING_FORMAT => {
                return Err(rule(
                    "has a backing-format header extension (a backing file's format)".into(),
                ))
            }
            _ => h.extensions.push(kind),
        }
        let padded = (len as usize).div_ceil(8) * 8;
        at = at
            .checked_add(8 + padded)
            .filter(|&n| n <= head.len())
            .ok_or_else(|| "qcow2 header extension runs past the first cluster".to_string())?;
    }
    Ok(h)
}

/// [`check_standalone`] on the head of the open file `f`, read from its
/// start (at most [`HEAD_MAX`] bytes).
pub fn check_open(mut f: &File) -> Result<Qcow2Header, String> {
    let mut head = Vec::new();
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.take(HEAD_MAX).read_to_end(&mut head))
        .map_err(|e| format!("cannot read its header: {e}"))?;
    check_standalone(&head)
}

/// [`check_open`] on the file at `path`, the error naming it:
/// `PATH: names a backing file ...`.
pub fn check_file(path: &Path) -> Result<Qcow2Header, String> {
    let f = crate::host::untrusted::open(path, crate::host::untrusted::Links::Follow)
        .map_err(|e| e.to_string())?;
    check_open(&f.file).map_err(|e| format!("{}: {e}", crate::host::shown::path(path)))
}

/// A qemu-img source that opens `path` as qcow2 and nothing else: a
/// `json:` block spec (the file name a JSON string, never parsed as
/// options; no format probing) with the backing chain cut (`backing:
/// null`), a second guard behind [`check_standalone`].
pub fn qemu_img_source(path: &Path) -> Result<String, String> {
    let name = path.to_str().ok_or_else(|| {
        format!(
            "{}: not a UTF-8 path, which qemu-img's JSON block names need",
            crate::host::shown::path(path)
        )
    })?;
    Ok(format!(
        "json:{}",
        serde_json::json!({
            "driver": "qcow2",
            "backing": null,
            "file": {"driver": "file", "filename": name},
        })
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A qcow2 written by qemu-img (`qemu-img create ARGS... FILE 1M`).
    fn made(dir: &Path, name: &str, args: &[&str]) -> Vec<u8> {
        let f = dir.join(name);
        let sh = crate::host::runner::shell().unwrap();
        xshell::cmd!(sh, "qemu-img create -q -f qcow2 {args...} {f} 1M")
            .run()
            .unwrap();
        std::fs::read(&f).unwrap()
    }

    fn set(h: &mut [u8], at: usize, b: &[u8]) {
        h[at..at + b.len()].copy_from_slice(b);
    }

    #[test]
    fn a_clean_qcow2_by_qemu_img_passes() {
        let d = tempfile::tempdir().unwrap();
        for args in [
            &[][..],
            &["-o", "compat=0.10"],
            &["-o", "compression_type=zstd"],
        ] {
            let h = check_standalone(&made(d.path(), "c.qcow2", args)).unwrap();
            assert_eq!(h.virtual_size, 1 << 20, "{args:?}");
        }
        let p = d.path().join("c.qcow2");
        check_file(&p).unwrap();
        assert!(qemu_img_source(&p).unwrap().contains("\"backing\":null"));
    }

    #[test]
    fn a_backing_file_is_refused_by_path_or_json_name() {
        let d = tempfile::tempdir().unwrap();
        let b = made(d.path(), "b.qcow2", &["-b", "/etc/hostname", "-F", "raw"]);
        let e = check_standalone(&b).unwrap_err();
        assert!(e.contains("names a backing file \"/etc/hostname\""), "{e}");
        assert!(e.contains("stands alone"), "{e}");
        // The same bytes with the offset cleared and the extension gone
        // would pass: the offset alone decides. A json: name, written in
        // place of the path, with a hostile escape in it.
        let mut clean = made(d.path(), "c.qcow2", &[]);
        check_standalone(&clean).unwrap();
        let name = b"json:{\"file.filename\":\"/etc/shadow\x1b[2K\"}";
        set(&mut clean, 8, &4096u64.to_be_bytes());
        set(&mut clean, 16, &(name.len() as u32).to_be_bytes());
        set(&mut clean, 4096, name);
        let e = check_standalone(&clean).unwrap_err();
        assert!(e.contains("json:"), "{e}");
        assert!(e.contains("shadow\\x1b[2K"), "escaped: {e}");
        assert!(!e.contains('\x1b'), "{e}");
        // A backing offset that points past the bytes read still refuses.
        set(&mut clean, 8, &u64::MAX.to_be_bytes());
        assert!(check_standalone(&clean)
            .unwrap_err()
            .contains("names a backing file (offset"));
    }

    #[test]
    fn an_external_data_file_is_refused_by_bit_or_extension() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data.raw");
        let opt = format!("data_file={}", data.display());
        let x = made(d.path(), "x.qcow2", &["-o", &opt]);
        let e = check_standalone(&x).unwrap_err();
        assert!(e.contains("\"external data file\" (bit 2)"), "{e}");
        // The bit cleared, the extension still there: refused by it.
        let mut y = x.clone();
        set(&mut y, 72, &0u64.to_be_bytes());
        let e = check_standalone(&y).unwrap_err();
        assert!(e.contains("external data file"), "{e}");
        assert!(e.contains(&data.display().to_string()), "{e}");
        // Control: the bit alone on a clean file is refused too, and the
        // clean file passes.
        let mut z = made(d.path(), "z.qcow2", &[]);
        check_standalone(&z).unwrap();
        set(&mut z, 72, &EXTERNAL_DATA_FILE_BIT.to_be_bytes());
        assert!(check_standalone(&z).unwrap_err().contains("bit 2"));
    }

    #[test]
    fn a_backing_format_extension_and_broken_extensions_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut c = made(d.path(), "c.qcow2", &[]);
        let at = u32::from_be_bytes([c[100], c[101], c[102], c[103]]) as usize;
        let mut ext = c.clone();
        set(&mut ext, at, &EXT_BACKING_FORMAT.to_be_bytes());
        set(&mut ext, at + 4, &3u32.to_be_bytes());
        set(&mut ext, at + 8, b"raw\0\0\0\0\0\0\0\0\0");
        assert!(check_standalone(&ext)
            .unwrap_err()
            .contains("backing-format"));
        // An extension longer than the bytes read.
        set(&mut c, at, &0x1234u32.to_be_bytes());
        set(&mut c, at + 4, &u32::MAX.to_be_bytes());
        assert!(check_standalone(&c).unwrap_err().contains("runs past"));
        // Unknown incompatible features.
        let mut u = made(d.path(), "u.qcow2", &[]);
        set(&mut u, 72, &(1u64 << 40).to_be_bytes());
        assert!(check_standalone(&u).unwrap_err().contains("does not know"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn junk_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = check_standalone(&data);
            let mut d = b"QFI\xfb\0\0\0\x03".to_vec();
            d.extend_from_slice(&data);
            let _ = check_standalone(&d);
        }
    }
}
