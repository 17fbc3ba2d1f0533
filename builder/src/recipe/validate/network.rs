//! `[network]`: the air-gap rules. A rule wider than the recipe's
//! `wide_prefix` (and every `/0`) passes only with `allow_wide = true`
//! beside it, and is recorded so the manifest and `inspect` show it.

use toml::Spanned;

use super::Validator;
use crate::recipe::network::{parse_address, parse_egress, parse_ingress, NetworkPolicy};
use crate::recipe::schema::NetworkSection;
use crate::recipe::settings::{self, EGRESS_ALLOW_WIDE, EGRESS_RULE, NETWORK_WIDE_PREFIX};

impl Validator<'_> {
    fn wide_prefix(&mut self, n: &NetworkSection) -> u8 {
        let default = NETWORK_WIDE_PREFIX.int() as u8;
        match &n.wide_prefix {
            None => default,
            Some(p) => match u8::try_from(*p.get_ref()) {
                Ok(v) if (1..=32).contains(&v) => v,
                _ => {
                    self.problem(
                        p.span(),
                        format!(
                            "{} {} is not 1-32; rules shorter than it need allow_wide = true",
                            NETWORK_WIDE_PREFIX.name(),
                            p.get_ref()
                        ),
                    );
                    default
                }
            },
        }
    }

    /// An egress entry's rule text and `allow_wide`, from either form.
    fn egress_entry(&mut self, e: &Spanned<toml::Value>) -> Option<(String, bool)> {
        let form = "write a rule as \"CIDR:PORT\" or { rule = \"CIDR:PORT\", allow_wide = true }";
        match e.get_ref() {
            toml::Value::String(s) => Some((s.clone(), false)),
            toml::Value::Table(t) => {
                let keys: Vec<&str> = settings::ALL
                    .iter()
                    .filter(|s| s.table == EGRESS_RULE.table)
                    .map(|s| s.key)
                    .collect();
                if let Some(k) = t.keys().find(|k| !keys.contains(&k.as_str())) {
                    self.problem(
                        e.span(),
                        format!("egress entry has an unknown key `{k}`; {form}"),
                    );
                    return None;
                }
                let rule = match t.get(EGRESS_RULE.key) {
                    Some(toml::Value::String(s)) => s.clone(),
                    _ => {
                        self.problem(
                            e.span(),
                            format!("egress entry needs `rule`, a string; {form}"),
                        );
                        return None;
                    }
                };
                let wide = match t.get(EGRESS_ALLOW_WIDE.key) {
                    None => false,
                    Some(toml::Value::Boolean(b)) => *b,
                    Some(_) => {
                        self.problem(
                            e.span(),
                            format!("egress entry's `allow_wide` must be true or false; {form}"),
                        );
                        return None;
                    }
                };
                Some((rule, wide))
            }
            other => {
                self.problem(
                    e.span(),
                    format!("egress entry is a {}; {form}", other.type_str()),
                );
                None
            }
        }
    }

    pub(super) fn network(&mut self, n: &NetworkSection) -> NetworkPolicy {
        let mut network = NetworkPolicy::default();
        let wide_prefix = self.wide_prefix(n);
        for e in &n.egress {
            let Some((text, allow_wide)) = self.egress_entry(e) else {
                continue;
            };
            match parse_egress(&text) {
                Ok(r) => {
                    let wide = r.prefix == 0 || r.prefix < wide_prefix;
                    if wide && !allow_wide {
                        self.problem(
                            e.span(),
                            format!(
                                "egress rule {text:?} opens /{} (wider than /{wide_prefix}); narrow it, or if this is meant write {{ rule = {text:?}, allow_wide = true }}",
                                r.prefix
                            ),
                        );
                        continue;
                    }
                    if wide {
                        network.wide_egress.push(r.clone());
                    }
                    network.egress.push(r);
                }
                Err(m) => self.problem(e.span(), m),
            }
        }
        for i in &n.ingress {
            match parse_ingress(i.get_ref()) {
                Ok(r) => network.ingress.push(r),
                Err(m) => self.problem(i.span(), m),
            }
        }
        if let Some(a) = &n.address {
            match parse_address(a.get_ref()) {
                Ok(v) => network.address = Some(v),
                Err(m) => self.problem(a.span(), m),
            }
        }
        if let Some(g) = &n.gateway {
            match g.get_ref().parse::<std::net::Ipv4Addr>() {
                Ok(v) if network.address.is_some() => network.gateway = Some(v),
                Ok(_) => self.problem(
                    g.span(),
                    "network gateway needs an address; add network.address",
                ),
                Err(_) => self.problem(
                    g.span(),
                    format!("gateway {:?} is not an IPv4 address", g.get_ref()),
                ),
            }
        }
        network
    }
}
