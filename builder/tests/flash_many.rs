//! `cairn flash RELEASE DEV1 DEV2 ...` against real block devices: loop
//! devices the TEST attaches to files (`losetup --find --show`) and
//! detaches in a Drop guard (the builder itself never uses loop devices).
//! Needs root and loop support; without them the tests fail, never skip.
//! The release is a small real one (tests/common/mini.rs).

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn::host::digest::Sha256;

mod common;
use common::loopdev::Loop;
use common::mini::{self, mini, Media, RAW};

const MIB: u64 = 1 << 20;
const LIMIT: Duration = Duration::from_secs(300);

fn flash_args<'a>(
    raw: &'a Path,
    pubkey: &'a Path,
    devs: &'a [&'a Path],
    receipts: &'a Path,
) -> Vec<&'a OsStr> {
    let mut a = vec![OsStr::new("flash"), raw.as_os_str()];
    a.extend(devs.iter().map(|d| d.as_os_str()));
    a.extend([
        OsStr::new("--pubkey"),
        pubkey.as_os_str(),
        OsStr::new("--yes"),
        // Loop devices are not removable.
        OsStr::new("--allow-fixed"),
        OsStr::new("--receipts"),
        receipts.as_os_str(),
    ]);
    a
}

fn receipts(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

#[test]
fn flash_many_writes_two_sticks_refuses_a_small_one_and_logs_receipts() {
    let m = mini(Media::RawAndQcow2);
    let raw = m.path(RAW);
    let size = std::fs::metadata(&raw).unwrap().len();
    let want = Sha256::of_file(&raw).unwrap();
    let sums = Sha256::of_file(&m.path("SHA256")).unwrap();
    let work = m.tmp.path().join("sticks");
    std::fs::create_dir_all(&work).unwrap();
    let a = Loop::attach(&work, "a.img", size + 8 * MIB, 0xa5);
    let b = Loop::attach(&work, "b.img", size + 8 * MIB, 0x5a);
    let small = Loop::attach(&work, "small.img", 16 * MIB, 0x77);
    let log = m.tmp.path().join("receipts.jsonl");
    let devs = [a.dev.as_path(), small.dev.as_path(), b.dev.as_path()];

    let r = mini::cairn(&flash_args(&raw, &m.pubkey, &devs, &log), LIMIT);
    println!("{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.code, 1, "one stick refused: exit 1");
    // The small one is refused by name, the others are written and read back.
    let small_name = small.dev.display().to_string();
    let err: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(err.len(), 1, "{err:?}");
    assert!(
        err[0].contains(&small_name) && err[0].contains("too small"),
        "{}",
        err[0]
    );
    for l in [&a, &b] {
        let name = l.dev.display().to_string();
        assert!(
            r.stdout
                .lines()
                .any(|x| x.starts_with(&format!("flash: {name}: ok"))),
            "{name} not reported ok:\n{}",
            r.stdout
        );
        assert_eq!(l.digest(size), want, "{name} does not read back the image");
    }
    // Control: the refused stick is untouched.
    assert!(small.head(16 * MIB).iter().all(|b| *b == 0x77));

    // One receipt per device, in order.
    let rs = receipts(&log);
    assert_eq!(rs.len(), 3, "{rs:?}");
    for (rec, dev) in rs.iter().zip(devs) {
        assert_eq!(rec["device"], dev.display().to_string());
        assert_eq!(rec["release"], "mini-1");
        assert_eq!(rec["image"], RAW);
        assert_eq!(rec["image_sha256"], want.hex());
        assert_eq!(rec["sums_sha256"], sums.hex());
        assert!(rec["site_sha256"].is_null());
        // No site file: no role or node (control for the site test's).
        assert!(rec["role"].is_null() && rec["node"].is_null(), "{rec}");
        for k in ["vendor", "model", "serial", "wwid"] {
            assert!(rec.get(k).is_some(), "{k} missing: {rec}");
        }
        let (s, f) = (
            rec["started"].as_str().unwrap(),
            rec["finished"].as_str().unwrap(),
        );
        assert!(is_rfc3339(s) && is_rfc3339(f) && s <= f, "{rec}");
    }
    for i in [0, 2] {
        assert_eq!(rs[i]["result"], "ok", "{}", rs[i]);
        assert_eq!(rs[i]["read_back_sha256"], want.hex());
        assert_eq!(rs[i]["size"], size + 8 * MIB);
        assert!(rs[i]["message"].is_null());
    }
    assert_eq!(rs[1]["result"], "refused");
    assert_eq!(rs[1]["size"], 16 * MIB);
    assert!(rs[1]["read_back_sha256"].is_null());
    assert!(rs[1]["message"].as_str().unwrap().contains("too small"));

    // The log is appended to, never rewritten.
    let r = mini::cairn(
        &flash_args(&raw, &m.pubkey, &[a.dev.as_path()], &log),
        LIMIT,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let again = receipts(&log);
    assert_eq!(again.len(), 4);
    assert_eq!(again[..3], rs[..]);
    assert_eq!(again[3]["result"], "ok");
}

/// SIGINT, SIGTERM and SIGHUP take one path (`host::interrupt`): every
/// stick is left with a zero first MiB, each says so, the receipts are
/// written, and the exit code is 128 + the signal. (The SIGINT case is the
/// control: before flash used `host::interrupt`, SIGTERM and SIGHUP killed
/// it with no receipts and a stick's first MiB left as it was.)
#[test]
fn flash_many_sigint_leaves_every_stick_unbootable() {
    signal_leaves_every_stick_unbootable(libc::SIGINT, "--full", "full");
}

#[test]
fn flash_many_sigterm_leaves_every_stick_unbootable() {
    signal_leaves_every_stick_unbootable(libc::SIGTERM, "--full", "full");
}

/// SIGTERM during a sparse flash (the gaps' zeros written by cairn, so
/// the write of this 512 MiB image outlasts the first progress line): the
/// same unbootable sticks and `interrupted` receipts.
#[test]
fn flash_many_sigterm_during_a_sparse_flash_leaves_every_stick_unbootable() {
    signal_leaves_every_stick_unbootable(libc::SIGTERM, "--write-zeros", "sparse-zeros-written");
}

#[test]
fn flash_many_sighup_leaves_every_stick_unbootable() {
    signal_leaves_every_stick_unbootable(libc::SIGHUP, "--full", "full");
}

fn signal_leaves_every_stick_unbootable(sig: libc::c_int, flag: &str, mode: &str) {
    let m = mini::mini_of_size(if flag == "--full" { 256 } else { 512 } * MIB);
    let raw = m.path(RAW);
    let size = std::fs::metadata(&raw).unwrap().len();
    let mut image_head = vec![0u8; MIB as usize];
    File::open(&raw)
        .unwrap()
        .read_exact(&mut image_head)
        .unwrap();
    assert!(image_head.iter().any(|b| *b != 0));
    let work = m.tmp.path().join("sticks");
    std::fs::create_dir_all(&work).unwrap();
    let a = Loop::attach(&work, "a.img", size + 4 * MIB, 0);
    let b = Loop::attach(&work, "b.img", size + 4 * MIB, 0);
    // Each stick starts as a good copy of the image: a first MiB left in
    // place by the interrupted write would be a valid one.
    for l in [&a, &b] {
        let dev = OpenOptions::new().write(true).open(&l.dev).unwrap();
        dev.write_all_at(&image_head, 0).unwrap();
        dev.sync_all().unwrap();
        assert_eq!(l.head(MIB), image_head);
    }
    let log = m.tmp.path().join("receipts.jsonl");
    let devs = [a.dev.as_path(), b.dev.as_path()];
    // Every byte, or zeros written by cairn: a BLKZEROOUT of the gaps may
    // end before the signal.
    let mut args = flash_args(&raw, &m.pubkey, &devs, &log);
    args.push(OsStr::new(flag));
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        // Plain progress lines come by time (10 s apart by default): one
        // early, to signal at.
        .env("CAIRN_PROGRESS_EVERY", "0.05")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let started = Instant::now();
    // Signal at the first progress line of either stick (plain lines: stderr is a pipe).
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    let mut signalled = false;
    while err.read_line(&mut line).unwrap() > 0 {
        seen.push_str(&line);
        if !signalled && line.starts_with("flash /dev/loop") && line.contains("%)") {
            // SAFETY: signalling our own child.
            assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
            signalled = true;
        }
        line.clear();
        assert!(started.elapsed() < LIMIT, "cairn flash hung:\n{seen}");
    }
    let st = child.wait().unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    println!("{out}\n{seen}");
    assert!(signalled, "no progress line to signal at:\n{seen}");
    assert_eq!(st.code(), Some(128 + sig), "exit code after signal {sig}");
    for l in [&a, &b] {
        let name = l.dev.display().to_string();
        let msg = seen
            .lines()
            .find(|x| x.starts_with("error:") && x.contains(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no message for {name}:\n{seen}"));
        assert!(
            msg.contains("interrupted") && msg.contains("unbootable"),
            "{msg}"
        );
        let head = l.head(MIB);
        assert_ne!(head, image_head, "{name} kept a valid first MiB");
        assert!(head.iter().all(|b| *b == 0), "{name}: first MiB not zero");
    }
    let rs = receipts(&log);
    assert_eq!(rs.len(), 2);
    assert!(rs.iter().all(|r| r["result"] == "interrupted"), "{rs:?}");
    assert!(rs.iter().all(|r| r["mode"] == mode), "{rs:?}");
}

#[test]
fn flash_many_with_a_site_file_puts_it_on_every_stick_and_records_its_digest() {
    let mut m = mini(Media::RawAndQcow2);
    // A site key of this test's own, declared in the (re-signed) manifest.
    let site_key = cairn::release::signify::generate();
    let public = site_key.public();
    m.manifest["site"] = serde_json::json!({
        "allow": ["hostname"],
        "ingress": [],
        "key_id": public.key_id(),
        "public_key": public.to_file_text("sites public key"),
    });
    m.write_manifest();
    m.sign();
    let raw = m.path(RAW);
    let size = std::fs::metadata(&raw).unwrap().len();
    let decl = cairn::release::site::declaration_beside(&raw).unwrap();
    let site = m.tmp.path().join("north.toml");
    std::fs::write(
        &site,
        "name = \"north\"\nhostname = \"north-1\"\nserial = \"1\"\n",
    )
    .unwrap();
    let signed = cairn::release::site::sign(&site, &site_key, &decl).unwrap();
    let site_digest = Sha256::of_bytes(&signed.text);
    let work = m.tmp.path().join("sticks");
    std::fs::create_dir_all(&work).unwrap();
    let a = Loop::attach(&work, "a.img", size + 4 * MIB, 0xa5);
    let b = Loop::attach(&work, "b.img", size + 4 * MIB, 0x5a);
    let devs = [a.dev.as_path(), b.dev.as_path()];
    let log = m.tmp.path().join("receipts.jsonl");
    let with_site = |site: &Path| {
        let mut args = flash_args(&raw, &m.pubkey, &devs, &log);
        args.extend([OsStr::new("--site"), site.as_os_str()]);
        args.into_iter()
            .map(OsStr::to_os_string)
            .collect::<Vec<_>>()
    };

    // Control first: a site file with a changed byte is refused before
    // any stick is written (bad input, exit 2, no receipts).
    // The signed text (with the image and version sign added), one byte changed.
    let changed = std::fs::read_to_string(&site)
        .unwrap()
        .replace("north-1", "north-2");
    std::fs::write(&site, changed).unwrap();
    let args = with_site(&site);
    let args: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let r = mini::cairn(&args, LIMIT);
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("does not verify"), "{}", r.stderr);
    assert!(!log.exists(), "receipts written for a refused flash");
    for (l, fill) in [(&a, 0xa5), (&b, 0x5a)] {
        assert!(
            l.head(MIB).iter().all(|x| *x == fill),
            "a stick was written"
        );
    }
    std::fs::write(&site, &signed.text).unwrap();

    let r = mini::cairn(&args, LIMIT);
    println!("{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains(": role server, node north-1, on every stick"),
        "{}",
        r.stdout
    );
    for l in [&a, &b] {
        let name = l.dev.display().to_string();
        assert!(
            r.stdout
                .lines()
                .any(|x| x.starts_with(&format!("flash: {name}: ok"))),
            "{}",
            r.stdout
        );
        // The site file and its signature are on this stick's ESP.
        cairn::release::site::read_back(&l.dev, &signed)
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        // Outside the ESP the stick holds the image: its partition table
        // (the first MiB) is the image's.
        let mut head = vec![0u8; MIB as usize];
        File::open(&raw).unwrap().read_exact(&mut head).unwrap();
        assert_eq!(l.head(MIB), head, "{name}");
    }
    let rs = receipts(&log);
    assert_eq!(rs.len(), 2, "{rs:?}");
    for (rec, dev) in rs.iter().zip(devs) {
        assert_eq!(rec["device"], dev.display().to_string());
        assert_eq!(rec["result"], "ok", "{rec}");
        assert_eq!(rec["site_sha256"], site_digest.hex(), "{rec}");
        // The file sets no role: a server, named by its hostname.
        assert_eq!(rec["role"], "server", "{rec}");
        assert_eq!(rec["node"], "north-1", "{rec}");
        assert_eq!(
            rec["read_back_sha256"],
            Sha256::of_file(&raw).unwrap().hex()
        );
    }
}

/// 16 bytes that stand for what was on a stick before.
const MARKER: &[u8; 16] = b"OLD-STICK-MARKER";

/// Whether the first `len` bytes of `dev` hold [`MARKER`] at any 16-byte
/// boundary (the stale data was written so; any stale 4 KiB block shows it).
fn holds_marker(dev: &Path, len: u64) -> Option<u64> {
    let mut f = File::open(dev).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(MIB) as usize;
        f.read_exact(&mut buf[..n]).unwrap();
        if let Some(i) = buf[..n].chunks_exact(16).position(|c| c == MARKER) {
            return Some(off + i as u64 * 16);
        }
        off += n as u64;
    }
    None
}

/// The sparse flash writes the signed data map's ranges and has the gaps
/// zeroed: a stick pre-filled with a marker holds none of it anywhere in
/// the image's area, in each sparse mode, and reads back as the image.
/// Control: copying only the map's ranges with plain `dd` leaves markers.
#[test]
fn flash_sparse_leaves_nothing_of_the_old_stick_in_the_image() {
    let m = mini::mini_of_size(256 * MIB);
    let raw = m.path(RAW);
    let size = std::fs::metadata(&raw).unwrap().len();
    let want = Sha256::of_file(&raw).unwrap();
    let map: serde_json::Value =
        serde_json::from_slice(&std::fs::read(m.path(&format!("{RAW}.map"))).unwrap()).unwrap();
    let ranges: Vec<(u64, u64)> = map["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_u64().unwrap(), r[1].as_u64().unwrap()))
        .collect();
    let mapped: u64 = ranges.iter().map(|(s, e)| e - s).sum();
    assert!(mapped < size / 4, "{mapped} of {size} bytes mapped");
    let work = m.tmp.path().join("sticks");
    std::fs::create_dir_all(&work).unwrap();
    let log = m.tmp.path().join("receipts.jsonl");

    for (i, (flag, mode)) in [
        (None, "sparse-zeroout"),
        (Some("--write-zeros"), "sparse-zeros-written"),
        (Some("--full"), "full"),
    ]
    .into_iter()
    .enumerate()
    {
        let l = Loop::attach_with(&work, &format!("s{i}.img"), size + 8 * MIB, Some(MARKER));
        assert!(holds_marker(&l.dev, size).is_some());
        let devs = [l.dev.as_path()];
        let mut args = flash_args(&raw, &m.pubkey, &devs, &log);
        args.extend(flag.map(OsStr::new));
        let r = mini::cairn(&args, LIMIT);
        println!("{}\n{}", r.stdout, r.stderr);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(r.stdout.contains(&format!(": ok ({mode})")), "{}", r.stdout);
        assert_eq!(
            holds_marker(&l.dev, size),
            None,
            "{mode}: a marker survived"
        );
        assert_eq!(l.digest(size), want, "{mode}: the stick is not the image");
        let rec = receipts(&log).pop().unwrap();
        assert_eq!(rec["mode"], mode, "{rec}");
        assert_eq!(rec["result"], "ok", "{rec}");
        let written = rec["written_bytes"].as_u64().unwrap();
        if mode == "full" {
            assert_eq!(written, size);
        } else {
            assert!(written <= mapped + MIB && written < size / 4, "{rec}");
        }
    }

    // Control: only the map's ranges copied, as a tool that trusts the
    // stick to be blank would: the old stick shows through the gaps.
    let c = Loop::attach_with(&work, "control.img", size + 8 * MIB, Some(MARKER));
    for (s, e) in &ranges {
        let st = Command::new("dd")
            .arg(format!("if={}", raw.display()))
            .arg(format!("of={}", c.dev.display()))
            .args(["bs=4096", "conv=notrunc,fsync", "status=none"])
            .arg(format!("skip={}", s / 4096))
            .arg(format!("seek={}", s / 4096))
            .arg(format!("count={}", (e - s).div_ceil(4096)))
            .status()
            .unwrap();
        assert!(st.success());
    }
    let at = holds_marker(&c.dev, size).expect("the control kept no marker");
    assert!(!ranges.iter().any(|(s, e)| (*s..*e).contains(&at)));
    assert_ne!(c.digest(size), want);
}

/// A data map changed after signing (a range dropped, or a range digest
/// altered) is refused before any byte is written: its digest is in the
/// signed SHA256. A raw with one mapped byte flipped after signing (flash
/// checks the signature and the map, not the whole raw, first) is found
/// by that range's signed digest while writing: refused, and the stick,
/// a good copy of the image before, is left with a zero first MiB.
#[test]
fn flash_refuses_a_changed_data_map_or_a_flipped_mapped_byte() {
    let m = mini::mini_of_size(128 * MIB);
    let raw = m.path(RAW);
    let size = std::fs::metadata(&raw).unwrap().len();
    let map_path = m.path(&format!("{RAW}.map"));
    let text = std::fs::read_to_string(&map_path).unwrap();
    let target = m.tmp.path().join("stick.img");
    let to_file = |m: &mini::Mini| {
        mini::cairn(
            &[
                OsStr::new("flash"),
                raw.as_os_str(),
                target.as_os_str(),
                OsStr::new("--pubkey"),
                m.pubkey.as_os_str(),
                OsStr::new("--yes"),
                OsStr::new("--to-file"),
            ],
            LIMIT,
        )
    };
    // Control: the signed map flashes.
    let r = to_file(&m);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("sparse-new-file"), "{}", r.stdout);
    assert_eq!(
        Sha256::of_file(&target).unwrap(),
        Sha256::of_file(&raw).unwrap()
    );
    std::fs::remove_file(&target).unwrap();

    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["cairn_data_map"], 2, "{v}");
    let mut dropped = v.clone();
    dropped["ranges"].as_array_mut().unwrap().remove(1);
    dropped["range_sha256"].as_array_mut().unwrap().remove(1);
    let mut tampered = v.clone();
    tampered["range_sha256"][1] = serde_json::json!(Sha256::of_bytes(b"other").hex());
    for changed in [dropped, tampered] {
        std::fs::write(&map_path, serde_json::to_string(&changed).unwrap()).unwrap();
        let r = to_file(&m);
        println!("{}", r.stderr);
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert!(
            r.stderr.contains("digest") && r.stderr.contains(".map"),
            "{}",
            r.stderr
        );
        assert!(!target.exists(), "a target was written");
    }
    std::fs::write(&map_path, &text).unwrap();

    // A mapped byte past the first MiB, flipped after signing.
    let ranges: Vec<(u64, u64)> = v["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_u64().unwrap(), r[1].as_u64().unwrap()))
        .collect();
    let (s, e) = *ranges.iter().find(|(_, e)| *e > 2 * MIB).unwrap();
    let at = s.max(MIB) + (e - s.max(MIB)) / 2;
    let flip = |raw: &Path| {
        let f = OpenOptions::new().read(true).write(true).open(raw).unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x01], at).unwrap();
        f.sync_all().unwrap();
    };
    let mut image_head = vec![0u8; MIB as usize];
    File::open(&raw)
        .unwrap()
        .read_exact(&mut image_head)
        .unwrap();
    let work = m.tmp.path().join("sticks");
    std::fs::create_dir_all(&work).unwrap();
    let log = m.tmp.path().join("receipts.jsonl");
    for flipped in [false, true] {
        if flipped {
            flip(&raw);
        }
        let l = Loop::attach(&work, &format!("f{flipped}.img"), size + 4 * MIB, 0);
        // The stick starts as a good copy's head: one left in place would boot.
        let dev = OpenOptions::new().write(true).open(&l.dev).unwrap();
        dev.write_all_at(&image_head, 0).unwrap();
        dev.sync_all().unwrap();
        let devs = [l.dev.as_path()];
        let r = mini::cairn(&flash_args(&raw, &m.pubkey, &devs, &log), LIMIT);
        println!("{}\n{}", r.stdout, r.stderr);
        let head = l.head(MIB);
        if !flipped {
            // Control: the same flash of the unflipped raw succeeds.
            assert_eq!(r.code, 0, "{}", r.stderr);
            assert_eq!(head, image_head);
            continue;
        }
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert!(
            r.stderr.contains("is not the signed image") && r.stderr.contains("unbootable"),
            "{}",
            r.stderr
        );
        assert!(head.iter().all(|b| *b == 0), "the first MiB was written");
        let rec = receipts(&log).pop().unwrap();
        assert_eq!(rec["result"], "refused", "{rec}");
    }
    // `cairn verify` still hashes the whole raw: the flipped byte fails it.
    let r = mini::cairn(
        &[
            OsStr::new("verify"),
            m.dir.as_os_str(),
            OsStr::new("--pubkey"),
            m.pubkey.as_os_str(),
        ],
        LIMIT,
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains(&format!("digest: {RAW}")), "{}", r.stderr);
}

/// Loop devices are not removable: refused without --allow-fixed (the
/// stick untouched), and a device over 64 GiB needs --allow-large too.
/// `--list` shows both with the flags they need.
#[test]
fn flash_refuses_fixed_and_large_disks_and_lists_them() {
    let m = mini(Media::RawAndQcow2);
    let raw = m.path(RAW);
    let size = std::fs::metadata(&raw).unwrap().len();
    let work = m.tmp.path().join("sticks");
    std::fs::create_dir_all(&work).unwrap();
    let small = Loop::attach(&work, "fixed.img", size + 4 * MIB, 0x77);
    let large = Loop::attach_with(&work, "large.img", 65 << 30, None);
    let log = m.tmp.path().join("receipts.jsonl");

    let r = mini::cairn(
        &flash_args(&raw, &m.pubkey, &[large.dev.as_path()], &log),
        LIMIT,
    );
    println!("{}", r.stderr);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("--allow-large"), "{}", r.stderr);
    assert_eq!(receipts(&log).pop().unwrap()["result"], "refused");

    let devs = [small.dev.as_path()];
    let plain: Vec<&OsStr> = flash_args(&raw, &m.pubkey, &devs, &log)
        .into_iter()
        .filter(|a| *a != "--allow-fixed")
        .collect();
    let r = mini::cairn(&plain, LIMIT);
    println!("{}", r.stderr);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("fixed disk") && r.stderr.contains("--allow-fixed"),
        "{}",
        r.stderr
    );
    assert!(small.head(MIB).iter().all(|b| *b == 0x77), "written");
    // Control: with the flag it is written.
    let r = mini::cairn(
        &flash_args(&raw, &m.pubkey, &[small.dev.as_path()], &log),
        LIMIT,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(small.digest(size), Sha256::of_file(&raw).unwrap());

    let r = mini::cairn(&[OsStr::new("flash"), OsStr::new("--list")], LIMIT);
    println!("{}", r.stdout);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("DEVICE"), "{}", r.stdout);
    let line = |l: &Loop| {
        let name = format!("{} ", l.dev.display());
        r.stdout
            .lines()
            .find(|x| x.starts_with(&name))
            .unwrap_or_else(|| panic!("{name} not listed:\n{}", r.stdout))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let f = line(&small);
    assert_eq!(&f[1..3], ["no", "virtual"], "{f:?}");
    assert!(f.contains(&"--allow-fixed".to_string()), "{f:?}");
    assert!(!f.contains(&"--allow-large".to_string()), "{f:?}");
    let g = line(&large);
    assert!(
        g.contains(&"65.0".to_string()) || g.iter().any(|x| x.starts_with("65")),
        "{g:?}"
    );
    assert!(g.contains(&"--allow-large".to_string()), "{g:?}");
}

/// `cairn verify` checks a signed data map against the raw beside it:
/// one signed for another image (its digest), one that misses data, or
/// one with a wrong range digest fails, naming the map.
#[test]
fn verify_refuses_a_signed_map_of_another_image() {
    let m = mini::mini_of_size(128 * MIB);
    let verify = || {
        mini::cairn(
            &[
                OsStr::new("verify"),
                m.dir.as_os_str(),
                OsStr::new("--pubkey"),
                m.pubkey.as_os_str(),
            ],
            LIMIT,
        )
    };
    // Control: the build's map passes and is reported.
    let r = verify();
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("map: mini-1.raw.map:"), "{}", r.stdout);
    let map_path = m.path(&format!("{RAW}.map"));
    let text = std::fs::read(&map_path).unwrap();
    let good: serde_json::Value = serde_json::from_slice(&text).unwrap();
    let mut v = good.clone();
    v["sha256"] = serde_json::Value::String(Sha256::of_bytes(b"another image").hex());
    // Signed but wrong (a builder bug): a range of data dropped (a sparse
    // flash would zero it), or a range digest that is not the raw's (a
    // flash would refuse it midway).
    let mut dropped = good.clone();
    dropped["ranges"].as_array_mut().unwrap().remove(1);
    dropped["range_sha256"].as_array_mut().unwrap().remove(1);
    let mut wrong = good.clone();
    wrong["range_sha256"][1] = serde_json::json!(Sha256::of_bytes(b"other").hex());
    for (bad, why) in [
        (v, "map: mini-1.raw.map: is for"),
        (dropped, "holds data outside every range"),
        (wrong, "map: mini-1.raw.map: range 1 ["),
    ] {
        std::fs::write(&map_path, serde_json::to_string(&bad).unwrap()).unwrap();
        m.sign();
        let r = verify();
        println!("{}", r.stderr);
        assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
        assert!(r.stderr.contains(why), "{why}: {}", r.stderr);
    }
}

/// A `.raw.zst` (both digests signed: the compressed one in SHA256, the
/// raw's in the signed data map) verifies and flashes as a stream, with
/// the same sparse write and read-back, also with no `.raw` in the folder;
/// a changed byte in the compressed file is refused before any write.
#[test]
fn flash_from_raw_zst_and_refuse_a_corrupted_one() {
    let mut m = mini::mini_of_size(256 * MIB);
    let raw = m.path(RAW);
    let size = std::fs::metadata(&raw).unwrap().len();
    let want = Sha256::of_file(&raw).unwrap();
    // As `cairn build --format raw,zst` writes it: the zst row's file,
    // which is the name verify and flash read.
    let zst = m.path(&cairn::media::ZST.file(mini::NAME));
    assert_eq!(zst, m.path(&format!("{RAW}.zst")));
    cairn::media::zst::write_zst_to(&raw, &zst).unwrap();
    assert!(std::fs::metadata(&zst).unwrap().len() < size / 4);
    mini::set_output(&mut m.manifest, &m.dir, &format!("{RAW}.zst"));
    // Only the .zst: the raw leaves the folder (and the manifest).
    std::fs::remove_file(&raw).unwrap();
    std::fs::remove_file(m.path(mini::QCOW2)).unwrap();
    m.manifest["outputs"]
        .as_array_mut()
        .unwrap()
        .retain(|o| o["file"] != RAW && o["file"] != mini::QCOW2);
    m.write_manifest();
    m.sign();
    let verify = |target: &Path| {
        mini::cairn(
            &[
                OsStr::new("verify"),
                target.as_os_str(),
                OsStr::new("--pubkey"),
                m.pubkey.as_os_str(),
            ],
            LIMIT,
        )
    };
    for t in [m.dir.as_path(), zst.as_path()] {
        let r = verify(t);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        assert!(
            r.stdout.contains(&format!(
                "zst: {RAW}.zst: decompresses to {RAW}'s signed digest {want}"
            )),
            "{}",
            r.stdout
        );
    }
    let work = m.tmp.path().join("sticks");
    std::fs::create_dir_all(&work).unwrap();
    let l = Loop::attach_with(&work, "z.img", size + 8 * MIB, Some(MARKER));
    let log = m.tmp.path().join("receipts.jsonl");
    let devs = [l.dev.as_path()];
    let r = mini::cairn(&flash_args(&zst, &m.pubkey, &devs, &log), LIMIT);
    println!("{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains(": ok (sparse-zeroout)"), "{}", r.stdout);
    assert_eq!(l.digest(size), want, "the stick is not the raw");
    assert_eq!(holds_marker(&l.dev, size), None);
    let rec = receipts(&log).pop().unwrap();
    assert_eq!(rec["image_sha256"], want.hex(), "{rec}");
    assert_eq!(rec["read_back_sha256"], want.hex(), "{rec}");
    // --full from the stream too.
    let mut args = flash_args(&zst, &m.pubkey, &devs, &log);
    args.push(OsStr::new("--full"));
    let r = mini::cairn(&args, LIMIT);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(l.digest(size), want);

    // One byte of the compressed file changed: refused before any write.
    let fresh = Loop::attach_with(&work, "y.img", size + 8 * MIB, Some(MARKER));
    testkit::flip_byte(&zst, std::fs::metadata(&zst).unwrap().len() / 2);
    let devs = [fresh.dev.as_path()];
    let r = mini::cairn(&flash_args(&zst, &m.pubkey, &devs, &log), LIMIT);
    println!("{}", r.stderr);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("digest") && r.stderr.contains(".zst"),
        "{}",
        r.stderr
    );
    let mut stale = MARKER.repeat(MIB as usize / 16);
    stale.truncate(MIB as usize);
    assert_eq!(fresh.head(MIB), stale, "the stick was written");
    assert_eq!(holds_marker(&fresh.dev, 16 * MIB), Some(0));
}

/// `flash --json`: one JSON document on stdout (the same spelling as the
/// other commands' `--json`), a receipt per stick, the worst result on
/// top, the exit code as without it. Control: without `--json` stdout is
/// text, not JSON.
#[test]
fn flash_json_is_one_document_with_a_receipt_per_stick() {
    let m = mini::mini_of_size(128 * MIB);
    let raw = m.path(RAW);
    let good = m.tmp.path().join("good.img");
    let inside = m.path("stick.img");
    let run = |targets: &[&Path], json: bool| {
        let mut a = vec![OsStr::new("flash"), raw.as_os_str()];
        a.extend(targets.iter().map(|t| t.as_os_str()));
        a.extend([
            OsStr::new("--pubkey"),
            m.pubkey.as_os_str(),
            OsStr::new("--yes"),
            OsStr::new("--to-file"),
        ]);
        if json {
            a.push(OsStr::new("--json"));
        }
        mini::cairn(&a, LIMIT)
    };
    let r = run(&[good.as_path()], false);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(serde_json::from_str::<serde_json::Value>(&r.stdout).is_err());

    let r = run(&[good.as_path()], true);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("{e}: stdout is not one JSON document:\n{}", r.stdout));
    assert_eq!(v["result"], "ok", "{v}");
    assert_eq!(v["bytes"], std::fs::metadata(&raw).unwrap().len(), "{v}");
    let sticks = v["sticks"].as_array().unwrap();
    assert_eq!(sticks.len(), 1, "{v}");
    assert_eq!(sticks[0]["result"], "ok");
    assert_eq!(sticks[0]["mode"], "sparse-new-file");
    assert_eq!(
        sticks[0]["read_back_sha256"],
        Sha256::of_file(&raw).unwrap().hex()
    );

    // One good target and one inside the release folder (refused as bad
    // input): both in the document, the worst on top, exit 2.
    std::fs::remove_file(&good).unwrap();
    let r = run(&[good.as_path(), inside.as_path()], true);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["result"], "bad-input", "{v}");
    let words: Vec<&str> = v["sticks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["result"].as_str().unwrap())
        .collect();
    assert_eq!(words, ["ok", "bad-input"], "{v}");
    assert!(!inside.exists());
}
