//! Shared helpers for the boot tests: build each test recipe once per run,
//! logs, partitions, byte flips, loopback listeners. The QEMU side is
//! `cairn::vm::qemu`, the same helper `cairn run` uses; [`configure_qemu`]
//! (called by [`built`] and the timeouts, so before any boot) hands it the
//! `CAIRN_QEMU_ACCEL` and `CAIRN_BOOT_TIMEOUT_SCALE` knobs.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

pub struct Built {
    pub dir: PathBuf,
    pub raw: PathBuf,
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Builds `qemu-tests/recipes/NAME.toml` once per test process (builds run
/// one at a time; boots may overlap).
pub fn built(name: &str) -> &'static Built {
    configure_qemu();
    static BUILT: OnceLock<Mutex<HashMap<String, &'static Result<Built, String>>>> =
        OnceLock::new();
    let map = BUILT.get_or_init(|| Mutex::new(HashMap::new()));
    let mut g = map.lock().unwrap_or_else(|e| e.into_inner());
    let r: &'static Result<Built, String> = match g.get(name) {
        Some(r) => r,
        None => {
            let r = Box::leak(Box::new(build(name)));
            g.insert(name.to_string(), r);
            r
        }
    };
    match r {
        Ok(b) => b,
        Err(e) => panic!("building the test image {name} failed: {e}"),
    }
}

/// Builds `name` (as [`built`] names recipes) with its own cache, not the
/// one the environment names; every call builds. For tests that must
/// leave the user's cache alone (k3s).
pub fn built_with_cache(name: &str, cache_root: &Path) -> Built {
    let settings = cairn::cli::settings_from_env()
        .map(|s| cairn::inputs::plan::Settings {
            cache_root: cache_root.to_path_buf(),
            ..s
        })
        .unwrap_or_else(|e| panic!("settings: {e:#}"));
    build_with(name, settings)
        .unwrap_or_else(|e| panic!("building the test image {name} failed: {e}"))
}

fn build(name: &str) -> Result<Built, String> {
    let settings = cairn::cli::settings_from_env().map_err(|e| format!("{e:#}"))?;
    build_with(name, settings)
}

/// A test image built as a signed Secure Boot release: every UKI signed by
/// the build itself (`--sb-key`) with Debian's snakeoil key, SHA256 signed
/// with a throwaway signify key, raw disk and ISO.
pub struct SecureBootBuilt {
    pub built: Built,
    /// The signify public key that verifies the release.
    pub pubkey: PathBuf,
}

/// Builds `qemu-tests/recipes/NAME.toml` once per test process as a
/// [`SecureBootBuilt`] release.
pub fn built_secure_boot(name: &str) -> &'static SecureBootBuilt {
    configure_qemu();
    static BUILT: OnceLock<Mutex<HashMap<String, &'static Result<SecureBootBuilt, String>>>> =
        OnceLock::new();
    let map = BUILT.get_or_init(|| Mutex::new(HashMap::new()));
    let mut g = map.lock().unwrap_or_else(|e| e.into_inner());
    let r: &'static Result<SecureBootBuilt, String> = match g.get(name) {
        Some(r) => r,
        None => {
            let r = Box::leak(Box::new(build_secure_boot(name)));
            g.insert(name.to_string(), r);
            r
        }
    };
    match r {
        Ok(b) => b,
        Err(e) => panic!("building the signed test image {name} failed: {e}"),
    }
}

/// Debian's snakeoil key (what `OVMF_VARS_4M.snakeoil.fd` trusts, and what
/// the shim tests enrol as a MOK), decrypted into `dir`: sbsign reads no
/// passphrase.
pub fn snakeoil_key(dir: &Path) -> cairn::pipeline::sbsign::SbKey {
    use cairn::vm::trusted;
    testkit::file(trusted::SNAKEOIL_KEY, "ovmf");
    let key = dir.join("snakeoil.key");
    let mut cmd = cairn::host::runner::command("openssl");
    cmd.args(["pkey", "-in", trusted::SNAKEOIL_KEY, "-passin"])
        .arg(format!("pass:{}", trusted::SNAKEOIL_PASSPHRASE))
        .arg("-out")
        .arg(&key);
    cairn::host::runner::output("snakeoil key", cmd).unwrap_or_else(|e| panic!("{e:#}"));
    cairn::pipeline::sbsign::SbKey::load(&key, Path::new(trusted::SNAKEOIL_CERT))
        .unwrap_or_else(|e| panic!("snakeoil key: {e:#}"))
}

fn build_secure_boot(name: &str) -> Result<SecureBootBuilt, String> {
    let settings = cairn::cli::settings_from_env().map_err(|e| format!("{e:#}"))?;
    let keys = workspace().join(format!("target/qemu-tests/keys/{name}"));
    std::fs::create_dir_all(&keys).map_err(|e| format!("{}: {e}", keys.display()))?;
    let sb = snakeoil_key(&keys);
    let signify = cairn::release::signify::generate();
    let sec = keys.join("release.sec");
    let pubkey = keys.join("release.pub");
    let text = signify
        .to_file_text("qemu-tests throwaway key", None)
        .map_err(|e| format!("{e:#}"))?;
    std::fs::write(&sec, text).map_err(|e| format!("{}: {e}", sec.display()))?;
    std::fs::write(
        &pubkey,
        signify.public().to_file_text("qemu-tests throwaway key"),
    )
    .map_err(|e| format!("{}: {e}", pubkey.display()))?;
    let built = build_opts(
        name,
        settings,
        cairn::build::Formats::of(&[&cairn::media::RAW, &cairn::media::ISO]),
        Some(cairn::release::sign::SigningKey {
            path: sec,
            passphrase: None,
        }),
        Some(sb),
    )?;
    Ok(SecureBootBuilt { built, pubkey })
}

fn build_with(name: &str, settings: cairn::inputs::plan::Settings) -> Result<Built, String> {
    // The main test image is booted in every format; the control
    // images only as raw disks.
    let formats = if name == "tiny" {
        cairn::build::Formats::default()
    } else {
        cairn::build::Formats::of(&[&cairn::media::RAW])
    };
    build_opts(name, settings, formats, None, None)
}

fn build_opts(
    name: &str,
    settings: cairn::inputs::plan::Settings,
    formats: cairn::build::Formats,
    key: Option<cairn::release::sign::SigningKey>,
    secure_boot: Option<cairn::pipeline::sbsign::SbKey>,
) -> Result<Built, String> {
    let ws = workspace();
    // A bare name is a test recipe; a path is relative to the workspace
    // (the boot tests also build the default recipe, recipes/field-ai.toml).
    let recipe = if name.contains('/') {
        ws.join(name)
    } else {
        ws.join(format!("qemu-tests/recipes/{name}.toml"))
    };
    let out = ws.join("target/qemu-tests/out");
    // As `cairn build` loads it: a team recipe's template signature is
    // checked (cli::recipe_env), so a team image is exactly the CLI's.
    let r = cairn::recipe::load(&recipe, Some(&ws), &cairn::cli::recipe_env(&settings))
        .map_err(|e| e.to_string())?;
    eprintln!("qemu-tests: building {} (once per run)", recipe.display());
    let res = cairn::build::build(
        &r,
        &cairn::build::BuildOptions {
            out_dir: out,
            settings,
            formats,
            key,
            secure_boot,
            offline: false,
            update_lock: false,
        },
    )
    .map_err(|e| format!("{e:#}"))?;
    Ok(Built {
        dir: res.dir,
        raw: res.raw,
    })
}

/// Applies `CAIRN_QEMU_ACCEL` and `CAIRN_BOOT_TIMEOUT_SCALE` (read by
/// `cairn::cli`, as for `cairn run`) to this process's QEMU settings.
pub fn configure_qemu() {
    cairn::cli::tool_path_from_env();
    cairn::vm::qemu::configure(cairn::cli::qemu_config_from_env())
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Under TCG a boot to ready takes a minute or two; allow for a loaded CI.
pub fn boot_timeout() -> Duration {
    configure_qemu();
    Duration::from_secs(420 * cairn::vm::qemu::timeout_scale() as u64)
}

pub fn console_timeout() -> Duration {
    configure_qemu();
    Duration::from_secs(120 * cairn::vm::qemu::timeout_scale() as u64)
}

pub fn log_path(name: &str) -> PathBuf {
    let d = workspace().join("target/qemu-tests/logs");
    std::fs::create_dir_all(&d).expect("log folder");
    d.join(format!("{name}.serial.log"))
}

/// The 1-based number of partition `label` in the manifest's table (the
/// manifest lists them in disk order): `vdaN` in the guest.
pub fn partition_number(dir: &Path, label: &str) -> usize {
    let m = cairn::release::manifest::read(&dir.join("manifest.json")).expect("manifest");
    let mut parts: Vec<_> = m.partitions.iter().collect();
    parts.sort_by_key(|p| p.offset);
    parts
        .iter()
        .position(|p| p.label == label)
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("no partition {label} in the manifest"))
}

pub fn partition(dir: &Path, label: &str) -> (u64, u64) {
    let m = cairn::release::manifest::read(&dir.join("manifest.json")).expect("manifest");
    let p = m
        .partitions
        .iter()
        .find(|p| p.label == label)
        .unwrap_or_else(|| panic!("no partition {label} in the manifest"));
    (p.offset, p.size)
}

/// A sparse copy of `src` in `dir`, for tests that write to the image.
pub fn copy_image(src: &Path, dir: &Path, name: &str) -> PathBuf {
    let dst = dir.join(name);
    let mut cp = cairn::host::runner::command("cp");
    cp.arg("--sparse=always").arg(src).arg(&dst);
    cairn::host::runner::output("copy_image", cp).unwrap_or_else(|e| panic!("{e:#}"));
    dst
}

/// One byte flip for every test that tampers with an image.
pub use testkit::flip_byte;

/// Whether `needle` occurs anywhere in the file (streamed, overlap-safe).
pub fn file_contains(path: &Path, needle: &[u8]) -> bool {
    let mut f = std::fs::File::open(path).expect("open image");
    let mut buf = vec![0u8; 8 << 20];
    let keep = needle.len().saturating_sub(1);
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = f.read(&mut buf).expect("read image");
        if n == 0 {
            return false;
        }
        let mut window = std::mem::take(&mut carry);
        window.extend_from_slice(&buf[..n]);
        if window.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
        carry = window[window.len().saturating_sub(keep)..].to_vec();
    }
}

/// A marker no image contains by chance.
pub fn marker(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let d = cairn::host::digest::Sha256::of_bytes(
        format!("{tag} {nanos} {}", std::process::id()).as_bytes(),
    );
    format!("CAIRNMARK{}", &d.hex()[..24])
}

/// A TCP listener on 127.0.0.1 that records every byte any client sends.
pub struct Listener {
    pub addr: SocketAddrV4,
    received: Arc<Mutex<Vec<u8>>>,
}

impl Listener {
    pub fn start() -> Listener {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = match l.local_addr().expect("local addr") {
            std::net::SocketAddr::V4(a) => a,
            other => panic!("not v4: {other}"),
        };
        let received = Arc::new(Mutex::new(Vec::new()));
        let r2 = received.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { continue };
                let r3 = r2.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    loop {
                        match c.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => r3
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .extend_from_slice(&buf[..n]),
                        }
                    }
                });
            }
        });
        Listener { addr, received }
    }

    pub fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap_or_else(|e| e.into_inner()))
            .into_owned()
    }
}

/// A free port on 127.0.0.1 for a hostfwd.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Sends an HTTP GET for `/` to 127.0.0.1:port and returns whatever comes
/// back within `timeout` (empty if nothing).
pub fn http_get(port: u16, timeout: Duration) -> String {
    http_get_path(port, "/", timeout)
}

/// Sends an HTTP/1.0 GET for `path` to 127.0.0.1:port (a hostfwd) and
/// returns whatever comes back within `timeout` (empty if nothing answers).
pub fn http_get_path(port: u16, path: &str, timeout: Duration) -> String {
    let Ok(mut s) =
        TcpStream::connect_timeout(&std::net::SocketAddr::from(([127, 0, 0, 1], port)), timeout)
    else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Corruption after boot, judged from outside: `block` (4 KiB) of the
/// verity mapping `mapping` (its data at `data_offset` of the running
/// guest's image file `img`, booted with `snapshot = false` and the debug
/// console) reads fine first (control); then one byte of it is flipped in
/// the file, the next O_DIRECT read of that block gets no data, and the
/// node prints one `cairn: FATAL verity:` line naming the block and the
/// mapping, then halts. Returns the console text.
pub fn corrupted_read_after_boot_halts(
    vm: &mut cairn::vm::qemu::Vm,
    img: &Path,
    mapping: &str,
    data_offset: u64,
    block: u64,
) -> String {
    let read = format!(
        "dd if=/dev/mapper/{mapping} of=/dev/null bs=4096 skip={block} count=1 iflag=direct && echo READ-OK"
    );
    let (rc, out) = vm.console_run(&read, console_timeout()).expect("console");
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("READ-OK"), "{out}");
    assert!(!vm.serial_text().contains("cairn: FATAL"));

    flip_byte(img, data_offset + block * 4096 + 100);
    // The reader gets an I/O error (never the data), and the node halts
    // before the shell can answer, or right after.
    let r = vm.console_run(
        &read,
        Duration::from_secs(30 * cairn::vm::qemu::timeout_scale() as u64),
    );
    if let Ok((rc, out)) = &r {
        assert!(
            !out.contains("READ-OK"),
            "the corrupted block was read: {out}"
        );
        assert_ne!(*rc, 0, "{out}");
    }
    let line = vm
        .wait_for_line("cairn: FATAL", console_timeout())
        .expect("a FATAL line on the console after the corrupted read");
    assert!(
        line.contains("verity")
            && line.contains(&format!("data block {block}"))
            && line.contains(mapping),
        "{line}"
    );
    vm.wait_for_line("System halted", console_timeout())
        .expect("the node halts after the FATAL line");
    let serial = vm.serial_text();
    assert_eq!(serial.matches("cairn: FATAL").count(), 1, "{serial}");
    serial
}

/// Copies `len` bytes at `offset` of `src` into a new file `dst`.
pub fn extract_region(src: &Path, (offset, len): (u64, u64), dst: &Path) {
    let mut f = std::fs::File::open(src).expect("open image");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    let mut out = std::fs::File::create(dst).expect("create region file");
    let n = std::io::copy(&mut f.take(len), &mut out).expect("copy region");
    assert_eq!(n, len, "short read from {}", src.display());
}

fn run_tool(cmd: &mut std::process::Command) {
    let cmd = std::mem::replace(cmd, cairn::host::runner::command("true"));
    cairn::host::runner::output("rebuild_raw", cmd).unwrap_or_else(|e| panic!("{e:#}"));
}

/// Unpacks `image` (only `paths` in it, or everything) into `dest`.
fn unsquashfs(image: &Path, dest: &Path, paths: &[&str]) {
    run_tool(
        cairn::host::runner::command("unsquashfs")
            .arg("-quiet")
            .arg("-no-progress")
            .arg("-d")
            .arg(dest)
            .arg(image)
            .args(paths),
    );
}

/// A raw disk rebuilt from a built image with `edit` applied to its apps
/// volume's tree (overlays, cairn's configuration, images: what the recipe
/// adds to the base): the apps image is unpacked (unsquashfs, whiteouts
/// and all), edited, packed again, given its own hash tree and root hash,
/// and a UKI with that root hash on the built kernel, initramfs and
/// command line, with cairn's own stage functions; the base is the built
/// one. This is how a test makes "the same image, but with this file
/// missing" without a second recipe feature.
pub fn rebuild_raw(b: &Built, dir: &Path, name: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let m = cairn::release::manifest::read(&b.dir.join("manifest.json")).expect("manifest");
    let work = dir.join(format!("{name}.work"));
    std::fs::create_dir_all(&work).expect("work folder");
    let root_part = partition(&b.dir, cairn::media::disk::LABEL_ROOT);
    let root = work.join("root.squashfs");
    extract_region(&b.raw, (root_part.0, m.verity.data_size), &root);
    let root_verity = work.join("root.verity");
    extract_region(
        &b.raw,
        (
            partition(&b.dir, cairn::media::disk::LABEL_VERITY).0,
            m.verity.hash_size,
        ),
        &root_verity,
    );
    // The UKI stub is in the base.
    let base = work.join("base");
    unsquashfs(&root, &base, &["usr/lib/systemd/boot"]);
    let mut volumes = built_volumes(b, &work);
    let apps = volumes
        .iter_mut()
        .find(|v| v.kind == cairn::pipeline::volumes::Kind::Apps)
        .expect("the built image has an apps volume");
    let tree = work.join("tree");
    unsquashfs(&apps.image, &tree, &[]);
    edit(&tree);
    let epoch = m.source_date_epoch;
    let image = work.join("apps.new");
    let pack = cairn::pipeline::squashfs::root_pack(&tree, None);
    cairn::pipeline::volume::squashfs(&pack, &image, epoch).expect("mksquashfs");
    let verity = cairn::pipeline::verity::make_verity(&image, &work.join("apps.new.verity"))
        .expect("veritysetup");
    let old_word = apps.cmdline_word();
    let old_params = apps.verity.params_word("apps");
    apps.image = image;
    apps.verity = verity;
    let new_word = apps.cmdline_word();
    let new_params = apps.verity.params_word("apps");

    // The kernel, initramfs and os-release out of the built UKI.
    let esp = work.join("built-esp.img");
    extract_region(
        &b.raw,
        partition(&b.dir, cairn::media::disk::LABEL_ESP),
        &esp,
    );
    let old_uki = work.join("old-uki.efi");
    run_tool(
        cairn::host::runner::command("mcopy")
            .arg("-i")
            .arg(&esp)
            .arg("::/EFI/BOOT/BOOTX64.EFI")
            .arg(&old_uki),
    );
    let (kernel, initrd, osrel) = (work.join("linux"), work.join("initrd"), work.join("osrel"));
    run_tool(
        cairn::host::runner::command("objcopy")
            .arg(format!("--dump-section=.linux={}", kernel.display()))
            .arg(format!("--dump-section=.initrd={}", initrd.display()))
            .arg(format!("--dump-section=.osrel={}", osrel.display()))
            .arg(&old_uki)
            .arg(work.join("discard.efi")),
    );
    let old_cmdline = cairn::pipeline::uki::read_cmdline(&std::fs::read(&old_uki).expect("uki"))
        .expect("the built UKI has a .cmdline");
    assert!(old_cmdline.contains(&old_word), "{old_cmdline}");
    assert!(old_cmdline.contains(&old_params), "{old_cmdline}");
    // The new tree's salt and size ride along with its root hash.
    let cmdline = old_cmdline
        .replace(&old_word, &new_word)
        .replace(&old_params, &new_params);
    let stub = cairn::pipeline::uki::stub_path(&base).expect("stub in the base");
    let uki = cairn::pipeline::uki::make_uki(
        &cairn::pipeline::uki::UkiInputs {
            stub: &stub,
            kernel: &kernel,
            initrd: &initrd,
            os_release: &osrel,
            cmdline: &cmdline,
            epoch,
        },
        &work,
        &work.join("uki.efi"),
    )
    .expect("UKI");
    let out = dir.join(format!("{name}.raw"));
    cairn::media::disk::write_raw(
        &cairn::media::disk::DiskInputs {
            uki: &uki.path,
            shim: None,
            root: &root,
            verity: &root_verity,
            root_hash: &m.verity.root_hash,
            volumes: &volumes,
            disk_size: std::fs::metadata(&b.raw).expect("raw").len(),
            min_state_size: 64 << 20,
            epoch,
            audit_size: 0,
        },
        &work,
        &out,
    )
    .expect("raw disk");
    let _ = std::fs::remove_dir_all(&work);
    out
}

/// The volumes of a built image (apps and models), copied out of its raw
/// disk into `work` (image and hash tree each), as the disk writer takes
/// them.
pub fn built_volumes(b: &Built, work: &Path) -> Vec<cairn::pipeline::volumes::Volume> {
    let m = cairn::release::manifest::read(&b.dir.join("manifest.json")).expect("manifest");
    m.volumes
        .iter()
        .map(|v| {
            let image = work.join(format!("{}.squashfs", v.name));
            let hash = work.join(format!("{}.verity", v.name));
            extract_region(
                &b.raw,
                (partition(&b.dir, &v.partition).0, v.data_size),
                &image,
            );
            extract_region(
                &b.raw,
                (partition(&b.dir, &v.hash_partition).0, v.hash_size),
                &hash,
            );
            cairn::pipeline::volumes::Volume {
                name: v.name.clone(),
                kind: cairn::pipeline::volumes::Kind::parse(&v.kind).expect("a known volume kind"),
                image,
                verity: cairn::pipeline::verity::VerityTree {
                    hash_path: hash,
                    root_hash: v.root_hash,
                    salt: v.salt.clone(),
                    uuid: v.uuid.clone(),
                    data_block_size: v.data_block_size,
                    hash_block_size: v.hash_block_size,
                    hash_algorithm: "sha256",
                    data_size: v.data_size,
                    hash_size: v.hash_size,
                },
                compression: if v.compression == "zstd" {
                    cairn::recipe::workloads::Compression::Zstd
                } else {
                    cairn::recipe::workloads::Compression::None
                },
                model_sha256: v.inputs[0].sha256.expect("model digest"),
                mount: v.mount.clone(),
                cached: false,
            }
        })
        .collect()
}

/// The secret half of `qemu-tests/recipes/sites-test.pub`, the site key of
/// the shared test image. Public on purpose (a test key signs nothing but
/// the site boot test's files), so no `.sec` file is committed.
pub const SITE_TEST_SECRET_KEY: &str = "untrusted comment: sites-test secret key\nRWRCSwAAAABKT+PEk81i+fPkKPv2hMgW1KYJ3y5zxNyeZvoB9v0lo2RkEwpZfPt0c9yQ8PmR28EkXmkr22Kt10hSWZcVNe8qAGkyfNMRbEFWglT3E7fJnbyGRaMcaDtUMjWDwrjvEq8=\n";

/// The site test key, for signing site files for the test image.
pub fn site_test_key() -> cairn::release::signify::SecretKey {
    cairn::release::signify::SecretKey::parse(SITE_TEST_SECRET_KEY, None)
        .unwrap_or_else(|e| panic!("the site test key: {e}"))
}

/// The throwaway audit test key's secret half (qemu-tests/recipes/
/// audit-test.pub and recipes/field-ai/audit-test.pub are its public half;
/// tests/boot/audit.rs, kubernetes.rs). Never use it for anything else.
pub const AUDIT_TEST_SECRET: &str =
    "AGE-SECRET-KEY-1CQ476WNTM44RJJNZC2NM79JHKNYE08XD2J53MNHD9VP0HCFACWWSKVNVL0\n";
