//! Reading what the guest prints: serial-log lines without colour codes,
//! when the host saw each line, error-message tails, and the markers of one
//! debug-console exchange (built so that the tty's echo of the input can
//! never be taken for the answer).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// Drops ANSI escape sequences and control characters other than `\n`/`\t`
/// (OVMF paints its screen with them), for readable error messages.
pub(super) fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // parameters/intermediates, then one final byte 0x40..=0x7e
                for c in chars.by_ref() {
                    if ('\x40'..='\x7e').contains(&c) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c == '\n' || c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out
}

/// The last `n` non-blank lines, printable, indented for an error message.
pub(super) fn tail_lines(s: &str, n: usize) -> String {
    let clean = printable(s);
    let v: Vec<&str> = clean.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = v.len().saturating_sub(n);
    if v.is_empty() {
        return "(empty)".to_string();
    }
    v[start..].join("\n    ")
}

/// First line at or after byte `*scanned` of `buf` whose [`printable`] text
/// contains any of `patterns` (a trailing line without `\n` counts: prompts
/// have none). Returns the pattern index, that text and where the next search
/// should start. `scanned` is advanced past complete non-matching lines so
/// repeated polls do not rescan them.
pub(super) fn find_line(
    buf: &[u8],
    scanned: &mut usize,
    patterns: &[&str],
) -> Option<(usize, String, usize)> {
    let mut start = *scanned;
    while start < buf.len() {
        let (end, next, complete) = match buf[start..].iter().position(|&b| b == b'\n') {
            Some(i) => (start + i, start + i + 1, true),
            None => (buf.len(), buf.len(), false),
        };
        let line = printable(&String::from_utf8_lossy(&buf[start..end]));
        for (i, p) in patterns.iter().enumerate() {
            if line.contains(p) {
                return Some((i, line, next));
            }
        }
        if !complete {
            break;
        }
        start = next;
        *scanned = next;
    }
    None
}

/// One serial-log line, [`printable`], and when the host first saw it
/// complete, counted from QEMU's start.
#[derive(Debug, Clone, PartialEq)]
pub struct TimedLine {
    pub at: Duration,
    pub text: String,
}

/// Notes `at` as the time of every line that `new`, the bytes just
/// appended to a log that held `old_len` bytes, completes: `ends` gets the
/// offset of each new `\n` with `at`.
pub(super) fn stamp_lines(
    new: &[u8],
    old_len: usize,
    at: Duration,
    ends: &mut Vec<(usize, Duration)>,
) {
    for (i, &b) in new.iter().enumerate() {
        if b == b'\n' {
            ends.push((old_len + i, at));
        }
    }
}

/// The complete lines of `buf` with the times [`stamp_lines`] noted (a
/// trailing line without `\n` is left out: it is not complete yet).
pub(super) fn timed_lines(buf: &[u8], ends: &[(usize, Duration)]) -> Vec<TimedLine> {
    let mut start = 0;
    let mut out = Vec::with_capacity(ends.len());
    for &(end, at) in ends {
        if end >= buf.len() || end < start {
            break;
        }
        let text = printable(&String::from_utf8_lossy(&buf[start..end]));
        out.push(TimedLine {
            at,
            text: text.trim_end_matches('\r').to_string(),
        });
        start = end + 1;
    }
    out
}

/// Unique-enough marker for one console exchange.
pub(super) fn nonce() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let h = Sha256::digest(format!("{}:{t}:{n}", std::process::id()).as_bytes());
    hex::encode(&h[..6])
}

/// What [`super::Vm::console_run`] writes to the shell. The markers the shell will
/// print (`__CAIRN_BEGIN_<n>`, `__CAIRN_RC_<n>=<rc>`) are split by empty
/// quotes in the input, so an echoed copy of the input can never be mistaken
/// for them. The command sits in a `{ ...; }` group on its own line, so the
/// shell parses all of it before running any (all tty echo comes first) and a
/// trailing `#` comment cannot swallow the RC marker. Ctrl-U first discards
/// any half-typed junk line.
pub(super) fn console_input(command: &str, nonce: &str) -> String {
    format!(
        "\x15echo __CAIRN_BEG''IN_{nonce}; {{ {command}\n}}; echo \"__CAIRN_RC_\"\"{nonce}=$?\"\n"
    )
}

/// Parses the console transcript of one [`console_input`] exchange: the
/// output is everything between the end of the `__CAIRN_BEGIN_<n>` line and
/// the `__CAIRN_RC_<n>=` marker, with `\r\n` turned into `\n` and trailing
/// newlines dropped (like `$(...)`). `None` until the RC line is complete.
pub(super) fn parse_console_output(text: &str, nonce: &str) -> Option<(i32, String)> {
    let begin = format!("__CAIRN_BEGIN_{nonce}");
    let b = text.find(&begin)?;
    let out_start = b + text[b..].find('\n')? + 1;
    let rc_marker = format!("__CAIRN_RC_{nonce}=");
    let r = out_start + text[out_start..].find(&rc_marker)?;
    let after = &text[r + rc_marker.len()..];
    let eol = after.find(['\r', '\n'])?;
    let rc: i32 = after[..eol].trim().parse().ok()?;
    let out = text[out_start..r].replace("\r\n", "\n");
    Some((rc, out.trim_end_matches('\n').to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_console_parse_echo_off() {
        let n = "abc123";
        let text = "junk from before\r\n__CAIRN_BEGIN_abc123\r\nhello\r\nworld\r\n__CAIRN_RC_abc123=0\r\n# ";
        assert_eq!(
            parse_console_output(text, n),
            Some((0, "hello\nworld".to_string()))
        );
        // no output, non-zero status
        let text = "__CAIRN_BEGIN_abc123\r\n__CAIRN_RC_abc123=127\r\n";
        assert_eq!(parse_console_output(text, n), Some((127, String::new())));
        // output without a trailing newline
        let text = "__CAIRN_BEGIN_abc123\r\nfoo__CAIRN_RC_abc123=3\r\n";
        assert_eq!(parse_console_output(text, n), Some((3, "foo".to_string())));
        // incomplete: RC line not finished yet (could be "12" of "127")
        assert_eq!(
            parse_console_output("__CAIRN_BEGIN_abc123\r\nx\r\n__CAIRN_RC_abc123=12", n),
            None
        );
        assert_eq!(parse_console_output("__CAIRN_BEGIN_abc123", n), None);
        // another exchange's markers are ignored
        let text = "__CAIRN_BEGIN_other\r\nx\r\n__CAIRN_RC_other=0\r\n";
        assert_eq!(parse_console_output(text, n), None);
    }

    #[test]
    fn qemu_console_parse_echo_on() {
        let n = "f00d";
        let input = console_input("ls /nonexistent; echo done", n);
        assert!(!input.contains("__CAIRN_BEGIN_f00d"));
        assert!(!input.contains("__CAIRN_RC_f00d="));
        // What a tty with echo on shows: the prompt, the input echoed
        // (\n -> \r\n), a PS2 prompt, then the output.
        let echoed = input.trim_start_matches('\x15').replace('\n', "\r\n> ");
        let text = format!(
            "# {echoed}__CAIRN_BEGIN_f00d\r\nls: /nonexistent: No such file or directory\r\n\
             done\r\n__CAIRN_RC_f00d=0\r\n# "
        );
        assert_eq!(
            parse_console_output(&text, n),
            Some((
                0,
                "ls: /nonexistent: No such file or directory\ndone".to_string()
            ))
        );
        // Only the echo has arrived so far: not done.
        assert_eq!(parse_console_output(&format!("# {echoed}"), n), None);
    }

    #[test]
    fn qemu_console_input_shape() {
        let s = console_input("uname -a # comment", "n1");
        assert_eq!(
            s,
            "\x15echo __CAIRN_BEG''IN_n1; { uname -a # comment\n}; echo \"__CAIRN_RC_\"\"n1=$?\"\n"
        );
    }

    #[test]
    fn qemu_lines_carry_the_time_they_were_first_seen() {
        let mut buf = Vec::new();
        let mut ends = Vec::new();
        let s = Duration::from_secs;
        for (chunk, t) in [
            (&b"BdsDxe: loading\r\n[    1.00] cairn: "[..], 1),
            (&b"initramfs started\r\n"[..], 3),
            (&b""[..], 4),
            (&b"\x1b[0m[   40.25] cairn: ready\r\nhalf a li"[..], 5),
        ] {
            let old = buf.len();
            buf.extend_from_slice(chunk);
            stamp_lines(&buf[old..], old, s(t), &mut ends);
        }
        assert_eq!(
            timed_lines(&buf, &ends),
            vec![
                TimedLine {
                    at: s(1),
                    text: "BdsDxe: loading".into()
                },
                // A line split across two reads: the time it was completed.
                TimedLine {
                    at: s(3),
                    text: "[    1.00] cairn: initramfs started".into()
                },
                TimedLine {
                    at: s(5),
                    text: "[   40.25] cairn: ready".into()
                },
            ]
        );
    }

    #[test]
    fn qemu_find_line_and_tail() {
        let buf = b"one\r\ntwo\r\nlogin: ";
        let mut scanned = 0;
        assert_eq!(
            find_line(buf, &mut scanned, &["two"]),
            Some((0, "two".to_string(), 10))
        );
        let mut scanned = 10;
        assert_eq!(
            find_line(buf, &mut scanned, &["nope", "login:"]),
            Some((1, "login: ".to_string(), 17))
        );
        let mut scanned = 0;
        assert_eq!(find_line(buf, &mut scanned, &["absent"]), None);
        assert_eq!(scanned, 10, "complete lines are not rescanned");

        let t = tail_lines("\x1b[2J\x1b[01;01Ha\r\nb\n\nc\n", 2);
        assert_eq!(t, "b\n    c");
    }
}
