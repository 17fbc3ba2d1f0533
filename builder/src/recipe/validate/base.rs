//! `[base]` and `[kernel]`: where the root tree comes from. Suite, mirror
//! and package names reach mmdebstrap and apt as arguments and sources.list
//! lines, so only plain values pass: nothing that reads as an option, a
//! host path, a `file:` URL or a second line.

use toml::Spanned;

use super::Validator;
use crate::host::digest::Sha256;
use crate::recipe::schema::{BaseSection, KernelSection};
use crate::recipe::settings;
use crate::recipe::Base;

/// Characters a mirror URL may hold beyond letters and digits.
const MIRROR_CHARS: &str = "/:._+~-%";

impl Validator<'_> {
    pub(super) fn base(&mut self, b: &BaseSection) -> Option<Base> {
        match (&b.debian, &b.tarball) {
            (Some(d), None) => {
                let suite_ok = self.suite(&d.suite);
                let mirror_ok = self.mirror(&d.mirror);
                let mut ok = suite_ok && mirror_ok;
                for p in &d.packages {
                    ok &= self.package(p, "[base.debian] package");
                }
                ok.then(|| Base::Debian {
                    suite: d.suite.get_ref().clone(),
                    mirror: d.mirror.get_ref().clone(),
                    packages: d.packages.iter().map(|p| p.get_ref().clone()).collect(),
                })
            }
            (None, Some(t)) => {
                let at = self.at(t.sha256.span());
                let sha = match Sha256::from_hex(t.sha256.get_ref()) {
                    Ok(s) => Some(s),
                    Err(_) => {
                        self.problem(
                            t.sha256.span(),
                            "base tarball sha256 must be 64 hex digits (run `sha256sum` on the file)",
                        );
                        None
                    }
                };
                let path = self.file_input(&t.path, sha, "base tarball");
                match (path, sha) {
                    (Some(path), Some(sha256)) => Some(Base::Tarball { path, sha256, at }),
                    _ => None,
                }
            }
            (Some(_), Some(_)) => {
                let span = self.section_span("[base");
                self.problem(
                    span,
                    "[base] has both `debian` and `tarball`; choose one source for the root tree",
                );
                None
            }
            (None, None) => {
                let span = self.section_span("[base");
                self.problem(span, "[base] needs either [base.debian] or [base.tarball]");
                None
            }
        }
    }

    fn suite(&mut self, s: &Spanned<String>) -> bool {
        let v = s.get_ref();
        let ok = !v.is_empty()
            && v.len() <= 64
            && v.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && v.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".+~_-".contains(c));
        if !ok {
            self.problem(
                s.span(),
                format!(
                    "{} {v:?} is not a plain suite name; write e.g. \"bookworm\" or \"bookworm-backports\"",
                    settings::DEBIAN_SUITE.name()
                ),
            );
        }
        ok
    }

    fn mirror(&mut self, m: &Spanned<String>) -> bool {
        let v = m.get_ref();
        let what = settings::DEBIAN_MIRROR.name();
        let fix = "write the archive's URL, e.g. \"http://deb.debian.org/debian\"";
        if !crate::recipe::url::is_url(v) {
            self.problem(
                m.span(),
                format!("{what} {v:?} is not an http:// or https:// URL; {fix}"),
            );
            return false;
        }
        if let Err(e) = crate::recipe::url::check_url(v) {
            self.problem(m.span(), format!("{what}: {e}; {fix}"));
            return false;
        }
        if let Some(c) = v
            .chars()
            .find(|c| !c.is_ascii_alphanumeric() && !MIRROR_CHARS.contains(*c))
        {
            self.problem(
                m.span(),
                format!("{what} {v:?} contains {c:?}; a mirror is a plain URL (letters, digits and {MIRROR_CHARS}); {fix}"),
            );
            return false;
        }
        true
    }

    pub(super) fn kernel(&mut self, k: &KernelSection) -> (String, Vec<String>) {
        self.package(&k.package, "[kernel] package");
        let mut extra_modules = Vec::new();
        for m in &k.modules {
            let n = m.get_ref();
            if n.is_empty()
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                self.problem(m.span(), format!("{n:?} is not a kernel module name"));
            } else {
                extra_modules.push(n.replace('-', "_"));
            }
        }
        (k.package.get_ref().clone(), extra_modules)
    }
}
