//! Debian control-file paragraphs (deb822: apt `Packages` indexes, dpkg's
//! `status`): `Field: value` lines, continuation lines indented, blank
//! lines between paragraphs. One reader for every such file cairn reads.

use std::io::BufRead;

use anyhow::{Context, Result};

/// One paragraph: its fields in order, each value with its continuation
/// lines (joined with `\n`, leading space intact), so a paragraph can be
/// written out again as it was read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Paragraph(pub Vec<(String, String)>);

impl Paragraph {
    /// The first line of `name`'s value (field names are case-insensitive):
    /// cairn reads single-line fields only.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split('\n').next().unwrap_or_default())
    }

    /// Every field with its whole value, continuation lines included.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Calls `each` for every paragraph of `r`, in order, without holding
/// more than one paragraph in memory (indexes are tens of MB).
pub fn for_each_paragraph(r: impl BufRead, mut each: impl FnMut(Paragraph)) -> Result<()> {
    let mut cur = Paragraph::default();
    for line in r.lines() {
        let line = line.context("reading a Debian control file")?;
        if line.trim().is_empty() {
            if !cur.0.is_empty() {
                each(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            // A continuation line (Description, Conffiles, ...).
            if let Some(last) = cur.0.last_mut() {
                last.1.push('\n');
                last.1.push_str(&line);
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            cur.0.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    if !cur.0.is_empty() {
        each(cur);
    }
    Ok(())
}

/// Every paragraph of `text`.
pub fn paragraphs(text: &str) -> Vec<Paragraph> {
    let mut out = Vec::new();
    // Reading from memory cannot fail.
    let _ = for_each_paragraph(text.as_bytes(), |p| out.push(p));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_fields_and_continuations() {
        let t = "Package: a\nVersion: 1\nDescription: x\n more\n .\n\n\nPackage: b\nstatus: y\n";
        let p = paragraphs(t);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].get("package"), Some("a"));
        assert_eq!(p[0].get("Description"), Some("x"));
        assert_eq!(p[0].0.len(), 3);
        let whole: Vec<(&str, &str)> = p[0].fields().collect();
        assert_eq!(whole[2], ("Description", "x\n more\n ."));
        assert_eq!(p[1].get("Status"), Some("y"));
        assert_eq!(p[1].get("Version"), None);
    }
}
