//! Text from an input (a manifest, a file name, a tool's message about a
//! hostile file), made safe to print on a terminal.
//! Invariant: what [`Shown`] writes holds no control character (C0, DEL,
//! C1) and no bidirectional-override character, so an input cannot move
//! the cursor, clear a line or reorder what follows it. A backslash is
//! kept as it is, so escaping twice changes nothing: a message built from
//! escaped fields can be escaped again where it is printed.

use std::fmt;

/// `Display` of `self.0` with control and bidi characters escaped (`\n`,
/// `\x1b`, `\u{202e}`): one input string stays on one line.
#[derive(Debug, Clone, Copy)]
pub struct Shown<'a>(pub &'a str);

/// Like [`Shown`], but keeps newlines: for a whole multi-line text made of
/// escaped fields (a defence in depth at the print site; the fields
/// themselves are escaped where they are put in, so a newline inside one
/// cannot start a fake line).
#[derive(Debug, Clone, Copy)]
pub struct ShownLines<'a>(pub &'a str);

/// A path, lossily as UTF-8, escaped as [`Shown`].
pub fn path(p: &std::path::Path) -> String {
    shown(&p.to_string_lossy())
}

/// `Shown(s).to_string()`.
pub fn shown(s: &str) -> String {
    Shown(s).to_string()
}

/// Marks that reorder text on a terminal that does bidi (U+061C, LRM/RLM,
/// the embeddings and overrides, the isolates).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn write_escaped(f: &mut fmt::Formatter<'_>, s: &str, keep_newlines: bool) -> fmt::Result {
    let mut from = 0;
    for (i, c) in s.char_indices() {
        let esc: Option<String> = match c {
            '\n' if keep_newlines => None,
            '\n' => Some("\\n".into()),
            '\r' => Some("\\r".into()),
            '\t' => Some("\\t".into()),
            c if (c as u32) < 0x80 && c.is_control() => Some(format!("\\x{:02x}", c as u32)),
            c if c.is_control() || is_bidi_control(c) => Some(format!("\\u{{{:x}}}", c as u32)),
            _ => None,
        };
        if let Some(e) = esc {
            f.write_str(&s[from..i])?;
            f.write_str(&e)?;
            from = i + c.len_utf8();
        }
    }
    f.write_str(&s[from..])
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, self.0, false)
    }
}

impl fmt::Display for ShownLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, self.0, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_are_escaped_and_plain_text_is_not() {
        // Control: plain text, including non-ASCII letters, prints as is.
        assert_eq!(shown("field-ai 0.1.0 café"), "field-ai 0.1.0 café");
        assert_eq!(
            shown("\x1b[2K\rverify: ok"),
            "\\x1b[2K\\rverify: ok",
            "ESC and CR"
        );
        assert_eq!(shown("a\nb\tc\x7f"), "a\\nb\\tc\\x7f");
        assert_eq!(shown("\u{9b}31m"), "\\u{9b}31m", "C1 CSI");
        assert_eq!(shown("abc\u{202e}fed"), "abc\\u{202e}fed", "RLO");
        assert_eq!(shown("x\u{2066}y\u{200f}"), "x\\u{2066}y\\u{200f}");
        // Escaping twice changes nothing.
        let once = shown("\x1b[2K\u{202e}\n");
        assert_eq!(shown(&once), once);
        assert_eq!(ShownLines("a\x1b\nb").to_string(), "a\\x1b\nb");
        for s in ["\x1b]0;t\x07", "\u{85}", "\u{2028}x"] {
            let out = shown(s);
            assert!(!out.chars().any(|c| c.is_control()), "{out:?}");
        }
    }
}
