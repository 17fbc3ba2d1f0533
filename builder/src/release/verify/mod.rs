//! `cairn verify`: checks a signed output folder (or one medium in it)
//! end to end: the signify signature over SHA256, every listed digest, the
//! manifest against SHA256, then what each medium claims, recomputed from
//! the medium itself (see `media`).
//! Invariant: every file is treated as hostile until its digest has been
//! checked against the signed SHA256: it is opened only through
//! `host::untrusted` (regular files only, never a symlink out of the
//! folder, never blocking), read with a cap, and parsers never panic.

pub(crate) mod gpt;
mod media;
pub mod report;
mod sums;
mod verity;

use std::collections::BTreeSet;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::host::digest::Sha256;
use crate::host::shown::Shown;
use crate::host::untrusted::{self, Links, UntrustedError, UntrustedFile};
use crate::release::manifest::Manifest;
use crate::release::signify::{PublicKey, Signature, SignifyError};

pub use gpt::{read_gpt, GptPartition};
pub use media::{read_qcow2_header, Qcow2Header};
pub use sums::{format_sums, is_plain_name, parse_sums};
pub use verity::verity_root_hash;

/// Name of the checksum list.
pub const SUMS: &str = "SHA256";
/// Name of the embedded signature over the checksum list.
pub const SUMS_SIG: &str = "SHA256.sig";
/// Name of the manifest.
pub const MANIFEST: &str = "manifest.json";

/// SHA256 and SHA256.sig are small text files; refuse anything bigger.
pub const MAX_SUMS_FILE: u64 = 1 << 20;
/// manifest.json carries the package list; generous but bounded.
pub const MAX_MANIFEST: u64 = 64 << 20;
/// Read buffer for hashing (a multiple of the verity block size).
const HASH_BUF: usize = 4 << 20;

/// Why verification stopped. `Display` is the one-line message.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The request itself is unusable (missing/garbled key, unreadable or
    /// garbled SHA256.sig, target not found, a file that is not a regular
    /// file in the folder): the CLI exits 2.
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

/// A file of the release folder that may not be read (not regular, a
/// symlink, too large, unreadable): exit 2, naming the file and the rule.
fn refused(e: UntrustedError) -> VerifyError {
    bad(format!("unsafe file: {e}"))
}

/// Opens a file of the release folder; an absent file is `missing: NAME`.
fn open_listed(folder: &Path, name: &str) -> Result<UntrustedFile, VerifyError> {
    untrusted::open(&folder.join(name), Links::Refuse).map_err(|e| {
        if e.is_not_found() {
            failed(format!("missing: {name}"))
        } else {
            refused(e)
        }
    })
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
    /// The signed SHA256 list, as verified (what `flash` compares against,
    /// so it never re-reads the folder).
    pub signed: std::collections::BTreeMap<String, Sha256>,
    /// The digest of the verified SHA256 file itself (flash receipts).
    pub sums_sha256: Sha256,
}

impl std::fmt::Display for VerifyReport {
    /// Human summary: `OK name version`, key, root hash, then each check
    /// and note on its own indented line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names and versions come from the manifest, checks quote file
        // names: each escaped (host::shown), one line each.
        writeln!(f, "OK {} {}", Shown(&self.name), Shown(&self.version))?;
        writeln!(f, "  key id:    {}", self.key_id)?;
        write!(f, "  root hash: {}", self.root_hash)?;
        for c in &self.checks {
            write!(f, "\n  ok    {}", Shown(c))?;
        }
        for n in &self.notes {
            write!(f, "\n  note  {}", Shown(n))?;
        }
        Ok(())
    }
}

/// A `NAME.raw.zst` decompresses (streaming, at most the map's size and
/// one byte) to the size and digest the signed data map `NAME.raw.map`
/// gives, which is the raw's signed digest when SHA256 lists the raw too.
/// The raw disk already checked whose stem is `stem` (`x` of `x.qcow2`):
/// its path, name and length.
fn raw_of_same_stem<'a>(
    raws: &'a [(&'a str, u64, PathBuf)],
    stem: &str,
) -> Option<(&'a Path, &'a str, u64)> {
    raws.iter()
        .find(|(r, _, _)| crate::media::RAW.stem(r) == stem)
        .map(|(r, l, p)| (p.as_path(), *r, *l))
}

fn check_zst(
    file: &std::fs::File,
    name: &str,
    sums: &std::collections::BTreeMap<String, Sha256>,
    maps: &[(String, Vec<u8>)],
    checks: &mut Vec<String>,
) -> Result<(), VerifyError> {
    let Some(raw) = crate::release::compressed::raw_name(name) else {
        return Ok(());
    };
    let map_name = format!("{raw}.map");
    let Some((_, bytes)) = maps.iter().find(|(m, _)| *m == map_name) else {
        return Err(failed(format!(
            "zst: {name}: no signed {map_name} gives its uncompressed digest"
        )));
    };
    let head: crate::release::datamap::DataMap = serde_json::from_slice(bytes)
        .map_err(|e| failed(format!("map: {map_name}: does not parse: {e}")))?;
    let m = crate::release::datamap::DataMap::parse(bytes, raw, head.size, head.sha256)
        .map_err(|e| failed(format!("map: {map_name}: {e}")))?;
    if let Some(d) = sums.get(raw) {
        if *d != m.sha256 {
            return Err(failed(format!(
                "map: {map_name}: gives sha256 {} for {raw}, {SUMS} {d}",
                m.sha256
            )));
        }
    }
    let (got, len) = crate::release::compressed::digest_of(file, m.size)
        .map_err(|e| failed(format!("zst: {name}: does not decompress: {e}")))?;
    if len != m.size || got != m.sha256 {
        return Err(failed(format!(
            "zst: {name}: decompresses to {len} bytes, sha256 {got}; {map_name} signs {} bytes, sha256 {}",
            m.size, m.sha256
        )));
    }
    checks.push(format!(
        "zst: {name}: decompresses to {raw}'s signed digest {got}"
    ));
    Ok(())
}

/// Verify `target` (an output folder, or one .raw/.iso in it) against the
/// signify public key file `pubkey`. With `production`, also refuse images
/// built with debug features.
pub fn verify(target: &Path, pubkey: &Path, production: bool) -> Result<VerifyReport, VerifyError> {
    let (folder, medium) = resolve_target(target)?;
    let mut checks = Vec::new();
    let mut notes = Vec::new();

    // 1. Key, signature, and the signed copy of SHA256.
    let key = PublicKey::read(pubkey).map_err(|e| bad(format!("public key: {e}")))?;
    if medium.is_none() {
        refuse_odd_entries(&folder)?;
    }
    let sums_bytes = signed_sums(&folder, &key, pubkey, &mut checks)?;
    let sums_sha256 = Sha256::of_bytes(&sums_bytes);

    // 2. Parse SHA256 strictly.
    let sums = parse_sums(&sums_bytes).map_err(failed)?;
    if !sums.contains_key(MANIFEST) {
        return Err(failed(format!("{SUMS}: does not list {MANIFEST}")));
    }
    checks.push(format!("{SUMS}: {} well-formed entries", sums.len()));

    // 3. Listed files exist with their digests; nothing unlisted.
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
            let mut v = vec![MANIFEST.to_string(), m.clone()];
            // A .raw.zst's uncompressed digest is in the raw's data map.
            if let Some(raw) = crate::release::compressed::raw_name(m) {
                let map = format!("{raw}.map");
                if sums.contains_key(&map) {
                    v.push(map);
                }
            }
            v
        }
        None => sums.keys().cloned().collect(),
    };
    let mut opened: Vec<(u64, String, UntrustedFile)> = Vec::new();
    for name in &to_check {
        let f = open_listed(&folder, name)?;
        opened.push((f.len, name.clone(), f));
    }
    if medium.is_none() {
        let unlisted = unlisted_files(&folder, &sums)?;
        if let Some(first) = unlisted.first() {
            return Err(failed(format!("unlisted: {first} is not in {SUMS}")));
        }
        checks.push(format!("unlisted: every file in the folder is in {SUMS}"));
    } else {
        notes.push("single medium: other files in the folder were not looked at".into());
    }
    // Cheap files first, so a bad manifest fails fast. The manifest is read
    // once: the bytes hashed are the bytes parsed.
    opened.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut manifest_bytes = Vec::new();
    // Data maps (`NAME.raw.map`), read once like the manifest.
    let mut maps: Vec<(String, Vec<u8>)> = Vec::new();
    // Each raw disk's map, parsed, and what the digest's read found.
    type Scanned = Result<Vec<Sha256>, String>;
    let mut map_checks: Vec<(String, crate::release::datamap::DataMap, Scanned)> = Vec::new();
    for (len, name, f) in &mut opened {
        let got = if name == MANIFEST {
            if *len > MAX_MANIFEST {
                return Err(refused(UntrustedError::TooLarge {
                    path: f.path.clone(),
                    max: MAX_MANIFEST,
                }));
            }
            manifest_bytes =
                read_exactly(f).map_err(|e| failed(format!("digest: {name}: cannot read: {e}")))?;
            Sha256::of_bytes(&manifest_bytes)
        } else if name.ends_with(".raw.map") {
            use crate::release::datamap::MAX_MAP_FILE;
            if *len > MAX_MAP_FILE {
                return Err(refused(UntrustedError::TooLarge {
                    path: f.path.clone(),
                    max: MAX_MAP_FILE,
                }));
            }
            let bytes =
                read_exactly(f).map_err(|e| failed(format!("digest: {name}: cannot read: {e}")))?;
            let d = Sha256::of_bytes(&bytes);
            maps.push((name.clone(), bytes));
            d
        } else if let Some(map) = map_of(&maps, name, *len, sums[name.as_str()]) {
            // A raw disk with its (already hashed) data map: the map is
            // checked on the digest's one read of the raw.
            let map = map?;
            let mut scan = crate::release::datamap::MapScan::new(&map);
            let d = hash_open_tapped(f, Some(&mut scan))
                .map_err(|e| failed(format!("digest: {name}: cannot read: {e}")))?;
            map_checks.push((name.clone(), map, scan.finish()));
            d
        } else {
            hash_open(f).map_err(|e| failed(format!("digest: {name}: cannot read: {e}")))?
        };
        let want = sums[name.as_str()];
        if got != want {
            return Err(failed(format!("digest: {name}: expected {want} got {got}")));
        }
        checks.push(format!("digest: {name}: {got}"));
    }

    // 4. The manifest (now authenticated) agrees with SHA256.
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
        if let Some((size, _, _)) = opened.iter().find(|(_, n, _)| *n == o.file) {
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

    // 5. What each medium claims, recomputed: raw disks first, so a qcow2
    // can be compared with a raw that has already passed.
    let root_hash = manifest.verity.root_hash;
    let mut raws: Vec<(&str, u64, PathBuf)> = Vec::new();
    for format in crate::media::FORMATS {
        use crate::media::Verify;
        for (len, name, f) in opened.iter().filter(|(_, n, _)| format.is_file(n)) {
            let path = folder.join(name);
            match format.verify {
                Verify::Disk => {
                    media::check_raw(&path, &f.file, *len, name, &manifest, &mut checks)?;
                    if let Some((_, m, scanned)) = map_checks.iter().find(|(r, _, _)| r == name) {
                        let map_name = format!("{name}.map");
                        // What a sparse flash writes is this raw: the gaps
                        // zero, each range its signed digest.
                        scanned
                            .as_ref()
                            .map_err(|e| e.clone())
                            .and_then(|got| m.check_digests(got))
                            .map_err(|e| failed(format!("map: {map_name}: {e}")))?;
                        checks.push(format!(
                            "map: {map_name}: {} ranges, {} of data, for this {name}",
                            m.ranges.len(),
                            crate::host::progress::human_bytes(m.mapped_bytes())
                        ));
                    }
                    raws.push((name, *len, path));
                }
                Verify::Iso => {
                    media::check_iso(&path, &f.file, *len, name, &manifest, &mut checks)?
                }
                Verify::SameAsRaw => {
                    let pair = raw_of_same_stem(&raws, format.stem(name));
                    media::check_qcow2(&path, &f.file, name, pair, &manifest, &mut checks)?
                }
                Verify::RawAndFooter => {
                    let pair = raw_of_same_stem(&raws, format.stem(name));
                    media::check_vhd(&path, &f.file, *len, name, pair, &manifest, &mut checks)?
                }
                Verify::Vmdk => {
                    let pair = raw_of_same_stem(&raws, format.stem(name));
                    media::check_vmdk(&path, &f.file, *len, name, pair, &manifest, &mut checks)?
                }
                Verify::Tarball => {
                    let pair = raw_of_same_stem(&raws, format.stem(name));
                    media::check_tarball(&f.file, name, pair, &manifest, &mut checks)?
                }
                // Below, against the signed data map.
                Verify::Compressed => {}
            }
        }
    }
    // The compressed raw disk (`NAME.raw.zst`): decompressed as a stream
    // against the signed data map's digest.
    for (_, name, f) in opened
        .iter()
        .filter(|(_, n, _)| crate::release::compressed::raw_name(n).is_some())
    {
        check_zst(&f.file, name, &sums, &maps, &mut checks)?;
    }
    for (_, name, _) in &opened {
        // A medium by an alias (`.img`): the table has no check for it.
        if crate::media::Format::of_file(name).is_some_and(|f| !f.is_file(name)) {
            let ext = extension(name);
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
        if let Some(p) = production_problems(&manifest).into_iter().next() {
            return Err(failed(format!("production: {p}")));
        }
        checks.push(
            "production: no debug console, no debug flag, no shell-opening cmdline word".into(),
        );
    }
    let media: Vec<String> = opened.iter().map(|(_, n, _)| n.clone()).collect();
    checks.extend(
        crate::release::secureboot::check(&folder, &media, &manifest, production)
            .map_err(failed)?,
    );
    notes.extend(crate::release::secureboot::notes(&manifest, production));

    Ok(VerifyReport {
        key_id: key.key_id(),
        name: manifest.image.name,
        version: manifest.image.version,
        root_hash,
        checks,
        notes,
        signed: sums,
        sums_sha256,
    })
}

/// The folder's SHA256, after SHA256.sig verified with `key` (read from
/// `pubkey`) and SHA256 proved identical to the signed copy in it.
fn signed_sums(
    folder: &Path,
    key: &PublicKey,
    pubkey: &Path,
    checks: &mut Vec<String>,
) -> Result<Vec<u8>, VerifyError> {
    let sig_path = folder.join(SUMS_SIG);
    let sig_bytes = untrusted::read(&sig_path, Links::Refuse, MAX_SUMS_FILE).map_err(|e| {
        if e.is_not_found() {
            bad(format!("signature: {e}"))
        } else {
            refused(e)
        }
    })?;
    let (sig, signed) = Signature::parse_embedded(&sig_bytes)
        .map_err(|e| bad(format!("signature: {}: {e}", sig_path.display())))?;
    match sig.verify(key, signed) {
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
    let sums_bytes = match untrusted::read(&folder.join(SUMS), Links::Refuse, MAX_SUMS_FILE) {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Err(failed(format!("missing: {SUMS}"))),
        Err(e) => return Err(refused(e)),
    };
    if sums_bytes != signed {
        return Err(failed(format!(
            "{SUMS} differs from the signed copy in {SUMS_SIG}"
        )));
    }
    checks.push(format!(
        "{SUMS}: identical to the signed copy in {SUMS_SIG}"
    ));

    Ok(sums_bytes)
}

/// The signed SHA256 list of the release folder `folder`, once SHA256.sig
/// verifies with `pubkey` and SHA256 is its signed copy: `(key id, list,
/// digest of SHA256)`. No listed file is read (`cairn flash` with a
/// version 2 data map checks each range's digest as it writes).
pub fn signed_list(
    folder: &Path,
    pubkey: &Path,
) -> Result<(String, std::collections::BTreeMap<String, Sha256>, Sha256), VerifyError> {
    let key = PublicKey::read(pubkey).map_err(|e| bad(format!("public key: {e}")))?;
    let sums_bytes = signed_sums(folder, &key, pubkey, &mut Vec::new())?;
    let sums = parse_sums(&sums_bytes).map_err(failed)?;
    Ok((key.key_id(), sums, Sha256::of_bytes(&sums_bytes)))
}

/// What [`check_release`] proved about one medium and its manifest.
#[derive(Debug)]
pub struct CheckedRelease {
    /// Key id of the public key SHA256.sig verified with.
    pub key_id: String,
    /// The manifest, read once: the bytes hashed are the bytes parsed.
    pub manifest: Manifest,
    /// One line per passed check.
    pub checks: Vec<String>,
}

/// Before a command trusts the manifest beside `image` (a .raw, .qcow2 or
/// .iso in its release folder; `cairn site apply`, `cairn run --pubkey`):
/// SHA256.sig verifies with `pubkey`, SHA256 is its signed copy, and
/// manifest.json and `image` have the digests SHA256 lists, and the
/// manifest lists `image` among its outputs. The first steps of [`verify`],
/// the same code; no medium's content is recomputed (that is `verify`).
pub fn check_release(image: &Path, pubkey: &Path) -> Result<CheckedRelease, VerifyError> {
    let name = image
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| is_medium(n))
        .ok_or_else(|| {
            bad(format!(
                "{}: expected a {} medium in its release folder",
                crate::host::shown::path(image),
                crate::media::extensions(|_| true)
            ))
        })?
        .to_string();
    let parent = match image.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let folder = std::fs::canonicalize(parent)
        .map_err(|e| bad(format!("{}: {e}", crate::host::shown::path(parent))))?;
    let key = PublicKey::read(pubkey).map_err(|e| bad(format!("public key: {e}")))?;
    let mut checks = Vec::new();
    let sums_bytes = signed_sums(&folder, &key, pubkey, &mut checks)?;
    let sums = parse_sums(&sums_bytes).map_err(failed)?;
    let mut manifest_bytes = Vec::new();
    for listed in [MANIFEST, name.as_str()] {
        let want = *sums
            .get(listed)
            .ok_or_else(|| failed(format!("unlisted: {listed} is not in {SUMS}")))?;
        let mut f = open_listed(&folder, listed)?;
        let got = if listed == MANIFEST {
            if f.len > MAX_MANIFEST {
                return Err(refused(UntrustedError::TooLarge {
                    path: f.path.clone(),
                    max: MAX_MANIFEST,
                }));
            }
            manifest_bytes = read_exactly(&mut f)
                .map_err(|e| failed(format!("digest: {listed}: cannot read: {e}")))?;
            Sha256::of_bytes(&manifest_bytes)
        } else {
            hash_open(&mut f).map_err(|e| failed(format!("digest: {listed}: cannot read: {e}")))?
        };
        if got != want {
            return Err(failed(format!(
                "digest: {listed}: expected {want} got {got}"
            )));
        }
        checks.push(format!("digest: {listed}: {got}"));
    }
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| failed(format!("manifest: {MANIFEST} does not parse: {e}")))?;
    if !manifest.outputs.iter().any(|o| o.file == name) {
        return Err(failed(format!(
            "manifest: {name} is not in the outputs of {MANIFEST}"
        )));
    }
    Ok(CheckedRelease {
        key_id: key.key_id(),
        manifest,
        checks,
    })
}

/// The folder to check (absolute, so no file name in it can read as a
/// tool's `protocol:` prefix) and, for a single medium, its file name.
fn resolve_target(target: &Path) -> Result<(PathBuf, Option<String>), VerifyError> {
    let meta = std::fs::metadata(target).map_err(|e| bad(format!("{}: {e}", target.display())))?;
    let absolute =
        |p: &Path| std::fs::canonicalize(p).map_err(|e| bad(format!("{}: {e}", p.display())));
    if meta.is_dir() {
        return Ok((absolute(target)?, None));
    }
    let name = target.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        bad(format!(
            "{}: not a file name cairn writes",
            target.display()
        ))
    })?;
    // A medium checked against another (a qcow2 against its raw disk) is
    // checked with its folder.
    let alone = |f: &crate::media::Format| f.verify != crate::media::Verify::SameAsRaw;
    let zst = crate::release::compressed::raw_name(name).is_some();
    if !zst
        && !crate::media::FORMATS
            .iter()
            .any(|f| alone(f) && f.is_file(name))
    {
        return Err(bad(format!(
            "{}: expected an output folder or a {} medium (or a .raw.zst)",
            target.display(),
            crate::media::extensions(alone)
        )));
    }
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((absolute(&parent)?, Some(name.to_string())))
}

/// A release folder holds regular files only: a symlink, FIFO, socket,
/// device or sub-folder in it is refused before anything is read.
fn refuse_odd_entries(folder: &Path) -> Result<(), VerifyError> {
    let mut odd = Vec::new();
    for e in list(folder)? {
        let ft = e
            .file_type()
            .map_err(|err| bad(format!("cannot list {}: {err}", folder.display())))?;
        if !ft.is_file() {
            odd.push(e.path());
        }
    }
    odd.sort();
    if let Some(first) = odd.first() {
        // Opening it without following or blocking gives the precise rule.
        return Err(match untrusted::open(first, Links::Refuse) {
            Err(e) => refused(e),
            Ok(_) => bad(format!(
                "unsafe file: {}: is not a regular file",
                first.display()
            )),
        });
    }
    Ok(())
}

fn list(folder: &Path) -> Result<Vec<std::fs::DirEntry>, VerifyError> {
    let rd = std::fs::read_dir(folder)
        .map_err(|e| bad(format!("cannot list {}: {e}", folder.display())))?;
    rd.map(|e| e.map_err(|e| bad(format!("cannot list {}: {e}", folder.display()))))
        .collect()
}

/// Files in the folder that SHA256 does not list (sorted); the signer
/// lists every file but SHA256 and SHA256.sig.
fn unlisted_files(
    folder: &Path,
    sums: &std::collections::BTreeMap<String, Sha256>,
) -> Result<Vec<String>, VerifyError> {
    let mut out: Vec<String> = list(folder)?
        .into_iter()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != SUMS && n != SUMS_SIG && !sums.contains_key(n))
        .collect();
    out.sort();
    Ok(out)
}

fn extension(name: &str) -> String {
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => ext.to_ascii_lowercase(),
        _ => String::new(),
    }
}

fn is_medium(name: &str) -> bool {
    crate::media::Format::of_file(name).is_some()
}

/// The `len` bytes fstat reported when `f` was opened, refusing a file
/// that has shrunk or grown since (so a read never runs past that size).
fn read_exactly(f: &mut UntrustedFile) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(f.len as usize);
    f.file.seek(SeekFrom::Start(0))?;
    (&f.file).take(f.len + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 != f.len {
        return Err(changed(f.len));
    }
    Ok(buf)
}

fn changed(len: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the file changed size while it was read (it was {len} bytes)"),
    )
}

/// Streamed SHA-256 of an opened file, exactly its opened size.
fn hash_open(f: &mut UntrustedFile) -> io::Result<Sha256> {
    hash_open_tapped(f, None)
}

/// The parsed data map of the raw disk `name` (`len` bytes, listed with
/// `sha256`) if its `NAME.map` was read: `None` without one.
fn map_of(
    maps: &[(String, Vec<u8>)],
    name: &str,
    len: u64,
    sha256: Sha256,
) -> Option<Result<crate::release::datamap::DataMap, VerifyError>> {
    let map_name = format!("{name}.map");
    let (_, bytes) = maps.iter().find(|(m, _)| *m == map_name)?;
    Some(
        crate::release::datamap::DataMap::parse(bytes, name, len, sha256)
            .map_err(|e| failed(format!("map: {map_name}: {e}"))),
    )
}

/// [`hash_open`], passing what it reads to `tap`.
fn hash_open_tapped(
    f: &mut UntrustedFile,
    tap: Option<&mut dyn crate::host::digest::Tap>,
) -> io::Result<Sha256> {
    // Holes (most of a raw disk: the state partition) are hashed as the
    // zeros they read as, without reading them (host::digest::Spliced).
    let mut r = crate::host::direct::Reader::buffered(f.file.try_clone()?);
    let mut s = match tap {
        Some(t) => crate::host::digest::Spliced::with_tap(t),
        None => crate::host::digest::Spliced::new(None),
    };
    s.range(&mut r, &f.path, 0, f.len)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e:#}")))?;
    // A file that grew while it was hashed is not the file measured.
    if f.file.metadata()?.len() != f.len {
        return Err(changed(f.len));
    }
    Ok(s.finish())
}

/// Streamed SHA-256 of a regular file (a symlink is followed; a FIFO or
/// device is refused rather than waited on).
pub fn hash_file(path: &Path) -> io::Result<Sha256> {
    let mut f = untrusted::open(path, Links::Follow)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    hash_open(&mut f)
}

/// Words `build::kernel_cmdline` puts on every command line.
const CAIRN_OWN_WORDS: &[&str] = &["systemd.gpt_auto=0", "systemd.firstboot=0"];

/// Every `[debug]` flag and shell-opening command-line word a production
/// release must not have (the debug console is checked first, on its own).
pub fn production_problems(m: &crate::release::manifest::Manifest) -> Vec<String> {
    let mut out = Vec::new();
    if m.flags.debug_unencrypted_state {
        out.push("image has [debug] unencrypted_state (disk state without encryption)".to_string());
    }
    if !m.flags.debug_cmdline.is_empty() {
        out.push(format!(
            "image lets [debug] cmdline words through: {}",
            m.flags.debug_cmdline.join(" ")
        ));
    }
    let lines = std::iter::once(&m.kernel.cmdline).chain(m.kernel.iso_cmdline.iter());
    for word in lines.flat_map(|l| l.split_whitespace()) {
        // The values cairn itself writes on every image are not a problem;
        // any other value of those keys is.
        if CAIRN_OWN_WORDS.contains(&word) {
            continue;
        }
        if let Some((_, why)) = crate::recipe::validate::boot::refused_cmdline_word(word) {
            out.push(format!("kernel command line has {word:?} ({why})"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_reads_exactly_the_opened_size() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(hash_file(&p).unwrap(), Sha256::of_bytes(b"abc"));
        let mut f = untrusted::open(&p, Links::Refuse).unwrap();
        std::fs::write(&p, b"abcd").unwrap();
        assert!(hash_open(&mut f).is_err(), "grew");
        let mut f = untrusted::open(&p, Links::Refuse).unwrap();
        std::fs::write(&p, b"ab").unwrap();
        assert!(read_exactly(&mut f).is_err(), "shrank");
    }
}

#[cfg(test)]
mod production_tests {
    use super::production_problems;

    fn fixture() -> crate::release::manifest::Manifest {
        serde_json::from_str(include_str!("../../../tests/fixtures/manifest-a.json"))
            .expect("fixture is a manifest")
    }

    #[test]
    fn production_refuses_every_debug_flag_and_shell_word() {
        // Control: the fixture (a plain image) has none.
        assert_eq!(production_problems(&fixture()), Vec::<String>::new());
        let mut m = fixture();
        m.flags.debug_unencrypted_state = true;
        assert!(production_problems(&m)[0].contains("unencrypted_state"));
        let mut m = fixture();
        m.flags.debug_cmdline = vec!["rd.break".into()];
        assert!(production_problems(&m)[0].contains("rd.break"));
        for word in [
            "init=/bin/sh",
            "rdinit=/bin/sh",
            "systemd.debug_shell",
            "rd.break",
            "single",
        ] {
            let mut m = fixture();
            m.kernel.cmdline.push_str(&format!(" {word}"));
            let p = production_problems(&m);
            assert_eq!(p.len(), 1, "{word}: {p:?}");
            assert!(p[0].contains(word), "{word}: {p:?}");
        }
        let mut m = fixture();
        m.kernel.iso_cmdline = Some("console=ttyS0 init=/bin/sh".into());
        assert!(production_problems(&m)[0].contains("init=/bin/sh"));
    }
}

#[cfg(test)]
mod production_cmdline_tests {
    #[test]
    fn cairns_own_command_line_passes_production() {
        let line = "console=tty0 console=ttyS0,115200 cairn.roothash=ab cairn.medium=disk cairn.state=disk cairn.ram_size=50% systemd.gpt_auto=0 systemd.firstboot=0 panic=0 no_timer_check cairn.state_grow=1 cairn.medium=iso cairn.state=ram";
        for w in line.split_whitespace() {
            if super::CAIRN_OWN_WORDS.contains(&w) {
                continue;
            }
            assert_eq!(
                crate::recipe::validate::boot::refused_cmdline_word(w),
                None,
                "{w}"
            );
        }
    }
}
