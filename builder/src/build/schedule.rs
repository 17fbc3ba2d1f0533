//! The build's scheduler: each stage's start and end lines and its time
//! (`Stages::run`), independent stages at once on threads of their own
//! (`Stages::run_together`), and gates one stage opens for the stages that
//! read what it makes. Concurrency lives here and in the stages, never in
//! `build()`.

use std::time::Instant;

use anyhow::Result;

use super::Step;

/// Prints each stage as it starts and its duration when it ends.
pub(crate) struct Stages {
    /// The last step's number: 12 with a signing key, else 11.
    pub total: usize,
    pub started: Instant,
    pub times: Vec<(String, f64)>,
}

impl Stages {
    pub fn run<T>(&mut self, step: Step, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let (n, total) = (step.number(), self.total);
        crate::host::interrupt::check()?;
        crate::say!("[{n:>2}/{total}] {name} ...");
        let t = Instant::now();
        let v = f()?;
        crate::host::interrupt::check()?;
        let secs = t.elapsed().as_secs_f64();
        crate::say!("[{n:>2}/{total}] {name} done in {secs:.1}s");
        self.times.push((name.to_string(), secs));
        Ok(v)
    }

    /// Runs independent stages at once, each on its own thread: its start
    /// and end lines say which it is, its progress bars join one block, and
    /// the lines its tools print carry its name. The first error (in
    /// order) is returned once every job has ended.
    pub fn run_together(&mut self, step: Step, jobs: Vec<Job<'_>>) -> Result<()> {
        crate::host::interrupt::check()?;
        let bars = crate::host::progress::Bars::new();
        let (n, total) = (step.number(), self.total);
        let results: Vec<(String, Result<f64>)> = std::thread::scope(|s| {
            let handles: Vec<_> = jobs
                .into_iter()
                .map(|job| {
                    let bars = bars.clone();
                    s.spawn(move || {
                        if let Some(gate) = job.after {
                            if !gate.wait() {
                                let e = anyhow::anyhow!(
                                    "{}: not started (a stage it reads failed)",
                                    job.name
                                );
                                return (job.name.to_string(), Err(e));
                            }
                        }
                        bars.enter(|| {
                            crate::host::progress::say(&format!(
                                "[{n:>2}/{total}] {} ...",
                                job.name
                            ));
                            let t = Instant::now();
                            let r = crate::host::runner::with_label(job.name, job.run);
                            let secs = t.elapsed().as_secs_f64();
                            if r.is_ok() {
                                crate::host::progress::say(&format!(
                                    "[{n:>2}/{total}] {} done in {secs:.1}s",
                                    job.name
                                ));
                            }
                            (job.name.to_string(), r.map(|()| secs))
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        crate::host::interrupt::check()?;
        for (name, r) in results {
            self.times.push((name, r?));
        }
        Ok(())
    }
}

/// One stage of [`Stages::run_together`].
pub(crate) struct Job<'a> {
    pub name: &'a str,
    /// A gate another stage of the same call opens: this one starts after
    /// (its start line and time count from then).
    pub after: Option<&'a Gate>,
    pub run: Box<dyn FnOnce() -> Result<()> + Send + 'a>,
}

/// What one stage of [`Stages::run_together`] makes and others read:
/// opened once, for success or failure.
#[derive(Default)]
pub(crate) struct Gate {
    state: std::sync::Mutex<Option<bool>>,
    opened: std::sync::Condvar,
}

impl Gate {
    /// The guard of the stage that opens it: for failure when dropped
    /// (an error or a panic), unless [`GateOpener::succeed`] came first.
    pub fn opener(&self) -> GateOpener<'_> {
        GateOpener(self)
    }

    fn open(&self, ok: bool) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.is_none() {
            *s = Some(ok);
        }
        self.opened.notify_all();
    }

    /// Blocks until it is opened; whether its stage succeeded.
    pub fn wait(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match *s {
                Some(ok) => return ok,
                None => s = self.opened.wait(s).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }
}

pub(crate) struct GateOpener<'a>(&'a Gate);

impl GateOpener<'_> {
    pub fn succeed(self) {
        self.0.open(true);
    }
}

impl Drop for GateOpener<'_> {
    fn drop(&mut self) {
        self.0.open(false);
    }
}

impl Stages {
    /// Prints each stage's share of the wall time and the tools' times;
    /// returns the wall time.
    pub fn report(&self) -> f64 {
        let total = self.started.elapsed().as_secs_f64();
        crate::say!("cairn: stage times:");
        for (name, secs) in &self.times {
            crate::say!(
                "        {name:<24} {secs:>7.1}s {:>5.1}%",
                100.0 * secs / total.max(0.001)
            );
        }
        // Tools that ran at once each count in full: a total above the wall
        // time is time saved by running stages concurrently.
        crate::say!(
            "cairn: {}",
            crate::host::runner::tool_times_line(&crate::host::runner::take_tool_times(), total)
        );
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gate_opens_for_its_stage_s_outcome() {
        // Success: a waiting thread starts after the opener succeeded.
        let g = Gate::default();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| g.wait());
            let o = g.opener();
            o.succeed();
            assert!(waiter.join().unwrap());
        });
        // An error (the guard dropped) or a panic opens it for failure.
        let g = Gate::default();
        drop(g.opener());
        assert!(!g.wait());
        let g = Gate::default();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _o = g.opener();
            panic!("stage panicked");
        }));
        assert!(r.is_err());
        assert!(!g.wait());
    }

    #[test]
    fn stages_after_a_failed_gate_do_not_run() {
        let g = Gate::default();
        let ran = std::sync::atomic::AtomicBool::new(false);
        let mut st = Stages {
            total: 2,
            started: Instant::now(),
            times: Vec::new(),
        };
        let e = st
            .run_together(
                Step::Media,
                vec![
                    Job {
                        name: "maker",
                        after: None,
                        run: Box::new(|| {
                            let _o = g.opener();
                            anyhow::bail!("maker failed")
                        }),
                    },
                    Job {
                        name: "reader",
                        after: Some(&g),
                        run: Box::new(|| {
                            ran.store(true, std::sync::atomic::Ordering::SeqCst);
                            Ok(())
                        }),
                    },
                ],
            )
            .unwrap_err();
        // The maker's own error is the one returned; the reader never ran.
        assert_eq!(e.to_string(), "maker failed");
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
        // Control: with the maker succeeding, the reader runs after it.
        let g = Gate::default();
        let order = std::sync::Mutex::new(Vec::new());
        st.run_together(
            Step::Media,
            vec![
                Job {
                    name: "reader",
                    after: Some(&g),
                    run: Box::new(|| {
                        order.lock().unwrap().push("reader");
                        Ok(())
                    }),
                },
                Job {
                    name: "maker",
                    after: None,
                    run: Box::new(|| {
                        let o = g.opener();
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        order.lock().unwrap().push("maker");
                        o.succeed();
                        Ok(())
                    }),
                },
            ],
        )
        .unwrap();
        assert_eq!(*order.lock().unwrap(), ["maker", "reader"]);
    }
}
