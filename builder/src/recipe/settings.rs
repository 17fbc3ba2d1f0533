//! Every recipe setting, declared once: its table, key, type, default and
//! help text. The schema's serde defaults read their values from here, the
//! validators quote the rules from here, and docs/recipe.md's reference
//! tables are generated from here (`reference::render`).
//!
//! Invariant: every key the schema accepts has exactly one declaration
//! (checked by a test that asks serde for each table's field list).

use toml::Spanned;

/// A setting's default, as the docs show it and the schema uses it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DefaultValue {
    /// The key must be written.
    Required,
    /// Absent means "not set" (the help says what that does).
    Unset,
    /// An empty list.
    Empty,
    Text(&'static str),
    Int(u64),
    Bool(bool),
}

/// One recipe setting.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The TOML table, as written in its header without brackets:
    /// `""` (top level), `"base.debian"`, `"images.build"`, ...
    pub table: &'static str,
    pub key: &'static str,
    /// The value's type, for the docs.
    pub kind: &'static str,
    pub default: DefaultValue,
    pub help: &'static str,
}

impl Setting {
    /// `[table] key`, the way messages name a setting.
    pub fn name(&self) -> String {
        if self.table.is_empty() {
            self.key.to_string()
        } else {
            format!("[{}] {}", self.table, self.key)
        }
    }

    /// The default text of a `Text` setting (a declaration error otherwise,
    /// caught by the tests).
    pub fn text(&self) -> &'static str {
        match self.default {
            DefaultValue::Text(t) => t,
            _ => "",
        }
    }

    /// The default text, spanned at the file's start (it is not written).
    pub fn spanned_text(&self) -> Spanned<String> {
        Spanned::new(0..0, self.text().to_string())
    }

    pub fn int(&self) -> u64 {
        match self.default {
            DefaultValue::Int(n) => n,
            _ => 0,
        }
    }
}

/// The name rule shared by images, models, services and the image itself.
macro_rules! name_rule {
    () => {
        "1-64 of `[a-z0-9-]`, starting with a letter"
    };
}
pub(crate) use name_rule;

/// The rule for Debian package names (Debian Policy 5.6.1, lower case).
macro_rules! package_rule {
    () => {
        "`[a-z0-9][a-z0-9+.-]+`"
    };
}
pub(crate) use package_rule;

macro_rules! settings {
    ($( $id:ident = [$table:literal] $key:literal : $kind:literal = $default:expr ; $help:expr ; )*) => {
        $( pub const $id: Setting = Setting {
            table: $table, key: $key, kind: $kind, default: $default, help: $help,
        }; )*
        /// Every setting, in the order the docs list them.
        pub const ALL: &[Setting] = &[$($id),*];
    };
}

use DefaultValue::{Bool, Empty, Int, Required, Text, Unset};

settings! {
    OVERLAYS = [""] "overlays": "list of paths" = Empty;
        "folders layered into the root tree, in order; later ones win. Files become `root:root` \
         with their permission bits; set-uid/set-gid files, device nodes, fifos and sockets are \
         refused (`cairn check` names each one). Symlinks are copied as links. Files cairn \
         writes itself are refused too, since they would be replaced: `etc/hostname`, \
         `etc/hosts`, `etc/resolv.conf`, `etc/machine-id`, anything under `usr/lib/cairn`, \
         and with `runtime = \"containerd\"` `etc/containerd/config.toml`.";

    IMAGE_NAME = ["image"] "name": "string" = Required;
        concat!(name_rule!(), "; names the output folder and files");
    IMAGE_VERSION = ["image"] "version": "string" = Required;
        "1-64 of `[A-Za-z0-9.+~_]`";
    IMAGE_EPOCH = ["image"] "source_date_epoch": "integer" = Int(1_735_689_600);
        "seconds since 1970 stamped on every file; the build's `SOURCE_DATE_EPOCH` environment \
         variable overrides it. Unset, builds from a lock take the lock's `source_date_epoch` \
         (when `cairn lock` resolved the inputs); the default is for builds without a lock";

    DEBIAN_SUITE = ["base.debian"] "suite": "string" = Text("bookworm");
        "Debian suite: a plain name (`[a-z0-9][a-z0-9.+~_-]*`, e.g. `bookworm-backports`)";
    DEBIAN_MIRROR = ["base.debian"] "mirror": "string" = Text("http://deb.debian.org/debian");
        "archive URL: plain `http://` or `https://` with a host; no credentials, spaces, \
         options, `file:` URLs, host paths or `deb [...]` lines";
    DEBIAN_PACKAGES = ["base.debian"] "packages": "list of strings" = Empty;
        concat!("extra packages; each a Debian package name, ", package_rule!());

    TARBALL_PATH = ["base.tarball"] "path": "path or URL" = Required;
        "the root tree as a tar file, gzip-compressed or not, read by cairn's own bounded tar \
         reader with the layer policy and the `[limits]` caps (docs/limits.md): no `..`, no \
         absolute names, no links climbing out, no device nodes or fifos";
    TARBALL_SHA256 = ["base.tarball"] "sha256": "digest" = Required;
        "its sha256 (64 hex digits); a mismatch stops the build with both digests";

    KERNEL_PACKAGE = ["kernel"] "package": "string" = Text("linux-image-amd64");
        concat!("the Debian package providing the kernel (", package_rule!(), ")");
    KERNEL_MODULES = ["kernel"] "modules": "list of strings" = Empty;
        "modules kept on top of the default appliance set (see `kernel::DEFAULT_KEEP`): storage, \
         USB, virtio, device-mapper, the filesystems cairn uses, netfilter, common NICs, crypto. \
         Dependencies come along (from `modules.dep`). An unknown name stops the build.";

    BOOT_CMDLINE = ["boot"] "cmdline": "list of strings" = Empty;
        "extra kernel command-line words, appended after cairn's own (`console=tty0 \
         console=ttyS0,115200 cairn.roothash=… cairn.state=… cairn.ram_size=… \
         systemd.gpt_auto=0 systemd.firstboot=0`). Words starting with `cairn.` or `roothash=` \
         are refused: cairn sets them. Words that open a shell or bypass the init (listed \
         below) are refused unless `[debug] cmdline` allows them.";
    BOOT_ALLOW_BIOS = ["boot"] "allow_bios": "bool" = Bool(false);
        "accept the ISO's legacy BIOS path (GRUB, which no firmware verifies) in production. \
         Recorded in the manifest's `boot.allow_bios`; without it `cairn verify --production` \
         refuses a release that has an ISO. See [secure-boot.md](secure-boot.md).";
    BOOT_SHIM = ["boot"] "shim": "bool" = Bool(false);
        "put Debian's Microsoft-signed shim in front of the UKI, for stock machines that keep \
         their vendor keys: the ESP (raw disk and ISO) holds shim as `EFI/BOOT/BOOTX64.EFI`, \
         its MokManager as `EFI/BOOT/mmx64.efi` and the UKI as `EFI/BOOT/grubx64.efi`. Shim \
         starts only a UKI signed with a key the machine trusts, so the build needs `--sb-key` \
         and `--sb-cert`, and each machine enrols that certificate once as a MOK. The files \
         come from the build host's `shim-signed` package; their sha256 and package versions \
         are in the manifest's `boot.shim`. See [secure-boot.md](secure-boot.md).";
    BOOT_ALLOW_UNSIGNED = ["boot"] "allow_unsigned": "bool" = Bool(false);
        "accept UKIs without a Secure Boot signature in production (a build without `--sb-key`): \
         no firmware checks them, so any boot loader's `rdinit=` or `init=` opens a shell. \
         Recorded in the manifest's `boot.allow_unsigned` and shown by `cairn inspect`; without \
         it `cairn verify --production` refuses a release whose UKIs are unsigned. See \
         [secure-boot.md](secure-boot.md).";
    BOOT_MOK_MANAGER = ["boot"] "mok_manager": "bool" = Bool(true);
        "with `shim`: put MokManager (`EFI/BOOT/mmx64.efi`) on the stick, so that a machine can \
         enrol the site's certificate from it. `false` ships shim and the UKI only (the manifest's \
         `boot.shim.mok_manager` is `null`, `cairn verify` checks the ESP has none): for \
         production sticks of machines already enrolled, where a MokManager with no MOK \
         password would let anyone at the console enrol a hash. See \
         [secure-boot.md](secure-boot.md).";

    DISK_SIZE = ["disk"] "size": "size" = Text("2G");
        "total size of the raw disk (`K`, `M`, `G`, `T` suffixes, powers of 1024)";
    DISK_STATE_SIZE = ["disk"] "state_size": "size" = Text("256M");
        "minimum size of the state partition, which takes what the ESP, root and verity \
         partitions leave";

    STATE_MODE = ["state"] "mode": "`\"disk\"` or `\"ram\"`" = Text("disk");
        "`disk`: the `cairn-state` partition is opened with plain dm-crypt (aes-xts-plain64, \
         512-bit key read from the kernel RNG at every boot, held only in kernel memory, never \
         written anywhere) and a fresh file system is made on it at every boot. `ram`: a \
         size-limited tmpfs. In both, `/var` and `/etc` are overlays whose upper layers live \
         there; `/tmp` and `/run` are tmpfs; the root stays read-only. ISO media always use RAM.";
    STATE_RAM_SIZE = ["state"] "ram_size": "size or percent" = Text("50%");
        "upper bound of the RAM state: `\"512M\"` or `\"25%\"` (1-90% of RAM)";
    STATE_GROW = ["state"] "grow": "bool" = Bool(false);
        "`disk` mode only: when the raw image is written to a larger disk (a 2 GiB image on a \
         64 GB stick), the initramfs grows the state partition to the disk's end before opening \
         it. sfdisk moves the backup GPT to the end and extends the last partition; the root, \
         hash tree and ESP are not touched, and nothing is done when less than 64 MiB would be \
         gained or another partition follows. Adds the `fdisk` package and `cairn.state_grow=1` \
         to the signed command line. Any failure is logged (`cairn: state: not grown: …`) and \
         the boot continues with the partition as built.";

    NETWORK_EGRESS = ["network"] "egress": "list of rules" = Empty;
        "`\"CIDR:PORT\"` (TCP) or `\"CIDR:PORT/udp\"`: the only destinations the appliance may \
         reach, e.g. `\"10.20.0.0/16:443\"`. A rule may also be a table `{ rule = \"…\", \
         allow_wide = true }` (below); a rule wider than `wide_prefix` needs that form.";
    NETWORK_WIDE_PREFIX = ["network"] "wide_prefix": "integer" = Int(8);
        "egress rules with a shorter prefix than `/wide_prefix` (and every `/0`) are refused \
         unless they say `allow_wide = true`; 1-32";
    NETWORK_INGRESS = ["network"] "ingress": "list of strings" = Empty;
        "`\"PORT/tcp\"` or `\"PORT/udp\"`: the only ports reachable from outside";
    NETWORK_ADDRESS = ["network"] "address": "string" = Unset;
        "static IPv4 address with prefix for wired interfaces (`\"10.0.2.15/24\"`), via \
         systemd-networkd. Without it no interface gets an address. There is no DHCP client.";
    NETWORK_GATEWAY = ["network"] "gateway": "string" = Unset;
        "IPv4 default gateway (needs `address`)";

    EGRESS_RULE = ["network.egress"] "rule": "string" = Required;
        "the rule, written as in the plain form";
    EGRESS_ALLOW_WIDE = ["network.egress"] "allow_wide": "bool" = Bool(false);
        "accept a rule wider than `wide_prefix` (e.g. `0.0.0.0/0:443`); the manifest records \
         it under `network.wide_egress`";

    SITE_ALLOW = ["site"] "allow": "list of strings" = Empty;
        "the settings a site file may set, from: `address`, `gateway`, `hostname`, \
         `close_ingress`, `env.SERVICE.VAR`, and for a cluster node `role`, `server`, \
         `join_token`, `join_expires`, `peers` (below). A site file that sets anything else \
         is refused when signed and at boot.";
    SITE_KEY = ["site"] "key": "path" = Required;
        "the signify public key (`.pub`) that signs site files; keep its secret key apart from \
         the release key. Baked into the initramfs; its key id is in the manifest. Adds the \
         `signify-openbsd` package (the initramfs verifies with it).";
    SITE_REQUIRED = ["site"] "required": "bool" = Bool(false);
        "the image halts at boot (`cairn: FATAL site: ...`) when its medium holds no site file, \
         so a site's settings (closed ports, address) cannot be dropped by deleting the file. \
         Recorded in the manifest.";
    SITE_MIN_SERIAL = ["site"] "min_serial": "integer" = Int(0);
        "the lowest `serial` a site file may carry; raise it in a new release to retire older \
         site files (a replayed older file is refused when signed and at boot). Recorded in \
         the manifest.";

    CLUSTER_RUNTIME = ["cluster"] "runtime": "`\"none\"`, `\"containerd\"`, `\"k3s\"`, `\"kubernetes\"`" = Text("none");
        "`containerd`: Debian's containerd and runc; the pinned images are unpacked at build \
         time into the verity-protected root and `[[services]]` run from there as supervised \
         containers (nothing is imported or copied at boot). `k3s`: \
         single-node Kubernetes from pinned artifacts, laid out by k3s's air-gap conventions. \
         `kubernetes`: upstream Kubernetes, containerd, runc and CNI plugins that cairn builds \
         from the Go module `sources` (docs/kubernetes.md).";
    CLUSTER_K3S_BINARY = ["cluster"] "k3s_binary": "path or URL" = Unset;
        "k3s only (then required): the k3s binary";
    CLUSTER_K3S_BINARY_SHA256 = ["cluster"] "k3s_binary_sha256": "digest" = Unset;
        "k3s only (then required): its sha256 (from the release's `sha256sum-amd64.txt`)";
    CLUSTER_K3S_IMAGES = ["cluster"] "k3s_images": "path or URL" = Unset;
        "k3s only (then required): `k3s-airgap-images-amd64.tar` (or `.tar.zst`, recognised \
         by content)";
    CLUSTER_K3S_IMAGES_SHA256 = ["cluster"] "k3s_images_sha256": "digest" = Unset;
        "k3s only (then required): its sha256";
    CLUSTER_DISABLE = ["cluster"] "disable": "list of strings" = Empty;
        "k3s components disabled on top of traefik, servicelb, metrics-server (each one of \
         coredns, servicelb, traefik, local-storage, metrics-server, runtimes)";
    CLUSTER_SOURCES = ["cluster"] "sources": "path" = Unset;
        "kubernetes only: the Go module (`go.mod`, `go.sum`, `build.sh`) the cluster binaries \
         are built from; by default the nearest `cluster/` folder holding them, in the \
         recipe's folder or above (the repository's own)";
    CLUSTER_ROLES = ["cluster"] "roles": "list of strings" = Text("[\"server\"]");
        "kubernetes and k3s only: the roles a node's site file may give it (`role`), \
         `\"server\"` and/or `\"agent\"`, each once; recorded in the manifest's `site` \
         (docs/recipe.md, cluster nodes)";

    IMAGE_ENTRY_NAME = ["images"] "name": "string" = Required;
        concat!(name_rule!(), "; unique; containerd knows it as `cairn.local/NAME:pinned`");
    IMAGE_ENTRY_ARCHIVE = ["images"] "archive": "path or URL" = Unset;
        "an OCI image layout tarball or a `docker save` archive; every blob's digest and size \
         is checked";
    IMAGE_ENTRY_DIGEST = ["images"] "digest": "digest" = Unset;
        "the image manifest's sha256; required with `archive`, checked when given for a built \
         image";
    IMAGE_ENTRY_ARCHIVE_SHA256 = ["images"] "archive_sha256": "digest" = Unset;
        "the archive file's sha256; required when `archive` is a URL, refused for a local \
         archive (its `digest` pins it)";
    IMAGE_ENTRY_BUILD = ["images"] "build": "table" = Unset;
        "`[images.build]`: build the image from Debian packages instead (rootless, \
         reproducible); exactly one of `archive` and `build`";
    IMAGE_ENTRY_ALLOW_SETUID = ["images"] "allow_setuid": "bool" = Bool(false);
        "allow set-uid/set-gid files in the layers";

    BUILD_PACKAGES = ["images.build"] "packages": "list of strings" = Empty;
        concat!("Debian packages installed into the image (", package_rule!(), ")");
    BUILD_FILES = ["images.build"] "files": "list of tables" = Empty;
        "files copied in: `{ src, dest, mode }` (below)";
    BUILD_ENTRYPOINT = ["images.build"] "entrypoint": "list of strings" = Empty;
        "the image's entrypoint";
    BUILD_CMD = ["images.build"] "cmd": "list of strings" = Empty;
        "the image's default arguments";
    BUILD_ENV = ["images.build"] "env": "list of strings" = Empty;
        "`KEY=VALUE` entries of the image's environment";
    BUILD_USER = ["images.build"] "user": "string" = Unset;
        "the user the image runs as";
    BUILD_WORKDIR = ["images.build"] "workdir": "string" = Unset;
        "the image's working folder";
    BUILD_PORTS = ["images.build"] "ports": "list of strings" = Empty;
        "exposed ports, e.g. `\"8080/tcp\"`";
    BUILD_ESSENTIAL = ["images.build"] "essential": "bool" = Bool(false);
        "also install Debian's essential set (a shell, coreutils, dpkg, ...). Without it the \
         image holds only `packages` and what they depend on, unpacked (no maintainer scripts \
         run: no /etc/passwd unless a package ships one, so give `user` as numbers); an \
         entrypoint that is not in the image stops the build";

    FILE_SRC = ["images.build.files"] "src": "path" = Required;
        "a file beside the recipe";
    FILE_DEST = ["images.build.files"] "dest": "string" = Required;
        "absolute path in the image, without `..`";
    FILE_MODE = ["images.build.files"] "mode": "string" = Text("0644");
        "octal permission bits";

    MODEL_NAME = ["models"] "name": "string" = Required;
        concat!(name_rule!(), "; unique; mounted read-only into services at `/models/NAME`");
    MODEL_PATH = ["models"] "path": "path" = Required;
        "a file or folder; a folder holds only files and folders (`cairn check` names any \
         link, fifo or device in it)";
    MODEL_SHA256 = ["models"] "sha256": "digest" = Required;
        "the file's sha256, or the folder's tree digest: `cairn digest PATH`";
    MODEL_COMPRESSION = ["models"] "compression": "`\"none\"` or `\"zstd\"`" = Text("none");
        "how the model's own volume is stored. Each model is a verity-protected volume of its \
         own (a squashfs image with its own hash tree and root hash, mounted read-only at boot \
         where services read it; rebuilt only when its data changes). `none` (weights do not \
         compress) writes it at close to disk speed; `zstd` (level 10, 1 MiB blocks, as the root) for data that does compress";

    SERVICE_NAME = ["services"] "name": "string" = Required;
        concat!(name_rule!(), "; unique; the unit is `cairn-service-NAME.service` (restart on failure)");
    SERVICE_IMAGE = ["services"] "image": "string" = Required;
        "an `[[images]]` name";
    SERVICE_ARGS = ["services"] "args": "list of strings" = Empty;
        "appended to the entrypoint; no newlines or control characters";
    SERVICE_ENV = ["services"] "env": "list of strings" = Empty;
        "`KEY=VALUE` entries added to the environment; no newlines or control characters";
    SERVICE_HOST_NETWORK = ["services"] "host_network": "bool" = Bool(false);
        "share the host's network (the firewall still applies); otherwise the container has \
         only loopback";
    SERVICE_CAPABILITIES = ["services"] "capabilities": "list of strings" = Empty;
        "kept capabilities (Linux capability names, e.g. `\"CAP_NET_BIND_SERVICE\"`); every \
         other is dropped";
    SERVICE_MEMORY = ["services"] "memory": "size" = Unset;
        "memory limit, at least 16M";
    SERVICE_CPUS = ["services"] "cpus": "number" = Unset;
        "CPU limit in cores: more than 0, at most 1024";
    SERVICE_MODELS = ["services"] "models": "list of strings" = Empty;
        "models mounted read-only";
    SERVICE_READY = ["services"] "ready": "string" = Unset;
        "readiness check: `\"tcp:PORT\"` (a connection to 127.0.0.1:PORT is accepted) or \
         `\"http:PORT/PATH\"` (a GET of it is answered 2xx); needs `host_network`. `cairn: ready` \
         waits for every check; one that does not pass within `ready_timeout` prints \
         `cairn: FATAL service NAME: not ready ...` instead. Unset: ready when the service started";
    SERVICE_READY_TIMEOUT = ["services"] "ready_timeout": "integer" = Int(120);
        "seconds the readiness check may take, 1 to 3600";
    SERVICE_READ_ONLY = ["services"] "read_only": "bool" = Bool(false);
        "the container's root is the image's verity-protected root as it is, read-only; \
         otherwise a writable layer on the state lies over it (overlayfs, fresh at every \
         start, gone at shutdown), and the image itself is never written either way";

    POLICY_BUNDLE = ["policy"] "bundle": "path" = Unset;
        "a folder of Kubernetes manifests (k3s auto-deploys them); its tree digest and file \
         list are in the manifest and `cairn inspect`. Like model folders, only files and \
         folders.";

    DEBUG_CONSOLE = ["debug"] "console": "bool" = Bool(false);
        "a root shell on the second serial port (ttyS1) for tests. Recorded in the manifest's \
         `flags.debug_console`; `cairn verify --production` refuses such images. Never ship an \
         image with it.";
    DEBUG_UNENCRYPTED_STATE = ["debug"] "unencrypted_state": "bool" = Bool(false);
        "test control only: disk state without dm-crypt, so a test can show that a marker \
         *would* be found on disk. Recorded in the manifest's `flags.debug_unencrypted_state`.";
    DEBUG_CMDLINE = ["debug"] "cmdline": "bool or list of strings" = Bool(false);
        "allow `[boot] cmdline` words that open a shell or bypass the init: `true` allows all, \
         a list allows exactly the words it names (e.g. `[\"rd.break\"]`). For tests only; the \
         words allowed this way are recorded for the manifest.";

    LIMITS_MAX_BYTES = ["limits"] "max_bytes": "size" = Text("64G");
        "uncompressed bytes of one base tarball, image archive or layer";
    LIMITS_MAX_ENTRIES = ["limits"] "max_entries": "integer" = Int(200_000);
        "entries (files, folders, links) of one base tarball, image archive or layer";
    LIMITS_MAX_RATIO = ["limits"] "max_ratio": "integer" = Int(200);
        "uncompressed bytes per compressed byte (judged once 1 MiB came out): stops gzip bombs";
    LIMITS_MAX_FILE_BYTES = ["limits"] "max_file_bytes": "size" = Text("16G");
        "bytes of one file inside a base tarball, image archive or layer (refused from its header)";
    LIMITS_BASE_SETUID = ["limits"] "base_setuid": "`\"refuse\"`, `\"strip\"`, `\"keep\"`" = Text("refuse");
        "set-uid/set-gid files in the base tarball: refused (naming the file), kept without the \
         bits, or kept as they are";

    GOVERNANCE_NAME = ["governance"] "name": "string" = Required;
        "a template's name (docs/templates.md); recorded in every release built on it";
    GOVERNANCE_VERSION = ["governance"] "version": "dotted numbers" = Required;
        "the template's version (`\"1.2\"`); team recipes pin one or accept a range";
    GOVERNANCE_ALLOW = ["governance"] "allow": "list of strings" = Empty;
        "what a team recipe may add: `images`, `models`, `services`, `ingress`, `egress`, \
         `overlays`. Every other table and key is fixed by the template (rule `fixed`).";
    GOVERNANCE_INGRESS_PORTS = ["governance"] "ingress_ports": "`\"LOW-HIGH\"`" = Unset;
        "the ports a team may open in `[network] ingress`";
    GOVERNANCE_MAX_IMAGES = ["governance"] "max_images": "integer" = Unset;
        "how many `[[images]]` a team may add";
    GOVERNANCE_MAX_MODELS = ["governance"] "max_models": "integer" = Unset;
        "how many `[[models]]` a team may add";
    GOVERNANCE_MAX_SERVICES = ["governance"] "max_services": "integer" = Unset;
        "how many `[[services]]` a team may add";
    GOVERNANCE_MAX_MODEL_SIZE = ["governance"] "max_model_size": "size" = Unset;
        "the largest team model (a file, or a folder's files together)";
    GOVERNANCE_MAX_ARCHIVE_SIZE = ["governance"] "max_archive_size": "size" = Unset;
        "the largest local image archive a team brings (URL archives: `[limits] max_bytes`)";
    GOVERNANCE_MAX_MEMORY = ["governance"] "max_memory": "size" = Unset;
        "a team service must set `memory`, at most this";
    GOVERNANCE_MAX_CPUS = ["governance"] "max_cpus": "number" = Unset;
        "a team service must set `cpus`, at most this";
    GOVERNANCE_CAPABILITIES = ["governance"] "capabilities": "list of strings" = Empty;
        "the capabilities a team service may keep";
    GOVERNANCE_HOST_NETWORK = ["governance"] "host_network": "bool" = Bool(false);
        "whether a team service may share the host's network";
    GOVERNANCE_IMAGE_SOURCES = ["governance"] "image_sources": "list of strings" = Text("[\"build\", \"archive\"]");
        "where team images may come from: `build` (from Debian packages), `archive` (pinned \
         by digest)";
    GOVERNANCE_ARCHIVE_URLS = ["governance"] "archive_urls": "list of strings" = Unset;
        "URL prefixes a team archive must start with (a local archive is then refused)";
    GOVERNANCE_EGRESS = ["governance"] "egress": "list of strings" = Empty;
        "the only egress rules a team may add (with `egress` allowed), written as the team \
         writes them";
    GOVERNANCE_OVERLAY_PATHS = ["governance"] "overlay_paths": "list of strings" = Empty;
        "the image paths a team overlay may write under (`\"/opt/team\"`); anything else, \
         such as the firewall's files under `/etc`, is refused";
    TEMPLATE_PATH = ["template"] "path": "path" = Required;
        "a team recipe's template, relative to the recipe; its signature is `PATH.sig` beside it \
         (docs/templates.md)";
    TEMPLATE_SHA256 = ["template"] "sha256": "digest" = Unset;
        "the template file's sha256; required with `version`";
    TEMPLATE_KEY = ["template"] "key": "path" = Required;
        "the platform's public key (signify `.pub`) the template's signature must verify with";
    TEMPLATE_VERSION = ["template"] "version": "dotted numbers" = Unset;
        "exactly this template version (with `sha256`); or instead:";
    TEMPLATE_VERSIONS = ["template"] "versions": "range" = Unset;
        "any version in this range that the key signed (`\">=1.2, <2\"`), no digest pin";
    AUDIT_SIZE = ["audit"] "size": "size" = Text("16M");
        "the `cairn-audit` partition (raw disk only), fixed: placed before the state partition, \
         so `[state] grow` leaves it alone; 1-1024 MiB (docs/audit.md)";
    AUDIT_KEY = ["audit"] "key": "path" = Required;
        "the platform's `age` public key (`age1...`, one line, as `age-keygen -y` prints it); \
         records are encrypted to it, and the image holds nothing else of it. Its digest is in \
         the manifest.";
    AUDIT_RECORD = ["audit"] "record": "list of strings" = Text("[\"boot\", \"service\", \"firewall\", \"cluster-api\"]");
        "the record kinds written, from `boot`, `service`, `firewall`, `cluster-api` (k3s or \
         kubernetes runtime only) (`close`, `stopped` and \
         `verity-failure` are always written; `boot` cannot be left out: it carries the boot's signing key)";
    AUDIT_ON_FULL = ["audit"] "on_full": "`\"stop\"` or `\"halt\"`" = Text("stop");
        "when the partition is full: write a last `stopped` record and go on unrecorded, or halt \
         the node (`cairn: FATAL audit: full`); `halt` builds no ISO (`--format raw,qcow2`): \
         an ISO boot has no partition to record to";
}

/// Smallest memory limit a service may have: below it the runtime and the
/// process cannot start, so a smaller value is a typo (`"1K"` for `"1G"`).
pub const MIN_SERVICE_MEMORY: u64 = 16 << 20;
/// Largest CPU limit a service may have, in cores.
pub const MAX_SERVICE_CPUS: f64 = 1024.0;
/// Room the ESP and root need on the disk beside the state partition.
pub const MIN_DISK_ROOM: u64 = 64 << 20;

/// A limit the validation enforces, for the docs' table of limits.
pub struct Limit {
    pub what: &'static str,
    pub value: String,
    pub raise: &'static str,
}

/// Every limit, with how to raise it (or why it cannot be).
pub fn limits() -> Vec<Limit> {
    vec![
        Limit {
            what: "egress rule width",
            value: format!(
                "prefix `/{}` or longer; `/0` never without the flag",
                NETWORK_WIDE_PREFIX.int()
            ),
            raise: "`allow_wide = true` on the rule (`{ rule = \"…\", allow_wide = true }`), \
                    or a smaller `[network] wide_prefix`",
        },
        Limit {
            what: "service `memory`",
            value: format!("at least {} MiB", MIN_SERVICE_MEMORY >> 20),
            raise: "fixed: a smaller limit cannot start a container",
        },
        Limit {
            what: "service `cpus`",
            value: format!("more than 0, at most {MAX_SERVICE_CPUS}"),
            raise: "fixed",
        },
        Limit {
            what: "names (image, images, models, services)",
            value: "64 characters".into(),
            raise: "fixed (they name files and units)",
        },
        Limit {
            what: "URL inputs",
            value: format!("{} characters", crate::recipe::url::MAX_URL),
            raise: "fixed",
        },
        Limit {
            what: "`[disk] state_size`",
            value: format!(
                "leaves at least {} MiB of `size` for the ESP and root",
                MIN_DISK_ROOM >> 20
            ),
            raise: "a larger `[disk] size`",
        },
        Limit {
            what: "base tarballs, image archives, layers: total bytes, entries, compression ratio, file size",
            value: format!(
                "{}, {} entries, {}:1, {} (each on its own)",
                LIMITS_MAX_BYTES.text(),
                LIMITS_MAX_ENTRIES.int(),
                LIMITS_MAX_RATIO.int(),
                LIMITS_MAX_FILE_BYTES.text()
            ),
            raise: "the `[limits]` keys (docs/limits.md)",
        },
        Limit {
            what: "pinned images' layers for `k3s` or no runtime, state on disk without `grow`",
            value: "unpack within `[disk] state_size` (k3s: with its data dir and air-gap bundle, docs/k3s.md)".into(),
            raise: "a larger `[disk] state_size`, or `[state] grow`",
        },
        Limit {
            what: "`[state] ram_size` as a share",
            value: "1-90%".into(),
            raise: "fixed (the node needs memory of its own); give a size instead",
        },
        Limit {
            what: "shell-opening `[boot] cmdline` words",
            value: "refused".into(),
            raise: "`[debug] cmdline = true` or a list of the words (test images only)",
        },
        Limit {
            what: "overlays: set-uid/set-gid files, device nodes, fifos, sockets",
            value: "refused".into(),
            raise: "fixed: install such files from a package",
        },
        Limit {
            what: "overlays: files cairn writes (`etc/hostname`, `etc/hosts`, `etc/resolv.conf`, `etc/machine-id`, `usr/lib/cairn/`, containerd's `config.toml`)",
            value: "refused".into(),
            raise: "fixed: set what they hold through the recipe (`[image] name`, a site file)",
        },
    ]
}
