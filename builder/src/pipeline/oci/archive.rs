//! Reading image archives (OCI image layout tarballs, `docker save`
//! archives) into verified images, and writing verified images back as
//! deterministic OCI layout tarballs.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use sha2::Digest;

use super::json::{self, media_types as mt, Descriptor, Platform};
use super::layer::{scan, Compression, LayerPolicy, LayerSummary, Rules};
use super::{Oci, OciError, MAX_JSON_BYTES};
use crate::host::digest::Sha256;
use crate::host::limits::{Cap, CappedReader, CountingReader, Limits, Meter};
use crate::host::tar::{join, split_name, Kind, Name, TarReader, TarWriter};

/// At most this many layers in an image.
const MAX_LAYERS: usize = 500;
/// Nested indexes followed at most this deep.
const MAX_INDEX_DEPTH: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// An OCI image layout (oci-layout, index.json, blobs/sha256/...).
    OciLayout,
    /// A `docker save` archive (manifest.json, config, layer tars),
    /// converted to an OCI manifest.
    DockerSave,
}

/// How to load an archive.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub policy: LayerPolicy,
    /// Folder for the private copy of the blobs (a temporary folder under
    /// it); the system temp folder if unset.
    pub scratch: Option<PathBuf>,
    /// Caps on the archive and each layer.
    pub limits: Limits,
    /// Bytes the layers may unpack to where they unpack at boot (the state
    /// partition), if known: an image that cannot fit is refused now.
    pub unpack_budget: Option<u64>,
}

#[derive(Debug)]
pub struct LoadedLayer {
    /// As in the manifest (for docker archives: chosen from the content).
    pub media_type: String,
    /// Digest, diff_id, sizes and entry counts, all checked.
    pub summary: LayerSummary,
    blob: PathBuf,
}

impl LoadedLayer {
    pub fn digest(&self) -> Sha256 {
        self.summary.digest
    }

    /// The verified blob, in the image's private scratch folder.
    pub fn blob_path(&self) -> &Path {
        &self.blob
    }
}

/// An image whose every blob was checked: the manifest against the pin,
/// config and layers against their descriptors, diff_ids against the
/// config, every layer entry against the policy.
#[derive(Debug)]
pub struct LoadedImage {
    pub format: ArchiveFormat,
    pub manifest_digest: Sha256,
    pub manifest_media_type: String,
    /// The manifest's exact bytes (their sha256 is `manifest_digest`).
    pub manifest: Vec<u8>,
    pub config_digest: Sha256,
    pub config: Vec<u8>,
    pub layers: Vec<LoadedLayer>,
    /// Names the archive gave the image (OCI ref.name annotations or
    /// docker RepoTags).
    pub ref_names: Vec<String>,
    pub policy: LayerPolicy,
    /// The caps it was loaded with; unpacking holds them again.
    pub limits: Limits,
    _store: tempfile::TempDir,
}

impl LoadedImage {
    /// Bytes of manifest, config and layer blobs.
    pub fn size(&self) -> u64 {
        self.manifest.len() as u64
            + self.config.len() as u64
            + self.layers.iter().map(|l| l.summary.size).sum::<u64>()
    }
}

/// A regular file of the archive, copied into the scratch folder.
struct Stored {
    path: PathBuf,
    size: u64,
    digest: Sha256,
}

struct Members {
    files: HashMap<String, Stored>,
}

impl Members {
    fn get(&self, name: &str, what: &str) -> Result<&Stored, OciError> {
        self.files.get(name).ok_or_else(|| OciError::MissingFile {
            what: what.to_string(),
            name: name.to_string(),
        })
    }

    fn read_small(&self, s: &Stored, what: &str) -> Result<Vec<u8>, OciError> {
        if s.size > MAX_JSON_BYTES {
            return Err(OciError::TooLarge {
                what: what.to_string(),
                size: s.size,
                cap: MAX_JSON_BYTES,
            });
        }
        std::fs::read(&s.path).map_err(|e| OciError::io(format!("cannot read {what}"), e))
    }

    /// The blob a descriptor names, its digest and size checked.
    fn blob(&self, d: &Descriptor, what: &str) -> Result<(&Stored, Sha256), OciError> {
        let digest = json::parse_digest(what, &d.digest)?;
        let s = self
            .files
            .get(&format!("blobs/sha256/{}", digest.hex()))
            .ok_or_else(|| OciError::MissingBlob {
                what: what.to_string(),
                digest,
            })?;
        if s.size != d.size {
            return Err(OciError::SizeMismatch {
                what: format!("{what} {}", Oci(&digest)),
                expected: d.size,
                actual: s.size,
            });
        }
        if s.digest != digest {
            return Err(OciError::DigestMismatch {
                what: what.to_string(),
                expected: digest,
                actual: s.digest,
            });
        }
        Ok((s, digest))
    }

    fn small_blob(&self, d: &Descriptor, what: &str) -> Result<(Vec<u8>, Sha256), OciError> {
        let (s, digest) = self.blob(d, what)?;
        Ok((
            self.read_small(s, &format!("{what} {}", Oci(&digest)))?,
            digest,
        ))
    }
}

fn is_blob_name(name: &str) -> Option<&str> {
    let hex = name.strip_prefix("blobs/sha256/")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

/// Copies every regular member into `dir`, hashing it; refuses unsafe
/// names, links, devices and duplicates; checks `blobs/sha256/HEX` names.
fn extract(path: &Path, dir: &Path, limits: &Limits) -> Result<Members, OciError> {
    let f = crate::host::tree::open_regular(path)
        .map_err(|e| OciError::io(format!("{e:#}"), io::Error::other("not a regular file")))?;
    let compressed = Rc::new(Cell::new(0u64));
    let hit: Rc<Cell<Option<Cap>>> = Rc::new(Cell::new(None));
    let mut r = BufReader::with_capacity(1 << 20, CountingReader::new(f, compressed.clone()));
    let gz = {
        use io::BufRead;
        let head = r
            .fill_buf()
            .map_err(|e| OciError::io(format!("cannot read {}", path.display()), e))?;
        crate::host::is_gzip(head)
    };
    let input: Box<dyn Read> = if gz {
        Box::new(flate2::bufread::MultiGzDecoder::new(r))
    } else {
        Box::new(r)
    };
    let input = CappedReader::new(input, compressed, *limits, hit.clone());
    let cap_error = |cap: Cap| OciError::Cap {
        what: "the archive".into(),
        message: cap.message(limits),
    };
    let mut t = TarReader::new(input);
    let mut files = HashMap::new();
    let mut seen = HashSet::new();
    let mut n = 0usize;
    let mut meter = Meter::default();
    loop {
        let e = match t.next_entry() {
            Ok(Some(e)) => e,
            Ok(None) => break,
            Err(e) => {
                if let Some(cap) = hit.get() {
                    return Err(cap_error(cap));
                }
                if let Err(i) = crate::host::interrupt::check() {
                    return Err(OciError::io("stopped", io::Error::other(i)));
                }
                return Err(OciError::CorruptArchive(e.to_string()));
            }
        };
        n += 1;
        meter.entry(limits).map_err(cap_error)?;
        meter.file(e.size, limits).map_err(cap_error)?;
        let shown = String::from_utf8_lossy(&e.name).into_owned();
        let unsafe_entry = |reason: &str| OciError::UnsafeEntry {
            name: shown.clone(),
            reason: reason.to_string(),
        };
        let parts = match split_name(&e.name) {
            Name::Absolute => return Err(unsafe_entry("is an absolute path")),
            Name::DotDot => return Err(unsafe_entry("climbs out with \"..\"")),
            Name::Nul => return Err(unsafe_entry("has a NUL byte in its name")),
            Name::Parts(p) => p,
        };
        let name =
            String::from_utf8(join(&parts)).map_err(|_| unsafe_entry("is not valid UTF-8"))?;
        if !seen.insert(name.clone()) && !(e.kind == Kind::Dir) {
            return Err(unsafe_entry("appears twice in the archive"));
        }
        match e.kind {
            Kind::Dir => continue,
            Kind::File => {}
            Kind::Symlink => {
                return Err(unsafe_entry(
                    "is a symlink; archive members must be regular files",
                ))
            }
            Kind::Hardlink => {
                return Err(unsafe_entry(
                    "is a hardlink; archive members must be regular files",
                ))
            }
            _ => return Err(unsafe_entry("is a device node, fifo or unknown type")),
        }
        if name.is_empty() {
            return Err(unsafe_entry("names the archive root"));
        }
        let dest = dir.join(format!("m{n}"));
        let out = File::create(&dest)
            .map_err(|e| OciError::io(format!("cannot create {}", dest.display()), e))?;
        let mut w = HashWrite {
            w: BufWriter::with_capacity(1 << 20, out),
            h: sha2::Sha256::new(),
            n: 0,
        };
        io::copy(&mut t.data(), &mut w).map_err(|err| {
            if let Some(cap) = hit.get() {
                cap_error(cap)
            } else if let Err(i) = crate::host::interrupt::check() {
                OciError::io("stopped", io::Error::other(i))
            } else if err.kind() == io::ErrorKind::UnexpectedEof {
                OciError::CorruptArchive(format!("{name:?} is truncated"))
            } else {
                OciError::io(format!("cannot copy {name:?} out of the archive"), err)
            }
        })?;
        w.w.flush()
            .map_err(|e| OciError::io(format!("cannot write {}", dest.display()), e))?;
        let digest = Sha256(w.h.finalize().into());
        if let Some(hex) = is_blob_name(&name) {
            let expected = Sha256::from_hex(hex).map_err(|_| unsafe_entry("bad digest name"))?;
            if expected != digest {
                return Err(OciError::DigestMismatch {
                    what: format!("blob {name}"),
                    expected,
                    actual: digest,
                });
            }
        }
        files.insert(
            name,
            Stored {
                path: dest,
                size: w.n,
                digest,
            },
        );
    }
    Ok(Members { files })
}

struct HashWrite<W> {
    w: W,
    h: sha2::Sha256,
    n: u64,
}

impl<W: Write> Write for HashWrite<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.w.write(buf)?;
        self.h.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

/// Loads an OCI image layout tarball or a `docker save` archive (either
/// may be gzip-compressed) with the default policy, checking everything
/// against `pin`, the image manifest's digest.
pub fn load_archive(path: &Path, pin: &Sha256) -> Result<LoadedImage, OciError> {
    load_archive_with(path, pin, &LoadOptions::default())
}

pub fn load_archive_with(
    path: &Path,
    pin: &Sha256,
    opts: &LoadOptions,
) -> Result<LoadedImage, OciError> {
    let store = match &opts.scratch {
        Some(d) => tempfile::Builder::new().prefix(".cairn-oci-").tempdir_in(d),
        None => tempfile::Builder::new().prefix("cairn-oci-").tempdir(),
    }
    .map_err(|e| OciError::io("cannot create a scratch folder", e))?;
    let members = extract(path, store.path(), &opts.limits)?;
    let chosen = if members.files.contains_key("index.json") {
        choose_oci(&members, pin)?
    } else if members.files.contains_key("manifest.json") {
        choose_docker(&members, pin)?
    } else {
        return Err(OciError::Invalid(
            "not an image archive: no index.json (OCI layout) and no manifest.json (docker save)"
                .into(),
        ));
    };
    let Chosen {
        format,
        manifest,
        manifest_media_type,
        manifest_digest,
        config,
        config_digest,
        layers,
        diff_ids,
        ref_names,
    } = chosen;
    let mut loaded = Vec::new();
    for (i, (l, diff_id)) in layers.into_iter().zip(diff_ids).enumerate() {
        let what = format!("layer {} ({} of the image)", Oci(&l.digest), i + 1);
        let f = File::open(&l.path).map_err(|e| OciError::io(format!("cannot open {what}"), e))?;
        let s = scan(
            BufReader::with_capacity(1 << 20, f),
            &Rules::layer(&opts.policy, &opts.limits),
            None,
        );
        if s.capped() {
            return Err(s
                .into_result()
                .err()
                .unwrap_or_else(|| OciError::Invalid(format!("{what}: stopped at a cap"))));
        }
        if s.digest != l.digest || s.size != l.size {
            return Err(OciError::DigestMismatch {
                what,
                expected: l.digest,
                actual: s.digest,
            });
        }
        if s.diff_id != diff_id && s.outcome.is_ok() {
            return Err(OciError::DigestMismatch {
                what: format!("{what}: uncompressed content vs the config's rootfs.diff_ids"),
                expected: diff_id,
                actual: s.diff_id,
            });
        }
        let summary = s.into_result()?;
        if summary.diff_id != diff_id {
            return Err(OciError::DigestMismatch {
                what: format!("{what}: uncompressed content vs the config's rootfs.diff_ids"),
                expected: diff_id,
                actual: summary.diff_id,
            });
        }
        if let Some(gz) = l.gzip {
            if gz != (summary.compression == Compression::Gzip) {
                return Err(OciError::Invalid(format!(
                    "{what}: the media type {:?} does not match the content ({})",
                    l.media_type,
                    if gz { "not gzip" } else { "gzip" }
                )));
            }
        }
        loaded.push(LoadedLayer {
            media_type: l.media_type,
            summary,
            blob: l.path,
        });
    }
    if let Some(budget) = opts.unpack_budget {
        let total: u64 = loaded.iter().map(|l| l.summary.uncompressed_size).sum();
        if total > budget {
            return Err(OciError::Cap {
                what: format!("the image's layers unpack to {total} bytes at boot,"),
                message: format!(
                    "more than the {budget}-byte state partition they unpack into (raise `[disk] state_size`, or use a smaller image)"
                ),
            });
        }
    }
    // Free the members nobody references.
    let keep: HashSet<&Path> = loaded.iter().map(|l| l.blob.as_path()).collect();
    if let Ok(rd) = std::fs::read_dir(store.path()) {
        for e in rd.flatten() {
            if !keep.contains(e.path().as_path()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(LoadedImage {
        format,
        manifest_digest,
        manifest_media_type,
        manifest,
        config_digest,
        config,
        layers: loaded,
        ref_names,
        policy: opts.policy,
        limits: opts.limits,
        _store: store,
    })
}

struct ChosenLayer {
    media_type: String,
    digest: Sha256,
    size: u64,
    path: PathBuf,
    /// What the media type says (None: docker archive, read from content).
    gzip: Option<bool>,
}

struct Chosen {
    format: ArchiveFormat,
    manifest: Vec<u8>,
    manifest_media_type: String,
    manifest_digest: Sha256,
    config: Vec<u8>,
    config_digest: Sha256,
    layers: Vec<ChosenLayer>,
    diff_ids: Vec<Sha256>,
    ref_names: Vec<String>,
}

fn amd64(p: &Option<Platform>) -> bool {
    match p {
        None => true,
        Some(p) => p.os == "linux" && p.architecture == "amd64",
    }
}

/// Parses the config: linux/amd64, layered rootfs, one diff_id per layer.
fn check_config(bytes: &[u8], what: &str, layers: usize) -> Result<Vec<Sha256>, OciError> {
    let c: json::ImageConfig = json::parse(what, bytes)?;
    if c.os != "linux" || c.architecture != "amd64" {
        return Err(OciError::Platform {
            what: what.to_string(),
            found: format!("{}/{}", c.os, c.architecture),
        });
    }
    if c.rootfs.kind != "layers" {
        return Err(OciError::Invalid(format!(
            "{what}: rootfs.type is {:?}, not \"layers\"",
            c.rootfs.kind
        )));
    }
    if c.rootfs.diff_ids.len() != layers {
        return Err(OciError::Invalid(format!(
            "{what}: {} diff_ids for {layers} layers",
            c.rootfs.diff_ids.len()
        )));
    }
    c.rootfs
        .diff_ids
        .iter()
        .map(|d| json::parse_digest(&format!("{what}: rootfs.diff_ids"), d))
        .collect()
}

fn choose_oci(m: &Members, pin: &Sha256) -> Result<Chosen, OciError> {
    let layout = m.get("oci-layout", "OCI image layout marker")?;
    let layout: json::OciLayout = json::parse("oci-layout", &m.read_small(layout, "oci-layout")?)?;
    if layout.version != "1.0.0" {
        return Err(OciError::Invalid(format!(
            "oci-layout: unsupported imageLayoutVersion {:?}",
            layout.version
        )));
    }
    let index_bytes = m.read_small(m.get("index.json", "the image index")?, "index.json")?;
    let index: json::Index = json::parse("index.json", &index_bytes)?;
    let mut candidates: Vec<Descriptor> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    walk_index(m, &index, "index.json", 0, &mut candidates, &mut skipped)?;
    let mut digests: Vec<Sha256> = Vec::new();
    let mut chosen: Option<Descriptor> = None;
    for d in candidates {
        let digest = json::parse_digest("index.json: manifest", &d.digest)?;
        if !digests.contains(&digest) {
            digests.push(digest);
        }
        if digest == *pin && chosen.is_none() {
            chosen = Some(d);
        }
    }
    let desc = match chosen {
        Some(d) => d,
        None if digests.is_empty() => {
            return Err(OciError::Invalid(format!(
                "the archive has no linux/amd64 image manifest{}",
                if skipped.is_empty() {
                    String::new()
                } else {
                    format!(" (skipped: {})", skipped.join(", "))
                }
            )))
        }
        None => {
            return Err(OciError::PinMismatch {
                expected: *pin,
                actual: digests,
            })
        }
    };
    let (manifest, manifest_digest) = m.small_blob(&desc, "image manifest")?;
    let man: json::Manifest = json::parse("image manifest", &manifest)?;
    if man.schema_version != 2 {
        return Err(OciError::Invalid(format!(
            "image manifest: schemaVersion {} (only 2)",
            man.schema_version
        )));
    }
    if let Some(t) = &man.media_type {
        if *t != desc.media_type {
            return Err(OciError::Invalid(format!(
                "image manifest: mediaType {t:?} but the index says {:?}",
                desc.media_type
            )));
        }
    }
    if man.config.media_type != mt::OCI_CONFIG && man.config.media_type != mt::DOCKER_CONFIG {
        return Err(OciError::UnsupportedMediaType {
            what: "image config".into(),
            media_type: man.config.media_type.clone(),
        });
    }
    if man.layers.len() > MAX_LAYERS {
        return Err(OciError::Invalid(format!(
            "image manifest: {} layers (limit {MAX_LAYERS})",
            man.layers.len()
        )));
    }
    let mut layers = Vec::new();
    for (i, l) in man.layers.iter().enumerate() {
        let what = format!("layer {} of the image", i + 1);
        let gzip =
            json::layer_gzip(&l.media_type).ok_or_else(|| OciError::UnsupportedMediaType {
                what: what.clone(),
                media_type: l.media_type.clone(),
            })?;
        if !l.urls.is_empty() {
            return Err(OciError::Invalid(format!(
                "{what}: foreign layer with urls; every layer must be in the archive"
            )));
        }
        let (s, digest) = m.blob(l, &what)?;
        layers.push(ChosenLayer {
            media_type: l.media_type.clone(),
            digest,
            size: s.size,
            path: s.path.clone(),
            gzip: Some(gzip),
        });
    }
    let (config, config_digest) = m.small_blob(&man.config, "image config")?;
    let diff_ids = check_config(&config, "image config", layers.len())?;
    let mut ref_names: Vec<String> = index
        .manifests
        .iter()
        .filter(|d| d.digest == desc.digest)
        .filter_map(|d| d.annotations.get(mt::REF_NAME).cloned())
        .collect();
    ref_names.dedup();
    Ok(Chosen {
        format: ArchiveFormat::OciLayout,
        manifest,
        manifest_media_type: desc.media_type,
        manifest_digest,
        config,
        config_digest,
        layers,
        diff_ids,
        ref_names,
    })
}

fn walk_index(
    m: &Members,
    index: &json::Index,
    what: &str,
    depth: usize,
    out: &mut Vec<Descriptor>,
    skipped: &mut Vec<String>,
) -> Result<(), OciError> {
    if index.schema_version != 2 {
        return Err(OciError::Invalid(format!(
            "{what}: schemaVersion {} (only 2)",
            index.schema_version
        )));
    }
    for d in &index.manifests {
        if !amd64(&d.platform) {
            if let Some(p) = &d.platform {
                skipped.push(format!("{}/{}", p.os, p.architecture));
            }
            continue;
        }
        if json::is_manifest(&d.media_type) {
            out.push(d.clone());
        } else if json::is_index(&d.media_type) {
            if depth >= MAX_INDEX_DEPTH {
                return Err(OciError::Invalid(format!(
                    "{what}: image indexes nested deeper than {MAX_INDEX_DEPTH}"
                )));
            }
            let (bytes, digest) = m.small_blob(d, "nested image index")?;
            let sub: json::Index = json::parse("nested image index", &bytes)?;
            let sub_what = format!("image index {}", Oci(&digest));
            walk_index(m, &sub, &sub_what, depth + 1, out, skipped)?;
        } else {
            skipped.push(format!("{:?}", d.media_type));
        }
    }
    Ok(())
}

fn choose_docker(m: &Members, pin: &Sha256) -> Result<Chosen, OciError> {
    let bytes = m.read_small(m.get("manifest.json", "docker manifest")?, "manifest.json")?;
    let entries: Vec<json::DockerEntry> = json::parse("manifest.json", &bytes)?;
    let e = match entries.as_slice() {
        [one] => one,
        _ => {
            return Err(OciError::Invalid(format!(
                "manifest.json lists {} images; save exactly one image per archive",
                entries.len()
            )))
        }
    };
    let norm = |n: &str, what: &str| -> Result<String, OciError> {
        match split_name(n.as_bytes()) {
            Name::Parts(p) if !p.is_empty() => String::from_utf8(join(&p))
                .map_err(|_| OciError::Invalid(format!("manifest.json: bad {what} name"))),
            _ => Err(OciError::UnsafeEntry {
                name: n.to_string(),
                reason: format!(
                    "(named as the {what} in manifest.json) is not a safe relative path"
                ),
            }),
        }
    };
    let cfg_name = norm(&e.config, "config")?;
    let cfg = m.get(&cfg_name, "image config named in manifest.json")?;
    let config = m.read_small(cfg, "image config")?;
    let config_digest = cfg.digest;
    if let Some(hex) = cfg_name.strip_suffix(".json") {
        if let Ok(expected) = Sha256::from_hex(hex) {
            if hex.len() == 64 && expected != config_digest {
                return Err(OciError::DigestMismatch {
                    what: format!("image config {cfg_name}"),
                    expected,
                    actual: config_digest,
                });
            }
        }
    }
    if e.layers.len() > MAX_LAYERS {
        return Err(OciError::Invalid(format!(
            "manifest.json: {} layers (limit {MAX_LAYERS})",
            e.layers.len()
        )));
    }
    let diff_ids = check_config(&config, "image config", e.layers.len())?;
    let mut layers = Vec::new();
    let mut descs = Vec::new();
    for l in &e.layers {
        let name = norm(l, "layer")?;
        let s = m.get(&name, "layer named in manifest.json")?;
        let mut head = [0u8; 2];
        let gz = File::open(&s.path)
            .and_then(|mut f| f.read_exact(&mut head))
            .map(|_| crate::host::is_gzip(&head))
            .unwrap_or(false);
        let media_type = if gz {
            mt::OCI_LAYER_GZIP
        } else {
            mt::OCI_LAYER
        };
        descs.push(Descriptor::new(media_type, &s.digest, s.size));
        layers.push(ChosenLayer {
            media_type: media_type.to_string(),
            digest: s.digest,
            size: s.size,
            path: s.path.clone(),
            gzip: None,
        });
    }
    let manifest = json::to_vec(
        "manifest",
        &json::Manifest {
            schema_version: 2,
            media_type: Some(mt::OCI_MANIFEST.to_string()),
            config: Descriptor::new(mt::OCI_CONFIG, &config_digest, config.len() as u64),
            layers: descs,
        },
    )?;
    let manifest_digest = Sha256::of_bytes(&manifest);
    if manifest_digest != *pin {
        return Err(OciError::PinMismatch {
            expected: *pin,
            actual: vec![manifest_digest],
        });
    }
    Ok(Chosen {
        format: ArchiveFormat::DockerSave,
        manifest,
        manifest_media_type: mt::OCI_MANIFEST.to_string(),
        manifest_digest,
        config,
        config_digest,
        layers,
        diff_ids,
        ref_names: e.repo_tags.clone().unwrap_or_default(),
    })
}

pub(crate) enum BlobSrc<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

/// Writes an OCI layout tarball: `blobs/`, `blobs/sha256/`, the blobs by
/// digest, `index.json` (one manifest, linux/amd64, ref name annotation),
/// `oci-layout`; sorted, mtime `epoch`, owned by 0:0. Atomic (a sibling
/// `.partial` file renamed into place). Returns the archive's digest and size.
pub(crate) fn write_layout(
    out: &Path,
    epoch: u64,
    ref_name: &str,
    manifest_media_type: &str,
    manifest: &[u8],
    blobs: &[(Sha256, BlobSrc<'_>)],
) -> Result<(Sha256, u64), OciError> {
    let manifest_digest = Sha256::of_bytes(manifest);
    let mut desc = Descriptor::new(manifest_media_type, &manifest_digest, manifest.len() as u64);
    desc.platform = Some(Platform {
        architecture: "amd64".into(),
        os: "linux".into(),
    });
    desc.annotations = BTreeMap::from([(mt::REF_NAME.to_string(), ref_name.to_string())]);
    let index = json::to_vec(
        "index.json",
        &json::Index {
            schema_version: 2,
            media_type: Some(mt::OCI_INDEX.to_string()),
            manifests: vec![desc],
        },
    )?;
    let mut all: BTreeMap<String, &BlobSrc<'_>> = BTreeMap::new();
    let mbytes = BlobSrc::Bytes(manifest);
    all.insert(manifest_digest.hex(), &mbytes);
    for (d, src) in blobs {
        all.entry(d.hex()).or_insert(src);
    }
    let name = out
        .file_name()
        .ok_or_else(|| OciError::Invalid(format!("{} names no file", out.display())))?;
    let mut partial = name.to_os_string();
    partial.push(".partial");
    let tmp = out.with_file_name(partial);
    let wio = |e: io::Error| OciError::io(format!("cannot write {}", tmp.display()), e);
    let f = File::create(&tmp).map_err(wio)?;
    let mut w = TarWriter::new(BufWriter::with_capacity(1 << 20, f), epoch);
    w.dir(b"blobs", 0o755, 0, 0).map_err(wio)?;
    w.dir(b"blobs/sha256", 0o755, 0, 0).map_err(wio)?;
    for (hex, src) in &all {
        let path = format!("blobs/sha256/{hex}");
        match src {
            BlobSrc::Bytes(b) => w
                .file(path.as_bytes(), 0o644, (0, 0), b.len() as u64, *b)
                .map_err(wio)?,
            BlobSrc::File(p) => {
                let f = File::open(p)
                    .map_err(|e| OciError::io(format!("cannot open {}", p.display()), e))?;
                let len = f
                    .metadata()
                    .map_err(|e| OciError::io(format!("cannot stat {}", p.display()), e))?
                    .len();
                w.file(
                    path.as_bytes(),
                    0o644,
                    (0, 0),
                    len,
                    BufReader::with_capacity(1 << 20, f),
                )
                .map_err(wio)?;
            }
        }
    }
    w.file(b"index.json", 0o644, (0, 0), index.len() as u64, &index[..])
        .map_err(wio)?;
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    w.file(
        b"oci-layout",
        0o644,
        (0, 0),
        layout.len() as u64,
        &layout[..],
    )
    .map_err(wio)?;
    let mut bw = w.finish().map_err(wio)?;
    bw.flush().map_err(wio)?;
    let f = bw.into_inner().map_err(|e| wio(e.into_error()))?;
    f.sync_all().map_err(wio)?;
    drop(f);
    std::fs::rename(&tmp, out)
        .map_err(|e| OciError::io(format!("cannot rename {} into place", tmp.display()), e))?;
    let digest = Sha256::of_file(out).map_err(|e| OciError::Invalid(format!("{e:#}")))?;
    let size = std::fs::metadata(out)
        .map_err(|e| OciError::io(format!("cannot stat {}", out.display()), e))?
        .len();
    Ok((digest, size))
}

/// Writes a loaded (verified) image as a deterministic OCI layout tarball
/// holding only that image, named `ref_name` (the
/// `org.opencontainers.image.ref.name` annotation), every entry's mtime
/// `epoch`. The manifest keeps its exact bytes, so its digest (the pin) is
/// unchanged. Returns the archive's digest.
pub fn write_oci_archive(
    img: &LoadedImage,
    ref_name: &str,
    epoch: u64,
    out: &Path,
) -> Result<Sha256, OciError> {
    if ref_name.is_empty()
        || ref_name
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(OciError::Invalid(format!(
            "image name {ref_name:?}: must be non-empty, without spaces or control characters"
        )));
    }
    let mut blobs: Vec<(Sha256, BlobSrc<'_>)> =
        vec![(img.config_digest, BlobSrc::Bytes(&img.config))];
    for l in &img.layers {
        blobs.push((l.summary.digest, BlobSrc::File(&l.blob)));
    }
    let (d, _) = write_layout(
        out,
        epoch,
        ref_name,
        &img.manifest_media_type,
        &img.manifest,
        &blobs,
    )?;
    Ok(d)
}
