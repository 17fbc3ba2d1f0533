//! A tiny progress reporter on stderr. On a terminal it redraws one line
//! (`label: 123.4 MiB / 1.9 GiB  45.6 MiB/s  ETA 0:12`) at most 10 times a
//! second, cut to the terminal's width (a wrapped line would make every
//! redraw land one row off); otherwise (CI logs) it prints a plain line
//! at most every [`PLAIN_EVERY`], so a short job logs only its summary.
//! [`Bars`] holds several bars at once (one per stick when flashing many):
//! on a terminal they are redrawn together as a block of lines, one per
//! bar; otherwise each bar logs its own plain lines, label first.
//! [`configure`] (the CLI's `--progress` and `-q`) picks the display once.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const REDRAW: Duration = Duration::from_millis(100);

/// Off a terminal: the least time between two logged lines of one bar
/// (the default of [`set_plain_every`]).
pub const PLAIN_EVERY: Duration = Duration::from_secs(10);

/// The period of plain lines in milliseconds (0: [`PLAIN_EVERY`]).
static PLAIN_EVERY_MS: AtomicU64 = AtomicU64::new(0);

/// Sets the least time between two plain lines of one bar.
pub fn set_plain_every(every: Duration) {
    let ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1);
    PLAIN_EVERY_MS.store(ms, Ordering::Relaxed);
}

fn plain_every() -> Duration {
    match PLAIN_EVERY_MS.load(Ordering::Relaxed) {
        0 => PLAIN_EVERY,
        ms => Duration::from_millis(ms),
    }
}

/// How progress is shown (`--progress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// Bars on a terminal, plain timed lines otherwise.
    Auto,
    /// Plain timed lines even on a terminal (logs, `script`).
    Plain,
    /// No bars or progress lines; a finished job's summary still prints.
    None,
}

static DISPLAY: AtomicU8 = AtomicU8::new(0);
static QUIET: AtomicBool = AtomicBool::new(false);

/// Chooses the display for the whole process; `quiet` also drops the
/// summaries and the messages of [`say`] (errors are not progress: they
/// still print).
pub fn configure(display: Display, quiet: bool) {
    let d = match display {
        Display::Auto => 0,
        Display::Plain => 1,
        Display::None => 2,
    };
    DISPLAY.store(d, Ordering::Relaxed);
    QUIET.store(quiet, Ordering::Relaxed);
}

/// `-q` was given.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Whether new bars draw on the terminal, log plain lines, or stay hidden.
fn chosen_style() -> Style {
    match (quiet(), DISPLAY.load(Ordering::Relaxed)) {
        (true, _) => Style::Silent,
        (false, 2) => Style::Hidden,
        (false, 1) => Style::Plain,
        _ if stderr_is_tty() => Style::Terminal,
        _ => Style::Plain,
    }
}

/// How one bar shows itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Terminal,
    Plain,
    /// Only the summary at the end.
    Hidden,
    /// Nothing at all (`-q`).
    Silent,
}

/// The terminal's width in columns (stderr's), 80 when it does not say.
fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ fills the winsize struct it is given, nothing else.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(2, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        usize::from(ws.ws_col)
    } else {
        80
    }
}

/// `line` cut to fit in `width` columns with the cursor left on the same
/// row (one column spare: a line filling the last column wraps on some
/// terminals).
pub fn fit(line: &str, width: usize) -> String {
    line.chars().take(width.saturating_sub(1).max(1)).collect()
}

pub struct Progress {
    label: String,
    total: u64,
    done: u64,
    started: Instant,
    style: Style,
    last_draw: Option<Instant>,
    /// When the last plain line was logged (elapsed time; non-tty mode).
    last_logged: Duration,
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
        let width = terminal_width();
        for l in &self.lines {
            let _ = write!(e, "\r\x1b[K{}\n", fit(l, width));
        }
        self.drawn = self.lines.len();
        let _ = e.flush();
    }
}

/// Several progress bars shown at once.
#[derive(Clone)]
pub struct Bars {
    style: Style,
    board: Arc<Mutex<Board>>,
}

impl Bars {
    /// Terminal mode when stderr is a tty (and `--progress` allows it).
    pub fn new() -> Bars {
        Bars {
            style: chosen_style(),
            board: Arc::default(),
        }
    }

    pub fn with_mode(tty: bool) -> Bars {
        Bars {
            style: if tty { Style::Terminal } else { Style::Plain },
            board: Arc::default(),
        }
    }

    /// A new bar under the others; it may be moved to another thread.
    pub fn add(&self, label: &str, total_bytes: u64) -> Progress {
        let mut p = Progress::with_style(label, total_bytes, self.style);
        if self.style == Style::Terminal {
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
        if self.style == Style::Silent {
            return;
        }
        if self.style != Style::Terminal {
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

/// `say!("...", args)`: [`say`] of the formatted line; for a stage's
/// messages, which `-q` silences (warnings and errors use `eprintln!`).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::host::progress::say(&format!($($arg)*))
    };
}

/// Prints `line` above the block of bars of this thread, if any (else
/// plainly on stderr); nothing under `-q`.
pub fn say(line: &str) {
    match CURRENT.with(|c| c.borrow().clone()) {
        Some(b) => b.say(line),
        None if quiet() => {}
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
            None => Progress::with_style(label, total_bytes, chosen_style()),
        }
    }

    /// Like [`Progress::new`] with the mode chosen by the caller (tests).
    pub fn with_mode(label: &str, total_bytes: u64, tty: bool) -> Progress {
        let style = if tty { Style::Terminal } else { Style::Plain };
        Progress::with_style(label, total_bytes, style)
    }

    fn with_style(label: &str, total_bytes: u64, style: Style) -> Progress {
        Progress {
            label: label.to_string(),
            total: total_bytes,
            done: 0,
            started: Instant::now(),
            style,
            last_draw: None,
            last_logged: Duration::ZERO,
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

    /// The terminal line: [`Progress::line`] and, where `width` leaves
    /// room, a bar of up to 30 cells; cut to `width` either way.
    pub fn bar_line(&self, done: u64, elapsed: Duration, width: usize) -> String {
        let text = self.line(done, elapsed);
        let room = width.saturating_sub(text.chars().count() + 5).min(30);
        if room < 10 || self.total == 0 {
            return fit(&text, width);
        }
        let filled = (done.min(self.total) as u128 * room as u128 / self.total as u128) as usize;
        let bar = "#".repeat(filled) + &" ".repeat(room - filled);
        fit(&format!("{text}  [{bar}]"), width)
    }

    /// The bytes recorded so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// Records progress; draws when due.
    pub fn update(&mut self, done: u64) {
        self.done = done.min(self.total.max(done));
        match self.style {
            Style::Terminal => {
                let now = Instant::now();
                if self.last_draw.map_or(true, |t| now - t >= REDRAW) {
                    self.last_draw = Some(now);
                    let width = terminal_width();
                    let l = self.bar_line(self.done, self.started.elapsed(), width);
                    if !self.draw_in_slot(l.clone()) {
                        let mut e = std::io::stderr().lock();
                        let _ = write!(e, "\r\x1b[K{l}");
                        let _ = e.flush();
                    }
                }
            }
            Style::Plain => {
                if let Some(l) = self.plain_line(self.done, self.started.elapsed()) {
                    eprintln!("{l}");
                }
            }
            Style::Hidden | Style::Silent => {}
        }
    }

    /// Non-terminal mode: the line to log for `done` bytes after
    /// `elapsed`, at most once per [`PLAIN_EVERY`] (or as set) and never before the
    /// first (a job shorter than that logs only the summary of
    /// [`Progress::finish`]); none once the work is all done.
    pub fn plain_line(&mut self, done: u64, elapsed: Duration) -> Option<String> {
        if done >= self.total || elapsed < self.last_logged + plain_every() {
            return None;
        }
        self.last_logged = elapsed;
        let percent = (done * 100).checked_div(self.total).unwrap_or(0);
        Some(format!("{} ({percent}%)", self.line(done, elapsed)))
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
        if self.style == Style::Silent {
            return;
        }
        let l = self.summary(self.done, self.started.elapsed());
        if self.draw_in_slot(l.clone()) {
            return;
        }
        if self.style == Style::Terminal {
            eprintln!("\r\x1b[K{}", fit(&l, terminal_width()));
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
            if !self.draw_in_slot(l) && self.style == Style::Terminal {
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
    fn progress_plain_mode_logs_by_time_not_by_step() {
        // A sub-second job (every byte, 101 updates) logs nothing before
        // its summary: the old display logged one line per 10 %.
        let mut p = Progress::with_mode("x", 100, false);
        for i in 0..=100 {
            assert_eq!(p.plain_line(i, Duration::from_millis(i * 5)), None);
        }
        p.finish();
        p.finish();
        // A long job: one line per PLAIN_EVERY at most, label first.
        let mut q = Progress::with_mode("flash /dev/sdb", 2 << 30, false);
        let at = Duration::from_secs;
        assert_eq!(
            q.plain_line(1 << 20, at(9)),
            None,
            "before the first period"
        );
        assert_eq!(
            q.plain_line(1 << 30, at(10)).as_deref(),
            Some("flash /dev/sdb: 1.0 GiB / 2.0 GiB  102.4 MiB/s  ETA 0:10 (50%)")
        );
        assert_eq!(q.plain_line(3 << 28, at(19)), None, "within the period");
        assert!(q.plain_line(3 << 28, at(20)).is_some());
        assert_eq!(
            q.plain_line(2 << 30, at(40)),
            None,
            "done: the summary says it"
        );
        // Control: a period's worth of updates logs at most one line each
        // time the period passes, however many updates come.
        let mut r = Progress::with_mode("r", 1 << 30, false);
        let lines = (0..600u64)
            .filter_map(|t| r.plain_line(t << 20, Duration::from_millis(t * 100)))
            .count();
        assert_eq!(
            lines, 5,
            "60 s of updates, one line per 10 s after the first 10 s"
        );
        assert_eq!(
            q.summary(2 << 30, Duration::from_secs(20)),
            "flash /dev/sdb: 2.0 GiB in 0:20  102.4 MiB/s"
        );
        // A zero total never divides by zero.
        let mut z = Progress::with_mode("z", 0, false);
        z.update(0);
        assert_eq!(z.plain_line(0, at(100)), None);
        z.finish();
    }

    #[test]
    fn terminal_lines_fit_the_width() {
        let long = "flash /dev/disk/by-id/usb-SanDisk_Ultra_0123456789-0:0: 1.0 GiB / 2.0 GiB";
        assert_eq!(fit(long, 20), "flash /dev/disk/by-");
        assert_eq!(fit(long, 20).chars().count(), 19);
        assert_eq!(fit("short", 80), "short");
        // Multi-byte labels are cut on characters, not bytes.
        assert_eq!(fit("ééééé", 4), "ééé");
        assert_eq!(fit("x", 0), "x");
        // A bar fills what the text leaves, up to 30 cells, and the whole
        // line never reaches the last column.
        let p = Progress::with_mode("flash", 2 << 30, true);
        let t = Duration::from_secs(10);
        let wide = p.bar_line(1 << 30, t, 120);
        assert!(
            wide.ends_with(&format!("[{}{}]", "#".repeat(15), " ".repeat(15))),
            "{wide}"
        );
        for w in [20, 40, 60, 80, 120, 200] {
            assert!(p.bar_line(1 << 30, t, w).chars().count() < w, "width {w}");
        }
        assert!(!p.bar_line(1 << 30, t, 60).contains('['), "no room: no bar");
    }

    #[test]
    fn the_display_follows_the_flags() {
        // One test touches the process-wide setting (tests run in threads).
        configure(Display::None, false);
        assert_eq!(chosen_style(), Style::Hidden);
        configure(Display::Plain, false);
        assert_eq!(chosen_style(), Style::Plain);
        configure(Display::Auto, true);
        assert_eq!(chosen_style(), Style::Silent);
        assert_eq!(Bars::new().style, Style::Silent);
        configure(Display::Auto, false);
        // cargo test's stderr is not a terminal (captured).
        assert_ne!(chosen_style(), Style::Silent);
    }

    #[test]
    fn progress_bars_share_a_board_only_on_a_terminal() {
        let plain = Bars::with_mode(false);
        let a = plain.add("a", 10);
        assert!(a.slot.is_none() && a.style == Style::Plain);
        let tty = Bars::with_mode(true);
        let (a, b) = (tty.add("a", 10), tty.add("b", 10));
        assert_eq!(a.slot.as_ref().map(|s| s.1), Some(0));
        assert_eq!(b.slot.as_ref().map(|s| s.1), Some(1));
        let board = tty.board.lock().unwrap();
        assert_eq!(board.lines, ["a: waiting", "b: waiting"]);
    }
}
