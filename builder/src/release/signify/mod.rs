//! OpenBSD signify (Ed25519) key and signature files, bit-compatible with
//! `signify-openbsd`: generate, read and write keys, sign and verify.
//! Split along its seams: `format` (the file frame), `keys`, `signature`,
//! `passphrase`.
//! Invariant: every parser returns a `SignifyError` on malformed or hostile
//! input and never panics; decrypted secret bytes are wiped after use.

mod format;
mod keys;
mod passphrase;
mod signature;

use std::io;
use std::path::{Path, PathBuf};

pub use keys::{generate, keygen, PublicKey, SecretKey};
pub use passphrase::{read_passphrase, PassphraseSource};
pub use signature::Signature;

/// Public-key algorithm tag at the start of every signify blob.
const PKALG: [u8; 2] = *b"Ed";
/// Key-derivation algorithm tag in secret keys (bcrypt_pbkdf).
const KDFALG: [u8; 2] = *b"BK";
/// First-line prefix of every signify file.
const COMMENT_HDR: &str = "untrusted comment: ";
/// signify rejects comments of this many bytes or more.
const COMMENT_MAX: usize = 1024;
/// Length of the random key number that links keys and signatures.
pub const KEYNUM_LEN: usize = 8;
/// bcrypt_pbkdf rounds signify uses for passphrase-protected keys.
pub const KDF_ROUNDS: u32 = 42;
/// Refuse secret keys claiming more rounds than this (a hostile or corrupt
/// key could otherwise make us spin for hours). signify always writes 42.
pub const MAX_KDF_ROUNDS: u32 = 1024;
/// Key and signature files are tiny; refuse to slurp anything bigger.
const MAX_KEY_FILE: u64 = 4096;
/// A signature with an embedded message (SHA256.sig) is read whole; cap it.
const MAX_EMBEDDED: u64 = 64 << 20;

const PUBKEY_LEN: usize = 2 + KEYNUM_LEN + 32;
const SIG_LEN: usize = 2 + KEYNUM_LEN + 64;
const SECKEY_LEN: usize = 2 + 2 + 4 + 16 + 8 + KEYNUM_LEN + 64;

/// Errors from reading, writing, signing and verifying signify files.
#[derive(Debug, thiserror::Error)]
pub enum SignifyError {
    /// Garbled base64, wrong length, wrong algorithm, missing comment line...
    #[error("malformed signify file: {0}")]
    Malformed(String),
    /// The secret key is encrypted and no passphrase was supplied.
    #[error("the secret key is protected by a passphrase, but none was given")]
    PassphraseRequired,
    /// The passphrase did not decrypt the secret key (checksum mismatch).
    #[error("incorrect passphrase for the secret key")]
    WrongPassphrase,
    /// The signature was made by a different key than the one checked against.
    #[error("signature was made by key id {sig_key}, not by the given public key {pub_key}")]
    KeyMismatch { sig_key: String, pub_key: String },
    /// The signature does not match the message under the (correct) key.
    #[error("signature verification failed: the message or signature has been altered")]
    BadSignature,
    /// A key file that would be written already exists.
    #[error("refusing to overwrite existing key file {}", .0.display())]
    AlreadyExists(PathBuf),
    /// Obtaining a passphrase failed (no TTY, empty, unset variable, mismatch).
    #[error("passphrase: {0}")]
    Passphrase(String),
    /// A file to read is not a regular file (a FIFO, a device, a folder...).
    #[error("{0}")]
    Untrusted(#[from] crate::host::untrusted::UntrustedError),
    /// Reading or writing a file failed.
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

type Result<T, E = SignifyError> = std::result::Result<T, E>;

fn malformed(msg: impl Into<String>) -> SignifyError {
    SignifyError::Malformed(msg.into())
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SignifyError + 'a {
    move |source| SignifyError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Best-effort wipe of secret material.
fn wipe(buf: &mut [u8]) {
    buf.fill(0);
    std::hint::black_box(buf);
}

/// How many cases each parser property test runs: a few seconds' worth in
/// `cargo test`, more with `CAIRN_FUZZ_CASES=N` (`make fuzz`).
#[cfg(test)]
pub(crate) fn fuzz_cases(default: u32) -> u32 {
    std::env::var("CAIRN_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use base64::Engine as _;

    /// Deterministic xorshift, so junk inputs are reproducible.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    #[test]
    fn sign_verify_roundtrip() {
        let sk = generate();
        let pk = PublicKey::parse(&sk.public().to_file_text("test public key")).unwrap();
        assert_eq!(pk, sk.public());
        let sig = sk.sign(b"hello world");
        let text = sig.to_file_text("test.pub");
        assert!(text.starts_with("untrusted comment: verify with test.pub\n"));
        let parsed = Signature::parse(&text).unwrap();
        assert_eq!(parsed, sig);
        parsed.verify(&pk, b"hello world").unwrap();
        assert!(matches!(
            parsed.verify(&pk, b"hello world!"),
            Err(SignifyError::BadSignature)
        ));
    }

    #[test]
    fn file_layout_matches_signify() {
        let sk = generate();
        let pub_text = sk.public().to_file_text("x public key");
        let mut lines = pub_text.lines();
        assert_eq!(lines.next(), Some("untrusted comment: x public key"));
        let blob = BASE64.decode(lines.next().unwrap()).unwrap();
        assert_eq!(blob.len(), 42);
        assert_eq!(&blob[..2], b"Ed");
        assert_eq!(&blob[2..10], &sk.keynum);
        assert!(pub_text.ends_with('\n'));

        let sec_text = sk.to_file_text("x secret key", None).unwrap();
        let blob = BASE64.decode(sec_text.lines().nth(1).unwrap()).unwrap();
        assert_eq!(blob.len(), 104);
        assert_eq!(&blob[..4], b"EdBK");
        assert_eq!(&blob[4..8], &[0, 0, 0, 0]);
        assert_eq!(&blob[32..40], &sk.keynum);

        let sec_text = sk.to_file_text("x secret key", Some(b"pw")).unwrap();
        let blob = BASE64.decode(sec_text.lines().nth(1).unwrap()).unwrap();
        assert_eq!(&blob[4..8], &[0, 0, 0, 42]);

        let sig = sk.sign(b"m");
        let blob = BASE64
            .decode(sig.to_file_text("x.pub").lines().nth(1).unwrap())
            .unwrap();
        assert_eq!(blob.len(), 74);
        assert_eq!(&blob[2..10], &sk.keynum);
    }

    #[test]
    fn unencrypted_secret_key_roundtrip() {
        let sk = generate();
        let text = sk.to_file_text("t secret key", None).unwrap();
        // A passphrase is ignored for unencrypted keys.
        for pass in [None, Some(&b"ignored"[..])] {
            let back = SecretKey::parse(&text, pass).unwrap();
            assert_eq!(back.keynum, sk.keynum);
            assert_eq!(back.public(), sk.public());
        }
    }

    #[test]
    fn encrypted_secret_key_roundtrip_and_wrong_passphrase() {
        let sk = generate();
        let text = sk
            .to_file_text("t secret key", Some(b"correct horse"))
            .unwrap();
        let back = SecretKey::parse(&text, Some(b"correct horse")).unwrap();
        assert_eq!(back.public(), sk.public());
        back.sign(b"x").verify(&sk.public(), b"x").unwrap();

        assert!(matches!(
            SecretKey::parse(&text, None),
            Err(SignifyError::PassphraseRequired)
        ));
        assert!(matches!(
            SecretKey::parse(&text, Some(b"wrong horse")),
            Err(SignifyError::WrongPassphrase)
        ));
        assert!(matches!(
            SecretKey::parse(&text, Some(b"")),
            Err(SignifyError::WrongPassphrase)
        ));
        assert!(sk.to_file_text("c", Some(b"")).is_err());
        let msg = SignifyError::PassphraseRequired.to_string();
        assert!(msg.contains("passphrase"), "{msg}");
    }

    #[test]
    fn flipped_signature_byte_is_bad_signature() {
        let sk = generate();
        let sig = sk.sign(b"payload");
        for i in 0..64 {
            let mut bytes = sig.sig.to_bytes();
            bytes[i] ^= 0x01;
            let bad = Signature {
                keynum: sig.keynum,
                sig: ed25519_dalek::Signature::from_bytes(&bytes),
            };
            assert!(
                matches!(
                    bad.verify(&sk.public(), b"payload"),
                    Err(SignifyError::BadSignature)
                ),
                "byte {i}"
            );
        }
        // Same through the text form.
        let text = sig.to_file_text("k.pub");
        let mut blob = BASE64.decode(text.lines().nth(1).unwrap()).unwrap();
        blob[40] ^= 0x80;
        let tampered = format!("untrusted comment: x\n{}\n", BASE64.encode(&blob));
        let parsed = Signature::parse(&tampered).unwrap();
        assert!(matches!(
            parsed.verify(&sk.public(), b"payload"),
            Err(SignifyError::BadSignature)
        ));
    }

    #[test]
    fn different_key_is_key_mismatch() {
        let a = generate();
        let b = generate();
        let sig = a.sign(b"m");
        match sig.verify(&b.public(), b"m") {
            Err(e @ SignifyError::KeyMismatch { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&a.public().key_id()), "{msg}");
                assert!(msg.contains(&b.public().key_id()), "{msg}");
            }
            other => panic!("expected KeyMismatch, got {other:?}"),
        }
        // Same key number but a different key: the signature is just bad.
        let forged = PublicKey {
            keynum: a.keynum,
            key: b.public().key,
        };
        assert!(matches!(
            sig.verify(&forged, b"m"),
            Err(SignifyError::BadSignature)
        ));
    }

    #[test]
    fn garbled_inputs_are_malformed() {
        let sk = generate();
        let pub_text = sk.public().to_file_text("p");
        let sig_text = sk.sign(b"m").to_file_text("p.pub");
        let sec_text = sk.to_file_text("s", None).unwrap();

        let cases: Vec<String> = vec![
            String::new(),
            "untrusted comment: x\n".into(),
            "untrusted comment: x\n\n".into(),
            "comment: x\nRWQ=\n".into(),
            "untrusted comment: \nRWQ=\n".into(),
            pub_text.replace("untrusted comment:", "trusted comment:"),
            pub_text[..pub_text.len() - 6].to_string(),
            pub_text.replacen("RW", "R!", 1),
            pub_text.replacen("RW", "QW", 1), // "Ad..." wrong algorithm
            format!("untrusted comment: x\n{}\n", BASE64.encode([0u8; 42])),
        ];
        for c in &cases {
            assert!(
                matches!(PublicKey::parse(c), Err(SignifyError::Malformed(_))),
                "{c:?}"
            );
        }
        // Cross-type confusion gives a helpful length error.
        match PublicKey::parse(&sig_text) {
            Err(SignifyError::Malformed(m)) => assert!(m.contains("signature"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Signature::parse(&pub_text),
            Err(SignifyError::Malformed(_))
        ));
        assert!(matches!(
            SecretKey::parse(&pub_text, None),
            Err(SignifyError::Malformed(_))
        ));
        // Corrupt unencrypted key: checksum catches it.
        let mut blob = BASE64.decode(sec_text.lines().nth(1).unwrap()).unwrap();
        blob[50] ^= 1;
        let bad = format!("untrusted comment: s\n{}\n", BASE64.encode(&blob));
        assert!(matches!(
            SecretKey::parse(&bad, None),
            Err(SignifyError::Malformed(_))
        ));
        // Absurd KDF rounds are refused rather than ground through.
        let mut blob = BASE64.decode(sec_text.lines().nth(1).unwrap()).unwrap();
        blob[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        let bad = format!("untrusted comment: s\n{}\n", BASE64.encode(&blob));
        assert!(matches!(
            SecretKey::parse(&bad, Some(b"pw")),
            Err(SignifyError::Malformed(_))
        ));
        // Embedded signatures need the newline after the base64 line.
        let no_nl = sig_text.trim_end();
        assert!(Signature::parse(no_nl).is_ok());
        assert!(matches!(
            Signature::parse_embedded(no_nl.as_bytes()),
            Err(SignifyError::Malformed(_))
        ));
    }

    #[test]
    fn crlf_and_comment_sanitising() {
        let sk = generate();
        let text = sk
            .public()
            .to_file_text("evil\ncomment\r")
            .replace('\n', "\r\n");
        assert_eq!(PublicKey::parse(&text).unwrap(), sk.public());
        let long = "x".repeat(5000);
        let text = sk.public().to_file_text(&long);
        assert!(text.lines().next().unwrap().len() < COMMENT_MAX);
        assert_eq!(PublicKey::parse(&text).unwrap(), sk.public());
        let text = sk.public().to_file_text("");
        assert_eq!(PublicKey::parse(&text).unwrap(), sk.public());
    }

    #[test]
    fn embedded_roundtrip() {
        let sk = generate();
        let msg = b"SHA256 (a) = 00\n\xff binary ok";
        let sig = sk.sign(msg);
        let file = sig.to_embedded_file_bytes("k.pub", msg);
        let (parsed, body) = Signature::parse_embedded(&file).unwrap();
        assert_eq!(body, msg);
        parsed.verify(&sk.public(), body).unwrap();
        // Detached parse of an embedded file still yields the signature.
        let text = String::from_utf8_lossy(&file);
        assert_eq!(Signature::parse(&text).unwrap(), sig);

        // Large embedded files: `read` looks only at the head.
        let dir = tempfile::tempdir().unwrap();
        let big = vec![b'z'; 100_000];
        let path = dir.path().join("big.sig");
        std::fs::write(&path, sk.sign(&big).to_embedded_file_bytes("k.pub", &big)).unwrap();
        let head_only = Signature::read(&path).unwrap();
        let (whole, body) = Signature::read_embedded(&path).unwrap();
        assert_eq!(head_only, whole);
        whole.verify(&sk.public(), &body).unwrap();

        // Key files need not be UTF-8 (the comment is free-form).
        let mut raw = b"untrusted comment: caf\xe9 public key\n".to_vec();
        let pub_text = sk.public().to_file_text("x");
        raw.extend_from_slice(pub_text.lines().nth(1).unwrap().as_bytes());
        raw.push(b'\n');
        let kpath = dir.path().join("latin1.pub");
        std::fs::write(&kpath, raw).unwrap();
        assert_eq!(PublicKey::read(&kpath).unwrap(), sk.public());
        // A huge "key" file is refused without reading it all.
        std::fs::write(&kpath, &big).unwrap();
        assert!(matches!(
            PublicKey::read(&kpath),
            Err(SignifyError::Malformed(_))
        ));
    }

    #[test]
    fn no_panics_on_junk() {
        let sk = generate();
        let valid = [
            sk.public().to_file_text("p public key"),
            sk.sign(b"m").to_file_text("p.pub"),
            sk.to_file_text("s secret key", None).unwrap(),
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        for v in &valid {
            // Every truncation.
            for n in 0..=v.len() {
                inputs.push(v.as_bytes()[..n].to_vec());
            }
            // Random byte mutations.
            for _ in 0..100 {
                let mut b = v.as_bytes().to_vec();
                let i = rng.below(b.len());
                b[i] = rng.next() as u8;
                inputs.push(b);
            }
        }
        for _ in 0..300 {
            // Pure junk, junk after a valid header, and well-formed base64
            // of random bytes of every interesting length.
            let n = rng.below(300);
            inputs.push(rng.bytes(n));
            let mut b = b"untrusted comment: junk\n".to_vec();
            b.extend(rng.bytes(n));
            inputs.push(b);
            let len = [PUBKEY_LEN, SIG_LEN, SECKEY_LEN, rng.below(120)][rng.below(4)];
            let mut blob = rng.bytes(len);
            if rng.below(2) == 0 && blob.len() >= 4 {
                blob[..4].copy_from_slice(b"EdBK");
            }
            inputs.push(format!("untrusted comment: j\n{}\n", BASE64.encode(&blob)).into_bytes());
        }
        assert!(inputs.len() > 300);
        for input in &inputs {
            let text = String::from_utf8_lossy(input);
            let _ = PublicKey::parse(&text);
            let _ = Signature::parse(&text);
            let _ = Signature::parse_embedded(input);
            let _ = SecretKey::parse(&text, None);
            if let Ok(sig) = Signature::parse(&text) {
                let _ = sig.verify(&sk.public(), input);
            }
        }
    }

    #[test]
    fn keygen_writes_files_and_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("cairn-test");
        let (p, s) = keygen(&prefix, None, "cairn-test").unwrap();
        assert_eq!(p, dir.path().join("cairn-test.pub"));
        assert_eq!(s, dir.path().join("cairn-test.sec"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&s).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let pub_text = std::fs::read_to_string(&p).unwrap();
        assert!(pub_text.starts_with("untrusted comment: cairn-test public key\n"));
        let sec_text = std::fs::read_to_string(&s).unwrap();
        assert!(sec_text.starts_with("untrusted comment: cairn-test secret key\n"));
        let sk = SecretKey::read(&s, None).unwrap();
        assert_eq!(sk.public(), PublicKey::read(&p).unwrap());

        let before = std::fs::read(&s).unwrap();
        assert!(matches!(
            keygen(&prefix, None, "again"),
            Err(SignifyError::AlreadyExists(_))
        ));
        assert_eq!(std::fs::read(&s).unwrap(), before);

        // Only the .pub existing also refuses, and creates no .sec.
        let prefix2 = dir.path().join("half");
        std::fs::write(dir.path().join("half.pub"), "x").unwrap();
        assert!(matches!(
            keygen(&prefix2, None, "half"),
            Err(SignifyError::AlreadyExists(_))
        ));
        assert!(!dir.path().join("half.sec").exists());
    }

    #[test]
    fn passphrase_sources() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pass");
        std::fs::write(&f, "s3cret\nsecond line\n").unwrap();
        assert_eq!(
            read_passphrase(PassphraseSource::File(f.clone())).unwrap(),
            b"s3cret"
        );
        std::fs::write(&f, "crlf\r\n").unwrap();
        assert_eq!(
            read_passphrase(PassphraseSource::File(f.clone())).unwrap(),
            b"crlf"
        );
        std::fs::write(&f, "\n").unwrap();
        assert!(read_passphrase(PassphraseSource::File(f.clone())).is_err());
        assert!(read_passphrase(PassphraseSource::File(dir.path().join("missing"))).is_err());
        assert!(read_passphrase(PassphraseSource::Env("UNSET".into(), None)).is_err());
        assert_eq!(
            read_passphrase(PassphraseSource::Env("SET".into(), Some("pw".into()))).unwrap(),
            b"pw"
        );
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(crate::release::signify::fuzz_cases(1000)))]

            #[test]
            fn arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
                let text = String::from_utf8_lossy(&data);
                let _ = PublicKey::parse(&text);
                let _ = Signature::parse(&text);
                let _ = Signature::parse_embedded(&data);
                let _ = SecretKey::parse(&text, None);
            }

            #[test]
            fn framed_junk_never_panics(
                comment in "[ -~]{0,40}",
                blob in proptest::collection::vec(any::<u8>(), 0..120),
                tail in proptest::collection::vec(any::<u8>(), 0..60),
            ) {
                let mut data = format!("untrusted comment: {comment}\n{}\n", BASE64.encode(&blob)).into_bytes();
                data.extend_from_slice(&tail);
                let text = String::from_utf8_lossy(&data);
                let _ = PublicKey::parse(&text);
                let _ = Signature::parse(&text);
                let _ = Signature::parse_embedded(&data);
                let _ = SecretKey::parse(&text, None);
            }

            #[test]
            fn embedded_signatures_round_trip(
                msg in proptest::collection::vec(any::<u8>(), 0..300),
                key_name in "[ -~]{0,60}",
            ) {
                let sk = generate();
                let sig = sk.sign(&msg);
                let file = sig.to_embedded_file_bytes(&key_name, &msg);
                let (back, body) = Signature::parse_embedded(&file).unwrap();
                prop_assert_eq!(back, sig);
                prop_assert_eq!(body, &msg[..]);
                prop_assert!(back.verify(&sk.public(), body).is_ok());
                let pk = PublicKey::parse(&sk.public().to_file_text(&key_name)).unwrap();
                prop_assert_eq!(pk, sk.public());
            }
        }
    }
}
