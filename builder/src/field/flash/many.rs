//! `cairn flash RELEASE DEV1 DEV2 ... [--receipts FILE]`: one verification,
//! then every stick written at once (a thread each, a bar each), each read
//! back, and one receipt per stick appended to the log as a JSON line.
//!
//! A stick that fails its checks (too small, not a block device, in use)
//! is named and left untouched while the others are written; a stick whose
//! write fails is named and left unbootable while the others finish.
//! SIGINT, SIGTERM or SIGHUP stops every writer (`host::interrupt`, polled
//! per chunk, holding the exit until the receipts are written); each stick is
//! left with a zero first MiB (the boot sector is written last) and says so.
//! With `--site`, the signed site file is checked once before anything is
//! written, put on every stick's ESP after its image, and read back; the
//! receipt records its digest.
//! Invariant: one receipt per device named on the command line, in order.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::target::{confirm, majmin, read_trim, Target};
use super::{
    bad, check_target, site_for, verify_release, write_checked, write_site, FlashError,
    FlashOptions,
};
use crate::host::digest::Sha256;
use crate::host::progress::{human_bytes, Bars};
use crate::host::time::rfc3339;

/// A multi-stick flash.
#[derive(Debug, Clone)]
pub struct ManyOptions {
    /// A `.raw` or `.iso` in a signed output folder.
    pub image: PathBuf,
    /// Whole block devices, or files with `to_file`; each at most once.
    pub devices: Vec<PathBuf>,
    pub pubkey: PathBuf,
    pub yes: bool,
    pub to_file: bool,
    /// Simulated capacity per target (tests), as in [`FlashOptions`].
    pub max_size: Option<u64>,
    /// The log receipts are appended to (JSON lines), if any.
    pub receipts: Option<PathBuf>,
    /// A signed site file to put on every stick's ESP after the image.
    pub site: Option<PathBuf>,
    /// As in [`FlashOptions`].
    pub write: super::WriteMode,
    pub allow_fixed: bool,
    pub allow_large: bool,
    /// As in [`FlashOptions`].
    pub discard_audit: bool,
}

/// One stick's record, one JSON line in the receipts log.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Receipt {
    pub device: String,
    /// From sysfs where the kernel knows them (`device/{vendor,model,serial}`, `wwid`).
    pub vendor: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub wwid: Option<String>,
    /// The target's capacity in bytes (a file target: the image size); null if unknown.
    pub size: Option<u64>,
    /// The release folder's name and the medium written.
    pub release: String,
    pub image: String,
    /// The signed digest of the image.
    pub image_sha256: String,
    /// The digest of the verified SHA256 file.
    pub sums_sha256: String,
    /// The digest of the site file put on the stick with the image (null
    /// without `--site`); its signature and it were read back byte for
    /// byte when `result` is `ok`.
    pub site_sha256: Option<String>,
    /// The site file's node role (`server` when it sets none) and host
    /// name (null: it sets none, the node is named after the image);
    /// both null without `--site` (and in receipts from before roles).
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub node: Option<String>,
    /// The digest of the image read back from the stick (null unless the
    /// read-back ran and matched; when sparse, every range matched its
    /// signed digest in the map of this image, the gaps zeroed).
    pub read_back_sha256: Option<String>,
    /// RFC 3339, wall clock.
    pub started: String,
    pub finished: String,
    /// `ok`, `refused`, `bad-input`, `failed` or `interrupted`.
    pub result: String,
    /// How the stick was (to be) written: `full`, `sparse-zeroout`,
    /// `sparse-zeros-written` or `sparse-new-file` (null if refused first).
    #[serde(default)]
    pub mode: Option<String>,
    /// The bytes written and read back (the rest zeroed when sparse).
    #[serde(default)]
    pub written_bytes: Option<u64>,
    /// The error, one line (null on success).
    pub message: Option<String>,
}

/// What happened to one stick.
#[derive(Debug)]
pub struct StickOutcome {
    pub device: PathBuf,
    /// How the target was named (`/dev/sdb (SanDisk Cruzer, 14.9 GiB, removable)`).
    pub desc: String,
    pub result: Result<Sha256, FlashError>,
    pub receipt: Receipt,
}

/// Every stick's outcome, in the order the devices were given.
#[derive(Debug)]
pub struct ManyReport {
    pub sticks: Vec<StickOutcome>,
    pub key_id: String,
    pub bytes: u64,
    /// `NAME (key ID): role R, node N` of the site file every stick got.
    pub site: Option<String>,
}

impl ManyReport {
    /// 0 when every stick was written; 128 + the signal if SIGINT, SIGTERM
    /// or SIGHUP stopped any (130 for SIGINT); else 1
    /// when any write failed or any stick was refused; 2 when the only
    /// failures were bad input (e.g. a regular file without `--to-file`).
    pub fn exit_code(&self) -> i32 {
        let errs: Vec<&FlashError> = self
            .sticks
            .iter()
            .filter_map(|s| s.result.as_ref().err())
            .collect();
        if errs.is_empty() {
            0
        } else if errs.iter().any(|e| matches!(e, FlashError::Interrupted(_))) {
            crate::host::interrupt::exit_code()
        } else if errs.iter().all(|e| matches!(e, FlashError::BadInput(_))) {
            2
        } else {
            1
        }
    }

    /// The first line: which image, how big, verified with which key.
    pub fn heading(&self, image: &Path) -> String {
        format!(
            "flash: {} ({}) verified with key {} before writing",
            image.display(),
            human_bytes(self.bytes),
            self.key_id
        )
    }

    /// One line per stick: `flash: DEVICE: ok, ...` or `flash: DEVICE: FAILED: ...`.
    pub fn lines(&self) -> Vec<String> {
        self.sticks
            .iter()
            .map(|s| match &s.result {
                Ok(d) => match s.receipt.mode.as_deref().unwrap_or("full") {
                    "full" => format!(
                        "flash: {}: ok (full), read back sha256 {d} matches the signed digest",
                        s.device.display()
                    ),
                    mode => format!(
                        "flash: {}: ok ({mode}), every range read back matches its signed \
                         digest (image sha256 {d})",
                        s.device.display()
                    ),
                },
                Err(e) => format!("flash: {}: FAILED: {e}", s.device.display()),
            })
            .collect()
    }
}

fn now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

fn result_word(r: &Result<Sha256, FlashError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(FlashError::Refused(_)) => "refused",
        Err(FlashError::BadInput(_)) => "bad-input",
        Err(FlashError::Failed(_)) => "failed",
        Err(FlashError::Interrupted(_)) => "interrupted",
    }
}

/// Vendor, model, serial and wwid of block device `name` under `sys`
/// (normally `/sys`), each `None` where sysfs has no such file or it is empty.
pub(super) fn identity(sys: &Path, name: &str) -> [Option<String>; 4] {
    let b = sys.join("class/block").join(name);
    let get = |rel: &str| read_trim(&b.join(rel)).filter(|s| !s.is_empty());
    [
        get("device/vendor"),
        get("device/model"),
        get("device/serial"),
        get("wwid").or_else(|| get("device/wwid")),
    ]
}

/// The kernel's name (`sdb`) of block device `dev`, if it is one.
fn kernel_name(sys: &Path, dev: &Path) -> Option<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::metadata(dev).ok()?;
    if !m.file_type().is_block_device() {
        return None;
    }
    let real = std::fs::canonicalize(sys.join("dev/block").join(majmin(m.rdev()))).ok()?;
    Some(real.file_name()?.to_string_lossy().into_owned())
}

/// Appends one JSON line per receipt to `log` (created if missing).
fn append_receipts(log: &Path, receipts: &[Receipt]) -> Result<(), FlashError> {
    let mut text = String::new();
    for r in receipts {
        let line = serde_json::to_string(r)
            .map_err(|e| FlashError::Failed(format!("flash: receipt for {}: {e}", r.device)))?;
        text.push_str(&line);
        text.push('\n');
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| {
            FlashError::Failed(format!(
                "flash: cannot open the receipts log {}: {e}",
                log.display()
            ))
        })?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| {
            FlashError::Failed(format!(
                "flash: cannot append to the receipts log {}: {e}",
                log.display()
            ))
        })
}

/// Verifies the release once, checks every target (a failed check names
/// the device and drops it, nothing is written to it), asks once for all
/// of them unless `yes`, writes the rest concurrently and reads each back.
/// `Err` only when nothing could be attempted (the release does not
/// verify, a device is named twice, the user said no, the log cannot be
/// written); then no stick was written.
pub fn flash_many(opts: &ManyOptions) -> Result<ManyReport, FlashError> {
    if opts.devices.is_empty() {
        return Err(bad("name at least one device"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for d in &opts.devices {
        let key = std::fs::canonicalize(d).unwrap_or_else(|_| d.clone());
        if !seen.insert(key) {
            return Err(bad(format!(
                "{} is named twice; name each stick once",
                d.display()
            )));
        }
    }
    if let Some(log) = &opts.receipts {
        if opts.devices.iter().any(|d| d == log) {
            return Err(bad(format!(
                "{} is both a target and the receipts log",
                log.display()
            )));
        }
    }
    let v = verify_release(
        &opts.image,
        &opts.pubkey,
        opts.write == super::WriteMode::Full,
    )?;
    let site = opts
        .site
        .as_deref()
        .map(|s| site_for(&opts.image, s))
        .transpose()?;
    let site_sha256 = site.as_ref().map(|s| Sha256::of_bytes(&s.text).hex());
    let folder = std::fs::canonicalize(&opts.image)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let image_name = opts
        .image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();

    // Every target is checked before any is written.
    let per: Vec<FlashOptions> = opts
        .devices
        .iter()
        .map(|d| FlashOptions {
            image: opts.image.clone(),
            device: d.clone(),
            pubkey: opts.pubkey.clone(),
            yes: opts.yes,
            to_file: opts.to_file,
            max_size: opts.max_size,
            site: opts.site.clone(),
            write: opts.write,
            allow_fixed: opts.allow_fixed,
            allow_large: opts.allow_large,
            discard_audit: opts.discard_audit,
        })
        .collect();
    let checked: Vec<Result<super::Checked, FlashError>> =
        per.iter().map(|o| check_target(o, &v)).collect();

    if !opts.yes {
        let risks: Vec<String> = per
            .iter()
            .zip(&checked)
            .filter_map(|(o, c)| c.as_ref().ok().and_then(|c| super::at_risk(&o.device, c)))
            .collect();
        if !risks.is_empty() {
            let q = format!(
                "flash: write {} ({}) to {} device(s)?\n  {}\n  Continue?",
                opts.image.display(),
                human_bytes(v.size),
                risks.len(),
                risks.join("\n  ")
            );
            if !confirm(&q)? {
                return Err(FlashError::Refused(
                    "flash: cancelled; nothing was written".into(),
                ));
            }
        }
    }

    // Held until the receipts are written: a signal stops the writers,
    // not the process.
    let _hold = crate::host::interrupt::hold();
    let bars = Bars::new();
    let mut bar_of: Vec<Option<crate::host::progress::Progress>> = per
        .iter()
        .zip(&checked)
        .map(|(o, c)| {
            c.as_ref()
                .ok()
                .map(|_| bars.add(&format!("flash {}", o.device.display()), v.size))
        })
        .collect();
    let v_ref = &v;
    let site_ref = site.as_ref();
    let results: Vec<(String, String, Result<Sha256, FlashError>)> = std::thread::scope(|s| {
        let handles: Vec<_> = per
            .iter()
            .zip(&checked)
            .zip(bar_of.iter_mut())
            .map(|((o, c), bar)| {
                let started = now();
                match (c, bar.take()) {
                    (Ok(c), Some(mut bar)) => {
                        let h = s.spawn(move || {
                            let got = write_checked(o, v_ref, c, &mut bar)?;
                            if let Some(site) = site_ref {
                                write_site(&o.device, c.is_block, site)?;
                            }
                            Ok(got)
                        });
                        (started, Some(h), None)
                    }
                    (Err(e), _) => (started, None, Some(clone_err(e))),
                    (Ok(_), None) => (started, None, Some(bad("internal: no progress bar"))),
                }
            })
            .collect();
        handles
            .into_iter()
            .map(|(started, h, err)| {
                let r = match (h, err) {
                    (Some(h), _) => h.join().unwrap_or_else(|_| {
                        Err(FlashError::Failed(
                            "flash: the writer thread panicked".into(),
                        ))
                    }),
                    (None, Some(e)) => Err(e),
                    (None, None) => Err(bad("internal: nothing ran")),
                };
                (started, now(), r)
            })
            .collect()
    });

    let mut sticks = Vec::new();
    for ((o, c), (started, finished, result)) in per.iter().zip(&checked).zip(results) {
        let sys = Path::new("/sys");
        let (desc, size, ident) = match c {
            Ok(c) => match &c.target {
                Target::Block(d) => (c.desc.clone(), Some(d.size), identity(sys, &d.name)),
                Target::File { .. } => (c.desc.clone(), Some(v.size), Default::default()),
            },
            // A refused block device is still described as far as sysfs knows it.
            Err(_) => match kernel_name(sys, &o.device) {
                Some(name) => (
                    o.device.display().to_string(),
                    read_trim(&sys.join("class/block").join(&name).join("size"))
                        .and_then(|s| s.parse::<u64>().ok())
                        .map(|n| n * 512),
                    identity(sys, &name),
                ),
                None => (o.device.display().to_string(), None, Default::default()),
            },
        };
        let [vendor, model, serial, wwid] = ident;
        let receipt = Receipt {
            device: o.device.display().to_string(),
            vendor,
            model,
            serial,
            wwid,
            size,
            release: folder.clone(),
            image: image_name.clone(),
            image_sha256: v.want.hex(),
            sums_sha256: v.sums_sha256.hex(),
            site_sha256: site_sha256.clone(),
            role: site.as_ref().map(|s| s.role.clone()),
            node: site.as_ref().and_then(|s| s.node.clone()),
            read_back_sha256: result.as_ref().ok().map(Sha256::hex),
            started,
            finished,
            result: result_word(&result).into(),
            mode: c
                .as_ref()
                .ok()
                .map(|c| super::mode_for(o, &v, c).to_string()),
            written_bytes: c.as_ref().ok().map(|c| super::written_by(o, &v, c)),
            message: result.as_ref().err().map(|e| e.to_string()),
        };
        sticks.push(StickOutcome {
            device: o.device.clone(),
            desc,
            result,
            receipt,
        });
    }
    if let Some(log) = &opts.receipts {
        let rs: Vec<Receipt> = sticks.iter().map(|s| s.receipt.clone()).collect();
        append_receipts(log, &rs)?;
    }
    Ok(ManyReport {
        sticks,
        key_id: v.key_id,
        bytes: v.size,
        site: site
            .as_ref()
            .map(|s| format!("{} (key {}): {}", s.name, s.key_id, s.role_text())),
    })
}

fn clone_err(e: &FlashError) -> FlashError {
    match e {
        FlashError::Refused(m) => FlashError::Refused(m.clone()),
        FlashError::BadInput(m) => FlashError::BadInput(m.clone()),
        FlashError::Failed(m) => FlashError::Failed(m.clone()),
        FlashError::Interrupted(m) => FlashError::Interrupted(m.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flash_identity_reads_sysfs_and_skips_empty_files() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("class/block/sdz/device");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("vendor"), "SanDisk \n").unwrap();
        std::fs::write(d.join("model"), "Cruzer Blade\n").unwrap();
        std::fs::write(d.join("serial"), "\n").unwrap();
        std::fs::write(d.join("wwid"), "t10.ATA SanDisk 1234\n").unwrap();
        let [v, m, s, w] = identity(t.path(), "sdz");
        assert_eq!(v.as_deref(), Some("SanDisk"));
        assert_eq!(m.as_deref(), Some("Cruzer Blade"));
        assert_eq!(s, None);
        assert_eq!(w.as_deref(), Some("t10.ATA SanDisk 1234"));
        assert_eq!(identity(t.path(), "loop9"), [None, None, None, None]);
    }

    /// Receipts from before roles (no `role`, `node`) still read; the
    /// fields are written when set.
    #[test]
    fn receipts_without_role_still_read() {
        let old = r#"{"device":"/dev/sdb","vendor":null,"model":null,"serial":null,"wwid":null,"size":1,"release":"r","image":"i.raw","image_sha256":"a","sums_sha256":"b","site_sha256":"c","read_back_sha256":null,"started":"s","finished":"f","result":"ok","message":null}"#;
        let mut r: Receipt = serde_json::from_str(old).unwrap();
        assert_eq!((r.role.as_deref(), r.node.as_deref()), (None, None));
        r.role = Some("agent".into());
        r.node = Some("agent-1".into());
        let line = serde_json::to_value(&r).unwrap();
        assert_eq!(line["role"], "agent");
        assert_eq!(line["node"], "agent-1");
    }

    #[test]
    fn flash_many_exit_codes() {
        let r = |results: Vec<Result<Sha256, FlashError>>| ManyReport {
            sticks: results
                .into_iter()
                .map(|result| StickOutcome {
                    device: "/dev/x".into(),
                    desc: String::new(),
                    receipt: Receipt {
                        device: "/dev/x".into(),
                        vendor: None,
                        model: None,
                        serial: None,
                        wwid: None,
                        size: None,
                        release: String::new(),
                        image: String::new(),
                        image_sha256: String::new(),
                        sums_sha256: String::new(),
                        site_sha256: None,
                        role: None,
                        node: None,
                        read_back_sha256: None,
                        started: String::new(),
                        finished: String::new(),
                        result: result_word(&result).into(),
                        mode: None,
                        written_bytes: None,
                        message: None,
                    },
                    result,
                })
                .collect(),
            key_id: String::new(),
            bytes: 0,
            site: None,
        };
        let ok = || Ok(Sha256([0; 32]));
        assert_eq!(r(vec![ok(), ok()]).exit_code(), 0);
        assert_eq!(r(vec![ok(), Err(bad("x"))]).exit_code(), 2);
        assert_eq!(
            r(vec![Err(bad("x")), Err(FlashError::Refused("y".into()))]).exit_code(),
            1
        );
        assert_eq!(
            r(vec![ok(), Err(FlashError::Interrupted("z".into()))]).exit_code(),
            130
        );
        let lines = r(vec![ok(), Err(FlashError::Failed("flash: boom".into()))]).lines();
        assert!(lines[0].starts_with("flash: /dev/x: ok"), "{lines:?}");
        assert_eq!(lines[1], "flash: /dev/x: FAILED: flash: boom");
    }
}
