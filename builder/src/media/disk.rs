//! Raw disk: a GPT disk written as a plain file (no loop devices, no
//! mounts): an ESP made with mkfs.vfat + mtools holding the UKI as the
//! removable-media boot path, the squashfs root (the base volume), its
//! verity hash tree, then one data and one hash-tree partition for the
//! apps volume and for each model volume, and an empty
//! state partition (last, so it can grow). Partitions are found by identity, following
//! the Discoverable Partitions Specification: the root partition's UUID is
//! the first 128 bits of the root hash, the verity partition's the last
//! 128 bits, the state partition's derives from the root hash too
//! ([`state_uuid`]); the apps and each model volume's two partitions (type
//! Linux data: the specification has no type for them) take the first and
//! last 128 bits of *its* root hash the same way. Names stay as labels for people and `cairn verify`.
//! Every GUID derives from the root hash, so the same root gives the same
//! disk.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::host::digest::Sha256;
use crate::host::direct::Writer;
use crate::pipeline::verity::uuid_from;

pub const MIB: u64 = 1 << 20;
pub const LABEL_ESP: &str = "cairn-esp";
pub const LABEL_ROOT: &str = "cairn-root";
pub const LABEL_VERITY: &str = "cairn-verity";
pub const LABEL_STATE: &str = "cairn-state";
/// `[audit]`: the sealed audit trail (docs/audit.md), just before the state.
pub const LABEL_AUDIT: &str = "cairn-audit";
/// What the builder writes at the audit partition's start; the rest is
/// zero until the guest appends frames from byte 512.
pub const AUDIT_HEADER: &[u8] = b"cairn-audit v1\n";
/// The apps volume (the root's layer over the base) and its hash tree.
pub const LABEL_APPS: &str = "cairn-apps";
pub const LABEL_APPS_VERITY: &str = "cairn-apps-verity";

const TYPE_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// Discoverable Partitions Specification: root and root-verity (x86-64).
pub const TYPE_ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
pub const TYPE_ROOT_VERITY_X86_64: &str = "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5";
/// Generic Linux data: the specification defines no type for a state
/// partition that is wiped every boot (its /var type would invite tools
/// to mount it), so it is found by its UUID alone. Model volumes and
/// their hash trees carry it too: the specification's "generic Linux
/// data" type, which no tool mounts by itself (they are not /usr or a
/// root, and the specification has no verity type for other data).
pub const TYPE_LINUX_DATA: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// A 128-bit value as a UUID string, byte order as written (the way
/// systemd's `sd_id128_to_uuid_string` prints an id, no version bits set).
fn uuid_of_bytes(b: &[u8]) -> String {
    let h: String = b[..16].iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The root partition's UUID: the first 128 bits of the root hash (what
/// `systemd-dissect --root-hash=` and the initramfs look for).
pub fn root_uuid(root_hash: &Sha256) -> String {
    uuid_of_bytes(&root_hash.0[..16])
}

/// The verity partition's UUID: the last 128 bits of the root hash.
pub fn verity_uuid(root_hash: &Sha256) -> String {
    uuid_of_bytes(&root_hash.0[16..])
}

/// The state partition's UUID: SHA-256 of `cairn-state ` followed by the
/// root hash in lowercase hex, its first 128 bits made a version-4 UUID
/// ([`uuid_from`]). The initramfs computes the same with busybox
/// `sha256sum`, so only this image's state partition ever matches.
pub fn state_uuid(root_hash: &Sha256) -> String {
    uuid_from(&Sha256::of_bytes(
        format!("cairn-state {}", root_hash.hex()).as_bytes(),
    ))
}

pub struct DiskInputs<'a> {
    pub uki: &'a Path,
    /// `[boot] shim`: shim and MokManager in front of the UKI on the ESP.
    pub shim: Option<&'a crate::pipeline::shim::Shim>,
    pub root: &'a Path,
    pub verity: &'a Path,
    pub root_hash: &'a Sha256,
    /// The model volumes, each a data and a hash-tree partition.
    pub volumes: &'a [crate::pipeline::volumes::Volume],
    pub disk_size: u64,
    pub min_state_size: u64,
    pub epoch: u64,
    /// `[audit] size`: 0 for no audit partition (the layout is then the
    /// same as before audit existed).
    pub audit_size: u64,
}

/// Where each partition sits, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub esp: (u64, u64),
    pub root: (u64, u64),
    pub verity: (u64, u64),
    /// Model volumes, in recipe order, between the root's hash tree and
    /// the state partition.
    pub volumes: Vec<VolumeParts>,
    pub state: (u64, u64),
    pub disk_size: u64,
    /// `[audit]`: the audit partition, carved from the start of the state's
    /// room ([`with_audit`]).
    pub audit: Option<(u64, u64)>,
}

/// A volume's two partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeParts {
    pub name: String,
    pub kind: crate::pipeline::volumes::Kind,
    pub root_hash: Sha256,
    pub data: (u64, u64),
    pub hash: (u64, u64),
}

impl VolumeParts {
    /// GPT names hold 36 characters: `cairn-model-NAME` and
    /// `cairn-model-NAME-verity` when they fit, else the name is replaced
    /// by the first 12 hex digits of the root hash (the partitions are
    /// found by UUID; names are for people).
    pub fn labels(&self) -> (String, String) {
        if self.kind == crate::pipeline::volumes::Kind::Apps {
            return (LABEL_APPS.into(), LABEL_APPS_VERITY.into());
        }
        let long = format!("cairn-model-{}-verity", self.name);
        let id = if long.len() <= 36 {
            self.name.clone()
        } else {
            self.root_hash.hex()[..12].to_string()
        };
        (
            format!("cairn-model-{id}"),
            format!("cairn-model-{id}-verity"),
        )
    }
}

/// What [`plan`] needs of a volume: name, root hash, image and tree sizes.
pub struct VolumeSizes {
    pub name: String,
    pub kind: crate::pipeline::volumes::Kind,
    pub root_hash: Sha256,
    pub data: u64,
    pub hash: u64,
}

fn align_mib(v: u64) -> u64 {
    v.div_ceil(MIB) * MIB
}

/// Plans the partitions: ESP (sized for `esp_payload` bytes of files,
/// at least 64 MiB), root, verity, then each model volume and
/// its hash tree, packed from 1 MiB; state takes the rest, which must be
/// at least `min_state`. The backup GPT needs the last MiB.
pub fn plan(
    esp_payload: u64,
    root_size: u64,
    verity_size: u64,
    volumes: &[VolumeSizes],
    disk_size: u64,
    min_state: u64,
) -> Result<Layout> {
    // A quarter spare (FAT metadata, a site file) and 4 MiB more.
    let esp_size = align_mib((esp_payload + esp_payload / 4 + 4 * MIB).max(64 * MIB));
    let esp = (MIB, esp_size);
    let root = (esp.0 + esp.1, align_mib(root_size));
    let verity = (root.0 + root.1, align_mib(verity_size));
    let mut at = verity.0 + verity.1;
    let mut vols = Vec::new();
    for v in volumes {
        let data = (at, align_mib(v.data));
        let hash = (data.0 + data.1, align_mib(v.hash));
        at = hash.0 + hash.1;
        vols.push(VolumeParts {
            name: v.name.clone(),
            kind: v.kind,
            root_hash: v.root_hash,
            data,
            hash,
        });
    }
    let state_start = at;
    let end = disk_size.saturating_sub(MIB);
    if end < state_start + min_state {
        let models: u64 = vols.iter().map(|v| v.data.1 + v.hash.1).sum();
        bail!(
            "disk: [disk] size {} MiB is too small: ESP {} MiB + root {} MiB + verity {} MiB + model volumes {} MiB + state {} MiB + 2 MiB GPT need {} MiB; raise disk.size",
            disk_size / MIB,
            esp.1 / MIB,
            root.1 / MIB,
            verity.1 / MIB,
            models / MIB,
            min_state / MIB,
            (state_start + min_state + MIB).div_ceil(MIB)
        );
    }
    Ok(Layout {
        esp,
        root,
        verity,
        volumes: vols,
        state: (state_start, (end - state_start) / MIB * MIB),
        disk_size,
        audit: None,
    })
}

/// The audit partition's UUID, derived like the state's ([`state_uuid`]):
/// only this image's trail ever matches.
pub fn audit_uuid(root_hash: &Sha256) -> String {
    uuid_from(&Sha256::of_bytes(
        format!("cairn-audit {}", root_hash.hex()).as_bytes(),
    ))
}

/// `l` with an audit partition of `size` bytes (whole MiB) just before the
/// state: the state stays the last partition, so `[state] grow` extends it
/// and never moves or touches the trail. The state keeps `min_state`.
pub fn with_audit(mut l: Layout, size: u64, min_state: u64) -> Result<Layout> {
    if size == 0 {
        return Ok(l);
    }
    let size = align_mib(size);
    if l.state.1 < size + min_state {
        bail!(
            "disk: [disk] size {} MiB has no room for the [audit] partition of {} MiB beside a state of {} MiB; raise disk.size by {} MiB",
            l.disk_size / MIB,
            size / MIB,
            min_state / MIB,
            (size + min_state - l.state.1).div_ceil(MIB)
        );
    }
    l.audit = Some((l.state.0, size));
    l.state = (l.state.0 + size, l.state.1 - size);
    Ok(l)
}

/// The sfdisk script for a layout.
pub fn sfdisk_script(l: &Layout, root_hash: &Sha256) -> String {
    let id = |what: &str| {
        uuid_from(&Sha256::of_bytes(
            format!("cairn {what} {root_hash}").as_bytes(),
        ))
        .to_uppercase()
    };
    let part = |(start, size): (u64, u64), ty: &str, uuid: String, what: &str, extra: &str| {
        format!(
            "start={}, size={}, type={ty}, uuid={}, name=\"{what}\"{extra}\n",
            start / 512,
            size / 512,
            uuid.to_uppercase()
        )
    };
    let mut s = format!(
        "label: gpt\nlabel-id: {}\nunit: sectors\nfirst-lba: 2048\nsector-size: 512\n",
        id("disk")
    );
    s += &part(l.esp, TYPE_ESP, id(LABEL_ESP), LABEL_ESP, "");
    // Attribute 60: read-only, a hint for tools that mount by type.
    s += &part(
        l.root,
        TYPE_ROOT_X86_64,
        root_uuid(root_hash),
        LABEL_ROOT,
        ", attrs=\"GUID:60\"",
    );
    s += &part(
        l.verity,
        TYPE_ROOT_VERITY_X86_64,
        verity_uuid(root_hash),
        LABEL_VERITY,
        ", attrs=\"GUID:60\"",
    );
    for v in &l.volumes {
        let (data, hash) = v.labels();
        s += &part(
            v.data,
            TYPE_LINUX_DATA,
            root_uuid(&v.root_hash),
            &data,
            ", attrs=\"GUID:60\"",
        );
        s += &part(
            v.hash,
            TYPE_LINUX_DATA,
            verity_uuid(&v.root_hash),
            &hash,
            ", attrs=\"GUID:60\"",
        );
    }
    if let Some(audit) = l.audit {
        s += &part(
            audit,
            TYPE_LINUX_DATA,
            audit_uuid(root_hash),
            LABEL_AUDIT,
            "",
        );
    }
    s += &part(
        l.state,
        TYPE_LINUX_DATA,
        state_uuid(root_hash),
        LABEL_STATE,
        "",
    );
    s
}

/// Makes the FAT ESP image holding `files` (`media::esp`: the UKI at
/// EFI/BOOT/BOOTX64.EFI, or shim there in front of it).
pub fn make_esp(
    files: &[super::esp::EspFile],
    out: &Path,
    size: u64,
    volume_id: &str,
    epoch: u64,
) -> Result<()> {
    let sh = crate::host::runner::shell()?;
    sh.set_var("SOURCE_DATE_EPOCH", epoch.to_string());
    sh.set_var("TZ", "UTC");
    let kib = (size / 1024).to_string();
    crate::host::runner::run(
        "media: ESP",
        xshell::cmd!(
            sh,
            "mkfs.vfat -F 32 --invariant -i {volume_id} -n CAIRN-ESP -C {out} {kib}"
        ),
    )?;
    // mtools stamps files with SOURCE_DATE_EPOCH; -m would copy host mtimes.
    super::esp::fill(&sh, "media: ESP", out, files)
}

/// Copies `src` into `dst` at `offset`, leaving all-zero blocks as holes;
/// around the page cache if `dst` writes direct ([`crate::host::direct`]).
pub fn copy_into(dst: &mut Writer, offset: u64, src: &Path) -> Result<()> {
    copy_into_with(dst, offset, src, None)
}

/// [`copy_into`] with a progress bar labelled `label` (the root, which is
/// most of the disk): redrawn on a terminal, plain lines otherwise.
fn copy_into_with(dst: &mut Writer, offset: u64, src: &Path, label: Option<&str>) -> Result<()> {
    use std::os::unix::fs::FileExt as _;
    let f = File::open(src).with_context(|| format!("open {}", src.display()))?;
    let total = f
        .metadata()
        .with_context(|| format!("stat {}", src.display()))?
        .len();
    let mut bar = label.map(|l| crate::host::progress::Progress::new(l, total));
    let mut buf = crate::host::direct::AlignedBuf::new(4 << 20);
    // Only the source's data runs are read (an ESP image is mostly holes);
    // within them, all-zero pieces are left as holes too.
    let runs = crate::host::direct::data_runs(&f, 0, total).unwrap_or_else(|| vec![(0, total)]);
    for (start, end) in runs {
        let mut pos = start;
        while pos < end {
            let want = (end - pos).min(buf.len() as u64) as usize;
            let n = match f.read_at(&mut buf.as_mut_slice()[..want], pos) {
                Ok(0) => bail!("{} shrank while it was copied", src.display()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).with_context(|| format!("read {}", src.display())),
            };
            write_nonzero(dst, &buf.as_slice()[..n], offset + pos)?;
            pos += n as u64;
            if let Some(b) = &mut bar {
                b.update(pos);
            }
        }
    }
    if let Some(b) = &mut bar {
        b.finish();
    }
    Ok(())
}

/// The granule of holes [`copy_into`] leaves: an all-zero MiB is not written.
const HOLE_GRANULE: usize = 1 << 20;

/// Writes `piece` at `at` but its all-zero [`HOLE_GRANULE`]s (counted from
/// the piece's start), each run of the others in one write.
fn write_nonzero(dst: &mut Writer, piece: &[u8], at: u64) -> Result<()> {
    let mut run: Option<usize> = None;
    let mut i = 0;
    while i < piece.len() {
        let g = &piece[i..(i + HOLE_GRANULE).min(piece.len())];
        let zero = g.iter().all(|b| *b == 0);
        match (zero, run) {
            (false, None) => run = Some(i),
            (true, Some(r)) => {
                dst.write_at(&piece[r..i], at + r as u64)?;
                run = None;
            }
            _ => {}
        }
        i += g.len();
    }
    if let Some(r) = run {
        dst.write_at(&piece[r..], at + r as u64)?;
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct RawDisk {
    pub path: PathBuf,
    pub layout: Layout,
    /// What is copied into it: see [`RawDisk::digest_as_written`].
    pub pieces: Vec<Piece>,
}

/// A file copied into the raw disk at an offset.
#[derive(Debug, Clone)]
pub struct Piece {
    pub at: u64,
    pub file: PathBuf,
    /// A model volume's data or hash tree ([`write_raw_models`] copies it).
    pub model: bool,
}

/// The files the raw disk holds, at their offsets: the ESP image, the
/// root and its hash tree, then each volume's data and hash tree.
fn pieces(inp: &DiskInputs, layout: &Layout, esp: &Path) -> Vec<Piece> {
    let mut v = vec![
        Piece {
            at: layout.esp.0,
            file: esp.to_path_buf(),
            model: false,
        },
        Piece {
            at: layout.root.0,
            file: inp.root.to_path_buf(),
            model: false,
        },
        Piece {
            at: layout.verity.0,
            file: inp.verity.to_path_buf(),
            model: false,
        },
    ];
    for (vol, p) in inp.volumes.iter().zip(&layout.volumes) {
        let model = vol.kind == crate::pipeline::volumes::Kind::Model;
        v.push(Piece {
            at: p.data.0,
            file: vol.image.clone(),
            model,
        });
        v.push(Piece {
            at: p.hash.0,
            file: vol.verity.hash_path.clone(),
            model,
        });
    }
    v
}

impl RawDisk {
    /// The byte ranges that hold data (for the release's data map): the
    /// protective MBR and primary GPT (LBA 0-33), the backup GPT (the last
    /// 33 sectors), and in each piece the 4 KiB blocks that are not all
    /// zero (the ESP is mostly empty). Nothing else is ever written, so
    /// the rest (the state partition, padding) is zero. From the pieces'
    /// content, not the file system's allocation, so the map is the same
    /// on every file system; gaps under 64 KiB are not worth a range.
    pub fn data_ranges(&self) -> Result<Vec<(u64, u64)>> {
        const GPT: u64 = 34 * 512;
        const BLOCK: usize = 4096;
        const MIN_GAP: u64 = 64 << 10;
        let size = self.layout.disk_size;
        let mut v = vec![(0, GPT.min(size)), (size.saturating_sub(GPT - 512), size)];
        let mut buf = vec![0u8; 1 << 20];
        for p in &self.pieces {
            let f = File::open(&p.file)
                .with_context(|| format!("raw disk map: open {}", p.file.display()))?;
            let len = f.metadata()?.len();
            let runs = crate::host::direct::data_runs(&f, 0, len).unwrap_or(vec![(0, len)]);
            let mut cur: Option<(u64, u64)> = None;
            for (start, end) in runs {
                // Whole blocks: a run may start or end inside one.
                let mut off = start / BLOCK as u64 * BLOCK as u64;
                while off < end {
                    let n = ((end - off) as usize).min(buf.len());
                    let got = crate::host::read_full_at(&f, &mut buf[..n], off)
                        .with_context(|| format!("raw disk map: read {}", p.file.display()))?;
                    for (i, b) in buf[..got].chunks(BLOCK).enumerate() {
                        if b.iter().all(|x| *x == 0) {
                            continue;
                        }
                        let s = off + (i * BLOCK) as u64;
                        let e = s + b.len() as u64;
                        cur = match cur {
                            Some((cs, ce)) if s <= ce + MIN_GAP => Some((cs, e)),
                            Some(r) => {
                                v.push((p.at + r.0, p.at + r.1));
                                Some((s, e))
                            }
                            None => Some((s, e)),
                        };
                    }
                    if got < n {
                        break;
                    }
                    off += n as u64;
                }
            }
            if let Some(r) = cur {
                v.push((p.at + r.0, p.at + r.1));
            }
        }
        Ok(v)
    }

    /// The sha256 the raw disk has once every piece is copied, taken while
    /// they are being copied: its own bytes between the pieces (the GPTs
    /// sfdisk wrote, holes), which nothing writes after sfdisk, and each
    /// piece's bytes from its file (a copy leaves the file's zero MiBs as
    /// holes, which read as the same zeros). The raw disk is not read back
    /// after it is written; `cairn verify` and the repro test hash the file
    /// itself.
    pub fn digest_as_written(&self, label: &str) -> Result<Sha256> {
        let mut bar = crate::host::progress::Progress::new(label, self.layout.disk_size);
        let mut s = crate::host::digest::Spliced::new(Some(&mut bar));
        let raw = File::open(&self.path)
            .with_context(|| format!("open {} to hash it", self.path.display()))?;
        let mut raw = crate::host::direct::Reader::new(raw, &self.path);
        let mut sorted: Vec<&Piece> = self.pieces.iter().collect();
        sorted.sort_by_key(|p| p.at);
        let mut pos = 0u64;
        for p in sorted {
            if p.at < pos {
                bail!(
                    "raw disk: {} overlaps the piece before it",
                    p.file.display()
                );
            }
            s.range(&mut raw, &self.path, pos, p.at)?;
            pos = p.at + s.file(&p.file)?;
        }
        if pos > self.layout.disk_size {
            bail!("raw disk: its pieces end past the disk's size");
        }
        s.range(&mut raw, &self.path, pos, self.layout.disk_size)?;
        let d = s.finish();
        bar.finish();
        Ok(d)
    }
}

/// Writes the raw disk at `out`.
pub fn write_raw(inp: &DiskInputs, work: &Path, out: &Path) -> Result<RawDisk> {
    let raw = write_raw_system(inp, work, out, |_| {})?;
    write_raw_models(&raw, out)?;
    Ok(raw)
}

/// Writes the raw disk at `out` but the model volumes' partitions (left
/// zero, for [`write_raw_models`]): the GPT, the ESP, the root, its hash
/// tree and the apps volume. What reads the disk but its models may start
/// then (the qcow2 takes the models from their volume files).
/// `laid_out` is called once the GPT is written, before any piece is
/// copied (the disk's digest may be taken from then on).
pub fn write_raw_system(
    inp: &DiskInputs,
    work: &Path,
    out: &Path,
    laid_out: impl FnOnce(&RawDisk),
) -> Result<RawDisk> {
    let size = |p: &Path| -> Result<u64> { Ok(std::fs::metadata(p)?.len()) };
    let vols = inp
        .volumes
        .iter()
        .map(|v| {
            Ok(VolumeSizes {
                name: v.name.clone(),
                kind: v.kind,
                root_hash: v.verity.root_hash,
                data: size(&v.image)?,
                hash: size(&v.verity.hash_path)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let files = super::esp::files(inp.uki, inp.shim);
    let layout = plan(
        super::esp::payload_size(&files)?,
        size(inp.root)?,
        size(inp.verity)?,
        &vols,
        inp.disk_size,
        inp.min_state_size,
    )?;
    let layout = with_audit(layout, inp.audit_size, inp.min_state_size)?;
    let esp = work.join("esp.img");
    let vol = &inp.root_hash.hex()[..8];
    make_esp(&files, &esp, layout.esp.1, vol, inp.epoch)?;

    {
        let f = File::create(out).with_context(|| format!("media: create {}", out.display()))?;
        f.set_len(layout.disk_size)?;
    }
    let script = sfdisk_script(&layout, inp.root_hash);
    let sh = crate::host::runner::shell()?;
    crate::host::runner::run(
        "media: GPT",
        xshell::cmd!(sh, "sfdisk --no-reread --no-tell-kernel --quiet {out}").stdin(script),
    )?;
    let mut pieces = pieces(inp, &layout, &esp);
    if let Some((at, _)) = layout.audit {
        let header = work.join("audit-header.img");
        let mut h = AUDIT_HEADER.to_vec();
        h.resize(512, 0);
        std::fs::write(&header, h).context("media: audit header")?;
        pieces.push(Piece {
            at,
            file: header,
            model: false,
        });
    }
    let raw = RawDisk {
        path: out.to_path_buf(),
        pieces,
        layout,
    };
    laid_out(&raw);
    // The system's few hundred MB through the page cache (where the
    // raw's hash reads them back from); the models' GBs direct.
    let mut f = Writer::open_buffered(out).context("media: raw disk")?;
    for p in raw.pieces.iter().filter(|p| !p.model) {
        let label = (p.file == inp.root).then_some("raw: root");
        copy_into_with(&mut f, p.at, &p.file, label)?;
    }
    // Not synced: like every other medium, the raw disk is read back
    // through the page cache (its hash, the qcow2) and published by a
    // rename; forcing it to disk cost about 1 s per GiB of models.
    drop(f);
    Ok(raw)
}

/// Writes the model volumes' partitions of a disk [`write_raw_system`] wrote.
pub fn write_raw_models(raw: &RawDisk, out: &Path) -> Result<()> {
    let mut f = Writer::open(out).context("media: raw disk")?;
    for p in raw.pieces.iter().filter(|p| p.model) {
        let data = raw.layout.volumes.iter().any(|v| v.data.0 == p.at);
        copy_into_with(&mut f, p.at, &p.file, data.then_some("raw: models"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digest taken while the disk is written, called before any piece
    /// is copied, is the sha256 of the finished file: pieces with zero
    /// MiBs and holes, a model volume copied afterwards. Control: a piece
    /// whose file changes after the copy gives another digest than the
    /// file's.
    #[test]
    fn the_raw_disks_digest_taken_while_it_is_written_is_the_files() {
        use crate::pipeline::volumes::{Kind, Volume};
        use std::os::unix::fs::FileExt as _;
        testkit::tool("sfdisk", "fdisk");
        testkit::tool("mkfs.vfat", "dosfstools");
        testkit::tool("mcopy", "mtools");
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let file = |name: &str, len: u64, data: &[(u64, u8)]| {
            let f = p.join(name);
            let h = File::create(&f).unwrap();
            h.set_len(len).unwrap();
            for (at, b) in data {
                h.write_all_at(&vec![*b; 5000], *at).unwrap();
            }
            f
        };
        let uki = file("uki.efi", 300_000, &[(0, 1), (200_000, 2)]);
        // A zero MiB in the middle, and data in the last block.
        let root = file("root.img", 3 << 20, &[(10, 3), ((3 << 20) - 5000, 4)]);
        let verity = file("root.verity", 8192, &[(0, 5)]);
        let volume = |name: &str, kind: Kind, image: PathBuf, hash: PathBuf| Volume {
            name: name.into(),
            kind,
            verity: crate::pipeline::verity::VerityTree {
                hash_path: hash,
                root_hash: Sha256::of_bytes(name.as_bytes()),
                salt: "00".into(),
                uuid: "00000000-0000-0000-0000-000000000000".into(),
                data_block_size: 4096,
                hash_block_size: 4096,
                hash_algorithm: "sha256",
                data_size: std::fs::metadata(&image).unwrap().len(),
                hash_size: 4096,
            },
            image,
            compression: crate::recipe::workloads::Compression::None,
            model_sha256: Sha256::of_bytes(b"m"),
            mount: "/m".into(),
            cached: false,
        };
        let volumes = vec![
            volume(
                "apps",
                Kind::Apps,
                file("apps.img", 8192, &[(0, 6)]),
                file("apps.verity", 4096, &[(0, 7)]),
            ),
            volume(
                "weights",
                Kind::Model,
                file("m.img", 2 << 20, &[((1 << 20) + 7, 8)]),
                file("m.verity", 4096, &[(0, 9)]),
            ),
        ];
        let root_hash = Sha256::of_bytes(b"root");
        let inp = DiskInputs {
            uki: &uki,
            shim: None,
            root: &root,
            verity: &verity,
            root_hash: &root_hash,
            volumes: &volumes,
            disk_size: 128 << 20,
            min_state_size: 8 << 20,
            audit_size: 0,
            epoch: 1_700_000_000,
        };
        let out = p.join("disk.raw");
        let mut early = None;
        let raw = write_raw_system(&inp, p, &out, |r| {
            early = Some(r.digest_as_written("test").unwrap());
        })
        .unwrap();
        write_raw_models(&raw, &out).unwrap();
        let want = Sha256::of_file(&out).unwrap();
        assert_eq!(early.unwrap(), want, "taken before the copies");
        assert_eq!(raw.digest_as_written("test").unwrap(), want, "taken after");
        // The data ranges cover every non-zero byte (the flash's map): a
        // disk with only those bytes copied is the same disk.
        let bytes = std::fs::read(&out).unwrap();
        let ranges = raw.data_ranges().unwrap();
        let mut only = vec![0u8; bytes.len()];
        for (s, e) in &ranges {
            only[*s as usize..*e as usize].copy_from_slice(&bytes[*s as usize..*e as usize]);
        }
        let diff = only.iter().zip(&bytes).position(|(a, b)| a != b);
        assert_eq!(
            diff, None,
            "a non-zero byte outside the data ranges {ranges:?}"
        );
        let mapped: u64 = ranges.iter().map(|(s, e)| e - s).sum();
        assert!(mapped < (16 << 20), "{mapped} bytes mapped of 128 MiB");
        // Control: without the backup GPT's range, the copy differs.
        let last = ranges.iter().max_by_key(|r| r.1).unwrap();
        only[last.0 as usize..last.1 as usize].fill(0);
        assert!(only != bytes);
        // Control: the root's file changed after it was copied.
        File::options()
            .write(true)
            .open(&root)
            .unwrap()
            .write_all_at(&[0xee], 1 << 20)
            .unwrap();
        assert_ne!(raw.digest_as_written("test").unwrap(), want);
    }

    #[test]
    fn copies_leave_zero_mebibytes_and_source_holes_as_holes() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        // 6 MiB: data in MiB 0 and 3 (one byte), MiB 5 a hole in the source.
        let f = File::create(&src).unwrap();
        f.set_len(6 << 20).unwrap();
        {
            use std::os::unix::fs::FileExt as _;
            f.write_all_at(&[9u8; 100], 10).unwrap();
            f.write_all_at(&[7u8], (3 << 20) + 5).unwrap();
            f.write_all_at(&[0u8; 1 << 20], 4 << 20).unwrap();
        }
        let dst = d.path().join("dst");
        File::create(&dst).unwrap().set_len(8 << 20).unwrap();
        let mut w = Writer::open(&dst).unwrap();
        copy_into(&mut w, 1 << 20, &src).unwrap();
        drop(w);
        let got = std::fs::read(&dst).unwrap();
        let mut want = vec![0u8; 8 << 20];
        want[(1 << 20) + 10..(1 << 20) + 110].fill(9);
        want[(4 << 20) + 5] = 7;
        assert!(got == want, "other bytes");
        // Allocated: the two MiB with data, not the zeros (written or not).
        let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&dst).unwrap());
        assert!(blocks * 512 <= 2 << 20, "{} bytes allocated", blocks * 512);
        // Control: the same copy without skipping allocates every MiB.
        let dense = d.path().join("dense");
        std::fs::write(&dense, &want).unwrap();
        let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&dense).unwrap());
        assert!(blocks * 512 >= 8 << 20);
    }

    #[test]
    fn layout_is_aligned_and_state_takes_the_rest() {
        let l = plan(30 * MIB, 200 * MIB + 5, 2 * MIB, &[], 2048 * MIB, 256 * MIB).unwrap();
        assert_eq!(l.esp.0, MIB);
        for (s, n) in [l.esp, l.root, l.verity, l.state] {
            assert_eq!(s % MIB, 0);
            assert_eq!(n % MIB, 0);
        }
        assert_eq!(l.root.1, 201 * MIB);
        assert!(l.state.0 + l.state.1 <= l.disk_size - MIB);
        let e = plan(30 * MIB, 200 * MIB, 2 * MIB, &[], 300 * MIB, 256 * MIB).unwrap_err();
        assert!(e.to_string().contains("too small"), "{e}");
    }

    #[test]
    fn the_esp_is_sized_for_everything_on_it() {
        // One ~33 MB UKI, alone or behind shim (~1 MB) and MokManager
        // (~0.9 MB): the 64 MiB minimum holds either.
        let uki = 31_881_744;
        let chain = uki + 1_048_504 + 877_992;
        for payload in [uki, chain] {
            let l = plan(payload, 200 * MIB, 2 * MIB, &[], 2048 * MIB, 256 * MIB).unwrap();
            assert_eq!(l.esp.1, 64 * MIB);
        }
        // A larger UKI behind shim: the ESP grows with the whole payload,
        // a quarter spare and 4 MiB for FAT.
        let big = 60 * MIB + 1_048_504 + 877_992;
        let l = plan(big, 200 * MIB, 2 * MIB, &[], 2048 * MIB, 256 * MIB).unwrap();
        assert!(l.esp.1 >= big + big / 4 + 4 * MIB, "{}", l.esp.1);
        assert!(
            l.esp.1
                > plan(60 * MIB, 200 * MIB, 2 * MIB, &[], 2048 * MIB, 256 * MIB)
                    .unwrap()
                    .esp
                    .1
        );
    }

    #[test]
    fn script_names_partitions_by_label() {
        let l = plan(30 * MIB, 200 * MIB, 2 * MIB, &[], 2048 * MIB, 256 * MIB).unwrap();
        let s = sfdisk_script(&l, &Sha256::of_bytes(b"x"));
        for label in [LABEL_ESP, LABEL_ROOT, LABEL_VERITY, LABEL_STATE] {
            assert!(s.contains(&format!("name=\"{label}\"")), "{s}");
        }
        assert_eq!(s, sfdisk_script(&l, &Sha256::of_bytes(b"x")));
        assert_ne!(s, sfdisk_script(&l, &Sha256::of_bytes(b"y")));
    }

    #[test]
    fn partitions_carry_the_uuids_the_root_hash_names() {
        let h =
            Sha256::from_hex("2c829e2d6efef66757263d209f7221fb0506b73787c070e28c3606bec7e59358")
                .unwrap();
        // As systemd-repart writes them and systemd-dissect --root-hash=
        // looks for them: the hash's bytes in order, no version bits.
        assert_eq!(root_uuid(&h), "2c829e2d-6efe-f667-5726-3d209f7221fb");
        assert_eq!(verity_uuid(&h), "0506b737-87c0-70e2-8c36-06bec7e59358");
        // The initramfs computes this with
        // `printf 'cairn-state %s' HASH | sha256sum` (golden value from it).
        assert_eq!(state_uuid(&h), "4dfe9e19-3a6f-4a19-86fe-93247cfb37eb");
        let l = plan(30 * MIB, 200 * MIB, 2 * MIB, &[], 2048 * MIB, 256 * MIB).unwrap();
        let s = sfdisk_script(&l, &h);
        let line = |label: &str| {
            s.lines()
                .find(|l| l.contains(&format!("name=\"{label}\"")))
                .unwrap()
                .to_string()
        };
        assert!(line(LABEL_ROOT).contains(&format!(
            "type={TYPE_ROOT_X86_64}, uuid={}",
            root_uuid(&h).to_uppercase()
        )));
        assert!(line(LABEL_VERITY).contains(&format!(
            "type={TYPE_ROOT_VERITY_X86_64}, uuid={}",
            verity_uuid(&h).to_uppercase()
        )));
        assert!(line(LABEL_STATE).contains(&state_uuid(&h).to_uppercase()));
    }

    #[test]
    fn model_volumes_sit_before_the_state_with_uuids_from_their_root_hash() {
        let h =
            Sha256::from_hex("2c829e2d6efef66757263d209f7221fb0506b73787c070e28c3606bec7e59358")
                .unwrap();
        let long = "m".repeat(30);
        let vols = [
            VolumeSizes {
                kind: crate::pipeline::volumes::Kind::Model,
                name: "iris".into(),
                root_hash: h,
                data: 5 * MIB + 1,
                hash: 4096,
            },
            VolumeSizes {
                kind: crate::pipeline::volumes::Kind::Model,
                name: long.clone(),
                root_hash: Sha256::of_bytes(b"other"),
                data: MIB,
                hash: 4096,
            },
        ];
        let l = plan(30 * MIB, 200 * MIB, 2 * MIB, &vols, 2048 * MIB, 256 * MIB).unwrap();
        assert_eq!(l.volumes[0].data, (l.verity.0 + l.verity.1, 6 * MIB));
        assert_eq!(l.volumes[0].hash.1, MIB);
        assert_eq!(l.volumes[1].data.0, l.volumes[0].hash.0 + MIB);
        assert_eq!(l.state.0, l.volumes[1].hash.0 + l.volumes[1].hash.1);
        let s = sfdisk_script(&l, &Sha256::of_bytes(b"root"));
        let lines: Vec<&str> = s.lines().filter(|l| l.starts_with("start=")).collect();
        // ESP, root, verity, two volumes of two partitions, state last.
        assert_eq!(lines.len(), 8, "{s}");
        assert!(lines[7].contains(LABEL_STATE), "{s}");
        assert!(lines[3].contains(&format!(
            "type={TYPE_LINUX_DATA}, uuid=2C829E2D-6EFE-F667-5726-3D209F7221FB, name=\"cairn-model-iris\""
        )), "{s}");
        assert!(
            lines[4].contains(
                "uuid=0506B737-87C0-70E2-8C36-06BEC7E59358, name=\"cairn-model-iris-verity\""
            ),
            "{s}"
        );
        // A name too long for GPT's 36 characters: the hash names it.
        let (d, v) = l.volumes[1].labels();
        assert!(d.len() <= 36 && v.len() <= 36, "{d} {v}");
        assert!(!d.contains(&long));
        assert!(lines[5].contains(&format!("name=\"{d}\"")), "{s}");
        // Too small a disk names the volumes in its sum.
        let e = plan(30 * MIB, 200 * MIB, 2 * MIB, &vols, 400 * MIB, 256 * MIB).unwrap_err();
        assert!(e.to_string().contains("model volumes 9 MiB"), "{e}");
    }

    /// `[audit]` puts its partition just before the state, which stays last
    /// (so `[state] grow` extends the state and leaves the trail alone), at
    /// the cost of the state's room; sfdisk takes the script and the GPT
    /// names both. Control: without `[audit]` the layout and script are
    /// what they were before audit existed.
    #[test]
    fn the_audit_partition_sits_before_the_state_and_only_when_asked() {
        let plain = plan(1 << 20, 10 << 20, 1 << 20, &[], 256 << 20, 8 << 20).unwrap();
        let rh = Sha256::of_bytes(b"root");
        let same = with_audit(plain.clone(), 0, 8 << 20).unwrap();
        assert_eq!(same, plain);
        assert!(!sfdisk_script(&same, &rh).contains(LABEL_AUDIT));
        let l = with_audit(plain.clone(), 16 << 20, 8 << 20).unwrap();
        assert_eq!(l.audit, Some((plain.state.0, 16 << 20)));
        assert_eq!(
            l.state,
            (plain.state.0 + (16 << 20), plain.state.1 - (16 << 20))
        );
        assert_eq!(l.state.0 + l.state.1, plain.state.0 + plain.state.1);
        let script = sfdisk_script(&l, &rh);
        let (a, st) = (
            script.find(LABEL_AUDIT).unwrap(),
            script.find(LABEL_STATE).unwrap(),
        );
        assert!(a < st, "{script}");
        assert!(script.contains(&audit_uuid(&rh).to_uppercase()));
        assert_ne!(audit_uuid(&rh), state_uuid(&rh));
        // No room: named, with how much to add.
        let e = with_audit(plain.clone(), plain.state.1, 8 << 20).unwrap_err();
        assert!(format!("{e}").contains("raise disk.size by 8 MiB"), "{e}");

        testkit::tool("sfdisk", "fdisk");
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("d.raw");
        File::create(&disk).unwrap().set_len(256 << 20).unwrap();
        let sh = crate::host::runner::shell().unwrap();
        crate::host::runner::run(
            "test: GPT",
            xshell::cmd!(sh, "sfdisk --no-reread --no-tell-kernel --quiet {disk}").stdin(script),
        )
        .unwrap();
        let json =
            crate::host::runner::run("test: GPT", xshell::cmd!(sh, "sfdisk -J {disk}")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let parts = v["partitiontable"]["partitions"].as_array().unwrap();
        let names: Vec<&str> = parts.iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names[names.len() - 2..], [LABEL_AUDIT, LABEL_STATE]);
        let audit = &parts[names.len() - 2];
        assert_eq!(audit["start"].as_u64().unwrap() * 512, plain.state.0);
        assert_eq!(audit["size"].as_u64().unwrap() * 512, 16 << 20);
    }
}
