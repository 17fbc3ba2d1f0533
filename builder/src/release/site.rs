//! Signed site files: `cairn site sign` checks one against the recipe's
//! `[site]` declaration and signs it (signify, detached `SITE.toml.sig`);
//! `cairn site apply` and `cairn flash --site` put it with its signature
//! into the medium's ESP (`/cairn/site.toml`, `/cairn/site.toml.sig`; on
//! the hybrid ISO the FAT image `/boot/efi.img`, which its GPT exposes as
//! the EFI partition), with mtools at the partition's offset (no loop
//! devices, no mounts), and read both back.
//!
//! Invariant: nothing is written to a medium unless the site file passes the
//! declaration's checks and its signature verifies with the release's site
//! key; the verity-protected partitions are never touched.

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::host::shown::Shown;
use crate::recipe::site::{check, SiteDeclaration};
use crate::release::signify::{PublicKey, SecretKey, Signature};

/// The folder on the ESP, and the two files in it.
pub const ESP_DIR: &str = "cairn";
pub const ESP_SITE: &str = "site.toml";
pub const ESP_SIG: &str = "site.toml.sig";

/// `SITE.toml.sig` beside `SITE.toml`.
pub fn sig_path(site: &Path) -> PathBuf {
    let mut s = site.as_os_str().to_owned();
    s.push(".sig");
    PathBuf::from(s)
}

/// A site file that passed the checks, with its signature.
#[derive(Debug, Clone)]
pub struct SignedSite {
    pub path: PathBuf,
    pub name: String,
    pub key_id: String,
    pub text: Vec<u8>,
    pub sig: Vec<u8>,
    /// The node's role (`server` when the file sets none) and host name
    /// (None: the image's name), for what sign, apply and flash print and
    /// the flash receipts record.
    pub role: String,
    pub node: Option<String>,
}

impl SignedSite {
    /// `role server, node north-1` for the lines sign, apply and flash print.
    pub fn role_text(&self) -> String {
        match &self.node {
            Some(n) => format!("role {}, node {}", self.role, Shown(n)),
            None => format!("role {}", self.role),
        }
    }
}

/// Seconds since 1970 now (the check of a token's expiry at signing).
fn now_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh bootstrap token (`[a-z0-9]{6}.[a-z0-9]{16}`) from the operating
/// system's random source (`cairn site token`).
pub fn fresh_token() -> Result<String> {
    use rand_core::{OsRng, RngCore};
    let mut buf = [0u8; 64];
    OsRng
        .try_fill_bytes(&mut buf)
        .map_err(|e| anyhow::anyhow!("site token: the random source failed: {e}"))?;
    let mut used = 0;
    let mut failed = None;
    let token = crate::recipe::site::token_from(|| {
        if used == buf.len() {
            // Rejections (bytes >= 252) are rare; a refill is rarer still.
            if let Err(e) = OsRng.try_fill_bytes(&mut buf) {
                failed = Some(e.to_string());
            }
            used = 0;
        }
        used += 1;
        buf[used - 1]
    });
    match failed {
        Some(e) => bail!("site token: the random source failed: {e}"),
        None => Ok(token),
    }
}

/// The two lines of `cairn site token`: a fresh token and its expiry
/// `days` from now.
pub fn token_lines(days: u32) -> Result<String> {
    Ok(crate::recipe::site::token_lines(
        &fresh_token()?,
        now_epoch(),
        days,
    ))
}

/// A site file holds a handful of settings; 64 KiB is far more than one
/// needs, and the cap keeps a hostile one from being read without end.
pub const MAX_SITE_FILE: u64 = 64 << 10;
/// A detached signify signature is two short lines.
pub const MAX_SITE_SIG: u64 = 4 << 10;

/// `path` read as `host::untrusted` reads (a FIFO or a device is refused,
/// never waited on; at most `max` bytes), with `fix` after the reason.
fn read_capped(path: &Path, max: u64, fix: &str) -> Result<Vec<u8>> {
    use crate::host::untrusted::{read, Links};
    read(path, Links::Follow, max)
        .map_err(|e| crate::InputError(format!("{}; {fix}", Shown(&e.to_string()))).into())
}

fn read_text(site: &Path) -> Result<String> {
    let bytes = read_capped(site, MAX_SITE_FILE, "give the site file itself")?;
    String::from_utf8(bytes).map_err(|_| {
        crate::InputError(format!(
            "{}: the site file is not UTF-8 text; write it as TOML",
            Shown(&site.to_string_lossy())
        ))
        .into()
    })
}

/// Checks `site` against `decl` (every problem with `file:line:col`).
pub fn check_file(
    site: &Path,
    decl: &SiteDeclaration,
) -> Result<crate::recipe::site::SiteSettings> {
    let text = read_text(site)?;
    Ok(check(site, &text, decl)?)
}

/// `cairn site sign`: `site` checked against `recipe`'s `[site]` table
/// first (its problems are what the user came for), then signed with the
/// key at `key` (its passphrase asked for only then). A recipe without
/// `[site]` is bad input.
pub fn sign_for_recipe(
    site: &Path,
    recipe: &crate::recipe::Recipe,
    key: &crate::release::sign::SigningKey,
) -> Result<SignedSite> {
    let decl = recipe.site.as_ref().ok_or_else(|| {
        crate::InputError(format!(
            "{}: the recipe has no [site] table, so its images take no site file",
            recipe.file.display()
        ))
    })?;
    // Checked as it will be signed (with the image and version sign adds
    // when missing), before the key's passphrase is asked for.
    let (text, _) = crate::recipe::site::with_binding(&read_text(site)?, decl);
    check(site, &text, decl)?;
    if let Some(e) = crate::recipe::site::expiry_problem(site, &text, now_epoch()) {
        return Err(e.into());
    }
    let key = crate::release::sign::load_key(key)?;
    sign(site, &key, decl)
}

/// Checks `site` against `decl`, signs it with `key` (which must be the
/// declaration's site key) and writes `SITE.toml.sig`. A file that does not
/// name its image and version gets them (this recipe's `image = "NAME"`,
/// `version = "V"`), written into the file before it is signed, so the
/// signature binds the file to this image; `serial` is the signer's to give.
pub fn sign(site: &Path, key: &SecretKey, decl: &SiteDeclaration) -> Result<SignedSite> {
    sign_at(site, key, decl, now_epoch())
}

/// [`sign`] at `now` (seconds since 1970): a `join_expires` at or before
/// it is refused (the token would be useless on every stick).
pub fn sign_at(
    site: &Path,
    key: &SecretKey,
    decl: &SiteDeclaration,
    now: u64,
) -> Result<SignedSite> {
    let original = read_text(site)?;
    let (text, added) = crate::recipe::site::with_binding(&original, decl);
    let settings = check(site, &text, decl)?;
    if let Some(e) = crate::recipe::site::expiry_problem(site, &text, now) {
        return Err(e.into());
    }
    let public = key.public();
    if public.key_id() != decl.key_id {
        return Err(crate::InputError(format!(
            "the secret key is key {}, but the recipe's site key is {}: sign with the secret key of {}",
            public.key_id(),
            decl.key_id,
            decl.key_path.display()
        ))
        .into());
    }
    if !added.is_empty() {
        std::fs::write(site, &text).with_context(|| format!("write {}", site.display()))?;
    }
    let sig = key.sign(text.as_bytes());
    let pub_name = decl
        .key_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sites.pub".into());
    let sig_text = sig.to_file_text(&pub_name);
    let out = sig_path(site);
    std::fs::write(&out, &sig_text).with_context(|| format!("write {}", out.display()))?;
    Ok(SignedSite {
        path: site.to_path_buf(),
        role: settings.role().to_string(),
        node: settings.hostname,
        name: settings.name,
        key_id: decl.key_id.clone(),
        text: text.into_bytes(),
        sig: sig_text.into_bytes(),
    })
}

/// Reads `site` and its `.sig`, checks it against `decl` and verifies the
/// signature with the declaration's key.
pub fn load_signed(site: &Path, decl: &SiteDeclaration) -> Result<SignedSite> {
    let text = read_text(site)?;
    let settings = check(site, &text, decl)?;
    let sp = sig_path(site);
    let sig_bytes = read_capped(
        &sp,
        MAX_SITE_SIG,
        "sign the site file first (cairn site sign)",
    )?;
    let sig = Signature::parse(&String::from_utf8_lossy(&sig_bytes))
        .map_err(|e| crate::InputError(format!("{}: {e}", sp.display())))?;
    let key = PublicKey::parse(&decl.public_key)
        .map_err(|e| crate::InputError(format!("the release's site key: {e}")))?;
    sig.verify(&key, text.as_bytes()).map_err(|e| {
        crate::InputError(format!(
            "{}: the signature does not verify with the release's site key {} ({e}); the image would refuse it at boot",
            sp.display(),
            decl.key_id
        ))
    })?;
    Ok(SignedSite {
        path: site.to_path_buf(),
        role: settings.role().to_string(),
        node: settings.hostname,
        name: settings.name,
        key_id: decl.key_id.clone(),
        text: text.into_bytes(),
        sig: sig_bytes,
    })
}

/// The byte offset of the ESP on a medium or device: the raw disk's
/// `cairn-esp`, or on the hybrid ISO (a file, or written to a stick) the
/// one GPT partition of ESP type, which is the blocks of the ISO's
/// `/boot/efi.img` (the initramfs reads the site file from that file).
pub fn esp_offset(medium: &Path) -> Result<u64> {
    let mut f =
        std::fs::File::open(medium).with_context(|| format!("site: open {}", medium.display()))?;
    let len = f
        .seek(std::io::SeekFrom::End(0))
        .with_context(|| format!("site: size of {}", medium.display()))?;
    let parts = crate::release::verify::read_gpt(&mut f, len)
        .map_err(|e| anyhow::anyhow!("site: {}: {e}", medium.display()))?;
    let esp: Vec<_> = parts
        .iter()
        .filter(|p| p.name == crate::media::disk::LABEL_ESP)
        .collect();
    if let [p] = esp.as_slice() {
        return Ok(p.offset);
    }
    if esp.is_empty() && is_iso9660(&mut f)? {
        let esp: Vec<_> = parts.iter().filter(|p| p.esp).collect();
        if let [p] = esp.as_slice() {
            return Ok(p.offset);
        }
    }
    bail!(
        "site: {} has no single {} partition (raw disk) or EFI partition (hybrid ISO); is it a cairn medium?",
        medium.display(),
        crate::media::disk::LABEL_ESP
    )
}

/// Whether the medium holds an ISO 9660 volume (`CD001` at byte 32769).
fn is_iso9660(f: &mut std::fs::File) -> Result<bool> {
    use std::os::unix::fs::FileExt;
    let mut magic = [0u8; 5];
    Ok(f.read_exact_at(&mut magic, 32769).is_ok() && &magic == b"CD001")
}

fn mtools_shell() -> Result<xshell::Shell> {
    let sh = crate::host::runner::shell()?;
    // A fixed stamp: the same site file gives the same bytes.
    sh.set_var("SOURCE_DATE_EPOCH", "0");
    sh.set_var("TZ", "UTC");
    sh.set_var("MTOOLS_SKIP_CHECK", "1");
    Ok(sh)
}

/// Writes the site file and its signature into the ESP of `medium` (a raw
/// image file or a block device) and reads both back.
pub fn write_to_medium(medium: &Path, site: &SignedSite) -> Result<()> {
    put_on_medium(medium, site)?;
    read_back(medium, site)
}

/// Writes the two files into the ESP (`mcopy` at the partition's offset).
pub fn put_on_medium(medium: &Path, site: &SignedSite) -> Result<()> {
    let offset = esp_offset(medium)?;
    let work = tempfile::tempdir().context("site: temporary folder")?;
    let text = work.path().join(ESP_SITE);
    let sig = work.path().join(ESP_SIG);
    std::fs::write(&text, &site.text)?;
    std::fs::write(&sig, &site.sig)?;
    let image = format!("{}@@{offset}", medium.display());
    let dir = format!("::/{ESP_DIR}");
    let sh = mtools_shell()?;
    let listing = crate::host::runner::run("site: ESP", xshell::cmd!(sh, "mdir -b -i {image} ::/"))
        .with_context(|| {
            format!(
                "site: no FAT file system at the ESP of {}",
                medium.display()
            )
        })?;
    if !listing
        .lines()
        .any(|l| l.trim_end_matches('/').eq_ignore_ascii_case(&dir))
    {
        crate::host::runner::run("site: ESP", xshell::cmd!(sh, "mmd -i {image} {dir}"))?;
    }
    for (src, name) in [(&text, ESP_SITE), (&sig, ESP_SIG)] {
        let dest = format!("{dir}/{name}");
        crate::host::runner::run(
            "site: ESP",
            xshell::cmd!(sh, "mcopy -o -i {image} {src} {dest}"),
        )?;
    }
    Ok(())
}

/// Reads both files back from the medium's ESP and compares them with
/// what was signed.
pub fn read_back(medium: &Path, site: &SignedSite) -> Result<()> {
    let offset = esp_offset(medium)?;
    let work = tempfile::tempdir().context("site: temporary folder")?;
    let image = format!("{}@@{offset}", medium.display());
    let sh = mtools_shell()?;
    for (name, want) in [(ESP_SITE, &site.text), (ESP_SIG, &site.sig)] {
        let src = format!("::/{ESP_DIR}/{name}");
        let back = work.path().join(name);
        crate::host::runner::run(
            "site: read back",
            xshell::cmd!(sh, "mcopy -n -i {image} {src} {back}"),
        )?;
        let mut got = Vec::new();
        std::fs::File::open(&back)?.read_to_end(&mut got)?;
        if &got != want {
            bail!(
                "site: read-back of {src} on {} does not match what was written; the medium may be faulty",
                medium.display()
            );
        }
    }
    Ok(())
}

/// How `apply` trusts the release folder's manifest.json (where the site
/// key comes from): checked against the signer's public key, or, only when
/// asked for by name, as it is.
#[derive(Debug, Clone, Copy)]
pub enum ReleaseTrust<'a> {
    /// `--pubkey KEY.pub`: SHA256.sig, SHA256, the manifest's and the
    /// image's digests (`verify::check_release`).
    Key(&'a Path),
    /// `--unverified`: the folder is trusted as it is.
    Unverified,
}

impl<'a> ReleaseTrust<'a> {
    /// From the command line: a key, or `--unverified`; neither is refused
    /// (exit 2) with the fix, because a forged manifest names its own site
    /// key and the site file would then be checked against that.
    pub fn from_args(pubkey: Option<&'a Path>, unverified: bool) -> Result<Self> {
        match (pubkey, unverified) {
            (Some(k), false) => Ok(ReleaseTrust::Key(k)),
            (None, true) => Ok(ReleaseTrust::Unverified),
            (Some(_), true) => Err(crate::InputError(
                "give either --pubkey KEY.pub or --unverified, not both".into(),
            )
            .into()),
            (None, false) => Err(crate::InputError(
                "the release folder's manifest.json names the site key; check it first: give the signer's public key with --pubkey KEY.pub (as for cairn verify), or --unverified to trust the folder as it is".into(),
            )
            .into()),
        }
    }
}

/// The folder of `image` (`.` for a bare file name).
fn folder_of(image: &Path) -> PathBuf {
    match image.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The release's site declaration, from the manifest beside `image` as it
/// is: for a caller that verified the release itself (`flash`) or made it.
pub fn declaration_beside(image: &Path) -> Result<SiteDeclaration> {
    declaration_for(image, ReleaseTrust::Unverified)
}

/// The release's site declaration, from the manifest beside `image`,
/// checked as `trust` says first.
pub fn declaration_for(image: &Path, trust: ReleaseTrust) -> Result<SiteDeclaration> {
    let m = match trust {
        ReleaseTrust::Key(pubkey) => {
            crate::release::verify::check_release(image, pubkey)
                .map_err(|e| {
                    crate::InputError(format!(
                        "{}: the release does not check with {}: {}",
                        Shown(&image.to_string_lossy()),
                        Shown(&pubkey.to_string_lossy()),
                        Shown(&e.to_string())
                    ))
                })?
                .manifest
        }
        ReleaseTrust::Unverified => crate::release::manifest::read(
            &folder_of(image).join("manifest.json"),
        )
        .map_err(|e| {
            crate::InputError(format!(
                "{}; keep the image in its release folder",
                Shown(&format!("{e:#}"))
            ))
        })?,
    };
    let mut d = m.site.ok_or_else(|| {
        crate::InputError(format!(
            "{} takes no site file: its recipe has no [site] table",
            Shown(&image.to_string_lossy())
        ))
    })?;
    // A manifest from before site files were bound to an image names no
    // image in its [site]: the release's own name and version are the ones.
    if d.image.is_empty() {
        d.image = m.image.name.clone();
        d.version = m.image.version.clone();
    }
    Ok(d)
}

/// What `apply` wrote.
#[derive(Debug)]
pub struct Applied {
    pub out: PathBuf,
    pub site: SignedSite,
}

/// Writes a copy of `image` (raw, qcow2 or ISO) to `out` with the signed
/// site file in its ESP (the ISO's: `/boot/efi.img`, also its GPT EFI
/// partition). The image itself is never written.
pub fn apply(image: &Path, site: &Path, out: &Path, trust: ReleaseTrust) -> Result<Applied> {
    let decl = declaration_for(image, trust)?;
    let signed = load_signed(site, &decl)?;
    if out.exists() {
        return Err(crate::InputError(format!(
            "{} exists; give a new file name with -o",
            out.display()
        ))
        .into());
    }
    let qcow2 = crate::media::Format::of_path(image) == Some(&crate::media::QCOW2);
    if qcow2 {
        // Before qemu-img opens it: a backing or data file would put a
        // host file into the copy.
        crate::host::qcow2::check_file(image).map_err(crate::InputError)?;
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Written next to `out` and renamed: a failure leaves no half medium.
    let tmp = tempfile::Builder::new()
        .prefix(".cairn-site-")
        .tempdir_in(&parent)
        .with_context(|| format!("site: temporary folder in {}", parent.display()))?;
    let raw = tmp.path().join(crate::media::RAW.file("medium"));
    let sh = crate::host::runner::shell()?;
    if qcow2 {
        // Opened as qcow2 with the backing chain cut: a second guard.
        let source = crate::host::qcow2::qemu_img_source(image).map_err(crate::InputError)?;
        crate::host::runner::run(
            "site: qcow2",
            xshell::cmd!(sh, "qemu-img convert -O raw {source} {raw}"),
        )?;
    } else {
        crate::host::runner::run(
            "site: copy",
            xshell::cmd!(sh, "cp --sparse=always {image} {raw}"),
        )?;
    }
    write_to_medium(&raw, &signed)?;
    let done = if qcow2 {
        // The same options as the build's qcow2 (zstd clusters, holes);
        // every cluster is tried for compression (the same disk content;
        // model clusters that do not compress are stored as they are).
        let q = tmp.path().join(crate::media::QCOW2.file("medium"));
        crate::media::qcow2::write_qcow2(&raw, &q, &[]).context("site: qcow2")?;
        q
    } else {
        raw
    };
    std::fs::rename(&done, out).with_context(|| format!("site: rename to {}", out.display()))?;
    Ok(Applied {
        out: out.to_path_buf(),
        site: signed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl_for(key: &SecretKey, dir: &Path) -> SiteDeclaration {
        let p = key.public();
        let path = dir.join("sites.pub");
        let text = p.to_file_text("sites public key");
        std::fs::write(&path, &text).unwrap();
        SiteDeclaration {
            allow: vec!["address".into(), "hostname".into()],
            ingress: vec![],
            key_id: p.key_id(),
            public_key: text,
            key_path: path,
            required: false,
            min_serial: 3,
            image: "tiny".into(),
            version: "1.2.0".into(),
            roles: crate::recipe::site::default_roles(),
        }
    }

    const BIND: &str = "image = \"tiny\"\nversion = \"1.2.0\"\nserial = \"3\"\n";

    #[test]
    fn signed_site_verifies_and_a_changed_byte_or_other_key_does_not() {
        let d = tempfile::tempdir().unwrap();
        let key = crate::release::signify::generate();
        let decl = decl_for(&key, d.path());
        let site = d.path().join("north.toml");
        std::fs::write(
            &site,
            format!("name = \"north\"\nhostname = \"north\"\n{BIND}"),
        )
        .unwrap();
        let s = sign(&site, &key, &decl).unwrap();
        assert_eq!(s.name, "north");
        let sig = std::fs::read_to_string(sig_path(&site)).unwrap();
        assert!(
            sig.starts_with("untrusted comment: verify with sites.pub\n"),
            "{sig}"
        );
        load_signed(&site, &decl).unwrap();

        // One byte changed: refused.
        std::fs::write(
            &site,
            format!("name = \"north\"\nhostname = \"nortH\"\n{BIND}"),
        )
        .unwrap();
        let e = load_signed(&site, &decl).unwrap_err();
        assert!(
            format!("{e:#}").contains("does not verify") || format!("{e:#}").contains("hostname"),
            "{e:#}"
        );
        std::fs::write(
            &site,
            format!("name = \"north\"\nhostname = \"nnrth\"\n{BIND}"),
        )
        .unwrap();
        let e = load_signed(&site, &decl).unwrap_err();
        assert!(format!("{e:#}").contains("does not verify"), "{e:#}");

        // Signed by another key: refused at signing and at loading.
        let other = crate::release::signify::generate();
        let e = sign(&site, &other, &decl).unwrap_err();
        assert!(
            format!("{e:#}").contains("the recipe's site key is"),
            "{e:#}"
        );
        let sig = other.sign(std::fs::read(&site).unwrap().as_slice());
        std::fs::write(sig_path(&site), sig.to_file_text("other.pub")).unwrap();
        let e = load_signed(&site, &decl).unwrap_err();
        assert!(format!("{e:#}").contains("does not verify"), "{e:#}");
    }

    /// A node's role and name travel with the signed file (what sign,
    /// apply and flash print and receipts record); a token already expired
    /// is refused at signing, nothing written.
    #[test]
    fn sign_records_the_role_and_refuses_an_expired_token() {
        let d = tempfile::tempdir().unwrap();
        let key = crate::release::signify::generate();
        let mut decl = decl_for(&key, d.path());
        decl.allow = ["hostname", "role", "server", "join_token", "join_expires"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        decl.roles = vec!["server".into(), "agent".into()];
        let site = d.path().join("a.toml");
        let text = format!(
            "name = \"a\"\nhostname = \"agent-1\"\nrole = \"agent\"\nserver = \"10.0.0.2\"\n\
             join_token = \"abcdef.0123456789abcdef\"\njoin_expires = \"2027-01-31T00:00:00Z\"\n{BIND}"
        );
        std::fs::write(&site, &text).unwrap();
        let at = crate::recipe::site::join_expires_epoch("2027-01-31T00:00:00Z").unwrap();
        let e = sign_at(&site, &key, &decl, at).unwrap_err();
        let r = e
            .downcast_ref::<crate::recipe::RecipeError>()
            .expect("a recipe error");
        assert_eq!((r.problems[0].line, r.problems[0].col), (6, 16), "{r}");
        assert!(r.problems[0].message.contains("is in the past"), "{r}");
        assert!(!sig_path(&site).exists());
        // Control: a second before, it is signed; role and node recorded.
        let s = sign_at(&site, &key, &decl, at - 1).unwrap();
        assert_eq!(
            (s.role.as_str(), s.node.as_deref()),
            ("agent", Some("agent-1"))
        );
        assert_eq!(s.role_text(), "role agent, node agent-1");
        let back = load_signed(&site, &decl).unwrap();
        assert_eq!(back.role, "agent");
        // A file without role or hostname: a server named after the image.
        let plain = d.path().join("s.toml");
        std::fs::write(&plain, format!("name = \"s\"\n{BIND}")).unwrap();
        let s = sign_at(&plain, &key, &decl, at).unwrap();
        assert_eq!((s.role.as_str(), s.node.as_deref()), ("server", None));
        assert_eq!(s.role_text(), "role server");
    }

    #[test]
    fn fresh_tokens_are_bootstrap_tokens_and_differ() {
        let a = fresh_token().unwrap();
        let b = fresh_token().unwrap();
        assert!(crate::recipe::site::is_join_token(&a), "{a}");
        assert_ne!(a, b);
        let lines = token_lines(30).unwrap();
        assert!(lines.starts_with("join_token = \""), "{lines}");
    }

    #[test]
    fn sign_refuses_a_key_the_recipe_does_not_allow_and_writes_no_signature() {
        let d = tempfile::tempdir().unwrap();
        let key = crate::release::signify::generate();
        let decl = decl_for(&key, d.path());
        let site = d.path().join("s.toml");
        std::fs::write(&site, "name = \"s\"\ngateway = \"10.0.0.1\"\n").unwrap();
        let e = sign(&site, &key, &decl).unwrap_err();
        let r = e
            .downcast_ref::<crate::recipe::RecipeError>()
            .expect("a recipe error");
        assert_eq!((r.problems[0].line, r.problems[0].col), (2, 1), "{r}");
        assert!(!sig_path(&site).exists());
    }

    /// Binding: sign writes the image and version a file lacks and signs
    /// them; a serial below the floor, a file for another image or version,
    /// or one without a serial is refused and nothing is signed.
    #[test]
    fn sign_binds_the_file_to_the_image_and_refuses_old_or_foreign_files() {
        let d = tempfile::tempdir().unwrap();
        let key = crate::release::signify::generate();
        let decl = decl_for(&key, d.path());
        let site = d.path().join("n.toml");
        std::fs::write(&site, "name = \"n\"\nserial = \"3\"\n").unwrap();
        let s = sign(&site, &key, &decl).unwrap();
        let text = std::fs::read_to_string(&site).unwrap();
        assert_eq!(
            text,
            "name = \"n\"\nserial = \"3\"\nimage = \"tiny\"\nversion = \"1.2.0\"\n"
        );
        assert_eq!(s.text, text.as_bytes());
        load_signed(&site, &decl).unwrap();
        // The same signed file for a later release of another image: refused.
        let mut other = decl.clone();
        other.image = "other".into();
        let e = load_signed(&site, &other).unwrap_err();
        assert!(format!("{e:#}").contains("is for image \"tiny\""), "{e:#}");
        let mut newer = decl.clone();
        newer.version = "1.3.0".into();
        let e = load_signed(&site, &newer).unwrap_err();
        assert!(
            format!("{e:#}").contains("is for version \"1.2.0\""),
            "{e:#}"
        );
        // A release that raised the floor refuses the older file (replay).
        let mut raised = decl.clone();
        raised.min_serial = 4;
        let e = load_signed(&site, &raised).unwrap_err();
        assert!(
            format!("{e:#}").contains("below the recipe's [site] min_serial 4"),
            "{e:#}"
        );
        for (bad, why) in [
            ("name = \"n\"\nserial = \"2\"\n", "serial 2 is below"),
            ("name = \"n\"\n", "has no serial"),
            (
                "name = \"n\"\nserial = \"3\"\nimage = \"big\"\n",
                "is for image \"big\"",
            ),
            ("name = \"n\"\nserial = \"x3\"\n", "is not a whole number"),
        ] {
            let _ = std::fs::remove_file(sig_path(&site));
            std::fs::write(&site, bad).unwrap();
            let e = sign(&site, &key, &decl).unwrap_err();
            assert!(format!("{e:#}").contains(why), "{bad}: {e:#}");
            assert!(!sig_path(&site).exists(), "{bad}");
        }
    }

    /// A 4 MiB GPT disk file whose partition `cairn-esp` (at 1 MiB) is FAT.
    fn tiny_disk(dir: &Path) -> PathBuf {
        let disk = dir.join("disk.raw");
        let esp = dir.join("esp.img");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        let sh = crate::host::runner::shell().unwrap();
        let script = "label: gpt\nstart=2048, size=4096, name=\"cairn-esp\"\n";
        xshell::cmd!(sh, "sfdisk --quiet {disk}")
            .stdin(script)
            .run()
            .unwrap();
        xshell::cmd!(sh, "mkfs.vfat -C {esp} 2048")
            .quiet()
            .run()
            .unwrap();
        let mut f = crate::host::direct::Writer::open(&disk).unwrap();
        crate::media::disk::copy_into(&mut f, 1 << 20, &esp).unwrap();
        disk
    }

    #[test]
    fn site_lands_on_the_esp_and_reads_back() {
        let d = tempfile::tempdir().unwrap();
        let disk = tiny_disk(d.path());
        assert_eq!(esp_offset(&disk).unwrap(), 1 << 20);
        let key = crate::release::signify::generate();
        let decl = decl_for(&key, d.path());
        let site = d.path().join("north.toml");
        std::fs::write(&site, format!("name = \"north\"\n{BIND}")).unwrap();
        let s = sign(&site, &key, &decl).unwrap();
        write_to_medium(&disk, &s).unwrap();
        // Twice is fine (the folder exists, the files are replaced).
        write_to_medium(&disk, &s).unwrap();
        // Control: the read-back compares bytes, so other bytes fail it.
        let other = SignedSite {
            text: b"name = \"south\"\n".to_vec(),
            ..s.clone()
        };
        let e = read_back(&disk, &other).unwrap_err();
        assert!(format!("{e:#}").contains("does not match"), "{e:#}");
        // Outside the ESP nothing changed: the partition table still reads.
        assert_eq!(esp_offset(&disk).unwrap(), 1 << 20);
    }
}
