//! Boot phases from a timed console log: where a boot's time goes, read
//! from the guest's `[ UPTIME] cairn: ...` lines and the host's time of
//! each line (`Vm::timed_lines`). Pure; `make bench` prints the result.
//! Invariant: every phase the appliance must pass is found, in order, or
//! the error names the first one missing.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::vm::qemu::TimedLine;

/// A phase ends at the first line (the last, for `images`) whose message
/// starts with this text. `required: false`: an image may lack it (k3s
/// imports its images itself; an image may pin none).
struct PhaseEnd {
    name: &'static str,
    message: &'static str,
    required: bool,
    last: bool,
    /// Only a cluster runtime prints it: not listed as absent elsewhere.
    cluster: bool,
}

/// In boot order. `firmware` (QEMU start to kernel start) comes first and
/// is computed from the uptimes, not from a line.
const PHASE_ENDS: [PhaseEnd; 8] = [
    PhaseEnd {
        name: "initramfs",
        message: "initramfs started",
        required: true,
        last: false,
        cluster: false,
    },
    PhaseEnd {
        name: "root verified",
        message: "root verified",
        required: true,
        last: false,
        cluster: false,
    },
    PhaseEnd {
        name: "systemd",
        message: "starting systemd",
        required: true,
        last: false,
        cluster: false,
    },
    PhaseEnd {
        name: "firewall",
        message: "firewall loaded",
        required: true,
        last: false,
        cluster: false,
    },
    PhaseEnd {
        name: "images",
        message: "image ",
        required: false,
        last: true,
        cluster: false,
    },
    // A cluster runtime: the node Ready, then its workloads Available
    // (`cairn-ready` prints both before `ready`).
    PhaseEnd {
        name: "node Ready",
        message: "cluster: node ",
        required: false,
        last: false,
        cluster: true,
    },
    PhaseEnd {
        name: "workloads",
        message: "cluster: node Ready, workloads Available",
        required: false,
        last: false,
        cluster: true,
    },
    PhaseEnd {
        name: "ready",
        message: "ready",
        required: true,
        last: false,
        cluster: false,
    },
];

/// One `cairn:` line: the host's time, the guest's uptime (absent on a
/// line printed where there is no clock to read, e.g. GRUB) and the
/// message after `cairn: `.
#[derive(Debug, Clone, PartialEq)]
pub struct CairnLine {
    pub at: Duration,
    pub uptime: Option<f64>,
    pub message: String,
}

/// One phase: how long it took and where it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    pub name: &'static str,
    /// Host time from QEMU's start to the end of this phase.
    pub at: Duration,
    pub took: Duration,
    /// The guest's uptime on the line that ended it (none for `firmware`).
    pub uptime: Option<f64>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BootPhases {
    /// `firmware` first, then each phase found, in order. An optional
    /// phase the log lacks is not listed (its time counts to the next).
    pub phases: Vec<Phase>,
    /// Optional phases the log lacks, by name.
    pub absent: Vec<&'static str>,
    /// Every `cairn:` line, for the detail.
    pub lines: Vec<CairnLine>,
}

impl BootPhases {
    /// Host time from QEMU's start to the last phase (`ready`).
    pub fn total(&self) -> Duration {
        self.phases.last().map(|p| p.at).unwrap_or_default()
    }
}

/// The number in `[ 12.34]` when `s` ends with it (spaces allowed inside).
fn bracketed_number_at_end(s: &str) -> Option<f64> {
    let s = s.strip_suffix(']')?;
    let open = s.rfind('[')?;
    let n = s[open + 1..].trim();
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    n.parse().ok()
}

/// The guest's clock on a line: the uptime before `cairn: ` or, on a
/// kernel line, the printk time at its start.
fn guest_time(text: &str) -> Option<f64> {
    if let Some(c) = cairn_line_start(text) {
        return bracketed_number_at_end(text[..c].trim_end());
    }
    let t = text.trim_start();
    let close = t.find(']')?;
    if !t.starts_with('[') {
        return None;
    }
    bracketed_number_at_end(&t[..=close])
}

/// Where `cairn: ` begins on a line cairn printed: at the start, or right
/// after the uptime (`[   12.34] cairn: `). Not inside other text, such
/// as systemd's `Started cairn-ready.service - cairn: announce ...`.
fn cairn_line_start(text: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = text[from..].find("cairn: ") {
        let i = from + i;
        let before = text[..i].trim_end();
        // The uptime, or "?" where the guest could not read it.
        let bracketed = before.ends_with(']') && before.contains('[');
        if before.is_empty() || (i > before.len() && bracketed) {
            return Some(i);
        }
        from = i + 1;
    }
    None
}

/// Every line cairn printed, in order.
pub fn cairn_lines(lines: &[TimedLine]) -> Vec<CairnLine> {
    lines
        .iter()
        .filter_map(|l| {
            let i = cairn_line_start(&l.text)?;
            Some(CairnLine {
                at: l.at,
                uptime: guest_time(&l.text),
                message: l.text[i + "cairn: ".len()..].trim_end().to_string(),
            })
        })
        .collect()
}

/// When the kernel started, on the host's clock: the earliest host time
/// less guest time over every line that carries both (the host reads a
/// line a little after the guest wrote it, never before; the kernel's
/// early lines wait for the serial console, so the minimum is the best
/// estimate). `None` when no line has a guest time.
pub fn kernel_start(lines: &[TimedLine]) -> Option<Duration> {
    lines
        .iter()
        .filter_map(|l| {
            let g = guest_time(&l.text)?;
            Some(l.at.as_secs_f64() - g)
        })
        .min_by(|a, b| a.total_cmp(b))
        .map(|s| Duration::from_secs_f64(s.max(0.0)))
}

/// The phases of one boot to `cairn: ready`. Fails on a `cairn: FATAL`
/// line, and names the first phase whose line is missing or out of order.
pub fn boot_phases(lines: &[TimedLine]) -> Result<BootPhases> {
    let cairn = cairn_lines(lines);
    if let Some(f) = cairn.iter().find(|l| l.message.starts_with("FATAL")) {
        bail!("the boot failed: cairn: {}", f.message);
    }
    let Some(kstart) = kernel_start(lines) else {
        bail!(
            "no line of the boot log carries the guest's uptime (\"[ 12.34] cairn: ...\" \
             or a kernel time stamp): was the image built by a cairn without boot times?"
        );
    };
    let mut phases = vec![Phase {
        name: "firmware",
        at: kstart,
        took: kstart,
        uptime: None,
        message: "kernel started (QEMU start to the kernel's clock at 0)".to_string(),
    }];
    let mut absent = Vec::new();
    let mut next = 0;
    for end in &PHASE_ENDS {
        let matches = |l: &CairnLine| l.message.starts_with(end.message);
        let found = if end.last {
            // The last of a run (one line per image), before the next phase.
            let later = PHASE_ENDS
                .iter()
                .skip_while(|e| e.name != end.name)
                .nth(1)
                .map(|e| e.message);
            let stop = cairn[next..]
                .iter()
                .position(|l| later.is_some_and(|m| l.message.starts_with(m)))
                .map(|p| next + p)
                .unwrap_or(cairn.len());
            cairn[next..stop]
                .iter()
                .rposition(matches)
                .map(|p| next + p)
        } else {
            cairn[next..].iter().position(matches).map(|p| next + p)
        };
        match found {
            Some(i) => {
                let l = &cairn[i];
                let prev = phases.last().map(|p| p.at).unwrap_or_default();
                phases.push(Phase {
                    name: end.name,
                    at: l.at,
                    took: l.at.saturating_sub(prev),
                    uptime: l.uptime,
                    message: l.message.clone(),
                });
                next = i + 1;
            }
            None if end.cluster => {}
            None if !end.required => absent.push(end.name),
            None => {
                let earlier = cairn[..next].iter().any(matches);
                let after = phases.last().map(|p| p.name).unwrap_or("firmware");
                if earlier {
                    bail!(
                        "phase {}: the `cairn: {}` line comes before the end of phase {after}; \
                         the boot log is out of order",
                        end.name,
                        end.message.trim_end()
                    );
                }
                bail!(
                    "phase {} is missing: the boot log has no `cairn: {}` line after phase {after}",
                    end.name,
                    end.message.trim_end()
                );
            }
        }
    }
    Ok(BootPhases {
        phases,
        absent,
        lines: cairn,
    })
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// The phase table, then every `cairn:` line with its times, then the
/// total against `bare` (a bare kernel + init boot under the same QEMU:
/// its host time to the init's line and its own firmware part).
pub fn render(b: &BootPhases, bare: Option<(Duration, Duration)>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  {:<14} {:>8} {:>10} {:>9}  ended by",
        "phase", "took", "at (host)", "uptime"
    );
    for p in &b.phases {
        let up = p
            .uptime
            .map(|u| format!("{u:.2}"))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            s,
            "  {:<14} {:>8} {:>10} {:>9}  {}",
            p.name,
            secs(p.took),
            secs(p.at),
            up,
            p.message
        );
    }
    for a in &b.absent {
        let _ = writeln!(
            s,
            "  {a:<14} {:>8}  (no such line: this image has none)",
            "-"
        );
    }
    let _ = writeln!(s, "  every cairn: line (host time, guest uptime):");
    for l in &b.lines {
        let up = l
            .uptime
            .map(|u| format!("{u:.2}"))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(s, "    {:>8} {:>9}  {}", secs(l.at), up, l.message);
    }
    let total = b.total();
    match bare {
        Some((bare_total, bare_fw)) => {
            let ratio = if bare_total.is_zero() {
                "n/a".to_string()
            } else {
                format!("{:.1}x", total.as_secs_f64() / bare_total.as_secs_f64())
            };
            let _ = writeln!(
                s,
                "  total {} to ready; a bare kernel + init under the same QEMU: {} \
                 (firmware {}, kernel to init {}); the appliance adds {} ({ratio})",
                secs(total),
                secs(bare_total),
                secs(bare_fw),
                secs(bare_total.saturating_sub(bare_fw)),
                secs(total.saturating_sub(bare_total)),
            );
        }
        None => {
            let _ = writeln!(s, "  total {} to ready", secs(total));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(lines: &[(f64, &str)]) -> Vec<TimedLine> {
        lines
            .iter()
            .map(|&(at, text)| TimedLine {
                at: Duration::from_secs_f64(at),
                text: text.to_string(),
            })
            .collect()
    }

    /// A boot log shaped like the field-ai image's (times from a TCG boot).
    fn field_ai() -> Vec<(f64, &'static str)> {
        vec![
            (0.9, "BdsDxe: loading Boot0001 \"UEFI Misc Device\""),
            (6.8, "[    0.000000] Linux version 6.1.0-50-amd64"),
            (9.1, "[    3.900000] Freeing unused kernel image"),
            (
                10.3,
                "[    5.10] cairn: initramfs started (kernel 6.1.0-50-amd64)",
            ),
            (11.0, "[    5.80] cairn: modules loaded"),
            (
                17.6,
                "[   12.40] cairn: root verified by dm-verity and mounted read-only",
            ),
            (18.4, "[   13.20] cairn: state: disk /dev/vda4, dm-crypt"),
            (19.0, "[   13.80] cairn: starting systemd"),
            (
                21.0,
                "[  OK  ] Started cairn-images.service - cairn: import pinned OCI images",
            ),
            (28.2, "[   23.00] cairn: firewall loaded: default deny"),
            (60.0, "[   54.80] cairn: image base docker.io/x:1 sha256:aa"),
            (
                74.7,
                "[   69.50] cairn: image inference cairn.local/inference:0.1 sha256:bb",
            ),
            (74.9, "[   69.70] cairn: service inference started"),
            (75.0, "[   69.80] cairn: ready"),
        ]
    }

    #[test]
    fn phases_of_a_full_boot() {
        let b = boot_phases(&log(&field_ai())).unwrap_or_else(|e| panic!("{e:#}"));
        let names: Vec<_> = b.phases.iter().map(|p| p.name).collect();
        assert_eq!(
            names,
            [
                "firmware",
                "initramfs",
                "root verified",
                "systemd",
                "firewall",
                "images",
                "ready"
            ]
        );
        // The kernel started 5.2 s after QEMU: min(host - guest) over the
        // lines (10.3 - 5.10 and 11.0 - 5.80 and 75.0 - 69.80).
        let fw = b.phases[0].at.as_secs_f64();
        assert!((fw - 5.2).abs() < 1e-6, "{fw}");
        // images ends at the last image line, not the first.
        assert_eq!(b.phases[5].uptime, Some(69.5));
        assert!((b.phases[5].took.as_secs_f64() - (74.7 - 28.2)).abs() < 1e-6);
        assert!((b.total().as_secs_f64() - 75.0).abs() < 1e-6);
        assert!(b.absent.is_empty());
        // systemd's unit description is not a cairn line.
        assert!(!b.lines.iter().any(|l| l.message.starts_with("import")));
        assert_eq!(b.lines.len(), 10);
        let table = render(&b, Some((Duration::from_secs(7), Duration::from_secs(5))));
        println!("{table}");
        assert!(table.contains("images"), "{table}");
        assert!(
            table.contains("a bare kernel + init under the same QEMU: 7.0 s"),
            "{table}"
        );
        assert!(
            table.contains("the appliance adds 68.0 s (10.7x)"),
            "{table}"
        );
    }

    #[test]
    fn a_log_missing_a_phase_names_it() {
        // Control for the test above: the same log without the firewall line.
        let lines: Vec<_> = field_ai()
            .into_iter()
            .filter(|(_, t)| !t.contains("firewall loaded"))
            .collect();
        let e = format!("{:#}", boot_phases(&log(&lines)).unwrap_err());
        assert!(e.contains("phase firewall is missing"), "{e}");
        assert!(e.contains("`cairn: firewall loaded`"), "{e}");
        assert!(e.contains("after phase systemd"), "{e}");

        let lines: Vec<_> = field_ai()
            .into_iter()
            .filter(|(_, t)| !t.ends_with("cairn: ready"))
            .collect();
        let e = format!("{:#}", boot_phases(&log(&lines)).unwrap_err());
        assert!(e.contains("phase ready is missing"), "{e}");
    }

    #[test]
    fn a_cluster_boot_has_node_and_workload_phases() {
        let mut lines = field_ai();
        let ready = lines.pop().unwrap();
        lines.push((300.0, "[  294.00] cairn: cluster: node field-ai-kube Ready"));
        lines.push((
            340.0,
            "[  334.00] cairn: cluster: node Ready, workloads Available (cairn/inference)",
        ));
        lines.push((341.0, ready.1));
        let b = boot_phases(&log(&lines)).unwrap_or_else(|e| panic!("{e:#}"));
        let names: Vec<_> = b.phases.iter().map(|p| p.name).collect();
        assert_eq!(&names[6..], ["node Ready", "workloads", "ready"]);
        assert_eq!(b.phases[6].uptime, Some(294.0));
        assert!((b.phases[7].took.as_secs_f64() - 40.0).abs() < 1e-6);
        assert!(b.absent.is_empty());
    }

    #[test]
    fn images_are_optional_and_order_matters() {
        // k3s imports its images itself: no image line, the phase is absent.
        let lines: Vec<_> = field_ai()
            .into_iter()
            .filter(|(_, t)| !t.contains("cairn: image "))
            .collect();
        let b = boot_phases(&log(&lines)).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(b.absent, ["images"]);
        assert_eq!(b.phases.last().map(|p| p.name), Some("ready"));
        assert!(render(&b, None).contains("(no such line"));

        // ready before the firewall: out of order, not "found".
        let mut lines = field_ai();
        let fw = lines.remove(9);
        lines.push((80.0, fw.1));
        let e = format!("{:#}", boot_phases(&log(&lines)).unwrap_err());
        assert!(e.contains("phase ready"), "{e}");
        assert!(e.contains("out of order"), "{e}");
    }

    #[test]
    fn a_fatal_line_or_no_uptime_is_an_error() {
        let mut lines = field_ai();
        lines.insert(6, (18.0, "[   12.90] cairn: FATAL state: cannot mount"));
        let e = format!("{:#}", boot_phases(&log(&lines)).unwrap_err());
        assert!(e.contains("the boot failed: cairn: FATAL state"), "{e}");

        // A log from before boot times: lines without the uptime.
        let old = log(&[(10.0, "cairn: initramfs started"), (70.0, "cairn: ready")]);
        assert_eq!(cairn_lines(&old).len(), 2);
        assert_eq!(cairn_lines(&old)[0].uptime, None);
        let e = format!("{:#}", boot_phases(&old).unwrap_err());
        assert!(e.contains("carries the guest's uptime"), "{e}");
    }

    #[test]
    fn guest_times() {
        assert_eq!(guest_time("[   12.34] cairn: ready"), Some(12.34));
        assert_eq!(guest_time("junk[   12.34] cairn: ready"), Some(12.34));
        assert_eq!(guest_time("[    0.000000] Linux version"), Some(0.0));
        assert_eq!(guest_time("[  OK  ] Started x"), None);
        assert_eq!(guest_time("[       ?] cairn: starting systemd"), None);
        assert_eq!(
            cairn_line_start("[       ?] cairn: starting systemd"),
            Some(11)
        );
        assert_eq!(guest_time("cairn: GRUB (BIOS) loading the kernel"), None);
        assert_eq!(cairn_line_start("x - cairn: import"), None);
        assert_eq!(cairn_line_start("[ 1.0] cairn: a"), Some(7));
        assert_eq!(cairn_line_start("[ 1.0]cairn: a"), None);
    }
}
