//! The SHA256 list (BSD-style `SHA256 (name) = hex` lines, as `signify -C`
//! reads them), parsed strictly.
//! Invariant: every accepted name is a plain file name in the folder
//! (no `/`, no `..`, no control characters), listed once.

use std::collections::BTreeMap;

use super::SUMS;
use crate::host::digest::Sha256;

/// Parse the SHA256 list strictly: every line `SHA256 (name) = <64 hex>`
/// terminated by '\n', names plain file names, no duplicates, at least one
/// entry. Errors are one-line messages naming the offending line.
pub fn parse_sums(data: &[u8]) -> Result<BTreeMap<String, Sha256>, String> {
    let text = std::str::from_utf8(data).map_err(|_| format!("{SUMS}: not UTF-8 text"))?;
    if text.is_empty() {
        return Err(format!("{SUMS}: empty"));
    }
    let Some(body) = text.strip_suffix('\n') else {
        return Err(format!("{SUMS}: last line is not newline-terminated"));
    };
    let mut out = BTreeMap::new();
    for (i, line) in body.split('\n').enumerate() {
        let n = i + 1;
        // Shown escaped ({:?}), so a hostile line cannot break the one-line message.
        let show: String = line.chars().take(120).collect();
        let rest = line
            .strip_prefix("SHA256 (")
            .ok_or_else(|| format!("{SUMS}: line {n} is not `SHA256 (file) = hex`: {show:?}"))?;
        let (name, hex) = rest
            .rsplit_once(") = ")
            .ok_or_else(|| format!("{SUMS}: line {n} is not `SHA256 (file) = hex`: {show:?}"))?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(format!(
                "{SUMS}: line {n} does not end in 64 lowercase hex digits: {show:?}"
            ));
        }
        let digest =
            Sha256::from_hex(hex).map_err(|_| format!("{SUMS}: line {n}: bad digest: {show:?}"))?;
        if !is_plain_name(name) {
            return Err(format!(
                "{SUMS}: line {n} names {name:?}, which is not a plain file name in this folder"
            ));
        }
        if out.insert(name.to_string(), digest).is_some() {
            return Err(format!("{SUMS}: line {n} lists {name} a second time"));
        }
    }
    Ok(out)
}

/// The text `parse_sums` reads for `entries` (sorted by name, as the
/// signer writes it).
pub fn format_sums(entries: &BTreeMap<String, Sha256>) -> String {
    entries
        .iter()
        .map(|(n, d)| format!("SHA256 ({n}) = {d}\n"))
        .collect()
}

/// A name that stays inside the folder it is joined to.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && !name.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names() {
        for ok in ["a.raw", "manifest.json", "x..y", ".hidden"] {
            assert!(is_plain_name(ok), "{ok}");
        }
        for no in ["", ".", "..", "../x", "a/b", "/abs", "a\0b", "a\\b", "a\rb"] {
            assert!(!is_plain_name(no), "{no:?}");
        }
    }

    #[test]
    fn sums_parsing_is_strict() {
        let d = "a".repeat(64);
        let good = format!("SHA256 (a.raw) = {d}\nSHA256 (manifest.json) = {d}\n");
        let m = parse_sums(good.as_bytes()).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(format_sums(&m), good);
        let bad = [
            String::new(),
            format!("SHA256 (a.raw) = {d}"),
            format!("SHA256 (a.raw) = {d}\n\n"),
            format!("SHA256 (a.raw) = {d}\r\n"),
            format!("SHA256 (a.raw) = {}\n", "A".repeat(64)),
            format!("SHA256 (a.raw) = {}\n", "a".repeat(63)),
            format!("SHA512 (a.raw) = {d}\n"),
            format!("SHA256 (../x) = {d}\n"),
            format!("SHA256 () = {d}\n"),
            format!("SHA256 (a.raw) = {d}\nSHA256 (a.raw) = {d}\n"),
            format!("SHA256 (a.raw)  = {d}\n"),
        ];
        for b in &bad {
            assert!(parse_sums(b.as_bytes()).is_err(), "{b:?}");
        }
        let e = parse_sums(format!("SHA256 (../x) = {d}\n").as_bytes()).unwrap_err();
        assert!(e.contains("line 1") && e.contains("../x"), "{e}");
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        fn name() -> impl Strategy<Value = String> {
            // Printable names, including spaces, parentheses and ") = ".
            proptest::string::string_regex("[ -~]{1,40}")
                .unwrap()
                .prop_filter("plain", |n| is_plain_name(n))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(crate::release::signify::fuzz_cases(1000)))]

            #[test]
            fn arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
                if let Err(e) = parse_sums(&data) {
                    prop_assert!(!e.contains('\n'), "one line: {}", e);
                }
            }

            #[test]
            fn mutated_valid_lists_never_panics(
                entries in proptest::collection::btree_map(name(), any::<[u8; 32]>(), 1..6),
                at in any::<proptest::sample::Index>(),
                byte in any::<u8>(),
            ) {
                let m: BTreeMap<String, Sha256> =
                    entries.into_iter().map(|(n, d)| (n, Sha256(d))).collect();
                let mut text = format_sums(&m).into_bytes();
                let i = at.index(text.len());
                text[i] = byte;
                let _ = parse_sums(&text);
            }

            #[test]
            fn valid_lists_round_trip(
                entries in proptest::collection::btree_map(name(), any::<[u8; 32]>(), 1..8)
            ) {
                let m: BTreeMap<String, Sha256> =
                    entries.into_iter().map(|(n, d)| (n, Sha256(d))).collect();
                let text = format_sums(&m);
                prop_assert_eq!(parse_sums(text.as_bytes()).unwrap(), m);
            }
        }
    }
}
