//! Calendar time from a Unix timestamp, without the clock: every time an
//! output carries is SOURCE_DATE_EPOCH (or a file's own time), formatted
//! here. UTC, proleptic Gregorian.

/// A UTC date and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl Utc {
    /// The date and time `epoch` seconds after 1970-01-01T00:00:00Z.
    pub fn from_epoch(epoch: u64) -> Utc {
        let days = (epoch / 86_400) as i64;
        let secs = (epoch % 86_400) as u32;
        // Days to civil date (Howard Hinnant's algorithm): eras of 400
        // years, March-based years so the leap day comes last.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        Utc {
            year: yoe + era * 400 + i64::from(month <= 2),
            month,
            day,
            hour: secs / 3_600,
            minute: secs % 3_600 / 60,
            second: secs % 60,
        }
    }

    /// `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339 / ISO 8601).
    pub fn rfc3339(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// `YYYYMMDDhhmmss00`, as xorriso's `--modification-date=` wants it.
    pub fn iso9660(&self) -> String {
        format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}00",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for `epoch`.
pub fn rfc3339(epoch: u64) -> String {
    Utc::from_epoch(epoch).rfc3339()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_735_689_600), "2025-01-01T00:00:00Z");
        assert_eq!(rfc3339(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(Utc::from_epoch(1_735_689_600).iso9660(), "2025010100000000");
    }
}
