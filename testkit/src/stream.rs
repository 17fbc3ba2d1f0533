//! Deterministic, incompressible test data of any size, by offset: bytes
//! `32 k .. 32 k + 32` of the stream named `tag` are
//! sha256(`tag` || k as 8 little-endian bytes). With a tag of at most 47
//! bytes each digest is one SHA-256 compression of the padded message
//! (sha2's `compress256`); testkit is built optimised also in test builds
//! (the workspace's Cargo.toml), so a few GiB take seconds, not minutes.

use sha2::digest::generic_array::GenericArray;

const IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// The longest tag whose message fits one padded block.
pub const MAX_TAG: usize = 47;

/// One stream: its padded block, the counter slot filled per chunk.
pub struct Stream {
    block: GenericArray<u8, sha2::digest::consts::U64>,
    tag_len: usize,
}

impl Stream {
    #[track_caller]
    pub fn new(tag: &[u8]) -> Stream {
        assert!(
            tag.len() <= MAX_TAG,
            "stream tag longer than {MAX_TAG} bytes"
        );
        let mut block = GenericArray::default();
        block[..tag.len()].copy_from_slice(tag);
        block[tag.len() + 8] = 0x80;
        block[56..].copy_from_slice(&((tag.len() as u64 + 8) * 8).to_be_bytes());
        Stream {
            block,
            tag_len: tag.len(),
        }
    }

    /// Chunk `k`: sha256(tag || k as 8 little-endian bytes).
    pub fn chunk(&mut self, k: u64) -> [u8; 32] {
        self.block[self.tag_len..self.tag_len + 8].copy_from_slice(&k.to_le_bytes());
        let mut state = IV;
        sha2::compress256(&mut state, std::slice::from_ref(&self.block));
        let mut out = [0u8; 32];
        for (o, w) in out.chunks_exact_mut(4).zip(state) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }

    /// Fills `buf` with the stream's bytes from offset `at`.
    pub fn fill(&mut self, at: u64, buf: &mut [u8]) {
        let mut pos = at;
        let mut i = 0;
        while i < buf.len() {
            let c = self.chunk(pos / 32);
            let from = (pos % 32) as usize;
            let n = (32 - from).min(buf.len() - i);
            buf[i..i + n].copy_from_slice(&c[from..from + n]);
            i += n;
            pos += n as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    #[test]
    fn chunks_are_sha256_of_tag_and_counter_and_fill_is_by_offset() {
        for tag in [&b""[..], b"cairn-big-model:", &[7u8; MAX_TAG]] {
            let mut s = Stream::new(tag);
            for k in [0u64, 1, 0x0123_4567_89ab] {
                let mut msg = tag.to_vec();
                msg.extend_from_slice(&k.to_le_bytes());
                assert_eq!(s.chunk(k)[..], sha2::Sha256::digest(&msg)[..], "chunk {k}");
            }
        }
        let mut s = Stream::new(b"t");
        let mut a = [0u8; 100];
        s.fill(20, &mut a);
        assert_eq!(a[..12], s.chunk(0)[20..]);
        assert_eq!(a[12..44], s.chunk(1));
        let mut b = [0u8; 50];
        s.fill(70, &mut b);
        assert_eq!(b, a[50..]);
    }
}
