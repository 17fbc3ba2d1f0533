//! `cairn audit collect` and `cairn flash`'s refusal to overwrite a stick
//! whose sealed audit trail was not saved (docs/audit.md). The target is a
//! file (`--to-file`): a GPT disk whose cairn-audit partition the guest's
//! own writer (builder/guest/cairn-audit, with the host's age and openssl)
//! filled, as a stick that comes back from a site would be.

use std::ffi::OsStr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn::host::digest::Sha256;
use cairn::host::runner;

mod common;
use common::loopdev::Loop;
use common::mini::{self, mini, Media, RAW};

const LIMIT: Duration = Duration::from_secs(120);
const MIB: u64 = 1 << 20;
/// The test disk's audit partition: sectors 2048.. (1 MiB in), 2 MiB long.
const PART_AT: u64 = MIB;
const PART_SIZE: u64 = 2 * MIB;

struct Stick {
    tmp: tempfile::TempDir,
    disk: PathBuf,
    key: PathBuf,
    /// The partition as the writer sees it (copied into the disk).
    part: PathBuf,
}

fn sh() -> xshell::Shell {
    runner::shell().unwrap()
}

/// An 8 MiB GPT disk with an empty cairn-audit partition, and the
/// platform's keys.
fn stick() -> Stick {
    testkit::tool("age", "age");
    testkit::tool("openssl", "openssl");
    testkit::tool("sfdisk", "fdisk");
    let tmp = tempfile::tempdir().unwrap();
    let sh = sh();
    let key = tmp.path().join("audit.sec");
    runner::run("test: keygen", xshell::cmd!(sh, "age-keygen -o {key}")).unwrap();
    let public = runner::run("test: keygen", xshell::cmd!(sh, "age-keygen -y {key}")).unwrap();
    std::fs::write(tmp.path().join("audit.pub"), public).unwrap();
    let disk = tmp.path().join("stick.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(8 * MIB)
        .unwrap();
    let table = format!(
        "label: gpt\nstart={}, size={}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=cairn-audit\n",
        PART_AT / 512,
        PART_SIZE / 512
    );
    runner::run(
        "test: sfdisk",
        xshell::cmd!(sh, "sfdisk --quiet {disk}").stdin(table),
    )
    .unwrap();
    let part = tmp.path().join("audit.part");
    let mut h = b"cairn-audit v1\n".to_vec();
    h.resize(PART_SIZE as usize, 0);
    std::fs::write(&part, h).unwrap();
    let s = Stick {
        tmp,
        disk,
        key,
        part,
    };
    s.sync_in();
    s
}

impl Stick {
    /// One boot of records, written by the guest's writer into the
    /// partition file and copied into the disk.
    fn boot(&self, run: &str, records: usize) {
        self.sync_out();
        let sh = sh();
        sh.set_var("CAIRN_AUDIT_RUN", self.tmp.path().join(run));
        sh.set_var("CAIRN_AUDIT_RECIPIENT", self.tmp.path().join("audit.pub"));
        sh.set_var("CAIRN_AUDIT_TPM_DEV", self.tmp.path().join("no-tpm"));
        let w = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/cairn-audit");
        let p = &self.part;
        runner::run(
            "test: open",
            xshell::cmd!(sh, "sh {w} open {p} release=north-depot-app"),
        )
        .unwrap();
        for _ in 0..records {
            runner::run(
                "test: record",
                xshell::cmd!(sh, "sh {w} record service unit=greeter event=start"),
            )
            .unwrap();
        }
        self.sync_in();
    }

    /// The partition file into the disk.
    fn sync_in(&self) {
        let bytes = std::fs::read(&self.part).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.disk)
            .unwrap();
        f.write_all_at(&bytes, PART_AT).unwrap();
    }

    /// The disk's partition (with collect's mark) into the file.
    fn sync_out(&self) {
        let f = std::fs::File::open(&self.disk).unwrap();
        let mut bytes = vec![0u8; PART_SIZE as usize];
        f.read_exact_at(&mut bytes, PART_AT).unwrap();
        std::fs::write(&self.part, bytes).unwrap();
    }

    fn digest(&self) -> Sha256 {
        Sha256::of_file(&self.disk).unwrap()
    }
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn flash(m: &mini::Mini, target: &Path, extra: &[&str]) -> mini::Run {
    flash_with(m, target, &[&["--to-file"], extra].concat())
}

fn flash_with(m: &mini::Mini, target: &Path, extra: &[&str]) -> mini::Run {
    let raw = m.dir.join(RAW);
    let mut a = vec![
        os("flash"),
        raw.as_os_str(),
        target.as_os_str(),
        os("--pubkey"),
        m.pubkey.as_os_str(),
        os("--yes"),
    ];
    a.extend(extra.iter().map(|s| os(s)));
    mini::cairn(&a, LIMIT)
}

fn collect(s: &Stick, out: &Path) -> mini::Run {
    mini::cairn(
        &[
            os("audit"),
            os("collect"),
            s.disk.as_os_str(),
            os("--out"),
            out.as_os_str(),
            os("--json"),
        ],
        LIMIT,
    )
}

/// Uncollected records stop the flash (exit 2, naming the device and
/// both ways on) and leave the stick as it was; after `collect` the same
/// flash proceeds (the control), and the saved trail reads back with the
/// platform's key.
#[test]
fn flash_refuses_a_stick_with_uncollected_records_until_they_are_collected() {
    let m = mini(Media::RawAndQcow2);
    let s = stick();
    s.boot("run1", 2);
    let before = s.digest();
    let r = flash(&m, &s.disk, &[]);
    assert_eq!(r.code, 2, "{r:?}");
    let line = r.first_line();
    for want in [
        s.disk.to_str().unwrap(),
        "3 audit record(s) not yet collected",
        "cairn audit collect",
        "--discard-audit",
    ] {
        assert!(line.contains(want), "{want:?} not in: {line}");
    }
    assert_eq!(s.digest(), before, "the refused flash wrote to the stick");

    let out = s.tmp.path().join("trails");
    let c = collect(&s, &out);
    assert_eq!(c.code, 0, "{c:?}");
    let j: serde_json::Value = serde_json::from_str(&c.stdout).unwrap();
    let receipt = &j["receipt"];
    assert_eq!(receipt["frames"], 3, "{j}");
    assert_eq!(receipt["previously_collected"], 0, "{j}");
    let trail = out.join(receipt["file"].as_str().unwrap());
    let receipt_path = PathBuf::from(j["receipt_path"].as_str().unwrap());
    // The receipt names the saved file by digest, and the medium's mark
    // names the receipt by digest.
    assert_eq!(
        Sha256::of_file(&trail).unwrap().hex(),
        receipt["sha256"].as_str().unwrap()
    );
    let rdigest = Sha256::of_file(&receipt_path).unwrap().hex();
    let mut head = vec![0u8; 512];
    std::fs::File::open(&s.disk)
        .unwrap()
        .read_exact_at(&mut head, PART_AT)
        .unwrap();
    let head = String::from_utf8_lossy(&head);
    assert!(
        head.contains("collected frames=3 ") && head.contains(&rdigest),
        "{head}"
    );
    // The saved trail is the real one: it reads and verifies with the key.
    let t = cairn::release::audit::read(&trail, &s.key).unwrap();
    assert!(t.first_bad.is_none(), "{}", t.render_text());
    assert_eq!(t.frames, 3);
    // ... and holds nothing in the clear.
    let saved = std::fs::read(&trail).unwrap();
    assert!(!saved.windows(11).any(|w| w == b"north-depot"));

    // Control: the same flash now proceeds.
    let r = flash(&m, &s.disk, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        s.digest(),
        Sha256::of_file(&m.dir.join(RAW)).unwrap(),
        "the flash did not write the image"
    );
}

/// Records written after a collection are uncollected again; a mark
/// that no longer matches the trail (altered) counts for nothing; and
/// `--discard-audit` overwrites such a stick (the control).
#[test]
fn a_later_boot_or_an_altered_mark_is_uncollected_and_discard_audit_overrides() {
    let m = mini(Media::RawAndQcow2);
    let s = stick();
    s.boot("run1", 1);
    let out = s.tmp.path().join("trails");
    assert_eq!(collect(&s, &out).code, 0);
    // A second boot at a site: one boot record and one service record.
    s.boot("run2", 1);
    let r = flash(&m, &s.disk, &[]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.first_line()
            .contains("2 audit record(s) not yet collected"),
        "{r:?}"
    );
    // Collected again: the receipt says what is new.
    let c = collect(&s, &out);
    let j: serde_json::Value = serde_json::from_str(&c.stdout).unwrap();
    assert_eq!(
        (
            j["receipt"]["frames"].as_u64(),
            j["receipt"]["previously_collected"].as_u64()
        ),
        (Some(4), Some(2)),
        "{j}"
    );
    assert_eq!(flash(&m, &s.disk, &["--discard-audit"]).code, 0);

    // Someone "marks" a trail collected without saving it: the mark
    // names a frame count the trail has, but not its last frame's hash.
    let s = stick();
    s.boot("run1", 1);
    let mut head = b"cairn-audit v1\n".to_vec();
    head.extend(
        format!(
            "collected frames=2 last={} receipt={}\n",
            Sha256::of_bytes(b"forged").hex(),
            Sha256::of_bytes(b"none").hex()
        )
        .as_bytes(),
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&s.disk)
        .unwrap()
        .write_all_at(&head, PART_AT)
        .unwrap();
    let before = s.digest();
    let r = flash(&m, &s.disk, &[]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.first_line().contains("does not match"), "{r:?}");
    assert_eq!(s.digest(), before);
    // Control: told to, flash overwrites it.
    let r = flash(&m, &s.disk, &["--discard-audit"]);
    assert_eq!(r.code, 0, "{r:?}");
}

/// Nothing to collect is said plainly (exit 2), and a target without an
/// audit partition (a new stick) is flashed as before.
#[test]
fn an_empty_trail_has_nothing_to_collect_and_a_plain_stick_flashes() {
    let s = stick();
    let c = collect(&s, &s.tmp.path().join("trails"));
    assert_eq!(c.code, 2, "{c:?}");
    assert!(c.first_line().contains("nothing to collect"), "{c:?}");
    let m = mini(Media::RawAndQcow2);
    let plain = s.tmp.path().join("plain.img");
    std::fs::write(&plain, vec![0u8; MIB as usize]).unwrap();
    assert_eq!(flash(&m, &plain, &[]).code, 0);
    // An empty trail loses nothing either.
    assert_eq!(flash(&m, &s.disk, &[]).code, 0);
}

/// The same on a real block device (a loop device the test attaches; root
/// needed): refused with the device named, collected through the device,
/// then flashed and read back (the control).
#[test]
fn flash_refuses_a_loop_device_with_uncollected_records() {
    let m = mini(Media::RawAndQcow2);
    let mut s = stick();
    s.boot("run1", 1);
    let raw_len = std::fs::metadata(m.dir.join(RAW)).unwrap().len();
    let lo = Loop::attach_with(
        s.tmp.path(),
        "loop.img",
        raw_len.next_multiple_of(MIB),
        None,
    );
    let disk = std::fs::read(&s.disk).unwrap();
    let dev = std::fs::OpenOptions::new()
        .write(true)
        .open(&lo.dev)
        .unwrap();
    dev.write_all_at(&disk, 0).unwrap();
    dev.sync_all().unwrap();
    drop(dev);
    s.disk = lo.dev.clone();
    let before = lo.digest(raw_len);
    // Loop devices are not removable.
    let r = flash_with(&m, &lo.dev, &["--allow-fixed"]);
    assert_eq!(r.code, 2, "{r:?}");
    let line = r.first_line();
    assert!(
        line.contains(lo.dev.to_str().unwrap())
            && line.contains("2 audit record(s) not yet collected"),
        "{line}"
    );
    assert_eq!(lo.digest(raw_len), before, "the refused flash wrote");
    let c = collect(&s, &s.tmp.path().join("trails"));
    assert_eq!(c.code, 0, "{c:?}");
    // Control: collected, the same flash writes the image.
    let r = flash_with(&m, &lo.dev, &["--allow-fixed"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        lo.digest(raw_len),
        Sha256::of_file(&m.dir.join(RAW)).unwrap()
    );
}
