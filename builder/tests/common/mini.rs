//! A small, real release folder made in a second with cairn's own media
//! code and the host's tools (no full image build): a 1 MiB random root
//! with its dm-verity tree, a UKI on the host's systemd stub, a 72 MiB
//! sparse GPT raw, its qcow2, a manifest and an SBOM, signed with a
//! throwaway key by the build's own signer. Plus a sentinel folder beside
//! it and a snapshot of everything, so a test can show that nothing
//! outside its folders was touched and nothing was written.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cairn::host::digest::Sha256;
use cairn::release::signify::{self, SecretKey};

pub const NAME: &str = "mini-1";
pub const RAW: &str = "mini-1.raw";
pub const QCOW2: &str = "mini-1.qcow2";
pub const SBOM: &str = "mini-1.spdx.json";
const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
const EPOCH: u64 = 1_735_689_600;
const MIB: u64 = 1 << 20;

/// A disk of one image (raw + qcow2 + what the manifest says of them).
struct Disk {
    raw: PathBuf,
    qcow2: PathBuf,
    manifest: serde_json::Value,
    /// The raw's data ranges, as the build maps them.
    ranges: Vec<(u64, u64)>,
}

fn tools_or_fail() {
    for t in [
        "mkfs.vfat",
        "mcopy",
        "veritysetup",
        "sfdisk",
        "objcopy",
        "qemu-img",
    ] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
            .unwrap_or(false);
        assert!(found, "{t} is not installed; run make deps");
    }
    assert!(
        Path::new(STUB).is_file(),
        "{STUB} missing; run make deps (systemd-boot-efi)"
    );
}

fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed | 1;
    let mut out = vec![0u8; len];
    for c in out.chunks_exact_mut(8) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        c.copy_from_slice(&s.to_le_bytes());
    }
    out
}

/// Builds one disk of 72 MiB from a root of `seed`'s bytes into `dir`.
fn make_disk(dir: &Path, seed: u64) -> Disk {
    make_disk_of(dir, seed, 72 * MIB)
}

/// Builds one disk of `disk_size` bytes from a root of `seed`'s bytes into `dir`.
fn make_disk_of(dir: &Path, seed: u64, disk_size: u64) -> Disk {
    tools_or_fail();
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let root = work.join("root.img");
    std::fs::write(&root, pseudo_random(seed, MIB as usize)).unwrap();
    let tree = cairn::pipeline::verity::make_verity(&root, &work.join("root.verity"))
        .unwrap_or_else(|e| panic!("{e:#}"));
    // One model volume, "m1": 256 KiB of its own bytes with its own tree.
    let vol_image = work.join("m1.img");
    std::fs::write(&vol_image, pseudo_random(seed ^ 0xfeed, 256 << 10)).unwrap();
    let vol_tree = cairn::pipeline::verity::make_verity(&vol_image, &work.join("m1.verity"))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let volume = cairn::pipeline::volumes::Volume {
        name: "m1".into(),
        kind: cairn::pipeline::volumes::Kind::Model,
        image: vol_image,
        verity: vol_tree.clone(),
        compression: cairn::recipe::workloads::Compression::None,
        model_sha256: Sha256::of_bytes(b"m1 model"),
        mount: "/usr/share/cairn/models/m1".into(),
        cached: false,
    };
    let cmdline = format!(
        "console=ttyS0 cairn.roothash={} cairn.volume.m1={}",
        tree.root_hash, vol_tree.root_hash
    );
    for (n, b) in [
        ("vmlinuz", &b"kernel"[..]),
        ("initrd", b"initrd"),
        ("os-release", b"ID=mini\n"),
    ] {
        std::fs::write(work.join(n), b).unwrap();
    }
    let uki = work.join("uki.efi");
    cairn::pipeline::uki::make_uki(
        &cairn::pipeline::uki::UkiInputs {
            stub: Path::new(STUB),
            kernel: &work.join("vmlinuz"),
            initrd: &work.join("initrd"),
            os_release: &work.join("os-release"),
            cmdline: &cmdline,
            epoch: EPOCH,
        },
        &work,
        &uki,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let raw = dir.join(RAW);
    let disk = cairn::media::disk::write_raw(
        &cairn::media::disk::DiskInputs {
            uki: &uki,
            shim: None,
            root: &root,
            verity: &tree.hash_path,
            root_hash: &tree.root_hash,
            volumes: std::slice::from_ref(&volume),
            disk_size,
            min_state_size: MIB,
            epoch: EPOCH,
            audit_size: 0,
        },
        &work,
        &raw,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let qcow2 = dir.join(QCOW2);
    cairn::media::qcow2::write_qcow2(&raw, &qcow2, &[]).unwrap_or_else(|e| panic!("{e:#}"));
    let ranges = disk.data_ranges().unwrap_or_else(|e| panic!("{e:#}"));
    std::fs::remove_dir_all(&work).unwrap();
    let l = &disk.layout;
    let part = |label: &str, (offset, size): (u64, u64)| serde_json::json!({"label": label, "offset": offset, "size": size});
    let manifest = serde_json::json!({
        "schema": 1,
        "image": {"name": "mini", "version": "1"},
        "builder": {"cairn_version": "test", "git_revision": "test"},
        "recipe": {"sha256": Sha256::of_bytes(b"recipe").hex(), "lock_sha256": null},
        "source_date_epoch": EPOCH,
        "inputs": [],
        "outputs": [],
        "verity": {
            "root_hash": tree.root_hash.hex(),
            "salt": tree.salt,
            "uuid": tree.uuid,
            "hash_algorithm": "sha256",
            "data_block_size": 4096,
            "hash_block_size": 4096,
            "data_size": tree.data_size,
            "hash_size": tree.hash_size,
        },
        "kernel": {"version": "6.1.0-test", "cmdline": cmdline},
        "flags": {"debug_console": false, "state_mode": "ram", "firewall": "air-gap"},
        "sbom": {"packages": []},
        "partitions": [
            part("cairn-esp", l.esp),
            part("cairn-root", l.root),
            part("cairn-verity", l.verity),
            part("cairn-model-m1", l.volumes[0].data),
            part("cairn-model-m1-verity", l.volumes[0].hash),
            part("cairn-state", l.state),
        ],
        "volumes": serde_json::to_value(cairn::release::manifest::volumes(
            std::slice::from_ref(&volume),
            l,
        ))
        .unwrap(),
    });
    Disk {
        raw,
        qcow2,
        manifest,
        ranges,
    }
}

/// The media of image A (the release) and of image B (another root),
/// made once per test binary (under target/, replaced on each run) and
/// copied sparsely into each test.
fn templates() -> &'static (PathBuf, Disk, Disk) {
    static T: OnceLock<(PathBuf, Disk, Disk)> = OnceLock::new();
    T.get_or_init(|| {
        let t = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("mini-templates-{}", env!("CARGO_CRATE_NAME")));
        if t.exists() {
            std::fs::remove_dir_all(&t).unwrap();
        }
        let a = t.join("a");
        let b = t.join("b");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let da = make_disk(&a, 0x1234_5678);
        let db = make_disk(&b, 0x8765_4321);
        (t, da, db)
    })
}

fn cp_sparse(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success(), "cp {} {}", from.display(), to.display());
}

/// A signed release in `tmp/out/mini-1`, its key in `tmp/keys`, and a
/// sentinel folder `tmp/sentinel` with files (copies of the release's)
/// that hostile symlinks can point at.
pub struct Mini {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub keys: PathBuf,
    pub sentinel: PathBuf,
    pub key: SecretKey,
    pub pubkey: PathBuf,
    pub manifest: serde_json::Value,
    /// The raw's data ranges (empty without media): [`Mini::write_map`].
    pub ranges: Vec<(u64, u64)>,
}

/// Which files the release holds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Media {
    /// manifest.json and an SBOM only: no tools needed.
    None,
    /// Also the raw and its qcow2.
    RawAndQcow2,
}

pub fn mini(media: Media) -> Mini {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out").join(NAME);
    let keys = tmp.path().join("keys");
    let sentinel = tmp.path().join("sentinel");
    for d in [&dir, &keys, &sentinel] {
        std::fs::create_dir_all(d).unwrap();
    }
    let mut ranges = Vec::new();
    let mut manifest = if media == Media::None {
        serde_json::json!({
            "schema": 1,
            "image": {"name": "mini", "version": "1"},
            "builder": {"cairn_version": "test", "git_revision": "test"},
            "recipe": {"sha256": Sha256::of_bytes(b"recipe").hex(), "lock_sha256": null},
            "source_date_epoch": EPOCH,
            "inputs": [],
            "outputs": [],
            "verity": {
                "root_hash": Sha256::of_bytes(b"root").hex(), "salt": "00", "uuid": "u",
                "hash_algorithm": "sha256", "data_block_size": 4096, "hash_block_size": 4096,
                "data_size": 4096, "hash_size": 4096,
            },
            "kernel": {"version": "6.1.0-test", "cmdline": "console=ttyS0"},
            "flags": {"debug_console": false, "state_mode": "ram", "firewall": "air-gap"},
            "sbom": {"packages": []},
            "partitions": [],
        })
    } else {
        let (_, a, _) = templates();
        cp_sparse(&a.raw, &dir.join(RAW));
        cp_sparse(&a.qcow2, &dir.join(QCOW2));
        ranges = a.ranges.clone();
        a.manifest.clone()
    };
    if media == Media::RawAndQcow2 {
        set_output(&mut manifest, &dir, RAW);
        set_output(&mut manifest, &dir, QCOW2);
    }
    std::fs::write(dir.join(SBOM), b"{\"spdxVersion\": \"SPDX-2.3\"}\n").unwrap();
    let key = signify::generate();
    let pubkey = keys.join("test.pub");
    std::fs::write(&pubkey, key.public().to_file_text("test public key")).unwrap();
    let m = Mini {
        tmp,
        dir,
        keys,
        sentinel,
        key,
        pubkey,
        manifest,
        ranges,
    };
    m.write_manifest();
    m.sign();
    // The sentinel holds copies of the release's files: following a
    // symlink to them would *pass*, so only refusing the link can fail.
    for e in std::fs::read_dir(&m.dir).unwrap() {
        let p = e.unwrap().path();
        cp_sparse(&p, &m.sentinel.join(p.file_name().unwrap()));
    }
    std::fs::write(m.sentinel.join("secret"), b"host file\n").unwrap();
    m
}

/// A signed release like [`mini`]'s but with a raw of `disk_size` bytes,
/// built fresh into the test's folder (no template, no sentinel copies):
/// big enough for a write that can be interrupted.
pub fn mini_of_size(disk_size: u64) -> Mini {
    let m = mini(Media::None);
    let disk = make_disk_of(&m.dir, 0x5eed_0001, disk_size);
    let mut manifest = disk.manifest;
    set_output(&mut manifest, &m.dir, RAW);
    set_output(&mut manifest, &m.dir, QCOW2);
    let m = Mini {
        manifest,
        ranges: disk.ranges,
        ..m
    };
    m.write_map();
    m.write_manifest();
    m.sign();
    m
}

/// Records (or replaces) `file`'s size and digest in the manifest outputs.
pub fn set_output(manifest: &mut serde_json::Value, dir: &Path, file: &str) {
    let p = dir.join(file);
    let size = std::fs::metadata(&p).unwrap().len();
    let sha = Sha256::of_file(&p).unwrap().hex();
    let outs = manifest["outputs"].as_array_mut().unwrap();
    outs.retain(|o| o["file"] != file);
    outs.push(serde_json::json!({"file": file, "size": size, "sha256": sha}));
    outs.sort_by(|a, b| a["file"].as_str().cmp(&b["file"].as_str()));
}

impl Mini {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn write_manifest(&self) {
        std::fs::write(
            self.dir.join("manifest.json"),
            serde_json::to_string_pretty(&self.manifest).unwrap() + "\n",
        )
        .unwrap();
    }

    /// Writes the raw's data map (`mini-1.raw.map`) as the build does,
    /// for the raw as it is now; sign afterwards.
    pub fn write_map(&self) {
        let raw = self.path(RAW);
        let map = cairn::release::datamap::DataMap::of_file(
            &raw,
            RAW,
            std::fs::metadata(&raw).unwrap().len(),
            Sha256::of_file(&raw).unwrap(),
            &self.ranges,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        map.write_beside(&raw).unwrap();
    }

    /// Re-signs the folder as the build does (every file listed).
    pub fn sign(&self) {
        for f in ["SHA256", "SHA256.sig"] {
            let _ = std::fs::remove_file(self.dir.join(f));
        }
        cairn::release::sign::sign_dir(&self.dir, &self.key, "test.pub")
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Signs exactly `sums` (any text, hostile or not) as SHA256.
    pub fn sign_text(&self, sums: &[u8]) {
        std::fs::write(self.dir.join("SHA256"), sums).unwrap();
        std::fs::write(
            self.dir.join("SHA256.sig"),
            self.key.sign(sums).to_embedded_file_bytes("test.pub", sums),
        )
        .unwrap();
    }

    /// Replaces the qcow2 with image B's (a different root), recorded in
    /// the manifest and signed: everything is consistent except the
    /// qcow2's content.
    pub fn swap_in_other_qcow2(&mut self) {
        let (_, _, b) = templates();
        std::fs::remove_file(self.path(QCOW2)).unwrap();
        cp_sparse(&b.qcow2, &self.path(QCOW2));
        set_output(&mut self.manifest, &self.dir, QCOW2);
        self.write_manifest();
        self.sign();
    }

    /// Everything under the test's temporary folder, lstat'ed (never
    /// followed, FIFOs never opened): kind, size, mode, mtime and the
    /// digest of each regular file.
    pub fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        for e in walkdir::WalkDir::new(self.tmp.path()).sort_by_file_name() {
            let e = e.unwrap();
            let m = e.path().symlink_metadata().unwrap();
            let ft = m.file_type();
            let what = if ft.is_file() {
                format!("file {}", Sha256::of_file(e.path()).unwrap())
            } else if ft.is_symlink() {
                format!("link {}", std::fs::read_link(e.path()).unwrap().display())
            } else if ft.is_dir() {
                "dir".into()
            } else if ft.is_fifo() {
                "fifo".into()
            } else {
                "other".into()
            };
            out.insert(
                e.path().to_path_buf(),
                format!(
                    "{what} {} {:o} {}.{}",
                    m.len(),
                    m.mode(),
                    m.mtime(),
                    m.mtime_nsec()
                ),
            );
        }
        out
    }
}

pub fn mkfifo(p: &Path) {
    let _ = std::fs::remove_file(p);
    let st = Command::new("mkfifo").arg(p).status().unwrap();
    assert!(st.success());
}

/// What a `cairn` run printed and returned.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn first_line(&self) -> &str {
        self.stderr.lines().next().unwrap_or("")
    }
}

/// Runs the cairn binary with `args`; a run longer than `limit` is killed
/// and fails the test (a hang must not block the suite).
pub fn cairn(args: &[&std::ffi::OsStr], limit: Duration) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Both pipes are drained while the child runs: a child that writes more
    // than a pipe holds (64 KiB) would otherwise wait for us forever.
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let started = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let stdout = out.join().unwrap();
            let stderr = err.join().unwrap();
            return Run {
                code: st.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&stdout).into_owned(),
                stderr: String::from_utf8_lossy(&stderr).into_owned(),
            };
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cairn {args:?} hung for more than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
