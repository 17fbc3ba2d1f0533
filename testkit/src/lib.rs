//! What a cairn test needs before it can run, decided in one place, for
//! the unit tests, `builder/tests/` and `qemu-tests/` alike: a missing host
//! tool, firmware file, test image or operator-supplied input fails the
//! test with what to install or run. Nothing passes by skipping; a test
//! that needs what this machine cannot have is `#[ignore = "why"]` instead.

pub mod stream;

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Set by `make test`, which runs the boot tests (they build the test
/// image) before the unit tests that sign and tamper with that image.
pub const REQUIRE_TEST_IMAGE: &str = "CAIRN_REQUIRE_TEST_IMAGE";

/// The one verdict on a missing prerequisite: the test fails, saying what
/// is missing and how to get it.
#[track_caller]
fn missing(what: &str, fix: &str) -> ! {
    panic!("cannot run this test: {what}; {fix}")
}

/// Where `name` is on PATH (or in /usr/sbin, /sbin). A missing tool fails
/// the test naming the Debian package that provides it.
#[track_caller]
pub fn tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    match found {
        Some(p) => p,
        None => missing(
            &format!("{name} is not installed"),
            &format!("apt-get install {package} (`make deps` installs every test dependency)"),
        ),
    }
}

/// A file a Debian package ships (firmware, the systemd stub, GRUB's
/// modules). Missing, it fails the test naming the package.
#[track_caller]
pub fn file(path: impl AsRef<Path>, package: &str) -> PathBuf {
    let p = path.as_ref();
    if !p.exists() {
        missing(
            &format!("{} is missing", p.display()),
            &format!("apt-get install {package} (`make deps` installs every test dependency)"),
        );
    }
    p.to_path_buf()
}

/// The qemu-test image folder, which the boot tests build
/// (`target/qemu-tests/out/cairn-test-1`), with every one of `files` in it.
/// Absent, the test fails: with CAIRN_REQUIRE_TEST_IMAGE set (`make test`)
/// the boot tests that ran first should have built it; without, it says to
/// run them first.
#[track_caller]
pub fn test_image(dir: &Path, files: &[&str]) -> PathBuf {
    if let Some(f) = files.iter().find(|f| !dir.join(f).is_file()) {
        let fix = if std::env::var_os(REQUIRE_TEST_IMAGE).is_some() {
            "make test ran the boot tests first and they should have built it: read their output above"
        } else {
            "build it with `make qemu-test` (or `cargo test -p qemu-tests`) first; `make test` runs both in that order"
        };
        missing(
            &format!("no {f} in the test image folder {}", dir.display()),
            fix,
        );
    }
    dir.to_path_buf()
}

/// An environment variable an `#[ignore]`d test needs when it is run
/// (`how` says what to set it to).
#[track_caller]
pub fn env(name: &str, how: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => missing(&format!("{name} is not set"), how),
    }
}

/// Flips the lowest bit of the byte at `at`: the smallest change a check
/// must notice.
#[track_caller]
pub fn flip_byte(path: &Path, at: u64) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("flip_byte: open {}: {e}", path.display()));
    let mut b = [0u8];
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.read_exact(&mut b).expect("read");
    b[0] ^= 0x01;
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.write_all(&b).expect("write");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panic_text(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
        let e = std::panic::catch_unwind(f).expect_err("must fail, not skip");
        e.downcast_ref::<String>().cloned().unwrap_or_default()
    }

    #[test]
    fn a_missing_tool_fails_naming_its_package() {
        assert!(tool("sh", "dash").is_file());
        let m = panic_text(|| {
            tool("cairn-no-such-tool", "cairn-pkg");
        });
        assert!(m.contains("cairn-no-such-tool is not installed"), "{m}");
        assert!(m.contains("apt-get install cairn-pkg"), "{m}");
    }

    #[test]
    fn a_missing_file_or_test_image_fails() {
        let d = std::env::temp_dir();
        assert_eq!(file(&d, "x"), d);
        let m = panic_text(|| {
            file("/nonexistent/cairn/stub.efi", "systemd-boot-efi");
        });
        assert!(m.contains("apt-get install systemd-boot-efi"), "{m}");
        let m = panic_text(|| {
            test_image(
                Path::new("/nonexistent/cairn-test-1"),
                &["cairn-test-1.raw"],
            );
        });
        assert!(
            m.contains("no cairn-test-1.raw in the test image folder"),
            "{m}"
        );
    }

    #[test]
    fn flip_byte_changes_exactly_one_bit() {
        let d = std::env::temp_dir().join(format!("testkit-flip-{}", std::process::id()));
        std::fs::write(&d, [0u8, 0x10, 0]).unwrap();
        flip_byte(&d, 1);
        assert_eq!(std::fs::read(&d).unwrap(), [0u8, 0x11, 0]);
        flip_byte(&d, 1);
        assert_eq!(std::fs::read(&d).unwrap(), [0u8, 0x10, 0]);
        std::fs::remove_file(&d).unwrap();
    }
}
