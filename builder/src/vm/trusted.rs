//! Trusted-boot additions to a QEMU boot, for the boot tests: OVMF with
//! Secure Boot enforcing (Debian's snakeoil-enrolled variable store) and a
//! software TPM 2.0 (swtpm). Both are extra QEMU arguments for a
//! `BootSpec` whose firmware is `Firmware::Bios` (so the spec adds no
//! firmware of its own; the pflash drives given here replace SeaBIOS).
//! Invariant: swtpm dies with its [`Swtpm`] (a runner `Process`: SIGKILL
//! on drop).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::host::runner::{self, Process};

/// Secure Boot capable OVMF (needs SMM).
pub const OVMF_CODE_SECBOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
/// Variable store with the snakeoil certificate in PK, KEK and db, and
/// Secure Boot enabled.
pub const OVMF_VARS_SNAKEOIL: &str = "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd";
/// The certificate that variable store trusts, and its key (passphrase
/// `snakeoil`), from Debian's ovmf package: for tests only.
pub const SNAKEOIL_CERT: &str = "/usr/share/ovmf/PkKek-1-snakeoil.pem";
pub const SNAKEOIL_KEY: &str = "/usr/share/ovmf/PkKek-1-snakeoil.key";
pub const SNAKEOIL_PASSPHRASE: &str = "snakeoil";

/// QEMU refuses commas in option values unless doubled; tests pick their
/// own folders, so refuse instead of escaping.
fn plain(p: &Path) -> Result<String> {
    let s = p
        .to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))?;
    if s.contains(',') {
        bail!("{s}: a comma in a QEMU path");
    }
    Ok(s.to_string())
}

/// Variable store of a stock machine: Microsoft's KEK and db (the Windows
/// and the third-party UEFI CA, which signed shim), Secure Boot enabled.
pub const OVMF_VARS_MS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";
/// The owner GUID the tests give a MOK they enrol (shim's own GUID).
const MOK_OWNER: &str = "605dab50-e046-4300-abb6-3dd810dd8b23";

fn check_firmware(files: &[&str]) -> Result<()> {
    for p in files {
        if !Path::new(p).is_file() {
            bail!("{p} not found; install the Debian package ovmf");
        }
    }
    Ok(())
}

/// Arguments for OVMF with Secure Boot enforcing: SMM on, the secboot code
/// read-only, a private copy of the snakeoil variable store in `dir`.
pub fn secure_boot_args(dir: &Path) -> Result<Vec<String>> {
    check_firmware(&[OVMF_CODE_SECBOOT, OVMF_VARS_SNAKEOIL])?;
    let vars = dir.join("OVMF_VARS_snakeoil.fd");
    fs::copy(OVMF_VARS_SNAKEOIL, &vars)
        .with_context(|| format!("copy {OVMF_VARS_SNAKEOIL} to {}", vars.display()))?;
    secure_boot_vars_args(&vars)
}

/// Arguments for a stock machine with Secure Boot enforcing: Microsoft's
/// keys only ([`OVMF_VARS_MS`], copied into `dir`), and each of `moks`
/// (PEM certificates) in shim's MokList, as if enrolled with `mokutil
/// --import` and MokManager (`virt-fw-vars --add-mok`, Debian's
/// python3-virt-firmware).
pub fn stock_secure_boot_args(dir: &Path, moks: &[&Path]) -> Result<Vec<String>> {
    check_firmware(&[OVMF_CODE_SECBOOT, OVMF_VARS_MS])?;
    let vars = dir.join("OVMF_VARS_ms.fd");
    if moks.is_empty() {
        fs::copy(OVMF_VARS_MS, &vars)
            .with_context(|| format!("copy {OVMF_VARS_MS} to {}", vars.display()))?;
    } else {
        let mut cmd = runner::command("virt-fw-vars");
        cmd.arg("--input")
            .arg(OVMF_VARS_MS)
            .arg("--output")
            .arg(&vars);
        for m in moks {
            cmd.arg("--add-mok").arg(MOK_OWNER).arg(m);
        }
        runner::output("stock secure boot: virt-fw-vars", cmd)
            .context("install python3-virt-firmware from bookworm-backports (make deps)")?;
    }
    secure_boot_vars_args(&vars)
}

fn secure_boot_vars_args(vars: &Path) -> Result<Vec<String>> {
    fs::set_permissions(vars, fs::Permissions::from_mode(0o600))?;
    Ok(vec![
        "-machine".into(),
        "smm=on".into(),
        "-global".into(),
        "driver=cfi.pflash01,property=secure,value=on".into(),
        "-drive".into(),
        format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE_SECBOOT}"),
        "-drive".into(),
        format!("if=pflash,format=raw,unit=1,file={}", plain(vars)?),
    ])
}

/// Plain OVMF (Secure Boot off), as extra arguments like the above, for
/// boots that add a TPM to an ordinary UEFI machine.
pub fn uefi_args(dir: &Path) -> Result<Vec<String>> {
    let (code, template) = crate::vm::qemu::ovmf_paths()?;
    let vars = dir.join("OVMF_VARS.fd");
    fs::copy(&template, &vars)
        .with_context(|| format!("copy {} to {}", template.display(), vars.display()))?;
    fs::set_permissions(&vars, fs::Permissions::from_mode(0o600))?;
    Ok(vec![
        "-drive".into(),
        format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            plain(&code)?
        ),
        "-drive".into(),
        format!("if=pflash,format=raw,unit=1,file={}", plain(&vars)?),
    ])
}

/// A software TPM 2.0 for one VM, its state in a folder of its own.
pub struct Swtpm {
    child: Process,
    sock: PathBuf,
}

impl Swtpm {
    /// Starts `swtpm socket --tpm2` with its state and control socket in
    /// `dir`, and waits for the socket.
    pub fn start(dir: &Path) -> Result<Swtpm> {
        let state = dir.join("tpm-state");
        fs::create_dir_all(&state)?;
        let sock = dir.join("swtpm.sock");
        let mut cmd = runner::command("swtpm");
        cmd.arg("socket")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(format!("dir={}", plain(&state)?))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", plain(&sock)?))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = runner::spawn("swtpm", cmd).context("install the Debian package swtpm")?;
        let mut tpm = Swtpm { child, sock };
        let started = Instant::now();
        while !tpm.sock.exists() {
            if let Some(status) = tpm.child.try_wait()? {
                bail!(
                    "swtpm exited ({status}) before creating {}",
                    tpm.sock.display()
                );
            }
            if started.elapsed() > Duration::from_secs(10) {
                bail!("swtpm made no socket {} in 10 s", tpm.sock.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(tpm)
    }

    /// QEMU arguments attaching this TPM as a TIS device.
    pub fn qemu_args(&self) -> Result<Vec<String>> {
        Ok(vec![
            "-chardev".into(),
            format!("socket,id=chrtpm,path={}", plain(&self.sock)?),
            "-tpmdev".into(),
            "emulator,id=tpm0,chardev=chrtpm".into(),
            "-device".into(),
            "tpm-tis,tpmdev=tpm0".into(),
        ])
    }
}
