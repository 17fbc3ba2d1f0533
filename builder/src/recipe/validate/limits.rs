//! `[limits]`: the caps on base tarballs, image archives and layers.

use super::Validator;
use crate::host::limits::{Limits, SetIdRule};
use crate::recipe::parse_size;
use crate::recipe::schema::LimitsSection;
use crate::recipe::settings::{
    LIMITS_MAX_BYTES, LIMITS_MAX_ENTRIES, LIMITS_MAX_FILE_BYTES, LIMITS_MAX_RATIO,
};

/// The declared defaults as `Limits` (the declarations are the source).
pub fn default_limits() -> Limits {
    Limits {
        max_bytes: parse_size(LIMITS_MAX_BYTES.text()).unwrap_or(64 << 30),
        max_entries: LIMITS_MAX_ENTRIES.int(),
        max_ratio: LIMITS_MAX_RATIO.int(),
        max_file_bytes: parse_size(LIMITS_MAX_FILE_BYTES.text()).unwrap_or(16 << 30),
        base_setuid: SetIdRule::Refuse,
    }
}

impl Validator<'_> {
    pub(super) fn limits(&mut self, l: &LimitsSection) -> Limits {
        let mut out = default_limits();
        if let Some(s) = &l.max_bytes {
            out.max_bytes = self.size(s, "limits max_bytes");
        }
        if let Some(s) = &l.max_file_bytes {
            out.max_file_bytes = self.size(s, "limits max_file_bytes");
        }
        for (v, field, what) in [
            (&l.max_entries, &mut out.max_entries, "max_entries"),
            (&l.max_ratio, &mut out.max_ratio, "max_ratio"),
        ] {
            if let Some(v) = v {
                if *v.get_ref() == 0 {
                    self.problem(
                        v.span(),
                        format!("limits {what} must be at least 1; remove it for the default"),
                    );
                }
                *field = *v.get_ref();
            }
        }
        if let Some(s) = &l.base_setuid {
            match SetIdRule::parse(s.get_ref()) {
                Some(r) => out.base_setuid = r,
                None => self.problem(
                    s.span(),
                    format!(
                        "limits base_setuid {:?} is not one of \"refuse\", \"strip\", \"keep\"",
                        s.get_ref()
                    ),
                ),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn declared_defaults_are_host_limits_defaults() {
        assert_eq!(super::default_limits(), crate::host::limits::DEFAULT_LIMITS);
    }
}
