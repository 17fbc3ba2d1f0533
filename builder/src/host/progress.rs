//! A tiny progress reporter on stderr. On a terminal it redraws one line
//! (`label: 123.4 MiB / 1.9 GiB  45.6 MiB/s  ETA 0:12`) at most 10 times a
//! second; otherwise (CI logs) it prints one plain line per 10 %.
//! [`Bars`] holds several bars at once (one per stick when flashing many):
//! on a terminal they are redrawn together as a block of lines, one per
//! bar; otherwise each bar logs its own plain lines, label first.

use std::io::Write;
use std::sync::{Arc, Mutex};
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
    /// Its line in a block of bars (terminal mode of [`Bars`]).
    slot: Option<(Arc<Mutex<Board>>, usize)>,
}

/// The lines of a block of bars and how many of them are on the screen.
#[derive(Default)]
struct Board {
    lines: Vec<String>,
    drawn: usize,
}

impl Board {
    /// Redraws every line in place: up over the lines drawn last time,
    /// then each line cleared and rewritten.
    fn redraw(&mut self) {
        let mut e = std::io::stderr().lock();
        if self.drawn > 0 {
            let _ = write!(e, "\x1b[{}A", self.drawn);
        }
        for l in &self.lines {
            let _ = write!(e, "\r\x1b[K{l}\n");
        }
        self.drawn = self.lines.len();
        let _ = e.flush();
    }
}

/// Several progress bars shown at once.
#[derive(Clone)]
pub struct Bars {
    tty: bool,
    board: Arc<Mutex<Board>>,
}

impl Bars {
    /// Terminal mode when stderr is a tty.
    pub fn new() -> Bars {
        Bars::with_mode(stderr_is_tty())
    }

    pub fn with_mode(tty: bool) -> Bars {
        Bars {
            tty,
            board: Arc::default(),
        }
    }

    /// A new bar under the others; it may be moved to another thread.
    pub fn add(&self, label: &str, total_bytes: u64) -> Progress {
        let mut p = Progress::with_mode(label, total_bytes, self.tty);
        if self.tty {
            let mut b = self.board.lock().unwrap_or_else(|e| e.into_inner());
            b.lines.push(format!("{label}: waiting"));
            p.slot = Some((self.board.clone(), b.lines.len() - 1));
        }
        p
    }
}

impl Bars {
    /// Prints `line` above the block of bars (a terminal: the block is
    /// redrawn under it), so messages of jobs running beside the bars do
    /// not land inside the block.
    pub fn say(&self, line: &str) {
        if !self.tty {
            eprintln!("{line}");
            return;
        }
        let mut b = self.board.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut e = std::io::stderr().lock();
            if b.drawn > 0 {
                let _ = write!(e, "\x1b[{}A\r\x1b[J", b.drawn);
            }
            let _ = writeln!(e, "{line}");
        }
        b.drawn = 0;
        b.redraw();
    }

    /// Runs `f` with every [`Progress::new`] on this thread drawn in this
    /// block (jobs on several threads each call it with a clone).
    pub fn enter<T>(&self, f: impl FnOnce() -> T) -> T {
        let old = CURRENT.with(|c| c.replace(Some(self.clone())));
        let v = f();
        CURRENT.with(|c| *c.borrow_mut() = old);
        v
    }
}

thread_local! {
    /// The block of bars new progress reporters on this thread join
    /// (set by [`Bars::enter`]).
    static CURRENT: std::cell::RefCell<Option<Bars>> = const { std::cell::RefCell::new(None) };
}

/// Prints `line` above the block of bars of this thread, if any (else
/// plainly on stderr).
pub fn say(line: &str) {
    match CURRENT.with(|c| c.borrow().clone()) {
        Some(b) => b.say(line),
        None => eprintln!("{line}"),
    }
}

impl Default for Bars {
    fn default() -> Self {
        Bars::new()
    }
}

fn stderr_is_tty() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(2) == 1 }
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
        match CURRENT.with(|c| c.borrow().clone()) {
            Some(bars) => bars.add(label, total_bytes),
            None => Progress::with_mode(label, total_bytes, stderr_is_tty()),
        }
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
            slot: None,
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

    /// The bytes recorded so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// Records progress; draws when due.
    pub fn update(&mut self, done: u64) {
        self.done = done.min(self.total.max(done));
        if self.tty {
            let now = Instant::now();
            if self.last_draw.map_or(true, |t| now - t >= REDRAW) {
                self.last_draw = Some(now);
                let l = self.line(self.done, self.started.elapsed());
                if !self.draw_in_slot(l.clone()) {
                    let mut e = std::io::stderr().lock();
                    let _ = write!(e, "\r\x1b[K{l}");
                    let _ = e.flush();
                }
            }
        } else if let Some(l) = self.plain_line(self.done, self.started.elapsed()) {
            eprintln!("{l}");
        }
    }

    /// Non-terminal mode: the line to log for `done` bytes after
    /// `elapsed`, once per new 10 % step (none at 0 % and 100 %: the
    /// summary of [`Progress::finish`] says that).
    pub fn plain_line(&mut self, done: u64, elapsed: Duration) -> Option<String> {
        let decile = (done.min(self.total) * 10).checked_div(self.total)?;
        if decile > self.last_decile && decile < 10 {
            self.last_decile = decile;
            Some(format!("{} ({}%)", self.line(done, elapsed), decile * 10))
        } else {
            None
        }
    }

    /// In a block of bars: replaces this bar's line and redraws the block.
    fn draw_in_slot(&self, line: String) -> bool {
        let Some((board, i)) = &self.slot else {
            return false;
        };
        let mut b = board.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = b.lines.get_mut(*i) {
            *l = line;
        }
        b.redraw();
        true
    }

    /// Final line (always printed once), ending the redrawn line on a tty.
    pub fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let l = self.summary(self.done, self.started.elapsed());
        if self.draw_in_slot(l.clone()) {
            return;
        }
        if self.tty {
            eprintln!("\r\x1b[K{l}");
        } else {
            eprintln!("{l}");
        }
    }

    /// `label: 1.0 GiB in 0:10  102.4 MiB/s`.
    pub fn summary(&self, done: u64, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        format!(
            "{}: {} in {}  {}/s",
            self.label,
            human_bytes(done),
            human_duration(secs.round() as u64),
            human_bytes(rate as u64)
        )
    }

    /// Ends the redrawn line without a summary (for an interrupted job, so
    /// the next message starts on a fresh line).
    pub fn abandon(&mut self) {
        if !self.finished {
            self.finished = true;
            let l = format!("{}: stopped at {}", self.label, human_bytes(self.done));
            if !self.draw_in_slot(l) && self.tty {
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
        // The plain lines: one per 10 % step, label first, none at 0 or 100 %.
        let mut q = Progress::with_mode("flash /dev/sdb", 2 << 30, false);
        let s = Duration::from_secs(1);
        assert_eq!(q.plain_line(0, s), None);
        assert_eq!(
            q.plain_line(1 << 30, Duration::from_secs(10)).as_deref(),
            Some("flash /dev/sdb: 1.0 GiB / 2.0 GiB  102.4 MiB/s  ETA 0:10 (50%)")
        );
        assert_eq!(q.plain_line(1 << 30, s), None, "a step is logged once");
        assert_eq!(q.plain_line(2 << 30, s), None);
        assert_eq!(
            q.summary(2 << 30, Duration::from_secs(20)),
            "flash /dev/sdb: 2.0 GiB in 0:20  102.4 MiB/s"
        );
        // A zero total never divides by zero.
        let mut z = Progress::with_mode("z", 0, false);
        z.update(0);
        z.finish();
    }

    #[test]
    fn progress_bars_share_a_board_only_on_a_terminal() {
        let plain = Bars::with_mode(false);
        let a = plain.add("a", 10);
        assert!(a.slot.is_none() && !a.tty);
        let tty = Bars::with_mode(true);
        let (a, b) = (tty.add("a", 10), tty.add("b", 10));
        assert_eq!(a.slot.as_ref().map(|s| s.1), Some(0));
        assert_eq!(b.slot.as_ref().map(|s| s.1), Some(1));
        let board = tty.board.lock().unwrap();
        assert_eq!(board.lines, ["a: waiting", "b: waiting"]);
    }
}
