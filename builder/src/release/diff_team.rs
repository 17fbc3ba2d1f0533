//! The team's part of `cairn diff`: for two releases built on governed
//! templates, whether the template changed and which lines of the team
//! recipe did (docs/templates.md). Built from the manifests only.

use serde::Serialize;

use crate::recipe::governance::TemplateUse;

/// The template on each side (`NAME VERSION sha256 SIGNER`) and the team
/// recipe's lines only A has (`removed`) and only B has (`added`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TeamDiff {
    pub template_a: Option<String>,
    pub template_b: Option<String>,
    pub removed: Vec<String>,
    pub added: Vec<String>,
}

impl TeamDiff {
    pub fn is_empty(&self) -> bool {
        self.template_a == self.template_b && self.removed.is_empty() && self.added.is_empty()
    }

    /// Text lines: the template once when both sides share it, then the
    /// team's lines, `-` for A and `+` for B.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        let show = |t: &Option<String>| t.clone().unwrap_or_else(|| "(none)".into());
        if self.template_a == self.template_b {
            out.push(format!("template: same ({})", show(&self.template_a)));
        } else {
            out.push("template:".into());
            out.push(format!("  - {}", show(&self.template_a)));
            out.push(format!("  + {}", show(&self.template_b)));
        }
        if !self.removed.is_empty() || !self.added.is_empty() {
            out.push("team recipe:".into());
            out.extend(self.removed.iter().map(|l| format!("  - {l}")));
            out.extend(self.added.iter().map(|l| format!("  + {l}")));
        }
        out
    }
}

fn describe(t: &TemplateUse) -> String {
    format!(
        "{} {} sha256 {} key {}",
        t.name, t.version, t.sha256, t.key_id
    )
}

/// Lines of `a` not in `b`, counting repeats, in `a`'s order; blank lines
/// and comments do not count.
fn only_in(a: &str, b: &str) -> Vec<String> {
    let mut rest: Vec<&str> = meaningful(b).collect();
    meaningful(a)
        .filter(|l| match rest.iter().position(|r| r == l) {
            Some(i) => {
                rest.remove(i);
                false
            }
            None => true,
        })
        .map(str::to_string)
        .collect()
}

fn meaningful(s: &str) -> impl Iterator<Item = &str> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// None unless at least one side was built on a template.
pub fn team_diff(a: Option<&TemplateUse>, b: Option<&TemplateUse>) -> Option<TeamDiff> {
    if a.is_none() && b.is_none() {
        return None;
    }
    let team = |t: Option<&TemplateUse>| t.map(|t| t.team.clone()).unwrap_or_default();
    let (ta, tb) = (team(a), team(b));
    Some(TeamDiff {
        template_a: a.map(describe),
        template_b: b.map(describe),
        removed: only_in(&ta, &tb),
        added: only_in(&tb, &ta),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(team: &str) -> TemplateUse {
        TemplateUse {
            name: "p".into(),
            version: "1.0".into(),
            sha256: "ab".repeat(32),
            key_id: "00".repeat(8),
            team_sha256: String::new(),
            text: String::new(),
            signature: String::new(),
            team: team.into(),
        }
    }

    #[test]
    fn only_the_teams_lines_and_the_template_once() {
        let a = on("[image]\nname = \"t\"\nversion = \"1\"\n# note\n");
        let b = on("[image]\nname = \"t\"\nversion = \"2\"\n\n[[models]]\nname = \"m\"\n");
        let d = team_diff(Some(&a), Some(&b)).unwrap();
        assert_eq!(d.removed, vec!["version = \"1\""]);
        assert_eq!(
            d.added,
            vec!["version = \"2\"", "[[models]]", "name = \"m\""]
        );
        let text = d.lines().join("\n");
        assert!(text.starts_with("template: same (p 1.0"), "{text}");
        // Control: the same team recipe on another template version shows it.
        let mut c = a.clone();
        c.version = "1.1".into();
        let d = team_diff(Some(&a), Some(&c)).unwrap();
        assert!(!d.is_empty());
        assert!(d.removed.is_empty() && d.added.is_empty());
        assert!(team_diff(None, None).is_none());
    }
}
