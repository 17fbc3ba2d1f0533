//! `[site]`: the settings a site file may set (each one cairn knows how to
//! apply at boot) and the public key that signs site files.

use super::Validator;
use crate::recipe::network::NetworkPolicy;
use crate::recipe::schema::{ClusterSection, SiteSection};
use crate::recipe::settings::SITE_ALLOW;
use crate::recipe::site::{
    default_roles, env_setting, env_value_problem, host_steering_name, public_key_id,
    SiteDeclaration, CLUSTER_SETTINGS, ROLES, SITE_SETTINGS,
};
use crate::recipe::workloads::{Runtime, Workloads};

/// Whether `runtime` runs a cluster that nodes can join (roles, peers).
fn joinable(runtime: Runtime) -> bool {
    matches!(runtime, Runtime::Kubernetes | Runtime::K3s)
}

impl Validator<'_> {
    /// `[cluster] roles`: "server" and/or "agent", each once, only for a
    /// runtime nodes can join; default server only.
    pub(super) fn cluster_roles(&mut self, c: &ClusterSection, runtime: Runtime) -> Vec<String> {
        let Some(list) = &c.roles else {
            return default_roles();
        };
        if !joinable(runtime) {
            self.problem(
                list.span(),
                "[cluster] roles is for runtime = \"kubernetes\" or \"k3s\" (a cluster other nodes join); remove it or set that runtime".to_string(),
            );
            return default_roles();
        }
        if list.get_ref().is_empty() {
            self.problem(
                list.span(),
                "[cluster] roles is empty; name \"server\", \"agent\" or both (without it: server only)".to_string(),
            );
        }
        let mut roles: Vec<String> = Vec::new();
        for r in list.get_ref() {
            let v = r.get_ref();
            if !ROLES.contains(&v.as_str()) {
                self.problem(
                    r.span(),
                    format!("[cluster] roles names {v:?}; a node is \"server\" or \"agent\""),
                );
            } else if roles.contains(v) {
                self.problem(r.span(), format!("{v:?} is listed twice; remove one"));
            } else if v == "agent" && runtime == Runtime::K3s {
                // The roles map onto `k3s agent --server --token`, which
                // cairn does not lay out yet (docs/multi-node.md).
                self.problem(
                    r.span(),
                    "k3s agents are not built yet; for several nodes use runtime = \"kubernetes\" (docs/multi-node.md)".to_string(),
                );
            } else {
                roles.push(v.clone());
            }
        }
        if roles.is_empty() {
            return default_roles();
        }
        roles
    }

    pub(super) fn site(
        &mut self,
        s: &SiteSection,
        image: (&str, &str),
        network: &NetworkPolicy,
        workloads: &Workloads,
        roles: &[String],
    ) -> Option<SiteDeclaration> {
        let known: Vec<&str> = SITE_SETTINGS.iter().map(|(k, _)| *k).collect();
        let mut allow = Vec::new();
        for a in &s.allow {
            let k = a.get_ref();
            if k.starts_with("env.") {
                if let Some(m) = self.site_env_problem(k, workloads) {
                    self.problem(a.span(), m);
                } else if allow.contains(k) {
                    self.problem(a.span(), format!("{k:?} is listed twice; remove one"));
                } else {
                    allow.push(k.clone());
                }
            } else if !known.contains(&k.as_str()) {
                self.problem(
                    a.span(),
                    format!(
                        "{} names {k:?}, which a site cannot set; use one of {}",
                        SITE_ALLOW.name(),
                        known.join(", ")
                    ),
                );
            } else if CLUSTER_SETTINGS.contains(&k.as_str()) && !joinable(workloads.runtime) {
                // No cluster to join: the guest would have nothing to do with it.
                self.problem(
                    a.span(),
                    format!("a site can set {k:?} only for a cluster node: set [cluster] runtime = \"kubernetes\" or \"k3s\", or remove it"),
                );
            } else if (k == "address" || k == "gateway") && network.address.is_none() {
                // The site's value replaces the recipe's in the networkd file
                // the recipe's address makes.
                self.problem(
                    a.span(),
                    format!("a site can set {k:?} only when the recipe has a default: add [network] address"),
                );
            } else if allow.contains(k) {
                self.problem(a.span(), format!("{k:?} is listed twice; remove one"));
            } else {
                allow.push(k.clone());
            }
        }
        allow.sort();
        if let Some(m) = &s.min_serial {
            // The guest compares serials with awk's doubles: exact below 2^53.
            if *m.get_ref() > 999_999_999_999_999 {
                self.problem(
                    m.span(),
                    "min_serial must be at most 999999999999999 (15 digits)".to_string(),
                );
            }
        }
        let key_path = self.path(&s.key, "site key")?;
        let text = match std::fs::read_to_string(&key_path) {
            Ok(t) => t,
            Err(e) => {
                self.problem(s.key.span(), format!("site key: cannot read it: {e}"));
                return None;
            }
        };
        let key_id = match public_key_id(&text) {
            Ok(id) => id,
            Err(m) => {
                self.problem(s.key.span(), format!("site key {:?} {m}", s.key.get_ref()));
                return None;
            }
        };
        Some(SiteDeclaration {
            allow,
            ingress: network
                .ingress
                .iter()
                .map(|r| format!("{}/{}", r.port, r.proto.as_str()))
                .collect(),
            key_id,
            public_key: text,
            key_path,
            required: s.required.as_ref().is_some_and(|r| *r.get_ref()),
            min_serial: s.min_serial.as_ref().map(|m| *m.get_ref()).unwrap_or(0),
            image: image.0.to_string(),
            version: image.1.to_string(),
            roles: roles.to_vec(),
        })
    }

    /// Why `env.SERVICE.VAR` cannot be allowed, if it cannot: the service
    /// must exist and give `VAR` a default a site file could also hold.
    fn site_env_problem(&self, k: &str, workloads: &Workloads) -> Option<String> {
        let Some((service, var)) = env_setting(k) else {
            return Some(format!(
                "{} names {k:?}: write env.SERVICE.VAR, SERVICE a [[services]] name and VAR an environment variable name ([A-Za-z_][A-Za-z0-9_]*)",
                SITE_ALLOW.name()
            ));
        };
        let Some(svc) = workloads.services.iter().find(|s| s.name == service) else {
            let names: Vec<&str> = workloads.services.iter().map(|s| s.name.as_str()).collect();
            return Some(format!(
                "{k:?}: the recipe has no [[services]] entry {service:?} (services: {names:?})"
            ));
        };
        if let Some(why) = host_steering_name(var) {
            return Some(format!(
                "{k:?}: {var} {why}, not the service; a site cannot set it (name the service's own setting)"
            ));
        }
        let prefix = format!("{var}=");
        let Some(default) = svc.env.iter().find_map(|e| e.strip_prefix(&prefix)) else {
            return Some(format!(
                "{k:?}: service {service:?} sets no {var}; add \"{var}=DEFAULT\" to its env (the value without a site file)"
            ));
        };
        env_value_problem(default)
            .map(|m| format!("{k:?}: the service's default {var} {m} (a site-settable value follows the site file's rules)"))
    }
}
