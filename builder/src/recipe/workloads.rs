//! The workloads a recipe declares: the cluster runtime, pinned OCI images
//! (archived or built from Debian packages), models, services, the policy
//! bundle and the k3s artifacts. Plain data; the workloads stage installs it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::host::digest::Sha256;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    #[default]
    None,
    Containerd,
    K3s,
    /// Upstream Kubernetes built by cairn from the Go module `[cluster]
    /// sources` (pipeline::cluster, pipeline::kubernetes).
    Kubernetes,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    Archive(PathBuf),
    Build {
        packages: Vec<String>,
        files: Vec<(PathBuf, String, u32)>,
        entrypoint: Vec<String>,
        cmd: Vec<String>,
        env: Vec<String>,
        user: Option<String>,
        workdir: Option<String>,
        ports: Vec<String>,
        /// Debian's essential set too; otherwise only `packages` and what
        /// they depend on, extracted (`inputs::debrepo::Variant::ImageMinimal`).
        essential: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadImage {
    pub name: String,
    pub source: ImageSource,
    pub pin: Option<Sha256>,
    pub allow_setuid: bool,
}

/// The name of the root's apps volume, which no model may take (the
/// manifest lists volumes by name).
pub const APPS_VOLUME: &str = "apps";

#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub name: String,
    pub path: PathBuf,
    pub sha256: Sha256,
    /// How its volume is stored (`[[models]] compression`).
    pub compression: Compression,
    /// Where the pin is written, for mismatch errors.
    pub at: String,
}

impl Model {
    /// Its data is not what the recipe pins: bad input (exit 2), named
    /// where the pin is written.
    pub fn pin_error(&self, got: &Sha256) -> crate::InputError {
        crate::InputError(format!(
            "{}: model {} digest is {got}, but the recipe pins {}; if the new data is trusted, update the pin",
            self.at, self.name, self.sha256
        ))
    }

    /// The context of an error reading its data.
    pub fn unreadable(&self) -> String {
        format!(
            "{}: model {}: cannot read {}",
            self.at,
            self.name,
            self.path.display()
        )
    }
}

/// How a model volume's squashfs is stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// No compression of data, inodes, fragments or extended attributes:
    /// weights do not compress, and the volume is written at disk speed.
    #[default]
    None,
    Zstd,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    pub image: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub host_network: bool,
    pub capabilities: Vec<String>,
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    pub models: Vec<String>,
    /// No writable layer over the image's root (`read_only = true`).
    pub read_only: bool,
    /// The variables of `env` a site file may set (`[site] allow`'s
    /// `env.NAME.VAR`): the service reads them from its environment files.
    pub site_env: Vec<String>,
    /// What `cairn: ready` waits for, if anything.
    pub ready: Option<ReadyCheck>,
}

/// A service's readiness check, made on the node's loopback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyCheck {
    pub probe: Probe,
    pub port: u16,
    /// Seconds it may take.
    pub timeout: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A connection is accepted.
    Tcp,
    /// A GET of this path (starting with `/`) is answered 2xx.
    Http(String),
}

impl ReadyCheck {
    /// Parses `tcp:PORT` or `http:PORT/PATH` (PATH of URL-safe characters).
    pub fn parse(s: &str, timeout: u64) -> Result<ReadyCheck, String> {
        let bad = || {
            format!("readiness check {s:?} is not \"tcp:PORT\" or \"http:PORT/PATH\"; write e.g. \"http:8080/healthz\"")
        };
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        let (port, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i..])),
            None => (rest, None),
        };
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("readiness check {s:?}: the port must be 1 to 65535"))?;
        let safe = |p: &str| {
            p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "/-._~%!$&'()*+,;=:@?".contains(c))
        };
        let probe = match (kind, path) {
            ("tcp", None) => Probe::Tcp,
            ("http", Some(p)) if safe(p) && p.len() <= 200 => Probe::Http(p.to_string()),
            ("http", _) => {
                return Err(format!(
                    "readiness check {s:?}: the path must start with / and hold only URL characters (at most 200)"
                ))
            }
            _ => return Err(bad()),
        };
        Ok(ReadyCheck {
            probe,
            port,
            timeout,
        })
    }

    /// The line of /etc/cairn/ready-checks the node's `cairn-ready` reads:
    /// `NAME KIND PORT PATH SECONDS` (PATH `-` for tcp).
    pub fn line(&self, service: &str) -> String {
        let (kind, path) = match &self.probe {
            Probe::Tcp => ("tcp", "-"),
            Probe::Http(p) => ("http", p.as_str()),
        };
        format!("{service} {kind} {} {path} {}", self.port, self.timeout)
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Workloads {
    pub runtime: Runtime,
    pub images: Vec<WorkloadImage>,
    pub models: Vec<Model>,
    pub services: Vec<Service>,
    pub policy: Option<PathBuf>,
    pub k3s: Option<K3sArtifacts>,
    /// `runtime = "kubernetes"`: the Go module its binaries are built from.
    pub kubernetes: Option<KubeSources>,
}

/// The Go module (`go.mod`, `go.sum`, `build.sh`) that `runtime =
/// "kubernetes"` builds its cluster binaries from, resolved on this machine.
#[derive(Debug, Clone, PartialEq)]
pub struct KubeSources {
    pub module: PathBuf,
    /// The node's name (the image name).
    pub node_name: String,
}

/// The reference an image is imported under (containerd, k3s, kubernetes).
pub fn reference(name: &str) -> String {
    format!("cairn.local/{name}:pinned")
}

/// Debian packages the runtime needs in the root.
pub fn runtime_packages(r: Runtime) -> &'static [&'static str] {
    match r {
        Runtime::Containerd => &["containerd", "runc"],
        // Its own containerd, runc and CNI plugins come from the cluster
        // build (the pinned images too: containerd's root is written at
        // build time); kube-proxy needs nft, cairn-kube-pki ip.
        Runtime::Kubernetes => &["nftables", "iptables", "conntrack", "iproute2"],
        // k3s brings its own containerd and CNI; it needs iptables, and
        // cairn-node-ip reads the node's address with ip.
        Runtime::K3s => &["iptables", "conntrack", "iproute2"],
        Runtime::None => &[],
    }
}

/// The k3s artifacts, resolved to files on this machine.
#[derive(Debug, Clone, PartialEq)]
pub struct K3sArtifacts {
    pub binary: PathBuf,
    pub binary_sha256: Sha256,
    pub images: PathBuf,
    pub images_sha256: Sha256,
    pub disable: Vec<String>,
    pub node_name: String,
}

/// Where the artifacts come from when the recipe does not say: the
/// documentation for field teams and the boot test's skip message.
pub const K3S_WHERE_FROM: &str = "k3s artifacts come from the k3s release page (k3s and k3s-airgap-images-amd64.tar.zst, or .tar); put them beside the recipe or in cairn's cache and pin them by sha256 in [cluster]";

/// What k3s's `--disable` accepts (its packaged components); it ignores
/// any other name silently.
pub const K3S_COMPONENTS: &[&str] = &[
    "coredns",
    "servicelb",
    "traefik",
    "local-storage",
    "metrics-server",
    "runtimes",
];

/// The k3s release an artifact comes from, when its path or URL names one
/// (`.../download/v1.31.4%2Bk3s1/k3s`, `k3s-v1.31.4+k3s1/...`): the
/// `vX.Y.Z+k3sN` tag, with `%2B` read as `+`.
pub fn k3s_release(s: &str) -> Option<String> {
    let s = s.replace("%2B", "+").replace("%2b", "+");
    s.split(['/', '_', '='])
        .flat_map(|seg| seg.split_inclusive('-').map(|p| p.trim_end_matches('-')))
        .find(|seg| {
            let Some(rest) = seg.strip_prefix('v') else {
                return false;
            };
            let Some((ver, k3s)) = rest.split_once("+k3s") else {
                return false;
            };
            !k3s.is_empty()
                && k3s.chars().all(|c| c.is_ascii_digit())
                && ver.split('.').count() == 3
                && ver
                    .split('.')
                    .all(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        })
        .map(str::to_string)
}
