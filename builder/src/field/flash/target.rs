//! Target checks: what the device (or file) is, whether it is in use
//! (mounted, held by dm/md/LVM, swap, the running system's root), its
//! size, the user's confirmation, and opening it for the write.
//! Invariant: every refusal happens before the first byte is written.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::{bad, refused, FlashError, FlashOptions};
use crate::host::progress::human_bytes;

fn dev_major(d: u64) -> u64 {
    ((d >> 32) & 0xffff_f000) | ((d >> 8) & 0xfff)
}

fn dev_minor(d: u64) -> u64 {
    ((d >> 12) & 0xffff_ff00) | (d & 0xff)
}

pub(super) fn majmin(d: u64) -> String {
    format!("{}:{}", dev_major(d), dev_minor(d))
}

/// `(maj:min, mount point, mount source)` for each line of a mountinfo file.
pub fn parse_mountinfo(text: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 5 {
            continue;
        }
        let source = line
            .split(" - ")
            .nth(1)
            .and_then(|r| r.split(' ').nth(1))
            .unwrap_or("")
            .to_string();
        out.push((
            f[2].to_string(),
            unescape_mount(f[4]),
            unescape_mount(&source),
        ));
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// A block device as sysfs sees it.
#[derive(Debug, Clone)]
pub(super) struct BlockDev {
    /// Kernel name (`sdb`).
    pub(super) name: String,
    /// `maj:min` of the disk and each of its partitions, with names.
    pub(super) members: Vec<(String, String)>,
    pub(super) size: u64,
    pub(super) desc: String,
    /// sysfs `removable` is 1.
    pub(super) removable_flag: bool,
    /// `usb`, `mmc`, `nvme`, `ata`, `scsi`, `virtio`, `virtual` (loop,
    /// device-mapper) or `unknown`, from the device's sysfs path.
    pub(super) bus: &'static str,
}

impl BlockDev {
    /// Counted as a stick: the kernel's removable flag, or a USB or MMC
    /// disk (many USB sticks and card readers report removable 0). A loop
    /// device is not: tests pass `--allow-fixed`.
    pub(super) fn removable(&self) -> bool {
        self.removable_flag || matches!(self.bus, "usb" | "mmc")
    }
}

/// The bus of the block device whose sysfs folder is `real`
/// (`/sys/devices/pci0000:00/.../usb2/.../block/sdb`).
fn bus_of(real: &Path) -> &'static str {
    let p = real.to_string_lossy();
    let has = |w: &str| p.split('/').any(|c| c.starts_with(w));
    if has("usb") {
        "usb"
    } else if has("mmc") {
        "mmc"
    } else if has("nvme") {
        "nvme"
    } else if has("virtio") {
        "virtio"
    } else if has("ata") {
        "ata"
    } else if p.contains("/virtual/") {
        "virtual"
    } else if has("host") || has("target") {
        "scsi"
    } else {
        "unknown"
    }
}

/// A whole disk `cairn flash --list` offers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Candidate {
    /// `/dev/sdb`.
    pub device: String,
    /// A `/dev/disk/by-id/...` link to it (stable across replugging).
    pub by_id: Option<String>,
    pub removable: bool,
    pub bus: String,
    pub model: String,
    pub size: u64,
    /// The flags a flash to it needs (`--allow-fixed`, `--allow-large`).
    pub needs: Vec<String>,
}

/// Every whole disk under `sys` (normally `/sys`) with a size, sorted by
/// name; `by_id` is the folder of stable links (`/dev/disk/by-id`).
pub fn list_targets(sys: &Path, by_id: &Path) -> Vec<Candidate> {
    let mut links: Vec<(String, String)> = std::fs::read_dir(by_id)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let to = std::fs::canonicalize(e.path()).ok()?;
                    let dev = to.file_name()?.to_string_lossy().into_owned();
                    Some((dev, e.path().display().to_string()))
                })
                .collect()
        })
        .unwrap_or_default();
    // A name people read (usb-..., ata-...) before a wwn-/nvme-eui number.
    links.sort_by_key(|(_, l)| (l.contains("/wwn-") || l.contains("-eui."), l.clone()));
    let mut names: Vec<String> = std::fs::read_dir(sys.join("block"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let Some(mm) = read_trim(&sys.join("block").join(&name).join("dev")) else {
            continue;
        };
        let dev_path = format!("/dev/{name}");
        let Ok(d) = block_dev(sys, &mm, Path::new(&dev_path)) else {
            continue;
        };
        if d.size == 0 {
            continue;
        }
        let model = [
            read_trim(&sys.join("block").join(&name).join("device/vendor")),
            read_trim(&sys.join("block").join(&name).join("device/model")),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
        let mut needs = Vec::new();
        if !d.removable() {
            needs.push("--allow-fixed".to_string());
        }
        if d.size > super::LARGE {
            needs.push("--allow-large".to_string());
        }
        out.push(Candidate {
            device: dev_path,
            by_id: links
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, l)| l.clone()),
            removable: d.removable(),
            bus: d.bus.to_string(),
            model: model.trim().to_string(),
            size: d.size,
            needs,
        });
    }
    out
}

/// Looks `maj:min` up under `sys` (normally `/sys`).
fn block_dev(sys: &Path, mm: &str, path: &Path) -> Result<BlockDev, FlashError> {
    let link = sys.join("dev/block").join(mm);
    let real = std::fs::canonicalize(&link).map_err(|e| {
        bad(format!(
            "{}: block device {mm} not found in sysfs ({}): {e}",
            path.display(),
            link.display()
        ))
    })?;
    let name = real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if real.join("partition").exists() {
        let disk = real
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "the whole disk".into());
        return Err(refused(format!(
            "{} is partition {name}; write the image to the whole device /dev/{disk}",
            path.display()
        )));
    }
    let mut members = vec![(mm.to_string(), name.clone())];
    if let Ok(rd) = std::fs::read_dir(&real) {
        let mut parts: Vec<(String, String)> = rd
            .flatten()
            .filter(|e| e.path().join("partition").exists())
            .filter_map(|e| {
                let dev = read_trim(&e.path().join("dev"))?;
                Some((dev, e.file_name().to_string_lossy().into_owned()))
            })
            .collect();
        parts.sort();
        members.extend(parts);
    }
    let sectors: u64 = read_trim(&real.join("size"))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let vendor = read_trim(&real.join("device/vendor")).unwrap_or_default();
    let model = read_trim(&real.join("device/model")).unwrap_or_default();
    let removable = read_trim(&real.join("removable")).as_deref() == Some("1");
    let what = format!("{vendor} {model}").trim().to_string();
    let what = if what.is_empty() {
        "unknown model".to_string()
    } else {
        what
    };
    let desc = format!(
        "{} ({what}, {}{})",
        path.display(),
        human_bytes(sectors * 512),
        if removable { ", removable" } else { "" }
    );
    Ok(BlockDev {
        name,
        members,
        size: sectors * 512,
        desc,
        removable_flag: removable,
        bus: bus_of(&real),
    })
}

/// Refuses a disk that is in use: mounted, held (dm/md/LVM), swap, or the
/// running system's root. `root_dev` is `maj:min` of `/`.
fn check_in_use(
    sys: &Path,
    dev: &BlockDev,
    mountinfo: &str,
    swaps: &str,
    root_dev: &str,
    path: &Path,
) -> Result<(), FlashError> {
    let mounts = parse_mountinfo(mountinfo);
    for (mm, name) in &dev.members {
        let node = format!("/dev/{name}");
        if let Some((_, at, _)) = mounts.iter().find(|(m, _, src)| m == mm || *src == node) {
            return Err(refused(format!(
                "{} is in use: /dev/{name} is mounted at {at}; unmount it first",
                path.display()
            )));
        }
        if mm == root_dev {
            return Err(refused(format!(
                "{} holds the running system (/ is on /dev/{name})",
                path.display()
            )));
        }
        let holders = sys.join("class/block").join(name).join("holders");
        if let Ok(rd) = std::fs::read_dir(&holders) {
            let mut h: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            h.sort();
            if let Some(first) = h.first() {
                return Err(refused(format!(
                    "{} is in use: /dev/{name} is held by {first} (device-mapper, RAID or LVM)",
                    path.display()
                )));
            }
        }
        if swaps
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().next() == Some(node.as_str()))
        {
            return Err(refused(format!(
                "{} is in use: /dev/{name} is active swap",
                path.display()
            )));
        }
    }
    Ok(())
}

pub(super) enum Target {
    File { exists_nonempty: bool },
    Block(BlockDev),
}

pub(super) fn inspect_target(opts: &FlashOptions) -> Result<Target, FlashError> {
    let path = &opts.device;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if opts.to_file {
                return Ok(Target::File {
                    exists_nonempty: false,
                });
            }
            return Err(bad(format!(
                "{} does not exist (pass --to-file to write an image file)",
                path.display()
            )));
        }
        Err(e) => return Err(bad(format!("{}: {e}", path.display()))),
    };
    let ft = meta.file_type();
    if ft.is_file() {
        if !opts.to_file {
            return Err(bad(format!(
                "{} is a regular file, not a block device; pass --to-file to write the image into a file",
                path.display()
            )));
        }
        return Ok(Target::File {
            exists_nonempty: meta.len() > 0,
        });
    }
    if ft.is_block_device() {
        let sys = Path::new("/sys");
        let dev = block_dev(sys, &majmin(meta.rdev()), path)?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
        let root_dev = std::fs::metadata("/")
            .map(|m| majmin(m.dev()))
            .unwrap_or_default();
        check_in_use(sys, &dev, &mountinfo, &swaps, &root_dev, path)?;
        return Ok(Target::Block(dev));
    }
    Err(bad(format!(
        "{} is neither a block device nor a regular file",
        path.display()
    )))
}

/// Asks `question [y/N]` on the controlling terminal.
pub(super) fn confirm(question: &str) -> Result<bool, FlashError> {
    let mut tty = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|e| {
            bad(format!(
                "cannot ask for confirmation (no terminal: {e}); pass --yes"
            ))
        })?;
    write!(tty, "{question} [y/N] ")
        .and_then(|()| tty.flush())
        .map_err(|e| bad(format!("cannot write to the terminal: {e}")))?;
    let mut line = String::new();
    std::io::BufReader::new(tty)
        .read_line(&mut line)
        .map_err(|e| bad(format!("cannot read the answer: {e}")))?;
    Ok(matches!(
        line.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

pub(super) fn block_size_of(f: &File) -> std::io::Result<u64> {
    crate::host::sys::block_device_size(f)
}

/// Opens the target for the write without blocking (a FIFO swapped in
/// after the checks is refused, not waited on), checks that it is still
/// what `inspect_target` saw (the same block device, or a regular file),
/// and that a block device holds `size` bytes.
pub(super) fn open_target(
    opts: &FlashOptions,
    target: &Target,
    size: u64,
) -> Result<File, FlashError> {
    let dev = &opts.device;
    let nonblock = libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
    let opened = match target {
        // O_EXCL on a block device fails with EBUSY if the kernel has it
        // (or a partition) claimed: a last guard against mounted disks.
        Target::Block(_) => OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_EXCL | nonblock)
            .open(dev),
        Target::File { .. } => OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(nonblock)
            .open(dev),
    };
    let dst = opened.map_err(|e| match e.raw_os_error() {
        Some(libc::EBUSY) => refused(format!(
            "{} is busy (in use by the kernel): {e}",
            dev.display()
        )),
        Some(libc::ENXIO) => bad(format!(
            "{} changed into a FIFO or socket after it was checked; nothing was written",
            dev.display()
        )),
        _ => bad(format!("cannot open {} for writing: {e}", dev.display())),
    })?;
    let meta = dst
        .metadata()
        .map_err(|e| bad(format!("cannot stat {}: {e}", dev.display())))?;
    let still = match target {
        Target::Block(d) => {
            meta.file_type().is_block_device()
                && d.members.first().map(|m| m.0.as_str()) == Some(majmin(meta.rdev()).as_str())
        }
        Target::File { .. } => meta.file_type().is_file(),
    };
    if !still {
        return Err(bad(format!(
            "{} changed after it was checked; nothing was written",
            dev.display()
        )));
    }
    if let Err(e) = crate::host::sys::clear_nonblock(&dst) {
        return Err(bad(format!(
            "cannot clear O_NONBLOCK on {}: {e}",
            dev.display()
        )));
    }
    if let Target::Block(d) = target {
        let cap = block_size_of(&dst)
            .map_err(|e| bad(format!("BLKGETSIZE64 on {}: {e}", dev.display())))?;
        if cap < size {
            return Err(refused(format!(
                "{} is too small: {} for an image of {}",
                d.desc,
                human_bytes(cap),
                human_bytes(size)
            )));
        }
    }
    Ok(dst)
}
#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn flash_majmin_and_mountinfo() {
        // makedev(8, 17) and a large minor
        assert_eq!(majmin(0x811), "8:17");
        let d = (259u64 << 8) | (300 & 0xff) | ((300 & !0xff) << 12);
        assert_eq!(majmin(d), "259:300");
        let mi = "36 35 8:17 / /media/usb\\040stick rw,relatime shared:1 - vfat /dev/sdb1 rw\n\
                  22 1 0:21 / / rw - overlay overlay rw\n";
        let v = parse_mountinfo(mi);
        assert_eq!(
            v[0],
            ("8:17".into(), "/media/usb stick".into(), "/dev/sdb1".into())
        );
        assert_eq!(v[1].0, "0:21");
    }

    fn fake_sys() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path().to_path_buf();
        let disk = sys.join("devices/pci/usb/block/sdb");
        std::fs::create_dir_all(disk.join("device")).unwrap();
        std::fs::create_dir_all(disk.join("sdb1")).unwrap();
        std::fs::create_dir_all(disk.join("holders")).unwrap();
        std::fs::create_dir_all(disk.join("sdb1/holders")).unwrap();
        std::fs::write(disk.join("sdb1/partition"), "1\n").unwrap();
        std::fs::write(disk.join("sdb1/dev"), "8:17\n").unwrap();
        std::fs::write(disk.join("size"), "31116288\n").unwrap();
        std::fs::write(disk.join("removable"), "1\n").unwrap();
        std::fs::write(disk.join("device/vendor"), "SanDisk \n").unwrap();
        std::fs::write(disk.join("device/model"), "Cruzer Blade\n").unwrap();
        std::fs::create_dir_all(sys.join("dev/block")).unwrap();
        std::os::unix::fs::symlink(&disk, sys.join("dev/block/8:16")).unwrap();
        std::os::unix::fs::symlink(disk.join("sdb1"), sys.join("dev/block/8:17")).unwrap();
        std::fs::create_dir_all(sys.join("class/block")).unwrap();
        std::os::unix::fs::symlink(&disk, sys.join("class/block/sdb")).unwrap();
        std::os::unix::fs::symlink(disk.join("sdb1"), sys.join("class/block/sdb1")).unwrap();
        std::fs::write(disk.join("dev"), "8:16\n").unwrap();
        std::fs::create_dir_all(sys.join("block")).unwrap();
        std::os::unix::fs::symlink(&disk, sys.join("block/sdb")).unwrap();
        (t, sys)
    }

    #[test]
    fn flash_block_checks_on_a_fake_sysfs() {
        let (_t, sys) = fake_sys();
        let p = Path::new("/dev/sdb");
        let d = block_dev(&sys, "8:16", p).unwrap();
        assert_eq!(d.name, "sdb");
        assert_eq!(d.size, 31116288 * 512);
        assert_eq!(
            d.desc,
            "/dev/sdb (SanDisk Cruzer Blade, 14.8 GiB, removable)"
        );
        assert_eq!(d.members.len(), 2);
        assert_eq!(d.bus, "usb");
        assert!(d.removable());
        // A SATA disk that says it is not removable is fixed; a USB one is
        // a stick whatever its flag says.
        assert_eq!(
            bus_of(Path::new(
                "/sys/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda"
            )),
            "ata"
        );
        assert_eq!(
            bus_of(Path::new("/sys/devices/virtual/block/loop0")),
            "virtual"
        );
        let fixed = BlockDev {
            removable_flag: false,
            bus: "ata",
            ..d.clone()
        };
        assert!(!fixed.removable());
        let usb = BlockDev {
            removable_flag: false,
            bus: "usb",
            ..d.clone()
        };
        assert!(usb.removable());
        let cands = list_targets(&sys, &sys.join("no-by-id"));
        assert_eq!(cands.len(), 1, "{cands:?}");
        assert_eq!(cands[0].device, "/dev/sdb");
        assert_eq!(cands[0].model, "SanDisk Cruzer Blade");
        assert!(cands[0].needs.is_empty(), "{cands:?}");

        let e = block_dev(&sys, "8:17", Path::new("/dev/sdb1")).unwrap_err();
        assert!(e.to_string().contains("whole device /dev/sdb"), "{e}");

        let ok = check_in_use(
            &sys,
            &d,
            "22 1 0:21 / / rw - overlay overlay rw\n",
            "",
            "0:21",
            p,
        );
        assert!(ok.is_ok());
        let mi = "36 35 8:17 / /media/usb rw - vfat /dev/sdb1 rw\n";
        let e = check_in_use(&sys, &d, mi, "", "0:21", p).unwrap_err();
        assert!(e.to_string().contains("mounted at /media/usb"), "{e}");
        let e = check_in_use(&sys, &d, "", "", "8:17", p).unwrap_err();
        assert!(e.to_string().contains("running system"), "{e}");
        let swaps = "Filename Type Size Used Priority\n/dev/sdb1 partition 1 0 -2\n";
        let e = check_in_use(&sys, &d, "", swaps, "0:1", p).unwrap_err();
        assert!(e.to_string().contains("swap"), "{e}");
        std::fs::create_dir_all(sys.join("class/block/sdb1/holders/dm-0")).unwrap();
        let e = check_in_use(&sys, &d, "", "", "0:1", p).unwrap_err();
        assert!(e.to_string().contains("held by dm-0"), "{e}");
        assert!(matches!(e, FlashError::Refused(_)));
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn flash_refuses_odd_targets() {
        let opts = FlashOptions {
            image: PathBuf::from("x.raw"),
            device: PathBuf::from("/dev/null"),
            pubkey: PathBuf::from("k.pub"),
            yes: true,
            to_file: false,
            max_size: None,
            site: None,
            write: Default::default(),
            allow_fixed: false,
            allow_large: false,
            discard_audit: false,
        };
        let e = match inspect_target(&opts) {
            Err(e) => e,
            Ok(_) => panic!("/dev/null accepted"),
        };
        assert_eq!(e.exit_code(), 2, "{e}");
        let t = tempfile::tempdir().unwrap();
        let mut o = opts.clone();
        o.device = t.path().join("missing");
        assert!(matches!(inspect_target(&o), Err(FlashError::BadInput(_))));
        o.to_file = true;
        assert!(matches!(
            inspect_target(&o),
            Ok(Target::File {
                exists_nonempty: false
            })
        ));
    }
}
