//! The signify file frame: an `untrusted comment:` line, one base64 line
//! and, for embedded signatures, the message after it; plus the bounded
//! reads of key and signature files.
//! Invariant: the decoded blob has exactly the expected length and the
//! `Ed` tag, or the parse fails.

use std::io::Read;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use super::{
    malformed, Result, SignifyError, COMMENT_HDR, COMMENT_MAX, MAX_KEY_FILE, PKALG, PUBKEY_LEN,
    SECKEY_LEN, SIG_LEN,
};
use crate::host::untrusted::{self, Links, UntrustedError};

/// One parsed signify file: the decoded blob and whatever follows the
/// base64 line (the message, for embedded signatures). The comment line is
/// validated but, being untrusted, not kept.
pub(super) struct Framed<'a> {
    pub(super) blob: Vec<u8>,
    pub(super) rest: &'a [u8],
}

fn describe_len(len: usize) -> &'static str {
    match len {
        PUBKEY_LEN => " (that is the size of a public key)",
        SIG_LEN => " (that is the size of a signature)",
        SECKEY_LEN => " (that is the size of a secret key)",
        _ => "",
    }
}

/// Split off one line (without its '\n'); `None` for the remainder means the
/// line was not newline-terminated.
fn split_line(data: &[u8]) -> (&[u8], Option<&[u8]>) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (data.get(..i).unwrap_or_default(), data.get(i + 1..)),
        None => (data, None),
    }
}

pub(super) fn parse_framed<'a>(
    data: &'a [u8],
    expected_len: usize,
    what: &str,
    need_final_newline: bool,
) -> Result<Framed<'a>> {
    let (comment_line, rest) = split_line(data);
    let Some(rest) = rest else {
        return Err(malformed(format!(
            "{what}: expected two lines (an 'untrusted comment:' line and a base64 line)"
        )));
    };
    let comment_line = comment_line.strip_suffix(b"\r").unwrap_or(comment_line);
    let Some(comment) = comment_line.strip_prefix(COMMENT_HDR.as_bytes()) else {
        return Err(malformed(format!(
            "{what}: first line must start with '{COMMENT_HDR}'"
        )));
    };
    if comment.is_empty() {
        return Err(malformed(format!("{what}: empty comment line")));
    }
    if comment.len() >= COMMENT_MAX {
        return Err(malformed(format!("{what}: comment line is too long")));
    }

    let (b64_line, after) = split_line(rest);
    if after.is_none() && need_final_newline {
        return Err(malformed(format!(
            "{what}: missing newline after the base64 line"
        )));
    }
    let b64 = b64_line.trim_ascii_end_compat();
    if b64.is_empty() {
        return Err(malformed(format!("{what}: missing base64 line")));
    }
    // Longer than any signify blob cannot be right; don't bother decoding.
    if b64.len() > 4 * (SECKEY_LEN.max(expected_len) / 3 + 2) {
        return Err(malformed(format!(
            "{what}: base64 line is too long ({} characters)",
            b64.len()
        )));
    }
    let blob = BASE64
        .decode(b64)
        .map_err(|e| malformed(format!("{what}: invalid base64: {e}")))?;
    if blob.len() != expected_len {
        return Err(malformed(format!(
            "{what}: expected {expected_len} bytes, found {}{}",
            blob.len(),
            describe_len(blob.len())
        )));
    }
    if blob.get(..2) != Some(&PKALG[..]) {
        return Err(malformed(format!(
            "{what}: unsupported algorithm (expected 'Ed')"
        )));
    }
    Ok(Framed {
        blob,
        rest: after.unwrap_or_default(),
    })
}

/// `<[u8]>::trim_ascii_end` is newer than our MSRV (1.75).
trait TrimEnd {
    fn trim_ascii_end_compat(&self) -> &Self;
}
impl TrimEnd for [u8] {
    fn trim_ascii_end_compat(&self) -> &[u8] {
        let end = self
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        self.get(..end).unwrap_or_default()
    }
}

/// Make `comment` safe for the single comment line: no line breaks, not
/// empty, and short enough for signify to accept.
pub(super) fn clean_comment(comment: &str, fallback: &str) -> String {
    let mut c: String = comment
        .chars()
        .map(|ch| if ch == '\n' || ch == '\r' { ' ' } else { ch })
        .collect();
    if c.trim().is_empty() {
        c = fallback.to_string();
    }
    // signify's writer needs header + comment + '\n' < 1024 bytes.
    let max = COMMENT_MAX - COMMENT_HDR.len() - 2;
    if c.len() > max {
        let mut cut = max;
        while !c.is_char_boundary(cut) {
            cut -= 1;
        }
        c.truncate(cut);
    }
    c
}

pub(super) fn frame(comment: &str, blob: &[u8]) -> String {
    format!("{COMMENT_HDR}{comment}\n{}\n", BASE64.encode(blob))
}

/// Read the head of a key/signature file: at most `MAX_KEY_FILE` bytes,
/// plus whether there was more. A symlink is followed (the user named the
/// file); a FIFO or device is refused, never waited on.
pub(super) fn read_head(path: &Path) -> Result<(Vec<u8>, bool)> {
    let f = untrusted::open(path, Links::Follow)?;
    let mut buf = Vec::new();
    f.file
        .take(MAX_KEY_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(super::io_err("read", path))?;
    let more = buf.len() as u64 > MAX_KEY_FILE;
    buf.truncate(MAX_KEY_FILE as usize);
    Ok((buf, more))
}

/// Read a whole key file, refusing anything implausibly large.
pub(super) fn read_key_file(path: &Path) -> Result<Vec<u8>> {
    untrusted::read(path, Links::Follow, MAX_KEY_FILE).map_err(|e| match e {
        UntrustedError::TooLarge { .. } => {
            malformed(format!("{}: too large to be a signify key", path.display()))
        }
        e => SignifyError::Untrusted(e),
    })
}

/// Sequential reader over a fixed-size decoded blob.
pub(super) struct Cursor<'a>(pub(super) &'a [u8]);

impl Cursor<'_> {
    pub(super) fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        let head = self.0.get(..N).ok_or_else(|| malformed("blob too short"))?;
        let arr: [u8; N] = head.try_into().map_err(|_| malformed("blob too short"))?;
        self.0 = self.0.get(N..).unwrap_or_default();
        Ok(arr)
    }
}
