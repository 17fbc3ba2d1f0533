//! Folders a recipe names whose content the build copies: overlays, model
//! folders and the policy bundle. What the build would refuse in them is
//! found here, so `cairn check` reports it at the recipe entry (with
//! file:line:col) instead of the build failing halfway.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use toml::Spanned;
use walkdir::WalkDir;

use super::Validator;

/// Problems reported per folder before the rest are summed up.
const MAX_PER_FOLDER: usize = 20;

/// What kind of special file a file type is, if it is one.
fn special_kind(ft: &std::fs::FileType) -> Option<&'static str> {
    if ft.is_fifo() {
        Some("a fifo")
    } else if ft.is_socket() {
        Some("a socket")
    } else if ft.is_block_device() {
        Some("a block device node")
    } else if ft.is_char_device() {
        Some("a character device node")
    } else {
        None
    }
}

/// Which rule a folder is checked against.
#[derive(Clone, Copy, PartialEq)]
enum Rule {
    /// Overlays: links are copied as links; set-id bits and special files
    /// are refused.
    Overlay,
    /// Model data and policy bundles: only files and folders.
    FilesOnly,
}

/// Files cairn writes into every image after the overlays (compose's
/// `configure`, the workloads): an overlay's copy would be replaced, so it
/// is refused, with what sets the file instead.
pub const GENERATED_FILES: &[(&str, &str)] = &[
    (
        "etc/hostname",
        "cairn writes it from [image] name (a site file's hostname replaces it at boot)",
    ),
    (
        "etc/hosts",
        "cairn writes it (localhost and the image's name)",
    ),
    (
        "etc/resolv.conf",
        "cairn writes it (no resolver: the appliance is air-gapped)",
    ),
    (
        "etc/machine-id",
        "cairn leaves it empty, so every boot makes a fresh one",
    ),
];

/// cairn's own folder in the image (its scripts, images, volumes).
pub const CAIRN_FOLDER: &str = "usr/lib/cairn";

/// containerd's configuration, which cairn writes for `runtime = "containerd"`.
pub const CONTAINERD_CONFIG: &str = "etc/containerd/config.toml";

impl Validator<'_> {
    pub(super) fn overlays(
        &mut self,
        overlays: &[Spanned<String>],
        runtime: crate::recipe::workloads::Runtime,
    ) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for o in overlays {
            if let Some(p) = self.path(o, "overlay") {
                if p.is_dir() {
                    let content = self.folder_content(o, &p, "overlay", Rule::Overlay);
                    if self.generated_files(o, &p, runtime) && content {
                        out.push(p);
                    }
                } else {
                    self.problem(
                        o.span(),
                        format!("overlay {:?} is not a folder", o.get_ref()),
                    );
                }
            }
        }
        out
    }

    /// Reports, at the overlay's entry, every file in it that cairn writes
    /// itself (so the copy would be silently replaced). True when none.
    fn generated_files(
        &mut self,
        entry: &Spanned<String>,
        folder: &Path,
        runtime: crate::recipe::workloads::Runtime,
    ) -> bool {
        let name = entry.get_ref();
        let containerd = (
            CONTAINERD_CONFIG,
            "cairn writes containerd's configuration itself for runtime = \"containerd\" (the unused CRI plugin off)",
        );
        let mut problems: Vec<String> = GENERATED_FILES
            .iter()
            .chain(
                (runtime == crate::recipe::workloads::Runtime::Containerd).then_some(&containerd),
            )
            .filter(|(rel, _)| folder.join(rel).symlink_metadata().is_ok())
            .map(|(rel, why)| {
                format!(
                    "overlay {name:?}: {rel} would be replaced: {why}; remove it from the overlay"
                )
            })
            .collect();
        if folder.join(CAIRN_FOLDER).symlink_metadata().is_ok() {
            problems.push(format!(
                "overlay {name:?}: {CAIRN_FOLDER} is cairn's own folder (its scripts, images and volumes); put the files elsewhere, e.g. under /usr/local or /opt"
            ));
        }
        let none = problems.is_empty();
        for m in problems {
            self.problem(entry.span(), m);
        }
        none
    }

    /// Model folders and policy bundles hold only files and folders.
    pub(super) fn data_folder(&mut self, entry: &Spanned<String>, path: &Path, what: &str) -> bool {
        !path.is_dir() || self.folder_content(entry, path, what, Rule::FilesOnly)
    }

    /// Walks `folder` (links not followed) and reports, at the recipe
    /// entry, every file the build would refuse. True when there is none.
    fn folder_content(
        &mut self,
        entry: &Spanned<String>,
        folder: &Path,
        what: &str,
        rule: Rule,
    ) -> bool {
        let name = entry.get_ref();
        let mut found = 0usize;
        for e in WalkDir::new(folder).min_depth(1).sort_by_file_name() {
            let e = match e {
                Ok(e) => e,
                Err(err) => {
                    self.problem(
                        entry.span(),
                        format!("{what} {name:?}: cannot read {err}; fix its permissions"),
                    );
                    return false;
                }
            };
            let rel = e.path().strip_prefix(folder).unwrap_or(e.path()).display();
            let Ok(meta) = e.path().symlink_metadata() else {
                continue;
            };
            let ft = meta.file_type();
            let problem = if let Some(kind) = special_kind(&ft) {
                let allowed = match rule {
                    Rule::Overlay => "files, folders and links",
                    Rule::FilesOnly => "files and folders",
                };
                Some(format!(
                    "{what} {name:?}: {rel} is {kind}; {what}s hold only {allowed}: remove it"
                ))
            } else if ft.is_symlink() && rule == Rule::FilesOnly {
                let target = std::fs::read_link(e.path())
                    .map(|t| t.display().to_string())
                    .unwrap_or_default();
                let out = match std::fs::canonicalize(e.path()) {
                    Ok(real) if real.starts_with(folder) => "",
                    _ => " (out of the folder)",
                };
                Some(format!(
                    "{what} {name:?}: {rel} is a link to {target}{out}; {what}s hold only files and folders: copy the file in"
                ))
            } else if rule == Rule::Overlay && !ft.is_symlink() && meta.mode() & 0o6000 != 0 {
                Some(format!(
                    "{what} {name:?}: {rel} is set-uid/set-gid; chmod u-s,g-s it (overlays are configuration, not system binaries)"
                ))
            } else {
                None
            };
            if let Some(m) = problem {
                found += 1;
                if found <= MAX_PER_FOLDER {
                    self.problem(entry.span(), m);
                }
            }
        }
        if found > MAX_PER_FOLDER {
            self.problem(
                entry.span(),
                format!(
                    "{what} {name:?}: {} more files like these",
                    found - MAX_PER_FOLDER
                ),
            );
        }
        found == 0
    }
}
