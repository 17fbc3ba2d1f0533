//! Fixtures shared by the integration tests: a signed copy of the
//! qemu-test image folder (the boot tests build it; `make test` runs them
//! first and sets CAIRN_REQUIRE_TEST_IMAGE). Whether a test can run is
//! decided by `testkit`: without the image, or a host tool, it fails.
#![allow(dead_code, unused_imports)] // each test binary uses part of it

pub mod loopdev;
pub mod mini;

use std::path::{Path, PathBuf};
use std::process::Command;

use cairn::host::digest::Sha256;
use cairn::release::signify::{self, SecretKey};

pub use testkit::flip_byte;

pub const TEST_IMAGE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../target/qemu-tests/out/cairn-test-1"
);
pub const RAW: &str = "cairn-test-1.raw";

/// A signed copy of the test image folder (raw and manifest only) plus
/// its throwaway key.
pub struct Signed {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub key: SecretKey,
    pub pubkey: PathBuf,
}

impl Signed {
    pub fn raw(&self) -> PathBuf {
        self.dir.join(RAW)
    }

    /// Rewrite SHA256 (digests of every listed file, sorted) and SHA256.sig.
    /// The raw's digest comes from the manifest unless `raw_digest` is given,
    /// so the 1 GiB image is not hashed again.
    pub fn resign(&self, names: &[&str], raw_digest: Option<Sha256>) {
        let mut names: Vec<&str> = names.to_vec();
        names.sort();
        let mut sums = String::new();
        for n in names {
            let d = if n == RAW {
                raw_digest.unwrap_or_else(|| self.manifest_raw_digest())
            } else {
                Sha256::of_file(&self.dir.join(n)).unwrap()
            };
            sums.push_str(&format!("SHA256 ({n}) = {d}\n"));
        }
        self.write_signed(sums.as_bytes());
    }

    pub fn write_signed(&self, sums: &[u8]) {
        std::fs::write(self.dir.join("SHA256"), sums).unwrap();
        let sig = self.key.sign(sums);
        std::fs::write(
            self.dir.join("SHA256.sig"),
            sig.to_embedded_file_bytes("test.pub", sums),
        )
        .unwrap();
    }

    /// The raw image's digest as the manifest records it.
    pub fn manifest_raw_digest(&self) -> Sha256 {
        let m = cairn::release::manifest::read(&self.dir.join("manifest.json")).unwrap();
        m.outputs.iter().find(|o| o.file == RAW).unwrap().sha256
    }
}

pub fn write_pubkey(dir: &Path, key: &SecretKey, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, key.public().to_file_text("test public key")).unwrap();
    p
}

/// The test image is built in every format; these tests work on a copy
/// whose manifest lists only the media copied (as a `--format` build would).
pub fn keep_outputs(dir: &Path, keep: &[&str]) {
    let path = dir.join("manifest.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    if let Some(outs) = v["outputs"].as_array_mut() {
        outs.retain(|o| keep.iter().any(|k| o["file"].as_str() == Some(k)));
    }
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap() + "\n").unwrap();
}

/// Copies the qemu-test image (sparsely) and signs it with a throwaway
/// key. Without the image the test fails (`testkit::test_image` says how
/// to build it).
pub fn signed_folder() -> Signed {
    let src = testkit::test_image(Path::new(TEST_IMAGE), &[RAW, "manifest.json"]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cairn-test-1");
    std::fs::create_dir(&dir).unwrap();
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(src.join(RAW))
        .arg(src.join("manifest.json"))
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success());
    keep_outputs(&dir, &[RAW]);
    let key = signify::generate();
    let pubkey = write_pubkey(tmp.path(), &key, "test.pub");
    let s = Signed {
        tmp,
        dir,
        key,
        pubkey,
    };
    s.resign(&[RAW, "manifest.json"], None);
    s
}

/// Applies the boot-test knobs (`CAIRN_QEMU_ACCEL`,
/// `CAIRN_BOOT_TIMEOUT_SCALE`, read by `cairn::cli` as for `cairn run`) to
/// this test process's QEMU settings; call before the first VM or
/// `timeout_scale()`.
pub fn configure_qemu() {
    cairn::vm::qemu::configure(cairn::cli::qemu_config_from_env())
        .unwrap_or_else(|e| panic!("{e:#}"));
}
