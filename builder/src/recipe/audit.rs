//! `[audit]` resolved: what the builder and the guest writer need to keep
//! a sealed audit trail (docs/audit.md). Only the platform's public key is
//! ever in the image.

use std::path::PathBuf;

use crate::host::digest::Sha256;

/// The kinds a recipe may choose; `close`, `stopped` and `verity-failure` are always written.
pub const RECORD_KINDS: &[&str] = &["boot", "service", "firewall", "cluster-api"];

/// Debian packages the guest writer needs (`packages::package_list`).
/// tpm2-tools: the boot record's TPM quote, when the node has a TPM.
pub const PACKAGES: &[&str] = &["age", "openssl", "tpm2-tools"];

/// Smallest and largest audit partition, in bytes.
pub const MIN_AUDIT_SIZE: u64 = 1 << 20;
pub const MAX_AUDIT_SIZE: u64 = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFull {
    /// A last `stopped` record, then nothing more this boot.
    Stop,
    /// `cairn: FATAL audit: full` and a halt.
    Halt,
}

impl OnFull {
    pub fn as_str(self) -> &'static str {
        match self {
            OnFull::Stop => "stop",
            OnFull::Halt => "halt",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditDeclaration {
    /// Partition size in bytes, a whole number of MiB.
    pub size: u64,
    /// The `age1...` recipient, as read from the key file (trimmed).
    pub recipient: String,
    pub key_path: PathBuf,
    /// sha256 of the recipient text: names the key in the manifest.
    pub key_sha256: Sha256,
    /// Sorted, without duplicates; always holds `boot`.
    pub record: Vec<String>,
    pub on_full: OnFull,
    /// `file:line:col` of `key` (the section) and of `on_full`, for the
    /// build's refusal of media that cannot hold the trail.
    pub at: String,
    pub on_full_at: Option<String>,
}

/// `[audit]` as the manifest records it (no host path: reproducible).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditInfo {
    /// The GPT partition name (`cairn-audit`) on the raw disk and qcow2.
    pub partition: String,
    pub size: u64,
    /// The platform's age recipient (public) and its sha256.
    pub recipient: String,
    pub key_sha256: Sha256,
    pub record: Vec<String>,
    /// `stop` or `halt`.
    pub on_full: String,
}

impl AuditDeclaration {
    pub fn info(&self, partition: &str) -> AuditInfo {
        AuditInfo {
            partition: partition.to_string(),
            size: self.size,
            recipient: self.recipient.clone(),
            key_sha256: self.key_sha256,
            record: self.record.clone(),
            on_full: self.on_full.as_str().to_string(),
        }
    }
}

/// Whether `text` is one age X25519 recipient: `age1` and 58 characters
/// of bech32's alphabet (a 32-byte key and its checksum), nothing else.
pub fn recipient_problem(text: &str) -> Option<&'static str> {
    const BECH32: &str = "qpzry9x8gf2tvdw0s3jn54khce6mua7l";
    let t = text.trim();
    if t.lines().count() != 1 {
        return Some("must hold exactly one line, the age public key (age1...)");
    }
    if t.starts_with("AGE-SECRET-KEY-") {
        return Some("is an age SECRET key; give the public key (`age-keygen -y KEY` prints it) and keep the secret with the platform team");
    }
    let Some(rest) = t.strip_prefix("age1") else {
        return Some("is not an age public key: it must start with age1");
    };
    if rest.len() != 58 || !rest.chars().all(|c| BECH32.contains(c)) {
        return Some("is not an age X25519 public key: age1 and 58 lower-case bech32 characters");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients() {
        let good = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
        assert_eq!(recipient_problem(good), None);
        assert_eq!(recipient_problem(&format!("{good}\n")), None);
        assert!(recipient_problem(&format!("{good}\n{good}")).is_some());
        assert!(recipient_problem("AGE-SECRET-KEY-1XYZ")
            .unwrap()
            .contains("SECRET"));
        assert!(recipient_problem(&good.replace("age1", "agx1")).is_some());
        assert!(recipient_problem(&good.to_uppercase()).is_some());
        assert!(recipient_problem(&good[..40]).is_some());
    }
}
