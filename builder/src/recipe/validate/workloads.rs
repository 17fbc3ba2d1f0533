//! `[cluster]`, `[[images]]`, `[[models]]`, `[[services]]` and `[policy]`:
//! what runs on the appliance. Names are unique per kind (a second service
//! of the same name would replace the first unit); service strings go into
//! unit files, so no control characters; limits are sane.

use toml::Spanned;

use super::{control_char, Validator};
use crate::recipe::schema::RecipeFile;
use crate::recipe::settings::{MAX_SERVICE_CPUS, MIN_SERVICE_MEMORY, SERVICE_CPUS, SERVICE_MEMORY};
use crate::recipe::workloads::{ImageSource, Model, Runtime, Service, WorkloadImage, Workloads};

/// The Linux capabilities (capabilities(7), as of Linux 6.x).
pub const CAPABILITIES: &[&str] = &[
    "CAP_AUDIT_CONTROL",
    "CAP_AUDIT_READ",
    "CAP_AUDIT_WRITE",
    "CAP_BLOCK_SUSPEND",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_KILL",
    "CAP_LEASE",
    "CAP_LINUX_IMMUTABLE",
    "CAP_MAC_ADMIN",
    "CAP_MAC_OVERRIDE",
    "CAP_MKNOD",
    "CAP_NET_ADMIN",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_RAW",
    "CAP_PERFMON",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYSLOG",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_CHROOT",
    "CAP_SYS_MODULE",
    "CAP_SYS_NICE",
    "CAP_SYS_PACCT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_WAKE_ALARM",
];

impl Validator<'_> {
    /// `[cluster] sources`: only with `runtime = "kubernetes"`, a folder
    /// inside the recipe root holding a Go module and its `build.sh`. By
    /// default the nearest `cluster/` folder holding them, from the recipe's
    /// folder up (the repository's own module, which need not be under the
    /// recipe root: it is cairn's input, not the recipe's).
    fn kube_sources(
        &mut self,
        f: &RecipeFile,
        runtime: Runtime,
    ) -> Option<crate::recipe::workloads::KubeSources> {
        let c = &f.cluster;
        if runtime != Runtime::Kubernetes {
            if let Some(s) = &c.sources {
                self.problem(
                    s.span(),
                    "[cluster] sources is for runtime = \"kubernetes\" only; remove it or set that runtime",
                );
            }
            return None;
        }
        let is_module = |d: &std::path::Path| {
            d.join("go.mod").is_file() && d.join("go.sum").is_file() && d.join("build.sh").is_file()
        };
        let module = match &c.sources {
            Some(s) => {
                let dir = self.path(s, "[cluster] sources")?;
                if !is_module(&dir) {
                    self.problem(
                        s.span(),
                        format!(
                            "[cluster] sources {:?} ({}) holds no go.mod, go.sum and build.sh; point it at the cluster Go module (e.g. \"../cluster\")",
                            s.get_ref(),
                            dir.display()
                        ),
                    );
                    return None;
                }
                dir
            }
            None => {
                let found = self
                    .folder
                    .ancestors()
                    .map(|a| a.join("cluster"))
                    .find(|d| is_module(d));
                match found {
                    Some(d) => d,
                    None => {
                        let span = c.runtime.as_ref().map(|r| r.span()).unwrap_or(0..0);
                        self.problem(
                            span,
                            format!(
                                "runtime \"kubernetes\" needs the cluster Go module: no cluster/ folder with go.mod, go.sum and build.sh in {} or above; set [cluster] sources",
                                self.folder.display()
                            ),
                        );
                        return None;
                    }
                }
            }
        };
        Some(crate::recipe::workloads::KubeSources {
            module,
            node_name: f.image.name.get_ref().clone(),
        })
    }

    pub(super) fn workloads(&mut self, f: &RecipeFile) -> Workloads {
        let runtime = match f
            .cluster
            .runtime
            .as_ref()
            .map(|r| (r.get_ref().as_str(), r.span()))
        {
            None | Some(("none", _)) => Runtime::None,
            Some(("containerd", _)) => Runtime::Containerd,
            Some(("k3s", _)) => Runtime::K3s,
            Some(("kubernetes", _)) => Runtime::Kubernetes,
            Some((other, span)) => {
                self.problem(
                    span,
                    format!(
                        "cluster runtime {other:?} is not one of \"none\", \"containerd\", \"k3s\", \"kubernetes\""
                    ),
                );
                Runtime::None
            }
        };
        let mut w = Workloads {
            runtime,
            ..Default::default()
        };
        // Written into k3s's config.yaml, one list item each: plain names only.
        for d in &f.cluster.disable {
            let v = d.get_ref();
            let plain = !v.is_empty()
                && v.len() <= 64
                && v.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !plain {
                self.problem(
                    d.span(),
                    format!("[cluster] disable entry {v:?} is not a k3s component name ([a-z0-9-], e.g. \"local-storage\")"),
                );
            } else if !crate::recipe::workloads::K3S_COMPONENTS.contains(&v.as_str()) {
                // k3s ignores a name it does not know: the component the
                // recipe meant to drop would run anyway.
                self.problem(
                    d.span(),
                    format!(
                        "[cluster] disable entry {v:?} is not a component k3s can disable; use one of {}",
                        crate::recipe::workloads::K3S_COMPONENTS.join(", ")
                    ),
                );
            }
        }
        if runtime == Runtime::K3s {
            let c = &f.cluster;
            let need = |v: &Option<Spanned<String>>| v.is_none();
            if need(&c.k3s_binary)
                || need(&c.k3s_binary_sha256)
                || need(&c.k3s_images)
                || need(&c.k3s_images_sha256)
            {
                let span = c.runtime.as_ref().map(|r| r.span()).unwrap_or(0..0);
                self.problem(span, format!("runtime \"k3s\" needs k3s_binary, k3s_binary_sha256, k3s_images and k3s_images_sha256 in [cluster]; {}", crate::recipe::workloads::K3S_WHERE_FROM));
            } else if let (Some(b), Some(bs), Some(i), Some(is)) = (
                &c.k3s_binary,
                &c.k3s_binary_sha256,
                &c.k3s_images,
                &c.k3s_images_sha256,
            ) {
                // One release: the binary runs the images its own release
                // bundles (pause, CoreDNS, flannel's), by tag.
                if let (Some(rb), Some(ri)) = (
                    crate::recipe::workloads::k3s_release(b.get_ref()),
                    crate::recipe::workloads::k3s_release(i.get_ref()),
                ) {
                    if rb != ri {
                        self.problem(
                            i.span(),
                            format!("k3s_images is from k3s release {ri} but k3s_binary from {rb}; take both (and their sums) from one release's page"),
                        );
                    }
                }
                let bsha = self.digest(bs, "k3s_binary_sha256");
                let bin = self.file_input(b, bsha, "k3s binary");
                let isha = self.digest(is, "k3s_images_sha256");
                let img = self.file_input(i, isha, "k3s air-gap images");
                if let (Some(binary), Some(binary_sha256), Some(images), Some(images_sha256)) =
                    (bin, bsha, img, isha)
                {
                    w.k3s = Some(crate::recipe::workloads::K3sArtifacts {
                        binary,
                        binary_sha256,
                        images,
                        images_sha256,
                        disable: c.disable.iter().map(|d| d.get_ref().clone()).collect(),
                        node_name: f.image.name.get_ref().clone(),
                    });
                }
            }
        }
        w.kubernetes = self.kube_sources(f, runtime);
        let mut names: std::collections::BTreeMap<String, String> =
            std::collections::BTreeMap::new();
        for i in &f.images {
            let name = i.name.get_ref().clone();
            if !self.name(&i.name, "image") {
                continue;
            }
            if let Some(first) = names.get(&name) {
                let first = first.clone();
                self.problem(
                    i.name.span(),
                    format!("image {name:?} is listed twice (first at {first}); give each image its own name"),
                );
            } else {
                names.insert(name.clone(), self.at(i.name.span()));
            }
            let pin = i
                .digest
                .as_ref()
                .and_then(|d| self.digest(d, "image digest"));
            let source = match (&i.archive, &i.build) {
                (Some(a), None) => {
                    if pin.is_none() && i.digest.is_none() {
                        self.problem(a.span(), format!("image {name:?}: an archive must be pinned: add digest = \"sha256:...\" (the image manifest's digest)"));
                    }
                    let url = crate::recipe::url::is_url(a.get_ref());
                    let file_pin = match &i.archive_sha256 {
                        Some(s) if url => self.digest(s, "archive_sha256"),
                        Some(s) => {
                            self.problem(s.span(), format!("image {name:?}: archive_sha256 pins a downloaded archive; a local archive is pinned by its digest alone: remove archive_sha256"));
                            None
                        }
                        None if url => {
                            self.problem(a.span(), format!("image {name:?}: an archive URL needs archive_sha256 = \"...\" (the file's sha256, e.g. from `cairn digest` on a trusted copy)"));
                            None
                        }
                        None => None,
                    };
                    self.file_input(a, file_pin, "image archive")
                        .map(ImageSource::Archive)
                }
                (None, Some(b)) => {
                    let mut files = Vec::new();
                    for file in &b.files {
                        let mode =
                            u32::from_str_radix(file.mode.get_ref().trim_start_matches("0o"), 8);
                        let dest = file.dest.get_ref();
                        if !dest.starts_with('/') || dest.split('/').any(|c| c == "..") {
                            self.problem(file.dest.span(), format!("image file dest {dest:?} must be an absolute path without `..`"));
                            continue;
                        }
                        match mode {
                            Ok(m) if m <= 0o777 => {}
                            _ => {
                                self.problem(
                                    file.mode.span(),
                                    format!(
                                        "mode {:?} must be octal permission bits like \"0644\"",
                                        file.mode.get_ref()
                                    ),
                                );
                                continue;
                            }
                        }
                        if let Some(src) = self.path(&file.src, "image file") {
                            if src.is_file() {
                                files.push((src, dest.clone(), mode.unwrap_or(0o644)));
                            } else {
                                self.problem(file.src.span(), "image file src must be a file");
                            }
                        }
                    }
                    for p in &b.packages {
                        self.package(p, &format!("image {name:?}: package"));
                    }
                    if b.packages.is_empty() && !b.essential {
                        self.problem(
                            i.name.span(),
                            format!("image {name:?}: [images.build] has no packages and essential = false, so the image would hold nothing; name the packages it runs, or set essential = true for Debian's essential set (a shell, coreutils)"),
                        );
                    }
                    Some(ImageSource::Build {
                        packages: b.packages.iter().map(|p| p.get_ref().clone()).collect(),
                        files,
                        entrypoint: b.entrypoint.clone(),
                        cmd: b.cmd.clone(),
                        env: b.env.clone(),
                        user: b.user.clone(),
                        workdir: b.workdir.clone(),
                        ports: b.ports.clone(),
                        essential: b.essential,
                    })
                }
                _ => {
                    self.problem(
                        i.name.span(),
                        format!("image {name:?} needs exactly one of `archive` or [images.build]"),
                    );
                    None
                }
            };
            if let Some(source) = source {
                w.images.push(WorkloadImage {
                    name,
                    source,
                    pin,
                    allow_setuid: i.allow_setuid,
                });
            }
        }
        let mut model_names: std::collections::BTreeMap<String, String> =
            std::collections::BTreeMap::new();
        for m in &f.models {
            let name = m.name.get_ref().clone();
            if !self.name(&m.name, "model") {
                continue;
            }
            if name == crate::recipe::workloads::APPS_VOLUME {
                self.problem(
                    m.name.span(),
                    format!("model name {name:?} is the root's apps volume; give the model another name"),
                );
                continue;
            }
            if let Some(first) = model_names.get(&name) {
                let first = first.clone();
                self.problem(
                    m.name.span(),
                    format!("model {name:?} is listed twice (first at {first}); give each model its own name"),
                );
                continue;
            }
            model_names.insert(name.clone(), self.at(m.name.span()));
            let path = self
                .path(&m.path, "model")
                .filter(|p| self.data_folder(&m.path, p, "model folder"));
            let sha = self.digest(&m.sha256, "model sha256");
            let compression = match m.compression.get_ref().as_str() {
                "none" => Some(crate::recipe::workloads::Compression::None),
                "zstd" => Some(crate::recipe::workloads::Compression::Zstd),
                other => {
                    self.problem(
                        m.compression.span(),
                        format!("model compression {other:?} is not one of \"none\", \"zstd\""),
                    );
                    None
                }
            };
            if let (Some(path), Some(sha256), Some(compression)) = (path, sha, compression) {
                w.models.push(Model {
                    name,
                    path,
                    sha256,
                    compression,
                    at: self.at(m.sha256.span()),
                });
            }
        }
        let mut service_names: std::collections::BTreeMap<String, String> =
            std::collections::BTreeMap::new();
        for s in &f.services {
            let name = s.name.get_ref().clone();
            if !self.name(&s.name, "service") {
                continue;
            }
            if let Some(first) = service_names.get(&name) {
                let first = first.clone();
                self.problem(
                    s.name.span(),
                    format!("service {name:?} is listed twice (first at {first}); the second would replace the first: give each service its own name"),
                );
                continue;
            }
            service_names.insert(name.clone(), self.at(s.name.span()));
            if !names.contains_key(s.image.get_ref()) {
                self.problem(
                    s.image.span(),
                    format!(
                        "service {name:?} runs image {:?}, which no [[images]] entry names",
                        s.image.get_ref()
                    ),
                );
            }
            for m in &s.models {
                if !f.models.iter().any(|x| x.name.get_ref() == m.get_ref()) {
                    self.problem(
                        m.span(),
                        format!(
                            "service {name:?} mounts model {:?}, which no [[models]] entry names",
                            m.get_ref()
                        ),
                    );
                }
            }
            self.service_strings(&name, &s.args, "args");
            self.service_strings(&name, &s.env, "env");
            for e in &s.env {
                let ok = e.get_ref().split_once('=').is_some_and(|(k, _)| {
                    k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                });
                if !ok && control_char(e.get_ref()).is_none() {
                    self.problem(
                        e.span(),
                        format!("service {name:?}: env entry {:?} is not KEY=VALUE (KEY of letters, digits and _); write e.g. \"PORT=8080\"", e.get_ref()),
                    );
                }
            }
            for c in &s.capabilities {
                if !CAPABILITIES.contains(&c.get_ref().as_str()) {
                    self.problem(
                        c.span(),
                        format!(
                            "service {name:?}: capability {:?} is not a Linux capability; use one of {}",
                            c.get_ref(),
                            CAPABILITIES.join(", ")
                        ),
                    );
                }
            }
            let memory = s
                .memory
                .as_ref()
                .and_then(|m| self.service_memory(&name, m));
            let cpus = s.cpus.as_ref().and_then(|c| self.service_cpus(&name, c));
            // Both cluster runtimes run services as the same Deployments
            // (pipeline::kube_objects).
            let cluster = matches!(runtime, Runtime::Kubernetes | Runtime::K3s);
            if !cluster && runtime != Runtime::Containerd {
                self.problem(s.name.span(), "[[services]] need [cluster] runtime = \"containerd\", \"kubernetes\" or \"k3s\"");
            }
            if cluster && s.host_network {
                {
                    self.problem(s.name.span(), format!("service {name:?}: host_network is not for runtime = \"{}\" (PodSecurity \"restricted\" refuses it; the service is reached through its NodePort); remove it", if runtime == Runtime::K3s { "k3s" } else { "kubernetes" }));
                }
            }
            let ready = s.ready.as_ref().and_then(|r| {
                let timeout = match &s.ready_timeout {
                    Some(t) if (1..=3600).contains(t.get_ref()) => *t.get_ref(),
                    Some(t) => {
                        self.problem(
                            t.span(),
                            format!("service {name:?}: ready_timeout {} is out of range: 1 to 3600 seconds", t.get_ref()),
                        );
                        return None;
                    }
                    None => 120,
                };
                match crate::recipe::workloads::ReadyCheck::parse(r.get_ref(), timeout) {
                    // Kubernetes probes the pod itself (a readiness probe).
                    Ok(c) if !s.host_network && !cluster => {
                        self.problem(
                            r.span(),
                            format!("service {name:?}: a readiness check probes the node's 127.0.0.1, which only a service with host_network = true listens on; set host_network = true or drop `ready`"),
                        );
                        drop(c);
                        None
                    }
                    Ok(c) => Some(c),
                    Err(e) => {
                        self.problem(r.span(), format!("service {name:?}: {e}"));
                        None
                    }
                }
            });
            if s.ready.is_none() {
                if let Some(t) = &s.ready_timeout {
                    self.problem(t.span(), format!("service {name:?}: ready_timeout without `ready`; add a readiness check or drop it"));
                }
            }
            w.services.push(Service {
                name,
                image: s.image.get_ref().clone(),
                args: s.args.iter().map(|a| a.get_ref().clone()).collect(),
                env: s.env.iter().map(|e| e.get_ref().clone()).collect(),
                host_network: s.host_network,
                capabilities: s.capabilities.iter().map(|c| c.get_ref().clone()).collect(),
                memory,
                cpus,
                models: s.models.iter().map(|m| m.get_ref().clone()).collect(),
                read_only: s.read_only,
                site_env: Vec::new(),
                ready,
            });
        }
        if let Some(b) = &f.policy.bundle {
            if let Some(p) = self.path(b, "policy bundle") {
                if p.is_dir() {
                    if self.data_folder(b, &p, "policy bundle") {
                        w.policy = Some(p);
                    }
                } else {
                    self.problem(b.span(), "policy bundle must be a folder of manifests");
                }
            }
        }
        w
    }

    /// Service strings land in unit files: one line each, no control
    /// characters.
    fn service_strings(&mut self, service: &str, list: &[Spanned<String>], what: &str) {
        for v in list {
            if let Some(c) = control_char(v.get_ref()) {
                self.problem(
                    v.span(),
                    format!(
                        "service {service:?}: {what} entry {:?} contains {c:?}; write one line without control characters (list separate values separately)",
                        v.get_ref()
                    ),
                );
            }
        }
    }

    fn service_memory(&mut self, service: &str, m: &Spanned<String>) -> Option<u64> {
        match crate::recipe::parse_size(m.get_ref()) {
            Some(b) if b >= MIN_SERVICE_MEMORY => Some(b),
            Some(_) => {
                self.problem(
                    m.span(),
                    format!(
                        "service {service:?}: memory {:?} is below the minimum of {} MiB ({}); write e.g. \"256M\"",
                        m.get_ref(),
                        MIN_SERVICE_MEMORY >> 20,
                        SERVICE_MEMORY.name()
                    ),
                );
                None
            }
            None => {
                self.problem(
                    m.span(),
                    format!("memory {:?} is not a size like \"512M\"", m.get_ref()),
                );
                None
            }
        }
    }

    fn service_cpus(&mut self, service: &str, c: &Spanned<f64>) -> Option<f64> {
        let v = *c.get_ref();
        if v.is_finite() && v > 0.0 && v <= MAX_SERVICE_CPUS {
            return Some(v);
        }
        self.problem(
            c.span(),
            format!(
                "service {service:?}: cpus {v} is out of range ({}: more than 0, at most {MAX_SERVICE_CPUS}); write e.g. 1.5",
                SERVICE_CPUS.name()
            ),
        );
        None
    }
}
