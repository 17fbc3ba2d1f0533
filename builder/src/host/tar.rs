//! cairn's one tar reader (image archives, layers, mmdebstrap's output,
//! `cairn cache import`) and the deterministic tar writer.
//!
//! The reader understands ustar (with prefix), GNU long names/links and pax
//! extended headers (path, linkpath, size, uid, gid, mtime, SCHILY.xattr.*).
//! Every header-side allocation is capped, so a gzip bomb cannot make a
//! huge long name or pax record. Header-only types (links, folders,
//! devices, fifos) carry no data whatever their size field says, as in Go's
//! archive/tar, which containerd uses: both parsers see the same entries.

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub(crate) const BLOCK: u64 = 512;
const MAX_LONG_NAME: u64 = 64 * 1024;
const MAX_PAX: u64 = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
    Other(u8),
}

#[derive(Debug, Clone)]
pub(crate) struct RawEntry {
    pub name: Vec<u8>,
    pub link: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    /// Bytes of data that follow (0 for header-only types).
    pub size: u64,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Offset of the data in the (uncompressed) stream.
    pub data_offset: u64,
}

#[derive(Debug)]
pub(crate) enum TarError {
    Io(io::Error),
    Corrupt(String),
}

impl std::fmt::Display for TarError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TarError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                write!(f, "truncated archive")
            }
            TarError::Io(e) => write!(f, "{e}"),
            TarError::Corrupt(m) => f.write_str(m),
        }
    }
}

impl From<io::Error> for TarError {
    fn from(e: io::Error) -> Self {
        TarError::Io(e)
    }
}

fn corrupt<T>(m: impl Into<String>) -> Result<T, TarError> {
    Err(TarError::Corrupt(m.into()))
}

pub(crate) struct TarReader<R> {
    r: R,
    pos: u64,
    /// Data and padding of the current entry not read yet.
    pending: u64,
    /// Data bytes of the current entry not read yet.
    data_left: u64,
    done: bool,
}

#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<u64>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl<R: Read> TarReader<R> {
    pub fn new(r: R) -> Self {
        TarReader {
            r,
            pos: 0,
            pending: 0,
            data_left: 0,
            done: false,
        }
    }

    /// Reads one block; false on a clean end of stream before its first byte.
    fn read_block(&mut self, buf: &mut [u8; 512]) -> Result<bool, TarError> {
        let got = crate::host::read_full(&mut self.r, buf)?;
        self.pos += got as u64;
        match got {
            0 => Ok(false),
            512 => Ok(true),
            _ => corrupt("truncated header block"),
        }
    }

    fn skip(&mut self, n: u64) -> Result<(), TarError> {
        let copied = io::copy(&mut (&mut self.r).take(n), &mut io::sink())?;
        self.pos += copied;
        if copied != n {
            return corrupt("truncated entry data");
        }
        Ok(())
    }

    fn read_ext(&mut self, size: u64, cap: u64, what: &str) -> Result<Vec<u8>, TarError> {
        if size > cap {
            return corrupt(format!("{what} of {size} bytes (limit {cap})"));
        }
        let mut v = Vec::with_capacity(size as usize);
        let got = (&mut self.r).take(size).read_to_end(&mut v)? as u64;
        self.pos += got;
        if got != size {
            return corrupt(format!("truncated {what}"));
        }
        self.skip(padding(size))?;
        Ok(v)
    }

    pub fn next_entry(&mut self) -> Result<Option<RawEntry>, TarError> {
        if self.done {
            return Ok(None);
        }
        let p = self.pending;
        self.pending = 0;
        self.data_left = 0;
        self.skip(p)?;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax: Option<Pax> = None;
        loop {
            let mut h = [0u8; 512];
            let extension_pending = long_name.is_some() || long_link.is_some() || pax.is_some();
            if !self.read_block(&mut h)? {
                if extension_pending {
                    return corrupt("extension header at the end of the archive");
                }
                self.done = true;
                return Ok(None);
            }
            if h.iter().all(|b| *b == 0) {
                let mut h2 = [0u8; 512];
                if self.read_block(&mut h2)? && !h2.iter().all(|b| *b == 0) {
                    return corrupt("a header follows a single end-of-archive block");
                }
                if extension_pending {
                    return corrupt("extension header at the end of the archive");
                }
                self.done = true;
                return Ok(None);
            }
            check_sum(&h)?;
            let typeflag = h[156];
            let size = parse_num(&h[124..136], "size")?;
            match typeflag {
                b'L' | b'K' => {
                    let (slot, what) = if typeflag == b'L' {
                        (&mut long_name, "name")
                    } else {
                        (&mut long_link, "link name")
                    };
                    if slot.is_some() {
                        return corrupt(format!("two GNU long {what}s for one entry"));
                    }
                    let what = if typeflag == b'L' {
                        "GNU long name"
                    } else {
                        "GNU long link"
                    };
                    *slot = Some(cstr(&self.read_ext(size, MAX_LONG_NAME, what)?));
                    continue;
                }
                b'x' | b'X' => {
                    if pax.is_some() {
                        return corrupt("two pax headers for one entry");
                    }
                    pax = Some(parse_pax(&self.read_ext(size, MAX_PAX, "pax header")?)?);
                    continue;
                }
                b'g' => return corrupt("pax global headers (type g) are not supported"),
                b'S' => return corrupt("GNU sparse files are not supported"),
                _ => {}
            }
            let ustar_posix = &h[257..263] == b"ustar\0";
            let mut name = cstr(&h[0..100]);
            if ustar_posix {
                let prefix = cstr(&h[345..500]);
                if !prefix.is_empty() {
                    let mut full = prefix;
                    full.push(b'/');
                    full.extend_from_slice(&name);
                    name = full;
                }
            }
            let mut link = cstr(&h[157..257]);
            let mut e_size = size;
            let mut uid = parse_num(&h[108..116], "uid")?;
            let mut gid = parse_num(&h[116..124], "gid")?;
            let mut mtime = parse_num(&h[136..148], "mtime")?;
            let mode = (parse_num(&h[100..108], "mode")? & 0o7777) as u32;
            if let Some(n) = long_name {
                name = n;
            }
            if let Some(l) = long_link {
                link = l;
            }
            let mut xattrs = Vec::new();
            if let Some(p) = pax {
                if let Some(v) = p.path {
                    name = v;
                }
                if let Some(v) = p.link {
                    link = v;
                }
                if let Some(v) = p.size {
                    e_size = v;
                }
                if let Some(v) = p.uid {
                    uid = v;
                }
                if let Some(v) = p.gid {
                    gid = v;
                }
                if let Some(v) = p.mtime {
                    mtime = v;
                }
                xattrs = p.xattrs;
            }
            let kind = match typeflag {
                0 if name.ends_with(b"/") => Kind::Dir,
                0 | b'0' | b'7' => Kind::File,
                b'1' => Kind::Hardlink,
                b'2' => Kind::Symlink,
                b'3' => Kind::Char,
                b'4' => Kind::Block,
                b'5' => Kind::Dir,
                b'6' => Kind::Fifo,
                t => Kind::Other(t),
            };
            let data = match kind {
                Kind::File | Kind::Other(_) => e_size,
                _ => 0,
            };
            self.pending = data
                .checked_add(padding(data))
                .ok_or_else(|| TarError::Corrupt("entry size overflows".into()))?;
            self.data_left = data;
            return Ok(Some(RawEntry {
                name,
                link,
                kind,
                mode,
                uid,
                gid,
                mtime,
                size: data,
                xattrs,
                data_offset: self.pos,
            }));
        }
    }

    /// The current entry's data (read before the next `next_entry`).
    pub fn data(&mut self) -> EntryData<'_, R> {
        EntryData { t: self }
    }
}

pub(crate) struct EntryData<'a, R> {
    t: &'a mut TarReader<R>,
}

impl<R: Read> Read for EntryData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.t.data_left;
        if left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.t.r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "truncated entry data",
            ));
        }
        self.t.data_left -= n as u64;
        self.t.pending -= n as u64;
        self.t.pos += n as u64;
        Ok(n)
    }
}

pub(crate) fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

fn cstr(b: &[u8]) -> Vec<u8> {
    match b.iter().position(|c| *c == 0) {
        Some(i) => b[..i].to_vec(),
        None => b.to_vec(),
    }
}

fn check_sum(h: &[u8; 512]) -> Result<(), TarError> {
    let stored = parse_num(&h[148..156], "checksum")?;
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { *b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    if stored != unsigned && i64::try_from(stored).ok() != Some(signed) {
        return corrupt("header checksum mismatch");
    }
    Ok(())
}

/// Octal (trimmed of spaces and NULs) or GNU base-256 numbers.
fn parse_num(field: &[u8], what: &str) -> Result<u64, TarError> {
    if let Some(first) = field.first() {
        if first & 0x80 != 0 {
            if *first == 0xff {
                return corrupt(format!("negative {what} field"));
            }
            let mut v: u64 = u64::from(first & 0x7f);
            for b in &field[1..] {
                v = v
                    .checked_mul(256)
                    .and_then(|v| v.checked_add(u64::from(*b)))
                    .ok_or_else(|| TarError::Corrupt(format!("{what} field overflows")))?;
            }
            return Ok(v);
        }
    }
    let start = field
        .iter()
        .position(|c| *c != b' ' && *c != 0)
        .unwrap_or(field.len());
    let end = field
        .iter()
        .rposition(|c| *c != b' ' && *c != 0)
        .map_or(start, |i| i + 1);
    let mut v: u64 = 0;
    for c in &field[start..end] {
        if !(b'0'..=b'7').contains(c) {
            return corrupt(format!("bad octal {what} field"));
        }
        v = v
            .checked_mul(8)
            .and_then(|v| v.checked_add(u64::from(c - b'0')))
            .ok_or_else(|| TarError::Corrupt(format!("{what} field overflows")))?;
    }
    Ok(v)
}

fn parse_dec(v: &[u8], key: &str) -> Result<u64, TarError> {
    let s = std::str::from_utf8(v)
        .map_err(|_| TarError::Corrupt(format!("pax {key} is not a number")))?;
    s.parse::<u64>()
        .map_err(|_| TarError::Corrupt(format!("pax {key} {s:?} is not a number")))
}

fn parse_pax(mut b: &[u8]) -> Result<Pax, TarError> {
    let mut pax = Pax::default();
    while !b.is_empty() {
        let sp = b
            .iter()
            .position(|c| *c == b' ')
            .ok_or_else(|| TarError::Corrupt("bad pax record".into()))?;
        let len = parse_dec(&b[..sp], "record length")? as usize;
        if len <= sp + 1 || len > b.len() || b[len - 1] != b'\n' {
            return corrupt("bad pax record length");
        }
        let rec = &b[sp + 1..len - 1];
        b = &b[len..];
        let eq = rec
            .iter()
            .position(|c| *c == b'=')
            .ok_or_else(|| TarError::Corrupt("pax record without '='".into()))?;
        let (key, val) = (&rec[..eq], &rec[eq + 1..]);
        match key {
            b"path" => pax.path = Some(val.to_vec()),
            b"linkpath" => pax.link = Some(val.to_vec()),
            b"size" => pax.size = Some(parse_dec(val, "size")?),
            b"uid" => pax.uid = Some(parse_dec(val, "uid")?),
            b"gid" => pax.gid = Some(parse_dec(val, "gid")?),
            b"mtime" => {
                let int = val.split(|c| *c == b'.').next().unwrap_or(b"");
                // Negative or odd mtimes do not matter to cairn: clamp to 0.
                pax.mtime = Some(parse_dec(int, "mtime").unwrap_or(0));
            }
            k if k.starts_with(b"GNU.sparse.") => {
                return corrupt("GNU sparse files (pax) are not supported")
            }
            k if k.starts_with(b"SCHILY.xattr.") => pax
                .xattrs
                .push((k[b"SCHILY.xattr.".len()..].to_vec(), val.to_vec())),
            _ => {}
        }
    }
    Ok(pax)
}

/// Writes tar archives with fixed metadata: GNU headers, no user or group
/// names, the given mtime on every entry, no pax records.
pub(crate) struct TarWriter<W: Write> {
    b: tar::Builder<W>,
    mtime: u64,
}

fn p(b: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(b))
}

impl<W: Write> TarWriter<W> {
    pub fn new(w: W, mtime: u64) -> Self {
        TarWriter {
            b: tar::Builder::new(w),
            mtime,
        }
    }

    fn header(
        &self,
        kind: tar::EntryType,
        mode: u32,
        uid: u64,
        gid: u64,
        size: u64,
    ) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(self.mtime);
        h.set_size(size);
        h
    }

    pub fn dir(&mut self, path: &[u8], mode: u32, uid: u64, gid: u64) -> io::Result<()> {
        let mut h = self.header(tar::EntryType::Directory, mode, uid, gid, 0);
        let mut name = path.to_vec();
        name.push(b'/');
        self.b.append_data(&mut h, p(&name), io::empty())
    }

    pub fn file(
        &mut self,
        path: &[u8],
        mode: u32,
        owner: (u64, u64),
        size: u64,
        data: impl Read,
    ) -> io::Result<()> {
        let mut h = self.header(tar::EntryType::Regular, mode, owner.0, owner.1, size);
        let mut counted = Counting {
            r: data.take(size),
            n: 0,
        };
        self.b.append_data(&mut h, p(path), &mut counted)?;
        if counted.n != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} changed while being archived ({} of {size} bytes)",
                    String::from_utf8_lossy(path),
                    counted.n
                ),
            ));
        }
        Ok(())
    }

    pub fn symlink(&mut self, path: &[u8], target: &[u8], uid: u64, gid: u64) -> io::Result<()> {
        let mut h = self.header(tar::EntryType::Symlink, 0o777, uid, gid, 0);
        self.b.append_link(&mut h, p(path), p(target))
    }

    pub fn hardlink(
        &mut self,
        path: &[u8],
        target: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> io::Result<()> {
        let mut h = self.header(tar::EntryType::Link, mode, uid, gid, 0);
        self.b.append_link(&mut h, p(path), p(target))
    }

    pub fn finish(self) -> io::Result<W> {
        self.b.into_inner()
    }
}

struct Counting<R> {
    r: R,
    n: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.r.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// Splits a tar name into its components: `None` if absolute or with
/// `..`; `.` and empty parts are dropped.
pub(crate) enum Name<'a> {
    Absolute,
    DotDot,
    Nul,
    Parts(Vec<&'a [u8]>),
}

pub(crate) fn split_name(name: &[u8]) -> Name<'_> {
    if name.contains(&0) {
        return Name::Nul;
    }
    if name.starts_with(b"/") {
        return Name::Absolute;
    }
    let mut parts = Vec::new();
    for c in name.split(|c| *c == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Name::DotDot,
            c => parts.push(c),
        }
    }
    Name::Parts(parts)
}

pub(crate) fn join(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(&b'/')
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_num(b"0000644\0", "m").unwrap(), 0o644);
        assert_eq!(parse_num(b"  17 \0", "m").unwrap(), 0o17);
        assert_eq!(parse_num(b"\0\0\0\0", "m").unwrap(), 0);
        assert!(parse_num(b"0009", "m").is_err());
        assert_eq!(parse_num(&[0x80, 0, 0, 1, 0], "m").unwrap(), 256);
        assert!(parse_num(&[0xff, 0, 0], "m").is_err());
        assert!(parse_num(
            &[0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1],
            "m"
        )
        .is_err());
    }

    #[test]
    fn pax_records() {
        let p = parse_pax(b"16 path=a/b/cde\n20 SCHILY.xattr.k=v\n").unwrap();
        assert_eq!(p.path.as_deref(), Some(&b"a/b/cde"[..]));
        assert_eq!(p.xattrs, vec![(b"k".to_vec(), b"v".to_vec())]);
        assert!(parse_pax(b"99 path=x\n").is_err());
        assert!(parse_pax(b"x").is_err());
        assert!(parse_pax(b"3 \n").is_err());
    }

    #[test]
    fn roundtrip_writer_reader() {
        let mut w = TarWriter::new(Vec::new(), 7);
        w.dir(b"a", 0o755, 0, 0).unwrap();
        let long = format!("a/{}", "x".repeat(150));
        w.file(long.as_bytes(), 0o644, (1, 2), 3, &b"abc"[..])
            .unwrap();
        w.symlink(b"a/l", b"../a", 0, 0).unwrap();
        let bytes = w.finish().unwrap();
        let mut r = TarReader::new(&bytes[..]);
        let e = r.next_entry().unwrap().unwrap();
        assert_eq!((e.name.as_slice(), e.kind), (&b"a/"[..], Kind::Dir));
        let e = r.next_entry().unwrap().unwrap();
        assert_eq!(e.name, long.as_bytes());
        assert_eq!((e.uid, e.gid, e.mtime, e.size), (1, 2, 7, 3));
        let mut s = String::new();
        r.data().read_to_string(&mut s).unwrap();
        assert_eq!(s, "abc");
        let e = r.next_entry().unwrap().unwrap();
        assert_eq!((e.kind, e.link.as_slice()), (Kind::Symlink, &b"../a"[..]));
        assert!(r.next_entry().unwrap().is_none());
    }

    #[test]
    fn garbage_never_panics() {
        for seed in 0u32..200 {
            let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
            let mut buf = vec![0u8; 2048];
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
            let mut r = TarReader::new(&buf[..]);
            while let Ok(Some(_)) = r.next_entry() {}
        }
    }

    /// Blocks that look like tar headers (any bytes, correct checksum) mixed
    /// with data blocks: deeper into the parser than random bytes get.
    fn fixup_checksum(b: &mut [u8]) {
        if b.len() < 512 {
            return;
        }
        b[148..156].copy_from_slice(b"        ");
        let sum: u32 = b[..512].iter().map(|c| u32::from(*c)).sum();
        let s = format!("{sum:06o}\0 ");
        b[148..156].copy_from_slice(s.as_bytes());
    }

    /// Cases per property: a few hundred in `cargo test`, many more under
    /// `make fuzz` (CAIRN_FUZZ_CASES; `never_panic` in the names is its filter).
    pub(crate) fn fuzz_cases() -> u32 {
        std::env::var("CAIRN_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300)
    }

    fn drain(bytes: &[u8]) {
        let mut r = TarReader::new(bytes);
        let mut n = 0;
        while let Ok(Some(_)) = r.next_entry() {
            let _ = io::copy(&mut r.data(), &mut io::sink());
            n += 1;
            assert!(n <= bytes.len() / 512 + 1, "more entries than blocks");
        }
    }

    use proptest::prelude::*;

    fn header_block() -> impl Strategy<Value = Vec<u8>> {
        (
            proptest::collection::vec(any::<u8>(), 512),
            prop::sample::select(&b"0125673LKxXgS\0"[..]),
            prop::sample::select(vec![
                &b"00000000000\0"[..],
                &b"00000001000\0"[..],
                &b"77777777777\0"[..],
                &b"\x80\0\0\0\0\0\0\0\0\0\x10\0"[..],
                &b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"[..],
                &b"00000000017\0"[..],
            ]),
            any::<bool>(),
        )
            .prop_map(|(mut b, t, size, ustar)| {
                b[156] = t;
                b[124..136].copy_from_slice(size);
                if ustar {
                    b[257..263].copy_from_slice(b"ustar\0");
                }
                fixup_checksum(&mut b);
                b
            })
    }

    fn block() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            3 => header_block(),
            1 => proptest::collection::vec(any::<u8>(), 512),
            1 => Just(vec![0u8; 512]),
            1 => Just(b"30 path=a/../../b/cccccccccc\n".iter().copied().chain(std::iter::repeat(0).take(482)).collect::<Vec<u8>>()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: fuzz_cases(),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn fuzz_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
            drain(&bytes);
        }

        #[test]
        fn fuzz_header_shaped_blocks_never_panic(blocks in proptest::collection::vec(block(), 0..12), cut in 0usize..6000) {
            let mut bytes: Vec<u8> = blocks.concat();
            if cut < bytes.len() {
                bytes.truncate(cut);
            }
            drain(&bytes);
        }
    }
}
