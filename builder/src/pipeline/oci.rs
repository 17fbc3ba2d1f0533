//! OCI images pinned by manifest digest: reading image archives (OCI image
//! layout tarballs and `docker save` archives), checking every layer against
//! a policy for hostile entries, flattening layers into a tree, and building
//! small reproducible images from Debian packages.
//!
//! The pieces:
//! - [`load_archive`]: reads an archive into a private scratch folder,
//!   checks every blob's digest and size against its descriptor, the
//!   manifest digest against the pin, the platform (linux/amd64 only), and
//!   every layer against a [`LayerPolicy`]. A `docker save` archive is
//!   converted to an OCI manifest deterministically (compact JSON, field
//!   order fixed), so its manifest digest is stable.
//! - [`write_oci_archive`]: writes a loaded (verified) image back as a
//!   deterministic OCI layout tarball holding only the pinned image, for
//!   the read-only root (k3s imports it at boot).
//! - [`check_layer`]: refuses `..`, absolute names, symlinks climbing out of
//!   the image root, hardlinks outside the layer, device nodes, fifos and
//!   set-id files / file capabilities (unless allowed).
//! - [`unpack_layers`]: applies layers in order with OCI whiteouts; every
//!   write goes through [`crate::host::tree`], so nothing lands outside
//!   the destination even if an earlier layer planted a symlink. containerd
//!   services run from such an unpacked root ([`rootfs`]), so nothing is
//!   imported at boot.
//! - [`build_image`]: a Debian root via mmdebstrap (`--variant=essential`,
//!   `--format=tar`) normalised into layer 1, the spec's files as layer 2,
//!   uncompressed layers (the root is a compressed squashfs already, and
//!   uncompressed layers make the digest independent of a gzip
//!   implementation), written as an OCI layout tarball.
//!
//! Symlink policy: a symlink whose target is absolute is an in-image path
//! (the runtime resolves it inside the container root) and is allowed; a
//! relative target that climbs above the image root from the link's own
//! folder escapes and is refused. Set-gid/set-uid bits on *folders* are
//! allowed (Debian's /var/mail and /var/local are set-gid folders); on
//! files they are refused unless [`LayerPolicy::allow_setuid`].
//!
//! Tar archives are read with cairn's own strict reader (ustar, GNU long
//! names, pax), which caps every header-side allocation, reads header-only
//! types (links, folders, devices) without data the way Go's archive/tar
//! (containerd) does, and refuses sparse files and pax global headers.

use std::fmt;

use crate::host::digest::Sha256;

mod archive;
mod debian;
mod json;
mod layer;
mod program;
pub mod rootfs;

pub use archive::{
    load_archive, load_archive_with, write_oci_archive, ArchiveFormat, LoadOptions, LoadedImage,
    LoadedLayer,
};
pub use debian::{build_image, BuildSpec, BuiltImage};
pub use json::media_types;
pub use layer::{
    check_layer, check_layer_with, read_files, unpack_base_tarball, unpack_layer, unpack_layers,
    Compression, LayerPolicy, LayerSummary,
};
pub use program::program_image;

/// Largest index, manifest or config JSON accepted (4 MiB).
pub const MAX_JSON_BYTES: u64 = 4 << 20;

/// `sha256:HEX`, the way OCI writes digests.
pub(crate) struct Oci<'a>(pub &'a Sha256);

impl fmt::Display for Oci<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0.hex())
    }
}

fn list(ds: &[Sha256]) -> String {
    ds.iter()
        .map(|d| format!("sha256:{}", d.hex()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a layer entry is refused. Each names the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "entry {path:?} is an absolute path; layer entries must be relative to the image root"
    )]
    AbsolutePath { path: String },
    #[error("entry {path:?} climbs out of the image root with \"..\"")]
    DotDot { path: String },
    #[error("entry {path:?} has a NUL byte in its name")]
    NulInName { path: String },
    #[error("entry {path:?} names the image root itself but is not a folder")]
    RootNotFolder { path: String },
    #[error("symlink {path:?} -> {target:?} escapes the image root")]
    SymlinkEscapes { path: String, target: String },
    #[error("symlink {path:?} has an empty target")]
    EmptySymlink { path: String },
    #[error("hardlink {path:?} -> {target:?} points outside the layer's tree")]
    HardlinkOutside { path: String, target: String },
    #[error("hardlink {path:?} -> {target:?} names no regular file earlier in this layer")]
    HardlinkDangling { path: String, target: String },
    #[error("entry {path:?} is a character device; device nodes are not allowed in images")]
    CharDevice { path: String },
    #[error("entry {path:?} is a block device; device nodes are not allowed in images")]
    BlockDevice { path: String },
    #[error("entry {path:?} is a fifo; fifos are not allowed in images")]
    Fifo { path: String },
    #[error("file {path:?} is set-uid/set-gid (mode {mode:04o}); set-id files are refused unless the policy allows them")]
    SetId { path: String, mode: u32 },
    #[error("file {path:?} carries file capabilities (security.capability); refused unless the policy allows set-id files")]
    Capabilities { path: String },
    #[error("entry {path:?} has unsupported tar type {kind:?}")]
    UnsupportedType { path: String, kind: char },
    #[error("whiteout {path:?} names no file")]
    BadWhiteout { path: String },
    #[error("entry {path:?} is an OCI whiteout; whiteouts belong in image layers, not in a base tarball")]
    WhiteoutOutsideLayer { path: String },
    #[error("entry {path:?} has a name part of {len} bytes; file systems allow at most 255 (shorten it)")]
    NameTooLong { path: String, len: usize },
    #[error("entry {path:?} has a path or link target of {len} bytes; at most 4095 are allowed (shorten it)")]
    PathTooLong { path: String, len: usize },
    #[error("entry {path:?} would replace a folder that the same archive made earlier; an archive may not put a file or link where it made a folder")]
    ReplacesFolder { path: String },
}

/// Everything that can be wrong with an OCI archive or layer.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the archive is not a valid tar file: {0}")]
    CorruptArchive(String),
    #[error("archive entry {name:?} {reason}")]
    UnsafeEntry { name: String, reason: String },
    #[error("{what} is {size} bytes, more than the {cap}-byte limit")]
    TooLarge { what: String, size: u64, cap: u64 },
    #[error("the archive has no blob {} ({what})", Oci(.digest))]
    MissingBlob { what: String, digest: Sha256 },
    #[error("the archive has no file {name:?} ({what})")]
    MissingFile { what: String, name: String },
    #[error("{what}: digest mismatch: expected {}, got {}", Oci(.expected), Oci(.actual))]
    DigestMismatch {
        what: String,
        expected: Sha256,
        actual: Sha256,
    },
    #[error("{what}: size mismatch: the descriptor says {expected} bytes, the blob has {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("manifest digest mismatch: the pin is {}, the archive's linux/amd64 image manifest is {}", Oci(.expected), list(.actual))]
    PinMismatch {
        expected: Sha256,
        actual: Vec<Sha256>,
    },
    #[error("{what}: unsupported media type {media_type:?}")]
    UnsupportedMediaType { what: String, media_type: String },
    #[error("{what}: unsupported digest {digest:?} (only sha256:<64 lowercase hex>)")]
    UnsupportedDigest { what: String, digest: String },
    #[error("{what}: bad JSON: {message}")]
    BadJson { what: String, message: String },
    #[error("{what} is for {found}; only linux/amd64 images are supported")]
    Platform { what: String, found: String },
    #[error("{0}")]
    Invalid(String),
    #[error("layer {}: not a valid tar stream: {message}", Oci(.layer))]
    LayerCorrupt { layer: Sha256, message: String },
    #[error("layer {}: {kind} compression is not supported (gzip or uncompressed only)", Oci(.layer))]
    UnsupportedCompression { layer: Sha256, kind: String },
    #[error("layer {}: {refusal}", Oci(.layer))]
    LayerRefused { layer: Sha256, refusal: Refusal },
    #[error("layer {}: {message}", Oci(.layer))]
    LayerCap { layer: Sha256, message: String },
    /// A cap of [`crate::host::limits::Limits`] passed while reading.
    #[error("{what} {message}")]
    Cap { what: String, message: String },
}

impl OciError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        OciError::Io {
            what: what.into(),
            source,
        }
    }
}
