//! docs/recipe.md's reference tables, generated from the declarations in
//! `settings` and the validators' lists. The prose around them is written
//! by hand; each generated block sits between
//! `<!-- generated: NAME -->` and `<!-- end generated -->`, and a test fails
//! when the committed file differs from what `render` makes of it.

use crate::recipe::settings::{self, DefaultValue, Setting};

const BEGIN: &str = "<!-- generated: ";
const END: &str = "<!-- end generated -->";

/// The table a marker names: `top` is the top level.
fn table_of(name: &str) -> &str {
    if name == "top" {
        ""
    } else {
        name
    }
}

fn default_text(s: &Setting) -> String {
    match s.default {
        DefaultValue::Required => "required".into(),
        DefaultValue::Unset => "none".into(),
        DefaultValue::Empty => "`[]`".into(),
        DefaultValue::Text(t) => format!("`{t:?}`"),
        DefaultValue::Int(n) => format!("`{n}`"),
        DefaultValue::Bool(b) => format!("`{b}`"),
    }
}

/// The key/type/default/meaning table of one TOML table.
fn settings_table(table: &str) -> Option<String> {
    let rows: Vec<&Setting> = settings::ALL.iter().filter(|s| s.table == table).collect();
    if rows.is_empty() {
        return None;
    }
    let mut out = String::from("| key | type | default | meaning |\n|---|---|---|---|\n");
    for s in rows {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            s.key,
            s.kind,
            default_text(s),
            s.help
        ));
    }
    Some(out)
}

fn limits_table() -> String {
    let mut out = String::from("| limit | value | how to raise it |\n|---|---|---|\n");
    for l in settings::limits() {
        out.push_str(&format!("| {} | {} | {} |\n", l.what, l.value, l.raise));
    }
    out
}

fn cmdline_table() -> String {
    let mut out = String::from("| word | why it is refused |\n|---|---|\n");
    for (p, why) in crate::recipe::validate::REFUSED_CMDLINE {
        let shown = if let Some(stem) = p.strip_suffix('=') {
            format!("`{stem}=…`")
        } else if p.contains('.') || *p == "break" {
            format!("`{p}`, `{p}=…`")
        } else {
            format!("`{p}`")
        };
        out.push_str(&format!("| {shown} | {why} |\n"));
    }
    out
}

fn capabilities_list() -> String {
    let names: Vec<String> = crate::recipe::validate::CAPABILITIES
        .iter()
        .map(|c| format!("`{c}`"))
        .collect();
    format!("{}\n", names.join(", "))
}

fn site_settings_table() -> String {
    let mut out = String::from("| setting | what it does |\n|---|---|\n");
    for (k, what) in crate::recipe::site::SITE_SETTINGS {
        out.push_str(&format!("| `{k}` | {what} |\n"));
    }
    out
}

/// The generated text for one marker name.
fn block(name: &str) -> Result<String, String> {
    match name {
        "limits" => Ok(limits_table()),
        // The `[limits]` table's keys (its marker name is taken above).
        "limits-keys" => settings_table("limits").ok_or_else(|| "no [limits] settings".into()),
        "cmdline-refused" => Ok(cmdline_table()),
        "capabilities" => Ok(capabilities_list()),
        "site-settings" => Ok(site_settings_table()),
        other => settings_table(table_of(other))
            .ok_or_else(|| format!("docs marker {other:?} names no table of settings")),
    }
}

/// `doc` with every generated block made anew from the declarations.
pub fn render(doc: &str) -> Result<String, String> {
    let mut out = String::with_capacity(doc.len());
    let mut rest = doc;
    while let Some(at) = rest.find(BEGIN) {
        let line_end = rest[at..]
            .find('\n')
            .map(|n| at + n + 1)
            .ok_or("generated marker without a line end")?;
        let marker = &rest[at..line_end];
        let name = marker[BEGIN.len()..]
            .trim_end()
            .strip_suffix("-->")
            .ok_or_else(|| format!("marker {marker:?} does not end with -->"))?
            .trim();
        let end = rest[line_end..]
            .find(END)
            .map(|n| line_end + n)
            .ok_or_else(|| format!("marker {name:?} has no {END}"))?;
        out.push_str(&rest[..line_end]);
        out.push_str(&block(name)?);
        rest = &rest[end..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Every table that has settings, so the docs can be checked to show each.
pub fn tables() -> Vec<&'static str> {
    let mut t: Vec<&'static str> = Vec::new();
    for s in settings::ALL {
        if !t.contains(&s.table) {
            t.push(s.table);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc_path() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/recipe.md")
    }

    /// docs/recipe.md's tables are what the declarations say.
    /// `CAIRN_UPDATE_GOLDEN=1 cargo test -p cairn --lib reference` rewrites them.
    #[test]
    fn docs_recipe_md_is_generated_from_the_declarations() {
        let path = doc_path();
        let doc = std::fs::read_to_string(&path).expect("read docs/recipe.md");
        let want = render(&doc).expect("render docs/recipe.md");
        if std::env::var_os("CAIRN_UPDATE_GOLDEN").is_some() {
            // Atomically: the other tests here read the file meanwhile.
            let tmp = path.with_extension("md.new");
            std::fs::write(&tmp, &want).expect("write docs/recipe.md.new");
            std::fs::rename(&tmp, &path).expect("rename docs/recipe.md.new");
            return;
        }
        assert!(
            doc == want,
            "docs/recipe.md differs from the settings' declarations; run \
             CAIRN_UPDATE_GOLDEN=1 cargo test -p cairn --lib reference and review the diff"
        );
    }

    #[test]
    fn every_table_and_list_has_its_block_in_the_docs() {
        let doc = std::fs::read_to_string(doc_path()).unwrap();
        for t in tables() {
            let name = if t.is_empty() { "top" } else { t };
            assert!(
                doc.contains(&format!("{BEGIN}{name} -->")),
                "docs/recipe.md has no generated block for [{t}]"
            );
        }
        for name in [
            "limits",
            "limits-keys",
            "cmdline-refused",
            "capabilities",
            "site-settings",
        ] {
            assert!(doc.contains(&format!("{BEGIN}{name} -->")), "{name}");
        }
    }

    #[test]
    fn render_replaces_only_the_blocks() {
        let doc = "intro\n<!-- generated: kernel -->\nold text\n<!-- end generated -->\nafter\n";
        let got = render(doc).unwrap();
        assert!(
            got.starts_with("intro\n<!-- generated: kernel -->\n| key |"),
            "{got}"
        );
        assert!(got.contains("| `\"linux-image-amd64\"` |"), "{got}");
        assert!(!got.contains("old text"), "{got}");
        assert!(got.ends_with("<!-- end generated -->\nafter\n"), "{got}");
        // Control: a marker naming no table is an error, not silence.
        assert!(render("<!-- generated: nope -->\n<!-- end generated -->\n").is_err());
        assert!(render("<!-- generated: kernel -->\nno end\n").is_err());
    }
}
