//! The `cairn` command line: parses arguments, calls the library, reports
//! errors. Exit codes: 0 success, 1 a check failed or a build step failed,
//! 2 bad input (recipe, pins, arguments, keys).

use std::path::PathBuf;
use std::process::ExitCode;

use cairn::host::shown::{self, Shown, ShownLines};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "Build immutable, signed, bootable appliance images from TOML recipes",
    long_about = "cairn turns a TOML recipe into a read-only appliance image: a Debian root \
tree packed as squashfs, protected by dm-verity, booted by a UKI whose command line \
carries the root hash, written as a raw GPT disk (no loop devices, no mounts).\n\n\
Quick start (as root on Debian bookworm):\n  make deps && make image\n  cairn run out/field-ai-0.1.0/field-ai-0.1.0.raw"
)]
struct Cli {
    /// Print every host command cairn runs.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

fn parse_formats(s: &str) -> Result<cairn::build::Formats, String> {
    cairn::build::Formats::parse(s)
}

fn parse_forward(s: &str) -> Result<(u16, u16), String> {
    cairn::vm::run::parse_forward(s).map_err(|e| format!("{e:#}"))
}

#[derive(clap::Args)]
struct PassArgs {
    /// Read the key passphrase from the first line of this file.
    #[arg(long, value_name = "FILE", conflicts_with = "passphrase_env")]
    passphrase_file: Option<PathBuf>,
    /// Read the key passphrase from this environment variable.
    #[arg(long, value_name = "VAR")]
    passphrase_env: Option<String>,
}

impl PassArgs {
    fn source(&self) -> Option<cairn::release::signify::PassphraseSource> {
        use cairn::release::signify::PassphraseSource;
        match (&self.passphrase_file, &self.passphrase_env) {
            (Some(f), _) => Some(PassphraseSource::File(f.clone())),
            (None, Some(v)) => Some(cairn::cli::passphrase_from_env(v)),
            (None, None) => None,
        }
    }
}

#[derive(Subcommand)]
enum CacheOp {
    /// Write exactly the files RECIPE.lock needs to FILE (a tar with a
    /// DIGESTS list).
    Export {
        file: PathBuf,
        #[arg(long)]
        recipe: PathBuf,
    },
    /// Add the files of an export to this machine's cache; every file is
    /// checked against the list and its own name first.
    Import { file: PathBuf },
    /// Remove everything the given recipes' locks do not name (`--all`:
    /// everything). One of the two is required.
    Gc {
        /// Keep the files RECIPE's lock names (repeatable).
        #[arg(long = "keep-recipe", required_unless_present = "all")]
        recipes: Vec<PathBuf>,
        /// Empty the cache: keep no recipe's inputs.
        #[arg(long, conflicts_with = "recipes")]
        all: bool,
    },
}

#[derive(Subcommand)]
enum SiteOp {
    /// Check a site file against the recipe's [site] table and sign it:
    /// writes SITE.toml.sig. An unknown key, a key the recipe does not allow
    /// or a bad value: exit 2 with file:line:col, nothing written.
    Sign {
        site: PathBuf,
        /// The site key's secret half (signify format), not the release key.
        #[arg(long, value_name = "sites.sec")]
        key: PathBuf,
        /// The recipe whose [site] table the file must follow.
        #[arg(long)]
        recipe: PathBuf,
        #[arg(long)]
        root: Option<PathBuf>,
        #[command(flatten)]
        pass: PassArgs,
    },
    /// Write a copy of a raw, qcow2 or ISO image (for VMs) with a signed
    /// site file on its ESP (the ISO's: its EFI image). The site file is
    /// checked against the release's manifest and its signature verified
    /// first; the image is not changed.
    Apply {
        /// The .raw, .qcow2 or .iso, in its release folder (manifest.json beside it).
        image: PathBuf,
        /// The site file; SITE.toml.sig must be beside it.
        site: PathBuf,
        /// The copy to write (must not exist).
        #[arg(short, long)]
        out: PathBuf,
        /// The signer's public key: SHA256.sig, the manifest's and the
        /// image's digests are checked before the manifest's site key is
        /// trusted. Required unless --unverified.
        #[arg(long, value_name = "KEY.pub")]
        pubkey: Option<PathBuf>,
        /// Trust the release folder as it is (no signature check).
        #[arg(long)]
        unverified: bool,
    },
}

/// The environment `cairn build` reads, for `cairn build --help`.
const BUILD_ENV_HELP: &str = "Environment:
  CAIRN_CACHE           the cache (downloads, stage results): default $XDG_CACHE_HOME/cairn,
                        else ~/.cache/cairn
  CAIRN_NO_STAGE_CACHE  set (to any value) for a cold build: no stage result is reused or stored
  CAIRN_TREES=disk      keep root trees in the output folder; by default a rebuild unpacks the
                        cached base tree in a /dev/shm folder when it fits with room to spare
                        (the outputs are the same bytes either way)
  SOURCE_DATE_EPOCH     the release date (first match: this, the recipe's [image] source_date_epoch,
                        the lock's date, 2025-01-01)

Rebuilds reuse what did not change (the stage cache): an overlay change rebuilds the apps
volume and the media, a model change that model's volume and the media.";

#[derive(Subcommand)]
enum Command {
    /// Build a recipe into out/NAME-VERSION/ (raw disk + manifest.json).
    ///
    /// Stages print as they run, with their durations. A bad recipe or a
    /// pin mismatch stops the build before anything is written (exit 2);
    /// a failed or interrupted build leaves nothing under the output
    /// folder that looks finished.
    #[command(after_long_help = BUILD_ENV_HELP)]
    Build {
        /// The recipe file (see docs/recipe.md).
        recipe: PathBuf,
        /// Output folder; the image lands in DIR/NAME-VERSION/.
        #[arg(short, long, default_value = "out")]
        out: PathBuf,
        /// Folder that recipe paths may point into (default: the recipe's
        /// folder). Recipes cannot widen it themselves.
        #[arg(long)]
        root: Option<PathBuf>,
        /// Media to write, comma-separated: raw, iso, qcow2.
        #[arg(long, default_value = "raw,iso,qcow2", value_parser = parse_formats)]
        format: cairn::build::Formats,
        /// Sign the outputs with this signify secret key: writes SHA256 and
        /// SHA256.sig beside the media (`signify -C` and `cairn verify` read them).
        #[arg(long, value_name = "NAME.sec")]
        key: Option<PathBuf>,
        #[command(flatten)]
        pass: PassArgs,
        /// Secure Boot: sign every UKI cairn ships (the raw disk's and the
        /// ISO's) with this PEM key (unencrypted); a recipe with `[boot]
        /// shim = true` needs it (shim starts only a UKI signed by a key
        /// enrolled as a MOK). See docs/secure-boot.md.
        #[arg(long, value_name = "KEY", requires = "sb_cert")]
        sb_key: Option<PathBuf>,
        /// The X.509 certificate (PEM) of --sb-key; shipped as secure-boot.crt
        /// and its sha256 fingerprint recorded in the manifest.
        #[arg(long, value_name = "CERT", requires = "sb_key")]
        sb_cert: Option<PathBuf>,
        /// Use nothing but cairn's cache: needs RECIPE.lock with every
        /// package cached (`cairn fetch`); lists what is missing otherwise.
        #[arg(long)]
        offline: bool,
        /// Re-resolve RECIPE.lock when it disagrees with the recipe (or
        /// create it).
        #[arg(long)]
        update_lock: bool,
    },
    /// Resolve the recipe's Debian packages and write RECIPE.lock (name,
    /// version, architecture, .deb sha256 of every package; the epoch).
    ///
    /// Covers the base (kernel included) and every image built from Debian
    /// packages (`[images.build]`, one `[[image]]` table each). The .debs
    /// land in the cache ($CAIRN_CACHE, default ~/.cache/cairn). Commit the
    /// lock beside the recipe: builds then install exactly these files.
    Lock {
        recipe: PathBuf,
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// Fill the cache with everything RECIPE.lock names (the base's and
    /// built images' packages) and the recipe's URL inputs, checking each
    /// file's sha256, so `cairn build --offline` works later.
    Fetch {
        recipe: PathBuf,
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// Move cached inputs between machines, or prune the cache.
    Cache {
        #[command(subcommand)]
        op: CacheOp,
    },
    /// Make a signing key pair NAME.pub / NAME.sec in OpenBSD signify format.
    ///
    /// The secret key is encrypted under a passphrase (asked on the terminal,
    /// or read from --passphrase-file / --passphrase-env; never from the
    /// command line), unless --no-passphrase. Existing files are never
    /// overwritten.
    Keygen {
        /// Path prefix: NAME.pub and NAME.sec are written.
        name: PathBuf,
        /// Leave the secret key unencrypted (CI and throwaway keys only).
        #[arg(long)]
        no_passphrase: bool,
        /// Make a Secure Boot key instead: NAME.sb.key (PEM, unencrypted,
        /// 0600), NAME.sb.crt/.sb.cer (X.509), and PK/KEK/db enrolment
        /// files NAME.{PK,KEK,db}.{esl,auth} (docs/secure-boot.md).
        #[arg(long, conflicts_with = "no_passphrase")]
        secure_boot: bool,
        #[command(flatten)]
        pass: PassArgs,
    },
    /// Verify an output folder (or one .raw beside its SHA256, SHA256.sig and
    /// manifest.json) against a public key, offline. Exit 0 only if every
    /// check passes; 1 if one fails (one line says which); 2 for bad input.
    Verify {
        /// The output folder, or a .raw/.iso file in it.
        target: PathBuf,
        /// The signer's public key (signify format).
        #[arg(long, value_name = "KEY.pub")]
        pubkey: PathBuf,
        /// Also refuse images whose flags say debug (debug console on).
        #[arg(long)]
        production: bool,
        /// Write what was checked (each file and digest, key id, root
        /// hashes recomputed, production checks) as JSON evidence, also when
        /// verification fails; deterministic apart from its time stamp.
        #[arg(long, value_name = "FILE.json")]
        report: Option<PathBuf>,
    },
    /// What a reviewer reads first: name, version, build date, signer key id,
    /// root hash, kernel and command line, flags, network rules, outputs with
    /// digests and the package list. Does not verify: use `cairn verify`.
    Inspect {
        /// An output folder (out/NAME-VERSION).
        dir: PathBuf,
        /// Machine-readable JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Compare two output folders: packages added/removed/changed, OCI images,
    /// policy, flags, kernel command line, output sizes. Exit 0 when they are
    /// the same, 1 when they differ.
    Diff { a: PathBuf, b: PathBuf },
    /// Write an image to a USB stick or disk, verified first and read back after.
    ///
    /// The image's signature and digests are checked against KEY.pub before a
    /// byte is written; the device must not be mounted, must not hold the
    /// running system and must be large enough. The first MiB is written last,
    /// so an interrupted write leaves the device unbootable rather than
    /// half-right. A regular file is accepted as DEVICE only with --to-file.
    Flash {
        /// The .raw or .iso to write (its SHA256, SHA256.sig and manifest.json beside it).
        image: PathBuf,
        /// The target block device(s) (e.g. /dev/sdb), or files with --to-file.
        /// Several devices are written at once, each read back.
        #[arg(required = true, num_args = 1.., value_name = "DEVICE")]
        devices: Vec<PathBuf>,
        #[arg(long, value_name = "KEY.pub")]
        pubkey: PathBuf,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// Write to a regular file instead of a block device (tests, staging).
        #[arg(long)]
        to_file: bool,
        /// Append one receipt per device (JSON lines: device, model, serial,
        /// size, release, digests, times, result) to FILE.
        #[arg(long, value_name = "FILE")]
        receipts: Option<PathBuf>,
        /// A signed site file (SITE.toml.sig beside it) to put on each
        /// stick's ESP after the image; checked before anything is written,
        /// read back with the image, its digest in the receipts.
        #[arg(long, value_name = "SITE.toml")]
        site: Option<PathBuf>,
    },
    /// Site files: per-site settings for one signed release (see
    /// docs/recipe.md, `[site]`).
    Site {
        #[command(subcommand)]
        op: SiteOp,
    },
    /// Boot a raw, qcow2 or ISO image in QEMU on this machine, serial console on
    /// the terminal (Ctrl-A x quits). Networking is user-mode with restrict=on:
    /// the guest reaches nothing; --forward exposes its ingress ports on
    /// 127.0.0.1. KVM when it works, else TCG.
    Run {
        image: PathBuf,
        /// Boot with SeaBIOS (legacy BIOS) instead of OVMF (UEFI).
        #[arg(long)]
        bios: bool,
        /// HOSTPORT:GUESTPORT, repeatable: 127.0.0.1:HOSTPORT reaches the guest's port.
        #[arg(long, value_name = "HOST:GUEST", value_parser = parse_forward)]
        forward: Vec<(u16, u16)>,
        /// Boot a throwaway copy: the image file is never written.
        #[arg(long)]
        scratch: bool,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 2048)]
        memory: u32,
        /// Check the image's release folder first (SHA256.sig with this
        /// key, the image's digest) and boot only if it passes.
        #[arg(long, value_name = "KEY.pub")]
        pubkey: Option<PathBuf>,
    },
    /// Print the sha256 a recipe pins for a file or folder (model data,
    /// policy bundles): a file's plain sha256, or a folder's tree digest
    /// (sorted paths, modes, contents; symlinks as their target text).
    Digest { path: PathBuf },
    /// Check a recipe without building it: every problem, with file:line:col.
    Check {
        recipe: PathBuf,
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// List the host tools cairn needs, found or missing, with Debian packages.
    Doctor,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cairn::host::runner::set_verbose(cli.verbose);
    cairn::cli::tool_path_from_env();
    cairn::host::interrupt::install();
    match run(cli) {
        Ok(code) => code,
        Err(_) if cairn::host::interrupt::signalled().is_some() => {
            let sig = cairn::host::interrupt::signalled().unwrap_or(15);
            cairn::host::interrupt::report(sig);
            ExitCode::from(128 + sig as u8)
        }
        Err(e) => {
            if let Some(r) = e.downcast_ref::<cairn::recipe::RecipeError>() {
                for p in &r.problems {
                    eprintln!("error: {}", ShownLines(&p.to_string()));
                }
                return ExitCode::from(2);
            }
            // Messages quote inputs (file names, manifest strings, tools'
            // words about hostile files): no terminal control gets through.
            if e.downcast_ref::<cairn::InputError>().is_some() {
                eprintln!("error: {}", ShownLines(&e.to_string()));
                return ExitCode::from(2);
            }
            eprintln!("error: {}", ShownLines(&format!("{e:#}")));
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Read only by the commands that need it (verify, doctor, ... do not).
    let settings = cairn::cli::settings_from_env;
    match cli.command {
        Command::Build {
            recipe,
            out,
            root,
            key,
            pass,
            format,
            offline,
            update_lock,
            sb_key,
            sb_cert,
        } => {
            let r = cairn::recipe::load(&recipe, root.as_deref(), &settings()?.recipe_env())?;
            let secure_boot = match (sb_key, sb_cert) {
                (Some(k), Some(c)) => Some(cairn::pipeline::sbsign::SbKey::load(&k, &c)?),
                _ => None,
            };
            let key = key.map(|path| cairn::release::sign::SigningKey {
                path,
                passphrase: pass.source(),
            });
            let res = cairn::build::build(
                &r,
                &cairn::build::BuildOptions {
                    out_dir: out,
                    settings: settings()?,
                    formats: format,
                    key,
                    offline,
                    update_lock,
                    secure_boot,
                },
            )?;
            println!("{}", res.raw.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { recipe, root } => {
            let r = cairn::recipe::load(&recipe, root.as_deref(), &settings()?.recipe_env())?;
            println!("{}: ok ({} {})", recipe.display(), r.name, r.version);
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen {
            name,
            secure_boot: true,
            ..
        } => {
            for f in cairn::release::secureboot::keygen(&name)? {
                println!("{}", f.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen {
            name,
            no_passphrase,
            pass,
            secure_boot: false,
        } => {
            let passphrase = if no_passphrase {
                None
            } else {
                let source = pass
                    .source()
                    .unwrap_or(cairn::release::signify::PassphraseSource::Prompt { confirm: true });
                Some(
                    cairn::release::signify::read_passphrase(source)
                        .map_err(|e| cairn::InputError(e.to_string()))?,
                )
            };
            let comment = name
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "cairn".into());
            let (p, s) = cairn::release::signify::keygen(&name, passphrase.as_deref(), &comment)
                .map_err(|e| cairn::InputError(format!("{e:#}")))?;
            let id = cairn::release::signify::PublicKey::read(&p)?.key_id();
            println!(
                "public key: {}\nsecret key: {}\nkey id:     {id}",
                p.display(),
                s.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            target,
            pubkey,
            production,
            report,
        } => {
            let outcome = cairn::release::verify::verify(&target, &pubkey, production);
            if let Some(path) = &report {
                // The one wall-clock time stamp: when the evidence was taken.
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let v = cairn::release::verify::report::report_json(
                    &target,
                    &pubkey,
                    production,
                    &outcome,
                    &cairn::host::time::rfc3339(now),
                );
                cairn::release::verify::report::write_report(path, &target, &v)
                    .map_err(|e| cairn::InputError(format!("{e:#}")))?;
            }
            match outcome {
                Ok(report) => {
                    println!("{report}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(cairn::release::verify::VerifyError::BadInput(m)) => {
                    eprintln!("error: {}", Shown(&m));
                    Ok(ExitCode::from(2))
                }
                Err(e) => {
                    eprintln!("FAILED {}", Shown(&e.to_string()));
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Inspect { dir, json } => {
            let i = cairn::release::inspect::inspect(&dir)
                .map_err(|e| cairn::InputError(format!("{e:#}")))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&i)?);
            } else {
                print!("{}", i.render_text());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Diff { a, b } => {
            let d = cairn::release::diff::diff(&a, &b)
                .map_err(|e| cairn::InputError(format!("{e:#}")))?;
            print!("{}", d.render_text());
            Ok(if d.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Flash {
            image,
            mut devices,
            pubkey,
            yes,
            to_file,
            receipts,
            site,
        } => {
            if devices.len() == 1 && receipts.is_none() {
                let opts = cairn::field::flash::FlashOptions {
                    image,
                    device: devices.remove(0),
                    pubkey,
                    yes,
                    to_file,
                    max_size: None,
                    site,
                };
                return Ok(match cairn::field::flash::flash(&opts) {
                    Ok(report) => {
                        println!("{report}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
                    }
                });
            }
            let opts = cairn::field::flash::ManyOptions {
                image,
                devices,
                pubkey,
                yes,
                to_file,
                max_size: None,
                receipts,
                site,
            };
            match cairn::field::flash::flash_many(&opts) {
                Ok(report) => {
                    println!(
                        "flash: {} ({}) verified with key {} before writing",
                        opts.image.display(),
                        cairn::host::progress::human_bytes(report.bytes),
                        report.key_id
                    );
                    for (s, line) in report.sticks.iter().zip(report.lines()) {
                        if s.result.is_ok() {
                            println!("{line}");
                        } else {
                            eprintln!("error: {line}");
                        }
                    }
                    if let Some(log) = &opts.receipts {
                        println!(
                            "flash: {} receipt(s) appended to {}",
                            report.sticks.len(),
                            log.display()
                        );
                    }
                    let code = report.exit_code();
                    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1)))
                }
            }
        }
        Command::Site { op } => match op {
            SiteOp::Sign {
                site,
                key,
                recipe,
                root,
                pass,
            } => {
                let r = cairn::recipe::load(&recipe, root.as_deref(), &settings()?.recipe_env())?;
                let decl = r.site.as_ref().ok_or_else(|| {
                    cairn::InputError(format!(
                        "{}: the recipe has no [site] table, so its images take no site file",
                        recipe.display()
                    ))
                })?;
                // The file first: its problems are what the user came for.
                cairn::release::site::check_file(&site, decl)?;
                let key = cairn::release::sign::load_key(&cairn::release::sign::SigningKey {
                    path: key,
                    passphrase: pass.source(),
                })?;
                let s = cairn::release::site::sign(&site, &key, decl)?;
                println!(
                    "site {} (key {}): wrote {}",
                    Shown(&s.name),
                    s.key_id,
                    cairn::release::site::sig_path(&site).display()
                );
                Ok(ExitCode::SUCCESS)
            }
            SiteOp::Apply {
                image,
                site,
                out,
                pubkey,
                unverified,
            } => {
                let trust =
                    cairn::release::site::ReleaseTrust::from_args(pubkey.as_deref(), unverified)?;
                let a = cairn::release::site::apply(&image, &site, &out, trust)?;
                println!(
                    "site {} (key {}): wrote {} (read back{})",
                    Shown(&a.site.name),
                    a.site.key_id,
                    shown::path(&a.out),
                    if unverified {
                        "; release not verified"
                    } else {
                        ""
                    }
                );
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::Run {
            image,
            bios,
            forward,
            scratch,
            memory,
            pubkey,
        } => {
            if let Some(key) = &pubkey {
                let c = cairn::release::verify::check_release(&image, key).map_err(|e| {
                    cairn::InputError(format!(
                        "run: {}: the release does not check with {}: {}",
                        shown::path(&image),
                        shown::path(key),
                        Shown(&e.to_string())
                    ))
                })?;
                eprintln!(
                    "cairn run: {} {} verified with key {}",
                    Shown(&c.manifest.image.name),
                    Shown(&c.manifest.image.version),
                    c.key_id
                );
            }
            let opts = cairn::vm::run::RunOptions {
                firmware: if bios {
                    cairn::vm::qemu::Firmware::Bios
                } else {
                    cairn::vm::qemu::Firmware::Uefi
                },
                forwards: forward,
                scratch,
                memory_mib: memory,
                ..Default::default()
            };
            cairn::vm::qemu::configure(cairn::cli::qemu_config_from_env())?;
            let code = cairn::vm::run::run_image(&image, opts)?;
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
        Command::Lock { recipe, root } => {
            let r = cairn::recipe::load(&recipe, root.as_deref(), &settings()?.recipe_env())?;
            cairn::inputs::plan::lock_recipe(&r, &settings()?.open_cache()?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Fetch { recipe, root } => {
            let r = cairn::recipe::load(&recipe, root.as_deref(), &settings()?.recipe_env())?;
            let path = cairn::inputs::lock::lock_path(&r.file);
            let lock = cairn::inputs::lock::Lock::read(&path).map_err(|e| {
                cairn::InputError(format!(
                    "{}: {e:#}; run `cairn lock {}` first",
                    path.display(),
                    recipe.display()
                ))
            })?;
            if let Err(m) = cairn::inputs::lock::check_recipe(&lock, &r) {
                return Err(cairn::InputError(format!("{}: {m}", path.display())).into());
            }
            let cache = settings()?.open_cache()?;
            let work = tempfile::tempdir()?;
            let (rep, url_bytes) =
                cairn::inputs::plan::fetch_inputs(Some(&lock), &r.downloads, &cache, work.path())?;
            println!(
                "{} packages fetched ({} bytes), {} already cached; {} URL input(s) ready ({url_bytes} bytes downloaded); in {}",
                rep.downloaded,
                rep.bytes,
                rep.already,
                r.downloads.len(),
                cache.root().display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Cache { op } => {
            let cache = settings()?.open_cache()?;
            match op {
                CacheOp::Export { file, recipe } => {
                    let lock =
                        cairn::inputs::lock::Lock::read(&cairn::inputs::lock::lock_path(&recipe))
                            .map_err(|e| cairn::InputError(format!("{e:#}")))?;
                    cache.export(&lock.digests(), &file)?;
                    println!("wrote {} ({} files)", file.display(), lock.digests().len());
                }
                CacheOp::Import { file } => {
                    let rep = cache
                        .import(&file)
                        .map_err(|e| cairn::InputError(format!("{}: {e:#}", file.display())))?;
                    println!("{} files added, {} already present", rep.added, rep.present);
                }
                CacheOp::Gc { recipes, all } => {
                    let mut keep = std::collections::BTreeSet::new();
                    for r in &recipes {
                        let lock =
                            cairn::inputs::lock::Lock::read(&cairn::inputs::lock::lock_path(r))
                                .map_err(|e| cairn::InputError(format!("{e:#}")))?;
                        keep.extend(lock.digests());
                    }
                    let keep = if all {
                        cairn::inputs::cache::GcKeep::Nothing
                    } else {
                        cairn::inputs::cache::GcKeep::Named(keep)
                    };
                    let (n, bytes) = cache.gc(&keep)?;
                    println!("removed {n} files, {bytes} bytes");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Digest { path } => {
            let d = cairn::pipeline::workloads::model_digest(&path)
                .map_err(|e| cairn::InputError(format!("{}: {e:#}", path.display())))?;
            println!("{d}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor => {
            let missing = cairn::host::doctor::report();
            Ok(if missing == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
