//! `cairn audit read|verify`: the sealed audit trail read back on the
//! platform's side (docs/audit.md). Frames are found in the `cairn-audit`
//! partition (or a file holding only it), decrypted with `age` and the
//! platform's secret key, and each record checked: its signature by its
//! boot's key, its place in the chain, its boot and sequence.
//! Invariant: the medium is hostile; every read is bounded, nothing panics,
//! and a frame that fails a check is named (index and byte offset), never
//! skipped in silence.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::host::digest::Sha256;
use crate::InputError;

pub const PARTITION: &str = "cairn-audit";
pub(crate) const HEADER: &[u8] = b"cairn-audit v1\n";
const FRAME_MAGIC: &[u8] = b"CAF1 ";
const FRAME_HEADER: u64 = 14;
/// A record is at most 4 KiB of text; its age file a little more.
const MAX_FRAME: u64 = 16 << 10;
/// The largest partition `[audit] size` allows.
const MAX_PARTITION: u64 = 1 << 30;

/// One frame as found on the medium.
#[derive(Debug, Clone)]
pub struct Frame {
    pub index: usize,
    /// Byte offset inside the audit partition.
    pub offset: u64,
    /// The header and age file (what the next frame's `prev` hashes).
    pub bytes: Vec<u8>,
}

/// The frames of an audit partition, and why the scan stopped early, if it did.
pub struct Frames {
    pub frames: Vec<Frame>,
    /// A header that starts like a frame but is not one.
    pub bad: Option<(usize, u64, String)>,
}

/// Where the trail is in `path`: a raw disk's `cairn-audit` partition or a
/// file/device that is the partition itself. Returns (offset, size).
pub fn locate(path: &Path) -> Result<(File, u64, u64)> {
    let bad = |m: String| anyhow::Error::new(InputError(m));
    let mut f =
        File::open(path).map_err(|e| bad(format!("{}: cannot open: {e}", path.display())))?;
    let len = f
        .seek(SeekFrom::End(0))
        .map_err(|e| bad(format!("{}: cannot find its size: {e}", path.display())))?;
    let mut head = [0u8; 15];
    if read_at(&mut f, 0, &mut head).is_ok() && head == HEADER {
        return Ok((f, 0, len.min(MAX_PARTITION)));
    }
    let parts = crate::release::verify::gpt::read_gpt(&mut f, len).map_err(|e| {
        bad(format!(
            "{}: neither an audit partition (no `cairn-audit v1` header) nor a disk with a GPT: {e}",
            path.display()
        ))
    })?;
    let p = parts.iter().find(|p| p.name == PARTITION).ok_or_else(|| {
        bad(format!(
            "{}: no {PARTITION} partition; the image was built without [audit]",
            path.display()
        ))
    })?;
    if read_at(&mut f, p.offset, &mut head).is_err() || head != HEADER {
        return Err(bad(format!(
            "{}: the {PARTITION} partition has no `cairn-audit v1` header (erased or not an audit partition)",
            path.display()
        )));
    }
    Ok((f, p.offset, p.size.min(MAX_PARTITION)))
}

fn read_at(f: &mut File, at: u64, buf: &mut [u8]) -> std::io::Result<()> {
    f.seek(SeekFrom::Start(at))?;
    f.read_exact(buf)
}

/// Reads frames from byte 512 of the partition on, until a sector that
/// does not start with the frame magic.
pub fn frames(f: &mut File, base: u64, size: u64) -> Result<Frames> {
    let mut out = Vec::new();
    let mut at = 512u64;
    while at + 512 <= size {
        let mut h = [0u8; FRAME_HEADER as usize];
        read_at(f, base + at, &mut h).with_context(|| format!("read the frame at byte {at}"))?;
        if !h.starts_with(FRAME_MAGIC) {
            break;
        }
        let index = out.len();
        let len = std::str::from_utf8(&h[5..13])
            .ok()
            .filter(|s| s.bytes().all(|b| b.is_ascii_hexdigit()) && h[13] == b'\n')
            .and_then(|s| u64::from_str_radix(s, 16).ok());
        let Some(len) = len.filter(|l| *l > 0 && *l <= MAX_FRAME) else {
            let why =
                format!("its header is not `CAF1 ` + 8 hex digits of a length up to {MAX_FRAME}");
            return Ok(Frames {
                frames: out,
                bad: Some((index, at, why)),
            });
        };
        if at + FRAME_HEADER + len > size {
            let why = "it runs past the end of the partition".to_string();
            return Ok(Frames {
                frames: out,
                bad: Some((index, at, why)),
            });
        }
        let mut bytes = vec![0u8; (FRAME_HEADER + len) as usize];
        read_at(f, base + at, &mut bytes)
            .with_context(|| format!("read the frame at byte {at}"))?;
        out.push(Frame {
            index,
            offset: at,
            bytes,
        });
        at = (at + FRAME_HEADER + len).div_ceil(512) * 512;
    }
    Ok(Frames {
        frames: out,
        bad: None,
    })
}

/// A decrypted record: its `key=value` fields in order, and the signature.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub index: usize,
    pub offset: u64,
    pub kind: String,
    pub boot: String,
    pub seq: u64,
    pub fields: Vec<(String, String)>,
}

impl Record {
    pub fn get(&self, k: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(a, _)| a == k)
            .map(|(_, v)| v.as_str())
    }
}

/// One boot's records, and whether it ended with `close` (or `stopped`)
/// or with a halt on a verity failure.
#[derive(Debug, Clone, Serialize)]
pub struct Boot {
    pub boot: String,
    pub key: String,
    pub closed: bool,
    /// The volume whose verity failure halted the node (its
    /// `verity-failure` record ends the boot); not a clean shutdown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub halted: Option<String>,
    pub records: Vec<Record>,
    /// The boot record's TPM quote, checked (`audit_tpm`).
    pub tpm: Option<super::audit_tpm::Tpm>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Trail {
    pub frames: usize,
    pub boots: Vec<Boot>,
    /// The first frame that fails a check: its index, offset and why.
    pub first_bad: Option<Problem>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub index: usize,
    pub offset: u64,
    pub why: String,
}

/// Decrypts one age file with the platform's secret key (the `age` tool).
fn decrypt(key: &Path, age_file: &[u8]) -> Result<Option<Vec<u8>>> {
    let sh = crate::host::runner::shell()?;
    let (code, out, _err) = crate::host::runner::run_code(
        "audit: decrypt",
        xshell::cmd!(sh, "age -d -i {key}").stdin(age_file),
    )?;
    Ok((code == 0).then(|| out.into_bytes()))
}

/// A record's fields in order, the bytes its signature covers, the signature.
type Parsed = (Vec<(String, String)>, Vec<u8>, Vec<u8>);

/// Splits a record's text into fields; the signed part is every byte
/// before the `sig=` line.
fn parse(text: &[u8]) -> std::result::Result<Parsed, String> {
    let s = std::str::from_utf8(text).map_err(|_| "the record is not UTF-8".to_string())?;
    let at = s.rfind("\nsig=").ok_or("the record has no sig= line")?;
    let signed = s.as_bytes()[..at + 1].to_vec();
    let sig_hex = s[at + 5..].trim_end_matches('\n');
    let sig = hex_bytes(sig_hex)
        .filter(|b| b.len() == 64)
        .ok_or("sig= is not 64 bytes of hex")?;
    let mut lines = s[..at].lines();
    if lines.next() != Some("cairn-audit-record v1") {
        return Err("the record does not start with `cairn-audit-record v1`".into());
    }
    let mut fields = Vec::new();
    for l in lines {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| format!("line {l:?} is not key=value"))?;
        fields.push((k.to_string(), v.to_string()));
    }
    Ok((fields, signed, sig))
}

fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// Reads and checks the whole trail in `path` with the secret key `key`.
/// A key that opens no frame at all is an input error (the wrong key).
pub fn read(path: &Path, key: &Path) -> Result<Trail> {
    let (mut f, base, size) = locate(path)?;
    let found = frames(&mut f, base, size)?;
    let mut t = Trail {
        frames: found.frames.len(),
        boots: Vec::new(),
        first_bad: None,
    };
    let mut prev = Sha256([0u8; 32]);
    let mut opened = 0usize;
    for fr in &found.frames {
        let fail = |why: String| Problem {
            index: fr.index,
            offset: fr.offset,
            why,
        };
        let plain = match decrypt(key, &fr.bytes[FRAME_HEADER as usize..])? {
            Some(p) => p,
            None => {
                t.first_bad.get_or_insert(fail(
                    "does not decrypt with this key (altered, or sealed to another key)".into(),
                ));
                continue;
            }
        };
        opened += 1;
        let this = Sha256::of_bytes(&fr.bytes);
        let checked = check(&mut t.boots, fr, &plain, &prev);
        prev = this;
        if let Err(why) = checked {
            t.first_bad.get_or_insert(fail(why));
        }
    }
    if opened == 0 && !found.frames.is_empty() {
        return Err(InputError(format!(
            "{}: none of its {} audit records decrypts with {}: the wrong key, or every record altered",
            path.display(),
            found.frames.len(),
            key.display()
        ))
        .into());
    }
    if let Some((index, offset, why)) = found.bad {
        t.first_bad.get_or_insert(Problem { index, offset, why });
    }
    for b in &mut t.boots {
        if let Some(first) = b.records.first() {
            b.tpm = Some(super::audit_tpm::check(first)?);
        }
    }
    Ok(t)
}

/// Checks one decrypted record against the chain so far and files it
/// under its boot.
fn check(
    boots: &mut Vec<Boot>,
    fr: &Frame,
    plain: &[u8],
    prev: &Sha256,
) -> std::result::Result<(), String> {
    let (fields, signed, sig) = parse(plain)?;
    let get = |k: &str| fields.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
    let kind = get("kind").ok_or("no kind=")?;
    let boot = get("boot").ok_or("no boot=")?;
    let seq: u64 = get("seq")
        .and_then(|s| s.parse().ok())
        .ok_or("no seq= number")?;
    let rec = Record {
        index: fr.index,
        offset: fr.offset,
        kind: kind.clone(),
        boot: boot.clone(),
        seq,
        fields: fields.clone(),
    };
    if kind == "boot" {
        let key = get("key").ok_or("a boot record without key=")?;
        if seq != 0 {
            return Err(format!("a boot record with seq={seq}"));
        }
        boots.push(Boot {
            boot: boot.clone(),
            key,
            closed: false,
            halted: None,
            records: Vec::new(),
            tpm: None,
        });
    }
    let Some(b) = boots.last_mut().filter(|b| b.boot == boot) else {
        return Err(format!(
            "boot {boot} has no boot record before it (one removed?)"
        ));
    };
    let want_seq = b.records.len() as u64;
    let key = hex_bytes(&b.key)
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .ok_or("the boot key is not 32 bytes of hex")?;
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&key)
        .map_err(|_| "the boot key is not an ed25519 key")?;
    let sig = ed25519_dalek::Signature::from_slice(&sig).map_err(|_| "a malformed signature")?;
    vk.verify_strict(&signed, &sig)
        .map_err(|_| format!("its signature does not verify with boot {boot}'s key"))?;
    if get("prev").as_deref() != Some(prev.hex().as_str()) {
        return Err("its prev= is not the hash of the frame before it (a frame removed, inserted or reordered)".into());
    }
    if b.closed {
        return Err(format!("a record after boot {boot} closed"));
    }
    if b.halted.is_some() {
        return Err(format!(
            "a record after boot {boot} halted on a verity failure"
        ));
    }
    if seq != want_seq {
        return Err(format!(
            "seq={seq} where {want_seq} was due (a record removed)"
        ));
    }
    b.closed = kind == "close" || kind == "stopped";
    if kind == "verity-failure" {
        b.halted = Some(rec.get("volume").unwrap_or("?").to_string());
    }
    b.records.push(rec);
    Ok(())
}

impl Trail {
    /// For people: one line per boot, then one per record.
    pub fn render_text(&self) -> String {
        let mut s = format!("{} frames, {} boots\n", self.frames, self.boots.len());
        for b in &self.boots {
            s += &format!(
                "boot {} ({} records, {})\n",
                b.boot,
                b.records.len(),
                match (&b.halted, b.closed) {
                    (Some(v), _) => format!("HALTED on a verity failure of volume {v}"),
                    (None, true) => "closed".to_string(),
                    (None, false) => "NOT CLOSED: power loss or pulled medium".to_string(),
                }
            );
            if let Some(tpm) = &b.tpm {
                s += &format!("  tpm: {}\n", tpm.describe());
            }
            for r in &b.records {
                let rest: Vec<String> = r
                    .fields
                    .iter()
                    .filter(|(k, _)| {
                        !["boot", "seq", "prev", "kind"].contains(&k.as_str())
                            && !k.starts_with("tpm.")
                    })
                    .map(|(k, v)| format!("{k}={v:?}"))
                    .collect();
                s += &format!("  #{} {} {}\n", r.seq, r.kind, rest.join(" "));
            }
        }
        if let Some(p) = &self.first_bad {
            s += &format!("BAD frame {} at byte {}: {}\n", p.index, p.offset, p.why);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A partition file written by the guest's own writer (age and openssl
    /// on the host stand in for the image's), and the platform's keys.
    struct Fixture {
        dir: tempfile::TempDir,
        part: PathBuf,
        key: PathBuf,
    }

    fn writer(fx: &Fixture, run: &str, args: &[&str]) {
        let sh = crate::host::runner::shell().unwrap();
        sh.set_var("CAIRN_AUDIT_RUN", fx.dir.path().join(run));
        sh.set_var("CAIRN_AUDIT_RECIPIENT", fx.dir.path().join("audit.pub"));
        // The host's own TPM, if it has one, stays out of the tests.
        sh.set_var("CAIRN_AUDIT_TPM_DEV", fx.dir.path().join("no-tpm"));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/cairn-audit");
        crate::host::runner::run(
            "test: cairn-audit",
            xshell::cmd!(sh, "sh {script} {args...}"),
        )
        .unwrap();
    }

    fn fixture(size: u64) -> Fixture {
        testkit::tool("age", "age");
        testkit::tool("openssl", "openssl");
        let dir = tempfile::tempdir().unwrap();
        let sh = crate::host::runner::shell().unwrap();
        let key = dir.path().join("audit.sec");
        crate::host::runner::run("test: keygen", xshell::cmd!(sh, "age-keygen -o {key}")).unwrap();
        let public =
            crate::host::runner::run("test: keygen", xshell::cmd!(sh, "age-keygen -y {key}"))
                .unwrap();
        std::fs::write(dir.path().join("audit.pub"), public).unwrap();
        let part = dir.path().join("audit.part");
        let mut h = HEADER.to_vec();
        h.resize(size as usize, 0);
        std::fs::write(&part, h).unwrap();
        Fixture { dir, part, key }
    }

    /// Two boots: one closed cleanly, one cut off (no close).
    fn two_boots() -> Fixture {
        let fx = fixture(1 << 20);
        let p = fx.part.to_str().unwrap().to_string();
        writer(
            &fx,
            "run1",
            &["open", &p, "release=webapp", "site=north-depot"],
        );
        writer(
            &fx,
            "run1",
            &["record", "service", "unit=webapp", "event=start"],
        );
        writer(
            &fx,
            "run1",
            &[
                "record",
                "firewall",
                "refused=3",
                "sample.0=tcp 10.0.2.15 10.0.2.2 9999",
            ],
        );
        writer(&fx, "run1", &["close"]);
        writer(&fx, "run2", &["open", &p, "release=webapp"]);
        writer(
            &fx,
            "run2",
            &["record", "service", "unit=webapp", "event=start"],
        );
        fx
    }

    #[test]
    fn a_trail_reads_back_whole_and_its_records_are_sealed() {
        let fx = two_boots();
        let t = read(&fx.part, &fx.key).unwrap();
        assert!(t.first_bad.is_none(), "{}", t.render_text());
        assert_eq!(t.frames, 6);
        assert_eq!(t.boots.len(), 2);
        let (b1, b2) = (&t.boots[0], &t.boots[1]);
        assert!(b1.closed && !b2.closed, "{}", t.render_text());
        let kinds: Vec<&str> = b1.records.iter().map(|r| r.kind.as_str()).collect();
        assert_eq!(kinds, ["boot", "service", "firewall", "close"]);
        assert_eq!(b1.records[0].get("site"), Some("north-depot"));
        assert_eq!(b1.records[2].get("refused"), Some("3"));
        assert!(t.render_text().contains("NOT CLOSED"));
        // Nothing readable on the medium: no value written appears in it.
        let raw = std::fs::read(&fx.part).unwrap();
        for clear in ["webapp", "north-depot", "10.0.2.2", "firewall", "service"] {
            assert!(
                !raw.windows(clear.len()).any(|w| w == clear.as_bytes()),
                "{clear} in the clear"
            );
        }
        // Control: the same search finds what is there in the clear.
        assert!(raw.windows(5).any(|w| w == b"CAF1 "));
    }

    /// verity-watch's record before its halt: the boot shows as halted on
    /// that volume (not closed, not cut off), and the writer writes nothing
    /// after it, `close` included. Control: a record forged after it is
    /// named.
    #[test]
    fn a_verity_failure_ends_the_boot_as_halted() {
        let fx = two_boots();
        let args = [
            "record",
            "verity-failure",
            "volume=base",
            "mapping=cairn-root",
            "device=vda3 254:3",
            "seen=device-mapper: verity: 254:3: data block 7 is corrupted",
        ];
        writer(&fx, "run2", &args);
        writer(
            &fx,
            "run2",
            &["record", "service", "unit=late", "event=exit"],
        );
        writer(&fx, "run2", &["close"]);
        let t = read(&fx.part, &fx.key).unwrap();
        let text = t.render_text();
        assert!(t.first_bad.is_none(), "{text}");
        let b2 = &t.boots[1];
        let kinds: Vec<&str> = b2.records.iter().map(|r| r.kind.as_str()).collect();
        assert_eq!(kinds, ["boot", "service", "verity-failure"], "{text}");
        assert_eq!((b2.halted.as_deref(), b2.closed), (Some("base"), false));
        assert_eq!(b2.records[2].get("device"), Some("vda3 254:3"));
        assert!(
            text.contains("HALTED on a verity failure of volume base"),
            "{text}"
        );
        assert_eq!(t.boots[0].halted, None);
        // Control: the writer's own guard removed, a record after the halt
        // is the first bad frame.
        std::fs::remove_file(fx.dir.path().join("run2/stopped")).unwrap();
        writer(
            &fx,
            "run2",
            &["record", "service", "unit=late", "event=exit"],
        );
        let t = read(&fx.part, &fx.key).unwrap();
        let bad = t.first_bad.expect("a record after the halt");
        assert_eq!(bad.index, 7, "{}", bad.why);
        assert!(
            bad.why.contains("halted on a verity failure"),
            "{}",
            bad.why
        );
    }

    #[test]
    fn the_wrong_key_reads_nothing() {
        let fx = two_boots();
        let other = fx.dir.path().join("other.sec");
        let sh = crate::host::runner::shell().unwrap();
        crate::host::runner::run("test: keygen", xshell::cmd!(sh, "age-keygen -o {other}"))
            .unwrap();
        let e = read(&fx.part, &other).unwrap_err();
        assert!(e.downcast_ref::<InputError>().is_some(), "{e:#}");
        assert!(
            format!("{e}").contains("none of its 6 audit records decrypts"),
            "{e}"
        );
    }

    #[test]
    fn a_flipped_byte_is_named() {
        let fx = two_boots();
        let t = read(&fx.part, &fx.key).unwrap();
        let third = t.boots[0].records[2].offset;
        let mut raw = std::fs::read(&fx.part).unwrap();
        raw[(third + 100) as usize] ^= 1;
        std::fs::write(&fx.part, &raw).unwrap();
        let t = read(&fx.part, &fx.key).unwrap();
        let bad = t.first_bad.expect("a bad frame");
        assert_eq!((bad.index, bad.offset), (2, third), "{}", bad.why);
        // The frame after it no longer chains either, but the first is named.
    }

    #[test]
    fn a_removed_record_is_named_by_the_one_after() {
        let fx = two_boots();
        let t = read(&fx.part, &fx.key).unwrap();
        let (second, third) = (t.boots[0].records[1].offset, t.boots[0].records[2].offset);
        let mut raw = std::fs::read(&fx.part).unwrap();
        // Shift everything after frame 1 down over it, as an editor would.
        let tail = raw[third as usize..].to_vec();
        raw[second as usize..second as usize + tail.len()].copy_from_slice(&tail);
        std::fs::write(&fx.part, &raw).unwrap();
        let t = read(&fx.part, &fx.key).unwrap();
        let bad = t.first_bad.expect("a bad frame");
        assert_eq!((bad.index, bad.offset), (1, second), "{}", bad.why);
        assert!(bad.why.contains("prev="), "{}", bad.why);
    }

    #[test]
    fn a_full_partition_ends_with_a_stopped_record() {
        // 6 KiB: room for one record, then the reserve for "stopped".
        let fx = fixture(6 << 10);
        let p = fx.part.to_str().unwrap().to_string();
        writer(&fx, "run", &["open", &p]);
        for _ in 0..4 {
            writer(&fx, "run", &["record", "service", "unit=x", "event=start"]);
        }
        let t = read(&fx.part, &fx.key).unwrap();
        assert!(t.first_bad.is_none(), "{}", t.render_text());
        let kinds: Vec<&str> = t.boots[0].records.iter().map(|r| r.kind.as_str()).collect();
        assert_eq!(kinds.last(), Some(&"stopped"), "{kinds:?}");
        assert!(t.boots[0].closed);
    }

    /// `[audit] record` leaves a kind out: the writer skips it. Control:
    /// the same call with the kind listed writes it.
    #[test]
    fn kinds_left_out_are_not_written() {
        let fx = fixture(1 << 20);
        let p = fx.part.to_str().unwrap().to_string();
        writer(&fx, "run", &["open", &p]);
        let sh = crate::host::runner::shell().unwrap();
        sh.set_var("CAIRN_AUDIT_RUN", fx.dir.path().join("run"));
        sh.set_var("CAIRN_AUDIT_RECIPIENT", fx.dir.path().join("audit.pub"));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/cairn-audit");
        for kinds in ["service", "service firewall"] {
            sh.set_var("CAIRN_AUDIT_KINDS", kinds);
            crate::host::runner::run(
                "test: cairn-audit",
                xshell::cmd!(sh, "sh {script} record firewall refused=1"),
            )
            .unwrap();
        }
        let t = read(&fx.part, &fx.key).unwrap();
        let kinds: Vec<&str> = t.boots[0].records.iter().map(|r| r.kind.as_str()).collect();
        assert_eq!(kinds, ["boot", "firewall"]);
    }

    /// The firewall recorder (guest/cairn-audit-firewall) turns nft's
    /// kernel lines into one record: every refusal counted, at most 8
    /// sampled, no payload. Control: a batch under the bound keeps all.
    #[test]
    fn firewall_refusals_are_counted_with_a_bounded_sample() {
        let fx = fixture(1 << 20);
        let p = fx.part.to_str().unwrap().to_string();
        writer(&fx, "run", &["open", &p]);
        let sh = crate::host::runner::shell().unwrap();
        let run = fx.dir.path().join("run");
        sh.set_var("CAIRN_AUDIT_RUN", &run);
        sh.set_var("CAIRN_AUDIT_RECIPIENT", fx.dir.path().join("audit.pub"));
        let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest");
        sh.set_var("CAIRN_AUDIT_WRITER", guest.join("cairn-audit"));
        let script = guest.join("cairn-audit-firewall");
        for n in [12u16, 3, 0] {
            let lines: String = (0..n)
                .map(|i| format!("cairn-egress-denied: IN= OUT=eth0 SRC=10.0.2.15 DST=10.0.2.2 LEN=60 TOS=0x00 PREC=0x00 TTL=64 ID={i} DF PROTO=TCP SPT=4{i:04} DPT={} WINDOW=64240 RES=0x00 SYN URGP=0\n", 9000 + i))
                .collect();
            let batch = fx.dir.path().join("batch");
            std::fs::write(&batch, lines).unwrap();
            crate::host::runner::run(
                "test: cairn-audit-firewall",
                xshell::cmd!(sh, "sh {script} batch {batch}"),
            )
            .unwrap();
        }
        // The service passes nft's exact counts; the log lines (rate-limited)
        // are only the samples.
        let batch = fx.dir.path().join("batch");
        std::fs::write(&batch, "cairn-ingress-denied: IN=eth0 OUT= SRC=10.0.2.2 DST=10.0.2.15 LEN=60 PROTO=TCP SPT=5555 DPT=9000 SYN\n").unwrap();
        crate::host::runner::run(
            "test: cairn-audit-firewall",
            xshell::cmd!(sh, "sh {script} batch {batch} 100 7"),
        )
        .unwrap();
        let t = read(&fx.part, &fx.key).unwrap();
        assert!(t.first_bad.is_none(), "{}", t.render_text());
        let fw: Vec<&Record> = t.boots[0]
            .records
            .iter()
            .filter(|r| r.kind == "firewall")
            .collect();
        // An empty batch writes no record.
        assert_eq!(fw.len(), 3, "{}", t.render_text());
        let samples = |r: &Record| {
            r.fields
                .iter()
                .filter(|(k, _)| k.starts_with("sample."))
                .count()
        };
        assert_eq!(fw[0].get("refused"), Some("12"));
        assert_eq!(samples(fw[0]), 8, "{}", t.render_text());
        assert_eq!(fw[0].get("sample.0"), Some("TCP 10.0.2.15 10.0.2.2 9000"));
        assert_eq!(fw[0].get("sample.7"), Some("TCP 10.0.2.15 10.0.2.2 9007"));
        assert_eq!((fw[1].get("refused"), samples(fw[1])), (Some("3"), 3));
        fn counts(r: &Record) -> (Option<&str>, Option<&str>, Option<&str>) {
            (r.get("refused"), r.get("egress"), r.get("ingress"))
        }
        assert_eq!(counts(fw[0]), (Some("12"), Some("12"), Some("0")));
        assert_eq!(counts(fw[2]), (Some("107"), Some("100"), Some("7")));
        assert_eq!(fw[2].get("sample.0"), Some("TCP 10.0.2.2 10.0.2.15 9000"));
        let recorded = std::fs::read_to_string(run.join("fw.recorded")).unwrap();
        assert_eq!(recorded.trim(), "122");
    }

    /// The capacity figures in docs/audit.md: a 128 KiB partition filled
    /// with service records until the writer stops, and the frame size of
    /// a boot record and of a firewall record with its 8 samples.
    #[test]
    fn capacity_records_per_mib() {
        let fx = fixture(128 << 10);
        let p = fx.part.to_str().unwrap().to_string();
        writer(
            &fx,
            "run",
            &[
                "open",
                &p,
                "release=field-ai",
                "version=0.1.0",
                &format!("root={}", "a".repeat(64)),
                &format!("apps={}", "b".repeat(64)),
                "state=disk",
                "medium=disk",
                "site=north-depot",
                &format!("site_sha256={}", "c".repeat(64)),
                "tpm=none",
                "boot_id=094ce6f5-71c3-4e71-aac2-6b1629004f1a",
                "clock=2026-12-07T15:47:27Z",
            ],
        );
        let samples: Vec<String> = (0..8)
            .map(|i| format!("sample.{i}=TCP 192.168.100.15 192.168.200.{i} 4430{i}"))
            .collect();
        let mut fw = vec!["record", "firewall", "refused=12345"];
        fw.extend(samples.iter().map(String::as_str));
        writer(&fx, "run", &fw);
        let unit = format!("image=sha256:{}", "d".repeat(64));
        let svc = [
            "record",
            "service",
            "unit=inference-api",
            &unit,
            "event=exit",
            "result=exit-code",
            "code=exited",
            "status=1",
        ];
        for _ in 0..400 {
            writer(&fx, "run", &svc);
            if fx.dir.path().join("run/stopped").exists() {
                break;
            }
        }
        let t = read(&fx.part, &fx.key).unwrap();
        assert!(t.first_bad.is_none(), "{}", t.render_text());
        let r = &t.boots[0].records;
        let on_disk = |i: usize| r[i + 1].offset - r[i].offset;
        let (boot, firewall, service) = (on_disk(0), on_disk(1), on_disk(2));
        let services = r.iter().filter(|r| r.kind == "service").count() as u64;
        let used = r.last().unwrap().offset - r[2].offset;
        let per_mib = (services - 1) * (1 << 20) / used;
        eprintln!(
            "capacity: boot record {boot} B, firewall record (8 samples) {firewall} B, service record {service} B on disk; {services} service records in 128 KiB; {per_mib} service records per MiB"
        );
        assert_eq!(r.last().unwrap().kind, "stopped");
        // docs/audit.md states these; a record format change that moves
        // them fails here, and the docs get the new figures.
        assert_eq!((boot, firewall, service), (1024, 1024, 1024));
        assert!((1000..=1024).contains(&per_mib), "{per_mib}");
    }

    /// A TPM (swtpm, as the boot tests use) quotes PCR 7 and 11 into the
    /// boot record with the boot key as nonce; the quote verifies, and its
    /// PCR 11 is judged against a prediction. Controls: a boot without a
    /// TPM is reported as such; another prediction (another UKI) is
    /// named; the same quote under another boot key fails.
    #[test]
    fn a_tpm_quote_binds_the_boot_key_and_is_judged_against_pcr11() {
        use crate::release::audit_tpm::{check, first_bad_boot, Tpm};
        testkit::tool("swtpm", "swtpm");
        testkit::tool("tpm2_quote", "tpm2-tools");
        let fx = fixture(1 << 20);
        // The swtpm TCTI talks to the control channel at port + 1.
        let (server, ctrl) = (0..50)
            .find_map(|_| {
                let a = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
                let p = a.local_addr().ok()?.port();
                let b = std::net::TcpListener::bind(("127.0.0.1", p.checked_add(1)?)).ok()?;
                drop((a, b));
                Some((p, p + 1))
            })
            .expect("two free ports");
        let state = fx.dir.path().join("tpm-state");
        std::fs::create_dir(&state).unwrap();
        let mut cmd = crate::host::runner::command("swtpm");
        cmd.args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
            .arg("--tpmstate")
            .arg(format!("dir={}", state.display()))
            .arg("--server")
            .arg(format!("type=tcp,port={server}"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={ctrl}"));
        let _tpm = crate::host::runner::spawn("test: swtpm", cmd).unwrap();
        let tcti = format!("swtpm:host=127.0.0.1,port={server}");
        let ready = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", server)).is_err() {
            assert!(ready.elapsed().as_secs() < 10, "swtpm did not listen");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let p = fx.part.to_str().unwrap().to_string();
        let sh = crate::host::runner::shell().unwrap();
        sh.set_var("CAIRN_AUDIT_RUN", fx.dir.path().join("run1"));
        sh.set_var("CAIRN_AUDIT_RECIPIENT", fx.dir.path().join("audit.pub"));
        sh.set_var("CAIRN_AUDIT_TPM_TCTI", &tcti);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/cairn-audit");
        crate::host::runner::run(
            "test: cairn-audit",
            xshell::cmd!(sh, "sh {script} open {p} release=webapp"),
        )
        .unwrap();
        writer(&fx, "run1", &["close"]);
        writer(&fx, "run2", &["open", &p, "release=webapp"]);
        let t = read(&fx.part, &fx.key).unwrap();
        assert!(t.first_bad.is_none(), "{}", t.render_text());
        let zero = Sha256([0u8; 32]);
        assert_eq!(
            t.boots[0].tpm,
            Some(Tpm::Quoted {
                pcr7: zero,
                pcr11: zero
            }),
            "{}",
            t.render_text()
        );
        assert_eq!(t.boots[1].tpm, Some(Tpm::None), "{}", t.render_text());
        assert!(t.render_text().contains("no TPM"), "{}", t.render_text());
        assert_eq!(first_bad_boot(&t, Some(&zero)), None);
        let other = Sha256::of_bytes(b"another uki");
        let why = first_bad_boot(&t, Some(&other)).expect("another PCR 11 is named");
        assert!(
            why.contains("another UKI") && why.contains(&t.boots[0].boot),
            "{why}"
        );
        // The quote under another boot key: the nonce no longer matches.
        let mut moved = t.boots[0].records[0].clone();
        for (k, v) in &mut moved.fields {
            if k == "key" {
                *v = "ab".repeat(32);
            }
        }
        assert!(matches!(check(&moved).unwrap(), Tpm::Bad { .. }));
        assert!(matches!(
            check(&t.boots[0].records[0]).unwrap(),
            Tpm::Quoted { .. }
        ));
    }

    #[test]
    fn hostile_partitions_are_refused_without_panic() {
        let d = tempfile::tempdir().unwrap();
        let key = d.path().join("k");
        std::fs::write(&key, "x").unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, vec![7u8; 4096]).unwrap();
        let e = read(&f, &key).unwrap_err();
        assert!(e.downcast_ref::<InputError>().is_some(), "{e:#}");
        // A frame header with a huge length is named, not followed.
        let mut h = HEADER.to_vec();
        h.resize(4096, 0);
        h[512..526].copy_from_slice(b"CAF1 ffffffff\n");
        std::fs::write(&f, &h).unwrap();
        let t = read(&f, &key).unwrap();
        assert_eq!(t.first_bad.unwrap().index, 0);
    }
}
