//! The TPM quote in a boot record (docs/audit.md): PCR 7 and 11 quoted by
//! an attestation key made under the TPM's endorsement key, the boot's
//! signing key as the nonce. Checked with `tpm2_checkquote` (tpm2-tools):
//! the signature by the recorded key, the nonce, the PCR values' digest;
//! then PCR 11 against the release manifest's prediction.
//! Invariant: a quote is "verified" only when all of that holds; anything
//! else is named (no TPM, no quote, a bad quote, another UKI).

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::audit::Record;
use crate::host::digest::Sha256;

/// What a boot's record says of its TPM, after the checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Tpm {
    /// The boot record says `tpm=none`: the node had no TPM.
    None,
    /// A TPM, but no quote (tools missing, an error): the reason.
    Unquoted { why: String },
    /// The quote verifies and binds this boot's key.
    Quoted { pcr7: Sha256, pcr11: Sha256 },
    /// A quote that does not verify: why.
    Bad { why: String },
}

impl Tpm {
    pub fn describe(&self) -> String {
        match self {
            Tpm::None => "no TPM: the boot is not quoted".into(),
            Tpm::Unquoted { why } => format!("a TPM but no quote ({why})"),
            Tpm::Quoted { pcr11, .. } => format!("TPM quote verifies, PCR 11 {}", pcr11.hex()),
            Tpm::Bad { why } => format!("BAD TPM quote: {why}"),
        }
    }

    /// Against the release's predicted PCR 11: `Err` names the mismatch.
    pub fn against(&self, predicted: &Sha256) -> std::result::Result<(), String> {
        match self {
            Tpm::Quoted { pcr11, .. } if pcr11 == predicted => Ok(()),
            Tpm::Quoted { pcr11, .. } => Err(format!(
                "PCR 11 {} is not the manifest's {}: written by another UKI (another release, or one not built by it)",
                pcr11.hex(),
                predicted.hex()
            )),
            other => Err(other.describe()),
        }
    }
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || s.len() > 16 << 10 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// Checks the quote in `boot` (a boot record) against its `key=`.
pub fn check(boot: &Record) -> Result<Tpm> {
    match boot.get("tpm") {
        Some("none") => return Ok(Tpm::None),
        Some("quote") => {}
        Some(other) => {
            return Ok(Tpm::Unquoted {
                why: boot.get("tpm.error").unwrap_or(other).to_string(),
            })
        }
        None => {
            return Ok(Tpm::Unquoted {
                why: "the boot record has no tpm=".into(),
            })
        }
    }
    let bad = |why: &str| Ok(Tpm::Bad { why: why.into() });
    let Some(nonce) = boot
        .get("key")
        .filter(|k| hex(k).is_some_and(|b| b.len() == 32))
    else {
        return bad("the boot record's key= is not 32 bytes of hex");
    };
    let dir = tempfile::tempdir()?;
    for f in ["ak", "msg", "sig", "pcrs"] {
        let Some(bytes) = boot.get(&format!("tpm.{f}")).and_then(hex) else {
            return bad(&format!("tpm.{f}= is missing or not hex"));
        };
        std::fs::write(dir.path().join(f), bytes)?;
    }
    let p = |f: &str| dir.path().join(f);
    let (ak, msg, sig, pcrs) = (p("ak"), p("msg"), p("sig"), p("pcrs"));
    let sh = crate::host::runner::shell()?;
    let (code, out, err) = crate::host::runner::run_code(
        "audit: tpm2_checkquote",
        xshell::cmd!(
            sh,
            "tpm2_checkquote -u {ak} -m {msg} -s {sig} -f {pcrs} -g sha256 -q {nonce}"
        ),
    )?;
    if code != 0 {
        let why = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("tpm2_checkquote failed");
        return bad(&format!(
            "does not verify with the recorded key and this boot's key as nonce ({why})"
        ));
    }
    Ok(match (pcr(&out, "7"), pcr(&out, "11")) {
        (Some(pcr7), Some(pcr11)) => Tpm::Quoted { pcr7, pcr11 },
        _ => Tpm::Bad {
            why: "the quote does not cover PCR 7 and 11 (sha256)".into(),
        },
    })
}

/// PCR `n` from tpm2_checkquote's YAML (`    11: 0x...`, `    7 : 0x...`).
fn pcr(out: &str, n: &str) -> Option<Sha256> {
    out.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == n)
            .then(|| Sha256::from_hex(&v.trim().trim_start_matches("0x").to_lowercase()).ok())
            .flatten()
    })
}

/// The first boot whose quote is bad, or (with `predicted`) quotes
/// another PCR 11: its id and why. Boots without a TPM are not failures.
pub fn first_bad_boot(t: &super::audit::Trail, predicted: Option<&Sha256>) -> Option<String> {
    t.boots.iter().find_map(|b| {
        let why = match (&b.tpm, predicted) {
            (Some(Tpm::Bad { why }), _) => why.clone(),
            (Some(q @ Tpm::Quoted { .. }), Some(p)) => q.against(p).err()?,
            _ => return None,
        };
        Some(format!("boot {}: {why}", b.boot))
    })
}

/// PCR 11 as the release's manifest beside `medium` predicts it, if any.
pub fn predicted_pcr11(manifest: &Path) -> Result<Option<Sha256>> {
    let m = crate::release::manifest::read(manifest)?;
    Ok(m.boot.pcr11_sha256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkquote_output_is_parsed() {
        let out = "pcrs:\n  sha256:\n    7 : 0x00AA000000000000000000000000000000000000000000000000000000000000\n    11: 0x0000000000000000000000000000000000000000000000000000000000000011\nsig: 3046\n";
        assert_eq!(pcr(out, "7").unwrap().hex()[..4], *"00aa");
        assert!(pcr(out, "11").unwrap().hex().ends_with("11"));
        assert_eq!(pcr(out, "1"), None);
    }
}
