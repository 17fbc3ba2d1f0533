//! The bottom layer: things every other layer uses and that know nothing
//! of recipes or images: the one tool runner, digests, the tree-access
//! layer, cpio, progress display and the host tool table.

pub mod cpio;
pub mod deb822;
pub mod digest;
pub mod direct;
pub mod doctor;
pub mod interrupt;
pub mod limits;
pub mod parallel;
pub mod progress;
pub mod runner;
pub mod scratch;
pub mod time;
pub mod tree;
pub mod untrusted;

/// Fills `buf` as far as `r` allows (a short count only at its end);
/// returns the bytes read. Interrupted reads are retried.
pub fn read_full(r: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
