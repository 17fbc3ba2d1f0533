//! Model volumes: every `[[models]]` entry becomes a read-only volume of
//! its own, a squashfs image (uncompressed unless the recipe says `zstd`)
//! with its own dm-verity hash tree and root hash. The root holds only the
//! empty mount point; the initramfs opens each volume through dm-verity
//! and mounts it there, so services read the weights from the verity
//! device. Invariant: a volume depends only on the model's content, its
//! name, its compression and SOURCE_DATE_EPOCH (the stage-cache key covers
//! exactly these), so an unchanged model reuses its cached volume.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::host::digest::Sha256;
use crate::pipeline::verity::VerityTree;
use crate::pipeline::volume as volume_stage;
use crate::recipe::workloads::{Compression, Model};

/// Where a folder model is mounted: the folder services already bind.
pub const MODELS_DIR: &str = "usr/share/cairn/models";
/// Where a single-file model's volume is mounted; the model's path in
/// [`MODELS_DIR`] is a link to the file in it.
pub const FILE_VOLUMES_DIR: &str = "usr/lib/cairn/volumes";

/// What a volume holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The apps layer of the root (`pipeline::layers`), over the base.
    Apps,
    /// One `[[models]]` entry, mounted at its path.
    Model,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Apps => "apps",
            Kind::Model => "model",
        }
    }

    /// The kind a manifest names (`VolumeInfo::kind`).
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "apps" => Some(Kind::Apps),
            "model" => Some(Kind::Model),
            _ => None,
        }
    }
}

/// The apps volume's name (no model may take it: recipe validation).
pub const APPS: &str = crate::recipe::workloads::APPS_VOLUME;

/// One volume besides the base, ready for the media.
#[derive(Debug, Clone)]
pub struct Volume {
    pub name: String,
    pub kind: Kind,
    /// The squashfs image (in the work folder or the stage cache).
    pub image: PathBuf,
    pub verity: VerityTree,
    pub compression: Compression,
    /// What it is made from: the model's pinned digest (file sha256 or
    /// tree digest), or the apps tree's input key.
    pub model_sha256: Sha256,
    /// Where the volume is mounted in the running image (absolute; `/`
    /// for apps, which overlayfs stacks over the base).
    pub mount: String,
    /// Whether it came from the stage cache.
    pub cached: bool,
}

impl Volume {
    /// The kernel command-line word that carries its root hash.
    pub fn cmdline_word(&self) -> String {
        cmdline_word(self.kind, &self.name, &self.verity.root_hash)
    }
}

/// The kernel command-line word that carries a volume's root hash:
/// `cairn.apps=HASH`, `cairn.volume.NAME=HASH` for a model.
pub fn cmdline_word(kind: Kind, name: &str, root_hash: &Sha256) -> String {
    match kind {
        Kind::Apps => format!("cairn.apps={root_hash}"),
        Kind::Model => format!("cairn.volume.{name}={root_hash}"),
    }
}

/// The mount point of a model's volume, relative to the root.
pub fn mount_point(m: &Model) -> String {
    if m.path.is_dir() {
        format!("{MODELS_DIR}/{}", m.name)
    } else {
        format!("{FILE_VOLUMES_DIR}/{}", m.name)
    }
}

/// The mksquashfs options of a compression setting (times and owners are
/// fixed separately). `none`: data, inodes, fragments and extended
/// attributes all stored as they are.
pub fn squashfs_options(c: Compression) -> &'static [&'static str] {
    match c {
        Compression::None => &["-noI", "-noD", "-noF", "-noX"],
        // As the root (`squashfs::ROOT_OPTIONS`): zstd 10 in 1 MiB blocks.
        Compression::Zstd => &["-b", "1M", "-comp", "zstd", "-Xcompression-level", "10"],
    }
}

/// The stage-cache key of a model volume: everything its bytes depend on.
pub fn cache_key(m: &Model, epoch: u64) -> Sha256 {
    let kind = if m.path.is_dir() { "folder" } else { "file" };
    crate::inputs::stagecache::key(
        "model-volume",
        &[
            format!("name {}", m.name),
            format!("model {kind} {}", m.sha256),
            format!("compression {}", m.compression.as_str()),
            format!("mksquashfs {}", squashfs_options(m.compression).join(" ")),
            "mksquashfs -all-root -no-xattrs -no-progress".into(),
            // A file model is read through a pseudo file definition (not a
            // staged copy): another layout than before, so another key.
            "file by pseudo definition".into(),
            format!("epoch {epoch}"),
            "verity salt and uuid from this key".into(),
            format!(
                "verity sha256 {} {}",
                crate::pipeline::verity::BLOCK_SIZE,
                crate::pipeline::verity::BLOCK_SIZE
            ),
        ],
    )
}

/// Makes (or takes from the stage cache) the volume of every model.
pub fn make_model_volumes(plan: &crate::inputs::plan::Plan, work: &Path) -> Result<Vec<Volume>> {
    let epoch = plan.recipe.source_date_epoch;
    plan.recipe
        .workloads
        .models
        .iter()
        .map(|m| {
            let v =
                make_model_volume(m, &plan.cache, plan.stage_cache, epoch, work).map_err(|e| {
                    match e.downcast_ref::<crate::InputError>() {
                        // Bad input names the model and the recipe's line
                        // itself (and prints as it is).
                        Some(_) => e,
                        None => e.context(format!("model volume {}", m.name)),
                    }
                })?;
            crate::host::progress::say(&format!(
                "        model {}: {:.1} MiB ({}{}), root hash {}",
                v.name,
                v.verity.data_size as f64 / 1048576.0,
                v.compression.as_str(),
                if v.cached { ", cached" } else { "" },
                v.verity.root_hash
            ));
            Ok(v)
        })
        .collect()
}

/// One model's volume, made in `work/volume-NAME/` by the volume stage
/// (or taken from the stage cache, with the stage cache on).
pub fn make_model_volume(
    m: &Model,
    cache: &crate::inputs::cache::Cache,
    stage_cache: bool,
    epoch: u64,
    work: &Path,
) -> Result<Volume> {
    let key = cache_key(m, epoch);
    // A file model's pin is checked here, not at resolve time: a volume
    // made now checks it while packing (the one read of the file); a
    // cached one is checked while the cache checks its image.
    let pin = || check_file_pin(m);
    let file = !m.path.is_dir();
    let built = volume_stage::cached(
        cache,
        &volume_stage::MODEL,
        stage_cache.then_some(&key),
        if file { Some(&pin) } else { None },
        || pack_model(m, &key, epoch, work),
    )?;
    Ok(Volume {
        name: m.name.clone(),
        kind: Kind::Model,
        image: built.image,
        verity: built.verity,
        compression: m.compression,
        model_sha256: m.sha256,
        mount: format!("/{}", mount_point(m)),
        cached: built.cached,
    })
}

/// Packs a model into its squashfs image (checked against the pin as it
/// is packed) and makes the image's hash tree, seeded by the key.
fn pack_model(m: &Model, key: &Sha256, epoch: u64, work: &Path) -> Result<volume_stage::Made> {
    let dir = work.join(format!("volume-{}", m.name));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree)?;
    let label = format!("model {}", m.name);
    let image = dir.join(format!("{}.squashfs", m.name));
    // `-noappend OPTIONS -all-root -no-xattrs`, as the key says.
    let mut options: Vec<std::ffi::OsString> = vec!["-noappend".into()];
    options.extend(squashfs_options(m.compression).iter().map(Into::into));
    options.extend(["-all-root".into(), "-no-xattrs".into()]);
    let t = Instant::now();
    // The image goes to the disk through a few pages of the page cache,
    // not GBs of fresh memory (`host::direct::DropBehind`), while
    // mksquashfs writes it.
    let streaming = crate::host::direct::DropBehind::start(vec![image.clone()]);
    if m.path.is_dir() {
        // The pin was checked at resolve time; check what will be packed,
        // too.
        stage_folder(&m.path, &tree)?;
        let staged = crate::host::digest::tree_digest(&tree)?;
        set_mode(&tree, 0o755)?;
        if staged != m.sha256 {
            bail!(
                "the staged data has digest {staged}, not the pinned {} (did it change during the build?)",
                m.sha256
            );
        }
        step(&label, "staged and checked against its pin", t);
        let pack = volume_stage::Pack {
            label: "model volume",
            tree: &tree,
            options,
            tail: Vec::new(),
            env: None,
        };
        volume_stage::squashfs(&pack, &image, epoch)?;
    } else {
        // A file is not copied: mksquashfs reads it through a pseudo file
        // definition whose command is constant (`cat` of a fifo in this
        // build's work folder; the model's path never reaches a command
        // line), and this process feeds the fifo from the file, hashing
        // each piece on its way (`feed_fifo`), so what is packed is
        // checked against the pin in the same pass, read once.
        set_mode(&tree, 0o755)?;
        // Opened without blocking, a regular file only: a fifo or a device
        // put in the file's place after resolve is refused, not read.
        use crate::host::untrusted::{open, Links, UntrustedError};
        let src = open(&m.path, Links::Follow).map_err(|e| match e {
            UntrustedError::Io { .. } => anyhow::Error::new(e).context(m.unreadable()),
            _ => crate::InputError(format!(
                "{}: model {}: {e}; `path` must name a regular file or a folder",
                m.at, m.name
            ))
            .into(),
        })?;
        let fifo = dir.join("feed.fifo");
        make_fifo(&fifo)?;
        let bar = (src.len >= crate::host::digest::PROGRESS_MIN)
            .then(|| crate::host::progress::Progress::new(&format!("{label}: pack"), src.len));
        let pseudo = format!(
            "{} f {:o} 0 0 cat -- \"$CAIRN_FEED\"",
            m.name,
            file_mode(&m.path)?
        );
        let (packed, fed) = std::thread::scope(|s| {
            let feeder = s.spawn(|| feed_fifo(src, &fifo, bar));
            let pack = volume_stage::Pack {
                label: "model volume",
                tree: &tree,
                options,
                tail: vec!["-p".into(), pseudo.into()],
                env: Some(("CAIRN_FEED", &fifo)),
            };
            let packed = volume_stage::squashfs(&pack, &image, epoch);
            // A feeder still waiting for the fifo's reader (mksquashfs
            // failed before it ran `cat`) is let through; its writes then
            // fail, and mksquashfs's error is the one reported.
            let _ = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo);
            let fed = feeder
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            (packed, fed)
        });
        packed?;
        let hashed = fed?;
        if hashed != m.sha256 {
            return Err(m.pin_error(&hashed).into());
        }
    }
    drop(streaming);
    std::fs::remove_dir_all(&tree).ok();
    step(
        &label,
        &format!("squashfs image written ({})", m.compression.as_str()),
        t,
    );
    // The hash tree's salt comes from the key (which determines the
    // image's bytes). The image is kept in the stage cache by that tree's
    // root hash (checked again when read back), so no other pass over it
    // is made.
    let t = Instant::now();
    let made = volume_stage::hash_tree(
        &image,
        volume_stage::Seed::Key(key),
        &dir.join(format!("{}.verity", m.name)),
    )?;
    step(&label, "dm-verity hash tree written", t);
    Ok(made)
}

/// Checks a file model against its pin (bad input when it differs).
fn check_file_pin(m: &Model) -> Result<()> {
    let got = Sha256::of_file_with_progress(&m.path, &format!("model {}: check the pin", m.name))
        .with_context(|| m.unreadable())?;
    if got != m.sha256 {
        return Err(m.pin_error(&got).into());
    }
    Ok(())
}

/// A line saying that a long step of a volume is done (bigger models take
/// minutes; the stage line alone would be silent all that time).
fn step(label: &str, what: &str, since: Instant) {
    crate::host::progress::say(&format!(
        "        {label}: {what} in {:.1}s",
        since.elapsed().as_secs_f64()
    ));
}

/// Copies a model folder into `tree`: folders 0755, files 0444 (0555 when
/// executable, which the tree digest counts), nothing else.
fn stage_folder(src: &Path, tree: &Path) -> Result<()> {
    for e in walkdir::WalkDir::new(src).min_depth(1).sort_by_file_name() {
        let e = e?;
        let rel = e.path().strip_prefix(src)?;
        let target = tree.join(rel);
        let ft = e.path().symlink_metadata()?.file_type();
        if ft.is_dir() {
            std::fs::create_dir_all(&target)?;
            set_mode(&target, 0o755)?;
        } else if ft.is_file() {
            copy_file(e.path(), &target)?;
        } else {
            bail!(
                "{}: only files and folders are allowed in model data",
                e.path().display()
            );
        }
    }
    Ok(())
}

fn copy_file(src: &Path, dst: &Path) -> Result<()> {
    std::fs::copy(src, dst).with_context(|| format!("copy {}", src.display()))?;
    set_mode(dst, file_mode(src)?)
}

/// 0555 for an executable file, else 0444.
fn file_mode(src: &Path) -> Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    let exec = std::fs::metadata(src)
        .with_context(|| format!("read {}", src.display()))?
        .permissions()
        .mode()
        & 0o111
        != 0;
    Ok(if exec { 0o555 } else { 0o444 })
}

/// A fifo at `path`, for this user only.
fn make_fifo(path: &Path) -> Result<()> {
    crate::host::sys::mkfifo(path, 0o600).with_context(|| format!("mkfifo {}", path.display()))
}

/// The largest piece [`feed_fifo`] reads and writes at once.
const FEED_PIECE: usize = 1 << 20;

/// Writes the model file `src` into the fifo `fifo` (opened for writing:
/// this waits for its reader) and returns the sha256 of what was written:
/// one read of the file, the hash taken on a second thread while the next
/// piece is read and written. Exactly the length the file had when it was
/// opened is written; a file that changed length meanwhile is an error.
fn feed_fifo(
    src: crate::host::untrusted::UntrustedFile,
    fifo: &Path,
    mut bar: Option<crate::host::progress::Progress>,
) -> Result<Sha256> {
    use std::sync::Arc;
    let crate::host::untrusted::UntrustedFile {
        file: mut input,
        len,
        path,
    } = src;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Arc<Vec<u8>>>(4);
    std::thread::scope(|s| {
        let hasher = s.spawn(move || {
            let mut h = <sha2::Sha256 as sha2::Digest>::new();
            for piece in rx {
                sha2::Digest::update(&mut h, &piece[..]);
            }
            Sha256(sha2::Digest::finalize(h).into())
        });
        let fed = (|| -> Result<()> {
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .open(fifo)
                .with_context(|| format!("open {}", fifo.display()))?;
            crate::host::set_pipe_size(&out, FEED_PIECE);
            let mut done = 0u64;
            while done < len {
                let want = (len - done).min(FEED_PIECE as u64) as usize;
                let mut buf = vec![0u8; want];
                let n = crate::host::read_full(&mut input, &mut buf)
                    .with_context(|| format!("read {}", path.display()))?;
                if n < want {
                    bail!("{} got shorter while it was packed", path.display());
                }
                let piece = Arc::new(buf);
                tx.send(Arc::clone(&piece))
                    .map_err(|_| anyhow::anyhow!("model hash: its thread ended"))?;
                out.write_all(&piece)
                    .with_context(|| format!("write {} into the pack", path.display()))?;
                done += n as u64;
                if let Some(b) = bar.as_mut() {
                    b.update(done);
                }
            }
            if input.metadata().map(|m| m.len()).ok() != Some(len) {
                bail!("{} changed length while it was packed", path.display());
            }
            Ok(())
        })();
        drop(tx);
        let digest = hasher
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        match (&fed, bar.as_mut()) {
            (Ok(()), Some(b)) => b.finish(),
            (Err(_), Some(b)) => b.abandon(),
            _ => {}
        }
        fed.map(|()| digest)
    })
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(dir: &Path, compression: Compression) -> Model {
        let p = dir.join("m");
        std::fs::create_dir_all(p.join("sub")).unwrap();
        // Incompressible-looking but plain text, so an uncompressed image
        // shows it verbatim.
        let text: String = (0..20000).map(|i| format!("weight {i}\n")).collect();
        std::fs::write(p.join("sub/weights.txt"), &text).unwrap();
        std::fs::write(p.join("config.json"), "{}\n").unwrap();
        Model {
            name: "m1".into(),
            sha256: crate::host::digest::tree_digest(&p).unwrap(),
            path: p,
            compression,
            at: "r.toml:1:1".into(),
        }
    }

    /// A model of one file, `w.bin` of 10000 bytes 7, pinned at `at`.
    fn file_model(dir: &Path, at: &str) -> (PathBuf, Model) {
        let f = dir.join("w.bin");
        std::fs::write(&f, vec![7u8; 10000]).unwrap();
        let m = Model {
            name: "w".into(),
            sha256: Sha256::of_file(&f).unwrap(),
            path: f.clone(),
            compression: Compression::None,
            at: at.into(),
        };
        (f, m)
    }

    fn tools() {
        testkit::tool("mksquashfs", "squashfs-tools");
        testkit::tool("veritysetup", "cryptsetup-bin");
    }

    #[test]
    fn volumes_are_deterministic_uncompressed_by_default_and_cached() {
        tools();
        let d = tempfile::tempdir().unwrap();
        let cache = crate::inputs::cache::Cache::open(d.path().join("cache")).unwrap();
        let m = model(d.path(), Compression::None);
        let a = make_model_volume(&m, &cache, true, 1_700_000_000, &d.path().join("wa")).unwrap();
        assert!(!a.cached);
        let b = make_model_volume(&m, &cache, false, 1_700_000_000, &d.path().join("wb")).unwrap();
        assert!(!b.cached);
        assert_eq!(a.verity.root_hash, b.verity.root_hash);
        assert_eq!(
            std::fs::read(&a.image).unwrap(),
            std::fs::read(&b.image).unwrap()
        );
        assert_eq!(a.mount, "/usr/share/cairn/models/m1");
        // Uncompressed: the model's bytes are in the image as they are.
        let img = std::fs::read(&a.image).unwrap();
        assert!(img.windows(12).any(|w| w == b"weight 1234\n"));
        // The stage cache gives the same volume without building it.
        let c = make_model_volume(&m, &cache, true, 1_700_000_000, &d.path().join("wc")).unwrap();
        assert!(c.cached);
        assert_eq!(c.verity.root_hash, a.verity.root_hash);
        assert_eq!(std::fs::read(&c.image).unwrap(), img);
        assert!(
            !d.path().join("wc").exists(),
            "a cached volume is not rebuilt"
        );
        // The cached hash tree checks the cached image (veritysetup
        // reads every block).
        let mut vs = crate::host::runner::command("veritysetup");
        vs.arg("verify")
            .arg(&c.image)
            .arg(&c.verity.hash_path)
            .arg(c.verity.root_hash.hex());
        crate::host::runner::output("test: veritysetup verify", vs)
            .unwrap_or_else(|e| panic!("{e:#}"));
        // Another epoch, another key: a miss.
        let e = make_model_volume(&m, &cache, true, 1_700_000_001, &d.path().join("we")).unwrap();
        assert!(!e.cached);
        assert_ne!(e.verity.root_hash, a.verity.root_hash);
    }

    /// A cached model image is kept by its hash tree's root hash, not a
    /// sha256 blob, and checked by it when read back: one flipped byte is
    /// caught, the image removed and the volume made again, byte for byte
    /// the same. Control: the untouched image is used as it is.
    #[test]
    fn a_cached_model_image_is_checked_by_its_root_hash() {
        tools();
        let d = tempfile::tempdir().unwrap();
        let cache = crate::inputs::cache::Cache::open(d.path().join("cache")).unwrap();
        let (_, m) = file_model(d.path(), "");
        let a = make_model_volume(&m, &cache, true, 7, &d.path().join("wa")).unwrap();
        let key = cache_key(&m, 7);
        let stored = volume_stage::stored_image_path(&cache, &volume_stage::MODEL, &key);
        assert_eq!(
            a.image, stored,
            "the image lives in the cache's volumes folder"
        );
        assert!(!crate::inputs::stagecache::indexed(
            &cache,
            true,
            volume_stage::MODEL.image,
            &key
        ));
        let bytes = std::fs::read(&stored).unwrap();
        // Control: untouched, it is used in place.
        let (p, v) = volume_stage::lookup(&cache, &volume_stage::MODEL, &key).unwrap();
        assert_eq!(
            (p.as_path(), v.root_hash),
            (stored.as_path(), a.verity.root_hash)
        );
        // One byte flipped in the middle.
        let mut bad = bytes.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 1;
        std::fs::set_permissions(&stored, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        std::fs::write(&stored, &bad).unwrap();
        assert!(volume_stage::lookup(&cache, &volume_stage::MODEL, &key).is_none());
        assert!(!stored.exists(), "a bad image is removed");
        let b = make_model_volume(&m, &cache, true, 7, &d.path().join("wb")).unwrap();
        assert!(!b.cached);
        assert_eq!(std::fs::read(&b.image).unwrap(), bytes);
        assert_eq!(b.verity.root_hash, a.verity.root_hash);
        // The stage cache off: nothing is looked up.
        let c = make_model_volume(&m, &cache, false, 7, &d.path().join("wc")).unwrap();
        assert!(!c.cached);
    }

    #[test]
    fn zstd_volumes_compress_and_differ() {
        tools();
        let d = tempfile::tempdir().unwrap();
        let cache = crate::inputs::cache::Cache::open(d.path().join("cache")).unwrap();
        let plain = model(d.path(), Compression::None);
        let z = Model {
            compression: Compression::Zstd,
            ..plain.clone()
        };
        assert_ne!(cache_key(&plain, 1), cache_key(&z, 1));
        let a = make_model_volume(&plain, &cache, true, 1, &d.path().join("a")).unwrap();
        let b = make_model_volume(&z, &cache, true, 1, &d.path().join("b")).unwrap();
        assert!(!b.cached, "a zstd volume is not the uncompressed one");
        assert!(b.verity.data_size * 2 < a.verity.data_size, "{b:?} {a:?}");
        assert_ne!(a.verity.root_hash, b.verity.root_hash);
    }

    #[test]
    fn a_file_model_is_a_volume_holding_the_file_under_its_name() {
        tools();
        let d = tempfile::tempdir().unwrap();
        let cache = crate::inputs::cache::Cache::open(d.path().join("cache")).unwrap();
        let (_, m) = file_model(d.path(), "");
        let v = make_model_volume(&m, &cache, false, 1, &d.path().join("w")).unwrap();
        assert_eq!(v.mount, "/usr/lib/cairn/volumes/w");
        // The file is read in place (no staged copy), whatever its path
        // holds: the path never reaches a shell as words. Its bytes and
        // mode are in the volume under the model's name.
        let odd = d.path().join("a dir \"$(touch pwned)\"");
        std::fs::create_dir_all(&odd).unwrap();
        let g = odd.join("w;$(touch pwned2) `id`.bin");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&g, &data).unwrap();
        std::fs::set_permissions(&g, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let odd_model = Model {
            name: "odd".into(),
            sha256: Sha256::of_file(&g).unwrap(),
            path: g.clone(),
            compression: Compression::None,
            at: String::new(),
        };
        let v = make_model_volume(&odd_model, &cache, false, 1, &d.path().join("o")).unwrap();
        let mut cmd = crate::host::runner::command("unsquashfs");
        cmd.arg("-cat").arg(&v.image).arg("odd");
        let out = crate::host::runner::output("test", cmd).unwrap();
        assert!(out.stdout == data, "the packed file differs from the model");
        let mut cmd = crate::host::runner::command("unsquashfs");
        cmd.arg("-lls").arg(&v.image);
        let out = crate::host::runner::output("test", cmd).unwrap();
        let listing = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with("-r-xr-xr-x root/root ")
                    && l.contains(" 300000 1970-01-01 00:00 ")
                    && l.ends_with(" squashfs-root/odd")),
            "{listing}"
        );
        for side in ["pwned", "pwned2"] {
            assert!(!d.path().join(side).exists() && !std::path::Path::new(side).exists());
        }
        // A wrong pin (data changed after resolve) stops the build.
        let bad = Model {
            sha256: Sha256::of_bytes(b"other"),
            ..m
        };
        let e = make_model_volume(&bad, &cache, false, 1, &d.path().join("x")).unwrap_err();
        assert!(e.downcast_ref::<crate::InputError>().is_some(), "{e:#}");
        assert!(format!("{e}").contains("but the recipe pins"), "{e:#}");
    }

    #[test]
    fn a_cached_file_model_is_still_checked_against_its_pin() {
        tools();
        let d = tempfile::tempdir().unwrap();
        let cache = crate::inputs::cache::Cache::open(d.path().join("cache")).unwrap();
        let (f, m) = file_model(d.path(), "r.toml:9:10");
        let a = make_model_volume(&m, &cache, true, 1, &d.path().join("a")).unwrap();
        assert!(!a.cached);
        // Control: the same file takes the cached volume, the same one
        // a build without the stage cache makes.
        let b = make_model_volume(&m, &cache, true, 1, &d.path().join("b")).unwrap();
        assert!(b.cached);
        let c = make_model_volume(&m, &cache, false, 1, &d.path().join("c")).unwrap();
        assert_eq!(b.verity.root_hash, c.verity.root_hash);
        assert_eq!(b.verity.salt, c.verity.salt);
        // The file changed, the pin did not: the cached volume (made from
        // the pinned data) is not taken silently.
        std::fs::write(&f, vec![8u8; 10000]).unwrap();
        let e = make_model_volume(&m, &cache, true, 1, &d.path().join("e")).unwrap_err();
        assert!(e.downcast_ref::<crate::InputError>().is_some(), "{e:#}");
        let text = format!("{e}");
        assert!(
            text.starts_with("r.toml:9:10: model w digest is") && text.contains("update the pin"),
            "{text}"
        );
    }

    /// The bytes a reader of the fifo gets and the digest `feed_fifo`
    /// returns.
    fn feed(src: crate::host::untrusted::UntrustedFile, fifo: &Path) -> (Vec<u8>, Result<Sha256>) {
        let reader = {
            let fifo = fifo.to_path_buf();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        let digest = feed_fifo(src, fifo, None);
        (reader.join().unwrap(), digest)
    }

    #[test]
    fn the_feeder_writes_the_file_and_hashes_what_it_wrote() {
        use crate::host::untrusted::{open, Links};
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("w.bin");
        // Three pieces and a part of one.
        let data: Vec<u8> = (0..(3 * FEED_PIECE + 12345))
            .map(|i| (i % 253) as u8)
            .collect();
        std::fs::write(&f, &data).unwrap();
        let fifo = d.path().join("feed.fifo");
        make_fifo(&fifo).unwrap();
        let (got, digest) = feed(open(&f, Links::Follow).unwrap(), &fifo);
        assert!(got == data, "the fifo's bytes differ from the file's");
        assert_eq!(digest.unwrap(), Sha256::of_bytes(&data));
        // A file cut short after it was opened is an error, not a shorter
        // volume with the digest of what was read.
        let src = open(&f, Links::Follow).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&f)
            .unwrap()
            .set_len(FEED_PIECE as u64)
            .unwrap();
        let (got, digest) = feed(src, &fifo);
        let e = digest.unwrap_err();
        assert!(
            format!("{e:#}").contains("got shorter while it was packed"),
            "{e:#}"
        );
        assert_eq!(got.len(), FEED_PIECE);
    }

    #[test]
    fn a_feeder_whose_reader_never_comes_is_let_go() {
        use crate::host::untrusted::{open, Links};
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("w.bin");
        std::fs::write(&f, vec![1u8; 3 * FEED_PIECE]).unwrap();
        let fifo = d.path().join("feed.fifo");
        make_fifo(&fifo).unwrap();
        let src = open(&f, Links::Follow).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let fifo = fifo.clone();
            std::thread::spawn(move || tx.send(feed_fifo(src, &fifo, None)));
        }
        // Control: with no reader the feeder waits.
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(300))
            .is_err());
        // What make_model_volume does once mksquashfs has ended: a reader
        // that opens and goes at once ends the feeder with an error.
        drop(
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
                .unwrap(),
        );
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the feeder still waits for its reader");
        assert!(r.is_err());
    }

    #[test]
    fn a_fifo_in_a_file_models_place_is_refused_not_read() {
        tools();
        let d = tempfile::tempdir().unwrap();
        let cache = crate::inputs::cache::Cache::open(d.path().join("cache")).unwrap();
        let (f, m) = file_model(d.path(), "r.toml:4:8");
        // Control: the file packs.
        make_model_volume(&m, &cache, false, 1, &d.path().join("a")).unwrap();
        std::fs::remove_file(&f).unwrap();
        make_fifo(&f).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let (cache, m, w) = (cache, m, d.path().join("b"));
            std::thread::spawn(move || {
                tx.send(make_model_volume(&m, &cache, false, 1, &w).map(|_| ()))
            });
        }
        let e = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("packing a fifo blocks")
            .unwrap_err();
        assert!(e.downcast_ref::<crate::InputError>().is_some(), "{e:#}");
        let text = format!("{e}");
        assert!(
            text.starts_with("r.toml:4:8: model w: ") && text.contains("FIFO"),
            "{text}"
        );
    }

    #[test]
    fn cmdline_words_name_the_volume() {
        let h = Sha256::of_bytes(b"x");
        assert_eq!(
            cmdline_word(Kind::Model, "iris", &h),
            format!("cairn.volume.iris={h}")
        );
        assert_eq!(
            cmdline_word(Kind::Apps, APPS, &h),
            format!("cairn.apps={h}")
        );
    }
}
