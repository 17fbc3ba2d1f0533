//! `cairn verify`: checks a signed output folder (or one medium in it)
//! end to end: the signify signature over SHA256, every listed digest, the
//! manifest against SHA256, and the dm-verity root hash recomputed from the
//! image itself (GPT parsed here, verity tree computed here, the UKI's
//! command line read back from the ESP).
//! Invariant: every file is treated as hostile until its digest has been
//! checked against the signed SHA256; parsers never panic and never
//! allocate more than a small multiple of the file they read.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::Digest as _;

use crate::host::digest::Sha256;
use crate::media::disk::{LABEL_ESP, LABEL_ROOT};
use crate::release::manifest::Manifest;
use crate::release::signify::{PublicKey, Signature, SignifyError};

/// Name of the checksum list.
pub const SUMS: &str = "SHA256";
/// Name of the embedded signature over the checksum list.
pub const SUMS_SIG: &str = "SHA256.sig";
/// Name of the manifest.
pub const MANIFEST: &str = "manifest.json";

/// Extensions of boot media (compared case-insensitively).
const MEDIA_EXTS: [&str; 4] = ["raw", "iso", "qcow2", "img"];
/// Other files that must be covered by SHA256 if present.
const METADATA_FILES: [&str; 2] = [MANIFEST, "provenance.json"];

/// SHA256 and SHA256.sig are small text files; refuse anything bigger.
const MAX_SUMS_FILE: u64 = 1 << 20;
/// manifest.json carries the package list; generous but bounded.
const MAX_MANIFEST: u64 = 64 << 20;
/// Read buffer for hashing (a multiple of the verity block size).
const HASH_BUF: usize = 4 << 20;

/// dm-verity parameters cairn uses (and the only ones verify accepts).
const VERITY_BLOCK: u64 = 4096;
const DIGEST_LEN: usize = 32;
const DIGESTS_PER_BLOCK: usize = VERITY_BLOCK as usize / DIGEST_LEN;
/// dm-verity refuses salts longer than this.
const MAX_SALT: usize = 256;

/// Why verification stopped. `Display` is the one-line message.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The request itself is unusable (missing/garbled key, unreadable or
    /// garbled SHA256.sig, target not found): the CLI exits 2.
    #[error("{0}")]
    BadInput(String),
    /// A check failed: the folder is not what the key holder signed.
    #[error("{0}")]
    Failed(String),
}

fn bad(msg: impl Into<String>) -> VerifyError {
    VerifyError::BadInput(msg.into())
}

fn failed(msg: impl Into<String>) -> VerifyError {
    VerifyError::Failed(msg.into())
}

/// What was verified.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// Key id (hex key number) of the public key the signature verified with.
    pub key_id: String,
    /// `manifest.image.name` / `.version`.
    pub name: String,
    pub version: String,
    /// The manifest's root hash (recomputed from every checked .raw).
    pub root_hash: Sha256,
    /// One line per passed check, in the order they ran.
    pub checks: Vec<String>,
    /// Things deliberately not checked (absent optional media, ISO root
    /// recomputation...).
    pub notes: Vec<String>,
}

impl std::fmt::Display for VerifyReport {
    /// Human summary: `OK name version`, key, root hash, then each check
    /// and note on its own indented line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "OK {} {}", self.name, self.version)?;
        writeln!(f, "  key id:    {}", self.key_id)?;
        write!(f, "  root hash: {}", self.root_hash)?;
        for c in &self.checks {
            write!(f, "\n  ok    {c}")?;
        }
        for n in &self.notes {
            write!(f, "\n  note  {n}")?;
        }
        Ok(())
    }
}

/// Verify `target` (an output folder, or one .raw/.iso in it) against the
/// signify public key file `pubkey`. With `production`, also refuse images
/// built with debug features.
pub fn verify(target: &Path, pubkey: &Path, production: bool) -> Result<VerifyReport, VerifyError> {
    let (folder, medium) = resolve_target(target)?;
    let mut checks = Vec::new();
    let mut notes = Vec::new();

    // 1. Key, signature, and the signed copy of SHA256.
    let key = PublicKey::read(pubkey)
        .map_err(|e| bad(format!("public key: {}: {e}", pubkey.display())))?;
    let sig_path = folder.join(SUMS_SIG);
    let sig_bytes = read_bounded(&sig_path, MAX_SUMS_FILE)
        .map_err(|e| bad(format!("signature: {}: {e}", sig_path.display())))?;
    let (sig, signed) = Signature::parse_embedded(&sig_bytes)
        .map_err(|e| bad(format!("signature: {}: {e}", sig_path.display())))?;
    match sig.verify(&key, signed) {
        Ok(()) => {}
        Err(SignifyError::KeyMismatch { sig_key, pub_key }) => {
            return Err(failed(format!(
                "signature: {SUMS_SIG} was made by key {sig_key}, not {pub_key} ({})",
                pubkey.display()
            )))
        }
        Err(SignifyError::BadSignature) => {
            return Err(failed(format!(
                "signature: {SUMS_SIG} does not verify with key {} (the signature or its embedded copy of {SUMS} was altered)",
                key.key_id()
            )))
        }
        Err(e) => return Err(failed(format!("signature: {SUMS_SIG}: {e}"))),
    }
    checks.push(format!(
        "signature: {SUMS_SIG} verifies with key {}",
        key.key_id()
    ));
    let sums_path = folder.join(SUMS);
    if !sums_path.is_file() {
        return Err(failed(format!("missing: {SUMS}")));
    }
    let sums_bytes = read_bounded(&sums_path, MAX_SUMS_FILE)
        .map_err(|e| failed(format!("{SUMS}: cannot read {}: {e}", sums_path.display())))?;
    if sums_bytes != signed {
        return Err(failed(format!(
            "{SUMS} differs from the signed copy in {SUMS_SIG}"
        )));
    }
    checks.push(format!(
        "{SUMS}: identical to the signed copy in {SUMS_SIG}"
    ));

    // 2. Parse SHA256 strictly.
    let sums = parse_sums(&sums_bytes).map_err(failed)?;
    if !sums.contains_key(MANIFEST) {
        return Err(failed(format!("{SUMS}: does not list {MANIFEST}")));
    }
    checks.push(format!("{SUMS}: {} well-formed entries", sums.len()));

    // 3. Listed files exist with their digests; nothing important unlisted.
    let to_check: Vec<String> = match &medium {
        Some(m) => {
            if !sums.contains_key(m) {
                return Err(failed(format!("unlisted: {m} is not in {SUMS}")));
            }
            let others: Vec<&String> = sums
                .keys()
                .filter(|k| *k != m && k.as_str() != MANIFEST)
                .collect();
            if !others.is_empty() {
                notes.push(format!(
                    "only {m} and {MANIFEST} checked; also listed: {}",
                    others
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            vec![MANIFEST.to_string(), m.clone()]
        }
        None => sums.keys().cloned().collect(),
    };
    let mut sized = Vec::new();
    for name in &to_check {
        let p = folder.join(name);
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => sized.push((m.len(), name.clone())),
            Ok(_) => return Err(failed(format!("missing: {name} (not a regular file)"))),
            Err(_) => return Err(failed(format!("missing: {name}"))),
        }
    }
    if medium.is_none() {
        let entries = std::fs::read_dir(&folder)
            .map_err(|e| bad(format!("cannot list {}: {e}", folder.display())))?;
        let mut unlisted = Vec::new();
        for e in entries {
            let e = e.map_err(|e| bad(format!("cannot list {}: {e}", folder.display())))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if must_be_listed(&name) && !sums.contains_key(&name) {
                unlisted.push(name);
            }
        }
        unlisted.sort();
        if let Some(first) = unlisted.first() {
            return Err(failed(format!("unlisted: {first} is not in {SUMS}")));
        }
        checks.push(format!(
            "unlisted: every medium and manifest in the folder is in {SUMS}"
        ));
    } else {
        notes.push("single medium: other files in the folder were not looked at".into());
    }
    // Cheap files first, so a bad manifest fails fast.
    sized.sort();
    for (_, name) in &sized {
        let p = folder.join(name);
        let got = hash_file(&p).map_err(|e| failed(format!("digest: {name}: cannot read: {e}")))?;
        let want = sums[name];
        if got != want {
            return Err(failed(format!("digest: {name}: expected {want} got {got}")));
        }
        checks.push(format!("digest: {name}: {got}"));
    }

    // 4. The manifest (now authenticated) agrees with SHA256.
    let manifest_bytes = read_bounded(&folder.join(MANIFEST), MAX_MANIFEST)
        .map_err(|e| failed(format!("manifest: cannot read {MANIFEST}: {e}")))?;
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| failed(format!("manifest: {MANIFEST} does not parse: {e}")))?;
    let mut outputs = BTreeSet::new();
    for o in &manifest.outputs {
        if !outputs.insert(o.file.as_str()) {
            return Err(failed(format!(
                "manifest: {MANIFEST} lists output {} twice",
                o.file
            )));
        }
        match sums.get(&o.file) {
            None => {
                return Err(failed(format!(
                    "manifest: output {} is not in {SUMS}",
                    o.file
                )))
            }
            Some(d) if *d != o.sha256 => {
                return Err(failed(format!(
                    "manifest: output {} has sha256 {} in {MANIFEST} but {d} in {SUMS}",
                    o.file, o.sha256
                )))
            }
            Some(_) => {}
        }
        if let Some((size, _)) = sized.iter().find(|(_, n)| *n == o.file) {
            if *size != o.size {
                return Err(failed(format!(
                    "manifest: output {} is {} bytes in {MANIFEST} but {size} bytes on disk",
                    o.file, o.size
                )));
            }
        }
    }
    if let Some(m) = sums
        .keys()
        .find(|k| is_medium(k) && !outputs.contains(k.as_str()))
    {
        return Err(failed(format!(
            "manifest: {m} is in {SUMS} but not in the outputs of {MANIFEST}"
        )));
    }
    if let Some(m) = &medium {
        if !outputs.contains(m.as_str()) {
            return Err(failed(format!(
                "manifest: {m} is not in the outputs of {MANIFEST}"
            )));
        }
    }
    checks.push(format!(
        "manifest: {} {} outputs agree with {SUMS}",
        manifest.image.name, manifest.image.version
    ));

    // 5. Root hash recomputed from each medium present.
    let root_hash = manifest.verity.root_hash;
    for (_, name) in &sized {
        let ext = extension(name);
        if ext == "raw" {
            check_raw(&folder.join(name), name, &manifest, &mut checks)?;
        } else if ext == "iso" {
            check_iso(&folder.join(name), name, &manifest, &mut checks)?;
        } else if is_medium(name) {
            notes.push(format!(
                "{name}: root hash not recomputed for .{ext} media; only its digest was checked"
            ));
        }
    }

    // 6. Production policy.
    if production {
        if manifest.flags.debug_console {
            return Err(failed("production: image has the debug console enabled"));
        }
        checks.push("production: no debug console".into());
    }

    Ok(VerifyReport {
        key_id: key.key_id(),
        name: manifest.image.name,
        version: manifest.image.version,
        root_hash,
        checks,
        notes,
    })
}

/// The folder to check and, for a single medium, its file name.
fn resolve_target(target: &Path) -> Result<(PathBuf, Option<String>), VerifyError> {
    let meta = std::fs::metadata(target).map_err(|e| bad(format!("{}: {e}", target.display())))?;
    if meta.is_dir() {
        return Ok((target.to_path_buf(), None));
    }
    let name = target.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        bad(format!(
            "{}: not a file name cairn writes",
            target.display()
        ))
    })?;
    let ext = extension(name);
    if ext != "raw" && ext != "iso" {
        return Err(bad(format!(
            "{}: expected an output folder or a .raw or .iso medium",
            target.display()
        )));
    }
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, Some(name.to_string())))
}

fn extension(name: &str) -> String {
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => ext.to_ascii_lowercase(),
        _ => String::new(),
    }
}

fn is_medium(name: &str) -> bool {
    MEDIA_EXTS.contains(&extension(name).as_str())
}

fn must_be_listed(name: &str) -> bool {
    is_medium(name) || METADATA_FILES.contains(&name)
}

/// Read a whole file, refusing one longer than `max` bytes.
fn read_bounded(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let f = File::open(path)?;
    let mut buf = Vec::new();
    f.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(buf)
}

/// Fill `buf` as far as the reader allows; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Streamed SHA-256 of a file with a large buffer.
pub fn hash_file(path: &Path) -> io::Result<Sha256> {
    let mut f = File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; HASH_BUF];
    loop {
        let n = read_full(&mut f, &mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(Sha256(h.finalize().into()))
}

// ---------------------------------------------------------------------------
// SHA256 (BSD-style `SHA256 (name) = hex` lines)
// ---------------------------------------------------------------------------

/// Parse the SHA256 list strictly: every line `SHA256 (name) = <64 hex>`
/// terminated by '\n', names plain file names, no duplicates, at least one
/// entry. Errors are one-line messages naming the offending line.
pub fn parse_sums(data: &[u8]) -> Result<BTreeMap<String, Sha256>, String> {
    let text = std::str::from_utf8(data).map_err(|_| format!("{SUMS}: not UTF-8 text"))?;
    if text.is_empty() {
        return Err(format!("{SUMS}: empty"));
    }
    let Some(body) = text.strip_suffix('\n') else {
        return Err(format!("{SUMS}: last line is not newline-terminated"));
    };
    let mut out = BTreeMap::new();
    for (i, line) in body.split('\n').enumerate() {
        let n = i + 1;
        let show: String = line.chars().take(120).collect();
        let rest = line
            .strip_prefix("SHA256 (")
            .ok_or_else(|| format!("{SUMS}: line {n} is not `SHA256 (file) = hex`: {show:?}"))?;
        let (name, hex) = rest
            .rsplit_once(") = ")
            .ok_or_else(|| format!("{SUMS}: line {n} is not `SHA256 (file) = hex`: {show:?}"))?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(format!(
                "{SUMS}: line {n} does not end in 64 lowercase hex digits: {show:?}"
            ));
        }
        let digest =
            Sha256::from_hex(hex).map_err(|_| format!("{SUMS}: line {n}: bad digest: {show:?}"))?;
        if !is_plain_name(name) {
            return Err(format!(
                "{SUMS}: line {n} names {name:?}, which is not a plain file name in this folder"
            ));
        }
        if out.insert(name.to_string(), digest).is_some() {
            return Err(format!("{SUMS}: line {n} lists {name} a second time"));
        }
    }
    Ok(out)
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && !name.chars().any(char::is_control)
}

// ---------------------------------------------------------------------------
// GPT
// ---------------------------------------------------------------------------

/// One used GPT entry, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptPartition {
    pub name: String,
    pub offset: u64,
    pub size: u64,
}

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

/// CRC-32 (IEEE, as GPT uses), bitwise; GPT structures are small.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
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
        parts.push(GptPartition { name, offset, size });
    }
    Ok(parts)
}

// ---------------------------------------------------------------------------
// dm-verity
// ---------------------------------------------------------------------------

/// The dm-verity root hash (format 1, sha256, 4096-byte data and hash
/// blocks) of the first `data_size` bytes of `data`, as
/// `veritysetup format --salt=<hex salt>` computes it: every block is
/// hashed as sha256(salt || block); digests are packed 128 to a hash
/// block, zero-padded, and hashed again level by level until one digest
/// is left. `data_size` must be a positive multiple of 4096 and `data`
/// must provide that many bytes.
pub fn verity_root_hash<R: Read>(data: R, data_size: u64, salt: &[u8]) -> io::Result<Sha256> {
    let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
    if data_size == 0 || data_size % VERITY_BLOCK != 0 {
        return Err(invalid(format!(
            "data size {data_size} is not a positive multiple of {VERITY_BLOCK}"
        )));
    }
    if salt.len() > MAX_SALT {
        return Err(invalid(format!("salt of {} bytes is too long", salt.len())));
    }
    let base = sha2::Sha256::new_with_prefix(salt);
    let blocks = data_size / VERITY_BLOCK;
    let blocks_usize = usize::try_from(blocks)
        .map_err(|_| invalid(format!("data size {data_size} is too large")))?;
    let mut level: Vec<[u8; DIGEST_LEN]> = Vec::with_capacity(blocks_usize);
    let mut r = data.take(data_size);
    let mut buf = vec![0u8; HASH_BUF];
    let mut remaining = data_size;
    while remaining > 0 {
        let want = remaining.min(HASH_BUF as u64) as usize;
        let n = read_full(&mut r, &mut buf[..want])?;
        if n != want {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("data ends {remaining} bytes short of the verity data size"),
            ));
        }
        for block in buf[..n].chunks_exact(VERITY_BLOCK as usize) {
            level.push(base.clone().chain_update(block).finalize().into());
        }
        remaining -= n as u64;
    }
    let mut hash_block = vec![0u8; VERITY_BLOCK as usize];
    while level.len() > 1 {
        let mut next = Vec::with_capacity(level.len().div_ceil(DIGESTS_PER_BLOCK));
        for chunk in level.chunks(DIGESTS_PER_BLOCK) {
            hash_block.fill(0);
            for (slot, d) in hash_block.chunks_exact_mut(DIGEST_LEN).zip(chunk) {
                slot.copy_from_slice(d);
            }
            next.push(base.clone().chain_update(&hash_block).finalize().into());
        }
        level = next;
    }
    // With a single data block the tree has no levels: its digest is the root.
    level
        .first()
        .map(|d| Sha256(*d))
        .ok_or_else(|| invalid("no data".into()))
}

// ---------------------------------------------------------------------------
// Raw disk checks
// ---------------------------------------------------------------------------

/// The verity parameters the manifest records, checked to be ones this
/// verifier computes (sha256, 4096-byte blocks); returns the salt.
fn verity_salt(manifest: &Manifest) -> Result<Vec<u8>, VerifyError> {
    let v = &manifest.verity;
    if v.hash_algorithm != "sha256"
        || u64::from(v.data_block_size) != VERITY_BLOCK
        || u64::from(v.hash_block_size) != VERITY_BLOCK
    {
        return Err(failed(format!(
            "root hash: {MANIFEST} describes verity {} with {}/{}-byte blocks; only sha256 with 4096-byte blocks is supported",
            v.hash_algorithm, v.data_block_size, v.hash_block_size
        )));
    }
    hex::decode(&v.salt)
        .ok()
        .filter(|s| s.len() <= MAX_SALT)
        .ok_or_else(|| {
            failed(format!(
                "root hash: {MANIFEST} verity salt is not valid hex"
            ))
        })
}

fn check_raw(
    path: &Path,
    name: &str,
    manifest: &Manifest,
    checks: &mut Vec<String>,
) -> Result<(), VerifyError> {
    let v = &manifest.verity;
    let salt = verity_salt(manifest)?;

    let mut f = File::open(path).map_err(|e| failed(format!("partitions: {name}: {e}")))?;
    let len = f
        .metadata()
        .map_err(|e| failed(format!("partitions: {name}: {e}")))?
        .len();
    let parts = read_gpt(&mut f, len).map_err(|e| failed(format!("partitions: {name}: {e}")))?;
    let find = |label: &str| -> Result<&GptPartition, VerifyError> {
        let mut it = parts.iter().filter(|p| p.name == label);
        let p = it
            .next()
            .ok_or_else(|| failed(format!("partitions: {name}: no {label} partition")))?;
        if it.next().is_some() {
            return Err(failed(format!(
                "partitions: {name}: more than one {label} partition"
            )));
        }
        Ok(p)
    };
    let root = find(LABEL_ROOT)?.clone();
    let esp = find(LABEL_ESP)?.clone();
    for p in &parts {
        if let Some(m) = manifest.partitions.iter().find(|m| m.label == p.name) {
            if (m.offset, m.size) != (p.offset, p.size) {
                return Err(failed(format!(
                    "partitions: {name}: {} is at {}+{} in the GPT but {}+{} in {MANIFEST}",
                    p.name, p.offset, p.size, m.offset, m.size
                )));
            }
        }
    }
    checks.push(format!(
        "partitions: {name}: GPT has {LABEL_ESP} and {LABEL_ROOT} where {MANIFEST} says"
    ));

    if v.data_size > root.size {
        return Err(failed(format!(
            "root hash: {name}: verity data size {} exceeds the {LABEL_ROOT} partition ({} bytes)",
            v.data_size, root.size
        )));
    }
    f.seek(SeekFrom::Start(root.offset))
        .map_err(|e| failed(format!("root hash: {name}: {e}")))?;
    let got = verity_root_hash(&mut f, v.data_size, &salt)
        .map_err(|e| failed(format!("root hash: {name}: {e}")))?;
    if got != v.root_hash {
        return Err(failed(format!(
            "root hash: {name}: image computes {got}, manifest says {}",
            v.root_hash
        )));
    }
    checks.push(format!("root hash: {name}: recomputed {got}"));

    let uki = extract_uki(path, esp.offset).map_err(|e| {
        failed(format!(
            "uki: {name}: cannot extract EFI/BOOT/BOOTX64.EFI: {e}"
        ))
    })?;
    check_uki_cmdline(
        &uki,
        name,
        &v.root_hash,
        Some(&manifest.kernel.cmdline),
        "kernel.cmdline",
        checks,
    )
}

/// The UKI's command line must carry the manifest's root hash and be the
/// command line the manifest records for this medium.
fn check_uki_cmdline(
    uki: &[u8],
    name: &str,
    root_hash: &Sha256,
    recorded: Option<&String>,
    field: &str,
    checks: &mut Vec<String>,
) -> Result<(), VerifyError> {
    let cmdline = crate::pipeline::uki::read_cmdline(uki)
        .map_err(|e| failed(format!("uki: {name}: BOOTX64.EFI: {e:#}")))?;
    let want = format!("cairn.roothash={root_hash}");
    if !cmdline.split_ascii_whitespace().any(|t| t == want) {
        return Err(failed(format!(
            "uki: {name}: BOOTX64.EFI command line lacks {want}: {cmdline:?}"
        )));
    }
    if Some(&cmdline) != recorded {
        return Err(failed(format!(
            "uki: {name}: BOOTX64.EFI command line {cmdline:?} differs from manifest {field} {recorded:?}"
        )));
    }
    checks.push(format!(
        "uki: {name}: BOOTX64.EFI command line carries cairn.roothash and matches {MANIFEST}"
    ));
    Ok(())
}

/// The ISO: the root file's dm-verity root hash, recomputed from its extent
/// on the medium, and the command line of the UKI in the El Torito EFI image.
fn check_iso(
    path: &Path,
    name: &str,
    manifest: &Manifest,
    checks: &mut Vec<String>,
) -> Result<(), VerifyError> {
    let v = &manifest.verity;
    let salt = verity_salt(manifest)?;
    let files = crate::media::iso::list_iso(path)
        .map_err(|e| failed(format!("iso: {name}: cannot read its file table: {e:#}")))?;
    let root = files
        .iter()
        .find(|f| f.path == crate::media::iso::ISO_ROOT)
        .ok_or_else(|| failed(format!("iso: {name}: no {}", crate::media::iso::ISO_ROOT)))?;
    let len = std::fs::metadata(path)
        .map_err(|e| failed(format!("iso: {name}: {e}")))?
        .len();
    if !root.contiguous || v.data_size > root.size || root.offset.saturating_add(root.size) > len {
        return Err(failed(format!(
            "root hash: {name}: {} is not one extent of at least {} bytes inside the medium",
            crate::media::iso::ISO_ROOT,
            v.data_size
        )));
    }
    let mut f = File::open(path).map_err(|e| failed(format!("root hash: {name}: {e}")))?;
    f.seek(SeekFrom::Start(root.offset))
        .map_err(|e| failed(format!("root hash: {name}: {e}")))?;
    let got = verity_root_hash(&mut f, v.data_size, &salt)
        .map_err(|e| failed(format!("root hash: {name}: {e}")))?;
    if got != v.root_hash {
        return Err(failed(format!(
            "root hash: {name}: image computes {got}, manifest says {}",
            v.root_hash
        )));
    }
    checks.push(format!(
        "root hash: {name}: recomputed {got} from {}",
        crate::media::iso::ISO_ROOT
    ));
    let dir = tempfile::tempdir().map_err(|e| failed(format!("iso: temporary folder: {e}")))?;
    let efi = dir.path().join("efi.img");
    crate::media::iso::read_file_from_iso(path, crate::media::iso::ISO_EFI_IMG, &efi).map_err(
        |e| {
            failed(format!(
                "uki: {name}: cannot extract {}: {e:#}",
                crate::media::iso::ISO_EFI_IMG
            ))
        },
    )?;
    let uki = extract_uki(&efi, 0).map_err(|e| {
        failed(format!(
            "uki: {name}: cannot extract EFI/BOOT/BOOTX64.EFI: {e}"
        ))
    })?;
    check_uki_cmdline(
        &uki,
        name,
        &v.root_hash,
        manifest.kernel.iso_cmdline.as_ref(),
        "kernel.iso_cmdline",
        checks,
    )
}

/// Copy EFI/BOOT/BOOTX64.EFI out of the FAT ESP at `offset` with mtools.
fn extract_uki(image: &Path, offset: u64) -> Result<Vec<u8>, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let dest = dir.path().join("BOOTX64.EFI");
    let src = format!("{}@@{offset}", image.display());
    let sh = xshell::Shell::new().map_err(|e| e.to_string())?;
    sh.set_var("MTOOLS_SKIP_CHECK", "1");
    crate::host::runner::run(
        "uki",
        xshell::cmd!(sh, "mcopy -n -i {src} ::/EFI/BOOT/BOOTX64.EFI {dest}"),
    )
    .map_err(|e| {
        format!("{e:#}")
            .lines()
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    std::fs::read(&dest).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_known_vector() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn plain_names() {
        for ok in ["a.raw", "manifest.json", "x..y", ".hidden"] {
            assert!(is_plain_name(ok), "{ok}");
        }
        for no in ["", ".", "..", "../x", "a/b", "/abs", "a\0b", "a\\b", "a\rb"] {
            assert!(!is_plain_name(no), "{no:?}");
        }
    }

    #[test]
    fn sums_parsing_is_strict() {
        let d = "a".repeat(64);
        let good = format!("SHA256 (a.raw) = {d}\nSHA256 (manifest.json) = {d}\n");
        let m = parse_sums(good.as_bytes()).unwrap();
        assert_eq!(m.len(), 2);
        let bad = [
            String::new(),
            format!("SHA256 (a.raw) = {d}"),
            format!("SHA256 (a.raw) = {d}\n\n"),
            format!("SHA256 (a.raw) = {d}\r\n"),
            format!("SHA256 (a.raw) = {}\n", "A".repeat(64)),
            format!("SHA256 (a.raw) = {}\n", "a".repeat(63)),
            format!("SHA512 (a.raw) = {d}\n"),
            format!("SHA256 (../x) = {d}\n"),
            format!("SHA256 () = {d}\n"),
            format!("SHA256 (a.raw) = {d}\nSHA256 (a.raw) = {d}\n"),
            format!("SHA256 (a.raw)  = {d}\n"),
        ];
        for b in &bad {
            assert!(parse_sums(b.as_bytes()).is_err(), "{b:?}");
        }
        let e = parse_sums(format!("SHA256 (../x) = {d}\n").as_bytes()).unwrap_err();
        assert!(e.contains("line 1") && e.contains("../x"), "{e}");
    }
}
