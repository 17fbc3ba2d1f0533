//! `[disk]` and `[state]`: partition sizes and where run-time writes go.

use super::Validator;
use crate::recipe::schema::{DiskSection, StateSection};
use crate::recipe::settings::MIN_DISK_ROOM;
use crate::recipe::{parse_size, StateMode};

pub(super) struct State {
    pub mode: StateMode,
    pub grow: bool,
    pub ram_size: String,
}

impl Validator<'_> {
    pub(super) fn disk(&mut self, d: &DiskSection) -> (u64, u64) {
        let disk_size = self.size(&d.size, "disk size");
        let state_size = self.size(&d.state_size, "state size");
        if disk_size > 0 && state_size > 0 && state_size.saturating_add(MIN_DISK_ROOM) >= disk_size
        {
            self.problem(
                d.state_size.span(),
                "state size leaves no room for the ESP and root on the disk; raise disk.size",
            );
        }
        (disk_size, state_size)
    }

    pub(super) fn state(&mut self, s: &StateSection) -> State {
        let mode = match s.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
            None | Some(("disk", _)) => StateMode::Disk,
            Some(("ram", _)) => StateMode::Ram,
            Some((other, span)) => {
                self.problem(
                    span,
                    format!("state mode {other:?} is not one of \"disk\", \"ram\""),
                );
                StateMode::Disk
            }
        };
        let grow = match &s.grow {
            Some(g) if *g.get_ref() && mode != StateMode::Disk => {
                self.problem(
                    g.span(),
                    "state grow = true needs mode = \"disk\" (RAM state has no partition to grow)",
                );
                false
            }
            Some(g) => *g.get_ref(),
            None => false,
        };
        let ram_size = match &s.ram_size {
            None => crate::recipe::settings::STATE_RAM_SIZE.text().to_string(),
            Some(v) => {
                let t = v.get_ref().trim();
                let pct_ok = t
                    .strip_suffix('%')
                    .and_then(|n| n.parse::<u32>().ok())
                    .map(|n| (1..=90).contains(&n))
                    .unwrap_or(false);
                if pct_ok {
                    t.to_string()
                } else if let Some(b) = parse_size(t) {
                    format!("{}k", b.div_ceil(1024))
                } else {
                    self.problem(
                        v.span(),
                        format!("state ram_size {t:?} must be a size like \"512M\" or a share like \"50%\" (1-90%)"),
                    );
                    String::new()
                }
            }
        };
        State {
            mode,
            grow,
            ram_size,
        }
    }
}
