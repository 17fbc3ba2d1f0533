//! `[audit]`: the partition's size, the platform's age public key, the
//! record kinds and what to do when full (docs/audit.md).

use super::Validator;
use crate::host::digest::Sha256;
use crate::recipe::audit::{
    recipient_problem, AuditDeclaration, OnFull, MAX_AUDIT_SIZE, MIN_AUDIT_SIZE, RECORD_KINDS,
};
use crate::recipe::schema::AuditSection;
use crate::recipe::settings::{AUDIT_ON_FULL, AUDIT_RECORD, AUDIT_SIZE};

impl Validator<'_> {
    pub(super) fn audit(&mut self, a: &AuditSection) -> Option<AuditDeclaration> {
        let size = match &a.size {
            None => crate::recipe::parse_size(AUDIT_SIZE.text()).unwrap_or(MIN_AUDIT_SIZE),
            Some(s) => {
                let n = self.size(s, "audit size");
                if n > 0 && !(MIN_AUDIT_SIZE..=MAX_AUDIT_SIZE).contains(&n) {
                    self.problem(s.span(), format!("{} must be 1M to 1G", AUDIT_SIZE.name()));
                } else if n % MIN_AUDIT_SIZE != 0 {
                    self.problem(
                        s.span(),
                        format!(
                            "{} must be a whole number of MiB, e.g. \"16M\"",
                            AUDIT_SIZE.name()
                        ),
                    );
                }
                n
            }
        };
        let mut record = vec!["boot".to_string()];
        if let Some(list) = &a.record {
            for r in list {
                let k = r.get_ref();
                if !RECORD_KINDS.contains(&k.as_str()) {
                    self.problem(
                        r.span(),
                        format!(
                            "{} names {k:?}; use some of {}",
                            AUDIT_RECORD.name(),
                            RECORD_KINDS.join(", ")
                        ),
                    );
                } else if record.contains(k) && k != "boot" {
                    self.problem(r.span(), format!("{k:?} is listed twice; remove one"));
                } else if k != "boot" {
                    record.push(k.clone());
                }
            }
        } else {
            record = RECORD_KINDS.iter().map(|k| k.to_string()).collect();
        }
        record.sort();
        let on_full = match a.on_full.as_ref().map(|o| (o.get_ref().as_str(), o.span())) {
            None | Some(("stop", _)) => OnFull::Stop,
            Some(("halt", _)) => OnFull::Halt,
            Some((other, span)) => {
                self.problem(
                    span,
                    format!(
                        "{} {other:?} is not one of \"stop\", \"halt\"",
                        AUDIT_ON_FULL.name()
                    ),
                );
                OnFull::Stop
            }
        };
        let key_path = self.path(&a.key, "audit key")?;
        // A public key is one short line: a bigger file is not one.
        let text = match std::fs::metadata(&key_path) {
            Ok(m) if m.len() > 4096 => {
                self.problem(
                    a.key.span(),
                    "audit key: over 4 KiB, so not an age public key; give the age1... line",
                );
                return None;
            }
            _ => match std::fs::read_to_string(&key_path) {
                Ok(t) => t,
                Err(e) => {
                    self.problem(a.key.span(), format!("audit key: cannot read it: {e}"));
                    return None;
                }
            },
        };
        if let Some(m) = recipient_problem(&text) {
            self.problem(a.key.span(), format!("audit key {:?} {m}", a.key.get_ref()));
            return None;
        }
        let recipient = text.trim().to_string();
        Some(AuditDeclaration {
            size,
            key_sha256: Sha256::of_bytes(recipient.as_bytes()),
            recipient,
            key_path,
            record,
            on_full,
            at: self.at(a.key.span()),
            on_full_at: a.on_full.as_ref().map(|o| self.at(o.span())),
        })
    }
}
