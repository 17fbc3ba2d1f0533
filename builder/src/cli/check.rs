//! `cairn check`: a recipe checked without building it; `--summary` shows
//! what a build of it would use, defaults filled in.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use super::{Env, JsonArg, RecipeArgs};
use crate::host::progress::human_bytes;
use crate::recipe::{Base, Recipe};

/// Check a recipe without building it: every problem, with file:line:col.
///
/// With --summary: the resolved settings (defaults filled in), the
/// package set, the volumes and partition sizes, and the outputs a build
/// writes.
#[derive(clap::Args)]
#[command(after_help = after_help!(
    "  cairn check recipes/field-ai.toml\n  cairn check site/kiosk.toml --root site\n  cairn check recipes/field-ai.toml --summary --json | jq .packages"
))]
pub struct Args {
    #[command(flatten)]
    recipe: RecipeArgs,
    /// Also show the resolved settings, package set, sizes and outputs.
    #[arg(long)]
    summary: bool,
    #[command(flatten)]
    json: JsonArg,
}

/// `cairn check --json`: the verdict, and the summary when asked.
#[derive(Serialize)]
struct Checked {
    recipe: PathBuf,
    ok: bool,
    name: String,
    version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    summary: Option<Summary>,
}

/// What a build of the recipe would use (`--summary`).
#[derive(Serialize)]
struct Summary {
    settings: Settings,
    /// The Debian packages of the base (sorted); `None` for a tarball base,
    /// whose packages are the tarball's.
    packages: Option<Vec<String>>,
    sizes: Sizes,
    volumes: Vec<Volume>,
    outputs: Outputs,
}

#[derive(Serialize)]
struct Settings {
    source_date_epoch: u64,
    source_date_epoch_from: crate::recipe::epoch::EpochSource,
    base: String,
    kernel_package: String,
    extra_modules: Vec<String>,
    cmdline_extra: Vec<String>,
    state_mode: crate::recipe::StateMode,
    state_grow: bool,
    ram_size: String,
    allow_bios: bool,
    shim: bool,
    mok_manager: bool,
    allow_unsigned: bool,
    debug_console: bool,
    debug_unencrypted_state: bool,
    debug_cmdline: Vec<String>,
    runtime: crate::recipe::workloads::Runtime,
    images: Vec<String>,
    services: Vec<String>,
    egress_rules: usize,
    ingress_rules: usize,
    site_file: bool,
}

/// Sizes fixed by the recipe; the others fit what the build makes.
#[derive(Serialize)]
struct Sizes {
    disk_bytes: u64,
    state_bytes: u64,
    /// One line per partition of the raw disk, in order.
    partitions: Vec<String>,
}

#[derive(Serialize)]
struct Volume {
    name: String,
    what: String,
}

#[derive(Serialize)]
struct Outputs {
    /// Relative to the output folder (`build -o`, default out).
    dir: String,
    /// Written by default (`build --format` picks among them).
    media: Vec<String>,
    /// Always written.
    files: Vec<String>,
    /// Written with `build --key`.
    signed: Vec<String>,
}

fn summary(r: &Recipe) -> Summary {
    let w = &r.workloads;
    let (base, packages) = match &r.base {
        Base::Debian {
            suite,
            mirror,
            packages,
        } => (
            format!("debian {suite} from {mirror}"),
            Some(crate::recipe::packages::package_list(r, packages)),
        ),
        Base::Tarball { path, .. } => (format!("tarball {}", path.display()), None),
    };
    let apps = !w.images.is_empty() || w.k3s.is_some();
    let mut partitions = vec![
        "esp: FAT, fits the UKI(s), at least 64 MiB".to_string(),
        "root: squashfs of the base, its size".to_string(),
        "root-verity: the dm-verity tree of root".to_string(),
    ];
    if apps {
        partitions.push("apps + apps-verity: the container images' volume".to_string());
    }
    for m in &w.models {
        partitions.push(format!("model {}: its squashfs + verity", m.name));
    }
    partitions.push(format!(
        "state: {} ({}){}",
        human_bytes(r.state_size),
        r.state_mode.as_str(),
        if r.state_grow {
            ", grown to the disk's end at first boot"
        } else {
            ""
        }
    ));
    let mut volumes = Vec::new();
    if apps {
        volumes.push(Volume {
            name: crate::recipe::workloads::APPS_VOLUME.to_string(),
            what: format!("{} container image(s)", w.images.len()),
        });
    }
    for m in &w.models {
        volumes.push(Volume {
            name: m.name.clone(),
            what: format!(
                "model {} ({:?} compression)",
                m.path.display(),
                m.compression
            ),
        });
    }
    let stem = format!("{}-{}", r.name, r.version);
    Summary {
        settings: Settings {
            source_date_epoch: r.source_date_epoch,
            source_date_epoch_from: r.source_date_epoch_from,
            base,
            kernel_package: r.kernel_package.clone(),
            extra_modules: r.extra_modules.clone(),
            cmdline_extra: r.cmdline_extra.clone(),
            state_mode: r.state_mode,
            state_grow: r.state_grow,
            ram_size: r.ram_size.clone(),
            allow_bios: r.allow_bios,
            shim: r.shim.is_some(),
            mok_manager: r.mok_manager,
            allow_unsigned: r.allow_unsigned,
            debug_console: r.debug_console,
            debug_unencrypted_state: r.debug_unencrypted_state,
            debug_cmdline: r.debug_cmdline.clone(),
            runtime: w.runtime,
            images: w.images.iter().map(|i| i.name.clone()).collect(),
            services: w.services.iter().map(|s| s.name.clone()).collect(),
            egress_rules: r.network.egress.len(),
            ingress_rules: r.network.ingress.len(),
            site_file: r.site.is_some(),
        },
        packages,
        sizes: Sizes {
            disk_bytes: r.disk_size,
            state_bytes: r.state_size,
            partitions,
        },
        volumes,
        outputs: Outputs {
            dir: stem.clone(),
            // What `cairn build` writes without `--format`.
            media: crate::media::FORMATS
                .iter()
                .filter(|f| f.by_default)
                .map(|f| f.file(&stem))
                .collect(),
            files: vec!["manifest.json".into(), "SHA256".into()],
            signed: vec!["SHA256.sig".into()],
        },
    }
}

fn render(s: &Summary, disk: u64) -> String {
    use std::fmt::Write;
    let t = &s.settings;
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(" ")
        }
    };
    let mut o = String::new();
    let _ = writeln!(o, "settings:");
    let rows = [
        (
            "source_date_epoch",
            format!(
                "{} (from {:?})",
                t.source_date_epoch, t.source_date_epoch_from
            )
            .to_lowercase(),
        ),
        ("base", t.base.clone()),
        ("kernel", t.kernel_package.clone()),
        ("extra modules", list(&t.extra_modules)),
        ("cmdline extra", list(&t.cmdline_extra)),
        (
            "state",
            format!("{} grow={}", t.state_mode.as_str(), t.state_grow),
        ),
        ("ram size", t.ram_size.clone()),
        (
            "boot",
            format!(
                "allow_bios={} shim={} mok_manager={} allow_unsigned={}",
                t.allow_bios, t.shim, t.mok_manager, t.allow_unsigned
            ),
        ),
        (
            "debug",
            format!(
                "console={} unencrypted_state={} cmdline={}",
                t.debug_console,
                t.debug_unencrypted_state,
                list(&t.debug_cmdline)
            ),
        ),
        ("runtime", format!("{:?}", t.runtime).to_lowercase()),
        ("images", list(&t.images)),
        ("services", list(&t.services)),
        (
            "network",
            format!(
                "{} egress, {} ingress rule(s)",
                t.egress_rules, t.ingress_rules
            ),
        ),
        ("site file", t.site_file.to_string()),
    ];
    for (k, v) in rows {
        let _ = writeln!(o, "  {k:<18} {v}");
    }
    match &s.packages {
        Some(p) => {
            let _ = writeln!(o, "packages ({}):\n  {}", p.len(), p.join(" "));
        }
        None => {
            let _ = writeln!(o, "packages: the tarball's");
        }
    }
    let _ = writeln!(o, "disk: {} (raw image size)", human_bytes(disk));
    for p in &s.sizes.partitions {
        let _ = writeln!(o, "  {p}");
    }
    let _ = writeln!(o, "volumes:");
    if s.volumes.is_empty() {
        let _ = writeln!(o, "  -");
    }
    for v in &s.volumes {
        let _ = writeln!(o, "  {:<18} {}", v.name, v.what);
    }
    let _ = writeln!(o, "outputs in OUT/{}/:", s.outputs.dir);
    let _ = writeln!(
        o,
        "  {}  (build --format picks)\n  {}\n  {}  (with build --key)",
        s.outputs.media.join(" "),
        s.outputs.files.join(" "),
        s.outputs.signed.join(" ")
    );
    o
}

pub fn exec(a: Args, env: &Env) -> Result<ExitCode> {
    let r = a.recipe.load(&env.settings()?)?;
    let summary = a.summary.then(|| summary(&r));
    if a.json.json {
        super::print_json(&Checked {
            recipe: a.recipe.path().to_path_buf(),
            ok: true,
            name: r.name.clone(),
            version: r.version.clone(),
            summary,
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{}: ok ({} {})",
        a.recipe.path().display(),
        r.name,
        r.version
    );
    if let Some(s) = &summary {
        print!("{}", render(s, r.disk_size));
    }
    Ok(ExitCode::SUCCESS)
}
