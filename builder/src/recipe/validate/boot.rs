//! `[boot] cmdline` and `[debug] cmdline`: the words a recipe adds to the
//! signed kernel command line. cairn owns its own words; words that open a
//! shell or bypass the init pass only when `[debug]` names them, and then
//! they are recorded so the manifest shows them.

use toml::Spanned;

use super::Validator;
use crate::recipe::schema::{BootSection, DebugSection};
use crate::recipe::settings;

/// Command-line words that open a shell, stop the boot for a prompt or
/// bypass cairn's init and units, with why. A pattern ending in `=` matches
/// every word with that key and a value; a dotted key (and `break`) matches
/// with or without a value; any other matches exactly that word (the init
/// reads it as an argument). systemd reads `-` and `_` alike in its keys,
/// so they are compared alike.
pub const REFUSED_CMDLINE: &[(&str, &str)] = &[
    ("init=", "replaces the init"),
    ("rdinit=", "replaces the initramfs init"),
    ("systemd.debug_shell", "starts a root shell on tty9"),
    (
        "systemd.crash_shell",
        "starts a root shell when systemd crashes",
    ),
    (
        "systemd.confirm_spawn",
        "asks on the console before each unit starts",
    ),
    (
        "systemd.unit=",
        "boots another target instead of cairn's (emergency.target, rescue.target, ...)",
    ),
    (
        "rd.systemd.unit=",
        "boots another target instead of cairn's",
    ),
    (
        "systemd.wants=",
        "starts extra units (debug-shell.service, ...)",
    ),
    ("systemd.mask=", "masks units (the firewall, ...)"),
    ("systemd.run=", "runs a command at boot"),
    (
        "systemd.firstboot",
        "cairn sets it; a prompt on the console",
    ),
    (
        "systemd.gpt_auto",
        "cairn sets it; mounts partitions cairn does not know",
    ),
    ("rd.break", "stops the initramfs at a shell"),
    ("rd.shell", "opens a shell in the initramfs"),
    ("rd.emergency", "picks the initramfs's failure action"),
    ("break", "stops the initramfs at a shell"),
    ("emergency", "boots into the emergency shell"),
    ("rescue", "boots into the rescue shell"),
    ("single", "boots into single-user (rescue) mode"),
    ("s", "boots into single-user (rescue) mode"),
    ("S", "boots into single-user (rescue) mode"),
    ("1", "boots into runlevel 1 (rescue)"),
    ("-s", "boots into single-user (rescue) mode"),
    ("-b", "boots into the emergency shell"),
];

fn systemd_key(s: &str) -> String {
    s.replace('-', "_")
}

/// Why `word` is refused (its pattern and reason), if it is.
pub fn refused_cmdline_word(word: &str) -> Option<(&'static str, &'static str)> {
    let (key, value) = match word.split_once('=') {
        Some((k, v)) => (systemd_key(k), Some(v)),
        None => (systemd_key(word), None),
    };
    REFUSED_CMDLINE.iter().copied().find(|(p, _)| {
        if let Some(stem) = p.strip_suffix('=') {
            // `init=/bin/sh`, `systemd.unit=rescue.target`, ...
            value.is_some() && key == systemd_key(stem)
        } else if p.contains('.') || *p == "break" {
            // A key with or without a value: `rd.break`, `rd.break=pre-mount`.
            key == systemd_key(p)
        } else {
            // Words handed to the init as arguments (`single`, `S`, `1`).
            word == *p
        }
    })
}

/// The command-line words of a recipe, and which of them `[debug]` let in.
pub(super) struct Cmdline {
    pub words: Vec<String>,
    pub debug_allowed: Vec<String>,
}

/// What `[debug] cmdline` allows.
enum DebugAllows {
    Nothing,
    All,
    Words(Vec<String>),
}

impl Validator<'_> {
    fn debug_allows(&mut self, d: &DebugSection) -> DebugAllows {
        let Some(v) = &d.cmdline else {
            return DebugAllows::Nothing;
        };
        let fix = format!(
            "{} is `true` or a list of words, e.g. [\"rd.break\"]",
            settings::DEBUG_CMDLINE.name()
        );
        match v.get_ref() {
            toml::Value::Boolean(true) => DebugAllows::All,
            toml::Value::Boolean(false) => DebugAllows::Nothing,
            toml::Value::Array(a) => {
                let mut words = Vec::new();
                for w in a {
                    match w.as_str() {
                        Some(s) => words.push(s.to_string()),
                        None => {
                            self.problem(
                                v.span(),
                                format!(
                                    "{} lists {w}, not a word; {fix}",
                                    settings::DEBUG_CMDLINE.name()
                                ),
                            );
                        }
                    }
                }
                DebugAllows::Words(words)
            }
            other => {
                self.problem(
                    v.span(),
                    format!(
                        "{} is a {}; {fix}",
                        settings::DEBUG_CMDLINE.name(),
                        other.type_str()
                    ),
                );
                DebugAllows::Nothing
            }
        }
    }

    pub(super) fn cmdline(&mut self, b: &BootSection, d: &DebugSection) -> Cmdline {
        let allows = self.debug_allows(d);
        let mut out = Cmdline {
            words: Vec::new(),
            debug_allowed: Vec::new(),
        };
        for w in &b.cmdline {
            self.cmdline_word(w, &allows, &mut out);
        }
        out
    }

    fn cmdline_word(&mut self, w: &Spanned<String>, allows: &DebugAllows, out: &mut Cmdline) {
        let word = w.get_ref();
        if word.is_empty() || word.chars().any(|c| c.is_whitespace() || c.is_control()) {
            self.problem(
                w.span(),
                format!("cmdline word {word:?} must be one non-empty word; list words separately"),
            );
            return;
        }
        if word.starts_with("cairn.") || word.starts_with("roothash=") {
            self.problem(
                w.span(),
                format!("cmdline word {word:?} is reserved: cairn sets it from the build"),
            );
            return;
        }
        if let Some((pattern, why)) = refused_cmdline_word(word) {
            let allowed = match allows {
                DebugAllows::All => true,
                DebugAllows::Words(list) => list.iter().any(|a| a == word),
                DebugAllows::Nothing => false,
            };
            if !allowed {
                self.problem(
                    w.span(),
                    format!(
                        "cmdline word {word:?} is refused in a production image ({pattern}: {why}); remove it, or for a test image allow it with [debug] cmdline = [{word:?}]"
                    ),
                );
                return;
            }
            out.debug_allowed.push(word.clone());
        }
        out.words.push(word.clone());
    }
}
