//! Building small OCI images from Debian packages, reproducibly.
//!
//! Layer 1 is a Debian root from `mmdebstrap --format=tar`: the image's
//! packages and their dependencies unpacked (`--variant=extract`), or on
//! Debian's essential set (`--variant=essential`, `essential = true`)
//! (SOURCE_DATE_EPOCH set, docs/man/locales excluded), then
//! re-written by cairn: entries sorted by name, every mtime = epoch, uid/gid
//! as in the source, no user/group names, no pax records, `./` dropped,
//! hardlink groups led by their first name. Dropped or changed on the way,
//! because a container must not carry them: everything under /dev (the
//! runtime provides /dev), the host's /etc/hostname and /etc/resolv.conf
//! (written empty: the runtime bind-mounts them), set-uid/set-gid bits on
//! files (su, newgrp... a workload has no logins; the default layer policy
//! refuses them). Layer 2 holds the spec's files (root-owned, given modes,
//! parent folders included). Layers are stored uncompressed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::archive::{load_archive_with, write_layout, BlobSrc, LoadOptions};
use super::json::{media_types as mt, Descriptor};
use crate::host::digest::Sha256;
use crate::host::tar::{join, split_name, Kind, Name, TarReader, TarWriter};
use crate::host::tree::ImagePath;

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    /// The image name (`org.opencontainers.image.ref.name`).
    pub name: String,
    /// Debian packages (on top of the essential set if `essential`).
    pub packages: Vec<String>,
    /// Debian's essential set too; otherwise only `packages` and their
    /// dependencies, unpacked (`Variant::ImageMinimal`).
    pub essential: bool,
    /// (host file, path in the image, mode) — permission bits only.
    pub files: Vec<(PathBuf, String, u32)>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value`; a default PATH is added when none is given.
    pub env: Vec<String>,
    pub user: Option<String>,
    /// Absolute.
    pub workdir: Option<String>,
    /// `PORT` (tcp) or `PORT/tcp|udp|sctp`.
    pub exposed_ports: Vec<String>,
    /// SOURCE_DATE_EPOCH: every mtime and the config's `created`.
    pub epoch: u64,
    pub suite: String,
    pub mirror: String,
    /// The locked packages as a local repository: mmdebstrap installs from
    /// it instead of `mirror` (no network), and the image's sources.list
    /// still names `mirror`, so both ways give the same bytes.
    pub repo: Option<crate::inputs::debrepo::LocalRepo>,
}

/// What `build_image` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// The image manifest's digest: the pin.
    pub manifest_digest: Sha256,
    pub config_digest: Sha256,
    /// Layer blob digests (uncompressed, so also the diff_ids).
    pub layer_digests: Vec<Sha256>,
    /// Bytes of the OCI archive.
    pub size: u64,
    /// Digest of the OCI archive file.
    pub archive_digest: Sha256,
}

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Latest epoch whose mtime fits an octal tar field (year 2242).
const MAX_EPOCH: u64 = 0o77777777777;

fn check_spec(spec: &BuildSpec) -> Result<()> {
    let bad = |c: char| c.is_control() || c.is_whitespace();
    if spec.name.is_empty() || spec.name.len() > 255 || spec.name.chars().any(bad) {
        bail!(
            "image name {:?}: 1 to 255 characters, no spaces or control characters",
            spec.name
        );
    }
    for p in &spec.packages {
        let ok = !p.is_empty()
            && p.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.:=~".contains(&b));
        if !ok {
            bail!("package {p:?} is not a Debian package name");
        }
    }
    if spec.suite.is_empty()
        || !spec
            .suite
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        bail!("suite {:?} is not a Debian suite name", spec.suite);
    }
    if spec.mirror.is_empty()
        || spec.mirror.starts_with('-')
        || spec.mirror.chars().any(|c| c.is_control())
    {
        bail!("mirror {:?} is not a mirror URL", spec.mirror);
    }
    if spec.epoch > MAX_EPOCH {
        bail!("epoch {} is past what tar headers hold", spec.epoch);
    }
    for e in &spec.env {
        if !e.contains('=') || e.starts_with('=') {
            bail!("env {e:?} is not KEY=value");
        }
    }
    if let Some(w) = &spec.workdir {
        if !w.starts_with('/') {
            bail!("workdir {w:?} must be absolute");
        }
    }
    if let Some(u) = &spec.user {
        if u.is_empty() || u.chars().any(bad) {
            bail!("user {u:?} is not a user name or uid[:gid]");
        }
    }
    Ok(())
}

fn port(p: &str) -> Result<String> {
    let (num, proto) = p.split_once('/').unwrap_or((p, "tcp"));
    let n: u16 = num
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .with_context(|| format!("exposed port {p:?}: not a port number"))?;
    if !["tcp", "udp", "sctp"].contains(&proto) {
        bail!("exposed port {p:?}: protocol must be tcp, udp or sctp");
    }
    Ok(format!("{n}/{proto}"))
}

/// RFC 3339 UTC time of a Unix timestamp.
pub(crate) fn rfc3339(epoch: u64) -> String {
    crate::host::time::rfc3339(epoch)
}

/// Builds the image described by `spec` into `out_archive` (an OCI layout
/// tarball), using `work` for the intermediate files, and checks that
/// `load_archive` accepts the result under its own manifest digest.
pub fn build_image(spec: &BuildSpec, work: &Path, out_archive: &Path) -> Result<BuiltImage> {
    check_spec(spec)?;
    let mut ports: Vec<String> = spec
        .exposed_ports
        .iter()
        .map(|p| port(p))
        .collect::<Result<_>>()?;
    ports.sort();
    ports.dedup();
    std::fs::create_dir_all(work).with_context(|| format!("cannot create {}", work.display()))?;

    let base_tar = work.join("debian.tar");
    mmdebstrap(spec, &base_tar)?;
    let layer1 = work.join("layer1.tar");
    let base = normalise_base(&base_tar, &layer1, spec.epoch)
        .with_context(|| format!("oci: normalise {}", base_tar.display()))?;
    let _ = std::fs::remove_file(&base_tar);
    check_entrypoint(spec, &base)?;
    let mut layers = vec![layer1];
    if !spec.files.is_empty() {
        let layer2 = work.join("layer2.tar");
        files_layer(spec, &base, &layer2)?;
        layers.push(layer2);
    }
    let mut descs = Vec::new();
    let mut digests = Vec::new();
    for l in &layers {
        let d = Sha256::of_file(l)?;
        let size = std::fs::metadata(l)?.len();
        descs.push(Descriptor::new(mt::OCI_LAYER, &d, size));
        digests.push(d);
    }

    let mut env = spec.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    let mut cfg = serde_json::Map::new();
    cfg.insert("Env".into(), json!(env));
    if !spec.entrypoint.is_empty() {
        cfg.insert("Entrypoint".into(), json!(spec.entrypoint));
    }
    if !spec.cmd.is_empty() {
        cfg.insert("Cmd".into(), json!(spec.cmd));
    }
    if let Some(u) = &spec.user {
        cfg.insert("User".into(), json!(u));
    }
    if let Some(w) = &spec.workdir {
        cfg.insert("WorkingDir".into(), json!(w));
    }
    if !ports.is_empty() {
        let m: serde_json::Map<String, serde_json::Value> =
            ports.iter().map(|p| (p.clone(), json!({}))).collect();
        cfg.insert("ExposedPorts".into(), serde_json::Value::Object(m));
    }
    let created = rfc3339(spec.epoch);
    let mut pkgs = spec.packages.clone();
    pkgs.sort();
    pkgs.dedup();
    let mut history = vec![json!({
        "created": created,
        "created_by": format!(
            "cairn: mmdebstrap --variant={} {} (+ {})",
            if spec.essential { "essential" } else { "extract" },
            spec.suite,
            if pkgs.is_empty() { "nothing".to_string() } else { pkgs.join(",") }
        ),
    })];
    if layers.len() > 1 {
        history.push(json!({"created": created, "created_by": "cairn: files"}));
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": serde_json::Value::Object(cfg),
        "rootfs": {
            "type": "layers",
            "diff_ids": digests.iter().map(|d| format!("sha256:{}", d.hex())).collect::<Vec<_>>(),
        },
        "history": history,
    }))?;
    let config_digest = Sha256::of_bytes(&config);
    let manifest = serde_json::to_vec(&super::json::Manifest {
        schema_version: 2,
        media_type: Some(mt::OCI_MANIFEST.to_string()),
        config: Descriptor::new(mt::OCI_CONFIG, &config_digest, config.len() as u64),
        layers: descs,
    })?;
    let manifest_digest = Sha256::of_bytes(&manifest);
    let mut blobs: Vec<(Sha256, BlobSrc<'_>)> = vec![(config_digest, BlobSrc::Bytes(&config))];
    for (d, l) in digests.iter().zip(&layers) {
        blobs.push((*d, BlobSrc::File(l)));
    }
    let (archive_digest, size) = write_layout(
        out_archive,
        spec.epoch,
        &spec.name,
        mt::OCI_MANIFEST,
        &manifest,
        &blobs,
    )?;
    for l in &layers {
        let _ = std::fs::remove_file(l);
    }
    // What we wrote must pass the same checks as any pinned image.
    load_archive_with(
        out_archive,
        &manifest_digest,
        &LoadOptions {
            scratch: Some(work.to_path_buf()),
            ..Default::default()
        },
    )
    .with_context(|| {
        format!(
            "oci: the built image {} does not load back",
            out_archive.display()
        )
    })?;
    Ok(BuiltImage {
        manifest_digest,
        config_digest,
        layer_digests: digests,
        size,
        archive_digest,
    })
}

fn mmdebstrap(spec: &BuildSpec, out: &Path) -> Result<()> {
    let mut pkgs = spec.packages.clone();
    pkgs.sort();
    pkgs.dedup();
    let (mirror, extra) = match &spec.repo {
        Some(r) => {
            let mut extra = r.mmdebstrap_args();
            extra.push(crate::inputs::debrepo::sources_list_hook(
                crate::inputs::debrepo::Variant::image(spec.essential),
                &spec.suite,
                &spec.mirror,
            )?);
            (r.mmdebstrap_mirror(), extra)
        }
        None => (spec.mirror.clone(), Vec::new()),
    };
    let cmd = crate::inputs::debrepo::mmdebstrap_command(
        crate::inputs::debrepo::Variant::image(spec.essential),
        &spec.suite,
        out,
        &mirror,
        &pkgs,
        spec.epoch,
        "tar",
        &extra,
    );
    crate::host::runner::run_streaming("oci: mmdebstrap", cmd)?;
    Ok(())
}

/// An absolute entrypoint must be a file of the image (the Debian root or
/// the spec's files), its links resolved inside the image: an image built
/// without the essential set has no shell, and finding that out at boot
/// would be too late. A bare name is looked up in PATH by the runtime and
/// is not checked here.
fn check_entrypoint(spec: &BuildSpec, base: &BTreeMap<Vec<u8>, BaseEntry>) -> Result<()> {
    let Some(ep) = spec.entrypoint.first().filter(|e| e.starts_with('/')) else {
        return Ok(());
    };
    let files: Vec<&str> = spec.files.iter().map(|(_, d, _)| d.as_str()).collect();
    if is_file_in_image(base, &files, ep) {
        return Ok(());
    }
    let fix = if spec.essential {
        "add the package that provides it to `packages`"
    } else {
        "the image is built without Debian's essential set (no shell, no coreutils): add the \
         package that provides it to `packages`, or set essential = true"
    };
    Err(crate::InputError(format!(
        "image {}: the entrypoint {ep} is not a file in the image; {fix}",
        spec.name
    ))
    .into())
}

/// Whether `path` names a file (not a folder) of the image, following its
/// links (absolute ones from the image's root) inside the image only.
fn is_file_in_image(base: &BTreeMap<Vec<u8>, BaseEntry>, files: &[&str], path: &str) -> bool {
    let mut todo: std::collections::VecDeque<Vec<u8>> = path
        .as_bytes()
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    let mut at: Vec<Vec<u8>> = Vec::new();
    let mut hops = 0;
    while let Some(c) = todo.pop_front() {
        match c.as_slice() {
            b"." => continue,
            b".." => {
                at.pop();
                continue;
            }
            _ => {}
        }
        let mut key = at.clone();
        key.push(c);
        let joined = key.join(&b'/');
        let last = todo.is_empty();
        let shown = format!("/{}", String::from_utf8_lossy(&joined));
        if files.contains(&shown.as_str()) {
            return last;
        }
        match base.get(&joined).map(|e| &e.kind) {
            Some(BaseKind::Dir) if !last => at = key,
            // A folder that only the spec's files make.
            None if !last && files.iter().any(|f| f.starts_with(&format!("{shown}/"))) => at = key,
            Some(BaseKind::Symlink(target)) => {
                hops += 1;
                if hops > 40 {
                    return false;
                }
                if target.starts_with(b"/") {
                    at.clear();
                }
                for t in target.split(|&b| b == b'/').rev().filter(|c| !c.is_empty()) {
                    todo.push_front(t.to_vec());
                }
            }
            Some(BaseKind::File { .. } | BaseKind::Empty | BaseKind::Hardlink(_)) => return last,
            _ => return false,
        }
    }
    false
}

#[derive(Debug, Clone)]
enum BaseKind {
    Dir,
    File { offset: u64, size: u64 },
    Empty,
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
}

#[derive(Debug, Clone)]
struct BaseEntry {
    kind: BaseKind,
    mode: u32,
    uid: u64,
    gid: u64,
}

/// The host's identity files mmdebstrap copies in; written empty.
const BLANKED: &[&[u8]] = &[b"etc/hostname", b"etc/resolv.conf"];

/// Re-writes mmdebstrap's tar deterministically; returns the entries (for
/// layer 2's parent folders).
fn normalise_base(src: &Path, dst: &Path, epoch: u64) -> Result<BTreeMap<Vec<u8>, BaseEntry>> {
    let f = File::open(src)?;
    let mut t = TarReader::new(BufReader::with_capacity(1 << 20, f));
    let mut entries: BTreeMap<Vec<u8>, BaseEntry> = BTreeMap::new();
    while let Some(e) = t.next_entry().map_err(|e| anyhow::anyhow!("{e}"))? {
        let shown = String::from_utf8_lossy(&e.name).into_owned();
        let parts = match split_name(&e.name) {
            Name::Parts(p) => p,
            _ => bail!("mmdebstrap wrote an unsafe entry {shown:?}"),
        };
        if parts.is_empty() || (parts[0] == b"dev" && parts.len() > 1) {
            continue;
        }
        let path = join(&parts);
        let kind = match e.kind {
            Kind::Dir => BaseKind::Dir,
            Kind::File if BLANKED.contains(&path.as_slice()) => BaseKind::Empty,
            Kind::File => BaseKind::File {
                offset: e.data_offset,
                size: e.size,
            },
            Kind::Symlink => BaseKind::Symlink(e.link.clone()),
            Kind::Hardlink => match split_name(&e.link) {
                Name::Parts(p) if !p.is_empty() => BaseKind::Hardlink(join(&p)),
                _ => bail!("mmdebstrap wrote an unsafe hardlink {shown:?}"),
            },
            k => bail!("unexpected entry {shown:?} ({k:?}) outside /dev in the Debian root"),
        };
        let mode = match kind {
            BaseKind::Dir => e.mode & 0o7777,
            BaseKind::Empty => 0o644,
            BaseKind::Symlink(_) => 0o777,
            _ => e.mode & 0o777,
        };
        entries.insert(
            path,
            BaseEntry {
                kind,
                mode,
                uid: e.uid,
                gid: e.gid,
            },
        );
    }
    // Hardlink groups: the member first in name order carries the data.
    let mut groups: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
    for (p, e) in &entries {
        if let BaseKind::Hardlink(_) = e.kind {
            let mut target = p.clone();
            for _ in 0..16 {
                match entries.get(&target).map(|e| &e.kind) {
                    Some(BaseKind::Hardlink(t)) => target = t.clone(),
                    _ => break,
                }
            }
            match entries.get(&target).map(|e| &e.kind) {
                Some(BaseKind::File { .. }) | Some(BaseKind::Empty) => {}
                _ => bail!(
                    "hardlink {:?} has no regular file as its target",
                    String::from_utf8_lossy(p)
                ),
            }
            groups.entry(target).or_default().push(p.clone());
        }
    }
    for (target, mut members) in groups {
        members.push(target.clone());
        members.sort();
        let lead = members[0].clone();
        let data = entries[&target].clone();
        for m in &members {
            let e = if *m == lead {
                data.clone()
            } else {
                BaseEntry {
                    kind: BaseKind::Hardlink(lead.clone()),
                    ..data.clone()
                }
            };
            entries.insert(m.clone(), e);
        }
    }

    let mut srcf = File::open(src)?;
    let out = File::create(dst).with_context(|| format!("cannot create {}", dst.display()))?;
    let mut w = TarWriter::new(BufWriter::with_capacity(1 << 20, out), epoch);
    for (p, e) in &entries {
        match &e.kind {
            BaseKind::Dir => w.dir(p, e.mode, e.uid, e.gid)?,
            BaseKind::Empty => w.file(p, e.mode, (e.uid, e.gid), 0, std::io::empty())?,
            BaseKind::File { offset, size } => {
                srcf.seek(SeekFrom::Start(*offset))?;
                let r = BufReader::with_capacity(1 << 16, (&mut srcf).take(*size));
                w.file(p, e.mode, (e.uid, e.gid), *size, r)?;
            }
            BaseKind::Symlink(t) => w.symlink(p, t, e.uid, e.gid)?,
            BaseKind::Hardlink(t) => w.hardlink(p, t, e.mode, e.uid, e.gid)?,
        }
    }
    let mut bw = w.finish()?;
    bw.flush()?;
    Ok(entries)
}

/// Layer 2: the spec's files and their parent folders, sorted.
fn files_layer(spec: &BuildSpec, base: &BTreeMap<Vec<u8>, BaseEntry>, dst: &Path) -> Result<()> {
    enum Item<'a> {
        Dir(u32, u64, u64),
        File(&'a Path, u32),
    }
    let mut items: BTreeMap<Vec<u8>, Item<'_>> = BTreeMap::new();
    for (host, in_image, mode) in &spec.files {
        let rel =
            ImagePath::new(in_image).with_context(|| format!("file {in_image:?} in the image"))?;
        let relb = rel.as_path().as_os_str().as_bytes().to_vec();
        if mode & !0o777 != 0 {
            bail!("file {in_image:?}: mode {mode:o} has more than permission bits (0..0777)");
        }
        if let Some(b) = base.get(&relb) {
            if matches!(b.kind, BaseKind::Dir) {
                bail!("file {in_image:?}: the Debian root has a folder there");
            }
        }
        let mut anc = Vec::new();
        for c in rel
            .as_path()
            .parent()
            .into_iter()
            .flat_map(|p| p.components())
        {
            if !anc.is_empty() {
                anc.push(b'/');
            }
            anc.extend_from_slice(c.as_os_str().as_bytes());
            let item = match base.get(&anc) {
                None => Item::Dir(0o755, 0, 0),
                Some(BaseEntry {
                    kind: BaseKind::Dir,
                    mode,
                    uid,
                    gid,
                }) => Item::Dir(*mode, *uid, *gid),
                Some(_) => bail!(
                    "file {in_image:?}: /{} is not a folder in the Debian root (a symlink?); use the real path",
                    String::from_utf8_lossy(&anc)
                ),
            };
            if let Some(Item::File(..)) = items.get(&anc) {
                bail!(
                    "file {in_image:?}: /{} is also a file",
                    String::from_utf8_lossy(&anc)
                );
            }
            items.insert(anc.clone(), item);
        }
        if items.contains_key(&relb) {
            bail!("file {in_image:?} is listed twice (or is also a folder)");
        }
        items.insert(relb, Item::File(host, *mode));
    }
    let out = File::create(dst).with_context(|| format!("cannot create {}", dst.display()))?;
    let mut w = TarWriter::new(BufWriter::with_capacity(1 << 20, out), spec.epoch);
    for (p, item) in &items {
        match item {
            Item::Dir(mode, uid, gid) => w.dir(p, *mode, *uid, *gid)?,
            Item::File(host, mode) => {
                let f =
                    File::open(host).with_context(|| format!("cannot open {}", host.display()))?;
                let meta = f.metadata()?;
                if !meta.is_file() {
                    bail!("{} is not a regular file", host.display());
                }
                w.file(
                    p,
                    *mode,
                    (0, 0),
                    meta.len(),
                    BufReader::with_capacity(1 << 16, f),
                )
                .with_context(|| format!("cannot archive {}", host.display()))?;
            }
        }
    }
    let mut bw = w.finish()?;
    bw.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn ports() {
        assert_eq!(port("8080").unwrap(), "8080/tcp");
        assert_eq!(port("53/udp").unwrap(), "53/udp");
        assert!(port("0").is_err());
        assert!(port("80/icmp").is_err());
    }

    #[test]
    fn entrypoints_resolve_inside_the_image() {
        let e = |kind: BaseKind| BaseEntry {
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
        };
        let link = |t: &str| e(BaseKind::Symlink(t.as_bytes().to_vec()));
        let base: BTreeMap<Vec<u8>, BaseEntry> = [
            ("bin", link("usr/bin")),
            ("usr", e(BaseKind::Dir)),
            ("usr/bin", e(BaseKind::Dir)),
            ("usr/bin/python3", link("python3.11")),
            (
                "usr/bin/python3.11",
                e(BaseKind::File { offset: 0, size: 1 }),
            ),
            ("usr/bin/abs", link("/usr/bin/python3")),
            ("usr/bin/up", link("../bin/python3.11")),
            ("usr/bin/loop", link("loop")),
            ("usr/bin/out", link("../../../../etc/passwd")),
            ("usr/bin/dangling", link("nothere")),
        ]
        .into_iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v))
        .collect();
        let yes = |p: &str| is_file_in_image(&base, &["/app/serve.py"], p);
        for p in [
            "/usr/bin/python3",
            "/bin/python3",
            "/usr/bin/abs",
            "/usr/bin/up",
            "/app/serve.py",
        ] {
            assert!(yes(p), "{p}");
        }
        // Control: a shell an image without the essential set lacks, a
        // folder, a loop, a dangling link, a link out of the image (it
        // resolves at the image's root, where there is no etc/passwd).
        for p in [
            "/bin/sh",
            "/usr/bin",
            "/usr/bin/loop",
            "/usr/bin/dangling",
            "/usr/bin/out",
            "/usr/bin/python3.11/x",
        ] {
            assert!(!yes(p), "{p}");
        }
    }
}
