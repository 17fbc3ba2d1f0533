//! Hostile base tarballs, image archives and layers given to `cairn build`:
//! each is refused with exit code 2 and one line naming the entry and the
//! rule; a sentinel folder outside the test's folders (the target the
//! hostile links aim at) is byte-for-byte unchanged; `-o` holds nothing.
//! Plus interrupted builds: SIGINT and SIGTERM leave no staging folder and
//! no child process.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn::host::digest::Sha256;
use tar::{EntryType, Header};

const KV: &str = "6.1.0-t";

// ---------- tarballs with raw names (the tar crate refuses `..` itself) ----------

#[derive(Clone)]
struct E {
    name: String,
    kind: EntryType,
    mode: u32,
    link: String,
    data: Vec<u8>,
    /// A size field larger than the data that follows (for caps).
    size: Option<u64>,
}

fn file(name: &str, data: &[u8]) -> E {
    E {
        name: name.into(),
        kind: EntryType::Regular,
        mode: 0o644,
        link: String::new(),
        data: data.to_vec(),
        size: None,
    }
}
fn dir(name: &str) -> E {
    E {
        kind: EntryType::Directory,
        mode: 0o755,
        ..file(name, b"")
    }
}
fn symlink(name: &str, target: &str) -> E {
    E {
        kind: EntryType::Symlink,
        mode: 0o777,
        link: target.into(),
        ..file(name, b"")
    }
}
fn hardlink(name: &str, target: &str) -> E {
    E {
        kind: EntryType::Link,
        link: target.into(),
        ..file(name, b"")
    }
}
fn special(name: &str, kind: EntryType) -> E {
    E {
        kind,
        ..file(name, b"")
    }
}

fn header(e: &E) -> Header {
    let mut h = Header::new_gnu();
    {
        let g = h.as_gnu_mut().unwrap();
        g.name[..e.name.len()].copy_from_slice(e.name.as_bytes());
        g.linkname[..e.link.len()].copy_from_slice(e.link.as_bytes());
    }
    h.set_entry_type(e.kind);
    h.set_mode(e.mode);
    h.set_size(e.size.unwrap_or(e.data.len() as u64));
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    h
}

fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        b.append(&header(e), &e.data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    w.write_all(b).unwrap();
    w.finish().unwrap()
}

/// A gzip stream of a tar holding one file of `size` zero bytes, written
/// in pieces: small compressed, huge expanded.
fn zero_bomb(size: u64) -> Vec<u8> {
    let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(9));
    let mut h = Header::new_gnu();
    h.set_path("zeros").unwrap();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_entry_type(EntryType::Regular);
    h.set_cksum();
    w.write_all(h.as_bytes()).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        w.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    w.write_all(&[0u8; 1024]).unwrap();
    w.finish().unwrap()
}

/// The smallest tree that gets a build past compose: a kernel file and a
/// module tree with `modules.dep`.
fn kernel_tree() -> Vec<E> {
    let m = format!("usr/lib/modules/{KV}");
    vec![
        dir("boot/"),
        file(&format!("boot/vmlinuz-{KV}"), b"not a real kernel"),
        dir("usr/"),
        dir("usr/lib/"),
        dir("usr/lib/modules/"),
        dir(&format!("{m}/")),
        dir(&format!("{m}/kernel/")),
        dir(&format!("{m}/kernel/sound/")),
        file(&format!("{m}/kernel/sound/x.ko"), b"x"),
        file(&format!("{m}/modules.dep"), b"kernel/sound/x.ko:\n"),
        dir("etc/"),
    ]
}

// ---------- the folders: recipe folder, sentinel, output ----------

struct Fixture {
    dir: tempfile::TempDir,
    /// Outside the recipe folder and -o: what hostile inputs aim at.
    sentinel: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let sentinel = tempfile::Builder::new()
            .prefix("cairn-sentinel-")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(sentinel.path().join("dir/kernel")).unwrap();
        std::fs::write(sentinel.path().join("file"), b"sentinel file\n").unwrap();
        std::fs::write(sentinel.path().join("shadow"), b"root:secret:::\n").unwrap();
        std::fs::write(sentinel.path().join("dir/victim.ko"), b"victim\n").unwrap();
        std::fs::write(sentinel.path().join("dir/kernel/x.ko"), b"victim\n").unwrap();
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            sentinel,
        }
    }

    fn s(&self) -> String {
        self.sentinel.path().display().to_string()
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// A recipe on `tarball` (bytes), with `extra` TOML appended.
    fn recipe(&self, tarball: &[u8], extra: &str) -> PathBuf {
        std::fs::write(self.dir.path().join("root.tar"), tarball).unwrap();
        let text = format!(
            "[image]\nname = \"h\"\nversion = \"1\"\n\n[base.tarball]\npath = \"root.tar\"\nsha256 = \"{}\"\n{extra}",
            Sha256::of_bytes(tarball).hex()
        );
        let p = self.dir.path().join("r.toml");
        std::fs::write(&p, text).unwrap();
        p
    }
}

/// Every entry under `root`: path, type, mode, size, content digest, mtime.
fn snapshot(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(root).sort_by_file_name() {
        let e = e.unwrap();
        let m = e.path().symlink_metadata().unwrap();
        let content = if m.is_file() {
            Sha256::of_bytes(&std::fs::read(e.path()).unwrap()).hex()
        } else {
            String::new()
        };
        // Owner and ctime too: a chmod or chown of the same values still
        // moves the ctime.
        out.push(format!(
            "{} {:?} {:o} {} {} {} {}:{} {}.{}",
            e.path().display(),
            m.file_type(),
            m.mode(),
            m.len(),
            content,
            m.mtime(),
            m.uid(),
            m.gid(),
            m.ctime(),
            m.ctime_nsec()
        ));
    }
    out
}

fn build(fx: &Fixture, recipe: &Path) -> (i32, String) {
    let out = fx.out();
    cairn(
        fx,
        &[
            Path::new("build").as_os_str(),
            recipe.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
        ],
    )
}

/// Runs cairn with `args` in the fixture's folder and cache: exit code and
/// stderr.
fn cairn(fx: &Fixture, args: &[&std::ffi::OsStr]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .current_dir(fx.dir.path())
        .env("CAIRN_CACHE", fx.dir.path().join("cache"))
        .stdin(Stdio::null())
        .output()
        .expect("run cairn");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Builds, and checks the contract: exit 2, the message's first `error:`
/// line has every word of `want`, the sentinel is unchanged and `-o`
/// holds nothing.
fn refused(fx: &Fixture, tarball: &[u8], extra: &str, want: &[&str]) {
    let before = snapshot(fx.sentinel.path());
    let recipe = fx.recipe(tarball, extra);
    let (code, err) = build(fx, &recipe);
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line in:\n{err}"));
    assert_eq!(code, 2, "want exit 2, stderr:\n{err}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{err}"
    );
    for w in want {
        assert!(line.contains(w), "want {w:?} in the error line: {line}");
    }
    assert_eq!(
        snapshot(fx.sentinel.path()),
        before,
        "the sentinel folder changed"
    );
    let left: Vec<_> = std::fs::read_dir(fx.out())
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "-o holds {left:?}");
}

fn with_kernel(more: Vec<E>) -> Vec<u8> {
    let mut v = kernel_tree();
    v.extend(more);
    tar_of(&v)
}

// ---------- base tarballs: the layer policy ----------

#[test]
fn dotdot_entry() {
    let fx = Fixture::new();
    let t = with_kernel(vec![file("../escape", b"x")]);
    refused(&fx, &t, "", &["base tarball", "\"../escape\"", "\"..\""]);
}

#[test]
fn nested_dotdot_entry() {
    let fx = Fixture::new();
    let name = format!("etc/../../../..{}/planted", fx.s());
    let t = with_kernel(vec![file(&name, b"x")]);
    refused(&fx, &t, "", &["planted", "climbs out"]);
}

#[test]
fn absolute_entry() {
    let fx = Fixture::new();
    let name = format!("{}/planted", fx.s());
    let t = with_kernel(vec![file(&name, b"x")]);
    refused(&fx, &t, "", &["planted", "absolute path"]);
}

#[test]
fn relative_symlink_climbing_out() {
    let fx = Fixture::new();
    let t = with_kernel(vec![symlink("etc/up", "../../../../../../../../..")]);
    refused(&fx, &t, "", &["\"etc/up\"", "escapes the image root"]);
}

#[test]
fn hardlink_to_an_absolute_host_file() {
    let fx = Fixture::new();
    let target = format!("{}/file", fx.s());
    let t = with_kernel(vec![hardlink("etc/passwd", &target)]);
    refused(&fx, &t, "", &["\"etc/passwd\"", "outside the layer"]);
}

#[test]
fn hardlink_with_dotdot() {
    let fx = Fixture::new();
    let t = with_kernel(vec![hardlink("etc/x", "../../../../etc/shadow")]);
    refused(&fx, &t, "", &["\"etc/x\"", "outside the layer"]);
}

#[test]
fn hardlink_to_nothing_earlier() {
    let fx = Fixture::new();
    let t = with_kernel(vec![
        hardlink("etc/x", "etc/later"),
        file("etc/later", b"x"),
    ]);
    refused(&fx, &t, "", &["\"etc/x\"", "names no regular file earlier"]);
}

#[test]
fn character_device() {
    let fx = Fixture::new();
    let t = with_kernel(vec![special("dev/mem", EntryType::Char)]);
    refused(&fx, &t, "", &["\"dev/mem\"", "character device"]);
}

#[test]
fn block_device() {
    let fx = Fixture::new();
    let t = with_kernel(vec![special("dev/sda", EntryType::Block)]);
    refused(&fx, &t, "", &["\"dev/sda\"", "block device"]);
}

#[test]
fn fifo() {
    let fx = Fixture::new();
    let t = with_kernel(vec![special("run/initctl", EntryType::Fifo)]);
    refused(&fx, &t, "", &["\"run/initctl\"", "fifo"]);
}

#[test]
fn setuid_file_refused_by_default() {
    let fx = Fixture::new();
    let mut su = file("usr/bin/su", b"#!/bin/sh\n");
    su.mode = 0o4755;
    let t = with_kernel(vec![dir("usr/bin/"), su]);
    refused(
        &fx,
        &t,
        "",
        &["\"usr/bin/su\"", "set-uid", "[limits] base_setuid"],
    );
}

#[test]
fn setgid_file_refused_by_default() {
    let fx = Fixture::new();
    let mut f = file("usr/bin/wall", b"#!/bin/sh\n");
    f.mode = 0o2755;
    let t = with_kernel(vec![dir("usr/bin/"), f]);
    refused(&fx, &t, "", &["\"usr/bin/wall\"", "set-gid"]);
}

#[test]
fn whiteout_in_a_base_tarball() {
    let fx = Fixture::new();
    let t = with_kernel(vec![file("etc/.wh.passwd", b"")]);
    refused(&fx, &t, "", &["\"etc/.wh.passwd\"", "whiteout"]);
}

#[test]
fn pax_path_with_dotdot() {
    let fx = Fixture::new();
    let mut b = tar::Builder::new(Vec::new());
    for e in kernel_tree() {
        b.append(&header(&e), &e.data[..]).unwrap();
    }
    let rec = b"25 path=../../pax-escape\n";
    let mut h = Header::new_ustar();
    h.set_path("PaxHeaders/x").unwrap();
    h.set_entry_type(EntryType::XHeader);
    h.set_size(rec.len() as u64);
    h.set_cksum();
    b.append(&h, &rec[..]).unwrap();
    b.append(&header(&file("innocent", b"x")), &b"x"[..])
        .unwrap();
    let t = b.into_inner().unwrap();
    refused(&fx, &t, "", &["pax-escape", "climbs out"]);
}

#[test]
fn garbage_is_not_a_tar() {
    let fx = Fixture::new();
    refused(
        &fx,
        &[0x5au8; 4096],
        "",
        &["base tarball", "not a valid tar stream"],
    );
}

#[test]
fn xz_tarball_is_refused_with_a_fix() {
    let fx = Fixture::new();
    let mut t = vec![0xfd, b'7', b'z', b'X', b'Z', 0];
    t.extend([0u8; 100]);
    refused(&fx, &t, "", &["xz compression", "recompress it with gzip"]);
}

// ---------- base tarballs: links the later stages must not follow ----------

#[test]
fn write_through_an_absolute_folder_link_stays_in_the_tree() {
    // `etc -> SENTINEL` is an in-image path; the file below it lands in
    // the tree's own SENTINEL path, never on the host. (No /boot: refused.)
    let fx = Fixture::new();
    let t = tar_of(&[
        symlink("etc", &fx.s()),
        file("etc/file", b"overwritten"),
        file("etc/planted", b"planted"),
    ]);
    refused(&fx, &t, "", &["no /boot"]);
}

/// A folder with a wide mode, then a link in its place: folder modes are
/// set last, and were set by path, through the link, on the host.
fn wide_dir(name: &str) -> E {
    E {
        mode: 0o6777,
        ..dir(name)
    }
}

#[test]
fn a_folder_swapped_for_links_to_host_files_changes_no_host_mode() {
    let fx = Fixture::new();
    let t = with_kernel(vec![
        wide_dir("f/"),
        wide_dir("g/"),
        symlink("f", &format!("{}/file", fx.s())),
        symlink("g", &format!("{}/dir", fx.s())),
    ]);
    refused(
        &fx,
        &t,
        "[limits]\nbase_setuid = \"keep\"\n",
        &["base tarball", "\"f\"", "would replace a folder"],
    );
}

#[test]
fn a_folder_replaced_through_an_alias_is_refused() {
    let fx = Fixture::new();
    let t = with_kernel(vec![
        dir("a/"),
        wide_dir("a/d/"),
        symlink("c", "a"),
        symlink("c/d", &format!("{}/shadow", fx.s())),
    ]);
    refused(
        &fx,
        &t,
        "[limits]\nbase_setuid = \"keep\"\n",
        &["base tarball", "\"c/d\"", "would replace a folder"],
    );
}

#[test]
fn a_file_in_place_of_a_folder_of_the_same_tarball_is_refused() {
    let fx = Fixture::new();
    let t = with_kernel(vec![dir("x/"), file("x", b"now a file")]);
    refused(
        &fx,
        &t,
        "",
        &["base tarball", "\"x\"", "would replace a folder"],
    );
}

#[test]
fn folders_and_links_that_do_not_collide_get_past_the_unpack() {
    // Control for the three above: the same entries under other names
    // unpack (the build goes on to the kernel stage, which refuses the
    // fake kernel), and the sentinel is untouched.
    let fx = Fixture::new();
    let t = with_kernel(vec![
        wide_dir("f/"),
        symlink("f2", &format!("{}/file", fx.s())),
        dir("x/"),
        file("x2", b"a file"),
    ]);
    let before = snapshot(fx.sentinel.path());
    let recipe = fx.recipe(&t, "[limits]\nbase_setuid = \"keep\"\n");
    let (code, err) = build(&fx, &recipe);
    assert_ne!(code, 0, "{err}");
    assert!(!err.contains("would replace a folder"), "{err}");
    assert!(!err.contains("base tarball"), "the unpack refused: {err}");
    assert_eq!(snapshot(fx.sentinel.path()), before);
}

/// A tarball of `kernel_tree()` plus one file under a long name (the tar
/// crate writes GNU long-name entries for it).
fn with_long_name(name: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in kernel_tree() {
        b.append(&header(&e), &e.data[..]).unwrap();
    }
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(1);
    h.set_mtime(1_700_000_000);
    b.append_data(&mut h, name, &b"x"[..]).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn a_name_part_longer_than_the_file_system_allows_is_refused_by_name() {
    let fx = Fixture::new();
    let name = format!("usr/{}", "n".repeat(300));
    refused(
        &fx,
        &with_long_name(&name),
        "",
        &["base tarball", "usr/nnn", "300 bytes", "at most 255"],
    );
}

#[test]
fn a_path_longer_than_the_file_system_allows_is_refused_by_name() {
    let fx = Fixture::new();
    let name = "abcdefgh/".repeat(460) + "f";
    refused(
        &fx,
        &with_long_name(&name),
        "",
        &["base tarball", "abcdefgh/", "at most 4095"],
    );
}

#[test]
fn kernel_linked_to_a_file_in_the_tree() {
    let fx = Fixture::new();
    let mut v: Vec<E> = kernel_tree()
        .into_iter()
        .filter(|e| !e.name.starts_with("boot/vmlinuz"))
        .collect();
    v.push(file("etc/shadow", b"root:secret:::\n"));
    v.push(symlink(&format!("boot/vmlinuz-{KV}"), "/etc/shadow"));
    refused(
        &fx,
        &tar_of(&v),
        "",
        &[&format!("/boot/vmlinuz-{KV}"), "not a regular file"],
    );
}

#[test]
fn kernel_linked_to_a_host_file() {
    let fx = Fixture::new();
    let mut v: Vec<E> = kernel_tree()
        .into_iter()
        .filter(|e| !e.name.starts_with("boot/vmlinuz"))
        .collect();
    v.push(symlink(
        &format!("boot/vmlinuz-{KV}"),
        &format!("{}/shadow", fx.s()),
    ));
    refused(&fx, &tar_of(&v), "", &["vmlinuz", "not a regular file"]);
}

#[test]
fn module_folder_linked_to_a_host_folder_with_a_modules_dep_line() {
    // Pruning would delete SENTINEL/dir/victim.ko through the link.
    let fx = Fixture::new();
    let m = format!("usr/lib/modules/{KV}");
    let v: Vec<E> = kernel_tree()
        .into_iter()
        .filter(|e| !e.name.contains("modules.dep") && !e.name.contains("sound"))
        .chain([
            symlink(&format!("{m}/kernel/evil"), &format!("{}/dir", fx.s())),
            file(&format!("{m}/modules.dep"), b"kernel/evil/victim.ko:\n"),
        ])
        .collect();
    refused(
        &fx,
        &tar_of(&v),
        "",
        &[&format!("/{m}/kernel/evil"), "is a symlink", "module tree"],
    );
}

#[test]
fn whole_module_tree_linked_to_a_host_folder() {
    // depmod -b TREE would write its indexes into SENTINEL/dir.
    let fx = Fixture::new();
    let v: Vec<E> = kernel_tree()
        .into_iter()
        .filter(|e| !e.name.contains(KV) || e.name.starts_with("boot/"))
        .chain([symlink(
            &format!("usr/lib/modules/{KV}"),
            &format!("{}/dir", fx.s()),
        )])
        .collect();
    refused(
        &fx,
        &tar_of(&v),
        "",
        &[&format!("/usr/lib/modules/{KV}"), "no module folder"],
    );
}

#[test]
fn boot_module_linked_to_a_host_file() {
    // The initramfs would carry SENTINEL/file as dm-verity.ko.
    let fx = Fixture::new();
    let m = format!("usr/lib/modules/{KV}");
    let v: Vec<E> = kernel_tree()
        .into_iter()
        .filter(|e| !e.name.contains("modules.dep"))
        .chain([
            dir(&format!("{m}/kernel/drivers/")),
            dir(&format!("{m}/kernel/drivers/md/")),
            symlink(
                &format!("{m}/kernel/drivers/md/dm-verity.ko"),
                &format!("{}/file", fx.s()),
            ),
            file(
                &format!("{m}/modules.dep"),
                b"kernel/drivers/md/dm-verity.ko:\nkernel/sound/x.ko:\n",
            ),
        ])
        .collect();
    refused(&fx, &tar_of(&v), "", &["dm-verity.ko", "is a symlink"]);
}

// ---------- caps ----------

#[test]
fn gzip_bomb_stops_at_the_ratio_cap() {
    let fx = Fixture::new();
    let bomb = zero_bomb(64 << 20);
    assert!(bomb.len() < 1 << 20, "the bomb is {} bytes", bomb.len());
    let t0 = Instant::now();
    refused(
        &fx,
        &bomb,
        "",
        &[
            "base tarball",
            "compression ratio cap",
            "[limits] max_ratio",
        ],
    );
    assert!(t0.elapsed() < Duration::from_secs(60));
}

#[test]
fn file_bigger_than_the_file_cap() {
    let fx = Fixture::new();
    let t = with_kernel(vec![file("big", &vec![7u8; 3 << 20])]);
    refused(
        &fx,
        &t,
        "[limits]\nmax_file_bytes = \"2M\"\n",
        &["file size cap", "[limits] max_file_bytes"],
    );
}

#[test]
fn a_size_field_beyond_the_default_file_cap() {
    // The header alone claims 17 GiB: refused before any data is read.
    let fx = Fixture::new();
    let mut big = file("huge", b"");
    big.size = Some(17 << 30);
    let mut t = tar_of(&kernel_tree());
    t.truncate(t.len() - 1024);
    t.extend_from_slice(header(&big).as_bytes());
    refused(&fx, &t, "", &["file size cap", "max_file_bytes"]);
}

#[test]
fn too_many_entries() {
    let fx = Fixture::new();
    let mut v = kernel_tree();
    for i in 0..300 {
        v.push(file(&format!("etc/f{i}"), b""));
    }
    refused(
        &fx,
        &gzip(&tar_of(&v)),
        "[limits]\nmax_entries = 200\n",
        &["200-entry cap", "[limits] max_entries"],
    );
}

#[test]
fn total_bytes_cap() {
    let fx = Fixture::new();
    let t = with_kernel(vec![
        file("a", &vec![1u8; 700 << 10]),
        file("b", &vec![2u8; 700 << 10]),
    ]);
    refused(
        &fx,
        &t,
        "[limits]\nmax_bytes = \"1M\"\n",
        &["total size cap", "[limits] max_bytes"],
    );
}

#[test]
fn a_limit_set_to_zero_is_a_recipe_error() {
    let fx = Fixture::new();
    let recipe = fx.recipe(&tar_of(&kernel_tree()), "[limits]\nmax_entries = 0\n");
    let (code, err) = build(&fx, &recipe);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("r.toml:") && err.contains("max_entries must be at least 1"),
        "{err}"
    );
}

// ---------- image archives and layers ----------

fn sha(b: &[u8]) -> Sha256 {
    Sha256::of_bytes(b)
}
fn oci_d(d: &Sha256) -> String {
    format!("sha256:{}", d.hex())
}

/// An OCI layout archive of one layer blob (plain tar or gzip; `plain` is
/// its uncompressed tar) and its manifest digest.
fn oci_archive(blob: &[u8], plain: &[u8], gz: bool) -> (Vec<u8>, Sha256) {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [oci_d(&sha(plain))]},
    }))
    .unwrap();
    let mt = if gz {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    } else {
        "application/vnd.oci.image.layer.v1.tar"
    };
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": oci_d(&sha(&config)), "size": config.len()},
        "layers": [{"mediaType": mt, "digest": oci_d(&sha(blob)), "size": blob.len()}],
    }))
    .unwrap();
    let md = sha(&manifest);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": oci_d(&md), "size": manifest.len()}],
    }))
    .unwrap();
    let members: Vec<(String, Vec<u8>)> = vec![
        (
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".into(), index),
        (format!("blobs/sha256/{}", sha(&config).hex()), config),
        (format!("blobs/sha256/{}", md.hex()), manifest),
        (format!("blobs/sha256/{}", sha(blob).hex()), blob.to_vec()),
    ];
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in &members {
        let mut h = Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(EntryType::Regular);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    (b.into_inner().unwrap(), md)
}

fn image_recipe(fx: &Fixture, archive: &[u8], digest: &Sha256, extra: &str) -> String {
    std::fs::write(fx.dir.path().join("img.tar"), archive).unwrap();
    format!(
        "{extra}\n[[images]]\nname = \"app\"\narchive = \"img.tar\"\ndigest = \"sha256:{}\"\n",
        digest.hex()
    )
}

#[test]
fn layer_with_a_device_node() {
    let fx = Fixture::new();
    let layer = tar_of(&[dir("dev/"), special("dev/kmem", EntryType::Char)]);
    let (a, md) = oci_archive(&layer, &layer, false);
    let extra = image_recipe(&fx, &a, &md, "");
    refused(
        &fx,
        &tar_of(&kernel_tree()),
        &extra,
        &["image app", "\"dev/kmem\"", "character device"],
    );
}

#[test]
fn layer_with_a_symlink_climbing_out() {
    let fx = Fixture::new();
    let layer = tar_of(&[symlink("up", &format!("../../..{}", fx.s()))]);
    let (a, md) = oci_archive(&layer, &layer, false);
    let extra = image_recipe(&fx, &a, &md, "");
    refused(
        &fx,
        &tar_of(&kernel_tree()),
        &extra,
        &["image app", "\"up\"", "escapes the image root"],
    );
}

#[test]
fn layer_gzip_bomb() {
    let fx = Fixture::new();
    let bomb = zero_bomb(64 << 20);
    // The diff_id is never reached: the cap stops the scan first.
    let (a, md) = oci_archive(&bomb, b"unused", true);
    let extra = image_recipe(&fx, &a, &md, "");
    refused(
        &fx,
        &tar_of(&kernel_tree()),
        &extra,
        &["image app", "compression ratio cap", "max_ratio"],
    );
}

#[test]
fn archive_gzip_bomb() {
    // The archive itself is a gzip whose member inflates far past the ratio.
    let fx = Fixture::new();
    let bomb = zero_bomb(64 << 20);
    let extra = image_recipe(&fx, &bomb, &sha(b"any"), "");
    refused(
        &fx,
        &tar_of(&kernel_tree()),
        &extra,
        &["image app", "the archive", "compression ratio cap"],
    );
}

#[test]
fn layer_that_cannot_fit_the_state_partition() {
    let fx = Fixture::new();
    let layer = tar_of(&[file("blob", &vec![3u8; 3 << 20])]);
    let (a, md) = oci_archive(&layer, &layer, false);
    let extra = image_recipe(
        &fx,
        &a,
        &md,
        "[disk]\nsize = \"128M\"\nstate_size = \"2M\"\n",
    );
    refused(
        &fx,
        &tar_of(&kernel_tree()),
        &extra,
        &["image app", "state partition", "state_size"],
    );
}

#[test]
fn archive_with_too_many_members() {
    let fx = Fixture::new();
    let mut v = Vec::new();
    for i in 0..50 {
        v.push(file(&format!("m{i}"), b""));
    }
    let extra = image_recipe(
        &fx,
        &tar_of(&v),
        &sha(b"any"),
        "[limits]\nmax_entries = 40\n",
    );
    refused(
        &fx,
        &tar_of(&kernel_tree()),
        &extra,
        &["image app", "40-entry cap", "max_entries"],
    );
}

// ---------- interrupted builds ----------

/// Processes whose parent chain reaches `root` (root excluded).
fn descendants_of(root: u32) -> Vec<u32> {
    let mut parent: Vec<(u32, u32)> = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            if let Some((_, rest)) = stat.rsplit_once(')') {
                if let Some(pp) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
                    parent.push((pid, pp));
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for (c, pp) in &parent {
            if *pp == p && !out.contains(c) {
                out.push(*c);
                todo.push(*c);
            }
        }
    }
    out
}

/// Processes (any parent) whose command line mentions `marker`.
fn processes_mentioning(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(c) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&c).contains(marker) {
                out.push(pid);
            }
        }
    }
    out
}

/// Starts a build, waits until `ready` says the moment has come (the
/// staging folder exists and the stage is under way), sends `sig`, and
/// checks: the build ends by itself with 128 + sig, no staging folder,
/// nothing under -o, no process it started still running.
fn interrupt_build(
    fx: &Fixture,
    recipe: &Path,
    path: Option<&Path>,
    sig: i32,
    ready: impl Fn(&Path) -> bool,
    marker: &str,
) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.args(["build"])
        .arg(recipe)
        .arg("-o")
        .arg(fx.out())
        .current_dir(fx.dir.path())
        .env("CAIRN_CACHE", fx.dir.path().join("cache"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(p) = path {
        let old = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{old}", p.display()));
    }
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("the build ended ({st}) before the signal:\n{err}");
        }
        if ready(&fx.out()) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the build never reached the stage to interrupt"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let kids_before = descendants_of(pid);
    // SAFETY: kill(2) on our own child's pid; no memory is touched.
    unsafe {
        libc::kill(pid as i32, sig);
    }
    let t1 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(30),
            "the build did not stop within 30 s of the signal"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(128 + sig), "stderr:\n{err}");
    assert_eq!(err.matches("interrupted by").count(), 1, "{err}");
    let left: Vec<_> = std::fs::read_dir(fx.out())
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "-o holds {left:?} after the signal");
    // Give killed children a moment to be reaped by init.
    std::thread::sleep(Duration::from_millis(300));
    for k in kids_before {
        assert!(
            !Path::new(&format!("/proc/{k}")).exists()
                || std::fs::read_to_string(format!("/proc/{k}/stat"))
                    .map(|s| s.contains(") Z "))
                    .unwrap_or(true),
            "child {k} of the build survived the signal"
        );
    }
    let survivors = processes_mentioning(marker);
    assert!(
        survivors.is_empty(),
        "processes still running: {survivors:?}"
    );
}

fn staging_has(out: &Path, rel: &str) -> bool {
    std::fs::read_dir(out)
        .map(|r| r.flatten().any(|e| e.path().join(rel).exists()))
        .unwrap_or(false)
}

/// A big, slow-to-unpack base tarball: many 1 MiB files of noise (gzip
/// cannot shrink them, so the ratio cap stays out of the way).
fn big_tarball() -> Vec<u8> {
    let mut v = kernel_tree();
    let mut x: u32 = 12345;
    let mut noise = vec![0u8; 1 << 20];
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    v.push(dir("data/"));
    for i in 0..200 {
        v.push(file(&format!("data/f{i}"), &noise));
    }
    tar_of(&v)
}

#[test]
fn sigint_and_sigterm_during_compose_leave_nothing() {
    let t = big_tarball();
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let fx = Fixture::new();
        let recipe = fx.recipe(&t, "");
        interrupt_build(
            &fx,
            &recipe,
            None,
            sig,
            |out| staging_has(out, "work/root/data/f5"),
            &fx.dir.path().display().to_string(),
        );
    }
}

#[test]
fn sigint_and_sigterm_during_an_archive_copy_leave_nothing() {
    // One image archive with a big layer: the signal comes while its
    // members are copied into the staging folder.
    let mut x: u32 = 999;
    let mut noise = vec![0u8; 1 << 20];
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let mut files = Vec::new();
    for i in 0..200 {
        files.push(file(&format!("f{i}"), &noise));
    }
    let layer = tar_of(&files);
    let (archive, md) = oci_archive(&layer, &layer, false);
    drop(layer);
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let fx = Fixture::new();
        let extra = image_recipe(&fx, &archive, &md, "");
        let recipe = fx.recipe(&tar_of(&kernel_tree()), &extra);
        interrupt_build(
            &fx,
            &recipe,
            None,
            sig,
            |out| {
                std::fs::read_dir(out)
                    .ok()
                    .and_then(|r| r.flatten().next())
                    .map(|st| {
                        std::fs::read_dir(st.path().join("work"))
                            .map(|w| {
                                w.flatten().any(|e| {
                                    e.file_name().to_string_lossy().starts_with(".cairn-oci-")
                                        && std::fs::read_dir(e.path())
                                            .map(|m| {
                                                m.flatten().any(|f| {
                                                    f.metadata()
                                                        .map(|m| m.len() > 20 << 20)
                                                        .unwrap_or(false)
                                                })
                                            })
                                            .unwrap_or(false)
                                })
                            })
                            .unwrap_or(false)
                    })
                    .unwrap_or(false)
            },
            &fx.dir.path().display().to_string(),
        );
    }
}

#[test]
fn sigterm_stops_a_running_tool_and_its_children() {
    // depmod (a host tool, run after compose) is replaced on PATH by a
    // script that starts a long sleep and waits: the signal must stop both.
    let t = tar_of(&kernel_tree());
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let fx = Fixture::new();
        let bin = fx.dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let marker = fx.dir.path().join("depmod-started");
        let script = format!(
            // `sleep` takes no extra word: the folder rides in a shell's
            // arguments, so a survivor is found by it.
            "#!/bin/sh\ntouch {}\nsh -c 'sleep 1000; : \"$0\"' {} &\nwait\n",
            marker.display(),
            fx.dir.path().display()
        );
        std::fs::write(bin.join("depmod"), script).unwrap();
        std::os::unix::fs::PermissionsExt::set_mode(
            &mut std::fs::metadata(bin.join("depmod")).unwrap().permissions(),
            0o755,
        );
        std::fs::set_permissions(
            bin.join("depmod"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let recipe = fx.recipe(&t, "");
        let m = marker.clone();
        interrupt_build(
            &fx,
            &recipe,
            Some(&bin),
            sig,
            move |_| m.exists(),
            &fx.dir.path().display().to_string(),
        );
    }
}

// ---------- `cairn cache import` of a hostile archive ----------

/// Runs `cairn cache import ARCHIVE` with the fixture's cache.
fn cache_import(fx: &Fixture, archive: &[u8]) -> (i32, String) {
    let p = fx.dir.path().join("carry.tar");
    std::fs::write(&p, archive).unwrap();
    cairn(fx, &["cache".as_ref(), "import".as_ref(), p.as_os_str()])
}

/// A cache export is hostile input: a member climbing out with `..`, a
/// member that is a symlink to a host file, are refused with exit 2 and
/// their names; nothing is written outside the cache nor into it.
/// Control: the same archive with a plain member is imported (exit 0).
#[test]
fn cache_import_refuses_dotdot_and_symlink_members() {
    let good = b"a blob".as_slice();
    let hex = sha(good).hex();
    let member = format!("sha256/{}/{hex}", &hex[..2]);
    let digests = format!("{hex}\n");
    let fx = Fixture::new();
    let shadow = format!("{}/shadow", fx.s());
    let cases: Vec<(&str, Vec<E>)> = vec![
        (
            "climbs out",
            vec![
                file("DIGESTS", digests.as_bytes()),
                file(&format!("../../{hex}"), good),
            ],
        ),
        (
            "not a regular file",
            vec![
                file("DIGESTS", digests.as_bytes()),
                symlink(&member, &shadow),
            ],
        ),
    ];
    for (want, members) in cases {
        let before = snapshot(fx.sentinel.path());
        let (code, err) = cache_import(&fx, &tar_of(&members));
        assert_eq!(code, 2, "{want}: want exit 2, stderr:\n{err}");
        let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or("");
        assert!(line.contains(want), "want {want:?} in: {err}");
        assert_eq!(
            snapshot(fx.sentinel.path()),
            before,
            "{want}: sentinel changed"
        );
        assert!(
            !fx.dir.path().join(&hex).exists() && !Path::new("/tmp").join(&hex).exists(),
            "{want}: a file was written outside the cache"
        );
        let blobs: Vec<_> = walkdir::WalkDir::new(fx.dir.path().join("cache"))
            .into_iter()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy() == hex)
            .collect();
        assert!(blobs.is_empty(), "{want}: imported {blobs:?}");
    }
    // Control: a faithful export is taken.
    let (code, err) = cache_import(
        &fx,
        &tar_of(&[file("DIGESTS", digests.as_bytes()), file(&member, good)]),
    );
    assert_eq!(code, 0, "{err}");
}
