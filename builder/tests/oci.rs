//! OCI archives and layers: hostile layers refused (each with its own
//! message, nothing written outside the staging folder), whiteouts, docker
//! save conversion, digest and pin checks, and a reproducible build from
//! Debian packages (runs mmdebstrap twice; needs the Debian mirror).

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cairn::host::digest::Sha256;
use cairn::pipeline::oci::{self, LayerPolicy, OciError, Refusal};
use tar::{EntryType, Header};

// ---------- fixtures, built programmatically ----------

struct E<'a> {
    name: &'a str,
    kind: EntryType,
    mode: u32,
    link: &'a str,
    data: &'a [u8],
}

fn file<'a>(name: &'a str, data: &'a [u8]) -> E<'a> {
    E {
        name,
        kind: EntryType::Regular,
        mode: 0o644,
        link: "",
        data,
    }
}
fn dir(name: &str) -> E<'_> {
    E {
        name,
        kind: EntryType::Directory,
        mode: 0o755,
        link: "",
        data: b"",
    }
}
fn symlink<'a>(name: &'a str, target: &'a str) -> E<'a> {
    E {
        name,
        kind: EntryType::Symlink,
        mode: 0o777,
        link: target,
        data: b"",
    }
}
fn hardlink<'a>(name: &'a str, target: &'a str) -> E<'a> {
    E {
        name,
        kind: EntryType::Link,
        mode: 0o644,
        link: target,
        data: b"",
    }
}
fn special(name: &str, kind: EntryType) -> E<'_> {
    E {
        name,
        kind,
        mode: 0o644,
        link: "",
        data: b"",
    }
}

/// A tar with raw names (the tar crate's own path setters refuse `..` and
/// absolute names, which is the point of these fixtures).
fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = Header::new_gnu();
        {
            let g = h.as_gnu_mut().unwrap();
            g.name[..e.name.len()].copy_from_slice(e.name.as_bytes());
            g.linkname[..e.link.len()].copy_from_slice(e.link.as_bytes());
        }
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_size(e.data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append(&h, e.data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    w.write_all(b).unwrap();
    w.finish().unwrap()
}

fn sha(b: &[u8]) -> Sha256 {
    Sha256::of_bytes(b)
}

fn oci_d(d: &Sha256) -> String {
    format!("sha256:{}", d.hex())
}

fn config_json(diff_ids: &[Sha256], arch: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids.iter().map(oci_d).collect::<Vec<_>>()},
    }))
    .unwrap()
}

/// (blob, media type, uncompressed tar) per layer.
struct L {
    blob: Vec<u8>,
    mt: &'static str,
    plain: Vec<u8>,
}

fn plain(t: Vec<u8>) -> L {
    L {
        blob: t.clone(),
        mt: "application/vnd.oci.image.layer.v1.tar",
        plain: t,
    }
}
fn gz(t: Vec<u8>) -> L {
    L {
        blob: gzip(&t),
        mt: "application/vnd.oci.image.layer.v1.tar+gzip",
        plain: t,
    }
}

/// Archive members (name, bytes) as a tar.
fn archive_tar(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(EntryType::Regular);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// An OCI layout: members and the manifest digest.
fn oci_members(layers: &[L], arch: &str) -> (Vec<(String, Vec<u8>)>, Sha256) {
    let diff_ids: Vec<Sha256> = layers.iter().map(|l| sha(&l.plain)).collect();
    let config = config_json(&diff_ids, arch);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": oci_d(&sha(&config)), "size": config.len()},
        "layers": layers.iter().map(|l| serde_json::json!({"mediaType": l.mt, "digest": oci_d(&sha(&l.blob)), "size": l.blob.len()})).collect::<Vec<_>>(),
    }))
    .unwrap();
    let md = sha(&manifest);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": oci_d(&md), "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": "test:1"}}],
    }))
    .unwrap();
    let mut m = vec![
        (
            "oci-layout".to_string(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".to_string(), index),
        (format!("blobs/sha256/{}", sha(&config).hex()), config),
        (format!("blobs/sha256/{}", md.hex()), manifest),
    ];
    for l in layers {
        m.push((
            format!("blobs/sha256/{}", sha(&l.blob).hex()),
            l.blob.clone(),
        ));
    }
    (m, md)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn refusal(e: &OciError) -> &Refusal {
    match e {
        OciError::LayerRefused { refusal, .. } => refusal,
        other => panic!("expected a layer refusal, got: {other}"),
    }
}

/// staging folder and an empty sentinel sibling
fn stage() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let stage = d.path().join("stage");
    let sentinel = d.path().join("sentinel");
    std::fs::create_dir_all(&stage).unwrap();
    std::fs::create_dir_all(&sentinel).unwrap();
    (d, stage, sentinel)
}

fn assert_empty(p: &Path) {
    let n = std::fs::read_dir(p).unwrap().count();
    assert_eq!(n, 0, "{} must stay empty", p.display());
}

// ---------- hostile layers ----------

#[test]
fn hostile_layers_are_refused_each_with_its_own_message() {
    let strict = LayerPolicy::default();
    let (_d, stage_dir, sentinel) = stage();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            tar_of(&[file("ok", b"1"), file("../x", b"pwned")]),
            r#"entry "../x" climbs out of the image root with "..""#,
        ),
        (
            "absolute",
            tar_of(&[file("/etc/x", b"pwned")]),
            r#"entry "/etc/x" is an absolute path"#,
        ),
        (
            "escaping symlink",
            tar_of(&[
                symlink("a", "../../../../etc"),
                file("a/passwd", b"root::0:0::/:/bin/sh\n"),
            ]),
            r#"symlink "a" -> "../../../../etc" escapes the image root"#,
        ),
        (
            "symlink to the sentinel",
            tar_of(&[symlink("s", "../sentinel"), file("s/pwned", b"x")]),
            r#"symlink "s" -> "../sentinel" escapes the image root"#,
        ),
        (
            "hardlink outside",
            tar_of(&[hardlink("h", "../outside")]),
            r#"hardlink "h" -> "../outside" points outside the layer's tree"#,
        ),
        (
            "hardlink absolute",
            tar_of(&[hardlink("h", "/etc/shadow")]),
            r#"hardlink "h" -> "/etc/shadow" points outside the layer's tree"#,
        ),
        (
            "hardlink to nothing in the layer",
            tar_of(&[hardlink("h", "etc/shadow")]),
            r#"hardlink "h" -> "etc/shadow" names no regular file earlier in this layer"#,
        ),
        (
            "char device",
            tar_of(&[special("dev/mem", EntryType::Char)]),
            r#"entry "dev/mem" is a character device"#,
        ),
        (
            "block device",
            tar_of(&[special("dev/sda", EntryType::Block)]),
            r#"entry "dev/sda" is a block device"#,
        ),
        (
            "fifo",
            tar_of(&[special("run/p", EntryType::Fifo)]),
            r#"entry "run/p" is a fifo"#,
        ),
        (
            "setuid",
            tar_of(&[E {
                mode: 0o4755,
                ..file("usr/bin/evil", b"\x7fELF")
            }]),
            r#"file "usr/bin/evil" is set-uid/set-gid (mode 4755)"#,
        ),
        (
            "setgid",
            tar_of(&[E {
                mode: 0o2755,
                ..file("usr/bin/evil2", b"\x7fELF")
            }]),
            r#"file "usr/bin/evil2" is set-uid/set-gid (mode 2755)"#,
        ),
    ];
    let mut messages = HashSet::new();
    for (label, t, want) in &cases {
        for (blob, how) in [(t.clone(), "plain"), (gzip(t), "gzip")] {
            let err = oci::check_layer(&blob[..], &strict).unwrap_err();
            let msg = err.to_string();
            eprintln!("{label} ({how}): {msg}");
            assert!(msg.contains(want), "{label}: {msg}");
            // Named by the blob's digest.
            assert!(
                msg.starts_with(&format!("layer {}: ", oci_d(&sha(&blob)))),
                "{label}: {msg}"
            );
            let _ = refusal(&err);
            if how == "plain" {
                messages.insert(
                    msg.split_once(": ")
                        .map(|x| x.1.to_string())
                        .unwrap_or_default(),
                );
            }

            // Unpacking refuses the same entry and writes nothing outside.
            let err = oci::unpack_layer(&blob[..], &stage_dir, &strict).unwrap_err();
            assert!(format!("{err:#}").contains(want), "{label}: {err:#}");
            assert_empty(&sentinel);
            assert!(!stage_dir.parent().unwrap().join("x").exists());
            assert!(!stage_dir.parent().unwrap().join("outside").exists());
        }
    }
    // Every case has its own message.
    let texts: HashSet<String> = cases.iter().map(|c| c.2.to_string()).collect();
    assert_eq!(texts.len(), cases.len());
    assert_eq!(messages.len(), cases.len());

    // Controls: set-uid allowed by policy, set-gid folders, in-image
    // absolute links and links that stay inside are fine.
    let setuid = tar_of(&[E {
        mode: 0o4755,
        ..file("usr/bin/ping", b"\x7fELF")
    }]);
    let s = oci::check_layer(&setuid[..], &LayerPolicy { allow_setuid: true }).unwrap();
    assert_eq!(s.files, 1);
    assert_eq!(s.digest, sha(&setuid));
    let fine = tar_of(&[
        dir("var/"),
        E {
            mode: 0o2775,
            ..dir("var/mail/")
        },
        symlink("bin", "usr/bin"),
        symlink("etc/alternatives/awk", "/usr/bin/mawk"),
        symlink("usr/lib/x/y", "../../share/z"),
        file("usr/bin/perl", b"p"),
        hardlink("usr/bin/perl5", "usr/bin/perl"),
    ]);
    let s = oci::check_layer(&gzip(&fine)[..], &strict).unwrap();
    assert_eq!(s.diff_id, sha(&fine));
    assert_eq!(s.compression, oci::Compression::Gzip);
    assert_eq!((s.files, s.dirs, s.symlinks, s.hardlinks), (1, 2, 3, 1));
}

#[test]
fn capabilities_and_pax_names_are_checked() {
    // A pax header naming the entry "../../x" overrides the harmless name.
    let mut b = tar::Builder::new(Vec::new());
    let rec = |k: &str, v: &str| {
        let body = format!(" {k}={v}\n");
        let mut n = body.len() + 1;
        while n != body.len() + n.to_string().len() {
            n = body.len() + n.to_string().len();
        }
        format!("{n}{body}")
    };
    for (records, name) in [
        (rec("path", "../../x"), "harmless"),
        (
            rec("SCHILY.xattr.security.capability", "\x01"),
            "usr/bin/cap",
        ),
    ] {
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::XHeader);
        h.set_size(records.len() as u64);
        h.set_path("PaxHeaders/x").unwrap();
        h.set_cksum();
        b.append(&h, records.as_bytes()).unwrap();
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::Regular);
        h.set_size(1);
        h.set_mode(0o755);
        h.set_path(name).unwrap();
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let t = std::mem::replace(&mut b, tar::Builder::new(Vec::new()))
            .into_inner()
            .unwrap();
        let err = oci::check_layer(&t[..], &LayerPolicy::default()).unwrap_err();
        eprintln!("{err}");
        match refusal(&err) {
            Refusal::DotDot { path } => assert_eq!(path, "../../x"),
            Refusal::Capabilities { path } => assert_eq!(path, "usr/bin/cap"),
            r => panic!("unexpected {r}"),
        }
    }
}

#[test]
fn garbage_and_truncated_layers_are_errors_not_panics() {
    let good = tar_of(&[file("a", &[7u8; 3000]), file("b", b"x")]);
    for cut in [1usize, 100, 511, 512, 700, 2000, good.len() - 1] {
        let _ = oci::check_layer(&good[..cut], &LayerPolicy::default());
    }
    let gz = gzip(&good);
    for cut in [1usize, 10, gz.len() / 2, gz.len() - 1] {
        assert!(oci::check_layer(&gz[..cut], &LayerPolicy::default()).is_err());
    }
    let mut x: u32 = 12345;
    for _ in 0..300 {
        let mut g = good.clone();
        for _ in 0..4 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let i = x as usize % g.len();
            g[i] ^= (x >> 8) as u8 | 1;
        }
        let _ = oci::check_layer(&g[..], &LayerPolicy::default());
        let _ = oci::check_layer(&gzip(&g)[..], &LayerPolicy::default());
    }
    let zstd = [0x28u8, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0];
    let e = oci::check_layer(&zstd[..], &LayerPolicy::default()).unwrap_err();
    assert!(matches!(e, OciError::UnsupportedCompression { .. }), "{e}");
}

// ---------- archives ----------

#[test]
fn good_oci_archive_loads_and_a_flipped_byte_fails() {
    let d = tempfile::tempdir().unwrap();
    let layers = vec![
        gz(tar_of(&[dir("etc/"), file("etc/os-release", b"ID=test\n")])),
        plain(tar_of(&[file("app", b"#!/bin/sh\n")])),
    ];
    let (members, md) = oci_members(&layers, "amd64");
    let good = write(d.path(), "good.tar", &archive_tar(&members));
    let img = oci::load_archive(&good, &md).unwrap();
    assert_eq!(img.manifest_digest, md);
    assert_eq!(img.format, oci::ArchiveFormat::OciLayout);
    assert_eq!(img.layers.len(), 2);
    assert_eq!(img.ref_names, vec!["test:1".to_string()]);
    assert_eq!(img.layers[0].summary.compression, oci::Compression::Gzip);
    // A gzip-compressed archive file loads too.
    let gzipped = write(d.path(), "good.tar.gz", &gzip(&archive_tar(&members)));
    oci::load_archive(&gzipped, &md).unwrap();

    // Wrong pin: names both digests.
    let wrong = sha(b"not the manifest");
    let e = oci::load_archive(&good, &wrong).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, OciError::PinMismatch { .. }), "{msg}");
    assert!(
        msg.contains(&oci_d(&wrong)) && msg.contains(&oci_d(&md)),
        "{msg}"
    );

    // One flipped byte in each layer blob (gzip and plain).
    for (i, l) in layers.iter().enumerate() {
        let name = format!("blobs/sha256/{}", sha(&l.blob).hex());
        let mut m = members.clone();
        let pos = m.iter().position(|(n, _)| *n == name).unwrap();
        let mid = m[pos].1.len() / 2;
        m[pos].1[mid] ^= 0x01;
        let p = write(d.path(), &format!("flip{i}.tar"), &archive_tar(&m));
        let e = oci::load_archive(&p, &md).unwrap_err();
        eprintln!("flipped byte in layer {i}: {e}");
        assert!(matches!(e, OciError::DigestMismatch { .. }), "{e}");
        assert!(e.to_string().contains(&oci_d(&sha(&l.blob))), "{e}");
    }

    // Round trip through write_oci_archive: same manifest digest, and the
    // written archive is byte-identical when written twice.
    let a = d.path().join("a.tar");
    let b = d.path().join("b.tar");
    let da = oci::write_oci_archive(&img, "example.org/test:1", 1_700_000_000, &a).unwrap();
    let db = oci::write_oci_archive(&img, "example.org/test:1", 1_700_000_000, &b).unwrap();
    assert_eq!(da, db);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let again = oci::load_archive(&a, &md).unwrap();
    assert_eq!(again.ref_names, vec!["example.org/test:1".to_string()]);
    assert_eq!(again.config, img.config);
}

#[test]
fn hostile_archives_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let layers = vec![plain(tar_of(&[file("a", b"1")]))];
    let (members, md) = oci_members(&layers, "amd64");

    // Member names with `..` or absolute, written raw.
    for bad in ["../index.json", "/blobs/x"] {
        let mut t = tar_of(&[file(bad, b"{}")]);
        t.truncate(t.len() - 1024); // drop the end blocks, append the rest
        t.extend_from_slice(&archive_tar(&members));
        let p = write(d.path(), "bad.tar", &t);
        let e = oci::load_archive(&p, &md).unwrap_err();
        assert!(matches!(e, OciError::UnsafeEntry { .. }), "{e}");
        eprintln!("{e}");
    }

    // A symlinked blob file.
    let blob_name = format!("blobs/sha256/{}", sha(&layers[0].blob).hex());
    let mut t = tar_of(&[symlink(&blob_name, "/etc/shadow")]);
    t.truncate(t.len() - 1024);
    let rest: Vec<(String, Vec<u8>)> = members
        .iter()
        .filter(|(n, _)| *n != blob_name)
        .cloned()
        .collect();
    t.extend_from_slice(&archive_tar(&rest));
    let p = write(d.path(), "symlinked.tar", &t);
    let e = oci::load_archive(&p, &md).unwrap_err();
    assert!(e.to_string().contains("is a symlink"), "{e}");

    // A hardlinked one.
    let mut t = tar_of(&[file("x", b"1"), hardlink(&blob_name, "x")]);
    t.truncate(t.len() - 1024);
    t.extend_from_slice(&archive_tar(&rest));
    let p = write(d.path(), "hardlinked.tar", &t);
    let e = oci::load_archive(&p, &md).unwrap_err();
    assert!(e.to_string().contains("is a hardlink"), "{e}");

    // Oversized index.json.
    let mut m = members.clone();
    let i = m.iter().position(|(n, _)| n == "index.json").unwrap();
    let mut big = m[i].1.clone();
    big.pop();
    big.extend(std::iter::repeat(b' ').take(5 << 20));
    big.push(b'}');
    m[i].1 = big;
    let p = write(d.path(), "big.tar", &archive_tar(&m));
    let e = oci::load_archive(&p, &md).unwrap_err();
    assert!(matches!(e, OciError::TooLarge { .. }), "{e}");

    // Unsupported layer media type.
    let zl = L {
        mt: "application/vnd.oci.image.layer.v1.tar+zstd",
        ..plain(tar_of(&[file("a", b"1")]))
    };
    let (m, zmd) = oci_members(&[zl], "amd64");
    let p = write(d.path(), "zstd.tar", &archive_tar(&m));
    let e = oci::load_archive(&p, &zmd).unwrap_err();
    assert!(matches!(e, OciError::UnsupportedMediaType { .. }), "{e}");

    // Only linux/amd64.
    let (m, amd) = oci_members(&layers, "arm64");
    let p = write(d.path(), "arm.tar", &archive_tar(&m));
    let e = oci::load_archive(&p, &amd).unwrap_err();
    assert!(matches!(e, OciError::Platform { .. }), "{e}");

    // A hostile layer inside an archive whose digests are all right.
    let evil = vec![gz(tar_of(&[
        symlink("a", "../../../../etc"),
        file("a/passwd", b"x"),
    ]))];
    let (m, emd) = oci_members(&evil, "amd64");
    let p = write(d.path(), "evil.tar", &archive_tar(&m));
    let e = oci::load_archive(&p, &emd).unwrap_err();
    assert!(matches!(refusal(&e), Refusal::SymlinkEscapes { .. }), "{e}");

    // diff_id in the config that does not match the layer.
    let mut layers2 = vec![plain(tar_of(&[file("a", b"1")]))];
    layers2[0].plain = tar_of(&[file("a", b"2")]);
    let (m, dmd) = oci_members(&layers2, "amd64");
    let p = write(d.path(), "diffid.tar", &archive_tar(&m));
    let e = oci::load_archive(&p, &dmd).unwrap_err();
    assert!(e.to_string().contains("diff_ids"), "{e}");

    // Garbage and truncations: errors, never panics.
    let good = archive_tar(&members);
    for cut in [0usize, 10, 512, 1000, good.len() / 2, good.len() - 1100] {
        let p = write(d.path(), "cut.tar", &good[..cut]);
        assert!(oci::load_archive(&p, &md).is_err());
    }
}

#[test]
fn docker_save_archives_convert_deterministically() {
    let d = tempfile::tempdir().unwrap();
    let l1 = tar_of(&[dir("bin/"), file("bin/sh", b"sh")]);
    let l2 = tar_of(&[file("etc/motd", b"hi")]);
    let config = config_json(&[sha(&l1), sha(&l2)], "amd64");
    let cfg_name = format!("{}.json", sha(&config).hex());
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": cfg_name, "RepoTags": ["runtime:1"],
        "Layers": ["aaaa/layer.tar", "bbbb/layer.tar"],
    }]))
    .unwrap();
    let members = vec![
        ("aaaa/VERSION".to_string(), b"1.0".to_vec()),
        ("aaaa/layer.tar".to_string(), l1.clone()),
        ("bbbb/layer.tar".to_string(), l2.clone()),
        (cfg_name.clone(), config.clone()),
        ("manifest.json".to_string(), manifest),
        ("repositories".to_string(), b"{}".to_vec()),
    ];
    let p = write(d.path(), "docker.tar", &archive_tar(&members));
    // The manifest digest is learnt from the pin error (trust on first use).
    let e = oci::load_archive(&p, &sha(b"x")).unwrap_err();
    let actual = match &e {
        OciError::PinMismatch { actual, .. } => actual[0],
        other => panic!("{other}"),
    };
    let img = oci::load_archive(&p, &actual).unwrap();
    assert_eq!(img.format, oci::ArchiveFormat::DockerSave);
    assert_eq!(img.ref_names, vec!["runtime:1".to_string()]);
    assert_eq!(img.config_digest, sha(&config));
    assert_eq!(img.layers[0].summary.digest, sha(&l1));
    // Same conversion again, from a copy elsewhere.
    let p2 = write(d.path(), "docker-copy.tar", &archive_tar(&members));
    assert_eq!(
        oci::load_archive(&p2, &actual).unwrap().manifest,
        img.manifest
    );
    // Converted to an OCI archive, the pin still holds.
    let out = d.path().join("oci.tar");
    oci::write_oci_archive(&img, "runtime:1", 0, &out).unwrap();
    let back = oci::load_archive(&out, &actual).unwrap();
    assert_eq!(back.format, oci::ArchiveFormat::OciLayout);
    let (_t, stage_dir, sentinel) = stage();
    oci::unpack_layers(&back, &stage_dir, &Default::default()).unwrap();
    assert_eq!(std::fs::read(stage_dir.join("etc/motd")).unwrap(), b"hi");
    assert_empty(&sentinel);

    // A corrupted docker layer fails the config's diff_id.
    let mut bad = members.clone();
    bad[1].1[600] ^= 1;
    let p = write(d.path(), "docker-bad.tar", &archive_tar(&bad));
    let e = oci::load_archive(&p, &actual).unwrap_err();
    eprintln!("{e}");
    assert!(
        matches!(
            e,
            OciError::PinMismatch { .. } | OciError::DigestMismatch { .. }
        ),
        "{e}"
    );
    // The config named by digest must match it.
    let mut bad = members.clone();
    bad[3].1.push(b' ');
    let p = write(d.path(), "docker-badcfg.tar", &archive_tar(&bad));
    let e = oci::load_archive(&p, &actual).unwrap_err();
    assert!(matches!(e, OciError::DigestMismatch { .. }), "{e}");
}

// ---------- flattening ----------

#[test]
fn whiteouts_and_planted_symlinks() {
    let d = tempfile::tempdir().unwrap();
    let (_t, stage_dir, sentinel) = stage();
    let sentinel_abs = sentinel.to_str().unwrap().to_string();
    let lower = tar_of(&[
        dir("d/"),
        file("d/a", b"a"),
        file("d/b", b"b"),
        file("keep", b"k"),
        file("gone", b"g"),
        dir("o/"),
        file("o/x", b"x"),
        dir("o/sub/"),
        file("o/sub/y", b"y"),
        // An in-image absolute link naming the host path of the sentinel:
        // allowed, and must resolve inside the image.
        symlink("evil", &sentinel_abs),
        symlink("up", "usr/.."),
    ]);
    let upper = tar_of(&[
        file(".wh.gone", b""),
        file("d/.wh.a", b""),
        file("o/new", b"n"),
        dir("o/sub/"),
        file("o/sub/z", b"z"),
        file("o/.wh..wh..opq", b""),
        file("evil/pwned", b"x"),
        file("up/also", b"x"),
    ]);
    let (m, md) = oci_members(&[gz(lower), plain(upper)], "amd64");
    let p = write(d.path(), "wh.tar", &archive_tar(&m));
    let img = oci::load_archive(&p, &md).unwrap();
    assert_eq!(img.layers[1].summary.whiteouts, 3);
    oci::unpack_layers(&img, &stage_dir, &Default::default()).unwrap();
    let s = |p: &str| stage_dir.join(p);
    assert!(!s("gone").exists());
    assert!(!s("d/a").exists());
    assert_eq!(std::fs::read(s("d/b")).unwrap(), b"b");
    assert_eq!(std::fs::read(s("keep")).unwrap(), b"k");
    assert!(!s("o/x").exists(), "opaque folder keeps a lower entry");
    assert!(!s("o/sub/y").exists(), "opaque folder keeps a lower entry");
    assert_eq!(std::fs::read(s("o/new")).unwrap(), b"n");
    assert_eq!(std::fs::read(s("o/sub/z")).unwrap(), b"z");
    assert!(!s(".wh.gone").exists() && !s("o/.wh..wh..opq").exists());
    // The planted link was followed inside the staging folder only.
    assert_empty(&sentinel);
    let inside = stage_dir
        .join(sentinel_abs.trim_start_matches('/'))
        .join("pwned");
    assert!(inside.is_file(), "{} missing", inside.display());
    assert!(s("also").is_file());
}

// ---------- building ----------

#[test]
fn build_image_is_reproducible_and_round_trips() {
    let d = tempfile::tempdir().unwrap();
    let host = d.path().join("hello.sh");
    std::fs::write(&host, "#!/bin/busybox sh\necho hello\n").unwrap();
    let spec = oci::BuildSpec {
        name: "cairn.test/hello:1".into(),
        packages: vec!["busybox-static".into()],
        files: vec![
            (host.clone(), "/opt/hello/hello.sh".into(), 0o755),
            (host, "/etc/hello.conf".into(), 0o644),
        ],
        entrypoint: vec!["/opt/hello/hello.sh".into()],
        cmd: vec![],
        env: vec!["GREETING=hi".into()],
        user: Some("65534:65534".into()),
        workdir: Some("/opt/hello".into()),
        exposed_ports: vec!["8080".into()],
        epoch: 1_700_000_000,
        suite: "bookworm".into(),
        mirror: "http://deb.debian.org/debian".into(),
        repo: None,
        essential: true,
    };
    let (built, pkgs) = build_online_and_from_lock(&spec, d.path());
    assert!(pkgs.iter().any(|p| p.name == "busybox-static"));
    assert!(pkgs.iter().any(|p| p.name == "dpkg"), "essential set");
    let (b, out) = &built[0];
    assert_eq!(b.layer_digests.len(), 2);

    // Round trip: the pin loads, a wrong pin does not.
    let img = oci::load_archive(out, &b.manifest_digest).unwrap();
    assert_eq!(img.config_digest, b.config_digest);
    assert_eq!(img.ref_names, vec![spec.name.clone()]);
    let cfg: serde_json::Value = serde_json::from_slice(&img.config).unwrap();
    assert_eq!(cfg["created"], "2023-11-14T22:13:20Z");
    assert_eq!(cfg["config"]["User"], "65534:65534");
    assert_eq!(
        cfg["config"]["ExposedPorts"]["8080/tcp"],
        serde_json::json!({})
    );
    // The SBOM reads the built image's own dpkg database from its layers.
    let files = oci::read_files(&img, &["var/lib/dpkg/status"], 64 << 20, None).unwrap();
    let pkgs = cairn::release::sbom::parse_dpkg_status(
        &String::from_utf8_lossy(&files["var/lib/dpkg/status"]),
        &Default::default(),
    );
    let bb = pkgs.iter().find(|p| p.name == "busybox-static").unwrap();
    assert_eq!(bb.source, "busybox", "{bb:?}");
    assert!(pkgs.iter().any(|p| p.name == "dpkg"));
    let wrong = sha(b"wrong");
    let e = oci::load_archive(out, &wrong).unwrap_err();
    assert!(matches!(e, OciError::PinMismatch { .. }), "{e}");

    // Flattened: busybox from Debian, our files, no /dev nodes, no host name.
    let (_t, stage_dir, sentinel) = stage();
    oci::unpack_layers(&img, &stage_dir, &Default::default()).unwrap();
    assert!(stage_dir.join("usr/bin/busybox").is_file() || stage_dir.join("bin/busybox").exists());
    let hello = stage_dir.join("opt/hello/hello.sh");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&hello).unwrap().permissions().mode() & 0o7777,
        0o755
    );
    assert_eq!(std::fs::read(stage_dir.join("etc/hostname")).unwrap(), b"");
    assert_eq!(std::fs::read_dir(stage_dir.join("dev")).unwrap().count(), 0);
    // dpkg ran without syncing each file, and that setting is gone from
    // the image (control: dpkg's configuration folder is there).
    assert!(stage_dir.join("etc/dpkg/dpkg.cfg.d").is_dir());
    assert!(!stage_dir
        .join("etc/dpkg/dpkg.cfg.d/00cairn-unsafe-io")
        .exists());
    assert_empty(&sentinel);
}

/// Builds `spec` twice: online, then from the packages resolved for it (as
/// `cairn build` does with a lock, online or offline); the two must be the
/// same bytes. Returns both builds and the resolved packages.
fn build_online_and_from_lock(
    spec: &oci::BuildSpec,
    dir: &Path,
) -> (
    Vec<(oci::BuiltImage, PathBuf)>,
    Vec<cairn::inputs::lock::LockedPackage>,
) {
    let cache = cairn::inputs::cache::Cache::open(dir.join("cache")).unwrap();
    let pkgs = cairn::inputs::debrepo::resolve_and_download_for(
        cairn::inputs::debrepo::Variant::image(spec.essential),
        &spec.suite,
        &spec.mirror,
        &spec.packages,
        spec.epoch,
        &dir.join("resolve"),
        &cache,
    )
    .unwrap();
    let mut built = Vec::new();
    for run in ["a", "b"] {
        let mut spec = spec.clone();
        if run == "b" {
            spec.repo = Some(
                cairn::inputs::debrepo::local_repo(&spec.suite, &pkgs, &cache, &dir.join("repo"))
                    .unwrap(),
            );
        }
        let work = dir.join(format!("work-{run}"));
        let out = dir.join(format!("out-{run}")).join("image.oci.tar");
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        let t = Instant::now();
        let b = oci::build_image(&spec, &work, &out).unwrap();
        eprintln!(
            "build {run}: {:.1}s manifest {} archive {} ({} bytes)",
            t.elapsed().as_secs_f64(),
            oci_d(&b.manifest_digest),
            oci_d(&b.archive_digest),
            b.size
        );
        built.push((b, out));
    }
    assert_eq!(
        built[0].0, built[1].0,
        "the online build and the build from the lock differ"
    );
    assert_eq!(
        std::fs::read(&built[0].1).unwrap(),
        std::fs::read(&built[1].1).unwrap()
    );
    (built, pkgs)
}

/// Without the essential set: only the packages and their dependencies,
/// unpacked; dpkg's status lists them as unpacked, so the SBOM still has
/// them. Control: the essential build above has dpkg and a shell.
#[test]
fn build_image_without_the_essential_set_holds_only_its_packages() {
    let d = tempfile::tempdir().unwrap();
    let spec = oci::BuildSpec {
        name: "cairn.test/bare:1".into(),
        packages: vec!["busybox-static".into()],
        files: vec![],
        entrypoint: vec!["/bin/busybox".into(), "true".into()],
        cmd: vec![],
        env: vec![],
        user: Some("65534:65534".into()),
        workdir: None,
        exposed_ports: vec![],
        epoch: 1_700_000_000,
        suite: "bookworm".into(),
        mirror: "http://deb.debian.org/debian".into(),
        repo: None,
        essential: false,
    };
    let (built, pkgs) = build_online_and_from_lock(&spec, d.path());
    let names: Vec<&str> = pkgs.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["busybox-static"],
        "busybox-static depends on nothing"
    );
    let (b, out) = &built[0];
    let img = oci::load_archive(out, &b.manifest_digest).unwrap();
    let cfg: serde_json::Value = serde_json::from_slice(&img.config).unwrap();
    assert!(
        cfg["history"][0]["created_by"]
            .as_str()
            .unwrap()
            .contains("--variant=extract"),
        "{cfg}"
    );
    let files = oci::read_files(&img, &["var/lib/dpkg/status"], 64 << 20, None).unwrap();
    let status = String::from_utf8_lossy(&files["var/lib/dpkg/status"]).into_owned();
    assert!(status.contains("Status: install ok unpacked"), "{status}");
    let listed = cairn::release::sbom::parse_dpkg_status(&status, &Default::default());
    let listed: Vec<&str> = listed.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(listed, ["busybox-static"], "{status}");
    let (_t, stage_dir, sentinel) = stage();
    oci::unpack_layers(&img, &stage_dir, &Default::default()).unwrap();
    assert!(stage_dir.join("bin/busybox").is_file());
    for absent in [
        "bin/sh",
        "bin/bash",
        "usr/bin/dpkg",
        "bin/ls",
        "usr/bin/ls",
        "etc/passwd",
    ] {
        assert!(
            std::fs::symlink_metadata(stage_dir.join(absent)).is_err(),
            "{absent} is in an image without the essential set"
        );
    }
    assert_empty(&sentinel);

    // An entrypoint the image does not have stops the build, naming it.
    let mut sh = spec.clone();
    sh.entrypoint = vec!["/bin/sh".into(), "-c".into(), "true".into()];
    let e =
        oci::build_image(&sh, &d.path().join("work-sh"), &d.path().join("sh.oci.tar")).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("the entrypoint /bin/sh is not a file in the image")
            && msg.contains("essential = true"),
        "{msg}"
    );
    assert!(e.downcast_ref::<cairn::InputError>().is_some(), "{msg}");
}

// ---------- reading files for the SBOM ----------

#[test]
fn read_files_sees_the_flattened_image() {
    let d = tempfile::tempdir().unwrap();
    let status = "var/lib/dpkg/status";
    let lower = tar_of(&[
        dir("var/"),
        dir("var/lib/"),
        dir("var/lib/dpkg/"),
        file(status, b"lower"),
        dir("etc/"),
        file("etc/os-release", b"ID=debian\n"),
        file("gone", b"g"),
        dir("o/"),
        file("o/x", b"x"),
    ]);
    let upper = tar_of(&[
        file("./var/lib/dpkg/status", b"upper"),
        file(".wh.gone", b""),
        file("o/.wh..wh..opq", b""),
    ]);
    let wanted = [status, "etc/os-release", "gone", "o/x", "missing"];
    let (m, md) = oci_members(&[gz(lower.clone()), plain(upper)], "amd64");
    let img = oci::load_archive(&write(d.path(), "a.tar", &archive_tar(&m)), &md).unwrap();
    let f = oci::read_files(&img, &wanted, 1 << 20, None).unwrap();
    assert_eq!(f[status], b"upper", "the upper layer's file wins");
    assert_eq!(f["etc/os-release"], b"ID=debian\n");
    assert!(!f.contains_key("gone"), "whiteout");
    assert!(!f.contains_key("o/x"), "opaque folder");
    assert!(!f.contains_key("missing"));
    // Control: the lower layer alone has every file; the cap is enforced.
    let (m, md) = oci_members(&[gz(lower)], "amd64");
    let img = oci::load_archive(&write(d.path(), "b.tar", &archive_tar(&m)), &md).unwrap();
    let f = oci::read_files(&img, &wanted, 1 << 20, None).unwrap();
    assert_eq!(f[status], b"lower");
    assert!(f.contains_key("gone") && f.contains_key("o/x"));
    let e = oci::read_files(&img, &wanted, 3, None).unwrap_err();
    assert!(format!("{e:#}").contains("limit"), "{e:#}");
}

/// A layer that puts a link where a lower layer had the dpkg folder: the
/// image then holds the file the link leads to, and so does the SBOM's
/// read. (A second tar parser reading entries by name kept the lower
/// layer's status, listing packages the image does not have.)
#[test]
fn read_files_sees_what_the_unpacked_image_holds_through_links() {
    let d = tempfile::tempdir().unwrap();
    let status = "var/lib/dpkg/status";
    let lower = tar_of(&[
        dir("var/"),
        dir("var/lib/"),
        dir("var/lib/dpkg/"),
        file(status, b"Package: listed-but-absent\n"),
    ]);
    let upper = tar_of(&[
        dir("opt/"),
        dir("opt/d/"),
        file("opt/d/status", b"Package: really-there\n"),
        symlink("var/lib/dpkg", "/opt/d"),
    ]);
    let (m, md) = oci_members(&[plain(lower.clone()), plain(upper)], "amd64");
    let img = oci::load_archive(&write(d.path(), "a.tar", &archive_tar(&m)), &md).unwrap();
    let f = oci::read_files(&img, &[status], 1 << 20, Some(d.path())).unwrap();
    assert_eq!(f[status], b"Package: really-there\n");
    // What the unpacked image holds, for comparison.
    let root = d.path().join("root");
    oci::unpack_layers(&img, &root, &img.limits).unwrap();
    assert_eq!(
        std::fs::read(root.join("opt/d/status")).unwrap(),
        f[status],
        "the SBOM's read and the image agree"
    );
    // Control: without the upper layer the lower file is read.
    let (m, md) = oci_members(&[plain(lower)], "amd64");
    let img = oci::load_archive(&write(d.path(), "b.tar", &archive_tar(&m)), &md).unwrap();
    let f = oci::read_files(&img, &[status], 1 << 20, None).unwrap();
    assert_eq!(f[status], b"Package: listed-but-absent\n");
    // Nothing is left in the scratch folder.
    let left: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("cairn-read-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
