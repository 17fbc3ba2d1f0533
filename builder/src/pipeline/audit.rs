//! `[audit]` in the image (docs/audit.md): the writer, the boot unit, the
//! platform's public key and the recipe's choices under `/usr/lib/cairn`.
//! Only the age *public* key goes in; the image can seal, never read.

use std::path::Path;

use anyhow::Result;

use crate::host::tree::{link_in_tree, write_in_tree};
use crate::recipe::Recipe;

const WRITER: &str = include_str!("../../guest/cairn-audit");
const BOOT: &str = include_str!("../../guest/cairn-audit-boot");
const UNIT: &str = include_str!("../../guest/cairn-audit.service");

/// Writes the audit files into `tree` when the recipe has `[audit]`.
pub fn install(recipe: &Recipe, tree: &Path) -> Result<()> {
    let Some(a) = &recipe.audit else {
        return Ok(());
    };
    write_in_tree(tree, "usr/lib/cairn/cairn-audit", WRITER.as_bytes(), 0o755)?;
    write_in_tree(
        tree,
        "usr/lib/cairn/cairn-audit-boot",
        BOOT.as_bytes(),
        0o755,
    )?;
    let recipient = format!("{}\n", a.recipient);
    write_in_tree(
        tree,
        "usr/lib/cairn/audit.recipient",
        recipient.as_bytes(),
        0o644,
    )?;
    let on_full = format!("{}\n", a.on_full.as_str());
    write_in_tree(
        tree,
        "usr/lib/cairn/audit.on_full",
        on_full.as_bytes(),
        0o644,
    )?;
    let kinds = format!("{}\n", a.record.join(" "));
    write_in_tree(tree, "usr/lib/cairn/audit.record", kinds.as_bytes(), 0o644)?;
    write_in_tree(
        tree,
        "usr/lib/systemd/system/cairn-audit.service",
        UNIT.as_bytes(),
        0o644,
    )?;
    link_in_tree(
        tree,
        "usr/lib/systemd/system/sysinit.target.wants/cairn-audit.service",
        "../cairn-audit.service",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With `[audit]` the writer, unit and public key are in the tree, and
    /// nothing secret; without it (control) none of them.
    #[test]
    fn audit_files_land_only_with_an_audit_section() {
        let d = tempfile::tempdir().unwrap();
        let key = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
        std::fs::write(d.path().join("audit.pub"), key).unwrap();
        let head = "[image]\nname = \"t\"\nversion = \"1\"\n[base.debian]\n";
        let parse = |t: &str| {
            crate::recipe::parse(&crate::recipe::validate::tests::src(d.path(), t)).unwrap()
        };
        let tree = d.path().join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        install(&parse(head), &tree).unwrap();
        assert!(!tree.join("usr/lib/cairn/cairn-audit").exists());
        let r = parse(&format!(
            "{head}[audit]\nkey = \"audit.pub\"\non_full = \"halt\"\n"
        ));
        install(&r, &tree).unwrap();
        let lib = tree.join("usr/lib/cairn");
        assert_eq!(
            std::fs::read_to_string(lib.join("audit.recipient")).unwrap(),
            format!("{key}\n")
        );
        assert_eq!(
            std::fs::read_to_string(lib.join("audit.on_full")).unwrap(),
            "halt\n"
        );
        assert!(lib.join("cairn-audit").exists() && lib.join("cairn-audit-boot").exists());
        assert!(tree
            .join("usr/lib/systemd/system/sysinit.target.wants/cairn-audit.service")
            .symlink_metadata()
            .is_ok());
        assert!(crate::recipe::packages::package_list(&r, &[]).contains(&"age".to_string()));
    }
}
