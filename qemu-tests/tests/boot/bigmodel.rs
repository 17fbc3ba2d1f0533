//! A model over 4 GiB. The test generates it (deterministic and
//! incompressible: sha256 of a counter, `testkit::stream`), builds a recipe
//! carrying it as an uncompressed model volume into raw, ISO and qcow2,
//! and shows:
//! - on the ISO the volume is one file in several extents (`-iso-level 3`),
//!   and `cairn verify` recomputes its root hash from the raw disk's
//!   partition and from the ISO's file (the qcow2 equals the raw);
//! - the ISO boots (as a CD) and the guest reads the model's first, middle
//!   and last MiB through the verity device on a loop device over the
//!   multi-extent file, each the host's bytes;
//! - one byte flipped in the middle of the model (in a copy-on-write copy
//!   of the ISO, so the release stays untouched) still boots and still
//!   reads the first and last MiB (control), but reading the middle gets
//!   an I/O error and the node halts with one `cairn: FATAL verity:` line
//!   naming the model's mapping and the loop device under it.
//!
//! It needs about 21 GiB of free disk (the model, its volume, the stage
//! cache's copy, raw + ISO + qcow2) and a long build and boot under TCG, so
//! it is ignored by default (CI disks are small). Run it with
//! `cargo test -p qemu-tests --test boot -- --ignored big_model --nocapture`.
//! Everything it writes is in one temporary folder under
//! target/qemu-tests, removed when the test ends, passed or failed.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use cairn::vm::qemu::{BootSpec, DiskBus, Firmware, Vm};
use qemu_tests::*;
use sha2::Digest as _;

const MODEL: &str = "big-weights";
/// Just over 4 GiB, and not a multiple of any block size.
const MODEL_SIZE: u64 = (4 << 30) + (1 << 20) + 123;
/// The sha256 of the whole generated model (the stream is deterministic).
const MODEL_SHA256: &str = "07784599b5dad334f568d0fa7f9c97fa2387a47020baeeab2bbf422801d2e3e3";
const MIB: u64 = 1 << 20;
/// The middle MiB the guest reads, and the byte flipped in it.
const MIDDLE: u64 = 2048 * MIB;
const FLIP: u64 = MIDDLE + 12345;

/// The model's stream: bytes `32 k .. 32 k + 32` are
/// sha256("cairn-big-model:" || k as 8 little-endian bytes).
const TAG: &[u8] = b"cairn-big-model:";

/// Fills `buf` with the model's bytes from offset `at`.
fn model_bytes(at: u64, buf: &mut [u8]) {
    testkit::stream::Stream::new(TAG).fill(at, buf)
}

fn region_sha256(at: u64, len: u64) -> String {
    let mut buf = vec![0u8; len as usize];
    model_bytes(at, &mut buf);
    hex(&sha2::Sha256::digest(&buf))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Writes the model to `path`; returns its sha256.
fn write_model(path: &Path) -> String {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create model"));
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 8 << 20];
    let mut at = 0;
    while at < MODEL_SIZE {
        let n = (MODEL_SIZE - at).min(buf.len() as u64) as usize;
        model_bytes(at, &mut buf[..n]);
        h.update(&buf[..n]);
        f.write_all(&buf[..n]).expect("write model");
        at += n as u64;
    }
    f.flush().expect("write model");
    hex(&h.finalize())
}

#[test]
fn big_model_stream_is_incompressible() {
    // Every byte value, evenly: nothing for a compressor to gain.
    let mut m = vec![0u8; MIB as usize];
    model_bytes(MIDDLE, &mut m);
    let mut counts = [0u32; 256];
    for b in &m {
        counts[*b as usize] += 1;
    }
    let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    assert!(*lo > 3500 && *hi < 4700, "{lo} {hi}");
}

fn recipe_text() -> String {
    format!(
        r#"# The big-model boot test's recipe (tests/boot/bigmodel.rs writes it).
[image]
name = "cairn-bigmodel"
version = "1"

[base.debian]
suite = "bookworm"
mirror = "http://deb.debian.org/debian"
packages = []

[disk]
size = "6G"
state_size = "128M"

[state]
mode = "ram"

[debug]
console = true

[[models]]
name = "{MODEL}"
path = "{MODEL}.bin"
sha256 = "{MODEL_SHA256}"
"#
    )
}

fn tool(label: &str, cmd: std::process::Command) -> String {
    let out = cairn::host::runner::output(label, cmd).unwrap_or_else(|e| panic!("{e:#}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn du(dir: &Path) -> String {
    let mut c = cairn::host::runner::command("du");
    c.arg("-sh").arg(dir);
    tool("du", c)
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_string()
}

/// `sha256sum` of `len` bytes of the model file at `at`, read in the guest
/// through the mounted volume.
fn guest_region(vm: &mut Vm, at: u64, len: u64, timeout: Duration) -> Result<String, String> {
    assert!(
        len == MIB && (at.is_multiple_of(MIB) || at + len == MODEL_SIZE),
        "a whole MiB, or the last one"
    );
    let file = format!("/usr/share/cairn/models/{MODEL}");
    // Into a file first: the shell is dash (no pipefail), and a failed
    // read must not look like the digest of nothing.
    let read = if at + len == MODEL_SIZE {
        format!("tail -c {len} {file} > /tmp/region")
    } else {
        format!(
            "dd if={file} of=/tmp/region bs=1M skip={} count=1 status=none",
            at / MIB
        )
    };
    let cmd = format!("{read} && sha256sum /tmp/region");
    match vm.console_run(&cmd, timeout) {
        Ok((0, out)) => Ok(out
            .split_whitespace()
            .find(|w| w.len() == 64)
            .unwrap_or("")
            .to_string()),
        Ok((rc, out)) => Err(format!("{cmd}: exit {rc}: {out}")),
        Err(e) => Err(format!("{cmd}: {e:#}")),
    }
}

#[test]
#[ignore = "needs ~21 GiB of free disk and a long build and TCG boot (a 4 GiB model written to raw, ISO and qcow2); CI disks are small. Run: cargo test -p qemu-tests --test boot -- --ignored big_model --nocapture"]
fn big_model_over_4_gib_builds_all_media_verifies_and_reads_through_verity_from_the_iso() {
    configure_qemu();
    for (t, p) in [
        ("mksquashfs", "squashfs-tools"),
        ("veritysetup", "cryptsetup-bin"),
        ("xorriso", "xorriso"),
        ("qemu-img", "qemu-utils"),
        ("qemu-io", "qemu-utils"),
    ] {
        testkit::tool(t, p);
    }
    let base = workspace().join("target/qemu-tests");
    std::fs::create_dir_all(&base).expect("target/qemu-tests");
    // Removed on drop, also when an assertion fails (the test unwinds).
    let tmp = tempfile::Builder::new()
        .prefix("big-model.")
        .tempdir_in(&base)
        .expect("tempdir");
    let dir = tmp.path();
    let recipe_dir = dir.join("recipe");
    std::fs::create_dir_all(&recipe_dir).expect("recipe folder");

    let t = Instant::now();
    let model = recipe_dir.join(format!("{MODEL}.bin"));
    let sha = write_model(&model);
    eprintln!(
        "big-model: generated {MODEL_SIZE} bytes in {:.1}s, sha256 {sha}",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(
        sha, MODEL_SHA256,
        "the generated model is not the pinned stream"
    );
    let recipe_path = recipe_dir.join("big.toml");
    std::fs::write(&recipe_path, recipe_text()).expect("recipe");

    let (pubkey, seckey) =
        cairn::release::signify::keygen(&dir.join("key"), None, "big-model test").expect("keygen");
    // A cache of its own: the 4 GiB volume the stage cache keeps goes
    // away with the folder, and the user's cache is left alone.
    let settings = cairn::cli::settings_from_env()
        .map(|s| cairn::inputs::plan::Settings {
            cache_root: dir.join("cache"),
            ..s
        })
        .unwrap_or_else(|e| panic!("settings: {e:#}"));
    let r = cairn::recipe::load(&recipe_path, Some(&recipe_dir), &settings.recipe_env())
        .unwrap_or_else(|e| panic!("{e}"));
    let t = Instant::now();
    let res = cairn::build::build(
        &r,
        &cairn::build::BuildOptions {
            out_dir: dir.join("out"),
            settings,
            formats: cairn::build::Formats::default(),
            key: Some(cairn::release::sign::SigningKey {
                path: seckey,
                passphrase: None,
            }),
            secure_boot: None,
            offline: false,
            update_lock: false,
        },
    )
    .unwrap_or_else(|e| panic!("building the big-model recipe: {e:#}"));
    let build_secs = t.elapsed().as_secs_f64();
    eprintln!(
        "big-model: built in {build_secs:.1}s; the test folder holds {}",
        du(dir)
    );
    // The model's own bytes are no longer needed: the host's side of every
    // comparison is computed from the stream.
    std::fs::remove_file(&model).expect("remove the model");

    let m = cairn::release::manifest::read(&res.dir.join("manifest.json")).expect("manifest");
    let v = m
        .volumes
        .iter()
        .find(|v| v.name == MODEL)
        .expect("the manifest lists the model volume")
        .clone();
    assert_eq!(v.compression, "none");
    assert!(v.data_size > MODEL_SIZE, "{v:?}");
    let iso = res.raw.with_extension("iso");
    let qcow2 = res.raw.with_extension("qcow2");
    for p in [&res.raw, &iso, &qcow2] {
        let len = std::fs::metadata(p).expect("medium").len();
        assert!(len > 4 << 30, "{}: {len} bytes", p.display());
    }
    // On the ISO the volume is one file of several extents, one after the
    // other, whose size is the whole volume's.
    let files = cairn::media::iso::list_iso(&iso).expect("ISO listing");
    let f = files
        .iter()
        .find(|f| f.path == v.iso_image)
        .unwrap_or_else(|| panic!("no {} in {files:?}", v.iso_image));
    assert_eq!(f.size, v.data_size, "{f:?}");
    assert!(f.extents >= 2 && f.contiguous, "{f:?}");
    // The flipped byte: find the model's bytes at FLIP in the ISO's copy
    // of the volume (uncompressed, so they are there as they are, near
    // FLIP's own offset in the file).
    let mut sample = [0u8; 32];
    model_bytes(FLIP, &mut sample);
    let window = 1 << 20;
    let start = f.offset + FLIP - window / 2;
    let mut w = vec![0u8; window as usize];
    let mut isof = std::fs::File::open(&iso).expect("open ISO");
    isof.seek(SeekFrom::Start(start)).expect("seek");
    isof.read_exact(&mut w).expect("read ISO");
    let flip_at = start
        + w.windows(32)
            .position(|x| x == sample)
            .expect("the model's bytes are in the ISO near their place in the file")
            as u64;
    eprintln!(
        "big-model: {} at ISO byte {}, {} extents; model byte {FLIP} at ISO byte {flip_at}",
        v.iso_image, f.offset, f.extents
    );

    // cairn verify: the signature, every digest, and every medium's claim,
    // with the big volume's root hash recomputed from the raw and the ISO.
    let t = Instant::now();
    let rep = cairn::release::verify::verify(&res.dir, &pubkey, false)
        .unwrap_or_else(|e| panic!("cairn verify: {e}"));
    let verify_secs = t.elapsed().as_secs_f64();
    eprintln!("big-model: verify passed in {verify_secs:.1}s");
    for medium in [&res.raw, &iso] {
        let name = medium.file_name().unwrap().to_string_lossy().into_owned();
        let want = format!(
            "volume {MODEL}: {name}: recomputed root hash {}",
            v.root_hash
        );
        assert!(
            rep.checks.iter().any(|c| c == &want),
            "{want} missing from {:#?}",
            rep.checks
        );
    }
    assert!(
        rep.checks
            .iter()
            .any(|c| c.starts_with("qcow2: ") && c.contains("content equals")),
        "{:#?}",
        rep.checks
    );
    // The raw and qcow2 are checked; only the ISO boots.
    std::fs::remove_file(&res.raw).ok();
    std::fs::remove_file(&qcow2).ok();

    let first = region_sha256(0, MIB);
    let last = region_sha256(MODEL_SIZE - MIB, MIB);
    let middle = region_sha256(MIDDLE, MIB);
    let ct = console_timeout();

    // The untouched ISO, as a CD.
    let t = Instant::now();
    let mut spec = BootSpec::new(
        &iso,
        cairn::media::ISO.qemu,
        Firmware::Uefi,
        log_path("big-model-iso"),
    );
    spec.bus = DiskBus::Cdrom;
    spec.debug_console = true;
    let mut vm = Vm::start(&spec).expect("start qemu");
    vm.wait_for_line("cairn: ready", boot_timeout())
        .unwrap_or_else(|e| panic!("big-model ISO: not ready: {e:#}"));
    let boot_secs = t.elapsed().as_secs_f64();
    eprintln!("big-model: the ISO reached ready in {boot_secs:.1}s");
    let serial = vm.serial_text();
    assert!(
        serial.contains(&format!("cairn: volume {MODEL} verified by dm-verity")),
        "{serial}"
    );
    // The verity device spans the whole volume: a loop device over the
    // multi-extent file, as the ISO file system reads it.
    let (rc, out) = vm
        .console_run(
            &format!(
                "stat -c %s /run/cairn/medium/cairn/models/{MODEL}.squashfs; \
                 blockdev --getsize64 /dev/mapper/cairn-model-{MODEL}; \
                 veritysetup status cairn-model-{MODEL}"
            ),
            ct,
        )
        .expect("console");
    assert_eq!(rc, 0, "{out}");
    let sizes: Vec<&str> = out.lines().map(str::trim).take(2).collect();
    assert_eq!(
        sizes,
        [v.data_size.to_string(), v.data_size.to_string()],
        "{out}"
    );
    assert!(out.contains("status:      verified"), "{out}");
    assert!(
        out.contains("/dev/loop"),
        "the data device is a loop device: {out}"
    );
    let t = Instant::now();
    assert_eq!(
        guest_region(&mut vm, 0, MIB, ct),
        Ok(first.clone()),
        "first MiB"
    );
    assert_eq!(
        guest_region(&mut vm, MIDDLE, MIB, ct),
        Ok(middle.clone()),
        "middle MiB"
    );
    assert_eq!(
        guest_region(&mut vm, MODEL_SIZE - MIB, MIB, ct),
        Ok(last.clone()),
        "last MiB"
    );
    eprintln!(
        "big-model: first, middle and last MiB read in the guest in {:.1}s, each the host's",
        t.elapsed().as_secs_f64()
    );
    vm.kill();
    drop(vm);

    // A copy-on-write copy of the ISO with one byte of the model flipped.
    let copy = dir.join("flipped.qcow2");
    let mut c = cairn::host::runner::command("qemu-img");
    c.args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&iso)
        .arg(&copy);
    tool("qemu-img create", c);
    let mut b = [0u8];
    isof.seek(SeekFrom::Start(flip_at)).expect("seek");
    isof.read_exact(&mut b).expect("read ISO");
    let mut c = cairn::host::runner::command("qemu-io");
    c.args(["-f", "qcow2", "-c"])
        .arg(format!("write -q -P {} {flip_at} 1", b[0] ^ 1))
        .arg(&copy);
    tool("qemu-io write", c);
    // The copy differs from the release's ISO first in that byte's sector
    // (qemu-img compare names 512-byte sectors), and holds the flipped
    // value there.
    let mut c = cairn::host::runner::command("qemu-img");
    c.args(["compare", "-f", "raw", "-F", "qcow2"])
        .arg(&iso)
        .arg(&copy);
    let text = match cairn::host::runner::output("qemu-img compare", c) {
        Ok(o) => panic!(
            "the copy equals the ISO: {}",
            String::from_utf8_lossy(&o.stdout)
        ),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        text.contains(&format!(
            "Content mismatch at offset {}!",
            flip_at / 512 * 512
        )),
        "{text}"
    );
    let mut c = cairn::host::runner::command("qemu-io");
    c.args(["-r", "-f", "qcow2", "-c"])
        .arg(format!("read -P {} {flip_at} 1", b[0] ^ 1))
        .arg(&copy);
    let out = tool("qemu-io read", c);
    assert!(!out.contains("failed"), "{out}");

    let mut spec = BootSpec::new(
        &copy,
        cairn::media::QCOW2.qemu,
        Firmware::Uefi,
        log_path("big-model-iso-flipped"),
    );
    spec.bus = DiskBus::Cdrom;
    spec.debug_console = true;
    let mut vm = Vm::start(&spec).expect("start qemu");
    // Nothing at boot reads the middle of the model: it boots.
    vm.wait_for_line("cairn: ready", boot_timeout())
        .unwrap_or_else(|e| panic!("flipped big-model ISO: not ready: {e:#}"));
    // Control: the first and last MiB still read, and are right.
    assert_eq!(
        guest_region(&mut vm, 0, MIB, ct),
        Ok(first),
        "first MiB (flipped copy)"
    );
    assert_eq!(
        guest_region(&mut vm, MODEL_SIZE - MIB, MIB, ct),
        Ok(last),
        "last MiB (flipped copy)"
    );
    // The middle MiB holds the flipped byte: the reader gets an I/O
    // error, never the data, and the node prints one FATAL line naming the
    // model's mapping and halts.
    let r = guest_region(
        &mut vm,
        MIDDLE,
        MIB,
        Duration::from_secs(60 * cairn::vm::qemu::timeout_scale() as u64),
    );
    assert!(r.is_err(), "the corrupted region was read: {r:?}");
    let line = vm
        .wait_for_line("cairn: FATAL", ct)
        .expect("a FATAL line after the corrupted read");
    assert!(
        line.contains("FATAL verity: corrupted data block")
            && line.contains(&format!("cairn-model-{MODEL}")),
        "{line}"
    );
    vm.wait_for_line("System halted", ct)
        .expect("the node halts after the FATAL line");
    // The kernel's message and the FATAL line name the device the boot
    // log's volume line named (the loop device over the ISO file).
    let serial = vm.serial_text();
    let devno = serial
        .lines()
        .find(|l| l.contains(&format!("cairn: volume {MODEL} verified")))
        .and_then(|l| l.split("(device ").nth(1))
        .and_then(|r| r.split(',').next())
        .unwrap_or_else(|| panic!("no volume line: {serial}"))
        .to_string();
    assert!(
        serial.lines().any(
            |l| l.contains(&format!("device-mapper: verity: {devno}: data block"))
                && l.contains("is corrupted")
        ),
        "the kernel names another device than {devno}: {serial}"
    );
    assert!(line.contains(&format!("{devno})")), "{line}");
    assert_eq!(serial.matches("cairn: FATAL").count(), 1, "{serial}");
    vm.kill();
    eprintln!(
        "big-model: build {build_secs:.1}s, verify {verify_secs:.1}s, ISO boot to ready {boot_secs:.1}s"
    );
}
