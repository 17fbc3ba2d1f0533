//! A tiny progress reporter on stderr. On a terminal it redraws one line
//! (`label: 123.4 MiB / 1.9 GiB  45.6 MiB/s  ETA 0:12`) at most 10 times a
//! second; otherwise (CI logs) it prints one plain line per 10 %.

use std::io::Write;
use std::time::{Duration, Instant};

const REDRAW: Duration = Duration::from_millis(100);

pub struct Progress {
    label: String,
    total: u64,
    done: u64,
    started: Instant,
    tty: bool,
    last_draw: Option<Instant>,
    /// Last 10 % step logged (non-tty mode).
    last_decile: u64,
    finished: bool,
}

/// `1023 B`, `12.3 KiB`, `123.4 MiB`, `1.9 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", UNITS[i])
}

/// `m:ss` or `h:mm:ss`.
pub fn human_duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

impl Progress {
    /// Starts reporting `total_bytes` of work under `label`; terminal mode
    /// when stderr is a tty.
    pub fn new(label: &str, total_bytes: u64) -> Progress {
        // SAFETY: isatty only inspects the descriptor.
        let tty = unsafe { libc::isatty(2) } == 1;
        Progress::with_mode(label, total_bytes, tty)
    }

    /// Like [`Progress::new`] with the mode chosen by the caller (tests, `--quiet`-like callers).
    pub fn with_mode(label: &str, total_bytes: u64, tty: bool) -> Progress {
        Progress {
            label: label.to_string(),
            total: total_bytes,
            done: 0,
            started: Instant::now(),
            tty,
            last_draw: None,
            last_decile: 0,
            finished: false,
        }
    }

    /// The status text for `done` bytes after `elapsed`.
    pub fn line(&self, done: u64, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        let eta = if rate > 0.0 && self.total > done {
            human_duration(((self.total - done) as f64 / rate).ceil() as u64)
        } else {
            "-:--".to_string()
        };
        format!(
            "{}: {} / {}  {}/s  ETA {eta}",
            self.label,
            human_bytes(done),
            human_bytes(self.total),
            human_bytes(rate as u64)
        )
    }

    /// Records progress; draws when due.
    pub fn update(&mut self, done: u64) {
        self.done = done.min(self.total.max(done));
        if self.tty {
            let now = Instant::now();
            if self.last_draw.map_or(true, |t| now - t >= REDRAW) {
                self.last_draw = Some(now);
                let l = self.line(self.done, self.started.elapsed());
                let mut e = std::io::stderr().lock();
                let _ = write!(e, "\r\x1b[K{l}");
                let _ = e.flush();
            }
        } else if let Some(decile) = (self.done.min(self.total) * 10).checked_div(self.total) {
            if decile > self.last_decile && decile < 10 {
                self.last_decile = decile;
                eprintln!(
                    "{} ({}%)",
                    self.line(self.done, self.started.elapsed()),
                    decile * 10
                );
            }
        }
    }

    /// Final line (always printed once), ending the redrawn line on a tty.
    pub fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 {
            self.done as f64 / secs
        } else {
            0.0
        };
        let l = format!(
            "{}: {} in {}  {}/s",
            self.label,
            human_bytes(self.done),
            human_duration(secs.round() as u64),
            human_bytes(rate as u64)
        );
        if self.tty {
            eprintln!("\r\x1b[K{l}");
        } else {
            eprintln!("{l}");
        }
    }

    /// Ends the redrawn line without a summary (for an interrupted job, so
    /// the next message starts on a fresh line).
    pub fn abandon(&mut self) {
        if !self.finished {
            self.finished = true;
            if self.tty {
                eprintln!();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_formats() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(123_400_000), "117.7 MiB");
        assert_eq!(human_bytes(2_040_109_466), "1.9 GiB");
        assert_eq!(human_duration(12), "0:12");
        assert_eq!(human_duration(3725), "1:02:05");
        let p = Progress::with_mode("flash", 2 << 30, false);
        let l = p.line(1 << 30, Duration::from_secs(10));
        assert_eq!(l, "flash: 1.0 GiB / 2.0 GiB  102.4 MiB/s  ETA 0:10");
        assert!(p.line(0, Duration::ZERO).ends_with("ETA -:--"));
    }

    #[test]
    fn progress_plain_mode_logs_deciles_once() {
        let mut p = Progress::with_mode("x", 100, false);
        for i in 0..=100 {
            p.update(i);
        }
        assert_eq!(p.last_decile, 9);
        p.finish();
        p.finish();
        // A zero total never divides by zero.
        let mut z = Progress::with_mode("z", 0, false);
        z.update(0);
        z.finish();
    }
}
