//! `[site]`: the settings a site file may set (each one cairn knows how to
//! apply at boot) and the public key that signs site files.

use super::Validator;
use crate::recipe::network::NetworkPolicy;
use crate::recipe::schema::SiteSection;
use crate::recipe::settings::SITE_ALLOW;
use crate::recipe::site::{public_key_id, SiteDeclaration, SITE_SETTINGS};

impl Validator<'_> {
    pub(super) fn site(
        &mut self,
        s: &SiteSection,
        network: &NetworkPolicy,
    ) -> Option<SiteDeclaration> {
        let known: Vec<&str> = SITE_SETTINGS.iter().map(|(k, _)| *k).collect();
        let mut allow = Vec::new();
        for a in &s.allow {
            let k = a.get_ref();
            if !known.contains(&k.as_str()) {
                self.problem(
                    a.span(),
                    format!(
                        "{} names {k:?}, which a site cannot set; use one of {}",
                        SITE_ALLOW.name(),
                        known.join(", ")
                    ),
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
        })
    }
}
