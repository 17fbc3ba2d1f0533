//! A loop device a test attaches to a file (`losetup --find --show`) and
//! detaches when dropped: tests may use loop devices as sticks; the builder
//! itself never does. Needs root and loop support: without them the test
//! fails, never skips.
#![allow(dead_code)] // each test binary uses a part

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use cairn::host::digest::Sha256;

const MIB: u64 = 1 << 20;

/// A loop device attached to a file by this test, detached on drop.
pub struct Loop {
    pub dev: PathBuf,
    pub file: PathBuf,
}

impl Loop {
    /// A `size`-byte backing file filled with `fill` (so leftovers show),
    /// attached to the first free loop device.
    pub fn attach(dir: &Path, name: &str, size: u64, fill: u8) -> Loop {
        Loop::attach_with(dir, name, size, Some(&vec![fill; MIB as usize]))
    }

    /// As [`Loop::attach`], the file filled with `chunk` repeated (its
    /// length divides a MiB), or left a hole (`None`).
    pub fn attach_with(dir: &Path, name: &str, size: u64, chunk: Option<&[u8]>) -> Loop {
        let file = dir.join(name);
        let f = File::create(&file).unwrap();
        f.set_len(size).unwrap();
        if let Some(c) = chunk {
            let chunk = c.repeat(MIB as usize / c.len());
            let mut off = 0;
            while off < size {
                let n = (size - off).min(MIB);
                f.write_all_at(&chunk[..n as usize], off).unwrap();
                off += n;
            }
        }
        f.sync_all().unwrap();
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&file)
            .output()
            .expect("losetup is not installed (util-linux)");
        assert!(
            out.status.success(),
            "losetup --find --show {} failed (root and loop devices needed): {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let l = Loop {
            dev: PathBuf::from(&name),
            file,
        };
        assert!(name.starts_with("/dev/loop"), "losetup printed {name:?}");
        l
    }

    /// The first `len` bytes of the device.
    pub fn head(&self, len: u64) -> Vec<u8> {
        let mut b = vec![0u8; len as usize];
        File::open(&self.dev).unwrap().read_exact(&mut b).unwrap();
        b
    }

    /// The SHA-256 of the first `len` bytes of the device.
    pub fn digest(&self, len: u64) -> Sha256 {
        use sha2::Digest as _;
        let mut f = File::open(&self.dev).unwrap();
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; MIB as usize];
        let mut left = len;
        while left > 0 {
            let n = left.min(MIB) as usize;
            f.read_exact(&mut buf[..n]).unwrap();
            h.update(&buf[..n]);
            left -= n as u64;
        }
        Sha256(h.finalize().into())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let st = Command::new("losetup").arg("-d").arg(&self.dev).status();
        if !matches!(st, Ok(s) if s.success()) {
            eprintln!("warning: losetup -d {} failed", self.dev.display());
        }
        let _ = std::fs::remove_file(&self.file);
    }
}
