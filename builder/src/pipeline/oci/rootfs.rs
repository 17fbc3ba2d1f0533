//! An image run from its unpacked root instead of containerd's store.
//!
//! containerd's usual path copies an image twice at every boot: the
//! archive into its content store, then the layers into a snapshot, both on
//! the writable state. cairn unpacks the verified layers at build time into
//! the read-only root (which dm-verity protects), and the service runs with
//! `ctr run --rootfs`: nothing is imported, nothing of the image is written
//! to the state, and boot time does not grow with the image's size.
//!
//! Without containerd's image store, `ctr` no longer applies the image
//! configuration, so [`RunConfig`] carries it: the process arguments
//! (entrypoint + cmd), the environment, the working folder and the user,
//! resolved to numeric ids from the image's own `/etc/passwd` and
//! `/etc/group` at build time (containerd 1.6's `ctr` has no `--user`: a
//! service whose image names a user starts through `cairn-service-run`,
//! which takes the spec `ctr` makes and sets that user in it). The runtime mounts `/proc`, `/dev`, `/sys`
//! and `/run` and binds models into the container; on a read-only root it
//! cannot create their mount points, so [`add_mount_point`] does at build.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::host::tree::{create_dirs_in_root, resolve_in_root_follow};

/// What `ctr run --rootfs` needs to start the image as its configuration
/// says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunConfig {
    /// Entrypoint followed by Cmd.
    pub args: Vec<String>,
    /// `KEY=value`, in the image's order.
    pub env: Vec<String>,
    pub cwd: Option<String>,
    /// As the image names it (a name or an id, a group optional).
    pub user: Option<String>,
}

/// The folders every container needs as mount points: the runtime mounts
/// procfs, a /dev tmpfs, sysfs and a /run tmpfs on them.
pub const RUNTIME_MOUNT_POINTS: &[&str] = &["proc", "dev", "sys", "run"];

/// Reads the run settings from an image's config JSON.
pub fn run_config(config: &[u8]) -> Result<RunConfig> {
    let v: serde_json::Value =
        serde_json::from_slice(config).context("the image config is not JSON")?;
    let c = v.get("config").cloned().unwrap_or(serde_json::Value::Null);
    let strings = |key: &str| -> Result<Vec<String>> {
        match c.get(key) {
            None | Some(serde_json::Value::Null) => Ok(Vec::new()),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|s| {
                    s.as_str()
                        .map(str::to_string)
                        .with_context(|| format!("the image config's {key} holds a non-string"))
                })
                .collect(),
            Some(_) => bail!("the image config's {key} is not a list of strings"),
        }
    };
    let text = |key: &str| -> Result<Option<String>> {
        match c.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) if s.is_empty() => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => bail!("the image config's {key} is not a string"),
        }
    };
    let mut args = strings("Entrypoint")?;
    args.extend(strings("Cmd")?);
    let env = strings("Env")?;
    for e in &env {
        if !e.contains('=') || e.chars().any(char::is_control) {
            bail!("the image config's Env has {e:?}, which is not KEY=value on one line");
        }
    }
    for a in &args {
        if a.chars().any(|c| c == '\0' || c == '\n') {
            bail!("the image config's Entrypoint/Cmd has {a:?}, with a NUL or newline");
        }
    }
    let cwd = text("WorkingDir")?;
    if let Some(w) = &cwd {
        if !w.starts_with('/') || w.chars().any(char::is_control) {
            bail!("the image config's WorkingDir {w:?} is not an absolute path");
        }
    }
    let user = text("User")?;
    if let Some(u) = &user {
        if u.chars().any(|c| c.is_control() || c.is_whitespace()) {
            bail!("the image config's User {u:?} has spaces or control characters");
        }
    }
    Ok(RunConfig {
        args,
        env,
        cwd,
        user,
    })
}

/// `env`, then each of `overrides` replacing the entry of the same name
/// or appended: the environment a service sees (the image's, then the
/// recipe's), with every name once.
pub fn merge_env(env: &[String], overrides: &[String]) -> Vec<String> {
    let key = |e: &str| {
        e.split_once('=')
            .map(|(k, _)| k.to_string())
            .unwrap_or_default()
    };
    let mut out: Vec<String> = env.to_vec();
    for o in overrides {
        match out.iter().position(|e| key(e) == key(o)) {
            Some(i) => out[i] = o.clone(),
            None => out.push(o.clone()),
        }
    }
    out
}

/// The image's `user[:group]` as numeric `uid:gid`, looked up in the
/// image's own /etc/passwd and /etc/group (the way runc would have, inside
/// the container). An id without an entry stands for itself, with group
/// 0 unless one is given, as Docker and containerd do.
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<(u32, u32)> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = read_small(rootfs, "etc/passwd")?;
    let group = read_small(rootfs, "etc/group")?;
    // name:x:uid:gid:... and name:x:gid:...
    let entries = |text: &str, fields: usize| -> Vec<Vec<String>> {
        text.lines()
            .map(|l| l.split(':').map(str::to_string).collect::<Vec<_>>())
            .filter(|f| f.len() >= fields)
            .collect()
    };
    let users = entries(&passwd, 4);
    let groups = entries(&group, 3);
    let (uid, mut gid) = if let Ok(id) = u.parse::<u32>() {
        let gid = users
            .iter()
            .find(|f| f[2] == u)
            .and_then(|f| f[3].parse::<u32>().ok())
            .unwrap_or(0);
        (id, gid)
    } else {
        let f = users.iter().find(|f| f[0] == u).with_context(|| {
            format!("the image's user {u:?} is not in its /etc/passwd; name a user it has, or a numeric id")
        })?;
        let uid = f[2]
            .parse::<u32>()
            .with_context(|| format!("the image's /etc/passwd has a bad uid for {u:?}"))?;
        let gid = f[3]
            .parse::<u32>()
            .with_context(|| format!("the image's /etc/passwd has a bad gid for {u:?}"))?;
        (uid, gid)
    };
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(id) => id,
            Err(_) => groups
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse::<u32>().ok())
                .with_context(|| {
                    format!("the image's group {g:?} is not in its /etc/group; name a group it has, or a numeric id")
                })?,
        };
    }
    Ok((uid, gid))
}

/// A text file of the image, at most 1 MiB; empty if it has none.
fn read_small(rootfs: &Path, rel: &str) -> Result<String> {
    let v = crate::host::tree::read_in_tree_capped(rootfs, Path::new(rel), 1 << 20)?;
    Ok(String::from_utf8_lossy(&v.unwrap_or_default()).into_owned())
}

/// What a mount point must be: the runtime binds a folder onto a folder and
/// a file onto a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountPoint {
    Folder,
    File,
}

/// Makes sure `rel` exists in the image's root as a mount point of `kind`,
/// creating it (and its parents) inside the root if nothing is there; an
/// existing entry of the right kind is kept as the image made it. Links
/// resolve inside the root, never on the host.
pub fn add_mount_point(rootfs: &Path, rel: &str, kind: MountPoint) -> Result<()> {
    let rel = rel.trim_start_matches('/');
    let real = resolve_in_root_follow(rootfs, Path::new(rel))?;
    match (std::fs::symlink_metadata(&real), kind) {
        (Ok(m), MountPoint::Folder) if m.is_dir() => Ok(()),
        (Ok(m), MountPoint::File) if m.is_file() => Ok(()),
        (Ok(_), _) => bail!(
            "/{rel} in the image is not a {} the runtime can mount on",
            match kind {
                MountPoint::Folder => "folder",
                MountPoint::File => "file",
            }
        ),
        (Err(_), MountPoint::Folder) => create_dirs_in_root(rootfs, Path::new(rel)).map(|_| ()),
        (Err(_), MountPoint::File) => {
            // Where a dangling link would have the runtime create it.
            let p = real
                .strip_prefix(rootfs)
                .context("a mount point resolved outside the image")?;
            let parent = create_dirs_in_root(rootfs, p.parent().unwrap_or(Path::new("")))?;
            let name = p.file_name().context("a mount point without a name")?;
            let path = parent.join(name);
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .with_context(|| format!("create the mount point {}", path.display()))?;
            crate::host::tree::set_plain_mode(&path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_config_joins_entrypoint_and_cmd_and_keeps_env_cwd_user() {
        let c = run_config(
            br#"{"config":{"Entrypoint":["/bin/sh","-c"],"Cmd":["echo hi"],"Env":["PATH=/bin","A=b"],"WorkingDir":"/app","User":"app:app"}}"#,
        )
        .unwrap();
        assert_eq!(c.args, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(c.env, ["PATH=/bin", "A=b"]);
        assert_eq!(c.cwd.as_deref(), Some("/app"));
        assert_eq!(c.user.as_deref(), Some("app:app"));
        // An image without a config block runs nothing by itself.
        assert_eq!(run_config(b"{}").unwrap(), RunConfig::default());
    }

    #[test]
    fn run_config_refuses_what_would_break_a_unit_file() {
        for bad in [
            r#"{"config":{"Env":["A=b\nExecStartPre=/bin/evil"]}}"#,
            r#"{"config":{"Env":["NOEQUALS"]}}"#,
            r#"{"config":{"Cmd":"not a list"}}"#,
            r#"{"config":{"WorkingDir":"relative"}}"#,
            r#"{"config":{"User":"a b"}}"#,
            r#"{"config":{"Entrypoint":["x\ny"]}}"#,
        ] {
            assert!(run_config(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn merge_env_lets_the_recipe_replace_the_image() {
        let image = ["PATH=/usr/bin".to_string(), "A=1".into()];
        let recipe = ["A=2".to_string(), "B=3".into()];
        assert_eq!(merge_env(&image, &recipe), ["PATH=/usr/bin", "A=2", "B=3"]);
    }

    #[test]
    fn users_resolve_inside_the_image() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(d.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        assert_eq!(resolve_user(d.path(), "app").unwrap(), (1000, 1001));
        assert_eq!(resolve_user(d.path(), "1000").unwrap(), (1000, 1001));
        assert_eq!(resolve_user(d.path(), "app:staff").unwrap(), (1000, 50));
        assert_eq!(resolve_user(d.path(), "4242").unwrap(), (4242, 0));
        assert_eq!(resolve_user(d.path(), "4242:7").unwrap(), (4242, 7));
        let e = resolve_user(d.path(), "nobody").unwrap_err().to_string();
        assert!(e.contains("\"nobody\" is not in its /etc/passwd"), "{e}");
        assert!(resolve_user(d.path(), "app:wheel").is_err());
    }

    #[test]
    fn mount_points_are_made_inside_the_root_only() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        // A link climbing out resolves inside the root.
        std::os::unix::fs::symlink(outside.path(), root.join("run")).unwrap();
        std::os::unix::fs::symlink("/nowhere/resolv.conf", root.join("etc/resolv.conf")).unwrap();
        for p in RUNTIME_MOUNT_POINTS {
            add_mount_point(&root, p, MountPoint::Folder).unwrap();
        }
        add_mount_point(&root, "/models/iris", MountPoint::Folder).unwrap();
        add_mount_point(&root, "etc/resolv.conf", MountPoint::File).unwrap();
        add_mount_point(&root, "etc/hosts", MountPoint::File).unwrap();
        assert!(root.join("proc").is_dir() && root.join("models/iris").is_dir());
        assert!(root.join("etc/hosts").is_file());
        assert!(root.join("nowhere/resolv.conf").is_file());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        // Control: a file where a folder must be is refused.
        let e = add_mount_point(&root, "etc/hosts", MountPoint::Folder).unwrap_err();
        assert!(e.to_string().contains("not a folder"), "{e}");
    }
}
