//! The checks every reader of a user's VMDK makes before qemu-img or QEMU
//! opens it (`cairn verify`, `cairn run`): a VMDK's descriptor can name a
//! parent (`parentCID`, `parentFileNameHint`) or, with a capacity of 0,
//! other files as its extents, and QEMU would read those as the disk.
//! [`check_header`] and [`check_descriptor`] accept only what cairn writes
//! (`media::vmdk`): a stream-optimised sparse extent, one extent, the file
//! itself, no parent. Invariant: reads only the bytes given; never panics.

use std::os::unix::fs::FileExt as _;
use std::path::Path;

/// QEMU's driver for the format (the table's row names it).
pub const DRIVER: &str = "vmdk";

/// Header flags cairn's VMDKs carry: valid new-line detection (bit 0),
/// a redundant grain table (bit 1), compressed grains (bit 16), markers
/// (bit 17).
const FLAGS: u32 = 0x0003_0003;
/// The most descriptor cairn reads (in 512-byte sectors).
const DESCRIPTOR_MAX: u64 = 2048;

/// What a checked header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The disk's size in bytes.
    pub size: u64,
    /// Where the embedded descriptor is, in bytes: (offset, length).
    pub descriptor: (u64, u64),
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | (u64::from(le32(b, at + 4)) << 32)
}

/// Checks the first 512 bytes of a file of `file_len` bytes as a
/// stream-optimised sparse extent's header (VMware's "Virtual Disk Format
/// 5.0"): magic, version 3, flags, a capacity that is a whole disk (never
/// 0: a capacity of 0 makes the embedded descriptor a list of other
/// files), 64 KiB grains, deflate, the new-line detection bytes, and an
/// embedded descriptor inside the file.
pub fn check_header(b: &[u8], file_len: u64) -> Result<Header, String> {
    if b.len() < 512 {
        return Err(format!("header is {} bytes, not 512", b.len()));
    }
    let want = |what: &str, ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(format!("header: unexpected {what}"))
        }
    };
    want("magic (not KDMV)", &b[0..4] == b"KDMV")?;
    want("version (not 3, stream-optimised)", le32(b, 4) == 3)?;
    want("flags", le32(b, 8) == FLAGS)?;
    let capacity = le64(b, 12);
    want(
        "capacity (0 or past 2^54 sectors)",
        capacity > 0 && capacity < 1 << 54,
    )?;
    want("grain size (not 128 sectors)", le64(b, 20) == 128)?;
    let (d_at, d_len) = (le64(b, 28), le64(b, 36));
    want(
        "descriptor place (not inside the file)",
        d_at >= 1
            && (1..=DESCRIPTOR_MAX).contains(&d_len)
            && d_at
                .checked_add(d_len)
                .and_then(|e| e.checked_mul(512))
                .is_some_and(|e| e <= file_len),
    )?;
    want("unclean-shutdown flag", b[72] == 0)?;
    want("new-line detection bytes", &b[73..77] == b"\n \r\n")?;
    want(
        "compression algorithm (not deflate)",
        u16::from_le_bytes([b[77], b[78]]) == 1,
    )?;
    Ok(Header {
        size: capacity * 512,
        descriptor: (d_at * 512, d_len * 512),
    })
}

/// Checks the embedded descriptor (its bytes up to the first NUL): only
/// `version=1`, a `CID`, `parentCID=ffffffff` (no parent),
/// `createType="streamOptimized"`, `ddb.*` entries, comments, and exactly
/// one extent line, `RW SECTORS SPARSE "NAME"` for the header's capacity
/// and the file's own name. Anything else (`parentFileNameHint`, a second
/// extent, another file) is refused.
pub fn check_descriptor(d: &[u8], size: u64, own_name: &str) -> Result<(), String> {
    let end = d.iter().position(|&c| c == 0).unwrap_or(d.len());
    let text =
        std::str::from_utf8(&d[..end]).map_err(|_| "descriptor: not UTF-8 text".to_string())?;
    let (mut extents, mut parent, mut create) = (0, false, false);
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        let bad = |why: &str| {
            let shown = crate::host::shown::Shown(line).to_string();
            Err(format!("descriptor line {}: {why}: {shown}", n + 1))
        };
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("RW ") {
            let want = format!("{} SPARSE \"{own_name}\"", size / 512);
            if rest.trim() != want {
                return bad("an extent other than this file's own (RW SECTORS SPARSE \"NAME\")");
            }
            extents += 1;
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return bad("not a key=value line");
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "version" if value == "1" => {}
            "CID" if value.len() == 8 && value.bytes().all(|c| c.is_ascii_hexdigit()) => {}
            "parentCID" if value.eq_ignore_ascii_case("ffffffff") => parent = true,
            "createType" if value == "\"streamOptimized\"" => create = true,
            k if k.starts_with("ddb.") && !k.contains("parent") => {}
            _ => return bad("not what a stand-alone stream-optimised VMDK says (a parent?)"),
        }
    }
    if extents != 1 {
        return Err(format!("descriptor: {extents} extent lines, not 1"));
    }
    if !parent || !create {
        return Err(
            "descriptor: no parentCID=ffffffff or createType=\"streamOptimized\"".to_string(),
        );
    }
    Ok(())
}

/// Checks the file at `path` (opened safely: no FIFO, no device) as
/// [`check_header`] and [`check_descriptor`] do.
pub fn check_file(path: &Path) -> Result<Header, String> {
    let f = crate::host::untrusted::open(path, crate::host::untrusted::Links::Follow)
        .map_err(|e| e.to_string())?;
    let at = |e: String| format!("{}: {e}", crate::host::shown::path(path));
    let len = f.file.metadata().map_err(|e| at(e.to_string()))?.len();
    let mut head = vec![0u8; 512];
    f.file
        .read_exact_at(&mut head, 0)
        .map_err(|e| at(format!("header: {e}")))?;
    let h = check_header(&head, len).map_err(at)?;
    let mut d = vec![0u8; h.descriptor.1 as usize];
    f.file
        .read_exact_at(&mut d, h.descriptor.0)
        .map_err(|e| at(format!("descriptor: {e}")))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    check_descriptor(&d, h.size, name).map_err(at)?;
    Ok(h)
}

/// qemu-img's name for a VMDK: opened as vmdk, with no backing chain
/// whatever its descriptor says.
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
            "driver": "vmdk",
            "backing": null,
            "file": {"driver": "file", "filename": name},
        })
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parent, a second extent, another file, an unknown key: refused.
    /// Control: qemu-img's own descriptor passes.
    #[test]
    fn descriptors_naming_other_files_are_refused() {
        let good = "# Disk DescriptorFile\nversion=1\nCID=fde5c67f\nparentCID=ffffffff\n\
                    createType=\"streamOptimized\"\n\n# Extent description\n\
                    RW 16384 SPARSE \"x.vmdk\"\n\n# The Disk Data Base\n#DDB\n\n\
                    ddb.virtualHWVersion = \"4\"\nddb.adapterType = \"ide\"\n";
        let mut padded = good.as_bytes().to_vec();
        padded.resize(4096, 0);
        check_descriptor(&padded, 16384 * 512, "x.vmdk").unwrap();
        for (bad, why) in [
            (
                good.replace("parentCID=ffffffff", "parentCID=12345678"),
                "parent",
            ),
            (
                format!("{good}parentFileNameHint=\"/etc/shadow\"\n"),
                "parentFileNameHint",
            ),
            (
                good.replace("\"x.vmdk\"", "\"/dev/sda\""),
                "extent other than",
            ),
            (
                good.replace("SPARSE \"x.vmdk\"", "FLAT \"x.vmdk\" 0"),
                "extent other than",
            ),
            (
                format!("{good}RW 16384 SPARSE \"x.vmdk\"\n"),
                "2 extent lines",
            ),
            (good.replace("RW 16384", "RW 16385"), "extent other than"),
            (
                good.replace("monolithic", "x")
                    .replace("streamOptimized", "vmfs"),
                "createType",
            ),
            (format!("{good}ddb.parentx = \"1\"\n"), "parent"),
            (format!("{good}garbage\n"), "not a key=value"),
        ] {
            let e = check_descriptor(bad.as_bytes(), 16384 * 512, "x.vmdk").unwrap_err();
            assert!(e.contains(why), "{why}: {e}");
        }
        assert!(check_descriptor(&[0xff, 0xfe], 512, "x.vmdk").is_err());
    }
}
