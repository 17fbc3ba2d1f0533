//! The primary GPT of a disk image, parsed with every field bounded: both
//! CRCs checked, every used partition inside the file.
//! Invariant: never panics, never allocates more than the 1 MiB entry array.

use std::io::{Read, Seek, SeekFrom};

use super::verity::read_full;

/// One used GPT entry, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptPartition {
    pub name: String,
    pub offset: u64,
    pub size: u64,
    /// Whether its type is the EFI System Partition's.
    pub esp: bool,
}

/// The ESP type GUID C12A7328-F81F-11D2-BA4B-00A0C93EC93B as GPT stores it.
const ESP_TYPE: [u8; 16] = [
    0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b,
];

/// Entries beyond this are refused (sfdisk writes 128).
const MAX_GPT_ENTRIES: u32 = 4096;
const MAX_GPT_ENTRY_SIZE: u32 = 4096;
/// The entry array may not exceed this many bytes.
const MAX_GPT_ARRAY: u64 = 1 << 20;

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

fn read_at<R: Read + Seek>(r: &mut R, offset: u64, len: usize) -> Result<Vec<u8>, String> {
    r.seek(SeekFrom::Start(offset))
        .map_err(|e| format!("cannot seek to {offset}: {e}"))?;
    let mut buf = vec![0u8; len];
    let n = read_full(r, &mut buf).map_err(|e| format!("cannot read at {offset}: {e}"))?;
    if n != len {
        return Err(format!("short read at {offset}"));
    }
    Ok(buf)
}

/// Parse the primary GPT of a disk image of `len` bytes (512- or
/// 4096-byte sectors). Checks the header and entry-array CRCs and that
/// every used partition lies inside the file. Returns used entries only.
pub fn read_gpt<R: Read + Seek>(r: &mut R, len: u64) -> Result<Vec<GptPartition>, String> {
    let mut found = None;
    for sector in [512u64, 4096] {
        if len < sector * 2 {
            continue;
        }
        let hdr = read_at(r, sector, sector as usize)?;
        if hdr.get(..8) == Some(&b"EFI PART"[..]) {
            found = Some((sector, hdr));
            break;
        }
    }
    let (sector, hdr) = found.ok_or("no GPT header (no \"EFI PART\" signature at LBA 1)")?;
    let hdr_size = le_u32(&hdr, 12);
    if !(92..=sector as u32).contains(&hdr_size) {
        return Err(format!("GPT header size {hdr_size} is invalid"));
    }
    let mut h = hdr[..hdr_size as usize].to_vec();
    let want_crc = le_u32(&h, 16);
    h[16..20].fill(0);
    if crc32(&h) != want_crc {
        return Err("GPT header CRC mismatch".into());
    }
    if le_u64(&hdr, 24) != 1 {
        return Err("GPT header does not describe itself as LBA 1".into());
    }
    let entries_lba = le_u64(&hdr, 72);
    let count = le_u32(&hdr, 80);
    let entry_size = le_u32(&hdr, 84);
    let array_crc = le_u32(&hdr, 88);
    if count == 0 || count > MAX_GPT_ENTRIES {
        return Err(format!("GPT claims {count} entries"));
    }
    if !(128..=MAX_GPT_ENTRY_SIZE).contains(&entry_size) || entry_size % 8 != 0 {
        return Err(format!("GPT entry size {entry_size} is invalid"));
    }
    let array_len = u64::from(count) * u64::from(entry_size);
    if array_len > MAX_GPT_ARRAY {
        return Err(format!("GPT entry array of {array_len} bytes is too large"));
    }
    let array_off = entries_lba
        .checked_mul(sector)
        .filter(|o| *o >= 2 * sector)
        .ok_or_else(|| format!("GPT entry array LBA {entries_lba} is invalid"))?;
    if array_off
        .checked_add(array_len)
        .map_or(true, |end| end > len)
    {
        return Err(format!(
            "GPT entry array at LBA {entries_lba} runs past the end of the image"
        ));
    }
    let array = read_at(r, array_off, array_len as usize)?;
    if crc32(&array) != array_crc {
        return Err("GPT entry array CRC mismatch".into());
    }
    let mut parts = Vec::new();
    for (i, e) in array.chunks_exact(entry_size as usize).enumerate() {
        if e[..16].iter().all(|b| *b == 0) {
            continue;
        }
        let first = le_u64(e, 32);
        let last = le_u64(e, 40);
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|u| *u != 0)
            .collect();
        let name = String::from_utf16_lossy(&units);
        let bad_range = || format!("GPT entry {} ({name:?}) lies outside the image", i + 1);
        if last < first {
            return Err(bad_range());
        }
        let offset = first.checked_mul(sector).ok_or_else(bad_range)?;
        let size = (last - first)
            .checked_add(1)
            .and_then(|n| n.checked_mul(sector))
            .ok_or_else(bad_range)?;
        if offset.checked_add(size).map_or(true, |end| end > len) {
            return Err(bad_range());
        }
        parts.push(GptPartition {
            name,
            offset,
            size,
            esp: e[..16] == ESP_TYPE,
        });
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_known_vector() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}
