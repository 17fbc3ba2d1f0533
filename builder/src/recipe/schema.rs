//! The recipe file as serde reads it: one struct per TOML table, unknown
//! keys refused. Defaults come from the declarations in `settings`; the
//! checks are in `validate`, which turns these into a `Recipe`.

use serde::Deserialize;
use toml::Spanned;

use crate::recipe::settings;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeFile {
    pub image: ImageSection,
    pub base: BaseSection,
    #[serde(default)]
    pub kernel: KernelSection,
    #[serde(default)]
    pub overlays: Vec<Spanned<String>>,
    #[serde(default)]
    pub boot: BootSection,
    #[serde(default)]
    pub disk: DiskSection,
    #[serde(default)]
    pub debug: DebugSection,
    #[serde(default)]
    pub state: StateSection,
    #[serde(default)]
    pub network: NetworkSection,
    #[serde(default)]
    pub cluster: ClusterSection,
    #[serde(default)]
    pub images: Vec<ImageEntry>,
    #[serde(default)]
    pub models: Vec<ModelEntry>,
    #[serde(default)]
    pub services: Vec<ServiceEntry>,
    #[serde(default)]
    pub policy: PolicySection,
    #[serde(default)]
    pub limits: LimitsSection,
    pub site: Option<SiteSection>,
    /// A template's rules (recipe/template.rs); ignored in a plain build.
    pub governance: Option<crate::recipe::governance::GovernanceSection>,
    pub audit: Option<AuditSection>,
}

/// `[audit]`: the sealed audit trail (docs/audit.md; `validate/audit.rs`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    pub size: Option<Spanned<String>>,
    pub key: Spanned<String>,
    pub record: Option<Vec<Spanned<String>>>,
    pub on_full: Option<Spanned<String>>,
}

/// `[site]`: what a site file may set, and the key that signs site files.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSection {
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    pub key: Spanned<String>,
    pub required: Option<Spanned<bool>>,
    pub min_serial: Option<Spanned<u64>>,
}

/// `[limits]`: caps on one base tarball, image archive or layer
/// (`host::limits`; validated in `validate/limits.rs`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub max_bytes: Option<Spanned<String>>,
    pub max_entries: Option<Spanned<u64>>,
    pub max_ratio: Option<Spanned<u64>>,
    pub max_file_bytes: Option<Spanned<String>>,
    pub base_setuid: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// "none" (default), "containerd", "k3s" or "kubernetes".
    pub runtime: Option<Spanned<String>>,
    /// k3s only: the k3s binary and its air-gap images bundle, pinned.
    pub k3s_binary: Option<Spanned<String>>,
    pub k3s_binary_sha256: Option<Spanned<String>>,
    pub k3s_images: Option<Spanned<String>>,
    pub k3s_images_sha256: Option<Spanned<String>>,
    /// k3s components to disable on top of traefik, servicelb, metrics-server.
    #[serde(default)]
    pub disable: Vec<Spanned<String>>,
    /// kubernetes only: the Go module the cluster binaries are built from.
    pub sources: Option<Spanned<String>>,
    /// kubernetes and k3s: the roles a site file's `role` may name
    /// (`["server", "agent"]`; default server only).
    pub roles: Option<Spanned<Vec<Spanned<String>>>>,
}

/// An OCI image pinned by manifest digest: from an archive on disk, or
/// built by cairn from Debian packages and files.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEntry {
    pub name: Spanned<String>,
    /// OCI layout tarball or `docker save` archive.
    pub archive: Option<Spanned<String>>,
    /// The image manifest's digest ("sha256:..."): required for archives;
    /// for built images, checked when given.
    pub digest: Option<Spanned<String>>,
    /// The archive file's sha256: required when `archive` is a URL (it
    /// pins the download; `digest` still pins the image).
    pub archive_sha256: Option<Spanned<String>>,
    pub build: Option<ImageBuild>,
    /// Allow set-uid/set-gid files in the layers.
    #[serde(default)]
    pub allow_setuid: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageBuild {
    #[serde(default)]
    pub packages: Vec<Spanned<String>>,
    #[serde(default)]
    pub files: Vec<ImageFile>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    #[serde(default)]
    pub ports: Vec<String>,
    /// Debian's essential set (a shell, coreutils, dpkg...) as well.
    #[serde(default)]
    pub essential: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageFile {
    pub src: Spanned<String>,
    pub dest: Spanned<String>,
    /// Octal permission bits as a string, e.g. "0644".
    #[serde(default = "default_file_mode")]
    pub mode: Spanned<String>,
}

fn default_file_mode() -> Spanned<String> {
    settings::FILE_MODE.spanned_text()
}

/// Model data: a file or folder pinned by sha256 (a folder's digest is
/// `cairn digest PATH`), made into its own verity-protected volume.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub name: Spanned<String>,
    pub path: Spanned<String>,
    pub sha256: Spanned<String>,
    #[serde(default = "default_model_compression")]
    pub compression: Spanned<String>,
}

fn default_model_compression() -> Spanned<String> {
    settings::MODEL_COMPRESSION.spanned_text()
}

/// A supervised container (containerd runtime).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceEntry {
    pub name: Spanned<String>,
    pub image: Spanned<String>,
    #[serde(default)]
    pub args: Vec<Spanned<String>>,
    #[serde(default)]
    pub env: Vec<Spanned<String>>,
    /// Share the host's network (the firewall still applies). Default: the
    /// container has only loopback.
    #[serde(default)]
    pub host_network: bool,
    /// Capabilities kept (e.g. "CAP_NET_BIND_SERVICE"); all others dropped.
    #[serde(default)]
    pub capabilities: Vec<Spanned<String>>,
    /// Memory limit, e.g. "512M".
    pub memory: Option<Spanned<String>>,
    /// CPU limit in cores, e.g. 1.5.
    pub cpus: Option<Spanned<f64>>,
    /// Models mounted read-only at /models/NAME.
    #[serde(default)]
    pub models: Vec<Spanned<String>>,
    /// No writable layer: the container's root is the image's read-only
    /// root itself.
    #[serde(default)]
    pub read_only: bool,
    /// Readiness check: "tcp:PORT" or "http:PORT/PATH".
    pub ready: Option<Spanned<String>>,
    /// Seconds the readiness check may take.
    pub ready_timeout: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// A folder of Kubernetes manifests (k3s auto-deploys them).
    pub bundle: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSection {
    /// "disk" (default for raw/qcow2) or "ram". ISO media always use RAM.
    pub mode: Option<Spanned<String>>,
    /// Upper bound of the RAM state (tmpfs size): "512M" or "50%".
    pub ram_size: Option<Spanned<String>>,
    /// Disk state only: at boot, the state partition takes the free space
    /// after it (a raw image written to a larger stick).
    pub grow: Option<Spanned<bool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    /// "CIDR:PORT" or "CIDR:PORT/udp": the only destinations the appliance
    /// may reach. Default: none.
    /// A string, or a table `{ rule, allow_wide }`: read as a value and
    /// checked by the validator (serde's untagged enums lose spans).
    #[serde(default)]
    pub egress: Vec<Spanned<toml::Value>>,
    /// Egress rules with a shorter prefix need `allow_wide = true`.
    pub wide_prefix: Option<Spanned<i64>>,
    /// "PORT/tcp" or "PORT/udp": the only ports reachable from outside.
    #[serde(default)]
    pub ingress: Vec<Spanned<String>>,
    /// Static IPv4 address with prefix for the wired interfaces, e.g.
    /// "10.0.2.15/24". Without it no interface is configured.
    pub address: Option<Spanned<String>>,
    pub gateway: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSection {
    pub name: Spanned<String>,
    pub version: Spanned<String>,
    /// Seconds since 1970 stamped on every file; overridable by the
    /// SOURCE_DATE_EPOCH environment variable of the build; unset, the
    /// lock's date or the declared default (see `recipe::epoch`).
    #[serde(default)]
    pub source_date_epoch: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseSection {
    pub debian: Option<DebianBase>,
    pub tarball: Option<TarballBase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebianBase {
    #[serde(default = "default_suite")]
    pub suite: Spanned<String>,
    #[serde(default = "default_mirror")]
    pub mirror: Spanned<String>,
    #[serde(default)]
    pub packages: Vec<Spanned<String>>,
}

fn default_suite() -> Spanned<String> {
    settings::DEBIAN_SUITE.spanned_text()
}
fn default_mirror() -> Spanned<String> {
    settings::DEBIAN_MIRROR.spanned_text()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TarballBase {
    pub path: Spanned<String>,
    pub sha256: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelSection {
    /// The Debian package that provides /boot/vmlinuz-*.
    #[serde(default = "default_kernel_package")]
    pub package: Spanned<String>,
    /// Modules kept on top of the default appliance set (names, `-` or `_`).
    #[serde(default)]
    pub modules: Vec<Spanned<String>>,
}

impl Default for KernelSection {
    fn default() -> Self {
        KernelSection {
            package: default_kernel_package(),
            modules: Vec::new(),
        }
    }
}

fn default_kernel_package() -> Spanned<String> {
    settings::KERNEL_PACKAGE.spanned_text()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSection {
    /// Extra kernel command-line words, appended after cairn's own.
    #[serde(default)]
    pub cmdline: Vec<Spanned<String>>,
    /// Accept the ISO's legacy BIOS path (GRUB, unverified by firmware) in
    /// production: `cairn verify --production` refuses it otherwise.
    #[serde(default)]
    pub allow_bios: bool,
    /// Debian's Microsoft-signed shim in front of the UKI (needs a Secure
    /// Boot key at build time; the span names the setting in that error).
    #[serde(default)]
    pub shim: Option<Spanned<bool>>,
    /// Accept UKIs without a Secure Boot signature in production: `cairn
    /// verify --production` refuses them otherwise.
    #[serde(default)]
    pub allow_unsigned: bool,
    /// With `shim`: whether MokManager goes on the stick (None: yes).
    #[serde(default)]
    pub mok_manager: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSection {
    /// Total size of the raw disk, e.g. "2G" or "1536M".
    #[serde(default = "default_disk_size")]
    pub size: Spanned<String>,
    /// Size of the state partition, e.g. "256M".
    #[serde(default = "default_state_size")]
    pub state_size: Spanned<String>,
}

impl Default for DiskSection {
    fn default() -> Self {
        DiskSection {
            size: default_disk_size(),
            state_size: default_state_size(),
        }
    }
}

fn default_disk_size() -> Spanned<String> {
    settings::DISK_SIZE.spanned_text()
}
fn default_state_size() -> Spanned<String> {
    settings::DISK_STATE_SIZE.spanned_text()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebugSection {
    /// A root shell on the second serial port (ttyS1). For tests only; the
    /// manifest records it so reviewers see it.
    #[serde(default)]
    pub console: bool,
    /// Test control only: the disk state partition without encryption, so
    /// a test can show a marker *would* be found on disk. Recorded in the
    /// manifest; never ship it.
    #[serde(default)]
    pub unencrypted_state: bool,
    /// `true`, or a list of the shell-opening cmdline words allowed.
    pub cmdline: Option<Spanned<toml::Value>>,
}
